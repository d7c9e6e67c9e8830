"""Compare a result with its source on the map: a swipe and a flicker.

Swipe: a map canvas item (SwipeItem) paints the source layer, rendered on its own for the
canvas's current view, over the left part of the canvas up to the slider's position; right of
it the canvas shows the result layer (which lies above its source in the layer tree). The source
image is rendered in the background (QgsMapRendererParallelJob) after each canvas refresh, so
the swipe itself (moving the slider) only repaints the item. This needs no extra dependencies
and works on QGIS 3.22 to 3.40, headless too.

Flicker: a timer switches the result layer's visibility in the layer tree every 0.7 s; when the
flicker stops the result layer is visible again.

Both stop by themselves when the result or the source layer is removed from the project.
"""

import contextlib

from qgis.core import QgsMapRendererParallelJob, QgsProject
from qgis.gui import QgsMapCanvasItem
from qgis.PyQt.QtCore import QObject, QRectF, Qt, QTimer, pyqtSignal

FLICKER_MS = 700


class SwipeItem(QgsMapCanvasItem):
    """Paints `image` (the source layer as the canvas shows it) left of `fraction` * width."""

    def __init__(self, canvas):
        super().__init__(canvas)
        self.canvas = canvas
        self.image = None
        self.fraction = 0.5
        self.setZValue(-10)  # under the plugin's rubber bands and map tools' items

    def clip_rect(self) -> QRectF:
        """The part of the canvas (in pixels) that shows the source layer."""
        size = self.canvas.mapSettings().outputSize()
        return QRectF(0, 0, size.width() * self.fraction, size.height())

    def boundingRect(self):
        size = self.canvas.mapSettings().outputSize()
        return QRectF(0, 0, size.width(), size.height())

    def updatePosition(self):
        self.setPos(0, 0)
        self.prepareGeometryChange()

    def paint(self, painter, option=None, widget=None):
        clip = self.clip_rect()
        if self.image is None or self.image.isNull() or clip.width() <= 0:
            return
        # the image's own pixels (more than the clip's on high-DPI screens)
        source = QRectF(0, 0, self.image.width() * self.fraction, self.image.height())
        painter.drawImage(clip, self.image, source)
        painter.save()
        pen = painter.pen()
        pen.setColor(Qt.GlobalColor.white)
        pen.setWidthF(2.0)
        painter.setPen(pen)
        painter.drawLine(int(clip.right()), 0, int(clip.right()), int(clip.height()))
        painter.restore()


class Compare(QObject):
    """The source and result layers being compared, the swipe item and the flicker timer."""

    changed = pyqtSignal()  # a result to compare came or went

    def __init__(self, canvas, project: QgsProject | None = None, parent=None):
        super().__init__(parent)
        self.canvas = canvas
        self.project = project or QgsProject.instance()
        self.source = None
        self.result = None
        self.item = None
        self.job = None
        self.fraction = 0.5
        self.timer = QTimer(self)
        self.timer.setInterval(FLICKER_MS)
        self.timer.timeout.connect(self._flick)
        self.project.layersWillBeRemoved.connect(self._layers_removed)
        if canvas is not None:
            canvas.mapCanvasRefreshed.connect(self._render_source)

    @property
    def active(self) -> bool:
        return self.source is not None and self.result is not None

    @property
    def swiping(self) -> bool:
        return self.item is not None

    @property
    def flickering(self) -> bool:
        return self.timer.isActive()

    def set_layers(self, source, result) -> None:
        """Compare `result` with `source` (either None: compare nothing)."""
        swiping = self.swiping
        self.clear(emit=False)
        if source is not None and result is not None and source.id() != result.id():
            self.source, self.result = source, result
            if swiping:
                self.set_swipe(True)
        self.changed.emit()

    def clear(self, emit=True) -> None:
        self.set_flicker(False)
        self.set_swipe(False)
        self.source = self.result = None
        if emit:
            self.changed.emit()

    # --- swipe ----------------------------------------------------------------------------

    def set_swipe(self, on: bool) -> None:
        if on and self.active and self.canvas is not None:
            if self.item is None:
                self.item = SwipeItem(self.canvas)
                self.item.fraction = self.fraction
            self._render_source()
        elif self.item is not None:
            self._cancel_job()
            if self.canvas is not None:
                with contextlib.suppress(RuntimeError):
                    self.canvas.scene().removeItem(self.item)
            self.item = None

    def set_position(self, percent: float) -> None:
        """The swipe line at `percent` (0-100) of the canvas's width from the left."""
        self.fraction = max(0.0, min(1.0, percent / 100.0))
        if self.item is not None:
            self.item.fraction = self.fraction
            self.item.update()

    def _render_source(self) -> None:
        if self.item is None or self.source is None:
            return
        self._cancel_job()
        map_settings = self.canvas.mapSettings()
        map_settings.setLayers([self.source])
        map_settings.setBackgroundColor(self.canvas.canvasColor())
        self.job = QgsMapRendererParallelJob(map_settings)
        self.job.finished.connect(self._rendered)
        self.job.start()

    def _rendered(self) -> None:
        job = self.job
        if job is None or self.sender() is not job:
            return
        if self.item is not None:
            self.item.image = job.renderedImage()
            self.item.update()
        self.job = None

    def _cancel_job(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            with contextlib.suppress(TypeError):
                job.finished.disconnect(self._rendered)
            job.cancelWithoutBlocking()

    # --- flicker --------------------------------------------------------------------------

    def set_flicker(self, on: bool) -> None:
        if on and self.active:
            self.timer.start()
        else:
            self.timer.stop()
            self.set_result_visible(True)

    def _node(self):
        if self.result is None:
            return None
        return self.project.layerTreeRoot().findLayer(self.result.id())

    def result_visible(self) -> bool:
        node = self._node()
        return node is not None and node.itemVisibilityChecked()

    def set_result_visible(self, on: bool) -> None:
        node = self._node()
        if node is not None:
            node.setItemVisibilityChecked(on)

    def _flick(self) -> None:
        self.set_result_visible(not self.result_visible())

    # --- removal --------------------------------------------------------------------------

    def _layers_removed(self, ids) -> None:
        layers = [layer for layer in (self.source, self.result) if layer is not None]
        with contextlib.suppress(RuntimeError):
            if any(layer.id() in ids for layer in layers):
                self.timer.stop()  # the result's tree node may already be gone
                self.clear()

    def shutdown(self) -> None:
        self.clear(emit=False)
        with contextlib.suppress(TypeError):
            self.project.layersWillBeRemoved.disconnect(self._layers_removed)
        if self.canvas is not None:
            with contextlib.suppress(TypeError):
                self.canvas.mapCanvasRefreshed.disconnect(self._render_source)
