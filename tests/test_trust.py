"""Issue: numbers you can trust. Each test reproduces a way a wrong or stale number got in silently
(or a failure that was not clean) and checks it is now either right or refused with one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vlmbench import results, runner
from vlmbench.batch import predict
from vlmbench.cell import cell_lock
from vlmbench.cli import app
from vlmbench.protocol import Protocol

PLUGINS = Path(__file__).parent / "plugins"
DEFAULTS = {"--model": "tiny-world", "--dataset": "world-shape", "--attack": "pgd-2", "--eps": "2/255",
            "--samples": "6", "--batch-size": "3", "--threads": "1"}


def arguments(**overrides: str) -> list[str]:
    """``run`` with the tiny defaults; ``samples="10"`` overrides ``--samples``."""
    options = {**DEFAULTS, **{f"--{k.replace('_', '-')}": v for k, v in overrides.items()}}
    return ["run", *[part for item in options.items() for part in item], "--no-eps-sweep"]


BASE = arguments()


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def run(model_plugin: Path, output: Path, *extra: str, **overrides: str):
    return invoke(*arguments(**overrides), "--plugin", str(model_plugin), "--output", str(output), *extra)


def protocols(output: Path) -> list[Protocol]:
    rows = results.load_results(output)
    return [Protocol.from_json(text) for text in rows.drop_duplicates("cell_id")["protocol"]]


ROUNDING = '''
from typing import ClassVar
import torch
from vlmbench.defense import Defense


class Rounding(Defense):
    name: ClassVar[str] = "rounding"
    description: ClassVar[str] = "rounds pixels to 16 levels"

    def wrap(self, classifier, context):
        class Rounded(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.classifier = classifier

            def forward(self, x):
                return self.classifier(torch.{how}(x * 15) / 15)

        return Rounded()
'''


def test_editing_a_plugin_makes_new_cells(tiny_model_plugin_file, tmp_path):
    """Item 1: the cell identity covers the plugin's source, not only its name, version and params."""
    source = tmp_path / "rounding.py"
    source.write_text(ROUNDING.format(how="round"))
    first = run(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(source), "--defense", "rounding",
                "--track", "oblivious")
    assert first.exit_code == 0, first.output
    source.write_text(ROUNDING.format(how="floor"))
    from vlmbench import registry

    registry.reset()
    second = run(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(source), "--defense", "rounding",
                 "--track", "oblivious")
    assert second.exit_code == 0, second.output
    assert "0 already complete" in second.output
    records = protocols(tmp_path / "out")
    assert len(records) == 2
    assert len({p.defense.fingerprint for p in records}) == 2 and all(p.defense.fingerprint for p in records)
    rows = results.load_results(tmp_path / "out")
    assert rows["defense_fingerprint"].nunique() == 2 and (rows["attack_fingerprint"] != "").all()
    assert (rows["dataset_fingerprint"] != "").all()


def test_eps_written_as_a_float_is_the_same_cell(tiny_model_plugin_file, tmp_path):
    """Item 3: equal ε values give one cell and one label."""
    assert run(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    again = run(tiny_model_plugin_file, tmp_path / "out", eps="0.0078431372549")
    assert again.exit_code == 0, again.output
    assert "1 cells (1 already complete" in again.output
    assert len(list((tmp_path / "out").glob("*.parquet"))) == 1
    both = run(tiny_model_plugin_file, tmp_path / "out", "--eps", "0.0078431372549")  # two spellings, one value
    assert both.exit_code == 0 and "1 cells (1 already complete" in both.output


@pytest.mark.parametrize(("defense", "message"), [
    ("nan-logits", "non-finite logits"),
    ("extra-columns", "shape (3, 7)"),
    ("flat-logits", "shape (3,)"),
])
def test_defense_outputs_are_checked_on_every_batch(defense, message, tiny_model_plugin_file, tmp_path):
    """Item 7: NaN, extra columns and 1-D logits are refused with one line naming the defense."""
    result = run(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(PLUGINS / "broken_defenses.py"),
                 "--defense", defense, "--track", "oblivious")
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert f"defense {defense!r}" in line and message in line and "Traceback" not in result.output
    assert not list((tmp_path / "out").glob("*.parquet"))


@pytest.mark.parametrize(("args", "message"), [
    (["--defense", "ttc", "--defense-param", "tau_threshold=nan"], "must be a finite number"),
    (["--attack-param", "kappa=inf"], "must be a finite number"),
    (["--seed", "-1", "--selection", "random"], "seed -1"),
])
def test_values_that_switch_a_plugin_off_are_refused(args, message, tiny_model_plugin_file, tmp_path):
    """Item 8 and clean failure: one line, exit 2, nothing computed."""
    result = run(tiny_model_plugin_file, tmp_path / "out", *args, attack="cw-2")
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["eps", "attacks", "defenses"])
def test_an_empty_list_is_an_error_not_the_default(field, tmp_path):
    """Item 8: an explicitly empty ``--eps ''`` or ``--attack ''`` is refused by the planner too."""
    with pytest.raises(runner.RunError, match="is empty"):
        runner.plan(runner.RunRequest(output=tmp_path / "out", **{field: ("",)}))


