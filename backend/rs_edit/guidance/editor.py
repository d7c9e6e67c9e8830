"""The text editor, top to bottom: CLIP and the prompt ensemble -> the tile model (trained, or
reused from the cache) -> guidance (fine-tuning, or guided sampling) -> one edit per variant.

CLIP and the prompt are resolved first so that a missing checkpoint fails in seconds, not after
minutes of training. Training is the expensive part, so trained tile models are cached by the
tile's content hash and the preset: a second prompt on the same tile skips it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import model_cache
from ..engine import patch_diffusion
from ..engine.boundary import cut_ratio, cut_unit
from ..engine.coherence import coherence_ratio, coherence_unit
from ..engine.device import pick_device
from ..engine.model import TileModel
from ..engine.patches import (
    coarse_size,
    example_share,
    fitted_ramp,
    mask_at,
    refine,
    resize,
)
from ..engine.presets import resolve_preset
from ..engine.pyramid import lanczos_resize
from ..engine.quality import (
    combine_levels,
    roi_swd_levels,
    roi_swd_levels_to,
    roi_swd_unit,
    seam_ratio,
)
from ..engine.train import train_tile
from ..progress import ProgressCallback, Stage, no_progress, share, synthesis
from ..report import EditReport
from . import resolve_guidance
from .clip import load_clip
from .finetune import (
    ClipObjective,
    build_scene,
    finetune,
    sample_edits,
    sampling_guide,
    single_scale_scene,
)
from .prompts import PromptEnsemble, expand_prompt
from .reference import clip_view, mixed_target


class TextEditor:
    """Edits a prepared tile (see `rs_edit.edit.prepare`) by the options' prompt."""

    def __init__(
        self,
        options,
        *,
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        log: Callable[[str], None] = lambda line: None,
    ):
        self.options = options
        self.device = pick_device(device)
        self.preset, why = resolve_preset(options.preset, self.device.type)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.log = log
        log(why)
        self.report = EditReport()

    def edit(self, tile, progress: ProgressCallback) -> list[np.ndarray]:
        """One edited model-space image (C, h, w) per variant."""
        opts, preset = self.options, self.preset
        example = _ExamplePool.of(tile, opts.reference_weight, preset)
        if example and preset.detail == "patches" and preset.coarse != "patch-diffusion":
            # Only the training-free sampler draws on the example's patches; a trained model
            # knows the tile alone.
            preset = replace(preset, coarse="patch-diffusion")
            self.log("with an example the coarse layout is drawn from its and the tile's patches")
        seed = opts.seed if opts.seed is not None else secrets.randbits(31)
        seconds: dict[str, float] = {}
        started = time.perf_counter()

        clip = load_clip(opts.clip, self.device, log=self.log)
        if opts.prompt_ensemble:
            ensemble = expand_prompt(
                opts.prompt,
                llm=opts.llm,
                cache_dir=self.cache_dir / "prompts" if self.cache_dir else None,
                log=self.log,
            )
        else:
            ensemble = PromptEnsemble((opts.prompt,), "prompt", "prompt ensembling is off")
        target = clip.text_target(list(ensemble.prompts))
        if tile.example is not None:
            target = mixed_target(
                clip, target, clip_view(tile.example, tile.rgb), opts.reference_weight
            )
        seconds["clip"] = time.perf_counter() - started

        # With patch detail the coarse layout is made (and guided) at a coarse size only; the
        # scales above it are assembled from the tile's own patches.
        image = tile.model_image
        if preset.detail == "patches":
            image = lanczos_resize(image, coarse_size(*image.shape[1:], preset.coarse_side))
        trains_anyway = preset.trains_network("none")  # whatever the guidance
        guidance, why = resolve_guidance(opts.guidance, trains_anyway)
        self.log(why)
        trained = preset.trains_network(guidance)
        if trained and not trains_anyway:
            self.log(
                f"fine-tuning needs a trained model: training the coarse model of preset "
                f"{preset.name!r} (guidance 'sampling' or 'none' needs no training with it)"
            )
        mark = time.perf_counter()
        if trained:
            model, cached = self._tile_model(image, seed, progress)
            scene = build_scene(model, image, tile.alpha, tile.rgb)
            sampler = _NetworkSampler(model, scene)
            key = model.tile_hash
        else:
            progress = synthesis(progress)
            scene = single_scale_scene(image, tile.alpha, tile.rgb, self.device)
            sampler = _PatchSampler(scene, tile, preset.sampler, example)
            model, cached, key = None, False, model_cache.model_key(image, preset.name)
        seconds["train"] = time.perf_counter() - mark

        objective = ClipObjective(clip, target, scene, preset.guide_views, seed)
        mark = time.perf_counter()
        guide = None
        if guidance == "finetune":
            tuned = finetune(
                model,
                scene,
                objective,
                steps=preset.guide_steps,
                lr=preset.guide_lr,
                freeze_blocks=preset.guide_freeze,
                fidelity=preset.guide_fidelity,
                seed=seed,
                progress=progress,
            )
            sampler = _NetworkSampler(tuned, scene, unguided=model)
        elif guidance == "sampling":
            guide = sampling_guide(objective, preset.guide_scale)
        seconds["guidance"] = time.perf_counter() - mark

        mark = time.perf_counter()
        seeds = [seed + 1 + i for i in range(opts.variants)]
        edits = sampler(seeds, guide=guide, progress=progress)
        seconds["sample"] = time.perf_counter() - mark
        realism, replaced = [], []
        if preset.detail == "patches":
            mark = time.perf_counter()
            edits = self._add_detail(tile, edits, seeds, progress, example)
            seconds["detail"] = time.perf_counter() - mark
            mark = time.perf_counter()
            guided = guidance != "none"
            edits, realism, replaced = self._guard(
                tile, sampler, guided, edits, seeds, progress, example
            )
            seconds["guard"] = time.perf_counter() - mark

        before = objective.similarity(scene.known[-1])
        size = tuple(scene.known[-1].shape[-2:])
        after = [
            objective.similarity(resize(torch.from_numpy(e)[None], size).to(self.device))
            for e in edits
        ]
        self.report = EditReport(
            seed=seed,
            device=str(self.device),
            clip=clip.name,
            clip_random=clip.is_random,
            prompt_source=ensemble.source,
            prompt_note=ensemble.note,
            prompts=list(ensemble.prompts),
            preset=preset.name,
            coarse="network" if trained else "patch-diffusion",
            guidance=guidance,
            reference=tile.example.plan.describe() if tile.example is not None else None,
            reference_weight=opts.reference_weight if tile.example is not None else None,
            model_cached=cached,
            tile_hash=key,
            # The cache file this edit trained or reused (None: no model, or no cache).
            model_entry=(
                model_cache.model_path(self.cache_dir, key).name
                if trained and self.cache_dir
                else None
            ),
            clip_similarity_input=round(before, 4),
            clip_similarity_edits=[round(a, 4) for a in after],
            realism=[round(m.level, 3) for m in realism],
            seam=[round(m.seam, 3) for m in realism],
            cut=[round(m.cut, 3) for m in realism],
            coherence=[round(m.coherence, 3) for m in realism],
            realism_replaced=replaced,
            seconds={k: round(v, 2) for k, v in seconds.items()},
        )
        return edits

    def _guard(self, tile, sampler, guided, edits, seeds, progress, example=None):
        """The realism guard. An edit fails it when its ROI is far from anything in the tile
        (its worst `roi_swd_levels` level above the preset's `guard_bar`: flat colour, a colour
        cast, collapsed structure), when the ROI's boundary shows as an edge (`seam_ratio`
        beyond `guard_seam` either way: an edge the input does not have, or a blurred band) or
        when its outline shows as a change of texture (`cut_ratio` above `guard_cut`: the sea
        filling a box up to its straight edge) or, without an example, when it holds pieces
        the tile has nowhere (`coherence_ratio` above `guard_coherence`: a barrier broken
        off). A failing edit is replaced by the best of a few
        alternatives made without the guidance (the same seed first when guided, then others):
        while the outline shows, every other one starts from the surroundings filled smoothly
        (`guard_anchor`), the others from noise; else, while the ROI is unlike the tile or
        broken (and no example is asked for), every other one but a guided edit's own seed
        starts from the surroundings' structures carried across it (`guard_continue`); the
        others, unless an edit by example is furthest from the example, are drawn sharper
        (`guard_sharpen`).
        Returns the edits, each one's `_Realism` and the variants that were replaced. With an
        example, realism is closeness to the mixture of the tile's surroundings and the
        example it was drawn from, and the outline is not judged: a change of texture along
        it is the edit asked for."""
        preset, tries = self.preset, self.preset.guard_tries
        if example is not None:  # each draft costs about twice as much with an example
            tries = min(tries, EXAMPLE_GUARD_TRIES)
        share = None
        if example is not None:  # the example's share as the engine ramped it in
            height = tile.model_image.shape[1]
            coarse = coarse_size(height, tile.model_image.shape[2], preset.coarse_side)[0]
            ramp = round(example.ramp * height / coarse)
            share = example.mean_share(torch.from_numpy(tile.roi_mask & tile.valid), ramp)
        measure = _RealismScore(tile, example, share)

        # With an example: how close to it the ROI must come (as close as the input at weight 0).
        toward_bar = 1 - (1 - preset.guard_toward) * (example.weight if example else 0.0)

        def terms(m: _Realism) -> tuple[float, ...]:  # each over 1: fails
            seam = m.seam if m.seam > 0 else 1.0  # 0: not measurable
            edge = max(seam, 1 / seam) / preset.guard_seam  # busier or calmer than the input
            cut = 0.0 if example else m.cut / preset.guard_cut
            broken = m.coherence / preset.guard_coherence  # 0 by example: not judged
            return m.level / preset.guard_bar, edge, cut, m.toward / toward_bar, broken

        def badness(m: _Realism) -> float:
            return max(terms(m))

        measured = [measure(e) for e in edits]
        replaced = []
        total = len(edits) * tries
        progress(Stage.GUARD, 0, total)
        for i, seed in enumerate(seeds):
            for k in range(tries):
                if badness(measured[i]) <= 1:
                    break
                same_seed = k == 0 and guided
                alt_seed = seed if same_seed else seed + 7919 * (k + 1)
                # While the outline shows, every other draw starts from the surroundings, whose
                # layout the new content then continues; the rest are fresh draws from noise,
                # the most varied (an anchored draw can fail the same way every time). Whether
                # or not something else fails more: bench.realism's Landsat box, its first
                # draft's seam failing a little more than its outline, was redrawn from noise
                # until the sea filled the box up to its straight side (outline 1.28, just
                # under the bar, and plain to the eye).
                level, edge, cut, toward, broken = terms(measured[i])
                outline_fails = cut > 1
                draw = PLAIN
                if outline_fails and k % 2 == 0:
                    draw = Draw(anchor=preset.guard_anchor)
                elif (level > 1 or broken > 1) and example is None and k % 2 == 0 and not same_seed:
                    # Unlike the tile, or broken: every other draw continues the surroundings'
                    # structures into the ROI (`patch_diffusion.FILLS`), from a low noise level,
                    # so barriers and banks go on through it. Not by example: that would continue
                    # the tile. Not the guided edit's own seed drawn without guidance, which
                    # keeps what it can of that edit: continued from the demo's village, a road
                    # became a stub of the river beside it, where the plain draw made a field.
                    # Copied along the tile's dominant offsets (lines whole, and what lies
                    # between them: the overpass's cars) and patch by patch from the edge
                    # (better on texture without lines: the forest), in turn.
                    fill = "offsets" if k % 4 == 0 else "structure"
                    draw = Draw(anchor=preset.guard_continue, fill=fill)
                # Otherwise every other one keeps the tile's rarer content (`guard_sharpen`),
                # which a plain draw can lose to its commonest, flattest content; not while
                # the example is what is missed most: the tile's rare content is not the
                # example's.
                toward_most = toward >= max(level, edge)
                if k % 2 and not (outline_fails or toward_most):
                    draw = Draw(sharpen=preset.guard_sharpen)
                coarse = sampler([alt_seed], unguided=True, draw=draw)
                alt = self._add_detail(tile, coarse, [alt_seed], no_progress, example)[0]
                m = measure(alt)
                progress(Stage.GUARD, i * tries + k + 1, total)
                if badness(m) < badness(measured[i]):
                    edits[i], measured[i] = alt, m
                    if i + 1 not in replaced:
                        replaced.append(i + 1)
        progress(Stage.GUARD, total, total)
        for i, m in enumerate(measured):
            if badness(m) > 1:
                self.log(
                    f"variant {i + 1}: the edited area is unlike the rest of the tile or its "
                    f"edge shows (realism {m.level:.2f}, limit {preset.guard_bar}; seam "
                    f"{m.seam:.2f}, limits {1 / preset.guard_seam:.2f}-{preset.guard_seam}; "
                    f"outline {m.cut:.2f}, limit {preset.guard_cut}"
                    + (
                        ""
                        if example
                        else f"; pieces unlike the tile {m.coherence:.2f}, "
                        f"limit {preset.guard_coherence}"
                    )
                    + (
                        f"; closeness to the example {m.toward:.2f}, limit {toward_bar:.2f}"
                        if example
                        else ""
                    )
                    + "); try another seed, a larger context or a larger area"
                )
        if replaced:
            self.log(
                f"realism guard: variant(s) {', '.join(map(str, replaced))} replaced by an "
                + (
                    "edit closer to the tile and the example"
                    if example
                    else "edit closer to the tile"
                )
            )
        return edits, measured, replaced

    def _add_detail(self, tile, coarse_edits, seeds, progress, example=None) -> list[np.ndarray]:
        """Each coarse edit at the tile's size, its detail assembled from the tile's patches
        (and the example's)."""
        image = torch.from_numpy(tile.model_image)[None]
        mask = torch.from_numpy(tile.alpha > 0)[None, None]
        invalid = torch.from_numpy(~tile.valid)[None, None]
        edits = []
        for i, coarse in enumerate(coarse_edits):
            full = refine(
                torch.from_numpy(coarse)[None],
                image,
                mask,
                self.preset.patches,
                invalid=invalid,
                seed=seeds[i],
                example=example.pair if example else None,
                example_weight=example.weight if example else 0.0,
                example_ramp=example.ramp if example else 1,
                progress=share(progress, i, len(coarse_edits)),
            )
            edits.append(full[0].numpy())
        return edits

    def _tile_model(self, image: np.ndarray, seed: int, progress) -> tuple[TileModel, bool]:
        """The trained model for this tile and preset: from the cache, or trained (and cached)."""
        key = model_cache.model_key(image, self.preset.name)
        path = model_cache.model_path(self.cache_dir, key) if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                model = TileModel.load(path, self.device)
            except Exception as exc:  # a damaged cache entry is retrained, never fatal
                self.log(f"ignoring unreadable cached model {path.name}: {exc}")
            else:
                if model.tile_hash == key:
                    os.utime(path)  # the cache is pruned least recently used first
                    self.log(f"reusing the trained tile model {path.name}")
                    progress(Stage.TRAIN, 1, 1, None)
                    return model, True
        model = train_tile(
            image, self.preset, device=self.device, seed=seed, progress=progress, tile_hash=key
        )
        if path is not None:
            model.save(path)
            # Sample from exactly what was saved, so a later cached run gives the same edits.
            model = TileModel.load(path, self.device)
        return model, False


