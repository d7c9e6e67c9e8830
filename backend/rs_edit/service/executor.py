"""Running queued jobs: a fixed set of worker threads and a backend that does the edit.

`JobRunner` owns the in-memory queue (job ids; the database is the truth) and `workers` threads.
Each thread claims a job (queued -> running, atomically), runs it through its backend, publishes
the outputs into the job's folder by rename, and only then records success: a client that sees
`succeeded` always finds complete files.

Backends:
- `LocalBackend` runs each edit in a child process of its own (multiprocessing "spawn", one
  worker thread per GPU, or `--workers` threads on CPU, each watching its child). The child's
  data segment is limited (RLIMIT_DATA, `ServiceConfig.job_memory_factor` x the job's memory
  estimate, at most that factor x the memory budget): a job that runs out of memory or crashes
  fails alone, with a message naming the limit; the server survives. Progress and log lines come
  back through a pipe; cancelling terminates the child (SIGTERM, SIGKILL after 1 s). An edit
  function that cannot be pickled (a test's closure) runs in the worker thread instead, as
  before. The child's start and end are recorded in the job store (`jobs.recover`'s retry rule).
- `RayBackend` submits each edit as a Ray task asking for `ray_gpus_per_task` GPUs, so the
  machines of a Ray cluster serve one API; the worker thread relays the task's progress (through
  a `ProgressBoard` actor) and its cancellation.

Cancellation really stops the work: a child process is terminated whatever it is doing; in a
thread or a Ray task the progress callback raises `CancelledError` inside the edit, which stops
at its next step and writes nothing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
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
from .retention import Sweeper

log = logging.getLogger("rs_edit.service")

PROGRESS_INTERVAL_S = 0.2  # at most this often a progress update is written per job
CHILD_POLL_S = 0.05  # how often a worker thread looks at its child's pipe and the cancel flag
CHILD_TERM_GRACE_S = 1.0  # after SIGTERM, SIGKILL: a cancelled child is gone within ~1.1 s
CHILD_EXIT_WAIT_S = 10.0  # a child that sent its result gets this long to exit by itself
MB = 1024 * 1024


class EditProcessError(Exception):
    """The job's child process ran out of memory, crashed or was killed: the job fails (not
    retryable), the server carries on."""


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
    """Edits in a child process per job (memory-limited), or in the worker thread."""

    name = "local"

    def __init__(self, edit_fn, config: ServiceConfig, cache_dir: Path):
        self.edit_fn = edit_fn
        self.config = config
        self.cache_dir = cache_dir
        self._payload: bytes | None = None  # the pickled edit function (None: run_edit)
        self.isolated = False
        self._budget_mb: int | None = None

    def start(self) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.isolated = bool(self.config.job_process)
        if self.isolated and self.edit_fn is not None:
            try:
                self._payload = pickle.dumps(self.edit_fn)
                pickle.loads(self._payload)
            except Exception as exc:  # a closure or lambda (tests): no child can import it
                log.warning(
                    "the edit function cannot be sent to a child process (%s): jobs run in "
                    "the server's threads, without a memory limit",
                    exc,
                )
                self.isolated = False
        self._budget_mb = self.config.memory_budget()

    def memory_limit_mb(self, job: Job) -> int | None:
        """The child's RLIMIT_DATA in MB: factor x the job's estimate (at most factor x the
        budget; a job recorded without an estimate gets factor x the budget). None: no limit."""
        factor = self.config.job_memory_factor
        if not factor or self._budget_mb is None:
            return None
        estimate = job.inputs.get("memory_estimate_mb") or self._budget_mb
        return int(factor * min(int(estimate), self._budget_mb))

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
        if self.isolated:
            return self._run_child(job, job_dir, work, reporter, slot)
        self._pin_gpu(slot)
        result = worker.execute_edit(
            self.edit_fn or worker.default_edit_fn(),
            job_dir / "input.tif",
            work / "result.tif",
            worker.example_paths(job.options, job_dir),
            roi=_read_roi(job_dir),
            mask_path=job_dir / "mask.tif" if job.inputs.get("mask") else None,
            device=self.config.device,
            progress=reporter,
            log=reporter.log,
            cache_dir=self.cache_dir,
            cache_models=self.config.cache_models,
            cache_bytes=self.config.cache_bytes,
        )
        return [Path(p) for p in result.outputs], result.report.to_dict()

    def _run_child(self, job: Job, job_dir: Path, work: Path, reporter: Reporter, slot: int):
        from ..engine import presets

        limit_mb = self.memory_limit_mb(job)
        n = _gpu_count() if self.config.device != "cpu" else 0
        spec = {
            "job_id": job.id,
            "edit_fn": self._payload,
            "input_path": str(job_dir / "input.tif"),
            "output": str(work / "result.tif"),
            "options": worker.example_paths(job.options, job_dir),
            "roi": _read_roi(job_dir),
            "mask_path": str(job_dir / "mask.tif") if job.inputs.get("mask") else None,
            "device": self.config.device,
            "cache_dir": str(self.cache_dir),
            "cache_models": self.config.cache_models,
            "cache_bytes": self.config.cache_bytes,
            "memory_limit_bytes": limit_mb * MB if limit_mb else None,
            "gpu": slot % n if n > 1 else None,
            "parent_pid": os.getpid(),
            # The presets this server validated and estimated the job with (a fresh process
            # would see only the built-in ones, not any registered or changed since).
            "presets": dict(presets.PRESETS),
        }
        ctx = multiprocessing.get_context("spawn")
        receive, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=worker.job_child, args=(spec, send), name=f"rs-edit-job-{job.id[:8]}"
        )
        proc.start()
        send.close()  # ours: EOF on `receive` once the child has gone
        reporter.store.child_started(job.id, proc.pid)
        log.info("job %s: edit process %d (memory limit %s MB)", job.id, proc.pid, limit_mb)
        try:
            outcome = self._watch(proc, receive, reporter)
            if outcome is not None:
                proc.join(CHILD_EXIT_WAIT_S)
        finally:
            if proc.is_alive():
                _stop(proc)
            proc.join()
            receive.close()
            reporter.store.child_finished(job.id)
        return self._outcome(job, outcome, proc.exitcode, limit_mb, work)

    def _watch(self, proc, receive, reporter: Reporter):
        """Relay the child's progress and log lines until it sends its outcome (returned) or
        ends without one (None). A cancel terminates it at once (CancelledError)."""
        while True:
            if reporter.cancel.is_set():
                _stop(proc)
                raise CancelledError("cancelled (the edit process was stopped)")
            if not receive.poll(CHILD_POLL_S):
                if not proc.is_alive() and not receive.poll(0):
                    return None
                continue
            try:
                message = receive.recv()
            except (EOFError, OSError):
                return None
            except Exception:  # a message that does not unpickle here: skipped
                log.exception("job %s: unreadable message from the edit process", reporter.job_id)
                continue
            kind = message[0]
            if kind == "progress":
                reporter.update(*message[1:])
            elif kind == "log":
                reporter.log(message[1])
            else:
                return message

    def _outcome(self, job: Job, outcome, exitcode, limit_mb: int | None, work: Path):
        limit = _limit_text(limit_mb, job, self.config.job_memory_factor)
        if outcome is not None and outcome[0] == "done":
            _, outputs, report = outcome
            return [Path(p) for p in outputs], {**report, "memory_limit_mb": limit_mb}
        if outcome is not None:
            _, kind, message, exc, detail = outcome
            if kind == "cancelled":
                raise CancelledError(message)
            if kind == "input":
                raise exc if isinstance(exc, InputError) else InputError(message)
            if kind == "memory":
                log.error("job %s: out of memory in its edit process: %s", job.id, message)
                raise EditProcessError(
                    f"the edit ran out of memory: it needed more than {limit} ({message}); "
                    "edit a smaller area or choose a smaller preset (tiny or fast)"
                )
            log.error("job %s failed in its edit process:\n%s", job.id, detail)
            if isinstance(exc, Exception):
                raise exc
            raise EditProcessError(f"internal error: {message}")
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = f"signal {-exitcode}"
            hint = (
                " (the system's out-of-memory killer sends SIGKILL)"
                if -exitcode == signal.SIGKILL
                else ""
            )
            message = f"the edit's process was killed by {name}{hint}; {limit}"
        else:
            message = f"the edit's process ended (exit code {exitcode}) without a result; {limit}"
        log.error("job %s: %s", job.id, message)
        raise EditProcessError(message + "; the job is not retried")

    def describe(self) -> dict:
        out = {"executor": "local", "job_process": self.isolated}
        if self.isolated:
            out["job_memory_factor"] = self.config.job_memory_factor
        return out


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
            example=_example_files(job_dir),
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
        days = getattr(getattr(backend, "config", None), "retention_days", 0)
        self.sweeper = Sweeper(store, jobs_dir, days)  # finished jobs older than the retention

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
        self.sweeper.start()

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> None:
        """Stop a running job; a job already cancelled while queued loses its upload now."""
        with self._lock:
            event = self._cancels.get(job_id)
        if event is not None:
            event.set()
            return
        job = self.store.get(job_id)
        if job is not None and job.status == CANCELLED:
            remove_uploads(self.jobs_dir / job_id)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; running jobs are interrupted (failed, 'resubmit'), queued ones stay
        queued for the next start."""
        self._stopping = True
        self.sweeper.stop()
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
            report = {**_public_report(report, job_dir), "job_seconds": round(seconds, 3)}
            note = " (cached model: training skipped)" if report.get("model_cached") else ""
            if not self.store.finish(
                job.id, SUCCEEDED, f"done in {seconds:.1f} s{note}", outputs=names, report=report
            ):
                _remove(job_dir, names)
            log.info("job %s: succeeded in %.1f s", job.id, seconds)
        except CancelledError:
            if self._stopping:
                self.store.finish(job.id, FAILED, SHUTDOWN_MESSAGE)
            elif self.store.finish(job.id, CANCELLED, CANCELLED_MESSAGE):
                remove_uploads(job_dir)
            log.info("job %s: cancelled", job.id)
        except EditProcessError as exc:
            self.store.finish(job.id, FAILED, _public(str(exc), job_dir), retryable=False)
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
    """A failed job's message for clients: the job's files by their form field names (the
    example by its own name), never the server's folders (as at submission)."""
    message = message.replace(str(job_dir / worker.EXAMPLE_DIR) + os.sep, "")
    for name, field in (("input.tif", "image"), ("mask.tif", "mask")):
        message = name_field(message, job_dir / name, field)
    return message.replace(str(job_dir), "the job's folder")


