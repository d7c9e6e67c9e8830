"""RS Edit: a QGIS plugin that edits remote-sensing rasters by a text prompt.

The plugin is a thin client of the rs-edit backend (`rs-edit serve`); it knows QGIS and
HTTP, nothing of the models. QGIS imports this package and calls `classFactory`.
"""


def classFactory(iface):
    """Entry point QGIS calls with its QgisInterface (import kept local so that
    importing the package alone stays cheap and side-effect free)."""
    from .plugin import RsEditPlugin

    return RsEditPlugin(iface)
