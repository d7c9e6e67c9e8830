"""HTTP calls to the rs-edit backend.

Requests go through QgsNetworkAccessManager so that the user's QGIS proxy, SSL and
authentication settings apply (urllib would silently bypass them).
"""

import json
from dataclasses import dataclass

from qgis.core import QgsNetworkAccessManager
from qgis.PyQt.QtCore import QUrl
from qgis.PyQt.QtNetwork import QNetworkReply, QNetworkRequest

HEALTH_PATH = "/v1/health"
HEALTH_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Health:
    """Outcome of a health check; `message` is ready to show to the user."""

    ok: bool
    message: str
    version: str = ""
    device: str = ""


def check_health(base_url: str, timeout_ms: int = HEALTH_TIMEOUT_MS) -> Health:
    """GET {base_url}/v1/health and summarise the answer (never raises for network errors).

    A blocking call is fine here: it is one tiny request with a short timeout.
    """
    base_url = base_url.strip().rstrip("/")
    url = QUrl(base_url + HEALTH_PATH)
    if not url.isValid() or url.scheme() not in ("http", "https") or not url.host():
        return Health(
            False, f"invalid backend URL {base_url!r} (expected e.g. http://127.0.0.1:8765)"
        )

    request = QNetworkRequest(url)
    request.setRawHeader(b"Accept", b"application/json")
    # Per-request timeout, as the global QGIS network timeout is 60 s by default. Qt < 5.15
    # (e.g. QGIS 3.22 on Ubuntu 20.04) lacks it and falls back to that global timeout.
    if hasattr(request, "setTransferTimeout"):
        request.setTransferTimeout(timeout_ms)
    reply = QgsNetworkAccessManager.instance().blockingGet(request, forceRefresh=True)

    status = reply.attribute(QNetworkRequest.Attribute.HttpStatusCodeAttribute)
    if status is None:  # no HTTP answer at all: refused, unknown host, timeout, TLS failure
        reason = reply.errorString() or "no answer"
        if reply.error() == QNetworkReply.NetworkError.OperationCanceledError:
            reason = f"no answer within {timeout_ms / 1000:g} s"
        return Health(
            False, f"backend not reachable at {base_url}: {reason}. Is `rs-edit serve` running?"
        )
    if status != 200:
        return Health(False, f"backend at {base_url} answered HTTP {status} to {HEALTH_PATH}")

    try:
        body = json.loads(bytes(reply.content()).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if not isinstance(body, dict) or body.get("status") != "ok":
        return Health(
            False, f"{base_url} answered, but not like an rs-edit backend (bad health JSON)"
        )

    version, device = str(body.get("version", "?")), str(body.get("device", "?"))
    return Health(
        True, f"Backend OK at {base_url}: version {version}, device {device}", version, device
    )
