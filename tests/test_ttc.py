"""TTC against hand-checked tiny cases: weights, τ, the counterattack steps, both gated branches."""

from __future__ import annotations

import math

import pytest
import torch

from vlmbench.defense import DefenseContext
from vlmbench.defenses.ttc import TTC, TTCConfig, counterattack, gated_perturbation, random_draw, sensitivity, step_weights

EPS, ALPHA = 4 / 255, 1 / 255


def test_exponential_step_weights_match_the_paper():
    total = 1 + math.e**2 + math.e**4
    assert torch.allclose(step_weights(2, 2.0), torch.tensor([1 / total, math.e**2 / total, math.e**4 / total]))
    assert [round(float(w), 3) for w in step_weights(2, 2.0)] == [0.016, 0.117, 0.867]  # TTC.sh's β = 2


def test_sensitivity_is_the_relative_embedding_change():
    x = torch.tensor([[3.0, 4.0]])
    delta0 = torch.tensor([[0.0, 1.0]])
    tau = sensitivity(lambda v: v, x, delta0)
    assert torch.allclose(tau, torch.tensor([1 / 5]))  # ‖δ₀‖ / ‖x‖


def test_counterattack_steps_follow_the_sign_of_the_distance_gradient_and_stay_in_the_ball():
    x = torch.full((1, 4), 0.5)
    delta0 = torch.tensor([[0.001, -0.002, 0.003, -0.0005]])
    # identity encoder: ∇_δ ‖δ‖² = 2δ, so every step adds α·sign(δ), clipped to ±ε
    deltas = counterattack(lambda v: v, x, delta0, x, EPS, 2, ALPHA)
    sign = delta0.sign()
    assert torch.allclose(deltas[1], delta0 + ALPHA * sign)
    assert torch.allclose(deltas[2], delta0 + 2 * ALPHA * sign)
    big = counterattack(lambda v: v, x, delta0, x, EPS, 3, 3 / 255)
    assert torch.allclose(big[3], EPS * sign)  # projected onto the ε-ball
    edge = counterattack(lambda v: v, torch.ones(1, 4), -delta0.abs(), torch.ones(1, 4), EPS, 2, ALPHA)
    assert (torch.ones(1, 4) + edge[2]).max() <= 1  # and onto [0,1]


def test_gate_picks_the_weighted_counterattack_below_tau_and_the_noise_above():
    d0, d1, d2 = (torch.full((2, 1), v) for v in (1.0, 2.0, 3.0))
    delta = gated_perturbation([d0, d1, d2], torch.tensor([0.1, 0.3]), 0.2, 2.0)
    w = step_weights(2, 2.0)
    assert torch.allclose(delta[0], w[0] * 1 + w[1] * 2 + w[2] * 3)  # τ ≤ τ_th: "falsely stable"
    assert torch.equal(delta[1], d0[1])  # τ > τ_th: only the random draw


def _module(tiny_zero_shot, **config):
    classifier = tiny_zero_shot(torch.eye(4, 12)[:3] + 0.1)
    context = DefenseContext(cache_dir=None, device=torch.device("cpu"), seed=0)  # type: ignore[arg-type]
    return classifier, TTC(TTCConfig(**config)).wrap(classifier, context)


@pytest.mark.parametrize("branch", ["counterattacked", "clean"])
def test_module_output_is_the_classifier_at_x_plus_the_gated_perturbation(tiny_zero_shot, branch):
    # identity encoder on 3x2x2 images at 0.5: τ = ‖δ₀‖/‖x‖ ≤ (4/255)/0.5 ≈ 0.03, so τ_th = 1 always
    # counterattacks and τ_th = 0 never does
    classifier, module = _module(tiny_zero_shot, tau_threshold=1.0 if branch == "counterattacked" else 0.0)
    x = torch.full((2, 3, 2, 2), 0.5)
    torch.manual_seed(3)
    delta0 = random_draw(x, EPS)
    torch.manual_seed(3)
    logits = module(x)
    if branch == "clean":
        expected = x + delta0
    else:
        sign = delta0.sign()  # identity encoder: two steps of α·sign(δ₀), clipped to the ε-ball
        d1 = (delta0 + ALPHA * sign).clamp(-EPS, EPS)
        d2 = (d1 + ALPHA * sign).clamp(-EPS, EPS)
        w = step_weights(2, 2.0)
        expected = x + w[0] * delta0 + w[1] * d1 + w[2] * d2
    assert torch.allclose(logits, classifier(expected), atol=1e-6)


def test_predictions_under_no_grad_equal_those_with_grad_and_depend_only_on_the_seed(tiny_zero_shot):
    _, module = _module(tiny_zero_shot)
    x = torch.rand(4, 3, 2, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        silent = module(x)
    torch.manual_seed(0)
    loud = module(x)
    torch.manual_seed(1)
    other = module(x)
    assert torch.equal(silent, loud.detach())
    assert not torch.equal(silent, other.detach())  # random (δ₀), hence declared stochastic
    assert TTC.stochastic and TTC.non_differentiable == ("counterattack",)


def test_adaptive_gradient_is_bpda_through_the_counterattack(tiny_zero_shot):
    """d logits/dx equals the classifier's gradient at x + Δ: Δ enters as a constant (identity surrogate)."""
    classifier, module = _module(tiny_zero_shot, tau_threshold=1.0)
    x = torch.rand(2, 3, 2, 2)
    torch.manual_seed(5)
    delta, _ = module.counter.perturbation(x, module.counter.draw(x))
    point = (x + delta).requires_grad_(True)
    (expected,) = torch.autograd.grad(classifier(point)[:, 0].sum(), point)
    torch.manual_seed(5)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(xg)[:, 0].sum(), xg)
    assert torch.allclose(grad, expected, atol=1e-6)


def test_defense_aware_objective_rewards_tau_up_to_the_threshold_plus_margin(tiny_zero_shot):
    _, module = _module(tiny_zero_shot, tau_loss_weight=10.0, tau_margin=0.05)
    x = torch.full((1, 3, 2, 2), 0.5, requires_grad=True)
    torch.manual_seed(2)
    delta0 = random_draw(x.detach(), EPS)
    torch.manual_seed(2)
    _, extra = module.forward_with_objective(x)
    tau = delta0.norm() / x.detach().norm()  # identity encoder
    assert torch.allclose(extra, 10.0 * (tau - 0.25).clamp(max=0).view(1), atol=1e-6)
    (grad,) = torch.autograd.grad(extra.sum(), x)
    assert grad.abs().sum() > 0  # differentiable in x: the attacker can raise τ
    _, plain = _module(tiny_zero_shot, tau_loss_weight=0.0)
    assert not hasattr(plain, "forward_with_objective")  # λ = 0: no defense-aware term offered
