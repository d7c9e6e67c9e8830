"""Full jobs against the real backend (`rs-edit serve`), preset tiny, CLIP tiny-random: a
plain edit, and one guided by an example image (`reference`).

The backend is found through $RS_EDIT_BACKEND (the `rs-edit` executable) or
<repo>/.venv/bin/rs-edit; the tests skip, saying why, when it is absent or when its job API
is not there yet (POST /v1/jobs answers 501), and the example's test when the job API has no
`reference` field yet. Each job costs about 30-60 s of CPU.
"""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs, wait_for
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsRasterLayer,
)

from rs_edit_plugin import jobs, results, settings
from rs_edit_plugin.tasks import JobManager

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 540  # the backend's tiny preset on 2 busy CPU cores


def backend_executable() -> Path | None:
    path = Path(os.environ.get("RS_EDIT_BACKEND") or ROOT / ".venv" / "bin" / "rs-edit")
    return path if path.is_file() and os.access(path, os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(method, url, data=None, headers=None, timeout=10):
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 (loopback)
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def real_backend(tmp_path_factory):
    executable = backend_executable()
    if executable is None:
        pytest.skip("real backend not found: set RS_EDIT_BACKEND or run scripts/setup.sh")
    data_dir = tmp_path_factory.mktemp("backend-data")
    port = free_port()
    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(executable), "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"rs-edit serve exited: {(data_dir / 'serve.log').read_text()[-2000:]}")
            try:
                status, _ = http("GET", url + "/v1/health", timeout=5)
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > end:
                pytest.fail(f"rs-edit serve did not answer within {START_TIMEOUT_S} s")
            time.sleep(0.5)
        # A submission without fields: the job API refuses it (4xx); a backend without the
        # job API answers 501.
        status, body = http("POST", url + "/v1/jobs", b"", {"Content-Type": "text/plain"})
        if status == 501:
            message = json.loads(body or b"{}").get("error", {}).get("message", "")
            pytest.skip(f"the backend's job API is not implemented yet (501: {message})")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


WEB = QgsCoordinateReferenceSystem("EPSG:3857")


def scene_request(tmp_path, project, prompt, example=None):
    """The source scene (UTM 33N, smooth ramps) in the project, and a job on a 48 x 48 px area
    of it (one pyramid scale: the cheapest real job) with an ROI drawn in the project CRS:
    (layer, its pixels, the request)."""
    path, data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=56, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    to_web = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"), WEB, project)

    def point(c, r):
        return to_web.transform(QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES))

    extent = QgsGeometry.fromPolygonXY([[point(5.5, 2.5), point(52.5, 49.5)]]).boundingBox()
    roi = QgsGeometry.fromPolygonXY(
        [[point(15.5, 12.5), point(35.5, 14.5), point(33.5, 36.5), point(16.5, 34.5)]]
    )
    fields = jobs.job_fields(prompt, preset="tiny", seed=1, clip="tiny-random")
    request = jobs.prepare_request(
        layer, extent, WEB, fields, roi_geometries=[roi], roi_crs=WEB, example=example
    )
    assert (request.window.width, request.window.height) == (48, 48)
    return layer, data, request


def run_to_result(request, project, qgis_iface):
    """Run the job in the plugin's JobManager until it ends: (record, result layer)."""
    manager = JobManager(qgis_iface.messageBar())
    record = manager.start(request)
    wait_for(lambda: record.finished, JOB_TIMEOUT_S, "the real backend's job")
    if record.state != "succeeded":
        return record, None
    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    return record, group.findLayers()[-1].layer()


def check_result(record, result, request, layer, data):
    """The result is on the tile's grid and CRS, and bit-exact outside the ROI."""
    tile = QgsRasterLayer(str(request.tile_path), "tile")
    assert result.crs() == tile.crs() == layer.crs()
    assert result.extent() == tile.extent() == request.window.extent
    edited, gt, wkt = read(record.outputs[0])
    assert gt == request.window.geotransform and same_crs(wkt, layer.crs().toWkt())
    mask = read(request.mask_path)[0][0] != 0
    w = request.window
    source = data[:, w.yoff : w.yoff + w.height, w.xoff : w.xoff + w.width]
    np.testing.assert_array_equal(edited[:, ~mask], source[:, ~mask])  # outside: bit-exact
    assert edited.dtype == source.dtype and edited.shape == source.shape


