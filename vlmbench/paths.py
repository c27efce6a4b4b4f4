"""Where vlmbench keeps its caches, and how it writes its JSON reports (torch-free, so the command-line
front can use it)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
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


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Create ``path`` through ``write(tmp)`` on a temporary sibling renamed over it, so that a reader sees
    the old file or the whole new one; the temporary file never outlives a failed write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(record: dict[str, Any], path: Path) -> None:
    """Write ``record`` as JSON to ``path`` atomically (:func:`write_atomically`); non-finite floats are
    written as null."""
    text = json.dumps(_json_safe(record), indent=1, allow_nan=False, default=float) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text))
