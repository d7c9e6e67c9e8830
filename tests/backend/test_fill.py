"""structure_fill: a hole filled from its surroundings' patches, lines carried across first
(and what both fills share, with offsets.offset_fill)."""

import pytest
import torch

from rs_edit.engine.fill import structure_fill
from rs_edit.engine.offsets import offset_fill
from rs_edit.engine.patch_diffusion import PatchDiffusionSettings, context_fill, sample
from rs_edit.engine.patches import NoPatchesError


def barred(size=48, bar=(20, 22), seed=0):
    """A dark, grainy tile (1, 3, size, size) crossed by a pale horizontal bar (rows `bar`),
    as a crash barrier crosses a road; the hole, a square over the bar's middle."""
    g = torch.Generator().manual_seed(seed)
    image = -0.6 + 0.08 * torch.randn(1, 3, size, size, generator=g)
    rows = bar[1] - bar[0]
    image[:, :, bar[0] : bar[1]] = 0.7 + 0.05 * torch.randn(1, 3, rows, size, generator=g)
    hole = torch.zeros(1, 1, size, size, dtype=torch.bool)
    hole[..., 12:30, 15:33] = True
    return image, hole


def test_a_line_into_the_hole_goes_on_through_it():
    image, hole = barred()
    filled = structure_fill(image, hole, 5)
    inside = filled[0, :, 12:30, 15:33].mean(0)  # (18, 18): rows 12-29 of the image
    bar_rows = inside[20 - 12 : 22 - 12]
    others = torch.cat([inside[: 20 - 12], inside[22 - 12 :]])
    # The bar runs across the whole hole, each of its pixels pale; nothing pale beside it.
    assert bool((bar_rows > 0.3).all()), bar_rows.min()
    assert float((others > 0.3).float().mean()) < 0.02
    # A smooth fill keeps the colours but smears the bar out (the contrast structure_fill keeps).
    smooth = context_fill(image, hole)[0, :, 12:30, 15:33].mean(0)
    assert float(smooth[8:10].mean() - smooth[:6].mean()) < 0.5 * float(
        bar_rows.mean() - others.mean()
    )


@pytest.mark.parametrize("method", [structure_fill, offset_fill])
def test_outside_the_hole_nothing_changes_and_inside_every_pixel_is_the_tiles_own(method):
    image, hole = barred(seed=3)
    filled = method(image, hole, 5)
    assert torch.equal(filled[~hole.expand_as(filled)], image[~hole.expand_as(image)])
    known = image[0].permute(1, 2, 0)[~hole[0, 0]]  # (N, 3) colours outside the hole
    new = filled[0].permute(1, 2, 0)[hole[0, 0]]
    # Copied, not blended: each filled colour is one the tile has outside the hole.
    found = (new[:, None, :] == known[None]).all(-1).any(1)
    assert bool(found.all()), int((~found).sum())


@pytest.mark.parametrize(
    ("method", "fill"), [(structure_fill, "structure"), (offset_fill, "offsets")]
)
def test_no_whole_patch_outside_the_hole_is_an_error_and_the_sampler_falls_back(method, fill):
    image, _ = barred(size=16, bar=(6, 8))
    everywhere = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    with pytest.raises(NoPatchesError):
        method(image, everywhere, 5)
    nearly = everywhere.clone()
    nearly[..., :3, :3] = False  # known pixels, but no whole 5 px patch of them
    with pytest.raises(NoPatchesError):
        method(image, nearly, 5)
    # The anchored sampler then starts from the smooth fill instead: still a full result.
    settings = PatchDiffusionSettings(steps=4)
    out = sample(image, nearly, settings, seed=1, anchor=0.3, fill=fill)
    assert out.shape == image.shape and bool(torch.isfinite(out).all())


def test_the_sampler_carries_the_line_from_a_structure_anchor():
    image, hole = barred()
    settings = PatchDiffusionSettings(steps=12)
    rows = []
    for fill in ("structure", "smooth"):
        out = sample(image, hole, settings, seed=2, anchor=0.3, fill=fill)
        inside = out[0, :, 12:30, 15:33].mean(0)
        rows.append(float(inside[8:10].mean() - torch.cat([inside[:6], inside[12:]]).mean()))
    structure, smooth = rows
    assert structure > 0.8, rows  # the bar's contrast (about 1.3) mostly kept
    assert structure > smooth + 0.3, rows
    for anchor in (0.3, None):  # refused whether or not it would be used
        with pytest.raises(ValueError, match="unknown fill"):
            sample(image, hole, settings, seed=2, anchor=anchor, fill="blurry")
