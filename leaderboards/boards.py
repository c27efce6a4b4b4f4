"""The leaderboard's numbers: boards, rows, statuses and ranks, computed from collected result rows.

:func:`site_model` turns a :class:`~vlmbench.leaderboards.collect.Collection` and the standards
(:func:`load_standards`, ``leaderboards/standards.json``) into the plain-data
:class:`~vlmbench.leaderboards.model.Site` the renderer draws. Everything is derived from the rows and
their run metadata (never from an imported plugin), in a fixed order: the same input gives the same
output. The rules are documented in ``docs/leaderboards.md``; in short:

* **Board** = (preset, norm, ε, track). The preset is the rows' ``preset`` column; rows without one
  whose datasets (per entry, model, defense, norm, ε and track) are all ``world-*`` belong to the
  ``world`` board, other preset-less rows to ``custom``. Transfer-track cells are on no board (they
  are in ``figures``).
* **Row** = one (entry, model, defense) on a board. Its attack columns are the standard's attacks
  (cells whose ``attack`` is exactly the standard's name, untargeted, without superclass map), then
  every other attack label on the board.
* **Figures**: a per-attack figure is the unweighted mean over the datasets the attack ran on of the
  per-cell accuracy (mean of ``robust_rate``; clean: of ``clean_correct_rate``), as
  :func:`vlmbench.results.summarize` computes them. ``worst`` is per dataset the per-sample worst case
  over the standard attacks the row ran there (:func:`vlmbench.results.worst_case`; one attack: that
  attack), then the mean over datasets. Intervals: :func:`wilson` at p = the figure, n = the images
  behind it (summed over the datasets).
* **Status**: ``complete``, ``incomplete`` (standard datasets or attacks missing) or ``unreliable``
  (sanity flags, mixed sample sets or variants, several cells for one attack and dataset, a test-time
  defense on the oblivious board). Only complete rows are ranked.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from vlmbench import results
from vlmbench.errors import VlmbenchError
from vlmbench.leaderboards.collect import Collection
from vlmbench.leaderboards.model import Board, BoardRow, DatasetFigure, Figure, Site, Standard
from vlmbench.protocol import ReportedFigure

STANDARDS_FILE = Path(__file__).with_name("standards.json")
WORLD, CUSTOM = "world", "custom"
TRACKS = ("oblivious", "adaptive")  # the tracks that have boards, in page order
Z95 = 1.959963984540054  # two-sided 95% normal quantile
UNRELIABLE_FLAGS: frozenset[str] = frozenset({
    "forward-randomness", "zero-gradients", "undefended-agreement", "vanishing-gradients", "robust-above-clean",
    "square-beats-whitebox", "eps-not-monotone", "adaptive-weaker",
})
"""Sanity flags that make a row ``unreliable``: every flag of :data:`vlmbench.flags.FLAGS` (each says the
number may overstate robustness: masked or vanishing gradients, undeclared randomness, a broken attack)."""
OBLIVIOUS_ONLY = "oblivious attack only; see the adaptive board"
OBLIVIOUS_NO_ADAPTIVE = "oblivious attack only; no adaptive evaluation"


class StandardsError(VlmbenchError):
    """``standards.json`` is missing or malformed."""


# ---------------------------------------------------------------------------------------------
# standards and intervals


def load_standards(path: Path | None = None) -> dict[str, Standard]:
    """The standards of ``path`` (default: ``leaderboards/standards.json``), by preset name, in file order.

    Each entry: ``{"attacks": [labels], "datasets": [names], "adaptive_required": bool, "description": str}``.

    Raises:
        StandardsError: unreadable file or a malformed entry (one line).
    """
    path = STANDARDS_FILE if path is None else Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StandardsError(f"cannot read leaderboard standards {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise StandardsError(f"{path}: must hold an object of presets")
    standards = {}
    for name, entry in raw.items():
        ok = (isinstance(entry, dict)
              and isinstance(entry.get("attacks"), list) and all(isinstance(a, str) for a in entry["attacks"])
              and isinstance(entry.get("datasets"), list) and all(isinstance(d, str) for d in entry["datasets"])
              and isinstance(entry.get("adaptive_required"), bool) and isinstance(entry.get("description"), str)
              and set(entry) == {"attacks", "datasets", "adaptive_required", "description"})
        if not ok or not entry["attacks"]:
            raise StandardsError(f"{path}: standard {name!r} needs exactly attacks (non-empty list of labels), "
                                 "datasets (list), adaptive_required (bool) and description (string)")
        standards[name] = Standard(name, tuple(entry["attacks"]), tuple(entry["datasets"]),
                                   entry["adaptive_required"], entry["description"])
    return standards


def wilson(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``rate`` in [0, 1] observed on ``n`` trials.

    ``(c ± h) / (1 + z²/n)`` with ``c = rate + z²/(2n)`` and ``h = z·sqrt(rate(1-rate)/n + z²/(4n²))``.
    ``rate`` need not be a ratio of integers (a mean over datasets or over a random defense's draws);
    ``n = 0`` gives ``(0, 1)``."""
    if n <= 0:
        return 0.0, 1.0
    rate = min(1.0, max(0.0, rate))
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def figure(rate: float, n: int) -> Figure:
    """A :class:`Figure` in percent from a rate in [0, 1] over ``n`` images (:func:`wilson` interval)."""
    low, high = wilson(rate, n)
    return Figure(value=100 * float(rate), low=100 * low, high=100 * high, n=int(n))


