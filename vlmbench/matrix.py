"""Matrix files: a whole evaluation protocol in one TOML file (``vlmbench run --matrix FILE``).

A matrix file's keys are ``vlmbench run``'s options, spelled as on the command line without ``--``
(:data:`KEYS`). The axis keys (:data:`AXES`: model, defense, attack, dataset, eps, norm, track) take a
string or a list of strings, and the top-level entry is their product; each ``[[include]]`` table is
one more entry (the top-level keys, overridden by the table's own), and each ``[[exclude]]`` table
removes every cell that matches all of its keys, from every entry. :func:`load_matrix` checks the file
(every error is one line naming ``FILE:LINE``) and compiles it into disjoint products, one
:class:`~vlmbench.request.RunRequest` each, in file order. docs/matrix.md describes the format.

Neither importing this module nor :func:`load_matrix` imports torch: a mistyped key is reported in a
fraction of a second, before the heavy imports of the run.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import product as cartesian
from pathlib import Path
from typing import Any, NamedTuple

from vlmbench.errors import VlmbenchError
from vlmbench.names import parse_attack_name, unknown_name_message
from vlmbench.preflight import OptionError, expand_datasets, parse_shard, split_values, validate_request_options
from vlmbench.presets import get_preset
from vlmbench.protocol import parse_eps
from vlmbench.registry import plugins
from vlmbench.request import RunRequest

class MatrixError(VlmbenchError):
    """A matrix file that cannot be used: one line, ``FILE:LINE: what is wrong``."""


@dataclass(frozen=True)
class Key:
    """One key of a matrix file.

    Attributes:
        name: the key, spelled as the ``vlmbench run`` option without ``--``.
        kind: ``axis`` (a string or a list of strings; the matrix is the product of the axes),
            ``strings`` (a string or a list of strings), ``str``, ``int``, ``bool`` or ``path``.
        field: the :class:`RunRequest` field it sets, or None for a run option (:attr:`Matrix.run_options`).
        numbers: a TOML number is accepted too, and read as its text (``eps = 0.5``, ``target = 3``).
        what: one line for docs/matrix.md.
    """

    name: str
    kind: str
    field: str | None
    what: str
    numbers: bool = False


AXES: tuple[str, ...] = ("model", "defense", "attack", "dataset", "eps", "norm", "track")

KEYS: dict[str, Key] = {key.name: key for key in (
    Key("model", "axis", "models", "models: registered name, ARCH:TAG, ARCH:/ckpt, hf-hub:ID, local-dir:PATH"),
    Key("defense", "axis", "defenses", "defense names, or compositions a+b"),
    Key("attack", "axis", "attacks", "attacks: NAME or NAME-STEPS (pgd-10, cw-100, none)"),
    Key("dataset", "axis", "datasets", "dataset names or glob patterns (default: world-*, or all of protocol's)"),
    Key("eps", "axis", "eps", "radii: 1/255 or a float (default: 1/255)", numbers=True),
    Key("norm", "axis", "norm", "threat-model norms: linf or l2 (default: linf)"),
    Key("track", "axis", "track", "oblivious, adaptive or both (default: both for test-time defenses)"),
    Key("protocol", "str", "protocol", "protocol preset: tecoa16, ttc16, fare13, coop, all22, world"),
    Key("step-size", "str", "step_size", "attack step size (default: docs/protocol.md's rule)", numbers=True),
    Key("restarts", "int", "restarts", "random restarts per attack (default: 1)"),
    Key("random-start", "bool", "random_start", "start attacks at a random point of the ball (default: true)"),
    Key("samples", "int", "n_samples", "images per dataset (default: the whole split)"),
    Key("selection", "str", "selection", "first, random or balanced (default: first)"),
    Key("split", "str", "split", "dataset split (default: each dataset's evaluation split)"),
    Key("seed", "int", "seed", "base seed (default: 0)"),
    Key("batch-size", "int", "batch_size", "images per batch (default: chosen per cell: 128 on the CPU, from free memory on a GPU)"),
    Key("device", "str", "device", "auto, cpu, cuda or cuda:N (default: auto)"),
    Key("data-root", "path", "data_root", "root folder of real datasets (default: $VLMBENCH_DATA_ROOT)"),
    Key("download", "bool", "download", "download missing weights and datasets where their loader can (default: false)"),
    Key("output", "path", "output", "results folder (default: results)"),
    Key("attack-param", "strings", "attack_params", "attack parameters key=value (NAME.key=value with several attacks)"),
    Key("defense-param", "strings", "defense_params", "defense parameters key=value (NAME.key=value with several defenses)"),
    Key("eot", "int", "eot_draws", "EOT draws per gradient on the adaptive track (default: 10 if the defense is random)"),
    Key("eval-draws", "int", "eval_draws", "forward draws scoring a random defense (default: 10)"),
    Key("adaptive-steps", "int", "adaptive_steps", "minimum PGD/CW steps on the adaptive track (default: 40; 0: the attack's own)"),
    Key("source-model", "str", "source_model", "craft the attacks on this model instead (transfer track)"),
    Key("source-defense", "str", "source_defense", "defend the transfer source with this defense"),
    Key("target", "str", "target", "targeted attack: random, least-likely, a class index or name", numbers=True),
    Key("superclasses", "str", "superclasses", "attack a superclass label space (docs/hierarchies.md)"),
    Key("cascade", "bool", "cascade", "run each later attack only on the images earlier ones left robust (default: false)"),
    Key("eps-sweep", "bool", "eps_sweep", "quick 2ε/4ε sweep per cell for the eps-not-monotone flag (default: true)"),
    Key("precision", "str", "precision", "auto, fp32, tf32 or bf16: anything but fp32 only where its parity was measured (default: auto)"),
    Key("save-adversarials", "bool", "save_adversarials", "store each cell's adversarial images, for `results verify` (default: false)"),
    Key("threads", "int", None, "CPU threads for torch (default: torch's)"),
    Key("plugin", "strings", None, "module names or .py files defining extra plugins, loaded before the names are checked"),
    Key("executor", "str", None, "where cells run: local or ray (default: local)"),
    Key("shard", "str", None, "run only shard I of N of the cells: \"I/N\", 1 ≤ I ≤ N"),
    Key("ray-address", "str", None, "address of the Ray cluster (executor = \"ray\" only)"),
)}
TABLES = ("include", "exclude")
EXECUTORS = ("local", "ray")
TRACK_ATOMS = ("oblivious", "adaptive")
_GLOB = "*?["


class Cell(NamedTuple):
    """The coordinates of one requested cell. ``eps`` is the canonical label (``0.0156862745`` →
    ``4/255``); ``track`` is ``oblivious`` or ``adaptive`` as requested (``both`` and the default are
    the two; the planner evaluates only the oblivious one for a defense without a test-time part)."""

    model: str
    defense: str
    attack: str
    dataset: str
    eps: str
    norm: str
    track: str


@dataclass(frozen=True)
class Matrix:
    """A loaded matrix file.

    Attributes:
        path: the file.
        requests: disjoint products, in file order (the top-level entry, then each ``[[include]]``),
            with every ``[[exclude]]`` applied: no cell occurs in two of them with the same options.
        run_options: the run options the file sets (keys without a RunRequest field; ``-`` → ``_``:
            ``threads``, ``plugin``, ``executor``, ``shard``, ``ray_address``). Absent keys are
            absent: the CLI's defaults apply.
    """

    path: Path
    requests: tuple[RunRequest, ...]
    run_options: dict[str, Any] = field(default_factory=dict)


# --- reading ---------------------------------------------------------------------------------------


class _Locator:
    """Maps (table, key) to the line that holds it; tomllib gives no positions. A table is ``()``
    (top level) or ``(name, n)`` for the n-th ``[[name]]`` (``(name,)`` for a ``[name]`` header)."""

    _HEADER = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([^\]\[]+?)\s*\]")
    _KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.keys: dict[tuple[tuple[Any, ...], str], int] = {}
        self.headers: dict[tuple[Any, ...], int] = {}
        counts: dict[str, int] = {}
        table: tuple[Any, ...] = ()
        in_string = False
        for number, line in enumerate(text.splitlines(), start=1):
            if in_string:
                in_string = (line.count('"""') + line.count("'''")) % 2 == 0
                continue
            if header := self._HEADER.match(line):
                name = header[1].strip("\"'")
                table = (name, counts.get(name, 0))
                counts[name] = table[1] + 1
                self.headers.setdefault(table, number)
            elif header := self._TABLE.match(line):
                table = (header[1].strip("\"'"),)
                self.headers.setdefault(table, number)
            elif key := self._KEY.match(line):
                name = next(part for part in key.groups() if part is not None)
                self.keys.setdefault((table, name), number)
            in_string = (line.count('"""') + line.count("'''")) % 2 == 1

    def line(self, table: tuple[Any, ...], key: str | None = None) -> int | None:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        if table in self.headers:
            return self.headers[table]
        if table:  # an inline table (include = [{...}]): the line of its array
            return self.keys.get(((), table[0]), self.headers.get((table[0],)))
        return None

    def where(self, table: tuple[Any, ...], key: str | None = None) -> str:
        number = self.line(table, key)
        return f"{self.path}:{number}" if number is not None else str(self.path)

    def error(self, table: tuple[Any, ...], key: str | None, message: str) -> MatrixError:
        return MatrixError(f"{self.where(table, key)}: {_one_line(message)}")


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


