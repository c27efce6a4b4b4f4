"""Plugin registry: defenses, attacks, datasets and models, discovered through entry points.

Every plugin, built-in or third-party, is registered the same way: an entry point in one of the
groups below, whose value is ``"module:attribute"``. Built-ins are declared in vlmbench's own
``pyproject.toml``; a third-party package declares its own. Plugins are imported lazily, on first
use, so a broken plugin only fails when asked for, and never hides the others.

================  =====================================  ==========================================
group             the attribute must be                  example
================  =====================================  ==========================================
vlmbench.defenses a subclass of ``vlmbench.defense.Defense``   ``none = "vlmbench.defenses.none:NoDefense"``
vlmbench.attacks  a subclass of ``vlmbench.attack.Attack``     ``pgd = "vlmbench.attacks.pgd:PGD"``
vlmbench.datasets an instance of ``vlmbench.data.DatasetPlugin``
vlmbench.models   an instance of ``vlmbench.models.ModelPlugin``
================  =====================================  ==========================================

For local development, :func:`load_plugin_source` registers the plugins of a module name or a ``.py``
file directly (``vlmbench run --plugin my_defense.py``): the module is imported and every public
class/instance of a plugin type that carries a ``name`` attribute is registered under that name.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from vlmbench.errors import VlmbenchError
from vlmbench.names import import_object, unknown_name_message

T = TypeVar("T")

KINDS = ("defenses", "attacks", "datasets", "models")


class PluginError(VlmbenchError):
    """A plugin could not be found, imported or validated. The message is one line, fit for a user."""


@dataclass
class _Entry:
    name: str
    origin: str  # "module:attr", or "path.py:attr" for --plugin files
    loader: Callable[[], Any]
    value: Any = None
    loaded: bool = False


@dataclass
class Registry(Generic[T]):
    """Name → plugin map of one kind, with lazy loading and helpful errors.

    Args:
        kind: plural noun used in messages and as the entry-point group suffix (``"attacks"``).
        check: validates a loaded plugin; returns an error message or ``None``.
    """

    kind: str
    check: Callable[[Any], str | None]
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _broken: dict[str, str] = field(default_factory=dict)

    @property
    def group(self) -> str:
        return f"vlmbench.{self.kind}"

    def add(self, name: str, origin: str, loader: Callable[[], Any]) -> None:
        """Register ``name``. Two different origins for one name is a hard error."""
        existing = self._entries.get(name)
        if existing is not None and existing.origin != origin:
            raise PluginError(
                f"{self.kind[:-1]} name collision: {name!r} is provided by both "
                f"{existing.origin} and {origin}; uninstall or rename one of them"
            )
        if existing is None:
            self._entries[name] = _Entry(name, origin, loader)

    def add_value(self, name: str, origin: str, value: Any) -> None:
        """Register an already imported plugin (used for ``--plugin`` sources)."""
        message = self.check(value)
        if message:
            raise PluginError(f"{self.kind[:-1]} {name!r} from {origin}: {message}")
        self.add(name, origin, lambda: value)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def origins(self) -> dict[str, str]:
        """Every registered name → where it comes from (``"module:attr"`` or ``"path.py:attr"``), sorted by
        name, without importing anything."""
        return {name: self._entries[name].origin for name in self.names()}

    def broken(self) -> dict[str, str]:
        """Plugins that failed to import or validate so far: name → one-line reason."""
        return dict(self._broken)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The plugin registered as ``name``, imported on first use.

        Raises:
            PluginError: unknown name (with close matches), or the plugin is broken.
        """
        entry = self._entries.get(name)
        if entry is None:
            raise PluginError(unknown_name_message(self.kind[:-1], name, self.names()))
        if not entry.loaded:
            try:
                value = entry.loader()
            except Exception as exc:  # a third-party import can fail in any way
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self._broken[name] = reason
                raise PluginError(
                    f"{self.kind[:-1]} {name!r} ({entry.origin}) failed to load: {reason}"
                ) from exc
            message = self.check(value)
            if message:
                self._broken[name] = message
                raise PluginError(f"{self.kind[:-1]} {name!r} ({entry.origin}): {message}")
            entry.value, entry.loaded = value, True
        return entry.value

    def items(self) -> Iterator[tuple[str, T | None, str | None]]:
        """Every registered plugin as ``(name, plugin or None, error or None)``; never raises."""
        for name in self.names():
            try:
                yield name, self.get(name), None
            except PluginError as exc:
                yield name, None, str(exc)


