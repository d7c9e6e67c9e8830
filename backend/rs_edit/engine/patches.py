"""Fine scales from the tile's own patches: nearest-neighbour completion, coarse to fine.

A diffusion model is cheap to train and to guide at a coarse scale (about 64 px), where it sets
the layout and colour of the ROI; it is expensive, and blurry on a short budget, at the fine
scales. There, this module assembles the ROI from real patches of the tile instead (GPNN, Granot
et al. 2022; image completion, Wexler et al. 2007):

- at each scale from the coarse result up to the full size, the current guess is upsampled;
- every patch of the guess that touches the ROI is replaced by its nearest patch among the
  tile's patches outside the ROI, and overlapping patches are averaged ("voting");
- in the first pass at a scale the guess is blurry (upsampled), so it is matched against the
  source's equally blurry patches while the sharp patches at the same places are pasted (this is
  what makes the result sharp); later passes match sharp against sharp;
- pixels outside the ROI are the tile's own at every step, so patches that straddle the ROI's
  edge are matched to what surrounds it: the seam is made of patches that fit on both sides.

The same projection at the coarse scale is the realism guard: whatever the guidance did to the
coarse layout, each output patch at every scale is one the tile contains (or an average of a few).
Nearest neighbours are found by chunked matrix products (no index structure: exact and fast
enough on a CPU for the window sizes an edit uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from ..progress import ProgressCallback, Stage, no_progress

STAGE = Stage.DETAIL  # progress stage of the patch refinement


@dataclass(frozen=True)
class PatchSettings:
    patch: int = 7  # patch side (odd)
    factor: float = 4 / 3  # size ratio between successive scales
    # Nearest-neighbour passes per scale. One: a second pass matches sharp queries whose fine
    # detail is an incoherent mosaic, and plain L2 then prefers smooth source patches (seen on
    # the ROIs of bench.realism as a further loss of 1 px detail with every pass).
    passes: int = 1
    coarse_passes: int = 2  # passes at the coarse scale itself (the realism guard); 0: none
    # Noise (std, model range) added to the coarse guess before its first pass: breaks up the
    # smooth layouts that a briefly trained model makes into structure the tile has (GPNN).
    coarse_noise: float = 0.15
    # Spatial weight of a pasted patch's pixels in the vote: a Gaussian of this std (px) around
    # the patch centre (0: the plain mean of overlapping patches, which blurs where neighbouring
    # patches come from different places; small: each pixel mostly from its own patch's centre).
    vote_sigma: float = 0.25
    # GPNN's completeness weight: distances are divided by (completeness + the key's smallest
    # distance to any query), so a source patch that many queries prefer costs more and the
    # ROI draws on the tile's whole variety instead of collapsing onto its commonest (mean)
    # patches. 0: plain nearest neighbours.
    completeness: float = 0.05
    # How many scales, coarsest first, use it; finer scales follow the layout with plain
    # nearest neighbours (with it there, rare patches such as roofs or deep shadows were
    # scattered through the ROI).
    completeness_scales: int = 1
    # The first pass at a scale matches an upsampled guess whose detail is a mosaic of pixels
    # from many places: blurred, it is smoother than the tile's own blurry patches, so plain L2
    # picks smooth sources and each scale loses more detail. The query, and only the query,
    # is sharpened by this gain (x + gain * (x - blur(x))) before that match; what is pasted
    # is still the tile's own pixels. 0: off. tests/backend/test_patches.py measures it on a
    # real canopy; docs/BENCHMARKS.md says how 1.5 was chosen. Colour levels rise a little
    # (textured sources are more contrasted).
    query_sharpen: float = 1.5
    # Coherence (Ashikhmin 2001; Hertzmann et al. 2001, "kappa"): a patch may continue its
    # neighbours' source (the patch next to theirs in the tile) instead of its own nearest
    # neighbour when that costs at most 1 + coherence times as much. Neighbouring pixels then
    # come from one place: a boat's deck holds together instead of turning to speckle (whether
    # the boat is whole is the coarse layout's doing). 0: plain nearest neighbours. Only at
    # the scales without completeness; the two pull apart: at the coarse scale, where
    # completeness keeps rare content in, coherence emptied bench.realism's overpass ROI of
    # its cars. On its drafts 3 chose what 1 did.
    coherence: float = 1.0
    coherence_rounds: int = 4  # propagation rounds (a coherent run grows ~1 px per round)
    max_keys: int = 24_000  # source patches searched per scale (a regular subsample beyond)
    chunk: int = 256  # queries per distance block (small blocks stay in the CPU's cache)


def scale_sizes(
    coarse: tuple[int, int], fine: tuple[int, int], factor: float
) -> list[tuple[int, int]]:
    """Sizes from the coarse size (first) to the fine size (last), about `factor` apart."""
    ratio = max(fine[0] / coarse[0], fine[1] / coarse[1])
    n = max(1, math.ceil(math.log(max(ratio, 1.0)) / math.log(factor))) if ratio > 1 else 0
    sizes = [coarse]
    for k in range(1, n):
        f = k / n
        sizes.append(
            (
                round(coarse[0] * (fine[0] / coarse[0]) ** f),
                round(coarse[1] * (fine[1] / coarse[1]) ** f),
            )
        )
    if fine != coarse:
        sizes.append(fine)
    return sizes


def coarse_size(height: int, width: int, side: int) -> tuple[int, int]:
    """The size whose short side is `side` (the tile's own size when it is not larger)."""
    short = min(height, width)
    if short <= side:
        return height, width
    return max(1, round(height * side / short)), max(1, round(width * side / short))


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of (N, C, H, W): a downscale that does not alias."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    down = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=down)


def mask_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) boolean: the pixels at `size` that any ROI pixel of `mask` falls in."""
    return F.adaptive_max_pool2d(mask.float(), size) > 0


def patch_touches(mask: torch.Tensor, patch: int) -> torch.Tensor:
    """Per patch position (top-left, (H-p+1)*(W-p+1)), whether the patch overlaps `mask`."""
    hit = F.max_pool2d(mask.float(), patch, stride=1)
    return hit.flatten() > 0


def example_share(roi: torch.Tensor, patch: int, weight: float, ramp: int) -> torch.Tensor:
    """Per patch position (as `patch_touches` flattens them), the example's share: `weight`
    where the patch's centre lies `ramp` px or more inside the ROI, rising from 0 at its edge,
    so the surroundings go on a little way into the ROI before the example's look takes over
    (the boundary then runs through content that fits on both sides)."""
    depth = torch.zeros_like(roi, dtype=torch.float32)
    inside = roi.float()
    for _ in range(max(ramp, 1)):  # the distance from outside, counted by erosions
        depth += inside
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    share = weight * (depth / max(ramp, 1)).clamp(max=1.0)
    centre = patch // 2
    return share[..., centre : share.shape[-2] - patch + 1 + centre,
                 centre : share.shape[-1] - patch + 1 + centre].flatten()  # fmt: skip


def fitted_ramp(roi: torch.Tensor, ramp: int) -> int:
    """`ramp` for `example_share`, at most half the depth of the ROI (1, 1, h, w) (its deepest
    pixel's distance from outside, counted as `example_share` counts it) and at least 1: a
    fixed ramp left a small ROI with the example at full share only at its very centre, the
    tile's look everywhere else."""
    inside, depth = roi.float(), 0
    while depth < 2 * ramp and bool(inside.any()):
        depth += 1
        inside = -F.max_pool2d(-inside, 3, stride=1, padding=1)
    return max(1, min(ramp, depth // 2))


def _nearest(
    queries: torch.Tensor,
    keys: torch.Tensor,
    chunk: int,
    completeness: float = 0.0,
    pools: _PoolCost | None = None,
) -> torch.Tensor:
    """Index of the nearest key (rows of keys, (K, D)) for every query row (Q, D); `pools`
    adds a per-query cost of drawing on the tile's or the example's keys."""
    if completeness <= 0 and pools is not None and pools.exclusive:
        return _nearest_by_pool(queries, keys, chunk, pools)
    key_norms = (keys * keys).sum(1)
    n = queries.shape[1]
    out = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    if completeness <= 0:
        # Only the order within a row matters: n * (distance + pool cost) less the query's own
        # norm, a constant per row. The full distances' extra passes over each block (add,
        # clamp, divide) were about a third of the search's time.
        for i in range(0, len(queries), chunk):
            d = torch.addmm(key_norms[None], queries[i : i + chunk], keys.T, alpha=-2.0)
            if pools is not None:
                pools.add_cost(d, i, scale=n)
            out[i : i + chunk] = d.argmin(1)
        return out

    # Completeness divides by a per-key scale: it needs the distances themselves.
    query_norms = (queries * queries).sum(1)

    def distances(i: int) -> torch.Tensor:  # mean squared distances of a chunk of queries
        d = torch.addmm(key_norms[None], queries[i : i + chunk], keys.T, alpha=-2.0)
        d = (d + query_norms[i : i + chunk, None]).clamp_min(0) / n
        if pools is not None:
            pools.add_cost(d, i)
        return d

    best = torch.full((len(keys),), float("inf"), device=queries.device)
    for i in range(0, len(queries), chunk):
        best = torch.minimum(best, distances(i).min(0).values)
    # A key no query may draw on (its pool excluded for all of them) is never chosen.
    scale = completeness + torch.where(best.isfinite(), best, torch.zeros_like(best))
    for i in range(0, len(queries), chunk):
        out[i : i + chunk] = (distances(i) / scale[None]).argmin(1)
    return out


def _nearest_by_pool(queries, keys, chunk: int, pools: _PoolCost) -> torch.Tensor:
    """`_nearest` with pool costs, each query searching only the keys of the pools open to it:
    where the example's share is full (the ROI's inside, with an example of weight 1) its
    keys alone, where it is 0 (patches centred outside the ROI) the tile's alone. The same
    choice as searching all keys, with about half the products for those queries."""
    out = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    k = len(keys)
    both = ~(pools.example_only | pools.tile_only)
    for rows, first, last in (
        (pools.example_only, pools.tile, k),
        (pools.tile_only, 0, pools.tile),
        (both, 0, 0),  # no one pool: all keys, with the costs
    ):
        index = torch.nonzero(rows).flatten()
        if not len(index):
            continue
        if last > first:  # one pool, whose cost is the same for each of its keys
            out[index] = first + _nearest(queries[index], keys[first:last], chunk)
        else:
            out[index] = _nearest(queries[index], keys, chunk, 0.0, pools.rows(index))
    return out


def _allowed(roi, invalid, patch: int) -> torch.Tensor:
    """Per patch position (as `patch_touches`), whether a result may be made of it: none
    touching nodata and, while enough remain, none touching the ROI."""
    allowed = ~patch_touches(invalid, patch)
    outside = allowed & ~patch_touches(roi, patch)
    if int(outside.sum()) < 16:  # the ROI covers (nearly) everything: any valid patch
        outside = allowed
    if int(outside.sum()) == 0:
        raise NoPatchesError
    return outside


def _key_positions(allowed: torch.Tensor, max_keys: int) -> torch.Tensor:
    """Flat positions of the `allowed` patches, a regular subsample of at most `max_keys`."""
    index = torch.nonzero(allowed).flatten()
    return index[spread(len(index), max_keys).to(index.device)]


def spread(n: int, k: int) -> torch.Tensor:
    """Positions of a regular subsample of at most `k` of `n` rows (all of them when k >= n)."""
    if n <= k:
        return torch.arange(n)
    return (torch.arange(k) * (n / k)).long()


def split_budget(tile: int, example: int, budget: int) -> tuple[int, int]:
    """How many of the tile's and of an example's keys to search within `budget` keys (the
    tile's own count: an edit by example then costs what one without costs): the example up to
    half, the tile the rest."""
    theirs = min(example, max(budget // 2, 1))
    return min(tile, max(budget - theirs, 1)), theirs


def source_patches(image, roi, invalid, patch: int, max_keys: int) -> torch.Tensor:
    """(K, C*patch*patch) patches of `image` (1, C, H, W) outside `roi` and `invalid`."""
    index = _key_positions(_allowed(roi, invalid, patch), max_keys)
    return F.unfold(image, patch)[0].T[index].contiguous()


@dataclass(frozen=True)
class _Grid:
    """One image's grid of patch positions that a source's keys are cut from: its sharp and
    blurry images, which positions may be used, and where its positions start in the source's
    numbering (the tile's first, then an example's)."""

    sharp: torch.Tensor
    blurry: torch.Tensor | None
    allowed: torch.Tensor  # (rows * cols,) bool
    offset: int
    rows: int
    cols: int


class _Source:
    """The patches a scale's ROI is assembled from, as keys (blurry and sharp) and values: the
    tile's outside the ROI, and an example's (`add`)."""

    def __init__(self, sharp, blurry, roi, invalid, settings: PatchSettings):
        p = settings.patch
        self.patch = p
        allowed = _allowed(roi, invalid, p)  # every position a patch may come from
        index = _key_positions(allowed, settings.max_keys)
        self.values = F.unfold(sharp, p)[0].T[index].contiguous()  # (K, C*p*p)
        self.tile_count = len(index)  # the first keys are the tile's (then an example's)
        self.share: torch.Tensor | None = None  # the example's, per patch position
        self.blurry_keys = None if blurry is None else F.unfold(blurry, p)[0].T[index].contiguous()
        # Where each key lies (its grid's offset + its flat position there), and the grids'
        # images (for coherent candidates, which need not be among the subsampled keys).
        self.positions = index
        h, w = sharp.shape[-2:]
        self.grids = [_Grid(sharp, blurry, allowed, 0, h - p + 1, w - p + 1)]

    def add(self, other: _Source) -> None:
        """Draw on `other`'s patches too, within the keys this source searched alone
        (`split_budget`)."""
        mine, theirs = split_budget(self.tile_count, len(other.values), self.tile_count)
        keep = spread(self.tile_count, mine)
        take = spread(len(other.values), theirs)
        self.values = torch.cat([self.values[keep], other.values[take]])
        offset = sum(g.rows * g.cols for g in self.grids)
        self.positions = torch.cat([self.positions[keep], other.positions[take] + offset])
        self.grids += [replace(g, offset=g.offset + offset) for g in other.grids]
        if self.blurry_keys is not None:
            self.blurry_keys = torch.cat([self.blurry_keys[keep], other.blurry_keys[take]])
        self.tile_count = mine

    def grid_index(self, positions: torch.Tensor) -> torch.Tensor:
        """Which grid (0: the tile's) each position lies in."""
        starts = torch.tensor([g.offset for g in self.grids[1:]], device=positions.device)
        return torch.bucketize(positions, starts, right=True)

    def patches(self, positions: torch.Tensor, blurry: bool) -> torch.Tensor:
        """(N, C*p*p) sharp (or blurry) patches at `positions` (the source's numbering)."""
        out = torch.empty(len(positions), self.values.shape[1], device=self.values.device)
        which = self.grid_index(positions)
        for k, g in enumerate(self.grids):
            rows = torch.nonzero(which == k).flatten()
            if len(rows):
                image = g.blurry if blurry else g.sharp
                out[rows] = patches_at(image, positions[rows] - g.offset, self.patch)
        return out

    def moved(self, positions: torch.Tensor, dr: int, dc: int):
        """The positions `dr` rows and `dc` columns away in each one's own grid: (rows of
        `positions` where that position exists and may be used, those positions)."""
        which = self.grid_index(positions)
        found, moved = [], []
        for k, g in enumerate(self.grids):
            rows = torch.nonzero(which == k).flatten()
            local = positions[rows] - g.offset
            r, c = local // g.cols + dr, local % g.cols + dc
            ok = (r >= 0) & (r < g.rows) & (c >= 0) & (c < g.cols)
            rows, flat = rows[ok], (r * g.cols + c)[ok]
            ok = g.allowed[flat]
            found.append(rows[ok])
            moved.append(flat[ok] + g.offset)
        return torch.cat(found), torch.cat(moved)


class _PoolCost:
    """The example's share per query (`share`) as a cost on the squared distance: the tile's
    first `tile` keys cost -2 s^2 log(1 - share), the example's -2 s^2 log(share) (the
    maximum a posteriori match under noise of std s = `EXAMPLE_NOISE`). Where the share is 1,
    only the example's patches can win (the tile's cost is infinite); where it is 0, only the
    tile's."""

    def __init__(self, tile: int, share: torch.Tensor):
        self.tile, self.share = tile, share
        self.example_only, self.tile_only = share >= 1, share <= 0
        share = share.clamp(1e-6, 1 - 1e-6)
        scale = 2 * EXAMPLE_NOISE**2
        inf = torch.tensor(float("inf"), device=share.device)
        self.tile_cost = torch.where(self.example_only, inf, -scale * torch.log(1 - share))[:, None]
        self.example_cost = torch.where(self.tile_only, inf, -scale * torch.log(share))[:, None]

    @property
    def exclusive(self) -> bool:
        """Whether some queries may draw on one pool only."""
        return bool((self.example_only | self.tile_only).any())

    def rows(self, index: torch.Tensor) -> _PoolCost:
        """The costs of the queries at `index` only."""
        return _PoolCost(self.tile, self.share[index])

    def add_cost(self, d: torch.Tensor, first: int, scale: float = 1.0) -> None:
        """Add the pool costs (times `scale`) to the rows of `d` from query `first` on."""
        rows = slice(first, first + len(d))
        d[:, : self.tile] += scale * self.tile_cost[rows]
        d[:, self.tile :] += scale * self.example_cost[rows]


# Noise std (model range) under which a query is matched to the tile or the example: a cost of
# 0.02 x -log(share), so a share of 0.8 favours the example by about 0.03 (a mean squared
# difference of patches that look alike), and a share near 1 excludes the tile.
EXAMPLE_NOISE = 0.1


class NoPatchesError(Exception):
    """No patch of the tile at this scale may be used (all touch the ROI or nodata)."""


def _vote(x, roi, source: _Source, keys, settings: PatchSettings, completeness: float):
    """One nearest-neighbour pass: patches of x touching the ROI replaced and averaged."""
    p = settings.patch
    h, w = x.shape[-2:]
    columns = F.unfold(x, p)[0].T  # (L, C*p*p)
    touched = torch.nonzero(patch_touches(roi, p)).flatten()
    if len(touched) == 0:
        return x
    pools = None if source.share is None else _PoolCost(source.tile_count, source.share[touched])
    nn = _nearest(columns[touched], keys, settings.chunk, completeness, pools)
    values = source.values[nn]
    if settings.coherence > 0 and completeness <= 0:
        blurry = keys is source.blurry_keys
        chosen = _cohere(columns[touched], touched, keys, nn, blurry, source, settings, pools)
        values = source.patches(chosen, blurry=False)
    c = x.shape[1]
    spatial = vote_weights(p, settings.vote_sigma, x.dtype).to(x.device)
    weight = torch.zeros(len(columns), p * p, dtype=x.dtype, device=x.device)
    weight[touched] = spatial
    pasted = torch.zeros_like(columns)
    pasted[touched] = values * spatial.repeat(c)
    total = F.fold(pasted.T[None], (h, w), p)
    count = F.fold(weight.T[None], (h, w), p)
    voted = torch.where(count > 0, total / count.clamp_min(1e-8), x)
    return torch.where(roi, voted, x)


def patches_at(image: torch.Tensor, flat: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C*patch*patch) patches of `image` (1, C, H, W) at flat patch positions (as
    `patch_touches` numbers them), in `F.unfold`'s order."""
    grid_w = image.shape[-1] - patch + 1
    offsets = torch.arange(patch, device=flat.device)
    rows = (flat // grid_w)[:, None, None] + offsets[None, :, None]
    cols = (flat % grid_w)[:, None, None] + offsets[None, None, :]
    return image[0][:, rows, cols].permute(1, 0, 2, 3).reshape(len(flat), -1)


_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


def _cohere(queries, touched, keys, nn, blurry: bool, source: _Source, settings, pools):
    """Per query, the source position (`_Source.positions`' numbering) of a patch that
    continues a neighbouring query's source, the tile's or an example's, where one costs at
    most (1 + coherence) times its nearest key `nn` (the costs include the pools' costs, so
    where the example's share is full, a run of the tile's patches cannot continue in).
    Rounds of propagation: a coherent run grows by about a pixel per round from wherever it
    fits."""
    tile = source.grids[0]  # the queries' grid

    def cost(rows, candidates, grids):  # distance plus the candidate's pool cost
        d = (queries[rows] - candidates).pow(2).mean(1)
        if pools is None:
            return d
        pool = torch.where(grids == 0, pools.tile_cost[rows, 0], pools.example_cost[rows, 0])
        return d + pool

    chosen = source.positions[nn]
    limit = (1 + settings.coherence) * cost(slice(None), keys[nn], source.grid_index(chosen))
    lookup = torch.full((tile.rows * tile.cols,), -1, dtype=torch.long, device=queries.device)
    lookup[touched] = torch.arange(len(touched), device=queries.device)
    qr, qc = touched // tile.cols, touched % tile.cols
    nearest = chosen.clone()
    # Half the queries at a time, as on a chessboard: a query's neighbours are then all of the
    # other colour and stand still while it moves (updated all at once, two neighbours would
    # each take the other's source and swap, never agreeing).
    halves = [torch.nonzero((qr + qc) % 2 == k).flatten() for k in (0, 1)]
    for round_ in range(2 * settings.coherence_rounds):
        moving = halves[round_ % 2]
        best = torch.full((len(moving),), float("inf"), device=queries.device)
        best_at = torch.full_like(moving, -1)
        for dr, dc in _NEIGHBOURS:
            nr, nc = qr[moving] + dr, qc[moving] + dc
            ok = (nr >= 0) & (nr < tile.rows) & (nc >= 0) & (nc < tile.cols)
            at = torch.nonzero(ok).flatten()  # rows of `moving`
            neighbour = lookup[nr[at] * tile.cols + nc[at]]
            at, neighbour = at[neighbour >= 0], neighbour[neighbour >= 0]
            # The patch beside the neighbour's source, as the query lies beside the neighbour.
            found, flat = source.moved(chosen[neighbour], -dr, -dc)
            at = at[found]
            d = cost(moving[at], source.patches(flat, blurry), source.grid_index(flat))
            better = d < best[at]
            best[at[better]] = d[better]
            best_at[at[better]] = flat[better]
        take = (best_at >= 0) & (best <= limit[moving])
        chosen[moving] = torch.where(take, best_at, nearest[moving])
    return chosen


def _blur3(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur (edges replicated)."""
    c = x.shape[1]
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
    return F.conv2d(x, k.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)


def vote_weights(patch: int, sigma: float, dtype) -> torch.Tensor:
    """(patch * patch,) weights of a patch's pixels in the vote."""
    if sigma <= 0:
        return torch.ones(patch * patch, dtype=dtype)
    r = torch.arange(patch, dtype=dtype) - (patch - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g[:, None] * g[None, :]).flatten()


@torch.no_grad()
def refine(
    coarse: torch.Tensor,
    image: torch.Tensor,
    mask: torch.Tensor,
    settings: PatchSettings = PatchSettings(),  # noqa: B008 (frozen)
    *,
    invalid: torch.Tensor | None = None,
    seed: int = 0,
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    example_weight: float = 0.0,
    example_ramp: int = 1,
    progress: ProgressCallback = no_progress,
) -> torch.Tensor:
    """The full-size edit (1, C, H, W) from a coarse one (1, C, h, w).

    `image`: the tile (1, C, H, W), same range as `coarse`; `mask`: (1, 1, H, W), true where
    the ROI is regenerated; `invalid` (same shape, optional): pixels no patch may come from
    (nodata). Outside the mask the result is `image` exactly. `example`: an image at the
    tile's resolution (1, C, he, we) and its invalid pixels (1, 1, he, we) whose patches join
    the tile's at every scale when `example_weight` > 0, preferred inside the ROI as at the
    coarse scale (`example_ramp`: the coarse scale's ramp, in its px).
    """
    image = image.float()
    mask = mask.bool()
    invalid = torch.zeros_like(mask) if invalid is None else invalid.bool()
    sizes = scale_sizes(tuple(coarse.shape[-2:]), tuple(image.shape[-2:]), settings.factor)
    passes_per_scale = max(settings.passes, 1)  # the first, blurry-key pass always runs
    total = settings.coarse_passes + passes_per_scale * (len(sizes) - 1)
    done = 0
    progress(STAGE, 0, total)

    x = coarse.float()
    known_prev = None
    examples = _example_scales(example, sizes, image.shape[-2:]) if example_weight > 0 else None

    def share(roi: torch.Tensor) -> torch.Tensor:  # the example's, ramped in as at the coarse
        ramp = round(example_ramp * roi.shape[-2] / sizes[0][0])
        return example_share(roi, settings.patch, example_weight, ramp)

    for s, size in enumerate(sizes):
        known = image if s == len(sizes) - 1 else resize(image, size)
        roi = mask_at(mask, size)
        banned = mask_at(invalid, size)
        if min(size) < settings.patch + 2 or (s == 0 and settings.coarse_passes == 0):
            # Too small for patches (or no guard asked for): keep the guess at this scale.
            x = torch.where(roi, resize(x, size), known)
            known_prev = known
            continue
        if s == 0:
            x = torch.where(roi, x, known)
            try:
                source = _Source(known, None, roi, banned, settings)
            except NoPatchesError:
                known_prev = known
                continue
            _add_example(source, examples, s, settings, share(roi) if examples else None)
            if settings.coarse_noise > 0:
                gen = torch.Generator().manual_seed(seed)
                noise = torch.randn(x.shape, generator=gen).to(x.device)
                x = torch.where(roi, x + settings.coarse_noise * noise, known)
            passes = [source.values] * settings.coarse_passes
        else:
            x = torch.where(roi, resize(x, size), resize(known_prev, size))
            blurry = resize(known_prev, size)
            try:
                source = _Source(known, blurry, roi, banned, settings)
            except NoPatchesError:
                x = torch.where(roi, x, known)
                known_prev = known
                continue
            _add_example(source, examples, s, settings, share(roi) if examples else None)
            passes = [source.blurry_keys] + [source.values] * (passes_per_scale - 1)
        for keys in passes:
            # Outside the ROI: blurry for the first pass at a new scale (its keys are blurry
            # too), then the tile's own sharp pixels.
            c = settings.completeness if s < settings.completeness_scales else 0.0
            query = x
            if s > 0 and keys is source.blurry_keys and settings.query_sharpen > 0:
                query = torch.where(roi, x + settings.query_sharpen * (x - _blur3(x)), x)
            x = torch.where(roi, _vote(query, roi, source, keys, settings, c), known)
            done += 1
            progress(STAGE, done, total)
        x = torch.where(roi, x, known)
        known_prev = known
    progress(STAGE, total, total)
    return torch.where(mask, x, image)


def _example_scales(example, sizes, full) -> list[tuple] | None:
    """The example at each of `sizes` (scaled as the tile is from `full`): (sharp, blurry
    (the previous scale's, upsampled), invalid) per scale; None without an example."""
    if example is None:
        return None
    picture, banned = example[0].float(), example[1].bool()
    he, we = picture.shape[-2:]
    out, previous = [], None
    for size in sizes:
        at = (max(1, round(he * size[0] / full[0])), max(1, round(we * size[1] / full[1])))
        sharp = resize(picture, at)
        blurry = None if previous is None else resize(previous, at)
        out.append((sharp, blurry, mask_at(banned, at)))
        previous = sharp
    return out


def _add_example(source: _Source, examples, s: int, settings: PatchSettings, share):
    """Let scale `s`'s source draw on the example's patches at that scale (when it has any),
    with the example's `share` per patch position (`patch_diffusion.example_share`): its
    patches are preferred inside the ROI, the tile's at its edge, whatever matches best."""
    if examples is None:
        return
    sharp, blurry, banned = examples[s]
    if min(sharp.shape[-2:]) < settings.patch:
        return
    blurry = None if source.blurry_keys is None else blurry
    try:
        theirs = _Source(sharp, blurry, torch.zeros_like(banned), banned, settings)
    except NoPatchesError:
        return
    source.add(theirs)
    source.share = share
