"""Contract tests over every registered attack, plus PGD/CW specifics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TinyLinearClassifier
from vlmbench.attack import AttackError, check_perturbation, parse_attack_name
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins

ATTACKS = plugins().attacks.names()


def _attack(name: str, threat: ThreatModel):
    cls = plugins().attacks.get(name)
    return cls(threat)


def _threat(norm: str, eps: float, steps: int, restarts: int = 1) -> ThreatModel:
    steps = steps if steps else 1
    return ThreatModel.build(norm, eps, steps, restarts=restarts)


@pytest.mark.parametrize("name", ATTACKS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(min_value=1e-3, max_value=0.5),
    steps=st.integers(min_value=1, max_value=4),
    restarts=st.integers(min_value=1, max_value=2),
    seed=st.integers(min_value=0, max_value=2**16),
    saturate=st.booleans(),
)
def test_every_attack_stays_in_the_ball_and_in_unit_box(name, norm, eps, steps, restarts, seed, saturate):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 3, 8, 8, generator=generator)
    if saturate:  # pixels at the box edges are where clipping bugs hide
        x = (x > 0.5).float()
    y = torch.randint(0, 5, (6,), generator=generator)
    threat = _threat(norm, eps, steps, restarts)
    x_adv = _attack(name, threat).perturb(TinyLinearClassifier(), x, y, torch.Generator().manual_seed(seed))
    check_perturbation(x, x_adv, threat, name)  # raises on any violation
    delta = (x_adv - x).flatten(1)
    bound = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert bool((bound <= eps * (1 + 1e-5) + 1e-6).all())
    assert 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_attack_is_reproducible_by_seed(name, norm):
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    threat = _threat(norm, 0.05, 3)
    first = _attack(name, threat).perturb(TinyLinearClassifier(), x, y, torch.Generator().manual_seed(7))
    second = _attack(name, threat).perturb(TinyLinearClassifier(), x, y, torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", ATTACKS)
def test_no_attack_raises_accuracy_above_clean(name):
    model = TinyLinearClassifier()
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)  # every sample correct when clean
    x_adv = _attack(name, _threat("linf", 8 / 255, 5)).perturb(model, x, y, torch.Generator().manual_seed(0))
    assert (model(x_adv).argmax(1) == y).sum() <= (model(x).argmax(1) == y).sum()


@pytest.mark.parametrize(("norm", "eps", "steps"), [("linf", 4 / 255, 10), ("l2", 0.25, 20)])
def test_pgd_reaches_the_analytic_optimum_of_a_linear_binary_classifier(norm, eps, steps):
    """For logits (w·x, 0) the worst perturbation is −ε·sign(w) (ℓ∞) or −ε·w/‖w‖₂ (ℓ2): the score drops
    by exactly ε‖w‖₁ or ε‖w‖₂ (the dual norm)."""
    torch.manual_seed(0)
    w = torch.randn(3 * 8 * 8)

    def model(x: torch.Tensor) -> torch.Tensor:
        score = x.flatten(1) @ w
        return torch.stack([score, torch.zeros_like(score)], dim=1)

    x = torch.full((1, 3, 8, 8), 0.5)  # far from the box edges, so the ball is the only constraint
    threat = ThreatModel.build(norm, eps, steps=steps)
    x_adv = plugins().attacks.get("pgd")(threat).perturb(model, x, torch.tensor([0]), torch.Generator().manual_seed(0))
    drop = float((x.flatten(1) @ w) - (x_adv.flatten(1) @ w))
    dual = w.abs().sum() if norm == "linf" else w.norm()
    assert math.isclose(drop, eps * float(dual), rel_tol=1e-3)


def test_cw_maximises_the_kappa_margin():
    from vlmbench.attacks.pgd import margin_loss

    logits = torch.tensor([[5.0, 1.0, 3.0], [0.0, 2.0, 1.0]])
    loss = margin_loss(logits, torch.tensor([0, 0]), kappa=50.0)
    assert torch.allclose(loss, torch.tensor([-(5 - 3 + 50.0), -(0 - 2 + 50.0)]))
    assert float(margin_loss(logits, torch.tensor([0, 0]), kappa=0.0)[1]) == 0.0  # already misclassified by ≥ κ


def test_pgd_breaks_a_tiny_model_and_restarts_keep_the_first_success():
    model = TinyLinearClassifier()
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    pgd = plugins().attacks.get("pgd")
    one = pgd(ThreatModel.build("linf", 2 / 255, 5)).perturb(model, x, y, torch.Generator().manual_seed(0))
    three = pgd(ThreatModel.build("linf", 2 / 255, 5, restarts=3)).perturb(model, x, y, torch.Generator().manual_seed(0))
    fooled_one = (model(one).argmax(1) != y).sum()
    fooled_three = (model(three).argmax(1) != y).sum()
    assert fooled_one > 0 and fooled_three >= fooled_one


@pytest.mark.parametrize("targeted", [False, True])
def test_early_stop_returns_the_first_fooling_iterate_of_the_full_run_and_spends_no_step_after_it(targeted):
    from vlmbench.attacks.pgd import ascent_direction, cross_entropy_loss, project, random_start, targeted_cross_entropy_loss

    model = TinyLinearClassifier()
    x = torch.rand(48, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    clean = model(x).argmax(1)
    y = (clean + 1) % 5 if targeted else clean
    threat = ThreatModel.build("linf", 3 / 255, 6)
    loss_fn = targeted_cross_entropy_loss if targeted else cross_entropy_loss
    # the reference: every sample takes every step; note each iterate a forward pass sees
    delta = random_start(x, threat, torch.Generator().manual_seed(0))
    iterates = []
    for _ in range(threat.steps):
        delta.requires_grad_(True)
        iterates.append((x + delta).detach())
        (grad,) = torch.autograd.grad(loss_fn(model(x + delta), y).sum(), delta)
        delta = project(delta.detach() + threat.step_size * ascent_direction(grad, threat), threat)
        delta = (x + delta).clamp(0, 1) - x
    last = (x + delta).detach()
    fooled = torch.stack([(model(it).argmax(1) == y) if targeted else (model(it).argmax(1) != y) for it in iterates])
    first = torch.where(fooled.any(0), fooled.int().argmax(0), torch.full_like(y, threat.steps))
    expected = torch.stack([iterates[t][i] if t < threat.steps else last[i] for i, t in enumerate(first.tolist())])
    assert 0 < int(fooled.any(0).sum()) < len(x)  # some samples stop early, others run every step

    calls = []

    def counted(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return model(images)

    pgd = plugins().attacks.get("pgd")(threat, early_stop=True)
    target = {"target": y} if targeted else {}
    got = pgd.perturb(counted, x, clean, torch.Generator().manual_seed(0), **target)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert sum(calls) == int((first + 1).clamp(max=threat.steps).sum())  # a sample's steps end where it was fooled
    assert pgd.params()["early_stop"] is True
    full = plugins().attacks.get("pgd")(threat).perturb(model, x, clean, torch.Generator().manual_seed(0), **target)
    torch.testing.assert_close(full, last, rtol=0, atol=1e-6)  # without early stop: the last iterate, as before


def test_early_stop_is_refused_with_eot_and_by_attacks_that_do_not_honour_it():
    threat = ThreatModel.build("linf", 4 / 255, 2)
    with pytest.raises(AttackError, match="stop early"):
        plugins().attacks.get("pgd")(threat, eot_draws=4, early_stop=True)
    with pytest.raises(AttackError, match="stop early"):
        plugins().attacks.get("noise")(threat, early_stop=True)


def test_pgd_refuses_a_model_without_input_gradient():
    class Detached(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return TinyLinearClassifier()(x.detach())

    pgd = plugins().attacks.get("pgd")(ThreatModel.build("linf", 4 / 255, 2))
    with pytest.raises((AttackError, RuntimeError)):
        pgd.perturb(Detached(), torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), torch.Generator())


def test_pgd_refuses_non_finite_gradients():
    def model(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.flatten(1)[:, :3] - 2.0)  # NaN logits and gradients

    pgd = plugins().attacks.get("pgd")(ThreatModel.build("linf", 4 / 255, 2))
    with pytest.raises(AttackError, match="no finite input gradient"):
        pgd.perturb(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]), torch.Generator())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda x: x + 5 / 255, "left the linf ball"),
        (lambda x: x * 0 - 0.01, r"left \[0,1\]"),
        (lambda x: x.double(), "expected"),
        (lambda x: x * float("nan"), "non-finite"),
    ],
)
def test_budget_check_catches_violations(mutate, message):
    x = torch.full((2, 3, 4, 4), 0.5)
    with pytest.raises(AttackError, match=message):
        check_perturbation(x, mutate(x), ThreatModel.build("linf", 4 / 255, 1), "test")


def test_budget_check_l2():
    x = torch.full((1, 3, 4, 4), 0.5)
    delta = torch.zeros_like(x)
    delta[0, 0, 0, 0] = 0.3
    check_perturbation(x, x + delta, ThreatModel.build("l2", 0.3, 1), "ok")
    with pytest.raises(AttackError, match="left the l2 ball"):
        check_perturbation(x, x + delta * 1.01, ThreatModel.build("l2", 0.3, 1), "bad")


def test_attack_names_parse_steps_suffix():
    known = ["pgd", "cw", "apgd-ce", "none"]
    assert parse_attack_name("pgd-10", known) == ("pgd", 10)
    assert parse_attack_name("cw-100", known) == ("cw", 100)
    assert parse_attack_name("apgd-ce", known) == ("apgd-ce", None)
    assert parse_attack_name("apgd-ce-50", known) == ("apgd-ce", 50)
    assert parse_attack_name("pgdx-10", known) == ("pgdx", 10)
    assert parse_attack_name("pgdx", known) == ("pgdx", None)
