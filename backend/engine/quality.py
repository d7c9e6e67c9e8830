"""Weight-free quality measures for a single-image generative model.

`patch_swd` is a multi-scale patch sliced-Wasserstein distance (as in the SWD of Karras et al. 2018
and the SinGAN/SinDDM literature): it compares the *distributions* of local patches, so two
different but equally realistic samples of one texture are close while blur or noise are far.
Raw SWD values have no natural unit, so `self_swd` calibrates them on the source itself (its own
halves) and `swd_ratio` expresses a model's samples in that unit. `diversity` catches the other
failure of single-image models: returning (shifted) copies of the training image.

No learned weights are involved, so the measures are cheap, deterministic and run anywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["diversity", "patch_swd", "self_swd", "swd_ratio"]

# Binomial 5-tap kernel: a cheap Gaussian that anti-aliases the 2x downsampling between levels.
_BINOMIAL = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _downsample(x: torch.Tensor) -> torch.Tensor:
    """Blur with the binomial kernel (separable, reflect-padded) and keep every second pixel."""
    c = x.shape[1]
    k = _BINOMIAL.to(x.device)
    x = F.pad(x, (2, 2, 2, 2), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(c, 1, 1, 5), groups=c)
    x = F.conv2d(x, k.view(1, 1, 5, 1).expand(c, 1, 5, 1), groups=c)
    return x[:, :, ::2, ::2]


def _sample_patches(x: torch.Tensor, patch: int, max_patches: int, seed: int) -> torch.Tensor:
    """Up to `max_patches` patch descriptors (M, C*patch*patch) from all images of the batch.

    Positions come from a CPU generator, so the choice is the same on every device, and the same
    for both arguments of `patch_swd` when they have equal sizes (identical inputs give exactly 0).
    """
    n, c, h, w = x.shape
    ny, nx = h - patch + 1, w - patch + 1
    total = n * ny * nx
    if total <= max_patches:
        flat = torch.arange(total)
    else:
        gen = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=gen)[:max_patches]
    flat = flat.to(x.device)
    b, rest = flat // (ny * nx), flat % (ny * nx)
    y0, x0 = rest // nx, rest % nx
    offs = torch.arange(patch, device=x.device)
    # Gather (M, patch, patch, C) with advanced indexing on a channels-last view: no full unfold.
    hwc = x.permute(0, 2, 3, 1)
    ys = (y0[:, None] + offs)[:, :, None]
    xs = (x0[:, None] + offs)[:, None, :]
    patches = hwc[b[:, None, None], ys, xs]
    return patches.reshape(len(flat), patch * patch * c)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Sort each row; on the CPU numpy's SIMD sort is several times faster than torch's."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))
    return x.sort(dim=-1).values


def _sorted_to_grid(s: torch.Tensor, m: int) -> torch.Tensor:
    """Resample sorted rows (K, n) to m quantiles (midpoint grid, linear interpolation)."""
    n = s.shape[-1]
    if n == m:
        return s
    pos = ((torch.arange(m, device=s.device, dtype=s.dtype) + 0.5) * n / m - 0.5).clamp(0, n - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo.to(s.dtype)
    return s[:, lo] * (1 - frac) + s[:, hi] * frac


@torch.no_grad()
def _level_distances(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    patch: int = 7,
    levels: int = 3,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
) -> list[float]:
    """Sliced W1 distance between the patch distributions of a and b, one value per level."""
    a = _as_batch(a)
    b = _as_batch(b).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"channel counts differ: {a.shape[1]} vs {b.shape[1]}")
    if min(a.shape[-2:] + b.shape[-2:]) < patch:
        raise ValueError(f"images must be at least {patch}x{patch} pixels")
    out = []
    for level in range(levels):
        # Level 0 always runs; a coarser one only while both images keep sides >= 2 * patch.
        if level > 0:
            if (min(a.shape[-2:] + b.shape[-2:]) + 1) // 2 < 2 * patch:
                break
            a, b = _downsample(a), _downsample(b)
        pa = _sample_patches(a, patch, max_patches, seed + 1000 * level)
        pb = _sample_patches(b, patch, max_patches, seed + 1000 * level)
        # Normalise per channel with statistics of the union: puts every level on a comparable
        # scale while keeping differences in brightness or contrast between a and b visible.
        c = a.shape[1]
        var, mean = torch.var_mean(torch.cat([pa, pb]).view(-1, c), dim=0)
        mean, std = mean.repeat(patch * patch), var.sqrt().clamp_min(1e-6).repeat(patch * patch)
        pa, pb = (pa - mean) / std, (pb - mean) / std
        # Random unit directions, drawn on the CPU so every device sees the same ones.
        gen = torch.Generator().manual_seed(seed + 1000 * level + 1)
        dirs = torch.randn(pa.shape[1], projections, generator=gen)
        dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(a.device)
        sa = _sort_rows(dirs.T @ pa.T)  # (projections, patches): one 1-D distribution per row
        sb = _sort_rows(dirs.T @ pb.T)
        # Different patch counts: compare quantile functions on the finer of the two grids.
        m = max(sa.shape[1], sb.shape[1])
        sa, sb = _sorted_to_grid(sa, m), _sorted_to_grid(sb, m)
        out.append((sa - sb).abs().mean().item())
    return out


def patch_swd(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    patch: int = 7,
    levels: int = 3,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
) -> float:
    """Multi-scale patch sliced-Wasserstein distance between images (C,H,W) or batches (N,C,H,W).

    Symmetric, deterministic for a fixed `seed`, 0 for identical inputs; sizes of a and b may
    differ, channel counts may not. Runs on a's device.
    """
    d = _level_distances(
        a, b, patch=patch, levels=levels, projections=projections,
        max_patches=max_patches, seed=seed,
    )  # fmt: skip
    return float(sum(d) / len(d))


def _halves(image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    image = _as_batch(image)
    h, w = image.shape[-2:]
    return [
        (image[..., : w // 2], image[..., w // 2 : 2 * (w // 2)]),
        (image[..., : h // 2, :], image[..., h // 2 : 2 * (h // 2), :]),
    ]


def self_swd(image: torch.Tensor, **kw) -> float:
    """SWD between the left and right, and top and bottom, halves of `image`, averaged.

    The distance to expect between two different but equally realistic samples of the texture.
    """
    return float(sum(patch_swd(x, y, **kw) for x, y in _halves(image)) / 2)


def swd_ratio(samples: torch.Tensor, source: torch.Tensor, **kw) -> float:
    """patch_swd(samples, source) / self_swd(source); <= 1.25 means "as good as its own halves".

    Halves of the source may stop the pyramid a level earlier than full-size images do; both
    sides are then averaged over the same levels so that the ratio compares like with like.
    """
    num = _level_distances(samples, source, **kw)
    ref = [_level_distances(x, y, **kw) for x, y in _halves(source)]
    n = min(len(num), *(len(r) for r in ref))
    ref_mean = sum(sum(r[:n]) / n for r in ref) / len(ref)
    return float(sum(num[:n]) / n / max(ref_mean, 1e-12))


def _shifted_l1(samples: torch.Tensor, source: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Per sample, the smallest mean |sample - source| over integer shifts, on their overlap."""
    h, w = source.shape[-2:]
    best = torch.full((samples.shape[0],), float("inf"), device=samples.device)
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            s = samples[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            r = source[..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            best = torch.minimum(best, (s - r).abs().mean(dim=(1, 2, 3)))
    return best


@torch.no_grad()
def diversity(
    samples: torch.Tensor, source: torch.Tensor, *, copy_l1: float = 0.02, max_shift: int = 4
) -> dict:
    """How far samples (N,C,H,W) are from the source (C,H,W) and from each other (mean L1).

    `copy_fraction` counts samples within `copy_l1` of the source after the best integer shift
    of up to `max_shift` pixels: a slightly shifted source is still a copy.
    """
    samples = _as_batch(samples)
    source = _as_batch(source).to(samples.device)[0]
    if samples.shape[1:] != source.shape:
        raise ValueError(
            f"samples {tuple(samples.shape)} do not match source {tuple(source.shape)}"
        )
    n = samples.shape[0]
    to_source = (samples - source).abs().mean(dim=(1, 2, 3))
    flat = samples.reshape(n, -1)
    if n > 1:
        # Mean L1 over pairs i < j; cdist with p=1 gives sums, so divide by the pixel count.
        pair = torch.cdist(flat[None], flat[None], p=1.0)[0] / flat.shape[1]
        iu = torch.triu_indices(n, n, offset=1)
        pairwise = pair[iu[0], iu[1]].mean().item()
    else:
        pairwise = 0.0
    copies = int((_shifted_l1(samples, source, max_shift) < copy_l1).sum())
    return {
        "mean_l1_to_source": to_source.mean().item(),
        "min_l1_to_source": to_source.min().item(),
        "mean_pairwise_l1": pairwise,
        "copy_fraction": copies / n,
    }
