"""A hand-built, realistic leaderboard :class:`Site` for the renderer's tests (no Parquet, no torch).

Two boards (presets ``world`` and ``tecoa16``) with 8 rows: ranked, incomplete and unreliable ones; a
test-time defense (``ttc``) with its oblivious and adaptive figures; paper figures as the defenses
report them; flags; three ε per defense for the curves; and hostile strings: a defense named
``<script>alert(1)</script>``, a paper URL ``javascript:alert(1)``, an entry name that a spreadsheet
would run as a formula, quotes, and two defense names (``tecoa``, ``TeCoA``) whose slugs would collide.
"""

from __future__ import annotations

import hashlib
import math

from vlmbench.leaderboards.model import Board, BoardRow, CellRecord, DatasetFigure, Entry, Figure, Reported, Site, Standard

XSS_DEFENSE = "<script>alert(1)</script>"
JS_URL = "javascript:alert(1)"
FORMULA_ENTRY = '=HYPERLINK("http://evil.example/","click")'
QUOTED_CODE_URL = 'https://example.org/code?a=1&b="q"'
WORLD_BOARD = "world-linf-1_255-adaptive"
TECOA_BOARD = "tecoa16-linf-4_255-oblivious"

WORLD = Standard(
    name="world",
    attacks=("pgd-10", "cw-10", "aa"),
    datasets=("world-colour", "world-shape"),
    adaptive_required=True,
    description="The embedded synthetic world: PGD-10, CW-10 and AutoAttack on two world datasets; test-time defenses need the adaptive track.",
)
TECOA16 = Standard(
    name="tecoa16",
    attacks=("pgd-10", "aa"),
    datasets=("cifar10", "stl10"),
    adaptive_required=False,
    description="TeCoA's zero-shot protocol (two of its sixteen datasets here); 'quotes' & <angle brackets> in a description.",
)

FLAG_DOCS = {
    "zero-gradients": "Some images have an input gradient of exactly zero: gradient masking overstates robustness.",
    "robust-above-clean": "More images were correct after the attack than before it: a broken attack or an unscored random defense.",
    "eps-not-monotone": "Robust accuracy rose with a larger ε: the attack is not converging.",
    "forward-randomness": "Two forward passes differed but the defense does not declare itself stochastic.",
}


def wilson(value: float, n: int) -> Figure:
    """A Figure with the 95% Wilson score interval of ``value`` percent over ``n`` images."""
    p, z = value / 100.0, 1.959963984540054
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Figure(value=value, low=round(max(0.0, centre - half) * 100, 4), high=round(min(1.0, centre + half) * 100, 4), n=n)


def _cell_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _reported(value: float, attack: str, eps_label: str, source: str, dataset: str = "mean of 16") -> Reported:
    return Reported(value=value, metric="robust", dataset=dataset, attack=attack, eps_label=eps_label, norm="linf",
                    model="ViT-B-32:openai", protocol="their own zero-shot protocol, 1 restart, test split", source=source)


def _row(board_id: str, entry: str, model: str, defense: str, kind: str, rank: int | None, status: str, clean: float,
         worst: float | None, attacks: dict[str, float | None], n: int, datasets: list[str], **extra) -> BoardRow:
    figures = {a: (None if v is None else wilson(v, n)) for a, v in attacks.items()}
    return BoardRow(
        entry=entry, model=model, defense=defense, defense_kind=kind, rank=rank, status=status,
        reasons=extra.pop("reasons", []), clean=wilson(clean, n), worst=None if worst is None else wilson(worst, n),
        attacks=figures, oblivious_worst=extra.pop("oblivious_worst", None), adaptive_gap=extra.pop("adaptive_gap", None),
        cost_time_ratio=extra.pop("cost_time_ratio", 1.0), cost_forward=extra.pop("cost_forward", 1.0),
        cost_backward=extra.pop("cost_backward", 0.0), n_images=n, datasets=datasets, flags=extra.pop("flags", []),
        paper=extra.pop("paper", None), code=extra.pop("code", None), reported=extra.pop("reported", []),
        cells=[_cell_id(board_id, entry, model, defense, d, a) for d in datasets for a in attacks if attacks[a] is not None],
        reproduced=extra.pop("reproduced", None), verified=extra.pop("verified", False),
        precision=extra.pop("precision", "fp32"),
    )


