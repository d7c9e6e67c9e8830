"""Durability: `kill -9` of the server mid-job loses nothing.

After the restart, a finished job's result is still served byte for byte, the job that was
running is failed with "interrupted by a server restart; resubmit" (and nothing of it is
published), and the job that was waiting in the queue is queued again and runs once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from service_helpers import ProcessServer, rgb_tile, submit, wait

from rs_edit.service.jobs import INTERRUPTED_MESSAGE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


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

    second = ProcessServer(data, *args).start()
    try:
        with second.client() as c:
            job = c.get(f"/v1/jobs/{done['id']}").json()
            assert job["status"] == "succeeded"
            assert c.get(f"/v1/jobs/{done['id']}/result").content == result

            job = c.get(f"/v1/jobs/{interrupted['id']}").json()
            assert job["status"] == "failed" and job["message"] == INTERRUPTED_MESSAGE
            assert job["retryable"] is True  # clients may send the same request again
            assert c.get(f"/v1/jobs/{interrupted['id']}/result").status_code == 409
            folder = data / "jobs" / interrupted["id"]
            assert sorted(p.name for p in folder.iterdir()) == ["input.tif"]

            job = wait(c, queued["id"], ("succeeded",))
            assert job["runs"] == 1
            ids = {j["id"] for j in c.get("/v1/jobs").json()["jobs"]}
            assert ids == {done["id"], interrupted["id"], queued["id"]}
    finally:
        second.kill()
