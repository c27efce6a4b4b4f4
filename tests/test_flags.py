"""Sanity flags: measured per cell at run time, and derived across cells from stored rows."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.flags import FLAGS, result_flags

ROOT = Path(__file__).resolve().parent.parent
TOY = Path(__file__).parent / "plugins" / "toy_defenses.py"


def run(tmp_path: Path, *args: str):
    return CliRunner().invoke(app, ["run", "--plugin", str(TOY), "--model", "world-rn", "--dataset", "world-colour",
                                    "--samples", "8", "--threads", "1", "--adaptive-steps", "0", "--output", str(tmp_path),
                                    *args])


def test_random_and_gradient_masking_defenses_are_flagged_per_cell(tmp_path):
    noisy = run(tmp_path / "noise", "--plugin", str(TOY.parent / "broken_defenses.py"), "--defense", "undeclared-noise",
                "--attack", "pgd-2")
    assert noisy.exit_code == 0, noisy.output
    assert "forward-randomness" in noisy.output and "docs/flags.md#forward-randomness" in noisy.output
    assert set(results.load_results(tmp_path / "noise")["flags"]) == {"forward-randomness"}
    masked = run(tmp_path / "masked", "--defense", "toy-quantise-masked", "--attack", "pgd-2", "--track", "adaptive")
    assert masked.exit_code == 0, masked.output
    assert set(results.load_results(tmp_path / "masked")["flags"]) == {"zero-gradients=1.00"}
    honest = run(tmp_path / "bpda", "--defense", "toy-quantise", "--attack", "pgd-2", "--track", "adaptive")
    assert set(results.load_results(tmp_path / "bpda")["flags"]) == {""}
    assert "sanity flags: none" in honest.output


def test_the_randomness_check_compares_an_earlier_prediction_with_a_new_one():
    """``predicted`` (the contract check's logits) stands in for the first of the two predictions."""
    import torch

    from vlmbench.flags import cell_flags

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    x, y = torch.rand(5, 3, 2, 2), torch.tensor([0, 1, 2, 3, 0])
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    with torch.no_grad():
        predicted = model(x)
    calls.clear()
    assert cell_flags(model, model, x, y, predicted=predicted) == []
    assert calls == [5, 5]  # one new prediction, then the gradient check's forward
    assert cell_flags(model, model, x, y, predicted=predicted + torch.randn_like(predicted)) == ["forward-randomness"]


def _cell(attack="pgd-10", track="oblivious", eps=1, clean=(1, 1, 1, 1), adv=(0, 0, 1, 1), flags=""):
    return pd.DataFrame({
        "model": "m", "defense": "d", "attack": attack, "track": track, "norm": "linf", "eps": eps / 255,
        "eps_label": f"{eps}/255", "dataset": "ds", "flags": flags, "clean_correct": list(clean),
        "adv_correct": list(adv), "robust": [bool(c and a) for c, a in zip(clean, adv)],
    })


def test_cross_cell_flags():
    assert result_flags(_cell()).empty
    above = result_flags(_cell(clean=(0, 0, 1, 1), adv=(1, 1, 1, 0)))
    assert above["flag"].tolist() == ["robust-above-clean"]
    square = result_flags(pd.concat([_cell("pgd-10", adv=(0, 1, 1, 1)), _cell("square", adv=(0, 0, 1, 1))]))
    assert square["flag"].tolist() == ["square-beats-whitebox"]
    sweep = result_flags(pd.concat([_cell(eps=1, adv=(0, 0, 0, 1)), _cell(eps=4, adv=(0, 0, 1, 1))]))
    assert sweep["flag"].tolist() == ["eps-not-monotone"] and "ε=4/255" in sweep["detail"].iloc[0]
    tracks = result_flags(pd.concat([_cell(track="oblivious", adv=(0, 0, 0, 1)), _cell(track="adaptive", adv=(0, 0, 1, 1))]))
    assert tracks["flag"].tolist() == ["adaptive-weaker"]
    stored = result_flags(_cell(flags="forward-randomness;zero-gradients=0.25"))
    assert stored["flag"].tolist() == ["forward-randomness", "zero-gradients"]
    assert stored["detail"].tolist() == ["", "fraction 0.25"]


def test_every_flag_is_documented():
    text = (ROOT / "docs" / "flags.md").read_text()
    documented = re.findall(r'^## <a id="([a-z-]+)"></a>', text, flags=re.M)
    assert documented == list(FLAGS)
