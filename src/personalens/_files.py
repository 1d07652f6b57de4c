"""Small file helpers: the cache directory, sha256 with a verification stamp, and an inter-process lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """``$PERSONALENS_CACHE_DIR``, else ``$XDG_CACHE_HOME/personalens``, else ``~/.cache/personalens``.
    Nothing is created here: callers create what they write."""
    env = os.environ.get("PERSONALENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "personalens"


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def verified(path: Path, sha256: str) -> bool:
    """True when ``path`` has ``sha256``. A stamp next to the file (size, mtime, hash) saves re-hashing large files;
    any change to the file invalidates the stamp and the hash is computed again."""
    if not path.is_file():
        return False
    st = path.stat()
    stamp = _stamp_path(path)
    try:
        saved = json.loads(stamp.read_text())
        if saved == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(path) != sha256:
        return False
    write_stamp(path, sha256)
    return True


def write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    _stamp_path(path).write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if missing), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def move_rows_aside(path: Path, keep: list[dict[str, Any]], stale: list[dict[str, Any]], stale_path: Path) -> None:
    """Append ``stale`` to ``stale_path`` (synced to disk), then atomically replace the JSONL file ``path`` with
    ``keep``: a crash in between leaves a row in both files, never in neither."""
    with open(stale_path, "a", encoding="utf-8") as sink:
        for row in stale:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
        sink.flush()
        os.fsync(sink.fileno())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in keep), encoding="utf-8")
    os.replace(tmp, path)


def read_jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of an append-only JSONL file written by a resumable run, and how many lines did not parse
    (a torn last line from a killed run is counted, not fatal; its work is simply redone)."""
    rows: list[dict[str, Any]] = []
    bad = 0
    if not path.exists():
        return rows, 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                value = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(value, dict):
                rows.append(value)
            else:
                bad += 1
    return rows, bad
