"""``non_differentiable`` means something: every declared step runs through a named ``bpda`` and every
named ``bpda`` step is declared (checked on one forward pass); ``exact_gradients`` exposes the true
gradient of the declared steps."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from vlmbench.adaptive import bpda, check_declared_steps, exact_gradients, trace_steps
from vlmbench.defense import Defense, DefenseContext
from vlmbench.registry import PluginError, plugins

TOY = Path(__file__).parent / "plugins" / "toy_defenses.py"
CONTEXT = DefenseContext(cache_dir=None, device=torch.device("cpu"), seed=0)  # type: ignore[arg-type]


def _toy(name: str) -> type[Defense]:
    plugins().load_source(str(TOY))
    return plugins().defenses.get(name)


@pytest.mark.parametrize(("name", "config"), [
    ("ttc", {"tau_threshold": 1.0}),  # every image counterattacked
    ("ttc", {"tau_threshold": 0.0}),  # none: the gated step is still reached, so it counts
    ("ttc", {"tau_loss_weight": 1.0}),
    ("scc", {}),
    ("scc", {"tau_threshold": 0.0, "steps": 0}),
])
def test_declared_steps_of_the_counterattack_defenses_are_the_traced_ones(name, config, tiny_zero_shot):
    cls = plugins().defenses.get(name)
    defense = cls(cls.Config(**config))
    classifier = tiny_zero_shot(torch.eye(4, 12)[:3] + 0.1)
    defended = defense.wrap(classifier, CONTEXT)
    torch.manual_seed(0)
    assert check_declared_steps([defense], defended, torch.rand(3, 3, 2, 2)) == tuple(sorted(cls.non_differentiable))


@pytest.mark.parametrize("backward", ["bpda", "exact"])
def test_declared_steps_of_clipure_are_the_traced_ones(backward, tiny_zero_shot):
    from vlmbench.defenses.clipure import CLIPureCos, CLIPureCosConfig, CLIPureCosModule

    classifier = tiny_zero_shot(torch.randn(4, 12, generator=torch.Generator().manual_seed(0)))
    defense = CLIPureCos(CLIPureCosConfig(backward=backward))
    defended = CLIPureCosModule(classifier, F.normalize(torch.ones(12), dim=0), defense.config)
    assert check_declared_steps([defense], defended, torch.rand(3, 3, 2, 2)) == ("purification",)


def test_toy_quantise_declares_its_step_and_the_masked_one_runs_none(tiny_classifier):
    x = torch.rand(2, 3, 8, 8)
    quantise, masked = _toy("toy-quantise"), _toy("toy-quantise-masked")
    assert check_declared_steps([quantise()], quantise().wrap(tiny_classifier, CONTEXT), x) == ("quantise",)
    assert check_declared_steps([masked()], masked().wrap(tiny_classifier, CONTEXT), x) == ()


def test_a_composition_checks_the_steps_of_all_its_parts(tiny_zero_shot):
    ttc = plugins().defenses.get("ttc")()
    none = plugins().defenses.get("none")()
    defended = ttc.wrap(tiny_zero_shot(torch.eye(4, 12)[:3] + 0.1), CONTEXT)
    assert check_declared_steps([none, ttc], defended, torch.rand(2, 3, 2, 2)) == ("counterattack",)


def test_a_declared_step_that_never_runs_through_bpda_is_an_error(tiny_classifier):
    class Masked(_toy("toy-quantise-masked")):
        non_differentiable: ClassVar[tuple[str, ...]] = ("quantise",)  # declared, but rounds without bpda

    defense = Masked()
    with pytest.raises(PluginError) as info:
        check_declared_steps([defense], defense.wrap(tiny_classifier, CONTEXT), torch.rand(2, 3, 8, 8))
    assert str(info.value) == (
        "defense 'toy-quantise-masked' declares non-differentiable step 'quantise' but no bpda(..., name='quantise') "
        "ran in its forward: write the step with vlmbench.adaptive.bpda so adaptive attacks get a gradient"
    )


def test_a_bpda_step_that_is_not_declared_is_an_error(tiny_classifier):
    class Undeclared(_toy("toy-quantise")):
        name: ClassVar[str] = "toy-undeclared"
        non_differentiable: ClassVar[tuple[str, ...]] = ()

    defense = Undeclared()
    with pytest.raises(PluginError) as info:
        check_declared_steps([defense], defense.wrap(tiny_classifier, CONTEXT), torch.rand(2, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("defense 'toy-undeclared' runs BPDA step 'quantise' that it does not declare in non_differentiable")


def test_a_step_counts_when_reached_even_if_a_gate_discards_it():
    step = bpda(torch.round, name="round")
    x = torch.rand(4)
    with trace_steps() as seen:
        gated = torch.where(x > 2, step(x), x)  # the gate never takes the step's output
    assert seen == {"round"} and torch.equal(gated, x)
    with trace_steps() as outside:
        pass
    step(x)  # outside any trace: nothing recorded
    assert outside == set()


def test_exact_gradients_give_the_true_gradient_of_the_declared_steps_and_are_restored(tiny_classifier):
    quantise = _toy("toy-quantise")()
    defended = quantise.wrap(tiny_classifier, CONTEXT)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    with exact_gradients():
        exact = defended(x)
    (grad,) = torch.autograd.grad(exact.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))  # rounding: zero almost everywhere
    bpda_out = defended(x)  # outside the block: the identity surrogate again
    assert torch.equal(bpda_out, exact)
    (grad,) = torch.autograd.grad(bpda_out.sum(), x)
    assert grad.abs().sum() > 0
