"""The job flow in the background (QgsTask + job API) against the loopback fake backend:
result layers in the group, exact CRS/extent/pixels, cancel, errors in the message bar,
the token as a Bearer header."""

import socket
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs, wait_for
from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
    QgsSettings,
)
from qgis.PyQt.QtCore import QCoreApplication

from rs_edit_plugin import jobs, results, settings
from rs_edit_plugin.tasks import JobManager

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


def utm_rect(col0, row0, col1, row1):
    x0, y0 = ORIGIN
    return QgsRectangle(x0 + col0 * RES, y0 - row1 * RES, x0 + col1 * RES, y0 - row0 * RES)


def roi_in_4326(project):
    ring = [
        QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)
        for c, r in [(12.2, 10.3), (22.6, 10.3), (22.6, 18.7), (12.2, 18.7)]
    ]
    geometry = QgsGeometry.fromPolygonXY([ring])
    geometry.transform(QgsCoordinateTransform(UTM, WGS84, project))
    return geometry


@pytest.fixture
def scene(tmp_path, project):
    """A UTM raster styled with bands 3,2,1 in a project saved to tmp_path (EPSG:3857)."""
    path, data, _gt = make_geotiff(tmp_path / "data" / "scene.tif", width=60, height=50)
    layer = QgsRasterLayer(str(path), "scene")
    renderer = QgsMultiBandColorRenderer(layer.dataProvider(), 3, 2, 1)
    layer.setRenderer(renderer)
    project.addMapLayer(layer)
    settings.set_results_dir("")  # next to the project
    assert project.write(str(tmp_path / "project.qgz"))
    return layer, data


def extent_3857(project):
    transform = QgsCoordinateTransform(UTM, WEB, project)
    return transform.transformBoundingBox(utm_rect(8.5, 6.5, 30.5, 24.5))


def make_request(layer, project, prompt="flooded fields", **kw):
    fields = jobs.job_fields(prompt, preset="tiny", seed=7, clip="tiny-random", **kw)
    return jobs.prepare_request(
        layer,
        extent_3857(project),
        WEB,
        fields,
        roi_geometries=[roi_in_4326(project)],
        roi_crs=WGS84,
    )


@pytest.fixture
def manager(qgis_iface):
    jm = JobManager(qgis_iface.messageBar())
    yield jm
    jm.cancel_all()
    wait_for(lambda: all(r.finished for r in jm.records), 20, "jobs to end")


def messages(qgis_iface, level):
    return qgis_iface.messageBar().get_messages(level)


def test_full_job_adds_the_result_to_the_group(
    fake_backend, scene, project, manager, tmp_path, qgis_iface, keep_inputs
):
    layer, data = scene
    request = make_request(layer, project)
    window = request.window
    states = []
    manager.jobChanged.connect(lambda r: states.append(r.state))

    record = manager.start(request)
    assert not record.finished  # started in the background: the GUI thread goes on
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    assert {"queued", "running"} <= set(states)

    # Saved next to the project, never in a temporary folder.
    out = tmp_path / "rs_edit_results"
    assert record.outputs == [request.out_stem.with_suffix(".tif")]
    assert record.outputs[0].parent == out and record.outputs[0].is_file()
    assert request.tile_path.parent == out / "inputs" and request.mask_path.is_file()

    # What the backend received: the tile, the mask on its grid, the fields.
    job = fake_backend.jobs[record.job_id]
    assert job.fields == {
        "prompt": "flooded fields",
        "preset": "tiny",
        "seed": "7",
        "clip": "tiny-random",
        "llm": "none",
        "variants": "1",
    }
    assert job.mask is not None

    # The result layer: in the group, named after the prompt, same CRS and extent as the tile.
    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    assert group is not None and project.layerTreeRoot().children()[0] is group
    layers = [node.layer() for node in group.findLayers()]
    assert len(layers) == 1
    result = layers[0]
    assert result.name() == "scene – flooded fields (v1)"
    assert result.crs() == layer.crs()
    assert result.extent() == window.extent
    tile_layer = QgsRasterLayer(str(request.tile_path), "tile")
    assert tile_layer.extent() == result.extent() and tile_layer.crs() == result.crs()
    assert (result.width(), result.height()) == (window.width, window.height)

    # Pixels: the source's outside the ROI, edited inside it.
    edited, gt, wkt = read(record.outputs[0])
    mask = read(request.mask_path)[0][0] != 0
    source = data[
        :, window.yoff : window.yoff + window.height, window.xoff : window.xoff + window.width
    ]
    assert gt == window.geotransform and same_crs(wkt, layer.crs().toWkt())
    np.testing.assert_array_equal(edited[:, ~mask], source[:, ~mask])
    np.testing.assert_array_equal(edited[:, mask], 255 - source[:, mask])
    assert 60 < mask.sum() < window.width * window.height

    # Styled like the source; prompt and settings in the metadata.
    assert result.renderer().type() == "multibandcolor"
    assert (result.renderer().redBand(), result.renderer().blueBand()) == (3, 1)
    abstract = result.metadata().abstract()
    assert "flooded fields" in abstract and "preset: tiny" in abstract and "seed: 7" in abstract
    assert "source_layer: scene" in abstract
    assert result.metadata().keywords("rs-edit") == ["prompt: flooded fields"]
    assert result.customProperty("rs_edit/prompt") == "flooded fields"
    # CLIP tiny-random has random weights: a warning, not a green success.
    assert messages(qgis_iface, Qgis.MessageLevel.Success) == []
    warned = messages(qgis_iface, Qgis.MessageLevel.Warning)
    assert any("finished with warnings" in m and "random weights" in m for m in warned)
    assert record.report["clip_similarity_edits"] == [0.2745]

    # "Add result" adds it again (e.g. after the user removed it).
    project.removeMapLayer(result.id())
    again = manager.add_results(record)
    assert [lyr.name() for lyr in again] == ["scene – flooded fields (v1)"]
    assert len(group.findLayers()) == 1


