"""Which CLIP models rs-edit knows, how they are found and loaded, and how guidance uses them.

A CLIP is named by a spec (`--clip`):

- `tiny-random`: a tiny CLIP with fixed random weights, built offline in well under a second. It
  makes the whole pipeline testable offline; its guidance means nothing (we say so loudly).
- `RemoteCLIP-RN50`, `RemoteCLIP-ViT-B-32`, `RemoteCLIP-ViT-L-14`: remote-sensing CLIPs. Their
  weights file `RemoteCLIP-<arch>.pt` is looked up in `$RS_EDIT_CLIP_DIR`, then in
  `clip/` of rs-edit's cache folder (`$RS_EDIT_CACHE_DIR`, default `~/.cache/rs-edit`), then in
  the Hugging Face cache, then downloaded (unless offline).
- `ARCH=PATH`: any open_clip architecture with a local checkpoint, or a bare `PATH` whose file name
  ends in the architecture (`RemoteCLIP-ViT-B-32.pt`).

`check_clip_spec` only parses (cheap, for validation at the edge); `load_clip` loads and caches.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ParameterError, RandomClipWarning
from ..paths import cache_root

TINY_RANDOM = "tiny-random"
REMOTECLIP_MODELS = ("RemoteCLIP-RN50", "RemoteCLIP-ViT-B-32", "RemoteCLIP-ViT-L-14")
DEFAULT_CLIP = "RemoteCLIP-ViT-B-32"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

REMOTECLIP_REPO = "chendelong/RemoteCLIP"
CLIP_DIR_ENV = "RS_EDIT_CLIP_DIR"
REMOTECLIP_PREFIX = "RemoteCLIP-"

# The architecture behind `tiny-random`, also usable as `rs-edit-tiny=PATH` (tests save one).
TINY_ARCH = "rs-edit-tiny"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_SEED = 20240229

RANDOM_CLIP_MESSAGE = (
    "CLIP 'tiny-random' has RANDOM weights: its guidance is MEANINGLESS and edits will not follow "
    "the prompt (it exists for tests and offline demos; use a RemoteCLIP model for real edits)"
)

Log = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Specs: parsing without loading


@dataclass(frozen=True)
class _Spec:
    name: str  # canonical spec, also the ClipModel's name
    arch: str  # open_clip architecture (or TINY_ARCH)
    kind: str  # "tiny-random" | "remoteclip" | "path"
    path: Path | None = None


def _open_clip_archs() -> dict[str, str]:
    """open_clip's built-in architecture names (lower case -> name), read without importing it."""
    names = {TINY_ARCH.lower(): TINY_ARCH}
    found = importlib.util.find_spec("open_clip")
    if found is not None and found.origin:
        for cfg in (Path(found.origin).parent / "model_configs").glob("*.json"):
            names[cfg.stem.lower()] = cfg.stem
    return names


def _arch_from_filename(path: Path, archs: dict[str, str]) -> str | None:
    """The longest known architecture the file name ends with (`RemoteCLIP-ViT-B-32.pt`)."""
    stem = path.name
    for suffix in CHECKPOINT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = stem.lower()
    for key in sorted(archs, key=len, reverse=True):
        if stem == key or stem.endswith(("-" + key, "_" + key, "." + key)):
            return archs[key]
    return None


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or text.lower().endswith(CHECKPOINT_SUFFIXES)


