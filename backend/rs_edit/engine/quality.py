"""Weight-free quality measures for a single-image generative model.

`patch_swd` is a multi-scale patch sliced-Wasserstein distance (after the SWD of Karras et al.
2018 and the SinGAN/SinDDM literature): it compares the *distributions* of local patches, so two
different but equally realistic samples of one texture are close while blur or noise are far.
The scales are the levels of a Laplacian pyramid (the detail each octave adds, then the low-pass
rest), plus the distribution of pixel colours. Comparing detail bands rather than blurred copies
matters: in a plain Gaussian pyramid every patch is dominated by its mean, and colour noise or a
lost octave of detail hardly moves the distance (measured: iid noise scored 0.37x the source's own
halves that way).

Raw distances have no natural unit, so `swd_levels` expresses each level in the unit of the
source's own half-to-half distance at that level, and `swd_ratio` sums them up as a quadratic
mean. `python -m bench.quality_cases` on 128 px crops of real tiles: flips and rolls of the
source 0.35-0.57; on the forest tile, the source with pixel noise of std 0.1, blurred with sigma
1.5 px, at 70 % contrast, or iid noise of its colours 2.1, 2.7, 1.7 and 3.9.
`diversity` catches the other failure of single-image models: returning (shifted) copies.

No learned weights are involved, so the measures are cheap, deterministic and run anywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "combine_levels",
    "diversity",
    "largest_copy",
    "level_names",
    "patch_swd",
    "roi_swd_levels",
    "roi_swd_unit",
    "seam_ratio",
    "self_swd",
    "swd_levels",
    "swd_ratio",
]

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


def _laplacian(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """`levels - 1` detail bands (finest first), then the low-pass rest."""
    out = []
    for _ in range(levels - 1):
        low = _downsample(x)
        out.append(x - F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))
        x = low
    out.append(x)
    return out


def _max_levels(patch: int, *images: torch.Tensor) -> int:
    """Pyramid levels all images support: level k runs while every side at k-1 is >= 2 * patch."""
    side = min(min(x.shape[-2:]) for x in images)
    if side < patch:
        raise ValueError(f"images must be at least {patch}x{patch} pixels")
    levels = 1
    while side >= 2 * patch:
        side = (side + 1) // 2
        levels += 1
    return levels


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


def _w1_rows(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean 1-D Wasserstein-1 distance between the rows of a (K, n) and b (K, m)."""
    sa, sb = _sort_rows(a), _sort_rows(b)
    # Different counts: compare quantile functions on the finer of the two grids.
    m = max(sa.shape[1], sb.shape[1])
    return (_sorted_to_grid(sa, m) - _sorted_to_grid(sb, m)).abs().mean().item()


def _band_distance(
    a: torch.Tensor, b: torch.Tensor, patch: int, projections: int, max_patches: int, seed: int
) -> float:
    """Sliced W1 distance between the patch distributions of two bands."""
    pa = _sample_patches(a, patch, max_patches, seed)
    pb = _sample_patches(b, patch, max_patches, seed)
    return _sliced_w1(pa, pb, a.shape[1], patch, projections, seed)


def _sliced_w1(pa, pb, channels: int, patch: int, projections: int, seed: int) -> float:
    """Sliced W1 between two sets of patch descriptors (M, channels * patch * patch)."""
    # Normalise per channel with statistics of the union: puts channels on a comparable scale
    # while keeping differences in energy between a and b (noise, lost detail) visible.
    var, mean = torch.var_mean(torch.cat([pa, pb]).view(-1, channels), dim=0)
    mean, std = mean.repeat(patch * patch), var.sqrt().clamp_min(1e-6).repeat(patch * patch)
    pa, pb = (pa - mean) / std, (pb - mean) / std
    # Random unit directions, drawn on the CPU so every device sees the same ones.
    gen = torch.Generator().manual_seed(seed + 1)
    dirs = torch.randn(pa.shape[1], projections, generator=gen)
    dirs = (dirs / dirs.norm(dim=0, keepdim=True)).to(pa.device)
    return _w1_rows(dirs.T @ pa.T, dirs.T @ pb.T)


def _colour_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """W1 between the per-channel distributions of pixel values, averaged over channels."""
    c = a.shape[1]
    return _w1_rows(a.transpose(0, 1).reshape(c, -1), b.transpose(0, 1).reshape(c, -1))


def level_names(levels: int) -> list[str]:
    """Names of the values `_level_distances` returns for a pyramid of `levels` levels."""
    return ["colour", *(f"detail {1 << k}px" for k in range(levels - 1)), "low-pass"]


