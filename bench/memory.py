"""Peak memory of `rs-edit edit` per window size and preset, against `rs_edit.memory`'s estimate.

Each edit runs in a child process (`rs-edit edit ... --guidance none --clip tiny-random`, no ROI:
the whole synthetic scene is the window, the worst case for a window of that size) and its peak
resident memory is read from `os.wait4`. The table compares it with `estimate_mb`, the estimate
the service and the CLI refuse jobs by; the estimate must never be below the measurement.

    .venv/bin/python bench/memory.py                      # 128, 256, 512, 1024 px; tiny, fast
    .venv/bin/python bench/memory.py --sizes 256 1536 --presets tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make `backend` importable
    sys.path.insert(0, str(REPO))

from bench.realism import run_cli  # noqa: E402  (the same child-process measurement)
from rs_edit.memory import estimate_mb  # noqa: E402
from rs_edit.scene import make_scene, write_scene  # noqa: E402


def measure(size: int, preset: str, folder: Path, seed: int = 0) -> dict:
    image = folder / f"scene_{size}.tif"
    if not image.exists():
        write_scene(make_scene(size, seed=seed), image)
    out = folder / f"edit_{size}_{preset}.tif"
    seconds, peak, _ = run_cli(
        ["edit", str(image), "--prompt", "dense forest", "-o", str(out), "--preset", preset]
        + ["--guidance", "none", "--clip", "tiny-random", "--device", "cpu", "--quiet"]
        + ["--no-cache", "--seed", str(seed), "--memory-budget", "1000000"]
    )
    estimate = estimate_mb([(size, size)], bands=3, preset=preset, guidance="none")
    return {"size": size, "preset": preset, "seconds": seconds, "peak": peak, "estimate": estimate}


def table(rows: list[dict]) -> str:
    lines = [
        "| window px | preset | seconds | peak MB | estimate MB |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        flag = "" if r["estimate"] >= r["peak"] else " (UNDER)"
        lines.append(
            f"| {r['size']}x{r['size']} | {r['preset']} | {r['seconds']:.1f} | {r['peak']} | "
            f"{r['estimate']}{flag} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--presets", nargs="+", default=["tiny", "fast"])
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rs-edit-memory-") as tmp:
        for size in args.sizes:
            for preset in args.presets:
                row = measure(size, preset, Path(tmp))
                rows.append(row)
                print(
                    f"{size} px {preset}: {row['seconds']:.1f} s, peak {row['peak']} MB, "
                    f"estimate {row['estimate']} MB",
                    file=sys.stderr,
                    flush=True,
                )
    print(table(rows))
    under = [r for r in rows if r["estimate"] < r["peak"]]
    return 1 if under else 0


if __name__ == "__main__":
    sys.exit(main())
