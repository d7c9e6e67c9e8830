"""Names that moved between QGIS 3.22 and 3.40, resolved once (old names stay valid in 3.x,
but newer QGIS deprecates them)."""

from qgis.core import (
    Qgis,
    QgsMapLayerProxyModel,
    QgsProcessing,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsRasterFileWriter,
    QgsWkbTypes,
)

if hasattr(Qgis, "ProcessingParameterFlag"):  # QGIS >= 3.36
    PARAMETER_ADVANCED = Qgis.ProcessingParameterFlag.Advanced
    SOURCE_POLYGON = Qgis.ProcessingSourceType.VectorPolygon
    NUMBER_INTEGER = Qgis.ProcessingNumberParameterType.Integer
else:
    PARAMETER_ADVANCED = QgsProcessingParameterDefinition.FlagAdvanced
    SOURCE_POLYGON = QgsProcessing.TypeVectorPolygon
    NUMBER_INTEGER = QgsProcessingParameterNumber.Integer

if hasattr(Qgis, "GeometryType"):  # QGIS >= 3.30
    POLYGON_GEOMETRY = Qgis.GeometryType.Polygon
else:
    POLYGON_GEOMETRY = QgsWkbTypes.PolygonGeometry

if hasattr(Qgis, "LayerFilter"):  # QGIS >= 3.34
    RASTER_LAYER_FILTER = Qgis.LayerFilter.RasterLayer
    POLYGON_LAYER_FILTER = Qgis.LayerFilter.PolygonLayer
else:
    RASTER_LAYER_FILTER = QgsMapLayerProxyModel.RasterLayer
    POLYGON_LAYER_FILTER = QgsMapLayerProxyModel.PolygonLayer

if hasattr(Qgis, "RasterFileWriterResult"):  # QGIS >= 3.32
    RASTER_WRITER_OK = Qgis.RasterFileWriterResult.Success
else:
    RASTER_WRITER_OK = QgsRasterFileWriter.NoError