def test_random_defense_is_scored_by_vote_and_both_tracks_share_the_clean_figure(tiny_model_plugin_file, tmp_path):
    """Item 9: clean predictions of a random defense are a majority vote over several draws (recorded),
    identical on the oblivious and adaptive tracks."""
    result = run(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(PLUGINS / "toy_defenses.py"),
                 "--defense", "toy-noise", "--defense-param", "sigma=0.3", "--eot", "2", "--eval-draws", "5")
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path / "out")
    assert set(rows["track"]) == {"oblivious", "adaptive"} and (rows["eval_draws"] == 5).all()
    by_track = {track: part.set_index("sample_index")["clean_pred"] for track, part in rows.groupby("track")}
    pd.testing.assert_series_equal(by_track["oblivious"], by_track["adaptive"])
    assert all(p.eval_draws == 5 for p in protocols(tmp_path / "out"))
    # the expectation over draws is recorded per image and is what the summary reports
    assert set((rows["robust_rate"] * 5).round(9)) <= set(range(6)) and rows["robust_rate"].between(0, 1).all()
    assert (rows["robust_rate"] <= rows["clean_correct_rate"]).all()
    summary = results.summarize(rows, with_worst_case=False).set_index(["track", "dataset"])
    for track, part in rows.groupby("track"):
        assert summary.loc[(track, "world-shape"), "robust_acc"] == pytest.approx(100 * part["robust_rate"].mean())
        assert summary.loc[(track, "world-shape"), "clean_acc"] == pytest.approx(100 * part["clean_correct_rate"].mean())


def test_a_deterministic_pipeline_has_rates_equal_to_its_outcomes(tiny_model_plugin_file, tmp_path):
    assert run(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    rows = results.load_results(tmp_path / "out")
    assert (rows["robust_rate"] == rows["robust"].astype(float)).all()
    assert (rows["clean_correct_rate"] == rows["clean_correct"].astype(float)).all()


def test_vote_breaks_ties_by_mean_probability_and_is_deterministic_for_one_draw(tiny_model_plugin_file, tmp_path):
    """Item 9: ``predict`` on a scripted sequence of draws gives the majority class."""
    import torch

    draws = iter([torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 3.0, 0.0]]), torch.tensor([[0.0, 2.5, 0.0]]),
                  torch.tensor([[4.0, 0.0, 0.0]])])

    class Scripted(torch.nn.Module):
        def forward(self, x):
            return next(draws)

    class Cell:
        defended = Scripted()
        classifier = type("C", (), {"num_classes": 3})()
        protocol = type("P", (), {"eval_draws": 3, "defense": type("D", (), {"name": "scripted"})()})()

    assert predict(Cell(), torch.zeros(1, 3, 2, 2), 0).tolist() == [1]  # votes: class 1 twice, class 0 once
    Cell.protocol.eval_draws = 1
    assert predict(Cell(), torch.zeros(1, 3, 2, 2), 0).tolist() == [0]


