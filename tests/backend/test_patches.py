"""Fine scales assembled from the tile's own patches (backend/engine/patches.py), on small
synthetic textures: exact outside the ROI, only the tile's own colours inside (the realism
guard), sharp, never from nodata, deterministic, and reporting (and cancelling) progress."""

from __future__ import annotations

import dataclasses
import math

import pytest
import rasterio
import torch
import torch.nn.functional as F
from conftest import SHARED_IMAGERY
from rasterio.windows import Window

from rs_edit.engine.patches import (
    STAGE,
    PatchSettings,
    coarse_size,
    mask_at,
    patches_at,
    refine,
    resize,
    scale_sizes,
)
from rs_edit.engine.presets import PRESETS
from rs_edit.engine.quality import roi_swd_levels
from rs_edit.errors import CancelledError

SIZE = 64
# Blue, green, dark and teal in model range (-1..1): no red anywhere.
PALETTE = torch.tensor([[-0.6, -0.2, 0.6], [-0.5, 0.5, -0.4], [-0.8, -0.8, -0.8], [0.1, 0.3, 0.5]])
RED = torch.tensor([1.0, -1.0, -1.0])


def _settings_in_use() -> dict[str, PatchSettings]:
    """The module's defaults and what each preset that assembles detail from patches runs
    with, each once, named after who uses them (e.g. "default+tiny+fast")."""
    users: dict[PatchSettings, list[str]] = {PatchSettings(): ["default"]}
    for preset in PRESETS.values():
        if preset.detail == "patches":
            users.setdefault(preset.patches, []).append(preset.name)
    return {"+".join(names): settings for settings, names in users.items()}


SETTINGS = _settings_in_use()


def flat_blocks(size: int = SIZE, block: int = 8, seed: int = 0) -> torch.Tensor:
    """(1, 3, size, size): flat squares of the palette's colours, with sharp edges between."""
    gen = torch.Generator().manual_seed(seed)
    n = size // block
    index = torch.randint(0, len(PALETTE), (n, n), generator=gen)
    index = index.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return PALETTE[index].permute(2, 0, 1)[None].contiguous()


# The two colours of the high-frequency textures.
TWO = torch.tensor([[-0.6, -0.1, 0.5], [0.2, 0.6, -0.3]])


