"""metadata.txt holds what the official QGIS plugin repository requires, and the icon is real."""

import configparser
import struct
from pathlib import Path

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
