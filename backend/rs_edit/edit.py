"""The edit pipeline, top to bottom: plan -> read windows -> edit -> composite -> write.

`plan.plan_edit` does everything that can fail on bad input without reading pixels (so callers
can validate before queuing work): options, raster header, ROI, windows. `read_plan` reads each
window's pixels into a `PreparedTile`; `prepare` (one window around the whole ROI) and
`prepare_windows` (one per group of far-apart polygons) do both. `edit_raster` runs an editor on
a prepared tile and writes the result atomically. An editor maps the tile's model-space image to
an edited one; `identity_editor` exercises the whole raster path without a model. `run_edit`
(`plan_edit`, then `run_plan`) edits polygons that lie far apart in windows of their own and
writes them into one raster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from . import __version__
from .bands import BandScaling
from .composite import FEATHER_PX, composite, roi_alpha
from .engine.presets import AUTO, DEFAULT_PRESET, check_preset_name, get_preset
from .errors import ParameterError
from .example import Example, ExamplePixels, example_for_tile, load_example, read_scene
from .guidance import GUIDANCE_METHODS
from .guidance.clip import DEFAULT_CLIP, check_clip_spec
from .paths import cache_root
from .plan import EditPlan, PlannedWindow, plan_edit
from .progress import ProgressCallback, Stage, no_progress, share, windows
from .raster import RasterInfo, read_tile, write_result
from .report import EditReport
from .roi import Roi

MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class EditOptions:
    """Everything the user chooses for one edit, validated once by `validate`."""

    prompt: str
    preset: str = DEFAULT_PRESET
    seed: int | None = None
    clip: str = DEFAULT_CLIP
    llm: str = "none"
    prompt_ensemble: bool = True  # False: guide by the prompt alone (for comparisons)
    variants: int = 1
    # "finetune" (the paper's), "sampling" (cheaper), "none", or "auto" (by the preset)
    guidance: str = "auto"
    reference: str | None = None  # an example image to look like (`example.py`)
    # Polygons of the example to use (a GeoJSON path or text; None: all of it).
    reference_roi: str | None = None
    reference_weight: float = 0.8  # its weight against the text and the tile (0..1)
    rgb_bands: tuple[int, ...] | None = None  # 1-based raster band numbers
    dilate_px: int = 0
    feather_px: int = FEATHER_PX
    context_px: int = 64  # pixels of context around the ROI that the model learns from
    cog: bool = False

    def validate(self) -> EditOptions:
        prompt = " ".join((self.prompt or "").split())
        if not prompt:
            raise ParameterError("prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise ParameterError(f"prompt is too long ({len(prompt)} > {MAX_PROMPT_CHARS} chars)")
        if check_preset_name(self.preset) != AUTO and get_preset(self.preset).max_pixels:
            raise ParameterError(
                f"preset {self.preset!r} reproduces the published training for benchmarks "
                "(rs-edit bench); edit with auto, tiny, fast, balanced or quality"
            )
        if self.guidance not in GUIDANCE_METHODS:
            raise ParameterError(
                f"unknown guidance {self.guidance!r} (known: {', '.join(GUIDANCE_METHODS)})"
            )
        check_clip_spec(self.clip)
        if self.llm not in ("none", "openai"):
            raise ParameterError(f"unknown LLM option {self.llm!r} (known: none, openai)")
        if not 1 <= self.variants <= 16:
            raise ParameterError(f"variants must be between 1 and 16, got {self.variants}")
        for name in ("dilate_px", "feather_px", "context_px"):
            if not 0 <= getattr(self, name) <= 4096:
                raise ParameterError(f"{name} must be between 0 and 4096")
        if self.reference is not None and not Path(self.reference).is_file():
            raise ParameterError(f"example image not found: {self.reference}")
        if self.reference_roi is not None and self.reference is None:
            raise ParameterError("example polygons given without an example image (--reference)")
        if not 0.0 <= self.reference_weight <= 1.0:
            raise ParameterError(
                f"reference weight must be between 0 and 1, got {self.reference_weight}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ParameterError(f"seed must be between 0 and 2**63-1, got {self.seed}")
        return EditOptions(**{**asdict(self), "prompt": prompt})


@dataclass
class PreparedTile:
    """A window of the input ready for the model, with everything needed to put it back."""

    info: RasterInfo
    roi: Roi
    window: Window
    data: np.ndarray  # (bands, h, w) native values of every band of the window
    valid: np.ndarray  # (h, w) bool
    roi_mask: np.ndarray  # (h, w) bool
    alpha: np.ndarray  # (h, w) float32 blend weight, 0 outside the ROI
    scaling: BandScaling  # for the modelled bands
    model_image: np.ndarray  # (modelled bands, h, w) float32 in about [-1, 1]
    rgb: tuple[int, int, int]  # positions in model_image that CLIP sees as RGB
    options: EditOptions = field(repr=False, default=None)
    example: Example | None = field(repr=False, default=None)  # in this tile's model range


Editor = Callable[[PreparedTile, ProgressCallback], np.ndarray]


def identity_editor(tile: PreparedTile, progress: ProgressCallback) -> np.ndarray:
    """Changes nothing: the raster path end to end, without a model."""
    progress(Stage.EDIT, 1, 1, None)
    return tile.model_image.copy()


def prepare(
    input_path: str | os.PathLike,
    options: EditOptions,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
) -> PreparedTile:
    """Validate the inputs, read the window around the whole ROI and map it to the model's range
    (`plan_edit` without splitting, then `read_plan`)."""
    plan = plan_edit(input_path, options, roi_geojson=roi_geojson, mask_path=mask_path, split=False)
    return read_plan(plan)[0]


def prepare_windows(
    input_path: str | os.PathLike,
    options: EditOptions,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
) -> list[PreparedTile]:
    """As `prepare`, with one tile per group of polygons whose context windows do not touch
    (building footprints across a town: each is learned and edited in its own window)."""
    return read_plan(plan_edit(input_path, options, roi_geojson=roi_geojson, mask_path=mask_path))


def read_plan(plan: EditPlan) -> list[PreparedTile]:
    """Read the pixels of each of the plan's windows (and the example's, once) and map them to
    the model's range."""
    example = scene = None
    if plan.example is not None:
        example = load_example(plan.example)
        scene = read_scene(plan.info.path, list(plan.info.data_bands))
    return [_read(plan, planned, example, scene) for planned in plan.windows]


