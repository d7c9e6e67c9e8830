"""Map tools: polygons (rubber band; the ROI, or the example area) and the area rectangle.

PolygonTool: click to add a vertex, double-click or Enter to finish the polygon,
Backspace or Esc to undo the last vertex (or, with no polygon in progress, the last finished
polygon). Finished polygons stay on the map. Geometries are kept in the canvas CRS at the
time they were drawn, with that CRS, so later CRS changes cannot shift them.
"""

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRectangle,
)
from qgis.gui import QgsMapTool, QgsRubberBand
from qgis.PyQt.QtCore import Qt, pyqtSignal
from qgis.PyQt.QtGui import QColor

from .compat import POLYGON_GEOMETRY

ROI_COLOR = QColor(220, 40, 40)
EXAMPLE_COLOR = QColor(40, 160, 90)  # the example area ("make this look like that"): green


class PolygonTool(QgsMapTool):
    """Draw polygons (the ROI, or, in its own colour, the example area); `polygonsChanged`
    fires whenever the finished set changes, `polygonFinished` when a polygon has been
    finished (drawn to the end)."""

    polygonsChanged = pyqtSignal()
    polygonFinished = pyqtSignal()

    def __init__(self, canvas, color: QColor = ROI_COLOR):
        super().__init__(canvas)
        self.points: list[QgsPointXY] = []  # the polygon in progress (map CRS)
        self.polygons: list[QgsGeometry] = []  # finished, in self.crs
        self.crs = QgsCoordinateReferenceSystem(canvas.mapSettings().destinationCrs())
        fill = QColor(color)
        fill.setAlpha(60)
        self.sketch = QgsRubberBand(canvas, POLYGON_GEOMETRY)
        self.shown = QgsRubberBand(canvas, POLYGON_GEOMETRY)
        for band in (self.sketch, self.shown):
            band.setStrokeColor(QColor(color))
            band.setFillColor(fill)
            band.setWidth(2)
        self._cursor_point = None
        self.setCursor(Qt.CursorShape.CrossCursor)

    # --- events ---------------------------------------------------------------------------

    def canvasReleaseEvent(self, event):
        if event.button() == Qt.MouseButton.LeftButton:
            self.add_point(event.mapPoint())
        elif event.button() == Qt.MouseButton.RightButton:
            self.finish()

    def canvasDoubleClickEvent(self, event):
        # The double-click's first click already added the point: finish there.
        self.finish()

    def canvasMoveEvent(self, event):
        self._cursor_point = event.mapPoint()
        self._redraw_sketch()

    def keyPressEvent(self, event):
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            self.finish()
            event.accept()
        elif key in (Qt.Key.Key_Backspace, Qt.Key.Key_Escape, Qt.Key.Key_Delete):
            self.undo()
            event.accept()
        else:
            event.ignore()

    def deactivate(self):
        self.points = []
        self._cursor_point = None
        self._redraw_sketch()
        super().deactivate()

    # --- editing --------------------------------------------------------------------------

    def _canvas_crs(self):
        return self.canvas().mapSettings().destinationCrs()

    def add_point(self, point) -> None:
        canvas_crs = self._canvas_crs()
        if canvas_crs != self.crs:  # the project CRS changed: keep everything in one CRS
            self._reproject(canvas_crs)
        point = QgsPointXY(point)
        if self.points and self.points[-1] == point:
            return  # a double-click's second press
        self.set_visible(True)  # drawing again: show what there is
        self.points.append(point)
        self._redraw_sketch()

    def finish(self) -> QgsGeometry | None:
        """Close the polygon in progress (needs 3 distinct vertices)."""
        self._cursor_point = None
        if len(self.points) < 3:
            self._redraw_sketch()
            return None
        polygon = QgsGeometry.fromPolygonXY([self.points + [self.points[0]]])
        if not polygon.isGeosValid():
            polygon = polygon.makeValid()
        self.points = []
        if polygon.isEmpty() or polygon.area() <= 0:
            self._redraw_sketch()
            return None
        self.polygons.append(polygon)
        self._redraw_sketch()
        self._redraw_shown()
        self.polygonsChanged.emit()
        self.polygonFinished.emit()
        return polygon

    def undo(self) -> None:
        if self.points:
            self.points.pop()
            self._redraw_sketch()
        elif self.polygons:
            self.polygons.pop()
            self._redraw_shown()
            self.polygonsChanged.emit()

    def clear(self) -> None:
        self.points = []
        self.polygons = []
        self._redraw_sketch()
        self._redraw_shown()
        self.polygonsChanged.emit()

    def geometries(self) -> list[QgsGeometry]:
        return [QgsGeometry(g) for g in self.polygons]

    def set_polygons(self, geometries, crs: QgsCoordinateReferenceSystem) -> None:
        """Replace the finished polygons by copies of `geometries` (in `crs`), shown in the
        canvas CRS like drawn ones (e.g. the selected features of a layer)."""
        canvas_crs = QgsCoordinateReferenceSystem(self._canvas_crs())
        same = not crs.isValid() or crs == canvas_crs
        transform = None if same else QgsCoordinateTransform(crs, canvas_crs, QgsProject.instance())
        polygons = []
        for geometry in geometries:
            copy = QgsGeometry(geometry)
            if transform is not None:
                copy.transform(transform)  # QgsCsException: the caller says why
            polygons.append(copy)
        self.points, self.polygons, self.crs = [], polygons, canvas_crs
        self.set_visible(True)
        self._redraw_sketch()
        self._redraw_shown()
        self.polygonsChanged.emit()

    def _reproject(self, crs) -> None:
        transform = QgsCoordinateTransform(self.crs, crs, QgsProject.instance())
        for polygon in self.polygons:
            polygon.transform(transform)
        self.points = [transform.transform(p) for p in self.points]
        self.crs = QgsCoordinateReferenceSystem(crs)
        self._redraw_shown()

    # --- drawing --------------------------------------------------------------------------

    def _redraw_sketch(self):
        points = list(self.points)
        if points and self._cursor_point is not None:
            points.append(QgsPointXY(self._cursor_point))
        self.sketch.reset(POLYGON_GEOMETRY)
        if len(points) >= 2:
            self.sketch.setToGeometry(QgsGeometry.fromPolygonXY([points]), self.crs)
        elif points:
            self.sketch.addPoint(points[0], True)

    def _redraw_shown(self):
        self.shown.reset(POLYGON_GEOMETRY)
        if self.polygons:
            union = QgsGeometry.collectGeometry([QgsGeometry(g) for g in self.polygons])
            self.shown.setToGeometry(union, self.crs)

    def set_visible(self, on: bool) -> None:
        """Show or hide the polygons (kept either way)."""
        for band in (self.sketch, self.shown):
            band.setVisible(on)

    def remove_bands(self):
        """Take the rubber bands off the canvas (plugin unload)."""
        for band in (self.sketch, self.shown):
            band.reset(POLYGON_GEOMETRY)
            self.canvas().scene().removeItem(band)