# The most alternatives the guard draws for an edit by example: its content is unlike the
# tile by design, so when one draft fails the mixture measure the others mostly fail it too
# (bench.exemplar's NAIP case: 6 alternatives, none better), at about twice a draft's cost.
EXAMPLE_GUARD_TRIES = 6


class Draw(NamedTuple):
    """How a coarse layout is drawn by the training-free sampler (`patch_diffusion.sample`):
    from noise, or from the ROI filled as `fill` says (`patch_diffusion.FILLS`) and noised to
    `anchor`; its patch posteriors `sharpen` times sharper than the preset's (None: as they
    are). A trained model's sampler ignores it."""

    anchor: float | None = None
    fill: str = "smooth"
    sharpen: float | None = None


PLAIN = Draw()  # from noise, as the preset says


class _Realism(NamedTuple):
    """What the realism guard measures of an edit (0 where not measurable)."""

    level: float  # worst `roi_swd_levels` level
    seam: float  # `seam_ratio`
    cut: float  # `cut_ratio`
    toward: float = 0.0  # with an example: how far from it, over the unedited ROI's distance
    coherence: float = 0.0  # without one: `coherence.coherence_ratio`, its worst pieces


class _RealismScore:
    """The `_Realism` of an edit of one tile; the tile's units are computed once for all the
    edits scored."""

    def __init__(self, tile, example: _ExamplePool | None = None, share: float = 0.0):
        self.example, self.share = example, share
        self.source = torch.from_numpy(tile.model_image)
        self.scaling, self.valid = tile.scaling, tile.valid
        self.roi = torch.from_numpy(tile.roi_mask & tile.valid)
        self.outside = torch.from_numpy(~tile.roi_mask & tile.valid)
        self.alpha = torch.from_numpy(tile.alpha).float()  # the feathered blend weight
        # Each band's span in the raster's own values: the seam is judged in those, as the
        # written raster is (in model units, where every band spans 2, a NAIP edit whose
        # written seam was 1.30 scored 1.23 and passed).
        span = np.asarray(tile.scaling.hi, dtype=np.float64) - np.asarray(tile.scaling.lo)
        self.span = torch.from_numpy(span.astype(np.float32))[:, None, None]
        self.written_source = self.source * self.span
        self.unit = self.cut_unit = None
        if self.roi.any() and not self.roi.all():
            # A window too small for the measure's patches stays unmeasured.
            with contextlib.suppress(ValueError):
                self.unit = roi_swd_unit(self.source, self.roi)
            self.cut_unit = cut_unit(self.source, self.roi.numpy())
        # Broken pieces (a barrier cut off): judged without an example only, whose content is
        # unlike the tile by design.
        self.invalid = ~tile.valid
        self.coherence_unit = None  # None: not judged (or not measurable: a unit of 0 or NaN)
        if self.unit is not None and example is None:
            unit = coherence_unit(self.source, self.roi.numpy(), invalid=self.invalid)
            self.coherence_unit = unit if unit > 0 else None
        self.from_input = None
        if self.unit is not None and example is not None:
            self.unit = _mixture_unit(self.unit, example, self.roi, share)
            # The unedited ROI's distance to the example: the unit of `toward`.
            self.from_input = self._to_example(self._as_written(self.source))

    def __call__(self, edit: np.ndarray) -> _Realism:
        if self.unit is None:
            return _Realism(0.0, 0.0, 0.0)
        # Everything is judged as it will be written: feathered into the tile and rounded to
        # the raster's type. (Unfeathered, the rim of an example's content scored 1.4-1.6
        # where the written result scored 1.2-1.3, and bench.realism's forest edits 1.22-1.50
        # where their written seam was 1.13-1.14: the guard redrew edits whose written seam
        # passed. Its region levels were judged unfeathered until seed 1's river was kept at
        # 1.247 and written at 1.2501, over the bar.)
        edited = torch.from_numpy(edit)
        seen = self._as_written(self.alpha * edited + (1 - self.alpha) * self.source)
        if self.example is None:
            levels = roi_swd_levels(seen, self.source, self.roi, unit=self.unit)
        else:  # from the mixture the edit was drawn from: the tile's surroundings and the example
            w = self.share
            levels = roi_swd_levels_to(
                seen,
                self.roi,
                [(self.source, self.outside, 1 - w), (self.example.image, self.example.valid, w)],
                unit=self.unit,
            )[: len(self.unit)]
        finite = [v for v in levels if v == v]
        toward = 0.0
        if self.from_input is not None:
            ratios = [
                e / i
                for e, i in zip(self._to_example(seen), self.from_input, strict=True)
                if e == e and i == i and i > 0
            ]
            toward = combine_levels(ratios) if ratios else 0.0
        seam = seam_ratio(seen * self.span, self.written_source, self.roi)
        cut = cut_ratio(seen.numpy(), self.source, self.roi.numpy(), unit=self.cut_unit)
        coherence = 0.0
        if self.coherence_unit is not None:
            coherence = coherence_ratio(
                seen, self.source, self.roi.numpy(), invalid=self.invalid, unit=self.coherence_unit
            )
        return _Realism(
            max(finite) if finite else 0.0,
            seam if seam == seam else 0.0,
            cut if cut == cut else 0.0,
            toward,
            coherence if coherence == coherence else 0.0,
        )

    def _as_written(self, image: torch.Tensor) -> torch.Tensor:
        """`image` (model values) rounded to the raster's type and back."""
        return torch.from_numpy(
            self.scaling.forward(self.scaling.inverse(image.numpy()), self.valid)
        )

    def _to_example(self, image: torch.Tensor) -> list[float]:
        """Per level, the patch distance from the ROI of `image` to the example alone."""
        return roi_swd_levels_to(
            image, self.roi, [(self.example.image[0], self.example.valid, 1.0)]
        )


