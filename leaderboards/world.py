"""The world entry: every built-in defense under the world board's standard attacks, on the embedded world.

The entry lives in ``leaderboards/submissions/world/``: ``submission.json`` (who, what, hardware),
``commands.json`` (the ``vlmbench run`` argument lists that produced it, and which cells each one
produced) and ``results/`` (one Parquet file per cell). Anyone can recompute it, and CI checks a
seeded subset of its cells on every publish::

    python -m vlmbench.leaderboards.world make ENTRY            # compute every cell (complete cells are reused)
    python -m vlmbench.leaderboards.world reproduce ENTRY --cells 3 --seed 7 --report reproduction.json

Reproduction re-runs chosen cells exactly: it copies every *other* cell of the entry into a fresh
output folder and re-runs the commands that produced the chosen ones there. The runner reuses the
copied cells (same cell ids) and recomputes only the chosen ones, which are then compared with the
committed files sample by sample. A cell whose id no longer occurs in a re-run (its defense, attack or
dataset code changed since the entry was made: the cell id covers the plugins' source fingerprints)
is reported as ``stale``, never as reproduced.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmbench.errors import VlmbenchError

TRAINING_DEFENSES = ("none", "tecoa", "pmg_aft", "fare", "tga_zsr", "hpt_gpd", "hierarchical")
TEST_TIME_DEFENSES = ("ttc", "scc", "clipure_cos")
COMMON = ("--model", "world-vit", "--attack", "pgd-10,cw-10", "--samples", "30", "--selection", "balanced",
          "--seed", "0", "--threads", "1")
# Training-time defenses at both radii. Test-time defenses at 1/255 only (the main setting of TTC and
# SCC), on both tracks: their adaptive track (40 steps, 10 EOT draws, 10 evaluation draws) took about
# 6 minutes per 30-image cell on a shared 2-core CPU (SCC's 13-22 minutes; the whole entry 4.5 hours
# of cell time), so 4/255 would double an entry that is already the longest job.
TRAINING_EPS = ("--eps", "1/255,4/255")
TEST_TIME_EPS = ("--eps", "1/255")
# Agreement of a re-run cell with the committed one: every per-sample prediction equal is
# "reproduced"; fp32 kernels of other CPUs may flip an image that sits on a decision boundary, so up
# to this fraction of differing predictions is "reproduced (n differ)" and more is "not reproduced".
TOLERATED_DISAGREEMENT = 0.02


def commands() -> list[list[str]]:
    """The ``vlmbench run`` argument lists of the world entry, one per defense."""
    out = [["run", "--defense", name, *COMMON, *TRAINING_EPS] for name in TRAINING_DEFENSES]
    out += [["run", "--defense", name, "--track", "both", *COMMON, *TEST_TIME_EPS] for name in TEST_TIME_DEFENSES]
    return out


SUBMISSION = {
    "method": "every built-in defense of vlmbench (re-implementations), world-vit",
    "paper": None,
    "code": None,
    "weights": "world-vit ships with vlmbench; training-time defenses are fine-tuned by `vlmbench train` from their recipes",
    "submitted_by": "vlmbench maintainers",
    "hardware": "CPU (2 cores, 1 torch thread)",
    "notes": "computed by `python -m vlmbench.leaderboards.world make`; a seeded subset is re-run on every publish",
}


def _run(args: Sequence[str], output: Path) -> None:
    """One ``vlmbench run`` in this process; a failure is a one-line VlmbenchError."""
    from typer.testing import CliRunner

    from vlmbench.cli import app

    result = CliRunner().invoke(app, [*args, "--output", str(output)], catch_exceptions=True)
    if result.exit_code != 0:
        detail = (result.output.strip().splitlines() or [repr(result.exception)])[-1]
        raise VlmbenchError(f"vlmbench {' '.join(args)} failed: {detail}")


def _cells(folder: Path) -> dict[str, Path]:
    """cell id → file, for the complete cell files under ``folder``."""
    from vlmbench.results import read_file, result_files

    found: dict[str, Path] = {}
    if not any(folder.glob("*.parquet")):
        return found
    for path in result_files(folder):
        found[str(read_file(path).column("cell_id")[0])] = path
    return found


def make(entry: Path, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Compute the entry's cells into ``entry/results`` (complete cells are reused, so several
    ``make --defense X`` may run at once on one entry: cells are locked one by one) and write
    ``submission.json`` and ``commands.json``. ``only``: defense names to (re)compute.

    Each command evaluates one defense, so a cell belongs to the command of its ``defense``."""
    results = entry / "results"
    results.mkdir(parents=True, exist_ok=True)
    for args in commands():
        if not only or _defense_of(args) in only:
            _run(args, results)
    record = {"commands": [{"args": args, "cells": _cells_of(results, _defense_of(args))} for args in commands()]}
    (entry / "commands.json").write_text(json.dumps(record, indent=1) + "\n")
    (entry / "submission.json").write_text(json.dumps(SUBMISSION, indent=1) + "\n")
    return record


