"""Everything `rs-edit serve` can be told, in one frozen dataclass with safe defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..edit import MAX_PROMPT_CHARS
from ..errors import ParameterError

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
EXECUTORS = ("local", "ray")


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
        if self.token is not None and len(self.token) < 16:
            raise ParameterError("the access token must be at least 16 characters long")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ParameterError(f"unknown device {self.device!r} (auto, cpu, cuda)")
        return self