def _mixture_unit(unit: list[float], example: _ExamplePool, roi, share: float) -> list[float]:
    """The realism unit of an edit drawn from the tile and an example, per level: the tile's
    and the example's own units (how unlike the rest of each a region of the ROI's shape
    typically is) in the proportion `share` the example was drawn with. A varied example (a
    lake among fields) is far from its own regions; in the tile's unit alone, an edit drawing
    on a part of it failed the guard however like the example it was (bench.exemplar's NAIP
    case: six redraws, none better). Where the ROI's shape fits nowhere in the example, the
    tile's unit stands for the example's."""
    try:
        theirs = roi_swd_unit(example.image[0], roi, valid=example.valid)
    except ValueError:
        return unit
    return [
        u if k >= len(theirs) or theirs[k] != theirs[k] else (1 - share) * u + share * theirs[k]
        for k, u in enumerate(unit)
    ]


class _NetworkSampler:
    """Coarse edits from a (trained, maybe fine-tuned) tile model; `unguided=True` samples the
    model as trained (the realism guard's alternatives)."""

    def __init__(self, model: TileModel, scene, unguided: TileModel | None = None):
        self.model, self.scene, self.unguided = model, scene, unguided or model

    def __call__(self, seeds, *, guide=None, unguided=False, draw=PLAIN, progress=no_progress):
        # `draw` (the patch sampler's start from the surroundings and its posteriors) has no
        # counterpart here: a trained model's sampler starts from noise.
        model = self.unguided if unguided else self.model
        guide = None if unguided else guide
        return sample_edits(model, self.scene, seeds, guide=guide, progress=progress)


