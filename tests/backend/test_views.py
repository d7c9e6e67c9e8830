"""Augmented CLIP views: shapes, reproducibility, gradients, and that a box restricts them."""

from __future__ import annotations

import pytest
import torch

from rs_edit.guidance.views import ViewConfig, clip_views, view_region

PLAIN = ViewConfig(
    min_cover=1.0,
    rotate_deg=0,
    shear_deg=0,
    perspective=0,
    brightness=0,
    contrast=0,
    saturation=0,
)


def _image(h=64, w=80, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_range():
    views = clip_views(_image(), 5, generator=_gen(0), size=48)
    assert views.shape == (5, 3, 48, 48)
    assert views.min() >= 0 and views.max() <= 1
    # Default size: the region's side, clamped to [32, 224].
    assert clip_views(_image(64, 64), 2, generator=_gen(0)).shape[-1] == 64
    assert clip_views(_image(20, 20), 2, generator=_gen(0)).shape[-1] == 32
    assert clip_views(_image(300, 300), 1, generator=_gen(0)).shape[-1] == 224
    assert clip_views(_image()[0], 1, generator=_gen(0)).shape[0] == 1  # (3, H, W) accepted
    assert clip_views(_image(), 2).shape[0] == 2  # no generator: global RNG


def test_reproducible_and_varied():
    image = _image()
    a = clip_views(image, 6, generator=_gen(3), size=40)
    b = clip_views(image, 6, generator=_gen(3), size=40)
    c = clip_views(image, 6, generator=_gen(4), size=40)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    for i in range(6):
        for j in range(i + 1, 6):
            assert (a[i] - a[j]).abs().mean() > 1e-3


def test_plain_views_are_exact_flips_and_transposes():
    """Without crop, rotation, warp or jitter a view is one of the 8 symmetries of the square:
    the coordinate chain maps pixel centres onto pixel centres."""
    image = _image(32, 32)[0]
    symmetries = []
    for t in (image, image.transpose(1, 2)):
        for dims in ((), (1,), (2,), (1, 2)):
            symmetries.append(t.flip(dims) if dims else t)
    views = clip_views(image[None], 24, generator=_gen(0), size=32, config=PLAIN)
    seen = set()
    for view in views:
        errors = [float((view - s).abs().max()) for s in symmetries]
        assert min(errors) < 1e-5
        seen.add(errors.index(min(errors)))
    assert len(seen) >= 6  # flips and transposes all occur


def test_gradient_flows_and_stays_near_the_box():
    image = _image(96, 96).requires_grad_(True)
    views = clip_views(image, 4, box=(40, 40, 56, 56), generator=_gen(1), size=32)
    views.square().sum().backward()
    grad = image.grad.abs().sum(1)[0]
    assert grad[40:56, 40:56].sum() > 0
    assert grad[:20].sum() == 0 and grad[:, 80:].sum() == 0  # far outside the region


def test_gradient_through_downsampling_path():
    image = _image(400, 400).requires_grad_(True)
    views = clip_views(image, 2, generator=_gen(2), size=40)
    views.mean().backward()
    assert image.grad.abs().sum() > 0


def test_box_restricts_content():
    image = torch.zeros(1, 3, 128, 128)
    image[0, 2] = 1  # blue everywhere
    box = (50, 60, 74, 84)
    image[0, :, 50:74, 60:84] = torch.tensor([1.0, 0, 0]).view(3, 1, 1)  # red in the box

    def red_fraction(views):
        red = (views[:, 0] > 0.5) & (views[:, 2] < 0.5)
        return float(red.float().mean())

    image_fraction = 24 * 24 / 128**2
    tight = clip_views(image, 8, box=box, generator=_gen(0), config=ViewConfig(context=0))
    assert red_fraction(tight) > 0.8
    in_context = clip_views(image, 8, box=box, generator=_gen(0))
    assert 0.25 < red_fraction(in_context) < 0.95  # the ROI and some context
    assert red_fraction(in_context) > 8 * image_fraction
    whole = clip_views(image, 8, generator=_gen(0))
    assert red_fraction(whole) < 0.15


def test_view_region():
    assert view_region((100, 200), None, 0.25) == (0, 0, 100, 200)
    # Grown by 25 % of the longer side on every side, squared, kept inside the image.
    assert view_region((100, 200), (40, 90, 60, 110), 0.25) == (35, 85, 65, 115)
    top, left, bottom, right = view_region((100, 200), (0, 0, 10, 40), 0.25)
    assert (top, left) == (0, 0) and bottom == 60 and right == 60
    with pytest.raises(ValueError):
        view_region((100, 200), (50, 50, 50, 60), 0.25)
    with pytest.raises(ValueError):
        clip_views(torch.rand(2, 3, 8, 8), 1)
