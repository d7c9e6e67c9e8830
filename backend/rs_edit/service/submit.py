"""Checking a submission before it becomes a job: everything knowable now is refused now.

The edit's own plan (`rs_edit.plan.plan_edit`: options, the raster's header, the ROI as GeoJSON
reprojected and clipped or a mask on the same grid, the band choice, the windows to edit and
their size), plus the uploads' integrity (`check_integrity` decodes every block of the image and
of the mask once, whatever their size) and the memory estimate of the planned windows. Before
any of that, the service's own rules: only GeoTIFF uploads (no VRT or other formats that could
name other files), the declared size within limits (read from the header, before any pixel), a
GeoJSON ROI parsed here from text (never a path) whose `crs` member may only name a CRS, and
CLIP models by name only. Messages name the form field ("image", "mask"), never a server path.

An example image to look like (`reference`, with `reference_roi` polygons on it and a
`reference_weight`) is an upload checked as the image is (header, limits, every block) and then
by the plan (`example.plan_example`: bands that match the image's, polygons on it, a usable
size). It is stored under its own file name, made safe (`example_file_name`), which the job's
report and the result's tags then show; messages name it by that name, never its server path.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import rasterio
from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator, create_model
from pydantic_core import PydanticCustomError
from rasterio.errors import RasterioError
from shapely.geometry import shape
from shapely.validation import explain_validity

from ..bands import parse_band_list
from ..edit import EditOptions
from ..engine.presets import AUTO, DEFAULT_PRESET, PRESET_NAMES, get_preset
from ..errors import CrsError, InputError, ParameterError, RasterError, RoiError
from ..guidance import GUIDANCE_METHODS
from ..guidance.clip import (
    DEFAULT_CLIP,
    REMOTECLIP_MODELS,
    TINY_RANDOM,
    check_remoteclip_obtainable,
)
from ..memory import check_edit
from ..plan import WindowTooLargeError, plan_edit
from ..raster import check_integrity, gdal_env, inspect_raster
from .config import Limits
from .errors import BAD_PARAMETER, LimitError, name_field

SERVICE_CLIP_MODELS = (TINY_RANDOM, *REMOTECLIP_MODELS)
# The presets a job may name: `auto` first; `reference` (the published training) is for
# `rs-edit bench` only.
EDIT_PRESETS = tuple(n for n in PRESET_NAMES if n == AUTO or not get_preset(n).max_pixels)
LLM_OPTIONS = ("none", "openai")
SEED_BOUND = 2**63  # seeds are below (exact as the schema's float, unlike 2**63 - 1)
MAX_PX = 4096  # feather and dilate, as `EditOptions.validate`
DEFAULT_REFERENCE_WEIGHT = EditOptions.reference_weight  # the dataclass default (0..1)
# One band number (the same band as R, G and B) or three; blank: chosen from the raster.
RGB_BANDS_PATTERN = r"^\s*(\d{1,4}\s*(,\s*\d{1,4}\s*,\s*\d{1,4}\s*)?)?$"
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# A GeoJSON `crs` name: EPSG:4326, urn:ogc:def:crs:EPSG::32633, OGC:CRS84, ... (no paths).
_CRS_NAME = re.compile(
    r"(urn:ogc:def:crs:)?[A-Za-z][A-Za-z0-9_.-]{0,30}:{1,2}[A-Za-z0-9_.:-]{1,40}"
)
_MAX_GEOJSON_DEPTH = 32


def check_clip_weights(clip: str) -> None:
    """A RemoteCLIP whose weights are neither here nor downloadable: refused now (400), not a
    job that fails later. The message names the file; never the server's folder."""
    if clip not in REMOTECLIP_MODELS:
        return
    try:
        check_remoteclip_obtainable(clip)
    except ParameterError:
        raise ParameterError(
            f"CLIP weights {clip}.pt are not on this server and cannot be downloaded now: "
            "ask its operator to install them, or choose another CLIP model"
        ) from None


