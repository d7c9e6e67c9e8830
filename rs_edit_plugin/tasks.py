"""Jobs in the background: one QgsTask per job, and the JobManager that the dock shows.

The task runs `jobs.run_job` in QGIS's task manager (the GUI never waits on the network);
cancelling it (from the dock or from QGIS's task manager) aborts the running request and
asks the backend to cancel the job. Results are added and errors reported on the main
thread, when the task has finished.
"""

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsFeedback, QgsMessageLog, QgsProject, QgsTask
from qgis.PyQt.QtCore import QObject, pyqtSignal

from . import settings
from .client import BackendError, CancelledError
from .jobs import EditRequest, JobError, run_job
from .results import add_result_layer

LOG_TAG = "RS Edit"
_ids = itertools.count(1)
ACTIVE_STATES = ("exporting", "uploading", "queued", "running")
FINAL_STATES = ("succeeded", "failed", "cancelled")
# Short human labels for the plugin's and the backend's internal stage names.
STAGE_LABELS = {
    "submitting": "submitting",
    "exporting": "exporting the tile",
    "uploading": "uploading",
    "queued": "waiting in the queue",
    "running": "running",
    "finishing": "finishing",
    "downloading": "downloading the result",
    "done": "finishing",
    "cancelling": "cancelling",
    "load": "loading the models",
    "loading": "loading the models",
    "encode": "reading the image",
    "synthesize": "drawing the edit",
    "detail": "adding detail",
    "guard": "checking realism",
    "windows": "editing windows",
    "finetune": "fine-tuning",
    "blend": "blending the edit in",
}


def stage_label(stage: str) -> str:
    """A short label a person understands; unknown names pass through unchanged."""
    return STAGE_LABELS.get(str(stage or "").strip().lower(), str(stage or ""))


@dataclass
class JobRecord:
    """What the job list shows about one job."""

    key: int
    prompt: str
    request: EditRequest = field(repr=False)
    state: str = "submitting"  # submitting, queued, running, ..., succeeded/failed/cancelled
    progress: float = 0.0
    stage: str = ""
    message: str = ""
    job_id: str = ""
    outputs: list = field(default_factory=list)
    layers: list = field(default_factory=list)  # ids of the result layers added
    task: object = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def source_name(self) -> str:
        """The name of the raster layer the job edits."""
        return self.request.source.name if self.request is not None else ""

    @property
    def title(self) -> str:
        """What tells this job apart in a list: "<layer> – <prompt>"."""
        return f"{self.source_name} – {self.prompt}" if self.source_name else self.prompt

    @property
    def stage_text(self) -> str:
        """The human label of where the job is (its end state once finished)."""
        if self.finished:
            return self.state
        return stage_label(self.stage or self.state)


class EditJobTask(QgsTask):
    """One job. Signals are emitted from the worker thread and delivered on the main one."""

    statusChanged = pyqtSignal(str, float, dict)  # state, overall progress, backend job JSON

    def __init__(self, request: EditRequest):
        title = f"{request.source.name} – {request.prompt[:50]}"
        super().__init__(f"RS Edit: {title}", QgsTask.Flag.CanCancel)
        self.request = request
        self.feedback = QgsFeedback()
        self.outputs: list[Path] = []
        self.error = ""
        self.cancelled = False
        self.job_id = ""
        self.done_callbacks = []

    def cancel(self):
        """From the dock or the task manager: abort the request now, then the job."""
        self.feedback.cancel()
        super().cancel()

    def _update(self, stage, progress, job):
        if job.get("id"):
            self.job_id = str(job["id"])
        self.setProgress(progress)
        self.statusChanged.emit(stage, float(progress), dict(job))

    def run(self) -> bool:
        """True when the job succeeded or was cancelled: QGIS announces every task that
        returns False as "Task failed", and a cancel the user asked for is no failure (the
        plugin reports it as cancelled). False only for a real error, kept in `error`."""
        try:
            if self.isCanceled():
                raise CancelledError("cancelled")
            self.outputs = run_job(self.request, self.feedback, self._update)
            return True
        except CancelledError:
            self.cancelled = True
            return True
        except (BackendError, JobError) as exc:
            if self.isCanceled():  # e.g. the aborted request's own error: still a cancel
                self.cancelled = True
                return True
            self.error = str(exc)
        except Exception as exc:  # a bug must end the task with a message, not kill QGIS
            self.error = f"unexpected error: {exc!r}"
        return False

    def finished(self, result: bool):
        if self.isCanceled() and not self.outputs:
            # Cancelled before it ran (QGIS then never calls run) or while it ran.
            self.cancelled = True
        for callback in self.done_callbacks:
            callback(self, result)