def _read(path: Path) -> tuple[str, dict[str, Any]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise MatrixError(f"{path}: no such matrix file") from None
    except IsADirectoryError:
        raise MatrixError(f"{path}: is a folder, not a matrix file") from None
    except UnicodeDecodeError:
        raise MatrixError(f"{path}: not UTF-8 text (a matrix file is TOML)") from None
    except OSError as exc:
        raise MatrixError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = _one_line(exc)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if at:
            raise MatrixError(f"{path}:{at[1]}: invalid TOML: {message[:at.start()]} (column {at[2]})") from None
        raise MatrixError(f"{path}: invalid TOML: {message}") from None


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _number_text(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(value)


def _convert(key: Key, value: Any, fail: Callable[[str], MatrixError]) -> Any:
    """A TOML value as the key's type: a tuple of strings for list-valued keys, else the scalar."""
    def text(item: Any) -> str:
        if isinstance(item, str):
            return item
        if key.numbers and isinstance(item, (int, float)) and not isinstance(item, bool):
            return _number_text(item)
        raise fail(f"{key.name} takes a string or a list of strings, not {_describe(item)}")

    if key.kind in ("axis", "strings"):
        items = value if isinstance(value, list) else [value]
        if not items:
            raise fail(f"{key.name} is an empty list: give at least one value, or leave {key.name} out for its default")
        values = [text(item) for item in items]
        if key.name in ("model", "defense", "attack", "dataset", "eps"):  # the CLI splits these at commas too
            try:
                return split_values(values, key.name)
            except OptionError as exc:
                raise fail(str(exc)) from None
        if any(not v.strip() for v in values):
            raise fail(f"{key.name} holds an empty string: give a value, or leave {key.name} out for its default")
        return tuple(values)
    if key.kind == "bool":
        if not isinstance(value, bool):
            raise fail(f"{key.name} takes true or false, not {_describe(value)}")
        return value
    if key.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"{key.name} takes an integer, not {_describe(value)}")
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.numbers:
        return _number_text(value)
    if not isinstance(value, str):
        raise fail(f"{key.name} takes a string, not {_describe(value)}")
    if not value.strip():
        raise fail(f"{key.name} is empty: give a value, or leave {key.name} out for its default")
    return Path(value).expanduser() if key.kind == "path" else value


def _tables(data: dict[str, Any], name: str, locate: _Locator) -> list[dict[str, Any]]:
    if name not in data:
        return []
    value = data[name]
    if isinstance(value, dict):
        raise locate.error((name,), None, f"write [[{name}]] (double brackets): each {name} is one table of an array")
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise locate.error((), name, f"{name} must be tables: write each as a [[{name}]] section")
    return value


# --- entries and products ----------------------------------------------------------------------------


@dataclass
class _Entry:
    """The top-level entry or an include: key → value (converted), and the table each value came from."""

    table: tuple[Any, ...]
    values: dict[str, Any]
    origin: dict[str, tuple[Any, ...]]


@dataclass
class _Product:
    """Axis → its values (``track``: the atoms oblivious/adaptive; ``norm``: one value), the other
    RunRequest fields, and whether the entry spelled its track (for ``both`` vs the default)."""

    axes: dict[str, tuple[str, ...]]
    settings: dict[str, Any]
    track_given: bool

    def with_axes(self, **axes: tuple[str, ...]) -> _Product:
        return _Product({**self.axes, **axes}, self.settings, self.track_given)


def _track_atoms(tracks: Iterable[str | None]) -> tuple[str, ...]:
    """``both`` and the default (None) are the two tracks: RunRequest documents that for a defense
    without a test-time part both coincide with ``oblivious``."""
    atoms: set[str] = set()
    for track in tracks:
        atoms.update(TRACK_ATOMS if track in (None, "both") else (track,))
    return tuple(a for a in TRACK_ATOMS if a in atoms)


def _eps_value(text: str, norm: str) -> float:
    return parse_eps(text, norm)[0]


def _dedup_eps(values: Iterable[str], norm: str) -> tuple[str, ...]:
    seen: dict[float, str] = {}
    for text in values:
        seen.setdefault(_eps_value(text, norm), text)
    return tuple(seen.values())


def _dataset_names(patterns: tuple[str, ...], protocol: str | None) -> list[str]:
    """The registered datasets ``patterns`` select (the planner's own expansion), restricted to the
    protocol preset's datasets, in the preset's order, when there is one."""
    names = expand_datasets(tuple(patterns))
    if protocol is None:
        return names
    chosen = set(names)
    return [entry.name for entry in get_preset(protocol).datasets if entry.name in chosen]


def _split(product: _Product, matches: dict[str, Callable[[str], bool]]) -> list[_Product] | None:
    """``product`` without the cells whose every axis in ``matches`` matches, as disjoint products;
    None when no cell matches. For E = ∏ E_a inside ∏ A_a the rest is the disjoint union over i of
    E_a1 × … × E_a(i−1) × (A_ai \\ E_ai) × A_a(i+1) × …"""
    inside = {axis: tuple(v for v in product.axes[axis] if match(v)) for axis, match in matches.items()}
    if any(not values for values in inside.values()):
        return None
    pieces, fixed = [], {}
    for axis in AXES:
        if axis not in matches:
            continue
        outside = tuple(v for v in product.axes[axis] if v not in inside[axis])
        if outside:
            pieces.append(product.with_axes(**fixed, **{axis: outside}))
        fixed[axis] = inside[axis]
    return pieces


def _minus(product: _Product, other: _Product) -> list[_Product]:
    """``product`` without ``other``'s cells (an include repeating cells of an earlier entry)."""
    norm = product.axes["norm"][0]
    eps = {_eps_value(e, norm) for e in other.axes["eps"]}
    matches: dict[str, Callable[[str], bool]] = {
        axis: (lambda v, values=frozenset(other.axes[axis]): v in values) for axis in AXES if axis != "eps"}
    matches["eps"] = lambda v: _eps_value(v, norm) in eps
    pieces = _split(product, matches)
    return [product] if pieces is None else pieces


# --- the loader ---------------------------------------------------------------------------------------


def load_matrix(path: Path | str, *, check_weights: bool = True) -> Matrix:
    """Read, check and compile a matrix file.

    Relative paths in the file (``output``, ``data-root``, ``plugin``) are relative to the working
    directory, as on the command line. ``plugin`` sources are loaded (before the names are checked).
    ``check_weights``: refuse ``ARCH:TAG`` and ``hf-hub:`` models whose weights are not in the local
    cache unless the file sets ``download = true``, as the CLI does.

    Raises:
        MatrixError: anything wrong with the file, one line naming ``FILE:LINE``. Plugins' names,
            ε, norms, counts and the selection are checked here; what needs the plugins themselves
            (parameters, splits, combinations) is checked by the planner.
    """
    path = Path(path)
    text, data = _read(path)
    locate = _Locator(path, text)
    known = [*KEYS, *TABLES]
    for key in data:
        if key not in known:
            raise locate.error((), key, unknown_name_message("key", key, known))
    top = _entry((), {k: v for k, v in data.items() if k not in TABLES}, locate, top_level=True)
    run_options = _run_options(top, locate)
    entries = [top]
    for index, table in enumerate(_tables(data, "include", locate)):
        where = ("include", index)
        if not table:
            raise locate.error(where, None, "empty [[include]]: it would repeat the top-level entry")
        own = _entry(where, table, locate, top_level=False)
        entries.append(_Entry(where, {**top.values, **own.values}, {**top.origin, **own.origin}))
    excludes = _tables(data, "exclude", locate)
    products: list[_Product] = []
    for entry in entries:
        _check_entry(entry, locate, check_weights)
        for new in _products(entry, locate):
            pieces = [new]
            for earlier in products:  # a cell listed again with the same options runs once
                if earlier.settings == new.settings and earlier.axes["norm"] == new.axes["norm"]:
                    pieces = [rest for piece in pieces for rest in _minus(piece, earlier)]
            products += pieces
    for index, table in enumerate(excludes):
        products = _exclude(products, table, ("exclude", index), locate)
    return Matrix(path, tuple(_request(RunRequest, p) for p in products), run_options)


def _entry(table: tuple[Any, ...], raw: dict[str, Any], locate: _Locator, top_level: bool) -> _Entry:
    values = {}
    for name, value in raw.items():
        if name not in KEYS:
            if name in TABLES:
                raise locate.error(table, name, f"[[include]] cannot hold {name}: put [[{name}]] at the top level")
            raise locate.error(table, name, unknown_name_message("key", name, list(KEYS)))
        key = KEYS[name]
        if key.field is None and not top_level:
            raise locate.error(table, name, f"{name} applies to the whole run: set it at the top level, not in [[include]]")
        values[name] = _convert(key, value, lambda message, name=name: locate.error(table, name, message))
    return _Entry(table, values, {name: table for name in values})


def _run_options(top: _Entry, locate: _Locator) -> dict[str, Any]:
    options = {name.replace("-", "_"): value for name, value in top.values.items() if KEYS[name].field is None}

    def fail(name: str, message: object) -> MatrixError:
        return locate.error((), name, str(message))

    if "threads" in options:
        try:
            validate_request_options(threads=options["threads"])
        except VlmbenchError as exc:
            raise fail("threads", exc) from None
    for source in options.get("plugin", ()):  # before any name is checked: their plugins count
        try:
            plugins().load_source(source)
        except VlmbenchError as exc:
            raise fail("plugin", exc) from None
    executor = options.get("executor")
    if executor is not None and executor not in EXECUTORS:
        raise fail("executor", unknown_name_message("executor", executor, list(EXECUTORS)))
    if "shard" in options:
        try:
            parse_shard(options["shard"])
        except VlmbenchError as exc:
            raise fail("shard", exc) from None
    if "ray_address" in options and executor != "ray":
        raise fail("ray-address", 'ray-address needs executor = "ray"')
    return options


_CHECKS: dict[str, str] = {  # key → validate_request_options argument, for the keys it checks on their own
    "defense": "defenses", "attack": "attacks", "dataset": "datasets", "source-defense": "source_defense",
    "step-size": "step_size", "restarts": "restarts", "samples": "samples", "selection": "selection",
    "seed": "seed", "batch-size": "batch_size", "eot": "eot", "eval-draws": "eval_draws",
    "adaptive-steps": "adaptive_steps", "precision": "precision",
}


def _check_entry(entry: _Entry, locate: _Locator, check_weights: bool) -> None:
    """The CLI's option checks (:func:`validate_request_options`), one key at a time so that an error
    names its line; a check of two keys names the include's own one where there is one."""
    values = entry.values

    def check(keys: tuple[str, ...], **options: Any) -> None:
        try:
            validate_request_options(**options)
        except VlmbenchError as exc:
            given = [k for k in keys if k in values]
            own = [k for k in given if entry.origin[k] == entry.table]
            key = (own or given or [keys[0]])[0]
            raise locate.error(entry.origin.get(key, entry.table), key, str(exc)) from None

    norms = values.get("norm", ("linf",))
    for norm in norms:
        check(("norm",), norm=norm)
    for track in values.get("track", ()):
        check(("track",), track=track)
    if "eps" in values:
        for norm in norms:
            check(("eps", "norm"), eps=values["eps"], norm=norm)
    download = values.get("download", False) or not check_weights
    if "model" in values:
        check(("model", "download"), models=values["model"], download=download)
    if "source-model" in values:
        check(("source-model", "download"), source_model=values["source-model"], download=download)
    for name, argument in _CHECKS.items():
        if name in values:
            check((name,), **{argument: values[name]})
    if "protocol" in values:
        try:
            get_preset(values["protocol"])
        except VlmbenchError as exc:
            raise locate.error(entry.origin["protocol"], "protocol", str(exc)) from None


def _products(entry: _Entry, locate: _Locator) -> list[_Product]:
    """The entry's product, one per norm (a RunRequest has one norm), datasets expanded."""
    defaults = RunRequest()
    values = entry.values
    protocol = values.get("protocol")
    patterns = values.get("dataset", ("*",) if protocol else defaults.datasets)
    datasets = _dataset_names(patterns, protocol)
    if not datasets:
        key = "dataset" if "dataset" in values and entry.origin["dataset"] == entry.table else "protocol"
        preset = [e.name for e in get_preset(protocol).datasets]
        raise locate.error(entry.origin.get(key, entry.table), key,
                           f"dataset selects none of the datasets of protocol {protocol!r}: {', '.join(preset)}")
    settings = {f: getattr(defaults, f) for f in defaults.__dataclass_fields__}
    for name in AXES:
        settings.pop(KEYS[name].field)  # type: ignore[arg-type]
    if os.environ.get("VLMBENCH_DATA_ROOT"):  # as the CLI's --data-root
        settings["data_root"] = Path(os.environ["VLMBENCH_DATA_ROOT"])
    for name, value in values.items():
        if KEYS[name].field is not None and name not in AXES:
            settings[KEYS[name].field] = value  # type: ignore[index]
    out = []
    for norm in dict.fromkeys(values.get("norm", (defaults.norm,))):
        axes = {
            "model": tuple(dict.fromkeys(values.get("model", defaults.models))),
            "defense": tuple(dict.fromkeys(values.get("defense", defaults.defenses))),
            "attack": tuple(dict.fromkeys(values.get("attack", defaults.attacks))),
            "dataset": tuple(datasets),
            "eps": _dedup_eps(values.get("eps", defaults.eps), norm),
            "norm": (norm,),
            "track": _track_atoms(values.get("track", (defaults.track,))),
        }
        out.append(_Product(axes, settings, "track" in values))
    return out


def _exclude(products: list[_Product], table: dict[str, Any], where: tuple[Any, ...], locate: _Locator) -> list[_Product]:
    if not table:
        raise locate.error(where, None, "empty [[exclude]]: it would remove every cell")
    patterns: dict[str, tuple[str, ...]] = {}
    for name, value in table.items():
        if name not in AXES:
            message = (f"exclude key {name!r} is not an axis; exclude takes {', '.join(AXES)}" if name in KEYS
                       else unknown_name_message("exclude key", name, list(AXES)))
            raise locate.error(where, name, message)
        patterns[name] = _convert(KEYS[name], value, lambda message, name=name: locate.error(where, name, message))
        _check_patterns(name, patterns[name], lambda message, name=name: locate.error(where, name, message))
    out, removed = [], False
    for product in products:
        pieces = _split(product, {axis: _matcher(axis, values, product) for axis, values in patterns.items()})
        if pieces is None:
            out.append(product)
        else:
            out += pieces
            removed = True
    if not removed:
        raise locate.error(where, None, "this [[exclude]] matches no cell (a typo? remove it if it is not needed)")
    if not out:
        raise locate.error(where, None, "this [[exclude]] removes every remaining cell: nothing would run")
    return out


def _check_patterns(axis: str, values: tuple[str, ...], fail: Callable[[str], MatrixError]) -> None:
    """Exclude values: names are checked as the CLI checks them; glob patterns of defenses, attacks
    and models are checked only by matching some cell."""
    names = tuple(v for v in values if not any(c in v for c in _GLOB))
    try:
        if axis == "defense":
            validate_request_options(defenses=names)
        elif axis == "attack":
            validate_request_options(attacks=names)
        elif axis == "dataset":
            validate_request_options(datasets=values)
        elif axis == "norm":
            for norm in values:
                validate_request_options(norm=norm)
        elif axis == "track":
            for track in values:
                validate_request_options(track=track)
        elif axis == "eps":
            for text in values:
                parse_eps(text)
    except VlmbenchError as exc:
        raise fail(str(exc)) from None


def _matcher(axis: str, patterns: tuple[str, ...], product: _Product) -> Callable[[str], bool]:
    """Whether a value of ``product``'s axis matches one of an exclude's values: ε by value, track
    ``both`` as the two tracks, an attack also by its base name (``cw`` matches ``cw-100``), and
    globs for model, defense, attack and dataset."""
    if axis == "eps":
        norm = product.axes["norm"][0]
        wanted = {_eps_value(p, norm) for p in patterns}
        return lambda v: _eps_value(v, norm) in wanted
    if axis == "track":
        atoms = set(_track_atoms(patterns))
        return lambda v: v in atoms
    if axis == "norm":
        return lambda v: v in patterns

    def match(value: str) -> bool:
        candidates = [value]
        if axis == "attack":
            candidates.append(parse_attack_name(value, plugins().attacks.names())[0])
        return any(c == p or (any(g in p for g in _GLOB) and fnmatch.fnmatchcase(c, p))
                   for c in candidates for p in patterns)

    return match


def _request(RunRequest: Any, product: _Product) -> RunRequest:
    axes = product.axes
    if set(axes["track"]) == set(TRACK_ATOMS):
        track = "both" if product.track_given else None
    else:
        (track,) = axes["track"]
    return RunRequest(models=axes["model"], defenses=axes["defense"], attacks=axes["attack"],
                      datasets=axes["dataset"], eps=axes["eps"], norm=axes["norm"][0], track=track,
                      **product.settings)


# --- cells ---------------------------------------------------------------------------------------------


def request_cells(request: RunRequest) -> list[Cell]:
    """The cells ``request`` asks for (datasets expanded, ε canonical, ``both``/default as two tracks),
    in the order of the product; nothing is loaded."""
    datasets = _dataset_names(request.datasets, request.protocol)
    eps = dict.fromkeys(parse_eps(e, request.norm)[1] for e in request.eps)
    return [Cell(*cell) for cell in cartesian(dict.fromkeys(request.models), dict.fromkeys(request.defenses),
                                              dict.fromkeys(request.attacks), datasets, eps, (request.norm,),
                                              _track_atoms((request.track,)))]


def cells(matrix: Matrix) -> list[Cell]:
    """Every requested cell of ``matrix``, request by request (a cell twice only with different options)."""
    return [cell for request in matrix.requests for cell in request_cells(request)]
