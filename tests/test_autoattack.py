"""The pyautoattack adapter: equivalence with direct use, class-count handling, the protocol record,
budgets and an end-to-end run through the CLI."""

from __future__ import annotations

import copy
import json
from importlib.metadata import version

import pandas as pd
import pytest
import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack
from typer.testing import CliRunner

from conftest import TinyLinearClassifier
from vlmbench.attack import AttackError, check_perturbation
from vlmbench.attacks.autoattack import AutoAttackAdapter, describe_sub_attack
from vlmbench.cli import app
from vlmbench.protocol import Protocol, ThreatModel
from vlmbench.registry import plugins

AA_NAMES = ["aa", "aa-plus", "aa-rand", "aa-tecoa", "aa-fare", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"]
AA_NORMS = {"linf": "Linf", "l2": "L2"}


def make(name: str, norm: str = "linf", eps: float = 4 / 255, steps: int | None = None, restarts: int = 1) -> AutoAttackAdapter:
    cls = plugins().attacks.get(name)
    return cls(ThreatModel.build(norm, eps, steps or cls.default_steps, 0.0, restarts))


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def runs(monkeypatch) -> list[dict]:
    """What every ``AutoAttack.run_standard_evaluation`` call ran with: its sub-attacks and objects."""
    seen: list[dict] = []
    original = AutoAttack.run_standard_evaluation

    def spy(self: AutoAttack, x: torch.Tensor, y: torch.Tensor, **kwargs):
        # a copy: running FAB-T sets FAB's restarts to 1 in the object itself
        seen.append({"attacks": list(self.attacks_to_run), "aa": copy.deepcopy(self), "batch_size": kwargs["batch_size"]})
        return original(self, x, y, **kwargs)

    monkeypatch.setattr(AutoAttack, "run_standard_evaluation", spy)
    return seen


def test_every_autoattack_name_is_registered():
    assert set(AA_NAMES) <= set(plugins().attacks.names())
    assert all(issubclass(plugins().attacks.get(n), AutoAttackAdapter) for n in AA_NAMES)


@pytest.mark.parametrize(
    ("name", "norm", "eps", "direct_attacks", "direct_restarts"),
    [
        ("aa-fare", "linf", 1 / 255, ["apgd-ce", "apgd-t"], None),  # FARE's call: pyautoattack's custom defaults
        ("aa-fare", "l2", 0.04, ["apgd-ce", "apgd-t"], None),
        ("apgd-ce", "linf", 1 / 255, ["apgd-ce"], 1),
    ],
)
def test_adapter_matches_direct_pyautoattack(name, norm, eps, direct_attacks, direct_restarts):
    """Same model, data, settings and seed: the same robust flags (and images) as calling pyautoattack."""
    model = TinyLinearClassifier(num_classes=10)
    x = images(24)
    y = model(x).argmax(1)
    ours = make(name, norm, eps).perturb(model, x, y, torch.Generator().manual_seed(3))

    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(3)))
    direct = AutoAttack(model, attacks=direct_attacks, version="custom", eps=eps, norm=AA_NORMS[norm], seed=seed)
    if direct_restarts is not None:
        direct.apgd.n_restarts = direct_restarts
    theirs, _ = direct.run_standard_evaluation(x, y, batch_size=len(x))

    robust_ours, robust_theirs = model(ours).argmax(1) == y, model(theirs).argmax(1) == y
    assert 0 < int(robust_theirs.sum()) < len(x)  # the comparison is not vacuous
    assert torch.equal(robust_ours, robust_theirs)
    assert torch.equal(ours, theirs)


def test_steps_set_apgd_iterations_with_their_own_checkpoint_schedule():
    aa = make("aa", steps=7).configure(None, 10, 0, "cpu")
    reference = APGDAttack(None, n_iter=7, eps=4 / 255)
    for apgd in (aa.apgd, aa.apgd_targeted):
        assert (apgd.n_iter, apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr) == (
            reference.n_iter, reference.n_iter_2, reference.n_iter_min, reference.size_decr)
    assert aa.fab.n_iter == 7 and aa.square.n_queries == 350  # 50 queries per step in the suites
    assert make("square", steps=300).configure(None, 10, 0, "cpu").square.n_queries == 300
    assert make("aa").params(10)["attacks"][-1] == {"attack": "square", "n_queries": 5000, "n_restarts": 1}


@pytest.mark.parametrize("name", ["aa-fare", "aa-tecoa", "aa-rand", "apgd-ce"])
def test_two_classes_run_apgd_ce_only_and_the_record_says_why(name, runs):
    model = TinyLinearClassifier(num_classes=2)
    x = images(8)
    make(name, steps=2).perturb(model, x, model(x).argmax(1), torch.Generator().manual_seed(0))
    assert runs[0]["attacks"] == ["apgd-ce"]
    params = make(name, steps=2).params(2)
    assert [a["attack"] for a in params["attacks"]] == ["apgd-ce"]
    assert all("classes" in d["reason"] for d in params["dropped"])
    assert len(params["dropped"]) == (name != "apgd-ce")


