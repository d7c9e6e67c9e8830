"""`rs-edit augment --server`: the samples' edits made as jobs of a real `rs-edit serve`.

The server is the real app (uvicorn on 127.0.0.1, in a thread, `service_helpers.ThreadServer`)
with the real `run_edit`; the fast tests swap the diffusion editor for test_augment's stand-in in
this process, which the server's worker threads share, so local and remote runs can be compared
file by file. One test runs the real tiny model (tiny-random CLIP) through the server.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio import features
from service_helpers import ThreadServer, mask_tif, rgb_tile
from service_helpers import wait as wait_job
from test_augment import FakeEditor, collection, write_inputs

from rs_edit import cli
from rs_edit.augment import MANIFEST_KEYS, AugmentOptions, run_augment
from rs_edit.augment_remote import JOBS_FILE, EditRequest, JobClient, RemoteOptions, remote_edit
from rs_edit.errors import CancelledError, InputError, ParameterError, RemoteError
from rs_edit.service.config import ServiceConfig

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore:CLIP 'tiny-random' has RANDOM weights"),
]

TOKEN = "a-test-token-of-sufficient-length"
POLL_S = 0.02


@pytest.fixture
def fake_editor(monkeypatch):
    import rs_edit.guidance.editor as editor

    monkeypatch.setattr(editor, "TextEditor", FakeEditor)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(raster, polygons of all of test_augment's BOXES, of the second box only, shapely boxes)."""
    folder = tmp_path_factory.mktemp("augment-remote")
    raster, every, polys, feats = write_inputs(folder)
    one = folder / "one.geojson"
    one.write_text(json.dumps(collection(feats[1:2])))
    return raster, every, one, polys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with ThreadServer(
        tmp_path_factory.mktemp("server"), ServiceConfig(device="cpu", workers=2, job_process=False)
    ) as srv:
        yield srv


def options(**kw) -> AugmentOptions:
    base = dict(prompts=["flooded fields"], variants=2, chip=48, preset="tiny")
    return AugmentOptions(**{**base, "clip": "tiny-random", "device": "cpu", **kw})


def remote(srv, **kw) -> RemoteOptions:
    return RemoteOptions(srv.url, **{"parallel": 2, "poll_s": POLL_S, **kw})


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def server_jobs(srv) -> dict[str, dict]:
    """Every job the server knows, by id."""
    with srv.client() as c:
        return {j["id"]: j for j in c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]}


def new_jobs(srv, before: dict) -> list[dict]:
    return [j for i, j in server_jobs(srv).items() if i not in before]


def files(out: Path) -> list[str]:
    """The dataset's files (the local model cache aside)."""
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(out).parts
    )


