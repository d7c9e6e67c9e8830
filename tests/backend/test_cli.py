"""The `rs-edit` command line: bad input is exit 2 with one clear line and nothing written.

Each case runs in-process through `rs_edit.cli.main` (stderr captured), and a few run as a real
subprocess to check the real exit status and that stderr is exactly one line without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ORIGIN, random_data, write_raster
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from rs_edit import __version__
from rs_edit.cli import EXIT_BAD_INPUT, main

REPO_ROOT = Path(__file__).resolve().parents[2]
PIXEL = 10.0  # conftest's grid: UTM 33N, 10 m pixels, origin ORIGIN
TO_WGS84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
RGB = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]


# --- helpers ----------------------------------------------------------------------------------


def pixel_box_wgs84(col0: float, row0: float, col1: float, row1: float) -> dict:
    """A GeoJSON (RFC 7946, lon/lat) polygon over a pixel box of conftest's UTM 33N grid."""
    ring = []
    for col, row in ((col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)):
        x, y = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
        lon, lat = TO_WGS84.transform(x, y)
        ring.append([lon, lat])
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def snapshot(folder: Path) -> set[str]:
    """Every name in the folder, hidden temporary files included."""
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def env(tmp_path: Path, monkeypatch):
    """An RGB GeoTIFF (64x48 on conftest's grid) and an empty output folder."""
    monkeypatch.delenv("RS_EDIT_DEBUG", raising=False)
    image = write_raster(
        tmp_path / "in.tif",
        random_data("uint8", 3),
        colorinterp=RGB,
        descriptions=["red", "green", "blue"],
    )
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    return image, out_dir


