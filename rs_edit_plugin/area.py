"""The area to edit: an extent in any CRS -> a window of the raster layer's own pixel grid,
exported at the layer's native resolution with its CRS and geotransform.

No widgets here. The window is snapped outwards to whole pixels and clipped to the layer,
so the exported tile's pixels are exactly the layer's pixels (GDAL copies them; no
resampling). Layers that are not plain GDAL files fall back to QgsRasterFileWriter, which
writes the provider's values on the same grid.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from osgeo import gdal
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsProject,
    QgsProviderRegistry,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)

from .compat import RASTER_WRITER_OK

SNAP_EPS = 1e-6  # in pixels: an edge this close to a pixel boundary is on it
GTIFF_OPTIONS = ["COMPRESS=DEFLATE", "PREDICTOR=1", "BIGTIFF=IF_SAFER"]


class AreaError(Exception):
    """The area cannot be exported; the message says why, ready for the user."""


@dataclass(frozen=True)
class TileWindow:
    """A window of a raster layer's pixel grid and the grid of the tile it becomes."""

    xoff: int
    yoff: int
    width: int
    height: int
    geotransform: tuple  # the tile's: (x0, xres, 0, y0, 0, -yres)
    crs_wkt: str

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def extent(self) -> QgsRectangle:
        x0, xres, _, y0, _, yres = self.geotransform
        return QgsRectangle(x0, y0 + self.height * yres, x0 + self.width * xres, y0)

    @property
    def crs(self) -> QgsCoordinateReferenceSystem:
        return QgsCoordinateReferenceSystem.fromWkt(self.crs_wkt)


def gdal_open(path: str):
    """gdal.Open that returns None on failure whether or not GDAL exceptions are on (another
    plugin may have turned them on for the whole QGIS process)."""
    try:
        return gdal.Open(path)
    except RuntimeError:
        return None


def gdal_path(layer: QgsRasterLayer) -> str:
    """The file GDAL opens for a layer of the gdal provider, else ''."""
    if layer.providerType() != "gdal":
        return ""
    parts = QgsProviderRegistry.instance().decodeUri("gdal", layer.source())
    return parts.get("path") or layer.source()


def layer_geotransform(layer: QgsRasterLayer) -> tuple:
    """The layer's north-up geotransform (from GDAL when it is a file, else from QGIS)."""
    path = gdal_path(layer)
    if path:
        dataset = gdal_open(path)
        if dataset is not None:
            gt = tuple(dataset.GetGeoTransform())
            if gt[2] != 0 or gt[4] != 0:
                raise AreaError(
                    f"layer {layer.name()!r} has a rotated geotransform; warp it to a north-up "
                    "grid first (Raster > Projections > Warp)"
                )
            return gt
    extent = layer.extent()
    xres = extent.width() / layer.width()
    yres = extent.height() / layer.height()
    return (extent.xMinimum(), xres, 0.0, extent.yMaximum(), 0.0, -yres)


def to_layer_crs(
    rect: QgsRectangle,
    rect_crs: QgsCoordinateReferenceSystem,
    layer: QgsRasterLayer,
    project: QgsProject | None = None,
) -> QgsRectangle:
    """An extent in `rect_crs` as a bounding box in the layer's CRS (edges densified)."""
    if not rect_crs.isValid() or rect_crs == layer.crs():
        return QgsRectangle(rect)
    project = project or QgsProject.instance()
    transform = QgsCoordinateTransform(rect_crs, layer.crs(), project.transformContext())
    try:
        return transform.transformBoundingBox(rect)
    except Exception as exc:  # QgsCsException: the extent is outside the CRS's area of use
        raise AreaError(f"the area cannot be transformed into the layer's CRS: {exc}") from exc


def snap_window(layer: QgsRasterLayer, rect: QgsRectangle) -> TileWindow:
    """The smallest window of whole layer pixels covering `rect` (layer CRS), clipped to it."""
    if not layer.crs().isValid():
        raise AreaError(f"layer {layer.name()!r} has no CRS: set one in its properties first")
    x0, xres, _, y0, _, yres = layer_geotransform(layer)  # yres < 0
    width, height = layer.width(), layer.height()
    if rect.isNull() or rect.width() < 0 or rect.height() < 0:
        raise AreaError("the area is empty")
    col0 = math.floor((rect.xMinimum() - x0) / xres + SNAP_EPS)
    col1 = math.ceil((rect.xMaximum() - x0) / xres - SNAP_EPS)
    row0 = math.floor((rect.yMaximum() - y0) / yres + SNAP_EPS)
    row1 = math.ceil((rect.yMinimum() - y0) / yres - SNAP_EPS)
    col1, row1 = max(col1, col0 + 1), max(row1, row0 + 1)  # a point or line: one pixel
    col0, col1 = max(col0, 0), min(col1, width)
    row0, row1 = max(row0, 0), min(row1, height)
    if col1 <= col0 or row1 <= row0:
        raise AreaError(f"the area does not overlap layer {layer.name()!r}")
    gt = (x0 + col0 * xres, xres, 0.0, y0 + row0 * yres, 0.0, yres)
    return TileWindow(col0, row0, col1 - col0, row1 - row0, gt, layer.crs().toWkt())


