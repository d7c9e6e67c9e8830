"""Reading and writing rasters so that every piece of georeferencing comes back exactly.

Reading: `inspect_raster` opens and validates a raster once (cheap, whatever its size) and returns
a `RasterInfo`; `read_tile` reads only a window of it. Writing: `write_result` copies the input to a
temporary GeoTIFF next to the output (GDAL's CreateCopy keeps CRS, geotransform, nodata, metadata,
masks), re-applies every metadata item explicitly, writes the edited window, and renames. A failed
run leaves nothing at the output path.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.transform import Affine
from rasterio.windows import Window

from .errors import InputError, RasterError
from .files import atomic_path

SUPPORTED_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)
# Lossless TIFF compressions we can re-use for the output; anything lossy (JPEG, WEBP, LERC with
# error) would change pixels outside the ROI, so it becomes DEFLATE.
LOSSLESS_COMPRESSIONS = {"deflate", "lzw", "zstd", "packbits", "lzma", "none"}
# GDAL's block cache defaults to 5 % of RAM; copying a huge scene would then grow with the scene.
GDAL_CACHE_MB = 128
# Where the tag recording the prompt and settings goes in the output.
RESULT_TAG = "RS_EDIT"
_HEAVY_READ_LIMIT = 64_000_000  # bytes: non-TIFF rasters up to this size are fully read to validate


@dataclass(frozen=True)
class RasterInfo:
    """What we need to know about an input raster, read once without reading its pixels."""

    path: str
    driver: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    nodata: float | None
    colorinterp: tuple[ColorInterp, ...]
    descriptions: tuple[str | None, ...]
    has_dataset_mask: bool
    gcp_count: int = 0  # ground control points (georeferenced by them alone: no geotransform)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity

    @property
    def alpha_band(self) -> int | None:
        """0-based index of the alpha band, if any."""
        for i, ci in enumerate(self.colorinterp):
            if ci == ColorInterp.alpha:
                return i
        return None

    @property
    def data_bands(self) -> tuple[int, ...]:
        """0-based indices of the bands the model sees and edits: every band but alpha."""
        return tuple(i for i in range(self.count) if i != self.alpha_band)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def same_transform(self, other: RasterInfo) -> bool:
        """Whether `other`'s geotransform is this one's, to a millionth of a pixel (rotated
        grids included: the pixel size is the length of a column and of a row step)."""
        t = self.transform
        pixel = max(math.hypot(t.a, t.d), math.hypot(t.b, t.e))
        return other.transform.almost_equals(t, precision=pixel * 1e-6)


@dataclass
class Tile:
    """A window of a raster: its pixels (all bands, native dtype) and which pixels are valid."""

    data: np.ndarray  # (bands, h, w), native dtype, every band including alpha
    valid: np.ndarray  # (h, w) bool: not nodata / alpha 0 / masked out
    window: Window
    transform: Affine  # geotransform of the window


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for everything we do: bounded cache and no warning for plain images (having
    no georeferencing is a supported case, reported where it matters). Sidecar `.aux.xml` files
    are read, as GDAL and QGIS read them: a CRS, nodata or band names kept there are the
    input's own; `write_result` puts them inside the output."""
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, CPL_DEBUG=False),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def inspect_raster(path: str | os.PathLike) -> RasterInfo:
    """Open and validate a raster; raise `RasterError` with a clear message if it is not usable."""
    path = str(path)
    if not os.path.exists(path):
        raise RasterError(f"input raster not found: {path}")
    if os.path.isdir(path):
        raise RasterError(f"input raster is a directory, not a file: {path}")
    try:
        with gdal_env(), rasterio.open(path) as src:
            info = _info_from_dataset(path, src)
            _check_complete(src, path)
    except RasterioError as exc:
        raise RasterError(f"cannot read raster {path}: {_gdal_message(exc)}") from exc
    return info


