"""One edit job from start to end, without widgets: prepare (main thread, cheap, refuses bad
input at once) and run (blocking: export the tile, rasterize the ROI, submit, poll, download).
A job may carry an example image ("make this look like that", sent as `reference`).

`run_job` is what the background QgsTask and the Processing algorithm both execute.
"""

import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsFeedback,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)

from . import area, roi, settings
from .client import BackendClient, BackendError, CancelledError

RESUBMITS = 2  # how often a job that a backend restart interrupted is submitted again
# An ROI covering more than this share of the area sent regenerates (nearly) the whole tile:
# the dock asks first, the Processing algorithm refuses unless told to go ahead.
LARGE_ROI_SHARE = 0.5
MAX_EXAMPLE_SIDE = 4096  # px at the example layer's resolution, each side


class JobError(Exception):
    """A job cannot be started or failed; the message is ready for the user."""


@dataclass
class Example:
    """The example image of a job: a window of a raster layer at its own CRS and resolution,
    and the example polygons on it as GeoJSON (sent as `reference`, `reference_roi`,
    `reference_weight`)."""

    source: area.RasterSource
    window: area.TileWindow
    roi_geojson: str = ""  # "": the whole layer is the example
    weight: float | None = None  # None: the backend's default
    layer_id: str = ""

    def form_fields(self) -> dict:
        fields = {}
        if self.roi_geojson:
            fields["reference_roi"] = self.roi_geojson
        if self.weight is not None:
            fields["reference_weight"] = f"{self.weight:g}"
        return fields

    def describe(self) -> str:
        """ "W x H px from LAYER" (and "(whole layer)" without example polygons)."""
        text = f"{self.window.width} x {self.window.height} px from {self.source.name}"
        return text if self.roi_geojson else f"{text} (whole layer)"


@dataclass
class EditRequest:
    """Everything one job needs, prepared on the main thread."""

    base_url: str
    source: area.RasterSource
    window: area.TileWindow
    fields: dict  # prompt, preset, seed, clip, llm, variants (and rgb_bands): the POST form
    out_stem: Path  # results: <stem>.tif, or <stem>_v1.tif ... for several variants
    roi_wkb: list = field(default_factory=list)  # ROI polygons in the tile's CRS; []: whole tile
    layer_id: str = ""
    poll_interval_s: float = 1.0
    reconnect_s: float = 120.0  # how long polling goes on while the backend is unreachable
    token: str = field(default="", repr=False)  # never in repr or logs
    transform_context: object = None
    work_dir: Path | None = None  # where the tile and mask go; default <results>/inputs
    full_scene: bool = False  # also write the full-scene pre/post/mask set (scene.py)
    example: Example | None = None  # "make this look like that"; None: the prompt alone

    @property
    def prompt(self) -> str:
        return self.fields["prompt"]

    @property
    def variants(self) -> int:
        return int(self.fields.get("variants", 1))

    @property
    def inputs_dir(self) -> Path:
        return Path(self.work_dir) if self.work_dir else self.out_stem.parent / "inputs"

    @property
    def tile_path(self) -> Path:
        return self.inputs_dir / f"{self.out_stem.name}_tile.tif"

    @property
    def mask_path(self) -> Path | None:
        if not self.roi_wkb:
            return None
        return self.inputs_dir / f"{self.out_stem.name}_mask.tif"

    @property
    def reference_path(self) -> Path | None:
        if self.example is None:
            return None
        return self.inputs_dir / f"{self.out_stem.name}_reference.tif"

    def form_fields(self) -> dict:
        """The POST form: the job's fields and, with an example, its reference fields."""
        if self.example is None:
            return dict(self.fields)
        return {**self.fields, **self.example.form_fields()}

    def output_paths(self) -> list[Path]:
        if self.variants == 1:
            return [self.out_stem.with_suffix(".tif")]
        stem = self.out_stem
        return [stem.with_name(f"{stem.name}_v{i}.tif") for i in range(1, self.variants + 1)]

    def roi_share(self) -> float:
        """The share (0-1) of the area sent that the ROI covers; 1 without an ROI."""
        if not self.roi_wkb:
            return 1.0
        tile = area_geometry(self.window)
        if tile.area() <= 0:
            return 1.0
        union = QgsGeometry.unaryUnion([_from_wkb(w) for w in self.roi_wkb])
        return min(1.0, union.intersection(tile).area() / tile.area())

    def large_roi_text(self) -> str:
        """Why the edit is large: '' when the ROI covers at most LARGE_ROI_SHARE."""
        share = self.roi_share()
        if share <= LARGE_ROI_SHARE:
            return ""
        what = "there is no ROI" if not self.roi_wkb else f"the ROI covers {share:.0%} of it"
        return (
            f"the whole area sent ({self.window.width} x {self.window.height} px of "
            f"{self.source.name}) is regenerated: {what}"
        )

    def settings_record(self) -> dict:
        """What goes into the result layer's metadata (never the token)."""
        record = dict(self.fields)
        record.update(
            source_layer=self.source.name,
            tile_size=f"{self.window.width}x{self.window.height}",
            tile_offset=f"{self.window.xoff},{self.window.yoff}",
            roi="polygons" if self.roi_wkb else "whole tile",
            backend=self.base_url,
        )
        if self.example is not None:
            record["reference"] = self.example.describe()
            if self.example.weight is not None:
                record["reference_weight"] = self.example.weight
        return record


