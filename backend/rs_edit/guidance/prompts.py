"""Prompt Ensembling: one user prompt becomes several synonymous prompts.

The CLIP text embeddings of the ensemble are averaged (then re-normalised) into one guidance target.
Two sources, the first that works wins:

* an LLM behind any OpenAI-compatible chat-completions endpoint (OpenAI, Ollama, vLLM, ...), asked
  for `k` short remote-sensing rewrites as strict JSON; answers are validated and cached on disk;
* the built-in remote-sensing templates ("a satellite image of {}", ...), always available.

Endpoint problems (timeout, refused connection, HTTP errors, garbage) never raise: they fall back to
the templates and say why in `PromptEnsemble.note`. Bad user input raises `ParameterError`. The API
key never appears in a repr, a note, a log line, an exception we raise or a cache file: notes and
log lines go through `rs_edit.llm.redact`, as the service's messages do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError
from ..files import write_text_atomic
from ..llm import DEFAULT_MODEL, LlmConfig, redact
from ..paths import cache_root

__all__ = [
    "DEFAULT_MODEL",
    "TEMPLATES",
    "LlmConfig",
    "PromptEnsemble",
    "default_cache_dir",
    "expand_prompt",
    "template_prompts",
]

logger = logging.getLogger(__name__)

# Remote-sensing templates, most typical first: `template_prompts(p, k)` takes the first k.
TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}",
    "an aerial photo of {}",
    "a remote sensing image showing {}",
    "an overhead view of {}",
    "a high-resolution satellite photo of {}",
    "a bird's-eye view of {}",
    "an aerial image of {}",
    "a top-down satellite view of {}",
    "an orthophoto of {}",
    "a drone photo of {}",
)

# Leading phrases that already say "this is an image of": removed before a template is applied, so
# "a satellite image of a flooded river" does not become "an aerial photo of a satellite image ...".
_PREFIX_RE = re.compile(
    r"^(?:an?\s+|the\s+)?(?:(?:high[- ]resolution|top[- ]down|remote[- ]sensing|overhead|aerial"
    r"|satellite|drone|bird'?s[- ]eye)\s+)*"
    r"(?:image|photo|photograph|picture|view|scene|shot|orthophoto)\s+(?:of|showing)\s+",
    re.IGNORECASE,
)

MAX_PROMPT_CHARS = 1000
MAX_K = 32
DEFAULT_K = 8
LLM_CHOICES = ("none", "openai")

# Sent as the key to a local endpoint (Ollama, vLLM, ...) that needs none: the client wants one.
PLACEHOLDER_KEY = "not-needed"

# Bump when the request, the validation or the cache layout changes: old cache entries then miss.
CACHE_FORMAT = 1
# Validation of one LLM-written prompt (after whitespace normalisation).
MIN_ITEM_CHARS = 3
MAX_ITEM_CHARS = 200
# Answers longer than this are not parsed at all.
MAX_CONTENT_CHARS = 64 * 1024
# Extra wall-clock seconds granted beyond `timeout_s` before the call is abandoned; the HTTP
# client's own timeouts normally fire first, this bounds a server that trickles bytes.
_DEADLINE_GRACE_S = 0.5

_SYSTEM_MESSAGE = (
    "You rewrite short text prompts for CLIP guidance of remote-sensing image editing. "
    "Reply with strict JSON only, no prose and no code fences."
)
_USER_MESSAGE = (
    "Write exactly {k} short, synonymous descriptions of the prompt below as it would appear in a "
    "satellite or aerial image seen from above. Each description: one line, at most 15 words, "
    "in English, the same meaning as the prompt, no numbering. "
    'Answer with exactly this JSON object and nothing else: {{"prompts": ["...", "..."]}}\n'
    "Prompt: {prompt}"
)


# --- templates -----------------------------------------------------------------------------------


def _normalise_ws(text: str) -> str:
    return " ".join(text.split())


def _check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise ParameterError(f"prompt must be a string, got {type(prompt).__name__}")
    text = _normalise_ws(prompt)
    if not text:
        raise ParameterError("prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ParameterError(f"prompt is too long ({len(text)} > {MAX_PROMPT_CHARS} chars)")
    if not text.isprintable():
        raise ParameterError("prompt contains control characters")
    return text


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ParameterError(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return k


def _subject(prompt: str) -> str:
    """The thing the prompt shows: no trailing period, no leading "a satellite image of"."""
    text = _normalise_ws(prompt).rstrip(" .")
    stripped = _PREFIX_RE.sub("", text, count=1).strip()
    text = stripped or text
    # "A fire in the forest" -> "a fire in the forest", but keep "NDVI drop" and "SAR image".
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and (len(first) == 1 or first[1:].islower()):
        text = text[0].lower() + text[1:]
    return text


def _dedup_key(text: str) -> str:
    return _normalise_ws(text).rstrip(" .").casefold()


def template_prompts(prompt: str, k: int = DEFAULT_K) -> tuple[str, ...]:
    """The first `min(k, len(TEMPLATES))` templates filled with the prompt's subject."""
    prompt = _check_prompt(prompt)
    k = _check_k(k)
    subject = _subject(prompt)
    return tuple(template.format(subject) for template in TEMPLATES[:k])


