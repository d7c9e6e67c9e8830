"""The edit report: how one edit was made, as the editor, `run_edit`, the service's job report
and the service's stand-in all state it.

`EditReport` is made by the editor for each window (`guidance/editor.py`), merged over the
windows by `run_edit` (`combine`) and written as JSON (`to_dict`) into the result's tags, the
job report of the service and augment's manifest. What the service adds about the process that
ran the job (peak memory, Ray node, job seconds) it adds to that JSON, not here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class EditReport:
    editor: str = "rs-edit"  # "identity-standin": the service's stand-in, no model
    pid: int = field(default_factory=os.getpid)  # the process that made the edit
    seed: int | None = None
    device: str | None = None
    clip: str | None = None
    clip_random: bool | None = None  # a CLIP with random weights: similarities mean nothing
    prompt_source: str | None = None  # "llm", "templates" or "prompt"
    prompt_note: str | None = None
    prompts: list[str] = field(default_factory=list)  # the prompt ensemble that guided
    preset: str | None = None
    coarse: str | None = None  # "network" or "patch-diffusion": what made the layout
    guidance: str | None = None
    reference: dict | None = None  # the example (`ExamplePlan.describe`), if one was given
    reference_weight: float | None = None
    model_cached: bool = False  # the tile model was reused from the cache (no training)
    tile_hash: str | None = None
    model_entry: str | None = None  # the cache file this edit trained or reused
    clip_similarity_input: float | None = None
    clip_similarity_edits: list[float] = field(default_factory=list)  # per variant
    # The realism guard's figures per variant (`engine/quality.py`), and whether it replaced
    # the first draft.
    realism: list[float] = field(default_factory=list)
    seam: list[float] = field(default_factory=list)
    cut: list[float] = field(default_factory=list)
    coherence: list[float] = field(default_factory=list)  # `coherence_ratio`; 0: not judged
    realism_replaced: list[int] = field(default_factory=list)  # 1-based variants
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    windows: list[dict] = field(default_factory=list)  # col_off, row_off, width, height

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def combine(cls, reports: Sequence[EditReport], windows: list[dict]) -> EditReport:
        """One report for an edit made window by window: the first window's, with the windows,
        the cache flag of all and the seconds summed per stage."""
        first = reports[0]
        seconds = {k: round(sum(r.seconds.get(k, 0) for r in reports), 2) for k in first.seconds}
        return replace(
            first,
            windows=windows,
            model_cached=all(r.model_cached for r in reports),
            seconds=seconds,
        )
