"""Setting up the plugin-managed backend environment (rs_edit_plugin/local_env.py).

The slow test installs the backend for real into tmp_path (torch included: several minutes
and a few GB of downloads), starts it from the dock, runs a `tiny` job from the dock to a
result layer and unloads the plugin, leaving no process; `-m "not slow"` skips it.
"""

import shutil
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
from helpers import ORIGIN, RES, make_geotiff
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
    QgsTask,
)
from qgis.PyQt.QtCore import QCoreApplication

from rs_edit_plugin import local_backend, local_env, results, settings
from rs_edit_plugin.local_backend import FAILED, RUNNING
from rs_edit_plugin.local_env import CPU_TORCH_INDEX, SetupTask, Step
from rs_edit_plugin.plugin import RsEditPlugin

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
JOB_TIMEOUT_S = 540  # the backend's tiny preset on 2 busy CPU cores


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def step_args(steps, title_part):
    (step,) = [s for s in steps if title_part in s.title]
    return step.argv


# --- the plan -----------------------------------------------------------------------------


def test_cpu_plan_installs_torch_isolated_from_the_index_and_the_backend_with_pip_settings(
    tmp_path,
):
    steps = local_env.plan(
        "/usr/bin/python3", tmp_path / "env", "/x/rs_edit.whl", gpu=False, environ={}
    )
    py = str(tmp_path / "env" / "bin" / "python")
    assert steps[0].argv == ["/usr/bin/python3", "-m", "venv", str(tmp_path / "env")]
    torch = step_args(steps, "torch")
    assert torch[:5] == [py, "-m", "pip", "install", "--isolated"]  # the find-links trap
    assert torch[torch.index("--index-url") + 1] == local_env.PYPI
    assert torch[torch.index("--extra-index-url") + 1] == CPU_TORCH_INDEX
    assert "torch==2.13.0" in torch and "torchvision==0.28.0" in torch
    assert any(arg.startswith("open_clip_torch") for arg in torch)
    assert "(CPU)" in steps[1].title
    backend = step_args(steps, "rs-edit")
    assert backend[:4] == [py, "-m", "pip", "install"] and backend[-1] == "/x/rs_edit.whl"
    # The machine's pip settings apply to everything else: no --isolated, no index override.
    assert "--isolated" not in backend and "--index-url" not in backend
    assert "import torch, torchvision, open_clip, rs_edit" in steps[-1].argv[-1]


def test_gpu_plan_takes_the_default_torch_and_the_index_from_the_environment(tmp_path):
    steps = local_env.plan(
        "python3", tmp_path, "src", gpu=True, environ={"PIP_INDEX_URL": "https://mirror/simple"}
    )
    torch = step_args(steps, "torch")
    assert "(CUDA)" in steps[1].title
    assert "--extra-index-url" not in torch
    assert torch[torch.index("--index-url") + 1] == "https://mirror/simple"
    steps = local_env.plan(
        "python3",
        tmp_path,
        "src",
        gpu=False,
        environ={
            "PIP_INDEX_URL": "https://a/simple",
            "RS_EDIT_INDEX_URL": "https://b/simple",
            "RS_EDIT_TORCH_INDEX_URL": "",
        },
    )
    torch = step_args(steps, "torch")
    assert torch[torch.index("--index-url") + 1] == "https://b/simple"
    assert "--extra-index-url" not in torch  # empty: the index's own torch build


def test_repair_recreates_the_environment(tmp_path):
    steps = local_env.plan("python3", tmp_path / "env", "src", gpu=False, repair=True)
    assert steps[0].argv == ["python3", "-m", "venv", "--clear", str(tmp_path / "env")]


def test_nvidia_smi_on_the_path_means_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert not local_env.has_nvidia()
    assert "(CPU)" in local_env.plan("python3", tmp_path, "src", environ={})[1].title
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    assert local_env.has_nvidia()
    assert "(CUDA)" in local_env.plan("python3", tmp_path, "src", environ={})[1].title


def test_child_environment_keeps_pip_settings_and_drops_qgis_python_variables():
    environ = local_env.child_environment(
        {"PIP_FIND_LINKS": "/opt/wheels", "PYTHONPATH": "/qgis/python", "PYTHONHOME": "/q"}
    )
    assert environ["PIP_FIND_LINKS"] == "/opt/wheels"
    assert "PYTHONPATH" not in environ and "PYTHONHOME" not in environ


def test_source_is_the_setting_else_the_bundled_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(local_env, "WHEELS_DIR", tmp_path / "wheels")
    with pytest.raises(local_env.SetupError, match="no rs-edit wheel"):
        local_env.source()
    (tmp_path / "wheels").mkdir()
    wheel = tmp_path / "wheels" / "rs_edit-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert local_env.source() == str(wheel)
    local_env.set_source(str(ROOT))
    assert local_env.source() == str(ROOT)
    local_env.set_source("")


