"""A backend the plugin runs itself: `rs-edit serve` as a child process on 127.0.0.1.

The server gets a free port and a fresh random token each start. The token goes to the child
through its environment (RS_EDIT_TOKEN), never on the command line, which other users of the
machine can read. Once /v1/health answers, the managed backend is registered with the
settings (settings.use_local_backend), so the dock, the jobs and the Processing algorithm talk
to it; the token stays in memory only. A server that dies is started again, a bounded number
of times, each time with the reason in the log. stop() terminates it, then kills it after a
timeout; the plugin calls it on unload and when QGIS quits.
"""

import contextlib
import os
import secrets
import socket
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings
from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from . import settings

EXECUTABLE_KEY = settings.LOCAL_EXECUTABLE_KEY  # empty: the managed env's
DATA_DIR_KEY = settings.LOCAL_DATA_DIR_KEY  # empty: under the QGIS profile
ENV_DIR_KEY = settings.LOCAL_ENV_DIR_KEY  # empty: under the QGIS profile

CLIP_DIR_ENV = "RS_EDIT_CLIP_DIR"  # read by the backend (rs_edit/guidance/clip.py)

HOST = "127.0.0.1"
START_TIMEOUT_S = 180.0  # torch imports take a while on a busy machine
HEALTH_POLL_MS = 300
STOP_TIMEOUT_MS = 5000
MAX_RESTARTS = 3
LOG_LINES = 200

STOPPED, STARTING, RUNNING, FAILED = "stopped", "starting", "running", "failed"


def _profile_dir() -> Path:
    return Path(QgsApplication.qgisSettingsDirPath()) / "rs_edit"


def env_dir() -> Path:
    """The folder of the plugin-managed virtual environment."""
    chosen = QgsSettings().value(ENV_DIR_KEY, "", type=str).strip()
    return Path(chosen).expanduser() if chosen else _profile_dir() / "venv"


def set_env_dir(path: str) -> None:
    _set_or_remove(ENV_DIR_KEY, path)


def env_executable(folder: Path | None = None) -> Path:
    """`rs-edit` inside a virtual environment."""
    folder = folder or env_dir()
    if sys.platform == "win32":
        return folder / "Scripts" / "rs-edit.exe"
    return folder / "bin" / "rs-edit"


def executable() -> Path:
    """The `rs-edit` to run: the one chosen in the settings, else the managed env's."""
    chosen = QgsSettings().value(EXECUTABLE_KEY, "", type=str).strip()
    return Path(chosen).expanduser() if chosen else env_executable()


def set_executable(path: str) -> None:
    _set_or_remove(EXECUTABLE_KEY, path)


def data_dir() -> Path:
    chosen = QgsSettings().value(DATA_DIR_KEY, "", type=str).strip()
    return Path(chosen).expanduser() if chosen else _profile_dir() / "data"


def set_data_dir(path: str) -> None:
    _set_or_remove(DATA_DIR_KEY, path)


