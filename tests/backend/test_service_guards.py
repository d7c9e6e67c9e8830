"""The server's outer guards (issue 17): the Host check against DNS rebinding, the Origin check
against cross-site requests, the `roi` size answer, the access token's sources and checks, and
the headers of every answer. The plain functions directly, then the real server (uvicorn on
127.0.0.1, stand-in editor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_helpers import ThreadServer, rgb_tile, roi_polygon, submit, wait

from rs_edit.cli import EXIT_BAD_INPUT, main
from rs_edit.errors import ParameterError
from rs_edit.service import app as app_module
from rs_edit.service.config import (
    ALLOWED_HOSTS_ENV,
    Limits,
    ServiceConfig,
    check_token,
    names_from,
    resolve_token,
)
from rs_edit.service.errors import BadHostError, ForbiddenOriginError
from rs_edit.service.guard import (
    check_host,
    check_origin,
    host_policy,
    normalize_origin,
    split_host,
)
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(120)

TOKEN = "guard-test-token-0123456789"
ROI = json.dumps(roi_polygon(10, 10, 20, 20))


@pytest.fixture(scope="module")
def tile(tmp_path_factory) -> Path:
    return rgb_tile(tmp_path_factory.mktemp("guards") / "tile.tif")


def allowed(policy, host: str) -> bool:
    try:
        check_host(policy, [host])
    except BadHostError:
        return False
    return True


# --- Host: the plain functions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8765", ("127.0.0.1", 8765)),
        ("LocalHost", ("localhost", None)),
        ("localhost.:80", ("localhost", 80)),
        ("[::1]:8765", ("::1", 8765)),
        ("[0:0:0:0:0:0:0:1]", ("::1", None)),
        ("::1", ("::1", None)),
        ("gpu-box.lan:443", ("gpu-box.lan", 443)),
    ],
)
def test_split_host(value, expected):
    assert split_host(value) == expected


@pytest.mark.parametrize(
    "value", ["", ":80", "evil.example:", "a b", "host:99999", "host:8o", "[::1", "[xyz]:1", "a/b"]
)
def test_split_host_refuses_malformed(value):
    with pytest.raises(ValueError):
        split_host(value)


def test_loopback_bind_answers_loopback_names_only():
    policy = host_policy("127.0.0.1")
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "127.0.0.2", "localhost"):
        assert allowed(policy, host), host
    # Any port: an ssh tunnel (ssh -L 9000:127.0.0.1:8765) changes it.
    assert allowed(policy, "localhost:9000")
    for host in ("evil.example:8765", "evil.example", "192.168.1.5:8765", "127.0.0.1.evil.example"):
        assert not allowed(policy, host), host
    with pytest.raises(BadHostError, match="no Host header"):
        check_host(policy, [])
    with pytest.raises(BadHostError, match="several Host headers"):
        check_host(policy, ["localhost", "evil.example"])
    with pytest.raises(BadHostError, match="malformed"):
        check_host(policy, ["evil example"])


def test_configured_names_and_patterns():
    policy = host_policy("::1", ["gpu-box.lan", "proxy.example:8443", "*.tunnel.example"])
    assert allowed(policy, "gpu-box.lan:8765") and allowed(policy, "[::1]:8765")
    assert allowed(policy, "proxy.example:8443") and not allowed(policy, "proxy.example:8444")
    assert allowed(policy, "a.tunnel.example") and not allowed(policy, "tunnel.example")
    assert not allowed(policy, "evil.example")
    assert allowed(host_policy("127.0.0.1", ["*"]), "evil.example")


def test_other_binds_check_only_configured_names():
    # Bound to every interface or one non-loopback address (a token is required there): the
    # Host is not checked unless names are configured.
    for bind in ("0.0.0.0", "::", "10.0.0.5", "gpu-box"):
        assert allowed(host_policy(bind), "anything.example"), bind
    policy = host_policy("0.0.0.0", ["gpu-box.lan"])
    assert allowed(policy, "gpu-box.lan:8765") and allowed(policy, "127.0.0.1:8765")
    assert not allowed(policy, "evil.example:8765") and not allowed(policy, "10.0.0.5:8765")
    policy = host_policy("10.0.0.5", ["gpu-box.lan"])
    assert allowed(policy, "10.0.0.5:8765") and allowed(policy, "gpu-box.lan")
    assert not allowed(policy, "evil.example")


def test_bad_host_message_names_the_problem_and_the_fix():
    with pytest.raises(BadHostError) as exc:
        check_host(host_policy("127.0.0.1"), ["evil.example:8765"])
    message = str(exc.value)
    assert "'evil.example:8765'" in message and "DNS rebinding" in message
    assert "--allowed-host evil.example" in message
    assert exc.value.status == 421 and exc.value.code == "bad_host"


# --- Origin: the plain function ------------------------------------------------------------------


def origin_ok(values, host="127.0.0.1:8765", scheme="http", allowed_origins=frozenset()):
    try:
        check_origin(values, scheme=scheme, host=host, allowed=allowed_origins)
    except ForbiddenOriginError:
        return False
    return True


def test_origin_check():
    assert origin_ok([])  # curl, Python, the QGIS plugin
    assert origin_ok(["http://127.0.0.1:8765"])  # the server's own /docs page
    assert origin_ok(["HTTP://LocalHost"], host="localhost:80")
    assert origin_ok(["https://maps.example"], host="maps.example", scheme="https")
    for origin in (
        "https://evil.example",
        "http://127.0.0.1:3000",  # another local web app
        "https://127.0.0.1:8765",  # another scheme
        "null",  # sandboxed frames, files
        "http://127.0.0.1:8765/path",
        "",
    ):
        assert not origin_ok([origin]), origin
    assert not origin_ok(["http://127.0.0.1:8765", "https://evil.example"])
    maps = frozenset({normalize_origin("https://maps.example/")})
    assert origin_ok(["https://maps.example:443"], allowed_origins=maps)
    assert not origin_ok(["http://maps.example"], allowed_origins=maps)
    with pytest.raises(ForbiddenOriginError, match="'https://evil.example'.*--allowed-origin"):
        check_origin(["https://evil.example"], scheme="http", host="127.0.0.1:8765")


def test_config_checks_allowed_names():
    ServiceConfig(
        allowed_hosts=("gpu-box", "*.lan", "*"), allowed_origins=("http://a.b",)
    ).validate()
    with pytest.raises(ParameterError, match="list of names"):
        ServiceConfig(allowed_hosts="gpu-box").validate()
    with pytest.raises(ParameterError, match="allowed host 'gpu box'"):
        ServiceConfig(allowed_hosts=("gpu box",)).validate()
    with pytest.raises(ParameterError, match="allowed origin 'maps.example'"):
        ServiceConfig(allowed_origins=("maps.example",)).validate()
    env = {ALLOWED_HOSTS_ENV: " a.lan, b.lan ,,"}
    assert names_from(None, ALLOWED_HOSTS_ENV, env) == ("a.lan", "b.lan")
    assert names_from(["c.lan,d.lan", "e.lan"], ALLOWED_HOSTS_ENV, env) == (
        "c.lan",
        "d.lan",
        "e.lan",
    )


# --- the token -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "needle"),
    [
        ("", "empty"),
        ("   \t  ", "empty"),
        (" " * 20, "empty"),
        ("short", "at least 16"),
        ("with a space in it 0123456789", "without spaces"),
        (TOKEN + "\n", "without spaces"),
        ("tökén-0123456789abcdef", "ASCII"),
    ],
)
def test_bad_tokens_are_refused(token, needle):
    with pytest.raises(ParameterError, match=needle):
        check_token(token)
    with pytest.raises(ParameterError, match=needle):
        ServiceConfig(token=token).validate()


def test_token_sources(tmp_path: Path):
    assert resolve_token(env={}) is None
    assert resolve_token(env={"RS_EDIT_TOKEN": ""}) is None  # unset
    assert resolve_token(env={"RS_EDIT_TOKEN": TOKEN}) == TOKEN
    assert resolve_token(TOKEN, env={"RS_EDIT_TOKEN": "other-token-0123456789"}) == TOKEN
    with pytest.raises(ParameterError, match="empty"):
        resolve_token(env={"RS_EDIT_TOKEN": "   "})
    with pytest.raises(ParameterError, match="empty"):
        resolve_token("", env={"RS_EDIT_TOKEN": TOKEN})  # an explicit blank is not 'none'
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    assert resolve_token(token_file=str(path), env={"RS_EDIT_TOKEN": "x" * 20}) == TOKEN
    path.write_text("\n  \n")
    with pytest.raises(ParameterError, match="token file .* is empty"):
        resolve_token(token_file=str(path), env={})
    with pytest.raises(ParameterError, match="cannot read the token file"):
        resolve_token(token_file=str(tmp_path / "missing"), env={})
    with pytest.raises(ParameterError, match="once"):
        resolve_token(TOKEN, str(path), env={})


@pytest.fixture
def served(monkeypatch):
    """`rs-edit serve` up to the point where it would serve: what `serve` was given."""
    calls = []
    monkeypatch.setattr(app_module, "serve", lambda **kw: calls.append(kw))
    for name in ("RS_EDIT_TOKEN", "RS_EDIT_ALLOWED_HOSTS", "RS_EDIT_ALLOWED_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    return calls


@pytest.mark.parametrize(
    ("argv", "env", "needle"),
    [
        (["--token", ""], {}, "access token is empty"),
        (["--token", "      "], {}, "access token is empty"),
        (["--token", "short"], {}, "at least 16"),
        ([], {"RS_EDIT_TOKEN": "  "}, "access token is empty"),
        (["--token-file", "/nonexistent/token"], {}, "cannot read the token file"),
        (["--allowed-host", "bad host"], {}, "allowed host 'bad host'"),
        ([], {"RS_EDIT_ALLOWED_ORIGINS": "not-an-origin"}, "allowed origin"),
    ],
)
def test_serve_refuses_bad_settings_at_start(served, monkeypatch, capsys, argv, env, needle):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--port", "0", *argv]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not served


def test_serve_reads_token_file_and_allowed_names(served, monkeypatch, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    argv = ["serve", "--host", "0.0.0.0", "--port", "0", "--token-file", str(path)]
    assert main([*argv, "--allowed-host", "gpu-box.lan,gpu-box", "--allowed-host", "10.0.0.5"]) == 0
    config = served[-1]["config"]
    assert config.token == TOKEN
    assert config.allowed_hosts == ("gpu-box.lan", "gpu-box", "10.0.0.5")
    assert config.allowed_origins == ()
    monkeypatch.setenv("RS_EDIT_ALLOWED_HOSTS", "a.lan, b.lan")
    monkeypatch.setenv("RS_EDIT_ALLOWED_ORIGINS", "https://maps.example")
    assert main(argv) == 0
    assert served[-1]["config"].allowed_hosts == ("a.lan", "b.lan")
    assert served[-1]["config"].allowed_origins == ("https://maps.example",)
    with pytest.raises(SystemExit) as exc:  # one source of the token
        main([*argv, "--token", TOKEN])
    assert exc.value.code == EXIT_BAD_INPUT


# --- the real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Bound to 127.0.0.1 (the default): loopback names only, plus one configured name."""
    data = tmp_path_factory.mktemp("guards-data")
    config = ServiceConfig(
        allowed_hosts=("rs-edit.lan",), allowed_origins=("https://maps.example",)
    )
    with ThreadServer(data, config, edit_fn=standin(1), host="127.0.0.1") as srv, srv.client() as c:
        srv.data = data
        srv.c = c
        yield srv


