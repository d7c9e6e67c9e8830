"""Text-guided editing end to end (CPU, `tiny` preset, `tiny-random` CLIP).

One small georeferenced scene is learned once per module (the model cache is shared), then
edited by several prompts: the outside of the ROI must come back bit for bit, the guidance must
raise CLIP similarity, variants differ, seeds reproduce, and cancelling writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rs_edit.edit import EditOptions, prepare, run_edit
from rs_edit.errors import CancelledError, ParameterError
from rs_edit.guidance import resolve_guidance
from rs_edit.guidance.clip import load_clip
from rs_edit.guidance.editor import TextEditor
from rs_edit.guidance.finetune import (
    ClipObjective,
    build_scene,
    finetune,
    sample_edits,
    sampling_guide,
)
from rs_edit.progress import percent
from rs_edit.scene import make_scene, roi_geojson, write_scene

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "flooded fields"


@pytest.fixture(scope="module")
def scene_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("scene")
    scene = make_scene(72, seed=3)
    path = folder / "scene.tif"
    write_scene(scene, path)
    roi = folder / "roi.geojson"
    roi.write_text(json.dumps(roi_geojson(scene)))
    return path, roi


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def learned(scene_files, cache_dir):
    """The scene's trained tile model (from the shared cache), tiny-random CLIP and the scene
    as the guidance sees it: (model, clip, scene)."""
    image, roi = scene_files
    tile = prepare(image, options(), roi_geojson=roi)
    editor = TextEditor(options(), device="cpu", cache_dir=cache_dir)
    model, _ = editor._tile_model(tile.model_image, 1, lambda *a, **k: None)
    clip = load_clip("tiny-random", "cpu")
    return model, clip, build_scene(model, tile.model_image, tile.alpha, tile.rgb)


def options(**kw) -> EditOptions:
    # The paper's path (a trained tile model, fine-tuned); `auto` would sample the `tiny`
    # preset's layout without training (tests/backend/test_patch_diffusion.py).
    base = {"prompt": PROMPT, "preset": "tiny", "clip": "tiny-random", "seed": 1}
    return EditOptions(**{**base, "guidance": "finetune", **kw})


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def edit(scene_files, out: Path, cache_dir: Path, **kw):
    image, roi = scene_files
    return run_edit(image, out, options(**kw), roi_geojson=roi, cache_dir=cache_dir)


def roi_pixels(scene_files) -> np.ndarray:
    """The ROI on the full raster grid (bool)."""
    image, roi = scene_files
    tile = prepare(image, options(), roi_geojson=roi)
    full = np.zeros((tile.info.height, tile.info.width), dtype=bool)
    w = tile.window
    full[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width] = tile.roi_mask
    return full


def test_edit_changes_only_the_roi_and_keeps_georeferencing(scene_files, cache_dir, tmp_path):
    result = edit(scene_files, tmp_path / "out.tif", cache_dir)
    (out,) = result.outputs
    before, after = read(scene_files[0]), read(out)
    inside = roi_pixels(scene_files)
    assert np.array_equal(before[:, ~inside], after[:, ~inside]), "outside the ROI changed"
    changed = (before[:, inside] != after[:, inside]).any(0).mean()
    assert changed > 0.5, f"only {changed:.0%} of the ROI changed"
    with rasterio.open(scene_files[0]) as a, rasterio.open(out) as b:
        assert (a.crs, a.transform, a.dtypes, a.nodata, a.count) == (
            b.crs,
            b.transform,
            b.dtypes,
            b.nodata,
            b.count,
        )
        assert json.loads(b.tags()["RS_EDIT"])["prompt"] == PROMPT
    report = result.report
    assert report.clip_random is True and report.prompt_source == "templates"
    assert len(report.prompts) >= 2 and report.prompts[0] == PROMPT


def test_second_prompt_reuses_the_trained_model(scene_files, cache_dir, tmp_path):
    edit(scene_files, tmp_path / "a.tif", cache_dir)
    stages: list[tuple[str, int, int]] = []
    image, roi = scene_files
    result = run_edit(
        image,
        tmp_path / "b.tif",
        options(prompt="burned forest"),
        roi_geojson=roi,
        cache_dir=cache_dir,
        progress=lambda stage, step, total, loss=None: stages.append((stage, step, total)),
    )
    assert result.report.model_cached is True
    # The report names the cache file it reused: the one the service's LRU bound keeps.
    assert (cache_dir / "models" / result.report.model_entry).is_file()
    assert max(total for stage, _, total in stages if stage == "train") == 1
    assert any(stage == "finetune" for stage, _, _ in stages)


def test_same_seed_same_edit_and_variants_differ(scene_files, cache_dir, tmp_path):
    a = edit(scene_files, tmp_path / "a.tif", cache_dir, seed=5).outputs[0]
    b = edit(scene_files, tmp_path / "b.tif", cache_dir, seed=5).outputs[0]
    assert np.array_equal(read(a), read(b))
    outs = edit(scene_files, tmp_path / "v.tif", cache_dir, seed=5, variants=3).outputs
    assert [p.name for p in outs] == ["v_v1.tif", "v_v2.tif", "v_v3.tif"]
    images = [read(p) for p in outs]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not np.array_equal(images[i], images[j]), f"variants {i + 1} and {j + 1} equal"


def test_guided_finetuning_raises_clip_similarity(learned):
    """Against the unguided sample with the same seeds, measured by the same CLIP and target."""
    model, clip, scene = learned
    target = clip.text_target([PROMPT])
    objective = ClipObjective(clip, target, scene, views=4, seed=0)
    seeds = [11, 12, 13]

    def mean_similarity(m) -> float:
        edits = sample_edits(m, scene, seeds)
        return float(np.mean([objective.similarity(torch.from_numpy(e)[None]) for e in edits]))

    unguided = mean_similarity(model)
    tuned = finetune(
        model, scene, objective, steps=40, lr=1e-3, freeze_blocks=2, fidelity=1.0, seed=0
    )
    guided = mean_similarity(tuned)
    assert guided > unguided + 0.01, f"guided {guided:.4f} vs unguided {unguided:.4f}"
    # The encoder stayed frozen; the decoder moved.
    for name, p in model.net.named_parameters():
        q = dict(tuned.net.named_parameters())[name]
        frozen = name.startswith(("cond.", "blocks.0.", "blocks.1."))
        assert torch.equal(p, q) == frozen, name


def test_guided_sampling_raises_clip_similarity_and_keeps_variants_apart(learned):
    model, clip, scene = learned
    objective = ClipObjective(clip, clip.text_target([PROMPT]), scene, views=4, seed=0)
    seeds = [11, 12]

    def similarities(guide) -> list[float]:
        edits = sample_edits(model, scene, seeds, guide=guide)
        assert np.abs(edits[0] - edits[1]).mean() > 0.01, "the variants collapsed"
        return [objective.similarity(torch.from_numpy(e)[None]) for e in edits]

    unguided = similarities(None)
    guided = similarities(sampling_guide(objective, 100.0))
    assert np.mean(guided) > np.mean(unguided) + 0.01, f"{guided} vs {unguided}"


def test_sampling_guidance_path_writes_an_edit(scene_files, cache_dir, tmp_path):
    result = edit(scene_files, tmp_path / "s.tif", cache_dir, guidance="sampling")
    assert result.report.guidance == "sampling"
    before, after = read(scene_files[0]), read(result.outputs[0])
    inside = roi_pixels(scene_files)
    assert np.array_equal(before[:, ~inside], after[:, ~inside])


def test_cancel_during_finetuning_writes_nothing(scene_files, cache_dir, tmp_path):
    image, roi = scene_files

    def cancel_at_finetune(stage, step, total, loss=None):
        if stage == "finetune" and step == 3:
            raise CancelledError("cancelled by the test")

    out = tmp_path / "c.tif"
    with pytest.raises(CancelledError):
        run_edit(
            image,
            out,
            options(),
            roi_geojson=roi,
            cache_dir=cache_dir,
            progress=cancel_at_finetune,
        )
    assert list(tmp_path.iterdir()) == []


def test_multiband_uint16_with_nodata(tmp_path, cache_dir):
    """Four bands (CLIP sees 3,2,1), uint16, nodata pixels inside the ROI stay nodata."""
    from conftest import write_raster

    rng = np.random.default_rng(0)
    data = (rng.random((4, 40, 40)) * 3000 + 500).astype(np.uint16)
    data[:, 18:22, 18:22] = 0
    src = write_raster(tmp_path / "ms.tif", data, nodata=0)
    mask = np.zeros((1, 40, 40), dtype=np.uint8)
    mask[0, 10:30, 10:30] = 1
    mask_path = write_raster(tmp_path / "mask.tif", mask)
    out = tmp_path / "out.tif"
    run_edit(
        src,
        out,
        options(rgb_bands=(3, 2, 1), feather_px=0),
        mask_path=mask_path,
        cache_dir=cache_dir,
    )
    after = read(out)
    assert after.dtype == np.uint16
    assert (after[:, 18:22, 18:22] == 0).all(), "nodata pixels changed"
    outside = np.ones((40, 40), dtype=bool)
    outside[10:30, 10:30] = False
    assert np.array_equal(data[:, outside], after[:, outside])
    inside = ~outside
    inside[18:22, 18:22] = False
    assert (data[:, inside] != after[:, inside]).any(0).mean() > 0.5
    assert not (after[:, inside] == 0).any(), "an edited pixel became nodata"


def test_reference_preset_and_unknown_guidance_are_refused():
    with pytest.raises(ParameterError, match="benchmarks"):
        options(preset="reference").validate()
    with pytest.raises(ParameterError, match="guidance"):
        options(guidance="magic").validate()


def test_cli_edit_subprocess(scene_files, cache_dir, tmp_path):
    image, roi = scene_files
    out = tmp_path / "cli.tif"
    env = {k: v for k, v in os.environ.items() if k != "RS_EDIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RS_EDIT_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run(
        [sys.executable, "-m", "rs_edit.cli", "edit", str(image), "-o", str(out)]
        + ["--prompt", PROMPT, "--roi", str(roi), "--preset", "tiny", "--clip", "tiny-random"]
        + ["--seed", "1", "--quiet"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert out.is_file()


def test_reference_image_condition_moves_the_edit_towards_the_reference(learned, tmp_path):
    """Multi-condition guidance: with a reference patch in the target, the target is the
    reference's embedding more than the text's, and fine-tuning toward it brings the edited
    ROI's CLIP image embedding closer to the reference's than the model as trained.

    It compared the two fine-tunings (text alone against text and reference) until a machine
    of the same kind gave 0.9289 against 0.9253 where another had cleared a margin of 0.01:
    with random weights every fine-tuning moves the edits a little toward a common direction,
    and which of the two moves further is decided by float rounding. The comparison with the
    untuned model is the one the random weights keep (0.93 against 0.88 here)."""
    from conftest import write_raster

    from rs_edit.bands import BandScaling
    from rs_edit.example import plan_example, read_example
    from rs_edit.guidance.reference import clip_view, mixed_target
    from rs_edit.raster import inspect_raster

    rng = np.random.default_rng(4)
    patch = np.zeros((3, 32, 32), dtype=np.uint8)
    patch[2] = 150 + rng.integers(0, 60, (32, 32))  # blue, rippled: "flood water"
    patch[1] = 60 + rng.integers(0, 30, (32, 32))
    ref_path = write_raster(tmp_path / "water.tif", patch, crs=None, transform=None)
    model, clip, scene = learned
    info = inspect_raster(ref_path)
    as_bytes = BandScaling(lo=(0.0,) * 3, hi=(255.0,) * 3, dtype="uint8")  # x / 255 in CLIP
    example = read_example(plan_example(ref_path, info), as_bytes)
    reference = clip_view(example, (0, 1, 2))
    assert reference.shape == (1, 3, 32, 32) and 0 <= reference.min() <= reference.max() <= 1

    text = clip.text_target([PROMPT])
    ref_embedding = clip.encode_image(reference)[0]
    seeds = [21, 22, 23]

    def closeness_to_reference(target) -> float:
        objective = ClipObjective(clip, target, scene, views=4, seed=0)
        tuned = finetune(
            model, scene, objective, steps=40, lr=1e-3, freeze_blocks=2, fidelity=1.0, seed=0
        )
        probe = ClipObjective(clip, ref_embedding, scene, views=4, seed=0)
        edits = sample_edits(tuned, scene, seeds)
        return float(np.mean([probe.similarity(torch.from_numpy(e)[None]) for e in edits]))

    mixed = mixed_target(clip, text, reference, 0.8)
    assert float(mixed @ ref_embedding) > float(text @ ref_embedding) + 0.5
    probe = ClipObjective(clip, ref_embedding, scene, views=4, seed=0)
    untuned = float(
        np.mean(
            [probe.similarity(torch.from_numpy(e)[None]) for e in sample_edits(model, scene, seeds)]
        )
    )
    with_reference = closeness_to_reference(mixed)
    assert with_reference > untuned + 0.02, f"{with_reference:.4f} vs {untuned:.4f}"


def test_reference_option_is_validated(tmp_path):
    with pytest.raises(ParameterError, match="example image not found"):
        options(reference=str(tmp_path / "missing.png")).validate()
    (tmp_path / "r.png").write_bytes(b"")
    with pytest.raises(ParameterError, match="between 0 and 1"):
        options(reference=str(tmp_path / "r.png"), reference_weight=1.5).validate()


def test_edit_with_a_reference_image_end_to_end(scene_files, cache_dir, tmp_path):
    from conftest import write_raster

    patch = np.full((3, 16, 16), 90, dtype=np.uint8)
    ref = write_raster(tmp_path / "ref.tif", patch, crs=None, transform=None)
    result = edit(scene_files, tmp_path / "r.tif", cache_dir, reference=str(ref))
    assert result.report.reference["file"] == "ref.tif"
    assert result.report.reference_weight == 0.8
    before, after = read(scene_files[0]), read(result.outputs[0])
    inside = roi_pixels(scene_files)
    assert np.array_equal(before[:, ~inside], after[:, ~inside])


def test_prompt_ensembling_can_be_switched_off(scene_files, cache_dir, tmp_path):
    result = edit(scene_files, tmp_path / "p.tif", cache_dir, prompt_ensemble=False)
    assert result.report.prompts == [PROMPT]
    assert result.report.prompt_source == "prompt"


def test_auto_guidance_samples_the_layout_without_training(scene_files, cache_dir, tmp_path):
    """`tiny` makes its coarse layout with the training-free sampler: `auto` guidance guides
    that sampler (no training, no fine-tuning), and progress is one climbing 'synthesize'."""
    image, roi = scene_files
    stages: list[tuple[str, int, int]] = []
    result = run_edit(
        image,
        tmp_path / "auto.tif",
        options(guidance="auto"),
        roi_geojson=roi,
        cache_dir=cache_dir,
        progress=lambda stage, step, total, loss=None: stages.append((stage, step, total)),
    )
    report = result.report
    assert (report.guidance, report.coarse) == ("sampling", "patch-diffusion")
    assert report.model_cached is False and report.seconds["train"] < 1.0
    names = {stage for stage, _, _ in stages}
    assert not names & {"train", "finetune", "sample", "detail"}, names
    assert "synthesize" in names
    percents = [percent(stage, step, total) for stage, step, total in stages]
    assert percents == sorted(percents)
    assert percents[-1] >= 97
    before, after = read(image), read(result.outputs[0])
    inside = roi_pixels(scene_files)
    assert np.array_equal(before[:, ~inside], after[:, ~inside])
    assert (before[:, inside] != after[:, inside]).any(0).mean() > 0.5


def test_guidance_auto_follows_the_preset():
    assert resolve_guidance("auto", trains_network=True)[0] == "finetune"
    assert resolve_guidance("auto", trains_network=False)[0] == "sampling"
    for name in ("finetune", "sampling", "none"):
        assert resolve_guidance(name, trains_network=False)[0] == name
    with pytest.raises(ParameterError, match="unknown guidance"):
        options(guidance="clip-magic").validate()
