"""`rs-edit augment --reference-map VALUE=EXAMPLE.tif`: per damage class an example image the
class's polygons are edited to look like, locally and over `--server`; the manifest names each
sample's example and weight; a bad example fails before any work.

The fast tests use test_augment's stand-in editor (the raster path of `run_edit`, the example's
reading included, is real); one test runs the real tiny preset (tiny-random CLIP) on one sample.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import test_augment
import test_augment_remote
from conftest import random_data, write_raster
from test_augment import FakeEditor, manifest, options
from test_augment_remote import remote, server_jobs

from rs_edit import cli
from rs_edit.augment import MANIFEST_KEYS, parse_reference_map, run_augment
from rs_edit.errors import InputError, ParameterError
from rs_edit.scene import make_scene, write_scene

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:CLIP 'tiny-random' has RANDOM weights"),
]

inputs = test_augment.inputs  # (raster, polygons, boxes): the 96 px scene and BOXES
server = test_augment_remote.server  # a real server, editing in its threads (the stand-in)
# test_augment's BOXES: polygons 1 and 3 are "major", 2 is "minor".
PROMPTS = {"major": "collapsed buildings", "minor": "damaged roofs"}


class ExampleEditor(FakeEditor):
    """The stand-in editor, noting which prompts came with an example (`tile.example`)."""

    seen: list[tuple[str, str | None, float]] = []

    def edit(self, tile, progress):
        example = tile.example
        name = None if example is None else Path(example.plan.info.path).name
        ExampleEditor.seen.append((self.options.prompt, name, self.options.reference_weight))
        return super().edit(tile, progress)


@pytest.fixture
def example_editor(monkeypatch):
    import rs_edit.guidance.editor as editor

    ExampleEditor.seen = []
    monkeypatch.setattr(editor, "TextEditor", ExampleEditor)
    return ExampleEditor.seen


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> dict[str, Path]:
    """Example images: two RGB scenes (another place, the raster's resolution), a one-band
    raster and a text file."""
    d = tmp_path_factory.mktemp("examples")
    made = {}
    for name, seed in (("rubble.tif", 9), ("ruins.tif", 11)):
        write_scene(make_scene(40, seed=seed, origin=(600000.0, 5400000.0)), d / name)
        made[name] = d / name
    made["gray"] = write_raster(d / "gray.tif", random_data("uint8", 1, 40, 40))
    made["text"] = d / "notes.tif"
    made["text"].write_text("not a raster\n")
    return made


def by_class(reference_map: dict, **kw):
    """Options that edit each class by its prompt, with these examples."""
    base = dict(prompts=(), prompt_field="damage", prompt_map=PROMPTS, variants=1)
    return options(**{**base, "reference_map": {k: str(v) for k, v in reference_map.items()}, **kw})


def test_each_class_is_edited_with_its_example(inputs, examples, tmp_path, example_editor):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    opts = by_class({"major": examples["rubble.tif"]}, reference_weight=0.6)
    assert run_augment(raster, geojson, out, opts).made == 3
    lines = {e["polygon_id"]: e for e in manifest(out)}
    for pid in ("1", "3"):
        assert lines[pid]["reference"] == "rubble.tif" and lines[pid]["reference_weight"] == 0.6
    assert lines["2"]["reference"] is None and lines["2"]["reference_weight"] is None
    assert all(list(e) == list(MANIFEST_KEYS) for e in lines.values())
    # The example reached the edit of its class only, with its weight.
    assert sorted(example_editor) == [
        (PROMPTS["major"], "rubble.tif", 0.6),
        (PROMPTS["major"], "rubble.tif", 0.6),
        (PROMPTS["minor"], None, 0.8),
    ]


def test_rerun_remakes_only_samples_whose_example_changed(
    inputs, examples, tmp_path, example_editor
):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    first = by_class({"major": examples["rubble.tif"]})
    assert run_augment(raster, geojson, out, first).made == 3
    assert run_augment(raster, geojson, out, first).made == 0
    result = run_augment(raster, geojson, out, by_class({"major": examples["ruins.tif"]}))
    assert (result.made, result.skipped) == (2, 1)
    lines = {e["polygon_id"]: e["reference"] for e in manifest(out)}
    assert lines == {"1": "ruins.tif", "2": None, "3": "ruins.tif"}


@pytest.mark.parametrize(
    ("case", "error", "words"),
    [
        ("not a raster", InputError, "--reference-map major: example image"),
        ("bands", ParameterError, "1 data band"),
        ("missing", ParameterError, "not found"),
        ("no prompt field", ParameterError, "needs --prompt-field"),
        ("class not in the prompt map", ParameterError, "'wrecked'"),
        ("weight", ParameterError, "between 0 and 1"),
    ],
)
def test_bad_example_fails_before_any_work(inputs, examples, tmp_path, case, error, words):
    raster, geojson, _ = inputs
    rubble = examples["rubble.tif"]
    opts = {
        "not a raster": by_class({"major": examples["text"]}),
        "bands": by_class({"major": examples["gray"]}),
        "missing": by_class({"major": tmp_path / "nowhere.tif"}),
        "no prompt field": options(reference_map={"major": str(rubble)}),
        "class not in the prompt map": by_class({"wrecked": rubble}),
        "weight": by_class({"major": rubble}, reference_weight=1.5),
    }[case]
    with pytest.raises(error, match=words):
        run_augment(raster, geojson, tmp_path / "out", opts)
    assert not (tmp_path / "out").exists()


def test_parse_reference_map():
    assert parse_reference_map(["major = a.tif", "minor=b/c.tif"]) == {
        "major": "a.tif",
        "minor": "b/c.tif",
    }
    for bad in (["major"], ["=a.tif"], ["major="], ["a=x.tif", "a=y.tif"]):
        with pytest.raises(ParameterError, match="--reference-map"):
            parse_reference_map(bad)


def test_cli_reference_map(inputs, examples, tmp_path, example_editor):
    raster, geojson, _ = inputs
    out = tmp_path / "out"
    argv = ["augment", str(raster), "--polygons", str(geojson), "--prompt-field", "damage"]
    argv += [f"--prompt-map=major={PROMPTS['major']}"]
    argv += ["--reference-map", f"major={examples['rubble.tif']}", "--reference-weight", "0.3"]
    argv += ["--chip", "48", "--preset", "tiny", "--clip", "tiny-random"]
    argv += ["--device", "cpu", "--quiet", "-o", str(out)]
    assert cli.main(argv) == 0
    lines = manifest(out)
    assert {(e["polygon_id"], e["reference"], e["reference_weight"]) for e in lines} == {
        ("1", "rubble.tif", 0.3),
        ("3", "rubble.tif", 0.3),
    }


def test_remote_run_sends_the_example(inputs, examples, server, tmp_path, example_editor):
    raster, geojson, _ = inputs
    opts = by_class({"major": examples["rubble.tif"]}, reference_weight=0.6)
    local, far = tmp_path / "local", tmp_path / "remote"
    run_augment(raster, geojson, local, opts)
    before = server_jobs(server)
    assert run_augment(raster, geojson, far, opts, remote=remote(server)).made == 3
    jobs = [j for i, j in server_jobs(server).items() if i not in before]
    sent = sorted((j["options"]["prompt"], j["options"]["reference"]) for j in jobs)
    assert sent == [
        (PROMPTS["major"], "rubble.tif"),
        (PROMPTS["major"], "rubble.tif"),
        (PROMPTS["minor"], None),
    ]
    assert {j["options"]["reference_weight"] for j in jobs if j["options"]["reference"]} == {0.6}
    # The same dataset as a local run, the examples' fields included.
    fields = lambda out: sorted(  # noqa: E731
        (e["sample"], e["reference"], e["reference_weight"]) for e in manifest(out)
    )
    assert fields(far) == fields(local)
    for entry in manifest(far):
        with rasterio.open(far / entry["post"]) as a, rasterio.open(local / entry["post"]) as b:
            assert np.array_equal(a.read(), b.read())


@pytest.mark.slow
def test_real_edit_with_an_example(inputs, examples, tmp_path):
    raster, geojson, _ = inputs
    feats = json.loads(geojson.read_text())
    feats["features"] = feats["features"][:1]  # polygon 1, "major"
    one = tmp_path / "one.geojson"
    one.write_text(json.dumps(feats))
    out = tmp_path / "out"
    opts = by_class({"major": examples["rubble.tif"]}, chip=32)
    run_augment(raster, one, out, opts)
    (entry,) = manifest(out)
    assert entry["reference"] == "rubble.tif" and entry["reference_weight"] == 0.8
    with rasterio.open(out / entry["pre"]) as a, rasterio.open(out / entry["post"]) as b:
        assert not np.array_equal(a.read(), b.read())
