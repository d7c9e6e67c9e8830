"""Named presets: plain frozen dataclasses, chosen by name and validated once.

`reference` is the published SinDDM configuration: the diffusion model learns every scale of the
tile (like-for-like comparisons with the paper). The others are ours: the diffusion model learns
and generates only the coarse scales (short side `coarse_side`, where it is cheap to train and
where guidance sets the layout), and the fine scales are assembled from the tile's own patches
(`engine/patches.py`): sharp detail in seconds instead of hours of training. `auto` picks one by
device (`resolve_preset`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ParameterError
from .patch_diffusion import PatchDiffusionSettings
from .patches import PatchSettings


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    width: int = 160  # network width (blocks are w/2, w, w, w/2)
    timesteps: int = 100
    steps: int = 120_000  # optimizer steps; each step trains one scale
    batch: int = 32
    crop: int | None = None  # random crops of this size at scales larger than it; None: whole image
    lr: float = 1e-3
    lr_schedule: str = "multistep"  # "multistep" (halve at milestones) or "cosine"
    milestones: tuple[int, ...] = (20_000, 40_000, 70_000, 80_000, 90_000, 110_000)
    ema_decay: float = 0.995
    grad_clip: float | None = None  # clip the gradient norm (the published code does not)
    # Fine scales: blur their blurry training input by a random sigma up to this (px), so that
    # they learn to sharpen generated inputs, which are smoother than the true ones (0: off).
    blur_augment: float = 0.0
    max_pixels: int | None = None  # the published code caps its input at 50,000 pixels
    compile: bool = False  # torch.compile the network (pays off on long GPU runs)
    # How a step picks its scale: "timesteps" (proportional to the timesteps trained there, as
    # published: the coarsest scale dominates), "uniform" (fine scales get their share), or
    # "coarse-half" (half the steps at the coarsest scale, a full DDPM that sets layout and
    # colour; the finer scales, which train a few timesteps each, share the other half).
    scale_weighting: str = "timesteps"
    # What the network predicts: "noise" everywhere (published), "clean" (the sharp image) at
    # the scales above the coarsest, or "clean-all". Measured on short CPU budgets: predicting
    # the noise leaves visible colour noise in samples (errors at high noise levels are
    # amplified when the clean image is recovered); predicting the clean image degrades to
    # plausible, blurry content instead. Our presets sample only the coarse scale with the
    # network, where the patch pass removes colour noise but cannot undo a blurred layout (the
    # forest ROI of bench.realism came out a dark smooth blob with "clean-all"), so they
    # predict the noise.
    fine_target: str = "noise"
    # Text guidance (CLIP): fine-tuning steps, augmented CLIP views per step, learning rate,
    # how many of the network's first blocks stay frozen (the paper's "encoder"), the weight of
    # the fidelity term, and the strength of the sampling-time guidance (the cheaper path).
    guide_steps: int = 100
    guide_views: int = 8
    guide_lr: float = 2e-4
    guide_freeze: int = 2
    guide_fidelity: float = 1.0
    guide_scale: float = 100.0
    # How the fine scales are made: "patches" (the diffusion model learns the tile downscaled to
    # a short side of `coarse_side`; the scales above are assembled from the tile's patches) or
    # "diffusion" (the model learns and samples every scale, as published).
    detail: str = "diffusion"
    coarse_side: int = 64
    patches: PatchSettings = field(default_factory=PatchSettings)
    # How the coarse layout is made (patch detail only): "network" (the diffusion model above,
    # trained on the coarse tile) or "patch-diffusion" (engine/patch_diffusion.py: a
    # training-free sampler whose denoiser is the tile's own patches, seconds instead of a
    # minute on a CPU). Fine-tuning needs a network, so `--guidance finetune` trains one either
    # way; "sampling" and "none" use the training-free sampler when it is asked for here.
    coarse: str = "network"
    sampler: PatchDiffusionSettings = field(default_factory=PatchDiffusionSettings)
    # The realism guard (patch detail only): an edit whose ROI scores above `guard_bar` on its
    # worst level of quality.roi_swd_levels (1 = as unlike its surroundings as a region of the
    # tile typically is) is replaced by the best of up to `guard_tries` alternatives.
    guard_bar: float = 2.0
    # ... or whose boundary is busier than the input's there by more than this factor
    # (`seam_ratio`: a straight edge where the ROI cuts through new content), or calmer by more
    # than it (flat new content meeting the tile's texture along the ROI's edge).
    guard_seam: float = 1.5
    # ... or whose outline shows as a change of texture along it (`boundary.cut_ratio`: the
    # sea filling a box up to its straight edge) by more than this factor.
    guard_cut: float = 1.3
    # ... or, in an edit by example, whose ROI is no closer to the example than this (the
    # quadratic mean over levels of the ROI's patch distance to the example, over the same for
    # the unedited ROI) at `--reference-weight` 1, rising to 1 (no closer than the input) as
    # the weight falls to 0: an edit that kept the tile's look did not do what was asked.
    guard_toward: float = 0.6
    # ... or, without an example, whose worst pieces are further from anything in the tile
    # than the input's own ROI is by more than this factor (`coherence.coherence_ratio`: a
    # barrier broken off, a dark blob across it). 1.05: on bench.realism's 18 edits before
    # it, the two the eye rejected for broken barriers scored 1.12 and 1.18, the rest
    # 0.61-1.00.
    guard_coherence: float = 1.05
    guard_tries: int = 2
    # While the outline shows, every other alternative starts from the ROI filled
    # smoothly from its surroundings, noised to this level (`patch_diffusion.sample`'s
    # `anchor`; training-free layouts only), so their layout continues the surroundings.
    guard_anchor: float = 0.6
    # While the realism level or the pieces fail (and no example is asked for), every other
    # alternative starts from the ROI filled with the surroundings' structures carried across
    # it (`offsets.offset_fill` and `fill.structure_fill` in turn), noised to this level: a
    # barrier or a river bank that runs into the ROI goes on through it, where draws from
    # noise broke bench.realism's overpass median in six drafts of six. Low, so the lines
    # survive the noise (the overpass's worst level over three drafts from `structure_fill`:
    # 1.38-1.63 at 0.6, 1.23-1.44 at 0.3; from noise 1.58-3.43, and from the smooth fill
    # about 4: bare asphalt).
    guard_continue: float = 0.3
    # Unless the outline fails, every other alternative is drawn with patch
    # posteriors this much sharper (`PatchDiffusionSettings.sharpen`; training-free
    # layouts only): its layout keeps the tile's rarer, high-contrast content (crowns in a
    # shaded forest, cars on a road) where a plain draw drifts to the commonest. 3:
    # bench.realism's forest and overpass (seed 0) failed their colour level with plain
    # alternatives only (1.27, 1.26); over 6 unguarded drafts each (a scratch script) the
    # median worst level went 1.84 / 2.15 to 0.93 / 1.33 (the harbour's, 1.16, to 1.47:
    # hence alternating, not always). Not while the outline fails (then every other
    # one is anchored, the rest plain): sharper draws from noise left a Landsat box the sea
    # had filled as it was, and `tiny`'s 4 tries found no coast. Nor while an edit by
    # example is what fails most, too far from the example: sharper draws keep the tile's
    # rare content, not the example's (the guard's drafts for bench.exemplar's NAIP case,
    # seed 0, logged by a scratch script: its two sharper alternatives came 0.73 and 0.77
    # from the example, the plain ones 0.53-0.68).
    guard_sharpen: float = 3.0

    def trains_network(self, guidance: str) -> bool:
        """Whether an edit with this guidance trains a network (`auto` guidance fine-tunes
        exactly when one is trained anyway): fine-tuning needs one, and so does every preset
        whose coarse layout is not made by the training-free sampler."""
        made_without = self.detail == "patches" and self.coarse == "patch-diffusion"
        return guidance == "finetune" or not made_without


# Fine-scale synthesis: `PatchSettings()` was chosen on the ROIs of `bench.realism` (see
# docs/BENCHMARKS.md, "Realism"): a narrow Gaussian vote keeps the finest detail that a plain
# mean vote blurs, and completeness at the coarse scale keeps the ROI from collapsing onto the
# tile's commonest (darkest) patches. The detail stage took 1.5-2.7 s per 256 px window on 2
# CPU cores there. GPU presets search more keys.
SHARP = PatchSettings()
WIDE = PatchSettings(max_keys=80_000, chunk=1024)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            "tests and demos: a 96x96 edit in under a minute on 2 CPU cores",
            width=32,
            timesteps=20,
            steps=300,
            batch=4,
            crop=48,
            lr=3e-3,
            lr_schedule="cosine",
            milestones=(),
            scale_weighting="uniform",
            ema_decay=0.9,
            guide_steps=40,
            guide_views=4,
            guide_lr=1e-3,
            detail="patches",
            fine_target="noise",
            coarse_side=48,
            patches=SHARP,
            coarse="patch-diffusion",
            # Its drafts cost seconds, so the guard asks more of them and tries more.
            guard_bar=1.25,
            guard_seam=1.25,
            guard_tries=4,
        ),
        Preset(
            "fast",
            "the CPU default: a 256 px window in about a minute on 2 cores",
            width=64,
            timesteps=50,
            steps=600,
            batch=8,
            crop=None,
            lr=2e-3,
            lr_schedule="cosine",
            milestones=(),
            # The coarsest scale sets layout and colour and its steps are the cheapest, so it
            # gets most of them, as published.
            scale_weighting="timesteps",
            grad_clip=1.0,
            ema_decay=0.99,
            guide_steps=60,
            guide_views=8,
            guide_lr=5e-4,
            detail="patches",
            fine_target="noise",
            coarse_side=64,
            patches=SHARP,
            coarse="patch-diffusion",
            # Its drafts cost seconds, so the guard asks more of them and tries more: 12
            # (3-4 s each on 2 cores) passed bench.realism cases that 6 did not (overpass,
            # seed 2: colour 1.33 -> 1.18) and keeps the worst case under a minute.
            guard_bar=1.25,
            guard_seam=1.25,
            guard_tries=12,
        ),
        Preset(
            "balanced",
            "the GPU default: a wider coarse model trained longer",
            width=96,
            timesteps=100,
            steps=4000,
            batch=16,
            crop=None,
            lr=2e-3,
            lr_schedule="cosine",
            milestones=(),
            scale_weighting="timesteps",
            grad_clip=1.0,
            ema_decay=0.995,
            detail="patches",
            fine_target="noise",
            coarse_side=80,
            patches=WIDE,
        ),
        Preset(
            "quality",
            "the published network width, a larger coarse scale, longer training (GPU)",
            width=160,
            timesteps=100,
            steps=12_000,
            batch=16,
            crop=None,
            lr=1e-3,
            lr_schedule="cosine",
            milestones=(),
            scale_weighting="timesteps",
            grad_clip=1.0,
            ema_decay=0.995,
            compile=True,
            guide_steps=200,
            guide_views=16,
            detail="patches",
            fine_target="noise",
            coarse_side=96,
            patches=WIDE,
        ),
        Preset(
            "reference", "the published SinDDM configuration, for comparison", max_pixels=50_000
        ),
    )
}
AUTO = "auto"  # not a preset: the best one for the device the edit runs on
DEFAULT_PRESET = AUTO
PRESET_NAMES = (AUTO, *PRESETS)
# What `auto` picks per device type: a result in about a minute either way.
AUTO_CHOICE = {"cpu": "fast", "mps": "fast", "cuda": "balanced"}


def get_preset(name: str) -> Preset:
    """A concrete preset by name (`resolve_preset` resolves `auto`: it knows the device)."""
    try:
        return PRESETS[name]
    except KeyError:
        if name == AUTO:
            raise ValueError(
                "resolve 'auto' with resolve_preset (it depends on the device)"
            ) from None
        known = ", ".join(PRESET_NAMES)
        raise ParameterError(f"unknown preset {name!r} (known: {known})") from None


def check_preset_name(name: str) -> str:
    if name != AUTO:
        get_preset(name)
    return name


def resolve_preset(name: str, device_type: str) -> tuple[Preset, str]:
    """The preset to run and, for the log, why it was picked."""
    if name != AUTO:
        return get_preset(name), f"preset {name!r} as asked"
    chosen = AUTO_CHOICE.get(device_type, "fast")
    why = "a GPU is available" if device_type == "cuda" else f"running on {device_type}"
    return get_preset(chosen), f"preset auto -> {chosen!r} ({why})"
