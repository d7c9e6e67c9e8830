"""metadata.txt holds what the official QGIS plugin repository requires, and the icon is real."""

import configparser
import re
import struct
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["name", "description", "about", "version", "qgisMinimumVersion", "author"]
REQUIRED += ["email", "repository", "tracker", "homepage", "tags", "category", "icon"]


def read_metadata():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "metadata.txt", encoding="utf-8")
    return parser["general"]


def test_required_fields_are_filled():
    meta = read_metadata()
    assert [key for key in REQUIRED if not meta.get(key, "").strip()] == []
    assert meta["name"] == "RS Edit"
    assert meta["qgisMinimumVersion"] == "3.22"
    assert meta["category"] == "Raster"
    assert meta.getboolean("experimental")
    assert meta.getboolean("hasProcessingProvider")
    assert len(meta["about"].split(". ")) >= 3
    assert "later version" not in meta["about"]  # editing from QGIS is here now
    assert meta["changelog"].strip().startswith(meta["version"] + " - ")
    for key in ("homepage", "repository", "tracker"):
        assert meta[key].startswith("https://")


def test_icon_is_a_64px_png():
    meta = read_metadata()
    data = (ROOT / "rs_edit_plugin" / meta["icon"]).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR follows the signature
    assert (width, height) == (64, 64)
    assert (ROOT / "resources" / "icon.svg").is_file()


def backend_version():
    text = (ROOT / "backend" / "rs_edit" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE).group(1)


def test_one_version_everywhere():
    """Issue 16: the backend said 0.1.0 while the plugin and the README said 0.2.0."""
    version = read_metadata()["version"]
    assert backend_version() == version  # `rs-edit --version`, /v1/health and the API docs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = pyproject["project"]
    if "version" in project.get("dynamic", []):
        attr = pyproject["tool"]["setuptools"]["dynamic"]["version"]["attr"]
        assert attr == "rs_edit.__version__"
    else:
        assert project["version"] == version
    service = ROOT / "backend" / "rs_edit" / "service"  # the health answer (app.py or health.py)
    sources = [p.read_text(encoding="utf-8") for p in sorted(service.glob("*.py"))]
    assert any(re.search(r'"version": __version__', text) for text in sources)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert set(re.findall(r"Status \(([\d.]+)\)", readme)) == {version}
    assert set(re.findall(r"rs_edit_plugin-([\d.]+)\.zip", readme)) == {version}


def test_about_says_how_the_backend_is_installed():
    about = read_metadata()["about"]
    assert "pip install rs-edit" not in about  # rs-edit is not on PyPI
    assert "scripts/setup.sh" in about and "rs-edit serve" in about
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Install the plugin in QGIS", 1)[1].split("\n## ", 1)[0]
    assert "Plugins > Manage and Install Plugins > Install from ZIP" in section
    assert "scripts/build_plugin_zip.py" in section
    assert "scripts/setup.sh" in section and "rs-edit serve" in section