def _info_from_dataset(path: str, src) -> RasterInfo:
    if src.count < 1:
        raise RasterError(f"raster has no bands: {path}")
    dtypes = set(src.dtypes)
    if len(dtypes) != 1:
        raise RasterError(f"raster bands have mixed data types {sorted(dtypes)}: {path}")
    dtype = src.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise RasterError(
            f"raster data type {dtype} is not supported (supported: {', '.join(SUPPORTED_DTYPES)})"
        )
    flags = src.mask_flag_enums
    has_dataset_mask = any(MaskFlags.per_dataset in f for f in flags) and not any(
        MaskFlags.alpha in f for f in flags
    )
    return RasterInfo(
        path=path,
        driver=src.driver,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=dtype,
        crs=src.crs,
        transform=src.transform,
        nodata=src.nodata,
        colorinterp=tuple(src.colorinterp),
        descriptions=tuple(src.descriptions),
        has_dataset_mask=has_dataset_mask,
        gcp_count=len(src.gcps[0]),
    )


def _check_complete(src, path: str) -> None:
    """Detect truncated files without reading every pixel.

    For TIFF, every block's offset + byte count must lie inside the file, and a compressed TIFF
    of bounded size is decoded once (a block of corrupt compressed data fits in the file).
    Other formats are small in practice (PNG, JPEG): decoded once, bounded in size, through
    GDAL's copy, which reports a decoder's failure (a plain read of a truncated PNG returns
    zeros without an error).
    """
    small = src.width * src.height * src.count * np.dtype(src.dtypes[0]).itemsize
    small = small <= _HEAVY_READ_LIMIT
    if src.driver == "GTiff":
        size = os.path.getsize(path)
        for bidx, i, j, offset, nbytes in _tiff_blocks(src):
            if offset + nbytes > size:
                raise RasterError(
                    f"raster is truncated or corrupt (block {i},{j} of band {bidx} lies "
                    f"past the end of the file): {path}"
                )
        if small and src.compression is not None:
            _check_blocks(src, path)
    elif small:
        scratch = f"/vsimem/rs-edit-check-{os.getpid()}-{threading.get_ident()}.tif"
        try:
            rasterio.shutil.copy(src, scratch, driver="GTiff")
        except (RasterioError, SystemError) as exc:  # rasterio: SystemError for GDAL failures
            detail = f": {_gdal_message(exc)}" if isinstance(exc, RasterioError) else ""
            raise RasterError(
                f"raster is truncated or corrupt (GDAL cannot decode all of it{detail}): {path}"
            ) from exc
        finally:
            with contextlib.suppress(RasterioError, SystemError):
                rasterio.shutil.delete(scratch)


def check_integrity(path: str | os.PathLike) -> None:
    """Decode every block of a compressed GeoTIFF, whatever its size; `RasterError` on the first
    block that does not decode or whose checksum fails. Memory: one block at a time.

    `inspect_raster` does this for rasters of up to 64 MB of pixels; the service calls this for
    every upload (a corrupt block is a 4xx at submission, not a job that fails later). Other
    drivers and uncompressed TIFFs: nothing to decode beyond `inspect_raster`'s checks.
    """
    path = str(path)
    try:
        with gdal_env(), rasterio.open(path) as src:
            if src.driver == "GTiff" and src.compression is not None:
                _check_blocks(src, path)
    except RasterioError as exc:
        raise RasterError(f"cannot read raster {path}: {_gdal_message(exc)}") from exc