def _jobs(srv) -> tuple[int, int]:
    """(jobs the server lists, job folders on disk)."""
    return len(srv.c.get("/v1/jobs").json()["jobs"]), len(list((srv.data / "jobs").iterdir()))


def test_dns_rebinding_is_refused(server, tile):
    c, port = server.c, server.port
    before = _jobs(server)
    for method, path in (("GET", "/v1/health"), ("GET", "/v1/jobs"), ("GET", "/docs")):
        r = c.request(method, path, headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 421, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "bad_host" and "--allowed-host evil.example" in error["message"]
        assert r.headers["x-content-type-options"] == "nosniff"
    r = c.post(
        "/v1/jobs",
        files={"image": ("t.tif", tile.read_bytes(), "image/tiff")},
        data={"prompt": "flooded fields", "clip": "tiny-random"},
        headers={"Host": f"evil.example:{port}"},
    )
    assert r.status_code == 421 and _jobs(server) == before
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost:9000", f"rs-edit.lan:{port}"):
        assert c.get("/v1/health", headers={"Host": host}).status_code == 200, host


def test_the_plugins_requests_pass(tmp_path: Path, tile: Path):
    """QgsNetworkAccessManager sends Host 127.0.0.1:PORT (the URL's), Accept, the bearer
    token and no Origin."""
    config = ServiceConfig(token=TOKEN)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1), host="127.0.0.1") as srv:
        headers = {
            "Host": f"127.0.0.1:{srv.port}",
            "Accept": "application/json",
            "Authorization": f"Bearer {TOKEN}",
            "User-Agent": "Mozilla/5.0 QGIS/33400",
        }
        with srv.client(headers=headers) as c:
            assert c.get("/v1/health").status_code == 200
            job = submit(c, tile, roi=ROI, clip="tiny-random")
            assert job.status_code == 201, job.text
            assert wait(c, job.json()["id"])["status"] == "succeeded"
            r = c.get(f"/v1/jobs/{job.json()['id']}/result", headers={"Accept": "image/tiff"})
            assert r.status_code == 200 and r.content[:2] in (b"II", b"MM")
            assert c.delete(f"/v1/jobs/{job.json()['id']}").status_code == 200


