"""The band combos of the dock ("Bands seen as RGB"), with the layer's real band names.

QgsRasterBandComboBox shows QGIS's generated names ("Band 1 (Red)"); analysts know their
bands by the names in the file (B04, nir, ...). Each item here is "<n>: <name>", the name
being the band's description in the file, with its colour interpretation when it adds one.
"""

from qgis.core import QgsRasterLayer
from qgis.PyQt.QtWidgets import QComboBox

from . import area

# Colour interpretations that say nothing about the band.
NO_COLOUR = {"", "undefined", "gray", "grayindex", "grey"}


def _description_from_qgis(layer: QgsRasterLayer, band: int) -> str:
    """The description part of QGIS's "Band 1: description" (non-GDAL layers)."""
    name = layer.bandName(band) or ""
    prefix = f"Band {band}"
    if name.startswith(prefix):
        name = name[len(prefix) :].lstrip(": ").strip()
    return name


def band_names(layer: QgsRasterLayer) -> list[str]:
    """'<n>: <name>' for each band of `layer` ('<n>: Band <n>' when the file names none)."""
    if layer is None or not layer.isValid():
        return []
    count = layer.bandCount()
    provider = layer.dataProvider()
    path = area.gdal_path(layer)
    dataset = area.gdal_open(path) if path else None
    names = []
    for band in range(1, count + 1):
        if dataset is not None and band <= dataset.RasterCount:
            description = (dataset.GetRasterBand(band).GetDescription() or "").strip()
        else:
            description = _description_from_qgis(layer, band)
        colour = provider.colorInterpretationName(band) if provider is not None else ""
        colour = "" if (colour or "").strip().lower() in NO_COLOUR else colour.strip()
        if description and colour and colour.lower() not in description.lower():
            text = f"{description} ({colour})"
        else:
            text = description or colour or f"Band {band}"
        names.append(f"{band}: {text}")
    dataset = None
    return names


class BandCombo(QComboBox):
    """A band of a raster layer, by number (the item data), shown with its real name."""

    def setLayer(self, layer) -> None:  # noqa: N802 (the QgsRasterBandComboBox API)
        current = self.currentBand()
        self.blockSignals(True)
        try:
            self.clear()
            raster = layer if isinstance(layer, QgsRasterLayer) else None
            for band, name in enumerate(band_names(raster), start=1):
                self.addItem(name, band)
        finally:
            self.blockSignals(False)
        self.setBand(current)

    def setBand(self, band: int) -> None:  # noqa: N802
        index = self.findData(int(band)) if band else -1
        self.setCurrentIndex(max(0, index) if self.count() else -1)

    def currentBand(self) -> int:  # noqa: N802
        data = self.currentData()
        return int(data) if data is not None else -1
