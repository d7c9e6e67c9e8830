"""Starting the real service on 127.0.0.1 for tests: in a thread (uvicorn + create_app) or in a
subprocess (`python -m rs_edit.service.standin`, for kill -9), plus job helpers and test rasters."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
import uvicorn
from conftest import ORIGIN, random_data, write_raster
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from rs_edit.raster import inspect_raster
from rs_edit.roi import roi_from_geojson
from rs_edit.service.app import create_app

REPO = Path(__file__).resolve().parents[2]
RGB = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
TERMINAL = ("succeeded", "failed", "cancelled")


class ThreadServer:
    """The real app served by uvicorn in a thread, on 127.0.0.1 and a free port."""

    def __init__(self, data_dir: Path, config=None, edit_fn=None, port: int = 0, host=None):
        # `host`: the address the app believes it is bound to (its Host check); it listens
        # on 127.0.0.1 whatever it says.
        self.app = create_app(data_dir, config=config, edit_fn=edit_fn, host=host)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn does
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart's port
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


class ProcessServer:
    """`python -m rs_edit.service.standin ...` in a subprocess (so it can be killed with -9)."""

    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir = data_dir
        self.args = [sys.executable, "-m", "rs_edit.service.standin", "--data-dir", str(data_dir)]
        self.args += list(args)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{time.monotonic_ns()}.log"

    def start(self, timeout: float = 90) -> ProcessServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            self.args, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        line = self.proc.stdout.readline()
        if not line.startswith("RS_EDIT_SERVICE_PORT="):
            self.kill()
            raise RuntimeError(f"server did not start: {line!r} {self.log.read_text()[-2000:]}")
        self.port = int(line.strip().split("=")[1])
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"server did not answer: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        if getattr(self, "_log", None):
            self._log.close()

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


# --- rasters and ROIs ----------------------------------------------------------------------------


def rgb_tile(path: Path, size: int = 64, seed: int = 0, **kw) -> Path:
    return write_raster(
        path,
        random_data("uint8", 3, size, size, seed=seed),
        colorinterp=RGB,
        descriptions=["red", "green", "blue"],
        **kw,
    )


def roi_polygon(col0: int, row0: int, col1: int, row1: int, *, crs: str | None = "EPSG:32633"):
    """A pixel rectangle of the default test grid (10 m, ORIGIN) as a GeoJSON Feature."""
    x0, y0 = ORIGIN
    ring = [
        [x0 + 10 * col0, y0 - 10 * row0],
        [x0 + 10 * col1, y0 - 10 * row0],
        [x0 + 10 * col1, y0 - 10 * row1],
        [x0 + 10 * col0, y0 - 10 * row1],
        [x0 + 10 * col0, y0 - 10 * row0],
    ]
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    if crs:
        feature["crs"] = {"type": "name", "properties": {"name": crs}}
    return feature


def truncated_tif(path: Path, source: Path) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_header_tif(path: Path, width: int = 1_000_000, height: int = 1_000_000) -> Path:
    """A valid little-endian TIFF header and IFD declaring a huge image, with almost no data."""
    entries = [
        (256, 4, 1, width),  # ImageWidth LONG
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression none
        (262, 3, 1, 1),  # Photometric BlackIsZero
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 1),  # SamplesPerPixel
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd_offset = 8 + 16
    ifd = struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        packed = struct.pack("<HHI", tag, typ, count)
        packed += struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + bytes(16) + ifd)
    return path


def png_file(path: Path) -> Path:
    with rasterio.open(path, "w", driver="PNG", width=16, height=16, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 16, 16), np.uint8))
    return path


def mask_tif(path: Path, size: int, value: int = 1, transform=None) -> Path:
    data = np.zeros((1, size, size), np.uint8)
    data[0, size // 4 : size // 2, size // 4 : size // 2] = value
    return write_raster(path, data, transform=transform or from_origin(*ORIGIN, 10, 10))


# --- jobs -----------------------------------------------------------------------------------------


def submit(
    client: httpx.Client,
    image: Path,
    prompt: str = "flooded fields",
    *,
    roi=None,
    mask=None,
    **fields,
):
    files = {"image": (image.name, image.read_bytes(), "image/tiff")}
    if mask is not None:
        files["mask"] = (mask.name, mask.read_bytes(), "image/tiff")
    data = {"prompt": prompt, **{k: str(v) for k, v in fields.items()}}
    if roi is not None:
        data["roi"] = roi if isinstance(roi, str) else json.dumps(roi)
    return client.post("/v1/jobs", files=files, data=data)


def wait(
    client: httpx.Client, job_id: str, statuses=TERMINAL, timeout: float = 120, until=None
) -> dict:
    """Poll until the job is in one of `statuses` (and `until(job)` holds, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses and (until is None or until(job)):
            return job
        if job["status"] in TERMINAL and job["status"] not in statuses:
            raise AssertionError(f"job ended {job['status']}: {job['message']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {statuses}: {job}")
        time.sleep(0.05)


def sse_events(client: httpx.Client, job_id: str, timeout: float = 120) -> list[dict]:
    """All `status` events of the job's stream, until the server closes it."""
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "status":
                events.append(json.loads(line[5:]))
    return events


def check_result(result: Path, source: Path, roi: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """The result keeps the input's georeferencing and, outside the ROI, its exact bytes.
    Returns (input pixels, output pixels)."""
    with rasterio.open(source) as a, rasterio.open(result) as b:
        assert b.crs == a.crs
        assert b.transform == a.transform
        assert (b.width, b.height, b.count) == (a.width, a.height, a.count)
        assert b.dtypes == a.dtypes
        assert b.nodata == a.nodata
        assert b.descriptions == a.descriptions
        before, after = a.read(), b.read()
    if roi is not None:
        info = inspect_raster(source)
        region = roi_from_geojson(roi, info)
        from rasterio.windows import Window

        inside = region.rasterize(Window(0, 0, info.width, info.height))
        # One pixel of margin: the ROI's boundary pixels may be touched by the feather.
        from scipy.ndimage import binary_dilation

        near = binary_dilation(inside, iterations=1)
        assert np.array_equal(before[:, ~near], after[:, ~near]), "pixels outside the ROI changed"
    return before, after


# Marks of a test module or class that runs the real editor (tiny preset, random CLIP) behind
# a real server.
REAL_EDITOR_MARKS = [
    pytest.mark.slow,
    pytest.mark.timeout(400),
    pytest.mark.filterwarnings("ignore:CLIP 'tiny-random' has RANDOM weights"),
    pytest.mark.skipif(
        importlib.util.find_spec("rs_edit.guidance.editor") is None,
        reason="the text editor (rs_edit.guidance.editor) is not in this version yet",
    ),
]
