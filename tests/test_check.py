"""``vlmbench check``: the conformance and soundness checks of a defense or an attack.

The rules are tested on hand-made rows; the checks themselves on defenses broken on purpose (each must
fail with the right finding), on their correct versions (which must pass), and on every built-in
defense (the contract checks, scaled down). The full check of every built-in is
``benchmarks/conformance.py`` (its table is in the README).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from vlmbench.check import (
    ATTACK_CHECKS,
    CHECKS,
    DEFENSE_CHECKS,
    CheckError,
    CheckSettings,
    Report,
    _sweep_finding,
    check_attack,
    check_defense,
    order_finding,
    tolerance,
)
from vlmbench.cli import app
from vlmbench.registry import plugins

PLUGINS = Path(__file__).parent / "plugins"
DOCS = Path(__file__).parents[1] / "docs" / "checks.md"
SMALL = CheckSettings(samples=8, steps=5, square_steps=2, binarization_samples=3, inner_points=6, eot_draws=2,
                      eval_draws=2, smoke=True)
CONTRACT = tuple(c for c in DEFENSE_CHECKS if CHECKS[c].group == "contract" and c != "training-cache")


def rows(robust: list[bool]) -> pd.DataFrame:
    return pd.DataFrame({"sample_index": range(len(robust)), "robust": robust})


def by_id(report: Report) -> dict[str, object]:
    return {f.id: f for f in report.findings}


# ------------------------------------------------------------------------------------------ rules

def test_order_rule_counts_images_the_weaker_attack_fooled_and_the_stronger_did_not():
    strong = rows([True, True, False, False] * 5)
    assert tolerance(20) == 1 and tolerance(4) == 1 and tolerance(100) == 5
    same = order_finding("whitebox-vs-transfer", "white-box", "transfer", strong, rows([True, True, False, False] * 5), "fix")
    assert same.status == "pass" and same.details["missed"] == [] and same.fix is None
    one = rows([True, True, False, False] * 5)
    one.loc[0, "robust"] = False  # transfer fooled image 0, which the white-box attack left robust
    warned = order_finding("whitebox-vs-transfer", "white-box", "transfer", strong, one, "fix")
    assert warned.status == "warn" and warned.details["missed"] == [0] and warned.fix == "fix"
    failed = order_finding("whitebox-vs-transfer", "white-box", "transfer", strong, rows([False] * 20), "fix")
    assert failed.status == "fail" and failed.details["missed"] == [0, 1, 4, 5, 8, 9, 12, 13, 16, 17]
    # the weaker attack leaving more robust images is never a finding
    assert order_finding("x", "a", "b", rows([False] * 4), rows([True] * 4), "fix").status == "pass"


def test_sweep_rule_requires_about_zero_at_the_largest_eps_and_no_rise():
    labels = ["1/255", "4/255", "16/255", "64/255"]
    sweep = {e: rows(r) for e, r in zip(labels, [[True] * 20, [True] * 10 + [False] * 10, [False] * 20, [False] * 20])}
    assert _sweep_finding(sweep, labels).status == "pass"
    stuck = {**sweep, "64/255": rows([True] * 3 + [False] * 17)}  # 3 of 20 survive: more than 5% (and 1)
    finding = _sweep_finding(stuck, labels)
    assert finding.status == "fail" and finding.details["robust_at_largest"] == [0, 1, 2] and "masked" in finding.fix
    rising = {**sweep, "16/255": rows([True] * 15 + [False] * 5)}
    assert _sweep_finding(rising, labels).status == "warn"


@pytest.mark.parametrize("changes, message", [
    ({"samples": 0}, "--samples must be at least 1"),
    ({"binarization_samples": 9, "samples": 8}, "exceeds --samples"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(CheckError, match=message):
        CheckSettings(**changes)


@pytest.mark.parametrize("eps", ["1/8", "abc", "0"])
def test_an_eps_the_sweep_cannot_use_is_refused(eps):
    with pytest.raises(CheckError, match="eps"):
        CheckSettings(eps=eps).eps_value()


def test_every_check_is_documented_with_its_source_and_fix():
    text = DOCS.read_text()
    for check, info in CHECKS.items():
        section = re.search(rf"^## `{re.escape(check)}`\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        assert section, f"docs/checks.md has no section for {check}"
        body = section.group(1)
        assert "**Source**" in body and "**Fix**" in body, check
    assert set(DEFENSE_CHECKS) | set(ATTACK_CHECKS) == set(CHECKS)


# --------------------------------------------------------------------------------- broken on purpose

@pytest.mark.parametrize("source, name, only, expected, fix", [
    ("broken_defenses.py", "undeclared-noise", ("randomness",), {"randomness": "fail"}, "declare stochastic = True"),
    ("broken_defenses.py", "saturated-logits", ("gradients",), {"gradients": "fail"}, "bpda"),
    ("broken_defenses.py", "nan-logits", ("output-contract",), {"output-contract": "fail"}, "finite logits"),
    ("broken_defenses.py", "extra-columns", ("output-contract",), {"output-contract": "fail"}, "finite logits (N,C)"),
    ("broken_defenses.py", "flat-logits", ("output-contract",), {"output-contract": "fail"}, "finite logits (N,C)"),
    ("toy_defenses.py", "toy-quantise-masked", ("bpda-declared", "gradients", "binarization"),
     {"bpda-declared": "pass", "gradients": "fail", "binarization": "fail"}, "bpda"),
    ("toy_training.py", "toy-finetune", ("training-cache",), {"training-cache": "fail"}, "cache the trained weights"),
    ("toy_training.py", "toy-cached-by-name", ("training-cache",), {"training-cache": "fail"}, "cache key must cover"),
])
def test_a_broken_defense_fails_with_the_right_finding(source, name, only, expected, fix):
    plugins().load_source(str(PLUGINS / source))
    report = check_defense(name, CheckSettings(**{**SMALL.__dict__, "only": only}))
    found = by_id(report)
    assert {check: found[check].status for check in only} == expected
    failed = [found[check] for check, status in expected.items() if status == "fail"]
    assert report.status == "fail" and all(fix.lower() in f.fix.lower() for f in failed), [f.fix for f in failed]


def test_the_correct_versions_pass():
    """The same rounding written with bpda and declared; the same noise declared stochastic."""
    plugins().load_source(str(PLUGINS / "toy_defenses.py"))
    quantise = by_id(check_defense("toy-quantise", CheckSettings(**{**SMALL.__dict__, "only": (
        "bpda-declared", "gradients", "bpda-needed", "binarization")})))
    assert {k: f.status for k, f in quantise.items()} == dict.fromkeys(("bpda-declared", "gradients", "bpda-needed",
                                                                        "binarization"), "pass")
    noise = by_id(check_defense("toy-noise", CheckSettings(**{**SMALL.__dict__, "only": ("randomness",)})))
    assert noise["randomness"].status == "pass" and noise["randomness"].details["declared"] is True


@pytest.mark.parametrize("name", plugins().defenses.names())
def test_every_builtin_defense_keeps_the_contract(name):
    """Contract checks of each built-in (training-time ones on their smoke config); soundness is
    benchmarks/conformance.py's, at full scale."""
    report = check_defense(name, CheckSettings(**{**SMALL.__dict__, "samples": 4, "only": CONTRACT}))
    statuses = {f.id: f.status for f in report.findings}
    assert list(statuses) == list(CONTRACT)
    assert "fail" not in statuses.values(), [f.summary for f in report.findings if f.status == "fail"]
    cls = plugins().defenses.get(name)
    assert statuses["bpda-needed"] in (("pass", "warn") if cls.non_differentiable else ("skip",))
    assert statuses["randomness"] == "pass" and statuses["inference-cost"] == "pass"


