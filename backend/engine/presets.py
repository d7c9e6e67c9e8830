"""Named training presets. The engine issue fills in their settings; the names are fixed now."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ParameterError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("tiny", "tests and demos: a 96x96 edit in under a minute on 2 CPU cores"),
        Preset("fast", "quick results on a GPU"),
        Preset("balanced", "the default: good quality in minutes on a GPU"),
        Preset("quality", "best quality, slower"),
        Preset("reference", "the published SinDDM configuration, for comparison"),
    )
}
DEFAULT_PRESET = "balanced"


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ParameterError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})") from None
