"""Time estimates per preset (rs_edit/service/estimates.py): the built-in CPU figures, this
server's own history replacing them, and the `estimates` field of `/v1/health`."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from rs_edit.service import estimates as est
from rs_edit.service.app import create_app
from rs_edit.service.config import ServiceConfig
from rs_edit.service.jobs import SUCCEEDED, JobStore
from rs_edit.service.submit import EDIT_PRESETS


def seconds(entry, width, height):
    return est.estimate_seconds(entry, width, height)


def test_built_in_cpu_figures_are_the_measured_ones():
    figures = est.estimates("cpu")
    assert figures["tiny"]["source"] == "built-in" and figures["tiny"]["jobs"] == 0
    # tiny: about 8 s of start-up + about 1 s per 100x100 px window
    assert seconds(figures["tiny"], 100, 100) == pytest.approx(9, abs=0.5)
    assert seconds(figures["tiny"], 300, 300) == pytest.approx(8 + 9, abs=1)
    # fast: 7.8-27.6 s per 256x256 window, median 11.2 s; auto is fast on a CPU
    assert seconds(figures["fast"], 256, 256) == pytest.approx(11.2, abs=0.5)
    assert figures["auto"] == figures["fast"]
    # the presets that train a network take hours on a CPU, whatever the area's size
    assert seconds(figures["balanced"], 64, 64) > 3600
    assert seconds(figures["quality"], 64, 64) > seconds(figures["balanced"], 64, 64)
    assert seconds(figures["reference"], 64, 64) > seconds(figures["quality"], 64, 64)


def test_no_figures_for_a_gpu_without_history():
    figures = est.estimates("cuda", names=EDIT_PRESETS)
    assert set(figures) == set(EDIT_PRESETS)
    assert all(value is None for value in figures.values())
    assert est.estimate_seconds(None, 100, 100) is None


def finished_job(
    store, n, preset, width, height, job_seconds, cached=False, options_preset=None, coarse=None
):
    job_id = f"{n:032x}"
    inputs = {"width": width, "height": height}
    store.create(job_id, {"preset": options_preset or preset}, inputs, max_queue=100)
    assert store.claim(job_id) is not None
    report = {"preset": preset, "job_seconds": job_seconds, "model_cached": cached}
    if coarse:
        report["coarse"] = coarse
    assert store.finish(job_id, SUCCEEDED, "done", outputs=["result.tif"], report=report)


def test_history_replaces_the_built_in_figures(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        # This server runs tiny three times slower than the reference machine.
        finished_job(store, 1, "tiny", 100, 100, 27.0, options_preset="auto")
        finished_job(store, 2, "tiny", 200, 200, 36.0)
        finished_job(store, 3, "tiny", 100, 100, 27.0)
        finished_job(store, 4, "tiny", 100, 100, 1.0, cached=True)  # not counted
        store.create(f"{5:032x}", {"preset": "fast"}, {"width": 9, "height": 9}, 100)  # queued
        figures = est.estimates("cpu", store)
        tiny = figures["tiny"]
        assert tiny["source"] == "history" and tiny["jobs"] == 3
        assert seconds(tiny, 100, 100) == pytest.approx(27, rel=0.02)
        assert seconds(tiny, 200, 200) == pytest.approx(36, rel=0.02)
        assert figures["fast"]["source"] == "built-in"  # no finished fast job yet
        # Without built-in figures (a GPU), the median seconds per megapixel.
        finished_job(store, 6, "balanced", 1000, 1000, 60.0)
        finished_job(store, 7, "balanced", 500, 1000, 20.0)
        finished_job(store, 8, "balanced", 500, 1000, 40.0)
        # An example switched this balanced job to the patch sampler: it trained nothing.
        finished_job(store, 9, "balanced", 500, 1000, 1.0, coarse="patch-diffusion")
        finished_job(store, 10, "balanced", 500, 1000, 40.0, coarse="network")
        gpu = est.estimates("cuda", store)
        assert gpu["balanced"] == {
            "seconds_fixed": 0.0,
            "seconds_per_megapixel": 70.0,
            "source": "history",
            "jobs": 4,
        }
        assert gpu["auto"] == gpu["balanced"]  # auto is balanced on a GPU
        assert gpu["fast"] is None
    finally:
        store.close()


def test_jobs_without_a_time_or_size_are_ignored(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        store.create(f"{1:032x}", {"preset": "tiny"}, {}, max_queue=10)
        store.claim(f"{1:032x}")
        store.finish(f"{1:032x}", SUCCEEDED, "done", report={"preset": "tiny"})
        assert est.history(store) == {}
        assert est.estimates("cpu", store)["tiny"]["source"] == "built-in"
    finally:
        store.close()


def test_health_gives_an_estimate_per_preset(tmp_path):
    app = create_app(tmp_path / "data", config=ServiceConfig(device="cpu"))
    with TestClient(app) as client:
        body = client.get("/v1/health").json()
    figures = body["estimates"]
    assert list(figures) == list(EDIT_PRESETS)  # auto first, the presets a job may name
    assert figures["auto"] == figures[body["presets"]["auto"]]
    assert figures["tiny"]["source"] == "built-in"
    assert 9 <= seconds(figures["fast"], 256, 256) <= 66
