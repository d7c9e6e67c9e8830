"""Load test of `rs-edit serve`: requests per second for job submission and status polling.

Starts the real server (uvicorn, SQLite store, local executor) in a subprocess on 127.0.0.1 with
the stand-in editor, whose single worker is kept busy by a first, endless job: every later
submission stays queued, so the figures measure the API (multipart upload, validation of the
GeoTIFF and ROI, the durable record) and not the editing. The client is asyncio + httpx in this
process, on the same machine (it competes with the server for the CPU cores).

    .venv/bin/python bench/load_service.py [--submissions 300] [--seconds 10] [--concurrency 8]

Prints a table and, as its last line, one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import rasterio
from rasterio.transform import from_origin

REPO = Path(__file__).resolve().parents[1]


def make_tile(path: Path, size: int) -> tuple[bytes, str]:
    data = np.random.default_rng(0).integers(0, 255, (3, size, size), dtype=np.uint8)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5500000, 10, 10),
    ) as dst:
        dst.write(data)
    x0, y0, d = 500000 + 10 * size / 4, 5500000 - 10 * size / 4, 10 * size / 2
    ring = [[x0, y0], [x0 + d, y0], [x0 + d, y0 - d], [x0, y0 - d], [x0, y0]]
    roi = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
    }
    return path.read_bytes(), json.dumps(roi)


def start_server(data_dir: Path, max_queue: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rs_edit.service.standin", "--data-dir", str(data_dir)]
        + ["--workers", "1", "--steps", "1", "--step-s", "86400", "--max-queue", str(max_queue)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("RS_EDIT_SERVICE_PORT="):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    url = f"http://127.0.0.1:{int(line.split('=')[1])}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer")


async def run_submissions(url, image, roi, total, concurrency) -> tuple[dict, list[str]]:
    latencies, ids, statuses = [], [], {}
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            t = time.perf_counter()
            r = await client.post(
                "/v1/jobs",
                files={"image": ("tile.tif", image, "image/tiff")},
                data={"prompt": f"flooded fields {i}", "roi": roi, "clip": "tiny-random"},
            )
            latencies.append(time.perf_counter() - t)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 201:
                ids.append(r.json()["id"])

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return _figures(latencies, elapsed, statuses), ids


async def run_polling(url, ids, seconds, concurrency, path_of) -> dict:
    latencies, statuses = [], {}
    stop = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient, k: int):
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await client.get(path_of(ids[i % len(ids)]))
            latencies.append(time.perf_counter() - t)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            i += concurrency

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client, k) for k in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return _figures(latencies, elapsed, statuses)


def _figures(latencies: list[float], elapsed: float, statuses: dict) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests": len(ms),
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(ms) / elapsed, 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=10.0, help="polling duration")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rs-edit-load-") as tmp:
        image, roi = make_tile(Path(tmp) / "tile.tif", args.size)
        proc, url = start_server(Path(tmp) / "data", max_queue=args.submissions + 10)
        try:
            submit, ids = asyncio.run(
                run_submissions(url, image, roi, args.submissions, args.concurrency)
            )
            poll = asyncio.run(
                run_polling(url, ids, args.seconds, args.concurrency, lambda i: f"/v1/jobs/{i}")
            )
            health = asyncio.run(
                run_polling(url, ids, args.seconds / 2, args.concurrency, lambda i: "/v1/health")
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "concurrency": args.concurrency,
        "tile": f"{args.size}x{args.size} RGB uint8 GeoTIFF ({len(image)} bytes) + GeoJSON ROI",
        "submit": submit,
        "status_poll": poll,
        "health": health,
    }
    print(f"{'':14}{'req/s':>8}{'p50 ms':>9}{'p95 ms':>9}  statuses")
    for name in ("submit", "status_poll", "health"):
        f = result[name]
        print(f"{name:14}{f['requests_per_s']:>8}{f['p50_ms']:>9}{f['p95_ms']:>9}  {f['statuses']}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
