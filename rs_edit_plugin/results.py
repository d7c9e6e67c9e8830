"""Results: where edited GeoTIFFs are saved, and how they enter the project.

Each result becomes a raster layer in an "RS Edit results" group placed directly above its
source layer, named "<source layer> – <prompt> (vN)" (N makes the name unique), styled like
its source layer and drawn with exactly its renderer (min/max never recomputed from the
result's own pixels, so unchanged pixels look the same in a compare), with the prompt and
settings in the layer's metadata. Files are saved next to the project (or in the folder from
the settings), never in a temporary folder.
"""

import json
import re
import time
from pathlib import Path

from qgis.core import (
    QgsLayerMetadata,
    QgsLayerTree,
    QgsMapLayerStyle,
    QgsProject,
    QgsRasterLayer,
    QgsRasterMinMaxOrigin,
)
from qgis.PyQt.QtCore import QObject, pyqtSlot

from . import settings

GROUP_NAME = "RS Edit results"
PROPERTY_PREFIX = "rs_edit/"
MAX_NAME_CHARS = 60


def layer_name(prompt: str, variant: int = 0, variants: int = 1) -> str:
    """The prompt (shortened), with the variant number when several: the name's core."""
    name = " ".join((prompt or "").split()) or "RS Edit result"
    if len(name) > MAX_NAME_CHARS:
        name = name[: MAX_NAME_CHARS - 1].rstrip() + "…"
    return f"{name} (variant {variant})" if variants > 1 and variant else name


def unique_layer_name(prompt: str, source_name: str = "", project: QgsProject | None = None):
    """The name "<source layer name> – <prompt> (vN)", N the lowest no layer of `project` has
    (variants of one job get consecutive N)."""
    base = layer_name(prompt)
    if source_name:
        base = f"{source_name} – {base}"
    taken = {lyr.name() for lyr in (project or QgsProject.instance()).mapLayers().values()}
    n = 1
    while f"{base} (v{n})" in taken:
        n += 1
    return f"{base} (v{n})"


def slug(prompt: str, limit: int = 40) -> str:
    text = re.sub(r"[^A-Za-z0-9]+", "_", prompt or "").strip("_").lower()
    return text[:limit].rstrip("_") or "edit"


def result_stem(prompt: str, out_dir: Path) -> Path:
    """A new, unused path stem in `out_dir` for a job's files: <slug>_<time>[_n]."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    base = f"{slug(prompt)}_{stamp}"
    stem = out_dir / base
    n = 1
    while list(out_dir.glob(stem.name + "*")):
        n += 1
        stem = out_dir / f"{base}_{n}"
    return stem


def results_group(project: QgsProject, source_layer=None):
    """The results group for `source_layer`: directly above the source layer in the layer
    tree (created there when missing); at the top of the tree without a source layer."""
    root = project.layerTreeRoot()
    node = root.findLayer(source_layer.id()) if source_layer is not None else None
    if node is None:
        group = root.findGroup(GROUP_NAME)
        return group if group is not None else root.insertGroup(0, GROUP_NAME)
    parent = node.parent()
    index = parent.children().index(node)
    above = parent.children()[index - 1] if index > 0 else None
    key = PROPERTY_PREFIX + "source"
    if (
        above is not None
        and QgsLayerTree.isGroup(above)
        and above.customProperty(key) == source_layer.id()
    ):
        return above
    group = parent.insertGroup(index, GROUP_NAME)
    group.setCustomProperty(key, source_layer.id())
    return group


def pinned_renderer(renderer):
    """A copy of `renderer` (band mapping, each band's min/max and stretch) whose min/max QGIS
    never recomputes: a source stretched to its statistics or to the canvas view would
    re-stretch a result from the result's own pixels, and the ROI's new values would change how
    every unchanged pixel looks next to the source."""
    pinned = renderer.clone()
    origin = pinned.minMaxOrigin()
    origin.setLimits(QgsRasterMinMaxOrigin.Limits.None_)
    pinned.setMinMaxOrigin(origin)
    return pinned


class SourceRenderer(QObject):
    """Keeps a result drawn with its source layer's renderer: when the source's renderer
    changes (restyled, or re-stretched for a new canvas view) the result gets it again, pinned.
    A child of the result layer, so it goes with it."""

    def __init__(self, source: QgsRasterLayer, result: QgsRasterLayer):
        super().__init__(result)
        self.source, self.result = source, result
        source.rendererChanged.connect(self.follow)

    @pyqtSlot()
    def follow(self):
        if self.source.bandCount() != self.result.bandCount() or self.source.renderer() is None:
            return
        self.result.setRenderer(pinned_renderer(self.source.renderer()))
        self.result.triggerRepaint()


def copy_style(source: QgsRasterLayer, target: QgsRasterLayer) -> bool:
    """Give `target` the style of `source` when they have the same bands, its renderer pinned
    to the source's (`pinned_renderer`) and following it (`SourceRenderer`)."""
    if source is None or not source.isValid() or source.bandCount() != target.bandCount():
        return False
    style = QgsMapLayerStyle()
    style.readFromLayer(source)
    style.writeToLayer(target)  # returns nothing in QGIS 3.22 (the old check never passed)
    if source.renderer() is not None:
        target.setRenderer(pinned_renderer(source.renderer()))
        SourceRenderer(source, target)  # owned by the target layer (its Qt parent)
    return True


def describe(job_settings: dict) -> str:
    lines = [f"Edited by RS Edit with the prompt: {job_settings.get('prompt', '')}"]
    for key in sorted(job_settings):
        if key != "prompt":
            lines.append(f"{key}: {job_settings[key]}")
    return "\n".join(lines)


def add_result_layer(
    path,
    job_settings: dict,
    source_layer: QgsRasterLayer | None = None,
    project: QgsProject | None = None,
) -> QgsRasterLayer:
    """Add the GeoTIFF at `path` to the results group and return the layer."""
    project = project or QgsProject.instance()
    prompt = job_settings.get("prompt", "")
    source_name = job_settings.get("source_layer") or (
        source_layer.name() if source_layer is not None else ""
    )
    layer = QgsRasterLayer(str(path), unique_layer_name(prompt, source_name, project), "gdal")
    if not layer.isValid():
        raise ValueError(f"the result {path} cannot be opened as a raster layer")
    copy_style(source_layer, layer)

    metadata = QgsLayerMetadata(layer.metadata())
    metadata.setTitle(layer.name())
    metadata.setAbstract(describe(job_settings))
    metadata.addKeywords("rs-edit", [f"prompt: {prompt}"])
    metadata.addKeywords(
        "rs-edit settings", [f"{k}: {v}" for k, v in sorted(job_settings.items()) if k != "prompt"]
    )
    layer.setMetadata(metadata)
    layer.setCustomProperty(PROPERTY_PREFIX + "settings", json.dumps(job_settings, sort_keys=True))
    layer.setCustomProperty(PROPERTY_PREFIX + "prompt", prompt)

    project.addMapLayer(layer, False)
    results_group(project, source_layer).insertLayer(0, layer)
    return layer


def output_dir(project: QgsProject | None = None) -> Path:
    """The folder results are saved to (created)."""
    path = settings.results_dir(project)
    path.mkdir(parents=True, exist_ok=True)
    return path
