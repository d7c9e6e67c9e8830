"""What runs one job: the edit function, its progress, the model cache's bound.

`execute_edit` is the same call whether the job runs in a child process of the server
(`job_child`, started by `executor.LocalBackend`), in a thread of the server (an edit function
that cannot be sent to a child) or inside a Ray task on another machine (`ray_edit_task`). The
edit function is injectable (default `rs_edit.edit.run_edit`); it receives a progress callback
that raises `CancelledError` once the job is cancelled, which stops the work with nothing written.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import resource
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from .. import model_cache
from ..edit import EditOptions, EditResult
from ..errors import CancelledError, InputError
from ..progress import STAGE_BANDS, ProgressCallback, percent  # noqa: F401 (the service's names)

EditFn = Callable[..., EditResult]


def default_edit_fn() -> EditFn:
    from ..edit import run_edit

    return run_edit


# A job's example image is kept as `reference/<its uploaded name, made safe>` in the job's
# folder, its polygons as `reference_roi.geojson`; the job's options record these by name only
# (clients see them), `example_paths` makes them paths wherever the job's inputs are.
EXAMPLE_DIR = "reference"
EXAMPLE_ROI = "reference_roi.geojson"


def example_paths(options: dict, folder: Path) -> dict:
    """The job's recorded options with its example's files as paths in `folder`."""
    values = dict(options)
    if values.get("reference"):
        values["reference"] = str(Path(folder) / EXAMPLE_DIR / Path(values["reference"]).name)
    if values.get("reference_roi"):
        values["reference_roi"] = str(Path(folder) / EXAMPLE_ROI)
    return values


def options_from_dict(options: dict) -> EditOptions:
    values = dict(options)
    if values.get("rgb_bands") is not None:
        values["rgb_bands"] = tuple(values["rgb_bands"])
    return EditOptions(**values)


def execute_edit(
    edit_fn: EditFn,
    input_path: Path,
    output: Path,
    options: dict,
    *,
    roi: dict | None,
    mask_path: Path | None,
    device: str,
    progress: ProgressCallback,
    log: Callable[[str], None],
    cache_dir: Path | None,
    cache_models: int,
    cache_bytes: int,
) -> EditResult:
    """One edit, then the cache's book-keeping (mark the model used, prune LRU beyond bounds)."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    entry = None
    try:
        result = edit_fn(
            input_path,
            output,
            options_from_dict(options),
            roi_geojson=roi,
            mask_path=mask_path,
            device=device,
            progress=progress,
            cache_dir=cache_dir,
            log=log,
        )
        entry = result.report.model_entry
        return result
    finally:
        if cache_dir is not None:
            model_cache.after_job(cache_dir, entry, cache_models, cache_bytes)


# --- the job's child process -------------------------------------------------------------------

CHILD_PROGRESS_S = 0.1  # the child sends progress at most this often per stage (and every end)
_PR_SET_PDEATHSIG = 1


def job_child(spec: dict, conn) -> None:
    """The entry point of a job's child process (multiprocessing "spawn"): limit its memory,
    edit, and send ("progress", ...), ("log", line) and finally ("done", outputs, report) or
    ("error", kind, message, exception or None, traceback) through `conn`.

    `spec["memory_limit_bytes"]` becomes RLIMIT_DATA (heap and private writable mappings) before
    the edit function is even unpickled: an allocation beyond it fails in this process (a
    MemoryError, or torch's "can't allocate memory"), never the server. Address space
    (RLIMIT_AS) is not limited: torch and CUDA reserve far more of it than they use.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the server: it stops us
    _die_with_parent(spec.get("parent_pid"))
    limit = spec.get("memory_limit_bytes")
    if limit:
        _, hard = resource.getrlimit(resource.RLIMIT_DATA)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    lock = threading.Lock()

    def send(*message) -> None:
        with lock:
            conn.send(message)

    last = {"t": 0.0, "stage": None}

    def progress(stage: str, step: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if stage != last["stage"] or now - last["t"] >= CHILD_PROGRESS_S or step >= total:
            last["t"], last["stage"] = now, stage
            loss = None if loss is None else float(loss)
            send("progress", str(stage), int(step), int(total), loss)

    def log(line: str) -> None:
        send("log", str(line))

    try:
        if spec.get("presets"):  # the server's presets, as the submission checked them
            from ..engine import presets

            presets.PRESETS.clear()
            presets.PRESETS.update(spec["presets"])
        if spec.get("gpu") is not None:
            import torch

            torch.cuda.set_device(spec["gpu"])
        edit_fn = pickle.loads(spec["edit_fn"]) if spec.get("edit_fn") else default_edit_fn()
        result = execute_edit(
            edit_fn,
            Path(spec["input_path"]),
            Path(spec["output"]),
            spec["options"],
            roi=spec["roi"],
            mask_path=Path(spec["mask_path"]) if spec.get("mask_path") else None,
            device=spec["device"],
            progress=progress,
            log=log,
            cache_dir=Path(spec["cache_dir"]) if spec.get("cache_dir") else None,
            cache_models=spec["cache_models"],
            cache_bytes=spec["cache_bytes"],
        )
        report = {**result.report.to_dict(), "child_peak_rss_mb": _peak_rss_mb()}
        send("done", [str(p) for p in result.outputs], report)
    except BaseException as exc:  # noqa: BLE001 - every outcome is reported to the server
        _send_error(send, exc)
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def _send_error(send, exc: BaseException) -> None:
    if isinstance(exc, CancelledError):
        kind = "cancelled"
    elif isinstance(exc, InputError):
        kind = "input"
    elif is_out_of_memory(exc):
        kind = "memory"
    else:
        kind = "internal"
    message = f"{type(exc).__name__}: {exc}" if kind == "internal" else str(exc)
    detail = "" if kind == "memory" else traceback.format_exc()
    payload = exc if kind in ("input", "internal") else None
    try:  # the server re-raises the exception itself when it survives the trip
        pickle.loads(pickle.dumps(payload))
    except Exception:
        payload = None
    try:
        send("error", kind, message, payload, detail)
    except Exception:  # the exception does not pickle (or no memory left): its text only
        with contextlib.suppress(Exception):
            send("error", kind, message[:2000], None, "")


def is_out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, numpy's (a MemoryError too) or torch's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "can't allocate memory" in text or "cannot allocate memory" in text
    )


def _die_with_parent(parent_pid: int | None) -> None:
    """SIGKILL this process when the server's thread that started it dies (a `kill -9` of the
    server leaves no orphan editing on), Linux only."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)  # the server died before the line above took effect


