"""The one atomic write (`rs_edit.files`) and the modes of the files written through it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import box

from rs_edit import files
from rs_edit.augment import write_chip, write_mask, write_png
from rs_edit.files import atomic_path, write_bytes_atomic, write_text_atomic
from rs_edit.roi import Roi
from rs_edit.scene import make_scene, write_scene

ROOT = Path(__file__).resolve().parents[2]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077])
def umask(request, monkeypatch):
    """The process umask set to the parameter for the test (the helper's cached copy too)."""
    old = os.umask(request.param)
    monkeypatch.setattr(files, "_UMASK", request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_mode_follows_the_umask(tmp_path, umask):
    target = tmp_path / "a.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"payload")
        assert mode(tmp) == 0o600  # mkstemp's mode until the file is complete
    assert target.read_bytes() == b"payload"
    assert mode(target) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["a.bin"]


def test_conveniences(tmp_path, umask):
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "t.json", '{"é": 1}\n')
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.json").read_text(encoding="utf-8") == '{"é": 1}\n'
    assert {mode(tmp_path / n) for n in ("b.bin", "t.json")} == {0o666 & ~umask}
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "t.json"]


@pytest.mark.parametrize("value, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_umask_is_read_from_the_process(tmp_path, value, expected):
    """Without any patching: the umask in force when the module is imported."""
    target = tmp_path / "x.txt"
    code = (
        f"import os; os.umask({value}); "
        "from rs_edit.files import write_text_atomic; "
        f"write_text_atomic({str(target)!r}, 'x')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    assert mode(target) == expected


def test_exception_leaves_nothing_and_target_untouched(tmp_path):
    target = tmp_path / "out.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        tmp.with_name(tmp.name + ".aux.xml").write_text("<PAMDataset/>")  # as GDAL leaves it
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.tif"]


def test_failing_writer_leaves_nothing(tmp_path):
    target = tmp_path / "new.bin"
    with pytest.raises(KeyboardInterrupt), atomic_path(target):
        raise KeyboardInterrupt  # not only Exception: an interrupted write is cleaned up too
    assert os.listdir(tmp_path) == []


def test_suffix_and_hidden_name(tmp_path):
    with atomic_path(tmp_path / "a.png", suffix=".png") as tmp:
        assert tmp.name.startswith(".a.png.") and tmp.name.endswith(".tmp.png")
        tmp.write_bytes(b"x")


def test_missing_folder_raises_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "no" / "x"):
        pass
    assert os.listdir(tmp_path) == []


def test_concurrent_writers_get_distinct_temporary_files(tmp_path):
    target = tmp_path / "shared.txt"
    n = 8
    barrier = threading.Barrier(n)
    temps: list[Path] = []
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            with atomic_path(target) as tmp:
                temps.append(tmp)
                barrier.wait(timeout=10)  # every temporary file exists at the same time
                tmp.write_text(f"writer {i}\n" * 1000)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(temps)) == n and all(t.parent == tmp_path for t in temps)
    lines = set(target.read_text().splitlines())
    assert len(lines) == 1 and lines.pop().startswith("writer ")  # one whole write, not a mix
    assert os.listdir(tmp_path) == ["shared.txt"]


# --- end to end: files that used to be written 0600 ------------------------------------------


@pytest.fixture
def umask_022(monkeypatch):
    old = os.umask(0o022)
    monkeypatch.setattr(files, "_UMASK", 0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_demo_scene_augment_chip_mask_and_png_are_0644(tmp_path, umask_022):
    scene_path = tmp_path / "scene.tif"
    write_scene(make_scene(48, seed=1), scene_path)
    window = Window(8, 8, 16, 16)
    chip = tmp_path / "pre.tif"
    write_chip(scene_path, window, chip)
    roi = Roi(bbox=Window(10, 10, 8, 8), pixels=box(10, 10, 18, 18))
    write_mask(roi, window, chip, tmp_path / "mask.tif")
    write_png(tmp_path / "a.png", np.zeros((4, 4, 3), dtype=np.uint8))
    names = ["a.png", "mask.tif", "pre.tif", "scene.tif"]
    assert sorted(os.listdir(tmp_path)) == names
    assert {n: mode(tmp_path / n) for n in names} == dict.fromkeys(names, 0o644)
    with rasterio.open(chip) as src:
        assert (src.count, src.height, src.width) == (3, 16, 16)


def test_raster_written_with_rasterio_to_the_temporary_path(tmp_path, umask_022):
    target = tmp_path / "r.tif"
    profile = dict(driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32633")
    with (
        atomic_path(target) as tmp,
        rasterio.open(tmp, "w", transform=from_origin(0, 4, 1, 1), **profile) as dst,
    ):
        dst.write(np.full((1, 4, 4), 7, dtype=np.uint8))
    with rasterio.open(target) as src:
        assert int(src.read().max()) == 7
    assert mode(target) == 0o644
