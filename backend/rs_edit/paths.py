"""Where rs-edit keeps files of its own between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """RS_EDIT_CACHE_DIR, else $XDG_CACHE_HOME/rs-edit, else ~/.cache/rs-edit. Trained tile
    models go in `models/`, LLM prompt expansions in `prompts/`."""
    root = (os.environ.get("RS_EDIT_CACHE_DIR") or "").strip()
    if root:
        return Path(root).expanduser()
    xdg = (os.environ.get("XDG_CACHE_HOME") or "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rs-edit"
