"""A loopback HTTP server that implements the job API (docs/openapi.json) faithfully enough to test
the plugin's job flow while the real backend's job API is being written.

It accepts the multipart upload, checks the image with GDAL and the mask's grid against the
image's, returns an "edited" GeoTIFF (the uploaded image with the masked pixels inverted),
moves jobs through queued -> running -> succeeded over a few polls, cancels on DELETE and
answers errors as {"error": {"code", "message"}}; `DELETE ?purge=true` removes an ended job
(409 job_active while it is queued or running).
"""

import email.parser
import email.policy
import itertools
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from osgeo import gdal

PRESETS = ("auto", "tiny", "fast", "balanced", "quality")
# The health answer's time estimates (rs-edit serve: service/estimates.py): seconds for an area
# of w x h px = seconds_fixed + seconds_per_megapixel * w * h / 1e6; quality: unknown.
ESTIMATES = {
    "tiny": {"seconds_fixed": 8.0, "seconds_per_megapixel": 100.0, "source": "built-in", "jobs": 0},
    "fast": {"seconds_fixed": 5.0, "seconds_per_megapixel": 150.0, "source": "history", "jobs": 4},
    "balanced": {
        "seconds_fixed": 11000.0,
        "seconds_per_megapixel": 300.0,
        "source": "built-in",
        "jobs": 0,
    },
    "quality": None,
}
DEFAULT_PRESET = "auto"
INTERRUPTED = "interrupted by a server restart; resubmit"
_vsimem = itertools.count()


def _open_bytes(data: bytes):
    """(dataset, vsimem name) for GeoTIFF bytes, or (None, name)."""
    name = f"/vsimem/fake_backend_{next(_vsimem)}.tif"
    gdal.FileFromMemBuffer(name, data)
    return gdal.Open(name), name


def _grid(dataset):
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromWkt(dataset.GetProjection())
    return dataset.RasterXSize, dataset.RasterYSize, dataset.GetGeoTransform(), srs


def edited_geotiff(image: bytes, mask: bytes | None, variant: int = 1) -> bytes:
    """The image with the pixels under the mask (all pixels without one) inverted."""
    src, src_name = _open_bytes(image)
    out_name = src_name.replace(".tif", "_out.tif")
    out = gdal.GetDriverByName("GTiff").CreateCopy(out_name, src)
    data = src.ReadAsArray()
    data = data[None] if data.ndim == 2 else data
    if mask is not None:
        mask_ds, mask_name = _open_bytes(mask)
        where = mask_ds.ReadAsArray() != 0
        mask_ds = None
        gdal.Unlink(mask_name)
    else:
        where = np.ones(data.shape[1:], bool)
    top = np.iinfo(data.dtype).max if data.dtype.kind in "iu" else 1.0
    for i in range(data.shape[0]):
        band = data[i].copy()
        band[where] = (top - band[where] + (variant - 1)) % (top + 1)
        out.GetRasterBand(i + 1).WriteArray(band)
    out.FlushCache()
    out = src = None
    handle = gdal.VSIFOpenL(out_name, "rb")
    gdal.VSIFSeekL(handle, 0, 2)
    size = gdal.VSIFTellL(handle)
    gdal.VSIFSeekL(handle, 0, 0)
    content = gdal.VSIFReadL(1, size, handle)
    gdal.VSIFCloseL(handle)
    gdal.Unlink(out_name)
    gdal.Unlink(src_name)
    return bytes(content)


