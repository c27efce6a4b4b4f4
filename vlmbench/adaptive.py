"""Building blocks for attacking defenses adaptively (Athalye et al., ICML 2018).

* **BPDA** (backward-pass differentiable approximation): a defense step without a useful gradient
  (rounding, sign, thresholds, argmax) is written as ``bpda(exact, surrogate, name=NAME)(x)``: the
  forward pass is ``exact(x)``, exactly as evaluated; the backward pass is that of ``surrogate(x)``
  (often the identity). The defended module then serves both evaluation and the adaptive attack. A
  defense declares the names of its steps in ``Defense.non_differentiable``;
  :func:`check_declared_steps` verifies the declaration against one traced forward pass
  (:func:`trace_steps`), and :func:`exact_gradients` switches every step to its true gradient (what an
  attacker without BPDA would get).
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

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from vlmbench.defense import Defense

Step = Callable[[torch.Tensor], torch.Tensor]

_TRACE: ContextVar[set[str] | None] = ContextVar("vlmbench_bpda_trace", default=None)
_EXACT: ContextVar[bool] = ContextVar("vlmbench_bpda_exact", default=False)


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


def bpda(exact: Step, surrogate: Step = identity, *, name: str) -> Step:
    """The non-differentiable step ``name``: its value is ``exact(x)``, its gradient that of ``surrogate(x)``.

    ``exact`` and ``surrogate`` map a tensor to a tensor of one shape. ``exact`` need not be
    differentiable: it runs under ``torch.no_grad()``; the step's output is
    ``surrogate(x) + (exact(x) − surrogate(x))``, i.e. ``exact(x)`` up to float rounding.

    ``name`` is what the defense lists in ``Defense.non_differentiable``. Calling the step adds it to the
    active :func:`trace_steps` set before ``exact`` runs, so a step whose output a gate later discards
    still counts. Inside :func:`exact_gradients` the step returns ``exact(x)`` with the graph ``exact``
    itself builds (no surrogate).
    """

    def step(x: torch.Tensor) -> torch.Tensor:
        seen = _TRACE.get()
        if seen is not None:
            seen.add(name)
        if _EXACT.get():
            return exact(x)
        with torch.no_grad():
            value = exact(x)
        approx = surrogate(x)
        return approx + (value - approx).detach()

    return step


@contextmanager
def trace_steps() -> Iterator[set[str]]:
    """Inside the block, the names of the :func:`bpda` steps called (in this thread/context) collect in the
    yielded set. Nested blocks each see only their own steps."""
    seen: set[str] = set()
    token = _TRACE.set(seen)
    try:
        yield seen
    finally:
        _TRACE.reset(token)


@contextmanager
def exact_gradients() -> Iterator[None]:
    """Inside the block, every :func:`bpda` step returns ``exact(x)`` computed with its graph: the true
    gradient of the declared steps (zero for a rounding or sign, none for a step that detaches)."""
    token = _EXACT.set(True)
    try:
        yield
    finally:
        _EXACT.reset(token)


def check_declared_steps(parts: Sequence[Defense], defended: torch.nn.Module, x: torch.Tensor) -> tuple[str, ...]:
    """The sorted names of the BPDA steps one forward pass of ``defended`` on ``x`` ``(N,3,H,W)`` in [0,1]
    runs, after checking them against what ``parts`` (the defense's parts, in order) declare
    (:func:`verify_declared_steps`). Runs under ``torch.no_grad()``; seeding is the caller's."""
    with trace_steps() as seen, torch.no_grad():
        defended(x)
    return verify_declared_steps(parts, seen)


def verify_declared_steps(parts: Sequence[Defense], seen: set[str]) -> tuple[str, ...]:
    """Check the BPDA steps ``seen`` in a traced forward pass (:func:`trace_steps`) against what ``parts``
    declare in ``non_differentiable``: every declared step must be reached through
    ``bpda(..., name=NAME)``, and every step reached must be declared. Returns them sorted.

    Raises:
        PluginError: a declared step that did not run, or a step that runs undeclared (one line).
    """
    from vlmbench.registry import PluginError  # lazily: the registry imports the plugin contracts

    declared = {step: part.name for part in parts for step in part.non_differentiable}
    for step, owner in declared.items():
        if step not in seen:
            raise PluginError(
                f"defense {owner!r} declares non-differentiable step {step!r} but no bpda(..., name={step!r}) ran "
                f"in its forward: write the step with vlmbench.adaptive.bpda so adaptive attacks get a gradient"
            )
    undeclared = sorted(seen - declared.keys())
    if undeclared:
        raise PluginError(
            f"defense {'+'.join(part.name for part in parts)!r} runs BPDA step {undeclared[0]!r} that it does not "
            f"declare in non_differentiable: add it to non_differentiable"
        )
    return tuple(sorted(seen))
