"""End-to-end runs through the CLI: Parquet contents, protocol record, resume, caching, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vlmbench import cell as cell_module
from vlmbench import results
from vlmbench.plan import select_indices
from vlmbench.cli import app
from vlmbench.protocol import Protocol

RUN = ["run", "--model", "tiny-world", "--dataset", "world-shape,world-size", "--attack", "pgd-2",
       "--eps", "2/255", "--samples", "10", "--batch-size", "4", "--threads", "1"]


def invoke(*args: str) -> "object":
    return CliRunner().invoke(app, list(args))


def run_tiny(plugin: Path, output: Path, *extra: str):
    result = invoke(*RUN, "--plugin", str(plugin), "--output", str(output), *extra)
    return result


def cell_files(output: Path) -> list[Path]:
    return sorted(output.glob("*.parquet"))


def fail_at_batch(monkeypatch, call: int, error: BaseException) -> Callable[[], None]:
    """Make the ``call``-th batch of the next run raise ``error`` (an interruption, an out-of-memory);
    returns what puts the real ``run_batch`` back."""
    calls = {"n": 0}
    real = cell_module.run_batch

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(cell_module, "run_batch", failing)
    return lambda: monkeypatch.setattr(cell_module, "run_batch", real)


def test_run_writes_one_parquet_per_cell_with_the_protocol(tiny_model_plugin_file, tmp_path):
    result = run_tiny(tiny_model_plugin_file, tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "world-shape" in result.output and "pgd-2" in result.output and "ε=2/255" in result.output
    assert "mean" in result.output
    files = cell_files(tmp_path / "out")
    assert len(files) == 2
    table = pq.read_table(files[0])
    assert table.schema.names == results.SCHEMA.names
    rows = table.to_pandas()
    assert len(rows) == 10 and rows["sample_index"].tolist() == list(range(10))
    protocol = Protocol.from_json(rows["protocol"].iloc[0])
    assert protocol.threat.eps_label == "2/255" and protocol.threat.steps == 2
    assert protocol.threat.step_size == pytest.approx(2 / 255)  # min(ε, max(1/255, 2.5·ε/steps))
    assert protocol.data.n_samples == 10 and protocol.precision == "fp32" and protocol.track == "oblivious"
    assert protocol.versions["torch"] and protocol.versions["open_clip_torch"]
    assert (rows["cell_id"] == protocol.cell_hash()).all()
    assert (rows["linf"] <= 2 / 255 + 1e-6).all()
    assert (rows["robust"] == (rows["clean_correct"] & rows["adv_correct"])).all()
    # no test-time defense: PGD stops on an image at the first iterate that fools the model (≤ 2 steps each)
    assert protocol.attack.params["early_stop"] is True
    assert ((rows["backward_passes"] >= 1) & (rows["backward_passes"] <= 2)).all()
    assert (rows["forward_passes"] == rows["backward_passes"]).all() and (rows["backward_passes"] < 2).any()
    run = json.loads(table.schema.metadata[results.RUN_KEY])
    assert run["versions"]["vlmbench"] and run["wall_time_s"] > 0 and "command" in run


def test_same_seed_same_rows_other_seed_other_random_start(tiny_model_plugin_file, tmp_path):
    for name in ("a", "b"):
        assert run_tiny(tiny_model_plugin_file, tmp_path / name).exit_code == 0
    run_tiny(tiny_model_plugin_file, tmp_path / "c", "--seed", "1")
    a, b, c = (results.load_results(tmp_path / n) for n in ("a", "b", "c"))
    columns = ["sample_index", "adv_pred", "linf", "l2"]
    pd.testing.assert_frame_equal(a[columns], b[columns])
    assert not a["l2"].equals(c["l2"])


def test_interrupted_run_resumes_without_losing_or_duplicating_rows(tiny_model_plugin_file, tmp_path, monkeypatch):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "reference").exit_code == 0
    restore = fail_at_batch(monkeypatch, 5, KeyboardInterrupt())
    interrupted = run_tiny(tiny_model_plugin_file, tmp_path / "out")
    assert interrupted.exit_code != 0
    assert len(cell_files(tmp_path / "out")) == 1  # the first cell (3 batches) finished
    assert len(list((tmp_path / "out" / results.PARTIAL_DIR).rglob("*.parquet"))) == 1  # one batch of cell 2
    restore()
    resumed = run_tiny(tiny_model_plugin_file, tmp_path / "out")
    assert resumed.exit_code == 0, resumed.output
    assert "1 already complete, 1 resumed" in resumed.output
    assert not (tmp_path / "out" / results.PARTIAL_DIR).exists() or not any((tmp_path / "out" / results.PARTIAL_DIR).iterdir())
    timings = [c for c in results.SCHEMA.names if "time_s" in c]  # wall-clock columns differ run to run
    got = results.load_results(tmp_path / "out").drop(columns=timings)
    want = results.load_results(tmp_path / "reference").drop(columns=timings)
    assert len(got) == 20 and not got.duplicated(["cell_id", "sample_index"]).any()
    pd.testing.assert_frame_equal(got.sort_values(["cell_id", "sample_index"]).reset_index(drop=True),
                                  want.sort_values(["cell_id", "sample_index"]).reset_index(drop=True))


def test_complete_cells_are_not_recomputed(tiny_model_plugin_file, tmp_path):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in cell_files(tmp_path / "out")}
    again = run_tiny(tiny_model_plugin_file, tmp_path / "out")
    assert again.exit_code == 0 and "2 already complete" in again.output
    assert {p: p.stat().st_mtime_ns for p in cell_files(tmp_path / "out")} == before


def test_corrupted_results_file_is_reported_and_left_untouched(tiny_model_plugin_file, tmp_path):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    victim = cell_files(tmp_path / "out")[0]
    victim.write_bytes(victim.read_bytes()[:100])
    damaged = victim.read_bytes()
    result = run_tiny(tiny_model_plugin_file, tmp_path / "out")
    assert result.exit_code == 2
    assert "is not a readable Parquet file" in result.output and "Traceback" not in result.output
    assert victim.read_bytes() == damaged
    shown = invoke("results", "show", str(tmp_path / "out"))
    assert shown.exit_code == 2 and "not a readable Parquet file" in shown.output


def test_results_show_prints_the_summary_and_rejects_foreign_files(tiny_model_plugin_file, tmp_path):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    shown = invoke("results", "show", str(tmp_path / "out"))
    assert shown.exit_code == 0 and "world-size" in shown.output and "clean %" in shown.output
    single = invoke("results", "show", str(cell_files(tmp_path / "out")[0]))
    assert single.exit_code == 0 and "world-size" not in single.output
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), foreign)
    result = invoke("results", "show", str(foreign))
    assert result.exit_code == 2 and "not a vlmbench results file" in result.output
    assert invoke("results", "show", str(tmp_path / "nowhere")).exit_code == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no results files" in invoke("results", "show", str(empty)).output


def test_summary_matches_the_rows(tiny_model_plugin_file, tmp_path):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "out").exit_code == 0
    rows = results.load_results(tmp_path / "out")
    summary = results.summarize(rows).set_index("dataset")
    for dataset in ("world-shape", "world-size"):
        part = rows[rows["dataset"] == dataset]
        assert summary.loc[dataset, "clean_acc"] == pytest.approx(100 * part["clean_correct"].mean())
        assert summary.loc[dataset, "robust_acc"] == pytest.approx(100 * part["robust"].mean())
    assert summary.loc["mean", "robust_acc"] == pytest.approx(summary.drop("mean")["robust_acc"].mean())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "abc"], "bad ε 'abc'"),
        (["--eps", "8"], "did you mean 8/255"),
        (["--attack", "pgdd-10"], "did you mean 'pgd'"),
        (["--defense", "nonee"], "did you mean 'none'"),
        (["--dataset", "world-shap"], "did you mean 'world-shape'"),
        (["--dataset", "nosuch-*"], "no dataset matches 'nosuch-*'"),
        (["--model", "ViT-B-23:openai"], "did you mean 'ViT-B-32'"),
        (["--norm", "l3"], "unknown norm 'l3'"),
        (["--attack-param", "kappa=abc", "--attack", "cw-2"], "bad value 'abc'"),
        (["--attack-param", "gamma=1", "--attack", "cw-2"], "unknown parameter 'gamma'"),
        (["--defense-param", "x=1"], "unknown parameter 'x' for defense 'none'"),
        (["--samples", "0"], "bad number of samples"),
        (["--split", "train"], "has no split 'train'"),
        (["--device", "cuda:0"], "CUDA is not available"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = invoke("run", *args, "--output", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "results"
    target.write_text("precious")
    result = invoke("run", "--output", str(target))
    assert result.exit_code == 2 and "is not a folder" in result.output
    assert target.read_text() == "precious"


def test_schema_command_lists_every_column():
    result = invoke("results", "schema")
    assert result.exit_code == 0
    for name in results.SCHEMA.names:
        assert name in result.output


def test_sample_selection_is_seeded_and_recorded(tiny_model_plugin_file, tmp_path):
    assert select_indices(10, None, "first", 0) == list(range(10))
    assert select_indices(10, 3, "first", 0) == [0, 1, 2]
    picked = select_indices(1000, 20, "random", 7)
    assert picked == sorted(picked) and len(set(picked)) == 20 and picked == select_indices(1000, 20, "random", 7)
    assert picked != select_indices(1000, 20, "random", 8)
    result = run_tiny(tiny_model_plugin_file, tmp_path / "out", "--selection", "random")
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path / "out").query("dataset == 'world-size'")
    protocol = Protocol.from_json(rows["protocol"].iloc[0])
    assert protocol.data.selection == "random"
    assert rows["sample_index"].tolist() == select_indices(500, 10, "random", 0)
    from vlmbench.protocol import indices_sha256

    assert protocol.data.indices_sha256 == indices_sha256(rows["sample_index"].tolist())


def test_worst_case_over_attacks_is_per_sample(tiny_model_plugin_file, tmp_path):
    result = run_tiny(tiny_model_plugin_file, tmp_path / "out", "--attack", "cw-2,none")
    assert result.exit_code == 0, result.output
    assert "worst" in result.output
    rows = results.load_results(tmp_path / "out")
    worst = results.worst_case(rows)
    for (dataset, index), group in rows.groupby(["dataset", "sample_index"]):
        expected = bool(group["robust"].all())
        got = worst[(worst["dataset"] == dataset) & (worst["sample_index"] == index)]["robust"]
        assert got.tolist() == [expected]
    summary = results.summarize(rows)
    per_attack = summary[summary["dataset"] == "mean"].set_index("attack")["robust_acc"]
    assert per_attack["worst"] <= per_attack.drop("worst").min()
    assert "worst" not in results.summarize(rows[rows["attack"] == "none"])["attack"].tolist()
