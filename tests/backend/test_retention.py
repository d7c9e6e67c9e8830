"""Retention: purging a finished job, a cancelled job's upload, the time-based sweep and the data
directory's size (`rs_edit.service.retention`), against a real server and its real store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from service_helpers import ThreadServer, rgb_tile, submit, wait

from rs_edit.errors import ParameterError
from rs_edit.service import retention
from rs_edit.service.config import ServiceConfig
from rs_edit.service.errors import NotFoundError, response_for
from rs_edit.service.jobs import FAILED, JobActiveError, JobStore, new_job_id
from rs_edit.service.standin import standin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("tiles") / "tile.tif", seed=21)


def _service(srv):
    return srv.app.state.service


def test_purge_removes_a_finished_job_and_refuses_an_active_one(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", workers=1)
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=standin(200, 0.05)) as srv,
        srv.client() as c,
    ):
        service = _service(srv)
        first = submit(c, rgb_tile(tmp_path / "other.tif", seed=3), clip="tiny-random").json()
        running = wait(c, first["id"], ("running",), until=lambda j: j["stage"] == "train")
        queued = submit(c, tile, clip="tiny-random").json()
        for job in (running, queued):
            with pytest.raises(JobActiveError, match="cancel it first") as refused:
                retention.purge_job(service.store, service.jobs_dir, job["id"])
            assert response_for(refused.value).status_code == 409
            assert (service.jobs_dir / job["id"] / "input.tif").is_file()
        assert c.delete(f"/v1/jobs/{first['id']}").status_code == 200
        assert c.delete(f"/v1/jobs/{queued['id']}").status_code == 200
        wait(c, first["id"], ("cancelled",), timeout=30)

        done = submit(c, tile, "kept, then purged", clip="tiny-random").json()
        done = wait(c, done["id"], ("succeeded",), timeout=60)
        folder = service.jobs_dir / done["id"]
        assert (folder / "result.tif").is_file()
        purged = retention.purge_job(service.store, service.jobs_dir, done["id"])
        assert purged.id == done["id"] and purged.status == "succeeded"
        assert not folder.exists()
        assert c.get(f"/v1/jobs/{done['id']}").status_code == 404
        assert c.get(f"/v1/jobs/{done['id']}/result").status_code == 404
        assert done["id"] not in json.dumps(c.get("/v1/jobs").json())
        with pytest.raises(NotFoundError):
            retention.purge_job(service.store, service.jobs_dir, done["id"])
        with pytest.raises(NotFoundError):
            retention.purge_job(service.store, service.jobs_dir, "../../etc")
        for job_id in (first["id"], queued["id"]):  # cancelled: may be purged now
            retention.purge_job(service.store, service.jobs_dir, job_id)
            assert not (service.jobs_dir / job_id).exists()


def test_a_cancelled_jobs_upload_is_removed(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", workers=1)
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=standin(200, 0.05)) as srv,
        srv.client() as c,
    ):
        jobs_dir = _service(srv).jobs_dir
        running = submit(c, tile, clip="tiny-random").json()
        wait(c, running["id"], ("running",), until=lambda j: j["stage"] == "train")
        roi = {
            "type": "Polygon",
            "coordinates": [[[500100, 5499900], [500300, 5499900], [500300, 5499700],
                             [500100, 5499700], [500100, 5499900]]],
            "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
        }  # fmt: skip
        queued = submit(c, tile, roi=roi, clip="tiny-random").json()
        assert (jobs_dir / queued["id"] / "roi.geojson").is_file()
        for job in (queued, running):
            assert c.delete(f"/v1/jobs/{job['id']}").status_code == 200
            assert wait(c, job["id"], timeout=30)["status"] == "cancelled"
            folder = jobs_dir / job["id"]
            deadline = time.monotonic() + 5
            while (folder / "input.tif").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not (folder / "input.tif").exists()
            assert not (folder / "roi.geojson").exists()
            assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"  # record kept


def _finished(store: JobStore, jobs_dir: Path, status: str = FAILED) -> str:
    job_id = new_job_id()
    (jobs_dir / job_id).mkdir(parents=True)
    (jobs_dir / job_id / "input.tif").write_bytes(b"x" * 100)
    store.create(job_id, {}, {}, max_queue=100)
    store.claim(job_id)
    store.finish(job_id, status, "done")
    return job_id


def test_sweep_removes_jobs_older_than_the_retention(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs_dir = tmp_path / "jobs"
    old = [_finished(store, jobs_dir, s) for s in ("succeeded", "failed", "cancelled")]
    active = new_job_id()
    store.create(active, {}, {}, max_queue=100)  # queued: never swept
    (jobs_dir / active).mkdir()
    now = time.time()
    assert retention.sweep(store, jobs_dir, 30, now=now + 29 * 86400) == []
    assert retention.sweep(store, jobs_dir, 0, now=now + 1000 * 86400) == []  # keep forever
    assert store.ids() == {*old, active}
    removed = retention.sweep(store, jobs_dir, 30, now=now + 31 * 86400)
    assert sorted(removed) == sorted(old)
    assert store.ids() == {active}
    assert sorted(p.name for p in jobs_dir.iterdir()) == [active]
    store.close()


def test_the_sweeper_runs_by_itself(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs_dir = tmp_path / "jobs"
    first = _finished(store, jobs_dir)
    sweeper = retention.Sweeper(store, jobs_dir, retention_days=1 / 86400, interval_s=0.1)
    time.sleep(1.1)  # `first` ended more than a second ago
    sweeper.start()

    def swept(job_id: str) -> bool:  # the record goes first, then the folder
        return store.get(job_id) is None and not (jobs_dir / job_id).exists()

    def wait_swept(job_id: str) -> bool:
        deadline = time.monotonic() + 10
        while not swept(job_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        return swept(job_id)

    try:
        assert wait_swept(first)
        second = _finished(store, jobs_dir)  # swept on a later round
        assert wait_swept(second)
    finally:
        sweeper.stop()
    store.close()


def test_the_runner_starts_the_sweep_with_the_configured_retention(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", retention_days=7)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv:
        sweeper = _service(srv).runner.sweeper
        assert sweeper.retention_days == 7 and sweeper._thread is not None
    keep = ServiceConfig(device="cpu", retention_days=0)
    with ThreadServer(tmp_path / "data2", keep, edit_fn=standin(1)) as srv:
        assert _service(srv).runner.sweeper._thread is None


def test_data_usage_and_its_budget(tmp_path: Path):
    data = tmp_path / "data"
    (data / "jobs" / "a").mkdir(parents=True)
    usage = retention.DataUsage(data, ttl_s=60)
    empty = usage.bytes()
    (data / "jobs" / "a" / "input.tif").write_bytes(b"\1" * 1_000_000)
    assert usage.bytes() == empty  # cached for ttl_s
    usage.add(1_000_000)
    assert usage.bytes() == empty + 1_000_000
    walked = usage.refresh()
    assert walked >= 1_000_000 and walked == retention.data_usage_bytes(data)
    usage.check(None, incoming=10**12)  # no bound
    usage.check(walked + 10, incoming=10)
    with pytest.raises(retention.StorageFullError, match="storage for jobs is full") as full:
        usage.check(walked + 10, incoming=11)
    assert response_for(full.value).status_code == 507
    with pytest.raises(retention.StorageFullError):
        retention.check_disk_budget(2_000_000, 1_000_000)


@pytest.mark.parametrize(
    "kw",
    [
        {"retention_days": -1},
        {"job_memory_factor": 0.5},
        {"job_memory_factor": "2"},
        {"max_data_bytes": 0},
    ],
)
def test_bad_settings_are_refused(kw):
    with pytest.raises(ParameterError):
        ServiceConfig(**kw).validate()