def test_backend_warnings_and_report_reach_the_user(
    fake_backend, scene, project, manager, qgis_iface
):
    from rs_edit_plugin import report

    layer, _data = scene
    fields = dict(clip="RemoteCLIP-ViT-B-32")  # weights present: no warning of its own
    request = make_request(layer, project)
    request.fields.update(fields)
    record = manager.start(request)
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded" and record.warnings == []
    assert any("finished" in m for m in messages(qgis_iface, Qgis.MessageLevel.Success))
    assert "CLIP similarity after: 0.275" in report.key_figures(record.report)

    qgis_iface.messageBar().clear_messages()
    fake_backend.behaviour["warnings"] = ["the LLM was not reachable: template prompts used"]
    fake_backend.behaviour["report"] = {"clip": "RemoteCLIP-RN50", "clip_random": True}
    request = make_request(layer, project, "burnt forest")
    record = manager.start(request)
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded"
    assert record.warnings[0] == "the LLM was not reachable: template prompts used"
    assert "RemoteCLIP-RN50 ran with random weights" in record.warnings[1]
    assert messages(qgis_iface, Qgis.MessageLevel.Success) == []
    warned = messages(qgis_iface, Qgis.MessageLevel.Warning)
    assert len(warned) == 1 and "template prompts used" in warned[0]
    details = report.details_text(record)
    assert "Warnings:" in details and '"clip": "RemoteCLIP-RN50"' in details


def test_variants_each_become_a_layer(fake_backend, scene, project, manager):
    layer, _data = scene
    record = manager.start(make_request(layer, project, "burnt forest", variants=2))
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    assert [p.name[-7:] for p in record.outputs] == ["_v1.tif", "_v2.tif"]
    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    names = sorted(node.layer().name() for node in group.findLayers())
    assert names == ["scene – burnt forest (v1)", "scene – burnt forest (v2)"]
    first, second = (read(p)[0] for p in record.outputs)
    assert not np.array_equal(first, second)


def test_results_of_each_raster_sit_above_it_with_unique_names(tmp_path, project):
    """Two rasters, the same prompt: each result group lies directly above its source layer,
    and no two result layers share a name."""
    root = project.layerTreeRoot()
    sources = []
    for name in ("north", "south"):
        path, _data, _gt = make_geotiff(tmp_path / f"{name}.tif", width=8, height=8)
        layer = QgsRasterLayer(str(path), name)
        project.addMapLayer(layer)
        sources.append(layer)
    other, _data, _gt = make_geotiff(tmp_path / "top.tif", width=8, height=8)
    project.addMapLayer(QgsRasterLayer(str(other), "top"))  # the topmost layer
    result = tmp_path / "result.tif"
    make_geotiff(result, width=8, height=8)
    added = []
    for source in (sources[0], sources[1], sources[0]):
        job_settings = {"prompt": "flooded fields", "source_layer": source.name()}
        added.append(results.add_result_layer(result, job_settings, source, project))
    assert [lyr.name() for lyr in added] == [
        "north – flooded fields (v1)",
        "south – flooded fields (v1)",
        "north – flooded fields (v2)",
    ]
    children = root.children()
    for source in sources:
        node = root.findLayer(source.id())
        group = children[children.index(node) - 1]
        assert group.name() == results.GROUP_NAME
        names = [n.layer().name() for n in group.findLayers()]
        assert names and all(n.startswith(source.name() + " – ") for n in names)
    assert children[0].name() == "top"  # not above every layer
    assert len([c for c in children if c.name() == results.GROUP_NAME]) == 2


