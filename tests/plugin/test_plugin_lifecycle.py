"""The plugin loads, shows its action, menu entry and dock, and unloads without leftovers."""

import sys
import zipfile
from pathlib import Path

import pytest
import qgis.utils
from qgis.core import QgsApplication
from qgis.gui import QgsDockWidget
from qgis.PyQt import sip
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QAction

import rs_edit_plugin
from rs_edit_plugin.dock import DOCK_OBJECT_NAME, RsEditDock
from rs_edit_plugin.plugin import ACTION_OBJECT_NAME, MENU_NAME, RsEditPlugin

ROOT = Path(__file__).resolve().parents[2]


def leftovers(main_window):
    """Plugin objects still alive in the main window."""
    return main_window.findChildren(QgsDockWidget, DOCK_OBJECT_NAME) + main_window.findChildren(
        QAction, ACTION_OBJECT_NAME
    )


def test_class_factory_returns_the_plugin(qgis_iface):
    plugin = rs_edit_plugin.classFactory(qgis_iface)
    assert isinstance(plugin, RsEditPlugin)
    assert plugin.iface is qgis_iface
    plugin.initProcessing()  # hasProcessingProvider=yes makes QGIS call it
    registry = QgsApplication.processingRegistry()
    try:
        assert registry.providerById("rsedit") is plugin.provider
        algorithm = registry.algorithmById("rsedit:editraster")
        assert algorithm is not None
        assert algorithm.displayName() == "Edit raster with a text prompt"
        names = [p.name() for p in algorithm.parameterDefinitions()]
        assert {"INPUT", "EXTENT", "ROI", "PROMPT", "PRESET", "OUTPUT"} <= set(names)
    finally:
        plugin.unload()
    assert registry.providerById("rsedit") is None


def test_init_gui_adds_action_menu_and_dock(gui, qgis_iface):
    plugin = rs_edit_plugin.classFactory(qgis_iface)
    plugin.initGui()
    try:
        action, dock = plugin.action, plugin.dock
        assert gui.toolbar == [action]
        assert gui.raster_menus == {MENU_NAME: [action]}
        assert gui.docks == [dock]
        assert isinstance(dock, RsEditDock)
        assert gui.main_window.findChildren(QgsDockWidget, DOCK_OBJECT_NAME) == [dock]
        assert gui.main_window.dockWidgetArea(dock) == Qt.DockWidgetArea.RightDockWidgetArea
        assert action.text() == "RS Edit"
        assert not action.icon().isNull(), "icon.png missing or unreadable"

        # The action toggles the dock and mirrors its state (QgsDockWidget tracks
        # visibility only once its window is shown, as QGIS's main window is).
        gui.main_window.show()
        assert not dock.isUserVisible() and not action.isChecked()
        action.trigger()
        assert dock.isUserVisible() and action.isChecked()
        action.trigger()
        assert not dock.isUserVisible() and not action.isChecked()
    finally:
        gui.main_window.hide()
        plugin.unload()


def test_unload_removes_everything_and_reloads_twice(gui, qgis_iface, flush_deletes):
    main_window = qgis_iface.mainWindow()
    for _round in range(2):
        plugin = rs_edit_plugin.classFactory(qgis_iface)
        plugin.initGui()
        action, dock = plugin.action, plugin.dock
        assert leftovers(main_window) == [dock, action]

        plugin.unload()
        flush_deletes()
        assert gui.is_empty(), vars(gui)
        assert sip.isdeleted(action) and sip.isdeleted(dock)
        assert leftovers(main_window) == []
        assert plugin.action is None and plugin.dock is None


@pytest.fixture
def qgis_plugin_dir(tmp_path, monkeypatch):
    """The built plugin zip unpacked into a QGIS plugin folder, with qgis.utils state
    isolated, and the checkout's copy of the package hidden while the test runs."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import build_plugin_zip

    archive = build_plugin_zip.build(out_dir=tmp_path / "dist")
    plugins_dir = tmp_path / "plugins"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(plugins_dir)

    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] == "rs_edit_plugin"}
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(plugins_dir))
    for name, value in {
        "plugin_paths": [str(plugins_dir)],
        "plugins": {},
        "active_plugins": [],
        "available_plugins": [],
        "plugin_times": {},
        "plugins_metadata_parser": {},
        "_plugin_modules": {},
    }.items():
        monkeypatch.setattr(qgis.utils, name, value)
    errors = []
    # QGIS reports plugin errors through showException (a dialog); collect them instead.
    monkeypatch.setattr(
        qgis.utils,
        "showException",
        lambda _t, exc, _tb, msg, *a, **k: errors.append(f"{msg}: {exc!r}"),
    )
    yield plugins_dir, errors
    for name in [n for n in sys.modules if n.split(".")[0] == "rs_edit_plugin"]:
        del sys.modules[name]
    sys.modules.update(saved)


def test_qgis_loads_and_unloads_the_built_plugin_twice(
    gui, qgis_iface, qgis_plugin_dir, flush_deletes
):
    """The way QGIS itself does it (qgis.utils), from the zip users install."""
    plugins_dir, errors = qgis_plugin_dir
    qgis.utils.updateAvailablePlugins()
    assert qgis.utils.available_plugins == ["rs_edit_plugin"]
    assert qgis.utils.pluginMetadata("rs_edit_plugin", "name") == "RS Edit"

    for _round in range(2):
        assert qgis.utils.loadPlugin("rs_edit_plugin"), errors
        assert sys.modules["rs_edit_plugin"].__file__.startswith(str(plugins_dir))
        assert qgis.utils.startPlugin("rs_edit_plugin"), errors
        assert qgis.utils.isPluginLoaded("rs_edit_plugin")
        assert len(gui.toolbar) == 1 and len(gui.docks) == 1
        assert QgsApplication.processingRegistry().algorithmById("rsedit:editraster")

        assert qgis.utils.unloadPlugin("rs_edit_plugin"), errors
        flush_deletes()
        assert gui.is_empty(), vars(gui)
        assert leftovers(qgis_iface.mainWindow()) == []
        assert QgsApplication.processingRegistry().providerById("rsedit") is None
        # QGIS drops the plugin's modules, so the next load runs fresh code.
        assert not [n for n in sys.modules if n.startswith("rs_edit_plugin")]
    assert errors == []


def test_qgis_process_starts_only_the_processing_part(gui, qgis_plugin_dir, flush_deletes):
    """qgis_process loads plugins with hasProcessingProvider=yes through
    startProcessingPlugin: the algorithm is there, no GUI is made."""
    _plugins_dir, errors = qgis_plugin_dir
    qgis.utils.updateAvailablePlugins()
    assert qgis.utils.loadPlugin("rs_edit_plugin"), errors
    assert qgis.utils.startProcessingPlugin("rs_edit_plugin"), errors
    try:
        registry = QgsApplication.processingRegistry()
        assert registry.algorithmById("rsedit:editraster") is not None
        assert gui.is_empty()
    finally:
        assert qgis.utils.unloadPlugin("rs_edit_plugin"), errors
        flush_deletes()
    assert QgsApplication.processingRegistry().providerById("rsedit") is None
    assert errors == []
