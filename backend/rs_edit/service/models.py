"""The answers of the API as pydantic models, for the OpenAPI schema: a job, the job list, a
purge, the health report. Documentation only: routes return their JSON as built
(`jobs.Job.to_json`, `health.health`), and these models say what it holds. Every object may
carry more fields than listed (clients ignore what they do not know); the Schemathesis test
checks real answers against them. The job form is `submit.job_form`, the error body
`errors.ErrorBody`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .jobs import STATUSES


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Link(_Open):
    href: str
    rel: str
    type: str


class Job(_Open):
    """A job (OGC API - Processes job status, plus our fields)."""

    id: str = Field(description="32 lower-case hex digits")
    jobID: str = Field(description="the same id, as OGC API - Processes names it")  # noqa: N815
    status: Literal[STATUSES]
    progress: int = Field(ge=0, le=100)
    stage: str | None = Field(description="what the job is doing now")
    message: str | None = Field(description="for people: progress, or why it failed")
    created: str | None = Field(description="ISO 8601, UTC")
    started: str | None
    finished: str | None
    updated: str | None
    runs: int = Field(ge=0, description="how many times it was started")
    options: dict = Field(description="the edit's options, as checked")
    log: list[str]
    links: list[Link]
    queue_position: int | None = Field(None, description="while queued: 1 = next")
    results: list[str] | None = Field(None, description="once succeeded: the results' paths")
    report: dict | None = Field(None, description="once succeeded: how the edit went")
    retryable: bool | None = Field(
        None, description="once failed: true when the same request may be sent again"
    )


class Purged(_Open):
    """`DELETE /v1/jobs/{id}?purge=true`: the job and its files are gone."""

    id: str = Field(description="the purged job's id")
    purged: Literal[True]


class JobList(_Open):
    jobs: list[Job] = Field(description="newest first")


class Presets(_Open):
    default: str = Field(description="the preset a job gets when it names none: auto")
    auto: str = Field(description="the preset `auto` runs on this server's device")
    names: list[str] = Field(description="every preset a job may name, auto first")


class Estimate(_Open):
    """How long an edit with one preset takes on this server (`service/estimates.py`):
    `seconds_fixed + seconds_per_megapixel * width * height / 1e6` for an area of
    width x height px."""

    seconds_fixed: float = Field(
        ge=0, description="seconds whatever the size: start-up, training where the preset trains"
    )
    seconds_per_megapixel: float = Field(ge=0, description="seconds per megapixel of the area")
    source: Literal["built-in", "history"] = Field(
        description="built-in: figures measured on a 2-core CPU; history: this server's own "
        "recent succeeded jobs of the preset"
    )
    jobs: int = Field(ge=0, description="how many of this server's jobs the figures come from")


class Clip(_Open):
    default: str = Field(description="the CLIP model a job gets when it names none")
    weights_available: dict[str, bool] = Field(
        description="per CLIP model: whether its weights are on this server"
    )


class Queue(_Open):
    queued: int
    running: int
    max_queued: int


class HealthLimits(_Open):
    """What this server accepts, and how much its data directory holds."""

    max_upload_bytes: int
    max_width: int
    max_height: int
    max_pixels: int
    max_prompt_chars: int
    memory_budget_mb: int = Field(description="jobs estimated to need more are refused (413)")
    data_bytes: int = Field(
        ge=0, description="bytes the data directory holds now (jobs, model cache, records)"
    )
    max_data_bytes: int | None = Field(
        description="submissions are refused (507) beyond this many bytes; null: no bound"
    )
    retention_days: float = Field(
        ge=0, description="jobs are removed this many days after they ended; 0: kept forever"
    )


class Health(_Open):
    """`GET /v1/health`."""

    status: Literal["ok"]
    version: str
    device: str = Field(description='"cpu" or "cuda:<GPU name>"')
    gpu: dict | None
    executor: dict
    workers: int
    queue: Queue
    clip: Clip
    llm: dict = Field(description="`openai`: whether --llm openai has an endpoint")
    presets: Presets
    estimates: dict[str, Estimate | None] = Field(
        description="per preset the API accepts (auto: the preset it runs here), how long an "
        "edit takes for an area's size; null: unknown (no figures for this device, no history)"
    )
    auth: bool = Field(description="whether requests need an access token")
    limits: HealthLimits