@pytest.mark.parametrize("how", ["dock", "task manager"])
def test_cancel_stops_the_job_on_the_backend(
    fake_backend, scene, project, manager, how, qgis_iface
):
    """From the dock while the job waits on the backend; from QGIS's task manager while the
    upload (a task) runs. Either way the job ends as cancelled, no task as failed."""
    layer, _data = scene
    fake_backend.behaviour["hang"] = True
    ends = []
    if how == "task manager":
        fake_backend.behaviour["submit_delay"] = 1.0
    record = manager.start(make_request(layer, project, "a new road"))
    if how == "dock":
        wait_for(lambda: record.state == "running", 20, "the job to run")
        manager.cancel(record)
    else:  # what QGIS's task manager does when the user cancels there
        wait_for(lambda: record.state == "uploading", 20, "the upload")
        task = record.runner.task
        task.taskCompleted.connect(lambda: ends.append("completed"))
        task.taskTerminated.connect(lambda: ends.append("terminated"))
        QgsApplication.taskManager().cancelAll()
        wait_for(lambda: ends, 5, "the task's end")
        # QGIS announces a terminated task as "Task failed"; a user's cancel is no failure.
        assert ends == ["completed"]
    wait_for(lambda: record.finished, 20, "the cancelled job")
    assert record.state == "cancelled" and record.message == "cancelled"
    assert messages(qgis_iface, Qgis.MessageLevel.Critical) == []
    if how == "dock":
        assert fake_backend.deleted == [record.job_id]
        assert fake_backend.jobs[record.job_id].status == "cancelled"
    else:  # the aborted upload may still have made a job: that one is cancelled too
        wait_for(lambda: len(fake_backend.jobs) == len(fake_backend.deleted), 5, "the DELETE")
    assert project.layerTreeRoot().findGroup(results.GROUP_NAME) is None
    assert record.outputs == []
    assert any("cancelled" in m for m in messages(qgis_iface, Qgis.MessageLevel.Info))


@pytest.mark.parametrize("outcome", ["succeeded", "failed", "cancelled", "unloaded"])
def test_the_exported_inputs_go_when_the_job_ends(fake_backend, scene, project, manager, outcome):
    """The tile, mask (and example) exported for the upload are deleted once the job has
    ended, however it ended; a succeeded job's result stays."""
    layer, _data = scene
    fake_backend.behaviour["hang"] = True  # running until told otherwise
    request = make_request(layer, project)
    record = manager.start(request)
    wait_for(lambda: record.state == "running", 20, "the job to run")
    assert request.tile_path.is_file() and request.mask_path.is_file()  # kept while it runs
    if outcome == "failed":
        fake_backend.behaviour["fail_with"] = "CUDA out of memory"
    if outcome in ("succeeded", "failed"):
        del fake_backend.behaviour["hang"]
    elif outcome == "cancelled":
        manager.cancel(record)
    else:  # the plugin unloads while the job runs
        manager.shutdown()
    wait_for(lambda: record.finished, 20, "the job's end")
    assert record.state == ("cancelled" if outcome == "unloaded" else outcome), record.message
    assert not request.tile_path.exists() and not request.mask_path.exists()
    assert not request.inputs_dir.exists()  # the folder, left empty, goes too
    if outcome == "succeeded":
        assert record.outputs[0].is_file()


