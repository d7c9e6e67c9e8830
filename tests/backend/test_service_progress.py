"""A job's progress over several variants: one real edit (preset tiny, the random tiny CLIP,
`variants=3`) through the job API, with every progress value recorded at three levels:

- what the engine reports (every call of the progress callback, before any throttling),
- what the service writes to the job record (`JobStore.update_progress`, raw percents),
- what a client sees (the job's SSE stream).

It used to stall: the engine named the stage "sample i/n", which is not in the service's stage
bands (`worker.STAGE_BANDS`), so each variant ran 3 -> 95 % in the default band: the job (whose
stored progress only rises) sat at 90 % through the first variant and at 95 % through the rest.
Now "sample", "detail" and "guard" are single stages whose steps run on across variants (as
`rs_edit.progress.share` does)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import pytest
from service_helpers import (
    REAL_EDITOR_MARKS,
    ThreadServer,
    check_result,
    rgb_tile,
    roi_polygon,
    sse_events,
    submit,
)

from rs_edit.progress import share
from rs_edit.service import worker
from rs_edit.service.config import ServiceConfig

VARIANTS = 3
FIELDS = {
    "preset": "tiny",
    "clip": "tiny-random",
    "seed": 5,
    "guidance": "finetune",
    "variants": VARIANTS,
}
# The stages that run once per variant, in the order the editor runs them.
VARIANT_STAGES = ("sample", "detail", "guard")


# --- share: cheap ------------------------------------------------------------------------------


def test_share_runs_steps_on_across_parts():
    calls = []

    def progress(stage, step, total, loss=None):
        calls.append((stage, step, total, loss))

    for i in range(3):
        part = share(progress, i, 3)
        for step in range(11):  # 0..10 of 10
            part("sample", step, 10, 0.5)
    assert {(c[0], c[2], c[3]) for c in calls} == {("sample", 30, 0.5)}
    steps = [c[1] for c in calls]
    # Part i covers 10 i .. 10 (i + 1): where one part ends, the next begins.
    assert steps == [10 * i + step for i in range(3) for step in range(11)]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 30
    # In the service's bands: from the bottom of the stage's band to its top, never back.
    percents = [worker.percent(*c[:3]) for c in calls]
    assert percents == sorted(percents)
    assert percents[0] == worker.STAGE_BANDS["sample"][0]
    assert percents[-1] == worker.STAGE_BANDS["sample"][1]
    # One part: nothing to share, the very same callback.
    assert share(progress, 0, 1) is progress


def test_every_stage_is_named_once_and_has_a_band():
    """The stages are one enumeration (`progress.Stage`), each with its band, and travel as the
    plain strings a client reads."""
    import json

    from rs_edit.progress import SYNTHESIS_SHARES, Stage

    assert set(worker.STAGE_BANDS) == set(Stage)
    assert set(SYNTHESIS_SHARES) <= set(Stage)
    assert json.loads(json.dumps({"stage": Stage.TRAIN})) == {"stage": "train"}
    assert worker.percent("train", 1, 2) == worker.percent(Stage.TRAIN, 1, 2)
    # Log lines and the CLI's bars print the bare value, on every Python the package supports.
    assert str(Stage.TRAIN) == f"{Stage.TRAIN}" == f"{Stage.TRAIN:>5}" == "train"


def test_the_package_needs_nothing_newer_than_its_minimum_python():
    """`requires-python` says 3.10: nothing in the package may import what 3.10 lacks."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    assert 'requires-python = ">=3.10"' in (root / "pyproject.toml").read_text()
    newer = ("StrEnum", "tomllib", "ExceptionGroup", "TaskGroup", "Self", "LiteralString")
    for path in (root / "backend" / "rs_edit").rglob("*.py"):
        text = path.read_text()
        for name in newer:
            assert f"import {name}" not in text and f", {name}" not in text, (path, name)


# --- a real job with three variants: slow ------------------------------------------------------


