"""Named training presets: plain frozen dataclasses, chosen by name and validated once.

`reference` is the published SinDDM configuration (like-for-like speed comparisons). The others
are ours: random-crop batches at the fine scales (the network sees ~35 px, so whole-image copies
waste compute), fewer timesteps, a cosine learning-rate decay, and fewer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParameterError


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
    # plausible, blurry content instead. So our presets use "clean-all".
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
            fine_target="clean-all",
            ema_decay=0.9,
            guide_steps=40,
            guide_views=4,
            guide_lr=1e-3,
        ),
        Preset(
            "fast",
            "a quick usable model: minutes on CPU for a small tile",
            width=64,
            timesteps=50,
            steps=3000,
            batch=8,
            crop=64,
            lr=2e-3,
            lr_schedule="cosine",
            milestones=(),
            # Measured (BENCHMARKS.md): the coarsest scale limits quality at this budget, and
            # its steps are the cheapest, so it gets most of them, as published.
            scale_weighting="timesteps",
            grad_clip=1.0,
            blur_augment=1.5,
            fine_target="clean-all",
            ema_decay=0.99,
            guide_steps=60,
            guide_views=8,
            guide_lr=5e-4,
        ),
        Preset(
            "balanced",
            "the default: good quality in about two minutes on a GPU",
            width=96,
            timesteps=100,
            steps=4000,
            batch=16,
            crop=96,
            lr=2e-3,
            lr_schedule="cosine",
            milestones=(),
            scale_weighting="uniform",
            fine_target="clean-all",
            ema_decay=0.995,
        ),
        Preset(
            "quality",
            "the published network width, crops, longer training",
            width=160,
            timesteps=100,
            steps=12_000,
            batch=16,
            crop=128,
            lr=1e-3,
            lr_schedule="cosine",
            milestones=(),
            scale_weighting="uniform",
            fine_target="clean-all",
            ema_decay=0.995,
            compile=True,
            guide_steps=200,
            guide_views=16,
        ),
        Preset(
            "reference", "the published SinDDM configuration, for comparison", max_pixels=50_000
        ),
    )
}
DEFAULT_PRESET = "balanced"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ParameterError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
