"""Each edit runs in a child process with a memory limit: the server survives every job.

A real server (uvicorn on 127.0.0.1) runs the stand-in editor (`standin.directed_edit`: the
prompt says what it does) in spawned child processes. A job
that runs out of memory, or whose process is killed or exits, fails alone (not retryable, its
message names the memory limit) and the next job on the same server succeeds; a cancel stops a
child that is busy (not calling back) within 2 s; progress and the model cache work as before.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from service_helpers import ThreadServer, rgb_tile, sse_events, submit, wait

from rs_edit.service.config import ServiceConfig
from rs_edit.service.standin import directed_edit, identity_edit

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BUDGET_MB = 2000
FACTOR = 2.0


def _config(**kw) -> ServiceConfig:
    values = {"device": "cpu", "workers": 1, "memory_budget_mb": BUDGET_MB}
    values["job_memory_factor"] = FACTOR
    return ServiceConfig(**{**values, **kw})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("job-process") / "data"
    with ThreadServer(data, _config(), edit_fn=directed_edit) as srv:
        yield srv


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("tiles") / "tile.tif", seed=5)


def _record(server, job_id):
    return server.app.state.service.store.get(job_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_edit_runs_in_a_memory_limited_child_and_the_cache_works(server, tile):
    with server.client() as c:
        assert c.get("/v1/health").json()["executor"]["job_process"] is True
        first = submit(c, tile, "a field", clip="tiny-random").json()
        done = wait(c, first["id"], ("succeeded",))
        report = done["report"]
        assert report["pid"] != os.getpid()  # the edit ran in another process
        estimate = (
            first.get("inputs", {}).get("memory_estimate_mb")
            or _record(server, first["id"]).inputs["memory_estimate_mb"]
        )
        assert report["memory_limit_mb"] == int(FACTOR * estimate)
        assert 0 < report["child_peak_rss_mb"] < report["memory_limit_mb"]
        record = _record(server, first["id"])
        assert record.child_pid == report["pid"]
        assert record.child_started and record.child_finished >= record.child_started
        assert not _alive(record.child_pid)  # reaped
        assert report["model_cached"] is False
        # The model cache (on disk) serves the next job's process.
        again = wait(c, submit(c, tile, "a lake", clip="tiny-random").json()["id"])
        assert again["status"] == "succeeded" and again["report"]["model_cached"] is True
        assert again["report"]["pid"] != report["pid"]


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ("oom", "ran out of memory"),
        ("kill", "killed by SIGKILL"),
        ("abort", "killed by SIGABRT"),
        ("exit", "exit code 3"),
    ],
)
def test_a_crashing_job_fails_alone(server, tile, tmp_path, prompt, says):
    fresh = rgb_tile(tmp_path / "fresh.tif", seed=100 + len(prompt))  # not cached: it trains
    with server.client() as c:
        job = submit(c, fresh, prompt, clip="tiny-random").json()
        failed = wait(c, job["id"], ("failed",), timeout=120)
        estimate = _record(server, job["id"]).inputs["memory_estimate_mb"]
        assert says in failed["message"], failed["message"]
        limit = int(FACTOR * estimate)
        assert f"memory limit of {limit:,} MB" in failed["message"], failed["message"]
        assert failed["retryable"] is False
        assert c.get(f"/v1/jobs/{job['id']}/result").status_code == 409
        assert not (server.app.state.data_dir / "jobs" / job["id"] / "work").exists()
        # The server survived and the next job runs.
        assert c.get("/v1/health").status_code == 200
        ok = wait(c, submit(c, tile, "after " + prompt, clip="tiny-random").json()["id"])
        assert ok["status"] == "succeeded"


def test_cancel_stops_a_busy_child_within_2_s(server, tile):
    with server.client() as c:
        job = submit(c, tile, "busy", clip="tiny-random").json()
        wait(c, job["id"], ("running",), until=lambda j: j["stage"] == "train")
        pid = _record(server, job["id"]).child_pid
        assert pid and _alive(pid)
        t0 = time.monotonic()
        assert c.delete(f"/v1/jobs/{job['id']}").status_code == 200
        done = wait(c, job["id"], timeout=10)
        latency = time.monotonic() - t0
        assert done["status"] == "cancelled"
        assert latency < 2.0, latency
        assert not _alive(pid)
        assert not (server.app.state.data_dir / "jobs" / job["id"] / "input.tif").exists()
        ok = wait(c, submit(c, tile, "after cancel", clip="tiny-random").json()["id"])
        assert ok["status"] == "succeeded"


def test_progress_from_the_child_is_monotone(server, tmp_path):
    tile = rgb_tile(tmp_path / "fresh.tif", seed=11)  # not cached: it trains
    with server.client() as c:
        job = submit(c, tile, "slow", clip="tiny-random").json()
        events = sse_events(c, job["id"])
    values = [e["progress"] for e in events]
    assert events[-1]["status"] == "succeeded"
    assert values == sorted(values)
    assert any(e["stage"] == "train" and 0 < e["progress"] < 100 for e in events)
    assert any("stand-in editor" in line for line in events[-1]["log"])


def test_an_edit_function_that_cannot_be_pickled_runs_in_a_thread(tmp_path, tile):
    calls = []

    def closure_edit(*args, **kw):
        calls.append(os.getpid())
        return identity_edit(*args, train_steps=1, **kw)

    with (
        ThreadServer(tmp_path / "data", _config(), edit_fn=closure_edit) as srv,
        srv.client() as c,
    ):
        assert c.get("/v1/health").json()["executor"]["job_process"] is False
        done = wait(c, submit(c, tile, clip="tiny-random").json()["id"])
        assert done["status"] == "succeeded" and calls == [os.getpid()]
        assert _record(srv, done["id"]).child_pid is None


def test_the_limit_follows_the_estimate_and_the_budget():
    from rs_edit.service.executor import LocalBackend
    from rs_edit.service.jobs import Job

    def job(estimate):
        inputs = {} if estimate is None else {"memory_estimate_mb": estimate}
        return Job("0" * 32, "running", 0, "", "", {}, inputs)

    backend = LocalBackend(None, _config(), Path("/nonexistent"))
    backend._budget_mb = BUDGET_MB
    assert backend.memory_limit_mb(job(1400)) == 2800
    assert backend.memory_limit_mb(job(None)) == int(FACTOR * BUDGET_MB)  # no estimate
    assert backend.memory_limit_mb(job(9000)) == int(FACTOR * BUDGET_MB)  # capped
    unlimited = LocalBackend(None, _config(job_memory_factor=0), Path("/nonexistent"))
    unlimited._budget_mb = BUDGET_MB
    assert unlimited.memory_limit_mb(job(1400)) is None


def test_cache_pruning_is_serialized_across_processes(tmp_path):
    """Children prune the shared model cache: the folder's flock serializes them (two opens
    of the folder conflict even within one process, as two children's would)."""
    import threading

    from rs_edit import model_cache as cache

    held = threading.Event()

    def hold():
        with cache._process_lock(tmp_path):
            held.set()
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    t0 = time.monotonic()
    with cache._process_lock(tmp_path):
        waited = time.monotonic() - t0
    thread.join()
    assert waited > 0.3
    assert list(tmp_path.iterdir()) == []  # no lock file left in the cache