def _read(
    plan: EditPlan,
    planned: PlannedWindow,
    example: ExamplePixels | None,
    scene: tuple[np.ndarray, np.ndarray] | None,  # the tile's, read when there is an example
) -> PreparedTile:
    info, options, window = plan.info, plan.options, planned.window
    tile = read_tile(info, window)
    roi_mask = planned.roi.rasterize(window)
    alpha = roi_alpha(roi_mask, dilate_px=options.dilate_px, feather_px=options.feather_px)
    bands = list(info.data_bands)
    scaling = BandScaling.fit(tile.data[bands], tile.valid)
    model_image = scaling.forward(tile.data[bands], tile.valid)
    if example is not None:  # matched to the tile's scene, in this window's model range
        data, valid = scene
        example = example_for_tile(example, scaling, (scaling.forward(data, valid), valid))
    return PreparedTile(
        info=info,
        roi=planned.roi,
        window=window,
        data=tile.data,
        valid=tile.valid,
        roi_mask=roi_mask,
        alpha=alpha,
        scaling=scaling,
        model_image=model_image,
        rgb=plan.rgb,
        options=options,
        example=example,
    )


def edit_raster(
    tile: PreparedTile,
    output: str | os.PathLike,
    editor: Editor = identity_editor,
    *,
    progress: ProgressCallback = no_progress,
    extra_settings: dict | None = None,
) -> Path:
    """Run `editor` on the prepared tile, composite inside the ROI and write `output`."""
    edited = editor(tile, progress)
    return write_edit(tile, output, edited, progress=progress, extra_settings=extra_settings)


def write_edit(
    tile: PreparedTile,
    output: str | os.PathLike,
    edited: np.ndarray,
    *,
    progress: ProgressCallback = no_progress,
    extra_settings: dict | None = None,
) -> Path:
    """Composite one edited model-space image inside the ROI and write `output` atomically."""
    return write_edits([tile], output, [edited], progress=progress, extra_settings=extra_settings)


