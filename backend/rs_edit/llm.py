"""The one source of the LLM configuration and of the secrets rs-edit knows.

`LlmConfig.from_env` is the only code that reads the LLM's environment variables:

    RS_EDIT_LLM_BASE_URL  (else OPENAI_BASE_URL)  an OpenAI-compatible endpoint (Ollama, vLLM, ...)
    RS_EDIT_LLM_API_KEY   (else OPENAI_API_KEY)   the key sent to it
    RS_EDIT_LLM_MODEL     (default gpt-4o-mini)   the model asked
    RS_EDIT_LLM_TIMEOUT   (default 20 s)          seconds per request

An empty variable counts as unset. Prompt Ensembling (`guidance/prompts.py`) asks the endpoint it
describes, and the service's `/v1/health` reports `LlmConfig.describe()` (never the key).

`redact` is the only scrubbing of secrets: it removes every value of `known_secrets()` (the LLM
API keys of both variables, the server's access token from RS_EDIT_TOKEN or `register_secret`)
from a text. The service passes every message, report and log line through it, and Prompt
Ensembling its notes and log lines. Nothing here imports more than the standard library, so the
service's health route can use it without loading the editor.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from .errors import ParameterError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT_S",
    "REDACTED",
    "SECRET_ENV",
    "LlmConfig",
    "known_secrets",
    "redact",
    "register_secret",
]

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_TIMEOUT_S = 20.0

# The environment, first name wins.
BASE_URL_ENV = ("RS_EDIT_LLM_BASE_URL", "OPENAI_BASE_URL")
API_KEY_ENV = ("RS_EDIT_LLM_API_KEY", "OPENAI_API_KEY")
MODEL_ENV = "RS_EDIT_LLM_MODEL"
TIMEOUT_ENV = "RS_EDIT_LLM_TIMEOUT"
TOKEN_ENV = "RS_EDIT_TOKEN"  # the service's access token (`rs-edit serve --token`)
# Every variable whose value is a secret: each is removed by `redact`, set or not in use.
SECRET_ENV = (*API_KEY_ENV, TOKEN_ENV)

REDACTED = "[redacted]"
# Shorter values are not treated as secrets (replacing "a" everywhere would garble every text).
MIN_SECRET_CHARS = 4


# --- secrets -------------------------------------------------------------------------------------

_REGISTERED: set[str] = set()


def register_secret(value: str | None) -> None:
    """Make `redact` remove this value too (the access token given as `--token`, not the env)."""
    value = (value or "").strip()
    if len(value) >= MIN_SECRET_CHARS:
        _REGISTERED.add(value)


def known_secrets(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The secret values rs-edit knows now, longest first: the LLM API keys (both variables,
    whichever is in use), the server's access token (RS_EDIT_TOKEN), registered values."""
    env = os.environ if env is None else env
    values = set(_REGISTERED)
    for name in SECRET_ENV:
        value = (env.get(name) or "").strip()
        if len(value) >= MIN_SECRET_CHARS:
            values.add(value)
    return tuple(sorted(values, key=len, reverse=True))


def redact(text: str, *extra: str | None) -> str:
    """`text` with every known secret, and each of `extra` (a key given in code), replaced by
    "[redacted]": for anything shown to a client or written to a log."""
    values = set(known_secrets())
    values.update(v for v in (e.strip() for e in extra if e) if len(v) >= MIN_SECRET_CHARS)
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


# --- the configuration ---------------------------------------------------------------------------


def _redact_url(url: str) -> str:
    """`url` without user info, query or fragment: safe to log and to show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable URL>"


@dataclass(frozen=True)
class LlmConfig:
    """Where the LLM lives. `repr`, `str`, `display_url` and `describe()` never show the key."""

    base_url: str | None = None
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ParameterError("LLM model name is empty")
        try:
            timeout = float(self.timeout_s)
        except (TypeError, ValueError):
            raise ParameterError(f"LLM timeout must be a number, got {self.timeout_s!r}") from None
        if not 0 < timeout <= 600:
            raise ParameterError(f"LLM timeout must be between 0 and 600 s, got {timeout:g}")
        object.__setattr__(self, "timeout_s", timeout)
        object.__setattr__(self, "model", self.model.strip())
        object.__setattr__(self, "base_url", (self.base_url or "").strip() or None)
        object.__setattr__(self, "api_key", (self.api_key or "").strip() or None)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LlmConfig:
        """Read `RS_EDIT_LLM_*` (falling back to `OPENAI_BASE_URL` / `OPENAI_API_KEY`): the one
        place the LLM's environment is read. Raises `ParameterError` for a bad timeout."""
        env = os.environ if env is None else env

        def get(*names: str) -> str | None:
            for name in names:
                value = (env.get(name) or "").strip()
                if value:
                    return value
            return None

        timeout = get(TIMEOUT_ENV)
        if timeout is not None:
            try:
                timeout_s = float(timeout)
            except ValueError:
                raise ParameterError(
                    f"{TIMEOUT_ENV} must be a number of seconds, got {timeout!r}"
                ) from None
        else:
            timeout_s = DEFAULT_TIMEOUT_S
        return cls(
            base_url=get(*BASE_URL_ENV),
            model=get(MODEL_ENV) or DEFAULT_MODEL,
            api_key=get(*API_KEY_ENV),
            timeout_s=timeout_s,
        )

    @property
    def available(self) -> bool:
        """Configured: a key is set (hosted API), or a base URL is (local servers need no key)."""
        return bool(self.api_key or self.base_url)

    @property
    def effective_base_url(self) -> str:
        return self.base_url or DEFAULT_BASE_URL

    @property
    def display_url(self) -> str:
        """The base URL without credentials, query, fragment or any secret: safe to log."""
        return redact(_redact_url(self.effective_base_url), self.api_key)

    def describe(self) -> dict:
        """For `/v1/health`: whether `--llm openai` has an endpoint, and which; never the key.

        `openai` is the "configured" flag clients read (the QGIS plugin does)."""
        return {
            "openai": self.available,
            "api_key_set": self.api_key is not None,
            "custom_endpoint": self.base_url is not None,
            "endpoint": self.display_url if self.available else None,
            "model": redact(self.model, self.api_key) if self.available else None,
        }