@torch.no_grad()
def _level_distances(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    patch: int = 7,
    levels: int = 4,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
) -> list[float]:
    """Colour distance, then the patch distance at each pyramid level (fewer for small images)."""
    a = _as_batch(a)
    b = _as_batch(b).to(a.device)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"channel counts differ: {a.shape[1]} vs {b.shape[1]}")
    levels = min(levels, _max_levels(patch, a, b))
    # float32 even inside a caller's autocast region (bf16 projections would blur the sorts).
    with torch.autocast(a.device.type, enabled=False):
        out = [_colour_distance(a, b)]
        bands = zip(_laplacian(a, levels), _laplacian(b, levels), strict=True)
        for k, (band_a, band_b) in enumerate(bands):
            out.append(
                _band_distance(band_a, band_b, patch, projections, max_patches, seed + 1000 * k)
            )
    return out


def patch_swd(a: torch.Tensor, b: torch.Tensor, **kw) -> float:
    """Multi-scale patch sliced-Wasserstein distance between images (C,H,W) or batches (N,C,H,W).

    The mean of the colour distance and the per-level patch distances. Symmetric, deterministic
    for a fixed `seed`, 0 for identical inputs; sizes of a and b may differ, channel counts may
    not. Runs on a's device. Keyword arguments: patch, levels, projections, max_patches, seed.
    """
    d = _level_distances(a, b, **kw)
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


def swd_levels(samples: torch.Tensor, source: torch.Tensor, **kw) -> list[float]:
    """Per level (see `level_names`), distance(samples, source) / distance(source's halves).

    Both sides run the same levels: as many as the source's halves and the samples support.
    """
    patch = kw.get("patch", 7)
    halves = _halves(source)
    kw["levels"] = min(kw.get("levels", 4), _max_levels(patch, _as_batch(samples), *halves[0]))
    num = _level_distances(samples, source, **kw)
    ref = [_level_distances(x, y, **kw) for x, y in halves]
    return [n / max((r0 + r1) / 2, 1e-12) for n, r0, r1 in zip(num, *ref, strict=True)]


def swd_ratio(samples: torch.Tensor, source: torch.Tensor, **kw) -> float:
    """The quadratic mean of `swd_levels`; <= 1.25 means "as good as the source's own halves".

    Quadratic, so that one level far off (lost fine detail, pixel noise, a colour cast) fails
    samples that a plain mean would pass, while the chance variation of one level between two
    realisations of the same texture (seen on the synthetic textures of the tests) does not.
    """
    return combine_levels(swd_levels(samples, source, **kw))


def combine_levels(levels: list[float]) -> float:
    """The quadratic mean that `swd_ratio` reports, from `swd_levels` already computed."""
    return float((sum(r * r for r in levels) / len(levels)) ** 0.5)


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


# --- realism of an edited region ------------------------------------------------------------


def _positions(region: torch.Tensor, patch: int) -> torch.Tensor:
    """Flat top-left positions of the patches lying wholly in `region` ((1, 1, H, W) bool)."""
    inside = -F.max_pool2d(-region.float(), patch, stride=1)  # min pool: all pixels in region
    return torch.nonzero(inside.flatten() > 0.5).flatten()


def _patches_at(x: torch.Tensor, flat: torch.Tensor, patch: int) -> torch.Tensor:
    """Patch descriptors (M, C*patch*patch) of a (1, C, H, W) image at flat positions."""
    w = x.shape[-1] - patch + 1
    y0, x0 = flat // w, flat % w
    offs = torch.arange(patch)
    hwc = x[0].permute(1, 2, 0)
    patches = hwc[(y0[:, None] + offs)[:, :, None], (x0[:, None] + offs)[:, None, :]]
    return patches.reshape(len(flat), -1)


def _subsample(flat: torch.Tensor, max_patches: int, seed: int) -> torch.Tensor:
    if len(flat) <= max_patches:
        return flat
    gen = torch.Generator().manual_seed(seed)
    return flat[torch.randperm(len(flat), generator=gen)[:max_patches]]


