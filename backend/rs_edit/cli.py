"""`rs-edit`: the command line. Thin: parse, call plain functions, map errors to exit codes.

Exit codes: 0 success, 1 internal failure, 2 bad input (one line on stderr, no traceback),
3 a feature not available in this version, 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import warnings
from pathlib import Path

from . import __version__
from .bands import parse_band_list
from .composite import FEATHER_PX
from .engine.presets import DEFAULT_PRESET, PRESET_NAMES
from .errors import (
    CancelledError,
    InputError,
    NotAvailableError,
    ParameterError,
    RandomClipWarning,
    RsEditError,
)
from .guidance import GUIDANCE_METHODS
from .guidance.clip import DEFAULT_CLIP

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NOT_AVAILABLE, EXIT_CANCELLED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one clear line (the contract's bad-input rule)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _finite_float(text: str) -> float:
    """An argparse type: a finite number (not nan or inf), else a usage error (exit 2)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rs-edit", description="Edit a georeferenced image by a text prompt.")
    parser.add_argument("--version", action="version", version=f"rs-edit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    edit = sub.add_parser("edit", help="edit INPUT inside the ROI by a text prompt")
    edit.add_argument("input", help="input raster (GeoTIFF, or any GDAL-readable raster)")
    edit.add_argument("--prompt", required=True, help='what to show, e.g. "flooded fields"')
    edit.add_argument("-o", "--output", required=True, help="output GeoTIFF")
    where = edit.add_mutually_exclusive_group()
    where.add_argument("--roi", help="GeoJSON polygons (any CRS; RFC 7946 = EPSG:4326)")
    where.add_argument("--mask", help="mask raster on the input's grid, non-zero = edit")
    edit.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of: {', '.join(PRESET_NAMES)}")
    edit.add_argument("--seed", type=int, default=None, help="random seed for reproducible edits")
    edit.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    edit.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name or checkpoint path")
    edit.add_argument(
        "--llm",
        default="none",
        choices=("none", "openai"),
        help="expand the prompt with an LLM (openai: any compatible endpoint)",
    )
    edit.add_argument("--variants", type=int, default=1, help="number of different edits")
    edit.add_argument(
        "--guidance",
        default="auto",
        choices=GUIDANCE_METHODS,
        help="finetune: the paper's prompt-guided fine-tuning; sampling: CLIP gradients while "
        "sampling (cheaper, needs no training with presets tiny and fast); none: an unguided "
        "re-synthesis of the ROI; auto (default): finetune where the preset trains a network, "
        "else sampling",
    )
    edit.add_argument(
        "--cache-dir",
        default=None,
        help="where trained tile models are kept for reuse (default: RS_EDIT_CACHE_DIR or "
        "~/.cache/rs-edit)",
    )
    edit.add_argument("--no-cache", action="store_true", help="neither reuse nor keep models")
    edit.add_argument(
        "--no-prompt-ensemble",
        action="store_true",
        help="guide by the prompt alone, without synonyms (for comparisons)",
    )
    edit.add_argument(
        "--reference",
        metavar="EXAMPLE",
        default=None,
        help="an example image (any raster: resampled to INPUT's resolution and bands) whose "
        "look the ROI takes on, fitted to its surroundings; needs no CLIP weights",
    )
    edit.add_argument(
        "--reference-roi",
        metavar="POLYGONS.geojson",
        default=None,
        help="use only these polygons of --reference (GeoJSON, any CRS)",
    )
    edit.add_argument(
        "--reference-weight",
        type=float,
        default=0.8,
        help="weight of --reference against the prompt and the tile's own look: 0 = text "
        "only, 1 = example only (default 0.8)",
    )
    edit.add_argument("--rgb-bands", help="1-based bands CLIP sees as RGB, e.g. 4,3,2")
    edit.add_argument(
        "--feather",
        type=int,
        default=FEATHER_PX,
        help=f"feather width inside the ROI (px; default {FEATHER_PX})",
    )
    edit.add_argument("--dilate", type=int, default=0, help="grow the ROI by this many pixels")
    edit.add_argument("--cog", action="store_true", help="write a Cloud-Optimized GeoTIFF")
    edit.add_argument("--quiet", action="store_true", help="no progress bars")
    edit.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="MB",
        help="refuse an edit estimated to need more memory (default: env RS_EDIT_MEMORY_BUDGET, "
        "else half of this machine's memory)",
    )
    edit.add_argument(
        "--report",
        action="store_true",
        help="also write OUTPUT_report.json (rs-edit eval of the edit) and OUTPUT_quicklook.png",
    )

    serve = sub.add_parser("serve", help="run the HTTP backend")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data-dir", default=None, help="jobs and results (env RS_EDIT_DATA_DIR)")
    token = serve.add_mutually_exclusive_group()
    token.add_argument(
        "--token",
        default=None,
        help="access token (env RS_EDIT_TOKEN; at least 16 characters): clients send "
        "'Authorization: Bearer TOKEN'; required to bind an address other than 127.0.0.1",
    )
    token.add_argument(
        "--token-file",
        default=None,
        metavar="PATH",
        help="read the access token from this file (keeps it out of the process list)",
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=None,
        metavar="NAME",
        help="also answer requests sent to this host name (repeatable, or env "
        "RS_EDIT_ALLOWED_HOSTS, comma separated; e.g. gpu-box.lan, *.example.org)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        metavar="URL",
        help="accept requests from web pages of this origin (repeatable, or env "
        "RS_EDIT_ALLOWED_ORIGINS; e.g. https://maps.example.org)",
    )
    serve.add_argument("--executor", default="local", choices=("local", "ray"))
    serve.add_argument("--ray-address", default=None, help="Ray cluster (default: start one)")
    serve.add_argument(
        "--ray-gpus", type=float, default=1.0, help="GPUs each Ray edit task asks for"
    )
    serve.add_argument(
        "--ray-cache-dir",
        default=None,
        help="model cache on the Ray workers' machines (default: their RS_EDIT_CACHE_DIR or "
        "~/.cache/rs-edit)",
    )
    serve.add_argument(
        "--workers", type=int, default=None, help="jobs at once (default: one per GPU, or 1)"
    )
    serve.add_argument("--max-queue", type=int, default=100, help="waiting jobs before 429")
    serve.add_argument("--cache-size", type=int, default=32, help="trained models kept (LRU)")
    serve.add_argument("--cache-gb", type=float, default=8.0, help="model cache size bound")
    serve.add_argument("--max-upload-mb", type=int, default=1024, help="request body limit")
    serve.add_argument(
        "--max-pixels", type=int, default=400_000_000, help="largest raster (width x height)"
    )
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    serve.add_argument(
        "--memory-budget",
        type=float,
        default=None,
        metavar="MB",
        help="refuse jobs estimated to need more memory, 413 (default: env "
        "RS_EDIT_MEMORY_BUDGET, else half of this machine's memory)",
    )
    serve.add_argument(
        "--job-memory-factor",
        type=_finite_float,
        default=2.0,
        metavar="F",
        help="each edit's process may allocate F times the job's memory estimate; one beyond "
        "fails alone (default 2; 0: no limit; else 1 to 64)",
    )
    serve.add_argument(
        "--no-job-process",
        dest="job_process",
        action="store_false",
        help="run edits in the server's threads, not child processes (for debugging: no "
        "isolation, no memory limit)",
    )
    serve.add_argument(
        "--retention-days",
        type=_finite_float,
        default=30.0,
        metavar="N",
        help="remove finished, failed and cancelled jobs (record, upload, results) N days after "
        "they ended (default 30; 0 keeps them forever)",
    )
    serve.add_argument(
        "--max-data-gb",
        type=_finite_float,
        default=None,
        metavar="X",
        help="refuse submissions (507) while the data directory holds more than X GB "
        "(default: no bound)",
    )

    demo = sub.add_parser("demo", help="the main job on a generated scene, offline")
    demo.add_argument("--out", default="rs-edit-demo", help="folder for the demo's files")

    ev = sub.add_parser(
        "eval", help="score an edit: CLIP score, SWD ratio, changed pixels, quicklook"
    )
    ev.add_argument("before", help="the input raster")
    ev.add_argument("after", help="the edited raster (same grid)")
    ev.add_argument("--prompt", required=True, help="the prompt the edit was made for")
    ev_where = ev.add_mutually_exclusive_group()
    ev_where.add_argument("--roi", help="GeoJSON polygons (any CRS; RFC 7946 = EPSG:4326)")
    ev_where.add_argument("--mask", help="mask raster on the input's grid, non-zero = edit")
    ev.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name or checkpoint path")
    ev.add_argument("--llm", default="none", choices=("none", "openai"))
    ev.add_argument("--rgb-bands", help="1-based bands CLIP sees as RGB, e.g. 4,3,2")
    ev.add_argument("--png", default=None, help="write a before/after quicklook PNG here")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    aug = sub.add_parser(
        "augment",
        help="edited chips per polygon as labelled training data (LEVIR-CD layout); with "
        "--server the edits run as jobs of an rs-edit serve job API, several at a time",
    )
    aug.add_argument("raster", help="input raster (GeoTIFF, or any GDAL-readable raster)")
    aug.add_argument("--polygons", required=True, help="polygons: GeoJSON, GeoPackage, ...")
    aug.add_argument("--layer", default=None, help="layer to read (if the file has several)")
    aug.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    aug.add_argument("--prompt-field", default=None, help="take each polygon's prompt from FIELD")
    aug.add_argument(
        "--prompt-map",
        action="append",
        default=[],
        help="VALUE=PROMPT for --prompt-field (repeatable); unmapped polygons are skipped",
    )
    aug.add_argument(
        "--reference-map",
        action="append",
        default=[],
        metavar="VALUE=EXAMPLE.tif",
        help="with --prompt-field: polygons of class VALUE are edited to look like this example "
        "image (repeatable; resampled to RASTER's resolution and bands)",
    )
    aug.add_argument(
        "--reference-weight",
        type=float,
        default=None,
        help="weight of the --reference-map examples, 0..1 (default 0.8)",
    )
    aug.add_argument("--variants", type=int, default=1, help="edits per polygon and prompt")
    aug.add_argument("--chip", type=int, default=128, help="chip size in pixels (default 128)")
    aug.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of: {', '.join(PRESET_NAMES)}")
    aug.add_argument("--clip", default=DEFAULT_CLIP, help="CLIP model name or checkpoint path")
    aug.add_argument("--seed", type=int, default=0, help="variant k uses SEED + k - 1")
    aug.add_argument("--rgb-bands", help="1-based bands CLIP and the PNGs see as RGB")
    aug.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    aug.add_argument("--limit", type=int, default=None, help="stop after N new samples")
    aug.add_argument(
        "--server",
        default=None,
        help="make the edits as jobs of this rs-edit serve (e.g. http://gpu-box:8765; its "
        "executor may be a Ray cluster); evaluation, PNGs and the manifest stay here",
    )
    aug.add_argument(
        "--token", default=None, help="with --server: its access token (env RS_EDIT_TOKEN)"
    )
    aug.add_argument(
        "--parallel", type=int, default=None, help="with --server: jobs in flight (default 4)"
    )
    aug.add_argument("--quiet", action="store_true", help="no progress bar")
    aug.add_argument("-o", "--output", required=True, help="output folder (rerun to resume)")

    bench = sub.add_parser("bench", help="training speed and quality on one image")
    bench.add_argument("--image", required=True)
    bench.add_argument("--preset", default=DEFAULT_PRESET)
    bench.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    bench.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train this many steps (default: until the quality bar)",
    )
    bench.add_argument("--size", type=int, default=None, help="centred square crop (px)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--baseline",
        action="store_true",
        help="run the network the published way (NCHW, fp32) for comparison",
    )
    bench.add_argument("--png", default=None, help="write the source and the samples here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _one_line_warnings(quiet=getattr(args, "quiet", False)):
            return _COMMANDS[args.command](args) or EXIT_OK
    except InputError as exc:
        return _fail(EXIT_BAD_INPUT, f"error: {exc}")
    except NotAvailableError as exc:
        return _fail(EXIT_NOT_AVAILABLE, f"not available: {exc}")
    except (CancelledError, KeyboardInterrupt):
        return _fail(EXIT_CANCELLED, "cancelled: nothing was written")
    except RsEditError as exc:
        return _fail(EXIT_FAILURE, f"failed: {exc}")
    except Exception as exc:  # an internal bug: one line, the traceback on request
        if os.environ.get("RS_EDIT_DEBUG"):
            raise
        return _fail(
            EXIT_FAILURE,
            f"internal error: {type(exc).__name__}: {exc} (set RS_EDIT_DEBUG=1 for a traceback)",
        )


@contextlib.contextmanager
def _one_line_warnings(quiet: bool):
    """Python warnings as one line each on stderr, each message once, without the file and source
    line Python adds. Without --quiet the random-CLIP warning is already in the log."""
    said = set()

    def show(message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in said:
            said.add(text)
            print(f"rs-edit: warning: {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = show
        if not quiet:
            warnings.simplefilter("ignore", RandomClipWarning)
        yield


def _fail(code: int, line: str) -> int:
    print(f"rs-edit: {' '.join(line.split())}", file=sys.stderr)
    return code


def cmd_edit(args: argparse.Namespace) -> int:
    from .edit import EditOptions, default_cache_dir, run_plan
    from .plan import plan_edit
    from .progress import tqdm_progress

    options = EditOptions(
        prompt=args.prompt,
        preset=args.preset,
        seed=args.seed,
        clip=args.clip,
        llm=args.llm,
        variants=args.variants,
        guidance=args.guidance,
        prompt_ensemble=not args.no_prompt_ensemble,
        reference=args.reference,
        reference_roi=args.reference_roi,
        reference_weight=args.reference_weight,
        rgb_bands=parse_band_list(args.rgb_bands) if args.rgb_bands else None,
        dilate_px=args.dilate,
        feather_px=args.feather,
        cog=args.cog,
    ).validate()
    plan = plan_edit(args.input, options, roi_geojson=args.roi, mask_path=args.mask)
    _check_memory(args, plan)
    say = (
        (lambda line: None)
        if args.quiet
        else (lambda line: print(f"rs-edit: {line}", file=sys.stderr))
    )
    progress, close = tqdm_progress(enabled=not args.quiet)
    try:
        result = run_plan(
            plan,
            args.output,
            device=args.device,
            progress=progress,
            cache_dir=None if args.no_cache else default_cache_dir(args.cache_dir),
            log=say,
        )
    finally:
        close()
    report = result.report
    seconds = report.seconds
    edits = ", ".join(f"{v:.3f}" for v in report.clip_similarity_edits)
    say(
        f"done in {sum(seconds.values()):.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f"); CLIP similarity of the ROI to the prompt: input "
        f"{report.clip_similarity_input:.3f}, edited {edits}"
    )
    if args.report:
        from .evaluate import evaluate_edit

        for i, path in enumerate(result.outputs):
            evaluation = evaluate_edit(
                args.input,
                path,
                options.prompt,
                roi_geojson=args.roi,
                mask_path=args.mask,
                clip=options.clip,
                llm=options.llm,
                rgb_bands=options.rgb_bands,
                device=args.device,
                png=path.with_name(f"{path.stem}_quicklook.png"),
                context_px=options.context_px,
                dilate_px=options.dilate_px,
                prompts=report.prompts,
            )
            evaluation["edit"] = {**report.to_dict(), "variant": i + 1}
            report_path = path.with_name(f"{path.stem}_report.json")
            report_path.write_text(json.dumps(evaluation, indent=2) + "\n", encoding="utf-8")
            say(
                f"report: {report_path} (CLIP score input {evaluation['clip_score_input']:.1f}, "
                f"edit {evaluation['clip_score_edit']:.1f}; SWD ratio {evaluation['swd_ratio']}; "
                f"changed inside {evaluation['changed_inside']:.0%}, outside "
                f"{evaluation['changed_outside_pixels']} px)"
            )
    for path in result.outputs:
        print(path)
    return EXIT_OK


def _check_memory(args: argparse.Namespace, plan) -> None:
    """Refuse (exit 2) an edit whose estimated peak memory exceeds the budget, before any pixel
    is read: the edit's plan (header, ROI, windows, bands) and the preset are enough."""
    from .memory import check_edit, resolve_budget

    budget = resolve_budget(args.memory_budget)
    device_type = args.device
    if device_type == "auto":
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    check_edit(
        plan,
        budget,
        device_type=device_type,
        hint=f" (or raise --memory-budget above {budget:,} MB)",
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_edit

    report = evaluate_edit(
        args.before,
        args.after,
        args.prompt,
        roi_geojson=args.roi,
        mask_path=args.mask,
        clip=args.clip,
        llm=args.llm,
        rgb_bands=parse_band_list(args.rgb_bands) if args.rgb_bands else None,
        device=args.device,
        png=args.png,
        log=lambda line: print(f"rs-edit: {line}", file=sys.stderr),
    )
    print(json.dumps(report, indent=2))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .memory import resolve_budget
    from .service.app import serve
    from .service.config import (
        ALLOWED_HOSTS_ENV,
        ALLOWED_ORIGINS_ENV,
        Limits,
        ServiceConfig,
        names_from,
        resolve_token,
    )

    config = ServiceConfig(
        limits=Limits(
            max_upload_bytes=args.max_upload_mb * 1024 * 1024,
            max_pixels=args.max_pixels,
            max_queue=args.max_queue,
        ),
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
        ray_gpus_per_task=args.ray_gpus,
        ray_cache_dir=args.ray_cache_dir,
        cache_models=args.cache_size,
        cache_bytes=int(args.cache_gb * 1024**3),
        token=resolve_token(args.token, args.token_file),
        device=args.device,
        allowed_hosts=names_from(args.allowed_host, ALLOWED_HOSTS_ENV),
        allowed_origins=names_from(args.allowed_origin, ALLOWED_ORIGINS_ENV),
        memory_budget_mb=resolve_budget(args.memory_budget),
        job_memory_factor=args.job_memory_factor,
        job_process=args.job_process,
        retention_days=_retention_days(args.retention_days),
        max_data_bytes=_data_bytes(args.max_data_gb),
    ).validate()
    serve(host=args.host, port=args.port, data_dir=args.data_dir, config=config)
    return EXIT_OK


def _retention_days(days: float) -> float:
    if days < 0:
        raise ParameterError(f"--retention-days must be 0 (keep forever) or more, got {days:g}")
    return days


def _data_bytes(gb: float | None) -> int | None:
    """`--max-data-gb` in bytes (None: no bound)."""
    if gb is None:
        return None
    nbytes = int(gb * 1024**3)
    if nbytes < 1:
        hint = "leave it out for no bound"
        raise ParameterError(f"--max-data-gb must be more than 0 ({hint}), got {gb:g}")
    return nbytes


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out))
    return EXIT_OK


def cmd_augment(args: argparse.Namespace) -> int:
    from .augment import AugmentOptions, parse_prompt_map, parse_reference_map, run_augment

    options = AugmentOptions(
        prompts=tuple(args.prompt),
        prompt_field=args.prompt_field,
        prompt_map=parse_prompt_map(args.prompt_map),
        reference_map=parse_reference_map(args.reference_map),
        reference_weight=(
            AugmentOptions.reference_weight
            if args.reference_weight is None
            else args.reference_weight
        ),
        variants=args.variants,
        chip=args.chip,
        preset=args.preset,
        clip=args.clip,
        seed=args.seed,
        layer=args.layer,
        rgb_bands=parse_band_list(args.rgb_bands) if args.rgb_bands else None,
        device=args.device,
    )
    log = (
        (lambda line: None)
        if args.quiet
        else (lambda line: print(f"rs-edit: {line}", file=sys.stderr))
    )
    result = run_augment(
        args.raster,
        args.polygons,
        args.output,
        options,
        limit=args.limit,
        quiet=args.quiet,
        log=log,
        remote=_remote_options(args),
    )
    log(f"{result.made} samples made, {result.skipped} already there, {result.total} in all")
    print(result.manifest)
    return EXIT_OK


def _remote_options(args: argparse.Namespace):
    """`augment --server URL [--token T] [--parallel N]`, or None (edit in this process)."""
    from .augment_remote import RemoteOptions

    if args.server is None:
        if args.token is not None or args.parallel is not None:
            raise ParameterError("--token and --parallel apply with --server only")
        return None
    token = args.token or os.environ.get("RS_EDIT_TOKEN") or None
    parallel = RemoteOptions.parallel if args.parallel is None else args.parallel
    return RemoteOptions(args.server, token=token, parallel=parallel).validate()


def cmd_bench(args: argparse.Namespace) -> int:
    from .training_speed import print_result, run_bench

    if args.steps is not None and args.steps < 2:
        raise ParameterError("--steps must be at least 2 (one warm-up step is not timed)")
    log = lambda line: print(line, file=sys.stderr)  # noqa: E731 - progress to stderr
    print_result(
        run_bench(
            args.image,
            args.preset,
            args.device,
            args.steps,
            size=args.size,
            seed=args.seed,
            baseline=args.baseline,
            log=log,
            png=args.png,
        )
    )
    return EXIT_OK


_COMMANDS = {
    "edit": cmd_edit,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "augment": cmd_augment,
}

if __name__ == "__main__":
    sys.exit(main())
