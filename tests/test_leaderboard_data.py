"""The leaderboard's data layer: collecting results and submissions, boards, statuses, ranks, intervals.

Real results are produced once per module with the CLI on the random tiny world model (a few images,
two world datasets); tests then read copies of them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.leaderboards import boards
from vlmbench.leaderboards.boards import OBLIVIOUS_ONLY, load_standards, site_model, wilson
from vlmbench.leaderboards.collect import collect
from vlmbench.leaderboards.model import Standard

ROOT = Path(__file__).resolve().parents[1]
TWO = ("world-shape", "world-colour")
# a world standard on two datasets keeps the runs small; the shipped standards are checked separately
SMALL = {"world": Standard("world", ("pgd-10", "cw-10"), TWO, True, "test standard"),
         "custom": Standard("custom", ("pgd-10", "cw-10"), (), True, "custom")}

CLAMP = '''
from typing import ClassVar
import torch
from vlmbench.defense import Defense


class Clamp(Defense):
    name: ClassVar[str] = "clamp"
    description: ClassVar[str] = "clamps pixels to [0, 1] before the classifier (a test-time no-op)"

    def wrap(self, classifier, context):
        class Clamped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.classifier = classifier

            def forward(self, x):
                return self.classifier(x.clamp(0, 1))

        return Clamped()
'''
REPORTED = {"value": 42.0, "metric": "robust", "dataset": "mean of 2", "attack": "PGD-10", "eps_label": "2/255",
            "norm": "linf", "model": "tiny-world", "protocol": "oblivious", "source": "Table 1"}
DECLARED = {"clamp": {"kind": "test-time", "stochastic": False, "non_differentiable": [],
                      "paper": "https://example.org/clamp", "code": "https://example.org/clamp-code", "reported": [REPORTED]}}


def _cli(model_plugin: Path, output: Path, *extra: str, samples: str = "3") -> None:
    from vlmbench import registry

    registry.reset()  # each invocation registers its --plugin sources afresh
    outcome = CliRunner().invoke(app, ["run", "--model", "tiny-world", "--samples", samples, "--batch-size", "4",
                                       "--threads", "1", "--no-eps-sweep", "--plugin", str(model_plugin),
                                       "--output", str(output), *extra])
    registry.reset()
    assert outcome.exit_code == 0, outcome.output


def rewrite(path: Path, rows=None, run=None) -> None:
    """Rewrite a results file with new rows and/or run metadata and a recomputed checksum."""
    table = results.read_file(path)
    rows = table.to_pandas() if rows is None else rows
    run = json.loads(table.schema.metadata[results.RUN_KEY]) if run is None else run
    results.write_atomic(results.to_table(rows, run), path)


def tamper(path: Path) -> None:
    """Change one label and keep the old checksum (as a hand edit would)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    rows = table.to_pandas()
    rows.loc[0, "label"] = rows.loc[0, "label"] + 1
    pq.write_table(pa.Table.from_pandas(rows, schema=table.schema, preserve_index=False), path)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_world_checkpoint: Path) -> Path:
    """alpha: none and clamp (test-time) x pgd-10, cw-10 x two world datasets, both tracks, 2/255;
    beta: none x pgd-10 on two datasets at 2/255 and 4/255, and l2 0.5 on one;
    gamma: none on world-shape, pgd-10 on 3 images and cw-10 on 4 (mixed sample sets)."""
    root = tmp_path_factory.mktemp("leaderboard-data")
    plugin = root / "tiny_plugins.py"
    plugin.write_text(
        "from vlmbench.models import OpenClipModel\n"
        "from vlmbench.world.tokenizer import WorldTokenizer\n"
        f"TINY = OpenClipModel('tiny-world', 'random-init world ViT', 'local-dir:{tiny_world_checkpoint}', tokenizer=WorldTokenizer)\n"
        + CLAMP
    )
    _cli(plugin, root / "alpha", "--defense", "none,clamp", "--attack", "pgd-10,cw-10", "--dataset", ",".join(TWO),
         "--eps", "2/255", "--adaptive-steps", "0")
    for file in (root / "alpha").glob("*__clamp__*.parquet"):
        run = results.run_metadata_of(file)
        rewrite(file, run={**run, "defenses": DECLARED})
    _cli(plugin, root / "beta", "--attack", "pgd-10", "--dataset", ",".join(TWO), "--eps", "2/255,4/255")
    _cli(plugin, root / "beta", "--attack", "pgd-10", "--dataset", "world-shape", "--norm", "l2", "--eps", "0.5")
    _cli(plugin, root / "gamma", "--attack", "pgd-10", "--dataset", "world-shape", "--eps", "2/255")
    _cli(plugin, root / "gamma", "--attack", "cw-10", "--dataset", "world-shape", "--eps", "2/255", samples="4")
    return root


