"""The routes of `rs-edit serve`, thin: each checks its path and query (FastAPI, `check_job_id`)
and hands over to the `Service`; errors become HTTP answers in one place (`errors`). The 4xx
answers each route can give are documented with their body (`errors.ErrorBody`), so the OpenAPI
schema (`/openapi.json`, docs/openapi.json) tells clients everything they may get back.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at run time, and the
# job form's model is made per server (its limits).

import asyncio
import json
from typing import Annotated

import anyio
from fastapi import FastAPI, File, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from . import submit
from .errors import ErrorBody, redact_json
from .jobs import STATUSES, check_job_id
from .models import Health, Job, JobList, Purged
from .service import Service

SSE_POLL_S = 0.1
SSE_HEARTBEAT_S = 15.0

# What the outermost layer (`guard`) and the error map may answer to any request.
_ANY_ROUTE = {
    400: "Malformed request (an invalid Content-Length header, malformed form data).",
    401: "Missing or wrong access token (a server started with one wants "
    "`Authorization: Bearer <token>`).",
    403: "Sent by a web page of another origin.",
    413: "Request body over the server's limit.",
    421: "The Host header names no address of this server.",
    500: "Internal error (details in the server log only).",
}
_BAD_PARAMS = "A parameter missing or of the wrong type."
_JOB_ID_DOC = "the job's id: 32 lower-case hex digits (anything else: 404)"
_JOB_ID_PATTERN = "^[0-9a-f]{32}$"


def _errors(**extra: str) -> dict:
    """The `responses` of a route: `_ANY_ROUTE` plus its own (`_404="..."`), each with the
    error body. A status in both gets both descriptions."""
    answers = dict(_ANY_ROUTE)
    for name, text in extra.items():
        status = int(name.lstrip("_"))
        answers[status] = f"{answers[status]} {text}" if status in answers else text
    return {status: {"model": ErrorBody, "description": text} for status, text in answers.items()}


def _answer(model, answers: dict, description: str = "Successful Response") -> dict:
    """`answers` with a 200 whose body is `model`."""
    return {200: {"model": model, "description": description}, **answers}


def _header(description: str, kind: str = "string") -> dict:
    return {"description": description, "required": True, "schema": {"type": kind}}


def add_routes(app: FastAPI, service: Service) -> None:
    """The API's routes, over `service`, added to `app` itself (not an included router: the
    405 handler lists a path's methods from the app's own routes, `errors.allowed_methods`)."""
    router = app.router
    JobForm = submit.job_form(service.config.limits)  # noqa: N806 - a class

    @router.get(
        "/v1/health", tags=["service"], response_model=None, responses=_answer(Health, _errors())
    )
    async def health() -> dict:
        """Version, device, queue, limits, whether CLIP weights and an LLM endpoint are there,
        and the presets (`presets.names`, `auto` first; `presets.auto`: the one `auto` runs on
        this server's device)."""
        return await anyio.to_thread.run_sync(service.health)

    submit_answers = _errors(
        _400="Or a form value refused (bad_parameter) or the upload refused: not a GeoTIFF, "
        "bad ROI or CRS, mask on another grid, an example (reference) whose bands cannot match "
        "the image's or without its polygons, ... (the message says which field).",
        _413="Or the image's or the example's declared size, the ROI or the estimated memory "
        "of the edit over the server's limits.",
        _422="A field missing or of the wrong type.",
        _429="The job queue is full: try again later.",
        _507="The server's storage for jobs is full (storage_full; its --max-data-gb): try "
        "again later, or purge finished jobs (DELETE /v1/jobs/{id}?purge=true).",
    )
    submit_answers[201] = {
        "model": Job,
        "description": "The job, queued.",
        "headers": {"Location": _header("the job's URL")},
    }
    submit_answers[429]["headers"] = {
        "Retry-After": _header("seconds to wait before trying again", "integer")
    }

    @router.post(
        "/v1/jobs",
        status_code=201,
        tags=["jobs"],
        response_model=None,
        response_class=JSONResponse,
        responses=submit_answers,
    )
    def submit_job(
        form: Annotated[JobForm, File(media_type="multipart/form-data")],
    ) -> JSONResponse:
        """Submit an edit (multipart/form-data). Everything checkable is checked now (4xx at
        once): the form's fields, then the uploads (GeoTIFFs within the limits: the image, a
        mask, an example to look like), the ROI, the example's polygons and the memory the
        edit would need."""
        body = service.submit(form, _real_upload(form.mask), _real_upload(form.reference))
        return JSONResponse(
            status_code=201, content=body, headers={"Location": f"/v1/jobs/{body['id']}"}
        )

    list_answers = _errors(_422=f"{_BAD_PARAMS} A bad limit or status.")

    @router.get(
        "/v1/jobs", tags=["jobs"], response_model=None, responses=_answer(JobList, list_answers)
    )
    async def list_jobs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        status: Annotated[
            str | None,
            Query(
                pattern="^[a-z]{1,20}$",
                description=f"only jobs in this state ({', '.join(STATUSES)})",
            ),
        ] = None,
    ) -> dict:
        """The most recent jobs, newest first."""
        jobs = await anyio.to_thread.run_sync(lambda: service.store.list(limit, status))
        return redact_json({"jobs": [j.to_json() for j in jobs]})

    job_id_param = Annotated[str, _path_doc(_JOB_ID_DOC, _JOB_ID_PATTERN)]

    job_answers = _errors(_404="No such job.", _422=_BAD_PARAMS)

    @router.get(
        "/v1/jobs/{job_id}", tags=["jobs"], response_model=None, responses=_answer(Job, job_answers)
    )
    async def job_status(job_id: job_id_param) -> dict:
        """Status, progress (0-100), stage and message of one job."""
        check_job_id(job_id)
        job = service.store.require(job_id)
        return service.job_json(job)

    events_answers = _errors(_404="No such job.", _422=_BAD_PARAMS)
    events_answers[200] = {
        "description": "The job's events until it ends.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }

    @router.get(
        "/v1/jobs/{job_id}/events",
        tags=["jobs"],
        response_class=StreamingResponse,
        responses=events_answers,
    )
    async def job_events(job_id: job_id_param, request: Request) -> StreamingResponse:
        """Server-Sent Events: a `status` event (the job JSON) at every change, until the job
        ends; a comment line every 15 s keeps the connection open."""
        check_job_id(job_id)
        service.store.require(job_id)
        return StreamingResponse(
            _events(service, job_id, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    result_answers = _errors(
        _404="No such job, or no such variant.",
        _409="The job has not succeeded (yet).",
        _422=f"{_BAD_PARAMS} A bad variant.",
    )
    result_answers[200] = {
        "description": "The edited GeoTIFF.",
        "content": {"image/tiff": {"schema": {"type": "string", "format": "binary"}}},
    }

    @router.get(
        "/v1/jobs/{job_id}/result",
        tags=["jobs"],
        response_class=FileResponse,
        responses=result_answers,
    )
    def job_result(
        job_id: job_id_param,
        variant: Annotated[int, Query(ge=1, le=64, description="1 to the job's variants")] = 1,
    ):
        """The edited GeoTIFF (409 while the job has not succeeded)."""
        check_job_id(job_id)
        path = service.result_path(job_id, variant)
        suffix = f"_v{variant}" if variant > 1 else ""
        return FileResponse(path, media_type="image/tiff", filename=f"rs-edit-{job_id}{suffix}.tif")

    delete_answers = _answer(
        Job | Purged,
        _errors(
            _404="No such job (or already purged).",
            _409="With purge=true: the job is queued or running (job_active); cancel it first "
            "(DELETE without purge), then purge it once it has stopped.",
            _422=f"{_BAD_PARAMS} A bad purge value.",
        ),
        "Without purge: the job, as it is now. With purge=true: its id and `purged: true`.",
    )

    @router.delete(
        "/v1/jobs/{job_id}", tags=["jobs"], response_model=None, responses=delete_answers
    )
    def cancel_job(
        job_id: job_id_param,
        purge: Annotated[
            bool,
            Query(
                description="remove a finished, failed or cancelled job: its record, upload "
                "and results (409 while it is queued or running)"
            ),
        ] = False,
    ) -> dict:
        """Cancel: a queued job at once, a running one at its next step (nothing is written).
        A finished job is left as it is. With `purge=true`: remove a job that has ended, with
        its files (a GET then answers 404); jobs also go `retention_days` after they ended."""
        check_job_id(job_id)
        if purge:
            return service.purge(job_id)
        return service.job_json(service.cancel(job_id))


def _path_doc(description: str, pattern: str):
    """A path parameter documented with the pattern it must have, which the route checks
    itself (404 for anything else, not FastAPI's 422)."""
    return Path(description=description, json_schema_extra={"pattern": pattern})


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


def _real_upload(upload):
    """Some clients send an empty file part for 'no mask' (or 'no reference')."""
    if upload is None or (not upload.filename and upload.size == 0):
        return None
    return upload
