"""The plugin-managed backend (rs_edit_plugin/local_backend.py) with the real `rs-edit serve`.

The executable is $RS_EDIT_BACKEND or <repo>/.venv/bin/rs-edit; the tests that need it skip,
saying why, when it is absent.
"""

import json
import os
import signal
import stat
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import venv_file
from qgis.PyQt.QtCore import QCoreApplication

import rs_edit_plugin
from rs_edit_plugin import local_backend, settings
from rs_edit_plugin.local_backend import FAILED, RUNNING, STOPPED, LocalBackend

START_S = 180


def backend_executable() -> Path | None:
    return venv_file("RS_EDIT_BACKEND", "rs-edit")


@pytest.fixture
def executable():
    path = backend_executable()
    if path is None:
        pytest.skip("real backend not found: set RS_EDIT_BACKEND or run scripts/setup.sh")
    return path


def alive(pid: int) -> bool:
    """True while a process with this pid exists (and is not a zombie we reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        QCoreApplication.processEvents()
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_gone(pid: int, timeout_s: float = 10) -> None:
    wait_until(lambda: not alive(pid), timeout_s, f"pid {pid} to end")


@pytest.fixture
def managed(executable, tmp_path):
    backend = LocalBackend(lambda: executable, lambda: tmp_path / "data")
    yield backend
    pid = backend.pid()
    backend.stop()
    if pid:
        wait_gone(pid)


def start_and_wait(backend: LocalBackend) -> int:
    assert backend.start(), backend.reason
    wait_until(
        lambda: backend.state in (RUNNING, FAILED),
        START_S,
        "the backend to answer /v1/health",
    )
    assert backend.state == RUNNING, "\n".join(backend.log)
    return backend.pid()


def test_start_answers_health_with_its_token_and_points_the_plugin_at_it(
    managed, tmp_path, monkeypatch
):
    # Its CLIP folder ("Use a weights file…" places checkpoints there): the one given.
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "RemoteCLIP-RN50.pt").write_bytes(b"placed")  # only its presence is looked at
    monkeypatch.setenv(local_backend.CLIP_DIR_ENV, str(clip_dir))
    assert local_backend.clip_dir() == clip_dir
    pid = start_and_wait(managed)
    assert pid and alive(pid)
    assert managed.url.startswith("http://127.0.0.1:")
    assert len(managed.token) >= 16
    assert local_backend.health_answers(managed.url, managed.token)
    # The plugin talks to it: URL in the settings, token from memory (not stored anywhere).
    assert settings.backend_url() == managed.url
    assert settings.token() == managed.token
    assert not settings.has_token()
    # The token is not on the command line.
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        cmdline = handle.read().decode()
    assert managed.token not in cmdline
    with open(f"/proc/{pid}/environ", "rb") as handle:
        assert f"RS_EDIT_CLIP_DIR={clip_dir}".encode() in handle.read().split(b"\0")
    request = urllib.request.Request(  # noqa: S310 - loopback
        managed.url + "/v1/health", headers={"Authorization": f"Bearer {managed.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
        health = json.loads(answer.read())
    assert health["clip"]["weights_available"]["RemoteCLIP-RN50"] is True
    assert "127.0.0.1" in cmdline
    # It refuses a wrong token, so the token is in force.
    from rs_edit_plugin.client import BackendClient

    status, _content = BackendClient(managed.url, token="x" * 32)._send("GET", "/v1/jobs")
    assert status == 401


def test_a_killed_backend_is_restarted_and_stop_ends_it(managed):
    first = start_and_wait(managed)
    os.kill(first, signal.SIGKILL)
    wait_until(
        lambda: managed.state == RUNNING and managed.pid() not in (0, first),
        START_S,
        "the backend to be restarted",
    )
    second = managed.pid()
    assert not alive(first)
    assert managed.restarts == 1
    assert any("restarting (1/" in line and "killed" in line for line in managed.log)
    assert local_backend.health_answers(managed.url, managed.token)
    assert settings.token() == managed.token
    url = managed.url
    managed.stop()
    wait_gone(second)
    assert managed.state == STOPPED and managed.pid() == 0
    assert settings.token() == ""  # forgotten
    assert not local_backend.health_answers(url, "x" * 32)


def fake_server(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "rs-edit"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_restarts_are_bounded_and_the_reason_is_logged(tmp_path):
    program = fake_server(tmp_path, 'echo "boom: no model"; exit 3')
    backend = LocalBackend(lambda: program, lambda: tmp_path / "data")
    backend.max_restarts = 2
    try:
        assert backend.start()
        wait_until(lambda: backend.state == FAILED, 30, "the backend to give up")
        assert backend.restarts == 2
        assert "exited with code 3" in backend.reason
        assert "not restarted after 2 restarts" in backend.reason
        assert any("boom: no model" in line for line in backend.log)
        assert settings.token() == ""
    finally:
        backend.stop()


def test_a_missing_executable_fails_with_a_hint(tmp_path):
    backend = LocalBackend(lambda: tmp_path / "nothing" / "rs-edit", lambda: tmp_path / "data")
    assert not backend.start()
    assert backend.state == FAILED
    assert "set up the local backend" in backend.reason


def test_stop_kills_a_server_that_ignores_terminate(tmp_path, monkeypatch):
    monkeypatch.setattr(local_backend, "STOP_TIMEOUT_MS", 500)
    program = fake_server(tmp_path, "trap '' TERM\nwhile true; do sleep 0.1; done")
    backend = LocalBackend(lambda: program, lambda: tmp_path / "data")
    assert backend.start()
    wait_until(lambda: backend.pid() != 0, 10, "the process to start")
    pid = backend.pid()
    time.sleep(0.3)  # the trap is set
    backend.stop()
    wait_gone(pid)
    assert any("killed" in line for line in backend.log)


def test_settings_choose_the_executable_and_default_to_the_managed_env(tmp_path):
    local_backend.set_env_dir(str(tmp_path / "env"))
    assert local_backend.executable() == tmp_path / "env" / "bin" / "rs-edit"
    local_backend.set_executable(str(tmp_path / "other" / "rs-edit"))
    assert local_backend.executable() == tmp_path / "other" / "rs-edit"
    local_backend.set_executable("")
    assert local_backend.executable() == tmp_path / "env" / "bin" / "rs-edit"


def test_dock_row_starts_and_unload_leaves_no_process(gui, qgis_iface, executable, tmp_path):
    local_backend.set_executable(str(executable))
    local_backend.set_data_dir(str(tmp_path / "data"))
    plugin = rs_edit_plugin.classFactory(qgis_iface)
    plugin.initGui()
    try:
        dock = plugin.dock
        assert dock.local_button.text() == "Start"
        assert dock.local_label.text() == "Not running."
        dock.local_button.click()
        backend = dock.local_backend
        wait_until(lambda: backend.state in (RUNNING, FAILED), START_S, "the dock's backend")
        assert backend.state == RUNNING, "\n".join(backend.log)
        assert dock.local_button.text() == "Stop"
        assert backend.url in dock.local_label.text()
        assert dock.url_edit.text() == backend.url
        assert dock.health is not None and dock.health.ok, dock.health
        pid = backend.pid()
        assert alive(pid)
    finally:
        plugin.unload()
    wait_gone(pid)
    assert settings.token() == ""
