"""Filling a hole by copying along the image's dominant patch offsets.

`offset_fill` is the start of half of the realism guard's structure-continued alternatives
(`patch_diffusion.sample`'s `anchor` with `fill="offsets"`; the first of them); the other
half start from `fill.structure_fill`, which fills patch by patch from the hole's edge
inwards. That one carries a line a little way in, but where two fronts meet in the middle a
barrier jogs or breaks, and what it puts between the lines is the commonest patch that fits
(bench.realism's overpass: bare asphalt, no cars; its colour level failed). This one fills
the hole at once.

He and Sun (2012, "Statistics of patch offsets for image completion") observe that the shifts
by which a patch of an image finds its most similar patch cluster on a few dominant offsets:
along a road a shift along it, among rows of houses the rows' spacing. The hole is filled by
giving each of its pixels one of those offsets and copying the pixel that far away, the offsets
chosen so that neighbouring pixels agree (a Markov random field, solved here by min-sum belief
propagation). Where one shift maps a line onto itself, so do its multiples: those are offered
too, so a barrier can be copied from beyond a hole wider than the shift the statistics found.
Lines then run on through the hole, and what lies between them is copied from the same lanes
elsewhere (cars included). On texture without lines it does worse than the patch-by-patch fill
(bench.realism's forest: drafts from it, worst level about 2 against about 1.2-1.3), hence
half each.

Used at the coarse scale only (a few hundred to a few thousand pixels of hole; 0.3-0.9 s for a
64 px tile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .patches import NoPatchesError, patch_touches, spread

__all__ = ["offset_fill"]

_PEAKS = 30  # dominant offsets taken from the statistics (He and Sun take 60 at a finer scale)
_MULTIPLES = 6  # each also offered at 2x ... 6x, within the image
_MAX_LABELS = 64  # offsets offered to each pixel, the strongest first
_MAX_PAIR_COSTS = 20_000_000  # edges x labels^2 held at once (80 MB); fewer labels beyond
_ITERATIONS = 40  # belief-propagation rounds
_MAX_QUERIES = 4096  # patches whose nearest neighbour votes for an offset
_BROKEN = 4.0  # cost where a label's source is unusable (about the widest colour difference)
_FORBIDDEN = 1e4  # unary cost of a label whose source lies in the hole or off the image
# The detail below which a cut counts as flat, as a share of the mean gradient energy outside
# the hole. Without it (0), drafts of bench.realism's forest from this fill were all shade
# (median worst level 3.3 over three); 0.01 gave about 2 (1.92 over three, 2.01 over six).
_FLAT_CUT = 0.01


def offset_fill(
    known: torch.Tensor, hole: torch.Tensor, patch: int = 5, *, max_keys: int = 20_000
) -> torch.Tensor:
    """`known` (1, C, h, w) with `hole` (1, 1, h, w, bool) filled with pixels of `known`
    copied from outside the hole, each from one of the image's dominant patch offsets, so
    that neighbours agree and the hole's edge continues its surroundings. Outside the hole
    the result is `known` exactly. `patch`: the side of the patches whose nearest neighbours
    vote for the offsets; `max_keys`: at most this many patches searched. Raises
    NoPatchesError when no whole patch lies outside the hole (nothing to copy from)."""
    known = known.float()
    hole = hole.bool()
    h, w = known.shape[-2:]
    if min(h, w) < patch or bool(hole.all()):
        raise NoPatchesError
    offsets = _dominant_offsets(known, hole, patch, max_keys)
    ys, xs = torch.nonzero(hole[0, 0], as_tuple=True)
    labels = min(len(offsets), max(2, int((_MAX_PAIR_COSTS / max(2 * len(ys), 1)) ** 0.5)))
    offsets = offsets[:labels]
    image = known[0]
    source_y = ys[:, None] + offsets[None, :, 0]  # (n, L)
    source_x = xs[:, None] + offsets[None, :, 1]
    usable = _usable(source_y, source_x, hole[0, 0])
    sy, sx = source_y.clamp(0, h - 1), source_x.clamp(0, w - 1)  # in the image, if unusable
    values = image[:, sy, sx]  # (C, n, L)
    unary = _boundary_cost(image, hole[0, 0], ys, xs, offsets)
    unary += torch.where(usable, 0.0, _FORBIDDEN)
    first, second, across = _hole_edges(hole[0, 0], ys, xs)

    def disagreement(node: torch.Tensor) -> torch.Tensor:  # (E, L, L) at one end of each edge
        d = torch.zeros(len(node), len(offsets), len(offsets), device=known.device)
        for band in values[:, node]:  # a band at a time: (E, L, L) held, not C times that
            d += (band[:, :, None] - band[:, None, :]) ** 2
        both = usable[node][:, :, None] & usable[node][:, None, :]
        return torch.where(both, d, _BROKEN)

    # A cut between two sources costs their disagreement over the detail across it there
    # (Kwatra et al. 2003: the gradient along the pair of pixels it separates). Plain
    # disagreement made cuts through flat areas nearly free, and the fill drew on the tile's
    # flattest content (bench.realism's forest: its ROI all shade). Along a line the detail
    # across the cut is small, so a cut that shifts the line stays dear: with the gradient's
    # full size there instead, a bar across a test hole came out doubled by a ghost segment
    # (tests/backend/test_offsets.py). The detail is that under both labels, their geometric
    # mean: a cut hides only in detail both sources have there. Kwatra sums them, and then
    # one source's edge pays for any cut beside it: bench.realism's overpass had its upper
    # barrier copied (along thrice the ramp's diagonal) onto the road beside the median, and
    # the sampler made a pale slab of it (seeds 0 and 1; the other edge of a line, where the
    # road went on flat, cost nothing).
    along_x, along_y = _gradient_energy(image)
    floor = _FLAT_CUT * float((along_x + along_y)[~hole[0, 0]].mean())
    at_x, at_y = along_x[sy, sx], along_y[sy, sx]  # (n, L)
    # (E, L, 1): both ends under the first label; transposed, under the second.
    detail = torch.where(across[:, None], at_x[first] + at_x[second], at_y[first] + at_y[second])
    detail = detail[:, :, None]
    pair = disagreement(first) + disagreement(second)
    pair *= floor / (floor + 2 * (detail * detail.transpose(1, 2)).sqrt_())  # one (E, L, L) held
    choice = _min_sum(unary, first, second, pair)
    filled = known.clone()
    filled[0][:, ys, xs] = values[:, torch.arange(len(ys), device=known.device), choice]
    unfilled = torch.zeros_like(hole[0, 0])
    unfilled[ys, xs] = ~usable[torch.arange(len(ys), device=known.device), choice]
    if bool(unfilled.any()):  # no offset reaches these pixels: grown in from their neighbours
        filled = _grow_into(filled, unfilled)
    return torch.where(hole, filled, known)


def _dominant_offsets(known, hole, patch: int, max_keys: int) -> torch.Tensor:
    """(L, 2) offsets (dy, dx), the strongest first: peaks of the histogram of the shifts from
    each patch outside the hole to its most similar patch at least a fifteenth of the image's
    size away (nearer ones are the patch's own blur), then their multiples."""
    h, w = known.shape[-2:]
    p = patch
    index = torch.nonzero(~patch_touches(hole, p)).flatten()
    if len(index) < 2:
        raise NoPatchesError
    index = index[spread(len(index), max_keys).to(index.device)]
    columns = F.unfold(known, p)[0].T[index]  # (K, C*p*p)
    grid = w - p + 1
    rows, cols = index // grid, index % grid
    queries = spread(len(index), _MAX_QUERIES).to(index.device)
    norms = (columns * columns).sum(1)
    near = (max(h, w) / 15) ** 2
    best = torch.empty(len(queries), dtype=torch.long, device=known.device)
    for i in range(0, len(queries), 512):
        q = queries[i : i + 512]
        d = torch.addmm(norms[None], columns[q], columns.T, alpha=-2.0)
        dy = rows[None] - rows[q, None]
        dx = cols[None] - cols[q, None]
        best[i : i + 512] = torch.where(dy * dy + dx * dx < near, torch.inf, d).argmin(1)
    dy, dx = rows[best] - rows[queries], cols[best] - cols[queries]
    counts = torch.zeros(2 * h - 1, 2 * w - 1, device=known.device)
    counts.index_put_((dy + h - 1, dx + w - 1), torch.ones_like(dy, dtype=counts.dtype), True)
    # Smoothed a little (a slanted line's shifts scatter by a pixel), peaks 3x3 local maxima.
    g = torch.exp(-(torch.arange(-3, 4.0, device=known.device) ** 2) / 2)
    g = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    smooth = F.conv2d(counts[None, None], g, padding=3)[0, 0]
    peak = (smooth == F.max_pool2d(smooth[None, None], 3, stride=1, padding=1)[0, 0]) & (smooth > 0)
    strength = torch.where(peak, smooth, 0.0).flatten()
    top = strength.topk(min(_PEAKS, int(peak.sum()))).indices
    base = torch.stack([top // (2 * w - 1) - (h - 1), top % (2 * w - 1) - (w - 1)], 1)
    score = strength[top]
    # Multiples, each as strong as its base over its factor; the strongest kept first.
    offsets = torch.cat([base * m for m in range(1, _MULTIPLES + 1)])
    scores = torch.cat([score / m for m in range(1, _MULTIPLES + 1)])
    inside = (offsets[:, 0].abs() < h) & (offsets[:, 1].abs() < w) & (offsets.abs().sum(1) > 0)
    offsets, scores = offsets[inside], scores[inside]
    offsets = offsets[scores.argsort(descending=True, stable=True)]
    unique, inverse = torch.unique(offsets, dim=0, return_inverse=True)
    first = torch.full((len(unique),), len(offsets), dtype=torch.long, device=known.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(offsets), device=known.device), "amin")
    offsets = unique[first.argsort()][:_MAX_LABELS]
    if len(offsets) == 0:
        raise NoPatchesError
    return offsets


def _usable(source_y, source_x, hole) -> torch.Tensor:
    """Whether each (pixel, label)'s source lies in the image, outside the hole."""
    h, w = hole.shape
    inside = (source_y >= 0) & (source_y < h) & (source_x >= 0) & (source_x < w)
    return inside & ~hole[source_y.clamp(0, h - 1), source_x.clamp(0, w - 1)]


def _boundary_cost(image, hole, ys, xs, offsets) -> torch.Tensor:
    """(n, L): for each hole pixel and label, how unlike the known pixels beside it their own
    sources under that label are: a label continues the surroundings where shifting them by
    it changes nothing."""
    h, w = hole.shape
    cost = torch.zeros(len(ys), len(offsets), device=image.device)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        ny, nx = ys + dy, xs + dx
        on = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        ny, nx = ny.clamp(0, h - 1), nx.clamp(0, w - 1)
        beside = on & ~hole[ny, nx]
        sy, sx = ny[:, None] + offsets[None, :, 0], nx[:, None] + offsets[None, :, 1]
        ok = _usable(sy, sx, hole)
        moved = image[:, sy.clamp(0, h - 1), sx.clamp(0, w - 1)]
        d = ((moved - image[:, ny, nx][:, :, None]) ** 2).sum(0)
        cost += torch.where(beside[:, None], torch.where(ok, d, _BROKEN), 0.0)
    return cost


def _hole_edges(hole, ys, xs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 4-neighbour pairs of hole pixels, as indices into (ys, xs), and whether each pair
    lies along x (side by side) rather than along y."""
    h, w = hole.shape
    number = torch.full((h, w), -1, dtype=torch.long, device=hole.device)
    number[ys, xs] = torch.arange(len(ys), device=hole.device)
    firsts, seconds, across = [], [], []
    for dy, dx in ((0, 1), (1, 0)):
        ny, nx = ys + dy, xs + dx
        on = (ny < h) & (nx < w)
        other = number[ny.clamp(max=h - 1), nx.clamp(max=w - 1)]
        keep = on & (other >= 0)
        firsts.append(torch.nonzero(keep).flatten())
        seconds.append(other[keep])
        across.append(torch.full((int(keep.sum()),), dx == 1, device=hole.device))
    return torch.cat(firsts), torch.cat(seconds), torch.cat(across)


def _min_sum(unary, first, second, pair) -> torch.Tensor:
    """Per node, the label of least belief after damped min-sum belief propagation over the
    edges (first[e], second[e]) with costs pair[e, label at first, label at second]."""
    to_second = torch.zeros(len(first), unary.shape[1], device=unary.device)
    to_first = torch.zeros_like(to_second)

    def beliefs() -> torch.Tensor:
        total = unary.clone()
        total.index_add_(0, second, to_second)
        total.index_add_(0, first, to_first)
        return total

    for _ in range(_ITERATIONS):
        total = beliefs()
        # Each end's belief without what the other end told it, carried across the edge.
        new_second = ((total[first] - to_first)[:, :, None] + pair).amin(1)
        new_first = ((total[second] - to_second)[:, None, :] + pair).amin(2)
        new_second -= new_second.amin(1, keepdim=True)
        new_first -= new_first.amin(1, keepdim=True)
        to_second = 0.5 * to_second + 0.5 * new_second
        to_first = 0.5 * to_first + 0.5 * new_first
    return beliefs().argmin(1)


def _gradient_energy(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w) each: the squared central differences of `image` (C, h, w) along x and along
    y, summed over bands; 0 on the border columns (along x) and rows (along y)."""
    gx = torch.zeros_like(image)
    gy = torch.zeros_like(image)
    gx[:, :, 1:-1] = (image[:, :, 2:] - image[:, :, :-2]) / 2
    gy[:, 1:-1] = (image[:, 2:] - image[:, :-2]) / 2
    return (gx * gx).sum(0), (gy * gy).sum(0)


def _grow_into(image: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """`image` (1, C, h, w) with the `missing` (h, w) pixels set, ring by ring from outside,
    to the mean of their known 3x3 neighbours."""
    image = image.clone()
    missing = missing.clone()
    while bool(missing.any()):
        have = (~missing)[None, None].float()
        total = F.avg_pool2d(F.pad(image * have, (1,) * 4), 3, stride=1)
        weight = F.avg_pool2d(F.pad(have, (1,) * 4), 3, stride=1)
        ring = missing & (weight[0, 0] > 0)
        if not bool(ring.any()):  # nothing known anywhere: leave the rest as it was
            break
        image = torch.where(ring, total / weight.clamp_min(1e-8), image)
        missing &= ~ring
    return image
