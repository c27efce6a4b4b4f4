"""Executors and the planner: cells as keys, jobs, shards (disjoint, balanced, together the whole run),
`vlmbench plan` (status and costs that match what a run does), and the planner never trains."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from test_runner import fail_at_batch
from vlmbench import results
from vlmbench.cli import app
from vlmbench.execute import preview, shard_work
from vlmbench.plan import CellKey, RunRequest, plan, shard

BASE = ["--model", "tiny-world", "--dataset", "world-shape,world-size", "--attack", "pgd-2,none", "--eps", "1/255,2/255",
        "--samples", "6", "--batch-size", "4", "--threads", "1", "--no-eps-sweep"]
TIMINGS = [c for c in results.SCHEMA.names if "time_s" in c]  # wall-clock columns differ run to run


def invoke(plugin: Path, command: str, output: Path, *extra: str):
    return CliRunner().invoke(app, [command, *BASE, "--plugin", str(plugin), "--output", str(output), *extra],
                              env={"COLUMNS": "200"})  # the plan's table unwrapped


def text(result) -> str:
    """The output with its line wrapping undone (rich wraps at the terminal's width)."""
    return " ".join(result.output.split())


def rows_of(output: Path) -> pd.DataFrame:
    rows = results.load_results(output).drop(columns=TIMINGS)
    return rows.sort_values(["cell_id", "sample_index"]).reset_index(drop=True)


def test_shard_is_a_deterministic_balanced_partition():
    jobs = [(CellKey(0, 0, s, 0, "oblivious"),) for s in range(7)]
    costs = [5.0, 1.0, 1.0, 4.0, 2.0, 2.0, 1.0]
    parts = [shard(jobs, costs, i, 3) for i in (1, 2, 3)]
    assert sorted(job for part in parts for job in part) == sorted(jobs)  # disjoint and complete
    assert parts == [shard(jobs, costs, i, 3) for i in (1, 2, 3)]  # the same plan gives the same shards
    loads = [sum(costs[jobs.index(job)] for job in part) for part in parts]
    assert max(loads) - min(loads) <= max(costs)  # longest-first greedy: within one job of balanced
    assert all(part == sorted(part, key=jobs.index) for part in parts)  # each shard keeps the plan's order
    assert shard(jobs, costs, 1, 1) == jobs and shard(jobs[:1], costs[:1], 2, 2) == []
    with pytest.raises(Exception, match="I/N"):
        shard(jobs, costs, 4, 3)


def test_jobs_chain_the_cascade_and_estimates_match_the_passes_a_run_records(tiny_model_plugin_file, tmp_path):
    from vlmbench.registry import plugins

    plugins().load_source(str(tiny_model_plugin_file))
    request = RunRequest(models=("tiny-world",), attacks=("pgd-2", "none"), datasets=("world-shape",), eps=("1/255",),
                         n_samples=6, output=tmp_path / "out", eps_sweep=False)
    the_plan = plan(request)
    assert the_plan.jobs() == [(key,) for key in the_plan.cells()] and the_plan.n_cells == 2
    chained = plan(RunRequest(**{**vars(request), "cascade": True, "eps": ("1/255", "2/255")}))
    assert [len(job) for job in chained.jobs()] == [2, 2]  # pgd-2 then none, per ε
    assert {chained.attacks[k.attack].threat.eps_label for k in chained.jobs()[1]} == {"2/255"}
    from vlmbench.runner import execute

    outcomes = execute(the_plan)
    for key, outcome in zip(the_plan.cells(), outcomes):
        forward, backward = the_plan.estimated_passes(key)
        rows = outcome.rows
        evaluation = 2 * rows["eval_draws"].sum()  # clean and adversarial forwards, not in forward_passes
        if the_plan.early_stop(key):  # an upper bound: images leave the attack once fooled
            assert the_plan.attack_for(key).spec == "pgd-2"
            assert len(rows) <= rows["backward_passes"].sum() < backward
            assert rows["forward_passes"].sum() + evaluation < forward
        else:
            assert forward == pytest.approx(rows["forward_passes"].sum() + evaluation)
            assert backward == pytest.approx(rows["backward_passes"].sum())
    plugins().load_source(str(Path(__file__).parent / "plugins" / "toy_defenses.py"))
    full = plan(RunRequest(**{**vars(request), "defenses": ("toy-quantise",), "output": tmp_path / "full"}))
    key = next(k for k in full.cells() if full.attack_for(k).spec == "pgd-2")
    assert not full.early_stop(key)  # oblivious attack on a test-time defense: every step, exactly the estimate
    rows = execute(full)[full.cells().index(key)].rows
    assert full.estimated_passes(key)[1] == pytest.approx(rows["backward_passes"].sum())
    assert [p.status for p in preview(the_plan)] == ["complete", "complete"]


def test_a_batch_that_does_not_fit_in_gpu_memory_is_one_line_and_keeps_the_finished_cells(
        tiny_model_plugin_file, tmp_path, monkeypatch):
    output = tmp_path / "out"
    # the third cell's first batch (2 batches per cell)
    fail_at_batch(monkeypatch, 5, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    result = invoke(tiny_model_plugin_file, "run", output)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert "does not fit in GPU memory; rerun with a smaller --batch-size (e.g. 2)" in errors[0], errors[0]
    assert "Traceback" not in result.output and len(list(output.glob("*.parquet"))) == 2  # two cells finished
    assert not list(output.glob(".partial/*/protocol.json"))  # the failed cell's size is not left for a rerun to adopt


def test_attacks_stop_early_only_where_the_attacked_model_is_the_scored_one(tiny_model_plugin_file, tmp_path):
    from vlmbench.registry import plugins

    plugins().load_source(str(tiny_model_plugin_file))
    plugins().load_source(str(Path(__file__).parent / "plugins" / "toy_defenses.py"))
    request = RunRequest(models=("tiny-world",), attacks=("pgd-2", "none"), datasets=("world-shape",), eps=("1/255",),
                         defenses=("none", "toy-quantise", "toy-noise"), n_samples=4, output=tmp_path / "out")
    the_plan = plan(request)
    stops = {(the_plan.defenses[k.defense].spec, the_plan.attack_for(k).spec, k.track): the_plan.early_stop(k)
             for k in the_plan.cells()}
    assert {cell for cell, stop in stops.items() if stop} == {
        ("none", "pgd-2", "oblivious"),  # no test-time defense: the classifier attacked is the one scored
        ("toy-quantise", "pgd-2", "adaptive"),  # the whole deterministic pipeline is attacked and scored
    }
    assert ("toy-quantise", "pgd-2", "oblivious") in stops and ("toy-noise", "pgd-2", "adaptive") in stops
    transfer = plan(RunRequest(**{**vars(request), "defenses": ("none",), "source_model": "tiny-world"}))
    assert not any(transfer.early_stop(k) for k in transfer.cells())  # crafted on another model


def test_two_shards_together_equal_the_unsharded_run(tiny_model_plugin_file, tmp_path):
    whole = invoke(tiny_model_plugin_file, "run", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    first = invoke(tiny_model_plugin_file, "run", tmp_path / "sharded", "--shard", "1/2")
    assert first.exit_code == 0, first.output
    n_first = len(list((tmp_path / "sharded").glob("*.parquet")))
    assert "(shard 1/2 of 8)" in first.output and 0 < n_first < 8
    second = invoke(tiny_model_plugin_file, "run", tmp_path / "sharded", "--shard", "2/2")
    assert second.exit_code == 0 and "(0 already complete" in second.output  # no cell of shard 1 again
    assert sorted(p.name for p in (tmp_path / "sharded").glob("*.parquet")) == sorted(p.name for p in (tmp_path / "whole").glob("*.parquet"))
    pd.testing.assert_frame_equal(rows_of(tmp_path / "sharded"), rows_of(tmp_path / "whole"))


def test_plan_shows_status_and_counts_and_runs_nothing(tiny_model_plugin_file, tmp_path, monkeypatch):
    output = tmp_path / "out"
    dry = invoke(tiny_model_plugin_file, "plan", output)
    assert dry.exit_code == 0, dry.output
    assert "plan: 8 cells" in text(dry) and "0 complete, 0 partial, 8 pending, 0 needs training" in text(dry)
    assert "to compute: 48 images" in text(dry) and "no throughput measured" in text(dry)
    assert not output.exists() or not list(output.rglob("*.parquet"))  # nothing ran

    restore = fail_at_batch(monkeypatch, 4, KeyboardInterrupt())  # 2 batches per cell: the second stops half-way
    assert invoke(tiny_model_plugin_file, "run", output).exit_code != 0
    restore()
    after = invoke(tiny_model_plugin_file, "plan", output)
    assert "1 complete, 1 partial, 6 pending" in text(after), after.output
    assert "partial 1/2 batches" in text(after) and "to compute: 42 images" in text(after)
    assert "ms per model call measured over 1 finished cells" in text(after)

    sharded = invoke(tiny_model_plugin_file, "plan", output, "--shard", "2/3")
    assert sharded.exit_code == 0 and "(shard 2/3 of 8)" in text(sharded)
    bad = invoke(tiny_model_plugin_file, "plan", output, "--shard", "3/2")
    assert bad.exit_code == 2 and "--shard '3/2': write I/N" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_plan_never_trains_a_defense_it_reports_as_needing_training(tiny_model_plugin_file, tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    result = invoke(tiny_model_plugin_file, "plan", tmp_path / "out", "--defense", "none,tecoa", "--defense-param", "tecoa.preset=world")
    assert result.exit_code == 0, result.output
    assert "8 pending, 8 needs training" in text(result)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # no checkpoint was trained


def test_sharding_a_runs_work_keeps_cascade_chains_whole(tiny_model_plugin_file, tmp_path):
    from vlmbench.registry import plugins

    plugins().load_source(str(tiny_model_plugin_file))
    the_plan = plan(RunRequest(models=("tiny-world",), attacks=("pgd-2", "none"), datasets=("world-shape", "world-size"),
                               eps=("1/255", "2/255"), n_samples=6, output=tmp_path / "out", cascade=True))
    work = [(0, job) for job in the_plan.jobs()]
    parts = [shard_work([the_plan], work, i, 3) for i in (1, 2, 3)]
    assert sorted(item for part in parts for item in part) == sorted(work)
    assert all(len(job) == 2 for part in parts for _, job in part)  # cascade chains are never split


def test_a_named_defense_parameter_reaches_only_its_defense(tmp_path):
    """`--defense none,tecoa --defense-param tecoa.preset=world` (a matrix's per-defense parameter) configures
    tecoa and leaves `none` alone; a bare key=value with several defenses is ambiguous."""
    from vlmbench.plan import RunError

    the_plan = plan(RunRequest(defenses=("none", "tecoa"), defense_params=("tecoa.preset=world",), datasets=("world-shape",),
                               n_samples=2, output=tmp_path / "out"))
    assert [d.parts[0].config.preset for d in the_plan.defenses[1:]] == ["world"]
    with pytest.raises(RunError, match="ambiguous"):
        plan(RunRequest(defenses=("none", "tecoa"), defense_params=("preset=world",), datasets=("world-shape",),
                        output=tmp_path / "out"))


def test_the_world_matrix_plans_the_committed_world_entry_as_complete(tmp_path, monkeypatch):
    """matrices/world.toml against the committed entry's results: every cell the planner can identify
    without training is found complete (its id, computed from the matrix, names a committed file), and
    the training-time defenses, not in this test's empty checkpoint cache, are reported, not trained."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["plan", "--matrix", str(root / "matrices" / "world.toml"),
                                      "--output", str(root / "leaderboards" / "submissions" / "world" / "results")])
    assert result.exit_code == 0, result.output
    # none: 6 datasets x 2 attacks x 2 eps; ttc, scc, clipure_cos: 6 x 2 x 1 eps x 2 tracks; six trained defenses x 24
    assert "96 complete, 0 partial, 0 pending, 144 needs training" in text(result)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_run_and_plan_take_a_matrix_file_and_refuse_what_the_file_decides(tiny_model_plugin_file, tmp_path):
    matrix = tmp_path / "m.toml"
    matrix.write_text(f'plugin = ["{tiny_model_plugin_file}"]\nmodel = "tiny-world"\ndataset = "world-shape"\n'
                      'attack = ["pgd-2", "none"]\nsamples = 4\nthreads = 1\neps-sweep = false\n'
                      '[[include]]\ndataset = "world-size"\nattack = "pgd-2"\neps = "2/255"\n')
    planned = CliRunner().invoke(app, ["plan", "--matrix", str(matrix), "--output", str(tmp_path / "out")])
    assert planned.exit_code == 0, planned.output
    assert "0 complete, 0 partial, 3 pending" in text(planned)
    first = CliRunner().invoke(app, ["run", "--matrix", str(matrix), "--output", str(tmp_path / "out"), "--shard", "1/2"])
    second = CliRunner().invoke(app, ["run", "--matrix", str(matrix), "--output", str(tmp_path / "out"), "--shard", "2/2"])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert "of 3)" in text(first) and len(list((tmp_path / "out").glob("*.parquet"))) == 3
    after = CliRunner().invoke(app, ["plan", "--matrix", str(matrix), "--output", str(tmp_path / "out")])
    assert "3 complete, 0 partial, 0 pending" in text(after)
    clash = CliRunner().invoke(app, ["run", "--matrix", str(matrix), "--samples", "8", "--attack", "cw-2"])
    assert clash.exit_code == 2 and len(clash.output.strip().splitlines()) == 1
    assert "--attack, --samples given with --matrix" in text(clash) and "set them in the file" in text(clash)
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "tiny-world"\natack = "pgd-2"\n')
    refused = CliRunner().invoke(app, ["run", "--matrix", str(bad)])
    assert refused.exit_code == 2 and f"{bad}:2: unknown key 'atack'" in text(refused)


def test_execution_makes_the_recorded_fp32_true_on_cuda(tmp_path):
    """Rows say fp32: the workbench switches off TF32 (cuDNN's default is on) before any cell runs."""
    import torch

    from vlmbench.execute import Workbench

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        Workbench(plan(RunRequest(datasets=("world-shape",), n_samples=2, output=tmp_path / "out")), train=False)
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_attack_cost_estimates_bound_what_autoattack_and_noise_really_spend(tiny_model_plugin_file, tmp_path):
    """AutoAttack and the noise baseline stop early per image: the planner's estimate is an upper bound of
    the passes the rows record, and close to them where nothing stops early (the first sub-attack)."""
    from vlmbench.registry import plugins
    from vlmbench.runner import execute

    plugins().load_source(str(tiny_model_plugin_file))
    the_plan = plan(RunRequest(models=("tiny-world",), attacks=("aa-2", "noise-5"), datasets=("world-shape",),
                               n_samples=4, output=tmp_path / "out", eps_sweep=False))
    for key, outcome in zip(the_plan.cells(), execute(the_plan)):
        forward, backward = the_plan.estimated_passes(key)
        rows = outcome.rows
        assert rows["forward_passes"].sum() + 2 * rows["eval_draws"].sum() <= forward
        assert rows["backward_passes"].sum() <= backward
        if rows["attack"].iloc[0].startswith("aa"):
            assert forward > 4 * 100  # Square's 50 queries per step dominate the bound
        else:
            assert backward == 0