def test_cancel_at_any_moment_of_the_submission_ends_the_job(fake_backend, scene, project, manager):
    """Cancels landing anywhere in export + upload: every job ends as cancelled, no pool
    thread is left waiting (QGIS's blocking requests could miss a cancel that came between
    their two feedback connections and wait forever), and every job the backend made is
    cancelled there."""
    import random

    layer, _data = scene
    fake_backend.behaviour["hang"] = True
    fake_backend.behaviour["submit_delay"] = 0.05
    rng = random.Random(16)
    for i in range(25):
        record = manager.start(make_request(layer, project, f"road {i}"))
        wait_for(lambda r=record: r.state in ("exporting", "uploading"), 20, "the submission")
        end = time.monotonic() + rng.uniform(0, 0.03)
        while time.monotonic() < end:
            QCoreApplication.processEvents()
        manager.cancel(record)
        wait_for(lambda r=record: r.finished, 10, f"cancelled job {i}")
        assert record.state == "cancelled", record.message
    tasks = QgsApplication.taskManager()
    wait_for(lambda: tasks.countActiveTasks() == 0, 5, "the tasks to end")
    wait_for(lambda: len(fake_backend.deleted) == len(fake_backend.jobs), 5, "the DELETEs")
    assert sorted(fake_backend.deleted) == sorted(fake_backend.jobs)
    assert not record.request.inputs_dir.exists()  # no job left its exported tile behind


def test_waiting_jobs_hold_no_thread(fake_backend, scene, project, manager):
    """Three jobs in flight on the backend: none holds a thread of QGIS's pool (a 2-core
    laptop has two), so the map still renders; each one can still be cancelled."""
    from qgis.PyQt.QtCore import QThreadPool

    layer, _data = scene
    fake_backend.behaviour["hang"] = True
    records = [manager.start(make_request(layer, project, f"road {i}")) for i in range(3)]
    wait_for(lambda: all(r.state == "running" for r in records), 30, "three running jobs")
    tasks = QgsApplication.taskManager()
    wait_for(lambda: tasks.countActiveTasks() == 0, 5, "the upload tasks to end")
    assert QThreadPool.globalInstance().activeThreadCount() == 0
    assert all(r.runner.waiting for r in records)
    for record in records:
        manager.cancel(record)
    wait_for(lambda: all(r.finished for r in records), 20, "the cancelled jobs")
    assert [r.state for r in records] == ["cancelled"] * 3
    assert sorted(fake_backend.deleted) == sorted(r.job_id for r in records)


def test_a_job_listed_while_it_was_submitted_has_one_row(fake_backend, scene, project, manager):
    """A listing of the backend's jobs that came while a job was being submitted shows that
    job as a listed row; once the submission names the job, that row goes."""
    from rs_edit_plugin.tasks import JobRecord

    layer, _data = scene
    listed = JobRecord(999, "flooded fields", None, state="queued", job_id="job1")
    listed.backend_url = fake_backend.url
    elsewhere = JobRecord(998, "flooded fields", None, state="succeeded", job_id="job1")
    elsewhere.backend_url = "http://127.0.0.1:1"  # the same id on another backend: kept
    manager.records += [listed, elsewhere]
    removed = []
    manager.jobRemoved.connect(removed.append)
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded" and record.job_id == "job1"
    assert removed == [listed] and manager.records == [elsewhere, record]


def test_backend_refusal_appears_in_the_message_bar(
    fake_backend, scene, project, manager, qgis_iface
):
    layer, _data = scene
    fake_backend.behaviour["submit_error"] = (400, "unknown CLIP model 'nope' (known: ...)")
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 20, "the refused job")
    assert record.state == "failed"
    critical = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert len(critical) == 1
    assert "unknown CLIP model 'nope' (known: ...)" in critical[0]
    assert "flooded fields" in critical[0]


def test_failed_job_shows_the_backends_message(fake_backend, scene, project, manager, qgis_iface):
    layer, _data = scene
    fake_backend.behaviour["fail_with"] = "CUDA out of memory: try the 'fast' preset"
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 20, "the failing job")
    assert record.state == "failed"
    assert record.message == "CUDA out of memory: try the 'fast' preset"
    critical = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert any("CUDA out of memory" in m for m in critical)
    assert project.layerTreeRoot().findGroup(results.GROUP_NAME) is None


def test_job_interrupted_by_a_backend_restart_is_submitted_again(
    fake_backend, scene, project, manager
):
    layer, _data = scene
    fake_backend.behaviour["interrupt_jobs"] = 1
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == "succeeded", record.message
    first, second = fake_backend.jobs.values()
    assert (first.status, first.interrupted, second.status) == ("failed", True, "succeeded")
    assert record.job_id == second.id and second.fields == first.fields