def test_remove_refuses_a_folder_that_is_not_an_environment(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(local_env.SetupError, match="not a virtual environment"):
        local_env.remove(tmp_path)
    assert (tmp_path / "keep.txt").exists()
    env = tmp_path / "env"
    env.mkdir()
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    local_env.remove(env)
    assert not env.exists()


# --- the task -----------------------------------------------------------------------------


def test_task_runs_the_steps_and_logs_their_output():
    task = SetupTask(
        [Step("one", [PY, "-c", "print('first line')"]), Step("two", [PY, "-c", "print(2)"])]
    )
    seen = []
    task.logLine.connect(seen.append)
    assert task.run()
    QCoreApplication.processEvents()
    assert "first line" in task.log and "2" in task.log
    assert "== one" in task.log and "== two" in task.log
    assert task.progress() == 100


def test_task_stops_at_a_failing_step():
    task = SetupTask(
        [
            Step("bad", [PY, "-c", "import sys; print('oops'); sys.exit(4)"]),
            Step("never", [PY, "-c", "print('not run')"]),
        ]
    )
    assert not task.run()
    assert task.error == "bad failed (exit code 4)"
    assert "oops" in task.log and "not run" not in task.log


def test_task_is_cancellable_through_the_task_manager():
    task = SetupTask(
        [Step("slow", [PY, "-c", "import time; print('go', flush=True); time.sleep(60)"])]
    )
    ended = []
    task.taskTerminated.connect(lambda: ended.append("terminated"))
    QgsApplication.taskManager().addTask(task)
    wait_until(lambda: "go" in task.log, 30, "the step to start")
    started = time.monotonic()
    task.cancel()
    wait_until(lambda: ended, 30, "the task to end")
    assert time.monotonic() - started < 10
    assert task.error == "cancelled"
    assert task.status() == QgsTask.TaskStatus.Terminated


# --- the dock -----------------------------------------------------------------------------


def fake_plan(python, folder, source, **_kw):
    """Stands in for the real plan: makes a folder that looks like an installed env."""
    make = (
        "import os, sys; f = sys.argv[1]; os.makedirs(f + '/bin', exist_ok=True); "
        "open(f + '/pyvenv.cfg', 'w').write('x'); p = f + '/bin/rs-edit'; "
        "open(p, 'w').write('#!/bin/sh\\n'); os.chmod(p, 0o755); print('made', f)"
    )
    return [
        Step("Creating", [PY, "-c", make, str(folder)]),
        Step("Checking", [PY, "-c", "print('ok')"]),
    ]


def test_dock_sets_up_repairs_and_removes_the_environment(dock, tmp_path, monkeypatch):
    widget = dock
    env = tmp_path / "env"
    local_backend.set_env_dir(str(env))
    monkeypatch.setattr(local_env, "plan", fake_plan)
    monkeypatch.setattr(local_env, "source", lambda: "src")
    widget._refresh_setup_row()
    assert widget.setup_button.text() == "Set up local backend"
    assert not widget.remove_env_button.isEnabled()
    widget.setup_button.click()
    assert widget.setup_button.text() == "Cancel setup"
    assert widget.setup_progress.isVisibleTo(widget)
    wait_until(lambda: widget.setup_task is None, 60, "the set-up task")
    log = widget.setup_log.toPlainText()
    assert f"made {env}" in log and "ready" in log, log
    assert widget.setup_button.text() == "Repair"
    assert widget.remove_env_button.isEnabled()
    assert local_env.installed(env)
    widget.confirm = lambda text: True
    assert widget.remove_local_backend()
    assert not env.exists()
    assert widget.setup_button.text() == "Set up local backend"


def test_dock_reports_a_failed_setup(dock, tmp_path, monkeypatch):
    local_backend.set_env_dir(str(tmp_path / "env"))
    monkeypatch.setattr(
        local_env, "plan", lambda *a, **k: [Step("Broken", [PY, "-c", "raise SystemExit(9)"])]
    )
    monkeypatch.setattr(local_env, "source", lambda: "src")
    assert dock.setup_local_backend()
    wait_until(lambda: dock.setup_task is None, 60, "the set-up task")
    assert "Broken failed (exit code 9)" in dock.setup_log.toPlainText()
    assert dock.setup_button.text() == "Set up local backend"


@pytest.fixture
def dock(qgis_iface):
    from rs_edit_plugin.dock import RsEditDock

    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    yield widget
    widget.cleanup()
    widget.deleteLater()


# --- the real thing -----------------------------------------------------------------------


def reachable(host: str) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=5):
            return True
    except OSError:
        return False


