"""One dock job driven from the main thread, holding no thread while it waits.

QGIS's global thread pool has one thread per core: a task that sleeps in a poll loop for a
job's whole life would starve the map's rendering on a small laptop. So only the short
blocking steps run as QgsTasks (export + submit, download); between them the job is polled
from the main thread with a QTimer and asynchronous requests, so any number of jobs in
flight use no pool thread while they wait.

    submit task -> poll (timer + async GET) -> download task -> ended("succeeded")
                 \\-> failed, retryable: submit again (the tile is already exported)

Cancelling aborts the running task or request and asks the backend to cancel the job
(asynchronously); the runner then ends as "cancelled". A submission whose upload is complete
is not aborted but waited for: the backend may have made the job already, and only its answer
names the job to cancel (see client.BackendClient._send).
"""

import contextlib
import functools
import json
import time

from qgis.core import QgsFeedback, QgsTask
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal, pyqtSlot
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

from . import jobs
from .client import (
    JOBS_PATH,
    REQUEST_TIMEOUT_MS,
    BackendError,
    CancelledError,
    error_message,
    send_async,
)

CANCEL_TIMEOUT_MS = 5000


def _cancel_orphan(request: jobs.EditRequest, task, _ok) -> None:
    """A step that outlived its runner (plugin unload) has ended: its exported inputs go, and
    a submission that made a job after all has that job cancelled (fire and forget: the reply
    belongs to the network manager)."""
    jobs.remove_inputs(request)
    value = task.value
    if isinstance(value, dict) and value.get("id"):
        path = f"{JOBS_PATH}/{value['id']}"
        reply = send_async(request.base_url, request.token, path, "DELETE", CANCEL_TIMEOUT_MS)
        reply.finished.connect(reply.deleteLater)


class BlockingTask(QgsTask):
    """Short blocking work `work(feedback, set_progress)` in QGIS's task manager; `value`,
    `error` and `cancelled` describe its end; `done_callbacks` run on the main thread."""

    def __init__(self, title: str, work):
        super().__init__(title, QgsTask.Flag.CanCancel)
        self.work = work
        self.feedback = QgsFeedback()
        self.value = None
        self.error = ""
        self.cancelled = False
        self.done_callbacks = []

    def cancel(self):
        """From the dock or the task manager: abort the running request now."""
        self.feedback.cancel()
        super().cancel()

    def run(self) -> bool:
        """True when the work succeeded or was cancelled (a cancel is no failure, and QGIS
        announces every task returning False as "Task failed"); False for a real error."""
        try:
            if self.isCanceled():
                raise CancelledError("cancelled")
            self.value = self.work(self.feedback, self.setProgress)
            return True
        except CancelledError:
            self.cancelled = True
            return True
        except (BackendError, jobs.JobError) as exc:
            if self.isCanceled():  # e.g. the aborted request's own error: still a cancel
                self.cancelled = True
                return True
            self.error = str(exc)
        except Exception as exc:  # a bug must end the task with a message, not kill QGIS
            self.error = f"unexpected error: {exc!r}"
        return False

    def finished(self, result: bool):
        if self.isCanceled():  # cancelled before it ran (QGIS never calls run) or while
            self.cancelled = True
        for callback in self.done_callbacks:
            callback(self, result)


