"""The training-free patch-diffusion sampler (backend/engine/patch_diffusion.py), on small
synthetic tiles: exact outside the ROI, made of the tile's own colours and texture inside, never
from nodata, deterministic per seed, steerable by a guide, and reporting (and cancelling)
progress."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from rs_edit.engine.patch_diffusion import (
    STAGE,
    PatchDiffusionSettings,
    context_fill,
    noise_levels,
    sample,
)
from rs_edit.errors import CancelledError


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Many small ops: on a busy shared CPU, intra-op threads cost more than they save."""


SIZE = 32
# Blue, green, dark and teal in model range (-1..1): no red anywhere.
PALETTE = torch.tensor([[-0.6, -0.2, 0.6], [-0.5, 0.5, -0.4], [-0.8, -0.8, -0.8], [0.1, 0.3, 0.5]])
RED = torch.tensor([1.0, -1.0, -1.0])
# The two colours of the fine texture, and a flat colour unlike both.
TWO = torch.tensor([[-0.6, -0.1, 0.5], [0.2, 0.6, -0.3]])
FLAT = torch.tensor([0.7, 0.4, -0.6])


def flat_blocks(size: int = SIZE, block: int = 8, seed: int = 0) -> torch.Tensor:
    """(1, 3, size, size): flat squares of the palette's colours, with sharp edges between."""
    gen = torch.Generator().manual_seed(seed)
    n = size // block
    index = torch.randint(0, len(PALETTE), (n, n), generator=gen)
    index = index.repeat_interleave(block, 0).repeat_interleave(block, 1)
    return PALETTE[index].permute(2, 0, 1)[None].contiguous()


def checker_on(size: int = SIZE, cell: int = 2, seed: int = 0) -> torch.Tensor:
    """(size, size) of 0/1 in random cells of `cell` px."""
    gen = torch.Generator().manual_seed(seed)
    n = size // cell
    on = torch.randint(0, 2, (n, n), generator=gen).float()
    return on.repeat_interleave(cell, 0).repeat_interleave(cell, 1)


def two_colours(on: torch.Tensor) -> torch.Tensor:
    """(1, 3, h, w): TWO[1] where `on` (h, w) is 1, TWO[0] elsewhere."""
    return (TWO[0].view(3, 1, 1) * (1 - on) + TWO[1].view(3, 1, 1) * on)[None].contiguous()


def box(lo: tuple[int, int], hi: tuple[int, int], size: int = SIZE) -> torch.Tensor:
    """(1, 1, size, size) boolean, true in rows lo[0]:hi[0] and columns lo[1]:hi[1]."""
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[..., lo[0] : hi[0], lo[1] : hi[1]] = True
    return mask


def square_roi(size: int = SIZE) -> torch.Tensor:
    return box((10, 10), (22, 22), size)


def roi_pixels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, C): the pixels of x (1, C, H, W) where mask (1, 1, H, W) is true."""
    return x[0][:, mask[0, 0]].T


def detail(x: torch.Tensor, region: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels (both in `region`): high-frequency
    energy, zero for a flat fill."""
    region = region[0, 0]
    dx = (x[0, :, :, 1:] - x[0, :, :, :-1]).abs().mean(0)
    dy = (x[0, :, 1:, :] - x[0, :, :-1, :]).abs().mean(0)
    in_x = region[:, 1:] & region[:, :-1]
    in_y = region[1:, :] & region[:-1, :]
    return float((dx[in_x].sum() + dy[in_y].sum()) / (in_x.sum() + in_y.sum()))


def share_near(pixels: torch.Tensor, colours: torch.Tensor, tol: float = 0.05) -> float:
    """The share of `pixels` (N, C) within `tol` of one of `colours` (K, C)."""
    # Exact differences: cdist's matrix-product shortcut is off by ~1e-4 on some CPUs, more than
    # the 1e-6 a test asks of the tile's own pixels.
    distance = torch.cdist(pixels, colours, compute_mode="donot_use_mm_for_euclid_dist")
    return float((distance.min(1).values < tol).float().mean())


# --- outside and inside the ROI --------------------------------------------------------------


