"""The leaderboard site's data model: what :mod:`vlmbench.leaderboards.boards` computes from result
rows and what :mod:`vlmbench.leaderboards.render` turns into pages.

Everything here is plain data (JSON-able through :func:`dataclasses.asdict`), built only from results
Parquet files and submission metadata — never from an imported plugin. Accuracies are percentages in
[0, 100]; intervals are 95% Wilson score intervals computed from the per-sample rows (for a random
defense from the per-image expected rates: documented on the page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmbench.protocol import ReportedFigure as Reported


@dataclass(frozen=True)
class Figure:
    """One accuracy with its 95% confidence interval, over ``n`` images."""

    value: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class Standard:
    """What a board counts: the attacks whose per-sample worst case ranks a row, and the datasets a
    complete row covers. Loaded from ``leaderboards/standards.json`` (data, shown on the page)."""

    name: str  # "world", "tecoa16", ...
    attacks: tuple[str, ...]
    datasets: tuple[str, ...]
    adaptive_required: bool  # a test-time defense needs the adaptive track to be ranked
    description: str


@dataclass
class BoardRow:
    """One model + defense on one board (entry = the submission or results folder it came from)."""

    entry: str
    model: str
    defense: str
    defense_kind: str  # none, training, test-time, training+test-time
    rank: int | None  # None: not ranked (status is not "complete")
    status: str  # "complete", "incomplete" or "unreliable"
    reasons: list[str]  # why not complete (empty when complete)
    clean: Figure
    worst: Figure | None  # per-sample worst case over the standard attacks present (mean over datasets)
    attacks: dict[str, Figure | None]  # attack label -> robust accuracy (mean over datasets); None: not run
    oblivious_worst: Figure | None  # test-time defenses on an adaptive board: the oblivious figure
    adaptive_gap: float | None  # oblivious_worst.value - worst.value (points), test-time only
    cost_time_ratio: float | None  # inference seconds per image / undefended
    cost_forward: float | None  # image-encoder forward passes per image
    cost_backward: float | None
    n_images: int
    datasets: list[str]
    flags: list[str]  # sanity flag names (documented at FLAG_DOCS#name)
    paper: str | None
    code: str | None
    reported: list[Reported]
    cells: list[str]  # cell ids behind the row
    reproduced: str | None = None  # "yes", "no (max diff 3.1 points)" or None (not checked)
    verified: bool = False  # adversarial images re-scored by `vlmbench results verify`
    precision: str = "fp32"  # what the row's cells ran in ("bf16+fp32": mixed, and the row is unreliable)


@dataclass
class Board:
    """One (preset or world, norm, ε, track) leaderboard."""

    id: str  # file-name slug, e.g. "world-linf-4_255-adaptive"
    title: str
    preset: str
    norm: str
    eps: float
    eps_label: str
    track: str
    standard: Standard
    attack_columns: list[str]
    rows: list[BoardRow]  # ranked rows first (by worst.value, descending), then unranked ones


@dataclass
class DatasetFigure:
    """One cell's numbers, for the per-defense / per-dataset / per-model tables."""

    entry: str
    model: str
    defense: str
    dataset: str
    attack: str
    track: str
    norm: str
    eps: float
    eps_label: str
    clean: Figure
    robust: Figure
    cell_id: str


@dataclass
class CellRecord:
    """Provenance of one cell: the protocol record and the run metadata, in full."""

    cell_id: str
    entry: str
    file: str
    protocol: dict[str, Any]
    run: dict[str, Any]  # versions, git_revision, platform, device, command, finished_at, ...
    model_fingerprint: str


@dataclass
class Entry:
    """A submission (or a results folder given on the command line) with its metadata."""

    name: str
    metadata: dict[str, Any]  # method, paper, code, weights, submitted_by, hardware (submissions)
    valid: bool
    error: str | None  # one line, when invalid


@dataclass
class Site:
    boards: list[Board]
    figures: list[DatasetFigure]  # every cell (also the worst-case pseudo cells, attack="worst")
    cells: list[CellRecord]
    entries: list[Entry]
    flag_docs: dict[str, str] = field(default_factory=dict)  # flag name -> one-line meaning
    # cells re-run by `python -m vlmbench.leaderboards.world reproduce` and how they compared
    # (its JSON report: seed, versions, cells [{cell_id, defense, attack, dataset, eps_label, track,
    # status: reproduced | not reproduced | stale, differing_samples, samples, ...}]); None: not checked
    reproduction: dict[str, Any] | None = None
