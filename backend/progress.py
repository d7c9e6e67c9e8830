"""One progress hook for all long work: the engine calls it, the CLI, the job API and QGIS show it.

A callback receives (stage, step, total, loss). To cancel, the callback raises `CancelledError`:
the work stops at the next step and nothing is written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class ProgressCallback(Protocol):
    def __call__(self, stage: str, step: int, total: int, loss: float | None = None) -> None: ...


def no_progress(stage: str, step: int, total: int, loss: float | None = None) -> None:
    """The default callback: report nothing, never cancel."""


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