@pytest.mark.parametrize("bands, height, width", [(3, 32, 32), (4, 24, 40)])
def test_outside_the_roi_the_result_is_known_exactly(bands, height, width):
    gen = torch.Generator().manual_seed(1)
    known = torch.rand(1, bands, height, width, generator=gen) * 2 - 1
    known[..., 0, 0] = 1.5  # out of range outside the ROI: kept as it is, not clamped
    roi = torch.zeros(1, 1, height, width, dtype=torch.bool)
    roi[..., 6:16, 12:30] = True
    roi[..., 19:22, 3:6] = True  # a second, small part
    invalid = torch.zeros_like(roi)
    invalid[..., -4:, -4:] = True

    out = sample(known, roi, invalid=invalid, seed=3)

    assert out.shape == known.shape and out.dtype == torch.float32
    outside = ~roi.expand_as(known)
    assert torch.equal(out[outside], known[outside])
    inside = out[~outside]
    assert torch.isfinite(inside).all()
    assert inside.min() >= -1 and inside.max() <= 1
    # ...and the ROI was regenerated, not left as it was.
    assert not torch.equal(inside, known[~outside])


def test_an_empty_roi_returns_known():
    known = flat_blocks()
    out = sample(known, torch.zeros(1, 1, SIZE, SIZE, dtype=torch.bool))
    assert torch.equal(out, known)


def test_the_inputs_are_not_modified():
    known, roi = flat_blocks(seed=2), square_roi()
    invalid = box((0, 0), (4, 32))
    copies = known.clone(), roi.clone(), invalid.clone()
    sample(known, roi, invalid=invalid)
    assert all(torch.equal(a, b) for a, b in zip((known, roi, invalid), copies, strict=True))


# --- made of the tile's own patches -----------------------------------------------------------


TILES = {
    # Flat squares of four colours (sharp edges between them).
    "blocks": lambda seed: (flat_blocks(seed=seed), PALETTE),
    # Two colours in random 2 px cells: all of it is fine detail.
    "checker 2 px": lambda seed: (two_colours(checker_on(seed=seed)), TWO),
}


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_pixels_stay_within_the_source_range(tile, seed):
    known, _ = TILES[tile](seed)
    roi = square_roi()
    out = sample(known, roi, seed=seed)
    pixels, source = roi_pixels(out, roi), roi_pixels(known, ~roi)
    assert (pixels >= source.min(0).values - 1e-5).all()
    assert (pixels <= source.max(0).values + 1e-5).all()


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roi_pixels_are_source_colours_not_blends(tile, seed):
    # At sigma_min (0.01) every clean estimate is one real patch of the tile, so the ROI is made
    # of the tile's own colours: a pixel halfway between two of them (an average of patches
    # that disagree) is a colour the tile does not have.
    known, colours = TILES[tile](seed)
    roi = square_roi()
    assert share_near(roi_pixels(known, ~roi), colours, 1e-6) == 1.0  # the tile is only those

    out = sample(known, roi, seed=seed)
    pixels = roi_pixels(out, roi)
    assert share_near(pixels, colours) >= 0.95, f"{1 - share_near(pixels, colours):.0%} blends"


def test_an_roi_in_a_textured_part_takes_the_texture_not_a_flat_colour():
    # Left part: a fine two-colour texture; right part: one flat colour. An ROI inside the
    # textured part continues the texture: fine detail and colour variance comparable to the
    # texture around it (the tile's mean, or the flat part, would have none of either).
    columns = torch.arange(SIZE).expand(SIZE, SIZE)
    left = (columns < 22)[None, None]
    known = torch.where(left, two_colours(checker_on(seed=5)), FLAT.view(1, 3, 1, 1))
    roi = box((8, 3), (24, 13))
    texture = left & ~roi
    for seed in (0, 1):
        out = sample(known, roi, seed=seed)
        pixels = roi_pixels(out, roi)
        assert detail(out, roi) >= 0.6 * detail(known, texture)
        assert pixels.var(0).sum() >= 0.5 * roi_pixels(known, texture).var(0).sum()
        # Mostly the texture (a patch or two of the flat part is the tile's variety).
        assert share_near(pixels, FLAT[None], 0.2) < 0.5


# --- a start anchored on the surroundings -----------------------------------------------------


