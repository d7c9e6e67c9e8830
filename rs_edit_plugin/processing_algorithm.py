"""Processing algorithm "Edit raster with a text prompt": the whole job, blocking, inside the
Processing framework's own task (so the toolbox, batch mode, models and qgis_process run it).
"""

import dataclasses
from pathlib import Path

from osgeo import gdal
from qgis.core import (
    Qgis,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsRasterFileWriter,
)

from . import settings
from .area import AreaError
from .client import BackendError, CancelledError
from .compat import NUMBER_INTEGER, PARAMETER_ADVANCED, SOURCE_POLYGON
from .jobs import (
    LARGE_ROI_SHARE,
    MAX_EXAMPLE_SIDE,
    JobError,
    job_fields,
    prepare_example,
    prepare_request,
    run_job,
)
from .roi import RoiError

ALGORITHM_ID = "editraster"
if hasattr(Qgis, "ProcessingNumberParameterType"):  # QGIS >= 3.36
    NUMBER_DOUBLE = Qgis.ProcessingNumberParameterType.Double
else:
    NUMBER_DOUBLE = QgsProcessingParameterNumber.Double


class EditRasterAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    EXTENT = "EXTENT"
    ROI = "ROI"
    PROMPT = "PROMPT"
    PRESET = "PRESET"
    SEED = "SEED"
    CLIP = "CLIP"
    EDIT_ALL = "EDIT_ALL"
    REFERENCE = "REFERENCE"
    REFERENCE_ROI = "REFERENCE_ROI"
    REFERENCE_WEIGHT = "REFERENCE_WEIGHT"
    BACKEND_URL = "BACKEND_URL"
    OUTPUT = "OUTPUT"

    def createInstance(self):
        return EditRasterAlgorithm()

    def name(self):
        return ALGORITHM_ID

    def displayName(self):
        return "Edit raster with a text prompt"

    def group(self):
        return "Editing"

    def groupId(self):
        return "editing"

    def shortHelpString(self):
        return (
            "Sends an area of a raster layer (at its native resolution) and optional ROI "
            "polygons to the rs-edit backend, which edits the pixels inside the polygons to "
            "match the prompt, and writes the result with the layer's CRS and grid. Pixels "
            "outside the ROI are unchanged. The backend (`rs-edit serve`) must be running; its "
            "URL comes from the RS Edit settings unless given here. Without an extent the whole "
            "layer is sent. An ROI covering more than half of the area sent (or no ROI: the whole "
            "area) regenerates the whole tile, which is refused unless 'Edit the whole area' is "
            "checked. An example raster (optional, any layer, also the one edited) makes the "
            "edit look like it: its polygons (all features) choose the example area on it, "
            f"otherwise the whole layer (at most {MAX_EXAMPLE_SIDE} x {MAX_EXAMPLE_SIDE} px) "
            "is the example; the weight says how much it guides the edit (0 = text only, "
            "1 = example only)."
        )

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(
            QgsProcessingParameterExtent(
                self.EXTENT, "Area to send (default: whole layer)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                self.ROI,
                "ROI polygons (without: the whole area, see 'Edit the whole area')",
                [SOURCE_POLYGON],
                optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterString(self.PROMPT, "Prompt"))
        self.addParameter(
            QgsProcessingParameterBoolean(
                self.EDIT_ALL,
                "Edit the whole area (allow an ROI covering more than half of the area, or none)",
                defaultValue=False,
            )
        )
        for parameter in self._example_parameters():
            self.addParameter(parameter)
        self.addParameter(
            QgsProcessingParameterEnum(
                self.PRESET,
                "Preset",
                options=list(settings.PRESETS),
                defaultValue=settings.PRESETS.index(settings.DEFAULT_PRESET),
            )
        )
        advanced = [
            QgsProcessingParameterNumber(
                self.SEED,
                "Seed (-1: random)",
                NUMBER_INTEGER,
                defaultValue=-1,
                minValue=-1,
            ),
            QgsProcessingParameterString(
                self.CLIP, "CLIP model", defaultValue=settings.DEFAULT_CLIP
            ),
            QgsProcessingParameterString(
                self.BACKEND_URL,
                "Backend URL (default: from the RS Edit settings)",
                optional=True,
            ),
        ]
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | PARAMETER_ADVANCED)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Edited raster"))

    def _example_parameters(self):
        weight = QgsProcessingParameterNumber(
            self.REFERENCE_WEIGHT,
            "Example weight (0 = text only, 1 = example only)",
            NUMBER_DOUBLE,
            defaultValue=settings.DEFAULT_EXAMPLE_WEIGHT,
            minValue=0.0,
            maxValue=1.0,
        )
        return [
            QgsProcessingParameterRasterLayer(
                self.REFERENCE, "Example raster (make the edit look like it)", optional=True
            ),
            QgsProcessingParameterFeatureSource(
                self.REFERENCE_ROI,
                "Example area polygons on the example raster (without: the whole raster)",
                [SOURCE_POLYGON],
                optional=True,
            ),
            weight,
        ]

    def _example(self, parameters, context):
        """The example from REFERENCE, REFERENCE_ROI and REFERENCE_WEIGHT, or None."""
        layer = self.parameterAsRasterLayer(parameters, self.REFERENCE, context)
        source = self.parameterAsSource(parameters, self.REFERENCE_ROI, context)
        if layer is None:
            if parameters.get(self.REFERENCE):
                raise QgsProcessingException("the example raster (REFERENCE) cannot be loaded")
            if source is not None:
                raise QgsProcessingException(
                    "example area polygons (REFERENCE_ROI) were given without an example "
                    "raster (REFERENCE)"
                )
            return None
        geometries, crs = None, None
        if source is not None:
            geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
            crs = source.sourceCrs()
            if not geometries:
                raise QgsProcessingException("the example area polygons (REFERENCE_ROI) are empty")
        weight = self.parameterAsDouble(parameters, self.REFERENCE_WEIGHT, context)
        return prepare_example(layer, geometries, crs, weight, context.project())

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("the raster layer cannot be loaded")
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        else:
            extent = layer.extent()
        geometries, roi_crs = None, None
        source = self.parameterAsSource(parameters, self.ROI, context)
        if source is not None:
            geometries = [f.geometry() for f in source.getFeatures() if f.hasGeometry()]
            roi_crs = source.sourceCrs()
        preset = settings.PRESETS[self.parameterAsEnum(parameters, self.PRESET, context)]
        seed = self.parameterAsInt(parameters, self.SEED, context)
        clip = self.parameterAsString(parameters, self.CLIP, context) or settings.DEFAULT_CLIP
        url = self.parameterAsString(parameters, self.BACKEND_URL, context)
        output = Path(self.parameterAsOutputLayer(parameters, self.OUTPUT, context))

        work = Path(QgsProcessingUtils.tempFolder()) / f"rs_edit_{id(self):x}"
        as_tiff = output.suffix.lower() in (".tif", ".tiff")
        try:
            fields = job_fields(
                self.parameterAsString(parameters, self.PROMPT, context),
                preset=preset,
                seed=seed,
                clip=clip,
            )
            example = self._example(parameters, context)
            request = prepare_request(
                layer,
                extent,
                layer.crs(),
                fields,
                roi_geometries=geometries,
                roi_crs=roi_crs,
                base_url=url or None,
                out_dir=work,
                project=context.project(),
                example=example,
            )
            large = request.large_roi_text()
            if large and not self.parameterAsBoolean(parameters, self.EDIT_ALL, context):
                raise QgsProcessingException(
                    f"{large}. Give ROI polygons covering at most "
                    f"{LARGE_ROI_SHARE:.0%} of the area, or set {self.EDIT_ALL} "
                    "('Edit the whole area') to edit it all"
                )
            if large:
                feedback.pushWarning(f"{large} (Edit the whole area is set)")
            stem = output.with_suffix("") if as_tiff else work / "result"
            request = dataclasses.replace(request, out_stem=stem, work_dir=work)
            feedback.pushInfo(
                f"Sending {request.window.width} x {request.window.height} px of "
                f"{layer.name()!r} to {request.base_url}"
            )
            if example is not None:
                feedback.pushInfo(f"Example: {example.describe()}, weight {example.weight:g}")
            last = {"stage": ""}

            def report(stage, _progress, job):
                text = str(job.get("stage") or stage)
                if text != last["stage"]:
                    last["stage"] = text
                    feedback.pushInfo(f"job {job.get('id', '')}: {text}")

            outputs = run_job(request, feedback, report)
        except CancelledError as exc:
            raise QgsProcessingException("cancelled") from exc
        except (AreaError, RoiError, JobError, BackendError) as exc:
            raise QgsProcessingException(str(exc)) from exc

        result = outputs[0]
        if not as_tiff:
            driver = QgsRasterFileWriter.driverForExtension(output.suffix) or "GTiff"
            translated = gdal.Translate(str(output), str(result), format=driver)
            if translated is None:
                raise QgsProcessingException(f"writing {output} failed: {gdal.GetLastErrorMsg()}")
            translated = None
        else:
            output = result if result == output else Path(result).replace(output)
        return {self.OUTPUT: str(output)}
