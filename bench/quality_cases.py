"""Check the quality measure on real tiles: how `swd_ratio` scores the source's own flips and
rolls (which must pass) and known degradations (pixel noise, blur, colour cast, low contrast,
noise of the right colours; which must fail).

    .venv/bin/python -m bench.quality_cases [--size 128] [IMAGE ...]

Prints one row per image and case: the ratio and its levels (colour, detail bands, low-pass).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rs_edit.bench import load_tile
from rs_edit.engine.pyramid import gaussian_blur
from rs_edit.engine.quality import level_names, swd_levels, swd_ratio

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagery"
DEFAULT_IMAGES = [f"keras-rs-retrieval__{n}.tif" for n in ("forest03", "river11", "harbor00")]


def cases(src: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mean, std = src.mean((1, 2), keepdim=True), src.std((1, 2), keepdim=True)
    tint = torch.zeros(src.shape[0], 1, 1)
    tint[0] = 0.15
    return {
        "flipped left-right": src.flip(-1),
        "rotated 90 degrees": src.rot90(1, (1, 2)),
        "rolled (37, 53) px": src.roll((37, 53), (1, 2)),
        "pixel noise, std 0.05": (src + 0.05 * torch.randn(src.shape, generator=g)).clamp(-1, 1),
        "pixel noise, std 0.1": (src + 0.1 * torch.randn(src.shape, generator=g)).clamp(-1, 1),
        "blurred, sigma 0.8 px": gaussian_blur(src[None], 0.8)[0],
        "blurred, sigma 1.5 px": gaussian_blur(src[None], 1.5)[0],
        "colour cast +0.15 (band 1)": (src + tint).clamp(-1, 1),
        "70 % contrast": mean + 0.7 * (src - mean),
        "iid noise, source colours": (mean + std * torch.randn(src.shape, generator=g)).clamp(
            -1, 1
        ),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "images", nargs="*", help="GeoTIFFs (default: three shared UC Merced tiles)"
    )
    parser.add_argument("--size", type=int, default=128, help="centre crop (px)")
    args = parser.parse_args(argv)
    images = args.images or [str(SHARED / name) for name in DEFAULT_IMAGES]
    print("| image | case | swd_ratio | levels |")
    print("|---|---|---|---|")
    for path in images:
        src = torch.from_numpy(load_tile(path, args.size))
        for case, x in cases(src).items():
            levels = swd_levels(x, src)
            named = zip(level_names(len(levels) - 1), levels, strict=True)
            row = ", ".join(f"{name} {v:.2f}" for name, v in named)
            print(f"| {Path(path).stem} | {case} | {swd_ratio(x, src):.2f} | {row} |")


if __name__ == "__main__":
    main()
