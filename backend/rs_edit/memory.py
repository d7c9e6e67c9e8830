"""How much memory an edit will need, known before any pixel is read, and the budget it must fit.

`estimate_mb` is a small plain function of what is known at submission: the windows that will
be edited (one per group of far-apart polygons, the edit's `plan.EditPlan`), the number of bands,
the preset, the guidance, the CLIP model and the number of variants; `estimate_edit` takes them
from a plan. The service (`service/submit.py`) and `rs-edit edit` refuse a job whose estimate
exceeds the memory budget (`check_edit`), before it is queued or any pixel is read.

The memory that grows with the window is the patch detail (`engine/patches.py refine`): at the
finest scale every pixel's patch is unfolded (bands x patch^2 floats per pixel) several times
over (the sharp and blurry source patches, the query columns, the pasted values). Everything else
is a base (Python, torch, GDAL, the CLIP model) plus, for presets that train a coarse network
(`balanced`, `quality`, or any `guidance=finetune`), the training's own memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .plan import EditPlan

MB = 1024 * 1024
BUDGET_ENV = "RS_EDIT_MEMORY_BUDGET"

# Coefficients, from `bench/memory.py` (peak RSS of `rs-edit edit` in a child process, no ROI,
# --guidance none --clip tiny-random, CPU, 2 cores; table in docs/BENCHMARKS.md "Memory per
# window"), each rounded up so that the estimate stays above every measured peak:
# - BASE_MB: the peak of the smallest window (128 px: 1,037 MB tiny, 1,024 MB fast) is nearly all
#   process base (Python, torch, GDAL, open_clip), plus a margin.
BASE_MB = 1300
# - REFINE_BYTES_PER_VALUE: bytes per unfolded patch value (pixel x band x patch^2) at the
#   finest scale. Measured 256 -> 512 px (tiny): +493 MB for 29M more values, about 18 B; taken
#   as 28 B until windows of 1024 px and more are measured (minutes per run on 2 cores).
REFINE_BYTES_PER_VALUE = 28.0
# - HELD_BYTES_PER_PIXEL_BAND: what every window holds until it is written (native pixels,
#   the model image, the variants' edits, the composite): a few float32 per pixel and band.
HELD_BYTES_PER_PIXEL_BAND = 16.0
# - TRAIN_MB: a trained coarse network (balanced, quality, guidance=finetune): its training on
#   the coarse tile (short side 80-96 px), Adam state, EMA copy and autograd buffers. Not measured
#   by bench/memory.py (minutes per run on a CPU): a generous allowance.
TRAIN_MB = 1500
# - CLIP weights held in float32 while loading (state dict + model: about 2x the parameters).
CLIP_MB = {
    "tiny-random": 0,  # in BASE_MB
    "RN50": 820,
    "ViT-B-32": 1200,
    "ViT-L-14": 3400,
}
UNKNOWN_CLIP_MB = 3400


def _clip_mb(clip: str) -> int:
    name = str(clip).split("=", 1)[0].removeprefix("RemoteCLIP-")
    return CLIP_MB.get(name, UNKNOWN_CLIP_MB)


def _preset(preset: str, device_type: str):
    from .engine.presets import resolve_preset

    return resolve_preset(preset, device_type)[0]


def trains_network(preset: str, guidance: str, device_type: str = "cpu") -> bool:
    """Whether the edit trains a coarse network (`Preset.trains_network`)."""
    return _preset(preset, device_type).trains_network(guidance)


def estimate_mb(
    windows: Iterable[tuple[int, int]],
    *,
    bands: int,
    preset: str,
    guidance: str = "auto",
    clip: str = "tiny-random",
    variants: int = 1,
    device_type: str = "cpu",
    example_pixels: int = 0,
) -> int:
    """Peak resident memory (MB) of an edit of these windows ((height, width) in pixels) of a
    raster with `bands` modelled bands. Conservative: never below bench/memory.py's peaks.
    `example_pixels`: the size of an example image at the tile's resolution; it is held with
    the windows and its patches join the finest scale's pool beside the window's."""
    p = _preset(preset, device_type)
    patch = getattr(getattr(p, "patches", None), "patch", 7)
    sizes = [(int(h), int(w)) for h, w in windows]
    bands = max(int(bands), 1)
    example_pixels = max(int(example_pixels), 0)
    held = sum(h * w for h, w in sizes) * bands * HELD_BYTES_PER_PIXEL_BAND * (1 + variants)
    held += example_pixels * bands * HELD_BYTES_PER_PIXEL_BAND
    work = (max((h * w for h, w in sizes), default=0) + example_pixels) * bands * patch * patch
    total = BASE_MB * MB + held + work * REFINE_BYTES_PER_VALUE
    if trains_network(preset, guidance, device_type):
        total += TRAIN_MB * MB
    total += _clip_mb(clip) * MB
    return int(-(-total // MB))


class MemoryBudgetError(InputError):
    """An edit's estimated peak memory exceeds the memory budget (service: 413; CLI: exit 2)."""

    def __init__(
        self, estimate_mb: int, budget_mb: int, windows: Sequence[tuple[int, int]], hint: str = ""
    ):
        self.estimate_mb, self.budget_mb = estimate_mb, budget_mb
        largest = max(windows, key=lambda hw: hw[0] * hw[1], default=(0, 0))
        where = f"{len(windows)} windows, the largest" if len(windows) > 1 else "a window of"
        super().__init__(
            f"this edit would need about {estimate_mb:,} MB of memory ({where} "
            f"{largest[1]}x{largest[0]} px with context), more than the memory budget of "
            f"{budget_mb:,} MB: draw a smaller ROI (or edit a smaller area), or choose a "
            f"smaller preset (tiny or fast){hint}"
        )