def _parse_spec(spec: str) -> _Spec:
    spec = (spec or "").strip()
    if not spec:
        raise ParameterError("CLIP model name is empty")
    if spec.lower() == TINY_RANDOM:
        return _Spec(TINY_RANDOM, TINY_ARCH, "tiny-random")
    for name in REMOTECLIP_MODELS:
        if spec.lower() == name.lower():
            return _Spec(name, name[len(REMOTECLIP_PREFIX) :], "remoteclip")
    archs = _open_clip_archs()
    if "=" in spec:
        arch_text, path_text = (part.strip() for part in spec.split("=", 1))
        if not arch_text or not path_text:
            raise ParameterError(f"CLIP spec {spec!r} must be ARCH=PATH, e.g. ViT-B-32=weights.pt")
        arch = archs.get(arch_text.lower())
        if arch is None:
            raise ParameterError(
                f"unknown CLIP architecture {arch_text!r} in {spec!r} "
                "(use an open_clip model name such as RN50, ViT-B-32, ViT-L-14)"
            )
        path = _existing_file(path_text)
        return _Spec(f"{arch}={path}", arch, "path", path)
    if _looks_like_path(spec):
        path = _existing_file(spec)
        arch = _arch_from_filename(path, archs)
        if arch is None:
            raise ParameterError(
                f"cannot tell the CLIP architecture from the file name {path.name!r}: "
                f"give --clip ARCH={spec} (e.g. ViT-B-32={spec})"
            )
        return _Spec(f"{arch}={path}", arch, "path", path)
    if spec.lower() in archs:
        arch = archs[spec.lower()]
        raise ParameterError(
            f"CLIP architecture {arch!r} needs weights: give --clip {arch}=PATH to a checkpoint "
            f"(or use {', '.join((TINY_RANDOM, *REMOTECLIP_MODELS))})"
        )
    raise ParameterError(
        f"unknown CLIP model {spec!r} (known: {', '.join((TINY_RANDOM, *REMOTECLIP_MODELS))}, "
        "or ARCH=PATH to a checkpoint)"
    )


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ParameterError(f"CLIP checkpoint not found: {text}")
    return path.resolve()


def check_clip_spec(spec: str) -> str:
    """Validate a `--clip` value without loading anything; returns its canonical form.

    Accepts `tiny-random`, a RemoteCLIP name, `ARCH=PATH` or a bare PATH whose file name ends in
    the architecture. Whether RemoteCLIP weights exist is only known when loading (they may be
    downloaded); `find_local_weights` answers it for local files without any network.
    """
    return _parse_spec(spec).name


# ---------------------------------------------------------------------------------------------
# Finding RemoteCLIP weights


def default_clip_dir() -> Path:
    """`clip/` in rs-edit's cache folder (RS_EDIT_CACHE_DIR, else ~/.cache/rs-edit)."""
    return cache_root() / "clip"


