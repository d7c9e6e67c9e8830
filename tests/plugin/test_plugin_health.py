"""The dock's "Check backend" against a real HTTP server on 127.0.0.1 and a closed port."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rs_edit_plugin import settings
from rs_edit_plugin.client import check_health
from rs_edit_plugin.dock import RsEditDock

HEALTH = {
    "status": "ok",
    "version": "x",
    "device": "cpu",
    "clip": {
        "default": "RemoteCLIP-ViT-B-32",
        "weights_available": {"tiny-random": True, "RemoteCLIP-ViT-B-32": False},
    },
    "llm": {"openai": False, "api_key_set": False, "custom_endpoint": False},
    "auth": False,
    "limits": {"max_pixels": 1000000, "max_width": 2000, "max_height": 1500},
}


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


def serve(handler, port=0):
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def ask(handler, port=0):
    """(check_health's answer, port) from a server with this handler, stopped afterwards."""
    server, url = serve(handler, port)
    try:
        return check_health(url), server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


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
    assert dock.findChild(type(dock.status_label), "healthDetailsLabel").text() == ""


def test_health_ok_is_shown(dock, backend):
    dock.url_edit.setText(backend + "/")
    dock.check_button.click()
    text = dock.status_label.text()
    assert text == f"Backend OK at {backend}: version x, device cpu"
    assert settings.backend_url() == backend  # stored, without the trailing slash
    assert dock.url_edit.text() == backend
    details = dock.health_label.text()
    assert details == (
        "device cpu · CLIP RemoteCLIP-ViT-B-32 (weights missing) · LLM none configured"
    )
    assert (dock.health.max_pixels, dock.health.max_width, dock.health.max_height) == (
        1_000_000,
        2000,
        1500,
    )


def test_live_indicator_updates_without_blocking(dock, backend, closed_port_url):
    """The monitor's request is asynchronous: the event loop delivers the answer."""
    from helpers import wait_for

    settings.set_backend_url(backend)
    updates = []
    dock.monitor.updated.connect(updates.append)
    dock.monitor.check()
    assert updates == []  # nothing yet: the GUI was not blocked waiting
    wait_for(lambda: updates, 10, "health answer")
    assert updates[0].ok and dock.status_label.text().startswith("Backend OK")
    assert "CLIP RemoteCLIP-ViT-B-32" in dock.health_label.text()

    settings.set_backend_url(closed_port_url)
    dock.monitor.check()
    wait_for(lambda: len(updates) == 2, 10, "second health answer")
    assert not updates[1].ok and "not reachable" in dock.status_label.text()
    assert dock.health_label.text() == ""


def test_minimal_health_says_what_is_not_reported():
    from rs_edit_plugin.client import parse_health

    health = parse_health("http://h", {"status": "ok", "version": "1", "device": "cuda:0"})
    assert health.ok and health.max_pixels == 0
    assert health.summary == "device cuda:0 · CLIP: not reported · LLM: not reported"
    locked = parse_health("http://h", {"status": "ok", "auth": True, "llm": {"openai": True}})
    assert locked.summary.endswith("LLM openai available · access token required")


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
    health, _ = ask(type("Handler", (FakeBackend,), {"status": status, "body": body}))
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


def test_answers_are_never_served_from_the_network_cache():
    """A new server on a port where another answered before must be asked afresh: QGIS's
    disk cache must not replay the old answer (health, job status, results)."""
    health, port = ask(FakeBackend)
    assert health.ok
    health, _ = ask(type("Handler", (FakeBackend,), {"status": 500, "body": b"{}"}), port)
    assert not health.ok
    assert "answered HTTP 500" in health.message


def with_health(**changes):
    body = dict(HEALTH, **changes)
    return type("Handler", (FakeBackend,), {"body": json.dumps(body).encode()})


def combo_items(combo):
    return [(combo.itemText(i), combo.itemData(i)) for i in range(combo.count())]


def enabled(combo, index):
    return combo.model().item(index).isEnabled()


@pytest.mark.parametrize("default_has_weights", [False, True])
def test_health_preselects_a_clip_with_weights_and_the_servers_presets(dock, default_has_weights):
    """A new user: the CLIP default has no weights on this backend, so the first model with
    weights is chosen and the others are marked; the server's presets, "auto" first, say
    what auto picked on its device."""
    from rs_edit_plugin import choices

    weights = {"tiny-random": True, "RemoteCLIP-ViT-B-32": default_has_weights}
    weights["RemoteCLIP-RN50"] = True
    presets = {"default": "auto", "auto": "fast", "names": ["auto", "fast", "turbo"]}
    clip = {"default": "RemoteCLIP-ViT-B-32", "weights_available": weights}
    server, url = serve(with_health(clip=clip, presets=presets))
    try:
        assert choices.clip_name(dock.clip_combo) == "RemoteCLIP-ViT-B-32"  # before the check
        dock.url_edit.setText(url)
        dock.check_backend()
    finally:
        server.shutdown()
        server.server_close()
    combo = dock.clip_combo
    texts = dict((data, text) for text, data in combo_items(combo))
    if default_has_weights:
        assert choices.clip_name(combo) == "RemoteCLIP-ViT-B-32"
    else:
        assert choices.clip_name(combo) == "RemoteCLIP-RN50"  # the first one with weights
        assert texts["RemoteCLIP-ViT-B-32"] == "RemoteCLIP-ViT-B-32 (no weights)"
        assert not enabled(combo, combo.findData("RemoteCLIP-ViT-B-32"))
    assert texts["RemoteCLIP-RN50"] == "RemoteCLIP-RN50"
    assert enabled(combo, combo.findData("tiny-random"))
    preset = dock.preset_combo
    assert combo_items(preset) == [
        ("auto (fast on this CPU)", "auto"),
        ("fast", "fast"),
        ("turbo", "turbo"),
    ]
    assert choices.preset_name(preset) == "auto"


def test_older_backend_without_presets_keeps_the_plugins_list(dock):
    from rs_edit_plugin import choices

    settings.set_option("preset", "balanced")
    server, url = serve(with_health())  # HEALTH has no "presets"
    try:
        dock.url_edit.setText(url)
        dock.preset_combo.setCurrentIndex(dock.preset_combo.findData("balanced"))
        dock.check_backend()
    finally:
        server.shutdown()
        server.server_close()
    assert [data for _text, data in combo_items(dock.preset_combo)] == list(settings.PRESETS)
    assert choices.preset_name(dock.preset_combo) == "balanced"
    assert choices.clip_name(dock.clip_combo) == "tiny-random"  # the only one with weights


def test_fake_backend_health_has_presets(fake_backend):
    from rs_edit_plugin.client import check_health as check

    health = check(fake_backend.url)
    assert health.presets[0] == "auto" and health.preset_auto == "fast"
    assert health.clip_available("tiny-random") is True


def test_edit_is_disabled_with_a_reason_while_the_backend_is_unreachable(
    dock, backend, closed_port_url
):
    assert dock.run_button.isEnabled()  # not checked yet: nothing known against it
    assert dock.run_reason_label.isHidden()
    dock.url_edit.setText(closed_port_url)
    dock.check_backend()
    assert not dock.run_button.isEnabled()
    reason = dock.run_reason_label.text()
    assert not dock.run_reason_label.isHidden()
    assert reason.startswith("Edit is unavailable: backend not reachable at")
    assert "Is `rs-edit serve` running?" in reason  # whole, not cut
    assert dock.run_button.toolTip() == reason

    dock.url_edit.setText(backend)  # it answers again: Edit comes back
    dock.check_backend()
    assert dock.run_button.isEnabled() and dock.run_reason_label.isHidden()
    assert dock.run_button.toolTip() == ""

    dock.url_edit.setText("ftp://nowhere")  # an invalid URL is no backend either
    dock.check_backend()
    assert not dock.run_button.isEnabled() and "invalid backend URL" in (
        dock.run_reason_label.text()
    )


LONG_ERROR = (
    "“flooded fields” failed: backend not reachable at http://127.0.0.1:8765: Connection "
    "refused. Is `rs-edit serve` running? Start it with `rs-edit serve --host 127.0.0.1`, "
    "or set another URL in the RS Edit panel."
)


def test_long_messages_are_shown_whole():
    """The message bar shows one line: long errors were cut mid-sentence. The bar gets the
    first sentence and the whole text behind its "more" button."""
    from qgis.core import Qgis
    from qgis.gui import QgsMessageBar

    from rs_edit_plugin import messages

    short = messages.short_text(LONG_ERROR)
    assert short == (
        "“flooded fields” failed: backend not reachable at http://127.0.0.1:8765: Connection "
        "refused."
    )
    assert messages.short_text("All good.") == "All good."
    words = messages.short_text("word " * 40)  # no sentence end: whole words and "…"
    assert words.endswith("word…") and len(words) <= messages.SHORT_CHARS

    pushed = []

    class Bar:
        def pushMessage(self, *args):  # noqa: N802
            pushed.append(args)

    messages.push(Bar(), LONG_ERROR, Qgis.MessageLevel.Critical, 0)
    messages.push(Bar(), "All good.", Qgis.MessageLevel.Success, 5)
    assert pushed == [
        ("RS Edit", short, LONG_ERROR, Qgis.MessageLevel.Critical, 0),
        ("RS Edit", "All good.", Qgis.MessageLevel.Success, 5),
    ]
    # QGIS's own bar takes the "more" text (QGIS >= 3.18): the item shows the short text.
    bar = QgsMessageBar()
    messages.push(bar, LONG_ERROR, Qgis.MessageLevel.Critical, 0)
    assert bar.currentItem() is not None and bar.currentItem().text() == short
    bar.deleteLater()


def test_the_dock_pushes_long_messages_whole(qgis_iface):
    from qgis.core import Qgis

    widget = RsEditDock(qgis_iface.mainWindow(), qgis_iface)
    try:
        qgis_iface.messageBar().clear_messages()
        widget._push(LONG_ERROR, Qgis.MessageLevel.Critical)
        (text,) = qgis_iface.messageBar().get_messages(Qgis.MessageLevel.Critical)
        assert text.endswith(f"refused. [more: {LONG_ERROR}]")
    finally:
        widget.cleanup()
        widget.deleteLater()