def _check_blocks(src, path: str) -> None:
    """Every block through GDAL (a block that does not decode raises), then DEFLATE blocks
    through zlib with their Adler-32 checksum.

    GDAL alone misses most corruptions of a DEFLATE block: libtiff stops inflating once the
    block's pixels are out and never reads the stream's end or its checksum, so random bytes that
    happen to form valid Huffman codes decode to wrong pixels without an error (8 of 20 random
    corruptions in tests/backend/test_upload_integrity.py). No GDAL configuration option changes
    that (GTIFF_IGNORE_READ_ERRORS only relaxes). LZW, ZSTD (GDAL writes no content checksum)
    and PACKBITS carry no checksum: a corruption that still decodes cannot be told from data.
    """
    for _, window in src.block_windows(1):
        src.read(window=window)  # a block that does not decode raises (RasterioError)
    compression = src.compression.name.lower()
    if compression != "deflate":
        return
    with open(path, "rb") as f:
        for bidx, i, j, offset, nbytes in _tiff_blocks(src):
            f.seek(offset)
            _inflate_checked(f.read(nbytes), _block_bytes(src, bidx, i, j), (i, j, bidx), path)


def _tiff_blocks(src) -> Iterator[tuple[int, int, int, int, int]]:
    """(band, column, row, offset, byte count) of every stored block of a GeoTIFF (sparse
    blocks, offset or size 0, are skipped: GDAL reads them as nodata)."""
    for bidx in range(1, src.count + 1):
        rows, cols = _block_grid(src, bidx)
        for j in range(rows):
            for i in range(cols):
                offset = src.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=bidx)
                nbytes = src.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=bidx)
                if offset is None or nbytes is None or int(offset) == 0 or int(nbytes) == 0:
                    continue
                yield bidx, i, j, int(offset), int(nbytes)
        if _pixel_interleaved(src):
            break  # all bands share the blocks of band 1


def _pixel_interleaved(src) -> bool:
    return src.count > 1 and src.interleaving is not None and src.interleaving.name == "pixel"


def _block_bytes(src, bidx: int, i: int, j: int) -> int:
    """The most bytes a block may decode to: its pixels (all bands if pixel-interleaved)."""
    bh, bw = src.block_shapes[bidx - 1]
    samples = src.count if _pixel_interleaved(src) else 1
    return bh * bw * samples * np.dtype(src.dtypes[bidx - 1]).itemsize


def _inflate_checked(data: bytes, limit: int, where: tuple[int, int, int], path: str) -> None:
    """Inflate a zlib stream to its end (its Adler-32 checksum is verified there), at most
    `limit` bytes of output (a block cannot hold more; no decompression bomb)."""
    i, j, bidx = where
    inflater = zlib.decompressobj()
    out = 0
    try:
        chunk = inflater.decompress(data, limit + 1)
        out += len(chunk)
        while not inflater.eof and inflater.unconsumed_tail and out <= limit:
            chunk = inflater.decompress(inflater.unconsumed_tail, limit + 1 - out)
            out += len(chunk)
        if out <= limit and not inflater.eof:
            out += len(inflater.flush())
        problem = None
        if out > limit:
            problem = "decodes to more pixels than a block holds"
        elif not inflater.eof:
            problem = "its compressed data ends early"
    except zlib.error as exc:
        problem = "incorrect checksum" if "data check" in str(exc) else f"zlib: {exc}"
    if problem:
        raise RasterError(
            f"raster is corrupt (DEFLATE block {i},{j} of band {bidx} does not decode: "
            f"{problem}): {path}"
        )


def _block_grid(src, bidx: int) -> tuple[int, int]:
    bh, bw = src.block_shapes[bidx - 1]
    return (src.height + bh - 1) // bh, (src.width + bw - 1) // bw


def read_tile(info: RasterInfo, window: Window | None = None) -> Tile:
    """Read a window (default: the whole raster) with its validity mask."""
    window = window or Window(0, 0, info.width, info.height)
    try:
        with gdal_env(), rasterio.open(info.path) as src:
            data = src.read(window=window)
            transform = src.window_transform(window)
            internal_mask = src.read_masks(1, window=window) if info.has_dataset_mask else None
    except RasterioError as exc:
        raise RasterError(
            f"cannot read pixels of {info.path} (truncated or corrupt?): {_gdal_message(exc)}"
        ) from exc
    return Tile(
        data=data,
        valid=_valid_pixels(info, data, internal_mask),
        window=window,
        transform=transform,
    )


