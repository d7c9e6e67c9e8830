"""How long an edit takes on this server, per preset, for the health answer (`estimates`).

An estimate is a straight line in the area's size: `seconds_fixed` (start-up, loading CLIP,
training a network where the preset trains one: none of it grows with the area) plus
`seconds_per_megapixel` times the megapixels of the area sent. A client computes
`seconds_fixed + seconds_per_megapixel * width * height / 1e6` for the area it is about to send.

Where the figures come from (`source`):
- "built-in": measured (or derived from measurements) on a 2-core CPU, below; none for a GPU
  (no GPU figure has been measured yet: docs/BENCHMARKS.md, "GPU"), so a GPU server says
  nothing until it has history.
- "history": this server's own recent succeeded jobs of the preset (`job_seconds` of their
  report, the size of their input). With built-in figures, the line is scaled by the median
  ratio of the jobs' real times to what the line predicted for them (a server twice as slow as
  the 2-core reference doubles both terms); without, it is the median seconds per megapixel.
  Jobs that reused a cached model (`model_cached`), and jobs of a preset that trains a
  network that did not train one (an example switches the layout to the patch sampler: the
  report's `coarse`), skipped training and are not counted.

Nothing here runs an edit or loads a model; the store is read once per call (a few rows).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from ..engine.presets import AUTO, PRESET_NAMES, PRESETS, resolve_preset

HISTORY_JOBS = 100  # the most recent succeeded jobs looked at
HISTORY_PER_PRESET = 20  # of which at most this many per preset count


@dataclass(frozen=True)
class Line:
    """seconds = fixed + per_megapixel * megapixels."""

    fixed: float
    per_megapixel: float

    def seconds(self, megapixels: float) -> float:
        return self.fixed + self.per_megapixel * megapixels


# Built-in figures for a 2-core CPU (no GPU), per concrete preset.
# - tiny: measured about 8 s of start-up (CLIP, prompt ensemble) plus about 1 s per 100x100 px
#   window (0.01 MP): 100 s per megapixel.
# - fast (what auto picks on a CPU): measured 7.8-27.6 s per 256x256 window (0.066 MP; the 18
#   edits of `python -m bench.realism --seed 0`, 1 and 2, the realism guard's redraws making the
#   spread), median 11.2 s: 5 s of start-up plus 6.2 s / 0.066 MP = 95 s per megapixel.
# - balanced, quality, reference train a diffusion network before they edit, for
#   `Preset.steps` optimizer steps (engine/presets.py: 4000, 12 000, 120 000); the training does
#   not grow with the area (it learns the coarse scale, or for reference a <= 50 000 px image).
#   balanced: a real CPU run did 333 of its 4000 steps in 15 min (2.7 s per step, issue 16):
#   4000 x 2.7 s = 10 800 s, plus guided fine-tuning and loading, about 11 000 s (3 h).
#   quality: the same step at width 160 instead of 96 (convolutions cost the width squared:
#   x 2.8) on a coarse side of 96 px instead of 80 (x 1.44): about 10.8 s per step, x 12 000
#   steps = about 130 000 s (1.5 days).
#   reference: docs/BENCHMARKS.md measured 18.6 s per step (mean over the scales, the published
#   configuration on this CPU), x 120 000 steps = about 2 200 000 s (weeks).
#   Their detail stage searches more patches (engine/presets.py: WIDE): about twice fast's
#   per-megapixel time, 300 s per megapixel.
BUILT_IN: dict[str, dict[str, Line]] = {
    "cpu": {
        "tiny": Line(8.0, 100.0),
        "fast": Line(5.0, 95.0),
        "balanced": Line(11_000.0, 300.0),
        "quality": Line(130_000.0, 300.0),
        "reference": Line(2_200_000.0, 300.0),
    },
}


def built_in(device_type: str, preset: str) -> Line | None:
    """The built-in figures of a concrete preset on a device type, None where none exist."""
    return BUILT_IN.get(device_type, {}).get(preset)


def job_sample(job) -> tuple[str, float, float] | None:
    """(preset, megapixels, seconds) of a succeeded job (`jobs.Job`) that can teach an
    estimate, else None (no time or size recorded, or training skipped: a cached model, or
    no network made the layout of a preset that trains one)."""
    report = job.report if isinstance(job.report, dict) else {}
    inputs = job.inputs if isinstance(job.inputs, dict) else {}
    options = job.options if isinstance(job.options, dict) else {}
    preset = report.get("preset") or options.get("preset")
    seconds = report.get("job_seconds")
    try:
        seconds = float(seconds)
        megapixels = int(inputs["width"]) * int(inputs["height"]) / 1e6
    except (KeyError, TypeError, ValueError):
        return None
    if preset not in PRESETS or seconds <= 0 or megapixels <= 0 or report.get("model_cached"):
        return None
    trains = PRESETS[preset].coarse == "network"
    if trains and report.get("coarse", "network") != "network":
        return None
    return str(preset), megapixels, seconds


def from_history(samples: list[tuple[float, float]], default: Line | None) -> Line | None:
    """A line from (megapixels, seconds) of real jobs (see the module's docstring)."""
    if not samples:
        return None
    if default is not None:
        ratio = statistics.median(s / default.seconds(mp) for mp, s in samples)
        return Line(default.fixed * ratio, default.per_megapixel * ratio)
    return Line(0.0, statistics.median(s / mp for mp, s in samples))


def history(store, limit: int = HISTORY_JOBS) -> dict[str, list[tuple[float, float]]]:
    """Per preset, (megapixels, seconds) of the store's most recent succeeded jobs, newest
    first, at most HISTORY_PER_PRESET each."""
    per_preset: dict[str, list[tuple[float, float]]] = {}
    for job in store.list(limit=limit, status="succeeded"):
        sample = job_sample(job)
        if sample is None:
            continue
        preset, megapixels, seconds = sample
        found = per_preset.setdefault(preset, [])
        if len(found) < HISTORY_PER_PRESET:
            found.append((megapixels, seconds))
    return per_preset


def _entry(line: Line, source: str, jobs: int) -> dict:
    return {
        "seconds_fixed": round(line.fixed, 1),
        "seconds_per_megapixel": round(line.per_megapixel, 1),
        "source": source,
        "jobs": jobs,
    }


def estimates(device_type: str, store=None, names=None) -> dict:
    """Per preset of `names` (default: every preset; `auto`: the preset it runs here), its
    estimate as a dict (`seconds_fixed`, `seconds_per_megapixel`, `source`: "history" or
    "built-in", `jobs`: how many jobs the history used), or None when neither figures nor
    history exist."""
    past = history(store) if store is not None else {}
    names = [n for n in (names or PRESET_NAMES) if n != AUTO]
    out: dict[str, dict | None] = {}
    for name in names:
        default = built_in(device_type, name)
        samples = past.get(name, [])
        learned = from_history(samples, default)
        if learned is not None:
            out[name] = _entry(learned, "history", len(samples))
        elif default is not None:
            out[name] = _entry(default, "built-in", 0)
        else:
            out[name] = None
    chosen, _ = resolve_preset(AUTO, device_type)
    auto = out[chosen.name] if chosen.name in out else estimates(device_type, store)[chosen.name]
    return {AUTO: auto, **out}


def estimate_seconds(entry: dict | None, width: int, height: int) -> float | None:
    """Seconds an edit of a `width` x `height` px area takes by an `estimates` entry."""
    if not entry:
        return None
    return entry["seconds_fixed"] + entry["seconds_per_megapixel"] * width * height / 1e6
