"""Multi-scale diffusion (SinDDM-style): the blurry/clean mixing forward process, and sampling.

Scale 0 is plain DDPM from pure noise. At a finer scale s the training input is a mix of the
clean image and its blurry version (scale s-1 upsampled): x_mix = g_t * blurry + (1 - g_t) * clean,
with g_t = clamp(sigma_t / gap_s, 0, 1) growing with the noise level, where gap_s is the RMS
difference between clean and blurry at that scale. Only timesteps whose noise is below that gap
are trained and sampled at s > 0: sampling starts from the upsampled previous result, noised to
the level where noise and blur difference match, then denoised while the blur is taken out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..progress import ProgressCallback, no_progress
from .pyramid import upsample
from .schedule import NoiseSchedule

# At sampling the blur weight is capped (as published): dividing by 1 - g amplifies errors.
SAMPLING_GAMMA_CAP = 0.55


class MultiScaleDiffusion:
    def __init__(
        self,
        timesteps: int,
        blur_gaps: Sequence[float],
        device="cpu",
        fine_target: str = "noise",
    ):
        """`blur_gaps[s]` (s >= 1): RMS clean-blurry difference at scale s; index 0 is unused."""
        if fine_target not in ("noise", "clean"):
            raise ValueError(f"fine_target must be 'noise' or 'clean', got {fine_target!r}")
        self.fine_target = fine_target
        self.schedule = NoiseSchedule(timesteps, device)
        self.timesteps = timesteps
        self.blur_gaps = tuple(float(g) for g in blur_gaps)
        sigma = self.schedule.sigma
        self.gammas = [None] + [(sigma / max(gap, 1e-6)).clamp(0, 1) for gap in self.blur_gaps[1:]]
        # t_max[s]: timesteps trained at scale s; the first t whose noise exceeds the blur gap.
        self.t_max = [timesteps] + [
            max(2, int(torch.searchsorted(sigma, torch.tensor(gap, device=sigma.device))))
            for gap in self.blur_gaps[1:]
        ]
        self.t_max = [min(t, timesteps) for t in self.t_max]

    @property
    def n_scales(self) -> int:
        return len(self.blur_gaps)

    def to(self, device) -> MultiScaleDiffusion:
        self.schedule.to(device)
        self.gammas = [None if g is None else g.to(device) for g in self.gammas]
        return self

    # --- training ---------------------------------------------------------------------------

    def loss(
        self,
        net: nn.Module,
        clean: torch.Tensor,
        blurry: torch.Tensor | None,
        scale: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L1 between the true and predicted noise (or, at fine scales with fine_target "clean",
        the clean image) for a batch at one scale."""
        b = clean.shape[0]
        t = torch.randint(0, self.t_max[scale], (b,), device=clean.device, generator=generator)
        x0 = clean
        if scale > 0:
            g = self.gammas[scale][t].view(-1, 1, 1, 1)
            x0 = g * blurry + (1 - g) * clean
        noise = torch.randn(clean.shape, device=clean.device, generator=generator)
        x_t = self.schedule.q_sample(x0, t, noise)
        s = torch.full((b,), scale, device=clean.device)
        target = clean if scale > 0 and self.fine_target == "clean" else noise
        return (net(x_t, t, s) - target).abs().mean()

    # --- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        net: nn.Module,
        sizes: Sequence[tuple[int, int]],
        *,
        batch: int,
        channels: int,
        generator: torch.Generator | None = None,
        progress: ProgressCallback = no_progress,
        device=None,
        start: torch.Tensor | None = None,
        start_scale: int = 0,
    ) -> torch.Tensor:
        """Generate `batch` images through all scales, coarsest first; returns the finest.

        `start` (an image at scale `start_scale - 1`, or None) lets callers begin mid-pyramid.
        """
        device = device or next(net.parameters()).device
        total = sum(self._steps_at(s) for s in range(start_scale, len(sizes)))
        done = 0
        x = start

        def tick(k: int) -> None:
            progress("sample", done + k, total)

        for s in range(start_scale, len(sizes)):
            h, w = sizes[s]
            if s == 0:
                x = torch.randn((batch, channels, h, w), device=device, generator=generator)
                x = self._denoise_scale0(net, x, generator, tick)
            else:
                x = self._denoise_scale(net, upsample(x, (h, w)), s, generator, tick)
            done += self._steps_at(s)
        return x

    def _steps_at(self, s: int) -> int:
        return self.timesteps if s == 0 else self.t_max[s]

    def _predict(self, net, x, t: int, s: int) -> torch.Tensor:
        """The network's prediction (noise, or the clean image), in float32 even under bf16."""
        b = x.shape[0]
        t_, s_ = torch.full((b,), t, device=x.device), torch.full((b,), s, device=x.device)
        return net(x, t_, s_).float()

    def _denoise_scale0(self, net, x, generator, tick) -> torch.Tensor:
        """Ancestral DDPM from pure noise."""
        sch = self.schedule
        for i, t in enumerate(reversed(range(self.timesteps))):
            eps = self._predict(net, x, t, 0)
            x0 = ((x - sch.sqrt_one_minus_ab[t] * eps) / sch.sqrt_ab[t]).clamp(-1, 1)
            if t == 0:
                x = x0
            else:
                ab, ab_prev = sch.alphas_cumprod[t], sch.alphas_cumprod[t - 1]
                beta = 1 - ab / ab_prev
                mean = (beta * ab_prev.sqrt() / (1 - ab)) * x0 + (
                    (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
                ) * x
                var = beta * (1 - ab_prev) / (1 - ab)
                noise = torch.randn(x.shape, device=x.device, generator=generator)
                x = mean + var.sqrt() * noise
            tick(i + 1)
        return x

    def _denoise_scale(self, net, blurry, s: int, generator, tick) -> torch.Tensor:
        """From the noised blurry image, step down while replacing blur by learned detail."""
        sch = self.schedule
        t_start = self.t_max[s] - 1
        noise = torch.randn(blurry.shape, device=blurry.device, generator=generator)
        x = sch.q_sample(
            blurry, torch.full((blurry.shape[0],), t_start, device=blurry.device), noise
        )
        predicts_clean = self.fine_target == "clean"
        # Predicting noise means dividing by 1 - gamma to recover the clean image: capped as
        # published. Predicting the clean image needs no division, so the trained gammas hold.
        gammas = self.gammas[s] if predicts_clean else self.gammas[s].clamp(0, SAMPLING_GAMMA_CAP)
        for i, t in enumerate(reversed(range(t_start + 1))):
            if predicts_clean:
                clean = self._predict(net, x, t, s).clamp(-1, 1)
                x0_mix = gammas[t] * blurry + (1 - gammas[t]) * clean
                eps = (x - sch.sqrt_ab[t] * x0_mix) / sch.sqrt_one_minus_ab[t]
            else:
                eps = self._predict(net, x, t, s)
                x0_mix = (x - sch.sqrt_one_minus_ab[t] * eps) / sch.sqrt_ab[t]
                clean = ((x0_mix - gammas[t] * blurry) / (1 - gammas[t])).clamp(-1, 1)
            if t == 0:
                x = clean
            else:
                # Deterministic (DDIM) step towards the mix of the next, less noisy level.
                target = gammas[t - 1] * blurry + (1 - gammas[t - 1]) * clean
                x = sch.sqrt_ab[t - 1] * target + sch.sqrt_one_minus_ab[t - 1] * eps
            tick(i + 1)
        return x
