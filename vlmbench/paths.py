"""Where vlmbench keeps its caches, and how it writes its JSON reports (torch-free, so the command-line
front can use it)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """vlmbench's cache folder: ``$VLMBENCH_CACHE``, else ``$XDG_CACHE_HOME/vlmbench``, else ``~/.cache/vlmbench``."""
    if "VLMBENCH_CACHE" in os.environ:
        return Path(os.environ["VLMBENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlmbench"


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(record: dict[str, Any], path: Path) -> None:
    """Write ``record`` as JSON to ``path`` atomically (a reader sees the old file or the whole new one);
    non-finite floats are written as null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(_json_safe(record), indent=1, allow_nan=False, default=float) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