def job_fields(
    prompt: str,
    preset: str = settings.DEFAULT_PRESET,
    seed: int | None = None,
    clip: str = settings.DEFAULT_CLIP,
    llm: str = "none",
    variants: int = 1,
    rgb_bands=None,
) -> dict:
    """The form fields of POST /v1/jobs, checked. A missing seed gets a random one, so that the
    result's metadata says how to reproduce it."""
    prompt = " ".join((prompt or "").split())
    if not prompt:
        raise JobError("the prompt is empty: say what the area should become")
    if not 1 <= int(variants) <= 16:
        raise JobError("variants must be between 1 and 16")
    if seed is None or int(seed) < 0:
        seed = secrets.randbelow(2**31)
    fields = {
        "prompt": prompt,
        "preset": preset or settings.DEFAULT_PRESET,
        "seed": int(seed),
        "clip": clip or settings.DEFAULT_CLIP,
        "llm": llm or "none",
        "variants": int(variants),
    }
    if rgb_bands:
        fields["rgb_bands"] = ",".join(str(int(b)) for b in rgb_bands)
    return fields


def prepare_request(
    layer: QgsRasterLayer,
    extent: QgsRectangle,
    extent_crs: QgsCoordinateReferenceSystem,
    fields: dict,
    *,
    roi_geometries=None,
    roi_crs: QgsCoordinateReferenceSystem | None = None,
    base_url: str | None = None,
    token: str | None = None,
    out_dir: Path | None = None,
    max_pixels: int | None = None,
    max_width: int = 0,
    max_height: int = 0,
    project: QgsProject | None = None,
    full_scene: bool = False,
    example: Example | None = None,
) -> EditRequest:
    """Check and freeze one job: the window of `layer` covering `extent`, the ROI polygons in
    the tile's CRS, the output location (and the example, from `prepare_example`). Raises
    AreaError, RoiError or JobError at once."""
    project = project or QgsProject.instance()
    if layer is None or not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise JobError("choose a valid raster layer to edit")
    window = area.window_for_extent(layer, extent, extent_crs, project)
    limit = settings.max_tile_pixels() if max_pixels is None else max_pixels
    area.check_size(window, limit, max_width, max_height)
    roi_wkb = []
    if roi_geometries is not None:
        geometries = [g for g in roi_geometries if g is not None and not g.isEmpty()]
        if not geometries:
            raise roi.RoiError("no ROI polygon: draw one on the map or select polygon features")
        in_tile = roi.transform_geometries(geometries, roi_crs or layer.crs(), window.crs, project)
        if not any(g.intersects(area_geometry(window)) for g in in_tile):
            raster = QgsGeometry.fromRect(layer.extent())  # the window's CRS is the layer's
            if not any(g.intersects(raster) for g in in_tile):
                raise roi.RoiError(
                    f"the ROI lies outside the raster {layer.name()}: draw it on the raster "
                    "(or choose the raster layer it was drawn on)"
                )
            raise roi.RoiError(
                "the ROI lies outside the area: draw it inside the area, or enlarge the area"
            )
        roi_wkb = [bytes(g.asWkb()) for g in in_tile]
    if full_scene and not area.gdal_path(layer):
        raise JobError(
            f"full-scene outputs need a raster file GDAL reads; {layer.name()!r} is not one "
            "(untick Full-scene outputs, or save the layer as a GeoTIFF first)"
        )
    out_dir = Path(out_dir) if out_dir else settings.results_dir(project)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the results folder {out_dir}: {exc}") from exc
    from .results import result_stem  # local: results imports settings only

    return EditRequest(
        base_url=base_url or settings.backend_url(),
        source=area.RasterSource.from_layer(layer),
        window=window,
        fields=fields,
        out_stem=result_stem(fields["prompt"], out_dir),
        roi_wkb=roi_wkb,
        layer_id=layer.id(),
        poll_interval_s=float(settings.option("poll_interval_s")),
        token=settings.token() if token is None else token,
        transform_context=project.transformContext(),
        full_scene=bool(full_scene),
        example=example,
    )


