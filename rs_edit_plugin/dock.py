"""The RS Edit panel: a thin view over settings, area, roi, jobs and tasks.

Widgets carry object names so that tests (and QGIS's state saving) can find them. All logic
with consequences lives in the pure modules; this file only gathers what the user chose.
"""

import contextlib
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsDockWidget, QgsMapLayerComboBox
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QEvent, QObject, Qt, QTimer
from qgis.PyQt.QtWidgets import (
    QAbstractSpinBox,
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLayout,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStyle,
    QVBoxLayout,
    QWidget,
)

from . import area, choices, jobs, local_backend, local_env, messages, roi, settings, weights
from .bands import BandCombo
from .client import Health, HealthMonitor, check_health
from .compare import Compare
from .compat import POLYGON_LAYER_FILTER, RASTER_LAYER_FILTER
from .joblist import JobListMixin
from .local_backend import LocalBackend
from .maptools import EXAMPLE_COLOR, PolygonTool, RectangleTool
from .tasks import JobManager

DOCK_OBJECT_NAME = "RsEditDock"  # QGIS saves/restores dock state by object name

AREA_SOURCES = [
    ("extent", "Current map extent"),
    ("rectangle", "Rectangle drawn on the map"),
    ("selection", "Extent of the selected features"),
]
ROI_SOURCES = [
    ("drawn", "Polygons drawn on the map"),
    ("selected", "Selected features of a polygon layer"),
    ("whole", "The whole area"),
]
OK_STYLE, BAD_STYLE = "color: #1a7f37;", "color: #b42318;"
RANDOM_CLIP_TEXT = (
    "tiny-random has RANDOM weights: the prompt will not steer the edit (tests and demos). "
    "Use a weights file… to add RemoteCLIP."
)


