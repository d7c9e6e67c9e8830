"""An edit's plan: everything about its inputs that is known before any pixel is read.

`plan_edit` validates the options, reads the raster's header (`inspect_raster`), makes the ROI
(`roi.resolve_roi`: GeoJSON, a mask raster, or the whole image), checks the band choice, and
lays out the windows to edit: one per group of far-apart polygons (`Roi.clusters`), each the
group's box grown by the context (`roi.context_window`) and within `MAX_WINDOW_PIXELS`; an
example image to look like is checked and matched to the raster (`example.plan_example`).
`edit.read_plan` reads the windows' pixels; `memory.estimate_edit` sizes the edit from the plan;
the service's submission checks and `rs-edit edit`'s memory check make the same plan that the
edit then reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rasterio.windows import Window

from .bands import rgb_bands
from .errors import ParameterError
from .example import ExamplePlan, plan_example
from .raster import RasterInfo, inspect_raster
from .roi import Roi, context_window, resolve_roi

if TYPE_CHECKING:
    from .edit import EditOptions

# The largest window (ROI + context) read and modelled at once: 64 MP of float32 per band is
# already far beyond what single-image diffusion learns in minutes.
MAX_WINDOW_PIXELS = 8192 * 8192


class WindowTooLargeError(ParameterError):
    """A window to edit (ROI + context) is larger than `limit` pixels (`window`: which). Made as
    any exception from its message (it crosses the job process's pipe pickled)."""

    window: Window | None = None
    limit: int = MAX_WINDOW_PIXELS

    @classmethod
    def of(cls, window: Window, limit: int) -> WindowTooLargeError:
        error = cls(
            f"the area to edit ({window.width}x{window.height} px with context) is larger than "
            f"{limit:,} px: draw a smaller ROI (--roi or --mask)"
        )
        error.window, error.limit = window, limit
        return error


@dataclass(frozen=True)
class PlannedWindow:
    """One window to edit: its part of the ROI and the pixels read around it."""

    roi: Roi
    window: Window

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.window.height), int(self.window.width)


@dataclass(frozen=True)
class EditPlan:
    """An edit's validated inputs and its windows, known without reading a pixel."""

    options: EditOptions  # validated
    info: RasterInfo
    roi: Roi  # the whole ROI
    rgb: tuple[int, int, int]  # positions among the data bands that CLIP sees as RGB
    windows: tuple[PlannedWindow, ...]
    example: ExamplePlan | None = None  # the example to look like (`options.reference`)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """(height, width) of every window."""
        return [w.size for w in self.windows]


def _window(bbox: Window, info: RasterInfo, context: int) -> Window:
    """The context window of an ROI's box: taken to the raster's edge where less than half the
    context would be left out, unless that makes it too large."""
    window = context_window(bbox, info, context, snap_px=context // 2)
    if window.width * window.height > MAX_WINDOW_PIXELS:
        window = context_window(bbox, info, context)
    return window


def plan_edit(
    input_path: str | os.PathLike,
    options: EditOptions,
    *,
    roi_geojson: str | os.PathLike | dict | None = None,
    mask_path: str | os.PathLike | None = None,
    split: bool = True,
    info: RasterInfo | None = None,
) -> EditPlan:
    """Validate and resolve an edit's inputs without reading pixels (a mask raster is read to
    make the ROI). `split`: one window per group of far-apart polygons; else one window around
    the whole ROI. `info`: the raster's header when the caller has already read it."""
    options = options.validate()
    if info is None:
        info = inspect_raster(input_path)
    roi = resolve_roi(info, roi_geojson, mask_path)
    rgb = rgb_bands(info.colorinterp, info.data_bands, options.rgb_bands)
    context = options.context_px + options.dilate_px
    parts = roi.clusters(2 * context) if split else [roi]
    windows = tuple(PlannedWindow(part, _window(part.bbox, info, context)) for part in parts)
    for planned in windows:
        window = planned.window
        if window.width * window.height > MAX_WINDOW_PIXELS:
            raise WindowTooLargeError.of(window, MAX_WINDOW_PIXELS)
    example = None
    if options.reference is not None:
        example = plan_example(options.reference, info, roi_geojson=options.reference_roi, rgb=rgb)
    return EditPlan(options=options, info=info, roi=roi, rgb=rgb, windows=windows, example=example)