def _defense_of(args: Sequence[str]) -> str:
    return args[list(args).index("--defense") + 1]


def _cells_of(results: Path, defense: str) -> list[str]:
    """The cell ids of ``defense``'s complete cells under ``results``, sorted."""
    from vlmbench.results import read_file

    return sorted(str(read_file(path).column("cell_id")[0]) for path in _cells(results).values()
                  if str(read_file(path).column("defense")[0]) == defense)


def reproduce(entry: Path, cells: int = 3, seed: int = 0, defenses: Sequence[str] | None = None,
              workdir: Path | None = None) -> dict[str, Any]:
    """Re-run a seeded choice of ``cells`` of the entry's cells (from ``defenses`` only, when given)
    and compare them with the committed files. Returns the report (also the JSON written by the CLI)."""
    import pandas as pd

    from vlmbench.results import read_cell

    record = json.loads((entry / "commands.json").read_text())
    committed = _cells(entry / "results")
    owner = {cell: tuple(c["args"]) for c in record["commands"] for cell in c["cells"]}
    candidates = sorted(cell for cell in committed if cell in owner
                        and (not defenses or _defense_of(owner[cell]) in defenses))
    if not candidates:
        raise VlmbenchError(f"{entry}: no cells to reproduce (commands.json lists none{' for ' + ','.join(defenses) if defenses else ''})")
    chosen = sorted(random.Random(seed).sample(candidates, min(cells, len(candidates))))
    own = tempfile.mkdtemp(prefix="vlmbench-reproduce-", dir=workdir)
    try:
        out = Path(own) / "results"
        out.mkdir()
        for cell, path in committed.items():
            if cell not in chosen:
                shutil.copy2(path, out / path.name)
        for args in sorted({owner[cell] for cell in chosen}):
            _run(list(args), out)
        fresh = _cells(out)
        report_cells = []
        for cell in chosen:
            old = read_cell(committed[cell])
            first = old.iloc[0]
            item = {"cell_id": cell, "defense": first["defense"], "attack": first["attack"], "dataset": first["dataset"],
                    "eps_label": first["eps_label"], "track": first["track"], "model": first["model"]}
            if cell not in fresh:
                report_cells.append({**item, "status": "stale", "detail": "the re-run produced another cell id: plugin code or protocol changed since the entry was made"})
                continue
            new = read_cell(fresh[cell])
            merged = old.merge(new, on="sample_index", suffixes=("_old", "_new"))
            differ = int(((merged["clean_pred_old"] != merged["clean_pred_new"]) | (merged["adv_pred_old"] != merged["adv_pred_new"])).sum())
            fraction = differ / max(len(merged), 1)
            status = "reproduced" if fraction <= TOLERATED_DISAGREEMENT else "not reproduced"
            report_cells.append({**item, "status": status, "differing_samples": differ, "samples": len(merged),
                                 "robust_old": float(pd.Series(old["robust_rate"]).mean() * 100),
                                 "robust_new": float(pd.Series(new["robust_rate"]).mean() * 100)})
    finally:
        shutil.rmtree(own, ignore_errors=True)
    from vlmbench.execute import package_versions

    return {"entry": entry.name, "seed": seed, "cells": report_cells, "versions": package_versions(),
            "reproduced": all(c["status"] == "reproduced" for c in report_cells)}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vlmbench.leaderboards.world", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_make = sub.add_parser("make", help="compute the world entry (complete cells are reused)")
    p_make.add_argument("entry", type=Path)
    p_make.add_argument("--defense", action="append", help="only these defenses (repeatable)")
    p_rep = sub.add_parser("reproduce", help="re-run a seeded subset of the entry's cells and compare")
    p_rep.add_argument("entry", type=Path)
    p_rep.add_argument("--cells", type=int, default=3)
    p_rep.add_argument("--seed", type=int, default=0)
    p_rep.add_argument("--defense", action="append", help="choose only among these defenses' cells")
    p_rep.add_argument("--report", type=Path, required=True, help="where to write the JSON report")
    args = parser.parse_args(argv)
    try:
        if args.command == "make":
            record = make(args.entry, args.defense)
            print(f"{sum(len(c['cells']) for c in record['commands'])} cells in {args.entry / 'results'}")
            return 0
        report = reproduce(args.entry, args.cells, args.seed, args.defense)
        args.report.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        for cell in report["cells"]:
            print(f"{cell['status']:>15}  {cell['defense']} {cell['attack']} {cell['eps_label']} {cell['track']} {cell['dataset']}")
        return 0
    except VlmbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
