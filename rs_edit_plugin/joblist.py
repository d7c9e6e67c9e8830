"""The dock's job list: one row per job (title, stage, progress), its buttons and context
menu (Details…, Add result to map, Zoom to result, Open folder, Re-run with another prompt or
seed…, Remove from list, Cancel), and the details window with the backend's warnings and
report. A mixin of RsEditDock, which provides `jobs` (the JobManager), `canvas()` and
`_push(text, level)`."""

import contextlib
import dataclasses
from pathlib import Path

from qgis.core import Qgis, QgsCoordinateTransform, QgsCsException, QgsProject
from qgis.PyQt.QtCore import Qt, QUrl
from qgis.PyQt.QtGui import QDesktopServices
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from . import jobs, report, results, settings


class JobListMixin:
    """The "Jobs" box of the dock."""

    def _jobs_box(self, parent):
        box = QGroupBox("Jobs", parent)
        layout = QVBoxLayout(box)
        self.job_tree = QTreeWidget(box)
        self.job_tree.setObjectName("jobTree")
        self.job_tree.setHeaderLabels(["Job", "Stage", "Progress"])
        self.job_tree.setRootIsDecorated(False)
        self.job_tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        layout.addWidget(self.job_tree)
        row = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel", box)
        self.cancel_button.setObjectName("cancelJobButton")
        self.add_button = QPushButton("Add result", box)
        self.add_button.setObjectName("addResultButton")
        row.addWidget(self.cancel_button)
        row.addWidget(self.add_button)
        layout.addLayout(row)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.add_button.clicked.connect(self.add_selected)
        self.job_tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.job_tree.customContextMenuRequested.connect(self._job_menu)
        self.job_tree.itemDoubleClicked.connect(lambda _item, _col: self.show_details())
        self.details_dialog = None
        self.removed_jobs = set()  # (backend, job id) removed from the list: not listed again
        self.job_tree.itemSelectionChanged.connect(self._update_job_buttons)
        self._update_job_buttons()
        return box

    def _job_added(self, record):
        if record.listed and (record.backend, record.job_id) in self.removed_jobs:
            self.jobs.records.remove(record)  # the backend's history lists it again
            return
        item = QTreeWidgetItem(["", "", ""])
        item.setData(0, Qt.ItemDataRole.UserRole, record.key)
        self._show_job(item, record)
        if record.listed:  # the backend's history, newest first, below this session's jobs
            self.job_tree.addTopLevelItem(item)
        else:
            self.job_tree.insertTopLevelItem(0, item)
            self.job_tree.setCurrentItem(item)
        self._update_job_buttons()

    def _job_removed(self, record):
        item = self._item(record)
        if item is not None:
            self.job_tree.takeTopLevelItem(self.job_tree.indexOfTopLevelItem(item))
            self._update_job_buttons()

    def _item(self, record):
        for i in range(self.job_tree.topLevelItemCount()):
            item = self.job_tree.topLevelItem(i)
            if item.data(0, Qt.ItemDataRole.UserRole) == record.key:
                return item
        return None

    def _job_changed(self, record):
        item = self._item(record)
        if item is None:
            return
        self._show_job(item, record)
        self._update_job_buttons()

    @staticmethod
    def job_row(record) -> list[str]:
        """The row's texts: "<layer> – <prompt>"; the stage in words (with the backend's
        message); the progress, or the end state once the job has finished."""
        status = record.stage_text
        if record.message and record.message != status:
            status = f"{status}: {record.message}"
        if record.warnings:
            status += f" ({len(record.warnings)} warning(s))"
        progress = record.state if record.finished else f"{record.progress:.0f}%"
        return [record.title, status, progress]

    def _show_job(self, item, record):
        texts = self.job_row(record)
        for column, text in enumerate(texts):
            item.setText(column, text)
        tip = [record.title] + ([f"backend job {record.job_id}"] if record.job_id else [])
        if record.listed:
            tip.append(f"listed from {record.backend}, created {record.created or '?'}")
        tip += [f"⚠ {w}" for w in record.warnings] + report.key_figures(record.report)
        if record.finished and (record.report or record.warnings):
            tip.append("Right-click: Details…")
        for column in range(3):
            item.setToolTip(column, "\n".join(tip if column == 0 else [texts[column]] + tip[1:]))

    def selected_record(self):
        item = self.job_tree.currentItem()
        if item is None:
            return None
        key = item.data(0, Qt.ItemDataRole.UserRole)
        return next((r for r in self.jobs.records if r.key == key), None)

    def _update_job_buttons(self):
        record = self.selected_record()
        self.cancel_button.setEnabled(record is not None and not record.finished)
        self.add_button.setEnabled(self._can_add(record))

    @staticmethod
    def _can_add(record) -> bool:
        """A succeeded job whose results were downloaded (not a job only listed)."""
        return record is not None and record.state == "succeeded" and bool(record.outputs)

    # --- the row's context menu -----------------------------------------------------------

    def job_actions(self, record):
        """(text, callable, enabled) of the job row's context menu."""
        return [
            ("Details…", lambda: self.show_details(record), record is not None),
            ("Add result to map", lambda: self.add_result(record), self._can_add(record)),
            (
                "Zoom to result",
                lambda: self.zoom_to_result(record),
                self.result_extent(record) is not None,
            ),
            (
                "Open folder",
                lambda: self.open_folder(record),
                self.result_folder(record) is not None,
            ),
            (
                "Re-run with another prompt or seed…",
                lambda: self.rerun(record),
                self._can_rerun(record),
            ),
            ("Remove from list", lambda: self.remove_from_list(record), self._can_remove(record)),
            (
                "Cancel",
                lambda: self.jobs.cancel(record),
                record is not None and not record.finished,
            ),
        ]

    def job_menu(self, record) -> QMenu:
        """The context menu of `record`'s row (its actions disabled where they cannot work)."""
        menu = QMenu(self.job_tree)
        menu.setObjectName("jobMenu")
        for text, slot, enabled in self.job_actions(record):
            action = menu.addAction(text)
            action.setEnabled(enabled)
            action.triggered.connect(slot)
        return menu

    def _job_menu(self, pos):
        item = self.job_tree.itemAt(pos)
        if item is not None:  # the row right-clicked, even when another one was selected
            self.job_tree.setCurrentItem(item)
        record = self.selected_record()
        if record is None:
            return
        self.job_menu(record).exec_(self.job_tree.viewport().mapToGlobal(pos))

    def result_layers(self, record) -> list:
        """The job's result layers that are still in the project."""
        if record is None:
            return []
        project = QgsProject.instance()
        return [layer for layer in map(project.mapLayer, record.layers) if layer is not None]

    def result_extent(self, record):
        """(extent, CRS) of the job's result: its layer's on the map, else its tile's (a result
        covers its tile exactly); None without a result."""
        layers = self.result_layers(record)
        if layers:
            return layers[-1].extent(), layers[-1].crs()
        if self._can_add(record) and record.request is not None:
            window = record.request.window
            return window.extent, window.crs
        return None

    def zoom_to_result(self, record) -> bool:
        target, canvas = self.result_extent(record), self.canvas()
        if target is None or canvas is None:
            return False
        extent, crs = target
        to_canvas = QgsCoordinateTransform(
            crs, canvas.mapSettings().destinationCrs(), QgsProject.instance()
        )
        try:
            canvas.setExtent(to_canvas.transformBoundingBox(extent))
        except QgsCsException:
            return False
        canvas.refresh()
        return True

    @staticmethod
    def result_folder(record) -> Path | None:
        """The folder holding the job's result files (None before there are any)."""
        if record is None:
            return None
        files = [Path(p) for p in list(record.outputs) + list(record.scene_outputs)]
        existing = [p for p in files if p.is_file()]
        return existing[0].parent if existing else None

    def open_folder(self, record) -> bool:
        folder = self.result_folder(record)
        return folder is not None and self.open_url(QUrl.fromLocalFile(str(folder)))

    def open_url(self, url: QUrl) -> bool:
        """The system's file manager (or browser) for `url`; tests replace this."""
        return QDesktopServices.openUrl(url)

    @staticmethod
    def _can_rerun(record) -> bool:
        """A job of this session: its area, ROI and options are known (a job only listed from
        the backend has no tile to send again)."""
        return record is not None and record.request is not None

    def rerun(self, record):
        """Ask for a prompt and seed, then run the job's edit again with them: the same layer,
        area, ROI and other options, to the backend the dock uses now. Returns the new record
        (None when the user cancels or the job cannot start)."""
        if not self._can_rerun(record):
            return None
        answer = self.ask_prompt_and_seed(record.request.prompt, record.request.fields.get("seed"))
        if answer is None:
            return None
        try:
            request = rerun_request(record.request, *answer)
        except (jobs.JobError, settings.TokenError) as exc:
            self._push(f"Cannot re-run: {exc}", Qgis.MessageLevel.Warning)
            return None
        return self.jobs.start(request)

    def ask_prompt_and_seed(self, prompt: str, seed):
        """(prompt, seed) from a small dialog, seed -1 for a random one; None when cancelled.
        Tests replace this."""
        dialog = PromptSeedDialog(prompt, seed, self)
        if dialog.exec_() != QDialog.DialogCode.Accepted:
            return None
        return dialog.values()

    @staticmethod
    def _can_remove(record) -> bool:
        return record is not None and record.finished

    def remove_from_list(self, record) -> bool:
        """Take an ended job's row away, asking whether to also delete the job and its files
        on the backend (`DELETE ...?purge=true`); the local result files and layers stay. A
        job kept on the backend is not listed again in this session. A job that has not ended
        is cancelled, never purged (and stays listed until it has ended)."""
        if record is None or record not in self.jobs.records:
            return False
        if not record.finished:
            self.jobs.cancel(record)
            return False
        purge = False
        if record.job_id and record.backend:
            answer = self.ask_purge(record)
            if answer is None:  # the question was cancelled: nothing happens
                return False
            purge = bool(answer)
            self.removed_jobs.add((record.backend, record.job_id))
        self.jobs.records.remove(record)
        self.jobs.jobRemoved.emit(record)
        if purge:
            self.jobs.purge(record)
        return True

    def ask_purge(self, record):
        """True: also delete the job and its files on the backend; False: only take it off
        the list; None: cancelled. Tests replace this."""
        answer = QMessageBox.question(
            self,
            "RS Edit",
            f"Remove “{record.prompt}” from the list.\n\nAlso delete the job and its files "
            f"(upload, results) on the backend {record.backend}? Result files already "
            "downloaded and layers on the map stay.",
            QMessageBox.StandardButton.Yes
            | QMessageBox.StandardButton.No
            | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.No,
        )
        if answer == QMessageBox.StandardButton.Cancel:
            return None
        return answer == QMessageBox.StandardButton.Yes

    def show_details(self, record=None):
        """A (non-modal) window with the job's warnings, key figures and full report."""
        record = record or self.selected_record()
        if record is None:
            return None
        dialog = QDialog(self)
        dialog.setObjectName("jobDetailsDialog")
        dialog.setWindowTitle(f"RS Edit job: {record.title}")
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        layout = QVBoxLayout(dialog)
        text = QPlainTextEdit(report.details_text(record), dialog)
        text.setObjectName("jobDetailsText")
        text.setReadOnly(True)
        layout.addWidget(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, dialog)
        buttons.rejected.connect(dialog.close)
        layout.addWidget(buttons)
        dialog.resize(520, 420)
        dialog.show()
        self.details_dialog = dialog
        return dialog

    def cancel_selected(self):
        record = self.selected_record()
        if record is not None:
            self.jobs.cancel(record)

    def add_selected(self):
        self.add_result(self.selected_record())

    def add_result(self, record):
        if self._can_add(record):
            self.jobs.add_results(record)


