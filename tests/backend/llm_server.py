"""A loopback OpenAI-compatible chat-completions server for tests.

`LlmServer` is a context manager running `http.server.ThreadingHTTPServer` on 127.0.0.1 (a free
port) in a background thread; the `llm_server` fixture in test_prompts.py wraps it. Its `mode`
chooses the answer to `POST /v1/chat/completions`:

* "ok": `{"prompts": [...]}` with k good prompts plus a case-changed duplicate and the user's own
  prompt (so the client's deduplication is exercised);
* "fenced": the same JSON wrapped in a ```json code fence;
* "garbage": prose, no JSON;
* "bad-schema": JSON of the wrong shape/types;
* "content": whatever string is in `server.content`;
* "http-NNN" (e.g. "http-500", "http-401"): that HTTP status with an OpenAI-style error body;
* "slow": sleeps `slow_s` seconds (longer than the client's timeout) before answering "ok";
* "trickle": answers "ok" one byte every 0.2 s for up to `slow_s` seconds, so no single read ever
  times out: only a wall-clock deadline on the whole request stops the client.

Every request is recorded in `server.requests` (method, path, headers, parsed JSON body).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

GOOD_PROMPTS = (
    "a satellite view of a burning forest",
    "an aerial photo of wildfire smoke over woodland",
    "flames spreading through a forested area seen from above",
    "a remote sensing image of an active forest fire",
    "an overhead view of a woodland on fire",
    "burnt trees and fire fronts in a forest, aerial view",
    "a high-resolution satellite image of a forest blaze",
    "smoke plumes rising from a burning forest, top-down view",
    "a drone photo of a wildfire in dense forest",
    "an orthophoto of a forest fire with scorched ground",
    "a bird's-eye view of a forest in flames",
    "a top-down image of wildfire burning through trees",
)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: object


@dataclass
class LlmServer:
    mode: str = "ok"
    slow_s: float = 5.0
    content: str = ""
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LlmServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()  # wakes "slow" handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """What an OpenAI client's `base_url` should be."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> int:
        """Number of chat-completion requests received."""
        with self._lock:
            return sum(1 for r in self.requests if r.path.endswith("/chat/completions"))

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def stopping(self, wait_s: float) -> bool:
        """Wait up to `wait_s`; True once the server is shutting down."""
        return self._stop.wait(wait_s)

    # --- answers -----------------------------------------------------------------------------

    def answer_ok(self, body: object) -> dict:
        model, k, prompt = _request_facts(body)
        return _completion(model, json.dumps({"prompts": _good_list(k, prompt)}))

    def answer(self, body: object) -> tuple[int, dict]:
        """(status, JSON object) for one chat-completions request."""
        model, k, prompt = _request_facts(body)
        mode = self.mode
        if mode.startswith("http-"):
            status = int(mode.split("-", 1)[1])
            return status, {
                "error": {
                    "message": f"test server error {status}",
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            }
        if mode == "slow":
            self._stop.wait(self.slow_s)
            mode = "ok"
        if mode == "ok":
            content = json.dumps({"prompts": _good_list(k, prompt)})
        elif mode == "fenced":
            content = (
                "```json\n" + json.dumps({"prompts": _good_list(k, prompt)}, indent=2) + "\n```"
            )
        elif mode == "garbage":
            content = (
                "Sure! Here are some ideas: a burning forest, an aerial view of flames, and "
                "smoke over trees. Let me know if you need more."
            )
        elif mode == "bad-schema":
            content = json.dumps({"prompts": [1, 2, {"text": "a burning forest"}]})
        elif mode == "content":
            content = self.content
        else:
            raise ValueError(f"unknown test server mode {mode!r}")
        return 200, _completion(model, content)


def _request_facts(body: object) -> tuple[str, int, str | None]:
    """The model, k ("exactly N" in the user message) and the quoted prompt, from a request."""
    model, k, prompt = "test-model", 8, None
    if isinstance(body, dict):
        model = str(body.get("model") or model)
        for message in body.get("messages") or []:
            if not isinstance(message, dict) or message.get("role") != "user":
                continue
            text = str(message.get("content") or "")
            if match := re.search(r"exactly (\d+)", text):
                k = int(match.group(1))
            if match := re.search(r'^Prompt: (".*")\s*$', text, re.MULTILINE):
                try:
                    prompt = json.loads(match.group(1))
                except ValueError:
                    prompt = None
    return model, k, prompt


def _good_list(k: int, prompt: str | None) -> list[str]:
    """k distinct good prompts, with a duplicate (other case) and the user's prompt mixed in."""
    good = [GOOD_PROMPTS[i % len(GOOD_PROMPTS)] for i in range(min(k, len(GOOD_PROMPTS)))]
    items = list(good)
    if good:
        items.insert(1, good[0].upper())  # duplicate, different case
    if prompt:
        items.insert(2, prompt)  # the user's own prompt, to be dropped
    return items


def _completion(model: str, content: str) -> dict:
    return {
        "id": "chatcmpl-test-0001",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 50,
            "completion_tokens": max(1, len(content) // 4),
            "total_tokens": 50 + max(1, len(content) // 4),
        },
    }


def _make_handler(server: LlmServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet in tests
            pass

        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout): nothing to do
                pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body: object = json.loads(raw or b"null")
            except ValueError:
                body = None
            server.record(
                Request("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found", "type": "invalid_request"}})
                return
            if server.mode == "trickle":
                self._trickle(server.answer_ok(body))
                return
            status, payload = server.answer(body)
            self._send(status, payload)

        def _trickle(self, payload: dict) -> None:
            data = json.dumps(payload).encode("utf-8")
            deadline = time.monotonic() + server.slow_s
            try:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                for i in range(len(data)):
                    if server.stopping(0.2) or time.monotonic() > deadline:
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            except OSError:
                pass

        def do_GET(self) -> None:
            server.record(
                Request("GET", self.path, {k.lower(): v for k, v in self.headers.items()}, None)
            )
            self._send(404, {"error": {"message": "not found", "type": "invalid_request"}})

    return Handler


# Everything in the environment that could point a test at a real LLM, key, token or proxy.
LLM_ENV_NAMES = (
    "RS_EDIT_LLM_BASE_URL",
    "RS_EDIT_LLM_MODEL",
    "RS_EDIT_LLM_API_KEY",
    "RS_EDIT_LLM_TIMEOUT",
    "RS_EDIT_LLM_URL",
    "RS_EDIT_TOKEN",
    "RS_EDIT_CACHE_DIR",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def clean_llm_env(monkeypatch, tmp_path) -> None:
    """No developer key, endpoint, token, cache or proxy from the environment reaches a test."""
    for name in LLM_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
