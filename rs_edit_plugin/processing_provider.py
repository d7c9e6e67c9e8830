"""The Processing provider: holds the "Edit raster with a text prompt" algorithm."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .processing_algorithm import EditRasterAlgorithm

PROVIDER_ID = "rsedit"
ICON_PATH = os.path.join(os.path.dirname(__file__), "icon.png")


class RsEditProvider(QgsProcessingProvider):
    def id(self):
        return PROVIDER_ID

    def name(self):
        return "RS Edit"

    def longName(self):
        return "RS Edit: edit rasters by a text prompt"

    def icon(self):
        return QIcon(ICON_PATH)

    def loadAlgorithms(self):
        self.addAlgorithm(EditRasterAlgorithm())
