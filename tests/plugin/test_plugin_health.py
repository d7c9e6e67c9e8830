"""The dock's "Check backend" against a real HTTP server on 127.0.0.1 and a closed port."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rs_edit_plugin import settings
from rs_edit_plugin.client import check_health
from rs_edit_plugin.dock import RsEditDock

HEALTH = {"status": "ok", "version": "x", "device": "cpu"}


class FakeBackend(BaseHTTPRequestHandler):
    """Answers GET /v1/health like `rs-edit serve`; `body` is set per server."""

    body = json.dumps(HEALTH).encode()
    status = 200

    def do_GET(self):
        if self.path != "/v1/health":
            self.send_error(404)
            return
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):  # keep the test output clean
        pass


def serve(handler):
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def backend():
    server, url = serve(FakeBackend)
    yield url
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port_url():
    """A port that was free a moment ago and has nothing listening now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def dock(qgis_iface):
    widget = RsEditDock(qgis_iface.mainWindow())
    yield widget
    widget.deleteLater()


def test_dock_defaults_to_local_backend(dock):
    assert dock.url_edit.text() == "http://127.0.0.1:8765"
    assert dock.check_button.text() == "Check backend"
    assert "later version" in dock.findChild(type(dock.status_label), "laterVersionNote").text()


def test_health_ok_is_shown(dock, backend):
    dock.url_edit.setText(backend + "/")
    dock.check_button.click()
    text = dock.status_label.text()
    assert text == f"Backend OK at {backend}: version x, device cpu"
    assert settings.backend_url() == backend  # stored, without the trailing slash
    assert dock.url_edit.text() == backend


def test_closed_port_says_not_reachable(dock, closed_port_url):
    dock.url_edit.setText(closed_port_url)
    health = dock.check_backend()
    assert not health.ok
    assert dock.status_label.text().startswith(f"backend not reachable at {closed_port_url}: ")
    assert "refused" in dock.status_label.text().lower()


def test_silent_server_times_out_quickly():
    """A peer that accepts the connection but never answers must not hang QGIS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)  # the kernel completes the handshake; nobody ever replies
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        health = check_health(url, timeout_ms=300)
    assert not health.ok
    assert health.message.startswith(f"backend not reachable at {url}: no answer within 0.3 s")


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, b"{}", "answered HTTP 500"),
        (200, b"<html>hello</html>", "not like an rs-edit backend"),
        (200, b'{"status": "starting"}', "not like an rs-edit backend"),
    ],
)
def test_wrong_answers_are_reported(status, body, expected):
    handler = type("Handler", (FakeBackend,), {"status": status, "body": body})
    server, url = serve(handler)
    try:
        health = check_health(url)
    finally:
        server.shutdown()
        server.server_close()
    assert not health.ok
    assert expected in health.message


@pytest.mark.parametrize("url", ["127.0.0.1:8765", "ftp://127.0.0.1:8765", "http://"])
def test_invalid_urls_are_rejected_without_a_request(url):
    health = check_health(url)
    assert not health.ok and health.message.startswith("invalid backend URL")


def test_empty_url_falls_back_to_default(dock):
    settings.set_backend_url("http://example.invalid:1")
    dock.url_edit.setText("   ")
    assert dock.save_url() == settings.DEFAULT_BACKEND_URL
    assert dock.url_edit.text() == settings.DEFAULT_BACKEND_URL