def window_for_extent(
    layer: QgsRasterLayer,
    rect: QgsRectangle,
    rect_crs: QgsCoordinateReferenceSystem,
    project: QgsProject | None = None,
) -> TileWindow:
    """Transform, snap and clip: an extent in any CRS -> the layer's pixel window."""
    return snap_window(layer, to_layer_crs(rect, rect_crs, layer, project))


def selection_extent(layers, layer_crs, project: QgsProject | None = None) -> QgsRectangle:
    """The bounding box, in `layer_crs`, of the selected features of `layers`."""
    project = project or QgsProject.instance()
    total = QgsRectangle()
    total.setMinimal()
    found = False
    for vector in layers:
        if vector is None or not vector.selectedFeatureCount():
            continue
        box = vector.boundingBoxOfSelected()
        if vector.crs() != layer_crs:
            transform = QgsCoordinateTransform(vector.crs(), layer_crs, project.transformContext())
            box = transform.transformBoundingBox(box)
        total.combineExtentWith(box)
        found = True
    if not found:
        raise AreaError("no features are selected (select some, or choose another area source)")
    return total


# "Extent of the selected features": the features' bare bounding box gives the model no
# context (a 109 x 34 px strip, 44 % of it ROI). The window grows so that the box covers at
# most about CONTEXT_SHARE of it, with at least CONTEXT_MIN_PX of context on each side.
CONTEXT_SHARE = 0.25
CONTEXT_MIN_PX = 64


def _grown(window: TileWindow, pad_x: int, pad_y: int, width: int, height: int):
    """(xoff, yoff, w, h): `window` grown by the pads on each side, moved back inside the
    raster where it sticks out (the context lost on one side is taken on the other), then
    clipped to the raster when the raster is smaller."""
    spans = []
    for off, size, pad, total in (
        (window.xoff, window.width, pad_x, width),
        (window.yoff, window.height, pad_y, height),
    ):
        start, end = off - pad, off + size + pad
        if start < 0:
            start, end = 0, end - start
        if end > total:
            start, end = start - (end - total), total
        start = max(start, 0)
        spans.append((start, end - start))
    (xoff, w), (yoff, h) = spans
    return xoff, yoff, w, h


def context_window(
    layer: QgsRasterLayer,
    window: TileWindow,
    max_pixels: int = 0,
    max_width: int = 0,
    max_height: int = 0,
) -> TileWindow:
    """`window` (a selection's bounding box) with context around it: each side grows by
    max(CONTEXT_MIN_PX, half the box's size), so the box covers at most CONTEXT_SHARE of the
    result, kept inside the raster. Within the backend's limits the context shrinks (never
    below the box itself) rather than making the area too large."""
    width, height = layer.width(), layer.height()
    pad_x = max(CONTEXT_MIN_PX, math.ceil(window.width / 2))
    pad_y = max(CONTEXT_MIN_PX, math.ceil(window.height / 2))

    def fits(scale):
        _x, _y, w, h = _grown(window, round(pad_x * scale), round(pad_y * scale), width, height)
        return (
            (not max_width or w <= max_width)
            and (not max_height or h <= max_height)
            and (not max_pixels or w * h <= max_pixels)
        )

    scale = 1.0
    if not fits(scale):
        low, high = 0.0, 1.0  # the largest scale that fits (0 when not even the box fits)
        for _ in range(30):
            mid = (low + high) / 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        scale = low
    xoff, yoff, w, h = _grown(window, round(pad_x * scale), round(pad_y * scale), width, height)
    x0, xres, _, y0, _, yres = layer_geotransform(layer)
    gt = (x0 + xoff * xres, xres, 0.0, y0 + yoff * yres, 0.0, yres)
    return TileWindow(xoff, yoff, w, h, gt, window.crs_wkt)


