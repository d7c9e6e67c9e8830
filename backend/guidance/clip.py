"""Which CLIP models rs-edit knows, and validation of the user's choice.

Loading the models arrives with the editing issue; the names and checks are fixed now so that the
CLI and the service refuse a bad `--clip` at once.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ParameterError

TINY_RANDOM = "tiny-random"
REMOTECLIP_MODELS = ("RemoteCLIP-RN50", "RemoteCLIP-ViT-B-32", "RemoteCLIP-ViT-L-14")
DEFAULT_CLIP = "RemoteCLIP-ViT-B-32"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def check_clip_spec(spec: str) -> str:
    """Accept a known name, an open_clip model name, or `[MODEL=]PATH` to a checkpoint file."""
    spec = (spec or "").strip()
    if not spec:
        raise ParameterError("CLIP model name is empty")
    if spec == TINY_RANDOM or spec in REMOTECLIP_MODELS:
        return spec
    path = spec.split("=", 1)[1] if "=" in spec else spec
    if "/" in path or "\\" in path or path.lower().endswith(CHECKPOINT_SUFFIXES):
        if not Path(path).expanduser().is_file():
            raise ParameterError(f"CLIP checkpoint not found: {path}")
        return spec
    if not spec.replace("-", "").replace("_", "").replace("@", "").isalnum():
        raise ParameterError(f"unknown CLIP model {spec!r}")
    return spec
