"""One full job against the real backend (`rs-edit serve`), preset tiny, CLIP tiny-random.

The backend is found through $RS_EDIT_BACKEND (the `rs-edit` executable) or
<repo>/.venv/bin/rs-edit; the test skips, saying why, when it is absent or when its job API
is not there yet (POST /v1/jobs answers 501). It costs about 30-60 s of CPU.
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


@pytest.mark.slow
@pytest.mark.timeout(START_TIMEOUT_S + JOB_TIMEOUT_S + 60, method="thread")
def test_full_job_against_the_real_backend(real_backend, tmp_path, project, qgis_iface):
    settings.set_backend_url(real_backend)
    settings.QgsSettings().setValue(settings.PREFIX + "poll_interval_s", 0.5)
    path, data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=56, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    utm = QgsCoordinateReferenceSystem("EPSG:32633")
    web = QgsCoordinateReferenceSystem("EPSG:3857")
    to_web = QgsCoordinateTransform(utm, web, project)

    def point(c, r):
        return to_web.transform(QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES))

    # A 48 x 48 px area (one pyramid scale: the cheapest real job), ROI drawn in the
    # project CRS.
    extent = QgsGeometry.fromPolygonXY([[point(5.5, 2.5), point(52.5, 49.5)]]).boundingBox()
    roi = QgsGeometry.fromPolygonXY(
        [[point(15.5, 12.5), point(35.5, 14.5), point(33.5, 36.5), point(16.5, 34.5)]]
    )
    fields = jobs.job_fields("flooded fields", preset="tiny", seed=1, clip="tiny-random")
    request = jobs.prepare_request(layer, extent, web, fields, roi_geometries=[roi], roi_crs=web)
    assert (request.window.width, request.window.height) == (48, 48)

    manager = JobManager(qgis_iface.messageBar())
    record = manager.start(request)
    wait_for(lambda: record.finished, JOB_TIMEOUT_S, "the real backend's job")
    assert record.state == "succeeded", record.message

    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    result = group.findLayers()[0].layer()
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