def rerun_request(request: jobs.EditRequest, prompt: str, seed) -> jobs.EditRequest:
    """`request` with another prompt and seed (-1 or None: a random one), new result files,
    and the backend and token the dock uses now (a managed backend may have restarted on
    another port with another token). Raises JobError for an empty prompt."""
    checked = jobs.job_fields(prompt, seed=seed)
    fields = {**request.fields, "prompt": checked["prompt"], "seed": checked["seed"]}
    out_dir = request.out_stem.parent
    return dataclasses.replace(
        request,
        fields=fields,
        out_stem=results.result_stem(fields["prompt"], out_dir),
        base_url=settings.backend_url(),
        token=settings.token(),
    )


class PromptSeedDialog(QDialog):
    """The prompt and seed of a re-run, prefilled with the job's."""

    def __init__(self, prompt: str, seed, parent=None):
        super().__init__(parent)
        self.setObjectName("rerunDialog")
        self.setWindowTitle("RS Edit: re-run with another prompt or seed")
        form = QFormLayout(self)
        self.prompt_edit = QLineEdit(prompt or "", self)
        self.prompt_edit.setObjectName("rerunPromptEdit")
        self.prompt_edit.setMinimumWidth(320)
        form.addRow("Prompt", self.prompt_edit)
        self.seed_spin = QSpinBox(self)
        self.seed_spin.setObjectName("rerunSeedSpin")
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setSpecialValueText("random")
        self.seed_spin.setValue(-1)  # random, unless the job recorded its seed
        with contextlib.suppress(TypeError, ValueError):
            self.seed_spin.setValue(int(seed))
        form.addRow("Seed", self.seed_spin)
        buttons = QDialogButtonBox(
            QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, self
        )
        buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Edit")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def values(self) -> tuple[str, int]:
        return self.prompt_edit.text(), self.seed_spin.value()