def test_context_fill_continues_each_side_into_the_hole_and_keeps_the_rest():
    columns = torch.arange(SIZE).float().expand(SIZE, SIZE)
    known = torch.where(columns < SIZE / 2, -1.0, 1.0).expand(1, 3, SIZE, SIZE).clone()
    hole = box((8, 6), (24, 26))
    known[hole.expand_as(known)] = 5.0  # what the hole held must not leak into the fill
    filled = context_fill(known, hole)
    assert torch.equal(filled[~hole.expand_as(known)], known[~hole.expand_as(known)])
    row = filled[0, 0, 16, 6:26]
    assert row.abs().max() <= 1.0
    assert row[0] < -0.8 and row[-1] > 0.8, row
    assert bool((row[1:] >= row[:-1] - 1e-6).all()), "from the left side's value to the right's"


def test_an_anchored_start_continues_the_surroundings_more_than_a_start_from_noise():
    # A textured band on the left; the rest, the commonest content by far, one flat colour. The
    # ROI fills most of the band. From noise the sampler falls mostly to the flat colour (the
    # cut the realism benchmark found: a box of sea in the land); anchored on the ROI's
    # surroundings, clearly less of it.
    columns = torch.arange(SIZE).expand(SIZE, SIZE)
    left = (columns < 20)[None, None]
    known = torch.where(left, two_colours(checker_on(seed=7)), FLAT.view(1, 3, 1, 1))
    roi = box((3, 2), (29, 16))

    def flat_share(anchor):
        shares = []
        for seed in range(4):
            out = sample(known, roi, seed=seed, anchor=anchor)
            assert torch.equal(out[~roi.expand_as(out)], known[~roi.expand_as(known)])
            shares.append(share_near(roi_pixels(out, roi), FLAT[None], 0.2))
        return sum(shares) / len(shares)

    from_noise, anchored = flat_share(None), flat_share(0.6)
    assert anchored < from_noise - 0.1, (anchored, from_noise)


def test_an_anchored_start_skips_the_noise_levels_above_the_anchor():
    # From noise the walk takes every step; anchored at 0.3 it starts at the first level at or
    # below 0.3, so it takes only the steps from there (and still yields the tile's colours).
    known, roi = flat_blocks(seed=2), square_roi()
    settings = PatchDiffusionSettings(steps=10)
    levels = noise_levels(settings).tolist()

    def denoising_steps(anchor):
        steps = []
        out = sample(
            known, roi, settings, seed=4, anchor=anchor,
            progress=lambda stage, step, total, *rest: steps.append(step),
        )  # fmt: skip
        assert share_near(roi_pixels(out, roi), PALETTE) >= 0.95
        return len([s for s in steps if s > 0])

    first = next(i for i, s in enumerate(levels) if s <= 0.3)
    assert first > 0
    assert denoising_steps(None) == settings.steps
    assert denoising_steps(0.3) == settings.steps - first
    assert denoising_steps(settings.sigma_max) == settings.steps


def test_sharper_posteriors_keep_a_tiles_rarer_content():
    # Bright 3 px squares on a noisy dark ground (11-12 % of the tile), drawn nearly whole:
    # plain posteriors, each blind to the evidence of the patches overlapping it, drift to the
    # commonest content (7-10 % bright); sharper ones keep the squares (14-19 %).
    size, bright = 48, FLAT.view(3, 1, 1)
    roi = box((2, 0), (size, size), size)

    def bright_share(sharpen: float) -> float:
        shares = []
        for seed in range(3):
            gen = torch.Generator().manual_seed(seed)
            dark = TWO[0].view(3, 1, 1) + 0.08 * torch.randn(3, size, size, generator=gen)
            on = torch.zeros(size, size, dtype=torch.bool)
            for y, x in torch.randint(0, size - 3, (30, 2), generator=gen).tolist():
                on[y : y + 3, x : x + 3] = True
            known = torch.where(on, bright, dark)[None]
            settings = replace(PatchDiffusionSettings(), sharpen=sharpen)
            out = sample(known, roi, settings, seed=seed)
            shares.append(share_near(roi_pixels(out, roi), FLAT[None], tol=0.15))
        return sum(shares) / len(shares)

    assert PatchDiffusionSettings().sharpen == 1.0  # plain by default
    plain, sharper = bright_share(1.0), bright_share(3.0)
    assert sharper > 1.4 * plain, (plain, sharper)


# --- nodata ----------------------------------------------------------------------------------


