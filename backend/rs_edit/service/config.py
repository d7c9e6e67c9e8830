"""Everything `rs-edit serve` can be told, in one frozen dataclass with safe defaults."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..edit import MAX_PROMPT_CHARS
from ..errors import ParameterError
from ..llm import TOKEN_ENV

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
EXECUTORS = ("local", "ray")
MIN_TOKEN_CHARS = 16
ALLOWED_HOSTS_ENV = "RS_EDIT_ALLOWED_HOSTS"
ALLOWED_ORIGINS_ENV = "RS_EDIT_ALLOWED_ORIGINS"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. Anything beyond is refused before work starts."""

    max_upload_bytes: int = 1024 * 1024 * 1024  # whole request body (image + mask + fields)
    max_roi_bytes: int = 1024 * 1024  # a GeoJSON ROI text field
    max_width: int = 40_000  # declared raster size, checked from the header before pixels
    max_height: int = 40_000
    max_pixels: int = 400_000_000
    max_bands: int = 64
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_queue: int = 100  # queued (not yet running) jobs; beyond: 429
    max_variants: int = 8

    def validate(self) -> Limits:
        for name, value in vars(self).items():
            if not isinstance(value, int) or value < 1:
                raise ParameterError(f"limit {name} must be a positive integer, got {value!r}")
        return self


@dataclass(frozen=True)
class ServiceConfig:
    """The service's settings: limits, executor, model cache, access token."""

    limits: Limits = field(default_factory=Limits)
    executor: str = "local"  # "local" (threads in this process) or "ray"
    workers: int | None = None  # concurrent jobs; None: one per GPU, else 1 (CPU)
    ray_address: str | None = None  # None: start a local Ray (tests, one machine)
    ray_gpus_per_task: float = 1.0  # each Ray edit task asks for this many GPUs
    ray_cpus_per_task: float = 1.0
    ray_cache_dir: str | None = None  # model cache on the Ray workers; None: their default
    cache_models: int = 32  # model cache: at most this many tile models (LRU) ...
    cache_bytes: int = 8 * 1024**3  # ... and at most this many bytes
    token: str | None = None  # bearer token; required on every request when set
    device: str = "auto"  # passed to the edit ("auto", "cpu", "cuda")
    allowed_hosts: tuple[str, ...] = ()  # more Host names to answer (`guard.host_policy`)
    allowed_origins: tuple[str, ...] = ()  # web origins whose requests are accepted
    # A job whose estimated peak memory (`rs_edit.memory.estimate_mb`) exceeds this many MB is
    # refused at submission (413). None: RS_EDIT_MEMORY_BUDGET, else half of this machine's
    # memory (`memory_budget`).
    memory_budget_mb: int | None = None
    # Each edit runs in a child process (`executor.LocalBackend`) whose data segment
    # (RLIMIT_DATA) is limited to this factor times the job's memory estimate (at most this
    # factor times the budget): a job beyond it fails alone, the server survives. 0: no limit.
    job_memory_factor: float = 2.0
    job_process: bool = True  # False: edit in the server's threads (no isolation, no limit)
    # Finished, failed and cancelled jobs (record, upload, results) are removed this many days
    # after they ended (`retention.sweep`); 0 keeps them forever.
    retention_days: float = 30.0
    # Submissions are refused (507) while the data directory holds more than this many bytes
    # (`retention.check_disk_budget`); None: no bound.
    max_data_bytes: int | None = None

    def validate(self) -> ServiceConfig:
        self.limits.validate()
        if self.executor not in EXECUTORS:
            raise ParameterError(
                f"unknown executor {self.executor!r} (known: {', '.join(EXECUTORS)})"
            )
        if self.workers is not None and not 1 <= self.workers <= 256:
            raise ParameterError(f"workers must be between 1 and 256, got {self.workers}")
        if self.cache_models < 1 or self.cache_bytes < 1:
            raise ParameterError("the model cache must allow at least one model and one byte")
        if self.ray_gpus_per_task < 0 or self.ray_cpus_per_task < 0:
            raise ParameterError("Ray resources per task must not be negative")
        check_token(self.token)
        for name in ("allowed_hosts", "allowed_origins"):
            if isinstance(getattr(self, name), str | bytes):
                raise ParameterError(f"{name} must be a list of names, not one string")
        from .guard import parse_allowed_hosts, parse_allowed_origins

        parse_allowed_hosts(self.allowed_hosts)
        parse_allowed_origins(self.allowed_origins)
        if self.memory_budget_mb is not None and (
            not isinstance(self.memory_budget_mb, int) or self.memory_budget_mb < 1
        ):
            raise ParameterError(
                f"the memory budget must be a positive number of MB, got {self.memory_budget_mb!r}"
            )
        if not isinstance(self.job_memory_factor, int | float) or not (
            self.job_memory_factor == 0 or 1.0 <= self.job_memory_factor <= 64
        ):
            raise ParameterError(
                f"the job memory factor must be 0 (no limit) or between 1 and 64, "
                f"got {self.job_memory_factor!r}"
            )
        if (
            not isinstance(self.retention_days, int | float)
            or not math.isfinite(self.retention_days)
            or self.retention_days < 0
        ):
            raise ParameterError(
                f"the retention must be a number of days >= 0 (0: keep forever), "
                f"got {self.retention_days!r}"
            )
        if self.max_data_bytes is not None and (
            not isinstance(self.max_data_bytes, int) or self.max_data_bytes < 1
        ):
            raise ParameterError(
                f"the data directory bound must be a positive number of bytes, "
                f"got {self.max_data_bytes!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ParameterError(f"unknown device {self.device!r} (auto, cpu, cuda)")
        return self

    def memory_budget(self, env: dict | None = None) -> int:
        """The memory budget in MB: `memory_budget_mb`, else RS_EDIT_MEMORY_BUDGET, else half
        of this machine's memory."""
        from ..memory import resolve_budget

        return resolve_budget(self.memory_budget_mb, env)


def check_token(token: str | None) -> None:
    """An access token must be printable ASCII without spaces (it travels in a header) and at
    least 16 characters long; a blank one is a mistake, never 'no token'."""
    if token is None:
        return
    if not token.strip():
        raise ParameterError("the access token is empty (or only spaces)")
    if any(not ("!" <= c <= "~") for c in token):
        raise ParameterError(
            "the access token must be printable ASCII without spaces or line breaks"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ParameterError(f"the access token must be at least {MIN_TOKEN_CHARS} characters long")


def resolve_token(
    token: str | None = None, token_file: str | None = None, env: dict | None = None
) -> str | None:
    """The access token: `--token`, else the content of `--token-file`, else RS_EDIT_TOKEN
    (unset or empty: none). Checked by `check_token`."""
    env = os.environ if env is None else env
    if token is not None and token_file is not None:
        raise ParameterError("give the access token once: --token or --token-file")
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ParameterError(f"cannot read the token file {path}: {reason}") from None
        token = text.strip()  # a final line break is not part of it
        if not token:
            raise ParameterError(f"the token file {path} is empty")
    elif token is None:
        token = env.get(TOKEN_ENV) or None
    check_token(token)
    return token


def names_from(values: list[str] | None, env_name: str, env: dict | None = None) -> tuple:
    """Repeated options (`--allowed-host A --allowed-host B`, each may be `A,B`), else the
    environment variable (comma separated)."""
    env = os.environ if env is None else env
    texts = values if values else [env.get(env_name) or ""]
    return tuple(part.strip() for text in texts for part in text.split(",") if part.strip())
