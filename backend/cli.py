"""`rs-edit`: the command line. Thin: parse, call plain functions, map errors to exit codes.

Exit codes: 0 success, 1 internal failure, 2 bad input (one line on stderr, no traceback),
3 a feature not available in this version, 130 cancelled (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import __version__
from .bands import parse_band_list
from .engine.presets import DEFAULT_PRESET, PRESETS
from .errors import CancelledError, InputError, NotAvailableError, ParameterError, RsEditError
from .guidance.clip import DEFAULT_CLIP

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_NOT_AVAILABLE, EXIT_CANCELLED = 0, 1, 2, 3, 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one clear line (the contract's bad-input rule)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


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
    edit.add_argument("--preset", default=DEFAULT_PRESET, help=f"one of: {', '.join(PRESETS)}")
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
    edit.add_argument("--rgb-bands", help="1-based bands CLIP sees as RGB, e.g. 4,3,2")
    edit.add_argument("--feather", type=int, default=2, help="feather width inside the ROI (px)")
    edit.add_argument("--dilate", type=int, default=0, help="grow the ROI by this many pixels")
    edit.add_argument("--cog", action="store_true", help="write a Cloud-Optimized GeoTIFF")
    edit.add_argument("--quiet", action="store_true", help="no progress bars")

    serve = sub.add_parser("serve", help="run the HTTP backend")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--data-dir", default=None, help="jobs and results (env RS_EDIT_DATA_DIR)")

    demo = sub.add_parser("demo", help="the main job on a generated scene, offline")
    demo.add_argument("--out", default="rs-edit-demo", help="folder for the demo's files")

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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


def _fail(code: int, line: str) -> int:
    print(f"rs-edit: {' '.join(line.split())}", file=sys.stderr)
    return code


def cmd_edit(args: argparse.Namespace) -> int:
    from .edit import EditOptions, prepare
    from .raster import check_output_path

    options = EditOptions(
        prompt=args.prompt,
        preset=args.preset,
        seed=args.seed,
        clip=args.clip,
        llm=args.llm,
        variants=args.variants,
        rgb_bands=parse_band_list(args.rgb_bands) if args.rgb_bands else None,
        dilate_px=args.dilate,
        feather_px=args.feather,
        cog=args.cog,
    ).validate()
    tile = prepare(args.input, options, roi_geojson=args.roi, mask_path=args.mask)
    check_output_path(tile.info, Path(args.output))
    raise NotAvailableError(
        f"the inputs are valid ({tile.info.width}x{tile.info.height}, {tile.info.count} bands, "
        f"ROI {int(tile.roi_mask.sum())} px), but text-guided editing is not in rs-edit "
        f"{__version__} yet; nothing was written"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .service.app import serve

    serve(host=args.host, port=args.port, data_dir=args.data_dir)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.out))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import print_result, run_bench

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
        )
    )
    return EXIT_OK


_COMMANDS = {"edit": cmd_edit, "serve": cmd_serve, "demo": cmd_demo, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
