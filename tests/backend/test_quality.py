"""The weight-free quality measures: patch SWD ranks textures sensibly, diversity catches copies."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rs_edit.engine.quality import (
    diversity,
    level_names,
    patch_swd,
    self_swd,
    swd_levels,
    swd_ratio,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Many small ops: on a busy shared CPU, intra-op threads cost more than they save."""


def texture(size: int, *, seed: int = 0, params: int = 0, channels: int = 3) -> torch.Tensor:
    """A stationary synthetic texture in about [-1, 1]: oriented sinusoids + blobs + pixel noise.

    `params` fixes the texture's statistics (frequencies, orientations, colours); `seed` draws
    one realisation (phases, blob positions, noise). Crops of one realisation, or realisations
    with equal `params`, are different samples of the same texture.
    """
    g = torch.Generator().manual_seed(params)
    # Two waves: a 2-D window then sees every phase combination, so crops are alike
    # (with more waves each window covers another slice of their joint phases).
    n_waves = 2
    freqs = 0.08 + 0.22 * torch.rand(n_waves, generator=g)
    angles = math.pi * torch.rand(n_waves, generator=g)
    mix = torch.randn(channels, n_waves + 1, generator=g) / math.sqrt(n_waves + 1)
    r = torch.Generator().manual_seed(1000 + seed)
    phases = 2 * math.pi * torch.rand(n_waves, generator=r)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
        indexing="ij",
    )  # fmt: skip
    fields = [
        torch.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a)) + p)
        for f, a, p in zip(freqs, angles, phases, strict=True)
    ]
    n_blobs = size * size // 300
    cy, cx = size * torch.rand(2, n_blobs, 1, 1, generator=r)
    radius = 2 + 4 * torch.rand(n_blobs, 1, 1, generator=r)
    sign = torch.randn(n_blobs, 1, 1, generator=r).sign()
    blobs = sign * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    fields.append(blobs.sum(0))
    img = torch.einsum("ck,khw->chw", mix, torch.stack(fields))
    # Scale by a constant of the texture, not of the realisation (its max), then squash softly.
    scale = 2 * mix.norm(dim=1).view(channels, 1, 1)
    # Pixel noise after the squash, so that its level is the same everywhere (under the squash
    # it would fade where the waves saturate, and the finest detail would vary from crop to crop).
    return 0.9 * torch.tanh(img / scale) + 0.03 * torch.randn(img.shape, generator=r)