@pytest.mark.parametrize(
    ("dropped", "reconnect_s", "state"), [(12, 120.0, "succeeded"), (10**6, 0.5, "failed")]
)
def test_backend_gone_for_a_moment_is_waited_for(
    fake_backend, scene, project, manager, dropped, reconnect_s, state
):
    """Status polls that get no HTTP answer (a restart) are retried for `reconnect_s`."""
    layer, _data = scene
    fake_backend.behaviour["drop_polls"] = dropped
    request = make_request(layer, project)
    request.reconnect_s = reconnect_s
    record = manager.start(request)
    wait_for(lambda: record.finished, 30, "the job")
    assert record.state == state, record.message
    polls = [p for m, p, _ in fake_backend.requests if m == "GET" and p.startswith("/v1/jobs/")]
    if state == "failed":
        assert "not reachable" in record.message and len(polls) >= 2
    else:
        assert len(fake_backend.jobs) == 1 and len(polls) >= dropped + 3


def test_unreachable_backend_is_reported(scene, project, manager, qgis_iface):
    layer, _data = scene
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.set_backend_url(f"http://127.0.0.1:{port}")
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 20, "the job")
    assert record.state == "failed" and "not reachable" in record.message
    assert any("not reachable" in m for m in messages(qgis_iface, Qgis.MessageLevel.Critical))


def test_token_is_sent_as_bearer_and_kept_out_of_settings(
    fake_backend, scene, project, manager, master_password
):
    layer, _data = scene
    config_id = settings.store_token("s3cret-token-for-test")
    try:
        assert config_id and settings.token() == "s3cret-token-for-test"
        request = make_request(layer, project)
        assert "s3cret" not in repr(request)
        record = manager.start(request)
        wait_for(lambda: record.finished, 30, "the job")
        assert record.state == "succeeded", record.message
        auth = {h.get("Authorization") for _m, _p, h in fake_backend.requests}
        assert auth == {"Bearer s3cret-token-for-test"}
        QgsSettings().sync()
        ini = Path(QgsSettings().fileName()).read_text(encoding="utf-8", errors="replace")
        assert "s3cret" not in ini and config_id in ini
        abstract = project.layerTreeRoot().findGroup(results.GROUP_NAME).findLayers()[0]
        assert "s3cret" not in abstract.layer().metadata().abstract()
    finally:
        settings.clear_token()
    assert settings.token() == "" and config_id not in master_password.configIds()


def test_missing_token_is_reported(fake_backend, scene, project, manager, qgis_iface):
    layer, _data = scene
    fake_backend.behaviour["token"] = "expected"
    record = manager.start(make_request(layer, project))
    wait_for(lambda: record.finished, 20, "the job")
    assert record.state == "failed"
    assert "missing or wrong access token" in record.message
    critical = messages(qgis_iface, Qgis.MessageLevel.Critical)
    assert any("missing or wrong access token" in m for m in critical)


def test_results_dir_rules(tmp_path, project):
    settings.set_results_dir("")
    assert settings.results_dir(project) == settings.UNSAVED_PROJECT_RESULTS_DIR
    assert project.write(str(tmp_path / "p.qgz"))
    assert settings.results_dir(project) == tmp_path / "rs_edit_results"
    settings.set_results_dir(str(tmp_path / "chosen"))
    assert settings.results_dir(project) == tmp_path / "chosen"


def test_bad_requests_are_refused_before_any_job(scene, project):
    layer, _data = scene
    with pytest.raises(jobs.JobError, match="prompt is empty"):
        jobs.job_fields("   ")
    fields = jobs.job_fields("x")
    assert 0 <= fields["seed"] < 2**31  # a random seed, recorded
    from rs_edit_plugin import area, roi

    with pytest.raises(area.AreaError, match="at most"):
        jobs.prepare_request(layer, extent_3857(project), WEB, fields, max_pixels=100)
    far = QgsGeometry.fromRect(utm_rect(45, 40, 50, 45))
    with pytest.raises(roi.RoiError, match="outside the area"):
        jobs.prepare_request(
            layer, extent_3857(project), WEB, fields, roi_geometries=[far], roi_crs=UTM
        )
    # Off the raster (60 x 50 px) but inside the map extent sent: the raster is the problem.
    off = QgsGeometry.fromRect(utm_rect(70, 10, 80, 20))
    wide = QgsCoordinateTransform(UTM, WEB, project).transformBoundingBox(
        utm_rect(-10, -10, 90, 60)
    )
    with pytest.raises(roi.RoiError, match="outside the raster scene"):
        jobs.prepare_request(layer, wide, WEB, fields, roi_geometries=[off], roi_crs=UTM)
