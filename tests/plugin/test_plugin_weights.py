"""The dock's "Use a weights file…" (rs_edit_plugin/weights.py): the checkpoint is checked by
the backend's own Python (<repo>/.venv/bin/python, or $RS_EDIT_PYTHON; those tests skip when
absent), never in the QGIS process; a RemoteCLIP checkpoint is placed in the local backend's
CLIP folder (in the task, off the GUI thread) and the backend restarted, once no job is in
flight; a checkpoint the service cannot run is refused; a backend on another machine disables
the button."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import venv_file, wait_for
from qgis.core import Qgis

from rs_edit_plugin import local_backend, settings, weights
from rs_edit_plugin.dock import RsEditDock

TINY_CHECKPOINT = (
    "import sys, torch\n"
    "from rs_edit.guidance.clip import TINY_ARCH, _build\n"
    "model, _ = _build(TINY_ARCH)\n"
    "torch.save(model.state_dict(), sys.argv[1])\n"
)


def backend_python() -> Path | None:
    return venv_file("RS_EDIT_PYTHON", "python")


@pytest.fixture
def python():
    path = backend_python()
    if path is None:
        pytest.skip("the backend's Python not found: set RS_EDIT_PYTHON or run scripts/setup.sh")
    return path


@pytest.fixture
def clip_dir(tmp_path, monkeypatch):
    folder = tmp_path / "clip"
    monkeypatch.setenv(local_backend.CLIP_DIR_ENV, str(folder))
    return folder


@pytest.fixture
def dock(qgis_iface, project, fake_backend, clip_dir, tmp_path):
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    python = backend_python() or tmp_path / "no-python"
    widget.weights_python = lambda: python
    qgis_iface.messageBar().clear_messages()
    yield widget
    widget.cleanup()
    widget.deleteLater()


def checked(widget, path, runner=None):
    assert widget.use_weights_file(str(path), runner=runner)
    assert not widget.weights_button.isEnabled()  # one check at a time
    wait_for(lambda: widget.weights_task is None, 300, "the check")
    return widget.weights_message


def test_a_garbage_file_is_refused_clearly(dock, python, tmp_path, clip_dir, qgis_iface):
    garbage = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    garbage.write_bytes(b"not a checkpoint" * 100)
    message = checked(dock, garbage)
    assert message.startswith("RemoteCLIP-ViT-B-32.pt cannot be used as CLIP weights: ")
    assert "cannot read CLIP checkpoint" in message
    assert message in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)[-1]
    assert not clip_dir.exists()  # nothing placed
    assert dock.weights_button.isEnabled()  # ready for another file
    assert "torch" not in sys.modules  # checked in the backend's Python, not in QGIS's


def test_a_checkpoint_of_another_architecture_is_refused_with_the_cli_way(
    dock, python, tmp_path, clip_dir, qgis_iface
):
    """The service runs only the CLIP names its health lists: an `ARCH=PATH` choice would be
    refused at every job, so the dock does not make it; it says how the CLI can use the file."""
    before = settings.option("clip")
    path = tmp_path / "finetuned-rs-edit-tiny.pt"
    subprocess.run(  # noqa: S603 - the backend's Python, our snippet
        [str(python), "-c", TINY_CHECKPOINT, str(path)], check=True, timeout=300
    )
    message = checked(dock, path)
    assert message.startswith("finetuned-rs-edit-tiny.pt cannot be used as CLIP weights: ")
    assert "loads as rs-edit-tiny" in message and "not a RemoteCLIP architecture" in message
    assert "--clip rs-edit-tiny=PATH" in message
    assert message in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)[-1]
    assert settings.option("clip") == before and "=" not in dock.clip_combo.currentText()
    assert not clip_dir.exists()  # nothing placed


def test_a_file_that_cannot_be_placed_is_said_so(dock, tmp_path, qgis_iface):
    """The placement runs in the task; its failure ends the check with the reason (the
    "Checking…" status does not stay)."""
    path = tmp_path / "RemoteCLIP-RN50.pt"
    path.write_bytes(b"weights")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the CLIP folder should be")
    dock.clip_folder = lambda: blocker / "clip"
    answer = {"ok": True, "arch": "RN50", "name": "RemoteCLIP-RN50", "path": str(path)}
    message = checked(dock, path, runner=lambda p, py: answer)
    assert message.startswith("RemoteCLIP-RN50.pt cannot be used as CLIP weights: cannot place")
    assert dock.status_label.text() == message
    assert message in qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)[-1]


def test_a_remoteclip_checkpoint_is_placed_and_the_backend_restarted(
    dock, tmp_path, clip_dir, monkeypatch
):
    path = tmp_path / "downloads" / "RemoteCLIP-ViT-B-32.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights")
    answer = {"ok": True, "arch": "ViT-B-32", "name": "RemoteCLIP-ViT-B-32", "path": str(path)}
    calls = []
    dock.local_backend.state = local_backend.RUNNING  # the managed backend runs
    monkeypatch.setattr(dock.local_backend, "stop", lambda: calls.append("stop"))
    monkeypatch.setattr(dock.local_backend, "start", lambda: calls.append("start"))
    message = checked(dock, path, runner=lambda p, py: dict(answer, path=str(p)))
    placed = clip_dir / "RemoteCLIP-ViT-B-32.pt"
    assert placed.read_bytes() == b"weights" and placed.samefile(path)  # a hard link
    assert message.endswith("restarting the local backend.") and str(placed) in message
    assert calls == ["stop", "start"]  # its health then lists the weights
    assert settings.option("clip") == "RemoteCLIP-ViT-B-32"
    assert dock.clip_combo.currentData() == "RemoteCLIP-ViT-B-32"

    # Placed again (a newer file): replaced; not running: the user is told to start it.
    newer = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    newer.write_bytes(b"newer weights")
    dock.local_backend.state = local_backend.STOPPED
    message = checked(dock, newer, runner=lambda p, py: dict(answer, path=str(p)))
    assert placed.read_bytes() == b"newer weights"
    assert message.endswith("start the local backend to use it.") and calls == ["stop", "start"]


LOCAL_URL = "http://127.0.0.1:8765"


def running_local_backend(dock, tmp_path, monkeypatch):
    """A weights file and its check's answer, the local backend running at LOCAL_URL; the
    returned list records its stops and starts."""
    path = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    path.write_bytes(b"weights")
    answer = {"ok": True, "arch": "ViT-B-32", "name": "RemoteCLIP-ViT-B-32", "path": str(path)}
    calls = []
    dock.local_backend.state = local_backend.RUNNING
    dock.local_backend.url = LOCAL_URL
    monkeypatch.setattr(dock.local_backend, "stop", lambda: calls.append("stop"))
    monkeypatch.setattr(dock.local_backend, "start", lambda: calls.append("start"))
    return path, answer, calls


def running_job(key: int, backend_url: str):
    from rs_edit_plugin.tasks import JobRecord

    record = JobRecord(key=key, prompt="flooded fields", request=None, state="running")
    record.backend_url = backend_url
    return record


def test_the_restart_waits_for_the_jobs_in_flight(dock, tmp_path, clip_dir, monkeypatch):
    """Restarting the backend would kill its running jobs: the new weights wait for them."""
    path, answer, calls = running_local_backend(dock, tmp_path, monkeypatch)
    running = running_job(1, LOCAL_URL + "/")
    elsewhere = running_job(2, "https://gpu.example.org")  # another server: a restart spares it
    dock.jobs.records += [running, elsewhere]
    message = checked(dock, path, runner=lambda p, py: answer)
    assert message.endswith("restarts to use it once the jobs in flight end.")
    assert calls == [] and (clip_dir / "RemoteCLIP-ViT-B-32.pt").is_file()
    dock.jobs.jobChanged.emit(running)  # progress: still running
    assert calls == []
    running.state = "succeeded"
    dock.jobs.jobChanged.emit(running)  # the last job in flight ended
    assert calls == ["stop", "start"] and not dock.restart_after_jobs
    dock.jobs.jobChanged.emit(running)
    assert calls == ["stop", "start"]  # once


def test_jobs_on_another_server_do_not_hold_back_the_restart(dock, tmp_path, clip_dir, monkeypatch):
    path, answer, calls = running_local_backend(dock, tmp_path, monkeypatch)
    dock.jobs.records.append(running_job(1, "https://gpu.example.org"))
    assert dock.jobs_in_flight() == 0
    message = checked(dock, path, runner=lambda p, py: answer)
    assert message.endswith("restarting the local backend.") and calls == ["stop", "start"]


def test_the_backend_python_of_a_venv_and_of_a_windows_conda_environment(tmp_path):
    venv = tmp_path / "venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text("")
    assert weights.backend_python(venv / "rs-edit", windows=False) == venv / "python"
    scripts = tmp_path / "venv-win" / "Scripts"  # a Windows venv: both in Scripts/
    scripts.mkdir(parents=True)
    (scripts / "python.exe").write_text("")
    assert weights.backend_python(scripts / "rs-edit.exe", windows=True) == scripts / "python.exe"
    conda = tmp_path / "conda-env"  # conda: rs-edit.exe in Scripts/, python.exe at the root
    (conda / "Scripts").mkdir(parents=True)
    (conda / "python.exe").write_text("")
    found = weights.backend_python(conda / "Scripts" / "rs-edit.exe", windows=True)
    assert found == conda / "python.exe"
    missing = weights.backend_python(tmp_path / "none" / "Scripts" / "rs-edit.exe", windows=True)
    assert missing == tmp_path / "none" / "Scripts" / "python.exe"  # said so by the caller


def test_the_check_runs_the_backend_module_with_the_backend_python(tmp_path):
    command = weights.check_command(tmp_path / "w.pt", tmp_path / "bin" / "python")
    assert command == [
        str(tmp_path / "bin" / "python"),
        "-m",
        "rs_edit.guidance.weights",
        str(tmp_path / "w.pt"),
    ]
    with pytest.raises(weights.WeightsError, match="cannot run the backend's Python"):
        weights.run_check(tmp_path / "w.pt", tmp_path / "bin" / "python")


def test_a_remote_backend_disables_the_button_and_says_why(dock, tmp_path):
    button = dock.weights_button
    dock.weights_python = lambda: Path(sys.executable)
    dock.url_edit.setText("http://127.0.0.1:8765")
    assert button.isEnabled()
    asked = []
    dock.ask_weights_file = lambda: asked.append("asked") or ""  # the file dialog, cancelled
    button.click()
    assert asked == ["asked"] and dock.weights_task is None  # nothing chosen: nothing runs
    dock.url_edit.setText("https://gpu-server.example.org:8765")
    assert not button.isEnabled()
    assert "runs on another machine" in button.toolTip() and "RS_EDIT_CLIP_DIR" in button.toolTip()
    assert not dock.use_weights_file(str(tmp_path / "x.pt"))  # refused, with the reason

    dock.url_edit.setText("http://localhost:8765")
    dock.weights_python = lambda: tmp_path / "no-python"  # no local backend set up
    dock.update_weights_button()
    assert not button.isEnabled() and "Set up the local backend first" in button.toolTip()