class Job:
    def __init__(self, job_id, fields, image, mask, polls_to_run, polls_to_finish):
        self.id = job_id
        self.fields = fields
        self.image = image
        self.mask = mask
        self.files: dict[str, bytes] = {}  # every uploaded file part by name (image, reference...)
        self.polls = 0
        self.polls_to_run = polls_to_run
        self.polls_to_finish = polls_to_finish
        self.status = "queued"
        self.cancelled = False
        self.interrupted = False
        self.created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def advance(self, behaviour):
        """One poll: queued -> running -> succeeded (or what the behaviour says)."""
        if self.status in ("succeeded", "failed", "cancelled"):
            return
        self.polls += 1
        if self.polls >= self.polls_to_run:
            self.status = "running"
        if behaviour.get("hang"):
            return
        if self.polls >= self.polls_to_finish:
            if behaviour.get("interrupt_jobs", 0) > 0:  # as after a restart of rs-edit serve
                behaviour["interrupt_jobs"] -= 1
                self.status, self.interrupted = "failed", True
            elif behaviour.get("fail_with"):
                self.status = "failed"
            else:
                self.status = "succeeded"

    def report(self):
        return {
            "clip": self.fields.get("clip", ""),
            "clip_random": self.fields.get("clip") == "tiny-random",
            "preset": self.fields.get("preset", DEFAULT_PRESET),
            "prompt_source": "templates",
            "prompt_note": "using the built-in remote-sensing templates (8 templates)",
            "clip_similarity_input": 0.2113,
            "clip_similarity_edits": [0.2745],
            "model_cached": False,
            "job_seconds": 1.5,
        }

    def as_json(self, behaviour):
        progress = {"queued": 0, "running": 50, "succeeded": 100}.get(self.status, 0)
        message = ""
        if self.status == "failed":
            message = INTERRUPTED if self.interrupted else behaviour.get("fail_with", "failed")
        body = {
            "id": self.id,
            "status": self.status,
            "progress": progress,
            "stage": {"running": "training", "succeeded": "done"}.get(self.status, self.status),
            "message": message,
            "created": self.created,
            "options": {"prompt": self.fields.get("prompt", "")},
        }
        if self.status == "failed":
            body["retryable"] = self.interrupted
        if self.status == "succeeded":  # as rs-edit serve reports a finished job
            body["report"] = behaviour.get("report", self.report())
            if behaviour.get("warnings"):
                body["warnings"] = list(behaviour["warnings"])
        variants = int(self.fields.get("variants", 1))
        if self.status == "succeeded" and variants > 1:  # as rs-edit serve lists them
            base = f"/v1/jobs/{self.id}/result"
            body["results"] = [f"{base}?variant={i}" for i in range(1, variants + 1)]
        return body