# pydantic's errors for a value of the right type that breaks a field's constraint: refused as a
# bad parameter (400, `BAD_PARAMETER`); a missing field or a wrong type stays a 422.
_CONSTRAINT_ERRORS = frozenset(
    {
        "greater_than",
        "greater_than_equal",
        "less_than",
        "less_than_equal",
        "literal_error",
        "string_pattern_mismatch",
        "string_too_long",
        "string_too_short",
    }
)


def _refused(message):
    """A field validator around the field's own constraints (which the OpenAPI schema shows):
    a value that breaks one is refused with `message(value)` as a `BAD_PARAMETER` error."""

    def wrap(value, handler):
        try:
            return handler(value)
        except ValidationError as exc:
            if not any(e["type"] in _CONSTRAINT_ERRORS for e in exc.errors()):
                raise
            text = message(value)
        raise PydanticCustomError(BAD_PARAMETER, "{message}", {"message": text})

    return WrapValidator(wrap)


def _shown(value) -> str:
    return repr(value[:80] if isinstance(value, str) else value)


def _between(name: str, low: int, high: int, high_text: str | None = None):
    high_text = high_text or str(high)
    return _refused(lambda v: f"{name} must be between {low} and {high_text}, got {_shown(v)}")


def _preset_message(value) -> str:
    if value in PRESET_NAMES:
        return (
            f"preset {value!r} reproduces the published training for benchmarks (rs-edit bench); "
            f"edit with {', '.join(EDIT_PRESETS)}"
        )
    return f"unknown preset {_shown(value)} (known: {', '.join(EDIT_PRESETS)})"


def job_form(limits: Limits) -> type[BaseModel]:
    """The fields of `POST /v1/jobs` (multipart/form-data) under these limits: types, required
    fields, choices and ranges in one pydantic model, which is also what the OpenAPI schema
    documents. A missing field or a wrong type is a 422; a value out of range or not among the
    choices a 400 (`BAD_PARAMETER`) naming the field."""

    def prompt_message(value) -> str:
        if not str(value).strip():
            return "prompt is empty"
        return f"prompt is too long ({len(value)} > {limits.max_prompt_chars} characters)"

    def choice(name: str, known):
        return _refused(lambda v: f"unknown {name} {_shown(v)} (known: {', '.join(known)})")

    fields = {
        "image": (UploadFile, Field(description="the GeoTIFF to edit")),
        "prompt": (
            Annotated[
                str,
                Field(pattern=r"\S", max_length=limits.max_prompt_chars),
                _refused(prompt_message),
            ],
            Field(description="what the ROI should show (not blank)"),
        ),
        "roi": (
            str | None,
            Field(None, description="GeoJSON polygons (any CRS); without roi and mask: all"),
        ),
        "mask": (
            UploadFile | None,
            Field(None, description="mask GeoTIFF on the image's grid, non-zero = edit"),
        ),
        "preset": (
            Annotated[Literal[EDIT_PRESETS], _refused(_preset_message)],
            Field(DEFAULT_PRESET, description="auto: the preset for the server's device"),
        ),
        "seed": (
            Annotated[
                int, Field(ge=0, lt=SEED_BOUND), _between("seed", 0, SEED_BOUND - 1, "2**63-1")
            ]
            | None,
            Field(None, description="for a reproducible result; none: random"),
        ),
        "clip": (
            Annotated[
                Literal[SERVICE_CLIP_MODELS],
                _refused(
                    lambda v: (
                        f"unknown CLIP model {_shown(v)}: the service accepts "
                        + ", ".join(SERVICE_CLIP_MODELS)
                    )
                ),
            ],
            Field(DEFAULT_CLIP, description="CLIP model name"),
        ),
        "llm": (
            Annotated[Literal[LLM_OPTIONS], choice("LLM option", LLM_OPTIONS)],
            Field("none", description="none, or openai: prompt ensembling by an LLM"),
        ),
        "variants": (
            Annotated[
                int,
                Field(ge=1, le=limits.max_variants),
                _between("variants", 1, limits.max_variants),
            ],
            Field(1, description="how many results"),
        ),
        "guidance": (
            Annotated[Literal[GUIDANCE_METHODS], choice("guidance", GUIDANCE_METHODS)],
            Field("auto", description="auto (by the preset), finetune, sampling or none"),
        ),
        "rgb_bands": (
            Annotated[
                str,
                Field(pattern=RGB_BANDS_PATTERN),
                _refused(
                    lambda v: (
                        "rgb_bands must be 1 or 3 comma-separated band numbers "
                        f"(e.g. 4,3,2), got {_shown(v)}"
                    )
                ),
            ]
            | None,
            Field(None, description="the bands CLIP sees as RGB, e.g. 4,3,2"),
        ),
        "feather": (
            Annotated[int, Field(ge=0, le=MAX_PX), _between("feather", 0, MAX_PX)],
            Field(EditOptions.feather_px, description="feather width inside the ROI (px)"),
        ),
        "dilate": (
            Annotated[int, Field(ge=0, le=MAX_PX), _between("dilate", 0, MAX_PX)],
            Field(0, description="grow the ROI by px"),
        ),
        "repair_roi": (bool, Field(False, description="repair invalid polygons")),
        "reference": (
            UploadFile | None,
            Field(
                None,
                description="an example GeoTIFF whose look the ROI takes on (resampled to the "
                "image's resolution and bands: the same bands, or RGB for an RGB image)",
            ),
        ),
        "reference_roi": (
            str | None,
            Field(
                None,
                description="GeoJSON polygons of the example to use (any CRS); only with "
                "reference; without: all of it",
            ),
        ),
        "reference_weight": (
            Annotated[float, Field(ge=0, le=1), _between("reference_weight", 0, 1)] | None,
            Field(
                None,
                description="the example's weight against the prompt and the image's own look: "
                f"0 = text only, 1 = example only (default {DEFAULT_REFERENCE_WEIGHT})",
            ),
        ),
    }
    return create_model(
        "JobForm",
        __doc__="The fields of a job submission.",
        __config__=ConfigDict(json_schema_extra=_absent_not_null),
        **fields,
    )


