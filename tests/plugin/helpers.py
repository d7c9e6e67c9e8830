"""Helpers for the plugin tests: small synthetic GeoTIFFs written with GDAL, and waiting on
Qt's event loop."""

import os
import time
from pathlib import Path

import numpy as np
from osgeo import gdal, osr
from qgis.PyQt.QtCore import QCoreApplication

UTM33 = 32633
ORIGIN = (500_000.0, 5_000_000.0)  # UTM 33N: about 45.1 N, 15 E
RES = 10.0


def venv_file(env: str, name: str) -> Path | None:
    """An executable of the backend's virtual environment: `$env`, else the checkout's
    `.venv/bin/<name>` (None when it is not there: tests that need it skip)."""
    root = Path(__file__).resolve().parents[2]
    path = Path(os.environ.get(env) or root / ".venv" / "bin" / name)
    return path if path.is_file() and os.access(path, os.X_OK) else None


def pixels(bands, height, width, dtype=np.uint8):
    """Deterministic, position-dependent values (every pixel tells where it came from)."""
    b, r, c = np.mgrid[0:bands, 0:height, 0:width]
    values = (b * 71 + r * 13 + c * 3) % 250 + 1
    return values.astype(dtype)


def make_geotiff(
    path,
    width=60,
    height=50,
    bands=3,
    epsg=UTM33,
    origin=ORIGIN,
    res=RES,
    dtype=np.uint8,
    nodata=None,
    data=None,
):
    """Write a north-up GeoTIFF and return (path, data array (bands, h, w), geotransform)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gdal_type = {np.uint8: gdal.GDT_Byte, np.uint16: gdal.GDT_UInt16, np.float32: gdal.GDT_Float32}
    dataset = gdal.GetDriverByName("GTiff").Create(
        str(path), width, height, bands, gdal_type[dtype]
    )
    geotransform = (origin[0], res, 0.0, origin[1], 0.0, -res)
    dataset.SetGeoTransform(geotransform)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(epsg)
    dataset.SetProjection(srs.ExportToWkt())
    data = pixels(bands, height, width, dtype) if data is None else data
    for i in range(bands):
        band = dataset.GetRasterBand(i + 1)
        band.WriteArray(data[i])
        band.SetDescription(f"band {i + 1}")
        if nodata is not None:
            band.SetNoDataValue(nodata)
    dataset.FlushCache()
    dataset = None
    return path, data, geotransform


def read(path):
    """(data (bands, h, w), geotransform, projection WKT, size) of a raster file."""
    dataset = gdal.Open(str(path))
    assert dataset is not None, path
    data = dataset.ReadAsArray()
    if data.ndim == 2:
        data = data[None]
    return data, dataset.GetGeoTransform(), dataset.GetProjection()


def same_crs(wkt_a, wkt_b) -> bool:
    a, b = osr.SpatialReference(), osr.SpatialReference()
    a.ImportFromWkt(wkt_a)
    b.ImportFromWkt(wkt_b)
    return bool(a.IsSame(b))


def wait_for(predicate, timeout=30.0, what="condition"):
    """Run the Qt event loop (as QGIS would) until `predicate()` is true."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        QCoreApplication.processEvents()
        time.sleep(0.01)