class FakeBackend:
    """Start with `FakeBackend().start()`; `url`, `jobs`, `requests` and `behaviour` are there
    for the tests (behaviour keys: hang, fail_with, submit_error, submit_delay (seconds),
    polls_to_finish, token, report and warnings (of a succeeded job), health (keys that
    replace those of the health answer),
    interrupt_jobs: that many jobs fail as if a restart interrupted them, drop_polls: that many
    status polls get no HTTP answer)."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.deleted: list[str] = []  # jobs cancelled (DELETE without purge)
        self.purged: list[str] = []  # jobs removed (DELETE ?purge=true)
        self.behaviour: dict = {}
        self.lock = threading.Lock()
        self.server = None
        self.url = ""

    def start(self):
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status, code, message):
                self._send(status, {"error": {"code": code, "message": message}})

            def _record(self):
                """Log the request; False (401 sent) when a token is required and missing."""
                with backend.lock:
                    backend.requests.append((self.command, self.path, dict(self.headers)))
                token = backend.behaviour.get("token")
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    if self.command == "POST":  # read the body, keep the connection sane
                        self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    self._error(
                        401,
                        "unauthorized",
                        "missing or wrong access token (send 'Authorization: Bearer <token>')",
                    )
                    return False
                return True

            def do_GET(self):
                if not self._record():
                    return
                if self.path == "/v1/health":
                    self._send(
                        200,
                        {
                            "status": "ok",
                            "version": "fake",
                            "device": "cpu",
                            "clip": {
                                "default": "RemoteCLIP-ViT-B-32",
                                "weights_available": {
                                    "tiny-random": True,
                                    "RemoteCLIP-ViT-B-32": False,
                                    "RemoteCLIP-RN50": False,
                                    "RemoteCLIP-ViT-L-14": False,
                                },
                            },
                            "llm": {"openai": False},
                            "limits": {"max_pixels": 400_000_000, "max_width": 40_000},
                            "presets": {
                                "default": DEFAULT_PRESET,
                                "auto": "fast",
                                "names": list(PRESETS),
                            },
                            "estimates": {"auto": ESTIMATES["fast"], **ESTIMATES},
                            **backend.behaviour.get("health", {}),
                        },
                    )
                    return
                listing = re.fullmatch(r"/v1/jobs(?:\?limit=(\d+))?", self.path)
                if listing:  # GET /v1/jobs: the most recent jobs, newest first
                    with backend.lock:
                        newest = list(backend.jobs.values())[::-1][: int(listing.group(1) or 100)]
                        body = {"jobs": [job.as_json(backend.behaviour) for job in newest]}
                    self._send(200, body)
                    return
                match = re.fullmatch(r"/v1/jobs/([^/?]+)(/result)?(?:\?variant=(\d+))?", self.path)
                job = backend.jobs.get(match.group(1)) if match else None
                if job is None:
                    self._error(404, "not_found", "no such job")
                    return
                if match.group(2):
                    if job.status != "succeeded":
                        self._error(409, "not_ready", f"job {job.id} is {job.status}")
                        return
                    variant = int(match.group(3) or 1)
                    self._send(200, edited_geotiff(job.image, job.mask, variant), "image/tiff")
                    return
                with backend.lock:
                    down = backend.behaviour.get("drop_polls", 0) > 0
                    if down:
                        backend.behaviour["drop_polls"] -= 1
                    else:
                        job.advance(backend.behaviour)
                if down:  # no HTTP answer at all, as from a backend that is restarting
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self._send(200, job.as_json(backend.behaviour))

            def do_DELETE(self):
                if not self._record():
                    return
                match = re.fullmatch(r"/v1/jobs/([^/?]+)(\?purge=(true|false))?", self.path)
                job = backend.jobs.get(match.group(1)) if match else None
                if job is None:
                    self._error(404, "not_found", "no such job")
                    return
                if match.group(3) == "true":
                    with backend.lock:
                        active = job.status in ("queued", "running")
                        if not active:
                            del backend.jobs[job.id]
                            backend.purged.append(job.id)
                    if active:
                        self._error(409, "job_active", f"job {job.id} is {job.status}")
                    else:
                        self._send(200, {"id": job.id, "purged": True})
                    return
                with backend.lock:
                    backend.deleted.append(job.id)
                    if job.status not in ("succeeded", "failed"):
                        job.status = "cancelled"
                self._send(200, {"id": job.id, "status": job.status})

            def do_POST(self):
                if not self._record():
                    return
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if self.path != "/v1/jobs":
                    self._error(404, "not_found", "no such route")
                    return
                if backend.behaviour.get("submit_delay"):  # a slow upload
                    time.sleep(backend.behaviour["submit_delay"])
                if backend.behaviour.get("submit_error"):
                    status, message = backend.behaviour["submit_error"]
                    self._error(status, "bad_input", message)
                    return
                content_type = self.headers.get("Content-Type", "")
                if not content_type.startswith("multipart/form-data"):
                    self._error(415, "bad_input", "expected multipart/form-data")
                    return
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {content_type}\r\n\r\n".encode() + body
                )
                fields, files = {}, {}
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    payload = part.get_payload(decode=True)
                    if part.get_filename():
                        files[name] = payload
                    else:
                        fields[name] = payload.decode("utf-8")
                error = self._validate(fields, files)
                if error:
                    self._error(400, "bad_input", error)
                    return
                with backend.lock:
                    job_id = f"job{len(backend.jobs) + 1}"
                    finish = backend.behaviour.get("polls_to_finish", 3)
                    backend.jobs[job_id] = Job(
                        job_id, fields, files["image"], files.get("mask"), 2, finish
                    )
                    backend.jobs[job_id].files = files
                self._send(201, {"id": job_id, "status": "queued"})

            def _validate(self, fields, files):
                if "image" not in files:
                    return "the image file is missing"
                if not fields.get("prompt", "").strip():
                    return "prompt is empty"
                if fields.get("preset", DEFAULT_PRESET) not in PRESETS:
                    return f"unknown preset {fields['preset']!r}"
                if "reference" in files:  # the example image: any readable raster
                    reference, reference_name = _open_bytes(files["reference"])
                    readable = reference is not None
                    reference = None
                    gdal.Unlink(reference_name)
                    if not readable:
                        return "the reference is not a readable raster"
                image, image_name = _open_bytes(files["image"])
                if image is None:
                    return "the image is not a readable raster"
                try:
                    if "mask" in files:
                        mask, mask_name = _open_bytes(files["mask"])
                        if mask is None:
                            return "the mask is not a readable raster"
                        iw, ih, igt, isrs = _grid(image)
                        mw, mh, mgt, msrs = _grid(mask)
                        mask = None
                        gdal.Unlink(mask_name)
                        if (iw, ih) != (mw, mh) or not np.allclose(igt, mgt, rtol=0, atol=1e-9):
                            return "the mask is on another grid than the image"
                        if not isrs.IsSame(msrs):
                            return "the mask's CRS differs from the image's"
                finally:
                    image = None
                    gdal.Unlink(image_name)
                return ""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