class JobRunner(QObject):
    """Runs one job: `updated(stage, progress, job JSON)` along the way, `ended(self)` once,
    with `state` (succeeded, failed, cancelled), `message`, `outputs` and the last `job`."""

    updated = pyqtSignal(str, float, dict)
    ended = pyqtSignal(object)

    def __init__(self, request: jobs.EditRequest, task_manager, job_id: str = "", parent=None):
        super().__init__(parent)
        self.request = request
        self.task_manager = task_manager
        self.job_id = job_id
        self.job: dict = {"id": job_id} if job_id else {}
        self.task: BlockingTask | None = None
        self.reply = None
        self.state = ""  # the end state, once ended
        self.message = ""
        self.outputs = []
        self.scene_outputs = []  # the full-scene pre/post/mask set, when asked for
        self.scene_error = ""
        self.cancelling = False
        self.resubmits = 0
        self.down_since = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self._poll)

    @property
    def ended_already(self) -> bool:
        return bool(self.state)

    @property
    def waiting(self) -> bool:
        """Between the blocking steps: no task, only a timer or an asynchronous request."""
        return self.task is None and not self.ended_already

    # --- steps ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.job_id:  # an existing backend job: follow it
            self._schedule_poll(0)
        else:
            self._submit(export=True)

    def _title(self, what: str) -> str:
        request = self.request
        return f"RS Edit: {what} {request.source.name} – {request.prompt[:50]}"

    def _run_task(self, title: str, work, stage_of, on_done) -> None:
        task = BlockingTask(title, work)
        task.progressChanged.connect(lambda p: self._task_progress(stage_of(p), p))
        task.done_callbacks.append(lambda t, ok: self._task_done(t, ok, on_done))
        self.task = task
        self.task_manager.addTask(task)

    def _task_progress(self, stage, progress):
        if not self.ended_already and not self.cancelling:
            self.updated.emit(stage, float(progress), dict(self.job))

    def _task_done(self, task, ok, on_done):
        if task is not self.task:
            return
        self.task = None
        if self.ended_already:
            return
        value = task.value
        if task.cancelled or self.cancelling:
            if isinstance(value, dict) and value.get("id"):  # submitted after all
                self.job_id = str(value["id"])
            self.cancelling = True
            self._cancel_remote()
        elif not ok:
            self._end("failed", task.error or "the job failed")
        else:
            on_done(value)

    def _submit(self, export: bool) -> None:
        request = self.request

        def work(feedback, set_progress):
            if export:
                set_progress(1)
                jobs.prepare_inputs(request, feedback)
            set_progress(3)
            return jobs.submit_job(request, feedback)

        self._run_task(
            self._title("submitting"),
            work,
            lambda p: "exporting" if p < 3 else "uploading",
            self._submitted,
        )

    def _submitted(self, job: dict) -> None:
        self.job = dict(job)
        self.job_id = str(job["id"])
        self.down_since = None
        self.updated.emit("queued", 5.0, dict(self.job))
        self._schedule_poll(self.request.poll_interval_s)

    def _schedule_poll(self, seconds: float) -> None:
        self.timer.start(int(max(0.0, seconds) * 1000))

    def _send_async(self, path: str, method: str, timeout_ms: int):
        request = self.request
        return send_async(request.base_url, request.token, path, method, timeout_ms)

    def _poll(self) -> None:
        if self.ended_already or self.cancelling or self.reply is not None:
            return
        self.reply = self._send_async(f"{JOBS_PATH}/{self.job_id}", "GET", REQUEST_TIMEOUT_MS)
        # A decorated slot, not a lambda holding the reply (see BackendClient._exchange).
        self.reply.finished.connect(self._polled)

    @pyqtSlot()
    def _polled(self) -> None:
        reply, self.reply = self.reply, None
        if reply is None:  # aborted by a cancel, which goes on by itself
            return
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        content = bytes(reply.readAll())
        reason = reply.errorString() or "no answer"
        if reply.error() == QNetworkReply.NetworkError.OperationCanceledError:
            reason = f"no answer within {REQUEST_TIMEOUT_MS / 1000:g} s"
        reply.deleteLater()
        if self.ended_already or self.cancelling:
            return
        if status is None:
            # No HTTP answer at all: the backend may be restarting; keep polling a while.
            self.down_since = self.down_since or time.monotonic()
            if time.monotonic() - self.down_since > self.request.reconnect_s:
                self._end(
                    "failed",
                    f"backend not reachable at {self.request.base_url}: {reason}. "
                    "Is `rs-edit serve` running?",
                )
                return
            waiting = {**self.job, "message": f"waiting for the backend to come back ({reason})"}
            status_text = str(self.job.get("status") or "queued")
            self.updated.emit(status_text, jobs.job_progress(self.job), waiting)
            self._schedule_poll(self.request.poll_interval_s)
            return
        self.down_since = None
        if int(status) >= 400:
            message, _code = error_message(int(status), content)
            self._end("failed", f"job status failed: {message}")
            return
        try:
            job = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            job = None
        if not isinstance(job, dict):
            self._end("failed", "job status: the backend's answer is not JSON")
            return
        self._handle(job)

    def _handle(self, job: dict) -> None:
        self.job = dict(job)
        status = str(job.get("status", ""))
        self.updated.emit(status or "queued", jobs.job_progress(job), dict(job))
        if status == "succeeded":
            self._download(job)
        elif status == "failed" and job.get("retryable") and self.resubmits < jobs.RESUBMITS:
            # A backend restart interrupted it: the same request is good to send again.
            self.resubmits += 1
            self.updated.emit(
                "uploading", 3.0, {**job, "message": "backend restarted: submitting again"}
            )
            self._submit(export=False)
        elif status == "failed":
            self._end("failed", jobs.job_message(job) or "the backend reported a failed job")
        elif status == "cancelled":
            self._end("cancelled", "the job was cancelled on the backend")
        else:
            self._schedule_poll(self.request.poll_interval_s)

    def _download(self, job: dict) -> None:
        request = self.request

        def work(feedback, set_progress):
            outputs = jobs.download_results(request, job, feedback, set_progress)
            scene, scene_error = [], ""
            if request.full_scene:  # the tiles are kept whatever happens here
                try:
                    scene = jobs.write_scene_outputs(request, outputs)
                except jobs.JobError as exc:
                    scene_error = str(exc)
            return outputs, scene, scene_error

        self._run_task(self._title("downloading"), work, lambda _p: "downloading", self._downloaded)

    def _downloaded(self, value) -> None:
        outputs, scene, self.scene_error = value
        self.outputs, self.scene_outputs = list(outputs), list(scene)
        self.updated.emit("done", 100.0, dict(self.job))
        self._end("succeeded", "")

    # --- cancel and end -------------------------------------------------------------------

    def cancel(self) -> None:
        """Abort what runs now and cancel the job on the backend; ends as "cancelled"."""
        if self.ended_already or self.cancelling:
            return
        self.cancelling = True
        self.timer.stop()
        if self.task is not None:
            self.task.cancel()  # its end goes on with _cancel_remote
            return
        self._abort_reply()
        self._cancel_remote()

    def _abort_reply(self):
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.abort()
            reply.deleteLater()

    def _cancel_remote(self) -> None:
        """DELETE the job (best effort: a backend that is gone cancels nothing), then end."""
        if not self.job_id:
            self._end("cancelled", "cancelled")
            return
        self.reply = self._send_async(f"{JOBS_PATH}/{self.job_id}", "DELETE", CANCEL_TIMEOUT_MS)
        self.reply.finished.connect(self._cancel_answered)

    @pyqtSlot()
    def _cancel_answered(self) -> None:
        reply, self.reply = self.reply, None
        if reply is not None:
            reply.deleteLater()
        self._end("cancelled", "cancelled")

    def _end(self, state: str, message: str) -> None:
        if self.ended_already:
            return
        self.timer.stop()
        self.state, self.message = state, message
        # No step runs now (each ends before this), and nothing reads the exported inputs
        # after the end (the full-scene set is written in the download step): they go.
        jobs.remove_inputs(self.request)
        self.ended.emit(self)

    def shutdown(self) -> None:
        """Plugin unload: stop without telling anyone; cancel the job on the backend."""
        for signal in (self.updated, self.ended):
            with contextlib.suppress(TypeError):  # nothing connected
                signal.disconnect()
        if self.ended_already:
            return
        self.cancelling = True
        self.timer.stop()
        if self.task is not None:  # its end removes the inputs
            task, self.task = self.task, None
            task.done_callbacks[:] = [functools.partial(_cancel_orphan, self.request)]
            task.cancel()
        else:
            jobs.remove_inputs(self.request)
        self._abort_reply()
        if self.job_id:  # fire and forget: the reply belongs to the network manager
            reply = self._send_async(f"{JOBS_PATH}/{self.job_id}", "DELETE", CANCEL_TIMEOUT_MS)
            reply.finished.connect(reply.deleteLater)
        self.state, self.message = "cancelled", "cancelled"