def _region_levels(
    a, b, region, levels, patch, projections, max_patches, seed, valid=None
) -> list[float]:
    """Colour and per-level distances between the patches of `a` wholly inside `region` and
    the patches of `b` wholly outside it, and wholly in `valid` when given (NaN at a level
    where either side has too few)."""
    rest = ~region if valid is None else ~region & valid
    inside, outside = region[0, 0], rest[0, 0]
    out = [_w1_rows(a[0][:, inside], b[0][:, outside])]
    bands = zip(_laplacian(a, levels), _laplacian(b, levels), strict=True)
    for k, (band_a, band_b) in enumerate(bands):
        frac = F.adaptive_avg_pool2d(region.float(), band_a.shape[-2:])
        pos_in = _positions(frac > 0.999, patch)
        pos_out = _positions(F.adaptive_avg_pool2d(rest.float(), band_a.shape[-2:]) > 0.999, patch)
        if len(pos_in) < 16 or len(pos_out) < 16:
            out.append(float("nan"))
            continue
        pa = _patches_at(band_a, _subsample(pos_in, max_patches, seed + k), patch)
        pb = _patches_at(band_b, _subsample(pos_out, max_patches, seed + 7 * k + 1), patch)
        out.append(_sliced_w1(pa, pb, a.shape[1], patch, projections, seed + 1000 * k))
    return out


def _shifted_regions(region: torch.Tensor, grid: int = 3) -> list[torch.Tensor]:
    """The region moved to a grid x grid spread of places where its bounding box fits."""
    rows = torch.nonzero(region[0, 0].any(1)).flatten()
    cols = torch.nonzero(region[0, 0].any(0)).flatten()
    h, w = region.shape[-2:]
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    box = region[..., r0:r1, c0:c1]
    out = []
    for i in range(grid):
        for j in range(grid):
            y = round(i * (h - (r1 - r0)) / max(grid - 1, 1))
            x = round(j * (w - (c1 - c0)) / max(grid - 1, 1))
            moved = torch.zeros_like(region)
            moved[..., y : y + r1 - r0, x : x + c1 - c0] = box
            out.append(moved)
    return out


@torch.no_grad()
def roi_swd_levels(
    edited: torch.Tensor,
    source: torch.Tensor,
    roi: torch.Tensor,
    *,
    patch: int = 7,
    levels: int = 4,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
    unit: list[float] | None = None,
) -> list[float]:
    """How far the ROI of `edited` is from the rest of `source`, per level (see `level_names`),
    in the unit of the source's own regions of the ROI's shape.

    `edited`, `source`: (C, H, W) on the CPU; `roi`: (H, W) bool. At each Laplacian level the
    patches lying wholly inside the ROI (of the edit) are compared with those lying wholly
    outside it (of the source); the colour level compares pixels. The unit is the same distance
    for the source itself, averaged over the ROI's shape moved to 9 places of the tile: 1 means
    "as different from its surroundings as a region of this shape in the tile typically is".
    (A half-to-half unit, as `swd_levels` uses, is too small here: a compact region has fewer,
    more alike patches than a half, and the unedited input scored up to 4.5 in it.) Blur,
    noise, flat colour or a colour cast inside the ROI raise it.
    """
    a, b = _as_batch(edited).cpu(), _as_batch(source).cpu()
    region = torch.as_tensor(roi, dtype=torch.bool).cpu()[None, None]
    if not region.any():
        raise ValueError("the ROI is empty")
    kw = {"patch": patch, "levels": levels, "projections": projections, "max_patches": max_patches}
    if unit is None:  # `roi_swd_unit`: pass it in when scoring several edits of one tile
        unit = roi_swd_unit(b, region[0, 0], seed=seed, **kw)
    args = (min(levels, _max_levels(patch, b)), patch, projections, max_patches, seed)
    num = _region_levels(a, b, region, *args)
    return [n / max(u, 1e-12) for n, u in zip(num, unit, strict=True)]


