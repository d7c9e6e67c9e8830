"""Running queued jobs: a fixed set of worker threads and a backend that does the edit.

`JobRunner` owns the in-memory queue (job ids; the database is the truth) and `workers` threads.
Each thread claims a job (queued -> running, atomically), runs it through its backend, publishes
the outputs into the job's folder by rename, and only then records success: a client that sees
`succeeded` always finds complete files.

Backends:
- `LocalBackend` calls the edit function in the worker thread (the default; one thread per GPU,
  or `--workers` threads on CPU).
- `RayBackend` submits each edit as a Ray task asking for `ray_gpus_per_task` GPUs, so the
  machines of a Ray cluster serve one API; the worker thread relays the task's progress (through
  a `ProgressBoard` actor) and its cancellation.

Cancellation really stops the work: the progress callback raises `CancelledError` inside the
edit (in a Ray task too), the edit stops at its next step and writes nothing.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from pathlib import Path

from ..errors import CancelledError, InputError
from . import worker
from .config import ServiceConfig
from .errors import name_field, redact
from .jobs import (
    CANCELLED,
    CANCELLED_MESSAGE,
    FAILED,
    SHUTDOWN_MESSAGE,
    SUCCEEDED,
    Job,
    JobStore,
)

log = logging.getLogger("rs_edit.service")

PROGRESS_INTERVAL_S = 0.2  # at most this often a progress update is written per job


class Reporter:
    """The progress callback of one job: throttled writes to the store, cancellation check."""

    def __init__(self, store: JobStore, job_id: str, cancel: threading.Event):
        self.store, self.job_id, self.cancel = store, job_id, cancel
        self._last_t = 0.0
        self._last_stage: str | None = None

    def __call__(self, stage: str, step: int, total: int, loss: float | None = None) -> None:
        if self.cancel.is_set():
            raise CancelledError("cancelled")
        self.update(stage, step, total, loss)

    def update(self, stage: str, step: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if stage == self._last_stage and now - self._last_t < PROGRESS_INTERVAL_S and step < total:
            return
        self._last_t, self._last_stage = now, stage
        message = f"{stage} {step}/{total}"
        if loss is not None:
            message += f" (loss {float(loss):.4g})"
        self.store.update_progress(self.job_id, worker.percent(stage, step, total), stage, message)

    def log(self, line: str) -> None:
        line = redact(str(line))
        log.info("job %s: %s", self.job_id, line)
        self.store.append_log(self.job_id, line)


class LocalBackend:
    """Edits in the worker thread of this process."""

    name = "local"

    def __init__(self, edit_fn, config: ServiceConfig, cache_dir: Path):
        self.edit_fn = edit_fn
        self.config = config
        self.cache_dir = cache_dir

    def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def stop(self) -> None:
        pass

    def default_workers(self) -> int:
        return max(1, _gpu_count())

    def _pin_gpu(self, slot: int) -> None:
        """With several GPUs, worker thread `slot` uses GPU slot % n (CUDA's current device
        is per thread), so each GPU runs one job at a time."""
        n = _gpu_count()
        if self.config.device != "cpu" and n > 1:
            import torch

            torch.cuda.set_device(slot % n)

    def run(self, job: Job, job_dir: Path, work: Path, reporter: Reporter, slot: int):
        self._pin_gpu(slot)
        result = worker.execute_edit(
            self.edit_fn or worker.default_edit_fn(),
            job_dir / "input.tif",
            work / "result.tif",
            job.options,
            roi=_read_roi(job_dir),
            mask_path=job_dir / "mask.tif" if job.inputs.get("mask") else None,
            device=self.config.device,
            progress=reporter,
            log=reporter.log,
            cache_dir=self.cache_dir,
            cache_models=self.config.cache_models,
            cache_bytes=self.config.cache_bytes,
        )
        return [Path(p) for p in result.outputs], result.report

    def describe(self) -> dict:
        return {"executor": "local"}


class RayBackend:
    """Each edit is a Ray task asking for one GPU (configurable); progress via an actor."""

    name = "ray"
    POLL_S = 0.2
    CANCEL_GRACE_S = 15.0  # after this, a task that ignores cancellation is killed

    def __init__(self, edit_fn, config: ServiceConfig, cache_dir: str | None):
        self.edit_fn = edit_fn
        self.config = config
        self.cache_dir = cache_dir  # on the Ray workers' machines; None: their data dir
        self.board = None
        self._task = None

    def start(self) -> None:
        try:
            import ray
        except ImportError as exc:
            from ..errors import ParameterError

            raise ParameterError(
                "--executor ray needs Ray: pip install 'rs-edit[scale]' (or 'ray[default]')"
            ) from exc
        if not ray.is_initialized():
            ray.init(
                address=self.config.ray_address,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        gpus = ray.cluster_resources().get("GPU", 0)
        if self.config.ray_gpus_per_task > gpus:
            log.warning(
                "the Ray cluster has %g GPU(s) but each edit task asks for %g: tasks will wait "
                "until GPU workers join (use --ray-gpus 0 to edit on CPU workers)",
                gpus,
                self.config.ray_gpus_per_task,
            )
        self.board = ray.remote(num_cpus=0)(worker.ProgressBoard).remote()
        self._task = ray.remote(worker.ray_edit_task).options(
            num_gpus=self.config.ray_gpus_per_task,
            num_cpus=self.config.ray_cpus_per_task,
            max_retries=0,
        )

    def stop(self) -> None:
        import ray

        if ray.is_initialized() and self.board is not None:
            ray.kill(self.board)
            self.board = None

    def default_workers(self) -> int:
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.config.ray_gpus_per_task > 0:
            return max(1, int(gpus / self.config.ray_gpus_per_task))
        return max(1, int(ray.cluster_resources().get("CPU", 1) / self.config.ray_cpus_per_task))

    def run(self, job: Job, job_dir: Path, work: Path, reporter: Reporter, slot: int):
        import ray

        image = ray.put((job_dir / "input.tif").read_bytes())
        mask_path = job_dir / "mask.tif"
        mask = mask_path.read_bytes() if job.inputs.get("mask") else None
        ref = self._task.remote(
            job.id,
            job.options,
            image,
            mask,
            _read_roi(job_dir),
            self.board,
            self.edit_fn,
            self.config.device,
            self.cache_dir,
            self.config.cache_models,
            self.config.cache_bytes,
        )
        cancel_deadline = None
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=self.POLL_S)
                self._relay(job.id, reporter)
                if reporter.cancel.is_set() and cancel_deadline is None:
                    ray.get(self.board.cancel.remote(job.id))
                    cancel_deadline = time.monotonic() + self.CANCEL_GRACE_S
                if ready:
                    break
                if cancel_deadline is not None and time.monotonic() > cancel_deadline:
                    ray.cancel(ref, force=True)
                    raise CancelledError("cancelled (the task was stopped)")
            out = ray.get(ref)
        finally:
            self.board.forget.remote(job.id)
        if not out["ok"]:
            if out["kind"] == "cancelled":
                raise CancelledError("cancelled")
            if out["kind"] == "input":
                raise InputError(out["message"])
            log.error("job %s failed on %s:\n%s", job.id, out.get("host"), out.get("traceback"))
            raise RuntimeError(out["message"])
        paths = []
        for name, data in out["outputs"]:
            path = work / Path(name).name
            path.write_bytes(data)
            paths.append(path)
        return paths, out["report"]

    def _relay(self, job_id: str, reporter: Reporter) -> None:
        import ray

        progress, lines = ray.get(self.board.pull.remote(job_id))
        for line in lines:
            reporter.log(line)
        if progress is not None:
            reporter.update(*progress)

    def describe(self) -> dict:
        import ray

        resources = ray.cluster_resources() if ray.is_initialized() else {}
        return {
            "executor": "ray",
            "ray_cpus": resources.get("CPU", 0),
            "ray_gpus": resources.get("GPU", 0),
            "gpus_per_task": self.config.ray_gpus_per_task,
        }


class JobRunner:
    """The queue of job ids and the worker threads that run them."""

    def __init__(self, store: JobStore, backend, jobs_dir: Path, workers: int | None):
        self.store = store
        self.backend = backend
        self.jobs_dir = jobs_dir
        self.workers = workers
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self, queued: list[str]) -> None:
        self.backend.start()
        n = self.workers or self.backend.default_workers()
        self.workers = n
        for job_id in queued:
            self._queue.put(job_id)
        for slot in range(n):
            t = threading.Thread(target=self._loop, args=(slot,), name=f"rs-edit-job-{slot}")
            t.daemon = True
            t.start()
            self._threads.append(t)

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; running jobs are interrupted (failed, 'resubmit'), queued ones stay
        queued for the next start."""
        self._stopping = True
        with self._lock:
            for event in self._cancels.values():
                event.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()
        self.backend.stop()

    def _loop(self, slot: int) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping:
                return
            event = threading.Event()
            with self._lock:
                self._cancels[job_id] = event
            try:
                job = self.store.claim(job_id)
                if job is not None:
                    self._run(job, event, slot)
            except Exception:  # never let a worker thread die
                log.exception("job %s: unexpected error in the runner", job_id)
            finally:
                with self._lock:
                    self._cancels.pop(job_id, None)

    def _run(self, job: Job, cancel: threading.Event, slot: int) -> None:
        job_dir = self.jobs_dir / job.id
        work = job_dir / "work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        reporter = Reporter(self.store, job.id, cancel)
        log.info("job %s: started (slot %d, %s)", job.id, slot, self.backend.name)
        t0 = time.monotonic()
        try:
            outputs, report = self.backend.run(job, job_dir, work, reporter, slot)
            names = publish(outputs, job_dir)
            seconds = time.monotonic() - t0
            report = {**report, "job_seconds": round(seconds, 3)}
            note = " (cached model: training skipped)" if report.get("model_cached") else ""
            if not self.store.finish(
                job.id, SUCCEEDED, f"done in {seconds:.1f} s{note}", outputs=names, report=report
            ):
                _remove(job_dir, names)
            log.info("job %s: succeeded in %.1f s", job.id, seconds)
        except CancelledError:
            if self._stopping:
                self.store.finish(job.id, FAILED, SHUTDOWN_MESSAGE)
            else:
                self.store.finish(job.id, CANCELLED, CANCELLED_MESSAGE)
            log.info("job %s: cancelled", job.id)
        except InputError as exc:
            self.store.finish(job.id, FAILED, _public(str(exc), job_dir))
            log.info("job %s: failed on its input: %s", job.id, redact(str(exc)))
        except Exception as exc:
            log.error("job %s: internal error", job.id, exc_info=exc)
            message = f"internal error: {type(exc).__name__}: {exc}"
            self.store.finish(job.id, FAILED, _public(message, job_dir))
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _public(message: str, job_dir: Path) -> str:
    """A failed job's message for clients: the job's files by their form field names, never
    the server's folders (as at submission)."""
    for name, field in (("input.tif", "image"), ("mask.tif", "mask")):
        message = name_field(message, job_dir / name, field)
    return message.replace(str(job_dir), "the job's folder")


def publish(outputs: list[Path], job_dir: Path) -> list[str]:
    """Move finished outputs from the work folder into the job folder, one rename each."""
    names = []
    for path in outputs:
        target = job_dir / path.name
        os.replace(path, target)
        names.append(target.name)
    return names


def _remove(job_dir: Path, names: list[str]) -> None:
    for name in names:
        (job_dir / name).unlink(missing_ok=True)


def _read_roi(job_dir: Path) -> dict | None:
    path = job_dir / "roi.geojson"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # a broken CUDA setup: serve on CPU
        return 0