class _ExamplePool:
    """The tile's example as the engine uses it: a picture whose patches join the tile's
    with probability `weight`, rising to it from the ROI's edge over `ramp` px of the coarse
    scale."""

    def __init__(self, image: torch.Tensor, invalid: torch.Tensor, weight: float, ramp: int = 1):
        self.image, self.invalid, self.weight = image, invalid, weight  # (1, C|1, he, we)
        self.ramp = ramp

    @classmethod
    def of(cls, tile, weight: float, preset) -> _ExamplePool | None:
        if tile.example is None or weight <= 0:
            return None
        image = torch.from_numpy(tile.example.image)[None]
        invalid = torch.from_numpy(~tile.example.valid)[None, None]
        # The preset's ramp, fitted to the ROI as the coarse scale sees it.
        size = coarse_size(*tile.model_image.shape[1:], preset.coarse_side)
        roi = mask_at(torch.from_numpy(tile.alpha > 0)[None, None], size)
        return cls(image, invalid, weight, fitted_ramp(roi, preset.sampler.example_ramp))

    def mean_share(self, roi: torch.Tensor, ramp: int) -> float:
        """The example's mean share over the ROI's pixels (`roi`: (H, W) bool) when it rises
        from 0 at the ROI's edge to `weight` `ramp` px in (`patches.example_share`)."""
        if not roi.any():
            return self.weight
        return float(example_share(roi[None, None], 1, self.weight, ramp)[roi.flatten()].mean())

    @property
    def pair(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image, self.invalid

    @property
    def valid(self) -> torch.Tensor:
        return ~self.invalid[0, 0]

    def scaled(self, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The picture and its invalid pixels scaled as the tile is by `factor`."""
        he, we = self.image.shape[-2:]
        size = (max(1, round(he * factor)), max(1, round(we * factor)))
        return resize(self.image, size), mask_at(self.invalid, size)


class _PatchSampler:
    """Coarse edits from the training-free patch-diffusion sampler, at the scene's one scale."""

    def __init__(
        self,
        scene,
        tile,
        settings: patch_diffusion.PatchDiffusionSettings,
        example: _ExamplePool | None = None,
    ):
        self.known = scene.known[0]
        size = tuple(self.known.shape[-2:])
        device = self.known.device
        self.roi = mask_at(torch.from_numpy(tile.alpha > 0)[None, None], size).to(device)
        self.invalid = mask_at(torch.from_numpy(~tile.valid)[None, None], size).to(device)
        self.settings = settings
        self.example, self.example_weight = None, 0.0
        if example is not None:
            factor = size[0] / tile.model_image.shape[1]
            self.example = tuple(t.to(device) for t in example.scaled(factor))
            self.example_weight = example.weight
            self.settings = replace(settings, example_ramp=example.ramp)

    def __call__(self, seeds, *, guide=None, unguided=False, draw=PLAIN, progress=no_progress):
        settings = self.settings
        if draw.sharpen is not None:
            settings = replace(settings, sharpen=draw.sharpen)
        edits = []
        for i, seed in enumerate(seeds):
            x = patch_diffusion.sample(
                self.known,
                self.roi,
                settings,
                invalid=self.invalid,
                seed=seed,
                guide=None if unguided else guide,
                anchor=draw.anchor,
                fill=draw.fill,
                example=self.example,
                example_weight=self.example_weight,
                progress=share(progress, i, len(seeds)),
            )
            edits.append(x[0].float().cpu().numpy())
        return edits