def test_a_training_defense_caches_reuses_and_rekeys():
    report = check_defense("tecoa", CheckSettings(**{**SMALL.__dict__, "samples": 4, "only": ("training-cache",)}))
    (finding,) = report.findings
    assert finding.status == "pass" and "re-trained when config." in finding.summary


# ---------------------------------------------------------------------------------- whole reports

def test_the_full_defense_check_through_the_command_line(tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["check", "defense", "none", "--samples", "8", "--steps", "5", "--square-steps", "2",
                                      "--binarization-samples", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert [c["id"] for c in record["checks"]] == list(DEFENSE_CHECKS)
    assert record["status"] in ("pass", "warn") and record["kind"] == "defense" and record["version"] == "1"
    assert all(c["docs"] == f"docs/checks.md#{c['id']}" and c["source"] for c in record["checks"])
    by = {c["id"]: c for c in record["checks"]}
    assert by["training-cache"]["status"] == "skip" and by["adaptive-vs-oblivious"]["status"] == "skip"
    assert by["whitebox-vs-transfer"]["status"] == "pass"  # the undefended model: white-box is transfer
    assert by["eps-sweep"]["details"]["robust"][-1] <= 12.5  # 64/255 leaves at most one image of 8
    assert "defense none (version 1" in result.output and "report:" in result.output


def test_a_failing_check_exits_1_and_unknown_names_are_one_line_errors(tmp_path):
    source = str(PLUGINS / "broken_defenses.py")
    failed = CliRunner().invoke(app, ["check", "defense", "undeclared-noise", "--plugin", source, "--only", "randomness",
                                      "--samples", "4", "--binarization-samples", "2", "--json", str(tmp_path / "r.json")])
    assert failed.exit_code == 1, failed.output
    assert "FAIL  randomness" in failed.output and "declare stochastic = True" in failed.output
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "fail"
    for args, message in ((["defense", "tecao"], "tecoa"), (["defense", "none", "--only", "nope"], "no defense check 'nope'"),
                          (["attack", "none"], "nothing to check"), (["defense", "none", "--eps", "1/2"], "--eps")):
        result = CliRunner().invoke(app, ["check", *args, "--json", str(tmp_path / "x.json")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "x.json").exists()


def test_the_attack_check_passes_pgd_and_fails_an_attack_that_misbehaves():
    report = check_attack("pgd", CheckSettings(**{**SMALL.__dict__, "only": ("attack-contract", "attack-randomness",
                                                                             "eps-sweep", "whitebox-vs-noise")}))
    assert {f.id: f.status for f in report.findings} == {"attack-contract": "pass", "attack-randomness": "pass",
                                                        "eps-sweep": "pass", "whitebox-vs-noise": "pass"}
    plugins().load_source(str(PLUGINS / "toy_attacks.py"))
    shy = by_id(check_attack("toy-shy", CheckSettings(**{**SMALL.__dict__, "only": ("eps-sweep",)})))
    assert shy["eps-sweep"].status == "fail"  # returns the clean images above 1/255: nothing falls at 64/255
    rng = by_id(check_attack("toy-global-rng", CheckSettings(**{**SMALL.__dict__, "only": ("attack-randomness",)})))
    assert rng["attack-randomness"].status == "fail" and "generator argument" in rng["attack-randomness"].fix
    over = by_id(check_attack("toy-overshoot", CheckSettings(**{**SMALL.__dict__, "only": ("attack-contract",)})))
    assert over["attack-contract"].status == "fail" and "left the linf ball" in over["attack-contract"].summary


def test_the_full_check_of_a_random_test_time_defense_with_bpda(tmp_path):
    """TTC, scaled down: every soundness cell runs through the adaptive track (BPDA on its counterattack,
    EOT over its randomness), Square and noise query the defended pipeline; nothing fails."""
    settings = CheckSettings(**{**SMALL.__dict__, "samples": 4, "steps": 5, "square_steps": 1,
                                "binarization_samples": 2, "inner_points": 4})
    report = check_defense("ttc", settings, workdir=tmp_path / "cells")
    statuses = {f.id: f.status for f in report.findings}
    assert list(statuses) == list(DEFENSE_CHECKS) and "fail" not in statuses.values(), report.findings
    assert statuses["adaptive-vs-oblivious"] != "skip" and statuses["training-cache"] == "skip"
    from vlmbench.results import load_results

    rows = load_results(tmp_path / "cells")  # the kept cells: ordinary result files
    adaptive = rows[rows["track"] == "adaptive"]
    assert set(adaptive["eot_draws"]) == {2} | ({1} if (adaptive["attack"].str.startswith(("noise", "square"))).any() else set())
