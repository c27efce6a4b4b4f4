"""TTC, SCC and CLIPure-Cos through ``vlmbench run``: both tracks, cost columns, per-cell checks,
composition with a training-time defense, and the adaptive attack against a gradient-masking toy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.defense import DefenseContext
from vlmbench.protocol import Protocol

PLUGINS = Path(__file__).parent / "plugins"
BASE = ["run", "--model", "world-rn", "--dataset", "world-colour", "--attack", "pgd-2", "--eps", "4/255",
        "--threads", "1", "--eot", "2", "--no-eps-sweep",  # the sweep is tested in test_targets
        "--adaptive-steps", "0"]  # the adaptive budget is tested in test_adaptive


def _run(tmp_path: Path, *args: str):
    result = CliRunner().invoke(app, [*BASE, "--output", str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    return result, results.load_results(tmp_path)


@pytest.mark.parametrize(("defense", "passes", "random", "tau_term"),
                         [("ttc", (5, 2), True, True), ("scc", (14, 4), True, False), ("clipure_cos", (1, 0), False, False)])
def test_each_defense_runs_in_both_tracks_with_its_cost_recorded(defense, passes, random, tau_term, tmp_path):
    # TTC's τ term is off by default (docs/defenses.md#ttc); switched on here, it is used and recorded
    extra = ["--defense-param", "tau_loss_weight=1"] if tau_term else []
    output, rows = _run(tmp_path, "--defense", defense, "--samples", "4", *extra)
    assert set(rows["track"]) == {"oblivious", "adaptive"}
    adaptive = Protocol.from_json(rows.loc[rows["track"] == "adaptive", "protocol"].iloc[0])
    assert adaptive.eot_draws == (2 if random else 1)
    assert adaptive.defense_loss == tau_term
    assert adaptive.start == "oblivious"
    # one clean prediction: TTC = f(x), f(x+δ₀), 2 counterattack steps, the classification;
    # SCC = TTC's warm-up without the classification (4), 4 views, 2 margin steps, 4 final views
    assert set(rows["infer_forward_passes"]) == {passes[0]} and set(rows["infer_backward_passes"]) == {passes[1]}
    assert (rows["infer_time_s"] > 0).all() and (rows["infer_time_s_undefended"] > 0).all()
    assert "inference per image vs undefended" in output.output
    flags = set(";".join(rows["flags"]).split(";"))
    assert "forward-randomness" not in flags  # declared randomness is handled (EOT, vote), not flagged
    assert set(rows["eval_draws"]) == {10 if random else 1} and set(rows["bpda"]) == {"", ",".join(adaptive.bpda)}
    if defense == "clipure_cos":  # the two checks of docs/provenance.md#clipure-no-op, in the rows' flags
        assert {"undefended-agreement=1.00", "vanishing-gradients=1.00"} <= flags


def test_composition_with_a_training_time_defense_measures_tau_on_the_original_encoder(tmp_path):
    plugin = ["--plugin", str(PLUGINS / "toy_training.py"), "--defense", "toy-finetune+ttc", "--samples", "4",
              "--track", "oblivious"]
    _, rows = _run(tmp_path / "original", *plugin)
    record = Protocol.from_json(rows["protocol"].iloc[0])
    assert set(rows["defense"]) == {"toy-finetune+ttc"} and set(record.defense.params) == {"toy-finetune", "ttc"}
    assert record.defense.params["ttc"]["tau_encoder"] == "original"
    assert rows["model_fingerprint"].iloc[0] != record.model.version  # the original fingerprint: weights changed
    assert set(rows["infer_forward_passes"]) == {6}  # τ: two passes of the original encoder
    _, own = _run(tmp_path / "defended", *plugin, "--defense-param", "ttc.tau_encoder=defended")
    assert set(own["infer_forward_passes"]) == {5}


def test_tau_encoder_is_the_context_original(tiny_zero_shot):
    from vlmbench.defenses.ttc import TTC, TTCConfig
    from vlmbench.resolve import resolve_model

    original = resolve_model("world-rn").load(torch.device("cpu"))
    classifier = tiny_zero_shot(torch.eye(4, 3 * 32 * 32))
    classifier.model = type("Adapted", (), {"fingerprint": "changed"})()
    context = DefenseContext(Path("."), torch.device("cpu"), 0, original=original)
    assert TTC().wrap(classifier, context).counter.tau_module is original.module
    assert TTC(TTCConfig(tau_encoder="defended")).wrap(classifier, context).counter.tau_module is None


def test_bpda_adaptive_attack_defeats_a_masked_defense_the_oblivious_and_masked_attacks_do_not(tmp_path):
    """Quantisation masks the gradient (zero) and changes the input: the oblivious attack (crafted
    without it) and the adaptive one through the exact masked gradient both fail; BPDA succeeds."""
    quantise = ["--plugin", str(PLUGINS / "toy_defenses.py"), "--attack", "pgd-10", "--samples", "32",
                "--dataset", "world-colour,world-shape"]
    _, declared = _run(tmp_path / "bpda", *quantise, "--defense", "toy-quantise")
    _, masked = _run(tmp_path / "masked", *quantise, "--defense", "toy-quantise-masked", "--track", "adaptive")
    robust = declared.groupby("track")["robust"].mean() * 100
    masked_robust = masked["robust"].mean() * 100
    assert robust["oblivious"] >= robust["adaptive"] + 10, robust.to_dict()
    assert masked_robust >= robust["adaptive"] + 10
