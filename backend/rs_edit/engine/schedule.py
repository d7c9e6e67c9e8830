"""The noise schedule: cosine betas over T steps, and the closed-form q(x_t | x_0).

Self-contained (no model, no scales): the multi-scale mixing lives in diffusion.py.
"""

from __future__ import annotations

import math

import torch


def cosine_betas(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, in float64 for exact cumulative products."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64)
    f = torch.cos(((steps / timesteps) + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(0, 0.999)


class NoiseSchedule:
    """Per-timestep constants, kept in float32 on the model's device."""

    def __init__(self, timesteps: int, device: torch.device | str = "cpu"):
        betas = cosine_betas(timesteps)
        ab = torch.cumprod(1 - betas, dim=0)
        self.timesteps = timesteps
        self.alphas_cumprod = ab.float().to(device)
        self.sqrt_ab = ab.sqrt().float().to(device)
        self.sqrt_one_minus_ab = (1 - ab).sqrt().float().to(device)
        # Noise-to-signal ratio sigma_t = sqrt(1 - ab) / sqrt(ab): the blur gap is matched to it.
        self.sigma = ((1 - ab) / ab).sqrt().float().to(device)

    def to(self, device) -> NoiseSchedule:
        for name in ("alphas_cumprod", "sqrt_ab", "sqrt_one_minus_ab", "sigma"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) noise, with t of shape (B,)."""
        return _at(self.sqrt_ab, t) * x0 + _at(self.sqrt_one_minus_ab, t) * noise


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return values[t].view(-1, 1, 1, 1)
