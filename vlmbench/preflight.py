"""Torch-free checks of ``vlmbench run``'s options, made before anything heavy is imported.

:func:`validate_request_options` refuses every option value that is wrong on its own (a bad ε, norm,
track, count or seed; an unknown defense, attack or dataset name) in well under a second, so that a
typo never costs the seconds torch and open_clip take to import. :func:`vlmbench.runner.plan` checks
the request again, completely (models, splits, parameters, combinations); this module only answers
the common mistakes early. It imports neither torch nor any plugin: names come from the registry's
entry points, which are listed without importing the plugins (``--plugin`` sources must be loaded
before the check, so that their names count).
"""

from __future__ import annotations

import fnmatch

from vlmbench.errors import VlmbenchError
from vlmbench.names import parse_attack_name, unknown_name_message
from vlmbench.protocol import NORMS, ProtocolError, check_eps, parse_eps
from vlmbench.registry import PluginError, plugins
from vlmbench.request import PRECISIONS
from vlmbench.weights import ModelLoadError, missing_weights_message, pretrained_cfg, weights_are_local

TRACKS = ("oblivious", "adaptive", "both")
SELECTIONS = ("first", "random", "balanced")


class OptionError(VlmbenchError):
    """A command-line option value that is invalid on its own. One line, naming the value and the fix."""


def split_values(values: list[str] | None, option: str) -> tuple[str, ...]:
    """The items of a list option given as repeated options and/or comma-separated lists.

    ``None`` (the option was not given) is ``()``: the caller's default applies. A value given
    explicitly but empty (``--eps ''``, ``--attack ,``) is an error, never a silent default.

    Raises:
        OptionError: a given value holds no item.
    """
    items: list[str] = []
    for value in values or []:
        parts = [part.strip() for part in value.split(",") if part.strip()]
        if not parts:
            raise OptionError(f"{option} {value!r} is empty: give a value, or leave {option} out for its default")
        items += parts
    return tuple(items)


def validate_request_options(
    *,
    models: tuple[str, ...] = (),
    source_model: str | None = None,
    download: bool = False,
    defenses: tuple[str, ...] = (),
    attacks: tuple[str, ...] = (),
    datasets: tuple[str, ...] = (),
    eps: tuple[str, ...] = (),
    norm: str = "linf",
    step_size: str | None = None,
    restarts: int = 1,
    samples: int | None = None,
    selection: str = "first",
    seed: int = 0,
    batch_size: int | None = None,
    threads: int | None = None,
    track: str | None = None,
    eot: int | None = None,
    eval_draws: int | None = None,
    adaptive_steps: int | None = None,
    source_defense: str | None = None,
    precision: str | None = None,
) -> None:
    """Refuse option values that are wrong on their own; torch-free. ``()`` and ``None`` stand for
    "not given" (the defaults are valid). Passing does not mean the request can run: the runner's
    plan checks everything else.

    Raises:
        OptionError: a count, seed, track or selection out of range.
        ProtocolError: a bad norm, ε or step size.
        PluginError: an unknown defense (also inside a ``a+b`` composition), attack (also as
            ``NAME-STEPS``) or dataset (or a glob pattern matching none), with close matches.
        ModelLoadError: an ``ARCH:TAG`` or ``hf-hub:`` model whose weights are not in the local
            cache, without ``download`` (:func:`check_cached_weights`).
    """
    counts = {"--batch-size": ("batch size", batch_size), "--samples": ("number of samples", samples),
              "--threads": ("number of threads", threads), "--eot": ("number of EOT draws", eot),
              "--eval-draws": ("number of evaluation draws", eval_draws),
              "--restarts": ("number of restarts", restarts)}
    for option, (what, value) in counts.items():
        if value is not None and value < 1:
            default = f"; leave {option} out for the default" if option in ("--threads", "--samples", "--eot", "--eval-draws") else ""
            raise OptionError(f"bad {what} {value} ({option}): must be ≥ 1{default}")
    if seed < 0:
        raise OptionError(f"bad --seed {seed}: seeds are integers ≥ 0")
    if adaptive_steps is not None and adaptive_steps < 0:
        raise OptionError(f"bad number of adaptive steps {adaptive_steps} (--adaptive-steps): must be ≥ 0 (0: the attack's own)")
    if track is not None and track not in TRACKS:
        raise OptionError(f"bad track {track!r}: use oblivious, adaptive or both")
    if precision is not None and precision not in PRECISIONS:
        raise OptionError(f"bad precision {precision!r} (--precision): use {', '.join(PRECISIONS)}")
    if selection not in SELECTIONS:
        raise OptionError(f"bad selection {selection!r}: use first, random or balanced")
    if norm not in NORMS:
        raise ProtocolError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    for text in eps:
        check_eps(norm, parse_eps(text, norm)[0])
    if step_size is not None:
        try:
            parse_eps(step_size)
        except ProtocolError:
            raise OptionError(f"bad --step-size {step_size!r}: give a positive number such as 0.004 or a fraction such as 1/255") from None
    registry = plugins()
    for spec in (*defenses, *([source_defense] if source_defense is not None else [])):
        for name in spec.split("+"):
            if name not in registry.defenses:
                raise PluginError(unknown_name_message("defense", name, registry.defenses.names()))
    attack_names = registry.attacks.names()
    for spec in attacks:
        name, _ = parse_attack_name(spec, attack_names)
        if name not in attack_names:
            raise PluginError(unknown_name_message("attack", name, attack_names))
    dataset_names = registry.datasets.names()
    for pattern in datasets:
        if any(c in pattern for c in "*?["):
            if not fnmatch.filter(dataset_names, pattern):
                raise PluginError(f"no dataset matches {pattern!r}; known: {', '.join(dataset_names)}")
        elif pattern not in dataset_names:
            raise PluginError(unknown_name_message("dataset", pattern, dataset_names))
    check_cached_weights((*models, *([source_model] if source_model else [])), download)


