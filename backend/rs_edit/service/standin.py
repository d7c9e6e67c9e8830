"""A stand-in for `run_edit` that exercises the service without a model, and a launcher for it.

`identity_edit` has run_edit's signature and behaviour where the service can see it: it validates
and reads the tile (`prepare`), "trains" in `train_steps` steps of `step_s` seconds unless the tile
is in the model cache (a small file per tile hash and preset, so the cache bound is exercised),
reports progress, honours cancellation (the progress callback raises) and writes the identity
edit atomically (`edit_raster`). The service's tests and load benchmark use it; the real edit is
tested end to end with `preset="tiny"`. For the job process's tests it can also hold
`allocate_mb` MB of memory while it trains (beyond its memory limit: out of memory) or end its
own process (`crash`: "kill", "abort" or "exit") after the first step.

    python -m rs_edit.service.standin --data-dir DIR [--port 0] [--steps 20] [--step-s 0.05]

starts `rs-edit serve` with it and prints `RS_EDIT_SERVICE_PORT=<port>` once listening.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import signal
import socket
import sys
import time

from .. import model_cache
from ..edit import EditResult, edit_raster, identity_editor, prepare, variant_paths
from ..files import write_bytes_atomic
from ..progress import Stage, no_progress
from ..report import EditReport


def identity_edit(
    input_path,
    output,
    options,
    *,
    roi_geojson=None,
    mask_path=None,
    device="auto",
    progress=no_progress,
    cache_dir=None,
    log=lambda line: None,
    train_steps: int = 10,
    step_s: float = 0.0,
    model_bytes: int = 1024,
    allocate_mb: int = 0,
    crash: str | None = None,
) -> EditResult:
    options = options.validate()
    tile = prepare(input_path, options, roi_geojson=roi_geojson, mask_path=mask_path)
    key = hashlib.sha256(tile.model_image.tobytes() + options.preset.encode()).hexdigest()[:32]
    model = model_cache.model_path(cache_dir, key) if cache_dir else None
    cached = model is not None and model.is_file()
    if cached:
        os.utime(model)  # as the real editor does: last use = modification time
    log("stand-in editor: identity edit, no model")
    held = None
    if allocate_mb:
        import numpy as np

        held = np.ones(allocate_mb * 1024 * 1024, dtype=np.uint8)  # touched: resident
    if not cached:
        for step in range(train_steps + 1):
            progress(Stage.TRAIN, step, train_steps, None)
            if step == 1 and crash:
                _crash(crash)
            if step < train_steps and step_s:
                time.sleep(step_s)
        if model is not None:
            model.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(model, os.urandom(model_bytes))
    del held
    written = [
        edit_raster(tile, path, identity_editor, progress=progress)
        for path in variant_paths(output, options.variants)
    ]
    report = EditReport(
        editor="identity-standin",
        model_cached=cached,
        model_entry=model.name if model is not None else None,
    )
    return EditResult(outputs=written, report=report)


def directed_edit(input_path, output, options, **kw) -> EditResult:
    """The stand-in, told by the prompt what to do (the job process's tests): "oom" holds 8 GB
    (beyond any test's memory limit), "kill", "abort" or "exit" end the process after a step,
    "busy" sleeps 60 s without calling back, "slow" trains 20 steps of 50 ms; any other prompt
    is the quick stand-in (2 steps)."""
    prompt = options.prompt
    if prompt == "oom":
        return identity_edit(input_path, output, options, allocate_mb=8000, **kw)
    if prompt in ("kill", "abort", "exit"):
        return identity_edit(input_path, output, options, train_steps=3, crash=prompt, **kw)
    if prompt == "busy":
        kw.get("progress", no_progress)("train", 0, 1, None)
        time.sleep(60)
        raise RuntimeError("the busy stand-in was not stopped")
    if prompt == "slow":
        return identity_edit(input_path, output, options, train_steps=20, step_s=0.05, **kw)
    return identity_edit(input_path, output, options, train_steps=2, **kw)


def _crash(how: str) -> None:
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "abort":
        os.abort()
    elif how == "exit":
        os._exit(3)
    raise ValueError(f"unknown crash {how!r}")


def standin(
    train_steps: int = 10,
    step_s: float = 0.0,
    model_bytes: int = 1024,
    *,
    allocate_mb: int = 0,
    crash: str | None = None,
):
    """A picklable (Ray- and child-process-ready) stand-in edit function with these settings."""
    return functools.partial(
        identity_edit,
        train_steps=train_steps,
        step_s=step_s,
        model_bytes=model_bytes,
        allocate_mb=allocate_mb,
        crash=crash,
    )


def main(argv: list[str] | None = None) -> int:
    from .app import serve
    from .config import Limits, ServiceConfig

    parser = argparse.ArgumentParser(prog="python -m rs_edit.service.standin")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10, help="stand-in training steps")
    parser.add_argument("--step-s", type=float, default=0.0, help="seconds per step")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--max-queue", type=int, default=100)
    parser.add_argument("--executor", default="local", choices=("local", "ray"))
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--ray-gpus", type=float, default=0.0)
    parser.add_argument("--ray-cache-dir", default=None)
    parser.add_argument("--cache-size", type=int, default=32)
    parser.add_argument("--token", default=None)
    parser.add_argument("--real", action="store_true", help="use run_edit, not the stand-in")
    parser.add_argument("--allocate-mb", type=int, default=0, help="memory held while training")
    parser.add_argument("--memory-budget", type=int, default=None, help="MB (default: half)")
    parser.add_argument("--job-memory-factor", type=float, default=2.0)
    args = parser.parse_args(argv)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", args.port))
    print(f"RS_EDIT_SERVICE_PORT={sock.getsockname()[1]}", flush=True)
    config = ServiceConfig(
        limits=Limits(max_queue=args.max_queue),
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        ray_gpus_per_task=args.ray_gpus,
        ray_cache_dir=args.ray_cache_dir,
        cache_models=args.cache_size,
        token=args.token,
        device="cpu",
        memory_budget_mb=args.memory_budget,
        job_memory_factor=args.job_memory_factor,
    )
    edit_fn = None if args.real else standin(args.steps, args.step_s, allocate_mb=args.allocate_mb)
    serve("127.0.0.1", args.port, args.data_dir, config=config, edit_fn=edit_fn, sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
