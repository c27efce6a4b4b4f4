"""Typed plugin parameters: every plugin's ``Config`` is a frozen dataclass with the paper's defaults.

``--attack-param kappa=20`` / ``--defense-param tau=0.3`` are parsed against those dataclasses, so a
typo or a wrong type is a one-line error instead of a silently ignored option.

Non-finite floats (``nan``, ``inf``) are refused: ``tau_threshold=nan`` makes every comparison false
and silently switches TTC's counterattack off. A field that means something by infinity says so with
``dataclasses.field(metadata={ALLOW_NONFINITE: True})``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from typing import Any

from vlmbench.errors import VlmbenchError
from vlmbench.protocol import parse_eps


class ConfigError(VlmbenchError, ValueError):
    """A plugin parameter is unknown or has the wrong type."""


ALLOW_NONFINITE = "allow_nonfinite"


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """A plugin without parameters."""


def build_config(config_cls: type, assignments: Iterable[str], owner: str) -> Any:
    """Instantiate ``config_cls`` from ``key=value`` strings (values converted to the field types).

    Floats also accept fractions such as ``4/255``; booleans accept true/false/1/0/yes/no.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"bad parameter {assignment!r} for {owner}: expected key=value")
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise ConfigError(f"unknown parameter {key!r} for {owner}; its parameters: {known}")
        value = _convert(raw.strip(), hints[key], f"{owner} parameter {key!r}")
        if isinstance(value, float) and not math.isfinite(value) and not fields[key].metadata.get(ALLOW_NONFINITE):
            raise ConfigError(f"bad value {raw.strip()!r} for {owner} parameter {key!r}: must be a finite number")
        values[key] = value
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad parameters for {owner}: {exc}") from exc


def _convert(raw: str, hint: Any, what: str) -> Any:
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if raw.lower() in ("none", "null"):
            return None
        return _convert(raw, args[0], what)
    if origin is typing.Literal:
        if raw not in [str(a) for a in typing.get_args(hint)]:
            raise ConfigError(f"bad value {raw!r} for {what}: choose from {', '.join(map(str, typing.get_args(hint)))}")
        return next(a for a in typing.get_args(hint) if str(a) == raw)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return parse_eps(raw)[0] if "/" in raw else float(raw)
        if hint is str:
            return raw
    except ValueError:
        raise ConfigError(f"bad value {raw!r} for {what}: expected {getattr(hint, '__name__', hint)}") from None
    raise ConfigError(f"{what} of type {hint} cannot be set from the command line")


def config_dict(config: Any) -> dict[str, Any]:
    """JSON-able parameters of a config instance (for the protocol record)."""
    return dataclasses.asdict(config)
