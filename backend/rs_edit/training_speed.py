"""`rs-edit bench`: training speed, time to quality and peak memory for one image and preset.

The last line printed is one JSON object (the contract's fields, and a few more). Timing starts
after a warm-up step, so one-off costs (allocations, kernel selection, compilation) are excluded.
Without --steps, training runs until the samples' SWD ratio (`engine.quality.swd_ratio`: patch
SWD per pyramid level in units of the source's own half-to-half SWD) is within `QUALITY_BAR`, or
until the preset's step budget is spent.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .bands import BandScaling
from .engine.device import pick_device
from .engine.presets import resolve_preset
from .engine.quality import combine_levels, level_names, patch_swd, self_swd, swd_levels
from .engine.train import Trainer
from .errors import ParameterError
from .files import atomic_path
from .raster import inspect_raster, read_tile

QUALITY_BAR = 1.25
EVAL_SAMPLES = 2


def load_tile(path: str | Path, size: int | None = None) -> np.ndarray:
    """The image (or a centred size x size crop of it) in the model's range."""
    info = inspect_raster(path)
    tile = read_tile(info)
    bands = list(info.data_bands)
    image = BandScaling.fit(tile.data[bands], tile.valid).forward(tile.data[bands], tile.valid)
    if size:
        if size > min(info.height, info.width):
            raise ParameterError(
                f"--size {size} is larger than the image ({info.width}x{info.height})"
            )
        r0, c0 = (info.height - size) // 2, (info.width - size) // 2
        image = image[:, r0 : r0 + size, c0 : c0 + size]
    return np.ascontiguousarray(image)


def run_bench(
    image_path: str,
    preset_name: str,
    device_name: str,
    steps: int | None = None,
    *,
    size: int | None = None,
    seed: int = 0,
    eval_every: int | None = None,
    baseline: bool = False,
    log=print,
    png: str | Path | None = None,
) -> dict:
    device = pick_device(device_name)
    preset, _ = resolve_preset(preset_name, device.type)
    image = load_tile(image_path, size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(
        image,
        preset,
        device=device,
        seed=seed,
        precision="fp32" if baseline else "auto",
        channels_last_layout=not baseline,
    )
    source = torch.from_numpy(image).to(device)
    swd_self = self_swd(source)

    started = time.perf_counter()
    trainer.step()  # warm-up: not timed
    _sync(device)
    warmup_seconds = time.perf_counter() - started

    budget = steps or preset.steps
    eval_every = eval_every or max(50, budget // 10)
    timed_seconds, levels, reached_at = 0.0, None, None
    for step in range(2, budget + 1):
        t0 = time.perf_counter()
        trainer.step()
        _sync(device)
        timed_seconds += time.perf_counter() - t0
        if steps is None and (step % eval_every == 0 or step == budget):
            samples = _samples(trainer)
            levels = swd_levels(samples, source)
            ratio = combine_levels(levels)
            log(
                f"step {step}: SWD ratio {ratio:.3f} (bar {QUALITY_BAR}; by level "
                + ", ".join(f"{r:.2f}" for r in levels)
                + f"), {timed_seconds:.1f} s"
            )
            if ratio <= QUALITY_BAR:
                reached_at = step
                break
    trained = trainer.step_count
    if levels is None:
        samples = _samples(trainer)
        levels = swd_levels(samples, source)
    swd = patch_swd(samples, source)
    if png is not None:
        samples_png(source, samples, png)
    per_scale = _per_scale_seconds(trainer, device)  # trains a few more steps: evaluate first
    weights = trainer.scale_weights
    result = {
        "image": str(image_path),
        "size": list(image.shape[1:]),
        "bands": int(image.shape[0]),
        "preset": preset.name,
        "mode": "baseline (NCHW fp32, the published way)" if baseline else "rs-edit",
        "device": _device_label(device),
        "steps": trained,
        "sec_per_step": timed_seconds / max(1, trained - 1),
        "seconds": warmup_seconds + timed_seconds,
        "warmup_seconds": warmup_seconds,
        "swd": swd,
        "swd_self": swd_self,
        "swd_ratio": combine_levels(levels),
        "swd_levels": dict(zip(level_names(len(levels) - 1), levels, strict=True)),
        "quality_bar_reached_at_step": reached_at,
        "peak_rss_mb": peak_rss_mb(),
        "scales": [list(s) for s in trainer.spec.sizes],
        # Steps draw one scale each: the expected step time is the weighted mean of these.
        "sec_per_step_by_scale": per_scale,
        "scale_weights": weights,
        "expected_sec_per_step": sum(w * t for w, t in zip(weights, per_scale, strict=True)),
        "preset_settings": asdict(preset),
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def _per_scale_seconds(trainer: Trainer, device: torch.device) -> list[float]:
    """One timed step at each scale (each after one untimed step at that scale)."""
    seconds = []
    for s in range(trainer.spec.n_scales):
        trainer.step(scale=s)
        _sync(device)
        t0 = time.perf_counter()
        trainer.step(scale=s)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    return seconds


def _samples(trainer: Trainer) -> torch.Tensor:
    return trainer.model().sample(EVAL_SAMPLES, seed=0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu ({torch.get_num_threads()} threads)"


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM; ru_maxrss would include a forking
    parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_result(result: dict) -> None:
    print(json.dumps(result, sort_keys=True))


def samples_png(source: torch.Tensor, samples: torch.Tensor, path: str | Path) -> Path:
    """The source and the evaluated samples side by side (first three bands, model range)."""
    from PIL import Image

    panels = [source.float().cpu()] + [x.float().cpu() for x in samples]
    strip = torch.cat([p[:3] if p.shape[0] >= 3 else p[:1].expand(3, -1, -1) for p in panels], -1)
    rgb = ((strip.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(rgb).save(tmp)
    return path
