"""The one map from errors to HTTP responses: `{"error": {"code": ..., "message": ...}}`.

Backend `InputError`s are 400 (each subclass its own code); request shape errors from FastAPI
(missing field, wrong type) are 422; the service's own conditions carry their status. Anything
else is a 500 whose message names no internals: the traceback goes to the server log only.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import (
    CrsError,
    GridMismatchError,
    InputError,
    NotAvailableError,
    ParameterError,
    RasterError,
    RoiError,
    RsEditError,
)
from ..llm import known_secrets, redact  # the one scrubbing of secrets (both LLM keys, the token)

log = logging.getLogger("rs_edit.service")


class ServiceError(RsEditError):
    """An HTTP condition of the service itself (not found, queue full, ...)."""

    status = 500
    code = "failed"

    def __init__(self, message: str, *, headers: dict | None = None):
        super().__init__(message)
        self.headers = headers


class NotFoundError(ServiceError):
    status, code = 404, "not_found"


class QueueFullError(ServiceError):
    status, code = 429, "queue_full"


class NotReadyError(ServiceError):
    status, code = 409, "not_ready"


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class PayloadTooLargeError(ServiceError):
    status, code = 413, "too_large"


class LimitError(InputError):
    """The request is well formed but beyond the server's limits (raster size, ...): 413."""


# Most specific first.
_INPUT_CODES: tuple[tuple[type[InputError], int, str], ...] = (
    (LimitError, 413, "too_large"),
    (GridMismatchError, 400, "grid_mismatch"),
    (RoiError, 400, "bad_roi"),
    (CrsError, 400, "bad_crs"),
    (RasterError, 400, "bad_raster"),
    (ParameterError, 400, "bad_parameter"),
    (InputError, 400, "bad_input"),
)


def error_response(
    status: int, code: str, message: str, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": redact(" ".join(str(message).split()))}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def response_for(exc: BaseException) -> JSONResponse:
    """The response for any exception a route lets out."""
    if isinstance(exc, ServiceError):
        return error_response(exc.status, exc.code, str(exc), exc.headers)
    if isinstance(exc, InputError):
        for cls, status, code in _INPUT_CODES:
            if isinstance(exc, cls):
                return error_response(status, code, str(exc))
    if isinstance(exc, NotAvailableError):
        return error_response(501, "not_available", str(exc))
    log.error("internal error", exc_info=exc)
    return error_response(500, "internal", "internal server error (details in the server log)")


def install_error_handlers(app: FastAPI) -> None:
    async def _known(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(exc))

    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        cause = exc.__cause__
        if exc.status_code == 400 and type(cause).__name__ == "MultiPartException":
            detail = f"malformed form data: {getattr(cause, 'message', cause)}"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path[:200]}"
        return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))

    app.add_exception_handler(RsEditError, _known)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _known)


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's error list as one readable line: 'seed: Input should be a valid integer'."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        where = ".".join(loc) or "request"
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "field required"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts) or "invalid request"


def redact_json(obj):
    """`redact` over everything a JSON answer holds (a no-op when no secret is known)."""
    if not known_secrets():
        return obj
    import json

    return json.loads(redact(json.dumps(obj)))


def name_field(message: str, path, field: str) -> str:
    """Replace a server path (and the file's own name) by the form field's name: clients see
    `image` or `mask`, never the server's folders."""
    return message.replace(str(path), field).replace(Path(path).name, field)
