"""Prompt Ensembling: templates, the OpenAI-compatible LLM path against a loopback server,
the cache, and that the API key never leaks."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from llm_server import GOOD_PROMPTS, LlmServer, clean_llm_env

from rs_edit.errors import ParameterError
from rs_edit.guidance.prompts import (
    DEFAULT_MODEL,
    TEMPLATES,
    LlmConfig,
    PromptEnsemble,
    default_cache_dir,
    expand_prompt,
    template_prompts,
)

SECRET = "sk-test-SECRET-0123456789abcdef"
PROMPT = "A fire in the forest"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    clean_llm_env(monkeypatch, tmp_path)


@pytest.fixture
def llm_server():
    with LlmServer() as server:
        yield server


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


class Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def config_for(server: LlmServer, **kw) -> LlmConfig:
    return LlmConfig(
        base_url=server.base_url,
        model=kw.pop("model", "rs-test-model"),
        api_key=kw.pop("api_key", SECRET),
        timeout_s=kw.pop("timeout_s", 5),
    )


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        assert SECRET not in str(text)


def assert_template_fallback(ens: PromptEnsemble, *reason_words: str) -> None:
    assert ens.source == "templates"
    assert ens.prompts[0] == PROMPT
    assert ens.prompts[1:] == template_prompts(PROMPT, 8)
    assert "using the built-in templates" in ens.note
    for word in reason_words:
        assert word in ens.note, ens.note
    assert "\n" not in ens.note


# --- templates -----------------------------------------------------------------------------------


def test_templates_are_remote_sensing_and_distinct():
    assert 8 <= len(TEMPLATES) <= 12
    assert len(set(TEMPLATES)) == len(TEMPLATES)
    assert all(t.count("{}") == 1 for t in TEMPLATES)
    assert TEMPLATES[0] == "a satellite image of {}"


def test_template_prompts_strip_period_and_existing_prefix():
    assert template_prompts("A fire in the forest.", 3) == (
        "a satellite image of a fire in the forest",
        "an aerial photo of a fire in the forest",
        "a remote sensing image showing a fire in the forest",
    )
    # A prompt that already says "a satellite image of" is not wrapped twice.
    out = template_prompts("A satellite image of a flooded river", 2)
    assert out == ("a satellite image of a flooded river", "an aerial photo of a flooded river")
    assert template_prompts("an aerial photo of ship on fire", 1) == (
        "a satellite image of ship on fire",
    )
    # Acronyms keep their case; k beyond the ensemble gives all templates.
    assert template_prompts("SAR backscatter over a flood", 1)[0].endswith(
        "of SAR backscatter over a flood"
    )
    assert len(template_prompts("x y", 32)) == len(TEMPLATES)


@pytest.mark.parametrize("bad", ["", "   ", None, 3, "a\x00b", "x" * 1001])
def test_bad_prompt_raises_parameter_error(bad):
    with pytest.raises(ParameterError):
        expand_prompt(bad)


@pytest.mark.parametrize("k", [0, -1, 33, 2.5, True])
def test_bad_k_raises_parameter_error(k):
    with pytest.raises(ParameterError):
        expand_prompt(PROMPT, k=k)


def test_unknown_llm_option_raises():
    with pytest.raises(ParameterError, match="unknown LLM option"):
        expand_prompt(PROMPT, llm="claude")


def test_none_uses_templates_user_prompt_first():
    log = Lines()
    ens = expand_prompt("  The river   is flooding. ", k=4, log=log)
    assert ens.source == "templates"
    assert ens.prompts[0] == "The river is flooding."
    assert ens.prompts[1:] == (
        "a satellite image of the river is flooding",
        "an aerial photo of the river is flooding",
        "a remote sensing image showing the river is flooding",
        "an overhead view of the river is flooding",
    )
    assert "template" in ens.note
    assert len(log) == 1 and "templates" in log[0]


def test_template_ensemble_dedups_the_users_own_prompt():
    ens = expand_prompt("a satellite image of a collapsed bridge", k=3)
    assert ens.prompts == (
        "a satellite image of a collapsed bridge",
        "an aerial photo of a collapsed bridge",
        "a remote sensing image showing a collapsed bridge",
    )


# --- configuration -------------------------------------------------------------------------------


def test_from_env_defaults():
    cfg = LlmConfig.from_env({})
    assert cfg == LlmConfig(base_url=None, model=DEFAULT_MODEL, api_key=None, timeout_s=20.0)
    assert not cfg.available
    assert cfg.effective_base_url == "https://api.openai.com/v1"


def test_from_env_precedence(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-env/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-env")
    cfg = LlmConfig.from_env()
    assert (cfg.base_url, cfg.api_key) == ("http://openai-env/v1", "sk-openai-env")
    monkeypatch.setenv("RS_EDIT_LLM_BASE_URL", "http://rs-edit-env:11434/v1")
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", SECRET)
    monkeypatch.setenv("RS_EDIT_LLM_MODEL", "llama3.1:8b")
    monkeypatch.setenv("RS_EDIT_LLM_TIMEOUT", "7.5")
    cfg = LlmConfig.from_env()
    assert cfg.base_url == "http://rs-edit-env:11434/v1"
    assert cfg.api_key == SECRET
    assert cfg.model == "llama3.1:8b"
    assert cfg.timeout_s == 7.5
    # An empty RS_EDIT_ variable counts as unset.
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", "")
    assert LlmConfig.from_env().api_key == "sk-openai-env"


def test_available():
    assert LlmConfig(api_key="k").available
    assert LlmConfig(base_url="http://localhost:11434/v1").available
    assert not LlmConfig().available
    assert not LlmConfig(base_url="  ", api_key="").available


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1e9"])
def test_bad_timeout_raises(monkeypatch, value):
    monkeypatch.setenv("RS_EDIT_LLM_TIMEOUT", value)
    with pytest.raises(ParameterError, match="(?i)timeout"):
        LlmConfig.from_env()


def test_repr_and_str_never_show_the_key():
    cfg = LlmConfig(base_url="http://h/v1", model="m", api_key=SECRET)
    assert_no_secret(repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}")
    assert "http://h/v1" in repr(cfg)


def test_not_available_falls_back_with_a_hint(cache):
    ens = expand_prompt(PROMPT, llm="openai", cache_dir=cache)
    assert_template_fallback(ens, "RS_EDIT_LLM_API_KEY", "RS_EDIT_LLM_BASE_URL")
    assert not cache.exists()


def test_default_cache_dir(monkeypatch, tmp_path):
    assert default_cache_dir() == tmp_path / "xdg" / "rs-edit" / "prompts"
    monkeypatch.setenv("RS_EDIT_CACHE_DIR", str(tmp_path / "root"))
    assert default_cache_dir() == tmp_path / "root" / "prompts"


# --- the LLM path --------------------------------------------------------------------------------


def test_llm_ok(llm_server, cache):
    log = Lines()
    ens = expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache, log=log
    )
    assert ens.source == "llm", ens.note
    assert ens.prompts[0] == PROMPT
    # The duplicate (upper case) and the echoed user prompt are gone; k respected.
    assert ens.prompts[1:] == GOOD_PROMPTS[:8]
    assert len({p.casefold() for p in ens.prompts}) == len(ens.prompts)
    assert "rs-test-model" in ens.note and llm_server.base_url in ens.note
    # The request: right path, model, bearer key, JSON-asking messages, one call.
    assert llm_server.calls == 1
    request = llm_server.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body["model"] == "rs-test-model"
    assert request.body["temperature"] <= 0.3
    roles = [m["role"] for m in request.body["messages"]]
    assert roles == ["system", "user"]
    user = request.body["messages"][1]["content"]
    assert "exactly 8" in user and '"prompts"' in user and json.dumps(PROMPT) in user
    assert any("llm" in line for line in log)
    assert_no_secret(ens, ens.note, *log)


@pytest.mark.parametrize("k", [2, 5])
def test_llm_respects_k(llm_server, cache, k):
    ens = expand_prompt(PROMPT, k=k, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert ens.source == "llm"
    assert ens.prompts == (PROMPT, *GOOD_PROMPTS[:k])
    assert f"exactly {k}" in llm_server.requests[0].body["messages"][1]["content"]


def test_llm_keeps_at_most_k_even_if_the_model_sends_more(llm_server, cache):
    llm_server.mode = "content"
    llm_server.content = json.dumps({"prompts": list(GOOD_PROMPTS)})
    ens = expand_prompt(PROMPT, k=3, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert ens.prompts == (PROMPT, *GOOD_PROMPTS[:3])


def test_llm_fenced_ok(llm_server, cache):
    llm_server.mode = "fenced"
    ens = expand_prompt(PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert ens.source == "llm", ens.note
    assert ens.prompts[1:] == GOOD_PROMPTS[:8]


def test_llm_prose_around_json_is_tolerated(llm_server, cache):
    llm_server.mode = "content"
    llm_server.content = (
        'Here you go:\n{"prompts": ["a burning forest seen from orbit", '
        '"an aerial photo of a forest fire"]}\nHope this helps!'
    )
    ens = expand_prompt(PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert ens.prompts == (
        PROMPT,
        "a burning forest seen from orbit",
        "an aerial photo of a forest fire",
    )


def test_llm_items_are_validated(llm_server, cache):
    llm_server.mode = "content"
    llm_server.content = json.dumps(
        {
            "prompts": [
                "ok",  # too short
                "x" * 201,  # too long
                "two\nlines here",  # multi-line
                "bell \x07 inside",  # not printable
                "  an   aerial   view of a forest fire.  ",  # normalised and kept
                "1. a satellite image of flames in woodland",  # list marker removed
                "AN AERIAL VIEW OF A FOREST FIRE",  # duplicate (case-insensitive)
                "a fire in the forest.",  # the user's prompt again
                "12345 !!!",  # no words
            ]
        }
    )
    ens = expand_prompt(PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert ens.source == "llm", ens.note
    assert ens.prompts == (
        PROMPT,
        "an aerial view of a forest fire",
        "a satellite image of flames in woodland",
    )


def test_too_few_valid_prompts_falls_back(llm_server, cache):
    llm_server.mode = "content"
    llm_server.content = json.dumps({"prompts": ["a fire in the forest", "a forest on fire", "x"]})
    ens = expand_prompt(PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache)
    assert_template_fallback(ens, "only 1 usable prompt")
    assert not list(cache.glob("*.json"))


@pytest.mark.parametrize(
    ("mode", "content", "reason"),
    [
        ("garbage", "", "no JSON object"),
        ("bad-schema", "", "schema"),
        ("content", '{"prompts": "a burning forest, smoke"}', "schema"),
        ("content", '{"results": ["a burning forest", "smoke over trees"]}', "schema"),
        ("content", '["a burning forest", "smoke over trees"]', "no JSON object"),
        ("content", '{"prompts": ["a burning forest", ]}', "not valid JSON"),
        ("content", "", "empty"),
        ("http-500", "", "HTTP 500"),
        ("http-401", "", "HTTP 401"),
        ("http-404", "", "HTTP 404"),
    ],
)
def test_bad_answers_fall_back_to_templates(llm_server, cache, mode, content, reason):
    llm_server.mode = mode
    llm_server.content = content
    log = Lines()
    ens = expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server), cache_dir=cache, log=log
    )
    assert_template_fallback(ens, reason)
    assert llm_server.calls == 1  # no retries
    assert not list(cache.glob("*.json"))  # failures are not cached
    assert_no_secret(ens, *log)


def test_slow_endpoint_times_out(llm_server, cache):
    llm_server.mode = "slow"
    llm_server.slow_s = 5
    started = time.monotonic()
    ens = expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server, timeout_s=1), cache_dir=cache
    )
    elapsed = time.monotonic() - started
    assert_template_fallback(ens, "timed out after 1 s")
    assert 0.9 <= elapsed < 2.5
    assert not list(cache.glob("*.json"))


def test_trickling_endpoint_stops_at_the_wall_clock_deadline(llm_server, cache):
    llm_server.mode = "trickle"
    llm_server.slow_s = 10
    started = time.monotonic()
    ens = expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server, timeout_s=1), cache_dir=cache
    )
    elapsed = time.monotonic() - started
    assert_template_fallback(ens, "timed out after 1 s")
    assert elapsed < 2.5
    assert not list(cache.glob("*.json"))


def test_connection_refused_falls_back(cache):
    port = closed_port()
    cfg = LlmConfig(base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, timeout_s=2)
    started = time.monotonic()
    ens = expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache)
    assert time.monotonic() - started < 2.5
    assert_template_fallback(ens, "could not connect", f"127.0.0.1:{port}")
    assert_no_secret(ens)


def test_base_url_without_key_works(llm_server, cache):
    cfg = LlmConfig(base_url=llm_server.base_url, model="llama3.1:8b", timeout_s=5)
    assert cfg.available and cfg.api_key is None
    ens = expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache)
    assert ens.source == "llm", ens.note
    assert llm_server.requests[0].headers["authorization"] == "Bearer not-needed"
    assert llm_server.requests[0].body["model"] == "llama3.1:8b"


def test_config_from_env_by_default(llm_server, cache, monkeypatch):
    monkeypatch.setenv("RS_EDIT_LLM_BASE_URL", llm_server.base_url)
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", SECRET)
    monkeypatch.setenv("RS_EDIT_LLM_MODEL", "env-model")
    ens = expand_prompt(PROMPT, llm="openai", cache_dir=cache)
    assert ens.source == "llm", ens.note
    assert llm_server.requests[0].body["model"] == "env-model"
    assert llm_server.requests[0].headers["authorization"] == f"Bearer {SECRET}"


def test_url_credentials_are_not_shown(llm_server, cache):
    url = llm_server.base_url.replace("http://", "http://user:pw-in-url@")
    cfg = LlmConfig(base_url=url, api_key=SECRET, timeout_s=5)
    assert "pw-in-url" not in cfg.display_url
    log = Lines()
    ens = expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache, log=log)
    assert ens.source == "llm", ens.note
    for text in (ens.note, *log, *(p.read_text() for p in cache.glob("*.json"))):
        assert "pw-in-url" not in text


# --- the cache -----------------------------------------------------------------------------------


def test_cache_hit_does_not_call_again(llm_server, cache):
    cfg = config_for(llm_server)
    first = expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache)
    assert first.source == "llm" and llm_server.calls == 1
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and len(files[0].stem) == 64
    assert not list(cache.glob(".*"))  # atomic write left no temporary file
    log = Lines()
    second = expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache, log=log)
    assert second.source == "llm-cache"
    assert second.prompts == first.prompts
    assert "cache" in second.note and any("llm-cache" in line for line in log)
    assert llm_server.calls == 1
    # Even a dead endpoint is not contacted on a hit.
    llm_server.mode = "http-500"
    assert expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache).source == "llm-cache"
    assert llm_server.calls == 1


def test_cache_key_depends_on_model_prompt_and_k(llm_server, cache):
    cfg = config_for(llm_server)
    expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache)
    expand_prompt(PROMPT, k=4, llm="openai", config=cfg, cache_dir=cache)
    expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server, model="other"), cache_dir=cache
    )
    expand_prompt("ship on fire", llm="openai", config=cfg, cache_dir=cache)
    assert llm_server.calls == 4
    assert len(list(cache.glob("*.json"))) == 4
    # The key does not depend on the API key or the timeout.
    other = config_for(llm_server, api_key="sk-another-key", timeout_s=9)
    assert expand_prompt(PROMPT, llm="openai", config=other, cache_dir=cache).source == "llm-cache"


def test_failure_is_not_cached_then_success_is(llm_server, cache):
    cfg = config_for(llm_server)
    llm_server.mode = "http-500"
    assert expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache).source == "templates"
    assert not list(cache.glob("*.json"))
    llm_server.mode = "ok"
    assert expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache).source == "llm"
    assert llm_server.calls == 2


def test_corrupt_cache_entry_is_a_miss(llm_server, cache):
    cfg = config_for(llm_server)
    expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache)
    (path,) = cache.glob("*.json")
    path.write_text("{not json")
    assert expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache).source == "llm"
    assert llm_server.calls == 2
    json.loads(path.read_text())  # rewritten


def test_unwritable_cache_still_returns_llm_prompts(llm_server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    log = Lines()
    ens = expand_prompt(
        PROMPT, llm="openai", config=config_for(llm_server), cache_dir=blocker / "sub", log=log
    )
    assert ens.source == "llm"
    assert any("could not write the prompt cache" in line for line in log)


def test_key_never_in_cache_files_notes_or_logs(llm_server, cache):
    cfg = config_for(llm_server)
    log = Lines()
    results = [expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache, log=log)]
    results.append(expand_prompt(PROMPT, llm="openai", config=cfg, cache_dir=cache, log=log))
    llm_server.mode = "http-401"
    results.append(
        expand_prompt("ship on fire", llm="openai", config=cfg, cache_dir=cache, log=log)
    )
    assert [r.source for r in results] == ["llm", "llm-cache", "templates"]
    files = [p.read_text() for p in cache.rglob("*") if p.is_file()]
    assert files
    entry = json.loads(files[0])
    assert entry["model"] == "rs-test-model" and entry["prompt"] == PROMPT
    assert_no_secret(*files, *log, *results, *(r.note for r in results), repr(cfg))
