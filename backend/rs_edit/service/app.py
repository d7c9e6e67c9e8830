"""The HTTP API (`rs-edit serve`): jobs to edit a GeoTIFF by a prompt, their progress and results.

Routes stay thin: checking a submission lives in `submit`, records in `jobs`, running in
`executor`, errors map to HTTP in one place (`errors`). OpenAPI docs at /docs.

Data directory layout (`--data-dir`, env RS_EDIT_DATA_DIR, default the user's data dir):
    jobs.sqlite3        job records (SQLite, WAL)
    jobs/<id>/          input.tif, mask.tif or roi.geojson, result*.tif once succeeded
    cache/models/       trained tile models, reused across prompts (LRU-bounded)
    tmp/                uploads being checked (cleared at start)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from .. import __version__
from ..engine.presets import DEFAULT_PRESET
from ..errors import ParameterError
from ..guidance.clip import DEFAULT_CLIP
from ..llm import LlmConfig, register_secret
from . import submit
from .config import LOOPBACK, Limits, ServiceConfig
from .errors import (
    NotReadyError,
    error_response,
    install_error_handlers,
    redact,
    redact_json,
)
from .executor import JobRunner, LocalBackend, RayBackend
from .guard import Guard, host_policy
from .jobs import SUCCEEDED, TERMINAL, JobStore, check_job_id, new_job_id

log = logging.getLogger("rs_edit.service")

SSE_POLL_S = 0.1
SSE_HEARTBEAT_S = 15.0


def default_data_dir() -> Path:
    """RS_EDIT_DATA_DIR, else the user's data directory (XDG on Linux)."""
    env = os.environ.get("RS_EDIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rs-edit"


class Service:
    """The state behind the routes: the store, the runner, the folders."""

    def __init__(self, data_dir: Path, config: ServiceConfig, edit_fn=None):
        self.data_dir = data_dir
        self.config = config
        self.jobs_dir = data_dir / "jobs"
        self.tmp_dir = data_dir / "tmp"
        self.cache_dir = data_dir / "cache"
        for folder in (self.jobs_dir, self.tmp_dir, self.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir / "jobs.sqlite3")
        if config.executor == "ray":
            backend = RayBackend(edit_fn, config, config.ray_cache_dir)
        else:
            backend = LocalBackend(edit_fn, config, self.cache_dir)
        self.runner = JobRunner(self.store, backend, self.jobs_dir, config.workers)
        self.device = _device_info()
        self.memory_budget_mb = config.memory_budget()
        self.device_type = (
            config.device
            if config.device != "auto"
            else "cuda"
            if self.device["device"].startswith("cuda")
            else "cpu"
        )
        self.started = False

    def start(self) -> None:
        if self.started:
            return
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        interrupted, queued = self.store.recover()
        if interrupted:
            log.warning("%d job(s) interrupted by a restart were marked failed", len(interrupted))
        self._remove_orphans()
        self.runner.start(queued)
        self.started = True
        log.info(
            "rs-edit %s serving %s (%s executor, %d workers, %d jobs re-queued)",
            __version__,
            self.data_dir,
            self.config.executor,
            self.runner.workers,
            len(queued),
        )

    def stop(self) -> None:
        if self.started:
            self.runner.stop()
            self.started = False

    def _remove_orphans(self) -> None:
        """Job folders without a record (a crash between storing the upload and recording it)
        and the work folders of interrupted jobs (partial outputs are never published)."""
        known = self.store.ids()
        for folder in self.jobs_dir.iterdir():
            if folder.name not in known:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                shutil.rmtree(folder / "work", ignore_errors=True)

    # --- submission ----------------------------------------------------------------------

    def submit(self, form: dict, image: UploadFile, mask: UploadFile | None) -> dict:
        limits = self.config.limits
        self._check_queue()
        options = submit.build_options(limits=limits, **form["options"])
        if self.config.executor == "local":  # Ray workers may hold weights this machine lacks
            submit.check_clip_weights(options.clip)
        roi = None
        if form["roi"] is not None:
            roi = submit.parse_roi(form["roi"], limits, repair=form["repair_roi"])
        job_id = new_job_id()
        staging = self.tmp_dir / job_id
        staging.mkdir()
        try:
            _save_upload(image, staging / "input.tif")
            mask_path = None
            if mask is not None:
                mask_path = staging / "mask.tif"
                _save_upload(mask, mask_path)
            if roi is not None:
                (staging / "roi.geojson").write_text(json.dumps(roi), encoding="utf-8")
            summary = submit.validate_inputs(
                staging / "input.tif",
                options,
                roi=roi,
                mask=mask_path,
                limits=limits,
                memory_budget_mb=self.memory_budget_mb,
                device_type=self.device_type,
            )
            final = self.jobs_dir / job_id
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            inputs = {**summary, "mask": mask_path is not None}
            job = self.store.create(job_id, _options_dict(options), inputs, limits.max_queue)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        self.runner.enqueue(job_id)
        return self.job_json(job)

    def _check_queue(self) -> None:
        """Refuse before storing and validating the upload when the queue is full; `create`
        re-checks atomically."""
        queued = self.store.counts()["queued"]
        if queued >= self.config.limits.max_queue:
            from .errors import QueueFullError

            raise QueueFullError(
                f"the job queue is full ({queued} jobs waiting); try again later",
                headers={"Retry-After": "5"},
            )

    # --- reading ----------------------------------------------------------------------------

    def job_json(self, job) -> dict:
        position = self.store.queue_position(job) if job.status == "queued" else None
        return redact_json(job.to_json(position))

    def result_path(self, job_id: str, variant: int) -> Path:
        job = self.store.require(job_id)
        if job.status != SUCCEEDED:
            raise NotReadyError(
                f"job {job.id} has no result: it is {job.status}"
                + (f" ({job.message})" if job.message else "")
            )
        if not 1 <= variant <= len(job.outputs):
            from .errors import NotFoundError

            raise NotFoundError(f"job {job.id} has {len(job.outputs)} result(s), not {variant}")
        return self.jobs_dir / job.id / job.outputs[variant - 1]

    def health(self) -> dict:
        counts = self.store.counts()
        return {
            "status": "ok",
            "version": __version__,
            "device": self.device["device"],
            "gpu": self.device.get("gpu"),
            "executor": self.runner.backend.describe(),
            "workers": self.runner.workers,
            "queue": {
                "queued": counts["queued"],
                "running": counts["running"],
                "max_queued": self.config.limits.max_queue,
            },
            "clip": _clip_status(),
            "llm": _llm_status(),
            "auth": self.config.token is not None,
            "limits": {
                "max_upload_bytes": self.config.limits.max_upload_bytes,
                "max_width": self.config.limits.max_width,
                "max_height": self.config.limits.max_height,
                "max_pixels": self.config.limits.max_pixels,
                "max_prompt_chars": self.config.limits.max_prompt_chars,
                "memory_budget_mb": self.memory_budget_mb,
            },
        }


def create_app(
    data_dir: Path | None = None,
    *,
    config: ServiceConfig | None = None,
    edit_fn=None,
    host: str | None = None,
) -> FastAPI:
    """The ASGI app. `edit_fn` replaces `rs_edit.edit.run_edit` (tests, benchmarks). `host`:
    the address it will be bound to, for the Host check (`guard`); None: judged per request by
    the address the connection arrived on."""
    config = (config or ServiceConfig()).validate()
    register_secret(config.token)
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    service = Service(data_dir, config, edit_fn)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await anyio.to_thread.run_sync(service.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(service.stop)

    app = FastAPI(
        title="rs-edit",
        version=__version__,
        description="Edit a georeferenced remote-sensing image by a text prompt.",
        lifespan=lifespan,
    )
    app.state.data_dir = data_dir
    app.state.service = service
    install_error_handlers(app, max_roi_bytes=config.limits.max_roi_bytes)
    app.add_middleware(
        Guard,
        token=config.token,
        max_body=config.limits.max_upload_bytes,
        bind_host=host,
        allowed_hosts=config.allowed_hosts,
        allowed_origins=config.allowed_origins,
    )

    @app.get("/v1/health", tags=["service"])
    async def health() -> dict:
        """Version, device, queue, and whether CLIP weights and an LLM endpoint are there."""
        return await anyio.to_thread.run_sync(service.health)

    @app.post("/v1/jobs", status_code=201, tags=["jobs"])
    def submit_job(
        image: Annotated[UploadFile, File(description="the GeoTIFF to edit")],
        prompt: Annotated[str, Form(description="what the ROI should show")],
        roi: Annotated[str | None, Form(description="GeoJSON polygons (any CRS)")] = None,
        mask: Annotated[UploadFile | None, File(description="mask GeoTIFF, same grid")] = None,
        preset: Annotated[str, Form()] = DEFAULT_PRESET,
        seed: Annotated[int | None, Form()] = None,
        clip: Annotated[str, Form(description="CLIP model name")] = DEFAULT_CLIP,
        llm: Annotated[str, Form(description="none or openai")] = "none",
        variants: Annotated[int, Form()] = 1,
        guidance: Annotated[
            str, Form(description="auto (by the preset), finetune, sampling or none")
        ] = "auto",
        rgb_bands: Annotated[str | None, Form(description="e.g. 4,3,2")] = None,
        feather: Annotated[int, Form(description="feather width inside the ROI (px)")] = 2,
        dilate: Annotated[int, Form(description="grow the ROI by px")] = 0,
        repair_roi: Annotated[bool, Form(description="repair invalid polygons")] = False,
    ) -> JSONResponse:
        """Submit an edit. Everything checkable is checked now (4xx at once)."""
        form = {
            "options": {
                "prompt": prompt,
                "preset": preset,
                "seed": seed,
                "clip": clip,
                "llm": llm,
                "variants": variants,
                "guidance": guidance,
                "rgb_bands_text": rgb_bands,
                "feather": feather,
                "dilate": dilate,
            },
            "roi": roi,
            "repair_roi": repair_roi,
        }
        body = service.submit(form, image, _real_upload(mask))
        return JSONResponse(
            status_code=201, content=body, headers={"Location": f"/v1/jobs/{body['id']}"}
        )

    @app.get("/v1/jobs", tags=["jobs"])
    async def list_jobs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        status: Annotated[str | None, Query(pattern="^[a-z]{1,20}$")] = None,
    ) -> dict:
        """The most recent jobs, newest first."""
        jobs = await anyio.to_thread.run_sync(lambda: service.store.list(limit, status))
        return redact_json({"jobs": [j.to_json() for j in jobs]})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"])
    async def job_status(job_id: str) -> dict:
        """Status, progress (0-100), stage and message of one job."""
        check_job_id(job_id)
        job = service.store.require(job_id)
        return service.job_json(job)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"])
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        """Server-Sent Events: a `status` event (the job JSON) at every change, until the job
        ends; a comment line every 15 s keeps the connection open."""
        check_job_id(job_id)
        service.store.require(job_id)
        return StreamingResponse(
            _events(service, job_id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        response_class=FileResponse,
        responses={200: {"content": {"image/tiff": {}}}},
    )
    def job_result(job_id: str, variant: Annotated[int, Query(ge=1, le=64)] = 1):
        """The edited GeoTIFF (409 while the job has not succeeded)."""
        check_job_id(job_id)
        path = service.result_path(job_id, variant)
        suffix = f"_v{variant}" if variant > 1 else ""
        return FileResponse(path, media_type="image/tiff", filename=f"rs-edit-{job_id}{suffix}.tif")

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"])
    def cancel_job(job_id: str) -> dict:
        """Cancel: a queued job at once, a running one at its next step (nothing is written).
        A finished job is left as it is."""
        check_job_id(job_id)
        job = service.store.require(job_id)
        if job.status not in TERMINAL:
            job = service.store.request_cancel(job_id)
            service.runner.cancel(job_id)
        return service.job_json(job)

    return app


async def _events(service: Service, job_id: str, request: Request):
    seen = -1
    idle = 0.0
    while True:
        version = service.store.version(job_id)
        if version != seen:
            seen = version
            job = await anyio.to_thread.run_sync(service.store.get, job_id)
            body = json.dumps(service.job_json(job))
            yield f"event: status\nid: {version}\ndata: {body}\n\n"
            idle = 0.0
            if job.terminal:
                return
        await asyncio.sleep(SSE_POLL_S)
        idle += SSE_POLL_S
        if idle >= SSE_HEARTBEAT_S:
            idle = 0.0
            yield ": keep-alive\n\n"
            if await request.is_disconnected():
                return


def _real_upload(upload: UploadFile | None) -> UploadFile | None:
    """Some clients send an empty file part for 'no mask'."""
    if upload is None or (not upload.filename and upload.size == 0):
        return None
    return upload


def _save_upload(upload: UploadFile, dest: Path) -> None:
    """Copy an upload (already bounded by the body limit) to our own file name."""
    upload.file.seek(0)
    with open(dest, "wb") as f:
        shutil.copyfileobj(upload.file, f, 1024 * 1024)


def _options_dict(options) -> dict:
    from dataclasses import asdict

    values = asdict(options)
    if values.get("rgb_bands") is not None:
        values["rgb_bands"] = list(values["rgb_bands"])
    return values


def _device_info() -> dict:
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return {
                "device": f"cuda:{props.name}",
                "gpu": {
                    "name": props.name,
                    "memory_mb": int(props.total_memory // 2**20),
                    "count": torch.cuda.device_count(),
                },
            }
    except Exception:  # a broken CUDA setup: report CPU
        pass
    return {"device": "cpu", "gpu": None}


_CLIP_STATUS: dict = {}
CLIP_STATUS_TTL_S = 30.0


def _clip_status() -> dict:
    """Which CLIP models could be used now (weights present), without loading any; looked up
    at most every 30 s (health is polled)."""
    now = time.monotonic()
    if not _CLIP_STATUS or now - _CLIP_STATUS["t"] > CLIP_STATUS_TTL_S:
        _CLIP_STATUS.update(t=now, value=_clip_lookup())
    return _CLIP_STATUS["value"]


def _clip_lookup() -> dict:
    from ..guidance import clip as clip_module

    available = {"tiny-random": True}
    for name in submit.SERVICE_CLIP_MODELS:
        if name == "tiny-random":
            continue
        try:
            available[name] = clip_module.find_local_weights(name) is not None
        except Exception:  # a broken cache: not available
            available[name] = False
    return {"default": DEFAULT_CLIP, "weights_available": available}


def _llm_status() -> dict:
    """Whether `--llm openai` has an endpoint, read as Prompt Ensembling reads it (`LlmConfig`);
    the key itself is never shown. A bad setting (RS_EDIT_LLM_TIMEOUT) is reported, not raised."""
    try:
        return LlmConfig.from_env().describe()
    except ParameterError as exc:
        return {"openai": False, "error": redact(str(exc))}


class _RedactingFormatter(logging.Formatter):
    """Every log line (tracebacks included) without the LLM API keys or the access token."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self.inner.format(record))


def _log_redacted() -> None:
    """Our log lines to stderr, and every handler (uvicorn's too) through `redact`."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
        for h in logging.getLogger(name).handlers:
            if not isinstance(h.formatter, _RedactingFormatter):
                h.setFormatter(_RedactingFormatter(h.formatter or logging.Formatter()))


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    data_dir: str | None = None,
    *,
    config: ServiceConfig | None = None,
    edit_fn=None,
    sockets=None,
) -> None:
    """Run the service with uvicorn (blocking). A non-loopback address needs a token."""
    import uvicorn

    config = (config or ServiceConfig()).validate()
    if host not in LOOPBACK and not config.token:
        raise ParameterError(
            f"refusing to bind {host} without an access token: pass --token-file (or --token, "
            "or set RS_EDIT_TOKEN); clients then send 'Authorization: Bearer <token>'"
        )
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    app = create_app(path, config=config, edit_fn=edit_fn, host=host)
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False)
    )
    _log_redacted()  # after uvicorn configured its loggers
    log.info("answering Host: %s", host_policy(host, config.allowed_hosts).describe())
    server.run(sockets=sockets)


__all__ = ["Limits", "ServiceConfig", "create_app", "default_data_dir", "error_response", "serve"]
