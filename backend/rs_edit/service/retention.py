"""What the service keeps, and for how long: removing jobs, the retention sweep, disk usage.

- `purge_job`: a finished, failed or cancelled job's record, upload and results go (a queued or
  running job is refused, 409 `job_active`: cancel it first). The record goes first, then the
  folder: a crash in between leaves a folder without a record, which the next start removes
  (`service.Service._remove_orphans`), never a record whose files are gone.
- A cancelled job's upload is removed when it is cancelled (`executor.remove_uploads`, by the
  runner); its record stays until it is purged or swept.
- `sweep`: every job that ended more than `ServiceConfig.retention_days` ago is purged (0 keeps
  jobs forever); `Sweeper` runs it at start and then hourly (`executor.JobRunner` starts it).
- `DataUsage`: the bytes the data directory holds on disk (job folders, model cache, database),
  walked at most every few seconds, for a submission to check against `max_data_bytes`
  (`StorageFullError`, 507).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path

from .errors import NotFoundError, ServiceError
from .jobs import Job, JobActiveError, JobStore, check_job_id

log = logging.getLogger("rs_edit.service")

DAY_S = 86400.0
SWEEP_INTERVAL_S = 3600.0
SWEEP_BATCH = 500


class StorageFullError(ServiceError):
    """The data directory holds more than the server may keep (507)."""

    status, code = 507, "storage_full"


def purge_job(store: JobStore, jobs_dir: Path, job_id: str) -> Job:
    """Remove a finished, failed or cancelled job: its record, then its folder (upload and
    results). Returns the job as it was. NotFoundError, or JobActiveError while it is queued or
    running."""
    job = store.purge(check_job_id(job_id))
    shutil.rmtree(Path(jobs_dir) / job.id, ignore_errors=True)
    return job


def sweep(
    store: JobStore, jobs_dir: Path, retention_days: float, *, now: float | None = None
) -> list[str]:
    """Purge every job that ended more than `retention_days` days before `now`; 0 (or less):
    nothing. Returns the purged ids."""
    if not retention_days or retention_days <= 0:
        return []
    cutoff = (time.time() if now is None else now) - float(retention_days) * DAY_S
    removed: list[str] = []
    seen: set[str] = set()
    while True:
        batch = [i for i in store.finished_before(cutoff, SWEEP_BATCH) if i not in seen]
        if not batch:
            return removed
        for job_id in batch:
            seen.add(job_id)
            try:
                purge_job(store, jobs_dir, job_id)
            except (NotFoundError, JobActiveError):  # removed meanwhile by a client
                continue
            removed.append(job_id)


class Sweeper:
    """`sweep` at start, then every `interval_s`, in a daemon thread until `stop`."""

    def __init__(
        self,
        store: JobStore,
        jobs_dir: Path,
        retention_days: float,
        interval_s: float = SWEEP_INTERVAL_S,
    ):
        self.store, self.jobs_dir = store, Path(jobs_dir)
        self.retention_days, self.interval_s = retention_days, interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.removed = 0

    def start(self) -> None:
        if not self.retention_days or self.retention_days <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="rs-edit-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                removed = sweep(self.store, self.jobs_dir, self.retention_days)
                self.removed += len(removed)
                if removed:
                    log.info(
                        "retention: removed %d job(s) older than %g days",
                        len(removed),
                        self.retention_days,
                    )
            except Exception:  # never let the sweeper die: try again next time
                log.exception("retention sweep failed")
            self._stop.wait(self.interval_s)


def data_usage_bytes(data_dir: str | os.PathLike) -> int:
    """Bytes the folder's files occupy on disk (allocated blocks, all subfolders; links are
    not followed)."""
    total = 0
    stack = [str(data_dir)]
    while stack:
        folder = stack.pop()
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        total += getattr(st, "st_blocks", 0) * 512 or st.st_size
                except FileNotFoundError:  # removed meanwhile
                    continue
    return total


class DataUsage:
    """The data directory's size, walked at most every `ttl_s` seconds (a submission must not
    walk thousands of job folders); uploads stored since the last walk are added by `add`."""

    def __init__(self, data_dir: str | os.PathLike, ttl_s: float = 5.0):
        self.data_dir = Path(data_dir)
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._bytes = 0
        self._t = -float("inf")

    def bytes(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._t > self.ttl_s:
                self._bytes = data_usage_bytes(self.data_dir)
                self._t = now
            return self._bytes

    def add(self, nbytes: int) -> None:
        """Count bytes written since the last walk (until the next one)."""
        with self._lock:
            self._bytes += max(int(nbytes), 0)

    def refresh(self) -> int:
        with self._lock:
            self._t = -float("inf")
        return self.bytes()

    def check(self, budget_bytes: int | None, incoming: int = 0) -> int:
        """`check_disk_budget` with this directory's usage; returns the usage."""
        used = self.bytes()
        check_disk_budget(used, budget_bytes, incoming)
        return used


def check_disk_budget(used: int, budget_bytes: int | None, incoming: int = 0) -> None:
    """StorageFullError (507) when `used` + `incoming` bytes exceed `budget_bytes` (None: no
    bound)."""
    if budget_bytes is None:
        return
    if used + max(int(incoming), 0) > budget_bytes:
        raise StorageFullError(
            f"this server's storage for jobs is full ({_size(used)} of {_size(budget_bytes)} "
            f"used{f', this upload {_size(incoming)}' if incoming else ''}): try again later, "
            "or remove finished jobs you no longer need"
        )


def _size(n: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
