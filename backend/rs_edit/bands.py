"""Band handling: native values <-> the model's [-1, 1] range, and which bands CLIP sees as RGB.

The scaling is a per-band affine map fitted on the valid pixels of the tile and stored (it goes
into checkpoints), so the inverse is exact: integer data round-trips bit for bit, and the composite
step keeps any pixel the model did not change as the original value for every dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.enums import ColorInterp

from .errors import ParameterError

_RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


@dataclass(frozen=True)
class BandScaling:
    """Per-band affine map from native values to the model range: lo -> -1, hi -> +1."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]
    dtype: str

    @classmethod
    def fit(cls, data: np.ndarray, valid: np.ndarray) -> BandScaling:
        """Fit on the valid pixels of `data` (bands, h, w); constant bands get a unit span."""
        lo, hi = [], []
        for band in data:
            values = band[valid]
            values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
            if values.size == 0:
                low, high = 0.0, 1.0
            else:
                low, high = float(values.min()), float(values.max())
            if not high > low:
                high = low + 1.0
            lo.append(low)
            hi.append(high)
        return cls(lo=tuple(lo), hi=tuple(hi), dtype=str(data.dtype))

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.asarray(self.lo, dtype=np.float64)[:, None, None]
        span = np.asarray(self.hi, dtype=np.float64)[:, None, None] - lo
        return lo, span

    def forward(self, data: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Native (bands, h, w) -> float32 model values; invalid pixels become 0 (mid-range)."""
        lo, span = self._coefficients()
        model = (data.astype(np.float64) - lo) / span * 2.0 - 1.0
        model = np.nan_to_num(model, nan=0.0, posinf=1.0, neginf=-1.0)
        if valid is not None:
            model[:, ~valid] = 0.0
        return model.astype(np.float32)

    def inverse(self, model: np.ndarray) -> np.ndarray:
        """Model values -> native dtype: rounded and clipped to the dtype's range for integers."""
        lo, span = self._coefficients()
        native = (model.astype(np.float64) + 1.0) / 2.0 * span + lo
        return to_dtype(native, np.dtype(self.dtype))

    def to_dict(self) -> dict:
        return {"lo": list(self.lo), "hi": list(self.hi), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> BandScaling:
        return cls(lo=tuple(d["lo"]), hi=tuple(d["hi"]), dtype=d["dtype"])


def to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert float values to `dtype`: round and clip for integers, clip to finite for floats."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    finfo = np.finfo(dtype)
    return np.clip(values, finfo.min, finfo.max).astype(dtype)


def parse_band_list(text: str) -> tuple[int, ...]:
    """'4,3,2' -> (4, 3, 2): 1-based band numbers as users write them."""
    try:
        bands = tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise ParameterError(f"band list must be comma-separated numbers, got {text!r}") from None
    return bands


def rgb_bands(
    colorinterp: Sequence[ColorInterp],
    data_bands: Sequence[int],
    override: Sequence[int] | None = None,
) -> tuple[int, int, int]:
    """Which modelled bands CLIP sees as R, G, B: 0-based positions into `data_bands`.

    `override` holds 1-based raster band numbers (as users write them). Default: the bands whose
    colour interpretation is red/green/blue, else the first three, a single band repeated.
    """
    data_bands = list(data_bands)
    if override is not None:
        if len(override) not in (1, 3):
            raise ParameterError(f"give 1 or 3 RGB bands, got {len(override)}")
        positions = []
        for number in override:
            if number - 1 not in data_bands:
                raise ParameterError(
                    f"RGB band {number} is not a data band of this raster "
                    f"(data bands: {', '.join(str(b + 1) for b in data_bands)})"
                )
            positions.append(data_bands.index(number - 1))
        return tuple(positions * 3) if len(positions) == 1 else tuple(positions)
    interp = [colorinterp[b] for b in data_bands]
    if all(ci in interp for ci in _RGB):
        return tuple(interp.index(ci) for ci in _RGB)
    if len(data_bands) >= 3:
        return (0, 1, 2)
    return (0, 0, 0)