class JobManager(QObject):
    """Starts jobs as tasks, keeps their records, adds results, reports errors."""

    jobAdded = pyqtSignal(object)
    jobChanged = pyqtSignal(object)

    def __init__(self, message_bar=None, project=None, task_manager=None, parent=None):
        super().__init__(parent)
        self.message_bar = message_bar
        self.project = project
        self.task_manager = task_manager or QgsApplication.taskManager()
        self.records: list[JobRecord] = []

    def _project(self):
        return self.project or QgsProject.instance()

    def start(self, request: EditRequest) -> JobRecord:
        record = JobRecord(next(_ids), request.prompt, request)
        task = EditJobTask(request)
        record.task = task
        task.statusChanged.connect(lambda s, p, j, r=record: self._on_status(r, s, p, j))
        task.done_callbacks.append(lambda t, ok, r=record: self._on_done(r, ok))
        self.records.append(record)
        self.jobAdded.emit(record)
        self.task_manager.addTask(task)
        return record

    def cancel(self, record: JobRecord) -> None:
        if record.task is not None and not record.finished:
            record.stage = "cancelling"
            self.jobChanged.emit(record)
            record.task.cancel()

    def cancel_all(self) -> None:
        for record in self.records:
            self.cancel(record)

    def shutdown(self) -> None:
        """Plugin unload: cancel running jobs and detach them from this (dying) manager, so
        that tasks ending later touch nothing that was deleted."""
        for record in self.records:
            task = record.task
            if task is None:
                continue
            task.done_callbacks.clear()
            with contextlib.suppress(TypeError):  # nothing connected
                task.statusChanged.disconnect()
            task.cancel()

    def _on_status(self, record, stage, progress, job):
        if record.finished:
            return
        # Final states come from the task's end only (results downloaded, layers added).
        record.state = stage if stage in ACTIVE_STATES else "finishing"
        record.stage = str(job.get("stage") or stage)
        record.progress = progress
        record.job_id = str(job.get("id") or record.job_id)
        record.message = str(job.get("message") or "")
        self.jobChanged.emit(record)

    def _on_done(self, record, ok):
        task = record.task
        record.task = None
        record.job_id = task.job_id or record.job_id
        if task.cancelled:
            record.state, record.message = "cancelled", "cancelled"
            self._push(f"“{record.prompt}” was cancelled.", Qgis.MessageLevel.Info, 5)
        elif ok and task.outputs:
            record.state, record.progress, record.outputs = "succeeded", 100.0, task.outputs
            record.message = f"{len(task.outputs)} result(s) in {task.outputs[0].parent}"
            if settings.option("add_results"):
                self.add_results(record)
            self._push(
                f"“{record.prompt}” finished: {record.message}", Qgis.MessageLevel.Success, 5
            )
        else:
            record.state, record.message = "failed", task.error or "the job failed"
            self._push(f"“{record.prompt}” failed: {record.message}", Qgis.MessageLevel.Critical, 0)
        QgsMessageLog.logMessage(f"job {record.key} {record.state}: {record.message}", LOG_TAG)
        self.jobChanged.emit(record)

    def add_results(self, record: JobRecord) -> list:
        """Add the job's result files as layers (again, when they were removed)."""
        project = self._project()
        source = project.mapLayer(record.request.layer_id)
        layers = []
        variants = len(record.outputs)
        for i, path in enumerate(record.outputs, start=1):
            if not Path(path).is_file():
                self._push(f"result file {path} is missing", Qgis.MessageLevel.Warning, 5)
                continue
            job_settings = dict(record.request.settings_record(), job_id=record.job_id)
            if variants > 1:
                job_settings["variant"] = i
            layer = add_result_layer(path, job_settings, source, project)
            layers.append(layer)
        record.layers = [layer.id() for layer in layers]
        return layers

    def _push(self, text, level, duration):
        if self.message_bar is not None:
            self.message_bar.pushMessage("RS Edit", text, level, duration)