def test_cross_site_requests_are_refused(server, tile):
    c = server.c
    before = _jobs(server)

    def post(origin):
        return c.post(
            "/v1/jobs",
            files={"image": ("t.tif", tile.read_bytes(), "image/tiff")},
            data={"prompt": "flooded fields", "clip": "tiny-random", "roi": ROI},
            headers={"Origin": origin},
        )

    for origin in ("https://evil.example", "null", "http://127.0.0.1:1"):
        r = post(origin)
        assert r.status_code == 403, (origin, r.text)
        error = r.json()["error"]
        assert error["code"] == "forbidden_origin" and repr(origin) in error["message"]
        assert _jobs(server) == before
    assert c.get("/v1/jobs").status_code == 200  # no Origin: fine
    r = c.delete("/v1/jobs/0123456789abcdef0123456789abcdef", headers={"Origin": "https://e.x"})
    assert r.status_code == 403
    r = c.options("/v1/jobs", headers={"Origin": "https://evil.example"})  # a CORS preflight
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    # The server's own page (/docs, "Try it out") and a configured origin may.
    for origin in (server.url, "https://maps.example"):
        r = post(origin)
        assert r.status_code == 201, r.text
        assert wait(c, r.json()["id"])["status"] == "succeeded"


def test_origin_is_checked_before_the_token(tmp_path: Path):
    with ThreadServer(tmp_path / "data", ServiceConfig(token=TOKEN), edit_fn=standin(1)) as srv:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with srv.client(headers=auth) as c:
            r = c.get("/v1/jobs", headers={"Origin": "https://evil.example"})
            assert r.status_code == 403
            assert c.get("/v1/jobs", headers={"Host": "evil.example"}).status_code == 421
            assert c.get("/v1/jobs").status_code == 200
        with srv.client() as c:
            r = c.get("/v1/jobs")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.headers["x-content-type-options"] == "nosniff"


