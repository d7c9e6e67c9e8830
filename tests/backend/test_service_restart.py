"""Durability: `kill -9` of the server mid-job loses nothing, and says truthfully what to retry.

After the restart, a finished job's result is still served byte for byte, the job whose edit
process was running is failed and not retryable (it may have brought the server down; nothing of
it is published, and its process died with the server), and the job that was waiting in the
queue is queued again and runs once. The retry rule itself (`JobStore.recover`) is checked on
the store: a job interrupted before its edit process started, or after it ended, is retryable.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest
from service_helpers import ProcessServer, rgb_tile, submit, wait

from rs_edit.service.jobs import (
    CRASHED_MESSAGE,
    FAILED,
    INTERRUPTED_MESSAGE,
    QUEUED,
    SHUTDOWN_MESSAGE,
    JobStore,
    new_job_id,
)

pytestmark = [pytest.mark.timeout(240)]


@pytest.mark.slow
def test_restart_after_kill_9_loses_nothing(tmp_path: Path):
    data = tmp_path / "data"
    tiles = [rgb_tile(tmp_path / f"tile{i}.tif", seed=i) for i in range(3)]  # no cache hits
    args = ("--steps", "30", "--step-s", "0.05", "--workers", "1")
    first = ProcessServer(data, *args).start()
    try:
        with first.client() as c:
            done = submit(c, tiles[0], clip="tiny-random").json()
            wait(c, done["id"], ("succeeded",))
            result = c.get(f"/v1/jobs/{done['id']}/result").content
            interrupted = submit(c, tiles[1], "b", clip="tiny-random").json()
            queued = submit(c, tiles[2], "c", clip="tiny-random").json()
            wait(c, interrupted["id"], ("running",), until=lambda j: j["progress"] > 5)
            assert c.get(f"/v1/jobs/{queued['id']}").json()["status"] == "queued"
    finally:
        first.kill()  # SIGKILL: no shutdown code runs
    assert first.proc.returncode == -9
    child = _child_pid(data, interrupted["id"])
    assert child is not None and child != first.proc.pid
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:  # no orphan edits on
        time.sleep(0.05)
    assert not _alive(child), "the edit process outlived the server"

    second = ProcessServer(data, *args).start()
    try:
        with second.client() as c:
            job = c.get(f"/v1/jobs/{done['id']}").json()
            assert job["status"] == "succeeded"
            assert c.get(f"/v1/jobs/{done['id']}/result").content == result

            job = c.get(f"/v1/jobs/{interrupted['id']}").json()
            assert job["status"] == "failed" and job["message"] == CRASHED_MESSAGE
            assert job["retryable"] is False  # it may have caused the crash: not sent again
            assert c.get(f"/v1/jobs/{interrupted['id']}/result").status_code == 409
            folder = data / "jobs" / interrupted["id"]
            # A job failed at restart drops its uploads too; still no partial outputs.
            assert sorted(p.name for p in folder.iterdir()) == []

            job = wait(c, queued["id"], ("succeeded",))
            assert job["runs"] == 1
            ids = {j["id"] for j in c.get("/v1/jobs").json()["jobs"]}
            assert ids == {done["id"], interrupted["id"], queued["id"]}
    finally:
        second.kill()


def _child_pid(data: Path, job_id: str) -> int | None:
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        (pid,) = db.execute("SELECT child_pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _running(store: JobStore) -> str:
    job_id = new_job_id()
    store.create(job_id, {}, {}, max_queue=10)
    assert store.claim(job_id) is not None
    return job_id


def test_recover_retries_only_jobs_that_cannot_have_caused_the_crash(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    not_started = _running(store)  # claimed; its edit process was never started
    ended = _running(store)  # its edit process had ended (the server died while publishing)
    store.child_started(ended, 4242)
    store.child_finished(ended)
    running = _running(store)  # its edit process was running: a suspect
    store.child_started(running, 4343)
    queued = new_job_id()
    store.create(queued, {}, {}, max_queue=10)
    store.close()  # as after kill -9: nothing else was written

    store = JobStore(tmp_path / "jobs.sqlite3")
    interrupted, requeue = store.recover()
    assert interrupted == [not_started, ended, running] and requeue == [queued]
    for job_id in (not_started, ended):
        job = store.get(job_id)
        assert job.status == FAILED and job.message == INTERRUPTED_MESSAGE
        assert job.to_json()["retryable"] is True
    job = store.get(running)
    assert job.status == FAILED and job.message == CRASHED_MESSAGE
    assert job.to_json()["retryable"] is False
    assert "not retried" in job.message
    assert store.get(queued).status == QUEUED
    store.close()


def test_retryable_is_recorded_per_failure(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    shutdown, crashed, plain = _running(store), _running(store), _running(store)
    store.finish(shutdown, FAILED, SHUTDOWN_MESSAGE)  # stopped by us: retryable by default
    store.finish(crashed, FAILED, "the edit ran out of memory", retryable=False)
    store.finish(plain, FAILED, "the tile is unusable")
    assert store.get(shutdown).to_json()["retryable"] is True
    assert store.get(crashed).to_json()["retryable"] is False
    assert store.get(plain).to_json()["retryable"] is False
    store.close()


def test_an_older_database_is_migrated(tmp_path: Path):
    """A data directory from before the retry columns: opened, columns added, an interrupted
    job still retryable as it was."""
    path = tmp_path / "jobs.sqlite3"
    from rs_edit.service import jobs

    db = sqlite3.connect(path)
    db.executescript(jobs._SCHEMA)
    db.execute(
        "INSERT INTO jobs (id, status, message, options, inputs, created, updated) "
        "VALUES (?, ?, ?, '{}', '{}', 0, 0)",
        ("a" * 32, FAILED, INTERRUPTED_MESSAGE),
    )
    db.commit()
    db.close()
    store = JobStore(path)
    job = store.get("a" * 32)
    assert job.retryable is True and job.child_pid is None
    store.close()
    JobStore(path).close()  # opened again: nothing to add
