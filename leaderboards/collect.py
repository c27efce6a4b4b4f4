"""Gather the leaderboard's input: results folders given on the command line and submissions.

:func:`collect` reads every cell with vlmbench's validated readers (through
:func:`vlmbench.validate.check_results`: :func:`vlmbench.results.read_cell`'s checks, protocol
completeness, run metadata) and returns a :class:`Collection`: the rows of the valid entries (with an
``entry`` column), one :class:`~vlmbench.leaderboards.model.CellRecord` per cell and every
:class:`~vlmbench.leaderboards.model.Entry`, valid or not. An entry with any problem is kept as
``Entry(valid=False, error=<one line>)`` and none of its rows are used; the other entries still build.

Nothing here imports a plugin (registry, defenses, attacks, runner) or torch: a leaderboard is built
from Parquet files and JSON only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlmbench.errors import VlmbenchError
from vlmbench.leaderboards.model import CellRecord, Entry
from vlmbench.leaderboards.submissions import is_submission, load_submission


@dataclass
class Collection:
    """What :func:`collect` read.

    Attributes:
        rows: every per-sample row of the valid entries, plus an ``entry`` column; sorted by entry
            and cell id (a cell's rows in their stored order).
        cells: one record per cell of the valid entries, sorted by (entry, cell id).
        entries: every entry in input order (sources, then submissions by name), valid or not.
    """

    rows: pd.DataFrame
    cells: list[CellRecord] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)

    def entry(self, name: str) -> Entry:
        return next(e for e in self.entries if e.name == name)

    def run_of(self, entry: str, cell_id: str) -> dict[str, Any]:
        """The run metadata of one cell ({} when unknown)."""
        for cell in self.cells:
            if cell.entry == entry and cell.cell_id == cell_id:
                return cell.run
        return {}


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _error(name: str, problems: list[str]) -> str:
    more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
    return _one_line(f"{name}: {problems[0]}{more}")


def _unique(name: str, taken: set[str]) -> str:
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    taken.add(candidate)
    return candidate


def _relative(file: Path, root: Path) -> str:
    try:
        return file.relative_to(root).as_posix()
    except ValueError:
        return file.name


def collect(sources: list[Path], submissions: Path | None = None) -> Collection:
    """Read the results folders/files ``sources`` (entry name: the folder's name, for a file its
    folder's) and the submissions under ``submissions`` (``<entry>/submission.json`` +
    ``<entry>/results/``; entry name: the subfolder's). A source that is itself a submission folder
    is read as one. Names that repeat get ``-2``, ``-3``, ... in input order.

    Two entries may hold the same cell id: they stay separate (rows are per entry).
    """
    plan: list[tuple[str, Path, Path | None]] = []  # (name, path, submission folder or None)
    for source in sources:
        source = Path(source)
        name = source.name if source.is_dir() or not source.suffix else source.parent.name
        plan.append((name, source, source if is_submission(source) else None))
    if submissions is not None:
        folder = Path(submissions)
        if not folder.is_dir():
            raise VlmbenchError(f"submissions folder {folder} does not exist")
        for sub in sorted(folder.iterdir(), key=lambda p: p.name):
            if sub.is_dir() and not sub.name.startswith((".", "_")):
                plan.append((sub.name, sub, sub))

    from vlmbench.validate import check_results

    taken: set[str] = set()
    entries: list[Entry] = []
    records: list[CellRecord] = []
    frames: list[pd.DataFrame] = []
    for raw_name, path, submission in plan:
        name = _unique(raw_name, taken)
        metadata: dict[str, Any] = {}
        root = path if path.is_dir() else path.parent
        if submission is not None:
            try:
                metadata, root = load_submission(submission)
            except VlmbenchError as exc:
                entries.append(Entry(name, metadata, False, _one_line(f"{name}: {exc}")))
                continue
            path = root
        cells, report = check_results(path)
        problems = [p for _, found in report for p in found]
        if problems or not cells:
            entries.append(Entry(name, metadata, False, _error(name, problems or ["no results files"])))
            continue
        entries.append(Entry(name, metadata, True, None))
        for cell in sorted(cells, key=lambda c: str(c.rows["cell_id"].iloc[0])):
            rows = cell.rows
            cell_id = str(rows["cell_id"].iloc[0])
            records.append(CellRecord(cell_id=cell_id, entry=name, file=_relative(cell.file, root),
                                      protocol=json.loads(rows["protocol"].iloc[0]), run=cell.run,
                                      model_fingerprint=str(rows["model_fingerprint"].iloc[0])))
            frames.append(rows.assign(entry=name))
    if frames:
        rows = pd.concat(frames, ignore_index=True)
        rows = rows.sort_values(["entry", "cell_id"], kind="stable").reset_index(drop=True)
    else:
        rows = pd.DataFrame(columns=["entry"])
    records.sort(key=lambda r: (r.entry, r.cell_id))
    return Collection(rows, records, entries)
