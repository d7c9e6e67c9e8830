"""Checking an analyst's CLIP checkpoint (rs_edit/guidance/weights.py): the entry the QGIS plugin
runs with the backend's Python accepts a checkpoint that loads into the architecture its file
name names and refuses anything else with a message for people, as one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rs_edit.errors import ParameterError
from rs_edit.guidance.clip import TINY_ARCH, _build
from rs_edit.guidance.weights import check_weights, main, remoteclip_name


def tiny_checkpoint(path):
    model, _tokenizer = _build(TINY_ARCH)
    torch.save(model.state_dict(), path)
    return path


def run_entry(path) -> tuple[int, dict]:
    done = subprocess.run(  # noqa: S603 - this interpreter, our module
        [sys.executable, "-m", "rs_edit.guidance.weights", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, done.stdout + done.stderr
    return done.returncode, json.loads(lines[0])


def test_the_entry_accepts_a_checkpoint_of_the_named_architecture(tmp_path):
    path = tiny_checkpoint(tmp_path / f"finetuned-{TINY_ARCH}.pt")
    code, answer = run_entry(path)
    assert code == 0
    assert answer == {"ok": True, "arch": TINY_ARCH, "name": None, "path": str(path.resolve())}


def test_the_entry_refuses_a_garbage_file_clearly(tmp_path):
    garbage = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    code, answer = run_entry(garbage)
    assert code == 1 and answer["ok"] is False and answer["arch"] is None
    assert answer["error"].startswith("cannot read CLIP checkpoint")
    assert "weights_only" not in answer["error"]  # never advise unsafe unpickling


def test_refusals_say_why(tmp_path, capsys):
    with pytest.raises(ParameterError, match="not found"):
        check_weights(tmp_path / "missing.pt")
    anonymous = tiny_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(ParameterError, match="cannot tell the CLIP architecture"):
        check_weights(anonymous)
    # The file name says ViT-B-32, the tensors are another model's.
    wrong = tmp_path / "RemoteCLIP-ViT-B-32.pt"
    wrong.write_bytes(anonymous.read_bytes())
    with pytest.raises(ParameterError, match="does not fit architecture ViT-B-32"):
        check_weights(wrong)
    assert main([]) == 2 and "usage" in json.loads(capsys.readouterr().out)["error"]


def test_remoteclip_names():
    assert remoteclip_name("ViT-B-32") == "RemoteCLIP-ViT-B-32"
    assert remoteclip_name("RN50") == "RemoteCLIP-RN50"
    assert remoteclip_name("ViT-L-14") == "RemoteCLIP-ViT-L-14"
    assert remoteclip_name(TINY_ARCH) is None and remoteclip_name("ViT-B-16") is None
