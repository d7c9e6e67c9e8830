"""The dock's job list: one row per job (title, stage, progress), its buttons and context
menu (Details…, Add result, Cancel), and the details window with the backend's warnings and
report. A mixin of RsEditDock, which provides `jobs` (the JobManager)."""

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QGroupBox,
    QHBoxLayout,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
)

from . import report


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
        self.job_tree.itemSelectionChanged.connect(self._update_job_buttons)
        self._update_job_buttons()
        return box

    def _job_added(self, record):
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

    def job_actions(self, record):
        """(text, callable, enabled) of the job row's context menu."""
        return [
            ("Details…", lambda: self.show_details(record), record is not None),
            ("Add result", self.add_selected, self._can_add(record)),
            ("Cancel", self.cancel_selected, record is not None and not record.finished),
        ]

    def _job_menu(self, pos):
        record = self.selected_record()
        if record is None:
            return
        menu = QMenu(self.job_tree)
        for text, slot, enabled in self.job_actions(record):
            action = menu.addAction(text)
            action.setEnabled(enabled)
            action.triggered.connect(slot)
        menu.exec_(self.job_tree.viewport().mapToGlobal(pos))

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
        record = self.selected_record()
        if self._can_add(record):
            self.jobs.add_results(record)