@torch.no_grad()
def roi_swd_levels_to(
    edited: torch.Tensor,
    roi: torch.Tensor,
    references: list[tuple[torch.Tensor, torch.Tensor | None, float]],
    *,
    patch: int = 7,
    levels: int = 4,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
    unit: list[float] | None = None,
) -> list[float]:
    """As `roi_swd_levels`, but from the ROI of `edited` to a mixture of other images: each
    reference is (image (C, h, w), the pixels its patches may lie in ((h, w) bool; None: all),
    its share of the mixture). Divided by `unit` when given (e.g. the tile's `roi_swd_unit`,
    to read on the same scale). NaN at a level where there are too few patches."""
    a = _as_batch(edited).cpu()
    region = torch.as_tensor(roi, dtype=torch.bool).cpu()[None, None]
    refs = []
    for image, valid, share in references:
        b = _as_batch(image).cpu()
        valid = torch.ones(b.shape[-2:], dtype=torch.bool) if valid is None else valid
        refs.append((b, torch.as_tensor(valid, dtype=torch.bool).cpu()[None, None], share))
    refs = [r for r in refs if r[2] > 0 and r[1].any()]
    if not region.any() or not refs:
        raise ValueError("the ROI or the references are empty")
    total = sum(share for _, _, share in refs)
    n = min(levels, _max_levels(patch, a, *(b for b, _, _ in refs)))

    def mixture(pick) -> torch.Tensor:  # rows from each reference in proportion to its share
        return torch.cat([pick(b, v, max(1, round(max_patches * s / total))) for b, v, s in refs])

    colours = mixture(lambda b, v, m: _subsample_rows(b[0][:, v[0, 0]].T, m, seed))
    out = [_w1_rows(a[0][:, region[0, 0]], colours.T)]
    pyramids = [_laplacian(b, n) for b, _, _ in refs]
    for k, band_a in enumerate(_laplacian(a, n)):
        pos_a = _positions(F.adaptive_avg_pool2d(region.float(), band_a.shape[-2:]) > 0.999, patch)
        parts = []
        for (_, v, s), pyramid in zip(refs, pyramids, strict=True):
            band_b = pyramid[k]
            pos_b = _positions(F.adaptive_avg_pool2d(v.float(), band_b.shape[-2:]) > 0.999, patch)
            if len(pos_b):
                m = max(1, round(max_patches * s / total))
                parts.append(_patches_at(band_b, _subsample(pos_b, m, seed + 7 * k + 1), patch))
        pb = torch.cat(parts) if parts else torch.empty(0)
        if len(pos_a) < 16 or len(pb) < 16:
            out.append(float("nan"))
            continue
        pa = _patches_at(band_a, _subsample(pos_a, max_patches, seed + k), patch)
        out.append(_sliced_w1(pa, pb, a.shape[1], patch, projections, seed + 1000 * k))
    out += [float("nan")] * (levels + 1 - len(out))
    if unit is not None:
        out = [d / max(u, 1e-12) for d, u in zip(out, unit, strict=False)]
    return out


