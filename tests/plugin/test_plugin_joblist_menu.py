"""The job list's right-click menu (rs_edit_plugin/joblist.py): its actions, which of them a job
in each state allows, and what each one does, against the fake backend."""

import pytest
from fake_backend import Job
from helpers import ORIGIN, RES, make_geotiff, wait_for
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsMultiBandColorRenderer,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
)

from rs_edit_plugin import results
from rs_edit_plugin.dock import RsEditDock
from rs_edit_plugin.joblist import PromptSeedDialog

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
ACTIONS = [
    "Details…",
    "Add result to map",
    "Zoom to result",
    "Open folder",
    "Re-run with another prompt or seed…",
    "Remove from list",
    "Cancel",
]


def utm(c, r):
    return QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)


@pytest.fixture
def dock(qgis_iface, project, tmp_path, fake_backend):
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    layer.setRenderer(QgsMultiBandColorRenderer(layer.dataProvider(), 1, 2, 3))
    project.addMapLayer(layer)
    canvas = qgis_iface.mapCanvas()
    canvas.setLayers([layer])
    to_web = QgsCoordinateTransform(UTM, WEB, project)
    canvas.setExtent(to_web.transformBoundingBox(QgsRectangle(utm(5, 40), utm(45, 5))))
    canvas.refresh()
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    widget.layer_combo.setLayer(layer)
    widget.confirm = lambda text: True  # the whole area is edited
    widget.roi_combo.setCurrentIndex(widget.roi_combo.findData("whole"))
    widget.opened = []  # URLs the dock asked the system to open
    widget.open_url = lambda url: widget.opened.append(url.toLocalFile()) or True
    widget.asked_purge = []  # jobs "Remove from list" asked about; answered "No": list only
    widget.ask_purge = lambda record: widget.asked_purge.append(record) or False
    yield widget
    widget.cleanup()
    wait_for(lambda: all(r.finished for r in widget.jobs.records), 20, "jobs to end")
    widget.deleteLater()


def run(widget, prompt, state=None):
    """Start a job from the dock; wait until it has ended (or is in `state`)."""
    widget.prompt_edit.setText(prompt)
    record = widget.start_job()
    assert record is not None
    wait_for(lambda: record.finished if state is None else record.state == state, 30, prompt)
    return record


def menu(widget, record) -> dict:
    """{text: the action} of the record's context menu, as QGIS would show it."""
    return {action.text(): action for action in widget.job_menu(record).actions()}


def allowed(widget, record) -> list:
    return [text for text, action in menu(widget, record).items() if action.isEnabled()]


def listed_job(widget, fake_backend, status="succeeded") -> object:
    """A job of an earlier session, listed from the backend's history."""
    job = Job("earlier0001", {"prompt": "burnt forest"}, b"", None, 1, 1)
    job.status = status
    fake_backend.jobs[job.id] = job
    loaded = []
    widget.jobs.historyLoaded.connect(loaded.append)
    widget.jobs.load_history(fake_backend.url)
    wait_for(lambda: loaded, 10, "the job list")
    return next(r for r in widget.jobs.records if r.job_id == job.id)


def test_the_actions_each_job_state_allows(dock, fake_backend):
    widget = dock
    done = run(widget, "flooded fields")
    assert done.state == "succeeded", done.message
    assert list(menu(widget, done)) == ACTIONS
    assert allowed(widget, done) == ACTIONS[:-1]  # all but Cancel

    fake_backend.behaviour["fail_with"] = "CUDA out of memory"
    failed = run(widget, "a new road")
    assert failed.state == "failed"
    assert allowed(widget, failed) == [
        "Details…",
        "Re-run with another prompt or seed…",
        "Remove from list",
    ]

    del fake_backend.behaviour["fail_with"]
    fake_backend.behaviour["hang"] = True
    running = run(widget, "a wide river", state="running")
    assert allowed(widget, running) == [
        "Details…",
        "Re-run with another prompt or seed…",
        "Cancel",
    ]
    menu(widget, running)["Cancel"].trigger()
    wait_for(lambda: running.finished, 20, "the cancelled job")
    assert running.state == "cancelled" and fake_backend.deleted == [running.job_id]
    assert allowed(widget, running) == allowed(widget, failed)  # ended without a result

    listed = listed_job(widget, fake_backend)
    assert listed.listed and listed.state == "succeeded"
    assert allowed(widget, listed) == ["Details…", "Remove from list"]  # nothing local


