"""Precision policy: fp32 unless a faster precision's parity with fp32 was measured here; what ran is recorded."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.precision import (AGREEMENT_SLACK, MIN_SAMPLES, TOLERANCE_POINTS, PrecisionError, key_for, read_record,
                                resolve, running_in, verdict, write_record)

RUN = ["--model", "tiny-world", "--dataset", "world-shape", "--attack", "pgd-2", "--eps", "2/255", "--samples", "4",
       "--threads", "1", "--no-eps-sweep"]


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """Parity records live in the cache: each test gets its own, so none leaks into other tests' `auto`."""
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(plugin, output, *extra):
    return CliRunner().invoke(app, ["run", *RUN, "--plugin", str(plugin), "--output", str(output), *extra])


def weights_of(output) -> str:
    rows = results.load_results(output)
    return json.loads(rows["protocol"].iloc[0])["model"]["version"]


@pytest.mark.parametrize(("precision", "message"), [
    ("bf16", "no parity with fp32 has been measured"),
    ("tf32", "tf32 exists only on CUDA"),
    ("fp16", "bad precision 'fp16'"),
])
def test_a_precision_that_may_not_run_is_refused_in_one_line_and_writes_nothing(
        tiny_model_plugin_file, own_cache, tmp_path, precision, message):
    result = run(tiny_model_plugin_file, tmp_path / "out", "--precision", precision)
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else True
    if precision == "bf16":
        assert "vlmbench parity --model tiny-world --precision bf16" in " ".join(result.output.split())


def test_fp32_is_what_auto_runs_without_a_record_and_every_row_says_so(tiny_model_plugin_file, own_cache, tmp_path):
    result = run(tiny_model_plugin_file, tmp_path / "out")
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path / "out")
    assert set(rows["precision"]) == {"fp32"} and {json.loads(p)["precision"] for p in rows["protocol"]} == {"fp32"}


def test_auto_takes_the_fastest_passing_precision_and_the_rows_and_metadata_say_which(
        tiny_model_plugin_file, own_cache, tmp_path):
    assert run(tiny_model_plugin_file, tmp_path / "fp32").exit_code == 0
    weights = weights_of(tmp_path / "fp32")
    key = key_for(torch.device("cpu"), "tiny-world", weights, "", "bf16")
    passing = {"passed": True, "why_not": [], "speedup": 2.0, "samples": 400}
    write_record(key, {**passing, "speedup": 1.0})  # at parity but not faster: auto keeps fp32
    assert resolve("auto", torch.device("cpu"), "tiny-world", weights, "") == ("fp32", None)
    write_record(key, passing)
    result = run(tiny_model_plugin_file, tmp_path / "auto")
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path / "auto")
    assert set(rows["precision"]) == {"bf16"}
    planned = CliRunner().invoke(app, ["plan", *RUN, "--plugin", str(tiny_model_plugin_file), "--output",
                                       str(tmp_path / "auto")], env={"COLUMNS": "250"})
    assert planned.exit_code == 0 and "1 complete" in planned.output, planned.output
    assert " bf16 " in planned.output and " fp32 " not in planned.output  # the plan says what auto resolved to
    assert set(rows["cell_id"]).isdisjoint(set(results.load_results(tmp_path / "fp32")["cell_id"]))  # another cell
    (path,) = (tmp_path / "auto").glob("*.parquet")
    run_meta = json.loads(results.read_file(path).schema.metadata[results.RUN_KEY])
    assert run_meta["precision_parity"]["speedup"] == 2.0 and run_meta["precision_parity"]["key"]["precision"] == "bf16"
    # a record for other weights, another test-time defense or a failed one never applies
    assert resolve("auto", torch.device("cpu"), "tiny-world", "0" * 16, "") == ("fp32", None)
    assert resolve("auto", torch.device("cpu"), "tiny-world", weights, "ttc") == ("fp32", None)
    write_record(key, {**passing, "passed": False, "why_not": ["robust accuracy 20.0% against fp32's 25.0%"]})
    assert resolve("auto", torch.device("cpu"), "tiny-world", weights, "") == ("fp32", None)
    refused = run(tiny_model_plugin_file, tmp_path / "bf16", "--precision", "bf16")
    assert refused.exit_code != 0 and "robust accuracy 20.0% against fp32's 25.0%" in " ".join(refused.output.split())


