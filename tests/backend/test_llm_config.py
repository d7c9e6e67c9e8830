"""One source for the LLM configuration (`rs_edit.llm`): `/v1/health` reads the variables Prompt
Ensembling reads, and every secret rs-edit knows (both LLM API key variables, the access token) is
removed by the one `redact` the service and Prompt Ensembling share."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from llm_server import LlmServer, clean_llm_env

from rs_edit import llm
from rs_edit.guidance.prompts import expand_prompt, template_prompts
from rs_edit.llm import REDACTED, LlmConfig, known_secrets, redact, register_secret
from rs_edit.service import errors
from rs_edit.service.app import create_app
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(120)

LLM_KEY = "sk-rs-edit-LLM-KEY-0123456789abcdef"
OPENAI_KEY = "sk-openai-KEY-fedcba9876543210"
TOKEN = "server-TOKEN-0123456789-abcdef"
PROMPT = "A fire in the forest"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    clean_llm_env(monkeypatch, tmp_path)


@pytest.fixture
def client(tmp_path: Path):
    """The real app in-process (lifespan on), with the stand-in editor."""
    app = create_app(tmp_path / "data", edit_fn=standin(1))
    with TestClient(app) as c:
        yield c


def health_llm(client: TestClient) -> tuple[dict, str]:
    r = client.get("/v1/health")
    assert r.status_code == 200, r.text
    return r.json()["llm"], r.text


# --- health --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "key_set", "custom"),
    [
        ({"RS_EDIT_LLM_BASE_URL": "http://127.0.0.1:11434/v1"}, False, True),
        ({"RS_EDIT_LLM_API_KEY": LLM_KEY}, True, False),
        ({"OPENAI_API_KEY": OPENAI_KEY}, True, False),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}, False, True),
        (
            {"RS_EDIT_LLM_BASE_URL": "http://127.0.0.1:11434/v1", "RS_EDIT_LLM_API_KEY": LLM_KEY},
            True,
            True,
        ),
    ],
    ids=["rs-edit-base-url", "rs-edit-key", "openai-key", "openai-base-url", "rs-edit-both"],
)
def test_health_reports_the_llm_prompts_would_use(client, monkeypatch, env, key_set, custom):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, text = health_llm(client)
    config = LlmConfig.from_env()
    assert config.available  # what Prompt Ensembling sees ...
    assert status["openai"] is True  # ... is what health says
    assert status["api_key_set"] is key_set and status["custom_endpoint"] is custom
    assert status["endpoint"] == config.display_url and status["model"] == config.model
    assert LLM_KEY not in text and OPENAI_KEY not in text


def test_health_without_llm(client, monkeypatch):
    status, _ = health_llm(client)
    assert status["openai"] is False and not LlmConfig.from_env().available
    assert status["endpoint"] is None
    # The old name health used to read configures nothing: Prompt Ensembling never read it.
    monkeypatch.setenv("RS_EDIT_LLM_URL", "http://127.0.0.1:11434/v1")
    assert health_llm(client)[0]["openai"] is False


def test_health_never_shows_a_key_even_in_the_url(client, monkeypatch):
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", LLM_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv(
        "RS_EDIT_LLM_BASE_URL",
        f"http://user:{LLM_KEY}@llm.internal:8000/{OPENAI_KEY}/v1?api_key={LLM_KEY}",
    )
    status, text = health_llm(client)
    assert status["openai"] is True
    assert status["endpoint"] == f"http://llm.internal:8000/{REDACTED}/v1"
    assert LLM_KEY not in text and OPENAI_KEY not in text


def test_health_reports_a_bad_setting_instead_of_claiming_an_llm(client, monkeypatch):
    # Prompt Ensembling refuses this configuration (ParameterError): health must not say "yes".
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("RS_EDIT_LLM_TIMEOUT", "soon")
    status, text = health_llm(client)
    assert status["openai"] is False
    assert "RS_EDIT_LLM_TIMEOUT" in status["error"]
    assert OPENAI_KEY not in text


# --- redaction -----------------------------------------------------------------------------------


def set_all_secrets(monkeypatch) -> None:
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", LLM_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("RS_EDIT_TOKEN", TOKEN)


def test_redact_removes_every_known_secret(monkeypatch):
    set_all_secrets(monkeypatch)
    assert set(known_secrets()) >= {LLM_KEY, OPENAI_KEY, TOKEN}
    message = f"failed: key={LLM_KEY} fallback={OPENAI_KEY} auth=Bearer {TOKEN}."
    for scrub in (errors.redact, redact):
        out = scrub(message)
        assert LLM_KEY not in out and OPENAI_KEY not in out and TOKEN not in out
        assert out == f"failed: key={REDACTED} fallback={REDACTED} auth=Bearer {REDACTED}."
    assert errors.redact is llm.redact  # one mechanism, not two


@pytest.mark.parametrize("name", ["RS_EDIT_LLM_API_KEY", "OPENAI_API_KEY", "RS_EDIT_TOKEN"])
def test_redact_json_with_any_one_secret(monkeypatch, name):
    monkeypatch.setenv(name, f"  {LLM_KEY}\n")  # surrounding whitespace is not part of the key
    body = {"message": f"key {LLM_KEY}", "log": [f"line {LLM_KEY}"], "n": 3}
    assert errors.redact_json(body) == {
        "message": f"key {REDACTED}",
        "log": [f"line {REDACTED}"],
        "n": 3,
    }


def test_redact_secrets_inside_secrets_and_registered_tokens(monkeypatch):
    # A secret that contains another is removed whole, not leaving its other characters behind.
    monkeypatch.setenv("RS_EDIT_TOKEN", "abcd1234")
    monkeypatch.setenv("RS_EDIT_LLM_API_KEY", "sk-abcd1234-tail")
    assert errors.redact("k=sk-abcd1234-tail") == f"k={REDACTED}"
    # The token given as --token (create_app registers ServiceConfig.token), not in the env.
    registered = "registered-TOKEN-0123456789abc"
    register_secret(registered)
    assert registered in known_secrets()
    assert errors.redact(f"t {registered}") == f"t {REDACTED}"
    # Too short to be a secret: left alone (replacing "ab" everywhere would garble every text).
    monkeypatch.setenv("OPENAI_API_KEY", "ab")
    assert "ab" not in known_secrets() and errors.redact("abc") == "abc"


def test_error_responses_drop_the_llm_key(client, monkeypatch):
    set_all_secrets(monkeypatch)
    r = client.get(f"/v1/no-such-route/{LLM_KEY}/{OPENAI_KEY}")
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert message == f"no such endpoint: GET /v1/no-such-route/{REDACTED}/{REDACTED}"


# --- Prompt Ensembling's notes -------------------------------------------------------------------


@pytest.fixture
def llm_server():
    with LlmServer() as server:
        yield server


def test_prompt_notes_drop_every_known_secret(llm_server, monkeypatch, tmp_path):
    """A note names the endpoint; if its URL holds a secret (the key in use, the other key
    variable, the server token), the note and the log lines say "[redacted]" instead. An answer
    that echoes the key does not bring it into the note either."""
    set_all_secrets(monkeypatch)
    monkeypatch.setenv(
        "RS_EDIT_LLM_BASE_URL", f"{llm_server.base_url}/{LLM_KEY}/{OPENAI_KEY}/{TOKEN}"
    )
    log: list[str] = []
    ens = expand_prompt(PROMPT, llm="openai", cache_dir=tmp_path / "cache", log=log.append)
    assert ens.source == "templates" and "HTTP 404" in ens.note, ens.note
    assert ens.prompts[1:] == template_prompts(PROMPT, 8)
    assert f"/{REDACTED}/{REDACTED}/{REDACTED}" in ens.note
    texts = [ens.note, *log]

    monkeypatch.setenv("RS_EDIT_LLM_BASE_URL", llm_server.base_url)
    llm_server.mode = "content"
    llm_server.content = f"error: invalid api key {LLM_KEY} (Bearer {LLM_KEY}), try {OPENAI_KEY}"
    echo = expand_prompt(PROMPT, llm="openai", cache_dir=tmp_path / "cache", log=log.append)
    assert llm_server.requests[-1].headers["authorization"] == f"Bearer {LLM_KEY}"
    assert echo.source == "templates", echo.note
    texts += [echo.note, *log, repr(echo)]
    for text in texts:
        assert LLM_KEY not in text and OPENAI_KEY not in text and TOKEN not in text
