"""Check a CLIP checkpoint an analyst has, by loading it into the architecture its file name
names (`RemoteCLIP-ViT-B-32.pt` -> ViT-B-32), with `clip.py`'s own reading and loading.

`python -m rs_edit.guidance.weights PATH` prints one JSON line and exits 0 when the file
loads, 1 when it does not (2: no PATH):

    {"ok": true, "arch": "ViT-B-32", "name": "RemoteCLIP-ViT-B-32", "path": "/abs/file.pt"}
    {"ok": false, "arch": null, "name": null, "path": "...", "error": "cannot read ..."}

`name` is the RemoteCLIP model the file can be registered as (saved as `<name>.pt` in
`$RS_EDIT_CLIP_DIR`, `find_local_weights` finds it and `/v1/health` lists it), or null for
another architecture (usable as `--clip ARCH=PATH`). The QGIS plugin runs this with the
backend's own Python, so that torch never enters the QGIS process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ParameterError
from .clip import (
    REMOTECLIP_MODELS,
    REMOTECLIP_PREFIX,
    _build,
    _load_into,
    _parse_spec,
    read_state_dict,
)


def remoteclip_name(arch: str) -> str | None:
    """The RemoteCLIP model of an open_clip architecture (ViT-B-32 -> RemoteCLIP-ViT-B-32)."""
    name = REMOTECLIP_PREFIX + arch
    return name if name in REMOTECLIP_MODELS else None


def check_weights(path: str | Path) -> dict:
    """Load the checkpoint at `path` into the architecture its file name names; raises
    ParameterError (with a message for people) when it cannot. Returns {ok, arch, name, path}."""
    text = str(path)
    if not Path(text).expanduser().is_file():
        raise ParameterError(f"CLIP checkpoint not found: {text}")
    spec = _parse_spec(text)  # a bare path: the architecture from the file name
    if spec.path is None:  # e.g. a file literally named "tiny-random"
        raise ParameterError(f"{text} is not a checkpoint path")
    state = read_state_dict(spec.path)
    model, _tokenizer = _build(spec.arch)
    _load_into(model, state, spec.path, spec.arch)
    name = remoteclip_name(spec.arch)
    return {"ok": True, "arch": spec.arch, "name": name, "path": str(spec.path)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(json.dumps({"ok": False, "arch": None, "name": None, "path": None,
                          "error": "usage: python -m rs_edit.guidance.weights PATH"}))  # fmt: skip
        return 2
    try:
        answer = check_weights(args[0])
    except ParameterError as exc:
        answer = {"ok": False, "arch": None, "name": None, "path": args[0], "error": str(exc)}
    except Exception as exc:  # a bug or a broken install: still one JSON line
        error = f"{type(exc).__name__}: {exc}"
        answer = {"ok": False, "arch": None, "name": None, "path": args[0], "error": error}
    print(json.dumps(answer), flush=True)
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