def world_board() -> Board:
    ds = list(WORLD.datasets)
    b = WORLD_BOARD
    rows = [
        _row(b, "results", "world-rn", "ttc", "test-time", 1, "complete", 64.5, 44.2, {"pgd-10": 46.0, "cw-10": 47.5, "aa": 44.9}, 80, ds,
             oblivious_worst=wilson(59.1, 80), adaptive_gap=14.9, cost_time_ratio=6.7, cost_forward=5.0, cost_backward=2.0,
             paper="https://arxiv.org/abs/2503.03613", code="https://github.com/Sxing2/CLIP-Test-time-Counterattacks",
             reported=[_reported(38.4, "PGD-10", "1/255", "Table 1 of Xing et al., CVPR 2025")], reproduced=None),
        _row(b, "results", "world-rn", "tecoa", "training", 2, "complete", 80.0, 42.0, {"pgd-10": 51.3, "cw-10": 51.7, "aa": 42.0}, 80, ds,
             paper="https://arxiv.org/abs/2212.07016", code="https://github.com/cvlab-columbia/ZSRobust4FoundationModel",
             reproduced="yes", verified=True),
        _row(b, "results", "world-vit", "none", "none", 3, "complete", 76.3, 25.0, {"pgd-10": 26.7, "cw-10": 28.0, "aa": 25.0}, 80, ds),
        _row(b, "subm-scc", "world-vit", "scc", "test-time", None, "incomplete", 68.4, 51.0, {"pgd-10": 51.0, "cw-10": 53.2, "aa": None}, 40, ds[:1],
             reasons=["attack aa not run", "dataset world-shape missing"], oblivious_worst=wilson(65.0, 40), adaptive_gap=14.0,
             cost_time_ratio=19.6, cost_forward=14.0, cost_backward=4.0),
        _row(b, FORMULA_ENTRY, "world-vit", XSS_DEFENSE, "training", None, "unreliable", 71.0, 70.3, {"pgd-10": 70.3, "cw-10": 70.8, "aa": 70.5}, 80, ds,
             reasons=["flag zero-gradients: 12% of images have a zero input gradient"], flags=["zero-gradients", "robust-above-clean"],
             paper=JS_URL, code=QUOTED_CODE_URL, cost_time_ratio=1.1),
    ]
    return Board(id=b, title="world · linf 1/255 · adaptive", preset="world", norm="linf", eps=1 / 255, eps_label="1/255",
                 track="adaptive", standard=WORLD, attack_columns=list(WORLD.attacks), rows=rows)


def tecoa_board() -> Board:
    ds = list(TECOA16.datasets)
    b = TECOA_BOARD
    rows = [
        _row(b, "subm-tecoa", "ViT-B-32:openai", "tecoa", "training", 1, "complete", 63.2, 31.0, {"pgd-10": 33.4, "aa": 31.0}, 1000, ds,
             paper="https://arxiv.org/abs/2212.07016", reported=[_reported(31.9, "PGD-100", "4/255", "Table 2 of Mao et al., ICLR 2023", "cifar10")],
             reproduced="no (max diff 3.1 points)", verified=True, flags=["eps-not-monotone"]),
        _row(b, "subm-tecoa", "ViT-B-32:openai", "none", "none", 2, "complete", 88.9, 0.5, {"pgd-10": 0.9, "aa": 0.5}, 1000, ds,
             precision="bf16"),
        _row(b, "subm-fare", "ViT-B-32:openai", "fare", "training", None, "incomplete", 85.1, 12.2, {"pgd-10": 12.2, "aa": None}, 500, ds[:1],
             reasons=["attack aa not run", "dataset stl10 missing"], code="https://github.com/chs20/RobustVLM"),
    ]
    return Board(id=b, title="tecoa16 · linf 4/255 · oblivious", preset="tecoa16", norm="linf", eps=4 / 255, eps_label="4/255",
                 track="oblivious", standard=TECOA16, attack_columns=list(TECOA16.attacks), rows=rows)


def _figures_and_cells() -> tuple[list[DatasetFigure], list[CellRecord]]:
    specs = [  # entry, model, defense, tracks, datasets, clean, robust at 1/255, attacks
        ("results", "world-rn", "ttc", ("oblivious", "adaptive"), WORLD.datasets, 64.5, 59.1, WORLD.attacks),
        ("results", "world-rn", "tecoa", ("oblivious",), WORLD.datasets, 80.0, 45.0, WORLD.attacks),
        ("results", "world-vit", "none", ("oblivious",), WORLD.datasets, 76.3, 26.0, WORLD.attacks),
        ("subm-scc", "world-vit", "scc", ("oblivious", "adaptive"), WORLD.datasets[:1], 68.4, 65.0, ("pgd-10", "cw-10")),
        (FORMULA_ENTRY, "world-vit", XSS_DEFENSE, ("oblivious",), WORLD.datasets, 71.0, 70.5, WORLD.attacks),
        ("subm-tecoa", "ViT-B-32:openai", "tecoa", ("oblivious",), TECOA16.datasets, 63.2, 55.0, TECOA16.attacks),
        ("subm-tecoa", "ViT-B-32:openai", "none", ("oblivious",), TECOA16.datasets, 88.9, 20.0, TECOA16.attacks),
        ("subm-fare", "ViT-B-32:openai", "fare", ("oblivious",), TECOA16.datasets[:1], 85.1, 48.0, ("pgd-10",)),
        ("subm-upper", "world-rn", "TeCoA", ("oblivious",), WORLD.datasets[:1], 79.0, 44.0, ("pgd-10",)),
    ]
    figures: list[DatasetFigure] = []
    cells: list[CellRecord] = []
    for entry, model, defense, tracks, datasets, clean, robust, attacks in specs:
        n = 80 if model.startswith("world") else 500
        for k_eps, (eps_label, scale) in enumerate((("1/255", 1.0), ("2/255", 0.45), ("4/255", 0.12))):
            eps = (1, 2, 4)[k_eps] / 255
            for track in tracks:
                drop = 0.75 if track == "adaptive" else 1.0
                for j, dataset in enumerate(datasets):
                    values = []
                    for i, attack in enumerate(attacks):
                        value = round(max(0.0, robust * scale * drop - 1.5 * i - 2.0 * j), 1)
                        values.append(value)
                        cell_id = _cell_id(entry, model, defense, dataset, attack, track, eps_label)
                        figures.append(DatasetFigure(entry=entry, model=model, defense=defense, dataset=dataset, attack=attack, track=track,
                                                     norm="linf", eps=eps, eps_label=eps_label, clean=wilson(clean - j, n),
                                                     robust=wilson(value, n), cell_id=cell_id))
                        cells.append(_cell(cell_id, entry, model, defense, dataset, attack, track, eps, n))
                    worst_id = _cell_id(entry, model, defense, dataset, "worst", track, eps_label)
                    figures.append(DatasetFigure(entry=entry, model=model, defense=defense, dataset=dataset, attack="worst", track=track,
                                                 norm="linf", eps=eps, eps_label=eps_label, clean=wilson(clean - j, n),
                                                 robust=wilson(min(values) - 0.5 if min(values) >= 0.5 else 0.0, n), cell_id=worst_id))
    return figures, cells