def install(env: Path) -> None:
    """The plugin's own set-up (plan + SetupTask) into `env`, with this machine's pip
    settings; PyTorch's CPU index when reachable, else the index's default torch build."""
    torch_index = CPU_TORCH_INDEX if reachable("download.pytorch.org") else ""
    steps = local_env.plan(local_env.find_python(), env, str(ROOT), torch_index=torch_index)
    task = SetupTask(steps)
    ok = task.run()
    assert ok, "\n".join(task.log[-40:])
    assert local_env.installed(env)
    # The trap was avoided: torch and torchvision import together (checked by the last step).
    assert any(line.startswith("rs-edit ") for line in task.log)


def processes_running_from(folder: Path) -> list[int]:
    """Pids of the processes whose command line names something inside `folder` (the
    server, its job processes)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # ended meanwhile
            continue
        if any(str(folder).encode() in arg for arg in argv):
            pids.append(int(proc.name))
    return pids


def run_tiny_job(dock, project, tmp_path):
    """A `tiny` job from the dock, as an analyst runs one: a raster layer, a 48 x 48 px
    rectangle, a polygon drawn on the map, prompt, Edit. Returns the job's record once ended."""
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=56, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    canvas = dock.canvas()
    to_web = QgsCoordinateTransform(UTM, WEB, project)

    def point(c, r):
        return to_web.transform(QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES))

    canvas.setExtent(to_web.transformBoundingBox(layer.extent()))
    dock.layer_combo.setLayer(layer)
    dock.set_rectangle(QgsRectangle(point(5.5, 2.5), point(52.5, 49.5)), WEB)
    dock.draw_polygons()
    for c, r in [(15.5, 12.5), (35.5, 14.5), (33.5, 36.5), (16.5, 34.5)]:
        dock.polygon_tool.add_point(point(c, r))
    dock.polygon_tool.finish()
    dock.prompt_edit.setText("flooded fields")
    dock.preset_combo.setCurrentText("tiny")
    dock.clip_combo.setCurrentText("tiny-random")  # a fresh backend has no RemoteCLIP weights
    dock.seed_spin.setValue(1)
    dock.confirm = lambda _text: True
    wait_until(dock.run_button.isEnabled, 60, "Edit to be enabled")
    dock.run_button.click()
    assert dock.jobs.records, dock.iface.messageBar().messages
    record = dock.jobs.records[-1]
    assert (record.request.window.width, record.request.window.height) == (48, 48)
    wait_until(lambda: record.finished, JOB_TIMEOUT_S, "the tiny job")
    return record


@pytest.mark.slow
@pytest.mark.timeout(2400, method="thread")
def test_real_installation_runs_a_job_and_unload_leaves_no_process(
    tmp_path, qgis_iface, gui, project
):
    """Issue 16's "done when": the backend installed through the plugin's own code into a
    temporary folder, started from the dock, a `tiny` job from the dock to a result layer,
    then the plugin unloaded: no process of that installation is left."""
    if not reachable("pypi.org"):
        pytest.skip("no package index reachable")
    env = tmp_path / "env"
    install(env)
    local_backend.set_env_dir(str(env))
    local_backend.set_data_dir(str(tmp_path / "data"))
    plugin = RsEditPlugin(qgis_iface)
    plugin.initGui()
    try:
        dock = plugin.dock
        dock.local_button.click()  # Start
        backend = dock.local_backend
        wait_until(lambda: backend.state in (RUNNING, FAILED), 300, "the installed backend")
        assert backend.state == RUNNING, "\n".join(backend.log)
        assert local_backend.health_answers(backend.url, backend.token)
        assert settings.backend_url() == backend.url  # the dock's jobs go to it
        server = backend.pid()

        record = run_tiny_job(dock, project, tmp_path)
        assert record.state == "succeeded", f"{record.message}\n" + "\n".join(backend.log)
        group = project.layerTreeRoot().findGroup(results.GROUP_NAME)
        layer = group.findLayers()[-1].layer()
        assert layer.isValid() and layer.source() == str(record.outputs[0])
        assert layer.extent() == record.request.window.extent
        assert server in processes_running_from(env)
    finally:
        plugin.unload()
        local_backend.set_env_dir("")
        local_backend.set_data_dir("")
    assert gui.is_empty()
    wait_until(lambda: not processes_running_from(env), 20, "the backend's processes to end")
    assert settings.local_backend_url() == ""  # forgotten, with its token
    shutil.rmtree(env, ignore_errors=True)  # a few GB: pytest keeps its last temporary folders
