"""offset_fill: a hole filled by copying along the image's dominant patch offsets, so lines and
repeated structures carry on through it."""

import torch
from test_fill import barred

from rs_edit.engine.offsets import offset_fill
from rs_edit.engine.patch_diffusion import PatchDiffusionSettings, context_fill, sample


def test_a_line_into_the_hole_goes_on_through_it_once():
    for seed in range(4):
        image, hole = barred(seed=seed)
        filled = offset_fill(image, hole, 5)
        inside = filled[0, :, 12:30, 15:33].mean(0)  # (18, 18): rows 12-29 of the image
        bar_rows = inside[20 - 12 : 22 - 12]
        others = torch.cat([inside[: 20 - 12], inside[22 - 12 :]])
        # The bar runs across the whole hole, each of its pixels pale; nothing pale beside it
        # (cuts costed by the plain gradient doubled it by a ghost segment for seeds 0 and 1).
        assert bool((bar_rows > 0.3).all()), (seed, bar_rows.min())
        assert float((others > 0.3).float().mean()) < 0.02, seed


def test_a_line_goes_on_where_a_diagonal_offers_copies_of_another_beside_it():
    # Two pale bars across grainy ground (an overpass's barriers) and a diagonal ramp below,
    # whose shifts (and their multiples) map the upper bar onto the ground by the lower one.
    # The hole covers the lower bar and the ground above it. A cut costed by the two
    # sources' summed detail let the upper bar's edge pay for cuts beside it: the lower bar
    # broke where copies of the upper one crowded it (seeds 4 and 5).
    size = 64
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        image = -0.5 + 0.15 * torch.randn(1, 3, size, size, generator=g)
        image[..., 10:12, :] = 0.8
        image[..., 32:34, :] = 0.8
        for t in range(40):  # slope 3/4, two pixels thick
            y = 44 + (3 * t) // 4
            image[..., y : y + 2, t] = 0.8
        hole = torch.zeros(1, 1, size, size, dtype=torch.bool)
        hole[..., 16:40, 22:46] = True
        inside = offset_fill(image, hole, 5)[0, :, 16:40, 22:46].mean(0)
        bar = inside[32 - 16 : 34 - 16]
        others = torch.cat([inside[: 32 - 16], inside[34 - 16 :]])
        assert bool((bar > 0.3).all()), (seed, bar.min())
        assert float((others > 0.3).float().mean()) < 0.05, seed


def test_a_repeated_structure_goes_on_in_step_through_a_hole_wider_than_its_period():
    # Posts every 7 px along a grainy verge, each a pale 2 px column, and a hole 20 px wide:
    # the shifts that map the verge onto itself are multiples of 7, and copying by one of
    # them puts the posts inside the hole where the row's rhythm says they are.
    g = torch.Generator().manual_seed(5)
    size = 56
    image = -0.5 + 0.05 * torch.randn(1, 3, size, size, generator=g)
    posts = (torch.arange(size) % 7) < 2
    image[:, :, :, posts] += 1.0
    hole = torch.zeros(1, 1, size, size, dtype=torch.bool)
    hole[..., 18:38, 18:38] = True
    filled = offset_fill(image, hole, 5)
    inside = filled[0, :, 18:38, 18:38].mean((0, 1))  # per column of the hole
    expected = posts[18:38]
    assert bool((inside[expected] > 0.2).all()), inside  # every post column pale
    assert bool((inside[~expected] < -0.2).all()), inside  # every gap dark: in step
    smooth = context_fill(image, hole)[0, :, 18:38, 18:38].mean((0, 1))
    contrast = float(inside[expected].mean() - inside[~expected].mean())
    assert float(smooth[expected].mean() - smooth[~expected].mean()) < 0.5 * contrast


def test_the_sampler_carries_the_line_from_an_offsets_anchor():
    image, hole = barred()
    settings = PatchDiffusionSettings(steps=12)
    out = sample(image, hole, settings, seed=2, anchor=0.3, fill="offsets")
    inside = out[0, :, 12:30, 15:33].mean(0)
    contrast = float(inside[8:10].mean() - torch.cat([inside[:6], inside[12:]]).mean())
    assert contrast > 0.8, contrast  # the bar's contrast (about 1.3) mostly kept
