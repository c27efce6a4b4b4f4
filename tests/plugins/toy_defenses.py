"""Deliberately simple test-time defenses for testing the adaptive track (loaded with --plugin).

* ``toy-noise``: Gaussian noise on the input — randomised, so an adaptive attack needs EOT.
* ``toy-quantise``: rounding pixels to a few levels — no useful gradient, so an adaptive attack needs
  BPDA (declared as ``quantise``, and implemented with ``vlmbench.adaptive.bpda(..., name="quantise")``).
* ``toy-quantise-masked``: the same rounding, undeclared and without BPDA — the deliberately broken case.

``toy-noise`` and ``toy-quantise`` weaken oblivious attacks (crafted without them) while adaptive ones see
through them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmbench.adaptive import bpda
from vlmbench.defense import Defense, DefenseContext


class _Wrapped(torch.nn.Module):
    def __init__(self, classifier: torch.nn.Module, step) -> None:
        super().__init__()
        self.classifier = classifier
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.step(x))


@dataclass(frozen=True)
class NoiseConfig:
    """Attributes: sigma: standard deviation of the Gaussian noise on [0,1] pixels."""

    sigma: float = 0.05


class ToyNoise(Defense):
    """Adds N(0, σ²) noise to the pixels (clipped to [0,1]) before classifying."""

    name: ClassVar[str] = "toy-noise"
    description: ClassVar[str] = "test defense: Gaussian input noise (random)"
    Config: ClassVar[type] = NoiseConfig
    stochastic: ClassVar[bool] = True

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        sigma = self.config.sigma
        return _Wrapped(classifier, lambda x: (x + sigma * torch.randn_like(x)).clamp(0, 1))


@dataclass(frozen=True)
class QuantiseConfig:
    """Attributes: levels: number of grey levels per channel after rounding."""

    levels: int = 8


class ToyQuantise(Defense):
    """Rounds every pixel to ``levels`` equally spaced values; the backward pass is the identity (BPDA)."""

    name: ClassVar[str] = "toy-quantise"
    description: ClassVar[str] = "test defense: pixel quantisation (non-differentiable, BPDA identity)"
    Config: ClassVar[type] = QuantiseConfig
    non_differentiable: ClassVar[tuple[str, ...]] = ("quantise",)

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Wrapped(classifier, bpda(self.rounding, name="quantise"))

    def rounding(self, x: torch.Tensor) -> torch.Tensor:
        k = self.config.levels - 1
        return torch.round(x * k) / k


class ToyQuantiseMasked(ToyQuantise):
    """Rounds pixels like ``toy-quantise`` but offers no backward approximation: its input gradient is
    exactly zero, the textbook case of gradient masking."""

    name: ClassVar[str] = "toy-quantise-masked"
    description: ClassVar[str] = "test defense: pixel quantisation without BPDA (masks gradients)"
    non_differentiable: ClassVar[tuple[str, ...]] = ()

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Wrapped(classifier, self.rounding)


class _WithObjective(_Wrapped):
    """Exposes a defense-aware objective: the mean pixel value, which the adaptive attacker maximises."""

    def __init__(self, classifier: torch.nn.Module, weight: float) -> None:
        super().__init__(classifier, lambda x: x)
        self.weight = weight

    def forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self(x), self.weight * x.flatten(1).mean(dim=1)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Attributes: weight: weight of the defense-aware term."""

    weight: float = 1.0


class ToyObjective(Defense):
    """The identity at test time, offering a defense-aware objective (brighten the image) to adaptive attacks."""

    name: ClassVar[str] = "toy-objective"
    description: ClassVar[str] = "test defense: identity with a defense-aware objective"
    Config: ClassVar[type] = ObjectiveConfig

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _WithObjective(classifier, self.config.weight)
