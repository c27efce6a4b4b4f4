"""Building blocks for attacking defenses adaptively (Athalye et al., ICML 2018).

* **BPDA** (backward-pass differentiable approximation): a defense step without a useful gradient
  (rounding, sign, thresholds, argmax) is written as ``bpda(exact, surrogate)(x)``: the forward pass is
  ``exact(x)``, exactly as evaluated; the backward pass is that of ``surrogate(x)`` (often the identity).
  The defended module then serves both evaluation and the adaptive attack.
* **EOT** (expectation over transformation): for a randomised defense the attack follows the gradient
  of the expected loss, estimated over ``n`` independent draws; attacks implement it by evaluating the
  batch ``n`` times and summing the loss (see :func:`vlmbench.attacks.pgd.pgd`).
* **Defense-aware loss**: a defended module may also define
  ``forward_with_objective(x) -> (logits (N,C), extra (N,))``, where ``extra`` is a per-sample term the
  adaptive attacker maximises *in addition to* its own loss on the logits (already weighted by the
  defense; e.g. TTC's: keep the sensitivity τ above its threshold so the input is routed to the
  unmodified branch). Both outputs come from one pass of the pipeline. Attacks that honour
  ``defense_loss`` use it on the adaptive track (:func:`logits_and_objective`); the protocol record's
  ``defense_loss`` says whether it was used.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Step = Callable[[torch.Tensor], torch.Tensor]


def logits_and_objective(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, extra)`` from a model that provides a defense-aware objective, else ``(model(x), None)``."""
    with_objective = getattr(model, "forward_with_objective", None)
    if with_objective is None:
        return model(x), None
    logits, extra = with_objective(x)
    if extra.shape != (x.shape[0],):
        raise ValueError(f"forward_with_objective must return a per-sample term of shape ({x.shape[0]},), got {tuple(extra.shape)}")
    return logits, extra


def provides_objective(model: object) -> bool:
    """Whether ``model`` offers a defense-aware objective (``forward_with_objective``)."""
    return callable(getattr(model, "forward_with_objective", None))


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
