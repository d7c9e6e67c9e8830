"""The typed edit report (issue 13): one dataclass made by the editor and the stand-in, merged
over windows by `run_edit`, and written as JSON by the service and into the result's tags."""

from __future__ import annotations

import json
import os

from rs_edit.report import EditReport


def test_combine_keeps_the_first_window_sums_seconds_and_ands_the_cache_flag():
    first = EditReport(seed=3, prompts=["a"], model_cached=True, seconds={"train": 1.0, "x": 2})
    second = EditReport(seed=9, prompts=["b"], model_cached=False, seconds={"train": 0.5})
    windows = [{"col_off": 0, "row_off": 0, "width": 8, "height": 8}] * 2
    merged = EditReport.combine([first, second], windows)
    assert (merged.seed, merged.prompts, merged.windows) == (3, ["a"], windows)
    assert merged.model_cached is False
    assert merged.seconds == {"train": 1.5, "x": 2}
    assert EditReport.combine([first, first], windows).model_cached is True


def test_the_report_is_json_and_names_its_process():
    report = EditReport(reference={"file": "ex.tif"}, realism=[0.9], realism_replaced=[1])
    data = json.loads(json.dumps(report.to_dict()))
    assert data["pid"] == os.getpid() and data["editor"] == "rs-edit"
    assert data["reference"] == {"file": "ex.tif"} and data["realism_replaced"] == [1]
    assert EditReport(**data) == report  # every field round-trips
