"""Test-time defenses that break the contract on purpose (loaded with --plugin), one way each.

* ``nan-logits``: returns NaN logits.
* ``extra-columns``: returns one logit column more than the dataset has classes.
* ``flat-logits``: returns one number per image (1-D logits).
* ``undeclared-noise``: adds input noise without declaring ``stochastic``.
* ``saturated-logits``: multiplies the logits by 10⁴, so the softmax saturates and the cross-entropy
  gradient is exactly zero on every confidently classified image (masked gradients; the predictions
  are the undefended model's).

The runner must refuse the first three with a one-line error naming the defense, and flag the fourth;
``vlmbench check`` must fail the last two with the right findings.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vlmbench.defense import Defense, DefenseContext


class _Output(torch.nn.Module):
    def __init__(self, classifier: torch.nn.Module, transform) -> None:
        super().__init__()
        self.classifier = classifier
        self.transform = transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(self.classifier(x))


class NanLogits(Defense):
    name: ClassVar[str] = "nan-logits"
    description: ClassVar[str] = "broken test defense: NaN logits"

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Output(classifier, lambda logits: logits * float("nan"))


class ExtraColumns(Defense):
    name: ClassVar[str] = "extra-columns"
    description: ClassVar[str] = "broken test defense: one logit column too many"

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Output(classifier, lambda logits: torch.cat([logits, logits.max(dim=1, keepdim=True).values + 1], dim=1))


class FlatLogits(Defense):
    name: ClassVar[str] = "flat-logits"
    description: ClassVar[str] = "broken test defense: 1-D logits"

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Output(classifier, lambda logits: logits.sum(dim=1))


class UndeclaredNoise(Defense):
    name: ClassVar[str] = "undeclared-noise"
    description: ClassVar[str] = "broken test defense: random input noise, not declared stochastic"

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        class Noisy(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.classifier = classifier

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.classifier((x + 0.05 * torch.randn_like(x)).clamp(0, 1))

        return Noisy()


class SaturatedLogits(Defense):
    name: ClassVar[str] = "saturated-logits"
    description: ClassVar[str] = "broken test defense: logits x 1e4 (saturated softmax, masked gradients)"

    def wrap(self, classifier, context: DefenseContext) -> torch.nn.Module:
        return _Output(classifier, lambda logits: logits * 1e4)
