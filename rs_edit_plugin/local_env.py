"""Sets up the plugin-managed backend environment: a virtual environment under the QGIS
profile with rs-edit installed, whose `rs-edit` local_backend.py runs.

Steps (plan()): create the environment; install torch, torchvision and open_clip; install
rs-edit from the wheel shipped in the plugin zip (wheels/rs_edit-*.whl) or from a chosen path;
check that they import. They run in a QgsTask (SetupTask), cancellable, one line of log at a
time. The machine's pip settings (pip.conf, PIP_* variables) apply, except to the torch step:
some machines carry a local CPU-only torch wheel in pip's find-links that pip prefers and
that breaks PyPI's torchvision, so, as scripts/setup.sh does, torch, torchvision and open_clip
are installed with --isolated from the package index (RS_EDIT_INDEX_URL or PIP_INDEX_URL or
PyPI). Without `nvidia-smi` the CPU build comes from PyTorch's CPU index; with it, PyPI's
default build (CUDA).
"""

import os
import shutil

# Runs pip and the environment's Python, with argument lists only (no shell).
import subprocess  # nosec B404
import sys
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import QgsSettings, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from . import local_backend, settings

PYPI = "https://pypi.org/simple"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_PINS = ("torch==2.13.0", "torchvision==0.28.0", "open_clip_torch>=2.24")
SOURCE_KEY = settings.PREFIX + "local_backend_source"  # empty: the wheel in the plugin
WHEELS_DIR = Path(__file__).resolve().parent / "wheels"
CHECK = "import torch, torchvision, open_clip, rs_edit; print('rs-edit', rs_edit.__version__)"
# QGIS sets these for its own Python; they would break the environment's.
FOREIGN_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")


class SetupError(Exception):
    """Why the environment cannot be set up, as one line for the user."""


@dataclass
class Step:
    title: str
    argv: list = field(default_factory=list)


def has_nvidia() -> bool:
    return shutil.which("nvidia-smi") is not None


