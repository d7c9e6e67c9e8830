"""The trained tile-model cache, its one owner: where a model lives, its key, and the bound.

A cache folder (`--cache-dir`, the service's data dir, or the user cache) holds trained tile
models in `models/`, one file per tile content, preset and training format (`model_key`); the
editor loads and saves them at `model_path`, and its report names the file it used
(`model_entry`). After every job the service bounds the folder (`after_job`): models beyond
`max_models` entries or `max_bytes` bytes are removed, oldest use first. An entry's last use is
its modification time; `mark_used` sets it (access times are unreliable: most systems mount with
relatime or noatime).

Entries whose names start with "." or contain ".tmp"/".part" are writes in progress and are
neither counted nor removed. Jobs run in child processes of their own, so pruning is serialized
across processes too (an advisory lock on the folder itself), not only across threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_LOCK = threading.Lock()
MODELS_SUBDIR = "models"  # prompt expansions (small) live beside it, in prompts/
MODEL_FORMAT = "tile-model-v2"  # part of every key: bump when training changes


def models_dir(cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / MODELS_SUBDIR


def model_key(image, preset: str) -> str:
    """The key of the model trained on `image` (the model-range array) with `preset`."""
    from .engine.model import tile_hash  # lazy: the service's process need not import torch

    return tile_hash(image, preset, MODEL_FORMAT)


def model_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """Where the model of `key` is (or will be) stored; its name is the report's
    `model_entry`."""
    return models_dir(cache_dir) / f"{key[:40]}.pt"


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
    with _LOCK, _process_lock(cache_dir):
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


@contextlib.contextmanager
def _process_lock(cache_dir: str | os.PathLike):
    """An exclusive advisory lock (flock) on the folder itself, no file made (no lock if the
    folder cannot be opened: a missing folder has nothing to prune)."""
    try:
        fd = os.open(cache_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def mark_used(cache_dir: str | os.PathLike, names: set[str]) -> None:
    """Record a use of these entries now (their modification time is their last use)."""
    now = time.time()
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.utime(Path(cache_dir) / name, (now, now))


def after_job(
    cache_dir: str | os.PathLike, model_entry: str | None, max_models: int, max_bytes: int
) -> list[Path]:
    """Book-keeping after a job: mark the model it used (its report's `model_entry`, a file
    name in `models/`), then prune the models to the bounds."""
    folder = models_dir(cache_dir)
    names = {model_entry} if model_entry else set()
    mark_used(folder, names)
    return prune_cache(folder, max_models, max_bytes, keep=names)
