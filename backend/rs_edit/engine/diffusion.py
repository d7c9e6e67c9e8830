"""Multi-scale diffusion (SinDDM-style): the blurry/clean mixing forward process, and sampling.

Scale 0 is plain DDPM from pure noise. At a finer scale s the training input is a mix of the
clean image and its blurry version (scale s-1 upsampled): x_mix = g_t * blurry + (1 - g_t) * clean,
with g_t = clamp(sigma_t / gap_s, 0, 1) growing with the noise level, where gap_s is the RMS
difference between clean and blurry at that scale. Only timesteps whose noise is below that gap
are trained and sampled at s > 0: sampling starts from the upsampled previous result, noised to
the level where noise and blur difference match, then denoised while the blur is taken out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..progress import ProgressCallback, Stage, no_progress
from .pyramid import upsample
from .schedule import NoiseSchedule

# At sampling the blur weight is capped (as published): dividing by 1 - g amplifies errors.
SAMPLING_GAMMA_CAP = 0.55
# What the network predicts: the noise everywhere (published), the clean image at the scales
# above the coarsest ("clean"), or the clean image at every scale ("clean-all").
TARGETS = ("noise", "clean", "clean-all")


class MultiScaleDiffusion:
    def __init__(
        self,
        timesteps: int,
        blur_gaps: Sequence[float],
        device="cpu",
        fine_target: str = "noise",
    ):
        """`blur_gaps[s]` (s >= 1): RMS clean-blurry difference at scale s; index 0 is unused."""
        if fine_target not in TARGETS:
            raise ValueError(f"fine_target must be one of {TARGETS}, got {fine_target!r}")
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

    def predicts_clean(self, scale: int) -> bool:
        """Whether the network predicts the clean image (not the noise) at this scale."""
        return self.fine_target == "clean-all" or (scale > 0 and self.fine_target == "clean")

    @property
    def n_scales(self) -> int:
        return len(self.blur_gaps)

    def sampling_gammas(self, scale: int) -> torch.Tensor:
        """The blur weights a sampler (and fine-tuning, which tunes what is sampled) uses at a
        scale above the coarsest: capped where the clean image is recovered from the noise."""
        g = self.gammas[scale]
        return g if self.predicts_clean(scale) else g.clamp(0, SAMPLING_GAMMA_CAP)

    def noised(self, clean, blurry, scale: int, t: torch.Tensor, noise) -> torch.Tensor:
        """The forward process: x_t at timesteps `t` (B,) of scale `scale`, whose clean image is
        blended toward the blurry one (the scale below, upsampled) as the noise grows."""
        x0 = clean
        if scale > 0:
            g = self.gammas[scale][t].view(-1, 1, 1, 1)
            x0 = g * blurry + (1 - g) * clean
        return self.schedule.q_sample(x0, t, noise)

    def clean_from_noise(self, x, eps, t: int, scale: int, blurry, clamp: bool = True):
        """The clean image implied by x_t and a noise estimate (differentiable)."""
        sch = self.schedule
        x0 = (x - sch.sqrt_one_minus_ab[t] * eps) / sch.sqrt_ab[t]
        if scale > 0:
            # The floor matters only for guided steps of a clean-target model at gamma = 1.
            g = self.sampling_gammas(scale)[t]
            x0 = (x0 - g * blurry) / (1 - g).clamp_min(0.05)
        return x0.clamp(-1, 1) if clamp else x0

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
        noise = torch.randn(clean.shape, device=clean.device, generator=generator)
        x_t = self.noised(clean, blurry, scale, t, noise)
        s = torch.full((b,), scale, device=clean.device)
        target = clean if self.predicts_clean(scale) else noise
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
        inpaint: Inpaint | None = None,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """Generate `batch` images through all scales, coarsest first; returns the finest.

        `start` (an image at scale `start_scale - 1`, or None) lets callers begin mid-pyramid.
        `inpaint` regenerates only inside its masks and keeps the known image elsewhere (so the
        new content is made to fit its surroundings); `guide` steers every step towards a lower
        guidance loss of the clean estimate (classifier guidance, e.g. by CLIP).
        """
        device = device or next(net.parameters()).device
        total = sum(self._steps_at(s) for s in range(start_scale, len(sizes)))
        done = 0
        x = start

        def tick(k: int) -> None:
            progress(Stage.SAMPLE, done + k, total)

        for s in range(start_scale, len(sizes)):
            h, w = sizes[s]
            step = _Step(self, net, s, inpaint, guide, generator)
            if s == 0:
                x = torch.randn((batch, channels, h, w), device=device, generator=generator)
                x = self._denoise_scale0(step, x, tick)
            else:
                x = self._denoise_scale(step, upsample(x, (h, w)), tick)
            done += self._steps_at(s)
        return x

    def _steps_at(self, s: int) -> int:
        return self.timesteps if s == 0 else self.t_max[s]

    def _denoise_scale0(self, step: _Step, x, tick) -> torch.Tensor:
        """Ancestral DDPM from pure noise."""
        sch = self.schedule
        x = step.keep_known(x, self.timesteps - 1, None)
        for i, t in enumerate(reversed(range(self.timesteps))):
            _, clean = step.predict(x, t, None)
            if t == 0:
                x = clean
            else:
                ab, ab_prev = sch.alphas_cumprod[t], sch.alphas_cumprod[t - 1]
                beta = 1 - ab / ab_prev
                mean = (beta * ab_prev.sqrt() / (1 - ab)) * clean + (
                    (1 - ab_prev) * (1 - beta).sqrt() / (1 - ab)
                ) * x
                var = beta * (1 - ab_prev) / (1 - ab)
                noise = torch.randn(x.shape, device=x.device, generator=step.generator)
                x = mean + var.sqrt() * noise
            x = step.keep_known(x, t - 1, None)
            tick(i + 1)
        return x

    def _denoise_scale(self, step: _Step, blurry, tick) -> torch.Tensor:
        """From the noised blurry image, step down while replacing blur by learned detail."""
        sch = self.schedule
        t_start = self.t_max[step.scale] - 1
        noise = torch.randn(blurry.shape, device=blurry.device, generator=step.generator)
        x = sch.q_sample(
            blurry, torch.full((blurry.shape[0],), t_start, device=blurry.device), noise
        )
        step.blurry = blurry
        x = step.keep_known(x, t_start, noise)
        gammas = step.gammas
        for i, t in enumerate(reversed(range(t_start + 1))):
            eps, clean = step.predict(x, t, blurry)
            if t == 0:
                x = clean
            else:
                # Deterministic (DDIM) step towards the mix of the next, less noisy level.
                target = gammas[t - 1] * blurry + (1 - gammas[t - 1]) * clean
                x = sch.sqrt_ab[t - 1] * target + sch.sqrt_one_minus_ab[t - 1] * eps
            x = step.keep_known(x, t - 1, eps)
            tick(i + 1)
        return x


@dataclass
class Inpaint:
    """Regenerate only where `masks[s]` is 1 (soft edges allowed); keep `known[s]` elsewhere.

    known: the original image per scale, (1, C, h, w); masks: (1, 1, h, w) in [0, 1].
    """

    known: Sequence[torch.Tensor]
    masks: Sequence[torch.Tensor]


# A guidance loss of the clean estimate (B, C, h, w) at a scale; lower is better.
Guide = Callable[[torch.Tensor, int], torch.Tensor]


class _Step:
    """One scale's denoising step: the prediction (noise or clean image, optionally guided)
    and the inpainting constraint. Keeps the sampling loops above free of these variants."""

    def __init__(self, diffusion, net, scale, inpaint, guide, generator):
        self.d, self.net, self.scale = diffusion, net, scale
        self.inpaint, self.guide, self.generator = inpaint, guide, generator
        self.blurry = None
        self.predicts_clean = diffusion.predicts_clean(scale)
        if scale > 0:
            # Predicting noise means dividing by 1 - gamma to recover the clean image: capped as
            # published. Predicting the clean image needs no division, so the trained gammas hold.
            self.gammas = diffusion.sampling_gammas(scale)

    def predict(self, x, t: int, blurry) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise estimate, clean-image estimate) at timestep t."""
        if self.guide is None:
            return self._estimates(x, t, blurry)
        sch = self.d.schedule
        if self.predicts_clean:
            # Guide the clean estimate directly (no backward pass through the network): the
            # step size sigma_t^2 is what classifier guidance moves the clean estimate by.
            _, clean = self._estimates(x, t, blurry)
            with torch.enable_grad():
                c = clean.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.guide(c, self.scale), c)
            clean = (clean - sch.sigma[t] ** 2 * grad).clamp(-1, 1)
            return self._eps_from_clean(x, clean, t, blurry), clean
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            eps, clean = self._estimates(x_in, t, blurry, clamp=False)
            (grad,) = torch.autograd.grad(self.guide(clean, self.scale), x_in)
        # Classifier guidance: shift the noise estimate along the guidance loss's gradient.
        eps = eps.detach() + sch.sqrt_one_minus_ab[t] * grad
        return eps, self._clean_from_eps(x, eps, t, blurry)

    def _estimates(self, x, t: int, blurry, clamp: bool = True):
        b = x.shape[0]
        t_, s_ = torch.full((b,), t, device=x.device), torch.full((b,), self.scale, device=x.device)
        out = self.net(x, t_, s_).float()  # float32 even under bf16 autocast
        if not self.predicts_clean:
            return out, self._clean_from_eps(x, out, t, blurry, clamp)
        clean = out.clamp(-1, 1) if clamp else out
        return self._eps_from_clean(x, clean, t, blurry), clean

    def _eps_from_clean(self, x, clean, t: int, blurry):
        sch = self.d.schedule
        mix = clean if self.scale == 0 else self.gammas[t] * blurry + (1 - self.gammas[t]) * clean
        return (x - sch.sqrt_ab[t] * mix) / sch.sqrt_one_minus_ab[t]

    def _clean_from_eps(self, x, eps, t: int, blurry, clamp: bool = True):
        return self.d.clean_from_noise(x, eps, t, self.scale, blurry, clamp)

    def keep_known(self, x, t: int, eps) -> torch.Tensor:
        """Outside the mask, put back the known image at x's noise level (t = -1: clean)."""
        if self.inpaint is None:
            return x
        known = self.inpaint.known[self.scale].to(x.dtype)
        mask = self.inpaint.masks[self.scale].to(x.dtype)
        if t >= 0:
            sch = self.d.schedule
            if self.scale > 0:
                known = self.gammas[t] * self.blurry + (1 - self.gammas[t]) * known
            if eps is None:
                eps = torch.randn(x.shape, device=x.device, generator=self.generator)
            known = sch.sqrt_ab[t] * known + sch.sqrt_one_minus_ab[t] * eps
        return mask * x + (1 - mask) * known
