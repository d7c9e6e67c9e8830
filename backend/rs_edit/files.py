"""The one atomic write: a temporary file in the target's folder, renamed into place.

Every file rs-edit writes (results, chips, masks, PNGs, models, ledgers, caches) goes through
`atomic_path`: a reader sees the old file or the complete new one, never a partial one, and the
new file gets the mode an ordinary `open()` would give it (0o666 less the umask), not the 0600
of `tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def file_mode() -> int:
    """The mode of a newly written file: what `open()` would give it under the umask."""
    return 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `target` (same folder, so same filesystem) to write to.

    On success the file is flushed to disk, given the umask's mode and renamed onto `target`.
    On any exception the temporary file (and a GDAL `.aux.xml` sidecar of it) is removed and
    the exception re-raised; `target` is left as it was. The temporary name starts with "."
    and ends with ".tmp" + `suffix` (give the target's extension where a writer goes by it).
    The folder must exist.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.with_name(tmp.name + ".aux.xml").unlink()


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    """`Path.write_bytes`, atomically (see `atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text_atomic(target: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """`Path.write_text`, atomically (see `atomic_path`)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(target)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
