"""genforge's cache folder: one rule for every layer that caches (decoded datasets, precision verdicts, music
indexes). A leaf: it imports nothing from genforge, so data, music and precision can all use it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "GENFORGE_CACHE"


def cache_dir() -> Path:
    """$GENFORGE_CACHE, else $XDG_CACHE_HOME/genforge, else ~/.cache/genforge."""
    if os.environ.get(CACHE_ENV, "").strip():
        return Path(os.environ[CACHE_ENV].strip()).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base).expanduser() / "genforge"