def test_public_bind_checks_only_configured_names(tmp_path: Path):
    """Bound to 0.0.0.0 (here: believed so; it listens on 127.0.0.1): with a token and no
    names, any Host; with names, those and loopback names."""
    config = ServiceConfig(token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    srv = ThreadServer(tmp_path / "a", config, standin(1), host="0.0.0.0")
    with srv, srv.client(headers=auth) as c:
        assert c.get("/v1/health", headers={"Host": "gpu-box:8765"}).status_code == 200
        # The token still guards it, and web pages still can't use it.
        assert c.get("/v1/health", headers={"Authorization": "Bearer x"}).status_code == 401
        r = c.get("/v1/health", headers={"Origin": "http://evil.example"})
        assert r.status_code == 403
        r = c.get("/v1/health", headers={"Host": "gpu-box:8765", "Origin": "http://gpu-box:8765"})
        assert r.status_code == 200
    config = ServiceConfig(token=TOKEN, allowed_hosts=("gpu-box",))
    srv = ThreadServer(tmp_path / "b", config, standin(1), host="0.0.0.0")
    with srv, srv.client(headers=auth) as c:
        assert c.get("/v1/health", headers={"Host": "gpu-box:8765"}).status_code == 200
        assert c.get("/v1/health").status_code == 200  # 127.0.0.1:PORT
        assert c.get("/v1/health", headers={"Host": "evil.example"}).status_code == 421


def test_unknown_bind_is_judged_by_the_connection(tmp_path: Path):
    """An app served by someone else (`create_app` without `host`) on a loopback address."""
    with ThreadServer(tmp_path / "data", edit_fn=standin(1)) as srv, srv.client() as c:
        assert c.get("/v1/health").status_code == 200
        assert c.get("/v1/health", headers={"Host": "evil.example"}).status_code == 421


# --- the roi field's size ------------------------------------------------------------------------


def test_roi_over_a_megabyte_is_413_naming_roi(server, tile):
    before = _jobs(server)
    roi = " " * 1_100_000 + ROI  # over the form parser's 1 MiB part limit
    r = submit(server.c, tile, roi=roi, clip="tiny-random")
    assert r.status_code == 413, r.text
    assert r.json()["error"] == {
        "code": "too_large",
        "message": "roi is larger than 1,048,576 bytes",
    }
    # The example's polygons are an ROI too: the same 413, naming their field.
    r = submit(server.c, tile, roi=ROI, reference_roi=roi, clip="tiny-random")
    assert r.status_code == 413, r.text
    assert r.json()["error"]["message"] == "reference_roi is larger than 1,048,576 bytes"
    # Another text field over the parser's limit stays a 400, now naming the field.
    r = submit(server.c, tile, prompt="x" * 1_500_000, clip="tiny-random")
    assert r.status_code == 400
    assert "'prompt' exceeded the maximum size of 1,048,576 bytes" in r.json()["error"]["message"]
    assert _jobs(server) == before and not list((server.data / "tmp").iterdir())


def test_roi_limit_below_the_parsers_is_named(tmp_path: Path, tile: Path):
    config = ServiceConfig(limits=Limits(max_roi_bytes=200_000))
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        for size in (300_000, 1_500_000):
            r = submit(c, tile, roi=" " * size + ROI, clip="tiny-random")
            assert r.status_code == 413, r.text
            assert r.json()["error"]["message"] == "roi is larger than 200,000 bytes"


# --- headers of every answer ---------------------------------------------------------------------


def test_every_answer_says_nosniff_and_job_data_no_store(server, tile):
    c = server.c
    job = submit(c, tile, roi=ROI, clip="tiny-random").json()
    wait(c, job["id"])
    answers = {
        "health": c.get("/v1/health"),
        "list": c.get("/v1/jobs"),
        "status": c.get(f"/v1/jobs/{job['id']}"),
        "result": c.get(f"/v1/jobs/{job['id']}/result"),
        "events": c.get(f"/v1/jobs/{job['id']}/events"),
        "unknown job": c.get("/v1/jobs/0123456789abcdef0123456789abcdef"),
        "bad request": c.post("/v1/jobs", json={}),
        "cancel": c.delete(f"/v1/jobs/{job['id']}"),
    }
    for name, r in answers.items():
        assert r.headers["x-content-type-options"] == "nosniff", name
        assert r.headers["cache-control"] == "no-store", name
    assert answers["result"].status_code == 200 and answers["events"].status_code == 200
    docs = c.get("/docs")
    assert docs.status_code == 200 and docs.headers["x-content-type-options"] == "nosniff"
    missing = c.get("/nothing")
    assert missing.status_code == 404 and missing.headers["x-content-type-options"] == "nosniff"
