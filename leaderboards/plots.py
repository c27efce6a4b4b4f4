"""Deterministic, self-contained SVG plots for the leaderboard site (matplotlib, Agg-free SVG canvas).

Contract:

- every function returns one ``<svg>`` element as text, ready to inline in HTML: no XML prolog, no
  DOCTYPE, no external reference (no font file, no image link; text is SVG text in DejaVu Sans or the
  reader's sans-serif), a ``<title>`` and ``role="img"``/``aria-label``;
- the same arguments give the same bytes (fixed ``svg.hashsalt``, no date/creator metadata, element
  ids prefixed with a caller-given ``uid`` so that several plots on one page never share an id);
- label text may come from plugins or submissions: it is passed to matplotlib as literal text
  (mathtext ``$`` escaped) and matplotlib XML-escapes it in the SVG; the title is escaped here.

Only :mod:`matplotlib` is imported (lazily, under an ``rc_context``; pyplot's global state is never
used), so the site renders without torch or any plugin.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Point", "Series", "Pair", "scatter_clean_robust", "robust_vs_eps", "oblivious_vs_adaptive"]

_RC = {
    "svg.hashsalt": "vlmbench-leaderboard",
    "svg.fonttype": "none",  # text stays text: small, selectable, no embedded glyphs
    "svg.image_inline": True,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 6.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "path.simplify": False,
}
_STATUS_COLOURS = {"complete": "#1f6feb", "incomplete": "#9a6700", "unreliable": "#cf222e"}
_PALETTE = ["#1f6feb", "#cf222e", "#1a7f37", "#8250df", "#9a6700", "#bf3989", "#0a3069", "#57606a"]
_MAX_LABEL = 48


@dataclass(frozen=True)
class Point:
    """One row of a board in the clean-vs-robust scatter."""

    label: str
    clean: float
    robust: float
    status: str  # complete / incomplete / unreliable (colour)


@dataclass(frozen=True)
class Series:
    """One line of robust accuracy against ε (x in units of 1/255, labels shown on the axis)."""

    label: str
    points: tuple[tuple[float, float, str], ...]  # (eps * 255, robust %, eps label)


@dataclass(frozen=True)
class Pair:
    """One oblivious/adaptive pair of bars."""

    label: str
    oblivious: float
    adaptive: float


def text(value: str) -> str:
    """Untrusted text as matplotlib literal text: ``$`` escaped (no mathtext), long labels cut."""
    value = " ".join(str(value).split())
    if len(value) > _MAX_LABEL:
        value = value[: _MAX_LABEL - 1] + "…"
    return value.replace("\\", "\\\\").replace("$", r"\$")


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=72)
    FigureCanvasSVG(fig)
    return fig


def _finish(fig, title: str, uid: str) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight", pad_inches=0.05)
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    # matplotlib's global "*{stroke-linejoin...}" would style the whole page: the site CSS scopes it.
    svg = re.sub(r"<style[^>]*>.*?</style>\s*", "", svg, flags=re.S)
    # Prefix every id (and every reference to one) so plots sharing a page stay distinct.
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", uid) + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', svg)
    svg = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m[1]}="#{prefix}{m[2]}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m[1]})", svg)
    label = escape(title, quote=True)
    head_end = svg.index(">") + 1
    head = svg[: head_end - 1].replace("<svg ", f'<svg role="img" aria-label="{label}" class="plot" ', 1)
    return f"{head}><title>{label}</title>{svg[head_end:].strip()}\n"


def _render(draw, width: float, height: float, title: str, uid: str) -> str:
    import matplotlib

    with matplotlib.rc_context(_RC):
        fig = _figure(width, height)
        draw(fig)
        return _finish(fig, title, uid)


def scatter_clean_robust(points: Sequence[Point], title: str, uid: str) -> str:
    """Clean (x) against robust (y) accuracy, one labelled point per row, coloured by status; the
    diagonal marks robust = clean."""

    def draw(fig) -> None:
        ax = fig.add_subplot()
        ax.plot([0, 100], [0, 100], color="#d0d7de", linewidth=0.8, zorder=0)
        for status, colour in _STATUS_COLOURS.items():
            chosen = [p for p in points if p.status == status]
            if chosen:
                ax.scatter([p.clean for p in chosen], [p.robust for p in chosen], s=18, color=colour, label=status, zorder=3)
        for p in points:
            ax.annotate(text(p.label), (p.clean, p.robust), xytext=(3, 3), textcoords="offset points", fontsize=6.5)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.set_xlabel("clean accuracy %")
        ax.set_ylabel("worst-case robust accuracy %")
        if points:
            ax.legend(loc="upper left", frameon=False)

    return _render(draw, 5.0, 4.0, title, uid)


def robust_vs_eps(series: Sequence[Series], title: str, uid: str) -> str:
    """Robust accuracy (mean over datasets) against ε, one line per series."""

    def draw(fig) -> None:
        ax = fig.add_subplot()
        ticks: dict[float, str] = {}
        for i, s in enumerate(series):
            pts = sorted(s.points)
            ticks.update({x: lab for x, _, lab in pts})
            style = "-" if i < len(_PALETTE) else "--"
            ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], style, marker="o", markersize=3, color=_PALETTE[i % len(_PALETTE)], label=text(s.label))
        if ticks:
            xs = sorted(ticks)
            ax.set_xticks(xs, [text(ticks[x]) for x in xs])
            if len(xs) == 1:
                ax.set_xlim(xs[0] - 1, xs[0] + 1)
        ax.set_ylim(0, 100)
        ax.set_xlabel("ε")
        ax.set_ylabel("robust accuracy % (mean over datasets)")
        if series:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)

    return _render(draw, 4.2, 3.2, title, uid)


def oblivious_vs_adaptive(pairs: Sequence[Pair], title: str, uid: str) -> str:
    """Paired bars: the oblivious-track figure next to the adaptive-track one for each pair."""

    def draw(fig) -> None:
        ax = fig.add_subplot()
        xs = list(range(len(pairs)))
        ax.bar([x - 0.2 for x in xs], [p.oblivious for p in pairs], 0.4, color="#8c959f", label="oblivious")
        ax.bar([x + 0.2 for x in xs], [p.adaptive for p in pairs], 0.4, color="#cf222e", label="adaptive")
        ax.set_xticks(xs, [text(p.label) for p in pairs], rotation=20, ha="right")
        ax.set_ylim(0, 100)
        ax.set_ylabel("worst-case robust accuracy %")
        ax.grid(axis="x", visible=False)
        if pairs:
            ax.legend(loc="upper right", frameon=False)

    return _render(draw, min(9.0, max(3.2, 1.4 + 0.9 * len(pairs))), 3.2, title, uid)
