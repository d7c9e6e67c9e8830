"""The outermost ASGI layer: who may send a request (Host, Origin, access token), how large its
body may be, and the headers every answer carries.

Pure ASGI (no per-request overhead of BaseHTTPMiddleware; streaming responses untouched). In
this order:
- **Host** (`host_policy`, `check_host`): bound to a loopback address, the `Host` header must be
  a loopback name (`localhost`, `127.0.0.1`, `[::1]`, ...), the bound name or one of
  `allowed_hosts`; a web page that points its own DNS name at 127.0.0.1 (DNS rebinding) sends
  its own name and gets 421. Bound to another address (which needs a token), the header is
  checked only when `allowed_hosts` names some (then loopback names and the bound address pass
  too). The port is not compared: a tunnel (`ssh -L 9000:127.0.0.1:8765`) changes it, and a
  page cannot choose the Host its browser sends. An entry `NAME:PORT` also fixes the port,
  `*.example.org` allows the subdomains, `*` any name.
- **Origin** (`check_origin`): browsers add `Origin` to cross-origin requests and to POSTs and
  DELETEs; a request carrying one must come from this server's own origin (its Swagger page) or
  one of `allowed_origins`, else 403, so no web page can submit or cancel jobs (CSRF). Clients
  that send no `Origin` (curl, Python, the QGIS plugin) are not affected. No CORS headers are
  sent.
- **Token**: with a token configured, every request must carry `Authorization: Bearer <token>`
  (compared in constant time); otherwise 401.
- **Body**: a request body may not exceed `max_body` bytes: a larger Content-Length is refused
  at once (413), and a body streamed without one is cut off when it passes the limit (413), so
  an upload never fills the disk.
- **Answers**: every one has `X-Content-Type-Options: nosniff`; those of the API (`/v1/...`:
  job data, results, health) `Cache-Control: no-store`.

Refusals are `errors`' exceptions, answered by its one map (`response_for`).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ParameterError
from .errors import (
    BadHostError,
    BadRequestError,
    ForbiddenOriginError,
    PayloadTooLargeError,
    ServiceError,
    UnauthorizedError,
    response_for,
)

WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]"})  # noqa: S104 - names, not a bind
_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]{0,252})")
_DEFAULT_PORTS = {"http": 80, "https": 443}
API_PREFIX = "/v1/"


class BodyTooLargeError(Exception):
    pass


# --- Host --------------------------------------------------------------------------------------


def split_host(value: str) -> tuple[str, int | None]:
    """`Example.org:8080` -> ("example.org", 8080), `[::1]` -> ("::1", None); a bare IPv6
    address is read whole. ValueError when it is not a host name or address."""
    text = value.strip().lower()
    port_text = None
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(value)
        name = str(ipaddress.IPv6Address(name))
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        name = str(ipaddress.IPv6Address(text))
    else:
        name, colon, port_text = text.partition(":")
        port_text = port_text if colon else None
        name = name[:-1] if name.endswith(".") else name  # "localhost." is localhost
        if not _NAME.fullmatch(name):
            raise ValueError(value)
    port = None
    if port_text is not None:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise ValueError(value)
        if not 0 < int(port_text) < 65536:
            raise ValueError(value)
        port = int(port_text)
    return name, port


def is_loopback(name: str) -> bool:
    """localhost (and its subdomains, which browsers resolve to loopback themselves) or a
    loopback address."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """Which `Host` headers a server answers; `check` False: any."""

    check: bool
    loopback: bool = False  # loopback names pass
    names: frozenset[tuple[str, int | None]] = frozenset()  # (name, port or None: any port)
    suffixes: tuple[str, ...] = ()  # from "*.example.org": ".example.org"

    def allows(self, name: str, port: int | None) -> bool:
        if not self.check or (self.loopback and is_loopback(name)):
            return True
        if (name, None) in self.names or (name, port) in self.names:
            return True
        return any(name.endswith(suffix) for suffix in self.suffixes)

    def describe(self) -> str:
        if not self.check:
            return "any Host"
        parts = ["localhost and loopback addresses"] if self.loopback else []
        for name, port in sorted(self.names, key=lambda n: (n[0], n[1] or 0)):
            shown = f"[{name}]" if ":" in name else name
            parts.append(f"{shown}:{port}" if port else shown)
        parts += [f"*{suffix}" for suffix in self.suffixes]
        return ", ".join(parts)


def parse_allowed_hosts(entries: Iterable[str]) -> tuple[frozenset, tuple[str, ...], bool]:
    """(names, suffixes, any) of `--allowed-host` entries; ParameterError for a bad one."""
    names, suffixes, anything = set(), [], False
    for entry in entries:
        text = str(entry).strip().lower()
        if text == "*":
            anything = True
            continue
        try:
            if text.startswith("*."):
                suffixes.append("." + split_host(text[2:])[0])
            else:
                names.add(split_host(text))
        except ValueError:
            raise ParameterError(
                f"allowed host {str(entry)[:100]!r} is not a host name or address "
                "(e.g. gpu-box, gpu-box.lan:8765, 10.0.0.5, *.example.org)"
            ) from None
    return frozenset(names), tuple(suffixes), anything


def host_policy(bind_host: str, allowed_hosts: Iterable[str] = ()) -> HostPolicy:
    """The Host names a server bound to `bind_host` answers (see the module's docstring)."""
    names, suffixes, anything = parse_allowed_hosts(allowed_hosts)
    if anything:
        return HostPolicy(check=False)
    bind = bind_host.strip().lower()
    try:
        bound = None if bind in WILDCARD_BINDS else split_host(bind)[0]
    except ValueError:
        bound = None
    if bound is not None and is_loopback(bound):
        return HostPolicy(True, True, names, suffixes)
    if not names and not suffixes:
        return HostPolicy(check=False)
    if bound is not None:
        names = names | {(bound, None)}
    return HostPolicy(True, True, names, suffixes)


def check_host(policy: HostPolicy, values: list[str]) -> None:
    """Raise `BadHostError` unless the request's one `Host` header passes `policy`."""
    if not policy.check:
        return
    if len(values) != 1:
        raise BadHostError(
            "the request has no Host header"
            if not values
            else "the request has several Host headers"
        )
    value = values[0]
    try:
        name, port = split_host(value)
    except ValueError:
        raise BadHostError(f"malformed Host header {value[:100]!r}") from None
    if not policy.allows(name, port):
        raise BadHostError(
            f"Host {value[:100]!r} is not a name of this server (it answers to "
            f"{policy.describe()}; others are refused against DNS rebinding): to reach it by "
            f"this name, start rs-edit serve with --allowed-host {name[:100]}"
        )


# --- Origin ------------------------------------------------------------------------------------


def normalize_origin(text: str) -> str:
    """`HTTP://Example.org:80/` -> "http://example.org"; ValueError when it is not an http(s)
    origin (the `null` origin of sandboxed pages and files included)."""
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or "@" in parts.netloc:
        raise ValueError(text)
    if parts.query or parts.fragment:
        raise ValueError(text)
    name, port = split_host(parts.netloc)
    shown = f"[{name}]" if ":" in name else name
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{shown}"
    return f"{scheme}://{shown}:{port}"


def parse_allowed_origins(entries: Iterable[str]) -> frozenset[str]:
    origins = set()
    for entry in entries:
        try:
            origins.add(normalize_origin(str(entry)))
        except ValueError:
            raise ParameterError(
                f"allowed origin {str(entry)[:100]!r} is not an origin "
                "(scheme://host[:port], e.g. https://maps.example.org)"
            ) from None
    return frozenset(origins)


def check_origin(
    values: list[str], *, scheme: str, host: str | None, allowed: frozenset[str] = frozenset()
) -> None:
    """Raise `ForbiddenOriginError` when the request carries an `Origin` that is neither the
    server's own (`scheme://host`, the Host the request was sent to) nor allowed."""
    if not values:
        return
    own = None
    if host:
        with contextlib.suppress(ValueError):
            own = normalize_origin(f"{scheme}://{host}")
    for value in values:
        try:
            origin = normalize_origin(value)
        except ValueError:
            origin = None
        if origin is None or (origin != own and origin not in allowed):
            raise ForbiddenOriginError(
                f"requests from web pages of other origins are refused (Origin {value[:100]!r}, "
                f"this server is {own or 'unknown'}); to accept that origin start rs-edit "
                "serve with --allowed-origin"
            )


# --- the middleware ----------------------------------------------------------------------------


class Guard:
    """`bind_host`: the address the server listens on; None (an app served by someone else, a
    test client): judged per request from the address the connection arrived on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: str | None,
        max_body: int,
        bind_host: str | None = None,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
    ):
        self.app = app
        self.token = token.encode() if token else None
        self.max_body = max_body
        self.allowed_hosts = tuple(allowed_hosts)
        self.allowed_origins = parse_allowed_origins(allowed_origins)
        self.policy = None if bind_host is None else host_policy(bind_host, self.allowed_hosts)
        self._policies: dict[str, HostPolicy] = {}

    def policy_for(self, scope: Scope) -> HostPolicy:
        if self.policy is not None:
            return self.policy
        local = str((scope.get("server") or ("",))[0] or "")
        if local not in self._policies:
            if len(self._policies) > 64:  # a few local addresses at most; never grow unbounded
                self._policies.clear()
            self._policies[local] = host_policy(local, self.allowed_hosts)
        return self._policies[local]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send, api=scope.get("path", "").startswith(API_PREFIX))
        headers: dict[bytes, list[str]] = {}
        for name, value in scope.get("headers") or ():
            headers.setdefault(name.lower(), []).append(value.decode("latin-1"))
        try:
            self._check(scope, headers)
        except ServiceError as exc:
            await response_for(exc)(scope, receive, send)
            return
        await self._limited(scope, receive, send)

    def _check(self, scope: Scope, headers: dict[bytes, list[str]]) -> None:
        hosts = headers.get(b"host", [])
        check_host(self.policy_for(scope), hosts)
        check_origin(
            headers.get(b"origin", []),
            scheme=scope.get("scheme", "http"),
            host=hosts[0] if len(hosts) == 1 else None,
            allowed=self.allowed_origins,
        )
        if self.token is not None and not self._authorized(headers.get(b"authorization", [""])):
            raise UnauthorizedError(
                "missing or wrong access token (send 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = max(int(value) for value in declared)
            except ValueError:
                raise BadRequestError("invalid Content-Length header") from None
            if size > self.max_body:
                raise PayloadTooLargeError(self._too_large())

    def _authorized(self, values: list[str]) -> bool:
        if len(values) != 1:
            return False
        scheme, _, value = values[0].encode("latin-1").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token)

    def _too_large(self) -> str:
        return f"request body is larger than this server's limit of {self.max_body:,} bytes"

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"received": 0, "too_large": False, "started": False, "answered": False}

        async def refuse() -> None:
            state["answered"] = True
            await response_for(PayloadTooLargeError(self._too_large()))(scope, receive, send)

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
                    await refuse()
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
            await refuse()


def _with_headers(send: Send, *, api: bool) -> Send:
    """`send` adding `X-Content-Type-Options: nosniff` to every answer and, for the API's,
    `Cache-Control: no-store` (in place of the route's own)."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            drop = (
                (b"x-content-type-options", b"cache-control")
                if api
                else (b"x-content-type-options",)
            )
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in drop]
            headers.append((b"x-content-type-options", b"nosniff"))
            if api:
                headers.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers}
        await send(message)

    return wrapped