class RectangleTool(QgsMapTool):
    """Drag a rectangle on the map (shown while dragging); `rectangleDrawn(QgsRectangle, crs)`
    when the button is released. Esc abandons the drag."""

    rectangleDrawn = pyqtSignal(QgsRectangle, QgsCoordinateReferenceSystem)

    def __init__(self, canvas):
        super().__init__(canvas)
        self.start = None
        self.band = QgsRubberBand(canvas, POLYGON_GEOMETRY)
        self.band.setStrokeColor(QColor(30, 100, 220))
        self.band.setFillColor(QColor(30, 100, 220, 40))
        self.band.setWidth(2)
        self.setCursor(Qt.CursorShape.CrossCursor)

    def _rect(self, point):
        return QgsRectangle(QgsPointXY(self.start), QgsPointXY(point))

    def canvasPressEvent(self, event):
        if event.button() == Qt.MouseButton.LeftButton:
            self.start = QgsPointXY(event.mapPoint())
            self.band.setVisible(True)

    def canvasMoveEvent(self, event):
        if self.start is None:
            return
        crs = self.canvas().mapSettings().destinationCrs()
        self.band.setToGeometry(QgsGeometry.fromRect(self._rect(event.mapPoint())), crs)

    def canvasReleaseEvent(self, event):
        if self.start is None or event.button() != Qt.MouseButton.LeftButton:
            return
        rect = self._rect(event.mapPoint())
        self.start = None
        if rect.width() > 0 and rect.height() > 0:
            crs = QgsCoordinateReferenceSystem(self.canvas().mapSettings().destinationCrs())
            self.band.setToGeometry(QgsGeometry.fromRect(rect), crs)
            self.rectangleDrawn.emit(rect, crs)
        else:
            self.band.reset(POLYGON_GEOMETRY)

    def keyPressEvent(self, event):
        if event.key() == Qt.Key.Key_Escape:
            self.clear()
            event.accept()
        else:
            event.ignore()

    def clear(self):
        """Abandon a drag and take the rectangle's tint off the map."""
        self.start = None
        self.band.reset(POLYGON_GEOMETRY)

    def set_visible(self, on: bool) -> None:
        self.band.setVisible(on)

    def remove_bands(self):
        self.band.reset(POLYGON_GEOMETRY)
        self.canvas().scene().removeItem(self.band)
