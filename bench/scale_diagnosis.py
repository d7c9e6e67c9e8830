"""Where a trained tile model loses quality: sampled from scratch, or from the TRUE image at a
coarser scale, so that each scale's share of the SWD ratio shows (docs/BENCHMARKS.md).

    .venv/bin/python -m bench.scale_diagnosis [--preset fast] [--set blur_augment=0] [--size 128]

Trains the preset (with `--set FIELD=VALUE` overrides, values as JSON) on a centre crop of the
image, then prints the SWD ratio and its levels for: samples through all scales; samples started
from the true image at scale k (k = 0 .. n-2); the coarsest scale alone, upsampled; and, for
reference, true coarse images upsampled without any model. Two samples per row, seed 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rs_edit.bench import load_tile
from rs_edit.engine.device import autocast, use_bf16
from rs_edit.engine.presets import get_preset
from rs_edit.engine.pyramid import upsample
from rs_edit.engine.quality import combine_levels, level_names, swd_levels
from rs_edit.engine.train import Trainer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagery"
DEFAULT_IMAGE = SHARED / "keras-rs-retrieval__forest03.tif"
SAMPLES = 2


def parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set wants FIELD=VALUE, got {item!r}")
        out[key] = json.loads(value)
    return out


def row(name: str, images: torch.Tensor, source: torch.Tensor) -> str:
    levels = swd_levels(images.float(), source)
    named = ", ".join(
        f"{n} {v:.2f}" for n, v in zip(level_names(len(levels) - 1), levels, strict=True)
    )
    return f"| {name} | {combine_levels(levels):.2f} | {named} |"


@torch.no_grad()
def diagnose(trainer: Trainer, source: torch.Tensor) -> list[str]:
    device = trainer.device
    net = trainer.model().net.eval()
    diffusion, sizes = trainer.diffusion, list(trainer.spec.sizes)
    channels, finest = source.shape[0], sizes[-1]

    def sample(upto: int, start=None, start_scale: int = 0) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(0)
        with autocast(device, use_bf16(device)):
            return diffusion.sample(
                net, sizes[: upto + 1], batch=SAMPLES, channels=channels,
                generator=generator, start=start, start_scale=start_scale,
            )  # fmt: skip

    truth = trainer.clean
    rows = [row("all scales", sample(len(sizes) - 1), source)]
    for k in range(len(sizes) - 1):
        start = truth[k].expand(SAMPLES, -1, -1, -1)
        rows.append(row(f"from the true scale {k}", sample(len(sizes) - 1, start, k + 1), source))
    rows.append(row("scale 0 alone, upsampled", upsample(sample(0).float(), finest), source))
    for k in sorted({0, len(sizes) - 2}):
        rows.append(row(f"true scale {k} upsampled (no model)", upsample(truth[k], finest), source))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=str(DEFAULT_IMAGE))
    parser.add_argument("--size", type=int, default=128, help="centre crop (px)")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    preset = dataclasses.replace(get_preset(args.preset), **parse_overrides(args.set))
    image = load_tile(args.image, args.size)
    trainer = Trainer(image, preset, device=torch.device(args.device), seed=0)
    started = time.perf_counter()
    for _ in range(preset.steps):
        trainer.step()
    print(
        f"{preset.name} {args.set}: {preset.steps} steps in {time.perf_counter() - started:.0f} s"
    )
    print("| sampled | SWD ratio | levels |\n|---|---|---|")
    source = torch.from_numpy(image).to(trainer.device)
    print("\n".join(diagnose(trainer, source)))


if __name__ == "__main__":
    main()