def format_duration(seconds: float) -> str:
    """ "12 s", "4 min", "3 h", "2 days": rounded, as an estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


class WheelGuard(QObject):
    """Keeps the mouse wheel from changing a combo or spin box the user is only scrolling
    past: without focus the box ignores the wheel, and Qt passes it on to the scroll area."""

    def eventFilter(self, watched, event):
        if event.type() == QEvent.Type.Wheel and not watched.hasFocus():
            event.ignore()  # not accepted: the parent (the dock's scroll area) scrolls
            return True  # the box itself never sees it
        return super().eventFilter(watched, event)

    def guard(self, widget) -> None:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # no focus by wheel
        widget.installEventFilter(self)


class RsEditDock(JobListMixin, QgsDockWidget):
    def __init__(self, parent=None, iface=None):
        super().__init__("RS Edit", parent)
        self.setObjectName(DOCK_OBJECT_NAME)
        self.iface = iface
        self.rectangle = None  # (QgsRectangle, crs) of the drawn area
        self.health: Health | None = None
        self.listed_url = ""  # the backend whose jobs were listed last
        canvas = self.canvas()
        self.polygon_tool = PolygonTool(canvas) if canvas is not None else None
        self.rectangle_tool = RectangleTool(canvas) if canvas is not None else None
        # The example area ("make this look like that"), drawn in its own colour.
        self.example_tool = PolygonTool(canvas, EXAMPLE_COLOR) if canvas is not None else None
        self.jobs = JobManager(self.message_bar(), parent=self)

        body = QWidget(self)
        layout = QVBoxLayout(body)
        layout.addWidget(self._backend_box(body))
        layout.addWidget(self._input_box(body))
        layout.addWidget(self._edit_box(body))
        layout.addWidget(self._jobs_box(body))
        layout.addWidget(self._compare_box(body))
        layout.addStretch(1)
        scroll = QScrollArea(self)
        scroll.setObjectName("dockScrollArea")
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)
        self.body = body
        self.wheel_guard = WheelGuard(self)
        for box in body.findChildren(QComboBox) + body.findChildren(QAbstractSpinBox):
            self.wheel_guard.guard(box)
        self._fit_width(scroll, body)

        self.monitor = HealthMonitor(settings.backend_url, settings.token, parent=self)
        self.monitor.updated.connect(self.show_health)
        self.visibilityChanged.connect(self._visibility_changed)
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self._layer_changed(self.layer_combo.currentLayer())
        self._previous_tool = None  # the map tool to go back to after drawing
        if self.polygon_tool is not None:
            self.polygon_tool.polygonsChanged.connect(self._polygons_changed)
            self.polygon_tool.polygonFinished.connect(self._polygon_finished)
            self.rectangle_tool.rectangleDrawn.connect(self._rectangle_drawn)
            self.example_tool.polygonsChanged.connect(self.refresh_labels)
            self.example_tool.polygonFinished.connect(self._example_finished)
        self.jobs.jobAdded.connect(self._job_added)
        self.jobs.jobChanged.connect(self._job_changed)
        self.jobs.jobRemoved.connect(self._job_removed)
        for signal in (self.jobs.jobChanged, self.jobs.jobRemoved):
            signal.connect(self._restart_when_idle)
        self.jobs.resultsAdded.connect(self._results_added)
        self.job_tree.itemSelectionChanged.connect(self._compare_selected)
        self.overlays_visible = True
        canvas = self.canvas()
        if canvas is not None:  # disconnected in cleanup()
            canvas.extentsChanged.connect(self._schedule_labels)
            canvas.selectionChanged.connect(self._schedule_labels)
        self.refresh_labels()

    # --- building -------------------------------------------------------------------------

    def _fit_width(self, scroll, body):
        """Open wide enough for the form (QGIS gave the dock 298 px for 519 px of content,
        cutting the fields off): never narrower than the form, scrolling only vertically;
        and keep the form narrow (long combo items and form rows must not widen it)."""
        for combo in body.findChildren(QComboBox):  # long item texts must not widen the dock
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(4 if combo in self.band_combos else 8)
            # Qt keeps the minimum size hint of the items already there until a style change.
            QApplication.sendEvent(combo, QEvent(QEvent.Type.StyleChange))
        for box_layout in body.findChildren(QLayout):
            if isinstance(box_layout, QFormLayout):  # narrow: fields go below their labels
                box_layout.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
            box_layout.invalidate()
        for child in body.findChildren(QWidget):  # forget the sizes of before
            child.updateGeometry()
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        bar = scroll.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        scroll.setMinimumWidth(body.minimumSizeHint().width() + bar + 2 * scroll.frameWidth())

    def _backend_box(self, parent):
        box = QGroupBox("Backend", parent)
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        row.addWidget(QLabel("Backend URL", box))
        self.url_edit = QLineEdit(settings.backend_url(), box)
        self.url_edit.setObjectName("backendUrlEdit")
        self.url_edit.setPlaceholderText(settings.DEFAULT_BACKEND_URL)
        row.addWidget(self.url_edit)
        layout.addLayout(row)
        row = QHBoxLayout()
        self.check_button = QPushButton("Check backend", box)
        self.check_button.setObjectName("checkBackendButton")
        row.addWidget(self.check_button)
        self.token_button = QPushButton("Access token…", box)
        self.token_button.setObjectName("tokenButton")
        self.token_button.setToolTip(
            "Stored in QGIS's authentication manager (encrypted), never in plain settings"
        )
        row.addWidget(self.token_button)
        layout.addLayout(row)
        self.status_label = self._label("Backend not checked yet.", "statusLabel", box)
        layout.addWidget(self.status_label)
        self.health_label = self._label("", "healthDetailsLabel", box)
        layout.addWidget(self.health_label)
        layout.addWidget(self._local_box(box))
        self.url_edit.editingFinished.connect(self.save_url)
        self.check_button.clicked.connect(self.check_backend)
        self.token_button.clicked.connect(self.ask_token)
        return box

    def _local_box(self, parent):
        """The "Local backend" row: a backend the plugin runs itself (local_backend.py)."""
        widget = QWidget(parent)
        layout = QVBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Local backend", widget))
        self.local_button = QPushButton("Start", widget)
        self.local_button.setObjectName("localBackendButton")
        self.local_button.setToolTip(
            "Run rs-edit serve on this computer (127.0.0.1, a fresh token each start)"
        )
        row.addWidget(self.local_button)
        layout.addLayout(row)
        self.local_label = self._label("Not running.", "localBackendLabel", widget)
        layout.addWidget(self.local_label)
        row = QHBoxLayout()
        self.setup_button = QPushButton("Set up local backend", widget)
        self.setup_button.setObjectName("setupLocalBackendButton")
        self.setup_button.setToolTip(
            "Create a Python environment under the QGIS profile and install rs-edit into it"
        )
        row.addWidget(self.setup_button)
        self.remove_env_button = QPushButton("Remove", widget)
        self.remove_env_button.setObjectName("removeLocalBackendButton")
        self.remove_env_button.setToolTip("Delete the local backend's Python environment")
        row.addWidget(self.remove_env_button)
        layout.addLayout(row)
        self.setup_progress = QProgressBar(widget)
        self.setup_progress.setObjectName("setupProgress")
        self.setup_progress.setRange(0, 100)
        self.setup_progress.hide()
        layout.addWidget(self.setup_progress)
        self.setup_log = QPlainTextEdit(widget)
        self.setup_log.setObjectName("setupLog")
        self.setup_log.setReadOnly(True)
        self.setup_log.setMaximumBlockCount(500)
        self.setup_log.setFixedHeight(90)
        self.setup_log.hide()
        layout.addWidget(self.setup_log)
        self.setup_task = None
        self.setup_button.clicked.connect(self.setup_local_backend)
        self.remove_env_button.clicked.connect(self.remove_local_backend)
        self._refresh_setup_row()
        self.local_backend = LocalBackend(parent=self)
        self.local_backend.stateChanged.connect(self._local_state_changed)
        self.local_button.clicked.connect(self.toggle_local_backend)
        return widget

    def toggle_local_backend(self) -> None:
        if self.local_backend.state in (local_backend.STARTING, local_backend.RUNNING):
            self.local_backend.stop()
        else:
            self.local_backend.start()

    def _refresh_setup_row(self) -> None:
        busy = self.setup_task is not None
        present = local_env.installed(local_backend.env_dir())
        if busy:
            self.setup_button.setText("Cancel setup")
        else:
            self.setup_button.setText("Repair" if present else "Set up local backend")
        self.remove_env_button.setEnabled(
            not busy and local_env.is_environment(local_backend.env_dir())
        )

    def _setup_progress_changed(self, value: float) -> None:
        self.setup_progress.setValue(int(value))

    def _setup_line(self, line: str) -> None:
        self.setup_log.appendPlainText(line)

    def setup_local_backend(self) -> bool:
        """Start (or, while one runs, cancel) the set-up task; Repair reinstalls from scratch."""
        if self.setup_task is not None:
            self.setup_task.cancel()
            return False
        folder = local_backend.env_dir()
        try:
            steps = local_env.plan(local_env.find_python(), folder, local_env.source(), repair=True)
        except local_env.SetupError as exc:
            self._push(str(exc), Qgis.MessageLevel.Critical)
            self._setup_line(f"cannot set up: {exc}")
            self.setup_log.show()
            return False
        self.local_backend.stop()  # it may run from the environment being rebuilt
        task = local_env.SetupTask(steps)
        task.logLine.connect(self._setup_line)
        # Emitted in the task's thread: bound methods of the dock are called in the GUI thread.
        task.progressChanged.connect(self._setup_progress_changed)
        task.taskCompleted.connect(lambda: self._setup_done(task, True))
        task.taskTerminated.connect(lambda: self._setup_done(task, False))
        self.setup_task = task
        self.setup_log.clear()
        self.setup_log.show()
        self.setup_progress.setValue(0)
        self.setup_progress.show()
        self._setup_line(f"Setting up the local backend in {folder}")
        self._refresh_setup_row()
        QgsApplication.taskManager().addTask(task)
        return True

    def _setup_done(self, task, ok: bool) -> None:
        if task is not self.setup_task:
            return
        self.setup_task = None
        self.setup_progress.hide()
        if ok:
            self._setup_line("The local backend is ready: press Start.")
            self._push("Local backend set up.", Qgis.MessageLevel.Success, 5)
        else:
            self._setup_line(f"Set-up stopped: {task.error or 'failed'}")
            self._push(f"Local backend set-up: {task.error or 'failed'}")
        self._refresh_setup_row()

    def remove_local_backend(self) -> bool:
        folder = local_backend.env_dir()
        if not self.confirm(f"Delete the local backend's environment {folder}?"):
            return False
        self.local_backend.stop()
        try:
            local_env.remove(folder)
        except (OSError, local_env.SetupError) as exc:
            self._push(f"Could not remove {folder}: {exc}", Qgis.MessageLevel.Critical)
            return False
        self._setup_line(f"Removed {folder}")
        self._refresh_setup_row()
        return True

    def _local_state_changed(self, state: str) -> None:
        backend = self.local_backend
        active = state in (local_backend.STARTING, local_backend.RUNNING)
        self.local_button.setText("Stop" if active else "Start")
        text = {
            local_backend.STOPPED: "Not running.",
            local_backend.STARTING: "Starting…",
            local_backend.RUNNING: f"Running at {backend.url}.",
            local_backend.FAILED: f"Failed: {backend.reason}",
        }[state]
        self.local_label.setText(text)
        if state == local_backend.RUNNING:
            self.url_edit.setText(backend.url)
            self.check_backend()
        self.update_weights_button()

    def _input_box(self, parent):
        box = QGroupBox("Image, area and ROI", parent)
        form = QFormLayout(box)
        self.layer_combo = QgsMapLayerComboBox(box)
        self.layer_combo.setObjectName("layerCombo")
        self.layer_combo.setFilters(RASTER_LAYER_FILTER)
        form.addRow("Raster layer", self.layer_combo)

        self.band_row = QWidget(box)
        self.band_row.setObjectName("bandRow")
        bands = QHBoxLayout(self.band_row)
        bands.setContentsMargins(0, 0, 0, 0)
        self.band_combos = []
        for name in ("red", "green", "blue"):
            combo = BandCombo(self.band_row)
            combo.setObjectName(f"{name}BandCombo")
            combo.setToolTip(f"The band CLIP sees as {name} (all bands are edited)")
            bands.addWidget(combo)
            self.band_combos.append(combo)
        form.addRow("Bands seen as RGB", self.band_row)

        self.area_combo = self._combo(AREA_SOURCES, settings.option("area_source"), box)
        self.area_combo.setObjectName("areaCombo")
        self.rectangle_button = QPushButton("Draw rectangle", box)
        self.rectangle_button.setObjectName("drawRectangleButton")
        row = QHBoxLayout()
        row.addWidget(self.area_combo, 1)
        row.addWidget(self.rectangle_button)
        form.addRow("Area", row)

        self.roi_combo = self._combo(ROI_SOURCES, settings.option("roi_source"), box)
        self.roi_combo.setObjectName("roiCombo")
        form.addRow("ROI", self.roi_combo)
        self.roi_layer_combo = QgsMapLayerComboBox(box)
        self.roi_layer_combo.setObjectName("roiLayerCombo")
        self.roi_layer_combo.setFilters(POLYGON_LAYER_FILTER)
        form.addRow("Polygon layer", self.roi_layer_combo)
        row = QHBoxLayout()
        self.draw_button = QPushButton("Draw polygons", box)
        self.draw_button.setObjectName("drawPolygonsButton")
        self.draw_button.setToolTip(
            "Click to add a vertex, double-click or Enter to finish, Esc/Backspace to undo"
        )
        self.clear_button = QPushButton("Clear", box)
        self.clear_button.setObjectName("clearPolygonsButton")
        self.clear_button.setToolTip("Remove the drawn polygons and rectangle")
        self.overlay_button = QPushButton("Hide overlays", box)
        self.overlay_button.setObjectName("overlayButton")
        self.overlay_button.setToolTip(
            "Show or hide the drawn polygons and rectangle (kept for the next job); they are "
            "hidden when a result is added, so that they do not cover the edited pixels"
        )
        row.addWidget(self.draw_button)
        row.addWidget(self.clear_button)
        row.addWidget(self.overlay_button)
        form.addRow("", row)
        self.roi_label = self._label("No polygon drawn.", "roiLabel", box)
        form.addRow("", self.roi_label)
        # What would be sent, in pixels of the source layer, kept up to date.
        self.area_label = self._label("", "areaLabel", box)
        form.addRow("", self.area_label)

        self.rectangle_button.clicked.connect(self.draw_rectangle)
        self.draw_button.clicked.connect(self.draw_polygons)
        self.clear_button.clicked.connect(self.clear_polygons)
        self.overlay_button.clicked.connect(
            lambda: self.set_overlays_visible(not self.overlays_visible)
        )
        self.area_combo.currentIndexChanged.connect(
            lambda _i: settings.set_option("area_source", self.area_combo.currentData())
        )
        self.roi_combo.currentIndexChanged.connect(
            lambda _i: settings.set_option("roi_source", self.roi_combo.currentData())
        )
        # The labels follow every choice; map moves and selections are gathered (debounced).
        self.label_timer = QTimer(self)
        self.label_timer.setSingleShot(True)
        self.label_timer.setInterval(200)
        self.label_timer.timeout.connect(self.refresh_labels)
        self.area_combo.currentIndexChanged.connect(lambda _i: self.refresh_labels())
        self.roi_combo.currentIndexChanged.connect(lambda _i: self.refresh_labels())
        self.roi_layer_combo.layerChanged.connect(lambda _layer: self.refresh_labels())
        return box

    def _edit_box(self, parent):
        box = QGroupBox("Edit", parent)
        form = QFormLayout(box)
        self.prompt_edit = QLineEdit(box)
        self.prompt_edit.setObjectName("promptEdit")
        self.prompt_edit.setPlaceholderText("e.g. the bridge is collapsed")
        form.addRow("Prompt", self.prompt_edit)
        self.preset_combo = QComboBox(box)
        self.preset_combo.setObjectName("presetCombo")
        choices.fill_presets(self.preset_combo, None, settings.option("preset"))
        # How long the edit would take, from the backend's figures and the area's size.
        self.estimate_label = self._label("time: unknown", "estimateLabel", box)
        self.estimate_label.setToolTip(
            "The backend's estimate for the chosen preset and the current area's size: from "
            "its own recent jobs when it has some, else from reference figures"
        )
        row = QHBoxLayout()
        row.addWidget(self.preset_combo, 1)
        row.addWidget(self.estimate_label, 1)
        form.addRow("Preset", row)
        self.variants_spin = QSpinBox(box)
        self.variants_spin.setObjectName("variantsSpin")
        self.variants_spin.setRange(1, 8)  # rs-edit serve: at most 8
        self.variants_spin.setValue(settings.option("variants"))
        form.addRow("Variants", self.variants_spin)
        self.seed_spin = QSpinBox(box)
        self.seed_spin.setObjectName("seedSpin")
        self.seed_spin.setRange(-1, 2**31 - 1)
        self.seed_spin.setSpecialValueText("random")
        self.seed_spin.setValue(settings.option("seed"))
        form.addRow("Seed", self.seed_spin)
        self.clip_combo = QComboBox(box)
        self.clip_combo.setObjectName("clipCombo")
        self.clip_combo.setEditable(True)  # a checkpoint path on the backend also works
        choices.fill_clips(self.clip_combo, None, settings.option("clip"))
        self.weights_button = QPushButton("Use a weights file…", box)
        self.weights_button.setObjectName("weightsFileButton")
        self.weights_task = None
        self.weights_message = ""  # the outcome of the last "Use a weights file…"
        self.restart_after_jobs = False  # new weights wait for the jobs in flight to end
        row = QHBoxLayout()
        row.addWidget(self.clip_combo, 1)
        row.addWidget(self.weights_button)
        form.addRow("CLIP", row)
        # Said loudly: with random weights the prompt cannot steer the edit.
        self.random_clip_label = self._label(RANDOM_CLIP_TEXT, "randomClipLabel", box)
        self.random_clip_label.setStyleSheet(BAD_STYLE + " font-weight: bold;")
        form.addRow(self.random_clip_label)
        self.clip_combo.currentTextChanged.connect(lambda _text: self.update_random_clip())
        self.update_random_clip()
        self.llm_combo = QComboBox(box)
        self.llm_combo.setObjectName("llmCombo")
        self.llm_combo.addItems(settings.LLM_OPTIONS)
        self.llm_combo.setCurrentText(settings.option("llm"))
        form.addRow("LLM", self.llm_combo)
        form.addRow(self._example_box(box))
        row = QHBoxLayout()
        self.results_edit = QLineEdit(box)
        self.results_edit.setObjectName("resultsDirEdit")
        self.results_edit.setPlaceholderText("next to the project (rs_edit_results/)")
        self.results_edit.setText(settings.chosen_results_dir())
        browse = QPushButton("…", box)
        browse.setObjectName("browseResultsButton")
        row.addWidget(self.results_edit)
        row.addWidget(browse)
        form.addRow("Results", row)
        self.add_check = QCheckBox("Add results to the map", box)
        self.add_check.setObjectName("addResultsCheck")
        self.add_check.setChecked(settings.option("add_results"))
        form.addRow("", self.add_check)
        self.scene_check = QCheckBox("Full-scene outputs (pre/post/mask)", box)
        self.scene_check.setObjectName("fullSceneCheck")
        self.scene_check.setToolTip(
            "Also write, in the results folder, the whole source raster before and after the "
            "edit (the edited area composited in at its place) and the ROI mask on its grid"
        )
        self.scene_check.setChecked(settings.option("full_scene"))
        form.addRow("", self.scene_check)
        self.run_button = QPushButton("Edit", box)
        self.run_button.setObjectName("runButton")
        form.addRow(self.run_button)
        # Why Edit is disabled (the backend is unreachable), where the button is.
        self.run_reason_label = self._label("", "runReasonLabel", box)
        self.run_reason_label.setStyleSheet(BAD_STYLE)
        self.run_reason_label.setVisible(False)
        form.addRow(self.run_reason_label)

        self.run_button.clicked.connect(self.start_job)
        self.preset_combo.currentIndexChanged.connect(lambda _i: self.update_estimate())
        self.weights_button.clicked.connect(lambda _checked=False: self.use_weights_file())
        self.url_edit.textChanged.connect(lambda _text: self.update_weights_button())
        self.update_weights_button()
        self.prompt_edit.returnPressed.connect(self.start_job)
        browse.clicked.connect(self.browse_results)
        self.results_edit.editingFinished.connect(
            lambda: settings.set_results_dir(self.results_edit.text())
        )
        self.add_check.toggled.connect(lambda on: settings.set_option("add_results", on))
        self.scene_check.toggled.connect(lambda on: settings.set_option("full_scene", on))
        return box

    def _example_box(self, parent):
        """The example image ("make this look like that"): a raster layer (none: the prompt
        alone), the example area on it (drawn or selected features; none: the whole layer)
        and its weight against the prompt."""
        box = QGroupBox("Example (optional)", parent)
        box.setObjectName("exampleBox")
        form = QFormLayout(box)
        self.example_combo = QgsMapLayerComboBox(box)
        self.example_combo.setObjectName("exampleLayerCombo")
        self.example_combo.setFilters(RASTER_LAYER_FILTER)
        try:  # QGIS >= 3.30 names the empty entry
            self.example_combo.setAllowEmptyLayer(True, "none")
        except TypeError:
            self.example_combo.setAllowEmptyLayer(True)
        self.example_combo.setLayer(None)
        self.example_combo.setToolTip(
            "A raster whose look the edit should take (any layer, also the one edited); "
            "none: the prompt alone guides the edit"
        )
        form.addRow("Example layer", self.example_combo)
        row = QHBoxLayout()
        self.example_draw_button = QPushButton("Draw area", box)
        self.example_draw_button.setObjectName("drawExampleButton")
        self.example_draw_button.setToolTip(
            "Draw the example area on the example layer (click to add a vertex, double-click "
            "or Enter to finish); without one the whole layer is the example"
        )
        self.example_selected_button = QPushButton("Use selected", box)
        self.example_selected_button.setObjectName("selectedExampleButton")
        self.example_selected_button.setToolTip(
            "Use the selected features of the active polygon layer as the example area"
        )
        self.example_clear_button = QPushButton("Clear", box)
        self.example_clear_button.setObjectName("clearExampleButton")
        self.example_clear_button.setToolTip(
            "Remove the example area (the whole example layer is then the example)"
        )
        for button in (
            self.example_draw_button,
            self.example_selected_button,
            self.example_clear_button,
        ):
            row.addWidget(button)
        form.addRow("", row)
        self.example_weight_spin = QDoubleSpinBox(box)
        self.example_weight_spin.setObjectName("exampleWeightSpin")
        self.example_weight_spin.setRange(0.0, 1.0)
        self.example_weight_spin.setSingleStep(0.05)
        self.example_weight_spin.setDecimals(2)
        self.example_weight_spin.setValue(settings.option("example_weight"))
        self.example_weight_spin.setToolTip(
            "How much the example guides the edit against the prompt: 0 = text only, "
            "1 = example only"
        )
        form.addRow("Weight", self.example_weight_spin)
        self.example_label = self._label("", "exampleLabel", box)
        form.addRow(self.example_label)

        self.example_combo.layerChanged.connect(self._example_layer_changed)
        self._enable_example_options(False)
        self.example_draw_button.clicked.connect(self.draw_example)
        self.example_selected_button.clicked.connect(self.use_selected_example)
        self.example_clear_button.clicked.connect(self.clear_example)
        self.example_weight_spin.valueChanged.connect(
            lambda value: settings.set_option("example_weight", value)
        )
        return box

    @staticmethod
    def _label(text, name, parent):
        label = QLabel(text, parent)
        label.setObjectName(name)
        # Plain text: strings from the backend must not be interpreted as HTML.
        label.setTextFormat(Qt.TextFormat.PlainText)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        return label

    @staticmethod
    def _combo(items, current, parent):
        combo = QComboBox(parent)
        for key, text in items:
            combo.addItem(text, key)
        index = combo.findData(current)
        combo.setCurrentIndex(max(0, index))
        return combo

    # --- QGIS access ----------------------------------------------------------------------

    def _iface(self):
        if self.iface is not None:
            return self.iface
        from qgis.utils import iface

        return iface

    def canvas(self):
        iface = self._iface()
        return iface.mapCanvas() if iface is not None else None

    def message_bar(self):
        iface = self._iface()
        return iface.messageBar() if iface is not None else None

    def _push(self, text, level=Qgis.MessageLevel.Warning, duration=8):
        messages.push(self.message_bar(), text, level, duration)

    # --- backend --------------------------------------------------------------------------

    def save_url(self) -> str:
        """Persist the URL field (empty resets to the default) and return the URL in use."""
        settings.set_backend_url(self.url_edit.text())
        url = settings.backend_url()
        if self.url_edit.text() != url:
            self.url_edit.setText(url)
        if url != self.listed_url:  # another backend: list its jobs
            self.reload_jobs()
        return url

    def reload_jobs(self) -> None:
        """List the backend's jobs in the job list (earlier sessions' too)."""
        url = settings.backend_url()
        if self.jobs.load_history(url, settings.token()):
            self.listed_url = url

    def check_backend(self) -> Health:
        """Run the health check now and show its outcome."""
        url = self.save_url()
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            health = check_health(url, token=settings.token())
        finally:
            QApplication.restoreOverrideCursor()
        self.show_health(health)
        return health

    def show_health(self, health: Health) -> None:
        self.health = health
        self.status_label.setText(health.message)
        self.status_label.setStyleSheet(OK_STYLE if health.ok else BAD_STYLE)
        self.health_label.setText(health.summary if health.ok else "")
        # No job can start on a backend that does not answer: say so next to the button.
        self.run_button.setEnabled(health.ok)
        reason = "" if health.ok else f"Edit is unavailable: {health.message}"
        self.run_reason_label.setText(reason)
        self.run_reason_label.setVisible(not health.ok)
        self.run_button.setToolTip(reason)
        if health.ok:  # what this backend can run: CLIP weights present, its presets
            choices.fill_clips(self.clip_combo, health, choices.clip_name(self.clip_combo))
            self.update_random_clip()
            choices.fill_presets(self.preset_combo, health, choices.preset_name(self.preset_combo))
        self.update_estimate()
        self.update_weights_button()

    def _visibility_changed(self, visible):
        if visible:
            self.monitor.start()
            self.reload_jobs()
        else:
            self.monitor.stop()
            self.jobs.stop_history()

    def ask_token(self) -> None:
        text, ok = QInputDialog.getText(
            self,
            "RS Edit access token",
            "Access token for the backend (empty removes it). It is kept in QGIS's "
            "authentication manager, encrypted with your master password.",
            QLineEdit.EchoMode.Password,
        )
        if not ok:
            return
        try:
            settings.store_token(text)
        except settings.TokenError as exc:
            self._push(str(exc), Qgis.MessageLevel.Critical)
            return
        self._push(
            "Access token saved." if text.strip() else "Access token removed.",
            Qgis.MessageLevel.Info,
            3,
        )

    # --- layer, bands, area, ROI ------------------------------------------------------------

    def _layer_changed(self, layer):
        raster = layer if isinstance(layer, QgsRasterLayer) else None
        for combo in self.band_combos:
            combo.setLayer(raster)
        count = raster.bandCount() if raster is not None else 0
        self.band_row.setEnabled(count > 3)
        self.band_row.setToolTip(
            ""
            if count > 3
            else "The backend takes a layer's first three bands, in order, as red, green, blue"
        )
        if raster is not None:
            # <= 3 bands: the backend takes them in order; show that order (disabled).
            defaults = [min(band, count) for band in (1, 2, 3)]
            renderer = raster.renderer()
            if count > 3 and renderer is not None and renderer.type() == "multibandcolor":
                defaults = [renderer.redBand(), renderer.greenBand(), renderer.blueBand()]
            for combo, band in zip(self.band_combos, defaults, strict=True):
                combo.setBand(band if band > 0 else 1)
        self.refresh_labels()

    def rgb_bands(self):
        """The bands CLIP sees as RGB, or None to let the backend choose (<= 3 bands)."""
        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or layer.bandCount() <= 3:
            return None
        return [combo.currentBand() for combo in self.band_combos]

    def draw_rectangle(self):
        if self.rectangle_tool is not None:
            self.set_overlays_visible(True)
            self._use_tool(self.rectangle_tool)

    def set_rectangle(self, rect, crs):
        self.rectangle = (rect, QgsCoordinateReferenceSystem(crs))
        self.area_combo.setCurrentIndex(self.area_combo.findData("rectangle"))
        self.refresh_labels()

    def _rectangle_drawn(self, rect, crs):
        self.set_rectangle(rect, crs)
        self._restore_tool(self.rectangle_tool)

    def draw_polygons(self):
        if self.polygon_tool is not None:
            self.roi_combo.setCurrentIndex(self.roi_combo.findData("drawn"))
            self.set_overlays_visible(True)
            self._use_tool(self.polygon_tool)

    def _polygon_finished(self):
        self._restore_tool(self.polygon_tool)

    def _drawing_tools(self):
        return [
            tool
            for tool in (self.polygon_tool, self.rectangle_tool, self.example_tool)
            if tool is not None
        ]

    def _use_tool(self, tool):
        """Activate a drawing tool, remembering the map tool in use (pan, identify...)."""
        canvas = self.canvas()
        current = canvas.mapTool()
        if not any(current is drawing for drawing in self._drawing_tools()):
            self._previous_tool = current
        canvas.setMapTool(tool)

    def _restore_tool(self, tool):
        """A drawing is finished: back to the map tool that was in use before it (none:
        the drawing tool is just unset)."""
        canvas = self.canvas()
        if canvas is None or canvas.mapTool() is not tool:
            return
        previous, self._previous_tool = self._previous_tool, None
        if previous is not None and not sip.isdeleted(previous):
            canvas.setMapTool(previous)
        else:
            canvas.unsetMapTool(tool)

    def clear_polygons(self):
        """Remove the drawn polygons and the drawn rectangle (map overlays and choices)."""
        if self.polygon_tool is not None:
            self.polygon_tool.clear()
            self.rectangle_tool.clear()
        self.rectangle = None
        self.set_overlays_visible(True)
        self.refresh_labels()

    def set_overlays_visible(self, on: bool) -> None:
        """Show or hide the plugin's overlays (ROI polygons, area tint); they stay usable."""
        self.overlays_visible = on
        for tool in self._drawing_tools():
            tool.set_visible(on)
        self.overlay_button.setText("Hide overlays" if on else "Show overlays")

    def _results_added(self, record, layers):
        """A result arrived: hide the overlays (they would cover the edited pixels), zoom to
        the result and offer to compare it with its source."""
        self.set_overlays_visible(False)
        result = layers[-1]
        canvas = self.canvas()
        if canvas is not None:
            to_canvas = QgsCoordinateTransform(
                result.crs(), canvas.mapSettings().destinationCrs(), QgsProject.instance()
            )
            with contextlib.suppress(QgsCsException):
                canvas.setExtent(to_canvas.transformBoundingBox(result.extent()))
                canvas.refresh()
        source = QgsProject.instance().mapLayer(record.request.layer_id) if record.request else None
        self.compare.set_layers(source, result)

    # --- compare --------------------------------------------------------------------------

    def _compare_box(self, parent):
        box = QGroupBox("Compare result with source", parent)
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.swipe_check = QCheckBox("Swipe", box)
        self.swipe_check.setObjectName("swipeCheck")
        self.swipe_check.setToolTip(
            "Show the source layer left of the line and the result right of it"
        )
        self.swipe_slider = QSlider(Qt.Orientation.Horizontal, box)
        self.swipe_slider.setObjectName("swipeSlider")
        self.swipe_slider.setRange(0, 100)
        self.swipe_slider.setValue(50)
        self.swipe_slider.setToolTip("Where the swipe line is, in % of the map's width")
        self.flicker_check = QCheckBox("Flicker", box)
        self.flicker_check.setObjectName("flickerCheck")
        self.flicker_check.setToolTip("Switch the result layer on and off every 0.7 s")
        row.addWidget(self.swipe_check)
        row.addWidget(self.swipe_slider, 1)
        row.addWidget(self.flicker_check)
        layout.addLayout(row)
        self.compare_label = QLabel("", box)
        self.compare_label.setObjectName("compareLabel")
        self.compare_label.setWordWrap(True)
        layout.addWidget(self.compare_label)
        self.compare = Compare(self.canvas(), QgsProject.instance(), parent=self)
        self.compare.changed.connect(self._compare_changed)
        self.swipe_check.toggled.connect(self.compare.set_swipe)
        self.swipe_slider.valueChanged.connect(self.compare.set_position)
        self.flicker_check.toggled.connect(self.compare.set_flicker)
        self._compare_changed()
        return box

    def _compare_changed(self) -> None:
        active = self.compare.active
        for widget in (self.swipe_check, self.swipe_slider, self.flicker_check):
            widget.setEnabled(active)
        if not active:
            for check in (self.swipe_check, self.flicker_check):
                check.blockSignals(True)
                check.setChecked(False)
                check.blockSignals(False)
            self.compare_label.setText("No result to compare: run a job or pick one with a result")
        else:
            self.compare_label.setText(
                f"{self.compare.result.name()}  vs  {self.compare.source.name()}"
            )
            self.compare.set_swipe(self.swipe_check.isChecked())
            self.compare.set_flicker(self.flicker_check.isChecked())

    def _compare_selected(self) -> None:
        """Compare the result of the job picked in the job list (when it has one on the map)."""
        record = self.selected_record()
        if record is None or record.request is None:
            return
        project = QgsProject.instance()
        layers = [project.mapLayer(i) for i in record.layers]
        layers = [layer for layer in layers if layer is not None]
        source = project.mapLayer(record.request.layer_id)
        if layers and source is not None and self.compare.result is not layers[-1]:
            self.compare.set_layers(source, layers[-1])

    def _polygons_changed(self):
        self.refresh_labels()

    def _schedule_labels(self, *_args) -> None:
        self.label_timer.start()

    def refresh_labels(self) -> None:
        """The polygon and area labels, measured against the current source layer."""
        self.label_timer.stop()
        self.roi_label.setText(self._roi_text())
        self.area_label.setText(self._area_text())
        self.example_label.setText(self._example_text())
        self.update_estimate()

    def _area_text(self):
        """ "Area W x H px of <layer>, ROI n px (p %)": what Edit would send, or why not."""
        self.area_size = None
        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer) or not layer.isValid():
            return "Choose a raster layer."
        try:
            extent, extent_crs = self.area_extent()
            window = area.window_for_extent(layer, extent, extent_crs)
        except (area.AreaError, roi.RoiError, QgsCsException) as exc:
            return f"Area: {exc}."
        self.area_size = (window.width, window.height)
        text = f"Area {window.width} x {window.height} px of {layer.name()}"
        try:
            geometries, geometries_crs = self.roi_geometries()
            if geometries is None:
                return f"{text}, ROI the whole area ({window.pixels} px, 100 %)."
            count, approx = roi.roi_pixels(geometries, geometries_crs, window)
        except (roi.RoiError, QgsCsException) as exc:
            return f"{text}; ROI: {exc}."
        share = 100 * count / window.pixels
        about = "about " if approx else ""
        return f"{text}, ROI {about}{count} px ({share:.3g} %)."

    def update_estimate(self) -> None:
        """ "about N s for this area": the backend's estimate for the chosen preset and the
        area's size; "unknown" when the backend gives none (or there is no area)."""
        if not hasattr(self, "estimate_label"):
            return
        health, size = self.health, getattr(self, "area_size", None)
        preset = choices.preset_name(self.preset_combo)
        seconds = None
        if health is not None and health.ok and size is not None:
            seconds = health.estimate_seconds(preset, *size)
        if seconds is None:
            self.estimate_label.setText("time: unknown")
            return
        text = f"about {format_duration(seconds)} for this area"
        if health.estimate_source(preset) == "built-in":
            text += " (reference figures)"
        self.estimate_label.setText(text)

    def _roi_text(self):
        """Polygons and rectangle, measured against the current source layer."""
        layer = self.layer_combo.currentLayer()
        raster = layer if isinstance(layer, QgsRasterLayer) and layer.isValid() else None
        tool = self.polygon_tool
        count = len(tool.polygons) if tool is not None else 0
        text = f"{count} polygon(s) drawn." if count else "No polygon drawn."
        if count and raster is not None:
            try:
                in_layer = roi.transform_geometries(
                    tool.geometries(), tool.crs, raster.crs(), QgsProject.instance()
                )
                inside = sum(1 for g in in_layer if g.intersects(raster.extent()))
                text = f"{count} polygon(s) drawn, {inside} on {raster.name()}."
            except (QgsCsException, roi.RoiError):  # a label must never break the panel
                pass
        if self.rectangle is not None:
            rect, crs = self.rectangle
            if raster is None:
                text += " Rectangle drawn."
            else:
                try:
                    window = area.window_for_extent(raster, rect, crs)
                    text += f" Rectangle: {window.width} x {window.height} px of {raster.name()}."
                except (area.AreaError, QgsCsException):
                    text += f" Rectangle: outside {raster.name()}."
        return text

    def area_extent(self):
        """(extent, its CRS) for the chosen area source; raises area.AreaError."""
        source = self.area_combo.currentData()
        layer = self.layer_combo.currentLayer()
        if source == "rectangle":
            if self.rectangle is None:
                raise area.AreaError("draw a rectangle on the map first (Draw rectangle)")
            return self.rectangle
        if source == "selection":
            if layer is None:
                raise area.AreaError("choose a raster layer first")
            vectors = [
                lyr
                for lyr in QgsProject.instance().mapLayers().values()
                if isinstance(lyr, QgsVectorLayer) and lyr.selectedFeatureCount()
            ]
            box = area.snap_window(layer, area.selection_extent(vectors, layer.crs()))
            # The bare bounding box gives the model no context: grow it (within the limits).
            padded = area.context_window(layer, box, *self._limits())
            return padded.extent, layer.crs()
        canvas = self.canvas()
        if canvas is None:
            raise area.AreaError("no map canvas")
        return canvas.extent(), canvas.mapSettings().destinationCrs()

    def roi_geometries(self):
        """(geometries, CRS) of the chosen ROI, or (None, None) for the whole area."""
        source = self.roi_combo.currentData()
        if source == "whole":
            return None, None
        if source == "selected":
            layer = self.roi_layer_combo.currentLayer()
            if layer is None:
                raise roi.RoiError("choose a polygon layer with selected features")
            return roi.layer_polygons(layer, selected_only=True), layer.crs()
        if self.polygon_tool is None or not self.polygon_tool.polygons:
            raise roi.RoiError("draw ROI polygons on the map first (Draw polygons)")
        return self.polygon_tool.geometries(), self.polygon_tool.crs

    # --- the example image ------------------------------------------------------------------

    def _example_layer_changed(self, layer):
        self._enable_example_options(layer is not None)
        self.refresh_labels()

    def _enable_example_options(self, on: bool) -> None:
        """The area and the weight only mean something once there is an example layer."""
        for widget in (
            self.example_draw_button,
            self.example_selected_button,
            self.example_clear_button,
            self.example_weight_spin,
        ):
            widget.setEnabled(on)

    def draw_example(self):
        if self.example_tool is not None:
            self.set_overlays_visible(True)
            self._use_tool(self.example_tool)

    def _example_finished(self):
        self._restore_tool(self.example_tool)

    def use_selected_example(self) -> bool:
        """The selected features of the active polygon layer (or of the only polygon layer
        with a selection) become the example area."""
        try:
            layer = self._example_selection_layer()
            geometries = roi.layer_polygons(layer, selected_only=True)
            if self.example_tool is None:
                raise roi.RoiError("no map canvas")
            self.example_tool.set_polygons(geometries, layer.crs())
        except (roi.RoiError, QgsCsException) as exc:
            self._push(f"Example area: {exc}", Qgis.MessageLevel.Warning)
            return False
        return True

    def _example_selection_layer(self):
        iface = self._iface()
        active = iface.activeLayer() if iface is not None else None
        if roi.is_polygon_layer(active) and active.selectedFeatureCount():
            return active
        selected = [
            layer
            for layer in QgsProject.instance().mapLayers().values()
            if roi.is_polygon_layer(layer) and layer.selectedFeatureCount()
        ]
        if len(selected) == 1:
            return selected[0]
        if not selected:
            raise roi.RoiError("no polygon features are selected: select the example area first")
        raise roi.RoiError(
            "several layers have selected polygons: make the one with the example area the "
            "active layer"
        )

    def clear_example(self):
        """Forget the example area (the whole example layer is then the example)."""
        if self.example_tool is not None:
            self.example_tool.clear()
        self.refresh_labels()

    def example_geometries(self):
        """(geometries, CRS) of the example area, or (None, None) for the whole layer."""
        if self.example_tool is None or not self.example_tool.polygons:
            return None, None
        return self.example_tool.geometries(), self.example_tool.crs

    def example_request(self) -> jobs.Example | None:
        """The example as chosen, or None (no example layer: the prompt alone)."""
        layer = self.example_combo.currentLayer()
        if layer is None:
            return None
        geometries, geometries_crs = self.example_geometries()
        weight = self.example_weight_spin.value()
        return jobs.prepare_example(layer, geometries, geometries_crs, weight)

    def _example_text(self) -> str:
        """ "Example: W x H px from LAYER": what Edit would send as the example, or why not."""
        try:
            example = self.example_request()
        except (jobs.JobError, QgsCsException) as exc:
            return f"Example: {exc}."
        if example is None:
            return "No example: the prompt alone guides the edit."
        return f"Example: {example.describe()}."

    # --- a CLIP weights file ----------------------------------------------------------------

    def update_random_clip(self) -> None:
        """Show the random-weights warning while `tiny-random` is the CLIP chosen."""
        chosen = choices.clip_name(self.clip_combo)
        self.random_clip_label.setVisible((chosen or "").lower() == settings.RANDOM_CLIP)

    def update_weights_button(self) -> None:
        """ "Use a weights file…" works for a backend on this computer only (it reads the file
        from here); disabled, saying why, otherwise."""
        if not hasattr(self, "weights_button"):
            return
        url = self.url_edit.text().strip() or settings.backend_url()
        reason = weights.unavailable_reason(url, self.weights_python())
        busy = self.weights_task is not None
        self.weights_button.setEnabled(not reason and not busy)
        self.weights_button.setToolTip(
            reason
            or "Register a RemoteCLIP checkpoint (.pt) you have: it is checked by loading it "
            "with the local backend's Python, then placed where the local backend finds it"
        )

    def weights_python(self):
        """The Python that checks weights files (the local backend's; tests replace it)."""
        return weights.backend_python()

    def clip_folder(self) -> Path:
        """Where checked RemoteCLIP weights go (the local backend's RS_EDIT_CLIP_DIR)."""
        return local_backend.clip_dir()

    def ask_weights_file(self) -> str:
        """A checkpoint chosen by the user ("" when cancelled); tests replace this."""
        path, _filter = QFileDialog.getOpenFileName(
            self, "RemoteCLIP weights file", "", weights.FILE_FILTER
        )
        return path

    def use_weights_file(self, path: str = "", runner=None) -> bool:
        """Check a checkpoint with the backend's Python (in a task), then register it
        (`_weights_checked`). False when nothing was started."""
        if self.weights_task is not None:
            return False
        url = self.url_edit.text().strip() or settings.backend_url()
        python = self.weights_python()
        reason = weights.unavailable_reason(url, python)
        if reason:
            self._push(reason)
            return False
        path = path or self.ask_weights_file()
        if not path:
            return False
        task = weights.CheckTask(path, python, runner or weights.run_check, self.clip_folder())
        task.done_callbacks.append(self._weights_checked)
        self.weights_task = task
        self.update_weights_button()
        self.status_label.setText(f"Checking {Path(path).name} with the backend's Python…")
        QgsApplication.taskManager().addTask(task)
        return True

    def _weights_checked(self, task) -> None:
        if task is not self.weights_task:
            return
        self.weights_task = None
        self.update_weights_button()
        name = Path(task.path).name
        if task.error or task.placed is None:
            why = task.error or "the check failed"
            self.weights_message = f"{name} cannot be used as CLIP weights: {why}"
            self.status_label.setText(self.weights_message)
            self._push(self.weights_message, Qgis.MessageLevel.Critical, 15)
            return
        model = task.answer["name"]
        settings.set_option("clip", model)
        index = self.clip_combo.findData(model)
        if index >= 0:
            self.clip_combo.setCurrentIndex(index)
        done = f"{name} checked ({task.answer.get('arch')}) and placed as {task.placed}"
        if self.local_backend.state not in (local_backend.STARTING, local_backend.RUNNING):
            self.weights_message = f"{done}: start the local backend to use it."
        elif self.jobs_in_flight():
            # A restart would kill them: the backend restarts once they have ended.
            self.restart_after_jobs = True
            self.weights_message = (
                f"{done}: the local backend restarts to use it once the jobs in flight end."
            )
        else:
            self.weights_message = f"{done}: restarting the local backend."
            self._restart_local_backend()
        self.status_label.setText(self.weights_message)
        self._push(self.weights_message, Qgis.MessageLevel.Success, 8)

    def jobs_in_flight(self) -> int:
        """Jobs of the local backend that have not ended (this session's and those listed
        from it): a restart of that backend would end them; jobs on another server go on."""
        local = settings.normalize_url(self.local_backend.url)
        if not local:
            return 0
        return sum(
            1
            for record in self.jobs.records
            if not record.finished and settings.normalize_url(record.backend) == local
        )

    def _restart_local_backend(self) -> None:
        self.restart_after_jobs = False
        self.local_backend.stop()
        self.local_backend.start()  # its health then lists the new weights

    def _restart_when_idle(self, _record=None) -> None:
        """A restart put off while jobs ran: done when the last one has ended."""
        if not self.restart_after_jobs or self.jobs_in_flight():
            return
        if self.local_backend.state in (local_backend.STARTING, local_backend.RUNNING):
            self._restart_local_backend()
        else:
            self.restart_after_jobs = False

    # --- jobs -----------------------------------------------------------------------------

    def _save_options(self):
        settings.set_option("preset", choices.preset_name(self.preset_combo))
        settings.set_option("variants", self.variants_spin.value())
        settings.set_option("seed", self.seed_spin.value())
        settings.set_option("clip", choices.clip_name(self.clip_combo))
        settings.set_option("llm", self.llm_combo.currentText())
        settings.set_option("example_weight", self.example_weight_spin.value())
        settings.set_results_dir(self.results_edit.text())

    def build_request(self) -> jobs.EditRequest:
        """The job as chosen in the panel; raises AreaError, RoiError or JobError."""
        self._save_options()
        fields = jobs.job_fields(
            self.prompt_edit.text(),
            preset=choices.preset_name(self.preset_combo),
            seed=self.seed_spin.value(),
            clip=choices.clip_name(self.clip_combo),
            llm=self.llm_combo.currentText(),
            variants=self.variants_spin.value(),
            rgb_bands=self.rgb_bands(),
        )
        extent, extent_crs = self.area_extent()
        geometries, geometries_crs = self.roi_geometries()
        example = self.example_request()
        limit, max_width, max_height = self._limits()
        return jobs.prepare_request(
            self.layer_combo.currentLayer(),
            extent,
            extent_crs,
            fields,
            roi_geometries=geometries,
            roi_crs=geometries_crs,
            base_url=self.save_url(),
            max_pixels=limit,
            max_width=max_width,
            max_height=max_height,
            full_scene=self.scene_check.isChecked(),
            example=example,
        )

    def _limits(self):
        """(max pixels, max width, max height) of a tile: the settings' and the backend's."""
        limit, health = settings.max_tile_pixels(), self.health
        known = health is not None and health.ok
        if known and health.max_pixels:
            limit = min(limit, health.max_pixels)
        return limit, health.max_width if known else 0, health.max_height if known else 0

    def start_job(self):
        try:
            request = self.build_request()
        except (area.AreaError, roi.RoiError, jobs.JobError, settings.TokenError) as exc:
            self._push(f"Cannot start: {exc}", Qgis.MessageLevel.Warning)
            return None
        large = request.large_roi_text()
        if large and not self.confirm(
            f"{large[0].upper()}{large[1:]}.\n\nEdit it all? (To edit a part, draw ROI "
            "polygons, or zoom in / draw a rectangle for a smaller area.)"
        ):
            return None
        return self.jobs.start(request)

    def confirm(self, text: str) -> bool:
        """Ask the user (Yes/No); tests replace this."""
        answer = QMessageBox.question(
            self,
            "RS Edit",
            text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def browse_results(self):
        folder = QFileDialog.getExistingDirectory(
            self, "Folder for RS Edit results", str(settings.results_dir())
        )
        if folder:
            self.results_edit.setText(folder)
            settings.set_results_dir(folder)

    # --- teardown -------------------------------------------------------------------------

    def cleanup(self):
        """Stop the monitor and the local backend, cancel running jobs, take map tools and
        rubber bands away."""
        self.monitor.stop()
        with contextlib.suppress(TypeError):
            self.local_backend.stateChanged.disconnect(self._local_state_changed)
        self.local_backend.stop()
        if self.setup_task is not None:
            self.setup_task.cancel()
        if self.weights_task is not None:  # its end must not reach this (dying) dock
            self.weights_task.done_callbacks.clear()
            self.weights_task = None
        self.jobs.shutdown()
        self.compare.shutdown()
        self.label_timer.stop()
        canvas = self.canvas()
        if canvas is not None:
            for signal in (canvas.extentsChanged, canvas.selectionChanged):
                with contextlib.suppress(TypeError):
                    signal.disconnect(self._schedule_labels)
        for tool in self._drawing_tools():
            if canvas is not None and canvas.mapTool() is tool:
                canvas.unsetMapTool(tool)
        for tool in self._drawing_tools():
            tool.remove_bands()