def nodata_case():
    """Flat blocks whose left part is nodata holding a colour found nowhere else (red), and an
    ROI that overlaps it: without `invalid`, the ROI continues the red next to it."""
    invalid = box((0, 0), (SIZE, 12))
    known = torch.where(invalid, RED.view(1, 3, 1, 1), flat_blocks(seed=0))
    return known, box((8, 6), (24, 20)), invalid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invalid_pixels_are_never_a_source(seed):
    known, roi, invalid = nodata_case()

    out = sample(known, roi, invalid=invalid, seed=seed)
    pixels = roi_pixels(out, roi)
    # Nothing red, nor any blend with red (which would raise the first band above the
    # palette's largest): every ROI pixel is made of valid pixels only.
    assert pixels[:, 0].max() <= PALETTE[:, 0].max() + 1e-5
    assert (pixels - RED).norm(dim=1).min() > 1.0
    # Outside the ROI, nodata stays as it was.
    outside = ~roi.expand_as(known)
    assert torch.equal(out[outside], known[outside])

    # The control: without `invalid` the same call does copy the red.
    unguarded = roi_pixels(sample(known, roi, seed=seed), roi)
    assert ((unguarded - RED).norm(dim=1) < 0.1).float().mean() > 0.2


def test_without_any_usable_patch_the_roi_is_the_mean_of_the_valid_pixels():
    # Every 4th column is nodata, so every 5x5 patch touches nodata; the ROI is every other
    # pixel. Nothing of the tile may be copied: the best estimate is the valid pixels' mean.
    gen = torch.Generator().manual_seed(0)
    known = torch.rand(1, 3, 16, 20, generator=gen) * 2 - 1
    invalid = torch.zeros(1, 1, 16, 20, dtype=torch.bool)
    invalid[..., ::4] = True
    known = torch.where(invalid, torch.full((), 0.9), known)
    roi = ~invalid
    assert PatchDiffusionSettings().patch == 5

    out = sample(known, roi, invalid=invalid, seed=1)

    mean = roi_pixels(known, ~invalid).mean(0)
    assert torch.allclose(roi_pixels(out, roi), mean.expand(int(roi.sum()), 3), atol=1e-6)
    assert torch.equal(out[~roi.expand_as(known)], known[~roi.expand_as(known)])


def test_an_image_smaller_than_a_patch_uses_patches_of_its_size():
    """A raster of a few pixels (a user's 4x4 GeoTIFF) is edited, not an internal error."""
    gen = torch.Generator().manual_seed(0)
    for height, width in [(4, 4), (4, 32), (32, 3)]:
        known = torch.rand(1, 3, height, width, generator=gen) * 2 - 1
        roi = torch.zeros(1, 1, height, width, dtype=torch.bool)
        roi[..., height // 2 :, width // 2 :] = True
        out = sample(known, roi, seed=1)
        assert out.shape == known.shape and torch.isfinite(out).all()
        assert torch.equal(out[~roi.expand_as(out)], known[~roi.expand_as(known)])
        assert out.abs().max() <= 1


# --- noise levels ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        PatchDiffusionSettings(),
        PatchDiffusionSettings(steps=5, sigma_max=3.0, sigma_min=0.05, rho=3.0),
        PatchDiffusionSettings(steps=2),
    ],
)
def test_noise_levels_decrease_from_sigma_max_to_zero(settings):
    sigmas = noise_levels(settings)
    assert sigmas.shape == (settings.steps + 1,)
    assert float(sigmas[0]) == pytest.approx(settings.sigma_max, rel=1e-5)
    assert float(sigmas[-2]) == pytest.approx(settings.sigma_min, rel=1e-4)
    assert float(sigmas[-1]) == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all(), sigmas


# --- determinism -----------------------------------------------------------------------------


def test_same_seed_same_result_other_seed_other_roi():
    known, roi = flat_blocks(seed=1), square_roi()
    invalid = box((0, 0), (3, 32))
    first = sample(known, roi, invalid=invalid, seed=7)
    again = sample(known.clone(), roi.clone(), invalid=invalid.clone(), seed=7)
    assert torch.equal(first, again)
    others = [sample(known, roi, invalid=invalid, seed=seed) for seed in (8, 9)]
    for other in others:
        assert not torch.equal(roi_pixels(first, roi), roi_pixels(other, roi))
    assert not torch.equal(roi_pixels(others[0], roi), roi_pixels(others[1], roi))