@pytest.fixture(scope="module")
def site(made: Path):
    return site_model(collect([made / "alpha", made / "beta", made / "gamma"]), SMALL)


def board(site, board_id: str):
    return next(b for b in site.boards if b.id == board_id)


def row(board_, entry: str, defense: str = "none"):
    return next(r for r in board_.rows if r.entry == entry and r.defense == defense)


def test_boards_split_by_preset_norm_eps_and_track(site):
    ids = [b.id for b in site.boards]
    assert ids == ["world-l2-0.5-oblivious", "world-linf-2_255-oblivious", "world-linf-2_255-adaptive",
                   "world-linf-4_255-oblivious"]
    assert {(r.entry, r.defense) for r in board(site, "world-linf-2_255-oblivious").rows} == {
        ("alpha", "none"), ("alpha", "clamp"), ("beta", "none"), ("gamma", "none")}
    assert [(r.entry, r.defense) for r in board(site, "world-linf-2_255-adaptive").rows] == [("alpha", "clamp")]
    assert [r.entry for r in board(site, "world-linf-4_255-oblivious").rows] == ["beta"]
    l2 = board(site, "world-l2-0.5-oblivious")
    assert (l2.norm, l2.eps, l2.eps_label, l2.track, l2.preset) == ("l2", 0.5, "0.5", "oblivious", "world")
    assert board(site, "world-linf-2_255-oblivious").attack_columns == ["pgd-10", "cw-10"]


def test_board_presets_of_preset_less_rows():
    def cell(dataset: str, preset: str = "", defense: str = "none") -> dict:
        return {"entry": "e", "model": "m", "defense": defense, "norm": "linf", "eps_label": "1/255",
                "track": "oblivious", "dataset": dataset, "preset": preset}

    cells = [cell("world-shape"), cell("world-colour"), cell("world-shape", defense="x"), cell("cifar10", defense="x"),
             cell("cifar10", "tecoa16", "y")]
    assert boards.board_presets(cells) == ["world", "world", "custom", "custom", "tecoa16"]


def test_worst_case_is_at_most_every_attack(site):
    checked = 0
    for b in site.boards:
        for r in b.rows:
            for attack in b.standard.attacks:
                if r.attacks[attack] is not None and r.worst is not None:
                    assert r.worst.value <= r.attacks[attack].value + 1e-9
                    checked += 1
    assert checked >= 6
    single = row(board(site, "world-linf-4_255-oblivious"), "beta")  # pgd-10 alone: worst = pgd-10
    assert single.worst == single.attacks["pgd-10"]
    assert single.attacks["cw-10"] is None


def test_only_complete_rows_are_ranked(site):
    for b in site.boards:
        ranked = [r for r in b.rows if r.rank is not None]
        assert all(r.status == "complete" and not r.reasons for r in ranked)
        assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
        assert b.rows[: len(ranked)] == ranked  # ranked rows come first
        assert all(r.status != "complete" for r in b.rows[len(ranked):])
    main = board(site, "world-linf-2_255-oblivious")
    assert row(main, "alpha").rank == 1 and row(main, "alpha").status == "complete"
    assert row(main, "beta").rank is None


