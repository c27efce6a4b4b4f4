"""The adaptive track: EOT through randomness, BPDA through declared non-differentiable steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.adaptive import bpda
from vlmbench.cli import app
from vlmbench.protocol import Protocol

TOY = Path(__file__).parent / "plugins" / "toy_defenses.py"


def test_bpda_forward_is_exact_and_backward_is_the_surrogate():
    x = torch.tensor([0.1, 0.49, 0.51, 0.9], requires_grad=True)
    step = bpda(torch.round, lambda v: 2 * v, name="round")
    out = step(x)
    assert torch.equal(out.detach(), torch.round(x.detach()))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.full_like(x, 2.0))


def test_eot_averages_gradients_over_draws():
    """With EOT the PGD step follows the sign of the summed gradient of n noisy copies."""
    from vlmbench.attacks.pgd import pgd, cross_entropy_loss
    from vlmbench.protocol import ThreatModel

    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return torch.stack([x.flatten(1).sum(1), -x.flatten(1).sum(1)], dim=1)

    x = torch.full((3, 3, 2, 2), 0.5)
    pgd(model, x, torch.zeros(3, dtype=torch.long), ThreatModel.build("linf", 4 / 255, 2), cross_entropy_loss,
        torch.Generator().manual_seed(0), eot_draws=7)
    assert calls == [21, 21]  # each step evaluates the batch 7 times, in one forward pass


@pytest.mark.parametrize("defense", ["toy-noise", "toy-quantise"])
def test_adaptive_attack_beats_oblivious_on_toy_defenses(defense, tmp_path):
    result = CliRunner().invoke(app, [
        "run", "--plugin", str(TOY), "--defense", defense, "--model", "world-rn", "--attack", "pgd-10",
        "--eps", "4/255", "--dataset", "world-colour,world-shape", "--samples", "48", "--eot", "5",
        "--adaptive-steps", "0", "--threads", "1", "--output", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path)
    assert set(rows["track"]) == {"oblivious", "adaptive"}  # both by default for a test-time defense
    robust = rows.groupby("track")["robust"].mean() * 100
    assert robust["adaptive"] <= robust["oblivious"] - 5, robust.to_dict()
    adaptive = Protocol.from_json(rows.loc[rows["track"] == "adaptive", "protocol"].iloc[0])
    assert adaptive.track == "adaptive"
    assert adaptive.eot_draws == (5 if defense == "toy-noise" else 1)  # EOT only where the defense is random
    assert adaptive.start == "oblivious"  # the adaptive attack starts from the oblivious one's result
    backward = rows.loc[rows["track"] == "adaptive", "backward_passes"]
    if adaptive.eot_draws > 1:  # a random defense: 10 oblivious steps, then 10 EOT-averaged ones
        assert (backward == 10 + 10 * adaptive.eot_draws).all() and not adaptive.attack.params["early_stop"]
    else:  # deterministic: the adaptive attack stops on an image once it fools the defended pipeline
        assert ((backward > 10) & (backward <= 20)).all() and adaptive.attack.params["early_stop"]


def test_the_adaptive_track_runs_at_least_its_minimum_budget_and_says_so(tmp_path):
    """PGD-2 asked for: the oblivious cell runs 2 steps, the adaptive one the minimum (here 6), recorded
    in the protocol and the rows, and named in the summary; attacks that cannot start from the
    oblivious result (none) are left as they are."""
    result = CliRunner().invoke(app, [
        "run", "--plugin", str(TOY), "--defense", "toy-quantise", "--model", "world-rn", "--attack", "pgd-2,none",
        "--eps", "4/255", "--dataset", "world-colour", "--samples", "4", "--adaptive-steps", "6", "--no-eps-sweep",
        "--threads", "1", "--output", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    rows = results.load_results(tmp_path)
    steps = rows[rows["attack"] == "pgd-2"].groupby("track")["steps"].unique().map(list).to_dict()
    assert steps == {"oblivious": [2], "adaptive": [6]}
    adaptive = Protocol.from_json(rows.loc[(rows["track"] == "adaptive") & (rows["attack"] == "pgd-2"), "protocol"].iloc[0])
    from vlmbench.protocol import default_step_size

    assert adaptive.threat.steps == 6 and adaptive.threat.step_size == default_step_size("linf", 4 / 255, 6)
    backward = rows.loc[(rows["track"] == "adaptive") & (rows["attack"] == "pgd-2"), "backward_passes"]
    assert ((backward > 6) & (backward <= 12)).all()  # 6 oblivious steps, then up to 6 (early stop) adaptive ones
    assert "pgd-2 (6 steps)" in results.summarize(rows)["attack"].tolist()
    assert set(rows.loc[rows["attack"] == "none", "steps"]) == {0}
    from vlmbench.plan import DEFAULT_ADAPTIVE_STEPS, RunRequest, plan

    request = RunRequest(defenses=("ttc",), attacks=("pgd-10",), datasets=("world-size",), output=tmp_path / "p")
    (attack,) = plan(request).attacks
    from vlmbench.plan import adaptive_budget

    assert adaptive_budget(attack, request).threat.steps == DEFAULT_ADAPTIVE_STEPS > 10


def test_defaults_and_bad_track_options(tmp_path):
    runner = CliRunner()
    base = ["run", "--plugin", str(TOY), "--model", "world-vit", "--dataset", "world-size", "--samples", "4",
            "--attack", "pgd-2", "--threads", "1", "--adaptive-steps", "0"]
    done = runner.invoke(app, [*base, "--defense", "toy-noise", "--track", "adaptive", "--output", str(tmp_path / "a")])
    assert done.exit_code == 0, done.output
    rows = results.load_results(tmp_path / "a")
    assert set(rows["track"]) == {"adaptive"} and set(rows["eot_draws"]) == {10}
    plain = runner.invoke(app, [*base, "--defense", "none", "--track", "adaptive", "--output", str(tmp_path / "b")])
    assert set(results.load_results(tmp_path / "b")["track"]) == {"oblivious"}  # nothing to adapt to
    bad = runner.invoke(app, [*base, "--defense", "toy-noise", "--track", "sideways", "--output", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "bad track 'sideways'" in bad.output
