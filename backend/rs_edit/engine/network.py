"""The denoiser: one fully convolutional network for all scales, conditioned on (t, s).

The published layout (SinDDM): four blocks of [depthwise 5x5, + embedding, conv3x3-GELU-conv3x3,
residual], widths C -> w/2 -> w -> w -> w/2 -> C, no down-sampling and no attention, so the
receptive field stays about 35 px and the model learns patch statistics, not the layout.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal(x: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, device=x.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1))
    )
    angles = x.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Block(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, emb_dim: int):
        super().__init__()
        self.emb = nn.Sequential(
            nn.GELU(),
            nn.Linear(emb_dim, emb_dim),
            nn.Unflatten(1, (emb_dim, 1, 1)),
            nn.Conv2d(emb_dim, dim_in, 1),
        )
        self.depthwise = nn.Conv2d(dim_in, dim_in, 5, padding=2, groups=dim_in)
        self.body = nn.Sequential(
            nn.Conv2d(dim_in, dim_out, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(dim_out, dim_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(dim_in, dim_out, 1) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.depthwise(x) + self.emb(emb)
        return self.body(h) + self.skip(x)


class Denoiser(nn.Module):
    """Predicts the noise in x_t at timestep t and scale s."""

    def __init__(self, channels: int, width: int = 160, emb_dim: int = 32):
        super().__init__()
        half = width // 2
        self.channels, self.width, self.emb_dim = channels, width, emb_dim
        self.cond = nn.Sequential(
            nn.Linear(2 * emb_dim, 4 * emb_dim), nn.GELU(), nn.Linear(4 * emb_dim, emb_dim)
        )
        self.blocks = nn.ModuleList(
            [
                Block(channels, half, emb_dim),
                Block(half, width, emb_dim),
                Block(width, width, emb_dim),
                Block(width, half, emb_dim),
            ]
        )
        self.out = nn.Conv2d(half, channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        emb = self.cond(torch.cat([sinusoidal(t, self.emb_dim), sinusoidal(s, self.emb_dim)], -1))
        for block in self.blocks:
            x = block(x, emb)
        return self.out(x)
