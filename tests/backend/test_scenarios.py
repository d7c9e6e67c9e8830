"""The scenario benchmark (`bench/scenarios.py`) runs end to end on one real tile.

In process, `--preset tiny --clip tiny-random --only ship`, with the `tiny` preset cut down to a
few training and guidance steps (the full `tiny` run of one scenario takes minutes on 2 CPU
cores; this checks the wiring, not the quality). Sampling still runs all of `tiny`'s timesteps,
so it is marked slow. Skips cleanly when the shared imagery is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
from conftest import SHARED_IMAGERY

from rs_edit.engine import presets

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `bench` is a plain folder at the repository root
    sys.path.insert(0, str(REPO))

from bench import scenarios  # noqa: E402

SCENARIO = "ship"


def _image_present() -> bool:
    wanted = {s.name: s.image for s in scenarios.SCENARIOS}[SCENARIO]
    return (SHARED_IMAGERY / wanted).is_file()


@pytest.mark.slow  # 65-135 s on 2 shared CPU cores (training, guidance, sampling, twice)
@pytest.mark.skipif(not _image_present(), reason="shared imagery folder is absent or incomplete")
def test_one_scenario_writes_table_json_and_contact_sheet(tmp_path, monkeypatch, capsys):
    tiny = presets.PRESETS["tiny"]
    monkeypatch.setitem(
        presets.PRESETS,
        "tiny",
        dataclasses.replace(tiny, steps=12, guide_steps=2, coarse="network"),
    )
    out = tmp_path / "out"
    code = scenarios.main(
        [
            "--preset",
            "tiny",
            "--clip",
            "tiny-random",
            "--only",
            SCENARIO,
            "--out",
            str(out),
            "--imagery",
            str(SHARED_IMAGERY),
            "--quiet",
        ]
    )
    assert code == 0
    table = (out / "scenarios.md").read_text()
    assert table in capsys.readouterr().out
    assert "tiny-random" in table and scenarios.RANDOM_NOTE in table
    assert (out / "contact_sheet.png").stat().st_size > 0

    data = json.loads((out / "scenarios.json").read_text())
    assert data["meta"]["clip_random"] is True
    [row] = data["scenarios"]
    assert row["name"] == SCENARIO
    assert row["changed_outside"] == 0
    for run in row["runs"].values():
        assert run["changed_outside_pixels"] == 0
    assert len(row["runs"]["no_pe"]["prompts"]) == 1
    assert len(row["runs"]["pe"]["prompts"]) > 1
    assert row["runs"]["no_pe"]["model_cached"] is True  # the second run reuses the tile model
    for key in ("clip_score_input", "clip_score_pe", "clip_score_no_pe", "swd_ratio"):
        assert math.isfinite(row[key]), key