def _public_report(report: dict, job_dir: Path) -> dict:
    """A job's report for clients: a path of the job's own files (the example's, which the
    edit records) as its name in the job's folder, never the server's folders."""
    text = json.dumps(report)
    folder = json.dumps(str(job_dir) + os.sep)[1:-1]  # as it appears inside a JSON string
    if folder not in text:
        return report
    return json.loads(text.replace(folder, ""))


def _example_files(job_dir: Path) -> dict[str, bytes]:
    """The job's example files by their names in its folder, for a Ray task."""
    names = [p.relative_to(job_dir).as_posix() for p in (job_dir / worker.EXAMPLE_DIR).glob("*")]
    names += [worker.EXAMPLE_ROI] if (job_dir / worker.EXAMPLE_ROI).is_file() else []
    return {name: (job_dir / name).read_bytes() for name in names}


UPLOADS = ("input.tif", "mask.tif", "roi.geojson", worker.EXAMPLE_ROI)


def remove_uploads(job_dir: Path) -> None:
    """A cancelled job's inputs: nothing will read them again (its record stays)."""
    for name in UPLOADS:
        (job_dir / name).unlink(missing_ok=True)
    shutil.rmtree(job_dir / worker.EXAMPLE_DIR, ignore_errors=True)


def _stop(proc) -> None:
    """SIGTERM, then SIGKILL after CHILD_TERM_GRACE_S: the child is gone whatever it was doing."""
    if proc.is_alive():
        proc.terminate()
        proc.join(CHILD_TERM_GRACE_S)
    if proc.is_alive():
        proc.kill()
        proc.join(5.0)


def _limit_text(limit_mb: int | None, job: Job, factor: float) -> str:
    if not limit_mb:
        return "no memory limit was set for it"
    estimate = job.inputs.get("memory_estimate_mb")
    basis = (
        f"{factor:g} x its estimate of {int(estimate):,} MB"
        if estimate
        else f"{factor:g} x the memory budget"
    )
    return f"this job's memory limit of {limit_mb:,} MB ({basis})"


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
