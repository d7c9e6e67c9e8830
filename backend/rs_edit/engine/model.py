"""A trained tile model: the network (EMA weights) plus everything needed to sample and to reuse
it later (pyramid sizes, blur gaps, timesteps, band scaling, the tile's hash). Save/load here.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..files import atomic_path
from ..progress import ProgressCallback, no_progress
from .device import autocast, use_bf16
from .diffusion import Guide, Inpaint, MultiScaleDiffusion
from .network import Denoiser
from .pyramid import PyramidSpec

FORMAT = "rs-edit-tile-model/1"


@dataclass
class TileModel:
    net: Denoiser
    spec: PyramidSpec
    timesteps: int
    blur_gaps: tuple[float, ...]
    preset: str
    fine_target: str = "noise"
    tile_hash: str = ""
    scaling: dict | None = None
    extra: dict = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.net.channels

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def diffusion(self) -> MultiScaleDiffusion:
        return MultiScaleDiffusion(self.timesteps, self.blur_gaps, self.device, self.fine_target)

    def sizes_for(self, size: tuple[int, int] | None) -> list[tuple[int, int]]:
        """Pyramid sizes for an output of `size` (h, w) at the finest scale (default: trained)."""
        if size is None:
            return list(self.spec.sizes)
        (h0, w0), (h, w) = self.spec.sizes[-1], size
        return [
            (max(8, round(sh * h / h0)), max(8, round(sw * w / w0)))
            for sh, sw in self.spec.sizes[:-1]
        ] + [(h, w)]

    @torch.no_grad()
    def sample(
        self,
        n: int = 1,
        *,
        size: tuple[int, int] | None = None,
        seed: int | None = None,
        progress: ProgressCallback = no_progress,
        inpaint: Inpaint | None = None,
        guide: Guide | None = None,
    ) -> torch.Tensor:
        """n new images (n, C, h, w) in the model's range, at the trained size or `size`.

        With `inpaint` (trained size only) only its masked region is generated; `guide` steers
        the sampling (see MultiScaleDiffusion.sample)."""
        generator = torch.Generator(self.device)
        generator.manual_seed(seed if seed is not None else torch.seed())
        self.net.eval()
        net = self.net.to(memory_format=torch.channels_last)
        with autocast(self.device, use_bf16(self.device)):
            return self.diffusion().sample(
                net,
                self.sizes_for(size),
                batch=n,
                channels=self.channels,
                generator=generator,
                progress=progress,
                inpaint=inpaint,
                guide=guide,
            )

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic: written to a temporary file next to `path`, then renamed."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "state_dict": self.net.state_dict(),
            "channels": self.net.channels,
            "width": self.net.width,
            "emb_dim": self.net.emb_dim,
            "sizes": [list(s) for s in self.spec.sizes],
            "factor": self.spec.factor,
            "timesteps": self.timesteps,
            "blur_gaps": list(self.blur_gaps),
            "preset": self.preset,
            "fine_target": self.fine_target,
            "tile_hash": self.tile_hash,
            "scaling": self.scaling,
            "extra": self.extra,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> TileModel:
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            raise InputError(f"cannot read tile model {path}: {exc}") from exc
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise InputError(f"{path} is not an rs-edit tile model ({FORMAT})")
        net = Denoiser(payload["channels"], payload["width"], payload["emb_dim"])
        net.load_state_dict(payload["state_dict"])
        return cls(
            net=net.to(device).eval(),
            spec=PyramidSpec(tuple(tuple(s) for s in payload["sizes"]), payload["factor"]),
            timesteps=payload["timesteps"],
            blur_gaps=tuple(payload["blur_gaps"]),
            preset=payload["preset"],
            fine_target=payload["fine_target"],
            tile_hash=payload["tile_hash"],
            scaling=payload["scaling"],
            extra=payload["extra"],
        )


def tile_hash(image: np.ndarray, *parts: str) -> str:
    """Content hash of a model-space tile and the settings that shape its model."""
    digest = hashlib.sha256()
    digest.update(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    for part in parts:
        digest.update(part.encode())
    return digest.hexdigest()
