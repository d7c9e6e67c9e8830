"""Training a tile model: each optimizer step trains one scale (drawn as published), on
copies of the whole image (reference) or on random crops at the scales larger than the crop.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..progress import ProgressCallback, Stage, no_progress
from .device import autocast, channels_last, use_bf16
from .diffusion import MultiScaleDiffusion
from .model import TileModel, tile_hash
from .network import Denoiser
from .presets import Preset
from .pyramid import blurry_inputs, build_pyramid, gaussian_blur, lanczos_resize, pyramid_spec


class Trainer:
    """Holds the state of one training run so benchmarks can time individual steps."""

    def __init__(
        self,
        image: np.ndarray,
        preset: Preset,
        *,
        device: torch.device,
        seed: int | None = None,
        precision: str = "auto",
        channels_last_layout: bool = True,
    ):
        image = _cap_pixels(image, preset.max_pixels)
        self.preset, self.device = preset, device
        self.image = image
        self.spec = pyramid_spec(*image.shape[1:])
        pyramid = build_pyramid(image, self.spec)
        blurry = blurry_inputs(pyramid)
        self.clean = [p.to(device) for p in pyramid]
        self.blurry = [None if b is None else b.to(device) for b in blurry]
        gaps = [0.0] + [
            float((c - b).pow(2).mean().sqrt())
            for c, b in zip(self.clean[1:], self.blurry[1:], strict=True)
        ]
        self.diffusion = MultiScaleDiffusion(preset.timesteps, gaps, device, preset.fine_target)

        self.scale_chooser = random.Random(seed)
        self.generator = torch.Generator(device)
        self.generator.manual_seed(seed if seed is not None else torch.seed())
        if seed is not None:
            torch.manual_seed(seed)  # weight initialisation
        self.net = Denoiser(image.shape[0], preset.width).to(device)
        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(preset.ema_decay))
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=preset.lr)
        self.scheduler = _lr_schedule(self.optimizer, preset)
        self.bf16 = use_bf16(device, precision)
        # channels_last_layout=False and precision="fp32" run the network the published way
        # (NCHW, fp32): the like-for-like baseline of `rs-edit bench --baseline`.
        self.layout = channels_last if channels_last_layout else (lambda x: x)
        if channels_last_layout:
            self.net = self.net.to(memory_format=torch.channels_last)
        compile_ = preset.compile and device.type == "cuda"
        self.forward_net = torch.compile(self.net) if compile_ else self.net
        self.step_count = 0

    @property
    def scale_weights(self) -> list[float]:
        """Probability of each scale being trained in a step."""
        n = self.spec.n_scales
        if self.preset.scale_weighting == "timesteps":
            raw = [float(t) for t in self.diffusion.t_max]
        elif self.preset.scale_weighting == "coarse-half" and n > 1:
            raw = [float(n - 1)] + [1.0] * (n - 1)  # half at the coarsest, half shared
        else:
            raw = [1.0] * n
        return [w / sum(raw) for w in raw]

    def step(self, scale: int | None = None) -> float:
        """One optimizer step on one scale, drawn with probability proportional to the number
        of timesteps trained there (as published) unless given; returns the loss."""
        s = scale
        if s is None:
            s = self.scale_chooser.choices(range(self.spec.n_scales), self.scale_weights)[0]
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        clean, blurry = self._batch(s)
        with autocast(self.device, self.bf16):
            loss = self.diffusion.loss(self.forward_net, clean, blurry, s, self.generator)
        loss.backward()
        if self.preset.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.preset.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.ema.update_parameters(self.net)
        self.step_count += 1
        return float(loss.detach())

    @torch.no_grad()
    def eval_loss(self, seed: int = 0, repeats: int = 4) -> float:
        """The loss over every scale with fixed noise and timesteps: comparable across steps."""
        generator = torch.Generator(self.device)
        generator.manual_seed(seed)
        self.net.eval()
        total = 0.0
        for s in range(self.spec.n_scales):
            clean = self.layout(self.clean[s])
            blurry = None if self.blurry[s] is None else self.layout(self.blurry[s])
            for _ in range(repeats):
                total += float(self.diffusion.loss(self.net, clean, blurry, s, generator))
        return total / (repeats * self.spec.n_scales)

    def _batch(self, s: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        clean, blurry = self.clean[s], self.blurry[s]
        b, crop = self.preset.batch, self.preset.crop
        h, w = clean.shape[-2:]
        if crop is None or (h <= crop and w <= crop):
            clean = clean.expand(b, -1, -1, -1)
            blurry = None if blurry is None else blurry.expand(b, -1, -1, -1)
        else:
            ch, cw = min(crop, h), min(crop, w)
            rows = torch.randint(
                0, h - ch + 1, (b,), generator=self.generator, device=self.device
            ).tolist()
            cols = torch.randint(
                0, w - cw + 1, (b,), generator=self.generator, device=self.device
            ).tolist()
            clean = torch.cat(
                [clean[..., r : r + ch, c : c + cw] for r, c in zip(rows, cols, strict=True)]
            )
            if blurry is not None:
                blurry = torch.cat(
                    [blurry[..., r : r + ch, c : c + cw] for r, c in zip(rows, cols, strict=True)]
                )
        if blurry is not None and self.preset.blur_augment > 0:
            blurry = self._blur_augment(blurry)
        return self.layout(clean), None if blurry is None else self.layout(blurry)

    def _blur_augment(self, blurry: torch.Tensor) -> torch.Tensor:
        """Blur each blurry input by a random sigma in [0, preset.blur_augment] px.

        The fine scales train on the true coarser image, but at sampling they get a generated
        one, which is smoother: seeing blurrier inputs teaches them to sharpen more
        (conditioning augmentation, as in cascaded diffusion models). `bench/scale_diagnosis.py`,
        `fast` on a 128 px tile: SWD ratio 1.93 without, 1.13 with sigma up to 1.5 px.
        """
        sigmas = torch.rand(blurry.shape[0], generator=self.generator, device=self.device)
        out = []
        for x, sigma in zip(
            blurry.split(1), (sigmas * self.preset.blur_augment).tolist(), strict=True
        ):
            out.append(gaussian_blur(x.contiguous(), sigma) if sigma > 0.2 else x)  # 0.2: no-op
        return torch.cat(out)

    def model(self, *, scaling: dict | None = None) -> TileModel:
        """The trained model with EMA weights (a copy; training may go on)."""
        net = Denoiser(self.net.channels, self.net.width, self.net.emb_dim).to(self.device)
        net.load_state_dict(self.ema.module.state_dict())
        return TileModel(
            net=net.eval(),
            spec=self.spec,
            timesteps=self.preset.timesteps,
            blur_gaps=self.diffusion.blur_gaps,
            fine_target=self.preset.fine_target,
            preset=self.preset.name,
            tile_hash=tile_hash(self.image, self.preset.name),
            scaling=scaling,
            extra={"steps": self.step_count},
        )


def train_tile(
    image: np.ndarray,
    preset: Preset,
    *,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    steps: int | None = None,
    precision: str = "auto",
    progress: ProgressCallback = no_progress,
    scaling: dict | None = None,
    tile_hash: str | None = None,
) -> TileModel:
    """Learn one tile (C, H, W) in the model's range; progress("train", step, total, loss).

    `tile_hash` replaces the default hash (image + preset), e.g. by a model cache's own key."""
    trainer = Trainer(image, preset, device=torch.device(device), seed=seed, precision=precision)
    total = steps or preset.steps
    progress(Stage.TRAIN, 0, total, None)
    started = time.perf_counter()
    for step in range(1, total + 1):
        loss = trainer.step()
        if not math.isfinite(loss):
            raise RuntimeError(f"training diverged at step {step} (loss {loss})")
        progress(Stage.TRAIN, step, total, loss)
    trainer.seconds = time.perf_counter() - started
    model = trainer.model(scaling=scaling)
    if tile_hash:
        model.tile_hash = tile_hash
    return model


def _lr_schedule(optimizer, preset: Preset):
    if preset.lr_schedule == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(preset.milestones), 0.5)
    warmup = max(1, preset.steps // 50)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, preset.steps - warmup))
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _cap_pixels(image: np.ndarray, max_pixels: int | None) -> np.ndarray:
    """The published code downscales inputs above 50,000 pixels; do the same when asked."""
    c, h, w = image.shape
    if not max_pixels or h * w <= max_pixels:
        return image
    f = math.sqrt(max_pixels / (h * w))
    return lanczos_resize(image, (max(1, int(h * f)), max(1, int(w * f))))