@dataclass
class Run:
    job: dict
    events: list[dict]  # the SSE `status` events
    engine: list[tuple[str, int, int]] = field(default_factory=list)  # (stage, step, total)
    recorded: list[tuple[str, float]] = field(default_factory=list)  # (stage, raw percent)
    results: list[Path] = field(default_factory=list)
    tile: Path | None = None
    roi: dict | None = None


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    from rs_edit.edit import run_edit

    engine: list[tuple[str, int, int]] = []
    recorded: list[tuple[str, float]] = []

    def edit_fn(*args, progress, **kwargs):
        """The real edit; every progress call is noted before the service sees it."""

        def spy(stage, step, total, loss=None):
            engine.append((stage, int(step), int(total)))
            progress(stage, step, total, loss)

        return run_edit(*args, progress=spy, **kwargs)

    tmp = tmp_path_factory.mktemp("progress")
    tile = rgb_tile(tmp / "tile.tif", size=80, seed=3)
    roi = roi_polygon(24, 24, 56, 52)
    config = ServiceConfig(device="cpu")
    with ThreadServer(tmp / "data", config, edit_fn=edit_fn) as srv, srv.client() as c:
        store = srv.app.state.service.store
        update_progress = store.update_progress

        def record(job_id, progress, stage, message):
            recorded.append((stage, float(progress)))
            update_progress(job_id, progress, stage, message)

        store.update_progress = record  # the service's writes of a job's progress
        r = submit(c, tile, "flooded fields", roi=roi, **FIELDS)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        events = sse_events(c, job_id, timeout=300)
        job = c.get(f"/v1/jobs/{job_id}").json()
        results = []
        if job["status"] == "succeeded":
            for v in range(1, VARIANTS + 1):
                got = c.get(f"/v1/jobs/{job_id}/result", params={"variant": v})
                assert got.status_code == 200, got.text
                results.append(tmp / f"result_v{v}.tif")
                results[-1].write_bytes(got.content)
    return Run(job, events, engine, recorded, results, tile, roi)


def _before_write(seq):
    """The items before the first "write" stage (the edit proper; writing comes after)."""
    out = []
    for item in seq:
        if item[0] == "write":
            break
        out.append(item)
    return out


def _running_max(values):
    out, top = [], float("-inf")
    for v in values:
        top = max(top, v)
        out.append(top)
    return out