# --- the example image ---------------------------------------------------------------------


def prepare_example(
    layer: QgsRasterLayer,
    geometries=None,
    geometries_crs: QgsCoordinateReferenceSystem | None = None,
    weight: float | None = None,
    project: QgsProject | None = None,
) -> Example:
    """Check and freeze the example: the bounding box of the example polygons on `layer`'s
    grid (the whole layer without polygons), at most MAX_EXAMPLE_SIDE px each side. The same
    layer as the one edited is fine (a patch of the same scene). Raises JobError."""
    project = project or QgsProject.instance()
    if layer is None or not isinstance(layer, QgsRasterLayer) or not layer.isValid():
        raise JobError("the example layer is not a valid raster layer: choose another one")
    if weight is not None and not 0.0 <= float(weight) <= 1.0:
        raise JobError(f"the example weight must be between 0 and 1, not {weight}")
    polygons = [g for g in (geometries or []) if g is not None and not g.isEmpty()]
    geojson = ""
    try:
        if polygons:
            in_layer = roi.transform_geometries(
                polygons, geometries_crs or layer.crs(), layer.crs(), project
            )
            window = _example_window(layer, QgsGeometry.unaryUnion(in_layer).boundingBox())
            geojson = example_geojson(in_layer, layer.crs(), project)
        else:
            window = area.snap_window(layer, layer.extent())
    except (area.AreaError, roi.RoiError) as exc:
        raise JobError(f"example: {exc}") from exc
    if max(window.width, window.height) > MAX_EXAMPLE_SIDE:
        what = "area" if polygons else "layer"
        raise JobError(
            f"the example {what} is {window.width} x {window.height} px at the resolution of "
            f"{layer.name()!r}; an example may be at most {MAX_EXAMPLE_SIDE} x "
            f"{MAX_EXAMPLE_SIDE} px: draw a smaller example area on it"
        )
    return Example(
        source=area.RasterSource.from_layer(layer),
        window=window,
        roi_geojson=geojson,
        weight=None if weight is None else float(weight),
        layer_id=layer.id(),
    )


def _example_window(layer: QgsRasterLayer, box) -> area.TileWindow:
    """The layer's window covering `box` (layer CRS); a clear message when it misses."""
    if not box.intersects(layer.extent()):
        raise area.AreaError(
            f"the example area lies outside the layer {layer.name()!r}: draw it on that layer"
        )
    return area.snap_window(layer, box)


