"""``vlmbench list`` without importing the plugins (and so without importing torch).

Importing a plugin imports torch, which alone takes seconds. A listing row (description, kind,
randomness, BPDA steps, norms, how a dataset's status is decided) depends only on the plugin's code,
so each row is cached under ``cache_dir()/listing.json`` (one slot per kind and name) with a hash of the source files that
could change it: every ``.py`` file in the plugin module's folder, and vlmbench's own modules (the
contracts that define e.g. a defense's kind). Editing any of them makes a new key, and the plugin is
imported again. A dataset's status is never cached: the cache holds the rule (a fixed word, or a
folder that must exist under the data root) and the rule is evaluated on every call.

Not cached, imported on every call: ``--plugin`` files, plugins whose module cannot be located
without importing it, broken plugins (their error is recomputed), and datasets that override
``status()`` instead of declaring :meth:`vlmbench.data.DatasetPlugin.status_rule`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmbench import __version__
from vlmbench.paths import cache_dir, write_atomically

COLUMNS: dict[str, tuple[str, ...]] = {
    "datasets": ("status",),
    "defenses": ("kind", "random", "non-differentiable (BPDA)"),
    "attacks": ("norms",),
    "models": (),
}

StatusRule = tuple[str, str]  # ("fixed", word) or ("folder", path relative to the data root)
_CACHE_FORMAT = 1


def status_from_rule(rule: StatusRule, data_root: Path | None) -> str:
    """Evaluate a dataset's status rule: ``("fixed", word)`` → word; ``("folder", rel)`` → ``"ready"``
    when ``data_root / rel`` exists, else ``"missing"``."""
    how, value = rule
    if how == "fixed":
        return value
    if how == "folder":
        return "ready" if data_root is not None and (Path(data_root) / value).exists() else "missing"
    raise ValueError(f"unknown dataset status rule {rule!r}")


def describe(kind: str, plugin: Any) -> dict[str, Any]:
    """The cacheable part of a loaded plugin's listing row: ``description``, ``extra`` (the kind's
    columns, datasets excepted) and, for datasets, ``status_rule`` (``None`` if not declared)."""
    entry: dict[str, Any] = {"description": str(plugin.description), "extra": []}
    if kind == "defenses":
        entry["extra"] = [plugin.kind(), "yes" if getattr(plugin, "stochastic", False) else "no",
                          ", ".join(getattr(plugin, "non_differentiable", ()))]
    elif kind == "attacks":
        entry["extra"] = [", ".join(plugin.norms)]
    elif kind == "datasets":
        rule = plugin.status_rule()
        entry["status_rule"] = list(rule) if rule is not None else None
    return entry


def rows(registry: Any, data_root: Path | None) -> Iterator[tuple[str, list[str] | None, str | None]]:
    """Every plugin of ``registry`` as ``(name, [description, *columns] or None, error or None)``,
    from the cache where its key matches, else by importing it (and caching the row)."""
    cache_file = cache_dir() / "listing.json"
    cache = _read(cache_file)
    changed = False
    for name, origin in registry.origins().items():
        key, slot = _key(registry.kind, name, origin), f"{registry.kind}/{name}"
        entry = cache.get(slot) if key is not None else None
        entry = entry if isinstance(entry, dict) and entry.get("key") == key else None
        plugin = None
        if entry is None:
            try:
                plugin = registry.get(name)
            except Exception as exc:  # the registry's one-line PluginError; never cached
                yield name, None, str(exc)
                continue
            entry = describe(registry.kind, plugin)
            if key is not None and (registry.kind != "datasets" or entry["status_rule"] is not None):
                cache[slot], changed = {**entry, "key": key}, True
        extra = list(entry["extra"])
        if registry.kind == "datasets":
            rule = entry.get("status_rule")
            extra = [status_from_rule(tuple(rule), data_root) if rule is not None else plugin.status(data_root)]
        yield name, [entry["description"], *extra], None
    if changed:
        _write(cache_file, cache)


def _key(kind: str, name: str, origin: str) -> str | None:
    """Hash of what a listing row depends on, or ``None`` when the plugin's source cannot be located
    without importing it (a ``--plugin`` file, a module without a ``.py`` file)."""
    module_name, _, _ = origin.partition(":")
    if module_name.endswith(".py"):
        return None
    try:
        spec = importlib.util.find_spec(module_name)
    except Exception:  # a parent package that fails to import: let the real import report it
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    digest = hashlib.sha256(f"{_CACHE_FORMAT}\0{__version__}\0{kind}\0{name}\0{origin}\0".encode())
    folders = [Path(spec.origin).parent, Path(__file__).parent]
    for folder in folders:
        for file in sorted(folder.glob("*.py")):
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()


def _read(path: Path) -> dict[str, Any]:
    """The cache, or an empty one when it is missing, unreadable or of another format (then rebuilt)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT or not isinstance(data.get("rows"), dict):
        return {}
    return data["rows"]


def _write(path: Path, entries: dict[str, Any]) -> None:
    """Write the cache atomically; a cache that cannot be written only costs speed, so errors pass."""
    text = json.dumps({"format": _CACHE_FORMAT, "rows": entries}, sort_keys=True)
    try:
        write_atomically(path, lambda tmp: tmp.write_text(text))
    except OSError:
        pass
