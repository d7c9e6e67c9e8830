"""The outermost ASGI layer: the access token and the request-body size limit.

Pure ASGI (no per-request overhead of BaseHTTPMiddleware; streaming responses untouched).
- With a token configured, every request must carry `Authorization: Bearer <token>`
  (compared in constant time); otherwise 401.
- A request body may not exceed `max_body` bytes: a larger Content-Length is refused at once
  (413), and a body streamed without one is cut off when it passes the limit (413), so an
  upload never fills the disk.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLargeError(Exception):
    pass


class Guard:
    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is not None and not self._authorized(headers.get(b"authorization", b"")):
            await _send_error(
                send,
                401,
                "unauthorized",
                "missing or wrong access token (send 'Authorization: Bearer <token>')",
                extra=[(b"www-authenticate", b"Bearer")],
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, "bad_request", "invalid Content-Length header")
                return
            if size > self.max_body:
                await _send_error(send, 413, "too_large", self._too_large())
                return
        await self._limited(scope, receive, send)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)

    def _too_large(self) -> str:
        return f"request body is larger than this server's limit of {self.max_body:,} bytes"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"received": 0, "too_large": False, "started": False, "answered": False}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    state["too_large"] = True
                    raise BodyTooLargeError(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            if state["too_large"]:
                # Whatever the app answers to the aborted body, the client gets the 413.
                if not state["answered"] and not state["started"]:
                    state["answered"] = True
                    await _send_error(send, 413, "too_large", self._too_large())
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLargeError:
            pass
        except Exception:
            if not state["too_large"]:
                raise
        if state["too_large"] and not state["answered"] and not state["started"]:
            state["answered"] = True
            await _send_error(send, 413, "too_large", self._too_large())


async def _send_error(send: Send, status: int, code: str, message: str, extra=()) -> None:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
