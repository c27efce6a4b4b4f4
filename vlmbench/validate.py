"""``vlmbench results validate``: is a results file, folder or leaderboard submission fit to publish?

:func:`validate` returns the problems (empty: valid). Per file it checks, in this order:

* the file reads as a cell (:func:`vlmbench.results.read_file` + :func:`~vlmbench.results.check_cell_rows`,
  i.e. exactly :func:`~vlmbench.results.read_cell`): schema version, column types, checksum, no sample
  twice, the full sample count, perturbations inside the ε-ball, ``robust == clean_correct & adv_correct``,
  correctness flags against predictions, and the columns ``read_cell`` compares with the protocol;
* the protocol record is complete: every field of :class:`vlmbench.protocol.Protocol` and, recursively,
  of its parts (threat, data, model/defense/attack/source plugin refs) is present, none unknown, the
  defense, attack and dataset plugin fingerprints are not empty, and package versions are recorded;
* every other column that mirrors a protocol field (steps, step size, precision, resolution, EOT and
  evaluation draws, BPDA steps, start, target, preset, templates, fingerprints, ...) agrees with it;
* the run metadata (``vlmbench.run``) records package ``versions`` and the ``command``, and its optional
  ``defenses`` declarations are well formed;

and over a folder that no cell is stored twice (as :func:`~vlmbench.results.load_results` refuses).
A submission folder (one holding ``submission.json``) also has its metadata checked
(:mod:`vlmbench.leaderboards.submissions`) and its ``results/`` folder validated.

Torch-free and plugin-free: nothing here imports a defense, attack or the runner.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from vlmbench import results
from vlmbench.errors import VlmbenchError
from vlmbench.protocol import Protocol, ReportedFigure

RUN_REQUIRED = ("versions", "command")
DEFENSE_KINDS = ("none", "training", "test-time", "training+test-time")


@dataclass
class LoadedCell:
    """One valid cell file: its rows, run metadata and parsed protocol record."""

    file: Path
    rows: pd.DataFrame
    run: dict[str, Any]
    protocol: dict[str, Any]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------------------------
# protocol completeness


def _dataclass_of(annotation: Any) -> tuple[type | None, bool]:
    """``(dataclass, optional)`` of a field annotation: ``PluginRef | None`` -> ``(PluginRef, True)``."""
    if dataclasses.is_dataclass(annotation):
        return annotation, False  # type: ignore[return-value]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if dataclasses.is_dataclass(a)]
        return (inner[0] if inner else None), type(None) in args
    return None, False


def protocol_field_problems(record: Any, cls: type = Protocol, prefix: str = "") -> list[str]:
    """Fields of the dataclass ``cls`` (recursively) missing from, or unknown to, the parsed record."""
    if not isinstance(record, dict):
        return [f"protocol field {prefix[:-1] or 'record'} is not an object"]
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems = [f"protocol record lacks field {prefix}{name}" for name in names if name not in record]
    problems += [f"protocol record has unknown field {prefix}{name}" for name in sorted(set(record) - set(names))]
    for name in names:
        if name not in record:
            continue
        inner, optional = _dataclass_of(hints[name])
        if inner is None or (optional and record[name] is None):
            continue
        problems += protocol_field_problems(record[name], inner, f"{prefix}{name}.")
    return problems


def _get(record: dict[str, Any], dotted: str) -> Any:
    value: Any = record
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _joined(values: Any) -> str:
    return ",".join(map(str, values or ()))


# columns repeating a protocol field that read_cell does not compare: (column, protocol key, value -> column value)
MIRRORED: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("model", "model.name", lambda v: v),
    ("defense", "defense.name", lambda v: v),
    ("attack", "attack.name", lambda v: v),
    ("steps", "threat.steps", lambda v: v),
    ("step_size", "threat.step_size", lambda v: v),
    ("restarts", "threat.restarts", lambda v: v),
    ("random_start", "threat.random_start", lambda v: v),
    ("precision", "precision", lambda v: v),
    ("resolution", "data.resolution", lambda v: v),
    ("selection", "data.selection", lambda v: v),
    ("preset", "data.preset", lambda v: v or ""),
    ("templates", "data.templates", lambda v: v or ""),
    ("n_requested", "data.n_requested", lambda v: -1 if v is None else v),
    ("dataset_fingerprint", "data.fingerprint", lambda v: v),
    ("defense_fingerprint", "defense.fingerprint", lambda v: v),
    ("attack_fingerprint", "attack.fingerprint", lambda v: v),
    ("eot_draws", "eot_draws", lambda v: v),
    ("eval_draws", "eval_draws", lambda v: v),
    ("defense_loss", "defense_loss", lambda v: v),
    ("start", "start", lambda v: v),
    ("target_mode", "target", lambda v: v),
    ("cascade_after", "cascade_after", _joined),
    ("bpda", "bpda", _joined),
    ("source_model", "source", lambda v: v.get("name", "") if isinstance(v, dict) else ""),
    ("superclasses", "superclasses", lambda v: v.get("name", "") if isinstance(v, dict) else ""),
)
FINGERPRINTS = ("defense.fingerprint", "attack.fingerprint", "data.fingerprint")


def protocol_problems(rows: pd.DataFrame, record: dict[str, Any]) -> list[str]:
    """Completeness of the protocol ``record`` of a cell and agreement of its mirrored columns."""
    problems = protocol_field_problems(record)
    for key in FINGERPRINTS:
        try:
            if not _get(record, key):
                problems.append(f"protocol record has an empty {key}")
        except KeyError:
            pass
    versions = record.get("versions")
    if "versions" in record and not (isinstance(versions, dict) and versions):
        problems.append("protocol record has no package versions")
    for column, key, convert in MIRRORED:
        try:
            expected = convert(_get(record, key))
        except KeyError:
            continue  # reported as a missing field
        values = rows[column].to_numpy()
        try:
            agrees = bool((values == expected).all()) if len(values) else True
        except (TypeError, ValueError):
            agrees = False
        if not agrees:
            problems.append(f"column {column} differs from the protocol's {key} {expected!r}")
    return problems


# ---------------------------------------------------------------------------------------------
# run metadata


_REPORTED_FIELDS = {f.name for f in dataclasses.fields(ReportedFigure)}


def run_problems(run: Any) -> list[str]:
    """The run metadata records versions and command; its ``defenses`` declarations are well formed."""
    if not isinstance(run, dict):
        return ["run metadata is not a JSON object"]
    problems = [f"run metadata lacks {key}" for key in RUN_REQUIRED if key not in run]
    versions = run.get("versions")
    if "versions" in run and not (isinstance(versions, dict) and versions
                                  and all(isinstance(v, str) for v in versions.values())):
        problems.append("run metadata versions is not a non-empty object of version strings")
    if "command" in run and not (isinstance(run["command"], str) and run["command"].strip()):
        problems.append("run metadata command is empty or not a string")
    defenses = run.get("defenses")
    if defenses is None:
        return problems
    if not isinstance(defenses, dict):
        return [*problems, "run metadata defenses is not an object"]
    for name, info in sorted(defenses.items()):
        where = f"run metadata defenses.{name}"
        if not isinstance(info, dict):
            problems.append(f"{where} is not an object")
            continue
        kind = info.get("kind")
        if kind is not None and not isinstance(kind, str):
            problems.append(f"{where}.kind is not a string")
        if "stochastic" in info and not isinstance(info["stochastic"], bool):
            problems.append(f"{where}.stochastic is not true or false")
        steps = info.get("non_differentiable", [])
        if not (isinstance(steps, list) and all(isinstance(s, str) for s in steps)):
            problems.append(f"{where}.non_differentiable is not a list of strings")
        for key in ("paper", "code"):
            if info.get(key) is not None and not isinstance(info[key], str):
                problems.append(f"{where}.{key} is not a string or null")
        reported = info.get("reported", [])
        if not isinstance(reported, list):
            problems.append(f"{where}.reported is not a list")
            continue
        for figure in reported:
            if not isinstance(figure, dict) or set(figure) != _REPORTED_FIELDS:
                problems.append(f"{where}.reported has an entry that is not a reported figure "
                                f"({', '.join(sorted(_REPORTED_FIELDS))})")
                break
            try:
                float(figure["value"])
            except (TypeError, ValueError):
                problems.append(f"{where}.reported has a non-numeric value")
                break
    return problems


# ---------------------------------------------------------------------------------------------
# files, folders, submissions


def check_file(path: Path) -> tuple[LoadedCell | None, list[str]]:
    """Read and check one cell file: ``(cell, [])`` when valid, else ``(None | cell, problems)``.

    The file is read once: :func:`vlmbench.results.read_file` then
    :func:`~vlmbench.results.check_cell_rows` (what :func:`~vlmbench.results.read_cell` does)."""
    try:
        table = results.read_file(path)
        rows = table.to_pandas()
        results.check_cell_rows(rows, path)
    except VlmbenchError as exc:
        return None, [_one_line(exc)]
    try:
        run = json.loads(table.schema.metadata[results.RUN_KEY])
    except (KeyError, ValueError) as exc:
        return None, [f"{path}: run metadata is missing or not JSON ({type(exc).__name__})"]
    record = json.loads(rows["protocol"].iloc[0])
    problems = [f"{path}: {p}" for p in (*protocol_problems(rows, record), *run_problems(run))]
    cell = LoadedCell(path, rows, run if isinstance(run, dict) else {}, record)
    return cell, problems


def check_results(path: Path) -> tuple[list[LoadedCell], list[tuple[Path, list[str]]]]:
    """Every results file at ``path`` (a file or a folder): the valid cells, and per file its problems
    (a file with none is listed with ``[]``; a folder-level problem is listed under the folder).
    A cell stored in two files is a problem of the second file."""
    try:
        files = results.result_files(Path(path))
    except VlmbenchError as exc:
        return [], [(Path(path), [_one_line(exc)])]
    cells: list[LoadedCell] = []
    report: list[tuple[Path, list[str]]] = []
    seen: dict[str, Path] = {}
    for file in files:
        cell, problems = check_file(file)
        if cell is not None:
            cell_id = str(cell.rows["cell_id"].iloc[0])
            if cell_id in seen:
                problems = [*problems, f"cell {cell_id} is stored twice: {seen[cell_id]} and {file}; remove one"]
            else:
                seen[cell_id] = file
        if cell is not None and not problems:
            cells.append(cell)
        report.append((file, problems))
    return cells, report


def check_submission(folder: Path) -> tuple[dict[str, Any] | None, list[LoadedCell], list[str]]:
    """A submission folder: ``(metadata or None, valid cells, problems)``."""
    from vlmbench.leaderboards.submissions import RESULTS_FOLDER, load_submission

    problems: list[str] = []
    metadata = None
    try:
        metadata, results_folder = load_submission(folder)
    except VlmbenchError as exc:
        problems.append(_one_line(exc))
        results_folder = Path(folder) / RESULTS_FOLDER
        if not results_folder.is_dir():
            return None, [], problems
    cells, report = check_results(results_folder)
    problems += [p for _, found in report for p in found]
    return metadata, cells, problems


def validate_items(path: Path) -> list[tuple[str, list[str]]]:
    """``(what, problems)`` per checked item: one per results file, or one for a whole submission."""
    from vlmbench.leaderboards.submissions import is_submission

    path = Path(path)
    if is_submission(path):
        _, _, problems = check_submission(path)
        return [(f"submission {path.name}", problems)]
    _, report = check_results(path)
    return [(str(file), problems) for file, problems in report]


def validate(path: Path) -> list[str]:
    """Problems of the results file, results folder or submission folder at ``path`` (empty: valid)."""
    return [problem for _, problems in validate_items(path) for problem in problems]
