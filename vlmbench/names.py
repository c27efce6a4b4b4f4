"""Plain helpers about plugin names; no dependency beyond the standard library.

:mod:`vlmbench.registry` re-exports them; the plugin contracts (:mod:`vlmbench.attack`,
:mod:`vlmbench.models`, ...) and the torch-free option checks (:mod:`vlmbench.preflight`) import
them from here, so that no contract depends on the registry.
"""

from __future__ import annotations

import difflib
import importlib
import re
from typing import Any


def unknown_name_message(what: str, name: str, known: list[str]) -> str:
    """``unknown attack 'pgdd'; did you mean 'pgd'?`` (or the list of known names)."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + " or ".join(repr(c) for c in close) + "?"
    else:
        hint = "known: " + (", ".join(known) if known else "none registered")
    return f"unknown {what} {name!r}; {hint}"


def import_object(spec: str) -> Any:
    """The object named by ``"package.module:attr.sub"`` (an entry point's value)."""
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


_STEPS_SUFFIX = re.compile(r"^(?P<base>.+?)-(?P<steps>\d+)$")


def parse_attack_name(spec: str, known: list[str]) -> tuple[str, int | None]:
    """``"pgd-10"`` → ``("pgd", 10)``; a registered name ending in digits wins over the suffix rule.

    An unknown name keeps its suffix split off, so that suggestions compare the base name."""
    if spec in known:
        return spec, None
    match = _STEPS_SUFFIX.match(spec)
    if match:
        return match["base"], int(match["steps"])
    return spec, None