def check_size(window: TileWindow, max_pixels: int, max_width: int = 0, max_height: int = 0):
    """Refuse tiles beyond the backend's limits with a message that says what to do."""
    for size, limit, what in (
        (window.width, max_width, "wide"),
        (window.height, max_height, "high"),
    ):
        if limit and size > limit:
            raise AreaError(
                f"the area is {window.width} x {window.height} px at the layer's native "
                f"resolution; the backend accepts at most {limit} px {what}: zoom in or draw a "
                "smaller rectangle"
            )
    if max_pixels and window.pixels > max_pixels:
        side = int(math.sqrt(max_pixels))
        raise AreaError(
            f"the area is {window.width} x {window.height} px at the layer's native resolution "
            f"({window.pixels / 1e6:.1f} Mpx); the backend accepts at most {max_pixels / 1e6:.1f} "
            f"Mpx (about {side} x {side} px): zoom in or draw a smaller rectangle"
        )


@dataclass
class RasterSource:
    """What exporting needs from a layer, captured on the main thread so that the export can
    run in a task: the GDAL file, or a clone of the data provider for other providers."""

    name: str
    crs: QgsCoordinateReferenceSystem
    gdal_path: str = ""
    provider: object = None

    @classmethod
    def from_layer(cls, layer: QgsRasterLayer) -> "RasterSource":
        path = gdal_path(layer)
        provider = None if path else layer.dataProvider().clone()
        return cls(layer.name(), QgsCoordinateReferenceSystem(layer.crs()), path, provider)


def export_window(source, window: TileWindow, path, transform_context=None) -> Path:
    """Write the window as a GeoTIFF with the layer's CRS, the window's geotransform and the
    layer's native pixel values (all bands, nodata and band descriptions kept). `source` is a
    raster layer or a RasterSource."""
    if isinstance(source, QgsRasterLayer):
        source = RasterSource.from_layer(source)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if source.gdal_path:
        _export_gdal(source.gdal_path, window, path)
    else:
        context = transform_context or QgsProject.instance().transformContext()
        _export_qgis(source, window, path, context)
    return path


# Integer GDAL types and the values they hold (Int8, Int64 and UInt64 by name: GDAL >= 3.5/3.7).
_INT_RANGES = {
    "Byte": (0, 2**8 - 1),
    "Int8": (-(2**7), 2**7 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt64": (0, 2**64 - 1),
    "Int64": (-(2**63), 2**63 - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38


def nodata_representable(value, data_type: int) -> bool:
    """Whether a band of GDAL type `data_type` can hold `value` exactly (a Byte band cannot
    hold -10000: GDAL would clamp it to 0 and turn valid 0 pixels into nodata)."""
    if value is None:
        return True
    value = float(value)
    name = gdal.GetDataTypeName(data_type) or ""
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        return math.isfinite(value) and value.is_integer() and low <= value <= high
    if name in ("Float32", "CFloat32"):
        return not math.isfinite(value) or abs(value) <= _FLOAT32_MAX
    return True  # Float64 and complex doubles hold any double


def unrepresentable_nodata(dataset) -> bool:
    """True when a band of `dataset` declares a nodata value its data type cannot hold."""
    for i in range(1, dataset.RasterCount + 1):
        band = dataset.GetRasterBand(i)
        if not nodata_representable(band.GetNoDataValue(), band.DataType):
            return True
    return False


def _export_gdal(source: str, window: TileWindow, path: Path) -> None:
    src = gdal_open(source)
    if src is None:
        raise AreaError(f"GDAL cannot open {source}: {gdal.GetLastErrorMsg()}")
    options = gdal.TranslateOptions(
        format="GTiff",
        srcWin=[window.xoff, window.yoff, window.width, window.height],
        creationOptions=GTIFF_OPTIONS,
        outputSRS=window.crs_wkt if not src.GetProjection() else None,
        # A nodata value the type cannot hold marks no pixel of the source (QGIS ignores it
        # too); copied, GDAL would clamp it (e.g. -10000 -> 0 on Byte) and hide valid pixels.
        noData="none" if unrepresentable_nodata(src) else None,
    )
    try:
        out = gdal.Translate(str(path), src, options=options)
    except RuntimeError:
        out = None
    if out is None:
        raise AreaError(f"exporting the area failed: {gdal.GetLastErrorMsg()}")
    out.FlushCache()
    out = None  # close: the file is complete only now
    src = None


def _export_qgis(source: RasterSource, window: TileWindow, path: Path, context) -> None:
    pipe = QgsRasterPipe()
    if source.provider is None or not pipe.set(source.provider.clone()):
        raise AreaError(f"layer {source.name!r} cannot be exported (no readable provider)")
    writer = QgsRasterFileWriter(str(path))
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(GTIFF_OPTIONS)
    error = writer.writeRaster(
        pipe, window.width, window.height, window.extent, source.crs, context
    )
    if error != RASTER_WRITER_OK:
        raise AreaError(f"exporting the area failed (QgsRasterFileWriter error {int(error)})")