def _weights_dirs(cache_dir: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if os.environ.get(CLIP_DIR_ENV):
        dirs.append(Path(os.environ[CLIP_DIR_ENV]).expanduser())
    dirs.append(Path(cache_dir).expanduser() if cache_dir else default_clip_dir())
    return dirs


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    # Read at call time: huggingface_hub reads these only once, at import.
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def find_local_weights(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """A RemoteCLIP weights file already on this machine (our folders, then the HF cache)."""
    filename = f"{name}.pt"
    for folder in _weights_dirs(cache_dir):
        if (folder / filename).is_file():
            return folder / filename
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(REMOTECLIP_REPO, filename, local_files_only=True))
    except Exception:  # not cached, or huggingface_hub missing/broken: not found locally
        return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """One TCP connect to the Hub (or the proxy): huggingface_hub itself retries for ~25 s."""
    proxy = next(
        (
            os.environ[k]
            for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")
            if k in os.environ and os.environ[k]
        ),
        None,
    )
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname
    port = url.port or (80 if url.scheme == "http" else 443)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _no_download_reason() -> str:
    """Why nothing can be downloaded now ("" when the Hub can be tried)."""
    if _offline():
        return "offline (HF_HUB_OFFLINE)"
    if not _hub_reachable():
        return "huggingface.co is not reachable"
    return ""


def check_remoteclip_obtainable(name: str, cache_dir: str | os.PathLike | None = None) -> None:
    """ParameterError now, without downloading, if `name`'s weights are neither on this machine
    nor downloadable (what the job API checks at submission)."""
    if find_local_weights(name, cache_dir) is None:
        why = _no_download_reason()
        if why:
            raise _weights_missing(name, cache_dir, why)


def _weights_missing(name: str, cache_dir, why: str) -> ParameterError:
    return ParameterError(
        f"CLIP weights {name}.pt not found ({why}): download it from "
        f"https://huggingface.co/{REMOTECLIP_REPO} into {_weights_dirs(cache_dir)[-1]} "
        f"(or set {CLIP_DIR_ENV} to the folder holding it)"
    )


def resolve_remoteclip_weights(
    name: str, cache_dir: str | os.PathLike | None = None, log: Log | None = None
) -> Path:
    """Path to `<name>.pt`: local folders, the HF cache, then a download unless offline."""
    if name not in REMOTECLIP_MODELS:
        raise ParameterError(f"unknown RemoteCLIP model {name!r} (known: {REMOTECLIP_MODELS})")
    filename = f"{name}.pt"
    found = find_local_weights(name, cache_dir)
    if found is not None:
        return found
    why = _no_download_reason()
    if not why:
        from huggingface_hub import hf_hub_download

        if log:
            log(f"downloading {filename} from huggingface.co/{REMOTECLIP_REPO} (once)")
        try:
            return Path(hf_hub_download(REMOTECLIP_REPO, filename))
        except Exception as exc:  # network, auth, disk: all end in the same advice
            why = f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    raise _weights_missing(name, cache_dir, why)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def read_state_dict(path: Path) -> dict:
    """A checkpoint's state dict: bare, wrapped in `{"state_dict": ...}`, `module.` prefixed."""
    import torch

    try:
        if path.name.lower().endswith(".safetensors"):
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, not a checkpoint at all
        if isinstance(exc, pickle.UnpicklingError):  # torch's text advises unsafe loading: no
            reason = "not a weights-only PyTorch checkpoint"
        else:
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}"
        raise ParameterError(f"cannot read CLIP checkpoint {path}: {reason}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data:
        raise ParameterError(f"CLIP checkpoint {path} holds no state dict")
    state = {}
    for key, value in data.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ParameterError(f"CLIP checkpoint {path} holds {key!r} that is not a tensor")
        state[key.removeprefix("module.")] = value
    return state


def _load_into(model, state: dict, path: Path, arch: str) -> None:
    """Strict load with one readable line on mismatch (logit scale/bias may be absent)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith("logit_")]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:

        def few(keys):
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        parts = [
            f"{what}: {len(keys)} ({few(keys)})"
            for keys, what in ((missing, "missing keys"), (unexpected, "unexpected keys"),
                               (shapes, "wrong shapes"))
            if keys
        ]  # fmt: skip
        raise ParameterError(
            f"CLIP checkpoint {path} does not fit architecture {arch}: {'; '.join(parts)} "
            "(is the architecture right? give --clip ARCH=PATH)"
        )
    model.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------------------------------
# Building models


class _DropOpenClipWarnings:
    """open_clip logs "initialized randomly" on the root logger before we load the weights."""

    def filter(self, record) -> bool:
        return "open_clip" not in record.pathname or record.levelno >= 40


def _build(arch: str):
    """A randomly initialised open_clip model and its tokenizer (no network)."""
    import logging

    import open_clip

    if arch == TINY_ARCH:
        model = open_clip.model.CLIP(**deepcopy(TINY_CONFIG))
        tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=TINY_CONFIG["text_cfg"]["context_length"]
        )
        return model, tokenizer
    root, quiet = logging.getLogger(), _DropOpenClipWarnings()
    root.addFilter(quiet)
    try:
        model = open_clip.create_model(arch, pretrained=None, pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # timm/HF towers that need downloads, missing extras, ...
        raise ParameterError(f"cannot build CLIP architecture {arch}: {exc}") from None
    finally:
        root.removeFilter(quiet)
    return model, tokenizer


def _build_seeded(arch: str):
    """`_build` with a fixed seed, leaving the caller's RNG untouched (tiny-random's weights)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return _build(arch)


