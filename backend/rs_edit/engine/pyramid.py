"""The image pyramid: Lanczos downscales by about 1.41 per scale, coarsest side about 42-55 px.

Scale 0 is the coarsest. `blurry[s]` is scale s-1 upsampled (bilinear) to scale s's size: the
"blurry" input the model learns to sharpen at scale s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class PyramidSpec:
    """Sizes (h, w) from coarsest to finest and the nominal factor between scales."""

    sizes: tuple[tuple[int, int], ...]
    factor: float

    @property
    def n_scales(self) -> int:
        return len(self.sizes)


def pyramid_spec(
    height: int,
    width: int,
    *,
    factor: float = 1.41,
    min_side: int = 42,
    max_scales: int | None = None,
) -> PyramidSpec:
    """As many scales as keep the coarsest short side >= `min_side` (223x223 -> 5 scales)."""
    short = min(height, width)
    n = 1 if short <= min_side else int(math.floor(math.log(short / min_side, factor))) + 1
    if max_scales:
        n = min(n, max_scales)
    sizes = [
        (max(1, round(height / factor**k)), max(1, round(width / factor**k)))
        for k in reversed(range(n))
    ]
    return PyramidSpec(sizes=tuple(sizes), factor=factor)


def lanczos_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (C, H, W) float32 to (C, h, w) with Lanczos, band by band (any band count)."""
    h, w = size
    bands = [
        np.asarray(
            Image.fromarray(band.astype(np.float32), mode="F").resize(
                (w, h), Image.Resampling.LANCZOS
            )
        )
        for band in image
    ]
    return np.stack(bands).astype(np.float32)


def build_pyramid(image: np.ndarray, spec: PyramidSpec) -> list[torch.Tensor]:
    """Clean images per scale, (1, C, h, w) float32, coarsest first; the finest is the input."""
    levels = [lanczos_resize(image, size) for size in spec.sizes[:-1]] + [image.astype(np.float32)]
    return [torch.from_numpy(np.ascontiguousarray(level))[None] for level in levels]


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def blurry_inputs(pyramid: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """For each scale s > 0, scale s-1 upsampled to scale s (None at scale 0)."""
    return [None] + [
        upsample(pyramid[s - 1], pyramid[s].shape[-2:]) for s in range(1, len(pyramid))
    ]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding (sigma in pixels)."""
    r = max(1, int(3 * sigma + 0.5))
    r = min(r, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect padding needs r < side
    k = torch.exp(-(torch.arange(-r, r + 1.0, device=x.device) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
