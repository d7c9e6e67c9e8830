"""A failed or cancelled job's uploads (image, mask, ROI) go as soon as it ends; its record,
message and log stay; a succeeded job keeps its upload (`rs_edit.service.retention`), against
a real server on 127.0.0.1 and its real store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from service_helpers import ThreadServer, mask_tif, rgb_tile, roi_polygon, submit, wait

from rs_edit.errors import InputError
from rs_edit.service import retention
from rs_edit.service.config import ServiceConfig
from rs_edit.service.jobs import FAILED, SHUTDOWN_MESSAGE, JobStore, new_job_id
from rs_edit.service.standin import standin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UPLOADS = ("input.tif", "mask.tif", "roi.geojson")
SIZE = 64


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("tiles") / "tile.tif", SIZE, seed=5)


def stand_in_editor():
    """The stand-in editor, in the server's worker thread: a prompt starting "refuse" fails on
    its input, "crash" fails with an internal error, "slow" runs for 20 s (to be cancelled),
    anything else succeeds at once."""
    quick, slow = standin(2), standin(400, 0.05)

    def edit(input_path, output, options, **kw):
        if options.prompt.startswith("refuse"):
            raise InputError("the stand-in refuses this tile")
        if options.prompt.startswith("crash"):
            raise RuntimeError("the stand-in broke")
        editor = slow if options.prompt.startswith("slow") else quick
        return editor(input_path, output, options, **kw)

    return edit


def server(data_dir: Path) -> ThreadServer:
    config = ServiceConfig(device="cpu", workers=1, job_process=False)
    return ThreadServer(data_dir, config, edit_fn=stand_in_editor())


def uploads_left(folder: Path, timeout: float = 5.0) -> list[str]:
    """The uploads still in a job's folder, once they had `timeout` s to go."""
    deadline = time.monotonic() + timeout
    while True:
        left = [name for name in UPLOADS if (folder / name).exists()]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_failed_and_cancelled_jobs_leave_no_uploads(tmp_path: Path, tile: Path):
    roi = roi_polygon(10, 10, 30, 30)
    mask = mask_tif(tmp_path / "mask.tif", SIZE)
    with server(tmp_path / "data") as srv, srv.client() as c:
        jobs_dir = srv.app.state.service.jobs_dir
        running = submit(c, tile, "slow, cancelled while running", clip="tiny-random").json()
        wait(c, running["id"], ("running",), until=lambda j: j["stage"] == "train")
        queued = submit(c, tile, "slow, cancelled while queued", roi=roi, clip="tiny-random")
        queued = queued.json()
        assert (jobs_dir / queued["id"] / "roi.geojson").is_file()
        for job in (queued, running):
            assert c.delete(f"/v1/jobs/{job['id']}").status_code == 200
            assert wait(c, job["id"], timeout=30)["status"] == "cancelled"

        refused = submit(c, tile, "refuse this", mask=mask, clip="tiny-random").json()
        crashed = submit(c, tile, "crash here", roi=roi, clip="tiny-random").json()
        for job in (refused, crashed):
            assert wait(c, job["id"], timeout=60)["status"] == "failed"

        for job in (running, queued, refused, crashed):
            folder = jobs_dir / job["id"]
            assert uploads_left(folder) == [], job["options"]["prompt"]
            record = c.get(f"/v1/jobs/{job['id']}").json()  # the record stays, with its message
            assert record["status"] in ("cancelled", "failed") and record["message"]
        assert "refuses this tile" in c.get(f"/v1/jobs/{refused['id']}").json()["message"]
        assert "stand-in broke" in c.get(f"/v1/jobs/{crashed['id']}").json()["message"]
        log = c.get(f"/v1/jobs/{running['id']}").json()["log"]
        assert any("stand-in editor" in line for line in log)  # the log stays too


