"""Durable job records: one SQLite database (WAL, short transactions) under the data directory.

A job's files live in `DIR/jobs/<id>/` (input.tif, mask.tif, roi.geojson, result*.tif); its
record (status, progress, options, outputs, report) lives here. Job ids are server-made UUID hex
(32 lowercase hex digits) and are checked against that pattern before anything else is done with
them, so a client's id never reaches the filesystem.

States: queued -> running -> succeeded | failed | cancelled; queued -> cancelled. Every
transition is one guarded UPDATE (`WHERE status = ...`), so two threads can never both finish,
claim or cancel the same job. After a crash (even `kill -9`) `recover` marks jobs that were
running as failed and returns the queued ones to be queued again; committed records are never
lost (WAL, synchronous=NORMAL survives a process kill).

Truthful retry: the runner records when a job's edit process (the child that does the work,
`executor.LocalBackend`) starts, with its pid, and when it ends. A job the restart interrupted
before its child started, or after its child had ended, cannot have brought the server down: it
is failed with "interrupted by a server restart; resubmit" and `retryable: true`. A job whose
child was running when the server died may have caused the death (memory): it is failed with
`CRASHED_MESSAGE` and `retryable: false`, as is a job whose child ran out of memory or crashed.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import NotFoundError, NotReadyError, QueueFullError, redact

log = logging.getLogger("rs_edit.service")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
INTERRUPTED_MESSAGE = "interrupted by a server restart; resubmit"
SHUTDOWN_MESSAGE = "interrupted by a server shutdown; resubmit"
CANCELLED_MESSAGE = "cancelled by the client; nothing was written"
CRASHED_MESSAGE = (
    "the server stopped while this job's edit was running (its process had started), so the job "
    "may have caused the stop (e.g. by using too much memory): it is not retried; resubmit with "
    "a smaller ROI or preset if the edit was large, and ask the operator to check the server log"
)
RETRYABLE_MESSAGES = (INTERRUPTED_MESSAGE, SHUTDOWN_MESSAGE)
MAX_LOG_LINES = 50

_JOB_ID = re.compile(r"[0-9a-f]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    options TEXT NOT NULL,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL DEFAULT '[]',
    report TEXT NOT NULL DEFAULT '{}',
    log TEXT NOT NULL DEFAULT '[]',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runs INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
"""
# Columns added after the first release: added to an older database when it is opened.
_ADDED_COLUMNS = (
    ("retryable", "INTEGER NOT NULL DEFAULT 0"),  # a failed job: sending it again may work
    ("child_pid", "INTEGER"),  # the edit process of the current run (None: none started)
    ("child_started", "REAL"),
    ("child_finished", "REAL"),  # set when that process has ended (whatever its outcome)
)


class JobActiveError(NotReadyError):
    """The job is queued or running: it cannot be removed (409)."""

    code = "job_active"


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_job_id(value: str) -> str:
    """A client's job id, or NotFoundError: only the exact server-made shape is ever used."""
    if not isinstance(value, str) or not _JOB_ID.fullmatch(value):
        shown = value[:40] if isinstance(value, str) else type(value).__name__
        raise NotFoundError(f"unknown job id {shown!r} (job ids are 32 hex digits)")
    return value