def test_add_result_to_map_and_zoom_to_it(dock, project, qgis_iface):
    widget = dock
    record = run(widget, "flooded fields")
    assert record.state == "succeeded", record.message
    group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
    first = group.findLayers()[0].layer()
    assert record.layers == [first.id()]

    project.removeMapLayer(first.id())  # the analyst removed it; the menu adds it again
    assert "Zoom to result" in allowed(widget, record)  # to its tile, the result's extent
    menu(widget, record)["Add result to map"].trigger()
    again = [node.layer() for node in group.findLayers()]
    assert len(again) == 1 and again[0].source() == str(record.outputs[0])

    canvas = qgis_iface.mapCanvas()
    canvas.setExtent(QgsRectangle(0, 0, 10, 10))  # far away, in EPSG:3857
    menu(widget, record)["Zoom to result"].trigger()
    to_web = QgsCoordinateTransform(UTM, WEB, project)
    result = to_web.transformBoundingBox(again[0].extent())
    shown = canvas.extent()
    assert shown.contains(result) and shown.width() < 3 * result.width()


def test_open_folder_opens_the_results_folder(dock):
    widget = dock
    record = run(widget, "flooded fields")
    menu(widget, record)["Open folder"].trigger()
    assert widget.opened == [str(record.outputs[0].parent)]


def test_rerun_with_another_prompt_and_seed(dock, fake_backend):
    widget = dock
    first = run(widget, "flooded fields")
    asked = []

    def answer(prompt, seed):
        asked.append((prompt, seed))
        return "  a  frozen lake ", 7

    widget.ask_prompt_and_seed = answer
    widget.prompt_edit.setText("something else entirely")  # the dock's own prompt: not used
    menu(widget, first)["Re-run with another prompt or seed…"].trigger()

    assert asked == [("flooded fields", first.request.fields["seed"])]  # prefilled
    second = widget.jobs.records[-1]
    assert second is not first and second.prompt == "a frozen lake"
    wait_for(lambda: second.finished, 30, "the re-run")
    assert second.state == "succeeded", second.message
    sent = fake_backend.jobs[second.job_id].fields
    assert sent["prompt"] == "a frozen lake" and sent["seed"] == "7"
    before = fake_backend.jobs[first.job_id].fields
    assert {k: v for k, v in sent.items() if k not in ("prompt", "seed")} == {
        k: v for k, v in before.items() if k not in ("prompt", "seed")
    }
    assert second.request.window == first.request.window  # the same area and ROI
    assert second.request.roi_wkb == first.request.roi_wkb
    assert second.outputs[0] != first.outputs[0] and first.outputs[0].is_file()
    assert widget.job_tree.topLevelItem(0).text(0) == "scene – a frozen lake"

    widget.ask_prompt_and_seed = lambda prompt, seed: None  # the dialog's Cancel
    assert widget.rerun(first) is None and len(widget.jobs.records) == 2
    widget.ask_prompt_and_seed = lambda prompt, seed: ("   ", -1)  # an empty prompt
    assert widget.rerun(first) is None and len(widget.jobs.records) == 2


