"""The job API on the real server (uvicorn on 127.0.0.1), with the stand-in editor.

The stand-in (`rs_edit.service.standin.identity_edit`) runs run_edit's raster path with an
identity edit and a fake, cached "training", so these tests exercise the service itself in
seconds: a full job (poll, SSE, download, georeferencing and outside-ROI bytes), cancellation,
the model cache's LRU bound, 50 concurrent submissions against a bounded queue, the access
token and the body limit. The real edit is in test_service_real.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
from service_helpers import (
    ThreadServer,
    check_result,
    rgb_tile,
    roi_polygon,
    sse_events,
    submit,
    wait,
)

from rs_edit import model_cache
from rs_edit.cli import EXIT_BAD_INPUT, main
from rs_edit.errors import ParameterError
from rs_edit.service.app import serve
from rs_edit.service.config import Limits, ServiceConfig
from rs_edit.service.standin import standin

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def tile(tmp_path: Path) -> Path:
    return rgb_tile(tmp_path / "tile.tif")


def test_full_job_poll_sse_download(tmp_path: Path, tile: Path):
    roi = roi_polygon(10, 12, 30, 40)
    with ThreadServer(tmp_path / "data", edit_fn=standin(5, 0.05)) as srv, srv.client() as c:
        health = c.get("/v1/health").json()
        assert health["status"] == "ok" and health["version"] and health["device"]
        assert {"queue", "clip", "llm", "executor"} <= set(health)
        assert health["clip"]["weights_available"]["tiny-random"] is True

        r = submit(c, tile, roi=roi, preset="tiny", clip="tiny-random", seed=3)
        assert r.status_code == 201, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] == "queued" and len(job["id"]) == 32

        events = sse_events(c, job["id"])
        assert events[-1]["status"] == "succeeded"
        progress = [e["progress"] for e in events]
        assert progress == sorted(progress) and progress[-1] == 100
        assert any(e["stage"] == "train" for e in events)

        polled = wait(c, job["id"])
        assert polled["status"] == "succeeded" and polled["progress"] == 100
        assert polled["report"]["model_cached"] is False
        assert polled["results"] == [f"/v1/jobs/{job['id']}/result"]

        r = c.get(f"/v1/jobs/{job['id']}/result")
        assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
        result = tmp_path / "result.tif"
        result.write_bytes(r.content)
        before, after = check_result(result, tile, roi)
        assert (before == after).all()  # the stand-in's identity edit changes nothing

        listed = c.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
        assert c.get("/docs").status_code == 200
        assert "/v1/jobs/{job_id}/events" in c.get("/openapi.json").json()["paths"]


def test_variants_are_served_separately(tmp_path: Path, tile: Path):
    with ThreadServer(tmp_path / "data", edit_fn=standin(1)) as srv, srv.client() as c:
        job = submit(c, tile, clip="tiny-random", variants=2).json()
        done = wait(c, job["id"], ("succeeded",))
        base = f"/v1/jobs/{job['id']}/result"
        assert done["results"] == [f"{base}?variant=1", f"{base}?variant=2"]
        for path in done["results"]:
            r = c.get(path)
            assert r.status_code == 200 and r.content[:4] == b"II*\x00"
        assert c.get(f"{base}?variant=2").headers["content-disposition"].endswith('_v2.tif"')
        r = c.get(f"{base}?variant=3")
        assert r.status_code == 404 and "2 result(s)" in r.json()["error"]["message"]


def test_remoteclip_weights_missing_is_refused_at_submission(tmp_path, tile, monkeypatch):
    from rs_edit.guidance.clip import find_local_weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("RS_EDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RS_EDIT_CLIP_DIR", raising=False)
    if find_local_weights("RemoteCLIP-RN50") is not None:
        pytest.skip("this machine has RemoteCLIP-RN50 weights in its Hugging Face cache")
    data = tmp_path / "data"
    with ThreadServer(data, edit_fn=standin(1)) as srv, srv.client() as c:
        r = submit(c, tile, clip="RemoteCLIP-RN50")
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "RemoteCLIP-RN50.pt are not on this server" in message
        assert str(tmp_path) not in message
        assert c.get("/v1/jobs").json()["jobs"] == []  # no job was made
        weights = tmp_path / "cache" / "clip" / "RemoteCLIP-RN50.pt"
        weights.parent.mkdir(parents=True)
        weights.write_bytes(b"present")  # found: accepted (the stand-in never loads it)
        assert submit(c, tile, clip="RemoteCLIP-RN50").status_code == 201


def test_failed_job_message_names_no_server_folder(tmp_path: Path, tile: Path):
    from rs_edit.errors import RasterError

    def unreadable(input_path, output, options, **kw):
        raise RasterError(f"cannot read pixels of {input_path}: TIFFReadEncodedStrip() failed")

    data = tmp_path / "data"
    with ThreadServer(data, edit_fn=unreadable) as srv, srv.client() as c:
        job = submit(c, tile, clip="tiny-random").json()
        done = wait(c, job["id"], ("failed",))
        listed = c.get("/v1/jobs").json()["jobs"]
    assert done["message"] == "cannot read pixels of image: TIFFReadEncodedStrip() failed"
    assert done["retryable"] is False
    assert str(data) not in json.dumps(listed)


def test_cancel_running_and_queued(tmp_path: Path, tile: Path):
    config = ServiceConfig(workers=1)
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=standin(400, 0.02)) as srv,
        srv.client() as c,
    ):
        running = submit(c, tile, clip="tiny-random").json()
        queued = submit(c, tile, clip="tiny-random").json()
        wait(c, running["id"], ("running",), until=lambda j: j["progress"] >= 5)

        r = c.delete(f"/v1/jobs/{queued['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"

        t0 = time.monotonic()
        assert c.delete(f"/v1/jobs/{running['id']}").status_code == 200
        job = wait(c, running["id"], timeout=10)
        assert job["status"] == "cancelled", job
        assert time.monotonic() - t0 < 3, "cancellation did not stop the work promptly"
        progress = job["progress"]
        time.sleep(0.3)
        assert c.get(f"/v1/jobs/{running['id']}").json()["progress"] == progress  # work stopped
        assert progress < 70
        r = c.get(f"/v1/jobs/{running['id']}/result")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_ready"
        job_dir = tmp_path / "data" / "jobs" / running["id"]
        assert not list(job_dir.glob("result*")) and not (job_dir / "work").exists()
        assert c.get(f"/v1/jobs/{queued['id']}").json()["runs"] == 0  # never started
        # Cancelling a finished job changes nothing.
        assert c.delete(f"/v1/jobs/{running['id']}").json()["status"] == "cancelled"


def test_model_cache_lru_bound(tmp_path: Path):
    tiles = [rgb_tile(tmp_path / f"t{i}.tif", seed=i) for i in range(3)]
    config = ServiceConfig(cache_models=2)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(2)) as srv, srv.client() as c:

        def run(tile: Path) -> dict:
            job = submit(c, tile, clip="tiny-random").json()
            return wait(c, job["id"], ("succeeded",))["report"]

        assert [run(t)["model_cached"] for t in tiles] == [False, False, False]
        models = tmp_path / "data" / "cache" / "models"
        assert len(list(models.glob("*.pt"))) == 2  # tile 0, least recently used, was evicted
        assert run(tiles[1])["model_cached"] is True  # a second prompt skips training
        assert run(tiles[0])["model_cached"] is False  # evicted: trained again (evicts tile 2)
        assert run(tiles[1])["model_cached"] is True
        assert run(tiles[2])["model_cached"] is False


def test_prune_cache_by_count_and_bytes(tmp_path: Path):
    root = tmp_path / "models"
    root.mkdir()
    for i in range(5):
        path = root / f"m{i}.pt"
        path.write_bytes(b"x" * 100)
        t = 1_000_000 + i
        import os

        os.utime(path, (t, t))
    (root / ".m9.pt.123.part").write_bytes(b"x" * 1000)  # a write in progress: untouched
    removed = model_cache.prune_cache(root, max_models=3, max_bytes=10_000, keep={"m0.pt"})
    assert sorted(p.name for p in removed) == ["m1.pt", "m2.pt"]
    removed = model_cache.prune_cache(root, max_models=10, max_bytes=150)
    assert sorted(p.name for p in removed) == ["m0.pt", "m3.pt"]
    assert sorted(p.name for p in root.iterdir()) == [".m9.pt.123.part", "m4.pt"]


def test_after_job_keeps_and_marks_the_model_the_job_used(tmp_path: Path):
    folder = model_cache.models_dir(tmp_path)
    folder.mkdir()
    for i, name in enumerate(["old.pt", "used.pt", "new.pt"]):
        (folder / name).write_bytes(b"x" * 100)
        os.utime(folder / name, (1_000_000 + i, 1_000_000 + i))
    # "used.pt" is the second oldest: the bound of one model would remove it but for the job.
    removed = model_cache.after_job(tmp_path, "used.pt", max_models=1, max_bytes=10_000)
    assert sorted(p.name for p in removed) == ["new.pt", "old.pt"]
    assert (folder / "used.pt").stat().st_mtime > 2_000_000  # marked used now
    # A job that used no model (None) keeps nothing back.
    assert [p.name for p in model_cache.after_job(tmp_path, None, 0, 10_000)] == ["used.pt"]


def test_50_concurrent_submissions_bounded_queue(tmp_path: Path, tile: Path):
    max_queue = 10
    config = ServiceConfig(workers=1, limits=Limits(max_queue=max_queue))
    payload = tile.read_bytes()
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=standin(3, 0.1)) as srv,
        srv.client(limits=httpx.Limits(max_connections=60)) as c,
    ):
        barrier = threading.Barrier(50)
        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            barrier.wait()
            r = c.post(
                "/v1/jobs",
                files={"image": ("t.tif", payload, "image/tiff")},
                data={"prompt": f"prompt {i}", "clip": "tiny-random"},
            )
            with lock:
                answers.append(r)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 50
        accepted = [r.json() for r in answers if r.status_code == 201]
        rejected = [r for r in answers if r.status_code == 429]
        assert len(accepted) + len(rejected) == 50, [r.status_code for r in answers]
        assert len(accepted) >= max_queue and rejected
        for r in rejected:
            assert r.json()["error"]["code"] == "queue_full" and r.headers["retry-after"]
        ids = [j["id"] for j in accepted]
        assert len(set(ids)) == len(ids)
        assert all(j["queue_position"] <= max_queue for j in accepted)

        for job_id in ids:
            wait(c, job_id, ("succeeded",), timeout=120)
        listed = c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
        assert sorted(j["id"] for j in listed) == sorted(ids)  # none lost, none extra
        assert all(j["runs"] == 1 for j in listed)  # none run twice
        prompts = sorted(j["options"]["prompt"] for j in listed)
        assert len(set(prompts)) == len(ids)
        assert c.get("/v1/health").json()["queue"] == {
            "queued": 0,
            "running": 0,
            "max_queued": max_queue,
        }


def test_access_token(tmp_path: Path, tile: Path):
    token = "s3cret-token-0123456789"
    config = ServiceConfig(token=token)
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv:
        with srv.client() as c:
            for path in ("/v1/health", "/docs", "/openapi.json", "/v1/jobs"):
                r = c.get(path)
                assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            r = c.get("/v1/health", headers={"Authorization": "Bearer wrong-token-000000000"})
            assert r.status_code == 401 and token not in r.text
            assert submit(c, tile).status_code == 401
        with srv.client(headers={"Authorization": f"Bearer {token}"}) as c:
            health = c.get("/v1/health").json()
            assert health["auth"] is True and token not in str(health)
            job = submit(c, tile, clip="tiny-random").json()
            assert wait(c, job["id"])["status"] == "succeeded"
            assert token not in c.get(f"/v1/jobs/{job['id']}").text


def test_refuses_public_bind_without_token(capsys, monkeypatch):
    with pytest.raises(ParameterError, match="without an access token"):
        serve("0.0.0.0", 0, None)
    with pytest.raises(ParameterError, match="at least 16"):
        serve("0.0.0.0", 0, None, config=ServiceConfig(token="short"))
    monkeypatch.delenv("RS_EDIT_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == EXIT_BAD_INPUT
    assert "without an access token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--executor", "dask"])
    assert exc.value.code == EXIT_BAD_INPUT


def test_body_limit_and_secret_redaction(tmp_path: Path, tile: Path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-key-123456")
    config = ServiceConfig(limits=Limits(max_upload_bytes=200_000))
    with ThreadServer(tmp_path / "data", config, edit_fn=standin(1)) as srv, srv.client() as c:
        big = tmp_path / "big.tif"
        big.write_bytes(tile.read_bytes() + bytes(300_000))
        r = submit(c, big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

        def chunks():  # no Content-Length: cut off while streaming
            boundary = b"--xx\r\n"
            yield boundary + b'Content-Disposition: form-data; name="prompt"\r\n\r\nfields\r\n'
            yield boundary + b'Content-Disposition: form-data; name="image"; filename="a.tif"\r\n'
            yield b"Content-Type: image/tiff\r\n\r\n"
            for _ in range(40):
                yield bytes(10_000)

        r = c.post(
            "/v1/jobs",
            content=chunks(),
            headers={"Content-Type": "multipart/form-data; boundary=xx"},
        )
        assert r.status_code == 413, r.text
        assert c.get("/v1/health").status_code == 200
        health = c.get("/v1/health")
        assert health.json()["llm"]["openai"] is True
        assert "sk-test-secret" not in health.text
        r = submit(c, tile, prompt="say sk-test-secret-key-123456", clip="tiny-random")
        assert r.status_code == 201
        assert "sk-test-secret" not in r.text
        assert not list((tmp_path / "data" / "tmp").iterdir())  # refused uploads left nothing
