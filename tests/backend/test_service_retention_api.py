"""What the service keeps, through its HTTP API on a real server (127.0.0.1, the stand-in editor):
`DELETE /v1/jobs/{id}?purge=true` removes a job that has ended (409 while it is queued or
running), a submission over the disk budget is a 507 that stores nothing, a corrupt block of an
upload too large for `inspect_raster` to decode is refused at submission (`check_integrity`), and
`rs-edit serve`'s options for these settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import from_origin
from service_helpers import ThreadServer, rgb_tile, submit, wait

from rs_edit import raster
from rs_edit.cli import EXIT_BAD_INPUT, main
from rs_edit.errors import RasterError
from rs_edit.service import app as app_module
from rs_edit.service.config import ServiceConfig
from rs_edit.service.standin import standin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

UNKNOWN = "0123456789abcdef0123456789abcdef"
GRID = {"crs": "EPSG:32633", "transform": from_origin(500000, 5500000, 10, 10)}


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("tiles") / "tile.tif", seed=5)


def _service(srv):
    return srv.app.state.service


def _contents(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- purge ---------------------------------------------------------------------------------------


def test_purge_removes_a_finished_job_and_its_files(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", workers=1)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        jobs_dir = _service(srv).jobs_dir
        kept = wait(c, submit(c, tile, "kept", clip="tiny-random").json()["id"], ("succeeded",))
        done = submit(c, tile, clip="tiny-random", variants=2).json()
        done = wait(c, done["id"], ("succeeded",))
        folder = jobs_dir / done["id"]
        assert (folder / "input.tif").is_file()
        assert len([p for p in folder.iterdir() if p.name.startswith("result")]) == 2

        # Without purge, DELETE cancels as before: a finished job is left as it is.
        r = c.delete(f"/v1/jobs/{done['id']}", params={"purge": "false"})
        assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
        assert folder.is_dir()

        r = c.delete(f"/v1/jobs/{done['id']}", params={"purge": "true"})
        assert r.status_code == 200, r.text
        assert r.json() == {"id": done["id"], "purged": True}
        assert not folder.exists()
        assert c.get(f"/v1/jobs/{done['id']}").status_code == 404
        assert c.get(f"/v1/jobs/{done['id']}/result").status_code == 404
        assert [j["id"] for j in c.get("/v1/jobs").json()["jobs"]] == [kept["id"]]
        assert _service(srv).store.get(done["id"]) is None
        r = c.delete(f"/v1/jobs/{done['id']}", params={"purge": "true"})  # already gone
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

        # The other job and its files are untouched.
        assert c.get(f"/v1/jobs/{kept['id']}").json()["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{kept['id']}/result").status_code == 200
        assert any(p.name.startswith("result") for p in (jobs_dir / kept["id"]).iterdir())

        for bad in (UNKNOWN, "../../etc"):
            r = c.delete(f"/v1/jobs/{bad}", params={"purge": "true"})
            assert r.status_code == 404, (bad, r.text)
        r = c.delete(f"/v1/jobs/{kept['id']}", params={"purge": "maybe"})
        assert r.status_code == 422, r.text
        assert (jobs_dir / kept["id"]).is_dir()


def test_purge_of_a_queued_or_running_job_is_409_and_changes_nothing(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", workers=1)
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=standin(400, 0.05)) as srv,
        srv.client() as c,
    ):
        jobs_dir = _service(srv).jobs_dir
        first = submit(c, rgb_tile(tmp_path / "other.tif", seed=9), clip="tiny-random").json()
        running = wait(c, first["id"], ("running",), until=lambda j: j["stage"] == "train")
        queued = submit(c, tile, clip="tiny-random").json()
        assert queued["status"] == "queued"
        for job in (running, queued):
            before = _contents(jobs_dir / job["id"])
            r = c.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "job_active" and "cancel it first" in error["message"]
            now = c.get(f"/v1/jobs/{job['id']}").json()
            assert now["status"] == job["status"], now  # not cancelled either
            assert _contents(jobs_dir / job["id"]) == before
            assert (jobs_dir / job["id"] / "input.tif").is_file()
        assert c.get(f"/v1/jobs/{first['id']}").json()["progress"] < 100

        # Cancel first (DELETE without purge), then purge once it has stopped.
        for job in (first, queued):
            assert c.delete(f"/v1/jobs/{job['id']}").status_code == 200
        for job in (first, queued):
            wait(c, job["id"], ("cancelled",), timeout=60)
            r = c.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
            assert r.status_code == 200 and r.json()["purged"] is True, r.text
            assert not (jobs_dir / job["id"]).exists()
        assert c.get("/v1/jobs").json()["jobs"] == []


# --- the disk budget -------------------------------------------------------------------------


def test_a_submission_over_the_disk_budget_is_507_and_stores_nothing(tmp_path: Path, tile: Path):
    config = ServiceConfig(device="cpu", max_data_bytes=1)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        service = _service(srv)
        before = _contents(service.jobs_dir), _contents(service.tmp_dir)
        r = submit(c, tile, clip="tiny-random")
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "storage_full" and "storage for jobs is full" in error["message"]
        assert (_contents(service.jobs_dir), _contents(service.tmp_dir)) == before == ([], [])
        assert c.get("/v1/jobs").json()["jobs"] == []
        limits = c.get("/v1/health").json()["limits"]
        assert limits["max_data_bytes"] == 1 and limits["data_bytes"] > 1


def test_the_budget_counts_what_each_submission_stored(tmp_path: Path, tile: Path):
    """A budget with room for one upload: the first is taken, and the bytes it stored count
    at once (`DataUsage.add`), before the next walk of the folder: the second is a 507."""
    size = tile.stat().st_size
    config = ServiceConfig(device="cpu", max_data_bytes=10**12, retention_days=7)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        service = _service(srv)
        service.usage.ttl_s = 3600.0  # no walk during the test: only `add` moves the count
        used = service.usage.refresh()
        budget = used + size + size // 2  # room for one upload, not two
        service.config = dataclasses.replace(config, max_data_bytes=budget)
        limits = c.get("/v1/health").json()["limits"]
        assert limits["data_bytes"] == used and limits["max_data_bytes"] == budget
        assert limits["retention_days"] == 7.0

        first = submit(c, tile, clip="tiny-random")
        assert first.status_code == 201, first.text
        assert c.get("/v1/health").json()["limits"]["data_bytes"] >= used + size
        second = submit(c, tile, clip="tiny-random")
        assert second.status_code == 507, second.text
        assert "this upload" in second.json()["error"]["message"]
        assert [p.name for p in service.jobs_dir.iterdir()] == [first.json()["id"]]
        assert _contents(service.tmp_dir) == []
        assert [j["id"] for j in c.get("/v1/jobs").json()["jobs"]] == [first.json()["id"]]
        wait(c, first.json()["id"], ("succeeded",))


# --- integrity of large uploads --------------------------------------------------------------


def _big_deflate(path: Path, size: int = 8200) -> Path:
    """A one-band DEFLATE GeoTIFF of more than 64 MB of pixels (beyond what `inspect_raster`
    decodes), compressible enough to upload quickly (about 12 MB)."""
    cols = (np.sin(np.arange(size) / 37.0) * 60 + 120).astype(np.uint8)
    rows = (np.cos(np.arange(size) / 53.0) * 50 + 60).astype(np.uint8)
    data = (cols[None, :] + rows[:, None])[None]  # uint8, wrapping
    profile = dict(tiled=True, blockxsize=512, blockysize=512, compress="deflate", **GRID)
    with rasterio.open(
        path, "w", driver="GTiff", width=size, height=size, count=1, dtype="uint8", **profile
    ) as dst:
        dst.write(data)
    return path


def _tiles(path: Path) -> list[tuple[int, int]]:
    with rasterio.open(path) as src:
        return [(offset, n) for _, _, _, offset, n in raster._tiff_blocks(src)]


def _corrupt(source: Path, dest: Path, at_tile: int, count: int = 8) -> Path:
    """`source` with `count` bytes in the middle of one tile's compressed data inverted."""
    data = bytearray(source.read_bytes())
    offset, nbytes = _tiles(source)[at_tile]
    start = offset + nbytes // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    dest.write_bytes(bytes(data))
    return dest


