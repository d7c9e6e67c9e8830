"""ROI masks: polygons drawn with the map tool (canvas in EPSG:3857) and selected features of
a polygon layer (EPSG:4326) -> a mask on the UTM tile's grid, pixel for pixel as expected."""

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeature,
    QgsGeometry,
    QgsPointXY,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsMapMouseEvent
from qgis.PyQt.QtCore import QEvent, QPoint, Qt
from qgis.PyQt.QtGui import QKeyEvent

from rs_edit_plugin import area, roi
from rs_edit_plugin.maptools import PolygonTool

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
WGS84 = QgsCoordinateReferenceSystem("EPSG:4326")


def utm_point(col, row):
    return QgsPointXY(ORIGIN[0] + col * RES, ORIGIN[1] - row * RES)


def expected_mask(polygons_px, window):
    """Independent reference: pixel centres (in layer pixel coordinates) inside the polygons,
    tested with GEOS point-in-polygon on the untransformed pixel-space shapes."""
    mask = np.zeros((window.height, window.width), np.uint8)
    shapes = [QgsGeometry.fromPolygonXY([[QgsPointXY(c, r) for c, r in p]]) for p in polygons_px]
    for row in range(window.height):
        for col in range(window.width):
            centre = QgsGeometry.fromPointXY(
                QgsPointXY(window.xoff + col + 0.5, window.yoff + row + 0.5)
            )
            if any(shape.contains(centre) for shape in shapes):
                mask[row, col] = 1
    return mask


# Vertices in layer pixel coordinates, chosen so that no pixel centre lies on an edge
# (the reference and GDAL then agree exactly; see 5x + 6y = 24.5 for the triangle).
TRIANGLE = [(12, 10), (18, 10), (12, 15)]
SQUARE = [(20.2, 12.7), (27.6, 12.7), (27.6, 19.4), (20.2, 19.4)]
OUTSIDE_TILE = [(50, 40), (55, 40), (55, 45)]  # partly/fully off the tile: clipped away


@pytest.fixture
def tile(tmp_path, project):
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    window = area.window_for_extent(
        layer, QgsGeometry.fromPolygonXY([[utm_point(8, 6), utm_point(31, 23)]]).boundingBox(), UTM
    )
    assert (window.xoff, window.yoff, window.width, window.height) == (8, 6, 23, 17)
    return layer, window


def in_crs(points_px, crs):
    transform = QgsCoordinateTransform(UTM, crs, QgsProject.instance())
    return [transform.transform(utm_point(c, r)) for c, r in points_px]


def mouse(canvas, kind, point, button=Qt.MouseButton.LeftButton):
    event = QgsMapMouseEvent(canvas, kind, QPoint(0, 0), button)
    event.setMapPoint(point)  # map coordinates exactly (no pixel rounding)
    return event


def draw(tool, canvas, points, finish="enter"):
    for point in points:
        tool.canvasReleaseEvent(mouse(canvas, QEvent.Type.MouseButtonRelease, point))
        tool.canvasMoveEvent(mouse(canvas, QEvent.Type.MouseMove, point))
    if finish == "enter":
        tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Return, Qt.NoModifier))
    else:  # a double-click: its release adds the last point again, then the tool finishes
        tool.canvasReleaseEvent(mouse(canvas, QEvent.Type.MouseButtonRelease, points[-1]))
        tool.canvasDoubleClickEvent(mouse(canvas, QEvent.Type.MouseButtonDblClick, points[-1]))


def test_drawn_polygons_make_the_expected_mask(tile, qgis_canvas, tmp_path):
    layer, window = tile
    assert qgis_canvas.mapSettings().destinationCrs() == WEB
    tool = PolygonTool(qgis_canvas)
    qgis_canvas.setMapTool(tool)
    changes = []
    tool.polygonsChanged.connect(lambda: changes.append(len(tool.polygons)))

    draw(tool, qgis_canvas, in_crs(TRIANGLE, WEB), finish="enter")
    # A second polygon with a mistake: Backspace and Esc undo vertices while drawing.
    wrong = in_crs([(25, 30)], WEB)[0]
    square = in_crs(SQUARE, WEB)
    for point in square[:2] + [wrong]:
        tool.canvasReleaseEvent(mouse(qgis_canvas, QEvent.Type.MouseButtonRelease, point))
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Backspace, Qt.NoModifier))
    assert len(tool.points) == 2
    draw(tool, qgis_canvas, square[2:], finish="double-click")
    assert changes == [1, 2]
    assert tool.crs == WEB and len(tool.polygons) == 2
    # Shown on the map while drawing and after.
    assert tool.shown.numberOfVertices() >= 7
    # A third, tiny polygon abandoned with Esc leaves the two polygons as they were.
    tool.canvasReleaseEvent(mouse(qgis_canvas, QEvent.Type.MouseButtonRelease, wrong))
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Escape, Qt.NoModifier))
    assert tool.points == [] and len(tool.polygons) == 2

    path, count = roi.mask_for_window(tool.geometries(), tool.crs, window, tmp_path / "m.tif")
    mask, gt, wkt = read(path)
    expected = expected_mask([TRIANGLE, SQUARE], window)
    np.testing.assert_array_equal(mask[0], expected)
    assert count == expected.sum() > 40
    assert gt == window.geotransform and same_crs(wkt, layer.crs().toWkt())
    assert mask.shape[1:] == (window.height, window.width)

    # Esc with no polygon in progress undoes the last finished polygon.
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Escape, Qt.NoModifier))
    assert len(tool.polygons) == 1 and changes[-1] == 1
    qgis_canvas.unsetMapTool(tool)


def test_selected_features_of_a_polygon_layer_make_the_expected_mask(tile, project, tmp_path):
    layer, window = tile
    footprints = QgsVectorLayer("Polygon?crs=EPSG:4326", "buildings", "memory")
    features = []
    for shape in (TRIANGLE, SQUARE, OUTSIDE_TILE, [(1, 1), (5, 1), (5, 5)]):
        feature = QgsFeature()
        feature.setGeometry(QgsGeometry.fromPolygonXY([in_crs(shape, WGS84)]))
        features.append(feature)
    assert footprints.dataProvider().addFeatures(features)
    project.addMapLayer(footprints)
    ids = [f.id() for f in footprints.getFeatures()]
    footprints.selectByIds([ids[0], ids[1], ids[2]])  # not the last one

    geometries = roi.layer_polygons(footprints, selected_only=True)
    assert len(geometries) == 3
    path, count = roi.mask_for_window(geometries, footprints.crs(), window, tmp_path / "m.tif")
    mask, gt, _wkt = read(path)
    expected = expected_mask([TRIANGLE, SQUARE], window)  # the third is off the tile
    np.testing.assert_array_equal(mask[0], expected)
    assert gt == window.geotransform and count == expected.sum()


def test_roi_outside_the_tile_is_refused(tile, tmp_path):
    _layer, window = tile
    geometry = QgsGeometry.fromPolygonXY([in_crs(OUTSIDE_TILE, UTM)])
    with pytest.raises(roi.RoiError, match="covers no pixel"):
        roi.mask_for_window([geometry], UTM, window, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()


def test_non_polygon_layer_and_empty_selection_are_refused(project):
    points = QgsVectorLayer("Point?crs=EPSG:4326", "points", "memory")
    with pytest.raises(roi.RoiError, match="not a polygon layer"):
        roi.layer_polygons(points)
    polygons = QgsVectorLayer("Polygon?crs=EPSG:4326", "empty", "memory")
    with pytest.raises(roi.RoiError, match="no features are selected"):
        roi.layer_polygons(polygons)
