"""Plugin object QGIS drives: initGui() adds the GUI, unload() takes all of it away again."""

import os

from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from .dock import RsEditDock

MENU_NAME = "&RS Edit"  # submenu under Raster; later issues add more actions to it
ACTION_OBJECT_NAME = "RsEditAction"
ICON_PATH = os.path.join(os.path.dirname(__file__), "icon.png")


class RsEditPlugin:
    """Owns the toolbar/menu action and the dock; keeps no other global state."""

    def __init__(self, iface):
        self.iface = iface
        self.action = None
        self.dock = None

    def initProcessing(self):
        """Called by QGIS for plugins with hasProcessingProvider=yes (e.g. by qgis_process).

        The processing provider arrives in a later version; the hook must exist already.
        """

    def initGui(self):
        self.initProcessing()
        main_window = self.iface.mainWindow()

        self.dock = RsEditDock(main_window)
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
            self.iface.removeDockWidget(self.dock)
            self.dock.deleteLater()
            self.dock = None
        if self.action is not None:
            self.action.deleteLater()
            self.action = None