def test_a_succeeded_job_keeps_its_upload_and_results(tmp_path: Path, tile: Path):
    roi = roi_polygon(10, 10, 30, 30)
    with server(tmp_path / "data") as srv, srv.client() as c:
        jobs_dir = srv.app.state.service.jobs_dir
        job = submit(c, tile, "a lake", roi=roi, clip="tiny-random").json()
        assert wait(c, job["id"], timeout=60)["status"] == "succeeded"
        folder = jobs_dir / job["id"]
        time.sleep(0.5)  # what would go has had the time to
        assert (folder / "input.tif").is_file() and (folder / "roi.geojson").is_file()
        assert c.get(f"/v1/jobs/{job['id']}/result").status_code == 200


def test_a_job_the_shutdown_interrupts_loses_its_upload(tmp_path: Path, tile: Path):
    """Failed as "interrupted by a server shutdown; resubmit": the client sends its request
    again (a new job with its own upload), so this one's upload is not needed."""
    with server(tmp_path / "data") as srv, srv.client() as c:
        jobs_dir = srv.app.state.service.jobs_dir
        job = submit(c, tile, "slow, then the server stops", clip="tiny-random").json()
        wait(c, job["id"], ("running",), until=lambda j: j["stage"] == "train")
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    try:
        stopped = store.get(job["id"])
        assert (stopped.status, stopped.message) == (FAILED, SHUTDOWN_MESSAGE)
        assert stopped.retryable
    finally:
        store.close()
    assert uploads_left(jobs_dir / job["id"], timeout=0) == []


def _job_with_upload(store: JobStore, jobs_dir: Path, *, running: bool) -> str:
    job_id = new_job_id()
    (jobs_dir / job_id).mkdir(parents=True)
    for name in ("input.tif", "roi.geojson"):
        (jobs_dir / job_id / name).write_bytes(b"x" * 100)
    store.create(job_id, {}, {}, max_queue=100)
    if running:
        store.claim(job_id)
    return job_id


def test_a_restart_drops_uploads_of_interrupted_and_earlier_failed_jobs(tmp_path: Path):
    """The server's start: a job that was running is failed by `recover` and loses its upload;
    one that failed under an earlier version (its upload still there) loses it too."""
    data = tmp_path / "data"
    jobs_dir = data / "jobs"
    jobs_dir.mkdir(parents=True)
    store = JobStore(data / "jobs.sqlite3")  # no end listener: as an earlier version left it
    earlier = _job_with_upload(store, jobs_dir, running=True)
    store.finish(earlier, FAILED, "failed before this version")
    interrupted = _job_with_upload(store, jobs_dir, running=True)
    store.close()
    assert uploads_left(jobs_dir / earlier, timeout=0) == ["input.tif", "roi.geojson"]

    with server(data) as srv, srv.client() as c:
        for job_id in (earlier, interrupted):
            assert c.get(f"/v1/jobs/{job_id}").json()["status"] == "failed"
            assert uploads_left(jobs_dir / job_id, timeout=0) == []


def test_an_end_listener_that_fails_does_not_stop_the_job_ending(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    seen = []

    def broken(job_id, status):
        raise OSError("disk gone")

    store.add_end_listener(broken)
    store.add_end_listener(lambda job_id, status: seen.append((job_id, status)))
    job_id = _job_with_upload(store, tmp_path / "jobs", running=True)
    assert store.finish(job_id, FAILED, "failed")
    assert store.get(job_id).status == FAILED
    assert seen == [(job_id, FAILED)]
    assert not store.finish(job_id, FAILED, "again")  # ended once: told once
    assert seen == [(job_id, FAILED)]
    store.close()


def test_drop_leftover_uploads_leaves_succeeded_and_queued_jobs(tmp_path: Path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    jobs_dir = tmp_path / "jobs"
    done = _job_with_upload(store, jobs_dir, running=True)
    store.finish(done, "succeeded", "done")
    queued = _job_with_upload(store, jobs_dir, running=False)
    cancelled = _job_with_upload(store, jobs_dir, running=False)
    store.request_cancel(cancelled)  # no listener on this store: the upload is still there
    assert retention.drop_leftover_uploads(store, jobs_dir) == [cancelled]
    assert uploads_left(jobs_dir / cancelled, timeout=0) == []
    for job_id in (done, queued):
        assert uploads_left(jobs_dir / job_id, timeout=0) == ["input.tif", "roi.geojson"]
    store.close()
