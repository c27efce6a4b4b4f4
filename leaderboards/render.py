"""Render a :class:`~vlmbench.leaderboards.model.Site` into a static website (HTML, CSV, JSON).

Contract of :func:`render_site`:

- **pure**: it reads only the Site (and the optional per-sample records), the package's templates and
  static files; it writes nothing and imports no plugin and no torch;
- **deterministic**: the same arguments give byte-identical files (no timestamps, stable ordering,
  deterministic SVG plots);
- **safe with untrusted strings**: every name, description, parameter and URL from a plugin or a
  submission is HTML-escaped (jinja2 autoescape); a URL becomes a link only when it is http(s), and is
  otherwise shown as escaped text; file names come from :func:`slug` (no ``/``, no ``..``; distinct
  names never share a file); CSV cells that a spreadsheet would run as a formula are prefixed with
  ``'``;
- **offline**: relative links only, the CSS and JavaScript inlined (a Content-Security-Policy allows
  no network access and only the inlined script), plots inlined as SVG; the pages read from
  ``file://`` as well as over HTTP, and their tables read in rank order with JavaScript off.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vlmbench.leaderboards import plots
from vlmbench.leaderboards.model import Board, BoardRow, CellRecord, DatasetFigure, Figure, Site

__all__ = ["render_site", "slug", "http_url", "csv_safe", "to_csv", "to_json", "SAMPLES_SUFFIX"]

HERE = Path(__file__).parent
SAMPLES_SUFFIX = ".samples.csv"
TEST_TIME_KINDS = ("test-time", "training+test-time")
_SLUG_OK = re.compile(r"[a-z0-9_+-]+")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# ---------------------------------------------------------------------------------------- helpers


def slug(name: str) -> str:
    """A file-name-safe, case-insensitively unique slug for an untrusted ``name``.

    Only ``[a-z0-9_+-]`` survive (no ``/``, ``.``, ``..``, no leading ``-``); a name that is already
    such a slug (at most 80 characters) is its own slug, any other gets ``-`` plus 8 hex digits of its
    SHA-256 appended, so that two distinct names never map to one slug (whatever the order they are
    met in) and the slug of a name never changes between builds.
    """
    name = str(name)
    base = re.sub(r"[^a-z0-9_+-]+", "-", name.lower()).strip("-+_")[:80].strip("-+_")
    if base == name and _SLUG_OK.fullmatch(name) and not name.startswith(("-", "+", "_")):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{base}-{digest}" if base else f"x-{digest}"


def http_url(value: Any) -> str | None:
    """``value`` when it is an absolute http(s) URL with a host and no whitespace or control
    character, else None (then a page shows it as text, never as a link)."""
    if not isinstance(value, str) or not value or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return None
    try:
        parts = urlsplit(value)
    except ValueError:
        return None
    return value if parts.scheme.lower() in ("http", "https") and parts.netloc and value.lower().startswith(("http://", "https://")) else None


def csv_safe(value: Any) -> Any:
    """A CSV cell value that a spreadsheet will not evaluate: strings starting with ``= + - @`` (or a
    tab / carriage return) get a leading ``'``; numbers, None and booleans pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _plain(value: Any) -> Any:
    """JSON-able data: dataclasses as dicts, tuples as lists, NaN/inf as None, dict keys as strings."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def to_json(value: Any) -> bytes:
    """Deterministic, readable JSON (sorted keys, 1-space indent, UTF-8, trailing newline)."""
    return (json.dumps(_plain(value), sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def to_csv(rows: Iterable[dict[str, Any]], columns: list[str] | None = None) -> bytes:
    """CSV with a header (``columns``, else the keys in first-seen order), every cell through
    :func:`csv_safe`; lists and dicts are written as JSON text, None as an empty cell."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([csv_safe(c) for c in columns])
    for row in rows:
        out = []
        for column in columns:
            value = row.get(column)
            if isinstance(value, (list, tuple, dict)):
                value = json.dumps(_plain(value), sort_keys=True, ensure_ascii=False)
            elif isinstance(value, float) and not math.isfinite(value):
                value = None
            out.append("" if value is None else csv_safe(value))
        writer.writerow(out)
    return buffer.getvalue().encode()


def _figure_columns(prefix: str, figure: Figure | None) -> dict[str, Any]:
    if figure is None:
        return {prefix: None, f"{prefix}_low": None, f"{prefix}_high": None, f"{prefix}_n": None}
    return {prefix: figure.value, f"{prefix}_low": figure.low, f"{prefix}_high": figure.high, f"{prefix}_n": figure.n}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ----------------------------------------------------------------------------------- page context


