"""What runs one job: the edit function, its progress, the model cache's bound.

`execute_edit` is the same call whether the job runs in a thread of the server or inside a Ray
task on another machine (`ray_edit_task`). The edit function is injectable (default
`rs_edit.edit.run_edit`); it receives a progress callback that raises `CancelledError` once the
job is cancelled, which stops the work with nothing written.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ..edit import EditOptions, EditResult
from ..errors import CancelledError, InputError
from ..progress import STAGE_BANDS, ProgressCallback, percent  # noqa: F401 (the service's names)
from . import cache

EditFn = Callable[..., EditResult]
# The editor keeps trained tile models in CACHE_DIR/models (and prompt expansions, small, in
# CACHE_DIR/prompts): the LRU bound applies to the models.
MODELS_SUBDIR = "models"


def default_edit_fn() -> EditFn:
    from ..edit import run_edit

    return run_edit


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
    report: dict = {}
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
        report = result.report
        return result
    finally:
        if cache_dir is not None:
            cache.after_job(Path(cache_dir) / MODELS_SUBDIR, report, cache_models, cache_bytes)


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
) -> dict:
    """A Ray task: write the inputs to a local temporary folder, edit, return the outputs' bytes.

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
            report = {**result.report, "ray_node": ray.get_runtime_context().get_node_id()}
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