def test_two_classes_keep_what_is_defined_in_standard_autoattack(runs):
    """FAB-T (the other class as target) and Square are defined for 2 classes; targeted DLR is not."""
    model = TinyLinearClassifier(num_classes=2)
    x = images(8)
    make("aa", steps=2).perturb(model, x, model(x).argmax(1), torch.Generator().manual_seed(0))
    assert runs[0]["attacks"] == ["apgd-ce", "fab-t", "square"]
    assert runs[0]["aa"].fab.n_target_classes == 1
    assert make("aa").params(2)["dropped"] == [
        {"attack": "apgd-t", "reason": "the targeted DLR loss needs more than 3 classes (it uses the fourth-largest logit)"}]


def test_three_classes_drop_targeted_dlr_only(runs):
    model = TinyLinearClassifier(num_classes=3)
    x = images(8)
    make("aa-plus", steps=2).perturb(model, x, model(x).argmax(1), torch.Generator().manual_seed(0))
    assert runs[0]["attacks"] == ["apgd-ce", "apgd-dlr", "fab", "square", "fab-t"]
    for name in ("aa", "aa-plus", "aa-fare"):
        params = make(name).params(3)
        assert "apgd-t" not in [a["attack"] for a in params["attacks"]]
        assert [d["attack"] for d in params["dropped"]] == ["apgd-t"]
    assert [a["attack"] for a in make("aa-tecoa").params(3)["attacks"]] == ["apgd-ce", "apgd-dlr"]


@pytest.mark.parametrize(("name", "classes"), [("apgd-t", 3), ("apgd-dlr", 2), ("aa", 1)])
def test_an_attack_with_nothing_defined_for_the_class_count_is_an_error(name, classes):
    with pytest.raises(AttackError, match="classes"):
        make(name).params(classes)
    model = TinyLinearClassifier(num_classes=classes)
    with pytest.raises(AttackError, match="classes"):
        make(name, steps=1).perturb(model, images(2), torch.zeros(2, dtype=torch.long), torch.Generator())


@pytest.mark.parametrize("classes", [2, 3, 4, 5, 9, 10, 11, 37])
def test_target_count_is_min_9_c_minus_1(classes):
    for name in ("aa", "aa-plus", "aa-fare", "apgd-t", "fab-t"):
        if name in ("aa-fare", "apgd-t") and classes <= 3:  # APGD-T is their only targeted attack
            continue
        targeted = [a for a in make(name).params(classes)["attacks"] if a["attack"] in ("apgd-t", "fab-t")]
        assert targeted and all(a["n_target_classes"] == min(9, classes - 1) for a in targeted)


def test_class_count_comes_from_the_model_output(runs):
    model = TinyLinearClassifier(num_classes=6)
    x = images(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])  # labels use only 3 of the model's 6 classes
    make("aa", steps=2).perturb(model, x, y, torch.Generator().manual_seed(0))
    aa = runs[0]["aa"]
    assert aa.apgd_targeted.n_target_classes == aa.fab.n_target_classes == 5
    assert runs[0]["batch_size"] == len(x)  # the runner's batch is AutoAttack's batch


@pytest.mark.parametrize("name", AA_NAMES)
def test_params_are_json_and_say_what_runs(name, runs):
    classes = 5
    attack = make(name, steps=2, restarts=2)
    params = attack.params(classes)
    assert json.loads(json.dumps(params)) == params
    assert params["implementation"] == "pyautoattack" and params["implementation_version"] == version("pyautoattack")
    assert params["num_classes"] == classes
    model = TinyLinearClassifier(num_classes=classes)
    x = images(4)
    attack.perturb(model, x, model(x).argmax(1), torch.Generator().manual_seed(0))
    ran = runs[0]["aa"]
    assert [a["attack"] for a in params["attacks"]] == runs[0]["attacks"]
    assert params["attacks"] == [describe_sub_attack(ran, a, classes) for a in runs[0]["attacks"]]
    assert json.loads(json.dumps(attack.params(None)))["num_classes"] is None


def test_restarts_are_honoured_by_single_apgd_attacks_only():
    for name in ("apgd-ce", "apgd-dlr", "apgd-t"):
        assert plugins().attacks.get(name).honours == frozenset({"restarts"})
        assert {a["n_restarts"] for a in make(name, restarts=3).params(10)["attacks"]} == {3}
    for name in ("aa", "aa-plus", "aa-tecoa", "aa-fare", "fab-t", "square"):
        assert plugins().attacks.get(name).honours == frozenset()
    assert plugins().attacks.get("aa-rand").honours == frozenset({"eot"})  # its EOT draws follow --eot
    fare = make("aa-fare", restarts=3).params(10)["attacks"]
    assert [(a["attack"], a["n_restarts"]) for a in fare] == [("apgd-ce", 5), ("apgd-t", 1)]
    assert {a["eot_iter"] for a in make("aa-rand").params(10)["attacks"]} == {20}


def test_global_random_state_is_left_as_it_was():
    model = TinyLinearClassifier()
    x = images(4)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    make("aa", steps=2).perturb(model, x, model(x).argmax(1), torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 16 / 255), ("l2", 0.5)])