# --- guidance --------------------------------------------------------------------------------


def test_a_guide_pulls_the_roi_toward_its_target():
    known, roi = flat_blocks(seed=0), square_roi()
    target = PALETTE[1].view(1, 3, 1, 1)  # green: a fifth of the tile
    calls = []

    def guide(clean, scale):
        calls.append((tuple(clean.shape), scale, clean.requires_grad))
        return 0.5 * (((clean - target) ** 2) * roi).sum()

    for seed in (0, 1):
        calls.clear()
        guided = sample(known, roi, seed=seed, guide=guide)
        unguided = sample(known, roi, seed=seed, guide=None)
        # Once per step with the clean estimate (scale 0, the only one), none when unguided.
        assert calls == [(tuple(known.shape), 0, True)] * PatchDiffusionSettings().steps
        distance_guided = (roi_pixels(guided, roi) - target.flatten()).norm(dim=1)
        distance_unguided = (roi_pixels(unguided, roi) - target.flatten()).norm(dim=1)
        assert distance_guided.mean() < 0.6 * distance_unguided.mean()
        on_target = (distance_guided < 0.05).float().mean()
        assert on_target >= (distance_unguided < 0.05).float().mean() + 0.2
        outside = ~roi.expand_as(known)
        assert torch.equal(guided[outside], known[outside])


def test_a_guide_without_gradient_changes_nothing():
    # The guide only moves clean estimates along its gradient: a flat loss leaves the sample
    # as the unguided one of the same seed (it draws no extra noise).
    known, roi = flat_blocks(seed=3), square_roi()
    flat = sample(known, roi, seed=4, guide=lambda clean, scale: (clean * 0).sum())
    assert torch.equal(flat, sample(known, roi, seed=4))


# --- progress and cancelling ------------------------------------------------------------------


@pytest.mark.parametrize("steps", [40, 7, 1])
def test_progress_counts_up_to_the_steps(steps):
    calls = []

    def progress(stage, step, total, loss=None):
        calls.append((stage, step, total))

    settings = PatchDiffusionSettings(steps=steps)
    sample(flat_blocks(seed=4), square_roi(), settings, progress=progress)

    assert STAGE == "sample"
    assert {stage for stage, _, _ in calls} == {"sample"}
    assert {total for _, _, total in calls} == {steps}
    done = [step for _, step, _ in calls]
    assert done[0] == 0 and done[-1] == steps
    assert all(b >= a for a, b in zip(done, done[1:], strict=False)), done
    assert all(0 <= s <= steps for s in done)


def test_a_callback_that_raises_cancelled_stops_sampling():
    steps = []

    def progress(stage, step, total, loss=None):
        steps.append(step)
        if step >= 2:
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        sample(flat_blocks(seed=4), square_roi(), progress=progress)
    assert steps[-1] == 2  # nothing ran on after the callback raised


def test_an_example_pull_brings_the_examples_variety_into_the_roi():
    # A dark tile and an example half dark, half a bright flat colour. Without the pull the
    # ROI takes the example's patches nearest its surroundings: all dark (a forest edited
    # toward a harbour became a pond, none of its boats). With it, a good part of the ROI's
    # middle takes the example's other half.
    size = 40
    dark = PALETTE[2].view(1, 3, 1, 1)
    known = dark.expand(1, 3, size, size).contiguous()
    example = known.clone()
    example[..., size // 2 :] = FLAT.view(1, 3, 1, 1)
    roi = box((10, 10), (30, 30), size)
    middle = box((14, 14), (26, 26), size)

    def bright_share(pull: float) -> float:
        settings = replace(PatchDiffusionSettings(), example_pull=pull)
        shares = []
        for seed in range(4):
            out = sample(
                known, roi, settings, seed=seed, example_weight=1.0,
                example=(example, torch.zeros(1, 1, size, size, dtype=torch.bool)),
            )  # fmt: skip
            assert torch.equal(out[~roi.expand_as(out)], known[~roi.expand_as(known)])
            shares.append(share_near(roi_pixels(out, middle), FLAT[None], 0.3))
        return sum(shares) / len(shares)

    assert PatchDiffusionSettings().example_pull > 0, "on by default"
    without, pulled = bright_share(0.0), bright_share(PatchDiffusionSettings().example_pull)
    assert without < 0.1 and pulled > 0.3, (without, pulled)