def test_incomplete_rows_say_what_is_missing(site, made):
    beta = row(board(site, "world-linf-2_255-oblivious"), "beta")
    assert beta.status == "incomplete" and beta.reasons == ["missing attacks: cw-10"]
    l2 = row(board(site, "world-l2-0.5-oblivious"), "beta")
    assert l2.reasons == ["missing datasets: world-colour", "missing attacks: cw-10"]
    # the shipped world standard wants all six world datasets
    shipped = site_model(collect([made / "alpha"]))
    alpha = row(board(shipped, "world-linf-2_255-oblivious"), "alpha")
    assert alpha.status == "incomplete" and alpha.rank is None
    assert alpha.reasons == ["missing datasets: world-count, world-texture, world-size, world-combo"]


def test_test_time_defense_is_unreliable_on_the_oblivious_board(site):
    oblivious = row(board(site, "world-linf-2_255-oblivious"), "alpha", "clamp")
    assert oblivious.defense_kind == "test-time"
    assert oblivious.status == "unreliable" and oblivious.rank is None and OBLIVIOUS_ONLY in oblivious.reasons
    adaptive = row(board(site, "world-linf-2_255-adaptive"), "alpha", "clamp")
    assert adaptive.status == "complete" and adaptive.rank == 1
    assert adaptive.oblivious_worst == oblivious.worst
    assert adaptive.adaptive_gap == pytest.approx(oblivious.worst.value - adaptive.worst.value)
    # declared in the run metadata: paper, code and the paper's own figure
    assert adaptive.paper == "https://example.org/clamp" and adaptive.code == "https://example.org/clamp-code"
    assert [dataclasses.asdict(r) for r in adaptive.reported] == [REPORTED]
    assert row(board(site, "world-linf-2_255-oblivious"), "alpha").defense_kind == "none"


def test_undeclared_test_time_defense_is_inferred(made, tmp_path):
    copy = tmp_path / "alpha"
    shutil.copytree(made / "alpha", copy)
    for file in copy.glob("*__clamp__*.parquet"):
        run = results.run_metadata_of(file)
        rewrite(file, run={k: v for k, v in run.items() if k != "defenses"})
    built = site_model(collect([copy]), SMALL)
    clamp = row(board(built, "world-linf-2_255-oblivious"), "alpha", "clamp")
    assert clamp.defense_kind == "test-time" and OBLIVIOUS_ONLY in clamp.reasons
    assert clamp.paper is None and clamp.reported == []


def test_mixed_sample_sets_are_unreliable(site):
    gamma = row(board(site, "world-linf-2_255-oblivious"), "gamma")
    assert gamma.status == "unreliable" and gamma.rank is None
    assert any(r.startswith("mixed sample sets on world-shape") for r in gamma.reasons)


def test_the_board_shows_the_precision_and_a_row_of_mixed_precisions_is_unreliable(made, site, tmp_path, monkeypatch):
    import torch

    from vlmbench.precision import key_for, write_record

    assert {r.precision for b in site.boards for r in b.rows} == {"fp32"}
    copy = tmp_path / "alpha"
    shutil.copytree(made / "alpha", copy)
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))  # a parity record that lets bf16 run here
    weights = json.loads(results.load_results(copy)["protocol"].iloc[0])["model"]["version"]
    write_record(key_for(torch.device("cpu"), "tiny-world", weights, "", "bf16"),
                 {"passed": True, "why_not": [], "speedup": 1.0, "samples": 400})
    _cli(made / "tiny_plugins.py", copy, "--attack", "pgd-10", "--dataset", "world-shape", "--eps", "2/255",
         "--precision", "bf16")
    none = row(board(site_model(collect([copy]), SMALL), "world-linf-2_255-oblivious"), "alpha")
    assert none.precision == "bf16+fp32" and none.status == "unreliable"
    assert "mixed precisions: bf16, fp32" in none.reasons