class TestThreeVariants:
    pytestmark = REAL_EDITOR_MARKS

    def test_three_variants_succeed(self, run: Run):
        assert run.job["status"] == "succeeded", run.job["message"]
        assert run.events[-1]["status"] == "succeeded"
        assert run.events[-1]["progress"] == 100
        base = f"/v1/jobs/{run.job['id']}/result"
        assert run.job["results"] == [f"{base}?variant={v}" for v in range(1, VARIANTS + 1)]
        assert len(run.results) == VARIANTS
        for path in run.results:
            check_result(path, run.tile, run.roi)

    def test_stages_are_single_known_stages(self, run: Run):
        """Every stage the engine reports has its own band (none falls in the default band), and
        the per-variant work is one "sample", one "detail", one "guard" stage, not "sample i/n"."""
        engine_stages = [stage for stage, _ in groupby(s for s, _, _ in run.engine)]
        unknown = sorted({s for s in engine_stages if s not in worker.STAGE_BANDS})
        assert not unknown, f"stages outside STAGE_BANDS: {unknown}"
        assert not [s for s in engine_stages if "/" in s or s[-1:].isdigit()]
        for stage in VARIANT_STAGES:
            assert stage in engine_stages
        # Each per-variant stage runs once, in order, between the guidance and writing.
        edit = [s for s in engine_stages if s in VARIANT_STAGES]
        assert edit == list(VARIANT_STAGES), engine_stages
        assert engine_stages.index("finetune") < engine_stages.index("sample")
        assert engine_stages.index("guard") < engine_stages.index("write")
        # The service and the client saw the same names.
        assert {s for s, _ in run.recorded} <= set(worker.STAGE_BANDS)
        assert {"sample", "detail"} <= {s for s, _ in run.recorded}
        assert {e["stage"] for e in run.events} <= set(worker.STAGE_BANDS) | {"", "done"}

    def test_variant_stage_steps_run_on(self, run: Run):
        """Within "sample" and "detail" the steps of all variants form one run 0..total: one total,
        never going back, ending at the total."""
        for stage in ("sample", "detail"):
            calls = [(step, total) for s, step, total in run.engine if s == stage]
            totals = {total for _, total in calls}
            assert len(totals) == 1, (stage, totals)
            total = totals.pop()
            assert total > 0 and total % VARIANTS == 0, (stage, total)
            steps = [step for step, _ in calls]
            assert steps == sorted(steps), (stage, steps)
            assert steps[0] <= total // VARIANTS and steps[-1] == total, (stage, steps)
            # Every variant's part was reported: the steps pass through each part's span.
            part = total // VARIANTS
            for i in range(VARIANTS):
                assert any(i * part < s <= (i + 1) * part for s in steps), (stage, i, steps)

    def test_progress_never_goes_back(self, run: Run):
        # What a client sees.
        shown = [e["progress"] for e in run.events]
        assert shown == sorted(shown), shown
        # What the engine reports, put in the service's bands, up to writing: raw, before the
        # store's MAX could hide a step back.
        raw = [worker.percent(s, step, total) for s, step, total in _before_write(run.engine)]
        assert raw, run.engine
        back = [(i, a, b) for i, (a, b) in enumerate(zip(raw, raw[1:], strict=False)) if b < a]
        assert not back, f"progress went back at {back[:5]}"
        # What the service wrote, likewise.
        written = [p for _, p in _before_write(run.recorded)]
        assert written == sorted(written), written

    def test_progress_advances_through_the_variant_stages(self, run: Run):
        """No stall: from the guidance on, each stage ends higher than the one before it, in the
        job's stored progress (the store keeps the maximum, as a client sees it), and the percents
        shown during sample/detail/guard take several values across their bands."""
        stored = _running_max(p for _, p in run.recorded)
        runs = []  # (stage, stored progress at its last write), per consecutive run of one stage
        for (stage, _), value in zip(run.recorded, stored, strict=True):
            if runs and runs[-1][0] == stage:
                runs[-1] = (stage, value)
            else:
                runs.append((stage, value))
        names = [s for s, _ in runs]
        assert "finetune" in names and "write" in names, names
        tail = runs[names.index("finetune") : names.index("write") + 1]
        # Whatever the stages are called: each one moves the job on (a stage that ends where
        # the one before ended ran without moving the progress).
        ends = [v for _, v in tail]
        assert all(b > a for a, b in zip(ends, ends[1:], strict=False)), tail
        tail = tail[:-1]
        assert [s for s, _ in tail] == ["finetune", *VARIANT_STAGES], names
        # Each variant stage ends at the top of its band.
        for stage, end in tail[1:]:
            assert end == pytest.approx(worker.STAGE_BANDS[stage][1]), (stage, end)
        # What a client would see (whole percents) while the variants are made.
        lo, hi = worker.STAGE_BANDS["sample"][0], worker.STAGE_BANDS["guard"][1]
        during = [
            round(v)
            for (stage, _), v in zip(run.recorded, stored, strict=True)
            if stage in VARIANT_STAGES
        ]
        assert all(lo <= v <= hi for v in during), during
        assert len(set(during)) >= 3, during
        # The sample stage itself moves the progress, from the bottom of its band to the top.
        sample = [p for s, p in run.recorded if s == "sample"]
        band = worker.STAGE_BANDS["sample"]
        assert min(sample) < band[0] + 0.5 * (band[1] - band[0]) and max(sample) == band[1], sample

    def test_writing_the_variants_never_goes_back(self, run: Run):
        """Writing each variant's file used to report "write" 0/1, 1/1 again (97, 99, 97, 99,
        97, 99 %): the variants now share the write stage too."""
        raw = [worker.percent(s, step, total) for s, step, total in run.engine]
        assert raw == sorted(raw), [(s, step, total) for s, step, total in run.engine][-8:]