def test_standard_autoattack_breaks_an_undefended_model_within_the_ball(norm, eps):
    model = TinyLinearClassifier(num_classes=10)
    x = images(32, seed=5)
    y = model(x).argmax(1)
    threat = ThreatModel.build(norm, eps, 10)
    x_aa = make("aa", norm, eps, steps=10).perturb(model, x, y, torch.Generator().manual_seed(0))
    x_pgd = plugins().attacks.get("pgd")(threat).perturb(model, x, y, torch.Generator().manual_seed(0))
    check_perturbation(x, x_aa, threat, "aa")
    robust_aa = float((model(x_aa).argmax(1) == y).float().mean())
    robust_pgd = float((model(x_pgd).argmax(1) == y).float().mean())
    assert robust_aa <= robust_pgd and robust_aa <= 0.1


def test_standard_autoattack_reaches_the_exact_linf_robust_accuracy_of_a_linear_model():
    """For logits ``Wx`` a sample is robust iff no class j beats y at ``clip(x − ε·sign(w_y − w_j), 0, 1)``,
    the exact minimiser of ``(w_y − w_j)·x'`` over the ε-cube within [0,1]."""
    model = TinyLinearClassifier(num_classes=10)
    x = images(32, seed=5)
    y = model(x).argmax(1)
    eps = 4 / 255
    gaps = model.weight[y][:, None, :] - model.weight[None, :, :]  # (N, C, D): w_y − w_j
    worst = (x.flatten(1)[:, None, :] - eps * gaps.sign()).clamp(0, 1)
    margins = (gaps * worst).sum(-1)  # (N, C), 0 at j = y
    margins[torch.arange(len(x)), y] = float("inf")
    exact = float((margins.amin(1) > 0).float().mean())
    x_aa = make("aa", "linf", eps, steps=10).perturb(model, x, y, torch.Generator().manual_seed(0))
    assert 0 < exact < 1
    assert float((model(x_aa).argmax(1) == y).float().mean()) == exact


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_run_records_the_sub_attacks_that_ran(tmp_path):
    output = tmp_path / "out"
    result = invoke("run", "--model", "world-vit", "--dataset", "world-size,world-texture",
                    "--attack", "apgd-ce-5,aa-fare-5", "--samples", "8", "--threads", "1", "--output", str(output))
    assert result.exit_code == 0, result.output
    recorded = {}
    for path in sorted(output.glob("*.parquet")):
        rows = pd.read_parquet(path)
        assert len(rows) == 8
        protocol = Protocol.from_json(rows["protocol"].iloc[0])
        params = protocol.attack.params
        assert params["implementation_version"] == version("pyautoattack")
        assert protocol.threat.step_size == 0 and protocol.threat.steps == 5
        assert (rows["linf"] <= protocol.threat.eps + 1e-6).all()
        recorded[(protocol.data.dataset, protocol.attack.name)] = (
            [(a["attack"], a.get("n_target_classes")) for a in params["attacks"]],
            [d["attack"] for d in params["dropped"]],
        )
    assert recorded == {
        ("world-size", "apgd-ce-5"): ([("apgd-ce", None)], []),
        ("world-size", "aa-fare-5"): ([("apgd-ce", None)], ["apgd-t"]),
        ("world-texture", "apgd-ce-5"): ([("apgd-ce", None)], []),
        ("world-texture", "aa-fare-5"): ([("apgd-ce", None), ("apgd-t", 3)], []),
    }


def test_cli_refuses_a_step_size_for_autoattack(tmp_path):
    output = tmp_path / "out"
    result = invoke("run", "--model", "world-vit", "--dataset", "world-size", "--attack", "aa-fare-5",
                    "--step-size", "1/255", "--samples", "8", "--threads", "1", "--output", str(output))
    assert result.exit_code == 2, result.output
    assert "step_size" in result.output and "Traceback" not in result.output
    assert result.output.strip().count("\n") == 0
    assert not output.exists()


def test_a_superclass_cell_records_the_suite_that_runs_on_its_superclasses(tmp_path):
    """AutoAttack drops sub-attacks by class count at run time (the crafted-on logits have S superclass
    columns); the protocol must record that suite, not the one for the dataset's leaf classes."""
    from typer.testing import CliRunner

    from vlmbench.cli import app
    from vlmbench.protocol import Protocol
    from vlmbench.results import load_results

    args = ["run", "--model", "world-rn", "--dataset", "world-combo", "--samples", "2", "--attack", "aa-1",
            "--superclasses", "world:colour:2", "--no-eps-sweep", "--threads", "1", "--output", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    params = Protocol.from_json(load_results(tmp_path)["protocol"].iloc[0]).attack.params
    assert params["num_classes"] == 2  # world:colour:2 has 2 superclasses, world-combo 36 classes
    ran = [a["attack"] for a in params["attacks"]]
    assert "apgd-t" not in ran and {d["attack"] for d in params["dropped"]} >= {"apgd-t"}, params