def test_remove_from_list(dock, fake_backend):
    widget = dock
    fake_backend.behaviour["fail_with"] = "CUDA out of memory"
    failed = run(widget, "a new road")
    listed = listed_job(widget, fake_backend, status="failed")
    tree = widget.job_tree
    assert tree.topLevelItemCount() == 2

    for record in (failed, listed):
        menu(widget, record)["Remove from list"].trigger()
        assert record not in widget.jobs.records
    assert tree.topLevelItemCount() == 0
    assert widget.asked_purge == [failed, listed]  # asked, and answered "No"
    assert fake_backend.deleted == [] and fake_backend.purged == []  # the backend keeps both

    loaded = []
    widget.jobs.historyLoaded.connect(loaded.append)
    widget.jobs.load_history(fake_backend.url)  # the list reloaded (the dock opened again)
    wait_for(lambda: loaded, 10, "the job list")
    assert loaded == [2] and tree.topLevelItemCount() == 0  # removed ones stay away


def test_right_click_opens_the_menu_of_the_row_under_the_mouse(dock, monkeypatch):
    widget = dock
    first = run(widget, "flooded fields")
    second = run(widget, "a new road")
    tree = widget.job_tree
    tree.setCurrentItem(tree.topLevelItem(0))  # the newest, `second`, is selected
    shown = []

    class Menu:
        def __init__(self, record):
            self.record = record

        def exec_(self, _pos):
            shown.append(self.record)

    monkeypatch.setattr(widget, "job_menu", Menu)
    row = tree.visualItemRect(tree.topLevelItem(1))  # the older job's row
    widget._job_menu(row.center())
    assert shown == [first] and widget.selected_record() is first
    assert second is not first


def test_the_rerun_dialog_is_prefilled_with_the_jobs_prompt_and_seed(qgis_iface):
    dialog = PromptSeedDialog("flooded fields", 42, qgis_iface.mainWindow())
    assert dialog.values() == ("flooded fields", 42)
    dialog.prompt_edit.setText("a frozen lake")
    dialog.seed_spin.setValue(-1)
    assert dialog.values() == ("a frozen lake", -1)  # -1: a random seed
    assert dialog.seed_spin.text() == "random"
    assert PromptSeedDialog("x", None).values() == ("x", -1)  # no seed recorded: random
    dialog.deleteLater()


def test_remove_from_list_can_delete_the_job_on_the_backend(dock, fake_backend, qgis_iface):
    widget = dock
    done = run(widget, "flooded fields")
    assert done.state == "succeeded", done.message
    widget.ask_purge = lambda record: None  # the question cancelled: nothing happens
    assert not widget.remove_from_list(done) and done in widget.jobs.records

    widget.ask_purge = lambda record: True  # "Yes": delete it on the backend too
    menu(widget, done)["Remove from list"].trigger()
    assert done not in widget.jobs.records
    wait_for(lambda: fake_backend.purged == [done.job_id], 10, "the purge")
    assert done.job_id not in fake_backend.jobs and fake_backend.deleted == []
    assert done.outputs[0].is_file()  # the downloaded result stays
    purges = [p for m, p, _h in fake_backend.requests if m == "DELETE"]
    assert purges == [f"/v1/jobs/{done.job_id}?purge=true"]

    # A job that has not ended is cancelled, never purged.
    fake_backend.behaviour["hang"] = True
    running = run(widget, "a wide river", state="running")
    assert not widget.remove_from_list(running)
    wait_for(lambda: running.finished, 20, "the cancelled job")
    assert running.state == "cancelled" and fake_backend.deleted == [running.job_id]
    assert fake_backend.purged == [done.job_id] and running in widget.jobs.records

    # Ended here, still running there (409 job_active): cancelled there, and the user told.
    listed = listed_job(widget, fake_backend, status="failed")
    fake_backend.jobs[listed.job_id].status = "running"
    qgis_iface.messageBar().clear_messages()
    assert widget.remove_from_list(listed)
    wait_for(lambda: listed.job_id in fake_backend.deleted, 10, "the cancel after a 409")
    assert listed.job_id not in fake_backend.purged
    wait_for(
        lambda: any(
            "not deleted" in m
            for m in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Warning)
        ),
        5,
        "the warning",
    )