def _absent_not_null(schema: dict, model=None) -> None:
    """A form field is left out to mean 'none' (a form has no null): the schema of an optional
    field says its type, without pydantic's `anyOf [..., null]`."""
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf")
        if not options:
            continue
        kept = [o for o in options if o.get("type") != "null"]
        if len(kept) == 1 and len(options) == 2:
            del prop["anyOf"]
            schema["properties"][name] = {**kept[0], **prop}


def build_options(form, *, has_reference: bool = False) -> EditOptions:
    """The job's options from a checked `job_form` (ParameterError on what only the options as
    a whole can tell, `EditOptions.validate`). The example's files are not stored yet: they
    join the options by `with_example`; `has_reference` says whether one was uploaded."""
    if form.reference_roi is not None and not has_reference:
        raise ParameterError(
            "reference_roi outlines parts of an example image: send the example as reference "
            "too, or leave reference_roi out"
        )
    weight = form.reference_weight
    bands = None
    if form.rgb_bands is not None and form.rgb_bands.strip():
        bands = parse_band_list(form.rgb_bands)
    return EditOptions(
        prompt=form.prompt,
        preset=form.preset,
        seed=form.seed,
        clip=form.clip,
        llm=form.llm,
        variants=form.variants,
        guidance=form.guidance,
        rgb_bands=bands,
        dilate_px=form.dilate,
        feather_px=form.feather,
        reference_weight=DEFAULT_REFERENCE_WEIGHT if weight is None else weight,
    ).validate()


def with_example(
    options: EditOptions, reference: Path | None, reference_roi: Path | None
) -> EditOptions:
    """`options` with the stored example image and its polygons (GeoJSON file), checked."""
    if reference is None:
        return options
    return replace(
        options,
        reference=str(reference),
        reference_roi=None if reference_roi is None else str(reference_roi),
    ).validate()