@pytest.mark.slow
@pytest.mark.timeout(START_TIMEOUT_S + JOB_TIMEOUT_S + 60, method="thread")
def test_full_job_against_the_real_backend(
    real_backend, tmp_path, project, qgis_iface, keep_inputs
):
    settings.set_backend_url(real_backend)
    settings.QgsSettings().setValue(settings.PREFIX + "poll_interval_s", 0.5)
    layer, data, request = scene_request(tmp_path, project, "flooded fields")
    record, result = run_to_result(request, project, qgis_iface)
    assert record.state == "succeeded", record.message
    check_result(record, result, request, layer, data)

    # After a restart of QGIS, the job list comes back from the backend (GET /v1/jobs).
    later = JobManager(qgis_iface.messageBar())
    loaded = []
    later.historyLoaded.connect(loaded.append)
    assert later.load_history(real_backend)
    wait_for(lambda: loaded, 20, "the backend's job list")
    assert loaded[0] >= 1, later.history_error
    listed = next(r for r in later.records if r.job_id == record.job_id)
    assert listed.listed and listed.state == "succeeded" and listed.finished
    assert listed.prompt == "flooded fields" and listed.created
    assert listed.report == record.report and listed.progress == 100.0

    # "Remove from list", answered "also delete on the backend": DELETE ...?purge=true.
    assert later.purge(listed)
    url = f"{real_backend}/v1/jobs/{record.job_id}"
    wait_for(lambda: http("GET", url)[0] == 404, 20, "the purge")
    assert record.outputs[0].is_file()  # the downloaded result stays


def job_form_fields(base_url: str) -> set | None:
    """The form fields of POST /v1/jobs from the backend's own OpenAPI schema (None when it
    does not serve one)."""
    try:
        status, body = http("GET", base_url + "/openapi.json")
        schema = json.loads(body) if status == 200 else None
        content = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
        form = content["multipart/form-data"]["schema"]
        if "$ref" in form:
            form = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[-1]]
        return set(form["properties"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


EXAMPLE_ORIGIN = (400_000.0, 4_000_000.0)  # UTM 14N: another scene than the source


def example_texture(size):
    """Stripes of two colours, 3 px wide, diagonal: nothing like the scene's smooth ramps."""
    rows, cols = np.mgrid[0:size, 0:size]
    stripes = ((rows + cols) // 3 % 2).astype(np.uint8)
    return np.stack([40 + 170 * stripes, 160 - 120 * stripes, 90 + 60 * stripes])


def example_area(corners, project) -> QgsGeometry:
    """A polygon on the example layer's pixel corners (column, row), drawn in the project CRS."""
    to_web = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32614"), WEB, project)
    x0, y0 = EXAMPLE_ORIGIN
    ring = [to_web.transform(QgsPointXY(x0 + c * RES, y0 - r * RES)) for c, r in corners]
    return QgsGeometry.fromPolygonXY([ring])


@pytest.mark.slow
@pytest.mark.timeout(START_TIMEOUT_S + JOB_TIMEOUT_S + 60, method="thread")
def test_job_with_an_example_against_the_real_backend(
    real_backend, tmp_path, project, qgis_iface, keep_inputs
):
    """ "Make this look like that": the example is another scene (UTM 14N, striped, at the
    source's resolution: the backend wants 16 px a side or more at the tile's), its example
    area drawn in the project CRS; the job runs to a result layer, and the backend's report
    says how it used the example."""
    fields = job_form_fields(real_backend)
    if fields is not None and "reference" not in fields:
        pytest.skip(
            "the backend's POST /v1/jobs has no `reference` field yet (exemplar-guided edits "
            f"not there; its fields: {', '.join(sorted(fields))})"
        )
    settings.set_backend_url(real_backend)
    settings.QgsSettings().setValue(settings.PREFIX + "poll_interval_s", 0.5)
    path, _texture, _gt = make_geotiff(
        tmp_path / "example.tif",
        56,
        56,
        epsg=32614,
        origin=EXAMPLE_ORIGIN,
        res=RES,
        data=example_texture(56),
    )
    example_layer = QgsRasterLayer(str(path), "striped example")
    project.addMapLayer(example_layer)
    area = example_area([(4.5, 4.5), (44.5, 4.5), (44.5, 40.5), (4.5, 40.5)], project)
    example = jobs.prepare_example(example_layer, [area], WEB, 0.8, project)
    assert (example.window.width, example.window.height) == (41, 37)
    layer, data, request = scene_request(tmp_path, project, "striped fields", example)

    record, result = run_to_result(request, project, qgis_iface)
    if fields is None and record.state == "failed" and "reference" in record.message.lower():
        pytest.skip(f"the backend does not take `reference` yet: {record.message}")
    assert record.state == "succeeded", record.message
    check_result(record, result, request, layer, data)
    assert request.reference_path.is_file()
    if fields is None and not record.report.get("reference"):
        pytest.skip("the backend ignored `reference` (no `reference` entry in its report)")
    assert record.report.get("reference"), record.report  # how the example was used
