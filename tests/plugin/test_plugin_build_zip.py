"""scripts/build_plugin_zip.py builds the zip QGIS installs, with exactly the files it needs."""

import configparser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build_plugin_zip.py"


def run_builder(script, out_dir):
    return subprocess.run(
        [sys.executable, str(script), "--out-dir", str(out_dir)],
        capture_output=True,
        text=True,
        timeout=300,  # the backend wheel is built with pip
        check=False,
    )


def backend_version():
    text = (ROOT / "backend" / "rs_edit" / "__init__.py").read_text()
    return re.search(r'(?m)^__version__ = "([^"]+)"', text).group(1)


def metadata_version():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]["version"]


def test_zip_has_the_expected_members(tmp_path):
    result = run_builder(SCRIPT, tmp_path)
    assert result.returncode == 0, result.stderr
    archive = tmp_path / f"rs_edit_plugin-{metadata_version()}.zip"
    assert result.stdout.strip() == str(archive)

    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "rs_edit_plugin").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    wheel = f"rs_edit_plugin/wheels/rs_edit-{backend_version()}-py3-none-any.whl"
    expected = sources | {
        "rs_edit_plugin/icon.png",
        "rs_edit_plugin/metadata.txt",
        "rs_edit_plugin/LICENSE",
        wheel,
    }
    with zipfile.ZipFile(archive) as zf:
        assert zf.testzip() is None
        assert set(zf.namelist()) == expected
        # The backend wheel ("Set up local backend" installs it): the package, no tests.
        (tmp_path / "backend.whl").write_bytes(zf.read(wheel))
        with zipfile.ZipFile(tmp_path / "backend.whl") as backend:
            names = backend.namelist()
            assert "rs_edit/cli.py" in names and "rs_edit/service/routes.py" in names
            assert not [n for n in names if n.startswith(("tests/", "bench/", "rs_edit_plugin/"))]
            (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
            assert "Name: rs-edit" in backend.read(meta).decode()
            entry = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
            assert b"rs-edit = rs_edit.cli:main" in backend.read(entry[0])
        assert zf.read("rs_edit_plugin/metadata.txt") == (ROOT / "metadata.txt").read_bytes()
        assert zf.read("rs_edit_plugin/icon.png") == (ROOT / "rs_edit_plugin/icon.png").read_bytes()
    assert {"rs_edit_plugin/__init__.py", "rs_edit_plugin/plugin.py"} <= expected


def copy_tree(dest):
    """A minimal checkout to run the builder on, so files can be added or removed."""
    shutil.copytree(
        ROOT / "rs_edit_plugin",
        dest / "rs_edit_plugin",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (dest / "scripts").mkdir()
    shutil.copy(SCRIPT, dest / "scripts")
    shutil.copy(ROOT / "metadata.txt", dest)
    shutil.copy(ROOT / "LICENSE", dest)
    return dest / "scripts" / SCRIPT.name


def test_caches_and_stray_files_stay_out_and_build_is_reproducible(tmp_path):
    script = copy_tree(tmp_path / "tree")
    cache = tmp_path / "tree" / "rs_edit_plugin" / "__pycache__"
    cache.mkdir()
    (cache / "plugin.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "tree" / "rs_edit_plugin" / "plugin.py.orig").write_text("x")

    assert run_builder(script, tmp_path / "a").returncode == 0
    assert run_builder(script, tmp_path / "b").returncode == 0
    name = f"rs_edit_plugin-{metadata_version()}.zip"
    first, second = (tmp_path / d / name for d in ("a", "b"))
    with zipfile.ZipFile(first) as zf:
        names = zf.namelist()
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".orig"))]
    assert all(n.startswith("rs_edit_plugin/") for n in names)
    assert first.read_bytes() == second.read_bytes()


def test_missing_license_fails_clearly(tmp_path):
    script = copy_tree(tmp_path / "tree")
    (tmp_path / "tree" / "LICENSE").unlink()
    result = run_builder(script, tmp_path / "dist")
    assert result.returncode == 2
    assert "missing" in result.stderr and "LICENSE" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "dist").glob("*.zip"))


def test_version_comes_from_metadata(tmp_path):
    script = copy_tree(tmp_path / "tree")
    metadata = tmp_path / "tree" / "metadata.txt"
    text = re.sub(r"(?m)^version=.*$", "version=9.8.7", metadata.read_text())
    metadata.write_text(text)
    assert run_builder(script, tmp_path / "dist").returncode == 0
    assert (tmp_path / "dist" / "rs_edit_plugin-9.8.7.zip").is_file()