def edit_args(image: Path, output: Path, *extra: str, prompt: str | None = "flooded fields"):
    args = ["edit", str(image), "-o", str(output), "--clip", "tiny-random", "--preset", "tiny"]
    if prompt is not None:
        args += ["--prompt", prompt]
    return args + list(extra)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """`main(argv)` in-process; argparse's SystemExit counts as the exit status."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_clear_line(err: str, *needles: str) -> str:
    assert err.endswith("\n"), f"stderr does not end with a newline: {err!r}"
    line = err[:-1]
    assert line.strip(), "stderr is empty"
    assert "\n" not in line, f"stderr is more than one line: {err!r}"
    assert "Traceback" not in err
    assert line.startswith("rs-edit"), f"the line does not say who is talking: {line!r}"
    lower = line.lower()
    for needle in needles:
        assert needle.lower() in lower, f"{needle!r} not in stderr line {line!r}"
    return line


def assert_bad_input(argv, capsys, out_dir: Path, output: Path, *needles: str, before=None):
    before = snapshot(out_dir) if before is None else before
    code, out, err = run_main(argv, capsys)
    assert code == EXIT_BAD_INPUT, f"exit {code}, stderr {err!r}"
    assert_one_clear_line(err, *needles)
    assert not output.exists(), "something was written at OUTPUT"
    assert snapshot(out_dir) == before, "stray files left in the output folder"
    return err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RS_EDIT_DEBUG"}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "rs_edit.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def truncated_geotiff(path: Path) -> Path:
    """A valid tiled, uncompressed 256x256x3 uint8 GeoTIFF cut to 60 % of its size."""
    data = np.random.default_rng(1).integers(0, 256, size=(3, 256, 256), dtype=np.uint8)
    write_raster(path, data, tiled=True, blockxsize=64, blockysize=64, compress=None)
    full = path.read_bytes()
    assert len(full) > 3 * 256 * 256  # really uncompressed: the cut lands in pixel data
    path.write_bytes(full[: int(len(full) * 0.6)])
    return path


# --- bad input: exit 2, one line, nothing written --------------------------------------------


def test_missing_input(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    missing = image.parent / "nope.tif"
    assert_bad_input(edit_args(missing, output), capsys, out_dir, output, "not found", "nope.tif")


def test_directory_as_input(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    folder = image.parent / "a_folder"
    folder.mkdir()
    assert_bad_input(edit_args(folder, output), capsys, out_dir, output, "directory", "a_folder")


def test_text_file_as_input(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    text = image.parent / "notes.tif"
    text.write_text("this is not a raster\n" * 50, encoding="utf-8")
    err = assert_bad_input(edit_args(text, output), capsys, out_dir, output, "notes.tif")
    assert "raster" in err.lower() or "format" in err.lower()


def test_truncated_geotiff(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    cut = truncated_geotiff(image.parent / "cut.tif")
    err = assert_bad_input(edit_args(cut, output), capsys, out_dir, output, "cut.tif")
    assert "truncated" in err.lower() or "corrupt" in err.lower(), err


def test_geojson_roi_without_georeferencing(tmp_path, env, capsys):
    _, out_dir = env
    output = out_dir / "o.tif"
    plain = write_raster(
        tmp_path / "plain.tif", random_data("uint8", 3), crs=None, transform=None, colorinterp=RGB
    )
    roi = write_json(tmp_path / "roi.geojson", pixel_box_wgs84(10, 10, 20, 20))
    assert_bad_input(
        edit_args(plain, output, "--roi", str(roi)), capsys, out_dir, output, "georeferenc"
    )


def test_invalid_json_roi(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    roi = tmp_path / "roi.geojson"
    roi.write_text('{"type": "FeatureCollection", "features": [', encoding="utf-8")
    assert_bad_input(edit_args(image, output, "--roi", str(roi)), capsys, out_dir, output, "json")


@pytest.mark.parametrize(
    "geometry",
    [
        {"type": "LineString", "coordinates": [[15.0, 49.6], [15.001, 49.601]]},
        {"type": "Point", "coordinates": [15.0, 49.6]},
    ],
    ids=["linestring", "point"],
)
def test_geojson_without_polygons(tmp_path, env, capsys, geometry):
    image, out_dir = env
    output = out_dir / "o.tif"
    roi = write_json(
        tmp_path / "roi.geojson",
        {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": geometry}]},
    )
    assert_bad_input(
        edit_args(image, output, "--roi", str(roi)),
        capsys,
        out_dir,
        output,
        "no polygons",
        geometry["type"],
    )


def test_roi_outside_image(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    # The image is 64x48 pixels; this box is 500 pixels to the east of it.
    roi = write_json(tmp_path / "roi.geojson", pixel_box_wgs84(500, 10, 520, 30))
    assert_bad_input(
        edit_args(image, output, "--roi", str(roi)), capsys, out_dir, output, "outside"
    )


def test_mask_of_another_size(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    mask = write_raster(tmp_path / "mask.tif", np.ones((1, 40, 64), dtype=np.uint8))
    assert_bad_input(
        edit_args(image, output, "--mask", str(mask)), capsys, out_dir, output, "mask", "grid"
    )


def test_mask_shifted_grid(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    shifted = from_origin(ORIGIN[0] + 3 * PIXEL, ORIGIN[1], PIXEL, PIXEL)
    mask = write_raster(
        tmp_path / "mask.tif", np.ones((1, 48, 64), dtype=np.uint8), transform=shifted
    )
    assert_bad_input(
        edit_args(image, output, "--mask", str(mask)), capsys, out_dir, output, "mask", "grid"
    )


def test_mask_all_zeros(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    mask = write_raster(tmp_path / "mask.tif", np.zeros((1, 48, 64), dtype=np.uint8))
    assert_bad_input(
        edit_args(image, output, "--mask", str(mask)), capsys, out_dir, output, "mask", "empty"
    )


@pytest.mark.parametrize("prompt", ["", "   "], ids=["empty", "blank"])
def test_empty_or_blank_prompt(env, capsys, prompt):
    image, out_dir = env
    output = out_dir / "o.tif"
    assert_bad_input(
        edit_args(image, output, prompt=prompt), capsys, out_dir, output, "prompt", "empty"
    )


def test_unknown_preset(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    argv = edit_args(image, output) + ["--preset", "ultra-mega"]  # the last --preset wins
    assert_bad_input(argv, capsys, out_dir, output, "preset", "ultra-mega")


def test_clip_checkpoint_not_found(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    argv = edit_args(image, output) + ["--clip", "/nonexistent/x.pt"]
    assert_bad_input(argv, capsys, out_dir, output, "not found", "/nonexistent/x.pt")


def test_missing_prompt_is_a_one_line_usage_error(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    err = assert_bad_input(edit_args(image, output, prompt=None), capsys, out_dir, output)
    assert "--prompt" in err
    assert "usage" not in err.lower()


def test_output_folder_missing(env, capsys):
    image, out_dir = env
    output = out_dir / "no_such_folder" / "o.tif"
    assert_bad_input(
        edit_args(image, output), capsys, out_dir, output, "output folder", "no_such_folder"
    )


def test_output_equals_input(env, capsys):
    image, out_dir = env
    before = image.read_bytes()
    code, _, err = run_main(edit_args(image, image), capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_clear_line(err, "overwrite", "input")
    assert image.read_bytes() == before, "the input was modified"
    assert sorted(p.name for p in image.parent.iterdir()) == ["in.tif", "out"]
    assert snapshot(out_dir) == set()


def test_output_equals_input_through_another_spelling(env, capsys):
    image, out_dir = env
    before = image.read_bytes()
    other = image.parent / "out" / ".." / image.name
    code, _, err = run_main(edit_args(image, other), capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_clear_line(err, "overwrite")
    assert image.read_bytes() == before


def test_roi_and_mask_together(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    roi = write_json(tmp_path / "roi.geojson", pixel_box_wgs84(10, 10, 20, 20))
    mask = write_raster(tmp_path / "mask.tif", np.ones((1, 48, 64), dtype=np.uint8))
    err = assert_bad_input(
        edit_args(image, output, "--roi", str(roi), "--mask", str(mask)),
        capsys,
        out_dir,
        output,
    )
    assert "--roi" in err and "--mask" in err


def test_missing_roi_file(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    argv = edit_args(image, output, "--roi", str(tmp_path / "nowhere.geojson"))
    assert_bad_input(argv, capsys, out_dir, output, "not found", "nowhere.geojson")


def test_missing_mask_file(tmp_path, env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    argv = edit_args(image, output, "--mask", str(tmp_path / "nowhere.tif"))
    assert_bad_input(argv, capsys, out_dir, output, "mask", "not found", "nowhere.tif")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--variants", "0"], "variants"),
        (["--seed", "-1"], "seed"),
        (["--seed", "abc"], "--seed"),
        (["--rgb-bands", "4,3,2"], "band 4"),  # the image has 3 bands
        (["--rgb-bands", "r,g,b"], "band list"),
        (["--device", "tpu"], "--device"),
    ],
    ids=["variants0", "seed-negative", "seed-text", "rgb-band-missing", "rgb-band-text", "device"],
)
def test_other_bad_parameters(env, capsys, extra, needle):
    image, out_dir = env
    output = out_dir / "o.tif"
    assert_bad_input(edit_args(image, output, *extra), capsys, out_dir, output, needle)


def test_existing_output_is_left_alone_on_bad_input(env, capsys):
    image, out_dir = env
    output = out_dir / "o.tif"
    output.write_bytes(b"previous result")
    before = snapshot(out_dir)
    code, _, err = run_main(edit_args(image, output, prompt="  "), capsys)
    assert code == EXIT_BAD_INPUT, err
    assert_one_clear_line(err, "prompt")
    assert output.read_bytes() == b"previous result"
    assert snapshot(out_dir) == before


def test_version(capsys):
    code, out, err = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"rs-edit {__version__}"
    assert err == ""


# --- real subprocesses: the real exit status and stderr ---------------------------------------


def test_subprocess_truncated_geotiff(env):
    image, out_dir = env
    output = out_dir / "o.tif"
    cut = truncated_geotiff(image.parent / "cut.tif")
    proc = run_cli(*edit_args(cut, output))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert_one_clear_line(proc.stderr, "cut.tif")
    assert proc.stdout == ""
    assert not output.exists() and snapshot(out_dir) == set()


def test_subprocess_missing_prompt(env):
    image, out_dir = env
    output = out_dir / "o.tif"
    proc = run_cli(*edit_args(image, output, prompt=None))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert_one_clear_line(proc.stderr, "--prompt")
    assert proc.stdout == ""
    assert snapshot(out_dir) == set()


def test_subprocess_roi_outside_image(tmp_path, env):
    image, out_dir = env
    output = out_dir / "o.tif"
    roi = write_json(tmp_path / "roi.geojson", pixel_box_wgs84(-300, -300, -200, -200))
    proc = run_cli(*edit_args(image, output, "--roi", str(roi)))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert_one_clear_line(proc.stderr, "outside")
    assert snapshot(out_dir) == set()


def test_subprocess_truncated_png(env):
    """A plain read of a cut PNG gives zeros without an error: it is still refused up front."""
    import rasterio

    image, out_dir = env
    output = out_dir / "o.tif"
    png = image.parent / "cut.png"
    data = random_data("uint8", 3)
    with rasterio.open(png, "w", driver="PNG", width=64, height=48, count=3, dtype="uint8") as d:
        d.write(data)
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    proc = run_cli(*edit_args(png, output))
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert_one_clear_line(proc.stderr, "truncated or corrupt", "cut.png")
    assert snapshot(out_dir) == set()


def test_subprocess_unwritable_output_folder_is_refused_before_any_work(tmp_path):
    """As an ordinary user (root writes anywhere: it drops to nobody with setpriv)."""
    import shutil
    import stat

    drop = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot test an unwritable folder")
        drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # Somewhere an unprivileged user can reach (pytest's tmp_path may be private to root).
    base = Path(tempfile.mkdtemp(prefix="rs-edit-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        image = write_raster(base / "in.tif", random_data("uint8", 3), colorinterp=RGB)
        image.chmod(0o644)
        locked = base / "locked"
        locked.mkdir()
        locked.chmod(
            stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        )
        env = {k: v for k, v in os.environ.items() if k != "RS_EDIT_DEBUG"}
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["RS_EDIT_CACHE_DIR"] = str(base / "cache")
        env["HOME"] = str(base)
        proc = subprocess.run(
            [*drop, sys.executable, "-m", "rs_edit.cli", *edit_args(image, locked / "o.tif")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
        assert_one_clear_line(proc.stderr, "not writable", str(locked))
        assert list(locked.iterdir()) == []
    finally:
        base.chmod(0o755)
        (base / "locked").chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "verbose"])
def test_subprocess_random_clip_warning_is_one_line(env, quiet):
    image, out_dir = env
    output = out_dir / "o.tif"
    proc = run_cli(*edit_args(image, output, *(["--quiet"] if quiet else [])))
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "RANDOM weights" in line]
    assert len(said) == 1, proc.stderr
    assert said[0].startswith("rs-edit: ") and "MEANINGLESS" in said[0]
    assert ".py:" not in proc.stderr and "load_clip(" not in proc.stderr  # no Python source
    if quiet:
        assert proc.stderr.splitlines() == said


def test_subprocess_version():
    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"rs-edit {__version__}"
