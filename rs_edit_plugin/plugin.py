"""Plugin object QGIS drives: initGui() adds the GUI, unload() takes all of it away again."""

import os

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .dock import RsEditDock
from .processing_provider import PROVIDER_ID, RsEditProvider

MENU_NAME = "&RS Edit"
ACTION_OBJECT_NAME = "RsEditAction"
ICON_PATH = os.path.join(os.path.dirname(__file__), "icon.png")


class RsEditPlugin:
    """Owns the toolbar/menu action, the dock and the Processing provider."""

    def __init__(self, iface):
        self.iface = iface
        self.action = None
        self.dock = None
        self.provider = None

    def initProcessing(self):
        """Called by QGIS for plugins with hasProcessingProvider=yes (e.g. by qgis_process),
        and by initGui; registers the provider once."""
        if self.provider is None:
            registry = QgsApplication.processingRegistry()
            stale = registry.providerById(PROVIDER_ID)  # left by a load that never unloaded
            if stale is not None:
                registry.removeProvider(stale)
            self.provider = RsEditProvider()
            if not registry.addProvider(self.provider):
                self.provider = None  # the registry has deleted it

    def initGui(self):
        self.initProcessing()
        main_window = self.iface.mainWindow()

        self.dock = RsEditDock(main_window, self.iface)
        self.iface.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.dock)
        self.dock.hide()  # opened from the action; QGIS restores its last state itself

        self.action = QAction(QIcon(ICON_PATH), "RS Edit", main_window)
        self.action.setObjectName(ACTION_OBJECT_NAME)
        self.action.setToolTip("Show or hide the RS Edit panel")
        # Makes the action checkable and keeps it in sync with the dock's visibility.
        self.dock.setToggleVisibilityAction(self.action)

        self.iface.addToolBarIcon(self.action)
        self.iface.addPluginToRasterMenu(MENU_NAME, self.action)

    def unload(self):
        if self.action is not None:
            self.iface.removePluginRasterMenu(MENU_NAME, self.action)
            self.iface.removeToolBarIcon(self.action)
        if self.dock is not None:
            self.dock.cleanup()
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.action.deleteLater()
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
