"""Jobs in the background and the JobManager that the dock shows.

Each job is a `runner.JobRunner`: short QgsTasks for the blocking steps (export + submit,
download) and polling from the main thread in between, so waiting jobs hold no thread of
QGIS's pool. Cancelling (from the dock, or from QGIS's task manager while a step runs) aborts
the running request and asks the backend to cancel the job. Results are added and errors
and the backend's warnings reported on the main thread, when the job has ended.
"""

import contextlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsProject
from qgis.PyQt.QtCore import QObject, QTimer, pyqtSignal, pyqtSlot

from . import messages, report, settings
from .client import (
    JOBS_PATH,
    BackendError,
    purge_path,
    reply_json,
    send_async,
    validate_base_url,
)
from .jobs import EditRequest, job_message
from .results import add_result_layer
from .runner import CANCEL_TIMEOUT_MS, JobRunner

LOG_TAG = "RS Edit"
HISTORY_LIMIT = 50  # the backend's most recent jobs listed in the dock
HISTORY_TIMEOUT_MS = 10_000
HISTORY_REFRESH_MS = 5000  # listed jobs that have not ended are listed again this often
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
    scene_outputs: list = field(default_factory=list)  # full-scene pre/post/mask files
    runner: object = field(default=None, repr=False)
    warnings: list = field(default_factory=list)  # the backend's warnings about the result
    report: dict = field(default_factory=dict)  # the backend's report of a finished job
    created: str = ""  # when the backend created it (jobs listed from the backend)
    backend_url: str = ""  # the backend of a job listed from it (no request)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def listed(self) -> bool:
        """Listed from the backend's history (`GET /v1/jobs`), not started in this session."""
        return self.request is None

    @property
    def backend(self) -> str:
        return self.request.base_url if self.request is not None else self.backend_url

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


def _listed_prompt(job: dict) -> str:
    options = job.get("options") if isinstance(job.get("options"), dict) else {}
    return str(options.get("prompt") or job.get("prompt") or "(no prompt)")


def show_listed(record: JobRecord, job: dict) -> None:
    """Fill a listed record from the backend's job JSON."""
    status = str(job.get("status") or "queued")
    record.state = status
    record.stage = str(job.get("stage") or status)
    try:
        record.progress = max(0.0, min(100.0, float(job.get("progress") or 0)))
    except (TypeError, ValueError):
        record.progress = 0.0
    record.message = job_message(job)
    if record.message == record.stage or status == "succeeded":
        record.message = ""
    record.report = report.job_report(job)
    record.warnings = report.job_warnings(job)
    record.created = str(job.get("created") or record.created or "")