def write_edits(
    tiles: Sequence[PreparedTile],
    output: str | os.PathLike,
    edits: Sequence[np.ndarray],
    *,
    progress: ProgressCallback = no_progress,
    extra_settings: dict | None = None,
) -> Path:
    """Composite each tile's edit inside its ROI and write them all into one `output`."""
    pieces = []
    for tile, edited in zip(tiles, edits, strict=True):
        expected = tile.model_image.shape
        if edited.shape != expected:
            raise RuntimeError(f"editor returned shape {edited.shape}, expected {expected}")
        result = composite(
            tile.data,
            edited,
            scaling=tile.scaling,
            alpha=tile.alpha,
            valid=tile.valid,
            data_bands=tile.info.data_bands,
            nodata=tile.info.nodata,
        )
        pieces.append((tile.window, result))
    first = tiles[0]
    progress(Stage.WRITE, 0, 1, None)
    path = write_result(
        first.info,
        output,
        pieces,
        settings=result_settings(first.options, extra_settings),
        cog=first.options.cog,
    )
    progress(Stage.WRITE, 1, 1, None)
    return path


def result_settings(options: EditOptions, extra: dict | None = None) -> dict:
    """What goes into the output's RS_EDIT tag: enough to know how the edit was made."""
    settings = {"rs_edit_version": __version__, **asdict(options)}
    for name in ("reference", "reference_roi"):  # file names: no server or user paths
        if settings[name] is not None:
            settings[name] = _file_name(settings[name])
    settings.update(extra or {})
    return settings


def _file_name(value: str) -> str | bool:
    """A file's name; True for what is not a file (GeoJSON text: too long to be a name)."""
    try:
        return Path(value).name if Path(value).is_file() else True
    except (OSError, ValueError):
        return True


def variant_paths(output: str | os.PathLike, variants: int) -> Sequence[Path]:
    """OUTPUT for one variant; OUTPUT_v1, OUTPUT_v2, ... (same suffix) for several."""
    output = Path(output)
    if variants == 1:
        return [output]
    return [output.with_name(f"{output.stem}_v{i}{output.suffix}") for i in range(1, variants + 1)]


def default_cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where trained tile models and prompt expansions are kept: `path`, else `cache_root()`."""
    return Path(path).expanduser() if path else cache_root()


@dataclass
class EditResult:
    """What one `run_edit` produced: the written files and a report of how."""

    outputs: list[Path]
    report: EditReport


def run_edit(
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    options: EditOptions,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
    device: str = "auto",
    progress: ProgressCallback = no_progress,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> EditResult:
    """The whole edit, as `rs-edit edit`, the job API and Ray tasks run it: `plan_edit` (bad
    input raises an InputError before any work), then `run_plan`."""
    plan = plan_edit(input_path, options, roi_geojson=roi_geojson, mask_path=mask_path)
    return run_plan(plan, output, device=device, progress=progress, cache_dir=cache_dir, log=log)


def run_plan(
    plan: EditPlan,
    output: str | os.PathLike,
    *,
    device: str = "auto",
    progress: ProgressCallback = no_progress,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> EditResult:
    """Edit a planned edit: check the outputs can be written, read the windows, train the tile
    model (or reuse a cached one from `cache_dir`), edit by the prompt and write OUTPUT (or
    OUTPUT_v1.. for several variants). To cancel, `progress` raises CancelledError: nothing is
    written then."""
    from .guidance.editor import TextEditor
    from .raster import check_output_path

    options = plan.options
    paths = variant_paths(output, options.variants)
    for path in paths:
        check_output_path(plan.info, path)
    tiles = read_plan(plan)
    if len(tiles) > 1:
        log(f"the ROI's polygons lie far apart: editing them in {len(tiles)} windows")
    editor = TextEditor(options, device=device, cache_dir=cache_dir, log=log)
    per_tile, reports = [], []
    for i, tile in enumerate(tiles):
        per_tile.append(editor.edit(tile, windows(progress, i, len(tiles))))
        reports.append(editor.report)
    report = EditReport.combine(reports, [_window_dict(t.window) for t in tiles])
    written = []
    for v, path in enumerate(paths):
        edits = [variants[v] for variants in per_tile]
        extra = {**report.to_dict(), "variant": v + 1}
        written.append(
            write_edits(
                tiles, path, edits, progress=share(progress, v, len(paths)), extra_settings=extra
            )
        )
    return EditResult(outputs=written, report=report)


def _window_dict(window: Window) -> dict:
    return {
        "col_off": int(window.col_off),
        "row_off": int(window.row_off),
        "width": int(window.width),
        "height": int(window.height),
    }
