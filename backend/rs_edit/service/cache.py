"""The size bound of the trained-model cache: least recently used models go first.

The editor keeps trained tile models in a cache folder, one entry (a file or a folder) per tile
content hash and settings. This module only bounds that folder: after every job the models
beyond `max_models` entries or `max_bytes` bytes are removed, oldest use first. An entry's last
use is its modification time; `mark_used` sets it when a job reused a cached model (access times
are unreliable: most systems mount with relatime or noatime).

Entries whose names start with "." or contain ".tmp"/".part" are writes in progress and are
neither counted nor removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_LOCK = threading.Lock()
# Report keys under which an editor may name the model it used (a path or a file name).
_MODEL_KEYS = ("model_path", "model_file", "cache_path", "model_key", "cache_key", "tile_hash")


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    last_used: float


def cache_entries(cache_dir: str | os.PathLike) -> list[CacheEntry]:
    """The cached models, least recently used first."""
    root = Path(cache_dir)
    if not root.is_dir():
        return []
    entries = []
    for path in root.iterdir():
        name = path.name
        if name.startswith(".") or ".tmp" in name or ".part" in name:
            continue
        try:
            entries.append(_entry(path))
        except FileNotFoundError:  # removed meanwhile by another worker
            continue
    return sorted(entries, key=lambda e: (e.last_used, e.path.name))


def _entry(path: Path) -> CacheEntry:
    st = path.stat()
    if not path.is_dir():
        return CacheEntry(path, st.st_size, st.st_mtime)
    size, last = 0, st.st_mtime
    for sub in path.rglob("*"):
        if sub.is_file():
            s = sub.stat()
            size += s.st_size
            last = max(last, s.st_mtime)
    return CacheEntry(path, size, last)


def prune_cache(
    cache_dir: str | os.PathLike,
    max_models: int,
    max_bytes: int,
    *,
    keep: set[str] | frozenset[str] = frozenset(),
) -> list[Path]:
    """Remove least recently used models until at most `max_models` and `max_bytes` remain.

    Entries named in `keep` (the model the current job used) are never removed. Returns the
    removed paths.
    """
    removed: list[Path] = []
    with _LOCK:
        entries = cache_entries(cache_dir)
        count, total = len(entries), sum(e.size for e in entries)
        for entry in entries:
            if count <= max_models and total <= max_bytes:
                break
            if entry.path.name in keep:
                continue
            try:
                if entry.path.is_dir():
                    shutil.rmtree(entry.path)
                else:
                    entry.path.unlink()
            except FileNotFoundError:
                pass
            count, total = count - 1, total - entry.size
            removed.append(entry.path)
    return removed


def used_entries(cache_dir: str | os.PathLike, report: dict) -> set[str]:
    """Names of cache entries the job's report says it used (by path, file name or key)."""
    root = Path(cache_dir)
    names: set[str] = set()
    for key in _MODEL_KEYS:
        value = report.get(key)
        if not isinstance(value, str) or not value:
            continue
        candidate = Path(value)
        if candidate.parent != Path(".") and candidate.parent.resolve() == root.resolve():
            names.add(candidate.name)
            continue
        try:
            for path in root.iterdir():
                stem = path.name.split(".")[0]
                if (
                    path.name == candidate.name
                    or path.name.startswith(value)
                    or (len(stem) >= 16 and value.startswith(stem))
                ):
                    names.add(path.name)
        except FileNotFoundError:
            pass
    return names


def mark_used(cache_dir: str | os.PathLike, names: set[str]) -> None:
    """Record a use of these entries now (their modification time is their last use)."""
    now = time.time()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.utime(Path(cache_dir) / name, (now, now))


def after_job(
    cache_dir: str | os.PathLike, report: dict, max_models: int, max_bytes: int
) -> list[Path]:
    """Book-keeping after a job: mark the model it used, then prune to the bounds."""
    names = used_entries(cache_dir, report)
    mark_used(cache_dir, names)
    return prune_cache(cache_dir, max_models, max_bytes, keep=names)