def _checker(kind: str) -> Callable[[Any], str | None]:
    """Base-class check for each kind. The contracts are imported lazily, on the first check, so that
    ``import vlmbench.registry`` stays torch-free; the dependency is one-way (no contract imports the
    registry)."""

    def check(value: Any) -> str | None:
        if kind == "defenses":
            from vlmbench.defense import Defense as base

            ok = inspect.isclass(value) and issubclass(value, base)
            expected = "a subclass of vlmbench.defense.Defense"
        elif kind == "attacks":
            from vlmbench.attack import Attack as base

            ok = inspect.isclass(value) and issubclass(value, base)
            expected = "a subclass of vlmbench.attack.Attack"
        elif kind == "datasets":
            from vlmbench.data import DatasetPlugin as base

            ok = isinstance(value, base)
            expected = "an instance of vlmbench.data.DatasetPlugin"
        else:
            from vlmbench.models import ModelPlugin as base

            ok = isinstance(value, base)
            expected = "an instance of vlmbench.models.ModelPlugin"
        if not ok:
            return f"is {value!r}, expected {expected}"
        if not getattr(value, "name", None) or not getattr(value, "description", None):
            return "has no 'name' or 'description'"
        if kind == "defenses":
            from vlmbench.defense import check_declarations

            return check_declarations(value)  # paper, code and reported figures
        return None

    return check


class Plugins:
    """All four registries, filled from the installed entry points."""

    def __init__(self) -> None:
        self.registries: dict[str, Registry[Any]] = {k: Registry(k, _checker(k)) for k in KINDS}
        for kind, registry in self.registries.items():
            for ep in entry_points(group=registry.group):
                registry.add(ep.name, ep.value, lambda v=ep.value: import_object(v))

    def __getitem__(self, kind: str) -> Registry[Any]:
        return self.registries[kind]

    @property
    def defenses(self) -> Registry[Any]:
        return self.registries["defenses"]

    @property
    def attacks(self) -> Registry[Any]:
        return self.registries["attacks"]

    @property
    def datasets(self) -> Registry[Any]:
        return self.registries["datasets"]

    @property
    def models(self) -> Registry[Any]:
        return self.registries["models"]

    def load_source(self, source: str) -> list[str]:
        """Register the plugins defined in a module name or a ``.py`` path (``--plugin``).

        Returns:
            ``"kind/name"`` for every plugin found.

        Raises:
            PluginError: the source does not exist, fails to import, or defines no plugin.
        """
        module = _import_source(source)
        found: list[str] = []
        for attr, value in vars(module).items():
            if attr.startswith("_") or not _defined_in(value, module):
                continue
            for kind, registry in self.registries.items():
                if registry.check(value) is not None or _already_registered(registry, value):
                    continue
                registry.add_value(value.name, f"{source}:{attr}", value)
                found.append(f"{kind}/{value.name}")
        if not found:
            raise PluginError(f"plugin source {source!r} defines no defense, attack, dataset or model")
        return found


def _defined_in(value: Any, module: Any) -> bool:
    """Classes must be defined (not imported) in ``module`` and concrete; instances always qualify."""
    if inspect.isclass(value):
        return value.__module__ == module.__name__ and not inspect.isabstract(value)
    return not inspect.ismodule(value)


def _already_registered(registry: Registry[Any], value: Any) -> bool:
    """True when ``value`` is the very object already registered under its name (an import)."""
    if value.name not in registry:
        return False
    try:
        return registry.get(value.name) is value
    except PluginError:
        return False


def _import_source(source: str) -> Any:
    path = Path(source)
    try:
        if source.endswith(".py"):
            if not path.is_file():
                raise PluginError(f"plugin file {source!r} does not exist")
            module_name = f"vlmbench_local_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(source)
    except PluginError:
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise PluginError(f"plugin source {source!r} failed to import: {reason}") from exc


_PLUGINS: Plugins | None = None


def plugins() -> Plugins:
    """The process-wide registries (built on first call)."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = Plugins()
    return _PLUGINS


def reset() -> None:
    """Forget the registries, so the next :func:`plugins` call re-reads the entry points (tests)."""
    global _PLUGINS
    _PLUGINS = None
