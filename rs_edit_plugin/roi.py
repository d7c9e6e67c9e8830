"""The ROI: polygons (drawn, or features of any polygon layer) -> a mask on the tile's grid.

Polygons are transformed with a QgsCoordinateTransform into the tile's CRS and rasterized
by GDAL on exactly the tile's grid (same size and geotransform), so the backend receives a
mask it can check pixel for pixel. A pixel belongs to the ROI when its centre lies inside a
polygon (GDAL's default rule). No widgets here.
"""

from pathlib import Path

import numpy as np
from osgeo import gdal, ogr, osr
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProject,
    QgsVectorLayer,
)

from .area import GTIFF_OPTIONS, TileWindow
from .compat import POLYGON_GEOMETRY

MASK_VALUE = 1  # non-zero = edit (the `mask` field of POST /v1/jobs, docs/openapi.json)


class RoiError(Exception):
    """The ROI is unusable; the message says why, ready for the user."""


def is_polygon_layer(layer) -> bool:
    return (
        isinstance(layer, QgsVectorLayer)
        and layer.isValid()
        and layer.geometryType() == POLYGON_GEOMETRY
    )


def layer_polygons(layer: QgsVectorLayer, selected_only: bool = True) -> list[QgsGeometry]:
    """The polygon geometries of a layer's selected features (or of all of them)."""
    if not is_polygon_layer(layer):
        raise RoiError(f"layer {layer.name()!r} is not a polygon layer")
    if selected_only:
        if not layer.selectedFeatureCount():
            raise RoiError(f"no features are selected in layer {layer.name()!r}")
        features = layer.getSelectedFeatures()
    else:
        features = layer.getFeatures(QgsFeatureRequest())
    geometries = [QgsGeometry(f.geometry()) for f in features if f.hasGeometry()]
    geometries = [g for g in geometries if not g.isEmpty()]
    if not geometries:
        raise RoiError(f"the chosen features of {layer.name()!r} have no geometry")
    return geometries


def transform_geometries(
    geometries,
    source_crs: QgsCoordinateReferenceSystem,
    target_crs: QgsCoordinateReferenceSystem,
    project: QgsProject | None = None,
) -> list[QgsGeometry]:
    """Copies of `geometries` transformed from `source_crs` into `target_crs`."""
    project = project or QgsProject.instance()
    same = not source_crs.isValid() or source_crs == target_crs
    transform = (
        None if same else QgsCoordinateTransform(source_crs, target_crs, project.transformContext())
    )
    result = []
    for geometry in geometries:
        copy = QgsGeometry(geometry)
        if transform is not None:
            try:
                copy.transform(transform)
            except Exception as exc:  # QgsCsException
                raise RoiError(
                    f"a polygon cannot be transformed into the tile's CRS: {exc}"
                ) from exc
        if not copy.isGeosValid():
            copy = copy.makeValid()
        result.append(copy)
    return result


def rasterize(geometries, window: TileWindow) -> np.ndarray:
    """A (height, width) uint8 mask on the window's grid: MASK_VALUE inside, 0 outside.
    `geometries` must already be in the window's CRS."""
    srs = osr.SpatialReference()
    srs.ImportFromWkt(window.crs_wkt)
    vector = ogr.GetDriverByName("Memory").CreateDataSource("roi")
    layer = vector.CreateLayer("roi", srs, ogr.wkbMultiPolygon)
    for geometry in geometries:
        ogr_geometry = ogr.CreateGeometryFromWkb(bytes(geometry.asWkb()))
        if ogr_geometry is None:
            continue
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetGeometry(ogr_geometry)
        layer.CreateFeature(feature)
    raster = gdal.GetDriverByName("MEM").Create("", window.width, window.height, 1, gdal.GDT_Byte)
    raster.SetGeoTransform(window.geotransform)
    raster.SetProjection(window.crs_wkt)
    raster.GetRasterBand(1).Fill(0)
    if gdal.RasterizeLayer(raster, [1], layer, burn_values=[MASK_VALUE]) != 0:
        raise RoiError(f"rasterizing the ROI failed: {gdal.GetLastErrorMsg()}")
    return raster.GetRasterBand(1).ReadAsArray()


def write_mask(mask: np.ndarray, window: TileWindow, path) -> Path:
    """Write the mask as a one-band Byte GeoTIFF on the window's grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver = gdal.GetDriverByName("GTiff")
    dataset = driver.Create(str(path), window.width, window.height, 1, gdal.GDT_Byte, GTIFF_OPTIONS)
    if dataset is None:
        raise RoiError(f"cannot write the ROI mask to {path}: {gdal.GetLastErrorMsg()}")
    dataset.SetGeoTransform(window.geotransform)
    dataset.SetProjection(window.crs_wkt)
    band = dataset.GetRasterBand(1)
    band.SetDescription("rs-edit ROI mask (non-zero = edit)")
    band.WriteArray(mask)
    dataset.FlushCache()
    dataset = None
    return path


def mask_for_window(
    geometries,
    geometries_crs: QgsCoordinateReferenceSystem,
    window: TileWindow,
    path,
    project: QgsProject | None = None,
) -> tuple[Path, int]:
    """Transform, rasterize on the tile's grid and write the mask; returns (path, ROI pixels).
    Refuses an ROI that covers no pixel of the tile."""
    geometries = [g for g in geometries if g is not None and not g.isEmpty()]
    if not geometries:
        raise RoiError("no ROI polygon: draw one on the map or select polygon features")
    in_tile_crs = transform_geometries(geometries, geometries_crs, window.crs, project)
    mask = rasterize(in_tile_crs, window)
    count = int(np.count_nonzero(mask))
    if count == 0:
        raise RoiError(
            "the ROI covers no pixel of the area: draw it inside the area, or enlarge the area"
        )
    return write_mask(mask, window, path), count


def roi_extent(geometries) -> "QgsGeometry":
    """The union of the geometries' bounding boxes, as a geometry (for area = ROI bounds)."""
    union = QgsGeometry.unaryUnion([QgsGeometry(g) for g in geometries])
    return QgsGeometry.fromRect(union.boundingBox())


LIVE_RASTERIZE_PIXELS = 4_000_000  # a live label rasterizes areas up to this size


def roi_pixels(
    geometries,
    geometries_crs: QgsCoordinateReferenceSystem,
    window: TileWindow,
    project: QgsProject | None = None,
) -> tuple[int, bool]:
    """(ROI pixels of the window, approximate): counted on the window's grid as the mask
    would be, or estimated from the polygons' area for windows beyond LIVE_RASTERIZE_PIXELS."""
    geometries = [g for g in geometries if g is not None and not g.isEmpty()]
    if not geometries:
        return 0, False
    in_tile = transform_geometries(geometries, geometries_crs, window.crs, project)
    if window.pixels <= LIVE_RASTERIZE_PIXELS:
        return int(np.count_nonzero(rasterize(in_tile, window))), False
    tile = QgsGeometry.fromRect(window.extent)
    inside = QgsGeometry.unaryUnion(in_tile).intersection(tile).area()
    pixel = abs(window.geotransform[1] * window.geotransform[5])
    return min(window.pixels, round(inside / pixel)), True