@dataclass(frozen=True)
class Links:
    """Site-relative paths of every page; templates prefix them with ``root`` ("" or "../")."""

    def board(self, board_id: str) -> str:
        return f"board/{slug(board_id)}.html"

    def defense(self, name: str) -> str:
        return f"defense/{slug(name)}.html"

    def model(self, name: str) -> str:
        return f"model/{slug(name)}.html"

    def dataset(self, name: str) -> str:
        return f"dataset/{slug(name)}.html"

    def flag(self, name: str) -> str:
        return f"flags.html#{slug(name)}"

    def cell(self, defense: str, cell_id: str) -> str:
        return f"{self.defense(defense)}#cell-{slug(cell_id)}"


def _environment():  # -> jinja2.Environment
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=True, default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["slug"] = slug
    env.filters["http_url"] = http_url
    env.filters["pct"] = lambda v: "—" if v is None else f"{v:.1f}"
    env.filters["num"] = lambda v, d=1: "—" if v is None else f"{v:.{d}f}"
    env.filters["sortkey"] = lambda v: "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.6g}"
    env.filters["pretty"] = lambda v: json.dumps(_plain(v), sort_keys=True, indent=2, ensure_ascii=False)
    env.filters["half"] = lambda f: max(f.value - f.low, f.high - f.value)
    env.globals["links"] = Links()
    env.globals["TEST_TIME_KINDS"] = TEST_TIME_KINDS
    return env


