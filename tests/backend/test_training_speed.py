"""`rs-edit bench` prints the contract's JSON line, and the quality measure ranks a trained model
between the source itself and noise."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rs_edit.cli import main
from rs_edit.engine.presets import PRESETS
from rs_edit.engine.quality import patch_swd, self_swd
from rs_edit.engine.train import train_tile
from rs_edit.scene import make_scene, write_scene

CONTRACT_FIELDS = {"sec_per_step", "steps", "seconds", "swd", "swd_self", "peak_rss_mb"}


def test_bench_prints_one_json_object_last(tmp_path, capsys):
    image = tmp_path / "scene.tif"
    write_scene(make_scene(64, seed=2), image)
    png = tmp_path / "samples.png"
    args = ["bench", "--image", str(image), "--preset", "tiny", "--device", "cpu", "--steps", "4"]
    code = main([*args, "--png", str(png)])
    assert code == 0
    from PIL import Image

    with Image.open(png) as strip:  # the source and the 2 evaluated samples side by side
        assert strip.size == (64 * 3, 64) and strip.mode == "RGB"
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) >= CONTRACT_FIELDS
    assert result["steps"] == 4 and result["sec_per_step"] > 0
    assert result["seconds"] >= result["sec_per_step"] * 3
    assert result["swd"] > 0 and result["swd_self"] > 0 and result["peak_rss_mb"] > 50
    levels = result["swd_levels"]
    assert list(levels)[0] == "colour" and list(levels)[-1] == "low-pass"
    rms = (sum(v * v for v in levels.values()) / len(levels)) ** 0.5
    assert result["swd_ratio"] == pytest.approx(rms)
    assert "peak_gpu_mb" not in result  # CPU run


def test_bench_rejects_bad_arguments(tmp_path, capsys):
    assert main(["bench", "--image", str(tmp_path / "none.tif"), "--preset", "tiny"]) == 2
    assert "not found" in capsys.readouterr().err
    image = tmp_path / "scene.tif"
    write_scene(make_scene(48, seed=2), image)
    assert main(["bench", "--image", str(image), "--preset", "nope"]) == 2
    assert main(["bench", "--image", str(image), "--preset", "tiny", "--steps", "1"]) == 2
    assert main(["bench", "--image", str(image), "--preset", "tiny", "--size", "500"]) == 2


def test_swd_ranks_trained_samples_between_source_and_noise():
    scene = make_scene(64, seed=4).image.astype("float32") / 127.5 - 1
    source = torch.from_numpy(scene)
    model = train_tile(scene, dataclasses.replace(PRESETS["tiny"], steps=300), seed=0)
    samples = model.sample(2, seed=0)
    noise = torch.randn_like(samples) * source.std() + source.mean()
    # "The source itself": a copy rolled by 8 px has (nearly) the source's own patch statistics.
    itself = torch.roll(source, shifts=(8, 8), dims=(1, 2))
    trained = patch_swd(samples, source)
    assert patch_swd(itself, source) < trained < patch_swd(noise, source)
    assert self_swd(source) > 0
