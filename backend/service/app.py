"""The HTTP API. This version serves health only; the job API arrives with the service issue.

Routes stay thin: errors from the backend's hierarchy become HTTP responses in one handler.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..errors import InputError, NotAvailableError, RsEditError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def default_data_dir() -> Path:
    """RS_EDIT_DATA_DIR, else the user's data directory (XDG on Linux)."""
    env = os.environ.get("RS_EDIT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "rs-edit"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


def create_app(data_dir: Path | None = None) -> FastAPI:
    app = FastAPI(title="rs-edit", version=__version__)
    app.state.data_dir = data_dir or default_data_dir()

    @app.exception_handler(RsEditError)
    async def _rs_edit_error(request: Request, exc: RsEditError) -> JSONResponse:
        if isinstance(exc, InputError):
            return error_response(400, "bad_input", str(exc))
        if isinstance(exc, NotAvailableError):
            return error_response(501, "not_available", str(exc))
        return error_response(500, "failed", str(exc))

    @app.get("/v1/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "device": _device_name()}

    @app.post("/v1/jobs")
    def submit_job() -> JSONResponse:
        raise NotAvailableError(f"the job API is not in rs-edit {__version__} yet")

    return app


def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def serve(host: str = "127.0.0.1", port: int = 8765, data_dir: str | None = None) -> None:
    import uvicorn

    from ..errors import ParameterError

    if host not in LOOPBACK:
        raise ParameterError(
            f"refusing to bind {host}: this version serves only on 127.0.0.1 (no access tokens yet)"
        )
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(path), host=host, port=port, log_level="info")