class _Renderer:
    def __init__(self, site: Site, samples: dict[str, list[dict[str, Any]]] | None) -> None:
        self.site = site
        self.samples = samples or {}
        self.env = _environment()
        self.files: dict[str, bytes] = {}
        css = (HERE / "static" / "style.css").read_text()
        js = (HERE / "static" / "table.js").read_text()
        script_hash = base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()
        self.env.globals.update(
            css=css,
            js=js,
            csp=(
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                f"script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'"
            ),
            flag_docs=site.flag_docs,
            known_cells=frozenset(c.cell_id for c in site.cells),
        )
        # Indexes (stable orders: boards as given, names sorted).
        self.rows_by_defense: dict[str, list[tuple[Board, BoardRow]]] = defaultdict(list)
        self.rows_by_model: dict[str, list[tuple[Board, BoardRow]]] = defaultdict(list)
        for board in site.boards:
            for row in board.rows:
                self.rows_by_defense[row.defense].append((board, row))
                self.rows_by_model[row.model].append((board, row))
        self.figures_by: dict[str, dict[str, list[DatasetFigure]]] = {"defense": defaultdict(list), "model": defaultdict(list), "dataset": defaultdict(list)}
        for fig in sorted(site.figures, key=_figure_order):
            self.figures_by["defense"][fig.defense].append(fig)
            self.figures_by["model"][fig.model].append(fig)
            self.figures_by["dataset"][fig.dataset].append(fig)
        self.cells = {c.cell_id: c for c in site.cells}
        self.defenses = sorted(set(self.rows_by_defense) | set(self.figures_by["defense"]))
        self.models = sorted(set(self.rows_by_model) | set(self.figures_by["model"]))
        self.datasets = sorted(set(self.figures_by["dataset"]) | {d for b in site.boards for d in b.standard.datasets})
        self.flags = sorted(set(site.flag_docs) | {f for b in site.boards for r in b.rows for f in r.flags})
        presets: dict[str, list[Board]] = {}
        for board in site.boards:
            presets.setdefault(board.preset, []).append(board)
        self.presets = list(presets.items())
        self.env.globals.update(all_defenses=self.defenses, all_models=self.models, all_datasets=self.datasets)

    # -- output helpers
    def page(self, path: str, template: str, **context: Any) -> None:
        root = "../" * path.count("/")
        html = self.env.get_template(template).render(root=root, path=path, **context)
        self.add(path, html.encode())

    def add(self, path: str, content: bytes) -> None:
        assert path not in self.files, f"two outputs for {path}"
        assert ".." not in path.split("/") and not path.startswith("/"), path
        self.files[path] = content

    def table(self, stem: str, rows: list[dict[str, Any]], columns: list[str] | None = None, meta: dict[str, Any] | None = None) -> None:
        self.add(f"{stem}.csv", to_csv(rows, columns))
        self.add(f"{stem}.json", to_json({**(meta or {}), "rows": rows}))

    # -- pages
    def run(self) -> dict[str, bytes]:
        for board in self.site.boards:
            self.board(board)
        for name in self.defenses:
            self.defense(name)
        for name in self.models:
            self.model(name)
        for name in self.datasets:
            self.dataset(name)
        entries = [
            {"name": e.name, "valid": e.valid, "error": e.error, **{k: e.metadata.get(k) for k in ("method", "paper", "code", "weights", "submitted_by", "hardware")}}
            for e in self.site.entries
        ]
        self.table("entries", entries)
        flag_rows = [{"flag": f, "meaning": self.site.flag_docs.get(f, "")} for f in self.flags]
        self.table("flags", flag_rows, ["flag", "meaning"])
        self.page("index.html", "index.html", presets=self.presets, entries=self.site.entries, rows_of=self.board_rows,
                  reproduction=self.site.reproduction)
        if self.site.reproduction is not None:
            self.add("reproduction.json", to_json(self.site.reproduction))
        self.page("flags.html", "flags.html", flags=flag_rows)
        self.page("about.html", "about.html", boards=self.site.boards)
        self.add("site.json", to_json(self.site))
        return dict(sorted(self.files.items()))

    def board_rows(self, board: Board) -> list[dict[str, Any]]:
        out = []
        for row in board.rows:
            record: dict[str, Any] = {
                "rank": row.rank, "status": row.status, "reasons": row.reasons, "entry": row.entry, "model": row.model,
                "defense": row.defense, "defense_kind": row.defense_kind,
            }
            record |= _figure_columns("clean", row.clean) | _figure_columns("worst", row.worst)
            for attack in board.attack_columns:
                record |= _figure_columns(attack, row.attacks.get(attack))
            record |= _figure_columns("oblivious_worst", row.oblivious_worst)
            record |= {
                "adaptive_gap": row.adaptive_gap, "cost_time_ratio": row.cost_time_ratio, "cost_forward": row.cost_forward,
                "cost_backward": row.cost_backward, "n_images": row.n_images, "datasets": row.datasets, "flags": row.flags,
                "paper": row.paper, "code": row.code, "reproduced": row.reproduced, "verified": row.verified,
                "reported": row.reported, "cells": row.cells,
            }
            out.append(record)
        return out

    def board(self, board: Board) -> None:
        stem = f"board/{slug(board.id)}"
        meta = {"board": {k: getattr(board, k) for k in ("id", "title", "preset", "norm", "eps", "eps_label", "track", "standard", "attack_columns")}}
        self.table(stem, self.board_rows(board), meta=meta)
        samples = self.samples.get(board.id)
        if samples is not None:
            self.add(stem + SAMPLES_SUFFIX, to_csv(samples))
        points = [plots.Point(f"{r.model} · {r.defense}", r.clean.value, r.worst.value, r.status) for r in board.rows if r.worst is not None]
        scatter = plots.scatter_clean_robust(points, f"Clean vs worst-case robust accuracy, {board.title}", "scatter") if points else None
        show_adaptive = board.track == "adaptive" or any(r.oblivious_worst is not None for r in board.rows)
        self.page(f"{stem}.html", "board.html", board=board, stem=slug(board.id), scatter=scatter, show_adaptive=show_adaptive,
                  has_samples=samples is not None, controls=self.controls(board.rows))

    def controls(self, rows: list[BoardRow]) -> dict[str, list[str]]:
        return {
            "models": sorted({r.model for r in rows}),
            "kinds": sorted({r.defense_kind for r in rows}),
            "statuses": sorted({r.status for r in rows}),
            "flags": sorted({f for r in rows for f in r.flags}),
        }

    def figure_rows(self, figures: list[DatasetFigure]) -> list[dict[str, Any]]:
        rows = []
        for f in figures:
            record = {k: getattr(f, k) for k in ("entry", "model", "defense", "dataset", "attack", "track", "norm", "eps", "eps_label", "cell_id")}
            rows.append(record | _figure_columns("clean", f.clean) | _figure_columns("robust", f.robust))
        return rows

    def defense(self, name: str) -> None:
        stem = f"defense/{slug(name)}"
        figures = self.figures_by["defense"].get(name, [])
        on_boards = self.rows_by_defense.get(name, [])
        self.table(stem, self.figure_rows(figures), meta={"defense": name})
        kinds = sorted({r.defense_kind for _, r in on_boards})
        test_time = any(k in TEST_TIME_KINDS for k in kinds) or any(f.track == "adaptive" for f in figures)
        curve = _eps_curve(figures, name, f"Robust accuracy vs ε, defense {name}", "curve")
        pairs = _adaptive_pairs(on_boards, figures) if test_time else []
        bars = plots.oblivious_vs_adaptive(pairs, f"Oblivious vs adaptive worst case, defense {name}", "bars") if pairs else None
        reported = list(dict.fromkeys(rep for _, r in on_boards for rep in r.reported))
        links = sorted({(r.paper, r.code) for _, r in on_boards}, key=lambda pc: (pc[0] or "", pc[1] or ""))
        cell_ids = list(dict.fromkeys(f.cell_id for f in figures if f.cell_id in self.cells))
        cell_ids += [c for _, r in on_boards for c in r.cells if c in self.cells and c not in cell_ids]
        records = [self.cells[c] for c in cell_ids]
        self.page(f"{stem}.html", "defense.html", name=name, stem=slug(name), kinds=kinds, figures=figures, on_boards=on_boards,
                  curve=curve, bars=bars, reported=reported, links_pc=links, records=records, test_time=test_time,
                  figure_of=self.figure_of_cell)

    def figure_of_cell(self, cell_id: str) -> DatasetFigure | None:
        for f in self.site.figures:
            if f.cell_id == cell_id:
                return f
        return None

    def model(self, name: str) -> None:
        stem = f"model/{slug(name)}"
        figures = self.figures_by["model"].get(name, [])
        self.table(stem, self.figure_rows(figures), meta={"model": name})
        fingerprints = sorted({c.model_fingerprint for c in self.site.cells if (f := self.figure_of_cell(c.cell_id)) and f.model == name})
        self.page(f"{stem}.html", "model.html", name=name, stem=slug(name), figures=figures, on_boards=self.rows_by_model.get(name, []),
                  fingerprints=fingerprints)

    def dataset(self, name: str) -> None:
        stem = f"dataset/{slug(name)}"
        figures = self.figures_by["dataset"].get(name, [])
        self.table(stem, self.figure_rows(figures), meta={"dataset": name})
        boards = [b for b in self.site.boards if name in b.standard.datasets]
        self.page(f"{stem}.html", "dataset.html", name=name, stem=slug(name), figures=figures, boards=boards)


