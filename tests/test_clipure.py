"""CLIPure-Cos against hand-checked tiny cases: the purification update, its period-2 no-op, the
vanishing exact gradient, BPDA, and the two per-cell checks."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vlmbench.defenses.clipure import CLIPureCos, CLIPureCosConfig, CLIPureCosModule, purify

ROTATION = math.atan(30.0)  # one step of η = 30 along a unit tangent direction: ≈ 88.1°


def _at(angle: float) -> torch.Tensor:
    return torch.tensor([[math.cos(angle), math.sin(angle)]])


def test_one_step_rotates_by_atan_eta_towards_the_blank_embedding():
    u, blank = _at(0.0), _at(math.radians(60))[0]
    assert torch.allclose(purify(u, blank, 1, 30.0, 0.0), _at(ROTATION), atol=1e-6)
    away = purify(u, _at(math.radians(-60))[0], 1, 30.0, 0.0)
    assert torch.allclose(away, _at(-ROTATION), atol=1e-6)


def test_released_configuration_is_a_no_op_after_an_even_number_of_steps():
    """Angle to b below 88.1°: the first step overshoots b, the second rotates back (docs/provenance.md#clipure-no-op)."""
    u, blank = _at(0.3), _at(0.3 + math.radians(75))[0]
    assert torch.allclose(purify(u, blank, 10, 30.0, 0.0), u, atol=1e-5)
    assert not torch.allclose(purify(u, blank, 9, 30.0, 0.0), u, atol=1e-2)
    # beyond 88.1° there is no overshoot: two steps do not return
    far = _at(math.radians(89.5))[0]
    assert not torch.allclose(purify(_at(0.0), far, 2, 30.0, 0.0), _at(0.0), atol=1e-2)


def test_momentum_mixes_the_previous_direction():
    u, blank = _at(0.0), _at(math.radians(60))[0]
    # γ = 0.5, first step: m = −0.5·ĝ (half the step): rotation atan(15)
    assert torch.allclose(purify(u, blank, 1, 30.0, 0.5), _at(math.atan(15.0)), atol=1e-6)


def test_exact_gradient_shrinks_by_the_norm_of_each_step():
    """The direction is a constant, so each step's Jacobian is (I − ûûᵀ)/‖u + ηm‖: spectral norm 1/√901."""
    u = F.normalize(torch.tensor([1.0, 0.2, -0.3]), dim=0)
    blank = F.normalize(torch.tensor([0.3, 1.0, 0.1]), dim=0)
    for steps in (1, 2):
        jacobian = torch.autograd.functional.jacobian(lambda v: purify(v[None], blank, steps, 30.0, 0.0)[0], u)
        assert math.isclose(float(torch.linalg.matrix_norm(jacobian, ord=2)), 901 ** (-steps / 2), rel_tol=1e-3)


def _module(tiny_zero_shot, backward: str = "bpda") -> tuple[torch.nn.Module, CLIPureCosModule]:
    generator = torch.Generator().manual_seed(0)
    classifier = tiny_zero_shot(torch.randn(4, 12, generator=generator))
    blank = F.normalize(torch.ones(12), dim=0)  # cos with images in (0,1]: ≈ 0.8, well inside 88.1°
    return classifier, CLIPureCosModule(classifier, blank, CLIPureCosConfig(backward=backward))


def test_module_predicts_like_the_plain_classifier_and_bpda_gives_its_gradient(tiny_zero_shot):
    classifier, module = _module(tiny_zero_shot)
    x = torch.rand(5, 3, 2, 2, requires_grad=True)
    assert torch.allclose(module(x), classifier(x), atol=1e-4)
    (bpda_grad,) = torch.autograd.grad(module(x)[:, 0].sum(), x)
    (plain_grad,) = torch.autograd.grad(classifier(x)[:, 0].sum(), x)
    assert torch.allclose(bpda_grad, plain_grad, atol=1e-5)
    (exact_grad,) = torch.autograd.grad(_module(tiny_zero_shot, "exact")[1](x)[:, 0].sum(), x)
    assert float(exact_grad.norm()) < 1e-10 * float(plain_grad.norm())  # ≈ 30^-10: vanishing
    assert not CLIPureCos.stochastic and CLIPureCos.non_differentiable == ("purification",)


def test_sanity_checks_report_agreement_and_vanishing_gradients(tiny_zero_shot):
    _, module = _module(tiny_zero_shot)
    x = torch.rand(6, 3, 2, 2)
    y = torch.arange(6) % 4
    assert module.sanity_checks(x, y) == ["undefended-agreement=1.00", "vanishing-gradients=1.00"]
    module.config = CLIPureCosConfig(steps=1)  # an odd step count does change the embedding
    checks = module.sanity_checks(x, y)
    assert all(not flag.startswith("vanishing") for flag in checks)
