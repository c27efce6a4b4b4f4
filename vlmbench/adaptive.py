"""Building blocks for attacking defenses adaptively (Athalye et al., ICML 2018).

* **BPDA** (backward-pass differentiable approximation): a defense step without a useful gradient
  (rounding, sign, thresholds, argmax) is written as ``bpda(exact, surrogate)(x)``: the forward pass is
  ``exact(x)``, exactly as evaluated; the backward pass is that of ``surrogate(x)`` (often the identity).
  The defended module then serves both evaluation and the adaptive attack.
* **EOT** (expectation over transformation): for a randomised defense the attack follows the gradient
  of the expected loss, estimated over ``n`` independent draws; attacks implement it by evaluating the
  batch ``n`` times and summing the loss (see :func:`vlmbench.attacks.pgd.pgd`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor], torch.Tensor]


def identity(x: torch.Tensor) -> torch.Tensor:
    """The usual BPDA surrogate: pretend the step was the identity."""
    return x


def bpda(exact: Step, surrogate: Step = identity) -> Step:
    """A step whose value is ``exact(x)`` and whose gradient is that of ``surrogate(x)``.

    ``exact`` and ``surrogate`` must return tensors of the same shape; ``exact`` need not be
    differentiable (it runs without building a graph).
    """

    def step(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = exact(x)
        approx = surrogate(x)
        return approx + (value - approx).detach()

    return step
