"""Exemplar-guided jobs on the real server (uvicorn on 127.0.0.1): `reference` (an example
GeoTIFF), `reference_roi` (GeoJSON polygons on it) and `reference_weight` in `POST /v1/jobs`.

Whatever can be known bad at submission is a 4xx with the error body, no job and nothing left on
disk: an example that is not a raster, truncated, corrupt, over the upload or size limits, with
bands that cannot match the image's, polygons outside it, polygons without an example, a weight
out of range or not a number. A good one is stored in the job's folder under its own (safe) file
name, reaches the edit, and the result's tags (and, with the real editor, the report) name it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import random_data, write_raster
from service_helpers import (
    REAL_EDITOR_MARKS,
    ProcessServer,
    ThreadServer,
    huge_header_tif,
    png_file,
    rgb_tile,
    roi_polygon,
    truncated_tif,
    wait,
)
from test_upload_integrity import _corruptions, _deflate_tiles

from rs_edit.service.config import Limits, ServiceConfig
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(180)

MAX_UPLOAD = 3_000_000
MAX_ROI = 200_000
EXAMPLE_NAME = "burnt forest (Sentinel-2).tif"  # stored as burnt_forest_Sentinel-2.tif
STORED_NAME = "burnt_forest_Sentinel-2.tif"
ROI = roi_polygon(8, 8, 24, 24)  # on the 64 px tile
EXAMPLE_ROI = roi_polygon(2, 2, 30, 30)  # on the 32 px example (same grid origin)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reference")
    big_source = rgb_tile(d / "big_source.tif", size=256, compress=None)
    text = d / "notes.txt"
    text.write_text("this is not a raster\n")
    example = rgb_tile(d / "example.tif", size=32, seed=5)
    return {
        "tile": rgb_tile(d / "tile.tif", size=64),
        "example": example,
        "text": text,
        "png": png_file(d / "example.png"),
        "truncated": truncated_tif(d / "truncated.tif", big_source),
        "corrupt": _corruptions(_deflate_tiles(d / "deflate.tif"), d, n=1, seed=7)[0],
        "huge": huge_header_tif(d / "huge.tif"),
        "too_big": _padded(d / "too_big.tif", example, MAX_UPLOAD + 500_000),
        "two_bands": write_raster(d / "two_bands.tif", random_data("uint8", 2, 32, 32)),
        "nocrs": rgb_tile(d / "nocrs.tif", size=32, crs=None),
    }


def _padded(path: Path, source: Path, size: int) -> Path:
    path.write_bytes(source.read_bytes() + bytes(size))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("reference-data")
    config = ServiceConfig(limits=Limits(max_upload_bytes=MAX_UPLOAD, max_roi_bytes=MAX_ROI))
    with ThreadServer(data, config, edit_fn=standin(1)) as srv, srv.client() as client:
        srv.data = data
        srv.c = client
        yield srv


def _post(client, files, example="example", name=EXAMPLE_NAME, **fields):
    """A job on the tile with ROI, with the example `example` (a key of `files`, None: none)."""
    parts = {"image": ("tile.tif", files["tile"].read_bytes(), "image/tiff")}
    if example is not None:
        parts["reference"] = (name, files[example].read_bytes(), "image/tiff")
    data = {"prompt": "burnt forest", "clip": "tiny-random", "roi": json.dumps(ROI)}
    data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
    return client.post("/v1/jobs", files=parts, data=data)


# (name, fields of `_post`, expected status, error code, words the message must contain)
CASES = [
    ("not a raster", {"example": "text"}, 400, "bad_raster", "reference is not a GeoTIFF"),
    ("png", {"example": "png"}, 400, "bad_raster", "reference is not a GeoTIFF"),
    ("truncated", {"example": "truncated"}, 400, "bad_raster", "truncated"),
    ("corrupt block", {"example": "corrupt"}, 400, "bad_raster", "reference"),
    ("declared size over the limits", {"example": "huge"}, 413, "too_large", "reference is"),
    ("upload over the body limit", {"example": "too_big"}, 413, "too_large", "larger than"),
    ("bands that cannot match", {"example": "two_bands"}, 400, "bad_parameter", "band"),
    (
        "polygons outside the example",
        {"reference_roi": roi_polygon(500, 500, 600, 600)},
        400,
        "bad_roi",
        "example polygons",
    ),
    (
        "polygons on an example without georeferencing",
        {"example": "nocrs", "reference_roi": EXAMPLE_ROI},
        400,
        "bad_crs",
        "georeferencing",
    ),
    (
        "reference_roi without reference",
        {"example": None, "reference_roi": EXAMPLE_ROI},
        400,
        "bad_parameter",
        "reference_roi",
    ),
    ("reference_roi not json", {"reference_roi": "{oops"}, 400, "bad_roi", "reference_roi"),
    (
        "reference_roi over the roi limit",
        {"reference_roi": " " * (MAX_ROI + 10) + json.dumps(EXAMPLE_ROI)},
        413,
        "too_large",
        "reference_roi is larger",
    ),
    ("weight above 1", {"reference_weight": "1.5"}, 400, "bad_parameter", "reference_weight"),
    ("weight below 0", {"reference_weight": "-0.1"}, 400, "bad_parameter", "reference_weight"),
    ("weight nan", {"reference_weight": "nan"}, 400, "bad_parameter", "reference_weight"),
    ("weight not a number", {"reference_weight": "lots"}, 422, "invalid_request", "weight"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_example_is_refused_at_submission(server, files, case):
    name, fields, status, code, words = case
    c = server.c
    r = _post(c, files, **fields)
    assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
    error = r.json()["error"]
    assert set(r.json()) == {"error"} and error["code"] == code, error
    assert words.lower() in error["message"].lower(), f"{name}: {error['message']!r}"
    assert str(server.data) not in r.text and "Traceback" not in r.text
    # No job, and nothing of the upload left behind.
    assert c.get("/v1/jobs").json()["jobs"] == []
    assert not list((server.data / "tmp").iterdir())
    assert not list((server.data / "jobs").iterdir())


def test_example_is_stored_by_its_name_and_reaches_the_edit(server, files, tmp_path):
    c = server.c
    r = _post(c, files, reference_roi=EXAMPLE_ROI, reference_weight="0.5")
    assert r.status_code == 201, r.text
    job = r.json()
    options = job["options"]
    # The job records the example by name, never by a server path.
    assert options["reference"] == STORED_NAME
    assert options["reference_roi"] == "reference_roi.geojson"
    assert options["reference_weight"] == 0.5
    folder = server.data / "jobs" / job["id"]
    stored = folder / "reference" / STORED_NAME
    assert stored.read_bytes() == files["example"].read_bytes()
    assert json.loads((folder / "reference_roi.geojson").read_text()) == EXAMPLE_ROI

    done = wait(c, job["id"])
    assert done["status"] == "succeeded", done["message"]
    assert str(server.data) not in json.dumps(done)
    result = tmp_path / "result.tif"
    result.write_bytes(c.get(f"/v1/jobs/{job['id']}/result").content)
    with rasterio.open(result) as src:
        settings = json.loads(src.tags()["RS_EDIT"])
    assert STORED_NAME in json.dumps(settings["reference"])
    assert settings["reference_weight"] == 0.5
    _purge(c, job["id"])


def test_weight_defaults_to_the_edit_default_and_an_empty_part_is_no_example(server, files):
    c = server.c
    job = _post(c, files).json()
    assert job["options"]["reference_weight"] == 0.8 and job["options"]["reference"]
    assert wait(c, job["id"])["status"] == "succeeded"
    _purge(c, job["id"])
    # An empty file part (as some clients send for "none") is no example.
    parts = {
        "image": ("tile.tif", files["tile"].read_bytes(), "image/tiff"),
        "reference": ("", b"", "application/octet-stream"),
    }
    r = c.post("/v1/jobs", files=parts, data={"prompt": "x", "clip": "tiny-random"})
    assert r.status_code == 201, r.text
    assert r.json()["options"]["reference"] is None
    assert wait(c, r.json()["id"])["status"] == "succeeded"
    _purge(c, r.json()["id"])


def test_path_like_example_name_stays_in_the_job_folder(server, files, tmp_path):
    target = tmp_path / "evil.tif"
    r = _post(server.c, files, name=f"../../../../{target}")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["options"]["reference"] == "evil.tif"
    assert (server.data / "jobs" / job["id"] / "reference" / "evil.tif").is_file()
    assert wait(server.c, job["id"])["status"] == "succeeded"
    assert not target.exists()
    _purge(server.c, job["id"])


def test_cancelled_job_loses_its_example(tmp_path, files):
    """A cancelled job's uploads go at once, the example's too (its record stays)."""
    config = ServiceConfig(workers=1, job_process=False)
    server = ThreadServer(tmp_path / "data", config, edit_fn=standin(200, 0.05))
    with server as srv, srv.client() as c:
        first = _post(c, files).json()
        second = _post(c, files, reference_roi=EXAMPLE_ROI).json()  # queued behind it
        assert c.delete(f"/v1/jobs/{second['id']}").json()["status"] == "cancelled"
        c.delete(f"/v1/jobs/{first['id']}")
        wait(c, first["id"])
    folder = tmp_path / "data" / "jobs" / second["id"]
    assert not (folder / "reference").exists()
    assert not (folder / "reference_roi.geojson").exists()


def test_example_counts_against_the_storage_bound(tmp_path, files):
    """--max-data-gb: the example is part of what a submission would store (507 before it is
    stored), as the image is."""
    large = rgb_tile(tmp_path / "large.tif", size=600, compress=None)  # about 1.1 MB
    config = ServiceConfig(max_data_bytes=1_000_000)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        files = {**files, "large": large}
        r = _post(c, files, example="large")
        assert r.status_code == 507 and r.json()["error"]["code"] == "storage_full", r.text
        assert _post(c, files).status_code == 201  # the image and a small example fit
        assert not list((tmp_path / "data" / "tmp").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ray_task_gets_the_example(tmp_path, files):
    """With the Ray executor the example's files travel with the task (the stand-in reads them
    as the edit does) and come back named, not by the task's folder."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra")
    context = ray.init(
        num_cpus=1,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    address = context.address_info["gcs_address"]
    server = ProcessServer(
        tmp_path / "data",
        *("--executor", "ray", "--ray-address", address, "--ray-gpus", "0", "--steps", "1"),
        env={"RAY_USAGE_STATS_ENABLED": "0"},
    )
    try:
        server.start()
        with server.client() as c:
            job = _post(c, files, reference_roi=EXAMPLE_ROI, reference_weight="0.25").json()
            done = wait(c, job["id"], timeout=120)
            assert done["status"] == "succeeded", done["message"]
            result = tmp_path / "result.tif"
            result.write_bytes(c.get(f"/v1/jobs/{job['id']}/result").content)
    finally:
        server.kill()
        ray.shutdown()
    with rasterio.open(result) as src:
        settings = json.loads(src.tags()["RS_EDIT"])
    assert STORED_NAME in json.dumps(settings["reference"]) and settings["reference_roi"]
    assert settings["reference_weight"] == 0.25


def _purge(client, job_id: str) -> None:
    """Leave the module's server as the refusal cases expect it: no job."""
    assert client.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}).status_code == 200


