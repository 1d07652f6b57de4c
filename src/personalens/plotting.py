"""Pictures of a PersonaX selection, like the paper's Figures 1 and 5: the user's behaviours in 2-D, their clusters,
the centroids, which behaviours were selected, and the budget each cluster received. :func:`save_png` writes every
figure of the project."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personalens.errors import BackendUnavailable
from personalens.selection import Selection


def save_png(fig: Any, path: Path) -> Path:
    """Save ``fig`` as PNG next to ``path`` and rename it into place, so a killed run never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", dpi=120)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def project_2d(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA to two dimensions: (projected rows, mean, 2×d components), so centroids project the same way."""
    x = np.asarray(embeddings, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    if len(x) < 2:
        return np.zeros((len(x), 2)), mean, np.zeros((2, x.shape[1]))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    return centred @ components.T, mean, components


def plot_selection(
    embeddings: np.ndarray,
    selection: Selection,
    path: str | Path,
    *,
    title: str = "",
    labels: Sequence[str] | None = None,
    max_labels: int = 12,
) -> Path:
    """Write a PNG: left, behaviours in 2-D coloured by cluster (selected filled, unselected hollow, centroids as
    crosses, a few selected items labelled); right, each cluster's size and allocated budget."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise BackendUnavailable("plots need matplotlib: pip install 'personalens[plot]'") from exc
    points, mean, components = project_2d(embeddings)
    centroids = (np.asarray(selection.centroids, dtype=np.float64) - mean) @ components.T
    m = len(selection.sizes)
    cmap = plt.get_cmap("tab20" if m > 10 else "tab10")
    colours = [cmap(i % cmap.N) for i in range(m)]
    chosen = np.zeros(len(points), dtype=bool)
    chosen[list(selection.selected)] = True
    labels_arr = np.asarray(selection.labels)

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5.5), gridspec_kw={"width_ratios": [3, 2]})
    for c in range(m):
        members = labels_arr == c
        ax.scatter(*points[members & ~chosen].T, s=28, facecolors="none", edgecolors=[colours[c]], linewidths=1)
        ax.scatter(*points[members & chosen].T, s=40, color=colours[c], edgecolors="black", linewidths=0.5)
        ax.scatter(*centroids[c], marker="X", s=160, color=colours[c], edgecolors="black", linewidths=1.2)
    if labels is not None:
        for i in list(np.flatnonzero(chosen))[:max_labels]:
            ax.annotate(labels[int(i)][:28], points[i], fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.scatter([], [], s=40, color="grey", edgecolors="black", label="selected")
    ax.scatter([], [], s=28, facecolors="none", edgecolors="grey", label="not selected")
    ax.scatter([], [], marker="X", s=120, color="grey", edgecolors="black", label="cluster centroid")
    ax.legend(loc="best", fontsize=8)
    ax.set_title(title or f"{len(points)} behaviours, {m} clusters, {int(chosen.sum())} selected")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")

    order = np.arange(m)
    bx.bar(order, selection.sizes, color=[(*c[:3], 0.3) for c in colours], edgecolor=colours, label="cluster size")
    bx.bar(order, selection.budgets, color=colours, width=0.5, label="budget a_i")
    for i in order:
        bx.text(i, selection.budgets[i], str(int(selection.budgets[i])), ha="center", va="bottom", fontsize=8)
    bx.set_xticks(order)
    bx.set_xlabel("cluster")
    bx.set_ylabel("behaviours")
    bx.set_title(f"budget k = {int(np.sum(selection.budgets))} over {m} clusters")
    bx.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
