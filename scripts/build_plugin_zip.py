"""Build dist/rs_edit_plugin-<version>.zip, ready for the QGIS plugin repository.

Standard library only. The zip holds one top folder, rs_edit_plugin/, with the package's
source and assets plus metadata.txt and LICENSE from the repository root, and the backend
as a wheel (rs_edit_plugin/wheels/rs_edit-<version>-py3-none-any.whl, built with
`pip wheel --no-deps` from a copy of backend/), which the panel's "Set up local backend"
installs. Entries have a fixed timestamp and order, so the same tree always gives the same zip.

    python scripts/build_plugin_zip.py [--out-dir DIR] [--no-backend-wheel]
"""

import argparse
import configparser
import os
import shutil
import subprocess  # nosec B404 - pip, with an argument list
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "rs_edit_plugin"
# Files of the package that ship; anything else (caches, editor droppings) stays out.
SHIPPED_SUFFIXES = {".py", ".png", ".svg", ".ui", ".qml", ".json"}
REQUIRED = ("metadata.txt", "LICENSE", f"{PACKAGE}/__init__.py", f"{PACKAGE}/icon.png")
FIXED_TIME = (2024, 1, 1, 0, 0, 0)
FIXED_EPOCH = "1704067200"  # the same instant, for the wheel's own entries
BACKEND_FILES = ("pyproject.toml", "README.md", "LICENSE")  # what building the wheel reads


class BuildError(Exception):
    """A problem with the source tree, reported as one line."""


def read_version(metadata: Path) -> str:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(metadata, encoding="utf-8")
    version = parser.get("general", "version", fallback="").strip()
    if not version:
        raise BuildError(f"{metadata} has no [general] version")
    return version


def collect(root: Path) -> dict[str, Path]:
    """Map archive names to source files."""
    for name in REQUIRED:
        if not (root / name).is_file():
            hint = " (GPL-2.0-or-later text expected)" if name == "LICENSE" else ""
            raise BuildError(f"missing {root / name}{hint}")
    members = {}
    for path in sorted((root / PACKAGE).rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in rel.parts:
            members[rel.as_posix()] = path
    members[f"{PACKAGE}/metadata.txt"] = root / "metadata.txt"
    members[f"{PACKAGE}/LICENSE"] = root / "LICENSE"
    return members


def build_backend_wheel(root: Path, work: Path) -> Path:
    """`pip wheel --no-deps` on a copy of the backend's sources (the checkout stays clean)."""
    source = work / "src"
    source.mkdir()
    for name in BACKEND_FILES:
        shutil.copy(root / name, source / name)
    shutil.copytree(
        root / "backend" / "rs_edit",
        source / "backend" / "rs_edit",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    out = work / "wheel"
    env = dict(os.environ, SOURCE_DATE_EPOCH=FIXED_EPOCH)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    done = subprocess.run(  # noqa: S603  # nosec B603
        [*command, str(source)], capture_output=True, text=True, env=env, check=False
    )
    wheels = sorted(out.glob("rs_edit-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BuildError(f"could not build the backend wheel: {done.stderr.strip()[-2000:]}")
    return wheels[0]


def build(root: Path = ROOT, out_dir: Path | None = None, backend_wheel: bool = True) -> Path:
    version = read_version(root / "metadata.txt")
    members = collect(root)
    with tempfile.TemporaryDirectory() as work:
        if backend_wheel and (root / "backend" / "rs_edit").is_dir():
            wheel = build_backend_wheel(root, Path(work))
            members[f"{PACKAGE}/wheels/{wheel.name}"] = wheel
        elif backend_wheel:
            print(f"warning: no backend/ in {root}: the zip has no backend wheel", file=sys.stderr)
        return _write(root, out_dir, version, members)


def _write(root: Path, out_dir: Path | None, version: str, members: dict) -> Path:
    out_dir = out_dir or root / "dist"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{PACKAGE}-{version}.zip"
    tmp = target.with_suffix(".zip.part")  # written aside, then renamed: no half-written zip
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name].read_bytes())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="default: <repo>/dist")
    parser.add_argument(
        "--no-backend-wheel", action="store_true", help="leave the backend wheel out (faster)"
    )
    args = parser.parse_args(argv)
    try:
        target = build(out_dir=args.out_dir, backend_wheel=not args.no_backend_wheel)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