WGS84 = "EPSG:4326"


def example_geojson(geometries, crs: QgsCoordinateReferenceSystem, project=None) -> str:
    """The polygons (in `crs`) as a GeoJSON FeatureCollection: in `crs` with a named `crs`
    member when it is a projected EPSG CRS, else in EPSG:4326 without one (RFC 7946; a named
    geographic CRS would leave the axis order open)."""
    epsg = crs.authid()[len("EPSG:") :] if crs.authid().startswith("EPSG:") else ""
    named = bool(epsg) and not crs.isGeographic()
    if not named:
        wgs84 = QgsCoordinateReferenceSystem(WGS84)
        geometries = roi.transform_geometries(geometries, crs, wgs84, project)
    features = [
        {"type": "Feature", "properties": {}, "geometry": json.loads(g.asJson())}
        for g in geometries
    ]
    collection = {"type": "FeatureCollection", "features": features}
    if named:
        name = f"urn:ogc:def:crs:EPSG::{epsg}"
        collection["crs"] = {"type": "name", "properties": {"name": name}}
    return json.dumps(collection)


def area_geometry(window: area.TileWindow) -> QgsGeometry:
    return QgsGeometry.fromRect(window.extent)


def _sleep(seconds: float, feedback: QgsFeedback) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if feedback.isCanceled():
            raise CancelledError("cancelled")
        time.sleep(min(0.05, max(0.0, end - time.monotonic())))


def prepare_inputs(request: EditRequest, feedback: QgsFeedback | None = None) -> None:
    """Export the tile and rasterize the ROI mask (blocking, local). Raises JobError."""
    try:
        area.export_window(
            request.source, request.window, request.tile_path, request.transform_context
        )
        mask_path = request.mask_path
        if mask_path is not None:
            geometries = [_from_wkb(w) for w in request.roi_wkb]
            mask = roi.rasterize(geometries, request.window)
            if not mask.any():
                raise roi.RoiError(
                    "the ROI covers no pixel of the area: draw it inside the area, or enlarge it"
                )
            roi.write_mask(mask, request.window, mask_path)
    except (area.AreaError, roi.RoiError) as exc:
        raise JobError(str(exc)) from exc
    if request.example is not None:  # the same export as the tile's, from its own layer
        example = request.example
        try:
            area.export_window(
                example.source, example.window, request.reference_path, request.transform_context
            )
        except area.AreaError as exc:
            raise JobError(f"example: {exc}") from exc
    if feedback is not None and feedback.isCanceled():
        raise CancelledError("cancelled")