def check_cached_weights(specs: tuple[str, ...], download: bool) -> None:
    """Refuse an explicit ``ARCH:TAG`` or ``hf-hub:REPO`` model whose weights are not in the local cache,
    unless ``download``; torch-free. Registered model names are checked when their plugin is loaded
    (:meth:`vlmbench.models.ModelPlugin.check_weights`), malformed specs by the full resolution."""
    if download:
        return
    registered = plugins().models
    for spec in specs:
        if spec in registered or spec.startswith("local-dir:"):
            continue
        if spec.startswith("hf-hub:"):
            model_name, tag = spec, None
        else:
            model_name, _, tag = spec.partition(":")
            if not tag or pretrained_cfg(model_name, tag) is None:
                continue  # a checkpoint file, or a spec vlmbench.resolve explains
        if not weights_are_local(model_name, tag):
            raise ModelLoadError(missing_weights_message(spec))


def parse_shard(spec: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)``, this process's part I of N (1 ≤ I ≤ N); OptionError otherwise."""
    left, _, right = spec.partition("/")
    if not (left.strip().isdigit() and right.strip().isdigit()) or not 1 <= int(left) <= int(right):
        raise OptionError(f"--shard {spec!r}: write I/N with 1 ≤ I ≤ N (this process runs part I of N)")
    return int(left), int(right)


def expand_datasets(patterns: tuple[str, ...]) -> list[str]:
    """Registered dataset names matching ``patterns`` (names or globs such as ``world-*``), in order,
    each once; PluginError for a pattern that matches nothing or an unknown name."""
    known = plugins().datasets.names()
    chosen: list[str] = []
    for pattern in patterns:
        matches = fnmatch.filter(known, pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise PluginError(f"no dataset matches {pattern!r}; known: {', '.join(known)}")
        for name in matches:
            if name not in known:
                raise PluginError(unknown_name_message("dataset", name, known))
            if name not in chosen:
                chosen.append(name)
    return chosen


def probe_ray_address(address: str, timeout: float = 5.0) -> None:
    """Refuse at once a ``HOST:PORT`` (or ``ray://HOST:PORT``) nobody listens on: Ray itself keeps
    retrying such an address for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray answers those itself, quickly
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise OptionError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} (is `ray start --head` "
                       "running there, and the port open?)") from None


def check_ray_installed() -> None:
    """``--executor ray`` needs the optional Ray dependency; say so in one line before any work."""
    from importlib.util import find_spec

    if find_spec("ray") is None:
        raise OptionError("--executor ray needs Ray: pip install 'vlmbench[ray]'")
