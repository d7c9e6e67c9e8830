"""End to end with the real edit (`run_edit`, preset tiny, the built-in random tiny CLIP):
submit a GeoTIFF and a GeoJSON ROI, follow it by SSE and polling, download and check the
result; a second prompt on the same tile reuses the trained model; a real job is cancelled
during training and stops."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from service_helpers import (
    REAL_EDITOR_MARKS,
    ThreadServer,
    check_result,
    rgb_tile,
    roi_polygon,
    sse_events,
    submit,
    wait,
)

from rs_edit.service.config import ServiceConfig

pytestmark = REAL_EDITOR_MARKS

FIELDS = {"preset": "tiny", "clip": "tiny-random", "seed": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("real-data")
    with ThreadServer(data, ServiceConfig(device="cpu")) as srv, srv.client() as client:
        srv.c = client
        srv.data = data
        yield srv


def test_real_job_then_second_prompt_skips_training(server, tmp_path: Path, trained_tiny):
    c = server.c
    tile = rgb_tile(tmp_path / "tile.tif", size=64)
    roi = roi_polygon(16, 16, 48, 40)
    first = submit(c, tile, "flooded fields", roi=roi, **FIELDS)
    assert first.status_code == 201, first.text
    job_id = first.json()["id"]

    events = sse_events(c, job_id, timeout=240)
    assert events[-1]["status"] == "succeeded", events[-1]
    stages = {e["stage"] for e in events}
    assert "train" in stages
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)

    job = wait(c, job_id, ("succeeded",))
    assert job["report"]["model_cached"] is False
    result = tmp_path / "result.tif"
    r = c.get(f"/v1/jobs/{job_id}/result")
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    result.write_bytes(r.content)
    before, after = check_result(result, tile, roi)
    assert not np.array_equal(before, after), "the edit changed nothing inside the ROI"

    second = submit(c, tile, "dense forest", roi=roi, **FIELDS).json()
    job2 = wait(c, second["id"], ("succeeded",), timeout=240)
    assert job2["report"]["model_cached"] is True
    assert job2["report"]["seconds"]["train"] < job["report"]["seconds"]["train"] / 2
    result2 = tmp_path / "result2.tif"
    result2.write_bytes(c.get(f"/v1/jobs/{second['id']}/result").content)
    check_result(result2, tile, roi)


def test_real_job_cancelled_during_training(server, tmp_path: Path, trained_tiny):
    c = server.c
    tile = rgb_tile(tmp_path / "other.tif", size=64, seed=11)
    job = submit(c, tile, "a lake", **FIELDS).json()
    wait(c, job["id"], ("running",), until=lambda j: j["stage"] == "train" and j["progress"] > 5)
    t0 = time.monotonic()
    assert c.delete(f"/v1/jobs/{job['id']}").status_code == 200
    done = wait(c, job["id"], timeout=30)
    assert done["status"] == "cancelled"
    assert time.monotonic() - t0 < 5
    assert done["progress"] < 70  # stopped in training
    assert c.get(f"/v1/jobs/{job['id']}/result").status_code == 409
    assert not list((server.data / "jobs" / job["id"]).glob("result*"))