@dataclass
class Job:
    id: str
    status: str
    progress: float
    stage: str
    message: str
    options: dict
    inputs: dict
    outputs: list[str] = field(default_factory=list)
    report: dict = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    runs: int = 0
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    updated: float = 0.0
    seq: int = 0
    retryable: bool = False
    child_pid: int | None = None
    child_started: float | None = None
    child_finished: float | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self, queue_position: int | None = None) -> dict:
        """The job as the API shows it (OGC API - Processes job status, plus our fields)."""
        body = {
            "id": self.id,
            "jobID": self.id,
            "type": "process",
            "processID": "edit",
            "status": self.status,
            "progress": int(round(self.progress)),
            "stage": self.stage,
            "message": self.message,
            "created": _iso(self.created),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "updated": _iso(self.updated),
            "runs": self.runs,
            "options": self.options,
            "log": self.log,
            "links": self.links(),
        }
        if queue_position is not None:
            body["queue_position"] = queue_position
        if self.status == SUCCEEDED:
            body["report"] = self.report
            body["results"] = self.result_paths()
        if self.status == FAILED:  # true: not the job's fault, the same request may be sent again
            body["retryable"] = self.retryable
        return body

    def result_paths(self) -> list[str]:
        """URL paths of the results: /result for one, /result?variant=i for several."""
        base = f"/v1/jobs/{self.id}/result"
        if len(self.outputs) == 1:
            return [base]
        return [f"{base}?variant={i + 1}" for i in range(len(self.outputs))]

    def links(self) -> list[dict]:
        base = f"/v1/jobs/{self.id}"
        links = [
            {"href": base, "rel": "self", "type": "application/json"},
            {"href": f"{base}/events", "rel": "monitor", "type": "text/event-stream"},
        ]
        if self.status == SUCCEEDED:
            for href in self.result_paths():
                links.append({"href": href, "rel": "results", "type": "image/tiff"})
        return links


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Thread-safe job records. One connection, one lock, short transactions."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._versions: dict[str, int] = {}
        self._end_listeners: list = []  # see add_end_listener
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in _ADDED_COLUMNS:
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
                if name == "retryable":  # what `to_json` said of older records
                    marks = ",".join("?" * len(RETRYABLE_MESSAGES))
                    self._db.execute(
                        f"UPDATE jobs SET retryable = 1 WHERE status = ? AND message IN ({marks})",
                        (FAILED, *RETRYABLE_MESSAGES),
                    )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- end listeners (retention: a failed or cancelled job's uploads go when it ends) -------

    def add_end_listener(self, listener) -> None:
        """`listener(job_id, status)` is called once a job has reached a terminal state (in the
        thread that ended it, outside the store's lock); its errors are logged, never raised."""
        self._end_listeners.append(listener)

    def _ended(self, job_id: str, status: str) -> None:
        for listener in list(self._end_listeners):
            try:
                listener(job_id, status)
            except Exception:
                log.exception("job %s: an end listener failed", job_id)

    # --- reading ---------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT rowid, * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def require(self, job_id: str) -> Job:
        job = self.get(check_job_id(job_id))
        if job is None:
            raise NotFoundError(f"unknown job id {job_id!r}")
        return job

    def list(self, limit: int = 100, status: str | None = None) -> list[Job]:
        sql, args = "SELECT rowid, * FROM jobs", []
        if status:
            sql, args = sql + " WHERE status = ?", [status]
        sql += " ORDER BY rowid DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({status: n for status, n in rows})
        return counts

    def queue_position(self, job: Job) -> int:
        """1 for the next job to run."""
        with self._lock:
            (n,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND rowid < ?", (QUEUED, job.seq)
            ).fetchone()
        return n + 1

    def version(self, job_id: str) -> int:
        """Bumped on every change of the job (cheap: no database access), for event streams."""
        return self._versions.get(job_id, 0)

    def ids(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT id FROM jobs")}

    # --- writing ---------------------------------------------------------------------------

    def create(self, job_id: str, options: dict, inputs: dict, max_queue: int) -> Job:
        """Insert a queued job, or QueueFullError when `max_queue` jobs already wait."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (queued,) = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status = ?", (QUEUED,)
                ).fetchone()
                if queued >= max_queue:
                    raise QueueFullError(
                        f"the job queue is full ({queued} jobs waiting); try again later",
                        headers={"Retry-After": "5"},
                    )
                self._db.execute(
                    "INSERT INTO jobs (id, status, message, options, inputs, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, QUEUED, "queued", _dump(options), _dump(inputs), now, now),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._bump(job_id)
        return self.get(job_id)

    def claim(self, job_id: str) -> Job | None:
        """queued -> running, unless it was cancelled meanwhile. None if not claimable."""
        now = time.time()
        changed = self._update(
            "UPDATE jobs SET status = ?, runs = runs + 1, started = ?, updated = ?, "
            "stage = 'starting', message = 'running', child_pid = NULL, child_started = NULL, "
            "child_finished = NULL "
            "WHERE id = ? AND status = ? AND cancel_requested = 0",
            (RUNNING, now, now, job_id, QUEUED),
            job_id,
        )
        return self.get(job_id) if changed else None

    def child_started(self, job_id: str, pid: int) -> None:
        """The running job's edit process has started (committed before it does any work)."""
        now = time.time()
        self._update(
            "UPDATE jobs SET child_pid = ?, child_started = ?, child_finished = NULL, "
            "updated = ? WHERE id = ? AND status = ?",
            (int(pid), now, now, job_id, RUNNING),
            job_id,
        )

    def child_finished(self, job_id: str) -> None:
        """The running job's edit process has ended (exited, crashed or was killed)."""
        now = time.time()
        self._update(
            "UPDATE jobs SET child_finished = ?, updated = ? WHERE id = ? AND status = ? "
            "AND child_started IS NOT NULL",
            (now, now, job_id, RUNNING),
            job_id,
        )

    def update_progress(self, job_id: str, progress: float, stage: str, message: str) -> None:
        self._update(
            "UPDATE jobs SET progress = MAX(progress, ?), stage = ?, message = ?, updated = ? "
            "WHERE id = ? AND status = ?",
            (float(progress), stage[:100], redact(message)[:500], time.time(), job_id, RUNNING),
            job_id,
        )

    def append_log(self, job_id: str, line: str) -> None:
        with self._lock:
            row = self._db.execute("SELECT log FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            lines = (json.loads(row[0]) + [redact(line)[:500]])[-MAX_LOG_LINES:]
            self._update(
                "UPDATE jobs SET log = ?, updated = ? WHERE id = ?",
                (_dump(lines), time.time(), job_id),
                job_id,
            )

    def finish(
        self,
        job_id: str,
        status: str,
        message: str,
        *,
        outputs: list[str] | None = None,
        report: dict | None = None,
        retryable: bool | None = None,
    ) -> bool:
        """running -> a terminal state. False if the job was not running (nothing changes).

        `retryable` (failed jobs): whether the same request may simply be sent again; None:
        only for the restart and shutdown messages."""
        assert status in TERMINAL
        if retryable is None:
            retryable = status == FAILED and message in RETRYABLE_MESSAGES
        now = time.time()
        progress = ", progress = 100" if status == SUCCEEDED else ""
        ended = self._update(
            f"UPDATE jobs SET status = ?, message = ?, outputs = ?, report = ?, finished = ?, "
            f"updated = ?, stage = ?, retryable = ?{progress} WHERE id = ? AND status = ?",
            (
                status,
                redact(message)[:2000],
                _dump(outputs or []),
                redact(_dump(report or {})),
                now,
                now,
                "done" if status == SUCCEEDED else status,
                int(bool(retryable) and status == FAILED),
                job_id,
                RUNNING,
            ),
            job_id,
        )
        if ended:
            self._ended(job_id, status)
        return ended

    def request_cancel(self, job_id: str) -> Job:
        """A queued job is cancelled at once; a running one is flagged (the worker stops it)."""
        now = time.time()
        with self._lock:
            cancelled = self._update(
                "UPDATE jobs SET status = ?, message = ?, stage = ?, finished = ?, updated = ?, "
                "cancel_requested = 1 WHERE id = ? AND status = ?",
                (CANCELLED, CANCELLED_MESSAGE, CANCELLED, now, now, job_id, QUEUED),
                job_id,
            )
            self._update(
                "UPDATE jobs SET cancel_requested = 1, message = 'cancelling', updated = ? "
                "WHERE id = ? AND status = ?",
                (now, job_id, RUNNING),
                job_id,
            )
        if cancelled:
            self._ended(job_id, CANCELLED)
        return self.require(job_id)

    def recover(self) -> tuple[list[str], list[str]]:
        """After a restart: running jobs -> failed; returns (interrupted, queued).

        A job whose edit process had not started, or had ended, is retryable
        (INTERRUPTED_MESSAGE); one whose edit process was running when the server died is not
        (CRASHED_MESSAGE): it may have been the cause."""
        now = time.time()
        with self._lock:
            interrupted = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM jobs WHERE status = ? ORDER BY rowid", (RUNNING,)
                )
            ]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "UPDATE jobs SET status = ?, message = ?, stage = ?, finished = ?, "
                    "updated = ?, retryable = 0 WHERE status = ? AND child_started IS NOT NULL "
                    "AND child_finished IS NULL",
                    (FAILED, CRASHED_MESSAGE, FAILED, now, now, RUNNING),
                )
                self._db.execute(
                    "UPDATE jobs SET status = ?, message = ?, stage = ?, finished = ?, "
                    "updated = ?, retryable = 1 WHERE status = ?",
                    (FAILED, INTERRUPTED_MESSAGE, FAILED, now, now, RUNNING),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            queued = [
                r[0]
                for r in self._db.execute(
                    "SELECT id FROM jobs WHERE status = ? ORDER BY rowid", (QUEUED,)
                )
            ]
        for job_id in interrupted:
            self._bump(job_id)
            self._ended(job_id, FAILED)
        return interrupted, queued

    def purge(self, job_id: str) -> Job:
        """Delete a finished, failed or cancelled job's record (its files: `retention.purge_job`).
        NotFoundError if unknown; `JobActiveError` (409) while it is queued or running."""
        job = self.require(job_id)
        marks = ",".join("?" * len(TERMINAL))
        with self._lock:
            deleted = self._db.execute(
                f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})", (job_id, *TERMINAL)
            ).rowcount
            if deleted:
                self._bump(job_id)
        if not deleted:
            job = self.get(job_id)
            if job is None:  # purged meanwhile by another request
                raise NotFoundError(f"unknown job id {job_id!r}")
            raise JobActiveError(
                f"job {job_id} is {job.status}: cancel it first (DELETE /v1/jobs/{job_id}), "
                "then remove it once it has stopped"
            )
        return job

    def finished_before(self, t: float, limit: int = 1000) -> list[str]:
        """Ids of finished, failed or cancelled jobs that ended before time `t`, oldest first."""
        marks = ",".join("?" * len(TERMINAL))
        with self._lock:
            rows = self._db.execute(
                f"SELECT id FROM jobs WHERE status IN ({marks}) "
                "AND COALESCE(finished, updated) < ? ORDER BY COALESCE(finished, updated) LIMIT ?",
                (*TERMINAL, float(t), int(limit)),
            ).fetchall()
        return [r[0] for r in rows]

    def _update(self, sql: str, args: tuple, job_id: str) -> bool:
        with self._lock:
            changed = self._db.execute(sql, args).rowcount > 0
            if changed:
                self._bump(job_id)
        return changed

    def _bump(self, job_id: str) -> None:
        self._versions[job_id] = self._versions.get(job_id, 0) + 1


def _dump(value) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        status=row["status"],
        progress=row["progress"],
        stage=row["stage"],
        message=row["message"],
        options=json.loads(row["options"]),
        inputs=json.loads(row["inputs"]),
        outputs=json.loads(row["outputs"]),
        report=json.loads(row["report"]),
        log=json.loads(row["log"]),
        cancel_requested=bool(row["cancel_requested"]),
        runs=row["runs"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        updated=row["updated"],
        seq=row["rowid"],
        retryable=bool(row["retryable"]),
        child_pid=row["child_pid"],
        child_started=row["child_started"],
        child_finished=row["child_finished"],
    )
