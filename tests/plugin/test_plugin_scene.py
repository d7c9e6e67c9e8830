"""Full-scene outputs: the returned tile composited into the whole source raster (post),
the source (pre) and the ROI mask on the scene's grid."""

import numpy as np
import pytest
from helpers import ORIGIN, RES, make_geotiff, read, same_crs
from osgeo import gdal
from qgis.core import QgsRasterLayer, QgsRectangle

from rs_edit_plugin import area, roi, scene


def window_of(layer, col0, row0, col1, row1):
    rect = QgsRectangle(
        ORIGIN[0] + col0 * RES,
        ORIGIN[1] - row1 * RES,
        ORIGIN[0] + col1 * RES,
        ORIGIN[1] - row0 * RES,
    )
    return area.snap_window(layer, rect)


@pytest.fixture
def source(tmp_path, project):
    path, data, gt = make_geotiff(
        tmp_path / "scene.tif", width=70, height=40, bands=2, dtype=np.uint16, nodata=0
    )
    layer = QgsRasterLayer(str(path), "scene")
    assert layer.isValid()
    project.addMapLayer(layer)  # the project owns it (a layer the test owned crashed QGIS)
    return path, data, gt, layer


def edited_tile(path, window, tile_path):
    """The exported tile with every pixel changed (as the backend's result would be)."""
    area.export_window(QgsRasterLayer(str(path), "s"), window, tile_path)
    dataset = gdal.Open(str(tile_path), gdal.GA_Update)
    tile = dataset.ReadAsArray() + 1000
    for i in range(dataset.RasterCount):
        dataset.GetRasterBand(i + 1).WriteArray(tile[i])
    dataset = None
    return tile


def test_post_is_the_source_with_the_tile_at_its_place(source, tmp_path):
    path, data, gt, layer = source
    window = window_of(layer, 12, 7, 33, 25)
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    tiles = [out_dir / "edit.tif", out_dir / "edit_v2.tif"]
    edits = [edited_tile(path, window, t) for t in tiles]
    edits[1][:] = edits[1] + 1
    dataset = gdal.Open(str(tiles[1]), gdal.GA_Update)  # a second variant, different again
    for i in range(dataset.RasterCount):
        dataset.GetRasterBand(i + 1).WriteArray(edits[1][i])
    dataset = None
    mask = np.zeros((window.height, window.width), np.uint8)
    mask[3:9, 4:15] = 1
    mask_path = roi.write_mask(mask, window, tmp_path / "inputs" / "edit_mask.tif")

    written = scene.write_scene_set(str(path), window, tiles, out_dir / "edit", mask_path)
    pre, posts, mask_out = scene.scene_paths(out_dir / "edit", tiles)
    assert written == [pre, *posts, mask_out]
    assert [p.name for p in posts] == ["edit_scene_post.tif", "edit_v2_scene_post.tif"]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [t.name for t in tiles] + [p.name for p in written]
    )  # no temporary file left

    source_ds = gdal.Open(str(path))
    rows = slice(window.yoff, window.yoff + window.height)
    cols = slice(window.xoff, window.xoff + window.width)
    for post, edit in zip(posts, edits, strict=True):
        got, got_gt, got_wkt = read(post)
        expected = data.copy()
        expected[:, rows, cols] = edit
        np.testing.assert_array_equal(got, expected)
        outside = np.ones(data.shape[1:], bool)
        outside[rows, cols] = False
        np.testing.assert_array_equal(got[:, outside], data[:, outside])  # the source
        assert not np.array_equal(got[:, rows, cols], data[:, rows, cols])
        dataset = gdal.Open(str(post))
        assert got_gt == gt and same_crs(got_wkt, source_ds.GetProjection())
        for i in (1, 2):
            band, src_band = dataset.GetRasterBand(i), source_ds.GetRasterBand(i)
            assert band.DataType == src_band.DataType == gdal.GDT_UInt16
            assert band.GetNoDataValue() == src_band.GetNoDataValue() == 0
            band = src_band = None  # no band may outlive its dataset
        assert (dataset.RasterXSize, dataset.RasterYSize) == (70, 40)
        dataset = None

    got_pre, pre_gt, _wkt = read(pre)
    np.testing.assert_array_equal(got_pre, data)
    assert pre_gt == gt
    got_mask, mask_gt, mask_wkt = read(mask_out)
    expected_mask = np.zeros((40, 70), np.uint8)
    expected_mask[rows, cols] = mask
    np.testing.assert_array_equal(got_mask[0], expected_mask)
    assert mask_gt == gt and same_crs(mask_wkt, source_ds.GetProjection())
    source_ds = None


def test_whole_area_mask_and_refused_tiles(source, tmp_path):
    path, _data, _gt, layer = source
    window = window_of(layer, 0, 0, 10, 10)
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    tile = out_dir / "edit.tif"
    edited_tile(path, window, tile)
    _pre, _posts, mask_out = scene.scene_paths(out_dir / "edit", [tile])
    scene.write_scene_set(str(path), window, [tile], out_dir / "edit")  # no ROI: whole area
    got_mask, _gt, _wkt = read(mask_out)
    assert got_mask[0, :10, :10].all() and got_mask.sum() == 100

    other = window_of(layer, 0, 0, 12, 10)  # the tile is not the area sent
    with pytest.raises(scene.SceneError, match="10 x 10 px, the area sent 12 x 10 px"):
        scene.write_scene_set(str(path), other, [tile], out_dir / "other")
    assert not list(out_dir.glob("other_v*")) and not list(out_dir.glob(".*.part"))
    assert not (out_dir / "edit_scene_post.tif").with_name("other_scene_post.tif").exists()
