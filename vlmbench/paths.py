"""Where vlmbench keeps its caches (torch-free, so the command-line front can use it)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """vlmbench's cache folder: ``$VLMBENCH_CACHE``, else ``$XDG_CACHE_HOME/vlmbench``, else ``~/.cache/vlmbench``."""
    if "VLMBENCH_CACHE" in os.environ:
        return Path(os.environ["VLMBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlmbench"