def _cell(cell_id: str, entry: str, model: str, defense: str, dataset: str, attack: str, track: str, eps: float, n: int) -> CellRecord:
    protocol = {
        "model": model, "defense": defense, "defense_params": {"note": 'a "quoted" </pre><script>alert(2)</script> value'} if defense == XSS_DEFENSE else {},
        "attack": attack, "attack_params": {"steps": 10} if attack != "aa" else {"version": "standard"}, "dataset": dataset,
        "split": "test", "n_samples": n, "norm": "linf", "eps": eps, "track": track, "seed": 0, "restarts": 1, "templates": "ensemble",
    }
    run = {
        "versions": {"vlmbench": "0.1.0", "torch": "2.5.1", "torchvision": "0.20.1", "open_clip_torch": "3.3.0", "pyautoattack": "0.2.0", "numpy": "2.1.3"},
        "git_revision": "99b23ad" if entry == "results" else None, "python": "3.11.10", "platform": "Linux-6.1-x86_64", "torch_cuda": None,
        "device": "cpu", "torch_threads": 1, "command": f"vlmbench run --model {model} --defense {defense} --attack {attack}",
        "wall_time_s": 12.5, "resumed": False, "finished_at": "2025-06-01T12:00:00+00:00",
    }
    return CellRecord(cell_id=cell_id, entry=entry, file=f"{entry}/{cell_id}.parquet", protocol=protocol, run=run,
                      model_fingerprint=hashlib.sha256(model.encode()).hexdigest()[:16])


def fixture_entries() -> list[Entry]:
    return [
        Entry(name="results", metadata={}, valid=True, error=None),
        Entry(name="subm-scc", metadata={"method": "SCC", "paper": "https://example.org/scc", "submitted_by": "a tester"}, valid=True, error=None),
        Entry(name="subm-tecoa", metadata={"method": "TeCoA", "paper": "https://arxiv.org/abs/2212.07016", "code": "https://github.com/cvlab-columbia/ZSRobust4FoundationModel", "submitted_by": "Mao et al."}, valid=True, error=None),
        Entry(name="subm-fare", metadata={"method": "FARE", "code": "https://github.com/chs20/RobustVLM"}, valid=True, error=None),
        Entry(name="subm-upper", metadata={"method": "TeCoA (upper-case name)"}, valid=True, error=None),
        Entry(name=FORMULA_ENTRY, metadata={"method": XSS_DEFENSE, "paper": JS_URL, "code": QUOTED_CODE_URL, "submitted_by": "O'Brien \"the tester\""}, valid=True, error=None),
        Entry(name="broken-submission", metadata={}, valid=False, error="metadata.json: missing field 'method'"),
        Entry(name="evil-invalid", metadata={"paper": "data:text/html,<script>alert(3)</script>"}, valid=False, error="results/x.parquet: not a vlmbench file <img src=x onerror=alert(4)>"),
    ]


def fixture_site() -> Site:
    """The fixture Site (a fresh object on each call)."""
    figures, cells = _figures_and_cells()
    return Site(boards=[world_board(), tecoa_board()], figures=figures, cells=cells, entries=fixture_entries(), flag_docs=dict(FLAG_DOCS))


def fixture_samples() -> dict[str, list[dict]]:
    """Per-sample records for the world board (one hostile cell value for the CSV-injection guard)."""
    rows = []
    for i in range(6):
        rows.append({"cell_id": _cell_id("s", i), "index": i, "label": i % 3, "clean_correct": True, "robust_correct": i % 2 == 0,
                     "note": "=1+1" if i == 0 else ("-2" if i == 1 else "ok")})
    return {WORLD_BOARD: rows}