def remove_inputs(request: EditRequest) -> None:
    """Delete the inputs exported for a job (tile, mask, example, with GDAL's .aux.xml
    sidecars) and their folder when that is left empty. Once a job has ended nothing reads
    them: a retry after a backend restart resubmits them while the job runs, the full-scene
    set is written before the job ends, and a re-run exports its own."""
    for path in (request.tile_path, request.mask_path, request.reference_path):
        if path is None:
            continue
        for file in (path, path.with_name(path.name + ".aux.xml")):
            with contextlib.suppress(OSError):
                file.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only when empty (another job's inputs may be there)
        request.inputs_dir.rmdir()


def submit_job(request: EditRequest, feedback: QgsFeedback | None = None) -> dict:
    """POST the prepared tile (and mask, and example); returns the backend's job JSON (with
    its id)."""
    client = BackendClient(request.base_url, request.token, feedback)
    return client.submit(
        request.tile_path, request.form_fields(), request.mask_path, request.reference_path
    )


def write_scene_outputs(request: EditRequest, outputs) -> list[Path]:
    """The full-scene pre/post/mask set for a finished job (scene.py); raises JobError."""
    from .scene import SceneError, write_scene_set

    try:
        return write_scene_set(
            request.source.gdal_path, request.window, outputs, request.out_stem, request.mask_path
        )
    except SceneError as exc:
        raise JobError(f"the full-scene outputs could not be written: {exc}") from exc


def job_progress(job: dict) -> float:
    """The plugin's overall progress (5-95) for a backend job JSON."""
    try:
        backend_progress = float(job.get("progress") or 0)
    except (TypeError, ValueError):
        backend_progress = 0.0
    return 5 + 0.9 * max(0.0, min(100.0, backend_progress))


def download_results(
    request: EditRequest, job: dict, feedback: QgsFeedback | None = None, on_progress=None
) -> list[Path]:
    """Download a succeeded job's results to the request's output paths (blocking)."""
    client = BackendClient(request.base_url, request.token, feedback)
    paths = client.result_paths(job, request.variants)
    outputs = []
    for i, (url_path, destination) in enumerate(zip(paths, request.output_paths(), strict=False)):
        if on_progress is not None:
            on_progress(95 + 5 * i / len(paths))
        outputs.append(client.download(url_path, destination))
    return outputs


def run_job(request: EditRequest, feedback: QgsFeedback, on_update=None) -> list[Path]:
    """Export, rasterize, submit, poll, download; blocking (the Processing algorithm runs it in
    Processing's own task; the dock's jobs poll from the main thread, see runner.py).

    `on_update(stage, progress, job)` reports along the way (progress 0-100 overall). The
    exported inputs are removed when it ends, however it ends. Raises CancelledError (after
    asking the backend to cancel), BackendError, JobError.
    """

    def update(stage, progress, job=None):
        feedback.setProgress(progress)
        if on_update is not None:
            on_update(stage, progress, job or {})

    update("exporting", 1)
    try:
        outputs = _run_prepared(request, feedback, update)
    finally:  # whatever the end: the exported inputs are not needed any more
        remove_inputs(request)
    return outputs


def _run_prepared(request: EditRequest, feedback: QgsFeedback, update) -> list[Path]:
    prepare_inputs(request, feedback)
    client = BackendClient(request.base_url, request.token, feedback)
    update("uploading", 3)
    job = submit_job(request, feedback)
    job_id = str(job["id"])
    update("queued", 5, job)
    resubmits, down_since = 0, None
    try:
        while True:
            status = str(job.get("status", ""))
            progress = job_progress(job)
            update(status or "queued", progress, job)
            if status == "succeeded":
                break
            if status == "failed" and job.get("retryable") and resubmits < RESUBMITS:
                # A backend restart interrupted it: the same request is good to send again.
                resubmits += 1
                update("uploading", 3, {**job, "message": "backend restarted: submitting again"})
                job = submit_job(request, feedback)
                job_id = str(job["id"])
                continue
            if status == "failed":
                raise BackendError(job_message(job) or "the backend reported a failed job")
            if status == "cancelled":
                raise CancelledError("the job was cancelled on the backend")
            _sleep(request.poll_interval_s, feedback)
            try:
                job = client.status(job_id)
                down_since = None
            except BackendError as exc:
                # No HTTP answer at all: the backend may be restarting; keep polling a while.
                down_since = down_since or time.monotonic()
                if exc.status is not None or time.monotonic() - down_since > request.reconnect_s:
                    raise
                waiting = f"waiting for the backend to come back ({exc})"
                update(status or "queued", progress, {**job, "message": waiting})

        outputs = download_results(request, job, feedback, lambda p: update("downloading", p, job))
    except CancelledError:
        cancel_remote(request, job_id)
        raise
    update("done", 100, job)
    return outputs


def _from_wkb(wkb: bytes) -> QgsGeometry:
    geometry = QgsGeometry()
    geometry.fromWkb(wkb)
    return geometry


def job_message(job: dict) -> str:
    error = job.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    return str(job.get("message") or "")


def cancel_remote(request: EditRequest, job_id: str) -> None:
    """Ask the backend to cancel (best effort: a backend that is gone cancels nothing)."""
    with contextlib.suppress(BackendError):
        BackendClient(request.base_url, request.token, None, timeout_ms=5000).cancel(job_id)
