"""`GET /v1/health`: version, device, executor, queue, which CLIP weights and LLM endpoint are
there, the presets the API accepts and what `auto` means here, how long each preset takes here
for an area of a given size (`estimates.py`), and the server's limits (with the data
directory's size, its bound and how long finished jobs are kept).

Nothing here loads a model; what needs a disk look-up is cached, since clients poll health: CLIP
weights for 30 s, the data directory's size for a few seconds (`retention.DataUsage`).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import __version__
from ..engine.presets import AUTO, resolve_preset
from ..errors import ParameterError
from ..guidance.clip import DEFAULT_CLIP
from ..llm import LlmConfig
from .errors import redact
from .estimates import estimates as preset_estimates
from .submit import EDIT_PRESETS, SERVICE_CLIP_MODELS

if TYPE_CHECKING:
    from .service import Service

CLIP_STATUS_TTL_S = 30.0
_CLIP_STATUS: dict = {}


def health(service: Service) -> dict:
    """The health answer of `service` (see the module's docstring)."""
    counts = service.store.counts()
    limits = service.config.limits
    return {
        "status": "ok",
        "version": __version__,
        "device": service.device["device"],
        "gpu": service.device.get("gpu"),
        "executor": service.runner.backend.describe(),
        "workers": service.runner.workers,
        "queue": {
            "queued": counts["queued"],
            "running": counts["running"],
            "max_queued": limits.max_queue,
        },
        "clip": clip_status(),
        "llm": llm_status(),
        "presets": presets_status(service.device_type),
        "estimates": preset_estimates(service.device_type, service.store, EDIT_PRESETS),
        "auth": service.config.token is not None,
        "limits": {
            "max_upload_bytes": limits.max_upload_bytes,
            "max_width": limits.max_width,
            "max_height": limits.max_height,
            "max_pixels": limits.max_pixels,
            "max_prompt_chars": limits.max_prompt_chars,
            "memory_budget_mb": service.memory_budget_mb,
            "data_bytes": service.usage.bytes(),
            "max_data_bytes": service.config.max_data_bytes,
            "retention_days": float(service.config.retention_days),
        },
    }


def device_info() -> dict:
    """{"device": "cuda:<name>" or "cpu", "gpu": {name, memory_mb, count} or None}."""
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


def presets_status(device_type: str) -> dict:
    """The presets a job may name, `auto` first, and the one `auto` runs on this server's
    device (`engine.presets.resolve_preset`)."""
    chosen, _ = resolve_preset(AUTO, device_type)
    return {"default": AUTO, "auto": chosen.name, "names": list(EDIT_PRESETS)}


def clip_status() -> dict:
    """Which CLIP models could be used now (weights present), without loading any; looked up
    at most every 30 s (health is polled)."""
    now = time.monotonic()
    if not _CLIP_STATUS or now - _CLIP_STATUS["t"] > CLIP_STATUS_TTL_S:
        _CLIP_STATUS.update(t=now, value=_clip_lookup())
    return _CLIP_STATUS["value"]


def _clip_lookup() -> dict:
    from ..guidance import clip as clip_module

    available = {"tiny-random": True}
    for name in SERVICE_CLIP_MODELS:
        if name == "tiny-random":
            continue
        try:
            available[name] = clip_module.find_local_weights(name) is not None
        except Exception:  # a broken cache: not available
            available[name] = False
    return {"default": DEFAULT_CLIP, "weights_available": available}


def llm_status() -> dict:
    """Whether `--llm openai` has an endpoint, read as Prompt Ensembling reads it (`LlmConfig`);
    the key itself is never shown. A bad setting (RS_EDIT_LLM_TIMEOUT) is reported, not raised."""
    try:
        return LlmConfig.from_env().describe()
    except ParameterError as exc:
        return {"openai": False, "error": redact(str(exc))}
