"""Jobs in the background and the JobManager that the dock shows.

Each job is a `runner.JobRunner`: short QgsTasks for the blocking steps (export + submit,
download) and polling from the main thread in between, so waiting jobs hold no thread of
QGIS's pool. Cancelling (from the dock, or from QGIS's task manager while a step runs) aborts
the running request and asks the backend to cancel the job. Results are added and errors
and the backend's warnings reported on the main thread, when the job has ended.
"""

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject
from qgis.PyQt.QtCore import QObject, pyqtSignal

from . import report, settings
from .jobs import EditRequest
from .results import add_result_layer
from .runner import JobRunner

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
    runner: object = field(default=None, repr=False)
    warnings: list = field(default_factory=list)  # the backend's warnings about the result
    report: dict = field(default_factory=dict)  # the backend's report of a finished job
    created: str = ""  # when the backend created it (jobs listed from the backend)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def source_name(self) -> str:
        """The name of the raster layer the job edits."""
        if self.request is not None:
            return self.request.source.name
        return str(self.report.get("source_layer") or "")

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


class JobManager(QObject):
    """Starts jobs as tasks, keeps their records, adds results, reports errors."""

    jobAdded = pyqtSignal(object)
    jobChanged = pyqtSignal(object)
    resultsAdded = pyqtSignal(object, list)  # record, the layers added

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
        self._run(record, JobRunner(request, self.task_manager, parent=self))
        self.records.append(record)
        self.jobAdded.emit(record)
        record.runner.start()
        return record

    def _run(self, record, runner):
        record.runner = runner
        runner.updated.connect(lambda s, p, j, r=record: self._on_status(r, s, p, j))
        runner.ended.connect(lambda _runner, r=record: self._on_done(r))

    def cancel(self, record: JobRecord) -> None:
        if record.runner is not None and not record.finished:
            record.stage = "cancelling"
            self.jobChanged.emit(record)
            record.runner.cancel()

    def cancel_all(self) -> None:
        for record in self.records:
            self.cancel(record)

    def shutdown(self) -> None:
        """Plugin unload: cancel running jobs and detach them from this (dying) manager, so
        that steps ending later touch nothing that was deleted."""
        for record in self.records:
            if record.runner is not None:
                record.runner.shutdown()
                record.runner = None
                if not record.finished:
                    record.state, record.message = "cancelled", "cancelled (plugin unloaded)"

    def _on_status(self, record, stage, progress, job):
        if record.finished:
            return
        # Final states come from the job's end only (results downloaded, layers added).
        record.state = stage if stage in ACTIVE_STATES else "finishing"
        record.stage = str(job.get("stage") or stage)
        record.progress = progress
        record.job_id = str(job.get("id") or record.job_id)
        record.message = str(job.get("message") or "")
        self.jobChanged.emit(record)

    def _on_done(self, record):
        runner = record.runner
        record.runner = None
        record.job_id = runner.job_id or record.job_id
        record.report = report.job_report(runner.job)
        record.warnings = report.job_warnings(runner.job)
        if runner.state == "cancelled":
            record.state, record.message = "cancelled", runner.message or "cancelled"
            self._push(f"“{record.prompt}” was cancelled.", Qgis.MessageLevel.Info, 5)
        elif runner.state == "succeeded" and runner.outputs:
            record.state, record.progress, record.outputs = "succeeded", 100.0, runner.outputs
            record.message = f"{len(runner.outputs)} result(s) in {runner.outputs[0].parent}"
            if settings.option("add_results"):
                self.add_results(record)
            if record.warnings:
                text = "; ".join(record.warnings)
                self._push(
                    f"“{record.prompt}” finished with warnings: {text}",
                    Qgis.MessageLevel.Warning,
                    15,
                )
            else:
                self._push(
                    f"“{record.prompt}” finished: {record.message}", Qgis.MessageLevel.Success, 5
                )
        else:
            record.state, record.message = "failed", runner.message or "the job failed"
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
        if layers:
            self.resultsAdded.emit(record, layers)
        return layers

    def _push(self, text, level, duration):
        if self.message_bar is not None:
            self.message_bar.pushMessage("RS Edit", text, level, duration)