def check_edit(plan: EditPlan, budget_mb: int, *, device_type: str = "cpu", hint: str = "") -> int:
    """The planned edit's estimate (MB), or MemoryBudgetError when it exceeds `budget_mb`."""
    windows, estimate = estimate_edit(plan, device_type)
    if estimate > budget_mb:
        raise MemoryBudgetError(estimate, budget_mb, windows, hint)
    return estimate


def total_memory_mb() -> int:
    """This machine's physical memory (MB)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total // MB)
    except Exception:  # psutil missing or unusable: POSIX sysconf
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB)
        except (ValueError, OSError, AttributeError):
            return 8192


def default_budget_mb() -> int:
    """Half of this machine's memory: room for the server, the OS and a second job's start."""
    return max(total_memory_mb() // 2, 1024)


def resolve_budget(value: int | float | str | None = None, env: dict | None = None) -> int:
    """The memory budget (MB): `value`, else RS_EDIT_MEMORY_BUDGET, else `default_budget_mb`."""
    from .errors import ParameterError

    env = os.environ if env is None else env
    source = "--memory-budget"
    if value is None:
        value = (env.get(BUDGET_ENV) or "").strip() or None
        source = BUDGET_ENV
    if value is None:
        return default_budget_mb()
    try:
        budget = int(float(value))
    except (TypeError, ValueError):
        raise ParameterError(f"{source} must be a number of MB, got {value!r}") from None
    if budget < 1:
        raise ParameterError(f"{source} must be a positive number of MB, got {value!r}")
    return budget


def estimate_edit(plan: EditPlan, device_type: str = "cpu") -> tuple[list, int]:
    """(windows as (height, width), estimate MB) of the planned edit (`plan.plan_edit`)."""
    windows = plan.sizes
    options = plan.options
    estimate = estimate_mb(
        windows,
        bands=len(plan.info.data_bands),
        preset=options.preset,
        guidance=options.guidance,
        clip=options.clip,
        variants=options.variants,
        device_type=device_type,
        example_pixels=plan.example.size[0] * plan.example.size[1] if plan.example else 0,
    )
    return windows, estimate
