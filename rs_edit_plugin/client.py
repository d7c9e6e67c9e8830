"""HTTP calls to the rs-edit backend (its job API: docs/openapi.json, `/docs` on a server).

Requests go through QgsNetworkAccessManager so that the user's QGIS proxy, SSL and network
settings apply (urllib would silently bypass them). QGIS's network timeout is global (60 s by
default), so a long edit is never one request: jobs are submitted, polled and downloaded.
Calls block: they are meant for a QgsTask's worker thread (QgsNetworkAccessManager keeps one
instance per thread) or, for the tiny health check, for a short moment on the main thread.
"""

import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsFeedback, QgsNetworkAccessManager
from qgis.PyQt.QtCore import QEventLoop, QObject, QTimer, QUrl, pyqtSignal, pyqtSlot
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

_HAS_TRANSFER_TIMEOUT = hasattr(QNetworkRequest, "setTransferTimeout")
HEALTH_PATH = "/v1/health"
JOBS_PATH = "/v1/jobs"
HEALTH_TIMEOUT_MS = 3000
REQUEST_TIMEOUT_MS = 50_000  # below QGIS's global 60 s, which also applies
FINAL_STATES = ("succeeded", "failed", "cancelled")


class BackendError(Exception):
    """A request failed; str(error) is the message to show (the backend's own when it sent
    one). `status` is the HTTP status (None without an HTTP answer), `code` the backend's."""

    def __init__(self, message: str, status: int | None = None, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code


class CancelledError(Exception):
    """The request was aborted because the feedback was cancelled."""


@dataclass(frozen=True)
class Health:
    """Outcome of a health check; `message` is ready to show to the user."""

    ok: bool
    message: str
    version: str = ""
    device: str = ""
    clip: str = ""  # CLIP weights: the default model and whether its weights are present
    llm: str = ""  # the prompt-rewriting LLM, if any
    max_pixels: int = 0  # the backend's limits when it reports them (0: unknown)
    max_width: int = 0
    max_height: int = 0
    auth: bool = False  # the backend wants an access token
    clip_default: str = ""  # the backend's default CLIP model
    clip_weights: tuple = ()  # ((name, weights present), ...) as the backend reports them
    presets: tuple = ()  # the backend's preset names ("auto" first); () from older backends
    preset_auto: str = ""  # the preset "auto" picks on the backend's device
    # ((preset, (seconds_fixed, seconds_per_megapixel, source)), ...): how long an edit takes
    # there for an area's size; a preset absent or None: unknown
    estimates: tuple = ()

    def clip_available(self, name: str) -> bool | None:
        """Whether the backend has weights for CLIP `name` (None: not reported)."""
        return dict(self.clip_weights).get(name)

    def estimate_seconds(self, preset: str, width: int, height: int) -> float | None:
        """Seconds an edit of a `width` x `height` px area takes with `preset` on this backend
        (None: the backend gives no figure for it)."""
        figures = dict(self.estimates)
        entry = figures.get(preset)
        if entry is None and preset == "auto" and self.preset_auto:
            entry = figures.get(self.preset_auto)
        if entry is None:
            return None
        fixed, per_megapixel, _source = entry
        return fixed + per_megapixel * max(0, width) * max(0, height) / 1e6

    def estimate_source(self, preset: str) -> str:
        """ "history" (this backend's own jobs) or "built-in" (reference figures); "" unknown."""
        figures = dict(self.estimates)
        entry = figures.get(preset) or figures.get(self.preset_auto if preset == "auto" else "")
        return entry[2] if entry else ""

    @property
    def summary(self) -> str:
        """One line: device, CLIP weights, LLM."""
        parts = [f"device {self.device or '?'}"]
        parts.append(f"CLIP {self.clip}" if self.clip else "CLIP: not reported")
        parts.append(f"LLM {self.llm}" if self.llm else "LLM: not reported")
        if self.auth:
            parts.append("access token required")
        return " · ".join(parts)


def validate_base_url(base_url: str) -> str:
    """The URL without trailing slash; raises BackendError for anything but http(s)://host."""
    base_url = (base_url or "").strip().rstrip("/")
    url = QUrl(base_url)
    if not url.isValid() or url.scheme() not in ("http", "https") or not url.host():
        raise BackendError(
            f"invalid backend URL {base_url!r} (expected e.g. http://127.0.0.1:8765)"
        )
    return base_url


def _describe_clip(value) -> str:
    """ "RemoteCLIP-ViT-B-32 (weights found)" from the backend's clip status."""
    if not isinstance(value, dict):
        return str(value or "")
    name = str(value.get("default") or value.get("name") or "?")
    available = value.get("weights_available")
    if isinstance(available, dict) and name in available:
        return f"{name} ({'weights found' if available[name] else 'weights missing'})"
    if isinstance(value.get("weights"), bool):
        return f"{name} ({'weights found' if value['weights'] else 'weights missing'})"
    return name


def _describe_llm(value) -> str:
    """ "openai available" / "none configured" from the backend's LLM status."""
    if isinstance(value, dict):
        ready = [name for name, on in value.items() if on is True and name == "openai"]
        return f"{ready[0]} available" if ready else "none configured"
    if isinstance(value, bool):
        return "available" if value else "none configured"
    return str(value or "")


def _int(value) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _clip_weights(value) -> tuple[str, tuple]:
    """(default, ((name, available), ...)) from the backend's clip status."""
    if not isinstance(value, dict):
        return "", ()
    available = value.get("weights_available")
    weights = ()
    if isinstance(available, dict):
        weights = tuple((str(k), v is True) for k, v in available.items())
    return str(value.get("default") or ""), weights


def _presets(value) -> tuple[tuple, str]:
    """(names, what auto picks) from the backend's presets status; ((), "") when absent."""
    if not isinstance(value, dict) or not isinstance(value.get("names"), list):
        return (), ""
    names = tuple(str(n) for n in value["names"] if isinstance(n, str) and n.strip())
    return names, str(value.get("auto") or "")


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if value >= 0 else None


def _estimates(value) -> tuple:
    """((preset, (fixed s, s per megapixel, source)), ...) from the backend's `estimates`;
    entries that are null or malformed are left out (unknown)."""
    if not isinstance(value, dict):
        return ()
    found = []
    for name, entry in value.items():
        if not isinstance(entry, dict):
            continue
        fixed = _number(entry.get("seconds_fixed"))
        rate = _number(entry.get("seconds_per_megapixel"))
        if fixed is not None and rate is not None:
            found.append((str(name), (fixed, rate, str(entry.get("source") or ""))))
    return tuple(found)


def parse_health(base_url: str, body) -> Health:
    if not isinstance(body, dict) or body.get("status") != "ok":
        return Health(
            False, f"{base_url} answered, but not like an rs-edit backend (bad health JSON)"
        )
    version, device = str(body.get("version", "?")), str(body.get("device", "?"))
    limits = body.get("limits") if isinstance(body.get("limits"), dict) else {}
    clip_default, clip_weights = _clip_weights(body.get("clip"))
    presets, preset_auto = _presets(body.get("presets"))
    return Health(
        True,
        f"Backend OK at {base_url}: version {version}, device {device}",
        version,
        device,
        _describe_clip(body.get("clip")),
        _describe_llm(body.get("llm")),
        _int(limits.get("max_pixels")),
        _int(limits.get("max_width")),
        _int(limits.get("max_height")),
        bool(body.get("auth")),
        clip_default,
        clip_weights,
        presets,
        preset_auto,
        _estimates(body.get("estimates")),
    )


def check_health(
    base_url: str, timeout_ms: int = HEALTH_TIMEOUT_MS, token: str | None = None
) -> Health:
    """GET {base_url}/v1/health and summarise the answer (never raises)."""
    try:
        base_url = validate_base_url(base_url)
    except BackendError as exc:
        return Health(False, str(exc))
    client = BackendClient(base_url, token=token, timeout_ms=timeout_ms)
    try:
        status, content = client._send("GET", HEALTH_PATH)
    except BackendError as exc:
        return Health(False, str(exc))
    except CancelledError:
        return Health(False, "health check cancelled")
    if status != 200:
        return Health(False, f"backend at {base_url} answered HTTP {status} to {HEALTH_PATH}")
    try:
        body = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    return parse_health(base_url, body)


def error_message(status: int, content: bytes) -> tuple[str, str]:
    """(message, code) from an error answer: the contract's {"error": {...}} when present."""
    try:
        body = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"]), str(error.get("code", ""))
        if isinstance(body.get("detail"), str):  # FastAPI's own errors
            return body["detail"], ""
    text = content.decode("utf-8", "replace").strip()
    if text and len(text) < 300 and "<" not in text:
        return f"HTTP {status}: {text}", ""
    return f"HTTP {status}", ""


def multipart_body(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request. `files` maps a field name to
    (filename, bytes, content type)."""
    boundary = "rs-edit-" + secrets.token_hex(16)
    parts = []
    for name, value in fields.items():
        if value is None:
            continue
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + str(value).encode("utf-8")
            + b"\r\n"
        )
    for name, (filename, data, content_type) in files.items():
        header = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        parts.append(header.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _content(reply) -> bytes:
    """What a finished reply received (nothing from an aborted one, which is closed)."""
    return bytes(reply.readAll()) if reply.isOpen() else b""


class _Transfer(QObject):
    """Watches one reply from the reply's thread: when bytes last moved, and whether the
    request's body has been sent completely."""

    def __init__(self):
        super().__init__()
        self.moved = time.monotonic()
        self.body_sent = False

    @pyqtSlot("qint64", "qint64")
    def uploaded(self, sent, total):
        self.moved = time.monotonic()
        if total > 0 and sent >= total:
            self.body_sent = True

    @pyqtSlot("qint64", "qint64")
    def downloaded(self, _received, _total):
        self.moved = time.monotonic()


class BackendClient:
    """Blocking job-API calls; `feedback` (a QgsFeedback) aborts a running request when
    cancelled, which then raises CancelledError (except a submission whose upload is complete:
    see `_send`)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        feedback: QgsFeedback | None = None,
        timeout_ms: int = REQUEST_TIMEOUT_MS,
    ):
        self.base_url = validate_base_url(base_url)
        self._token = token or ""
        self.feedback = feedback
        self.timeout_ms = timeout_ms

    def __repr__(self) -> str:  # never show the token
        return f"BackendClient({self.base_url!r})"

    # --- transport ------------------------------------------------------------------------

    def _request(self, path: str, accept: str = "application/json") -> QNetworkRequest:
        request = QNetworkRequest(QUrl(self.base_url + path))
        request.setRawHeader(b"Accept", accept.encode())
        # Live state (health, job status): never from a cache (see `_send`).
        request.setAttribute(
            QNetworkRequest.Attribute.CacheLoadControlAttribute,
            QNetworkRequest.CacheLoadControl.AlwaysNetwork,
        )
        request.setAttribute(QNetworkRequest.Attribute.CacheSaveControlAttribute, False)
        if self._token:
            request.setRawHeader(b"Authorization", b"Bearer " + self._token.encode())
        # Per-request inactivity timeout where Qt has it (5.15); QGIS's global one applies too.
        if _HAS_TRANSFER_TIMEOUT:
            request.setTransferTimeout(self.timeout_ms)
        return request

    def _check_cancel(self):
        if self.feedback is not None and self.feedback.isCanceled():
            raise CancelledError("cancelled")

    def _send(self, method: str, path: str, data: bytes = b"", content_type: str = "", **kw):
        """Send one request and return (status, content bytes); raise for no HTTP answer.

        A cancel aborts the request and raises CancelledError, with one exception: a POST
        whose body has been sent completely is waited for (the backend may have made the job
        already; its answer names the job, so that the caller can cancel it) and returned."""
        self._check_cancel()
        request = self._request(path, **kw)
        if content_type:
            request.setHeader(QNetworkRequest.KnownHeaders.ContentTypeHeader, content_type)
        nam = QgsNetworkAccessManager.instance()
        if nam.cache() is not None:
            # Every answer is live state: Qt could serve an old cached body for a later error
            # answer at the same URL (an earlier server on the same port), so no entry may be
            # there when we ask.
            nam.cache().remove(request.url())
        status, error, error_string, content = self._exchange(method, request, data)
        if status is None:
            self._check_cancel()
            reason = error_string or "no answer"
            if error == QNetworkReply.NetworkError.OperationCanceledError:
                reason = f"no answer within {self.timeout_ms / 1000:g} s"
            raise BackendError(
                f"backend not reachable at {self.base_url}: {reason}. Is `rs-edit serve` running?"
            )
        if method != "POST":
            self._check_cancel()
        return int(status), content

    def _exchange(self, method: str, request: QNetworkRequest, data: bytes):
        """One request in a local event loop on the calling thread: (status, error, error
        string, content).

        Not QgsNetworkAccessManager's blockingGet/blockingPost with the feedback: QGIS
        connects the feedback's `canceled` to the request twice, queued across threads, and a
        cancel landing between the two connections deletes the reply without finishing it;
        that blocking call then waits forever (no timeout timer left), holding its pool
        thread. Here the loop wakes every 50 ms and looks at the feedback (a flag) itself, and
        aborts the reply on the reply's own thread. Without bytes moving for `timeout_ms` the
        request is aborted too (an inactivity limit: big uploads and downloads may take
        longer). No Python callable holding the reply is connected to it: PyQt would keep its
        wrapper alive past the reply, and a later reply at the same address could get that
        dead wrapper."""
        nam = QgsNetworkAccessManager.instance()
        if method == "GET":
            reply = nam.get(request)
        elif method == "POST":
            reply = nam.post(request, data)
        else:
            reply = nam.sendCustomRequest(request, method.encode(), data or None)
        transfer = _Transfer()
        reply.uploadProgress.connect(transfer.uploaded)
        reply.downloadProgress.connect(transfer.downloaded)
        loop = QEventLoop()
        reply.finished.connect(loop.quit)
        tick = QTimer()
        tick.timeout.connect(loop.quit)
        tick.start(50)
        try:
            while not reply.isFinished():
                loop.exec_()
                if reply.isFinished():
                    break
                cancelled = self.feedback is not None and self.feedback.isCanceled()
                committed = method == "POST" and transfer.body_sent
                idle = time.monotonic() - transfer.moved > self.timeout_ms / 1000
                if (cancelled and not committed) or idle:
                    reply.abort()  # finishes the reply (OperationCanceledError)
        finally:
            tick.stop()
            for signal, slot in (
                (reply.uploadProgress, transfer.uploaded),
                (reply.downloadProgress, transfer.downloaded),
            ):
                with contextlib.suppress(TypeError):
                    signal.disconnect(slot)
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        answer = (status, reply.error(), reply.errorString(), _content(reply))
        reply.deleteLater()
        return answer

    def _checked(self, method: str, path: str, what: str, **kw) -> bytes:
        status, content = self._send(method, path, **kw)
        if status >= 400:
            message, code = error_message(status, content)
            raise BackendError(f"{what} failed: {message}", status, code)
        return content

    def get_json(self, path: str, what: str = "request") -> dict:
        content = self._checked("GET", path, what)
        try:
            body = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        if not isinstance(body, dict):
            raise BackendError(f"{what}: the backend's answer is not JSON", 200, "bad_answer")
        return body

    # --- the job API ----------------------------------------------------------------------

    def health(self) -> Health:
        return parse_health(self.base_url, self.get_json(HEALTH_PATH, "health check"))

    def submit(self, image_path, fields: dict, mask_path=None, reference_path=None) -> dict:
        """POST /v1/jobs with the tile (and mask, and the example image as `reference`; its
        `reference_roi` and `reference_weight` are form fields in `fields`); returns the job
        JSON (with its id)."""
        files = {}
        for name, path in (
            ("image", image_path),
            ("mask", mask_path),
            ("reference", reference_path),
        ):
            if path is not None:
                files[name] = (Path(path).name, Path(path).read_bytes(), "image/tiff")
        body, content_type = multipart_body(fields, files)
        status, content = self._send("POST", JOBS_PATH, body, content_type)
        if status >= 400:
            message, code = error_message(status, content)
            raise BackendError(message, status, code)
        try:
            job = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            job = None
        if not isinstance(job, dict) or not job.get("id"):
            raise BackendError(f"the backend did not return a job id (HTTP {status})", status)
        return job

    def status(self, job_id: str) -> dict:
        return self.get_json(f"{JOBS_PATH}/{job_id}", "job status")

    def result_paths(self, job: dict, variants: int) -> list[str]:
        """URL paths of the results: the status's `results` list when the backend gives one,
        else /result (variant 1) and /result?variant=i for further variants."""
        listed = job.get("results")
        if isinstance(listed, list) and listed:
            return [
                u[len(self.base_url) :] if str(u).startswith(self.base_url) else str(u)
                for u in listed
            ]
        base = f"{JOBS_PATH}/{job['id']}/result"
        return [base] + [f"{base}?variant={i}" for i in range(2, max(1, variants) + 1)]

    def download(self, path: str, destination) -> Path:
        """GET a result into `destination` (written aside, then renamed)."""
        content = self._checked("GET", path, "downloading the result", accept="image/tiff")
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        part = destination.with_name(destination.name + ".part")
        part.write_bytes(content)
        part.replace(destination)
        return destination

    def purge(self, job_id: str) -> dict:
        """DELETE /v1/jobs/{id}?purge=true: the backend removes an ended job with its files.
        Raises BackendError (409 job_active: it is still queued or running)."""
        content = self._checked("DELETE", purge_path(job_id), "deleting the job on the backend")
        try:
            body = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            body = None
        return body if isinstance(body, dict) else {}

    def cancel(self, job_id: str) -> None:
        """DELETE /v1/jobs/{id}; the job may already be finished (not an error)."""
        status, content = self._send("DELETE", f"{JOBS_PATH}/{job_id}")
        if status >= 400 and status not in (404, 409):
            message, code = error_message(status, content)
            raise BackendError(f"cancelling the job failed: {message}", status, code)


def purge_path(job_id: str) -> str:
    """The URL path that deletes an ended job and its files on the backend."""
    return f"{JOBS_PATH}/{job_id}?purge=true"


def send_async(base_url: str, token: str, path: str, method: str, timeout_ms: int):
    """An asynchronous request (GET, DELETE, ...) to the backend, aborted after `timeout_ms`;
    connect its `finished` to a decorated slot (see BackendClient._exchange)."""
    client = BackendClient(base_url, token, timeout_ms=timeout_ms)
    request = client._request(path)
    nam = QgsNetworkAccessManager.instance()
    if nam.cache() is not None:  # live state: never a cached answer (see BackendClient._send)
        nam.cache().remove(request.url())
    get = method == "GET"
    reply = nam.get(request) if get else nam.sendCustomRequest(request, method.encode())
    guard = QTimer(reply)
    guard.setSingleShot(True)
    guard.timeout.connect(reply.abort)
    guard.start(timeout_ms)
    return reply


def reply_json(reply):
    """(HTTP status or None, the answer's JSON or None, reason) of a finished reply, which
    is then deleted later."""
    status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
    content = _content(reply)
    reason = reply.errorString() or "no answer"
    reply.deleteLater()
    if status is None:
        return None, None, reason
    if int(status) >= 400:
        return int(status), None, error_message(int(status), content)[0]
    try:
        return int(status), json.loads(content.decode("utf-8")), ""
    except (UnicodeDecodeError, ValueError):
        return int(status), None, "the backend's answer is not JSON"


class HealthMonitor(QObject):
    """A live health indicator for the dock: checks the backend every `interval_ms` without
    blocking the GUI (asynchronous request); emits `updated(Health)`."""

    updated = pyqtSignal(object)

    def __init__(self, url_getter, token_getter=lambda: "", interval_ms=15000, parent=None):
        super().__init__(parent)
        self._url_getter = url_getter
        self._token_getter = token_getter
        self._reply = None
        self._base_url = ""
        self.last = None
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.check)

    def start(self):
        self.check()
        self.timer.start()

    def stop(self):
        self.timer.stop()
        if self._reply is not None:
            self._reply.abort()

    def check(self):
        if self._reply is not None:  # one request at a time
            return
        try:
            base_url = validate_base_url(self._url_getter())
        except BackendError as exc:
            self._emit(Health(False, str(exc)))
            return
        client = BackendClient(base_url, self._token_getter(), timeout_ms=HEALTH_TIMEOUT_MS)
        request = client._request(HEALTH_PATH)
        reply = QgsNetworkAccessManager.instance().get(request)
        self._reply, self._base_url = reply, base_url
        timer = QTimer(reply)
        timer.setSingleShot(True)
        timer.timeout.connect(reply.abort)
        timer.start(HEALTH_TIMEOUT_MS)
        # A decorated slot, not a lambda holding the reply (see BackendClient._exchange).
        reply.finished.connect(self._finished)

    @pyqtSlot()
    def _finished(self):
        reply, base_url = self._reply, self._base_url
        if reply is None:
            return
        self._reply = None
        status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
        content = bytes(reply.readAll())
        if status is None:
            reason = reply.errorString() or "no answer"
            if reply.error() == QNetworkReply.NetworkError.OperationCanceledError:
                reason = f"no answer within {HEALTH_TIMEOUT_MS / 1000:g} s"
            health = Health(
                False,
                f"backend not reachable at {base_url}: {reason}. Is `rs-edit serve` running?",
            )
        elif status != 200:
            health = Health(False, f"backend at {base_url} answered HTTP {status} to {HEALTH_PATH}")
        else:
            try:
                body = json.loads(content.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                body = None
            health = parse_health(base_url, body)
        reply.deleteLater()
        self._emit(health)

    def _emit(self, health):
        self.last = health
        self.updated.emit(health)