def test_parity_measures_three_runs_and_writes_the_record_that_allows_bf16(tiny_model_plugin_file, own_cache, tmp_path):
    result = CliRunner().invoke(app, [
        "parity", "--precision", "bf16", "--plugin", str(tiny_model_plugin_file), "--model", "tiny-world",
        "--dataset", "world-shape,world-colour", "--attack", "pgd-2", "--eps", "1/255,4/255", "--samples", "50",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "bf16 vs fp32" in result.output and "agreement with fp32" in result.output
    weights = next(iter(json.loads(p.read_text())["key"]["weights"] for p in (own_cache / "parity").glob("*.json")))
    record = read_record(key_for(torch.device("cpu"), "tiny-world", weights, "", "bf16"))
    assert record is not None and record["samples"] == 200 and record["cells"] == 4
    assert record["request"]["datasets"] == ["world-colour", "world-shape"]
    expected = (abs(record["robust_candidate"] - record["robust_fp32"]) <= TOLERANCE_POINTS
                and record["agreement_candidate"] >= record["agreement_fp32_other_starts"] - AGREEMENT_SLACK)
    assert record["passed"] == expected
    assert record["seconds"]["fp32"] > 0 and record["speedup"] == pytest.approx(
        record["seconds"]["fp32"] / record["seconds"]["candidate"])
    assert not list((own_cache / "parity" / "runs").iterdir())  # the three runs' files are gone
    bf16 = run(tiny_model_plugin_file, tmp_path / "bf16", "--precision", "bf16")
    if record["passed"]:
        assert bf16.exit_code == 0 and set(results.load_results(tmp_path / "bf16")["precision"]) == {"bf16"}
    else:
        assert bf16.exit_code != 0 and record["why_not"][0] in " ".join(bf16.output.split())


@pytest.mark.parametrize(("precision", "message"), [("fp32", "parity is measured for bf16 or tf32 against fp32"),
                                                     ("fp16", "bad precision 'fp16'")])
def test_parity_refuses_what_it_cannot_measure_in_one_line(tiny_model_plugin_file, own_cache, precision, message):
    result = CliRunner().invoke(app, ["parity", "--precision", precision, "--plugin", str(tiny_model_plugin_file),
                                      "--model", "tiny-world", "--threads", "1"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
    assert not (own_cache / "parity").exists() or not list((own_cache / "parity").glob("*.json"))  # nothing recorded


def test_the_verdict_applies_the_stated_tolerances():
    n = MIN_SAMPLES
    fp32 = [True] * 50 + [False] * (n - 50)
    same = verdict(fp32, fp32, fp32, {"fp32": 2.0, "candidate": 1.0})
    assert same["passed"] and same["speedup"] == 2.0 and same["agreement_candidate"] == 100.0
    two_points = [False] * 4 + fp32[4:]  # 4 of 200 images flip: 2 points below fp32
    assert not verdict(fp32, fp32, two_points, {"fp32": 1.0, "candidate": 1.0})["passed"]
    one_point = [False] * 2 + fp32[2:]
    assert verdict(fp32, one_point, one_point, {"fp32": 1.0, "candidate": 1.0})["passed"]
    swapped = [not v if i < 5 or 50 <= i < 55 else v for i, v in enumerate(fp32)]  # 5 lost, 5 gained: net 0
    noisy = verdict(fp32, fp32, swapped, {"fp32": 1.0, "candidate": 1.0})
    assert not noisy["passed"] and "agrees with fp32" in noisy["why_not"][0]  # same accuracy, other images
    few = verdict(fp32[:20], fp32[:20], fp32[:20], {"fp32": 1.0, "candidate": 1.0})
    assert not few["passed"] and "only 20 images" in few["why_not"][0]
    with pytest.raises(PrecisionError):
        verdict(fp32, fp32[:10], fp32, {"fp32": 1.0, "candidate": 1.0})


def test_bf16_runs_the_forward_in_bfloat16_and_hands_the_attack_float32_logits():
    from vlmbench.batch import _PassCounter

    seen = []

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(5, 12))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.flatten(1) @ self.weight.T
            seen.append(out.dtype)
            return out

    counter = _PassCounter(Linear())
    x = torch.rand(3, 3, 2, 2, requires_grad=True)
    with running_in("bf16", torch.device("cpu")):
        logits = counter(x)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32  # the matmul ran in bf16, the loss sees fp32
    (grad,) = torch.autograd.grad(logits.sum(), x)
    assert grad.dtype == torch.float32  # the perturbation and its gradient stay float32
    with running_in("fp32", torch.device("cpu")):
        counter(x)
    assert seen[-1] == torch.float32