class JobManager(QObject):
    """Starts jobs as tasks, keeps their records, adds results, reports errors; lists the
    backend's earlier jobs (`load_history`), so the list survives a restart of QGIS."""

    jobAdded = pyqtSignal(object)
    jobChanged = pyqtSignal(object)
    resultsAdded = pyqtSignal(object, list)  # record, the layers added
    jobRemoved = pyqtSignal(object)
    historyLoaded = pyqtSignal(int)  # how many jobs the backend listed (-1: no list)

    def __init__(self, message_bar=None, project=None, task_manager=None, parent=None):
        super().__init__(parent)
        self.message_bar = message_bar
        self.project = project
        self.task_manager = task_manager or QgsApplication.taskManager()
        self.records: list[JobRecord] = []
        self.history_error = ""  # why the last listing failed ("" when it worked)
        self._history_reply = None
        self._history_source = ("", "")  # (backend URL, token) of the listing
        self._cancel_replies = []  # (reply, record): listed jobs being cancelled
        self._purge_replies = []  # (reply, record, token): jobs being deleted on the backend
        self.history_timer = QTimer(self)  # follows listed jobs that have not ended yet
        self.history_timer.setSingleShot(True)
        self.history_timer.timeout.connect(self._refresh_history)

    # --- the backend's history --------------------------------------------------------------

    def load_history(self, base_url: str, token: str | None = None) -> bool:
        """List the backend's recent jobs (`GET /v1/jobs`, asynchronously): each job this
        manager does not show yet gets a row (after this session's jobs, newest first), with
        its state, prompt, report and warnings; listed jobs that have not ended are listed
        again every HISTORY_REFRESH_MS until they end. False for an invalid URL."""
        try:
            base_url = validate_base_url(base_url)
        except BackendError as exc:
            self.history_error = str(exc)
            return False
        if self._history_reply is not None:
            if self._history_source == (base_url, token or ""):
                return True  # that listing is on its way
            self._abort_history()
        self.history_timer.stop()
        self._history_source = (base_url, token or "")
        path = f"{JOBS_PATH}?limit={HISTORY_LIMIT}"
        self._history_reply = send_async(base_url, token, path, "GET", HISTORY_TIMEOUT_MS)
        # A decorated slot, not a lambda holding the reply (see BackendClient._exchange).
        self._history_reply.finished.connect(self._history_answered)
        return True

    def stop_history(self) -> None:
        """Stop following listed jobs (the dock is hidden, the plugin unloads)."""
        self.history_timer.stop()
        self._abort_history()

    def _abort_history(self):
        reply, self._history_reply = self._history_reply, None
        if reply is not None:
            reply.abort()
            reply.deleteLater()

    def _refresh_history(self):
        self.load_history(*self._history_source)

    @pyqtSlot()
    def _history_answered(self):
        reply, self._history_reply = self._history_reply, None
        if reply is None:  # aborted
            return
        _status, body, reason = reply_json(reply)
        listed = body.get("jobs") if isinstance(body, dict) else None
        base_url = self._history_source[0]
        if not isinstance(listed, list):
            self.history_error = f"the backend's job list at {base_url}: {reason or 'no list'}"
            QgsMessageLog.logMessage(self.history_error, LOG_TAG, Qgis.MessageLevel.Warning)
            self.historyLoaded.emit(-1)
            return
        self.history_error = ""
        known = {(r.backend, r.job_id): r for r in self.records if r.job_id}
        for job in listed:  # newest first
            if not isinstance(job, dict) or not job.get("id"):
                continue
            record = known.get((base_url, str(job["id"])))
            if record is None:
                record = JobRecord(next(_ids), _listed_prompt(job), None, job_id=str(job["id"]))
                record.backend_url = base_url
                show_listed(record, job)
                self.records.append(record)
                self.jobAdded.emit(record)
            elif record.listed and not record.finished:
                show_listed(record, job)
                self.jobChanged.emit(record)
        if any(r.listed and not r.finished and r.backend == base_url for r in self.records):
            self.history_timer.start(HISTORY_REFRESH_MS)
        self.historyLoaded.emit(len(listed))

    def _cancel_listed(self, record: JobRecord) -> None:
        """DELETE a listed job that has not ended; the answer (the job) updates its row."""
        token = self._history_source[1] if self._history_source[0] == record.backend else ""
        path = f"{JOBS_PATH}/{record.job_id}"
        reply = send_async(record.backend, token, path, "DELETE", CANCEL_TIMEOUT_MS)
        self._cancel_replies.append((reply, record))
        reply.finished.connect(self._listed_cancel_answered)

    @pyqtSlot()
    def _listed_cancel_answered(self):
        for reply, record in list(self._cancel_replies):
            if not reply.isFinished():
                continue
            self._cancel_replies.remove((reply, record))
            _status, job, reason = reply_json(reply)
            if isinstance(job, dict) and job.get("status"):
                show_listed(record, job)
                if not record.finished and not self.history_timer.isActive():
                    self.history_timer.start(HISTORY_REFRESH_MS)  # cancelled at its next step
            else:
                record.stage = record.state
                self._push(
                    f"“{record.prompt}” could not be cancelled: {reason}",
                    Qgis.MessageLevel.Warning,
                    8,
                )
            self.jobChanged.emit(record)

    # --- deleting a job on the backend --------------------------------------------------------

    def _token_for(self, record: JobRecord) -> str:
        if record.request is not None:
            return record.request.token
        if self._history_source[0] == record.backend:
            return self._history_source[1]
        return settings.token() if settings.backend_url() == record.backend else ""

    def purge(self, record: JobRecord) -> bool:
        """Delete an ended job and its files on the backend (`DELETE ...?purge=true`,
        asynchronously); a job that has not ended is cancelled instead, never purged. False
        when nothing was sent (no job id)."""
        if not record.job_id or not record.backend:
            return False
        if not record.finished:
            self.cancel(record)
            return True
        token = self._token_for(record)
        path = purge_path(record.job_id)
        reply = send_async(record.backend, token, path, "DELETE", CANCEL_TIMEOUT_MS)
        self._purge_replies.append((reply, record, token))
        reply.finished.connect(self._purge_answered)
        return True

    @pyqtSlot()
    def _purge_answered(self):
        for reply, record, token in list(self._purge_replies):
            if not reply.isFinished():
                continue
            self._purge_replies.remove((reply, record, token))
            status, _body, reason = reply_json(reply)
            if status in (200, 404):  # gone (404: it was gone already)
                QgsMessageLog.logMessage(
                    f"job {record.job_id} deleted on {record.backend}", LOG_TAG
                )
            elif status == 409:  # still queued or running there: cancelled, not purged
                path = f"{JOBS_PATH}/{record.job_id}"
                cancel = send_async(record.backend, token, path, "DELETE", CANCEL_TIMEOUT_MS)
                cancel.finished.connect(cancel.deleteLater)
                self._push(
                    f"“{record.prompt}” is still running on the backend: it was cancelled, "
                    "not deleted (delete it once it has stopped)",
                    Qgis.MessageLevel.Warning,
                    10,
                )
            else:
                self._push(
                    f"“{record.prompt}” could not be deleted on the backend: {reason}",
                    Qgis.MessageLevel.Warning,
                    10,
                )

    # --- this session's jobs -----------------------------------------------------------------

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
        if record.finished:
            return
        if record.runner is not None:
            record.stage = "cancelling"
            self.jobChanged.emit(record)
            record.runner.cancel()
        elif record.listed and record.job_id:
            record.stage = "cancelling"
            self.jobChanged.emit(record)
            self._cancel_listed(record)

    def cancel_all(self) -> None:
        """Cancel this session's jobs (listed ones from earlier sessions are left alone)."""
        for record in self.records:
            if not record.listed:
                self.cancel(record)

    def shutdown(self) -> None:
        """Plugin unload: cancel running jobs and detach them from this (dying) manager, so
        that steps ending later touch nothing that was deleted."""
        self.stop_history()
        for reply, _record in self._cancel_replies:
            with contextlib.suppress(TypeError):
                reply.finished.disconnect(self._listed_cancel_answered)
        self._cancel_replies = []
        for reply, _record, _token in self._purge_replies:
            with contextlib.suppress(TypeError):
                reply.finished.disconnect(self._purge_answered)
        self._purge_replies = []
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
        job_id = str(job.get("id") or record.job_id)
        if job_id and job_id != record.job_id:
            record.job_id = job_id
            self._drop_listed(record)
        record.message = str(job.get("message") or "")
        self.jobChanged.emit(record)

    def _drop_listed(self, record):
        """A listing that came while `record` was being submitted may show its job already:
        that row goes (this session's row follows the job)."""
        for other in list(self.records):
            if other.listed and (other.backend, other.job_id) == (record.backend, record.job_id):
                self.records.remove(other)
                self.jobRemoved.emit(other)

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
            record.scene_outputs = list(runner.scene_outputs)
            if record.scene_outputs:
                record.message += f", with {len(record.scene_outputs)} full-scene file(s)"
            if runner.scene_error:
                record.warnings.append(runner.scene_error)
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
        messages.push(self.message_bar, text, level, duration)