def _peak_rss_mb() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)


# --- Ray ----------------------------------------------------------------------------------------


class ProgressBoard:
    """A Ray actor between the API server and its tasks: tasks report progress and log lines and
    learn whether their job was cancelled; the server pulls the latest state."""

    def __init__(self):
        self._progress: dict[str, tuple] = {}
        self._logs: dict[str, list[str]] = {}
        self._cancelled: set[str] = set()

    def report(self, job_id: str, stage: str, step: int, total: int, loss) -> bool:
        self._progress[job_id] = (stage, step, total, loss)
        return job_id in self._cancelled

    def log(self, job_id: str, line: str) -> None:
        self._logs.setdefault(job_id, []).append(line)

    def pull(self, job_id: str) -> tuple[tuple | None, list[str]]:
        return self._progress.pop(job_id, None), self._logs.pop(job_id, [])

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def forget(self, job_id: str) -> None:
        self._progress.pop(job_id, None)
        self._logs.pop(job_id, None)
        self._cancelled.discard(job_id)


def ray_edit_task(
    job_id: str,
    options: dict,
    image: bytes,
    mask: bytes | None,
    roi: dict | None,
    board,
    edit_fn: EditFn | None,
    device: str,
    cache_dir: str | None,
    cache_models: int,
    cache_bytes: int,
    example: dict[str, bytes] | None = None,
) -> dict:
    """A Ray task: write the inputs to a local temporary folder, edit, return the outputs' bytes.
    `example`: the job's example files by their names in its folder (`example_paths`).

    Never raises: returns {"ok": True, "outputs": [(name, bytes)], "report": ...} or
    {"ok": False, "kind": "cancelled"|"input"|"internal", "message": ...}.
    """
    import ray

    edit_fn = edit_fn or default_edit_fn()
    if cache_dir is None:  # the worker machine's own cache (RS_EDIT_CACHE_DIR or ~/.cache)
        from ..edit import default_cache_dir

        cache_dir = str(default_cache_dir())
    last = {"t": 0.0, "stage": None}

    def progress(stage: str, step: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if stage != last["stage"] or now - last["t"] >= 0.25 or step >= total:
            last["t"], last["stage"] = now, stage
            loss = None if loss is None else float(loss)
            if ray.get(board.report.remote(job_id, stage, int(step), int(total), loss)):
                raise CancelledError("cancelled")

    def log(line: str) -> None:
        board.log.remote(job_id, str(line))

    try:
        with tempfile.TemporaryDirectory(prefix="rs-edit-task-") as tmp:
            folder = Path(tmp)
            input_path = folder / "input.tif"
            input_path.write_bytes(image)
            mask_path = None
            if mask is not None:
                mask_path = folder / "mask.tif"
                mask_path.write_bytes(mask)
            for name, data in (example or {}).items():
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(data)
            options = example_paths(options, folder)
            out_dir = folder / "out"
            out_dir.mkdir()
            result = execute_edit(
                edit_fn,
                input_path,
                out_dir / "result.tif",
                options,
                roi=roi,
                mask_path=mask_path,
                device=device,
                progress=progress,
                log=log,
                cache_dir=Path(cache_dir),
                cache_models=cache_models,
                cache_bytes=cache_bytes,
            )
            outputs = [(Path(p).name, Path(p).read_bytes()) for p in result.outputs]
            node = ray.get_runtime_context().get_node_id()
            report = {**result.report.to_dict(), "ray_node": node}
            return {"ok": True, "outputs": outputs, "report": report}
    except CancelledError:
        return {"ok": False, "kind": "cancelled", "message": "cancelled"}
    except InputError as exc:
        return {"ok": False, "kind": "input", "message": str(exc)}
    except Exception as exc:  # reported to the server, which logs the traceback
        return {
            "ok": False,
            "kind": "internal",
            "message": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "host": os.uname().nodename,
        }