def pixels(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def most_in_flight(jobs: list[dict]) -> int:
    """The largest number of these jobs alive (created, not finished) at one time."""
    t = lambda s: datetime.fromisoformat(s).timestamp()  # noqa: E731
    spans = [(t(j["created"]), t(j["finished"])) for j in jobs]
    return max(sum(1 for c, f in spans if c <= start < f) for start, _ in spans)


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


# ------------------------------------------------------------------------------------- tests


def test_remote_run_matches_local(inputs, server, tmp_path, fake_editor):
    raster, every, _, polys = inputs
    opts = options(prompts=["flooded fields", "burned forest"], variants=2)
    local, far = tmp_path / "local", tmp_path / "remote"
    assert run_augment(raster, every, local, opts).made == 12
    before = server_jobs(server)
    result = run_augment(raster, every, far, opts, remote=remote(server))
    assert (result.total, result.made, result.skipped) == (12, 12, 0)

    jobs = new_jobs(server, before)
    assert len(jobs) == 12 and {j["status"] for j in jobs} == {"succeeded"}
    assert sorted(j["options"]["seed"] for j in jobs) == [0] * 6 + [1] * 6
    assert most_in_flight(jobs) <= 2  # --parallel 2: never more than two at a time
    assert files(far) == files(local) and not (far / JOBS_FILE).exists()

    by_name = {e["sample"]: e for e in manifest(local)}
    lines = manifest(far)
    assert sorted(e["sample"] for e in lines) == sorted(by_name)
    for entry in lines:
        assert list(entry) == list(MANIFEST_KEYS)
        assert entry == by_name[entry["sample"]]  # scores too: the same edit, evaluated here
        assert entry["seed"] == entry["variant"] - 1
        for key in ("pre", "post", "mask"):
            assert np.array_equal(pixels(far / entry[key]), pixels(local / entry[key]))
        grids = []
        for key in ("pre", "post", "mask"):
            with rasterio.open(far / entry[key]) as src:
                grids.append((src.crs, src.transform, src.width, src.height))
        assert grids[0] == grids[1] == grids[2]
        mask = pixels(far / entry["mask"])[0]
        poly = polys[int(entry["polygon_id"]) - 1]
        expected = features.rasterize([poly], out_shape=mask.shape, transform=grids[0][1])
        assert np.array_equal(mask, expected) and mask.any()


def test_rerun_reattaches_to_a_finished_job_and_resubmits_lost_ones(
    inputs, server, tmp_path, fake_editor
):
    raster, _, one, _ = inputs
    out = tmp_path / "out"
    opts = options(variants=3)
    before = server_jobs(server)
    run_augment(raster, one, out, opts, remote=remote(server))
    first = {j["options"]["seed"]: j for j in new_jobs(server, before)}
    assert sorted(first) == [0, 1, 2]
    entries = {e["variant"]: e for e in manifest(out)}
    kept = (out / entries[1]["post"]).read_bytes()

    # As if interrupted with three jobs in flight: nothing recorded, no results downloaded;
    # v1's job succeeded, the server forgot v2's, v3's was sent to another server.
    (out / "manifest.jsonl").unlink()
    for entry in entries.values():
        (out / entry["post"]).unlink()
    ledger = {
        entries[1]["sample"]: {"server": server.url, "job": first[0]["id"]},
        entries[2]["sample"]: {"server": server.url, "job": "0" * 32},
        entries[3]["sample"]: {"server": "http://127.0.0.1:9", "job": first[2]["id"]},
    }
    (out / JOBS_FILE).write_text(json.dumps({"jobs": ledger}))
    logged = []
    middle = server_jobs(server)
    result = run_augment(raster, one, out, opts, remote=remote(server), log=logged.append)

    assert (result.made, result.skipped) == (3, 0)
    again = new_jobs(server, middle)
    assert sorted(j["options"]["seed"] for j in again) == [1, 2]  # v1 was not resubmitted
    assert (out / entries[1]["post"]).read_bytes() == kept
    assert sorted(e["sample"] for e in manifest(out)) == sorted(ledger)
    assert not (out / JOBS_FILE).exists()
    assert any("re-attached" in line and first[0]["id"] in line for line in logged)
    assert any("unknown to the server" in line for line in logged)


def test_server_down_is_one_clear_error(inputs, tmp_path, capsys):
    raster, _, one, _ = inputs
    url = closed_port_url()
    out = tmp_path / "out"
    with pytest.raises(RemoteError, match="cannot reach the rs-edit server") as caught:
        run_augment(raster, one, out, options(), remote=RemoteOptions(url, poll_s=POLL_S))
    assert url in str(caught.value)
    assert not (out / "post").exists() and not (out / "manifest.jsonl").read_text()

    argv = ["augment", str(raster), "--polygons", str(one), "--prompt", "flooded fields"]
    argv += ["--chip", "48", "--preset", "tiny", "--clip", "tiny-random", "--quiet"]
    argv += ["-o", str(out), "--server", url]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and url in err and "cannot reach" in err
    assert not (out / "post").exists()


def test_server_refusal_names_the_server_message(server, tmp_path):
    pre = rgb_tile(tmp_path / "pre.tif", size=32)
    mask = mask_tif(tmp_path / "mask.tif", 32)
    post = tmp_path / "post" / "x.tif"
    request = EditRequest(pre, mask, "flooded fields", "no-such-preset", "tiny-random", 0)
    before = server_jobs(server)
    with JobClient(server.url) as client, pytest.raises(InputError) as caught:
        remote_edit(client, request, post, poll_s=POLL_S)
    message = str(caught.value)
    assert server.url in message and "no-such-preset" in message and "bad_parameter" in message
    assert not post.parent.exists() and not new_jobs(server, before)


def test_token(inputs, tmp_path, fake_editor, monkeypatch, capsys):
    raster, _, one, _ = inputs
    config = ServiceConfig(device="cpu", workers=1, token=TOKEN, job_process=False)
    with ThreadServer(tmp_path / "data", config) as srv:
        with pytest.raises(ParameterError, match="token") as caught:
            run_augment(raster, one, tmp_path / "o", options(), remote=remote(srv))
        assert srv.url in str(caught.value)
        bad = remote(srv, token="x" * 20)
        with pytest.raises(ParameterError, match="token"):
            run_augment(raster, one, tmp_path / "o", options(), remote=bad)

        monkeypatch.setenv("RS_EDIT_TOKEN", TOKEN)
        out = tmp_path / "out"
        argv = ["augment", str(raster), "--polygons", str(one), "--prompt", "flooded fields"]
        argv += ["--chip", "48", "--preset", "tiny", "--clip", "tiny-random", "--variants", "2"]
        argv += ["--device", "cpu", "--quiet", "-o", str(out), "--server", srv.url]
        assert cli.main([*argv, "--parallel", "2"]) == 0, capsys.readouterr().err
        assert len(manifest(out)) == 2
    # --token and --parallel mean nothing without --server: refused, not ignored.
    assert cli.main([*argv[:-2], "--parallel", "2"]) == cli.EXIT_BAD_INPUT


def test_cancel_cancels_the_jobs_in_flight(inputs, tmp_path, fake_editor):
    """The first job to start is edited; every other one waits (reporting progress, so that it
    can be cancelled) until it is cancelled. The run stops after its first sample."""
    from rs_edit.edit import run_edit

    raster, _, one, _ = inputs
    calls, lock = [], threading.Lock()

    def gated_edit(*args, progress, **kw):
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            return run_edit(*args, progress=progress, **kw)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            progress("train", 0, 1, None)  # raises CancelledError once the job is cancelled
            time.sleep(0.02)
        raise RuntimeError("the job was not cancelled")

    def stop(done, total):
        raise CancelledError("stop")

    out = tmp_path / "out"
    config = ServiceConfig(device="cpu", workers=2)
    with ThreadServer(tmp_path / "data", config, edit_fn=gated_edit) as srv:
        with pytest.raises(CancelledError):
            run_augment(
                raster,
                one,
                out,
                options(variants=4),
                remote=remote(srv, parallel=3),
                on_sample=stop,
            )
        jobs = server_jobs(srv)
        with srv.client() as c:
            ends = [wait_job(c, i, timeout=30)["status"] for i in jobs]
    assert 3 <= len(jobs) <= 4 and sorted(ends).count("succeeded") == 1
    assert ends.count("cancelled") == len(jobs) - 1
    assert len(manifest(out)) == 1 and not (out / JOBS_FILE).exists()
    assert [p.name for p in (out / "post").iterdir()] == [Path(manifest(out)[0]["post"]).name]


def test_failed_or_cancelled_job_is_an_error(inputs, tmp_path):
    """The server's edit fails (seed 0) or is cancelled there (other seeds): the run stops with
    the job's message; a rerun submits the sample again instead of re-attaching to it."""
    raster, _, one, _ = inputs

    def broken_edit(input_path, output, options, **kw):
        if options.seed == 0:
            raise InputError("the tile is unusable")
        raise CancelledError("cancelled on the server")

    out = tmp_path / "out"
    with ThreadServer(tmp_path / "data", ServiceConfig(device="cpu"), edit_fn=broken_edit) as srv:
        with pytest.raises(RemoteError, match="failed on .*: the tile is unusable") as caught:
            run_augment(raster, one, out, options(variants=1), remote=remote(srv))
        (job,) = server_jobs(srv).values()
        assert job["id"] in str(caught.value) and srv.url in str(caught.value)
        assert job["retryable"] is False  # the input's fault: sending it again cannot help
        assert json.loads((out / JOBS_FILE).read_text())["jobs"]  # kept for a rerun

        logged = []
        with pytest.raises(RemoteError, match="was cancelled on"):
            opts = options(variants=1, seed=5)
            run_augment(raster, one, out, opts, remote=remote(srv), log=logged.append)
        assert len(server_jobs(srv)) == 2
        assert any(f"job {job['id']} is failed, submitting again" in line for line in logged)
    assert not (out / "post").exists() and not (out / "manifest.jsonl").read_text()


def test_a_stand_in_server_is_refused_not_recorded(inputs, tmp_path):
    """A server running the stand-in (no model) answers with a report of the same keys, empty:
    the run stops with a clear error instead of an empty manifest row or an IndexError."""
    from rs_edit.service.standin import identity_edit

    raster, _, one, _ = inputs
    out = tmp_path / "out"
    config = ServiceConfig(device="cpu")
    with (
        ThreadServer(tmp_path / "data", config, edit_fn=identity_edit) as srv,
        pytest.raises(RemoteError, match="no edit report from rs-edit's editor") as caught,
    ):
        run_augment(raster, one, out, options(variants=1), remote=remote(srv))
    assert "stand-in" in str(caught.value) and srv.url in str(caught.value)
    assert not (out / "manifest.jsonl").read_text()


def test_server_restart_is_waited_for_and_interrupted_jobs_resubmitted(
    inputs, tmp_path, fake_editor
):
    """The server stops while the job runs (it is marked failed, retryable) and comes back on the
    same port and data directory: the run reconnects, submits the sample again and finishes."""
    from rs_edit.edit import run_edit

    raster, _, one, _ = inputs
    running = threading.Event()

    def endless_edit(*args, progress, **kw):
        running.set()
        while True:  # until the shutdown cancels it through progress()
            progress("train", 0, 1, None)
            time.sleep(0.02)

    data, out, logged, outcome = tmp_path / "data", tmp_path / "out", [], {}
    config = ServiceConfig(device="cpu", workers=1, job_process=False)

    def augment(url):
        try:
            opts = options(variants=1)
            outcome["result"] = run_augment(
                raster, one, out, opts, remote=RemoteOptions(url, poll_s=POLL_S), log=logged.append
            )
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    with ThreadServer(data, config, edit_fn=endless_edit) as first:
        port, url = first.port, first.url
        runner = threading.Thread(target=augment, args=(url,), daemon=True)
        runner.start()
        assert running.wait(60), "the first job never started"
        (interrupted,) = server_jobs(first)
    time.sleep(0.3)  # the run polls a server that is down
    with ThreadServer(data, config, edit_fn=run_edit, port=port) as second:
        runner.join(120)
        assert not runner.is_alive()
        jobs = server_jobs(second)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].made == 1 and len(manifest(out)) == 1
    assert jobs[interrupted]["status"] == "failed" and jobs[interrupted]["retryable"] is True
    (again,) = [j for i, j in jobs.items() if i != interrupted]
    assert again["status"] == "succeeded" and "retryable" not in again
    assert any(f"job {interrupted} was interrupted" in line for line in logged), logged
    assert not (out / JOBS_FILE).exists()


