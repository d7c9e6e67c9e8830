"""The one map from errors to HTTP responses: `{"error": {"code": ..., "message": ...}}`.

Backend `InputError`s are 400 (each subclass its own code; a job over the server's limits or
over its memory budget, `memory.MemoryBudgetError`, is 413); request shape errors from FastAPI
(missing field, wrong type) are 422, a form value that breaks its field's constraint
(`submit.job_form`: out of range, not among the choices) 400 `bad_parameter`; the service's own
conditions carry their status (the outermost layer, `guard`, answers with these too). A method
a path does not have is a 405 whose `Allow` header lists the methods it has. Anything else is a
500 whose message names no internals: the traceback goes to the server log only. `ErrorBody` is
the body's model, for the OpenAPI schema.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

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
from ..memory import MemoryBudgetError

log = logging.getLogger("rs_edit.service")

# The pydantic error type of a form value that breaks its field's constraint (`submit.job_form`).
BAD_PARAMETER = "bad_parameter"


class ErrorDetail(BaseModel):
    code: str = Field(description="what went wrong, for programs: not_found, bad_roi, ...")
    message: str = Field(description="what went wrong, for people")


class ErrorBody(BaseModel):
    """Every error answer's body."""

    error: ErrorDetail


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


class BadRequestError(ServiceError):
    status, code = 400, "bad_request"


class BadHostError(ServiceError):
    """The `Host` header names no address of this server (DNS rebinding): 421."""

    status, code = 421, "bad_host"


class ForbiddenOriginError(ServiceError):
    """A web page of another origin sent the request (its `Origin` header): 403."""

    status, code = 403, "forbidden_origin"


class LimitError(InputError):
    """The request is well formed but beyond the server's limits (raster size, ...): 413."""


# Most specific first.
_INPUT_CODES: tuple[tuple[type[InputError], int, str], ...] = (
    (LimitError, 413, "too_large"),
    (MemoryBudgetError, 413, "memory_budget"),  # the estimate names itself and the budget
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


def install_error_handlers(app: FastAPI, max_roi_bytes: int | None = None) -> None:
    """`max_roi_bytes`: the ROI limit to name when the form parser refuses a large `roi` or
    `reference_roi`."""

    async def _known(request: Request, exc: Exception) -> JSONResponse:
        return response_for(exc)

    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if errors and all(err.get("type") == BAD_PARAMETER for err in errors):
            return error_response(400, BAD_PARAMETER, "; ".join(e["msg"] for e in errors[:5]))
        return error_response(422, "invalid_request", validation_message(exc))

    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        cause = _multipart_error(exc)
        if exc.status_code == 400 and cause is not None:
            field, limit = oversized_field(cause)
            if field in ("roi", "reference_roi"):  # the 413 `submit.parse_roi` answers
                limit = min(limit, max_roi_bytes or limit)
                return response_for(LimitError(f"{field} is larger than {limit:,} bytes"))
            if field is not None:
                detail = f"form field {field[:50]!r} exceeded the maximum size of {limit:,} bytes"
            else:
                detail = f"malformed form data: {getattr(cause, 'message', cause)}"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path[:200]}"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            detail = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
            headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return error_response(exc.status_code, code, detail, headers)

    app.add_exception_handler(RsEditError, _known)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _known)


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path has, over all the app's routes for it (Starlette's own
    405 names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _multipart_error(exc: BaseException | None) -> BaseException | None:
    """The form parser's error behind an HTTP 400 (Starlette raises the 400 in its context,
    some FastAPI versions wrap it as the cause), or None."""
    for _ in range(4):
        if exc is None or type(exc).__name__ == "MultiPartException":
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def oversized_field(exc: BaseException) -> tuple[str | None, int]:
    """(form field, limit in bytes) when the form parser refused a text field as too large,
    else (None, 0). Starlette's message names neither; its parser, still in the traceback,
    holds both."""
    if "maximum size" not in str(getattr(exc, "message", exc)):
        return None, 0
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "on_part_data":
            parser = frame.f_locals.get("self")
            name = getattr(getattr(parser, "_current_part", None), "field_name", None)
            limit = getattr(parser, "max_part_size", None)
            if isinstance(name, str) and isinstance(limit, int):
                return name, limit
        tb = tb.tb_next
    return None, 0


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