def example_file_name(filename: str | None) -> str:
    """The name the example is stored (and reported) under: the client's file name without
    any folder, in letters, digits, `.`, `-` and `_` only, at most 100 characters, ending in
    .tif (it is a GeoTIFF); `reference.tif` when nothing of it is left."""
    name = re.split(r"[\\/]", filename or "")[-1]
    stem = Path(name).stem if Path(name).suffix.lower() in (".tif", ".tiff") else name
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:96]
    return f"{stem or 'reference'}.tif"


def check_geotiff_header(path: Path, field: str, limits: Limits) -> None:
    """The upload is a GeoTIFF whose declared size is within limits (no pixel is read)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise RasterError(f"{field} is empty (0 bytes)")
    if magic not in _TIFF_MAGIC:
        raise RasterError(f"{field} is not a GeoTIFF (the file does not start with a TIFF header)")
    try:
        with gdal_env(), rasterio.open(path, driver="GTiff") as src:
            width, height, count = src.width, src.height, src.count
    except RasterioError as exc:
        message = name_field(str(exc), path, field)
        raise RasterError(
            f"{field} cannot be read as a GeoTIFF (truncated or corrupt?): {message}"
        ) from None
    if width > limits.max_width or height > limits.max_height:
        raise LimitError(
            f"{field} is {width}x{height} pixels; this server accepts at most "
            f"{limits.max_width}x{limits.max_height}"
        )
    if width * height > limits.max_pixels:
        raise LimitError(
            f"{field} has {width * height:,} pixels; this server accepts at most "
            f"{limits.max_pixels:,}"
        )
    if count > limits.max_bands:
        raise LimitError(
            f"{field} has {count} bands; this server accepts at most {limits.max_bands}"
        )


def parse_roi(text: str, limits: Limits, *, repair: bool, field: str = "roi") -> dict:
    """A GeoJSON ROI from the form's text field `field` (roi, reference_roi): parsed here (text
    is never taken for a path), its `crs` member checked to be a CRS name, and its polygons
    valid unless `repair` is asked for."""
    if len(text.encode("utf-8", "replace")) > limits.max_roi_bytes:
        raise LimitError(f"{field} is larger than {limits.max_roi_bytes:,} bytes")
    if not text.strip():
        raise RoiError(f"{field} is empty: send GeoJSON polygons, or leave the field out")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RoiError(f"{field} is not valid JSON: {exc}") from None
    except RecursionError:
        raise RoiError(f"{field} is not usable GeoJSON: nested too deeply") from None
    if not isinstance(obj, dict) or "type" not in obj:
        raise RoiError(f"{field} is not GeoJSON: expected an object with a 'type' member")
    polygons = list(_polygons(obj, 0, field))
    crs = obj.get("crs")
    if crs is not None:
        props = crs.get("properties") if isinstance(crs, dict) else None
        name = props.get("name") if isinstance(props, dict) else None
        if not isinstance(name, str) or not _CRS_NAME.fullmatch(name):
            raise CrsError(
                f"{field}'s 'crs' member must name a CRS, e.g. "
                '{"type": "name", "properties": {"name": "EPSG:32633"}}'
            )
    if not repair:
        for geometry in polygons:
            try:
                geom = shape(geometry)
            except Exception:  # malformed coordinates: reported by the full check
                continue
            if not geom.is_empty and not geom.is_valid:
                raise RoiError(
                    f"{field} polygon is invalid ({explain_validity(geom)}): fix it, or send "
                    "repair_roi=true to have it repaired"
                )
    return obj


def _polygons(obj, depth: int, field: str = "roi"):
    """The Polygon/MultiPolygon geometry objects anywhere in a GeoJSON object."""
    if depth > _MAX_GEOJSON_DEPTH:
        raise RoiError(f"{field} is not usable GeoJSON: nested too deeply")
    if not isinstance(obj, dict):
        return
    kind = obj.get("type")
    if kind in ("Polygon", "MultiPolygon"):
        yield obj
    elif kind == "FeatureCollection" and isinstance(obj.get("features"), list):
        for feature in obj["features"]:
            yield from _polygons(feature, depth + 1, field)
    elif kind == "Feature":
        yield from _polygons(obj.get("geometry"), depth + 1, field)
    elif kind == "GeometryCollection" and isinstance(obj.get("geometries"), list):
        for geometry in obj["geometries"]:
            yield from _polygons(geometry, depth + 1, field)


def validate_inputs(
    image: Path,
    options: EditOptions,
    *,
    roi: dict | None,
    mask: Path | None,
    limits: Limits,
    memory_budget_mb: int | None = None,
    device_type: str = "cpu",
) -> dict:
    """Everything the edit's plan checks (`plan_edit`: the windows the job will read), without
    reading pixels, and the uploads' blocks all decoded once (`raster.check_integrity`: a corrupt
    block is a 400 now, not a job that fails later). Returns a summary for the job.

    With `memory_budget_mb`, an edit whose estimated peak memory (`memory.estimate_edit`: the
    plan's windows, the bands, the preset) exceeds it is refused too (`MemoryBudgetError`, 413):
    a small upload can declare a large raster (a 4600x4600 all-zero DEFLATE GeoTIFF is 72 KB).

    The example (`options.reference`, a stored upload) is checked as the image is, then by the
    plan (`example.plan_example`)."""
    reference = Path(options.reference) if options.reference else None
    try:
        check_geotiff_header(image, "image", limits)
        info = inspect_raster(image)
        check_integrity(image)  # every block, whatever the size (`inspect_raster`: up to 64 MB)
        if roi is not None and mask is not None:
            raise ParameterError("send either roi (GeoJSON) or mask (a raster), not both")
        if mask is not None:
            check_geotiff_header(mask, "mask", limits)
            check_integrity(mask)
        if reference is not None:
            check_example(reference, limits)
        try:
            plan = plan_edit(image, options, roi_geojson=roi, mask_path=mask, info=info)
        except WindowTooLargeError as exc:
            window = exc.window
            raise LimitError(
                f"the area to edit ({window.width}x{window.height} px with context) is larger "
                f"than {exc.limit:,} px: send a smaller ROI"
            ) from None
        region = plan.roi
    except RecursionError:
        raise RoiError("roi is not usable GeoJSON: nested too deeply") from None
    except InputError as exc:
        message = str(exc)
        if reference is not None:  # by its own (client's) file name, before "input.tif" goes
            message = message.replace(str(reference), reference.name)
        message = name_field(message, image, "image")
        if mask is not None:
            message = name_field(message, mask, "mask")
        raise type(exc)(message) from None
    estimate = None
    if memory_budget_mb is not None:
        estimate = check_edit(
            plan,
            memory_budget_mb,
            device_type=device_type,
            hint="; this server's memory budget is set by its operator (--memory-budget)",
        )
    return {
        "width": info.width,
        "height": info.height,
        "bands": info.count,
        "dtype": info.dtype,
        "crs": info.crs.to_string() if info.crs else None,
        "roi": "geojson" if roi is not None else "mask" if mask is not None else "whole image",
        "roi_window": [int(region.bbox.col_off), int(region.bbox.row_off)]
        + [int(region.bbox.width), int(region.bbox.height)],
        "roi_clipped": bool(getattr(region, "clipped", False)),
        "memory_estimate_mb": estimate,
        "reference": None if plan.example is None else plan.example.describe(),
    }


def check_example(path: Path, limits: Limits) -> None:
    """The example upload by the image's rules: a GeoTIFF within the limits, every block
    readable. Messages call it by its form field, `reference`."""
    try:
        check_geotiff_header(path, "reference", limits)
        check_integrity(path)
    except InputError as exc:
        raise type(exc)(name_field(str(exc), path, "reference")) from None