def clip_dir() -> Path:
    """Where the local backend looks for RemoteCLIP weights first (its RS_EDIT_CLIP_DIR): the
    one of QGIS's environment when set, else `clip/` under the QGIS profile ("Use a weights
    file…" places files there)."""
    chosen = os.environ.get(CLIP_DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else _profile_dir() / "clip"


def _set_or_remove(key: str, value: str) -> None:
    if (value or "").strip():
        QgsSettings().setValue(key, str(value).strip())
    else:
        QgsSettings().remove(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def health_answers(url: str, token: str, timeout: float = 1.0) -> bool:
    """True when GET {url}/v1/health answers 200 (loopback only, so a short blocking call)."""
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
        url + "/v1/health", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310  # nosec B310
            return answer.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


class LocalBackend(QObject):
    """One managed `rs-edit serve`. state: stopped, starting, running or failed."""

    stateChanged = pyqtSignal(str)
    logLine = pyqtSignal(str)

    def __init__(self, executable_getter=executable, data_dir_getter=data_dir, parent=None):
        super().__init__(parent)
        self.executable_getter = executable_getter
        self.data_dir_getter = data_dir_getter
        self.max_restarts = MAX_RESTARTS
        self.start_timeout_s = START_TIMEOUT_S
        self.state = STOPPED
        self.reason = ""
        self.url = ""
        # None yet: a fresh random one each start.
        self.token = ""  # nosec B105
        self.restarts = 0
        self.log = deque(maxlen=LOG_LINES)
        self.process: QProcess | None = None
        self._stopping = False
        self._deadline = 0.0
        self._partial = b""
        self.health_timer = QTimer(self)
        self.health_timer.setInterval(HEALTH_POLL_MS)
        self.health_timer.timeout.connect(self._poll_health)
        app = QgsApplication.instance()
        if app is not None:  # QGIS closing without unloading the plugin
            app.aboutToQuit.connect(self.stop)

    # --- public ---------------------------------------------------------------------------

    def pid(self) -> int:
        process = self.process
        if process is None or process.state() == QProcess.ProcessState.NotRunning:
            return 0
        return int(process.processId())

    def start(self) -> bool:
        """Start the server (no-op when it runs or starts); False, with reason, when it cannot."""
        if self.state in (STARTING, RUNNING):
            return True
        self.restarts = 0
        return self._launch()

    def stop(self) -> None:
        """Terminate the server, kill it after STOP_TIMEOUT_MS, forget its URL and token."""
        self._stopping = True
        self.health_timer.stop()
        process, self.process = self.process, None
        if process is not None:
            with _suppress_type_error():
                process.finished.disconnect(self._finished)
            if process.state() != QProcess.ProcessState.NotRunning:
                process.terminate()
                if not process.waitForFinished(STOP_TIMEOUT_MS):
                    self._log("the backend did not stop in time: killed")
                    process.kill()
                    process.waitForFinished(STOP_TIMEOUT_MS)
            process.deleteLater()
        settings.forget_local_backend(self.url)
        self.url = self.token = ""  # nosec B105
        self._stopping = False
        if self.state != STOPPED:
            self._set_state(STOPPED, "stopped")

    # --- internals --------------------------------------------------------------------------

    def _log(self, line: str) -> None:
        line = line.rstrip()
        if self.token:
            line = line.replace(self.token, "***")
        self.log.append(line)
        self.logLine.emit(line)

    def _set_state(self, state: str, reason: str = "") -> None:
        self.state, self.reason = state, reason
        if reason:
            self._log(f"[{state}] {reason}")
        self.stateChanged.emit(state)

    def _launch(self) -> bool:
        program = Path(self.executable_getter())
        if not (program.is_file() and os.access(program, os.X_OK)):
            self._set_state(
                FAILED,
                f"{program} not found: set up the local backend, or choose rs-edit in the settings",
            )
            return False
        folder = Path(self.data_dir_getter())
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._set_state(FAILED, f"cannot create the data folder {folder}: {exc}")
            return False
        port = free_port()
        self.token = secrets.token_urlsafe(32)
        self.url = f"http://{HOST}:{port}"
        environment = QProcessEnvironment.systemEnvironment()
        environment.insert("RS_EDIT_TOKEN", self.token)  # never on the command line
        environment.insert("PYTHONUNBUFFERED", "1")
        environment.insert(CLIP_DIR_ENV, str(clip_dir()))  # where weights files are placed
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"):
            environment.remove(name)  # QGIS's own Python settings, not the backend's
        process = QProcess(self)
        process.setProcessEnvironment(environment)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.readyReadStandardOutput.connect(self._read_output)
        process.finished.connect(self._finished)
        process.errorOccurred.connect(self._error)
        arguments = ["serve", "--host", HOST, "--port", str(port), "--data-dir", str(folder)]
        self.process = process
        self._set_state(STARTING, f"starting {program} {' '.join(arguments)}")
        process.start(str(program), arguments)
        self._deadline = time.monotonic() + self.start_timeout_s
        self.health_timer.start()
        return True

    def _read_output(self) -> None:
        process = self.sender()
        if not isinstance(process, QProcess):
            return
        data = self._partial + bytes(process.readAllStandardOutput())
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._log(line.decode("utf-8", "replace"))

    def _poll_health(self) -> None:
        if self.process is None or self.state != STARTING:
            self.health_timer.stop()
            return
        if health_answers(self.url, self.token):
            self.health_timer.stop()
            settings.use_local_backend(self.url, self.token)
            self._set_state(RUNNING, f"answering at {self.url} (pid {self.pid()})")
        elif time.monotonic() > self._deadline:
            self.health_timer.stop()
            self._give_up(f"no answer from /v1/health within {self.start_timeout_s:.0f} s")

    def _give_up(self, reason: str) -> None:
        process, self.process = self.process, None
        if process is not None:
            with _suppress_type_error():
                process.finished.disconnect(self._finished)
            process.kill()
            process.waitForFinished(STOP_TIMEOUT_MS)
            process.deleteLater()
        settings.forget_local_backend(self.url)
        self._set_state(FAILED, reason)

    def _error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is self.sender():
            self.health_timer.stop()
            self._give_up(
                f"could not start {self.executable_getter()}: {self.sender().errorString()}"
            )

    def _finished(self, code, status) -> None:
        if self._stopping or self.sender() is not self.process:
            return
        self.health_timer.stop()
        self._read_output_of(self.process)
        if status == QProcess.ExitStatus.CrashExit:
            why = "the backend crashed or was killed"
        else:
            why = f"the backend exited with code {code}"
        tail = " | ".join(list(self.log)[-3:])
        process, self.process = self.process, None
        process.deleteLater()
        settings.forget_local_backend(self.url)
        if self.restarts < self.max_restarts:
            self.restarts += 1
            self._log(
                f"{why}; restarting ({self.restarts}/{self.max_restarts}); last lines: {tail}"
            )
            self._launch()
        else:
            self._set_state(FAILED, f"{why}; not restarted after {self.max_restarts} restarts")

    def _read_output_of(self, process) -> None:
        data = self._partial + bytes(process.readAllStandardOutput())
        self._partial = b""
        for line in data.split(b"\n"):
            if line.strip():
                self._log(line.decode("utf-8", "replace"))


def _suppress_type_error():
    """For disconnecting a signal that may not be connected (or whose object is gone)."""
    return contextlib.suppress(TypeError, RuntimeError)
