"""Source fingerprints of plugins: a result is reused only when the code that produced it is unchanged.

A cell's identity covers each plugin's name, version and parameters, and also a fingerprint of its
source, so that editing a plugin (``round`` → ``floor``) makes new cells instead of reusing old ones.

The fingerprint of a plugin is the SHA-256 (first 16 hex digits) of the source files of the module
that defines it and of the modules it uses from the same folder (SCC's module uses TTC's, a world
dataset uses the world renderer). A module without a readable source file (built in C, made at run
time) falls back to its distribution's name and version, else to the module's name — recorded as such
(``dist:NAME==VERSION``, ``module:NAME``) so the record says how weak the fingerprint is.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path
from types import ModuleType
from typing import Any


def source_fingerprint(plugin: Any) -> str:
    """Fingerprint of the source of ``plugin`` (a class, or an instance of a plugin class)."""
    cls = plugin if inspect.isclass(plugin) else type(plugin)
    module = sys.modules.get(cls.__module__)
    path = _source_file(module)
    if module is None or path is None:
        return _fallback(cls.__module__)
    files = {path} | set(_sibling_sources(module, path.parent))
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def combined(fingerprints: list[str]) -> str:
    """One fingerprint for a composition (``tecoa+ttc``): the parts' fingerprints joined by ``+``."""
    return "+".join(fingerprints)


def _source_file(module: ModuleType | None) -> Path | None:
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return None
    path = Path(file)
    return path if path.is_file() else None


def _sibling_sources(module: ModuleType, folder: Path) -> list[Path]:
    """Source files of the modules ``module`` refers to (imported modules, or objects imported from
    them) that live in ``folder``."""
    found = []
    for value in vars(module).values():
        other = value if isinstance(value, ModuleType) else sys.modules.get(getattr(value, "__module__", None) or "")
        path = _source_file(other)
        if path is not None and path.parent == folder:
            found.append(path)
    return found


def _fallback(module_name: str) -> str:
    top = module_name.partition(".")[0]
    dists = packages_distributions().get(top, [])
    if dists:
        return f"dist:{dists[0]}=={version(dists[0])}"
    return f"module:{module_name}"