def _valid_pixels(info: RasterInfo, data: np.ndarray, internal_mask: np.ndarray | None):
    """A pixel is valid unless all its data bands are nodata, its alpha is 0 or it is masked.

    GDAL's own dataset mask lets nodata shadow alpha; we honour all three sources.
    """
    bands = list(info.data_bands)
    valid = ~nodata_pixels(data[bands], info.nodata).all(axis=0)
    if info.alpha_band is not None:
        valid &= data[info.alpha_band] > 0
    if internal_mask is not None:
        valid &= internal_mask > 0
    return valid


def nodata_pixels(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Per-band-element mask of values equal to nodata (NaN-aware)."""
    if nodata is None:
        return np.zeros(data.shape, dtype=bool)
    if np.isnan(nodata):
        return np.isnan(data)
    return data == np.asarray(nodata).astype(data.dtype)


def write_result(
    info: RasterInfo,
    output: str | os.PathLike,
    pieces: Sequence[tuple[Window, np.ndarray]],
    *,
    settings: dict | None = None,
    cog: bool = False,
) -> Path:
    """Write the input raster with each (window, data) piece put in place (all bands, native
    dtype; the windows must not overlap).

    The file appears at `output` only when it is complete (temporary file + rename).
    """
    output = Path(output)
    for window, data in pieces:
        if data.shape != (info.count, int(window.height), int(window.width)):
            raise ValueError(f"data shape {data.shape} does not match the window {window}")
        if data.dtype != np.dtype(info.dtype):
            raise ValueError(f"data dtype {data.dtype} differs from the raster's {info.dtype}")
    check_output_path(info, output)
    try:
        # Temporary file, umask mode, rename into place; the temporary file and its sidecar
        # are removed on failure.
        with atomic_path(output) as tmp:
            cog_tmp = tmp.with_suffix(".cog.tmp")
            try:
                _write_copy(info, tmp, cog_tmp, pieces, settings=settings, cog=cog)
            finally:
                for leftover in (cog_tmp, _sidecar(cog_tmp)):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
        # A sidecar left by an earlier file at OUTPUT (QGIS writes statistics there) would be
        # read as this file's metadata: it goes with the file it described.
        with contextlib.suppress(FileNotFoundError):
            _sidecar(output).unlink()
    except (RasterioError, SystemError) as exc:  # rasterio: SystemError for GDAL failures
        raise RasterError(f"cannot write {output}: {_gdal_message(exc)}") from exc
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output


def _write_copy(
    info: RasterInfo,
    tmp: Path,
    cog_tmp: Path,
    pieces: Sequence[tuple[Window, np.ndarray]],
    *,
    settings: dict | None,
    cog: bool,
) -> None:
    """The input raster with the pieces put in place, at `tmp` (via `cog_tmp` for a COG)."""
    with gdal_env():
        with rasterio.open(info.path) as src:
            options = _creation_options(src)
            if _can_copy_bytes(src):
                # Byte copy: no decompression of the whole scene, metadata identical.
                shutil.copyfile(info.path, tmp)
            else:
                # From the file alone: what its sidecar says is re-applied below, filtered.
                with rasterio.Env(GDAL_PAM_ENABLED="NO"):
                    rasterio.shutil.copy(info.path, tmp, driver="GTiff", **options)
            with rasterio.open(tmp, "r+") as dst:
                _copy_metadata(src, dst)
                for window, data in pieces:
                    dst.write(data, window=window)
                if settings is not None:
                    dst.update_tags(**{RESULT_TAG: json.dumps(settings, sort_keys=True)})
        if cog:
            rasterio.shutil.copy(tmp, cog_tmp, driver="COG", **_cog_options(options))
            os.replace(cog_tmp, tmp)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".aux.xml")


def _can_copy_bytes(src) -> bool:
    """A plain, losslessly compressed GeoTIFF without overviews can be copied byte for byte and
    edited in place. Overviews would go stale and a COG's layout would break, so those (and lossy
    or non-TIFF inputs) are re-encoded by GDAL instead."""
    compression = src.compression.name.lower() if src.compression else "none"
    return (
        src.driver == "GTiff"
        and compression in LOSSLESS_COMPRESSIONS
        and not src.overviews(1)
        and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG"
        and not src.subdatasets
    )


def check_output_path(info: RasterInfo, output: Path) -> None:
    if not output.parent.is_dir():
        raise InputError(f"output folder does not exist: {output.parent}")
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise InputError(f"output folder is not writable: {output.parent}")
    if output.exists() and output.resolve() == Path(info.path).resolve():
        raise InputError(f"output would overwrite the input raster: {output}")
    if output.is_dir():
        raise InputError(f"output is a directory: {output}")


def _creation_options(src) -> dict:
    """GeoTIFF creation options that mirror the input's layout, always lossless."""
    options: dict = {"BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS"}
    profile = src.profile
    compression = (src.compression.name.lower() if src.compression else "none") or "none"
    if compression not in LOSSLESS_COMPRESSIONS:
        compression = "deflate"
    options["COMPRESS"] = compression.upper()
    if compression in {"deflate", "lzw", "zstd"}:
        predictor = src.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR")
        if predictor:
            options["PREDICTOR"] = predictor
    if src.driver == "GTiff":
        if profile.get("tiled"):
            options.update(
                TILED="YES", BLOCKXSIZE=profile["blockxsize"], BLOCKYSIZE=profile["blockysize"]
            )
        interleave = profile.get("interleave")
        if interleave in ("band", "pixel"):
            options["INTERLEAVE"] = interleave.upper()
    else:
        options["TILED"] = "YES"
    if src.count in (3, 4) and src.dtypes[0] == "uint8" and _is_rgb(src.colorinterp):
        options["PHOTOMETRIC"] = "RGB"
        if src.count == 4 and src.colorinterp[3] == ColorInterp.alpha:
            options["ALPHA"] = "YES"
    return options