def test_a_sanity_flag_makes_a_row_unreliable(made, tmp_path):
    copy = tmp_path / "alpha"
    shutil.copytree(made / "alpha", copy)
    file = next(copy.glob("world-shape__*__none__pgd-10__*.parquet"))
    rows = results.read_file(file).to_pandas()
    rewrite(file, rows=rows.assign(flags="zero-gradients=0.50"))
    built = site_model(collect([copy]), SMALL)
    none = row(board(built, "world-linf-2_255-oblivious"), "alpha")
    assert none.status == "unreliable" and "sanity flags: zero-gradients" in none.reasons
    assert none.flags == ["zero-gradients"] and none.rank is None


def test_wilson_interval_on_known_cases():
    low, high = wilson(0.5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    z2 = 1.959963984540054 ** 2
    assert wilson(0.0, 10) == (0.0, pytest.approx(z2 / (10 + z2)))
    fig = boards.figure(0.8, 100)
    assert fig.value == pytest.approx(80.0) and fig.n == 100
    assert (round(fig.low, 2), round(fig.high, 2)) == (71.12, 86.66)
    mean = boards.mean_figure([0.5, 1.0], [4, 6])  # unweighted mean, interval over the 10 pooled images
    assert mean.value == pytest.approx(75.0) and mean.n == 10
    assert (mean.low, mean.high) == pytest.approx(tuple(100 * v for v in wilson(0.75, 10)))


def test_figures_carry_intervals_from_the_rows(site, made):
    rows = results.load_results(made / "beta")
    cell = rows[(rows["dataset"] == "world-shape") & (rows["norm"] == "l2")]
    fig = next(f for f in site.figures if f.cell_id == cell["cell_id"].iloc[0])
    assert fig.robust.n == len(cell) and fig.robust.value == pytest.approx(100 * cell["robust_rate"].mean())
    assert fig.robust.low <= fig.robust.value <= fig.robust.high
    assert any(f.attack == "worst" and f.entry == "alpha" for f in site.figures)
    assert {c.cell_id for c in site.cells} >= {f.cell_id for f in site.figures if f.attack != "worst"}
    assert set(site.flag_docs) >= {"zero-gradients", "adaptive-weaker"}


def test_the_same_input_gives_the_same_site(made):
    first = site_model(collect([made / "alpha", made / "gamma"]), SMALL)
    second = site_model(collect([made / "alpha", made / "gamma"]), SMALL)
    assert json.dumps(dataclasses.asdict(first), sort_keys=True, default=str) == \
        json.dumps(dataclasses.asdict(second), sort_keys=True, default=str)


def _submission(folder: Path, results_from: Path, **overrides) -> None:
    (folder / "results").mkdir(parents=True)
    for file in results_from.glob("*.parquet"):
        shutil.copy(file, folder / "results" / file.name)
    meta = {"method": "tiny", "paper": "https://example.org/paper", "code": None, "weights": "random init",
            "submitted_by": "tests", "hardware": "1 CPU thread", **overrides}
    (folder / "submission.json").write_text(json.dumps(meta))


def test_an_invalid_submission_is_listed_and_the_rest_builds(made, tmp_path):
    subs = tmp_path / "submissions"
    _submission(subs / "good", made / "beta")
    _submission(subs / "bad-meta", made / "beta", paper="javascript:alert(1)")
    _submission(subs / "bad-file", made / "gamma")
    tamper(next((subs / "bad-file" / "results").glob("*.parquet")))
    (subs / "no-json").mkdir()

    collection = collect([made / "alpha"], subs)
    entries = {e.name: e for e in collection.entries}
    assert [e.name for e in collection.entries] == ["alpha", "bad-file", "bad-meta", "good", "no-json"]
    assert entries["alpha"].valid and entries["good"].valid
    assert entries["good"].metadata["submitted_by"] == "tests"
    for name in ("bad-file", "bad-meta", "no-json"):
        error = entries[name].error
        assert not entries[name].valid and error.startswith(f"{name}: ") and "\n" not in error
    assert "paper" in entries["bad-meta"].error
    assert set(collection.rows["entry"]) == {"alpha", "good"}
    built = site_model(collection, SMALL)
    good = row(board(built, "world-linf-2_255-oblivious"), "good")
    assert good.paper == "https://example.org/paper"  # the submission's paper
    assert {c.entry for c in built.cells} == {"alpha", "good"}


def test_two_entries_with_the_same_cells_stay_apart(made, tmp_path):
    copy = tmp_path / "beta"
    shutil.copytree(made / "beta", copy)
    collection = collect([made / "beta", copy])
    assert [e.name for e in collection.entries] == ["beta", "beta-2"]
    assert set(collection.rows["entry"]) == {"beta", "beta-2"}
    built = site_model(collection, SMALL)
    assert {r.entry for r in board(built, "world-linf-4_255-oblivious").rows} == {"beta", "beta-2"}
    ids = [c.cell_id for c in built.cells]
    assert len(ids) == 2 * len(set(ids))


def test_collect_and_site_model_import_no_plugin_and_no_torch(made):
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from vlmbench.leaderboards.collect import collect\nfrom vlmbench.leaderboards.boards import site_model\n"
        f"site = site_model(collect([Path({str(made / 'alpha')!r})]))\n"
        "assert site.boards\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'vlmbench.registry', "
        "'vlmbench.defenses', 'vlmbench.attacks', 'vlmbench.runner', 'vlmbench.plan', 'vlmbench.execute', 'vlmbench.cell', 'vlmbench.batch', 'vlmbench.world')))\n"
        "print(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _doc_standards() -> dict[str, dict]:
    """The standards table of docs/leaderboards.md: | preset | attacks | datasets | adaptive required |."""
    text = (ROOT / "docs" / "leaderboards.md").read_text()
    section = text.split("<!-- standards:begin -->")[1].split("<!-- standards:end -->")[0]
    found = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("preset", "") or set(cells[0]) <= set("-: "):
            continue
        split = lambda text: [] if text in ("—", "-", "") else [p.strip().strip("`") for p in text.split(",")]  # noqa: E731
        found[cells[0].strip("`")] = {"attacks": split(cells[1]), "datasets": split(cells[2]),
                                      "adaptive_required": cells[3] == "yes"}
    return found


def test_docs_list_the_standards_of_standards_json():
    shipped = load_standards()
    assert set(shipped) >= {"world", "tecoa16", "ttc16", "fare13", "coop", "all22", "custom"}
    assert _doc_standards() == {name: {"attacks": list(s.attacks), "datasets": list(s.datasets),
                                       "adaptive_required": s.adaptive_required} for name, s in shipped.items()}
    assert shipped["world"].attacks == ("pgd-10", "cw-10") and len(shipped["world"].datasets) == 6
    assert shipped["tecoa16"].attacks == ("pgd-10", "cw-10", "aa-tecoa") and len(shipped["tecoa16"].datasets) == 16
    assert shipped["fare13"].attacks == ("aa-fare",) and len(shipped["fare13"].datasets) == 14


def test_standards_json_matches_the_protocol_presets():
    """standards.json copies the presets' dataset lists as data (the leaderboard must not import them)."""
    from vlmbench.presets import PRESETS

    shipped = load_standards()
    for name, preset in PRESETS.items():
        assert shipped[name].datasets == tuple(d.name for d in preset.datasets), name


def test_a_malformed_standards_file_is_one_line(tmp_path):
    bad = tmp_path / "standards.json"
    bad.write_text(json.dumps({"world": {"attacks": "pgd-10"}}))
    with pytest.raises(boards.StandardsError, match=re.escape("standard 'world' needs")):
        load_standards(bad)


def test_board_samples_are_the_rows_behind_each_board(made, site):
    collection = collect([made / "beta"])
    built = site_model(collection, SMALL)
    samples = boards.board_samples(collection, built)
    assert set(samples) == {b.id for b in built.boards}
    l2 = samples["world-l2-0.5-oblivious"]
    assert len(l2) == 3 and {r["dataset"] for r in l2} == {"world-shape"} and set(l2[0]) == set(boards.SAMPLE_COLUMNS)
    fig = row(board(built, "world-l2-0.5-oblivious"), "beta").attacks["pgd-10"]
    assert fig.value == pytest.approx(100 * sum(r["robust_rate"] for r in l2) / len(l2))