def blurred(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k2 = (k[:, None] * k[None]) / k.sum() ** 2
    c = x.shape[0]
    padded = F.pad(x[None], (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, k2.expand(c, 1, 5, 5), groups=c)[0]


def matched_noise(x: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """Gaussian noise with x's per-channel mean and std: right colours, no structure."""
    g = torch.Generator().manual_seed(seed)
    mean, std = x.mean((1, 2), keepdim=True), x.std((1, 2), keepdim=True)
    return mean + std * torch.randn(x.shape, generator=g)


@pytest.fixture(scope="module", params=[0, 3], ids=["texture0", "texture3"])
def case(request):
    """A 128x128 source, candidates of known quality, and their SWD to the source (computed once).

    Same texture: a disjoint crop of the source's own 256x256 realisation, and another
    realisation. Worse: the source blurred (sigma about 1 px), and colour-matched noise.
    """
    big = texture(256, params=request.param)
    src = big[:, :128, :128]
    cand = {
        "crop": big[:, 128:, 128:],
        "other": texture(128, seed=5, params=request.param),
        "blur": blurred(src),
        "noise": matched_noise(src),
    }
    dist = {name: patch_swd(x, src) for name, x in cand.items()}
    ratio = {name: swd_ratio(x, src) for name, x in cand.items()}
    return {"src": src, "cand": cand, "dist": dist, "ratio": ratio, "self": self_swd(src)}


def test_identical_inputs_give_zero():
    x = texture(96)
    assert patch_swd(x, x) == pytest.approx(0.0, abs=1e-6)
    batch = torch.stack([x, x.flip(-1)])
    assert patch_swd(batch, batch.clone()) == pytest.approx(0.0, abs=1e-6)


def test_symmetric_and_deterministic(case):
    src, crop, d = case["src"], case["cand"]["crop"], case["dist"]["crop"]
    assert d > 0
    assert patch_swd(src, crop) == pytest.approx(d, rel=1e-5)
    assert patch_swd(crop, src) == d
    # Another seed draws other patches and directions: a different but similar estimate.
    d1 = patch_swd(crop, src, seed=1)
    assert d1 != d
    assert d1 == pytest.approx(d, rel=0.5)


def test_ranking_same_texture_before_blur_and_noise(case):
    r = case["ratio"]
    assert 2 * max(r["crop"], r["other"]) < min(r["blur"], r["noise"])


def test_self_swd_is_the_scale_of_same_texture_distances(case):
    ref = case["self"]
    assert ref > 0
    assert 0.2 < case["dist"]["crop"] / ref < 3.0
    assert 0.2 < case["dist"]["other"] / ref < 3.0


def test_swd_ratio_separates_good_from_bad_samples(case):
    src, cand = case["src"], case["cand"]
    good = swd_ratio(cand["crop"], src)
    # 128x128 sources: 64 px halves keep 4 pyramid levels, plus the colour level.
    levels = swd_levels(cand["crop"], src)
    assert len(levels) == len(level_names(4)) == 5
    assert good == pytest.approx(math.sqrt(sum(x * x for x in levels) / 5), rel=1e-6)
    assert good < 1.25
    assert case["ratio"]["other"] < 1.25
    assert swd_ratio(torch.stack([cand["crop"], cand["other"]]), src) < 1.25
    assert case["ratio"]["blur"] > 1.25
    assert case["ratio"]["noise"] > 1.25


def test_swd_ratio_sees_pixel_noise_and_colour_casts(case):
    """The failures a Gaussian-pyramid patch SWD missed, each caught at the level it belongs to."""
    src = case["src"]
    g = torch.Generator().manual_seed(5)
    noisy = src + 0.1 * torch.randn(src.shape, generator=g)
    tinted = src + torch.tensor([0.15, -0.1, 0.0]).view(3, 1, 1)
    names = level_names(4)
    noisy_levels = dict(zip(names, swd_levels(noisy, src), strict=True))
    tinted_levels = dict(zip(names, swd_levels(tinted, src), strict=True))
    assert noisy_levels["detail 1px"] > 2.5
    assert max(noisy_levels, key=noisy_levels.get) == "detail 1px"
    assert tinted_levels["colour"] > 2.5
    assert tinted_levels["detail 1px"] == pytest.approx(0.0, abs=1e-3)  # detail is unchanged


def test_swd_ratio_uses_the_levels_both_sides_have():
    # 96x96: the halves (96x48) stop after 3 levels, the full images would run 4.
    big = texture(192)
    src, crop = big[:, :96, :96], big[:, 96:, 96:]
    levels = swd_levels(crop, src)
    assert len(levels) == len(level_names(3))
    assert levels == swd_levels(crop, src, levels=3)
    assert swd_levels(crop, src, levels=2) != levels[:3]  # 2 levels: the low-pass rest is finer


@pytest.mark.parametrize("channels", [1, 4])
def test_any_channel_count(channels):
    big = texture(192, channels=channels)
    src, other = big[:, :96, :96], big[:, 96:, 96:]
    assert src.shape[0] == channels
    assert patch_swd(src, src) == pytest.approx(0.0, abs=1e-6)
    assert swd_ratio(other, src) < 1.25 < swd_ratio(matched_noise(src), src)


def test_different_sizes_and_batches():
    big = texture(256)
    src = big[:, :128, :128]
    wide = big[:, 128:224, 40:200]  # 96x160, another part of the same texture
    d = patch_swd(wide, src)
    assert math.isfinite(d) and d > 0
    assert patch_swd(src, wide) == pytest.approx(d, rel=1e-5)
    assert d < patch_swd(matched_noise(wide), src) / 2
    # A batch of samples against one source, and images too small for coarser levels.
    batch = torch.stack([big[:, 128:, :128], big[:, :128, 128:]])
    assert patch_swd(batch, src) < patch_swd(matched_noise(src), src) / 2
    tiny = patch_swd(big[:, :16, :16], big[:, 16:40, 16:40], levels=3)
    assert math.isfinite(tiny) and tiny > 0


def test_rejects_mismatched_channels():
    with pytest.raises(ValueError):
        patch_swd(torch.zeros(3, 32, 32), torch.zeros(1, 32, 32))
    with pytest.raises(ValueError):
        patch_swd(torch.zeros(3, 4, 4), torch.zeros(3, 32, 32))


def test_diversity_flags_exact_and_shifted_copies():
    big = texture(160)
    src = big[:, 8:136, 8:136]
    shifted = big[:, 10:138, 6:134]  # the same scene moved 2 px down and 2 px right
    out = diversity(torch.stack([src.clone(), shifted]), src)
    assert out["copy_fraction"] == 1.0
    assert out["min_l1_to_source"] == pytest.approx(0.0, abs=1e-7)
    assert out["mean_l1_to_source"] > 0.02  # the shifted copy is far pixel-wise, still a copy
    assert out["mean_pairwise_l1"] > 0.02


def test_diversity_accepts_independent_samples():
    big = texture(256)
    src = big[:, :128, :128]
    samples = torch.stack([big[:, 128:, 128:], big[:, 128:, :128], texture(128, seed=9)])
    out = diversity(samples, src)
    assert set(out) == {
        "mean_l1_to_source",
        "min_l1_to_source",
        "mean_pairwise_l1",
        "copy_fraction",
    }
    assert out["copy_fraction"] == 0.0
    assert out["min_l1_to_source"] > 0.05
    assert out["mean_pairwise_l1"] > 0.05
    single = diversity(samples[:1], src)
    assert single["mean_pairwise_l1"] == 0.0
    assert single["copy_fraction"] == 0.0
    with pytest.raises(ValueError):
        diversity(samples[:, :, :64], src)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    big = texture(256)
    src, other = big[:, :128, :128], big[:, 128:, 128:]
    d_cpu = patch_swd(other, src)
    d_gpu = patch_swd(other.cuda(), src.cuda())
    assert d_gpu == pytest.approx(d_cpu, rel=1e-3)
    assert swd_ratio(other.cuda(), src.cuda()) == pytest.approx(swd_ratio(other, src), rel=1e-3)
    div = diversity(torch.stack([src, other]).cuda(), src.cuda())
    assert div["copy_fraction"] == 0.5