class TestRealEditor:
    """The real edit (preset tiny, random tiny CLIP, no guidance) with an example."""

    pytestmark = REAL_EDITOR_MARKS

    def test_tiny_job_with_an_example_names_it(self, files, tmp_path):
        server = ThreadServer(tmp_path / "data", ServiceConfig(device="cpu"))
        with server as srv, srv.client() as c:
            fields = {"preset": "tiny", "guidance": "none", "seed": "3"}
            r = _post(c, files, reference_roi=EXAMPLE_ROI, **fields)
            assert r.status_code == 201, r.text
            job = wait(c, r.json()["id"], timeout=300)
            assert job["status"] == "succeeded", job["message"]
            result = tmp_path / "result.tif"
            result.write_bytes(c.get(f"/v1/jobs/{job['id']}/result").content)
        assert STORED_NAME in json.dumps(job["report"]["reference"])
        assert str(tmp_path / "data") not in json.dumps(job)
        with rasterio.open(result) as src:
            settings = json.loads(src.tags()["RS_EDIT"])
            edited = src.read()
        assert STORED_NAME in json.dumps(settings["reference"])
        assert str(tmp_path / "data") not in json.dumps(settings), "a server path in the tags"
        with rasterio.open(files["tile"]) as src:
            assert not np.array_equal(edited, src.read()), "the edit changed nothing"