# The LLM's configuration (`LlmConfig`, read from RS_EDIT_LLM_* / OPENAI_*) and the scrubbing of
# secrets (`redact`) live in `backend/llm.py`, shared with the service's health and error messages.


# --- the ensemble --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptEnsemble:
    """Prompts whose CLIP text embeddings are averaged; the user's own prompt comes first."""

    prompts: tuple[str, ...]
    source: str  # "llm", "llm-cache" or "templates"
    note: str  # one human line: which source was used and, on fallback, why


def _assemble(prompt: str, extra: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The user's prompt, then `extra` without duplicates (case- and period-insensitive)."""
    seen = {_dedup_key(prompt)}
    out = [prompt]
    for text in extra:
        key = _dedup_key(text)
        if key not in seen:
            seen.add(key)
            out.append(text)
    return tuple(out)


def _from_templates(prompt: str, k: int, why: str | None) -> PromptEnsemble:
    prompts = _assemble(prompt, template_prompts(prompt, k))
    n = len(TEMPLATES[:k])
    if why:
        note = f"{why}; using the built-in templates ({n} templates)"
    else:
        note = f"using the built-in remote-sensing templates ({n} templates)"
    return PromptEnsemble(prompts=prompts, source="templates", note=note)


class _LlmError(Exception):
    """An endpoint problem, already worded for the note (never contains the key)."""


# A leading list marker the model may add despite being told not to: "1. ", "2) ", "- ", "* ".
_MARKER_RE = re.compile(r"^(?:\d{1,2}[.)]\s+|[-*\u2022]\s+)")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def _clean_item(item: str) -> str | None:
    """One LLM-written prompt, cleaned, or None when it is unusable."""
    if "\n" in item.strip() or "\r" in item.strip():
        return None
    text = _normalise_ws(item)
    text = _MARKER_RE.sub("", text)
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    text = text.rstrip(" .")
    if not MIN_ITEM_CHARS <= len(text) <= MAX_ITEM_CHARS or not text.isprintable():
        return None
    if not any(ch.isalpha() for ch in text):
        return None
    return text


def _extract_json(content: str) -> object:
    """The outermost JSON object in `content`, tolerating code fences and surrounding prose."""
    text = content.strip()
    fence = re.match(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise _LlmError("LLM answer contained no JSON object")
    try:
        return json.loads(text[start : end + 1])
    except (ValueError, RecursionError):
        raise _LlmError("LLM answer was not valid JSON") from None


def _validate(data: object, prompt: str, k: int) -> tuple[str, ...]:
    """Strict schema check, then per-item cleaning; at most `k` prompts, user prompt excluded."""
    if not isinstance(data, dict) or "prompts" not in data:
        raise _LlmError('LLM answer did not have the schema {"prompts": [...]}')
    items = data["prompts"]
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise _LlmError('LLM answer did not have the schema {"prompts": [strings]}')
    seen = {_dedup_key(prompt)}
    kept: list[str] = []
    for item in items:
        text = _clean_item(item)
        if text is None or _dedup_key(text) in seen:
            continue
        seen.add(_dedup_key(text))
        kept.append(text)
        if len(kept) == k:
            break
    if len(kept) < 2:
        raise _LlmError(f"LLM answer had only {len(kept)} usable prompt(s)")
    return tuple(kept)


def _describe_error(exc: BaseException, config: LlmConfig) -> str:
    """A note-ready description of an exception from the openai client; no exception text."""
    if isinstance(exc, ImportError):
        return "the openai Python package is not installed"
    try:
        import openai
    except ImportError:
        return f"LLM request failed ({type(exc).__name__})"
    where = config.display_url
    if isinstance(exc, openai.APITimeoutError):
        return f"LLM endpoint timed out after {config.timeout_s:g} s"
    if isinstance(exc, openai.APIConnectionError):
        return f"could not connect to the LLM endpoint {where}"
    if isinstance(exc, openai.APIStatusError):
        hint = {
            401: " (check RS_EDIT_LLM_API_KEY)",
            403: " (check RS_EDIT_LLM_API_KEY)",
            404: f" (check RS_EDIT_LLM_BASE_URL and the model name {config.model!r})",
            429: " (rate limited or out of quota)",
        }.get(exc.status_code, "")
        return f"LLM endpoint {where} answered HTTP {exc.status_code}{hint}"
    if isinstance(exc, openai.APIResponseValidationError):
        return "LLM endpoint answered with something that is not a chat completion"
    return f"LLM request failed ({type(exc).__name__})"


def _request(config: LlmConfig, prompt: str, k: int) -> str:
    """One chat completion; returns the message content. Raises on any endpoint problem."""
    from openai import OpenAI

    with OpenAI(
        base_url=config.effective_base_url,
        api_key=config.api_key or PLACEHOLDER_KEY,
        timeout=config.timeout_s,
        max_retries=0,
    ) as client:
        completion = client.chat.completions.create(
            model=config.model,
            messages=[
                {"role": "system", "content": _SYSTEM_MESSAGE},
                {"role": "user", "content": _USER_MESSAGE.format(k=k, prompt=json.dumps(prompt))},
            ],
            temperature=0.2,
        )
    choices = getattr(completion, "choices", None)
    if not choices:
        raise _LlmError("LLM answer had no choices")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str) or not content.strip():
        raise _LlmError("LLM answer was empty")
    return content


def _ask_llm(config: LlmConfig, prompt: str, k: int) -> tuple[str, ...]:
    """The validated LLM prompts, within a hard wall-clock deadline; `_LlmError` otherwise."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["content"] = _request(config, prompt, k)
        except BaseException as exc:  # handed to the caller's thread, never re-raised raw
            result["error"] = exc

    worker = threading.Thread(target=work, name="rs-edit-llm", daemon=True)
    worker.start()
    worker.join(config.timeout_s + _DEADLINE_GRACE_S)
    if worker.is_alive():  # abandoned: a daemon thread, bounded by the client's own timeouts
        raise _LlmError(f"LLM endpoint timed out after {config.timeout_s:g} s")
    error = result.get("error")
    if isinstance(error, _LlmError):
        raise error
    if error is not None:
        raise _LlmError(_describe_error(error, config)) from None
    content = str(result["content"])
    if len(content) > MAX_CONTENT_CHARS:
        raise _LlmError(f"LLM answer was too long ({len(content)} chars)")
    return _validate(_extract_json(content), prompt, k)


# --- the cache -----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`cache_root()/prompts`: the same folder the editor uses under its cache."""
    return cache_root() / "prompts"


def _cache_key(config: LlmConfig, prompt: str, k: int) -> str:
    material = json.dumps(
        [CACHE_FORMAT, config.effective_base_url, config.model, prompt, k], ensure_ascii=True
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def _cache_read(path: Path, prompt: str, k: int) -> tuple[str, ...] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return None
    try:
        return _validate({"prompts": data.get("prompts")}, prompt, k)
    except _LlmError:
        return None


def _cache_write(path: Path, entry: dict) -> None:
    """Write atomically: a temporary file in the same folder, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(entry, ensure_ascii=False, indent=1))


# --- entry point ---------------------------------------------------------------------------------


def expand_prompt(
    prompt: str,
    *,
    k: int = DEFAULT_K,
    llm: str = "none",
    config: LlmConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> PromptEnsemble:
    """Expand `prompt` into an ensemble: the prompt itself, then up to `k` synonymous prompts.

    `llm="none"` uses the built-in templates. `llm="openai"` asks the OpenAI-compatible endpoint of
    `config` (default `LlmConfig.from_env()`), using and filling the on-disk cache in `cache_dir`
    (default `default_cache_dir()`); any endpoint problem falls back to the templates with a note.
    Raises `ParameterError` only for bad arguments (prompt, k, llm, configuration).
    """
    prompt = _check_prompt(prompt)
    k = _check_k(k)
    if llm not in LLM_CHOICES:
        raise ParameterError(f"unknown LLM option {llm!r} (known: {', '.join(LLM_CHOICES)})")
    if llm == "openai" and config is None:
        config = LlmConfig.from_env()
    secret = config.api_key if config is not None else None

    def say(line: str) -> None:
        line = redact(line, secret)
        if log is not None:
            log(line)
        else:
            logger.info(line)

    def done(ensemble: PromptEnsemble) -> PromptEnsemble:
        ensemble = PromptEnsemble(
            prompts=ensemble.prompts, source=ensemble.source, note=redact(ensemble.note, secret)
        )
        say(f"prompt ensemble: {ensemble.source}, {len(ensemble.prompts)} prompts: {ensemble.note}")
        return ensemble

    if llm == "none" or config is None:
        return done(_from_templates(prompt, k, None))
    if not config.available:
        return done(
            _from_templates(
                prompt,
                k,
                "no LLM endpoint configured (set RS_EDIT_LLM_API_KEY for OpenAI, or "
                "RS_EDIT_LLM_BASE_URL for a local OpenAI-compatible server)",
            )
        )

    where = f"model {config.model} at {config.display_url}"
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_path = folder / f"{_cache_key(config, prompt, k)}.json"
    cached = _cache_read(cache_path, prompt, k)
    if cached is not None:
        return done(
            PromptEnsemble(
                prompts=_assemble(prompt, cached),
                source="llm-cache",
                note=f"{len(cached)} LLM prompts from the cache ({where})",
            )
        )

    say(f"asking the LLM for {k} prompts ({where}, timeout {config.timeout_s:g} s)")
    started = time.monotonic()
    try:
        extra = _ask_llm(config, prompt, k)
    except _LlmError as failure:
        return done(_from_templates(prompt, k, str(failure)))
    elapsed = time.monotonic() - started
    entry = {
        "format": CACHE_FORMAT,
        "base_url": config.display_url,
        "model": config.model,
        "prompt": prompt,
        "k": k,
        "prompts": list(extra),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        _cache_write(cache_path, entry)
    except OSError as exc:
        say(f"could not write the prompt cache in {folder} ({type(exc).__name__})")
    return done(
        PromptEnsemble(
            prompts=_assemble(prompt, extra),
            source="llm",
            note=f"{len(extra)} LLM prompts from {where} in {elapsed:.1f} s",
        )
    )
