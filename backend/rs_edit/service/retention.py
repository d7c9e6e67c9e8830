"""What the service keeps, and for how long: removing jobs, the retention sweep, disk usage.

- `purge_job`: a finished, failed or cancelled job's record, upload and results go (a queued or
  running job is refused, 409 `job_active`: cancel it first). The record goes first, then the
  folder: a crash in between leaves a folder without a record, which the next start removes
  (`service.Service._remove_orphans`), never a record whose files are gone.
- A failed or cancelled job's uploads (image, mask, ROI, example: `executor.remove_uploads`) go
  as soon as it ends (`drop_uploads_of_ended`, which `Sweeper` registers with the store's end
  listeners; at start, `drop_leftover_uploads` clears those an earlier version or a crash
  left). Nothing reads them again: the service never runs a job twice, a retryable failure is
  retried by the client sending its request again (a new job with its own upload), and a
  re-run with another prompt or seed is a new submission too. Their record, message and log
  stay until purged or swept. A succeeded job keeps its upload with its results.
- `sweep`: every job that ended more than `ServiceConfig.retention_days` ago is purged (0 keeps
  jobs forever); `Sweeper` runs it at start and then hourly (`executor.JobRunner` starts it).
- `DataUsage`: the bytes the data directory holds on disk (job folders, model cache, database),
  walked at most every few seconds, for a submission to check against `max_data_bytes`
  (`StorageFullError`, 507).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from .errors import NotFoundError, ServiceError
from .jobs import CANCELLED, FAILED, Job, JobActiveError, JobStore, check_job_id

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


ENDED_WITHOUT_RESULT = (FAILED, CANCELLED)


def drop_uploads_of_ended(jobs_dir: Path, job_id: str, status: str) -> None:
    """A store end listener: a job that failed or was cancelled loses its uploads now."""
    if status in ENDED_WITHOUT_RESULT:
        from .executor import remove_uploads  # executor imports this module

        remove_uploads(Path(jobs_dir) / check_job_id(job_id))


def drop_leftover_uploads(store: JobStore, jobs_dir: Path) -> list[str]:
    """Remove the uploads still in the folders of failed or cancelled jobs (kept by an earlier
    version, or left by a crash right after the job ended). Returns those jobs' ids."""
    dropped = []
    for folder in _folders_with_uploads(Path(jobs_dir)):
        job = store.get(folder.name)
        if job is not None and job.status in ENDED_WITHOUT_RESULT:
            drop_uploads_of_ended(jobs_dir, job.id, job.status)
            dropped.append(job.id)
    return dropped


def _folders_with_uploads(jobs_dir: Path):
    try:
        folders = [f for f in jobs_dir.iterdir() if f.is_dir()]
    except FileNotFoundError:
        return
    for folder in folders:
        if (folder / "input.tif").exists():  # every submission stores its image there
            yield folder


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
    """What the service keeps over time: a failed or cancelled job's uploads go when it ends
    (from construction on, so also for the jobs the store's `recover` fails); at `start`, the
    uploads such jobs still hold; then `sweep` at start and every `interval_s`, in a daemon
    thread until `stop`."""

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
        store.add_end_listener(functools.partial(drop_uploads_of_ended, self.jobs_dir))

    def start(self) -> None:
        dropped = drop_leftover_uploads(self.store, self.jobs_dir)
        if dropped:
            log.info(
                "retention: removed the uploads of %d failed or cancelled job(s)", len(dropped)
            )
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