def two_colours(on: torch.Tensor, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """(1, 3, h, w): TWO[1] where `on` (h, w) is 1, TWO[0] elsewhere, plus Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    image = TWO[0].view(3, 1, 1) * (1 - on) + TWO[1].view(3, 1, 1) * on
    return (image + noise * torch.randn(image.shape, generator=gen))[None].contiguous()


def random_checker(size: int = SIZE, cell: int = 2, seed: int = 0) -> torch.Tensor:
    """Two colours in random cells of `cell` px (1-2 px: all of it is fine detail)."""
    gen = torch.Generator().manual_seed(seed)
    n = size // cell
    on = torch.randint(0, 2, (n, n), generator=gen).float()
    return two_colours(on.repeat_interleave(cell, 0).repeat_interleave(cell, 1))


def checkerboard(size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """A 1 px checkerboard with a little noise: patches pasted out of phase cancel to grey."""
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return two_colours(((rows + cols) % 2).float(), noise=0.03, seed=seed)


def square_mask(size: int = SIZE, lo: int = 20, hi: int = 44) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., lo:hi, lo:hi] = True
    return mask


def roi_pixels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C): the pixels of x (1, C, H, W) where mask (1, 1, H, W) is true."""
    return x[0][:, mask[0, 0]].T


def detail(x: torch.Tensor, region: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels (both in `region`): high-frequency
    energy, near zero for anything smooth or blurred."""
    region = region[0, 0]
    dx = (x[0, :, :, 1:] - x[0, :, :, :-1]).abs().mean(0)
    dy = (x[0, :, 1:, :] - x[0, :, :-1, :]).abs().mean(0)
    in_x = region[:, 1:] & region[:, :-1]
    in_y = region[1:, :] & region[:-1, :]
    return float((dx[in_x].sum() + dy[in_y].sum()) / (in_x.sum() + in_y.sum()))


def coarse_of(image: torch.Tensor, side: int = 32) -> torch.Tensor:
    return resize(image, coarse_size(*image.shape[-2:], side))


# --- outside the ROI -------------------------------------------------------------------------


@pytest.mark.parametrize("bands, height, width", [(3, 64, 64), (4, 48, 72)])
def test_outside_the_mask_the_result_is_the_image_exactly(bands, height, width):
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(1, bands, height, width, generator=gen) * 2 - 1
    mask = torch.zeros(1, 1, height, width, dtype=torch.bool)
    mask[..., 10:30, 25:50] = True
    mask[..., 40:44, 5:9] = True  # a second, small part
    # A coarse guess unlike the tile, so that anything leaking out of the ROI would show.
    coarse = torch.rand(1, bands, *coarse_size(height, width, 24), generator=gen) * 2 - 1

    out = refine(coarse, image, mask)

    assert out.shape == image.shape and out.dtype == torch.float32
    outside = ~mask.expand_as(image)
    assert torch.equal(out[outside], image[outside])
    assert torch.isfinite(out).all()
    # ...and the ROI was regenerated, not left as it was.
    assert not torch.equal(out[~outside], image[~outside])


# --- the realism guard -----------------------------------------------------------------------


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("seed", [0, 3])
def test_a_red_coarse_guess_does_not_survive(settings, seed):
    # A coarse edit that paints the ROI a colour the tile does not contain (pure red on a blue,
    # green and dark texture) comes out made of the tile's own colours.
    image = flat_blocks(seed=seed)
    mask = square_mask()
    size = coarse_size(SIZE, SIZE, 32)
    coarse = torch.where(mask_at(mask, size), RED.view(1, 3, 1, 1), resize(image, size))

    out = refine(coarse, image, mask, settings)
    roi = roi_pixels(out, mask)
    upsampled = roi_pixels(resize(coarse, (SIZE, SIZE)), mask)

    # Every ROI pixel is an average of source pixels: inside their per-band range.
    source = roi_pixels(image, ~mask)
    assert (roi >= source.min(0).values - 1e-5).all() and (roi <= source.max(0).values + 1e-5).all()
    # Nothing is red or even close to it...
    assert (roi - RED).norm(dim=1).min() > 1.0
    assert roi[:, 0].max() <= PALETTE[:, 0].max() + 1e-5
    # ...and the pixels are the palette's colours (not blends of them).
    near_palette = torch.cdist(roi, PALETTE).min(1).values < 0.2
    assert near_palette.float().mean() > 0.9
    # The plain upsampled guess, by contrast, is red.
    assert (torch.cdist(upsampled, PALETTE).min(1).values < 0.2).float().mean() < 0.05
    assert ((upsampled - RED).norm(dim=1) < 0.1).float().mean() > 0.7


# --- sharpness -------------------------------------------------------------------------------


TEXTURES = {
    "random 2 px": lambda seed: random_checker(cell=2, seed=seed),
    "random 1 px": lambda seed: random_checker(cell=1, seed=seed),
    "checkerboard 1 px": lambda seed: checkerboard(seed=seed),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("texture", TEXTURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_detail_is_as_sharp_as_the_tile(settings, texture, seed):
    image = TEXTURES[texture](seed)
    mask = square_mask()
    coarse = coarse_of(image)  # 32x32: the 1-2 px detail is gone at this scale

    out = refine(coarse, image, mask, settings)
    bilinear = resize(coarse, (SIZE, SIZE))

    reference = detail(image, ~mask)
    assert reference > 0.1
    # 0.7, not 1: one pass per scale cannot always tell the phase of a 1 px checkerboard from
    # its blurred version (0.72 measured; a second, sharp pass gives 0.9 but makes real tiles
    # smoother, see PatchSettings.passes). Bilinear upsampling gives under 0.5.
    assert detail(out, mask) >= 0.7 * reference
    assert detail(bilinear, mask) < 0.5 * reference  # what upsampling alone gives
    # The ROI's pixels are the texture's two colours, not grey averages of them (which is what
    # patches pasted out of phase average to).
    near = torch.cdist(roi_pixels(out, mask), TWO).min(1).values < 0.15
    assert near.float().mean() > 0.85


# --- nodata ----------------------------------------------------------------------------------


def nodata_case():
    """A texture with a nodata (+1 in every band) block outside the ROI, next to it, and a
    coarse guess of +1 in the ROI: without `invalid`, nodata patches are the nearest ones."""
    image = random_checker(cell=2, seed=3)
    mask = square_mask()
    invalid = torch.zeros_like(mask)
    invalid[..., 4:20, 4:28] = True  # touches the ROI's top edge
    invalid[..., 50:60, 50:60] = True
    image = torch.where(invalid, torch.ones(()), image)
    size = coarse_size(SIZE, SIZE, 32)
    coarse = torch.where(mask_at(mask, size), torch.ones(()), resize(image, size))
    return coarse, image, mask, invalid


def nodata_like(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels > 0.95).all(1)


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_invalid_pixels_are_never_copied(settings):
    coarse, image, mask, invalid = nodata_case()

    out = refine(coarse, image, mask, settings, invalid=invalid)
    roi = roi_pixels(out, mask)
    valid = roi_pixels(image, ~(mask | invalid))
    assert not nodata_like(roi).any()
    assert (roi <= valid.max(0).values + 1e-5).all()
    # Outside the ROI, nodata stays as it was.
    assert torch.equal(out[~mask.expand_as(out)], image[~mask.expand_as(image)])

    # The control: without `invalid` the same call does copy the nodata value.
    unguarded = roi_pixels(refine(coarse, image, mask, settings), mask)
    assert nodata_like(unguarded).float().mean() > 0.2


def test_invalid_pixels_are_never_copied_even_when_few_patches_are_left():
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, SIZE, SIZE, generator=gen) * 1.2 - 0.8
    invalid = torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool)
    invalid[..., :, :30] = True
    image = torch.where(invalid, torch.ones(()), image)
    mask = torch.zeros_like(invalid)
    mask[..., :, 30:62] = True  # two valid columns are left: no whole 7x7 patch
    coarse = torch.full((1, 3, 32, 32), 0.9)

    out = refine(coarse, image, mask, invalid=invalid)
    assert not nodata_like(roi_pixels(out, mask)).any()


# --- scales ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "coarse, fine, factor",
    [
        ((32, 32), (64, 64), 4 / 3),
        ((64, 64), (256, 256), 4 / 3),
        ((64, 213), (300, 1000), 4 / 3),
        ((48, 72), (401, 600), 4 / 3),
        ((9, 12), (200, 260), 4 / 3),
        ((64, 64), (65, 65), 4 / 3),
        ((80, 80), (1024, 1024), 2.0),
    ],
)
def test_scale_sizes_go_from_coarse_to_fine_about_factor_apart(coarse, fine, factor):
    sizes = scale_sizes(coarse, fine, factor)
    assert sizes[0] == coarse and sizes[-1] == fine
    for a, b in zip(sizes, sizes[1:], strict=False):
        assert b[0] >= a[0] and b[1] >= a[1] and b != a, sizes
        assert max(b[0] / a[0], b[1] / a[1]) <= factor * 1.05, sizes
    # No more scales than the ratio needs.
    ratio = max(fine[0] / coarse[0], fine[1] / coarse[1])
    assert len(sizes) - 1 <= math.ceil(math.log(ratio) / math.log(factor)) + 1e-9


def test_scale_sizes_of_one_size_is_that_size():
    assert scale_sizes((48, 48), (48, 48), 4 / 3) == [(48, 48)]


@pytest.mark.parametrize(
    "height, width, side, expected",
    [
        (512, 256, 64, (128, 64)),
        (256, 512, 64, (64, 128)),
        (300, 1000, 64, (64, 213)),
        (64, 64, 64, (64, 64)),
        (50, 40, 64, (50, 40)),  # small tiles keep their size
        (20, 900, 64, (20, 900)),
    ],
)
def test_coarse_size_keeps_the_aspect(height, width, side, expected):
    h, w = coarse_size(height, width, side)
    assert (h, w) == expected
    assert min(h, w) == min(side, height, width)
    assert abs(h / w - height / width) <= (height / width) / min(h, w)


def test_mask_at_marks_every_cell_an_roi_pixel_falls_in():
    mask = torch.zeros(1, 1, 64, 64, dtype=torch.bool)
    mask[..., 10, 17] = True  # a single pixel
    small = mask_at(mask, (32, 32))
    assert small.shape == (1, 1, 32, 32) and small.dtype == torch.bool
    assert small.sum() == 1 and small[0, 0, 5, 8]
    assert torch.equal(mask_at(mask, (64, 64)), mask)


# --- progress, cancelling, determinism --------------------------------------------------------


def test_progress_counts_up_to_the_total():
    image = random_checker(seed=4)
    mask = square_mask()
    calls = []

    def progress(stage, step, total, loss=None):
        calls.append((stage, step, total))

    refine(coarse_of(image), image, mask, progress=progress)

    assert len(calls) >= 3
    assert {stage for stage, _, _ in calls} == {STAGE}
    totals = {total for _, _, total in calls}
    assert len(totals) == 1
    total = totals.pop()
    steps = [step for _, step, _ in calls]
    assert steps[0] == 0 and steps[-1] == total > 0
    assert all(b >= a for a, b in zip(steps, steps[1:], strict=False)), steps
    assert all(0 <= s <= total for s in steps)


def test_a_callback_that_raises_cancelled_stops_refine():
    image = random_checker(seed=4)
    mask = square_mask()
    steps = []

    def progress(stage, step, total, loss=None):
        steps.append(step)
        if step >= 2:
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        refine(coarse_of(image), image, mask, progress=progress)
    assert steps[-1] == 2  # nothing ran on after the callback raised


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_same_inputs_and_seed_same_result(settings):
    image = flat_blocks(seed=1)
    mask = square_mask()
    coarse = coarse_of(image)
    first = refine(coarse, image, mask, settings, seed=7)
    again = refine(coarse.clone(), image.clone(), mask.clone(), settings, seed=7)
    assert torch.equal(first, again)
    if settings.coarse_noise > 0:  # the seed is what varies the noise
        assert not torch.equal(first, refine(coarse, image, mask, settings, seed=8))


@pytest.mark.skipif(not SHARED_IMAGERY.is_dir(), reason="needs ../shared/data/imagery")
def test_sharpened_queries_keep_a_real_canopy_textured():
    """A real forest tile, its ROI rebuilt from its own downscaled copy (the true layout): a
    blurred mosaic of pixels from many places looks smoother than the tile's blurry patches,
    so plain matching drifts to smooth sources scale by scale. Sharpening the query keeps the
    canopy's crowns and shadows (the 2 px realism level) and its detail energy."""
    with rasterio.open(SHARED_IMAGERY / "keras-rs-retrieval__forest03.tif") as src:
        pixels = src.read(window=Window(0, 0, 192, 192)).astype("float32")
    image = torch.from_numpy(pixels / 127.5 - 1)[None]
    yy, xx = torch.meshgrid(torch.arange(192), torch.arange(192), indexing="ij")
    mask = (((yy - 96) / 44) ** 2 + ((xx - 96) / 52) ** 2 <= 1)[None, None]
    coarse = coarse_of(image, 48)

    def worst_detail_level(settings: PatchSettings) -> float:
        out = refine(coarse, image, mask, settings, seed=1)
        return max(roi_swd_levels(out[0], image[0], mask[0, 0])[1:4])  # 1, 2, 4 px

    plain = worst_detail_level(PatchSettings(query_sharpen=0.0))
    sharpened = worst_detail_level(PatchSettings())
    assert sharpened < 0.8 * plain, (sharpened, plain)
    assert sharpened < 1.4  # 1.73 plain, 1.16 sharpened when written


# --- coherence ---------------------------------------------------------------------------


def test_patches_at_cuts_what_unfold_cuts():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 20, 17, generator=gen)
    flat = torch.tensor([0, 5, 37, 14 * 11 - 1])  # grid of 5 px patches: 16 x 13
    expected = F.unfold(image, 5)[0].T[flat]
    assert torch.equal(patches_at(image, flat, 5), expected)


@pytest.mark.parametrize("with_pools", [False, True])
def test_the_nearest_key_is_the_one_at_the_least_cost(with_pools):
    """`_nearest` without completeness orders keys by a shortcut (no query norm, no mean):
    it must pick what the full cost (mean squared distance plus the pool cost) picks."""
    from rs_edit.engine.patches import _nearest, _PoolCost

    gen = torch.Generator().manual_seed(1)
    queries, keys = torch.randn(300, 27, generator=gen), torch.randn(500, 27, generator=gen)
    pools = _PoolCost(350, torch.rand(300, generator=gen)) if with_pools else None
    full = ((queries[:, None] - keys[None]) ** 2).mean(2)
    if with_pools:
        full[:, :350] += pools.tile_cost
        full[:, 350:] += pools.example_cost
    expected = full.argmin(1)
    picked = _nearest(queries, keys, 64, 0.0, pools)
    # Rounding may split a near tie either way; then both keys cost the same.
    chosen = full.gather(1, picked[:, None])[:, 0]
    assert torch.allclose(chosen, full.gather(1, expected[:, None])[:, 0], atol=1e-5)
    assert (picked == expected).float().mean() > 0.99


def test_a_full_or_no_share_closes_the_other_pool():
    """Where the example's share is 1 only its keys may be picked, however much nearer a
    tile key lies (and where it is 0 only the tile's), and each query searching only its open
    pools picks what the full cost picks."""
    from rs_edit.engine.patches import _nearest, _PoolCost

    gen = torch.Generator().manual_seed(2)
    queries, keys = torch.randn(300, 27, generator=gen), torch.randn(500, 27, generator=gen)
    keys[350:] += 3.0  # the example's keys far from every query: the tile's would win
    share = torch.rand(300, generator=gen)
    share[:100], share[100:150] = 1.0, 0.0
    pools = _PoolCost(350, share)
    picked = _nearest(queries, keys, 64, 0.0, pools)
    assert bool((picked[:100] >= 350).all())
    assert bool((picked[100:150] < 350).all())
    full = ((queries[:, None] - keys[None]) ** 2).mean(2)
    full[:, :350] += pools.tile_cost
    full[:, 350:] += pools.example_cost
    chosen = full.gather(1, picked[:, None])[:, 0]
    assert torch.allclose(chosen, full.min(1).values, atol=1e-5)


def _adjacent_in_source(result: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> float:
    """Of the neighbouring ROI pixel pairs (side by side or one above the other), the
    fraction that are such neighbours in the tile too (every pixel of `image` is unique, so
    its value says where it came from)."""
    width = image.shape[-1]
    codes = image[0, 0] * 1e3 + image[0, 1]
    where = {float(v): i for i, v in enumerate(codes.flatten().tolist())}
    origin = [
        [where.get(float(v), -(10**9)) for v in row]
        for row in (result[0, 0] * 1e3 + result[0, 1]).tolist()
    ]
    region = mask[0, 0]
    pairs = kept = 0
    for step, (dr, dc) in ((1, (0, 1)), (width, (1, 0))):
        both = region[: region.shape[0] - dr, : region.shape[1] - dc] & region[dr:, dc:]
        for r, c in torch.nonzero(both).tolist():
            pairs += 1
            kept += origin[r + dr][c + dc] - origin[r][c] == step
    return kept / pairs


@pytest.mark.parametrize("seed", [0, 1])
def test_coherence_keeps_neighbours_together(seed):
    """A noise tile (every patch about equally unlike every other): plain nearest neighbours
    make the ROI a mosaic of pixels from all over; with coherence, runs of neighbouring
    pixels come from one place, as an object would."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1
    guess = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1  # a ROI unlike any of it
    mask = square_mask(96, 40, 60)
    # One pass at one scale, exact votes (each pixel from its own patch's centre).
    base = PatchSettings(
        coarse_passes=1, coarse_noise=0.0, vote_sigma=0.05, completeness=0.0, query_sharpen=0.0
    )
    plain = refine(guess, image, mask, dataclasses.replace(base, coherence=0.0), seed=seed)
    coherent = refine(guess, image, mask, dataclasses.replace(base, coherence=1.0), seed=seed)
    together, apart = (
        _adjacent_in_source(coherent, image, mask),
        _adjacent_in_source(plain, image, mask),
    )
    assert together > 1.6 * apart
    assert torch.equal(coherent[~mask.expand_as(image)], image[~mask.expand_as(image)])


@pytest.mark.parametrize("seed", [0, 1])
def test_coherence_keeps_an_examples_neighbours_together(seed):
    """As on the tile: where the example's share is full, runs of neighbouring pixels come
    from one place of the example (a boat's deck holds together), not a mosaic of it."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1
    example = torch.rand(1, 3, 80, 80, generator=gen) * 2 - 1
    guess = torch.rand(1, 3, 96, 96, generator=gen) * 2 - 1
    mask = square_mask(96, 30, 66)
    deep = square_mask(96, 38, 58)  # past the share's ramp
    base = PatchSettings(
        coarse_passes=1, coarse_noise=0.0, vote_sigma=0.05, completeness=0.0, query_sharpen=0.0
    )
    pair = (example, torch.zeros(1, 1, 80, 80, dtype=torch.bool))

    def run(coherence: float) -> torch.Tensor:
        settings = dataclasses.replace(base, coherence=coherence)
        return refine(
            guess, image, mask, settings, seed=seed, example=pair, example_weight=1.0,
            example_ramp=1,
        )  # fmt: skip

    plain, coherent = run(0.0), run(1.0)
    together = _adjacent_in_source(coherent, example, deep)
    apart = _adjacent_in_source(plain, example, deep)
    assert together > 1.6 * apart and together > 0.3, (together, apart)
    assert torch.equal(coherent[~mask.expand_as(image)], image[~mask.expand_as(image)])


def test_coherence_does_not_carry_the_tile_into_an_examples_share():
    """Where the example's share is full, only its patches may win: a coherent run of the
    tile's patches must not continue in from the ROI's edge."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 64, 64, generator=gen) * 0.5 + 0.5  # the tile: bright
    example = torch.rand(1, 3, 64, 64, generator=gen) * 0.5 - 1.0  # the example: dark
    mask = square_mask(64, 16, 48)
    settings = PatchSettings(coherence=4.0, coarse_noise=0.0)
    coarse = resize(image, (32, 32))
    out = refine(
        coarse, image, mask, settings,
        example=(example, torch.zeros(1, 1, 64, 64, dtype=torch.bool)), example_weight=1.0,
        example_ramp=1,
    )  # fmt: skip
    deep = square_mask(64, 26, 38)  # well past the share's ramp and a patch's reach
    assert (roi_pixels(out, deep) < 0).all()  # all from the example
    outside = ~mask.expand_as(image)
    assert torch.equal(out[outside], image[outside])
