"""The dock's time estimate beside the preset: the backend's figures (health `estimates`) for
the chosen preset and the current area's size, "unknown" when the backend gives none."""

import pytest
from fake_backend import ESTIMATES
from helpers import ORIGIN, RES, make_geotiff
from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsPointXY,
    QgsRasterLayer,
    QgsRectangle,
)

from rs_edit_plugin.client import parse_health
from rs_edit_plugin.dock import RsEditDock, format_duration

UTM = QgsCoordinateReferenceSystem("EPSG:32633")
WEB = QgsCoordinateReferenceSystem("EPSG:3857")
# Steep figures, so that the small test raster's areas give times far apart.
STEEP = {
    "auto": {"seconds_fixed": 2.0, "seconds_per_megapixel": 20_000.0, "source": "history"},
    "fast": {"seconds_fixed": 2.0, "seconds_per_megapixel": 20_000.0, "source": "history"},
    "tiny": {"seconds_fixed": 1.0, "seconds_per_megapixel": 1000.0, "source": "built-in"},
    "balanced": {"seconds_fixed": 11_000.0, "seconds_per_megapixel": 0.0, "source": "built-in"},
    "quality": None,
}


def utm(c, r):
    return QgsPointXY(ORIGIN[0] + c * RES, ORIGIN[1] - r * RES)


@pytest.fixture
def dock(qgis_iface, project, tmp_path, fake_backend):
    path, _data, _gt = make_geotiff(tmp_path / "scene.tif", width=60, height=50, bands=3)
    layer = QgsRasterLayer(str(path), "scene")
    project.addMapLayer(layer)
    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    widget.layer_combo.setLayer(layer)
    yield widget, QgsCoordinateTransform(UTM, WEB, project)
    widget.cleanup()
    widget.deleteLater()


def area(widget, to_web, c0, r0, c1, r1):
    """The area: the rectangle of pixel columns c0..c1, rows r0..r1 of the scene."""
    rect = QgsRectangle(to_web.transform(utm(c0, r1)), to_web.transform(utm(c1, r0)))
    widget.set_rectangle(rect, WEB)


def expected(fixed, per_megapixel, size):
    return format_duration(fixed + per_megapixel * size[0] * size[1] / 1e6)


def choose(widget, preset):
    widget.preset_combo.setCurrentIndex(widget.preset_combo.findData(preset))


def test_the_estimate_follows_the_area_and_the_preset(dock, fake_backend):
    widget, to_web = dock
    fake_backend.behaviour["health"] = {"estimates": STEEP}
    label = widget.estimate_label
    assert label.text() == "time: unknown"  # no answer from the backend yet
    assert widget.check_backend().ok
    area(widget, to_web, 10, 10, 30, 20)  # about 20 x 10 px
    small = widget.area_size
    assert widget.area_label.text().startswith(f"Area {small[0]} x {small[1]} px")
    assert widget.preset_combo.currentData() == "auto"  # fast on this backend
    assert label.text() == f"about {expected(2, 20_000, small)} for this area"
    area(widget, to_web, 10, 10, 50, 40)  # about 40 x 30 px
    large = widget.area_size
    assert label.text() == f"about {expected(2, 20_000, large)} for this area"
    assert expected(2, 20_000, large) != expected(2, 20_000, small)
    choose(widget, "tiny")  # from reference figures
    assert label.text() == f"about {expected(1, 1000, large)} for this area (reference figures)"
    choose(widget, "balanced")  # training: hours whatever the size
    assert label.text() == "about 3 h for this area (reference figures)"
    choose(widget, "quality")  # null: the backend does not know
    assert label.text() == "time: unknown"
    choose(widget, "fast")
    widget.area_combo.setCurrentIndex(widget.area_combo.findData("extent"))
    widget.canvas().setExtent(QgsRectangle(0, 0, 10, 10))  # far away: no area
    widget.refresh_labels()
    assert widget.area_label.text().startswith("Area:") and label.text() == "time: unknown"


def test_no_estimate_from_an_older_backend(dock, fake_backend):
    widget, to_web = dock
    fake_backend.behaviour["health"] = {"estimates": None}
    assert widget.check_backend().ok
    area(widget, to_web, 10, 10, 30, 20)
    assert widget.estimate_label.text() == "time: unknown"


def test_the_fake_backends_figures_are_the_services_shape():
    health = parse_health("http://x", {"status": "ok", "estimates": {**ESTIMATES, "bad": {}}})
    assert dict(health.estimates)["fast"] == (5.0, 150.0, "history")
    assert "quality" not in dict(health.estimates) and "bad" not in dict(health.estimates)
    assert health.estimate_seconds("tiny", 100, 100) == pytest.approx(9.0)
    assert health.estimate_seconds("quality", 100, 100) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "1 s"), (14.8, "15 s"), (89, "89 s"), (150, "2 min"), (5400, "2 h"), (2e6, "23 days")],
)
def test_durations_read_naturally(seconds, text):
    assert format_duration(seconds) == text
