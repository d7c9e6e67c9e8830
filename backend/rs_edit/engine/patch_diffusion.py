"""Training-free diffusion at the coarse scale: the denoiser is the tile's own patches.

The best (MMSE) denoiser for the empirical distribution of the tile's patches is written in
closed form (as in efficient single-image diffusion, "efficient-SID"): a noisy patch's clean
estimate is the mean of the tile's patches, each weighted by how well it explains the noisy
patch at the current noise level, softmax(-|q - p|^2 / 2 sigma^2). Overlapping estimates are
averaged into a clean image, and an ordinary stochastic sampler walks the noise down. At high
noise every patch is about equally likely (the estimate is the tile's mean); at low noise the
estimate snaps to the nearest real patch: the sample is composed of the tile's own patches.

Used as the coarse layout generator of the `fast` and `tiny` presets: no training (a few seconds
instead of a minute on a CPU), and ROIs keep the tile's variety (boats in a harbour, cars on a
road), where a briefly trained network drifts to the tile's commonest, darkest content. Only
the ROI is sampled; outside it the known image, noised to the current level, is what the ROI's
patches must agree with (RePaint), so the new content continues its surroundings.

Guidance at sampling time works as for a trained model: the guide's gradient moves each clean
estimate, by the step size classifier guidance gives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..progress import ProgressCallback, Stage, no_progress
from .diffusion import Guide
from .fill import structure_fill
from .offsets import offset_fill
from .patches import (
    NoPatchesError,
    example_share,
    patch_touches,
    source_patches,
    split_budget,
    spread,
    vote_weights,
)

STAGE = Stage.SAMPLE  # sampling, as for a trained model
# How an anchored start fills the ROI (`sample`'s `fill`).
FILLS = ("smooth", "structure", "offsets")


@dataclass(frozen=True)
class PatchDiffusionSettings:
    # Patch side. 5 at a coarse short side of 64 px: on the ROIs of bench.realism it gave
    # layouts closer to their surroundings than 7 (which follows larger, rarer structures).
    patch: int = 5
    steps: int = 40  # denoising steps
    # Noise levels (model range [-1, 1]): from sigma_max, where the tile's mean is the
    # estimate, to sigma_min, where it is one real patch; Karras et al.'s spacing (rho).
    sigma_max: float = 2.0
    sigma_min: float = 0.01
    rho: float = 7.0
    eta: float = 1.0  # 1: ancestral (fresh noise each step; diverse), 0: deterministic DDIM
    max_keys: int = 20_000  # tile patches searched (a regular subsample beyond)
    chunk: int = 512  # noisy patches per softmax block
    # With an example: how far (px at this scale) into the ROI its share rises to full, so the
    # surroundings continue a little way in and the boundary is not a cut between two images.
    # With 1 bench.exemplar's forest-harbour outline showed as a disk's rim (seam 1.48; 1.24
    # with 3). 5 (about 20 px of a 256 px window): over 8-12 unguarded drafts per case (a
    # scratch script), the share of drafts meeting every goal went from 3 to 5: forest-harbour
    # 4/8 to 6/8, harbour-forest 7/8 to 8/8, overpass-river 5/8 to 6/8, NAIP 1/12 to 4/12 (its
    # mean seam 1.26 to 1.22, its mean closeness 0.60 to 0.62); 7 gave NAIP 5/12 but
    # overpass-river 7/12 (10/12 with 5), its closeness to the river falling. The editor
    # fits it to the ROI (`patches.fitted_ramp`: at most half the ROI's depth).
    example_ramp: int = 5
    # With an example: how far each step moves the ROI's patches (where the example's share is
    # full) toward the example's patch distribution, as a fraction of the step a guide gets
    # (sigma^2 / (1 + sigma^2)): one sliced optimal-transport step (Pitie et al. 2007) in a
    # fresh random basis. Without it the layout takes the example's patches nearest the
    # surroundings and drops the rest (a forest edited toward a harbour became a dark pond:
    # the harbour's water, none of its boats). 0: off. 3: on bench.exemplar (seed 0) the
    # quadratic mean of "toward" went 0.76 / 0.83 / 0.63 (forest-harbour, overpass-river,
    # NAIP) to 0.56 / 0.53 / 0.60, with 2: 0.61 / 0.79 / 0.59; harbour-forest, whose first
    # draft already took the example's look, 0.23 to 0.39. 5 (the full step down to sigma
    # 0.5 instead of 0.7): over 8 unguarded first drafts per case (a scratch script, seeds
    # 0-707), the drafts the guard passes went from 24 to 29 of 32 (NAIP 3 to 6, overpass-river
    # 6 to 8, forest-harbour 7 and harbour-forest 8 either way); the median closeness hardly
    # moved (NAIP 0.61 to 0.58, the others within 0.012), its tail above the bar shrank.
    example_pull: float = 5.0
    # How much sharper than one patch's posterior (its softmax over the keys, the noise
    # variance divided by this) each patch's clean estimate is drawn. One patch sees only its
    # own pixels, but each pixel is seen by patch^2 overlapping patches, so the image holds
    # more evidence than any one patch: the plain posterior is too broad, its estimates too
    # close to the mean, and the averaged layout can drift to the tile's commonest, flattest
    # content (unconditional samples of bench.realism's overpass tile at 64 px, measured with
    # a scratch script: pixel std 0.31 against the tile's 0.46, nearly all asphalt; 0.34 at
    # 2-8). How much it drifts depends on the tile, and sharper overshoots where it does not
    # (the harbour's ROI fills with boats; the bright squares of
    # test_sharper_posteriors_keep_a_tiles_rarer_content, 11-12 % of its tile, take 7-10 % of
    # the samples at 1, 13-16 % at 2 and 14-19 % at 3), so draws are plain by default and
    # the realism guard alternates plain and sharper alternatives where realism fails
    # (`Preset.guard_sharpen`).
    sharpen: float = 1.0


def noise_levels(settings: PatchDiffusionSettings) -> torch.Tensor:
    """(steps + 1,) decreasing noise levels, the last 0."""
    ramp = torch.linspace(0, 1, settings.steps)
    hi, lo = settings.sigma_max ** (1 / settings.rho), settings.sigma_min ** (1 / settings.rho)
    sigmas = (hi + ramp * (lo - hi)) ** settings.rho
    return torch.cat([sigmas, torch.zeros(1)])


def _denoise(queries, keys, key_norms, sigma: float, chunk: int, pools: _Pools | None = None):
    """The MMSE clean estimate of each noisy patch (rows of `queries`) under the empirical
    distribution of `keys` (uniform, or the per-query mixture `pools`) with Gaussian noise of
    std `sigma`."""
    out = torch.empty_like(queries)
    for i in range(0, len(queries), chunk):
        q = queries[i : i + chunk]
        # -|q - k|^2 / 2 sigma^2 up to a per-row constant (|q|^2), which softmax ignores.
        logits = torch.addmm(key_norms[None], q, keys.T, beta=-1.0, alpha=2.0) / (2 * sigma**2)
        if pools is not None:
            pools.add_log_prior(logits, i)
        out[i : i + chunk] = torch.softmax(logits, dim=1) @ keys
    return out


class _Pools:
    """A patch distribution that mixes the tile's keys (the first `tile` rows) with an
    example's (the rest), the example's share set per query patch (`share`, one per query):
    whatever the two patch counts, a query draws on the example with its share."""

    def __init__(self, tile: int, example: int, share: torch.Tensor):
        share = share.clamp(1e-6, 1 - 1e-6)
        self.tile = tile
        self.tile_log = torch.log((1 - share) / tile)[:, None]
        self.example_log = torch.log(share / example)[:, None]

    def add_log_prior(self, logits: torch.Tensor, first: int) -> None:
        rows = slice(first, first + len(logits))
        logits[:, : self.tile] += self.tile_log[rows]
        logits[:, self.tile :] += self.example_log[rows]


def sample(
    known: torch.Tensor,
    roi: torch.Tensor,
    settings: PatchDiffusionSettings = PatchDiffusionSettings(),  # noqa: B008 (frozen)
    *,
    invalid: torch.Tensor | None = None,
    seed: int = 0,
    guide: Guide | None = None,
    anchor: float | None = None,
    fill: str = "smooth",
    example: tuple[torch.Tensor, torch.Tensor] | None = None,
    example_weight: float = 0.0,
    progress: ProgressCallback = no_progress,
) -> torch.Tensor:
    """A new ROI for `known` (1, C, h, w, model range) where `roi` (1, 1, h, w, bool) is true;
    outside it the result is `known` exactly. `invalid` (optional, same shape): pixels no patch
    may come from (nodata). `guide(clean, 0)`: a loss whose gradient steers every clean
    estimate (None: unguided). `anchor`: start from the ROI filled smoothly from its
    surroundings (`context_fill`), noised to this level, instead of from pure noise: the
    layout then continues the surroundings (land goes on where land meets the ROI) rather than
    falling to the tile's commonest content (None: from noise, the most varied). `fill`: how
    the anchor's start fills the ROI: "smooth" (`context_fill`: the surroundings' colours,
    blended towards the middle), "structure" (`fill.structure_fill`: the surroundings'
    patches, lines carried across first) or "offsets" (`offsets.offset_fill`: copied along
    the tile's dominant patch offsets, so lines and rows run on through it). `example`:
    an image (1, C, he, wh) at the same scale and its invalid pixels (1, 1, he, we), whose
    patches the ROI is drawn from with probability `example_weight` (the tile's with the
    rest; less near the ROI's edge, `example_share`): the new layout takes on the example's
    look while agreeing with the surroundings."""
    if fill not in FILLS:
        raise ValueError(f"unknown fill {fill!r}: one of {', '.join(map(repr, FILLS))}")
    known = known.float()
    roi = roi.bool()
    invalid = torch.zeros_like(roi) if invalid is None else invalid.bool()
    device = known.device
    generator = torch.Generator(device).manual_seed(seed)

    def noise() -> torch.Tensor:
        return torch.randn(known.shape, generator=generator, device=device)

    c, h, w = known.shape[-3:]
    p = min(settings.patch, h, w)  # a tile smaller than the patches: patches of its size
    try:
        keys = source_patches(known, roi, invalid, p, settings.max_keys)
    except NoPatchesError:
        # Nothing of the tile may be used: the mean of its valid pixels is the best estimate
        # (those around the ROI, when there are any: not the content being replaced).
        valid = ~invalid & ~roi if (~invalid & ~roi).any() else ~invalid
        valid = valid.expand_as(known)
        mean = (known * valid).sum((2, 3), keepdim=True) / valid.sum((2, 3), keepdim=True).clamp(1)
        return torch.where(roi, mean.expand_as(known), known)
    touched = torch.nonzero(patch_touches(roi, p)).flatten()
    pools = pull = None
    if example is not None and example_weight > 0:
        picture, banned = example[0].float().to(device), example[1].bool().to(device)
        try:
            theirs = source_patches(picture, torch.zeros_like(banned), banned, p, settings.max_keys)
        except NoPatchesError:
            theirs = None
        if theirs is not None:  # within the keys the tile alone would have searched
            mine, count = split_budget(len(keys), len(theirs), len(keys))
            keys = keys[spread(len(keys), mine).to(device)]
            theirs = theirs[spread(len(theirs), count).to(device)]
            share = example_share(roi, p, example_weight, settings.example_ramp)
            pools = _Pools(len(keys), len(theirs), share[touched])
            keys = torch.cat([keys, theirs])
            if settings.example_pull > 0:
                pull = _ExamplePull(theirs, roi, share, settings, seed)
    key_norms = (keys * keys).sum(1)
    n_columns = (h - p + 1) * (w - p + 1)
    # Overlapping estimates are averaged while noise remains (the MMSE image); the last step
    # keeps each pixel from its own patch's centre, so the sample is made of the tile's
    # colours, not blends of neighbouring estimates that disagree.
    weights = torch.zeros(n_columns, p * p, device=device)
    count = F.fold(weights.index_fill(0, touched, 1.0).T[None], (h, w), p)
    centre = vote_weights(p, 0.25, known.dtype).to(device)
    centre_count = F.fold(
        weights.index_copy(0, touched, centre.expand(len(touched), -1)).T[None], (h, w), p
    )

    sigmas = noise_levels(settings).tolist()
    first, start = 0, known
    if anchor is not None:
        first = next(i for i, s in enumerate(sigmas) if s <= anchor)
        start = _anchor_start(known, roi | invalid, fill, p, settings.max_keys)
    x = torch.where(roi, start + sigmas[first] * noise(), known)
    progress(STAGE, 0, settings.steps)
    for i in range(first, settings.steps):
        sigma, following = sigmas[i], sigmas[i + 1]
        # The known image at this noise level around the ROI, so patches across its edge compare
        # like with like.
        noisy = torch.where(roi, x, known + sigma * noise())
        columns = F.unfold(noisy, p)[0].T
        with torch.no_grad():
            estimate = _denoise(
                columns[touched],
                keys,
                key_norms,
                sigma / math.sqrt(settings.sharpen),
                settings.chunk,
                pools,
            )
        if following > 0:
            pasted = torch.zeros_like(columns).index_copy_(0, touched, estimate)
            clean = F.fold(pasted.T[None], (h, w), p) / count.clamp_min(1)
        else:
            pasted = torch.zeros_like(columns).index_copy_(0, touched, estimate * centre.repeat(c))
            clean = F.fold(pasted.T[None], (h, w), p) / centre_count.clamp_min(1e-8)
        clean = torch.where(roi & (count > 0), clean, known)
        if pull is not None:
            # At most the whole step to the matched distribution (more would overshoot it).
            clean = pull(clean, min(1.0, settings.example_pull * sigma**2 / (1 + sigma**2)))
        if guide is not None:
            clean = _guided(clean, guide, sigma, roi)
        if following == 0:
            x = clean
            break
        # A DDIM step with stochasticity eta, in the variance-exploding form x = clean + sigma e.
        var = settings.eta**2 * following**2 * (1 - following**2 / sigma**2)
        x = clean + math.sqrt(max(following**2 - var, 0.0)) / sigma * (noisy - clean)
        x = torch.where(roi, x + math.sqrt(var) * noise(), known)
        progress(STAGE, i + 1, settings.steps)
    progress(STAGE, settings.steps, settings.steps)
    return torch.where(roi, x.clamp(-1, 1), known)


class _ExamplePull:
    """Moves the ROI's patches toward the example's patch distribution: per call, one sliced
    optimal-transport step in a random orthonormal basis of patch space (each coordinate's
    values matched to the example's by rank), the patches' moves averaged into pixels and
    weighted by the example's share there (none at the ROI's edge, where the surroundings
    go on)."""

    def __init__(self, theirs, roi, share, settings, seed: int):
        p = min(settings.patch, *roi.shape[-2:])
        h, w = roi.shape[-2:]
        self.theirs, self.patch, self.size = theirs, p, (h, w)
        self.rows = torch.nonzero(share > 0).flatten()  # patches centred inside the ROI
        ones = torch.zeros(share.numel(), p * p, device=roi.device)
        self.count = F.fold(ones.index_fill(0, self.rows, 1.0).T[None], (h, w), p)
        # The share per pixel, relative to the example's weight: 1 where it is full.
        pixel_share = example_share(roi, 1, 1.0, settings.example_ramp).view(1, 1, h, w)
        self.weight = torch.where(self.count > 0, pixel_share, torch.zeros_like(pixel_share))
        self.generator = torch.Generator(device=roi.device).manual_seed(seed + 1)

    def __call__(self, clean: torch.Tensor, fraction: float) -> torch.Tensor:
        if len(self.rows) < 2 or fraction <= 0:
            return clean
        columns = F.unfold(clean, self.patch)[0].T
        mine = columns[self.rows]
        n, dim = mine.shape
        basis, _ = torch.linalg.qr(
            torch.randn(dim, dim, generator=self.generator, device=clean.device)
        )
        projected, order = (mine @ basis).sort(0)
        target = (self.theirs @ basis).sort(0).values
        ranks = ((torch.arange(n, device=clean.device) + 0.5) * len(target) / n).long()
        moves = torch.empty_like(projected).scatter_(0, order, target[ranks] - projected)
        pasted = torch.zeros_like(columns).index_copy_(0, self.rows, moves @ basis.T)
        shift = F.fold(pasted.T[None], self.size, self.patch) / self.count.clamp_min(1)
        return (clean + fraction * self.weight * shift).clamp(-1, 1)


def _anchor_start(known, hole, fill: str, patch: int, max_keys: int) -> torch.Tensor:
    """The anchor's start: `known` with the hole filled as `fill` says."""
    if fill != "smooth":
        method = structure_fill if fill == "structure" else offset_fill
        try:
            return method(known, hole, patch, max_keys=max_keys)
        except NoPatchesError:  # no whole patch outside the hole: the smooth fill still works
            pass
    return context_fill(known, hole)


def context_fill(known: torch.Tensor, hole: torch.Tensor, *, sigmas=(1, 2, 4, 8, 16, 32)):
    """`known` (1, C, h, w) with the `hole` (1, 1, h, w, bool) filled smoothly from around it:
    a normalised Gaussian average of the pixels outside the hole, the narrowest one that
    reaches each pixel (so the fill keeps the surroundings' layout near the edge and blends it
    towards the middle). Pixels no average reaches take the mean of those outside."""
    weight = (~hole).float()
    if not weight.any():
        return known
    total = (known * weight).sum((2, 3), keepdim=True) / weight.sum()
    fill = total.expand_as(known).clone()
    for sigma in sorted(sigmas, reverse=True):  # wide first, then narrower where they reach
        radius = int(3 * sigma)
        if radius >= min(known.shape[-2:]):
            continue
        x = torch.arange(-radius, radius + 1, dtype=known.dtype, device=known.device)
        g = torch.exp(-(x**2) / (2 * sigma**2))
        g = g / g.sum()

        def blur(t: torch.Tensor, g: torch.Tensor = g, r: int = radius) -> torch.Tensor:
            t = F.conv2d(
                t,
                g.view(1, 1, 1, -1).expand(t.shape[1], 1, 1, -1),
                padding=(0, r),
                groups=t.shape[1],
            )
            return F.conv2d(
                t,
                g.view(1, 1, -1, 1).expand(t.shape[1], 1, -1, 1),
                padding=(r, 0),
                groups=t.shape[1],
            )

        reach = blur(weight)
        average = blur(known * weight) / reach.clamp_min(1e-12)
        fill = torch.where(reach > 0.05, average, fill)
    return torch.where(hole, fill, known)


def _guided(clean: torch.Tensor, guide: Guide, sigma: float, roi: torch.Tensor) -> torch.Tensor:
    """The clean estimate moved along the guide's gradient. The step is the variance-preserving
    sigma_t^2 that a trained model's guided clean estimate moves by, sigma^2 / (1 + sigma^2)."""
    with torch.enable_grad():
        c = clean.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(guide(c, 0), c)
    step = sigma**2 / (1 + sigma**2)
    return torch.where(roi, (clean - step * grad).clamp(-1, 1), clean)