def mean_figure(rates: Iterable[float], counts: Iterable[int]) -> Figure | None:
    """The unweighted mean of per-dataset rates, with the Wilson interval at that mean and the summed
    image count (the interval of the pooled images); None without datasets."""
    rates, counts = list(rates), list(counts)
    if not rates:
        return None
    return figure(sum(rates) / len(rates), sum(counts))


# ---------------------------------------------------------------------------------------------
# per-cell table


def _indices_key(indices: pd.Series) -> str:
    return hashlib.sha256(",".join(map(str, sorted(indices.tolist()))).encode()).hexdigest()[:16]


def cell_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (entry, cell): display columns, ``label`` (:func:`vlmbench.results.attack_labels`),
    ``n``, ``clean`` and ``robust`` (rates in [0, 1]), ``images`` (hash of the sorted sample indices),
    ``flags`` and the cost columns. Sorted by entry and cell id."""
    grouped = rows.groupby(["entry", "cell_id"], sort=True)
    firsts = grouped.first()
    table = firsts[["model", "defense", "attack", "track", "norm", "eps", "eps_label", "dataset", "preset",
                    "target_mode", "superclasses", "cascade_after", "steps", "n_samples", "flags", "precision"]].copy()
    table["label"] = results.attack_labels(firsts).to_numpy()
    table["n"] = grouped.size()
    table["clean"] = grouped["clean_correct_rate"].mean()
    table["robust"] = grouped["robust_rate"].mean()
    table["images"] = grouped["sample_index"].agg(_indices_key)
    time = grouped["infer_time_s"].mean()
    undefended = grouped["infer_time_s_undefended"].mean()
    table["time_ratio"] = (time / undefended.where(undefended > 0)).astype(float)
    table["forward"] = grouped["infer_forward_passes"].mean()
    table["backward"] = grouped["infer_backward_passes"].mean()
    return table


def board_presets(records: list[dict[str, Any]]) -> list[str]:
    """The board preset of each cell record: its ``preset``; preset-less cells: ``world`` when every
    dataset of their (entry, model, defense, norm, ε, track) group is a world dataset, else ``custom``."""
    def group(cell: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(cell[k]) for k in ("entry", "model", "defense", "norm", "eps_label", "track"))

    world: dict[tuple[str, ...], bool] = {}
    for cell in records:
        if not cell["preset"]:
            world[group(cell)] = world.get(group(cell), True) and str(cell["dataset"]).startswith("world-")
    return [str(c["preset"]) if c["preset"] else WORLD if world[group(c)] else CUSTOM for c in records]


# ---------------------------------------------------------------------------------------------
# defense declarations (run metadata "defenses")


_KIND_ORDER = ("training", "test-time")


def _declarations(runs: list[dict[str, Any]], part: str) -> dict[str, Any] | None:
    for run in runs:
        defenses = run.get("defenses")
        if isinstance(defenses, dict) and isinstance(defenses.get(part), dict):
            return defenses[part]
    return None


def defense_kind(defense: str, runs: list[dict[str, Any]], test_time_signs: bool) -> str:
    """``none``, ``training``, ``test-time`` or ``training+test-time`` for ``defense`` (``+``-composed).

    Each part's ``kind`` comes from the run metadata ``defenses`` (a part is test-time if its declared
    kind contains ``test-time``). A part that nothing declares (older files) is inferred: ``test-time``
    when the cells show it (an adaptive track, or inference cost other than 1 forward + 0 backward
    passes), else ``training``; the part ``none`` is none."""
    parts: set[str] = set()
    for part in defense.split("+"):
        if part == "none":
            continue
        info = _declarations(runs, part)
        kind = info.get("kind") if info else None
        if isinstance(kind, str):
            parts.update(k for k in kind.split("+") if k in _KIND_ORDER)
        else:
            parts.add("test-time" if test_time_signs else "training")
    return "+".join(k for k in _KIND_ORDER if k in parts) or "none"


def _provenance(defense: str, runs: list[dict[str, Any]]) -> tuple[str | None, str | None, list[ReportedFigure]]:
    """paper, code (the parts' distinct values joined by a space) and reported figures (concatenated)."""
    papers: list[str] = []
    codes: list[str] = []
    reported: list[ReportedFigure] = []
    for part in defense.split("+"):
        info = _declarations(runs, part) or {}
        for key, found in (("paper", papers), ("code", codes)):
            value = info.get(key)
            if isinstance(value, str) and value and value not in found:
                found.append(value)
        for item in info.get("reported") or []:
            try:
                reported.append(ReportedFigure(**item))
            except TypeError:
                continue
    return (" ".join(papers) or None), (" ".join(codes) or None), reported


# ---------------------------------------------------------------------------------------------
# rows


def _matches(flag: dict[str, Any], cell: dict[str, Any]) -> bool:
    return all(flag[k] in ("*", str(cell[k])) for k in ("model", "defense", "attack", "track", "norm", "eps_label", "dataset"))


def _is_standard(cell: dict[str, Any], attack: str) -> bool:
    return cell["attack"] == attack and cell["target_mode"] == "untargeted" and cell["superclasses"] == ""


def _column_of(cell: dict[str, Any], standard: Standard) -> str:
    for attack in standard.attacks:
        if _is_standard(cell, attack):
            return attack
    return str(cell["label"])


def _worst(rows: pd.DataFrame, picked: dict[tuple[str, str], dict[str, Any]], attacks: tuple[str, ...],
           datasets: list[str]) -> tuple[list[float], list[int], list[str]]:
    """Per dataset with at least one standard attack: the per-sample worst-case rate over those attacks
    (:func:`vlmbench.results.worst_case`, one call for all datasets: it never combines two datasets)
    and its image count; and the datasets whose cells did not evaluate the same images (there the
    worst case is the smallest per-attack rate, an upper bound)."""
    members = {d: [picked[(d, a)] for a in attacks if (d, a) in picked] for d in datasets}
    several = [m["cell_id"] for same in members.values() if len(same) > 1 for m in same]
    combined = results.worst_case(rows[rows["cell_id"].isin(several)]) if several else rows.iloc[:0]
    by_id = {cell_id: part for cell_id, part in combined.groupby("cell_id", sort=False)} if not combined.empty else {}
    rates, counts, mixed = [], [], []
    for dataset in datasets:
        same = members[dataset]
        if not same:
            continue
        if len(same) == 1:
            rates.append(float(same[0]["robust"]))
            counts.append(int(same[0]["n"]))
            continue
        part = by_id.get(results._worst_id([m["cell_id"] for m in same]))  # present only when all combined
        if part is not None:
            rates.append(float(part["robust_rate"].mean()))
            counts.append(len(part))
        else:
            rates.append(min(float(m["robust"]) for m in same))
            counts.append(min(int(m["n"]) for m in same))
            mixed.append(dataset)
    return rates, counts, mixed


def _sorted_unique(values: Iterable[Any]) -> list[Any]:
    return sorted(set(values), key=str)


def _rank(rows: list[BoardRow]) -> list[BoardRow]:
    """Complete rows ranked 1..k by worst desc, clean desc, then entry/model/defense; the others after
    them (rank None), by worst desc (none last), then names."""
    def names(row: BoardRow) -> tuple[str, str, str]:
        return row.entry, row.model, row.defense

    complete = [r for r in rows if r.status == "complete" and r.worst is not None]
    complete.sort(key=lambda r: (-r.worst.value, -r.clean.value, *names(r)))  # type: ignore[union-attr]
    ranked = {id(r) for r in complete}
    others = [r for r in rows if id(r) not in ranked]
    others.sort(key=lambda r: (r.worst is None, -(r.worst.value if r.worst else 0.0), -r.clean.value, *names(r)))
    for position, row in enumerate(complete, start=1):
        row.rank = position
    for row in others:
        row.rank = None
    return complete + others


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def site_model(collection: Collection, standards: dict[str, Standard] | None = None) -> Site:
    """The whole site's data from ``collection`` (see the module docstring and docs/leaderboards.md)."""
    from vlmbench.flags import FLAGS, result_flags

    standards = load_standards() if standards is None else standards
    rows = collection.rows
    entries = list(collection.entries)
    if rows.empty:
        return Site([], [], list(collection.cells), entries, dict(FLAGS))
    runs = {(c.entry, c.cell_id): c.run for c in collection.cells}
    cells = cell_table(rows)
    records = cells.reset_index().to_dict("records")
    for cell, preset in zip(records, board_presets(records)):
        cell["board"] = preset
    by_entry_rows = {entry: part for entry, part in rows.groupby("entry", sort=True)}

    # sanity flags per cell (stored per-cell flags and the cross-cell ones), compared within an entry
    cell_flags: dict[tuple[str, str], set[str]] = {}
    for entry, part in by_entry_rows.items():
        found = result_flags(part).to_dict("records")
        for cell in (r for r in records if r["entry"] == entry):
            cell_flags[(entry, cell["cell_id"])] = {f["flag"] for f in found if _matches(f, cell)}

    submission_meta = {e.name: e.metadata for e in entries}
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in records:
        if cell["track"] not in TRACKS:
            continue
        key = (cell["board"], cell["norm"], cell["eps"], cell["eps_label"], cell["track"], cell["entry"], cell["model"], cell["defense"])
        groups.setdefault(key, []).append(cell)

    settings: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for cell in records:
        settings.setdefault((cell["entry"], cell["model"], cell["defense"]), []).append(cell)
    boards: dict[tuple[Any, ...], list[BoardRow]] = {}
    for key in sorted(groups, key=lambda k: tuple(map(str, k))):
        preset, norm, eps, eps_label, track, entry, model, defense = key
        members = sorted(groups[key], key=lambda c: c["cell_id"])
        standard = standards.get(preset) or _fallback_standard(preset, standards)
        entry_rows = by_entry_rows[entry]
        same_setting = settings[(entry, model, defense)]
        row = _board_row(members, standard, track, entry_rows, runs, cell_flags, same_setting, submission_meta.get(entry, {}))
        boards.setdefault((preset, norm, eps, eps_label, track), []).append(row)

    # adaptive boards: test-time rows get the oblivious figure on the same datasets
    for (preset, norm, eps, eps_label, track), board_rows in boards.items():
        if track != "adaptive":
            continue
        standard = standards.get(preset) or _fallback_standard(preset, standards)
        for row in board_rows:
            if "test-time" not in row.defense_kind or row.worst is None:
                continue
            oblivious = [c for c in settings[(row.entry, row.model, row.defense)] if c["norm"] == norm
                         and c["eps_label"] == eps_label and c["track"] == "oblivious" and c["board"] == preset]
            row.oblivious_worst = _oblivious_worst(oblivious, standard, row.datasets, by_entry_rows[row.entry])
            if row.oblivious_worst is not None:
                row.adaptive_gap = row.oblivious_worst.value - row.worst.value

    site_boards = []
    for (preset, norm, eps, eps_label, track) in sorted(boards, key=lambda k: (k[0], k[1], k[2], TRACKS.index(k[4]))):
        standard = standards.get(preset) or _fallback_standard(preset, standards)
        board_rows = _rank(boards[(preset, norm, eps, eps_label, track)])
        present = {a for r in board_rows for a, f in r.attacks.items() if f is not None}
        columns = [*standard.attacks, *sorted(present - set(standard.attacks))]
        for r in board_rows:
            r.attacks = {c: r.attacks.get(c) for c in columns}
        site_boards.append(Board(
            id=_slug(f"{preset}-{norm}-{eps_label.replace('/', '_')}-{track}"),
            title=f"{preset} · {norm} ε = {eps_label} · {track}",
            preset=preset, norm=norm, eps=float(eps), eps_label=eps_label, track=track, standard=standard,
            attack_columns=columns, rows=board_rows,
        ))
    return Site(site_boards, _figures(rows, records), list(collection.cells), entries, dict(FLAGS))


def _fallback_standard(preset: str, standards: dict[str, Standard]) -> Standard:
    base = standards.get(CUSTOM)
    attacks = base.attacks if base else ("pgd-10", "cw-10")
    return Standard(preset, attacks, (), True, f"{preset}: no standard in standards.json; no dataset is required")


def _board_row(members: list[dict[str, Any]], standard: Standard, track: str, entry_rows: pd.DataFrame,
               runs: dict[tuple[str, str], dict[str, Any]], cell_flags: dict[tuple[str, str], set[str]],
               same_setting: list[dict[str, Any]], submission: dict[str, Any]) -> BoardRow:
    first = members[0]
    entry, model, defense = first["entry"], first["model"], first["defense"]
    unreliable: list[str] = []
    incomplete: list[str] = []

    # one cell per (dataset, column); several: the most images, then the smallest cell id, and unreliable
    by_slot: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in members:
        by_slot.setdefault((cell["dataset"], _column_of(cell, standard)), []).append(cell)
    picked: dict[tuple[str, str], dict[str, Any]] = {}
    for slot in sorted(by_slot):
        candidates = sorted(by_slot[slot], key=lambda c: (-int(c["n"]), c["cell_id"]))
        picked[slot] = candidates[0]
        if len(candidates) > 1:
            unreliable.append(f"several cells for {slot[1]} on {slot[0]}: {', '.join(c['cell_id'] for c in candidates)}")
    datasets = _sorted_unique(c["dataset"] for c in members)

    # attack columns
    attacks: dict[str, Figure | None] = {}
    for column in _sorted_unique(col for _, col in picked):
        chosen = [picked[(d, column)] for d in datasets if (d, column) in picked]
        attacks[column] = mean_figure([c["robust"] for c in chosen], [c["n"] for c in chosen])
    for attack in standard.attacks:
        attacks.setdefault(attack, None)

    rows_of_members = entry_rows[entry_rows["cell_id"].isin([c["cell_id"] for c in members])]
    rates, counts, mixed = _worst(rows_of_members, picked, standard.attacks, datasets)
    worst = mean_figure(rates, counts)

    # clean: per dataset the mean over the row's cells of that dataset, then over datasets
    clean_rates, images = [], []
    for dataset in datasets:
        here = [c for c in members if c["dataset"] == dataset]
        clean_rates.append(sum(c["clean"] for c in here) / len(here))
        images.append(max(int(c["n"]) for c in here))
    clean = mean_figure(clean_rates, images)
    assert clean is not None

    # completeness
    missing = [d for d in standard.datasets if d not in datasets]
    if missing:
        incomplete.append(f"missing datasets: {', '.join(missing)}")
    never = [a for a in standard.attacks if not any((d, a) in picked for d in datasets)]
    if never:
        incomplete.append(f"missing attacks: {', '.join(never)}")
    for attack in standard.attacks:
        if attack in never:
            continue
        lacking = [d for d in datasets if (d, attack) not in picked]
        if lacking:
            incomplete.append(f"missing attacks: {attack} on {', '.join(lacking)}")

    # reliability: sample sets, variants, flags
    for dataset in datasets:
        sets = _sorted_unique((int(c["n_samples"]), c["images"]) for c in members if c["dataset"] == dataset)
        if len(sets) > 1:
            unreliable.append(f"mixed sample sets on {dataset} ({', '.join(f'n={n} {h[:8]}' for n, h in sets)})")
    for dataset in mixed:
        text = f"mixed sample sets on {dataset}"
        if not any(r.startswith(text) for r in unreliable):
            unreliable.append(f"{text} (the worst case there is the smallest per-attack figure)")
    precisions = _sorted_unique(str(c["precision"]) for c in members)
    if len(precisions) > 1:
        unreliable.append(f"mixed precisions: {', '.join(precisions)}")
    variants = _sorted_unique(results.describe_cells(rows_of_members)["variant"])
    if len(variants) > 1:
        unreliable.append(f"mixed variants: {' | '.join(v or 'default' for v in variants)}")
    flags = sorted(set().union(*(cell_flags.get((entry, c["cell_id"]), set()) for c in members)))
    raised = [f for f in flags if f in UNRELIABLE_FLAGS]
    if raised:
        unreliable.append(f"sanity flags: {', '.join(raised)}")

    # defense declarations and the test-time rule
    cell_runs = [runs.get((entry, c["cell_id"]), {}) for c in sorted(same_setting, key=lambda c: c["cell_id"])]
    signs = any(c["track"] == "adaptive" or c["forward"] != 1 or c["backward"] != 0 for c in same_setting)
    kind = defense_kind(defense, cell_runs, signs)
    if "test-time" in kind and track == "oblivious" and standard.adaptive_required:
        adaptive = any(c["track"] == "adaptive" and c["norm"] == first["norm"] and c["eps_label"] == first["eps_label"]
                       for c in same_setting)
        unreliable.insert(0, OBLIVIOUS_ONLY if adaptive else OBLIVIOUS_NO_ADAPTIVE)
    paper, code, reported = _provenance(defense, cell_runs)
    if submission.get("paper"):
        paper = submission["paper"]
    if submission.get("code"):
        code = submission["code"]

    status = "unreliable" if unreliable else "incomplete" if incomplete else "complete"
    ratios = [c["time_ratio"] for c in members if isinstance(c["time_ratio"], float) and math.isfinite(c["time_ratio"])]
    return BoardRow(
        entry=entry, model=model, defense=defense, defense_kind=kind, rank=None, status=status,
        reasons=[*incomplete, *unreliable], clean=clean, worst=worst, attacks=attacks,
        oblivious_worst=None, adaptive_gap=None,
        cost_time_ratio=sum(ratios) / len(ratios) if ratios else None,
        cost_forward=sum(float(c["forward"]) for c in members) / len(members),
        cost_backward=sum(float(c["backward"]) for c in members) / len(members),
        n_images=sum(images), datasets=datasets, flags=flags, paper=paper, code=code, reported=reported,
        cells=sorted(c["cell_id"] for c in members), precision="+".join(precisions),
    )


def _oblivious_worst(cells: list[dict[str, Any]], standard: Standard, datasets: list[str],
                     entry_rows: pd.DataFrame) -> Figure | None:
    """The oblivious worst case (standard attacks) on exactly ``datasets``; None when one is missing."""
    picked: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in sorted(cells, key=lambda c: (-int(c["n"]), c["cell_id"])):
        column = _column_of(cell, standard)
        if column in standard.attacks:
            picked.setdefault((cell["dataset"], column), cell)
    if not all(any((d, a) in picked for a in standard.attacks) for d in datasets):
        return None
    part = entry_rows[entry_rows["cell_id"].isin([c["cell_id"] for c in picked.values()])]
    rates, counts, _ = _worst(part, picked, standard.attacks, datasets)
    return mean_figure(rates, counts)


def _figures(rows: pd.DataFrame, records: list[dict[str, Any]]) -> list[DatasetFigure]:
    """One figure per cell, and per worst-case pseudo cell (:func:`vlmbench.results.worst_case` over the
    cells of an entry that evaluated the same images), sorted."""
    figures = [
        DatasetFigure(entry=c["entry"], model=c["model"], defense=c["defense"], dataset=c["dataset"], attack=str(c["label"]),
                      track=c["track"], norm=c["norm"], eps=float(c["eps"]), eps_label=c["eps_label"],
                      clean=figure(c["clean"], c["n"]), robust=figure(c["robust"], c["n"]), cell_id=c["cell_id"])
        for c in records
    ]
    for entry, part in rows.groupby("entry", sort=True):
        worst = results.worst_case(part.drop(columns=["entry"]))
        if worst.empty:
            continue
        for cell_id, cell in worst.groupby("cell_id", sort=True):
            one = cell.iloc[0]
            figures.append(DatasetFigure(
                entry=str(entry), model=one["model"], defense=one["defense"], dataset=one["dataset"], attack=results.WORST,
                track=one["track"], norm=one["norm"], eps=float(one["eps"]), eps_label=one["eps_label"],
                clean=figure(float(cell["clean_correct_rate"].mean()), len(cell)),
                robust=figure(float(cell["robust_rate"].mean()), len(cell)), cell_id=str(cell_id)))
    figures.sort(key=lambda f: (f.entry, f.model, f.defense, f.dataset, f.track, f.norm, f.eps, f.attack == results.WORST,
                                f.attack, f.cell_id))
    return figures


SAMPLE_COLUMNS = ("entry", "model", "defense", "attack", "track", "norm", "eps_label", "dataset", "cell_id",
                  "sample_index", "label", "clean_pred", "adv_pred", "clean_correct_rate", "robust_rate")
"""The per-sample columns :func:`board_samples` gives for each board (the rows behind its figures)."""


def board_samples(collection: Collection, site: Site) -> dict[str, list[dict[str, Any]]]:
    """Per board id, the per-sample records behind its rows (one dict per image × cell, the
    :data:`SAMPLE_COLUMNS`), sorted by entry, cell id and sample index: what a reader needs to recompute
    every figure of the board."""
    rows = collection.rows
    if rows.empty:
        return {b.id: [] for b in site.boards}
    by_entry = {entry: part for entry, part in rows.groupby("entry", sort=True)}
    out: dict[str, list[dict[str, Any]]] = {}
    for board_ in site.boards:
        frames = []
        for board_row in board_.rows:
            part = by_entry[board_row.entry]
            frames.append(part[part["cell_id"].isin(board_row.cells)])
        chosen = pd.concat(frames, ignore_index=True) if frames else rows.iloc[:0]
        chosen = chosen.sort_values(["entry", "cell_id", "sample_index"], kind="stable")
        out[board_.id] = [{k: results._scalar(v) for k, v in record.items()}
                          for record in chosen[list(SAMPLE_COLUMNS)].to_dict("records")]
    return out