def test_resolution_says_what_happened(tiny_model_plugin_file, tmp_path):
    """Item 11: 32×32 world images entering a 32×32 model are not resampled, and the record says so."""
    assert run(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    (record,) = protocols(tmp_path / "out")
    assert "no resampling" in record.data.resolution and "resized inside the model" not in record.data.resolution


def test_forward_randomness_flags_only_undeclared_randomness(tiny_model_plugin_file, tmp_path):
    """Item 12: a defense that declares ``stochastic`` is not flagged; one that hides it is."""
    declared = run(tiny_model_plugin_file, tmp_path / "a", "--plugin", str(PLUGINS / "toy_defenses.py"),
                   "--defense", "toy-noise", "--track", "oblivious", "--eval-draws", "3")
    assert declared.exit_code == 0, declared.output
    assert "forward-randomness" not in declared.output
    hidden = run(tiny_model_plugin_file, tmp_path / "b", "--plugin", str(PLUGINS / "broken_defenses.py"),
                 "--defense", "undeclared-noise", "--track", "oblivious")
    assert hidden.exit_code == 0, hidden.output
    assert "forward-randomness" in hidden.output
    assert (results.load_results(tmp_path / "b")["eval_draws"] == 1).all()


def test_more_samples_than_the_split_is_said(tiny_model_plugin_file, tmp_path):
    """Item 12: ``--samples 100000`` is not silently cut: a note, and ``n_requested`` in every row."""
    result = run(tiny_model_plugin_file, tmp_path / "out", "--split", "val", samples="100000", dataset="world-size",
                 attack="none", batch_size="200")
    assert result.exit_code == 0, result.output
    assert "100000 images asked for" in result.output
    rows = results.load_results(tmp_path / "out")
    assert (rows["n_requested"] == 100000).all() and len(rows) == rows["n_samples"].iloc[0] < 100000
    assert (rows["selection"] == "all").all()


def test_filterable_fields_are_columns(tiny_model_plugin_file, tmp_path):
    """Item 12: preset, selection, templates, start, source, plugin fingerprints are columns too."""
    assert run(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    rows = results.load_results(tmp_path / "out")
    (record,) = protocols(tmp_path / "out")
    first = rows.iloc[0]
    assert (first["preset"], first["selection"], first["templates"], first["start"], first["source_model"]) == (
        "", "first", "", "attack", "")
    assert first["defense_fingerprint"] == record.defense.fingerprint
    assert first["attack_fingerprint"] == record.attack.fingerprint
    assert first["dataset_fingerprint"] == record.data.fingerprint


def test_unwritable_output_or_cache_is_refused_before_computing(tiny_model_plugin_file, tmp_path, monkeypatch):
    """Clean failure: one line before any computation (CI runs as root, so a path under a file and
    /proc stand in for unwritable folders)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(tiny_model_plugin_file, blocker / "out")
    assert result.exit_code == 2 and "cannot write to the output folder" in result.output
    assert result.output.strip().count("\n") == 0
    monkeypatch.setenv("VLMBENCH_CACHE", "/proc/vlmbench-cache")
    result = run(tiny_model_plugin_file, tmp_path / "out")
    assert result.exit_code == 2 and "cannot write to the cache folder" in result.output
    assert not (tmp_path / "out").exists()


def test_leftovers_of_killed_runs_are_cleaned(tiny_model_plugin_file, tmp_path):
    """Clean failure: dead processes' .tmp files and finished cells' staging go; no empty .partial stays."""
    output = tmp_path / "out"
    assert run(tiny_model_plugin_file, output).exit_code == 0
    (final,) = output.glob("*.parquet")
    cell_id = final.stem.rsplit("__", 1)[-1]
    staging = output / results.PARTIAL_DIR / cell_id
    staging.mkdir(parents=True)
    (staging / "000000000.parquet").write_bytes(b"left by a run killed after its final write")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = output / f".{final.name}.{dead.stdout.strip()}.tmp"
    stale.write_bytes(b"half a file")
    alive = output / f".{final.name}.{os.getpid()}.tmp"
    alive.write_bytes(b"another process is writing this one")
    again = run(tiny_model_plugin_file, output)
    assert again.exit_code == 0 and "1 already complete" in again.output
    assert not stale.exists() and alive.exists() and not (output / results.PARTIAL_DIR).exists()


def test_two_processes_on_one_output_never_crash_or_rewrite(tiny_model_plugin_file, tmp_path):
    """Clean failure: two processes computing the same cells into one folder both succeed; each cell
    is computed once and never rewritten."""
    output = tmp_path / "out"
    args = [*arguments(dataset="world-shape,world-size"), "--plugin", str(tiny_model_plugin_file), "--output", str(output)]
    script = textwrap.dedent(f"""
        import sys, torch
        torch.set_num_threads(1)
        from vlmbench.cli import app
        sys.argv = ["vlmbench"]
        app({args!r})
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    files = sorted(output.glob("*.parquet"))
    assert len(files) == 2
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    rows = results.load_results(output)
    assert len(rows) == 12 and not rows.duplicated(["cell_id", "sample_index"]).any()
    counts = [re.search(r"(\d+) cells \((\d+) already complete", text) for text in outputs]
    assert sum(int(m[1]) - int(m[2]) for m in counts) == 2  # each cell computed once, by one of them
    assert {f: f.stat().st_mtime_ns for f in files} == mtimes and not (output / results.PARTIAL_DIR).exists()


def test_cell_lock_makes_a_second_process_wait(tmp_path):
    """Clean failure: while one process holds a cell's lock, another waits and says so."""
    import threading

    output = tmp_path / "out"
    output.mkdir()
    waited: list[str] = []
    order: list[str] = []
    with cell_lock(output, "abc"):
        # flock is per open file description: a second open in this process blocks like another process
        def second() -> None:
            with cell_lock(output, "abc", waited.append):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive() and waited and "another process" in waited[0]
        order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