def _subsample_rows(rows: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    return rows[_subsample(torch.arange(len(rows)), m, seed)]


@torch.no_grad()
def roi_swd_unit(
    source: torch.Tensor,
    roi: torch.Tensor,
    *,
    patch: int = 7,
    levels: int = 4,
    projections: int = 128,
    max_patches: int = 4096,
    seed: int = 0,
    valid: torch.Tensor | None = None,
) -> list[float]:
    """The unit of `roi_swd_levels`: per level, the distance between the source's own regions
    of the ROI's shape (moved to 9 places) and the rest of the source, averaged.

    `roi` need not have the source's size: its shape (its bounding box's content) is what is
    moved. `valid` ((H, W) bool, optional): the source's usable pixels (an example's polygon);
    places where the shape would cover any other pixel are skipped, and the rest is taken
    from the valid pixels only. ValueError when the shape fits nowhere."""
    b = _as_batch(source).cpu()
    region = torch.as_tensor(roi, dtype=torch.bool).cpu()
    if not region.any():
        raise ValueError("the ROI is empty")
    rows = torch.nonzero(region.any(1)).flatten()
    cols = torch.nonzero(region.any(0)).flatten()
    shape = region[int(rows[0]) : int(rows[-1]) + 1, int(cols[0]) : int(cols[-1]) + 1]
    h, w = b.shape[-2:]
    if shape.shape[0] > h or shape.shape[1] > w:
        raise ValueError("the ROI's shape is larger than the source")
    placed = torch.zeros((1, 1, h, w), dtype=torch.bool)
    placed[0, 0, : shape.shape[0], : shape.shape[1]] = shape
    usable = None if valid is None else torch.as_tensor(valid, dtype=torch.bool).cpu()[None, None]
    moved = _shifted_regions(placed)
    if usable is not None:  # a finer spread of places when the coarse one finds too few
        moved = [m for m in moved if not (m & ~usable).any()]
        if len(moved) < 3:
            moved = [m for m in _shifted_regions(placed, 5) if not (m & ~usable).any()]
        if not moved:
            raise ValueError("the ROI's shape fits nowhere in the source's valid pixels")
    args = (min(levels, _max_levels(patch, b)), patch, projections, max_patches, seed)
    refs = [_region_levels(b, b, m, *args, valid=usable) for m in moved]
    return torch.tensor(refs).nanmean(0).tolist()


def _gradient_energy(x: torch.Tensor) -> torch.Tensor:
    """Per pixel squared gradient (forward differences, summed over channels), (H, W)."""
    x = _as_batch(x)[0]
    gy = torch.zeros_like(x)
    gx = torch.zeros_like(x)
    gy[:, :-1] = x[:, 1:] - x[:, :-1]
    gx[:, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return (gx * gx + gy * gy).sum(0)


def seam_band(roi: torch.Tensor, width: int) -> torch.Tensor:
    """(H, W) bool: pixels within `width` px of the ROI's boundary, on either side."""
    m = torch.as_tensor(roi, dtype=torch.float32)[None, None]
    k = 2 * width + 1
    grown = F.max_pool2d(m, k, stride=1, padding=width)
    shrunk = -F.max_pool2d(-m, k, stride=1, padding=width)
    return ((grown > 0.5) & (shrunk < 0.5))[0, 0]


@torch.no_grad()
def seam_ratio(
    edited: torch.Tensor, source: torch.Tensor, roi: torch.Tensor, *, width: int = 3
) -> float:
    """Gradient energy in a band along the ROI's boundary, edit / input.

    About 1: the boundary is as busy as the input's there. Well above 1: a visible edge (a
    seam); well below 1: a blurred band. Pixels at the image border are not part of the band.
    """
    band = seam_band(roi, width)
    band[0], band[-1], band[:, 0], band[:, -1] = False, False, False, False
    if not band.any():
        return float("nan")
    e_edit = _gradient_energy(edited.float())[band].mean()
    e_src = _gradient_energy(source.float())[band].mean()
    return float(e_edit / e_src.clamp_min(1e-12))


def _window_hashes(values: np.ndarray, block: int) -> np.ndarray:
    """Polynomial hash (uint64, wrapping) of every block x block window of (H, W) uint64."""
    r_row, r_col = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)
    h, w = values.shape
    rows = np.zeros((h, w - block + 1), dtype=np.uint64)
    power = np.uint64(1)
    with np.errstate(over="ignore"):
        for c in range(block):
            rows += values[:, c : c + w - block + 1] * power
            power = power * r_col
        out = np.zeros((h - block + 1, w - block + 1), dtype=np.uint64)
        power = np.uint64(1)
        for r in range(block):
            out += rows[r : r + h - block + 1] * power
            power = power * r_row
    return out


def _pixel_codes(image: np.ndarray) -> np.ndarray:
    """One well-mixed uint64 per pixel of (C, H, W) data: equal pixels get equal codes."""
    codes = np.zeros(image.shape[1:], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for band in image:
            v = np.ascontiguousarray(band).astype(np.float64).view(np.uint64)
            codes = _mix(codes ^ v)
    return codes


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: spreads every input bit over all 64 (integers stored as
    float64 have all-zero low bits, which a polynomial hash mod 2**64 would lose)."""
    z = (z + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _has_copy(edit_codes, src_codes, roi: np.ndarray, block: int) -> bool:
    h_edit = _window_hashes(edit_codes, block)
    h_src = _window_hashes(src_codes, block)
    # A window lies wholly in the ROI when its count of ROI pixels is block * block.
    counts = np.lib.stride_tricks.sliding_window_view(roi, (block, block)).sum(axis=(2, 3))
    inside = counts == block * block
    if not inside.any():
        return False
    ys, xs = np.nonzero(inside)
    wanted = h_edit[ys, xs]
    order = np.argsort(h_src, axis=None)
    flat_src = h_src.ravel()[order]
    hit = np.searchsorted(flat_src, wanted)
    hit = np.clip(hit, 0, len(flat_src) - 1)
    found = flat_src[hit] == wanted
    for i in np.nonzero(found)[0]:
        # Every source window with this hash; a match at the window's own place is an
        # unchanged block, not a copy from elsewhere.
        lo = hit[i]
        while lo < len(flat_src) and flat_src[lo] == wanted[i]:
            sy, sx = np.unravel_index(order[lo], h_src.shape)
            if (sy, sx) != (ys[i], xs[i]):
                return True
            lo += 1
    return False


def largest_copy(edited: np.ndarray, source: np.ndarray, roi: np.ndarray) -> int:
    """Side of the largest square block inside the ROI of `edited` (C, H, W, raster values)
    that appears verbatim somewhere else in `source` (0: none, not even one pixel)."""
    roi = np.asarray(roi, dtype=bool)
    edit_codes, src_codes = _pixel_codes(edited), _pixel_codes(source)
    lo, hi = 0, int(min(roi.shape))
    while lo < hi:  # the largest block with a copy; having one is monotone in the size
        mid = (lo + hi + 1) // 2
        if _has_copy(edit_codes, src_codes, roi, mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
