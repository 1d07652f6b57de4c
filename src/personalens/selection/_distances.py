"""Euclidean distances for the selection steps, computed through Gram matrices (BLAS).

Squared distances come from ``‖x‖² + ‖y‖² − 2·x·y``, clipped at 0, in the input's precision (float32 for embedder
output, half the BLAS time of float64). Up to :data:`SYRK_LIMIT` rows the Gram matrix comes from ``syrk`` (half the
flops); larger products are written ``A @ B_t`` with ``B_t`` a C-contiguous copy of the transpose, because numpy
routes ``X @ X.T`` (one buffer, transposed) to OpenBLAS ``syrk``, which segfaulted for 16k–20k × 384 float64 inputs
with 2 threads on our machines. Comparisons with a threshold are made exact by :func:`refine_near`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import scipy
from scipy.linalg import blas
from scipy.spatial.distance import squareform


def as_embeddings(embeddings: object, *, name: str = "embeddings", allow_empty: bool = False) -> np.ndarray:
    """``embeddings`` as a finite 2-D float array (float32 input stays float32), or a clear ``ValueError``."""
    arr = np.asarray(embeddings)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {arr.shape}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty: PersonaX needs at least one behaviour")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has no columns (d = 0)")
    if not np.issubdtype(arr.dtype, np.floating):
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Row-wise squared L2 norms in float64."""
    x = np.asarray(x, dtype=np.float64)
    return np.einsum("ij,ij->i", x, x)


def compute_dtype(x: np.ndarray) -> type:
    """float32 input is computed in float32 (the Embedder contract; half the BLAS time), anything else in float64."""
    return np.float32 if x.dtype == np.float32 else np.float64


@functools.cache
def _local_thread_setters() -> tuple[Callable[[int], int], ...]:
    """``openblas_set_num_threads_local`` of the OpenBLAS builds bundled with scipy's and numpy's wheels (OpenBLAS
    ≥ 0.3.27): each sets the BLAS thread count for the calling thread only and returns the previous value. Empty when
    none is found (other BLAS vendors, other platforms): then nothing is changed."""
    setters = []
    for package in (scipy, np):
        libs = Path(str(package.__file__)).resolve().parent.parent / f"{package.__name__}.libs"
        for path in sorted(libs.glob("libscipy_openblas*.so*")):
            try:
                fn = getattr(ctypes.CDLL(str(path)), "openblas_set_num_threads_local", None)
            except OSError:
                continue
            if fn is not None:
                fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
                setters.append(fn)
    return tuple(setters)


@contextlib.contextmanager
def single_blas_thread(active: bool = True) -> Iterator[None]:
    """Run the BLAS calls of the block (scipy's and numpy's OpenBLAS) on the calling thread only; a no-op when
    unsupported or ``active`` is false. Other threads keep their own setting. Every selection entry point runs under
    it.

    Why: OpenBLAS threads ``syrk`` whatever the size, and its helper threads spin after each call. On our 2-core
    machines, with another process keeping one core busy, each multi-threaded call waits for its helper to be
    scheduled: 16 ms for a 50 × 384 ``ssyrk`` that takes 0.05 ms on one thread, 16 ms instead of 1.2 ms at 480 rows,
    and a whole 20 000-row selection took 6.5 s instead of 3.6 s. On an idle machine one thread costs at most the
    2-way parallelism of the large Gram products (the 20 000-row path; small histories are dominated by scipy's
    single-threaded linkage anyway)."""
    setters = _local_thread_setters() if active else ()
    previous = [fn(1) for fn in setters]
    try:
        yield
    finally:
        for fn, value in zip(setters, previous, strict=True):
            fn(value)


#: Up to this many rows the Gram matrix comes from BLAS ``syrk`` (half the flops of ``gemm``); above it from ``gemm``
#: with a contiguous transposed copy (the segfault reported for ``X @ X.T`` was at 16k–20k rows).
SYRK_LIMIT = 4096