@dataclass(eq=False)
class ClipModel:
    """A frozen CLIP that guidance can differentiate through (image side) and query (text side)."""

    name: str
    is_random: bool
    image_size: int
    device: Any  # torch.device
    embed_dim: int
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    mean: Any = field(repr=False)  # (1, 3, 1, 1)
    std: Any = field(repr=False)

    def encode_text(self, prompts: Sequence[str]):
        """(n, d) unit-norm text embeddings; no gradient."""
        import torch
        import torch.nn.functional as F

        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise ParameterError("no prompt to encode")
        with torch.no_grad():
            tokens = self.tokenizer(list(prompts)).to(self.device)
            return F.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def text_target(self, prompts: Sequence[str]):
        """(d,) prompt ensemble: mean of the unit embeddings, re-normalised."""
        import torch.nn.functional as F

        return F.normalize(self.encode_text(prompts).mean(0), dim=0)

    def encode_image(self, images):
        """(n, d) unit-norm embeddings of RGB images in [0, 1], shape (n, 3, h, w), any h and w;
        differentiable with respect to `images` (resized here, CLIP's mean/std applied here)."""
        import torch.nn.functional as F

        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected (n, 3, h, w) RGB images, got {tuple(images.shape)}")
        x = images.to(self.device, self.mean.dtype)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.mean) / self.std
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

    def similarity(self, images, target):
        """(n,) cosine similarity between each image and a unit text target (d,)."""
        return self.encode_image(images) @ target.reshape(-1).to(self.device, dtype=self.mean.dtype)


def _wrap(spec: _Spec, model, tokenizer, device, is_random: bool) -> ClipModel:
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    model = model.to(device).eval().requires_grad_(False)
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    mean = torch.tensor(cfg.get("mean", OPENAI_DATASET_MEAN), dtype=torch.float32, device=device)
    std = torch.tensor(cfg.get("std", OPENAI_DATASET_STD), dtype=torch.float32, device=device)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    with torch.no_grad():
        embed_dim = int(model.encode_text(tokenizer(["x"]).to(device)).shape[-1])
    return ClipModel(
        name=spec.name,
        is_random=is_random,
        image_size=size,
        device=device,
        embed_dim=embed_dim,
        model=model,
        tokenizer=tokenizer,
        mean=mean.view(1, 3, 1, 1),
        std=std.view(1, 3, 1, 1),
    )


_CACHE: dict[tuple, ClipModel] = {}
_CACHE_LOCK = threading.Lock()


def clear_clip_cache() -> None:
    """Forget loaded models (tests; freeing memory in a long-lived server)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def load_clip(
    spec: str,
    device="cpu",
    *,
    cache_dir: str | os.PathLike | None = None,
    log: Log | None = None,
) -> ClipModel:
    """Load (or reuse) the frozen CLIP named by `spec` on `device`; ParameterError if it cannot."""
    import torch

    parsed = _parse_spec(spec)
    device = torch.device(device)
    if parsed.kind == "tiny-random":
        if log:
            log("WARNING: " + RANDOM_CLIP_MESSAGE)
        warnings.warn(RANDOM_CLIP_MESSAGE, RandomClipWarning, stacklevel=2)
        path = None
    elif parsed.kind == "remoteclip":
        path = resolve_remoteclip_weights(parsed.name, cache_dir, log)
    else:
        path = parsed.path
    key = (parsed.name, str(path), str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        started = time.perf_counter()
        if path is None:
            model, tokenizer = _build_seeded(TINY_ARCH)
        else:
            state = read_state_dict(path)
            model, tokenizer = _build_seeded(parsed.arch)
            _load_into(model, state, path, parsed.arch)
            del state
        clip = _CACHE[key] = _wrap(parsed, model, tokenizer, device, is_random=path is None)
    if log:
        source = "random weights" if path is None else str(path)
        log(f"CLIP {clip.name} ({source}) ready in {time.perf_counter() - started:.1f} s")
    return clip
