"""Differentiable augmented views of an image (or of an ROI in its context) for CLIP guidance.

CLIP judged on one fixed view is easy to fool with adversarial pixel patterns; judged on many
randomly cropped, flipped, rotated, warped and colour-jittered views, the image itself has to
change. Every view is one `grid_sample` through a per-view homography (crop + dihedral flip +
rotation/shear + mild perspective), so gradients reach the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # row0, col0, row1, col1 (exclusive), pixels


@dataclass(frozen=True)
class ViewConfig:
    """How strong the augmentations are (defaults follow the paper: crops of 60-100 % a side)."""

    min_cover: float = 0.6  # crop side as a fraction of the region's side: [min_cover, 1]
    context: float = 0.25  # the ROI box grows by this fraction of its longer side on every side
    flips: bool = True  # horizontal, vertical and transposed (remote sensing has no "up")
    rotate_deg: float = 10.0
    shear_deg: float = 5.0
    perspective: float = 0.08  # homography's last-row terms, in units of the view's half side
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    max_size: int = 224  # default view side when `size` is not given
    min_size: int = 32


DEFAULT_VIEWS = ViewConfig()
_N_RANDOM = 14  # uniform numbers drawn per view


def view_region(shape: tuple[int, int], box: Box | None, context: float) -> tuple[float, ...]:
    """The square-ish region (top, left, bottom, right) views are cropped from, in pixel edges:
    the box grown by `context` and squared (CLIP sees squares), shifted to stay in the image."""
    height, width = shape
    if box is None:
        return 0.0, 0.0, float(height), float(width)
    r0, c0, r1, c1 = (int(v) for v in box)
    r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
    if r1 <= r0 or c1 <= c0:
        raise ValueError(f"box {box} is empty or outside the {height}x{width} image")
    side = max(r1 - r0, c1 - c0) * (1 + 2 * context)

    def span(lo: int, hi: int, limit: int) -> tuple[float, float]:
        length = min(max(side, hi - lo), limit)
        start = (lo + hi) / 2 - length / 2
        start = min(max(start, 0.0), limit - length)
        return start, start + length

    top, bottom = span(r0, r1, height)
    left, right = span(c0, c1, width)
    return top, left, bottom, right


def _matrices(u: torch.Tensor, region, cfg: ViewConfig) -> torch.Tensor:
    """(n, 3, 3) maps from view coordinates in [-1, 1] to pixel edges (x = column, y = row)."""
    n = u.shape[0]
    top, left, bottom, right = region
    rh, rw = bottom - top, right - left
    cover = cfg.min_cover + (1 - cfg.min_cover) * u[:, 0:2]
    cw, ch = rw * cover[:, 0], rh * cover[:, 1]  # crop size in pixels
    cx = left + cw / 2 + (rw - cw) * u[:, 2]
    cy = top + ch / 2 + (rh - ch) * u[:, 3]

    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    # Perspective: x' = x / (1 + px x + py y), small enough to keep the denominator near 1.
    px, py = (2 * u[:, 4:6] - 1).unbind(1)
    k = cfg.perspective
    persp = torch.stack([one, zero, zero, zero, one, zero, k * px, k * py, one], 1).view(n, 3, 3)
    # Dihedral group: optional transpose, then flips of either axis.
    flip = torch.ones(n, 2, dtype=u.dtype, device=u.device)
    swap = torch.zeros(n, dtype=torch.bool, device=u.device)
    if cfg.flips:
        flip = torch.where(u[:, 6:8] < 0.5, -1.0, 1.0).to(u)
        swap = u[:, 8] < 0.5
    a = torch.where(swap, zero, one)
    dihedral = torch.stack(
        [a * flip[:, 0], (1 - a) * flip[:, 0], zero, (1 - a) * flip[:, 1], a * flip[:, 1], zero,
         zero, zero, one], 1,
    ).view(n, 3, 3)  # fmt: skip
    scale = torch.stack([cw / 2, zero, zero, zero, ch / 2, zero, zero, zero, one], 1).view(n, 3, 3)
    # Rotation and shear in pixel space (after scaling, so they stay true angles).
    theta = math.radians(cfg.rotate_deg) * (2 * u[:, 9] - 1)
    shear = math.tan(math.radians(cfg.shear_deg)) * (2 * u[:, 10] - 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.stack(
        [cos, cos * shear - sin, cx, sin, sin * shear + cos, cy, zero, zero, one], 1
    ).view(n, 3, 3)
    return rot @ scale @ dihedral @ persp


def _jitter(views: torch.Tensor, u: torch.Tensor, cfg: ViewConfig) -> torch.Tensor:
    """Brightness, contrast and saturation, each a random factor near 1 (differentiable)."""
    n = views.shape[0]

    def factor(col: int, strength: float) -> torch.Tensor:
        return (1 + strength * (2 * u[:, col] - 1)).view(n, 1, 1, 1)

    gray_w = torch.tensor([0.299, 0.587, 0.114]).to(views).view(1, 3, 1, 1)
    x = views * factor(11, cfg.brightness)
    mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - mean) * factor(12, cfg.contrast) + mean
    gray = (x * gray_w).sum(1, keepdim=True)
    x = (x - gray) * factor(13, cfg.saturation) + gray
    return x.clamp(0, 1)


def clip_views(
    image: torch.Tensor,
    n: int,
    *,
    box: Box | None = None,
    generator: torch.Generator | None = None,
    size: int | None = None,
    config: ViewConfig = DEFAULT_VIEWS,
) -> torch.Tensor:
    """`n` augmented views (n, 3, size, size) of a (1, 3, H, W) RGB image in [0, 1].

    With `box` the views show the ROI's box and some context around it; otherwise the whole
    image. All randomness comes from `generator` (reproducible); differentiable in `image`.
    `size` defaults to the region's side, clamped to [min_size, max_size]: pass the CLIP's
    `image_size` to skip a second resize.
    """
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(image.shape)}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    height, width = image.shape[-2:]
    region = view_region((height, width), box, config.context)
    top, left, bottom, right = region
    side = max(bottom - top, right - left)
    if size is None:
        size = int(min(max(round(side), config.min_size), config.max_size))

    # Sample only around the region, pre-shrunk (antialiased) when it is much larger than the
    # view: bilinear grid sampling alone would alias.
    margin = 0.3 * side
    r0, c0 = max(int(top - margin), 0), max(int(left - margin), 0)
    r1, c1 = min(math.ceil(bottom + margin), height), min(math.ceil(right + margin), width)
    src = image[..., r0:r1, c0:c1]
    shrink = min(1.0, 1.25 * size / side)
    if shrink < 0.75:
        out = (max(round((r1 - r0) * shrink), 1), max(round((c1 - c0) * shrink), 1))
        src = F.interpolate(src, size=out, mode="bilinear", align_corners=False, antialias=True)
    sh, sw = src.shape[-2:]
    to_src = torch.tensor(
        [[sw / (c1 - c0), 0, -c0 * sw / (c1 - c0)], [0, sh / (r1 - r0), -r0 * sh / (r1 - r0)],
         [0, 0, 1]], dtype=torch.float64,
    )  # fmt: skip
    to_norm = torch.tensor([[2 / sw, 0, -1], [0, 2 / sh, -1], [0, 0, 1]], dtype=torch.float64)

    rng_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, _N_RANDOM, generator=generator, device=rng_device, dtype=torch.float64)
    u = u.cpu()
    mats = (to_norm @ to_src) @ _matrices(u, region, config)  # (n, 3, 3), float64 on CPU

    ticks = (torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1  # pixel centres
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    base = torch.stack([gx, gy, torch.ones_like(gx)], -1).view(-1, 3)  # (size*size, 3)
    pts = base @ mats.transpose(1, 2)  # (n, size*size, 3)
    grid = (pts[..., :2] / pts[..., 2:]).view(n, size, size, 2).to(image)

    views = F.grid_sample(
        src.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
        align_corners=False,
    )  # fmt: skip
    return _jitter(views, u.to(image), config)
