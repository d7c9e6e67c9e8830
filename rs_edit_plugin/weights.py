"""The dock's "Use a weights file…": register a CLIP checkpoint the analyst has (a RemoteCLIP
`.pt`) with the local backend.

The file is checked by loading it, with the backend's own Python (`python -m
rs_edit.guidance.weights PATH`, which prints one JSON line), never in the QGIS process: torch
stays out of QGIS. A checkpoint of a RemoteCLIP architecture (RN50, ViT-B-32, ViT-L-14) is then
placed in the local backend's CLIP folder (`local_backend.clip_dir()`, the child's
RS_EDIT_CLIP_DIR) as `RemoteCLIP-<arch>.pt`, a hard link where the file system allows, else a
copy (up to 1.7 GB: done in the task, off the GUI thread), where the backend looks for it. A
checkpoint of another open_clip architecture loads but cannot be used by the service (which
takes the CLIP names its health lists): it is refused, with `rs-edit edit --clip ARCH=PATH` as
the way to use it. A backend on another machine cannot see this computer's files: the button is
disabled for it.
"""

import contextlib
import json
import os
import shutil

# Runs the backend's Python with an argument list (no shell).
import subprocess  # nosec B404
import sys
from pathlib import Path

from qgis.core import QgsTask
from qgis.PyQt.QtCore import QUrl

from . import local_backend, local_env

CHECK_MODULE = "rs_edit.guidance.weights"
CHECK_TIMEOUT_S = 600.0  # torch's import and a ViT-L-14 on a slow laptop
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
FILE_FILTER = "CLIP checkpoints (*.pt *.pth *.bin *.safetensors *.ckpt);;All files (*)"


class WeightsError(Exception):
    """Why a weights file cannot be used, as one line for the user."""


def backend_python(executable: Path | None = None, windows: bool | None = None) -> Path:
    """The Python of the backend the plugin runs: next to its `rs-edit` (a virtual environment,
    `bin/` or `Scripts/`), else one folder up (a Windows conda environment keeps `rs-edit.exe`
    in `Scripts/` and `python.exe` at its root). The first candidate when none exists."""
    folder = (executable or local_backend.executable()).parent
    windows = sys.platform == "win32" if windows is None else windows
    name = "python.exe" if windows else "python"
    candidates = [folder / name, folder.parent / name] if windows else [folder / name]
    return next((path for path in candidates if path.is_file()), candidates[0])


def is_loopback(url: str) -> bool:
    return QUrl(url).host().strip("[]").lower() in LOOPBACK_HOSTS


def unavailable_reason(url: str, python: Path | None = None) -> str:
    """Why "Use a weights file…" cannot work for the backend at `url` ("" when it can)."""
    if not is_loopback(url):
        host = QUrl(url).host() or url
        return (
            f"The backend at {host} runs on another machine and cannot see this computer's "
            "files: put the weights file in its RS_EDIT_CLIP_DIR there"
        )
    python = python or backend_python()
    if not python.is_file():
        return "Set up the local backend first: its Python checks the weights file"
    return ""


def check_command(path, python=None) -> list:
    return [str(python or backend_python()), "-m", CHECK_MODULE, str(path)]


def run_check(path, python=None, timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """Load the checkpoint with the backend's Python; its answer ({ok, arch, name, path,
    error}). Raises WeightsError when the check itself cannot run or gives no answer."""
    argv = check_command(path, python)
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=local_env.child_environment(),
            check=False,
            stdin=subprocess.DEVNULL,
            creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0),
        )
    except subprocess.TimeoutExpired:
        raise WeightsError(f"checking the weights file took over {timeout_s:.0f} s") from None
    except OSError as exc:
        raise WeightsError(f"cannot run the backend's Python {argv[0]}: {exc}") from None
    for line in reversed(done.stdout.splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict) and "ok" in answer:
                return answer
    tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
    raise WeightsError(
        f"the backend's Python gave no answer (exit {done.returncode}): {tail or 'no output'}"
    )


def install(path, name: str, folder: Path | None = None) -> Path:
    """Place the checked file as `<folder>/<name>.pt` (a hard link, else a copy), replacing
    an earlier one; returns the path placed. Raises WeightsError."""
    source = Path(path).resolve()
    folder = Path(folder or local_backend.clip_dir())
    target = folder / f"{name}.pt"
    part = folder / f".{name}.pt.part"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.samefile(source):
            return target
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        try:
            os.link(source, part)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, part)
        os.replace(part, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise WeightsError(f"cannot place the weights file in {folder}: {exc}") from None
    return target


def refusal(answer: dict | None) -> str:
    """Why a checked file cannot be registered ("" when it can), from the check's answer."""
    answer = answer or {}
    if not answer.get("ok"):
        return str(answer.get("error") or "the check failed")
    if not answer.get("name"):
        arch = answer.get("arch") or "an unknown architecture"
        return (
            f"it loads as {arch}, which is not a RemoteCLIP architecture (RN50, ViT-B-32, "
            f"ViT-L-14): the backend's service runs RemoteCLIP only; use the file from the "
            f"command line with rs-edit edit --clip {arch}=PATH"
        )
    return ""


class CheckTask(QgsTask):
    """`run_check`, then `install` of a RemoteCLIP checkpoint into `folder`, both in QGIS's
    task manager (a copy of a large checkpoint must not freeze the map); `answer`, `placed`
    (the file placed) or `error` once done; `done_callbacks` (task) run on the main thread."""

    def __init__(self, path, python=None, runner=run_check, folder=None):
        super().__init__(f"RS Edit: checking {Path(path).name}", QgsTask.Flag.CanCancel)
        self.path, self.python, self.runner = Path(path), python, runner
        # Read on the main thread: the folder comes from QGIS's settings.
        self.folder = Path(folder or local_backend.clip_dir())
        self.answer: dict | None = None
        self.placed: Path | None = None
        self.error = ""
        self.done_callbacks = []

    def run(self) -> bool:
        try:
            self.answer = self.runner(self.path, self.python)
            self.error = refusal(self.answer)
            if not self.error:
                self.placed = install(self.path, self.answer["name"], self.folder)
        except WeightsError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug must end the task with a message, not kill QGIS
            self.error = f"unexpected error: {exc!r}"
        return True  # the answer says how the check went; never QGIS's "Task failed"

    def finished(self, _result: bool):
        for callback in self.done_callbacks:
            callback(self)
