"""The HTTP API (`rs-edit serve`): jobs to edit a GeoTIFF by a prompt, their progress and results.

By job, one module each: the ASGI app and the server here (`create_app`, `serve`); the routes
in `routes` (thin); the state behind them in `service.Service` (data folders, store, runner);
checking a submission in `submit` (the job form's pydantic model, the upload, the ROI); health
in `health`; errors to HTTP in one place (`errors`); who may send a request in `guard`; log
redaction in `logging_setup`. Records live in `jobs`, running in `executor`. OpenAPI docs at
/docs, the schema at /openapi.json (and in docs/openapi.json, `scripts/write_openapi.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import anyio
from fastapi import FastAPI

from .. import __version__
from ..errors import ParameterError
from ..llm import register_secret
from .config import LOOPBACK, Limits, ServiceConfig
from .errors import error_response, install_error_handlers
from .guard import Guard, host_policy
from .logging_setup import log_redacted
from .routes import add_routes
from .service import Service, default_data_dir

log = logging.getLogger("rs_edit.service")


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
    add_routes(app, service)
    return app


def openapi_text() -> str:
    """The OpenAPI schema of an app with the default settings, as docs/openapi.json holds it:
    JSON with sorted keys, indented, one trailing newline (the same bytes every time)."""
    with tempfile.TemporaryDirectory(prefix="rs-edit-openapi-") as tmp:
        schema = create_app(Path(tmp), config=ServiceConfig()).openapi()
        return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


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
    log_redacted()  # after uvicorn configured its loggers
    log.info("answering Host: %s", host_policy(host, config.allowed_hosts).describe())
    server.run(sockets=sockets)


__all__ = [
    "Limits",
    "Service",
    "ServiceConfig",
    "create_app",
    "default_data_dir",
    "error_response",
    "openapi_text",
    "serve",
]