def test_a_corrupt_block_of_a_large_upload_is_refused_at_submission(tmp_path: Path):
    clean = _big_deflate(tmp_path / "clean.tif")
    with rasterio.open(clean) as src:
        assert src.width * src.height * src.count > raster._HEAVY_READ_LIMIT
    corrupt = _corrupt(clean, tmp_path / "corrupt.tif", at_tile=len(_tiles(clean)) // 2)
    raster.inspect_raster(corrupt)  # too large to decode there: not seen
    with pytest.raises(RasterError):
        raster.check_integrity(corrupt)
    config = ServiceConfig(device="cpu")
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        service = _service(srv)
        r = submit(c, corrupt, clip="tiny-random")
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_raster", error
        assert "image" in error["message"] and str(tmp_path) not in error["message"]
        assert "input.tif" not in error["message"]
        assert _contents(service.jobs_dir) == [] and _contents(service.tmp_dir) == []
        assert c.get("/v1/jobs").json()["jobs"] == []
        ok = submit(c, clean, clip="tiny-random", roi=_small_roi())
        assert ok.status_code == 201, ok.text  # the same raster, intact: taken
        assert c.delete(f"/v1/jobs/{ok.json()['id']}").status_code == 200


def _small_roi() -> dict:
    x0, y0 = 500000 + 10 * 100, 5500000 - 10 * 100
    ring = [[x0, y0], [x0 + 320, y0], [x0 + 320, y0 - 320], [x0, y0 - 320], [x0, y0]]
    return {
        "type": "Polygon",
        "coordinates": [ring],
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
    }


def _gdal_reads(path: Path) -> bool:
    try:
        with rasterio.open(path) as src:
            src.read()
    except RasterioError:
        return False
    return True


def test_a_corrupt_block_of_a_large_mask_is_refused_at_submission(
    tmp_path: Path, tile: Path, monkeypatch
):
    """The mask too: with every raster counted as large (nothing decoded by `inspect_raster`),
    a mask whose corruption GDAL's read does not notice is refused, naming the mask."""
    monkeypatch.setattr(raster, "_HEAVY_READ_LIMIT", 0)
    mask = np.zeros((1, 64, 64), np.uint8)
    mask[0, 8:40, 8:40] = np.random.default_rng(0).integers(1, 4, (32, 32))  # edit: non-zero
    with rasterio.open(tile) as src:
        grid = {"crs": src.crs, "transform": src.transform}
    clean = tmp_path / "mask.tif"
    with rasterio.open(
        clean, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
        compress="deflate", tiled=True, blockxsize=32, blockysize=32, **grid,
    ) as dst:  # fmt: skip
        dst.write(mask)
    corrupt = None
    for i in range(len(_tiles(clean))):  # a corruption that GDAL reads without an error
        for count in (1, 2, 4):
            candidate = _corrupt(clean, tmp_path / f"corrupt{i}_{count}.tif", i, count)
            if _gdal_reads(candidate):
                corrupt = candidate
                break
        if corrupt is not None:
            break
    assert corrupt is not None, "no corruption that GDAL misses: change the mask"
    with pytest.raises(RasterError):
        raster.check_integrity(corrupt)
    config = ServiceConfig(device="cpu")
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        r = submit(c, tile, clip="tiny-random", mask=corrupt)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_raster" and "mask" in error["message"], error
        assert "mask.tif" not in error["message"] and str(tmp_path) not in error["message"]
        assert _contents(_service(srv).jobs_dir) == []
        ok = submit(c, tile, clip="tiny-random", mask=clean)
        assert ok.status_code == 201, ok.text


# --- rs-edit serve's options -----------------------------------------------------------------


@pytest.fixture
def served(monkeypatch):
    """`rs-edit serve` up to the point where it would serve: what `serve` was given."""
    calls = []
    monkeypatch.setattr(app_module, "serve", lambda **kw: calls.append(kw))
    for name in ("RS_EDIT_TOKEN", "RS_EDIT_ALLOWED_HOSTS", "RS_EDIT_ALLOWED_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_serve_options_for_retention_budget_and_job_process(served):
    assert main(["serve", "--port", "0"]) == 0
    config = served[-1]["config"]
    assert config.retention_days == 30.0 and config.max_data_bytes is None
    assert config.job_memory_factor == 2.0 and config.job_process is True
    argv = ["--retention-days", "0", "--max-data-gb", "1.5", "--job-memory-factor", "0"]
    assert main(["serve", "--port", "0", *argv, "--no-job-process"]) == 0
    config = served[-1]["config"]
    assert config.retention_days == 0 and config.max_data_bytes == int(1.5 * 1024**3)
    assert config.job_memory_factor == 0 and config.job_process is False
    argv = ["--retention-days", "2.5", "--max-data-gb", "200", "--job-memory-factor", "4"]
    assert main(["serve", "--port", "0", *argv]) == 0
    config = served[-1]["config"]
    assert config.retention_days == 2.5 and config.max_data_bytes == 200 * 1024**3
    assert config.job_memory_factor == 4.0 and config.job_process is True


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--retention-days", "-1"], "--retention-days must be 0 (keep forever) or more"),
        (["--retention-days", "nan"], "argument --retention-days: must be a finite number"),
        (["--retention-days", "a week"], "argument --retention-days: must be a number"),
        (["--max-data-gb", "0"], "--max-data-gb must be more than 0"),
        (["--max-data-gb", "-2"], "--max-data-gb must be more than 0"),
        (["--max-data-gb", "1e-12"], "--max-data-gb must be more than 0"),
        (["--max-data-gb", "inf"], "argument --max-data-gb: must be a finite number"),
        (["--max-data-gb", ""], "argument --max-data-gb: must be a number"),
        (["--job-memory-factor", "0.5"], "job memory factor must be 0 (no limit) or between"),
        (["--job-memory-factor", "65"], "job memory factor must be 0 (no limit) or between"),
        (["--job-memory-factor", "nan"], "argument --job-memory-factor: must be a finite"),
        (["--no-job-process=yes"], "ignored explicit argument"),
    ],
)
def test_serve_refuses_bad_values(served, capsys, argv, needle):
    try:
        code = main(["serve", "--port", "0", *argv])
    except SystemExit as exc:  # a usage error, by argparse
        code = exc.code
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1, err
    assert not served


def test_serve_help_names_the_options_and_defaults(capsys):
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--retention-days N", "--max-data-gb X", "--job-memory-factor F"):
        assert option in text
    assert "--no-job-process" in text
    assert "(default: no bound)" in text and "default 30; 0 keeps them forever" in text
