"""One progress hook for all long work: the engine calls it, the CLI, the job API and QGIS show it.

A callback receives (stage, step, total, loss). To cancel, the callback raises `CancelledError`:
the work stops at the next step and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol


class Stage(str, Enum):
    """The stages of an edit, as the engine reports them (plain strings on the wire: the job
    API's `stage`, the CLI's bars and the plugin's labels read them).

    A `str` mixin rather than `enum.StrEnum` (Python 3.11) so that 3.10 works too; `str()` and
    formatting give the bare value, as StrEnum's would."""

    __str__ = str.__str__
    __format__ = str.__format__

    STARTING = "starting"  # the service: the job's process is starting
    PREPARE = "prepare"
    LOAD = "load"
    TRAIN = "train"  # training (or loading) the tile model
    FINETUNE = "finetune"  # CLIP fine-tuning
    GUIDE = "guide"
    EDIT = "edit"  # an editor without stages of its own (the identity editor)
    SAMPLE = "sample"  # the coarse layout, every variant's steps in one run
    DETAIL = "detail"  # the fine scales from the tile's patches
    GUARD = "guard"  # the realism guard
    WINDOWS = "windows"  # several windows: each one's stages as a slice of this one
    SYNTHESIZE = "synthesize"  # an edit without training: sample, detail and guard in one
    WRITE = "write"


class ProgressCallback(Protocol):
    def __call__(self, stage: str, step: int, total: int, loss: float | None = None) -> None: ...


def no_progress(stage: str, step: int, total: int, loss: float | None = None) -> None:
    """The default callback: report nothing, never cancel."""


# Where each stage of an edit falls in a job's 0-100 progress (the job API reports it, the
# windows of one edit are laid end to end by it). Unknown stages share the middle.
STAGE_BANDS: dict[str, tuple[float, float]] = {
    Stage.STARTING: (0.0, 1.0),
    Stage.PREPARE: (1.0, 3.0),
    Stage.LOAD: (1.0, 3.0),
    Stage.TRAIN: (3.0, 70.0),
    Stage.GUIDE: (70.0, 90.0),
    Stage.FINETUNE: (70.0, 90.0),
    Stage.EDIT: (90.0, 97.0),
    Stage.SAMPLE: (90.0, 93.0),
    Stage.DETAIL: (93.0, 96.0),
    Stage.GUARD: (96.0, 97.0),
    Stage.WINDOWS: (3.0, 97.0),  # several windows: train ... guard of each, one after another
    Stage.SYNTHESIZE: (3.0, 97.0),  # an edit without training: sample, detail and guard (below)
    Stage.WRITE: (97.0, 99.0),
}
DEFAULT_BAND = (3.0, 95.0)


def percent(stage: str, step: int, total: int) -> float:
    """The job's progress (0-100) at `step` of `total` in `stage`."""
    lo, hi = STAGE_BANDS.get(stage, DEFAULT_BAND)
    frac = min(1.0, max(0.0, step / total)) if total and total > 0 else 0.0
    return lo + (hi - lo) * frac


def windows(progress: ProgressCallback, index: int, count: int) -> ProgressCallback:
    """The callback for window `index` of `count` edited one after the other: each window's
    stages (train ... guard) become one slice of a single "windows" stage, so that progress
    moves on through every window instead of restarting the stages for each."""
    if count == 1:
        return progress
    lo, hi = STAGE_BANDS[Stage.WINDOWS]

    def callback(stage: str, step: int, total: int, loss: float | None = None) -> None:
        done = min(1.0, max(0.0, (percent(stage, step, total) - lo) / (hi - lo)))
        progress(Stage.WINDOWS, round(1000 * (index + done)), 1000 * count, loss)

    return callback


# A training-free edit has no "train" stage to fill most of the bar: its sample, detail and
# guard stages are laid end to end as one "synthesize" stage, each by its usual share of the
# time (on 2 CPU cores, a 256 px window: sample about 1 s, detail 2 s, guard 0.5-10 s).
SYNTHESIS_SHARES: dict[str, tuple[float, float]] = {
    Stage.SAMPLE: (0.0, 0.2),
    Stage.DETAIL: (0.2, 0.6),
    Stage.GUARD: (0.6, 1.0),
}


def synthesis(progress: ProgressCallback) -> ProgressCallback:
    """The callback for an edit without training: see SYNTHESIS_SHARES. Other stages pass."""

    def callback(stage: str, step: int, total: int, loss: float | None = None) -> None:
        if stage not in SYNTHESIS_SHARES:
            progress(stage, step, total, loss)
            return
        lo, hi = SYNTHESIS_SHARES[stage]
        done = min(1.0, max(0.0, step / total)) if total and total > 0 else 0.0
        progress(Stage.SYNTHESIZE, round(1000 * (lo + (hi - lo) * done)), 1000, loss)

    return callback


def share(progress: ProgressCallback, index: int, count: int) -> ProgressCallback:
    """The callback for part `index` of `count` equal parts of one job (variants, windows):
    each stage's steps run on from the parts before, so progress never goes back."""
    if count == 1:
        return progress

    def callback(stage: str, step: int, total: int, loss: float | None = None) -> None:
        progress(stage, index * total + step, count * total, loss)

    return callback


def tqdm_progress(enabled: bool = True) -> tuple[ProgressCallback, Callable[[], None]]:
    """A callback that shows one tqdm bar per stage on stderr, and a function to close it."""
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def callback(stage: str, step: int, total: int, loss: float | None = None) -> None:
        if not enabled:
            return
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=True)
        bar.total = total
        bar.n = step
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return callback, close
