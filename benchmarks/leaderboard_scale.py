"""Leaderboard site build at scale: time, files and bytes of ``vlmbench leaderboard build`` on a
synthetic results set of N cells.

The cells are fabricated from real ones: a small seed set (``vlmbench run`` of world-vit, no defense,
PGD-10 and CW-10 at ℓ∞ 1/255 and 4/255 on the six world datasets, 6 class-balanced images each; about
a minute on a CPU) is cloned under new identities — synthetic model names (``synthetic-model-007``) and
synthetic defense names (20 by default, several models each), each (model, defense) pair taking the
whole seed set, so that it makes one full board row per ε — with the per-sample predictions perturbed
deterministically so that the figures differ. Every clone gets its recomputed protocol record and
cell id (``Protocol.cell_hash``, as the runner computes it) and is written with vlmbench's own
``results.to_table`` + ``results.write_atomic``, so it carries a valid checksum and passes
``results.read_cell``. The clones are spread over a few results folders (entries) and one submission.

Then ``vlmbench.leaderboards.site.build`` runs twice on them (the second build replaces the first);
the script prints cells, per-sample rows, boards, entries, files, MB and seconds of each build, and
whether the two sites are byte-identical. Nothing is asserted on time.

    .venv/bin/python benchmarks/leaderboard_scale.py [--cells 2000] [--out DIR] [--seed-results DIR] [--keep] [--profile]

The fabrication is importable (``fabricate``, ``load_seed``, ``make_seed``), for the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlmbench import results
from vlmbench.protocol import PluginRef, Protocol

SEED_ARGS = ("--model", "world-vit", "--defense", "none", "--attack", "pgd-10,cw-10", "--eps", "1/255,4/255",
             "--samples", "6", "--selection", "balanced", "--adaptive-steps", "0")
SUBMISSION = {"method": "synthetic clone (benchmarks/leaderboard_scale.py)", "paper": None, "code": None,
              "weights": "none: fabricated rows", "submitted_by": "leaderboard_scale benchmark", "hardware": "none"}


# ---------------------------------------------------------------------------------------------
# the seed set


def make_seed(output: Path, args: tuple[str, ...] | list[str] = SEED_ARGS) -> Path:
    """Run ``vlmbench run ARGS --output OUTPUT`` in-process (typer's CliRunner); return ``output``."""
    from typer.testing import CliRunner

    from vlmbench.cli import app

    result = CliRunner().invoke(app, ["run", *args, "--output", str(output)])
    if result.exit_code != 0:
        raise RuntimeError(f"seed run failed (exit {result.exit_code}): {result.output[-2000:]}"
                           + (f" {result.exception!r}" if result.exception else ""))
    return output


@dataclasses.dataclass
class SeedCell:
    """One real cell to clone: its rows (as read by ``read_cell``), run metadata and protocol."""

    file: Path
    rows: pd.DataFrame
    run: dict[str, Any]
    protocol: Protocol


def load_seed(folder: Path) -> list[SeedCell]:
    """The cells of ``folder`` that can be cloned (deterministic pipeline: one evaluation draw, no
    superclass map), sorted by file name."""
    cells = []
    for file in results.result_files(Path(folder)):
        rows = results.read_cell(file)
        protocol = Protocol.from_json(rows["protocol"].iloc[0])
        if protocol.eval_draws != 1 or protocol.superclasses is not None:
            continue
        cells.append(SeedCell(file, rows, results.run_metadata_of(file), protocol))
    if not cells:
        raise ValueError(f"no clonable cells (one evaluation draw, no superclass map) under {folder}")
    return sorted(cells, key=lambda c: c.file.name)


# ---------------------------------------------------------------------------------------------
# cloning


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_name(m: int) -> str:
    return f"synthetic-model-{m:03d}"


def defense_name(d: int) -> str:
    return f"synthetic-defense-{d:02d}"


def clone_cell(seed: SeedCell, index: int, combo: int, model: str, defense: str, classes: int,
               dataset_index: int, attack_index: int) -> tuple[pd.DataFrame, dict[str, Any], Protocol]:
    """Rows, run metadata and protocol of clone ``index`` of ``seed`` as (``model``, ``defense``).

    Predictions are perturbed deterministically and consistently:

    * clean predictions depend on (combo, dataset) only, so the cells of one dataset of a board row
      share them (as real cells of one model do): a combo-level fraction of images becomes wrong,
      another fraction right, the rest keep the seed's prediction;
    * an image stays robust unless a uniform draw of (combo, dataset, attack) falls below a break
      rate that grows with ε, so robustness is monotone in ε (no ``eps-not-monotone`` flag);
    * the wrong adversarial classes are drawn from a Generator seeded by the clone index.

    ``clean_correct``, ``adv_correct``, ``robust``, ``clean_correct_rate`` and ``robust_rate`` are
    recomputed from predictions and labels.
    """
    rows = seed.rows.copy()
    label = rows["label"].to_numpy(np.int64)
    where = rows["sample_index"].to_numpy(np.int64)
    size = int(where.max()) + 1
    skill = np.random.default_rng([combo, 7])
    wrong_rate, fix_rate, break_rate = skill.uniform(0, 0.3), skill.uniform(0, 0.5), skill.uniform(0.05, 0.6)

    shared = np.random.default_rng([combo, dataset_index, 2])
    u_clean, shift_clean = shared.random(size)[where], shared.integers(1, classes, size)[where]
    clean = rows["clean_pred"].to_numpy(np.int64).copy()
    clean = np.where(u_clean < wrong_rate, (label + shift_clean) % classes, clean)
    clean = np.where(u_clean > 1 - fix_rate, label, clean)

    u_adv = np.random.default_rng([combo, dataset_index, attack_index, 1]).random(size)[where]
    threshold = 1 - (1 - break_rate) ** max(seed.protocol.threat.eps * 255, 1e-3)
    own = np.random.default_rng(index)
    shift_adv = own.integers(1, classes, len(rows))
    clean_correct = clean == label
    adv = np.where(clean_correct & (u_adv >= threshold), label, (label + shift_adv) % classes)
    adv = np.where(clean_correct, adv, clean)

    p = seed.protocol
    model_fp, defense_fp = _fingerprint(f"model:{model}"), _fingerprint(f"defense:{defense}")
    protocol = dataclasses.replace(
        p,
        model=PluginRef(model, model_fp, dict(p.model.params), p.model.fingerprint),
        defense=PluginRef(defense, "1", {defense: {"strength": combo % 7}}, defense_fp),
    )
    adv_correct = adv == label
    robust = clean_correct & adv_correct
    rows = rows.assign(
        cell_id=protocol.cell_hash(), model=model, model_fingerprint=model_fp, defense=defense,
        defense_fingerprint=defense_fp, clean_pred=clean, adv_pred=adv, clean_correct=clean_correct,
        adv_correct=adv_correct, robust=robust, clean_correct_rate=clean_correct.astype(float),
        robust_rate=robust.astype(float), protocol=protocol.to_json(),
    )
    run = json.loads(json.dumps(seed.run))
    run["command"] = f"synthetic clone {index} of {seed.file.name} (benchmarks/leaderboard_scale.py)"
    run["defenses"] = {defense: {"kind": "training", "stochastic": False, "non_differentiable": [],
                                 "paper": f"https://example.org/papers/{defense}", "code": None, "reported": []}}
    return rows, run, protocol


@dataclasses.dataclass
class Fabrication:
    """What :func:`fabricate` wrote."""

    sources: list[Path]  # results folders, one entry each
    submissions: Path | None  # folder of submission entries (``<entry>/submission.json`` + ``results/``)
    files: list[Path]
    cell_ids: list[str]
    rows: int  # per-sample rows over all files
    models: list[str]
    defenses: list[str]


def fabricate(seed: list[SeedCell], n_cells: int, root: Path, entries: int = 5, submissions: int = 1,
              defenses: int = 20) -> Fabrication:
    """Write ``n_cells`` clones of the ``seed`` cells under ``root``.

    Clone ``i`` copies seed cell ``i % len(seed)`` for the (model, defense) pair ``k = i // len(seed)``:
    defense ``k % defenses``, model ``k // defenses`` (so each defense gets several models). Pair ``k``
    goes, whole, to entry ``k % (entries + submissions)``: the first ``entries`` are results folders
    ``root/results/synthetic-entry-E``, the rest submissions ``root/submissions/synthetic-sub-S``.
    Deterministic: the same seed and arguments give the same files.
    """
    if n_cells < 1 or entries + submissions < 1 or defenses < 1:
        raise ValueError("need at least one cell, one entry and one defense")
    root = Path(root)
    folders = [root / "results" / f"synthetic-entry-{e}" for e in range(entries)]
    subs_root = root / "submissions" if submissions else None
    for s in range(submissions):
        sub = subs_root / f"synthetic-sub-{s}"  # type: ignore[operator]
        sub.mkdir(parents=True, exist_ok=True)
        (sub / "submission.json").write_text(json.dumps({**SUBMISSION, "notes": f"synthetic submission {s}"}, indent=1) + "\n")
        folders.append(sub / "results")
    datasets = sorted({c.protocol.data.dataset for c in seed})
    attacks = sorted({c.protocol.attack.name for c in seed})
    classes = {}
    for name in datasets:
        rows = pd.concat([c.rows for c in seed if c.protocol.data.dataset == name])
        classes[name] = max(2, int(rows[["label", "clean_pred", "adv_pred"]].to_numpy().max()) + 1)

    from vlmbench.cell import cell_filename

    files, ids, total, models_used, defenses_used = [], [], 0, set(), set()
    for i in range(n_cells):
        cell, combo = seed[i % len(seed)], i // len(seed)
        model, defense = model_name(combo // defenses), defense_name(combo % defenses)
        rows, run, protocol = clone_cell(cell, i, combo, model, defense, classes[cell.protocol.data.dataset],
                                         datasets.index(cell.protocol.data.dataset), attacks.index(cell.protocol.attack.name))
        path = folders[combo % len(folders)] / cell_filename(protocol)
        results.write_atomic(results.to_table(rows, run), path)
        files.append(path)
        ids.append(protocol.cell_hash())
        total += len(rows)
        models_used.add(model)
        defenses_used.add(defense)
    used = {f.parent for f in files}
    return Fabrication(
        sources=[f for f in folders[:entries] if f in used],
        submissions=subs_root if any(f in used for f in folders[entries:]) else None,
        files=files, cell_ids=ids, rows=total, models=sorted(models_used), defenses=sorted(defenses_used),
    )


# ---------------------------------------------------------------------------------------------
# measuring


def tree_stats(folder: Path) -> tuple[int, int, str]:
    """(files, bytes, SHA-256 over every relative path and content) of ``folder``."""
    digest, count, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = path.read_bytes()
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
        count, size = count + 1, size + len(data)
    return count, size, digest.hexdigest()


def timed_build(fab: Fabrication, out: Path, profile: bool = False) -> tuple[Any, float]:
    from vlmbench.leaderboards import site

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    report = site.build(fab.sources, out, submissions=fab.submissions)
    seconds = time.perf_counter() - start
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)
        print(text.getvalue())
    return report, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=2000, help="synthetic cells to fabricate (default 2000)")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--seed-results", type=Path, default=None, help="existing results folder to clone (default: run a small seed set)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (always kept with --out)")
    parser.add_argument("--entries", type=int, default=5, help="results folders (entries) to spread the cells over")
    parser.add_argument("--submissions", type=int, default=1, help="submission entries besides them")
    parser.add_argument("--defenses", type=int, default=20, help="synthetic defense names")
    parser.add_argument("--profile", action="store_true", help="cProfile the first build and print the top functions")
    args = parser.parse_args(argv)

    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vlmbench-lbscale-"))
    work.mkdir(parents=True, exist_ok=True)
    data, out = work / "data", work / "site"
    if data.exists():
        shutil.rmtree(data)
    try:
        seed_folder = args.seed_results
        start = time.perf_counter()
        if seed_folder is None:
            seed_folder = work / "seed"
            if not any(seed_folder.glob("*.parquet")):
                print(f"making the seed set in {seed_folder}: vlmbench run {' '.join(SEED_ARGS)} ...", flush=True)
                make_seed(seed_folder)
        seed = load_seed(seed_folder)
        seed_seconds = time.perf_counter() - start
        print(f"seed: {len(seed)} cells from {seed_folder} ({seed_seconds:.1f} s)", flush=True)

        start = time.perf_counter()
        fab = fabricate(seed, args.cells, data, entries=args.entries, submissions=args.submissions, defenses=args.defenses)
        fabricate_seconds = time.perf_counter() - start
        print(f"fabricated {len(fab.files)} cells ({fab.rows} rows, {len(fab.models)} models x {len(fab.defenses)} defenses) "
              f"in {fabricate_seconds:.1f} s", flush=True)
        sample = fab.files[:: max(1, len(fab.files) // 40)]
        for file in sample:
            results.read_cell(file)
        assert len(set(fab.cell_ids)) == len(fab.cell_ids), "fabricated cell ids repeat"
        print(f"read_cell: ok on {len(sample)} sampled files", flush=True)

        builds = []
        for attempt in (1, 2):
            report, seconds = timed_build(fab, out, profile=args.profile and attempt == 1)
            files, size, digest = tree_stats(out)
            builds.append((report, seconds, files, size, digest))
            statuses = board_rows(out)
            print(f"build {attempt}: {seconds:.2f} s; {report.summary()}; on disk {files} files, {size / 1e6:.2f} MB; "
                  f"board rows {sum(statuses.values())} {statuses}", flush=True)
            if report.invalid:
                print("  invalid entries: " + "; ".join(report.invalid))
        deterministic = builds[0][4] == builds[1][4]
        print(f"deterministic: {'yes' if deterministic else 'no'}")
        print()
        print("| build | cells | rows | boards | entries | files | MB | seconds |")
        print("|---|---|---|---|---|---|---|---|")
        for attempt, (report, seconds, files, size, _) in enumerate(builds, 1):
            print(f"| {('1 (cold: first imports)', '2 (rebuild)')[attempt - 1]} | {len(fab.files)} | {fab.rows} | {report.boards} | {report.entries} | {files} | "
                  f"{size / 1e6:.2f} | {seconds:.2f} |")
        print(f"\nfabrication: {fabricate_seconds:.1f} s; deterministic: {'yes' if deterministic else 'no'}; work folder: {work}")
    finally:
        if args.out is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def board_rows(out: Path) -> dict[str, int]:
    """Board rows of a built site by status, from its ``site.json`` ({} when unreadable)."""
    try:
        model = json.loads((out / "site.json").read_text())
    except (OSError, ValueError):
        return {}
    counts: dict[str, int] = {}
    for board in model.get("boards", []):
        for row in board.get("rows", []):
            counts[str(row.get("status"))] = counts.get(str(row.get("status")), 0) + 1
    return dict(sorted(counts.items()))


if __name__ == "__main__":
    sys.exit(main())