def _is_rgb(colorinterp) -> bool:
    return tuple(colorinterp[:3]) == (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


def _cog_options(options: dict) -> dict:
    keep = {
        k: v for k, v in options.items() if k in ("BIGTIFF", "COMPRESS", "PREDICTOR", "NUM_THREADS")
    }
    keep["OVERVIEWS"] = "NONE"  # overviews are a rendering aid; the user asked for pixels
    return keep


def _copy_metadata(src, dst) -> None:
    """Re-apply every metadata item explicitly: CreateCopy does not carry all of them everywhere,
    and a byte copy does not carry what the input keeps in a `.aux.xml` sidecar."""
    if src.crs is not None and dst.crs != src.crs:
        dst.crs = src.crs
    if not src.transform.is_identity and dst.transform != src.transform:
        dst.transform = src.transform
    dst.colorinterp = src.colorinterp
    if src.nodata is not None:
        dst.nodata = src.nodata
    dst.update_tags(**src.tags())
    for bidx in range(1, src.count + 1):
        if src.descriptions[bidx - 1]:
            dst.set_band_description(bidx, src.descriptions[bidx - 1])
        if src.units[bidx - 1]:
            dst.set_band_unit(bidx, src.units[bidx - 1])
        # The input's statistics (often in its sidecar) do not describe the edited pixels.
        band_tags = {k: v for k, v in src.tags(bidx).items() if not k.startswith("STATISTICS_")}
        if band_tags:
            dst.update_tags(bidx, **band_tags)
    if any(s != 1.0 for s in src.scales):
        dst.scales = src.scales
    if any(o != 0.0 for o in src.offsets):
        dst.offsets = src.offsets


def _gdal_message(exc: Exception) -> str:
    """The first line of GDAL's message, without the path noise rasterio sometimes adds (and
    GDAL's own error where rasterio only says "see previous exception")."""
    if "previous exception" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