def _figure_order(f: DatasetFigure) -> tuple:
    return (f.defense, f.model, f.norm, f.eps, f.track, f.attack == "worst", f.attack, f.dataset, f.entry, f.cell_id)


def _eps_curve(figures: list[DatasetFigure], name: str, title: str, uid: str) -> str | None:
    """One line per (model, attack, track, norm): robust accuracy averaged over datasets at each ε."""
    groups: dict[tuple[str, str, str, str], dict[float, tuple[list[float], str]]] = {}
    for f in figures:
        point = groups.setdefault((f.model, f.attack, f.track, f.norm), {}).setdefault(f.eps, ([], f.eps_label))
        point[0].append(f.robust.value)
    norms = {key[3] for key in groups}
    series = []
    for (model, attack, track, norm), by_eps in sorted(groups.items()):
        label = f"{model} · {attack} · {track}" + (f" · {norm}" if len(norms) > 1 else "")
        scale = 255.0 if norm == "linf" else 1.0
        series.append(plots.Series(label, tuple((eps * scale, _mean(vals), lab) for eps, (vals, lab) in sorted(by_eps.items()))))
    return plots.robust_vs_eps(series, title, uid) if series else None


def _adaptive_pairs(on_boards: list[tuple[Board, BoardRow]], figures: list[DatasetFigure]) -> list[plots.Pair]:
    """Oblivious/adaptive worst-case pairs: from the adaptive boards' rows, else from the worst-case
    figures of both tracks (mean over datasets)."""
    pairs = [
        plots.Pair(f"{row.model} · {board.eps_label}", row.oblivious_worst.value, row.worst.value)
        for board, row in on_boards
        if row.oblivious_worst is not None and row.worst is not None
    ]
    if pairs:
        return pairs
    by_key: dict[tuple[str, str, float, str], dict[str, list[float]]] = {}
    for f in figures:
        if f.attack == "worst" and f.track in ("oblivious", "adaptive"):
            by_key.setdefault((f.model, f.norm, f.eps, f.eps_label), {}).setdefault(f.track, []).append(f.robust.value)
    return [
        plots.Pair(f"{model} · {label}", _mean(t["oblivious"]), _mean(t["adaptive"]))
        for (model, _, _, label), t in sorted(by_key.items())
        if "oblivious" in t and "adaptive" in t
    ]


def render_site(site: Site, samples: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, bytes]:
    """All files of the static site for ``site``: relative path → content, sorted by path.

    ``samples`` maps a board id to the per-sample records behind it (one dict per image × cell),
    written as ``board/<slug>.samples.csv``; boards without an entry get no such file.
    Pure and deterministic (see the module docstring); raises only on a malformed Site.
    """
    return _Renderer(site, samples).run()


def cell_summary(cell: CellRecord) -> dict[str, Any]:
    """The provenance fields shown for a cell (missing ones as None)."""
    run = cell.run or {}
    return {
        "versions": run.get("versions") or {},
        "git_revision": run.get("git_revision"),
        "platform": run.get("platform"),
        "device": run.get("device"),
        "command": run.get("command"),
        "finished_at": run.get("finished_at"),
        "fingerprint": cell.model_fingerprint,
    }


__all__ += ["cell_summary", "Links"]