def _gram_upper(x: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha``·x·xᵀ from BLAS ``syrk`` in an (n, n) C-ordered buffer of zeros, of which only the upper triangle
    (i ≤ j) is filled. BLAS writes the transposed view (the Fortran-ordered output it wants) in place, so the
    result owns its memory and ``squareform`` reads it without first copying all n² entries."""
    out = np.zeros((len(x), len(x)), dtype=x.dtype)
    syrk = blas.ssyrk if x.dtype == np.float32 else blas.dsyrk
    res = syrk(alpha, x.T, c=out.T, trans=1, lower=1, overwrite_c=1)
    if res.ctypes.data != out.ctypes.data:  # not written in place (never seen): take the returned copy
        out = np.ascontiguousarray(res.T)
    return out


def sq_distance_matrix(x: np.ndarray, *, full: bool = True) -> np.ndarray:
    """The (n, n) matrix of squared Euclidean distances in the input's precision (float32 or float64), with exact
    zeros on the diagonal. Memory: one (n, n) buffer, reused in place (16.8 MB in float32 at n = 2048).

    With ``full=False`` only the upper triangle (i < j, what ``scipy.spatial.distance.squareform`` reads) is
    meaningful, which saves mirroring it. float32 Gram entries carry an absolute error of about 1e-6 for unit
    vectors; callers that compare distances with a threshold refine the pairs close to it (:func:`refine_near`).
    The factor −2 is BLAS's ``alpha`` (a power of two: the same floats as scaling afterwards, one pass fewer)."""
    x = np.ascontiguousarray(x, dtype=compute_dtype(np.asarray(x)))
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    if n <= SYRK_LIMIT:
        out = _gram_upper(x, -2.0)
    else:
        out = x @ np.ascontiguousarray(x.T)
        out *= -2.0
    out += sq[:, None]
    out += sq[None, :]
    np.maximum(out, 0.0, out=out)
    if n <= SYRK_LIMIT and full:
        out = np.triu(out, 1)
        out += out.T
    else:
        np.fill_diagonal(out, 0.0)
    return out


def sq_distances_condensed(x: np.ndarray) -> np.ndarray:
    """The condensed squared Euclidean distances of the rows of ``x`` (``squareform`` order: (0, 1), (0, 2), ...,
    (n−2, n−1)) in the input's precision: the same floats as ``squareform(sq_distance_matrix(x, full=False))``,
    with the clipping at 0 done on the n(n−1)/2 condensed entries only and the (n, n) buffer freed on return."""
    x = np.ascontiguousarray(x, dtype=compute_dtype(np.asarray(x)))
    n = len(x)
    if n > SYRK_LIMIT:
        return squareform(sq_distance_matrix(x, full=False), checks=False)
    out = _gram_upper(x, -2.0)
    sq = np.einsum("ij,ij->i", x, x)
    out += sq[:, None]
    out += sq[None, :]
    y2 = squareform(out, checks=False)
    del out
    np.maximum(y2, 0.0, out=y2)
    return y2


def member_sq_distances(y2: np.ndarray, n: int, members: np.ndarray) -> np.ndarray:
    """The symmetric (k, k) block, zero diagonal, of the condensed squared distances ``y2`` of n points (scipy's
    ``squareform`` order) between the ascending indices ``members``: one gather, no (n, n) matrix."""
    # pair (i, j), i < j, sits at start(i) + j with start(i) = i·(2n − 3 − i)/2 − 1, non-decreasing in i
    start = members * (2 * n - 3 - members) // 2 - 1
    out = y2[np.minimum.outer(start, start) + np.maximum.outer(members, members)]
    np.fill_diagonal(out, 0.0)
    return out


#: Distances within this of a threshold are recomputed exactly before being compared with it.
REFINE_MARGIN = 1e-4


def refine_near(y2: np.ndarray, x: np.ndarray, value: float, *, margin: float = REFINE_MARGIN) -> None:
    """Recompute exactly (float64 differences), in place, the entries of the condensed squared-distance vector
    ``y2`` of ``x`` whose distance is within ``margin`` of ``value``, so comparisons with ``value`` are exact."""
    n = len(x)
    lo, hi = max(value - margin, 0.0) ** 2, (value + margin) ** 2
    ks = np.flatnonzero((y2 > lo) & (y2 < hi))
    if not len(ks):
        return
    i, j = condensed_to_pairs(ks, n)
    diff = np.asarray(x[i], dtype=np.float64) - np.asarray(x[j], dtype=np.float64)
    y2[ks] = np.einsum("ij,ij->i", diff, diff)


def condensed_to_pairs(k: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The (i, j), i < j, of condensed indices ``k`` (scipy's ``squareform`` order)."""
    k = np.asarray(k, dtype=np.int64)
    i = (n - 2 - np.floor(np.sqrt(-8.0 * k + 4.0 * n * (n - 1) - 7) / 2.0 - 0.5)).astype(np.int64)
    j = k + i + 1 - n * (n - 1) // 2 + (n - i) * (n - i - 1) // 2
    return i, j


def sq_distances_between(
    x: np.ndarray, y: np.ndarray, y_t: np.ndarray | None = None, *, dtype: type = np.float64
) -> np.ndarray:
    """(len(x), len(y)) squared distances computed in ``dtype``. ``y_t`` may pass a contiguous ``y.T``."""
    x = np.asarray(x, dtype=dtype)
    y = np.asarray(y, dtype=dtype)
    if y_t is None:
        y_t = np.ascontiguousarray(y.T)
    out = x @ y_t
    out *= -2.0
    out += np.einsum("ij,ij->i", x, x)[:, None]
    out += np.einsum("ij,ij->i", y, y)[None, :]
    np.maximum(out, 0.0, out=out)
    return out


def distances_to_point(x: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Exact (difference-based, not Gram-based) float64 Euclidean distances from each row of ``x`` to ``point``."""
    diff = np.asarray(x, dtype=np.float64) - np.asarray(point, dtype=np.float64)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))