def index_url(environ=None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("RS_EDIT_INDEX_URL") or environ.get("PIP_INDEX_URL") or PYPI


def child_environment(environ=None) -> dict:
    """The environment for pip and the managed Python: the machine's, PIP_* included, less
    QGIS's own Python variables."""
    environ = dict(os.environ if environ is None else environ)
    for name in FOREIGN_VARIABLES:
        environ.pop(name, None)
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


def env_python(folder: Path) -> Path:
    if sys.platform == "win32":
        return folder / "Scripts" / "python.exe"
    return folder / "bin" / "python"


def find_python() -> str:
    """A Python >= 3.10 to create the environment with: the settings' choice, else QGIS's own
    (on Windows and macOS QGIS ships one), else python3 on the PATH."""
    chosen = QgsSettings().value(settings.LOCAL_PYTHON_KEY, "", type=str).strip()
    if chosen:
        return chosen
    candidates = []
    base = Path(getattr(sys, "_base_executable", "") or "")
    if base.name.lower().startswith("python"):
        candidates.append(str(base))
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    for candidate in candidates:
        if Path(candidate).is_file() and _recent(candidate):
            return candidate
    raise SetupError("no Python 3 found: choose one in the settings (local backend Python)")


def _recent(python: str) -> bool:
    """True when `python` runs and is 3.10 or later."""
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603
            [python, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
            env=child_environment(),
            capture_output=True,
            timeout=30,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def set_python(path: str) -> None:
    _set_or_remove(settings.LOCAL_PYTHON_KEY, path)


def bundled_wheel() -> Path | None:
    wheels = sorted(WHEELS_DIR.glob("rs_edit-*.whl"))
    return wheels[-1] if wheels else None


def source() -> str:
    """What to install rs-edit from: the settings' path, else the wheel in the plugin."""
    chosen = QgsSettings().value(SOURCE_KEY, "", type=str).strip()
    if chosen:
        return chosen
    wheel = bundled_wheel()
    if wheel is None:
        raise SetupError(
            "this plugin has no rs-edit wheel (wheels/rs_edit-*.whl): install the plugin zip "
            "built by scripts/build_plugin_zip.py, or choose a source in the settings"
        )
    return str(wheel)


def set_source(path: str) -> None:
    _set_or_remove(SOURCE_KEY, path)


def _set_or_remove(key: str, value: str) -> None:
    if (value or "").strip():
        QgsSettings().setValue(key, str(value).strip())
    else:
        QgsSettings().remove(key)


def plan(
    python: str,
    folder: Path,
    source: str,
    gpu: bool | None = None,
    torch_index: str | None = None,
    environ=None,
    repair: bool = False,
) -> list:
    """The commands that set the environment up. gpu None: look for nvidia-smi. torch_index:
    where the CPU build of torch comes from; None: $RS_EDIT_TORCH_INDEX_URL if set, else
    PyTorch's CPU index; '': the package index's default build."""
    gpu = has_nvidia() if gpu is None else gpu
    if torch_index is None:
        torch_index = (os.environ if environ is None else environ).get(
            "RS_EDIT_TORCH_INDEX_URL", CPU_TORCH_INDEX
        )
    py = str(env_python(Path(folder)))
    quiet = ["--disable-pip-version-check", "--progress-bar", "off"]
    venv = [python, "-m", "venv"] + (["--clear"] if repair else []) + [str(folder)]
    torch = [py, "-m", "pip", "install", "--isolated", *quiet, "--index-url", index_url(environ)]
    if not gpu and torch_index:
        torch += ["--extra-index-url", torch_index]
    kind = "CUDA" if gpu else "CPU"
    return [
        Step("Creating the virtual environment", venv),
        Step(f"Installing torch ({kind}), torchvision and open_clip", torch + list(TORCH_PINS)),
        Step("Installing rs-edit", [py, "-m", "pip", "install", *quiet, source]),
        Step("Checking the installation", [py, "-c", CHECK]),
    ]


def is_environment(folder: Path) -> bool:
    return (Path(folder) / "pyvenv.cfg").is_file()


def remove(folder: Path) -> None:
    """Delete the managed environment; refuses a folder that is not a virtual environment."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not is_environment(folder):
        raise SetupError(f"{folder} is not a virtual environment (no pyvenv.cfg): not removed")
    shutil.rmtree(folder)


def installed(folder: Path) -> bool:
    return is_environment(folder) and local_backend.env_executable(Path(folder)).is_file()


class SetupTask(QgsTask):
    """Runs the steps of plan() one after the other; logLine carries their output."""

    logLine = pyqtSignal(str)

    def __init__(self, steps: list, title: str = "Setting up the RS Edit backend"):
        super().__init__(title, QgsTask.Flag.CanCancel)
        self.steps = steps
        self.error = ""
        self.process = None
        self.log = []

    def _emit(self, line: str) -> None:
        self.log.append(line)
        self.logLine.emit(line)

    def cancel(self):
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
        super().cancel()

    def run(self) -> bool:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        for number, step in enumerate(self.steps):
            if self.isCanceled():
                self.error = "cancelled"
                return False
            self.setProgress(100.0 * number / len(self.steps))
            self._emit(f"== {step.title}")
            try:
                self.process = subprocess.Popen(  # noqa: S603  # nosec B603
                    step.argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=child_environment(),
                    creationflags=flags,
                )
            except OSError as exc:
                self.error = f"{step.title}: {exc}"
                self._emit(self.error)
                return False
            for raw in self.process.stdout:
                self._emit(raw.decode("utf-8", "replace").rstrip())
            code = self.process.wait()
            self.process.stdout.close()
            if self.isCanceled():
                self.error = "cancelled"
                self._emit("cancelled")
                return False
            if code != 0:
                self.error = f"{step.title} failed (exit code {code})"
                self._emit(self.error)
                return False
        self.setProgress(100.0)
        return True
