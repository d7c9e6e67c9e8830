"""Shared set-up for the plugin tests, which run under QGIS's own Python with pytest-qgis.

Note: pytest-qgis creates the QgsApplication in its `pytest_load_initial_conftests` hook,
before this file is imported, so on a machine without a display the caller must already
export QT_QPA_PLATFORM=offscreen (scripts/plugin_tests.sh does). Setting it here covers the
remaining cases (e.g. pytest-qgis disabled) at no cost.
"""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `import rs_edit_plugin` from the checkout
    sys.path.insert(0, str(ROOT))
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # test helpers: helpers, fake_backend
    sys.path.insert(0, HERE)

from qgis.core import QgsSettings  # noqa: E402
from qgis.PyQt.QtCore import QCoreApplication, QEvent  # noqa: E402

from rs_edit_plugin import settings as plugin_settings  # noqa: E402

TEST_TIMEOUT_S = 90  # above QGIS's own 60 s network timeout


def pytest_collection_modifyitems(config, items):
    """A hung test must end the run rather than block it forever. The thread method is needed
    because a signal cannot interrupt a blocking C++ call such as blockingGet."""
    if config.pluginmanager.hasplugin("timeout") and config.getoption("timeout") is None:
        for item in items:
            if item.get_closest_marker("timeout") is None:  # a test may ask for more
                item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S, method="thread"))


def _flush_deletes():
    """Deliver pending deleteLater() calls, as QGIS's event loop would."""
    QCoreApplication.processEvents()
    QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)


@pytest.fixture
def flush_deletes():
    return _flush_deletes


def _clear_settings():
    for key in plugin_settings.ALL_KEYS:
        QgsSettings().remove(key)


@pytest.fixture(autouse=True)
def clean_plugin_settings(tmp_path):
    """Each test starts and ends without stored plugin settings (pytest-qgis keeps one
    settings file for the whole session); results go to the test's own folder, never to the
    user's home."""
    _clear_settings()
    plugin_settings.set_results_dir(str(tmp_path / "results"))
    QgsSettings().setValue(plugin_settings.PREFIX + "poll_interval_s", 0.05)
    yield
    _clear_settings()


@pytest.fixture
def fake_backend():
    """The job API on 127.0.0.1 (tests/plugin/fake_backend.py), URL stored in the settings."""
    from fake_backend import FakeBackend

    backend = FakeBackend().start()
    plugin_settings.set_backend_url(backend.url)
    yield backend
    backend.stop()


@pytest.fixture
def keep_inputs(monkeypatch):
    """Keep what a job exported (tile, mask, example), which the plugin deletes when the job
    ends, for tests that compare it with what was sent or returned."""
    from rs_edit_plugin import jobs

    monkeypatch.setattr(jobs, "remove_inputs", lambda request: None)


@pytest.fixture
def project(qgis_iface):
    """A fresh project in EPSG:3857 (the test rasters are in UTM 33N), canvas in the same CRS."""
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject

    qgis_iface.newProject()
    proj = QgsProject.instance()
    proj.clear()
    crs = QgsCoordinateReferenceSystem("EPSG:3857")
    proj.setCrs(crs)
    qgis_iface.mapCanvas().setDestinationCrs(crs)
    qgis_iface.messageBar().clear_messages()
    yield proj
    proj.clear()


@pytest.fixture
def master_password():
    """QGIS's authentication manager unlocked with a test master password (QGIS would ask)."""
    from qgis.core import QgsApplication

    manager = QgsApplication.authManager()
    assert not manager.isDisabled(), manager.disabledMessage()
    if not manager.masterPasswordIsSet():
        assert manager.setMasterPassword("rs-edit-test-master", True)
    return manager


class GuiRecorder:
    """What a plugin has put into the QGIS GUI, as the real QgisApp would hold it.

    pytest-qgis's stub iface silently ignores toolbar, menu and dock calls; this records
    them, and removing something never added raises, so leftovers and double removals show.
    """

    def __init__(self, main_window):
        self.main_window = main_window
        self.toolbar = []
        self.raster_menus = {}
        self.docks = []

    def add_toolbar_icon(self, action):
        self.toolbar.append(action)

    def remove_toolbar_icon(self, action):
        self.toolbar.remove(action)

    def add_raster_menu(self, name, action):
        self.raster_menus.setdefault(name, []).append(action)

    def remove_raster_menu(self, name, action):
        self.raster_menus[name].remove(action)
        if not self.raster_menus[name]:
            del self.raster_menus[name]

    def add_dock(self, area, dock):
        self.main_window.addDockWidget(area, dock)
        self.docks.append(dock)

    def remove_dock(self, dock):
        self.main_window.removeDockWidget(dock)
        self.docks.remove(dock)

    def is_empty(self):
        return not (self.toolbar or self.raster_menus or self.docks)


@pytest.fixture
def gui(qgis_iface, monkeypatch):
    """The pytest-qgis iface with toolbar/menu/dock calls routed to a GuiRecorder."""
    recorder = GuiRecorder(qgis_iface.mainWindow())
    for name, method in {
        "addToolBarIcon": recorder.add_toolbar_icon,
        "removeToolBarIcon": recorder.remove_toolbar_icon,
        "addPluginToRasterMenu": recorder.add_raster_menu,
        "removePluginRasterMenu": recorder.remove_raster_menu,
        "addDockWidget": recorder.add_dock,
        "removeDockWidget": recorder.remove_dock,
    }.items():
        monkeypatch.setattr(qgis_iface, name, method)
    yield recorder
    _flush_deletes()


@pytest.fixture(autouse=True)
def whole_messages(request):
    """pytest-qgis's message bar records "title:text" only; a message pushed with the bar's
    "more" text (rs_edit_plugin.messages) is recorded as "title:text [more: whole text]", so
    that tests see what the user can read. Only for tests that use the iface."""
    if "qgis_iface" not in request.fixturenames:
        yield
        return
    bar = request.getfixturevalue("qgis_iface").messageBar()
    original = bar.pushMessage

    def push(*args, **kwargs):
        if len(args) >= 3 and isinstance(args[2], str):  # title, text, showMore, level, ...
            return original(args[0], f"{args[1]} [more: {args[2]}]", *args[3:], **kwargs)
        return original(*args, **kwargs)

    bar.pushMessage = push
    yield
    del bar.pushMessage