def test_full_queue_is_waited_for(inputs, tmp_path, fake_editor, monkeypatch):
    """A server with room for one waiting job answers 429 to the others: they are retried
    (after the server's Retry-After, shortened here) until all samples are made."""
    import rs_edit.augment_remote as augment_remote
    from rs_edit.edit import run_edit
    from rs_edit.service.config import Limits

    raster, _, one, _ = inputs
    retries = []

    def short_retry(response):
        retries.append(response.status_code)
        return 0.05

    def slow_edit(*args, **kw):
        time.sleep(0.3)  # long enough for every submission to find the queue full
        return run_edit(*args, **kw)

    monkeypatch.setattr(augment_remote, "_retry_after", short_retry)
    config = ServiceConfig(device="cpu", workers=1, limits=Limits(max_queue=1))
    with ThreadServer(tmp_path / "data", config, edit_fn=slow_edit) as srv:
        out = tmp_path / "out"
        opts = options(variants=4)
        assert run_augment(raster, one, out, opts, remote=remote(srv, parallel=4)).made == 4
        assert len(server_jobs(srv)) == 4
    assert retries and set(retries) == {429}
    assert sorted(e["seed"] for e in manifest(out)) == [0, 1, 2, 3]


@pytest.mark.slow
def test_real_editor_through_the_server(inputs, tmp_path, trained_tiny):
    raster, _, one, _ = inputs
    out = tmp_path / "out"
    config = ServiceConfig(device="cpu", workers=1)
    with ThreadServer(tmp_path / "data", config) as srv:
        opts = options(chip=32, variants=2)
        result = run_augment(raster, one, out, opts, remote=remote(srv))
        jobs = list(server_jobs(srv).values())
    assert result.made == 2
    # One worker: the second job waited, and reused the tile model the first one trained.
    assert sorted(j["report"]["model_cached"] for j in jobs) == [False, True]
    for entry in manifest(out):
        assert entry["clip_random"] is True and entry["width"] == 32
        before, after = pixels(out / entry["pre"]), pixels(out / entry["post"])
        mask = pixels(out / entry["mask"])[0].astype(bool)
        assert np.array_equal(before[:, ~mask], after[:, ~mask])
        assert (before[:, mask] != after[:, mask]).any()
