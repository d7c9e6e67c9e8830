"""A corpus of malformed requests: each gets a 4xx with the contract's error body and a clear
message, no job is created, nothing is left on disk, and the server keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_helpers import (
    ThreadServer,
    huge_header_tif,
    mask_tif,
    png_file,
    rgb_tile,
    roi_polygon,
    truncated_tif,
)

from rs_edit.service.config import Limits, ServiceConfig
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("malformed")
    good = rgb_tile(d / "good.tif")
    big_source = rgb_tile(d / "big_source.tif", size=256, compress=None)
    text = d / "notes.txt"
    text.write_text("this is not a raster\n")
    empty = d / "empty.tif"
    empty.write_bytes(b"")
    return {
        "good": good,
        "truncated": truncated_tif(d / "truncated.tif", big_source),
        "text": text,
        "empty": empty,
        "png": png_file(d / "image.png"),
        "nocrs": rgb_tile(d / "nocrs.tif", crs=None),
        "huge": huge_header_tif(d / "huge.tif"),
        "mask_other_grid": mask_tif(d / "mask32.tif", 32),
        "mask_empty": mask_tif(d / "mask_empty.tif", 64, value=0),
        "too_big": _padded(d / "too_big.tif", good, 3_500_000),
        "vrt": _vrt(d / "evil.vrt"),
    }


def _padded(path: Path, source: Path, size: int) -> Path:
    path.write_bytes(source.read_bytes() + bytes(size))
    return path


def _vrt(path: Path) -> Path:
    path.write_text(
        '<VRTDataset rasterXSize="4" rasterYSize="4"><VRTRasterBand dataType="Byte" band="1">'
        "<SimpleSource><SourceFilename>/etc/passwd</SourceFilename></SimpleSource>"
        "</VRTRasterBand></VRTDataset>"
    )
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("malformed-data")
    config = ServiceConfig(limits=Limits(max_upload_bytes=3_000_000, max_roi_bytes=200_000))
    with ThreadServer(data, config, edit_fn=standin(1)) as srv, srv.client() as client:
        srv.data = data
        srv.c = client
        yield srv


def _form(files, image="good", mask=None, **data):
    data.setdefault("prompt", "flooded fields")
    data.setdefault("clip", "tiny-random")
    parts = {}
    if image is not None:
        parts["image"] = ("x.tif", files[image].read_bytes(), "image/tiff")
    if mask is not None:
        parts["mask"] = ("m.tif", files[mask].read_bytes(), "image/tiff")
    return {"files": parts, "data": {k: v for k, v in data.items() if v is not None}}


def _post(**kw):
    return lambda c, f: c.post("/v1/jobs", **_form(f, **kw))


BOWTIE = {
    "type": "Polygon",
    "coordinates": [
        [
            [500100, 5499900],
            [500300, 5499700],
            [500300, 5499900],
            [500100, 5499700],
            [500100, 5499900],
        ]
    ],
    "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
}
ROI_OK = json.dumps(roi_polygon(10, 10, 20, 20))
ROI_4326 = json.dumps(
    roi_polygon(10, 10, 20, 20, crs=None)
    | {
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[15.0, 49.6], [15.001, 49.6], [15.001, 49.601], [15.0, 49.6]]],
        }
    }
)


def _roi_with_crs(name):
    return json.dumps(
        roi_polygon(10, 10, 20, 20) | {"crs": {"type": "name", "properties": {"name": name}}}
    )


# (name, request, expected status, words the message must contain)
CASES = [
    ("truncated tiff", _post(image="truncated"), 400, "truncated"),
    ("not a raster", _post(image="text"), 400, "not a GeoTIFF"),
    ("empty file", _post(image="empty"), 400, "empty"),
    ("png instead of geotiff", _post(image="png"), 400, "not a GeoTIFF"),
    ("vrt naming a local file", _post(image="vrt"), 400, "not a GeoTIFF"),
    ("no crs with geographic roi", _post(image="nocrs", roi=ROI_4326), 400, "georeferencing"),
    ("mask on another grid", _post(mask="mask_other_grid"), 400, "grid"),
    ("empty mask", _post(mask="mask_empty"), 400, "empty"),
    ("mask not a raster", _post(mask="text"), 400, "mask"),
    ("roi outside", _post(roi=json.dumps(roi_polygon(500, 500, 600, 600))), 400, "outside"),
    ("roi not json", _post(roi="{not json"), 400, "not valid JSON"),
    ("roi json but not geojson", _post(roi="[1, 2, 3]"), 400, "not GeoJSON"),
    (
        "roi without polygons",
        _post(roi=json.dumps({"type": "Point", "coordinates": [15, 49.6]})),
        400,
        "no polygons",
    ),
    ("roi unknown type", _post(roi=json.dumps({"type": "Circle"})), 400, "unknown GeoJSON type"),
    ("self-intersecting polygon", _post(roi=json.dumps(BOWTIE)), 400, "Self-intersection"),
    ("roi nested too deep", _post(roi="[" * 5000 + "]" * 5000), 400, "nested"),
    ("roi crs is a path", _post(roi=_roi_with_crs("/etc/passwd")), 400, "crs"),
    ("roi crs unknown", _post(roi=_roi_with_crs("EPSG:999999")), 400, "CRS"),
    ("roi too large", _post(roi=" " * 250_000 + ROI_OK), 413, "roi is larger"),
    ("roi and mask together", _post(roi=ROI_OK, mask="mask_empty"), 400, "either"),
    ("empty prompt", _post(prompt=""), 422, "prompt"),
    ("blank prompt", _post(prompt="   \n\t "), 400, "prompt is empty"),
    ("100 kB prompt", _post(prompt="x" * 100_000), 400, "too long"),
    ("1.5 MB prompt", _post(prompt="x" * 1_500_000), 400, "maximum size"),
    ("huge declared dimensions", _post(image="huge"), 413, "1000000x1000000"),
    ("upload over the body limit", _post(image="too_big"), 413, "larger than"),
    ("seed not a number", _post(seed="abc"), 422, "seed"),
    ("negative seed", _post(seed="-5"), 400, "seed"),
    ("variants not a number", _post(variants="two"), 422, "variants"),
    ("variants zero", _post(variants="0"), 400, "variants"),
    ("feather negative", _post(feather="-3"), 400, "feather"),
    ("unknown preset", _post(preset="ultra"), 400, "preset"),
    ("unknown clip", _post(clip="my-clip"), 400, "CLIP"),
    ("clip checkpoint path", _post(clip="/etc/passwd"), 400, "CLIP"),
    ("unknown llm", _post(llm="gpt-9"), 400, "LLM"),
    ("unknown guidance", _post(guidance="magic"), 400, "guidance"),
    ("rgb bands not numbers", _post(rgb_bands="r,g,b"), 400, "band"),
    ("rgb bands out of range", _post(rgb_bands="7,8,9"), 400, "band"),
    ("repair_roi not a bool", _post(repair_roi="maybe"), 422, "repair_roi"),
    ("missing prompt", lambda c, f: c.post("/v1/jobs", files=_form(f)["files"]), 422, "prompt"),
    ("missing image", _post(image=None), 422, "image"),
    (
        "image sent as text",
        lambda c, f: c.post(
            "/v1/jobs", data={"image": "abc", "prompt": "x"}, files={"a": ("a", b"")}
        ),
        422,
        "image",
    ),
    ("json body", lambda c, f: c.post("/v1/jobs", json={"prompt": "x"}), 422, "image"),
    ("unknown job id", lambda c, f: c.get(f"/v1/jobs/{UNKNOWN}"), 404, "unknown job"),
    ("unknown job result", lambda c, f: c.get(f"/v1/jobs/{UNKNOWN}/result"), 404, "unknown job"),
    ("unknown job events", lambda c, f: c.get(f"/v1/jobs/{UNKNOWN}/events"), 404, "unknown job"),
    ("unknown job cancel", lambda c, f: c.delete(f"/v1/jobs/{UNKNOWN}"), 404, "unknown job"),
    ("upper-case job id", lambda c, f: c.get(f"/v1/jobs/{UNKNOWN.upper()}"), 404, "32 hex"),
    ("short job id", lambda c, f: c.get("/v1/jobs/abc123"), 404, "32 hex"),
    ("dot-dot job id", lambda c, f: c.get("/v1/jobs/.."), 404, ""),
    ("encoded path job id", lambda c, f: c.get("/v1/jobs/..%2F..%2Fetc%2Fpasswd"), 404, "no such"),
    ("encoded path result", lambda c, f: c.get("/v1/jobs/%2e%2e%2fjobs.sqlite3/result"), 404, ""),
    ("path-like job id", lambda c, f: c.get("/v1/jobs/~root/result"), 404, "hex"),
    (
        "variant not a number",
        lambda c, f: c.get(f"/v1/jobs/{UNKNOWN}/result?variant=x"),
        422,
        "variant",
    ),
    ("unknown endpoint", lambda c, f: c.get("/v1/nothing"), 404, "no such endpoint"),
    ("wrong method", lambda c, f: c.put("/v1/jobs"), 405, ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_malformed_request(server, files, case):
    name, request, status, words = case
    c = server.c
    before = len(c.get("/v1/jobs").json()["jobs"])
    r = request(c, files)
    assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
    assert 400 <= r.status_code < 500
    body = r.json()
    assert set(body) == {"error"}, body
    message = body["error"]["message"]
    assert body["error"]["code"] and message
    assert words.lower() in message.lower(), f"{name}: {message!r}"
    assert "Traceback" not in r.text and str(server.data) not in r.text
    assert len(message) < 600
    # The server keeps serving, no job was created and no upload was left behind.
    assert c.get("/v1/health").status_code == 200
    assert len(c.get("/v1/jobs").json()["jobs"]) == before
    assert not list((server.data / "tmp").iterdir())
    assert not list((server.data / "jobs").iterdir())


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def test_client_file_names_are_never_paths(server, files, tmp_path):
    """A path-like upload file name is ignored: the job works, nothing is written there."""
    target = tmp_path / "evil.tif"
    r = server.c.post(
        "/v1/jobs",
        files={"image": (f"../../../../{target}", files["good"].read_bytes(), "image/tiff")},
        data={"prompt": "x", "clip": "tiny-random"},
    )
    assert r.status_code == 201
    job_id = r.json()["id"]
    from service_helpers import wait

    assert wait(server.c, job_id)["status"] == "succeeded"
    assert not target.exists()
    assert sorted(p.name for p in (server.data / "jobs" / job_id).iterdir()) == [
        "input.tif",
        "result.tif",
    ]
    # Leave the module's server as the corpus expects it: no jobs on disk.
    import shutil

    shutil.rmtree(server.data / "jobs" / job_id)
