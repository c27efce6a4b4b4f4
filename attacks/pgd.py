"""Projected gradient descent (Madry et al., ICLR 2018) and the field's "CW" (margin-loss PGD).

Algorithm (one restart; ℓ∞ shown, ℓ2 replaces sign by the normalised gradient and the box
projection by the ball projection)::

    δ ← U(−ε, ε)                  if random_start else 0;   δ ← clip(x + δ, 0, 1) − x
    repeat `steps` times:
        g ← ∇_δ Σ_i L(f(x_i + δ_i), y_i)
        [early stop: a sample that f already misclassifies at x_i + δ_i keeps that iterate and leaves]
        δ ← Π_ε(δ + α · sign(g));  δ ← clip(x + δ, 0, 1) − x
    return x + δ

With several restarts, each later restart runs only on the samples no earlier restart misclassified,
and a sample keeps the first iterate that fooled the model (else the last restart's).

Early stop (``early_stop``, recorded in the attack's params) is what AutoAttack does: an image counts
as broken if any iterate fools the model, not only the last one, and no step is spent on it after
that. The runner asks for it only where the model attacked is the model scored, deterministically
(no test-time defense or the adaptive track; one EOT and one evaluation draw): there the returned
iterate is the one a run of every step would have found first. Elsewhere — oblivious attacks on
test-time defenses, transfer, random defenses — every sample takes every step and the last iterate
is returned, as the field's protocols do, since fooling the crafting model says nothing certain
about the scored one.

Losses: ``ce`` (cross-entropy, summed over the batch, as in TTC/TeCoA) and ``margin``:
``−ReLU(z_y − max_{j≠y} z_j + κ)``, κ = 50 — what TeCoA, PMG-AFT, TTC and HPT-GPD call "CW"
(ℓ∞ PGD on the margin, not the Carlini–Wagner ℓ2 optimisation). Targeted (``target`` given): ascend
``−CE(z, t)``, or ``−ReLU(max_{j≠t} z_j − z_t + κ)`` for CW.

Every step's input gradient must be finite (checked once per restart, so the steps need no host–device
synchronisation); an attack that lost its gradient raises :class:`~vlmbench.attack.AttackError`
instead of returning a weaker result.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmbench.adaptive import logits_and_objective
from vlmbench.attack import Attack, AttackError, Model
from vlmbench.protocol import ThreatModel


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Per-sample loss ``(logits (N,C), labels (N,)) -> (N,)`` that the attacker maximises."""


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``(N,)``: the attacker maximises it."""
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-sample ``−ReLU(z_y − max_{j≠y} z_j + κ)`` ``(N,)``: the attacker maximises it (to 0 at margin −κ)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return -F.relu(true - others.amax(dim=1) + kappa)


def targeted_cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ``−CE(logits, target)`` ``(N,)``: maximising it pulls the prediction to ``target``."""
    return -F.cross_entropy(logits, target, reduction="none")


def targeted_margin_loss(logits: torch.Tensor, target: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per-sample ``−ReLU(max_{j≠t} z_j − z_t + κ)`` ``(N,)``: 0 once the target leads by κ."""
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(target, logits.shape[1]).bool(), float("-inf"))
    return -F.relu(others.amax(dim=1) - aimed + kappa)


def random_start(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """A uniform draw from the ε-ball (ℓ∞: the cube; ℓ2: uniform in volume), clipped to [0,1]."""
    if threat.norm == "linf":
        delta = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * threat.eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        dim = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1 / dim)
        delta = direction * (radius * threat.eps).view(-1, 1, 1, 1)
    return (x + delta).clamp(0, 1) - x


def project(delta: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Project ``delta`` onto the ε-ball of ``threat.norm``."""
    if threat.norm == "linf":
        return delta.clamp(-threat.eps, threat.eps)
    norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return delta * torch.clamp(threat.eps / norms.clamp_min(1e-12), max=1.0)


def ascent_direction(grad: torch.Tensor, threat: ThreatModel) -> torch.Tensor:
    """Steepest-ascent unit step for the norm: sign (ℓ∞) or gradient / ‖gradient‖₂ (ℓ2)."""
    if threat.norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def fooled(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    """``(N,)`` bool: the prediction differs from the label (untargeted) or equals the target (targeted)."""
    predicted = logits.argmax(dim=1)
    return predicted == labels if targeted else predicted != labels


def ascend(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    delta: torch.Tensor,
    threat: ThreatModel,
    loss_fn: LossFn,
    eot_draws: int = 1,
    targeted: bool = False,
    early_stop: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``threat.steps`` ascent steps of one restart from ``delta``; returns ``(images, fooled)``.

    Without ``early_stop``: every sample takes every step and ``images`` is the last iterate
    (``fooled`` all False: nothing was checked). With ``early_stop`` (a deterministic model, one EOT
    draw): each step's forward pass also tells which samples the current iterate already fools; those
    keep that iterate (``fooled`` True) and leave the batch, so no further step is spent on them.

    A non-finite input gradient at any step raises :class:`~vlmbench.attack.AttackError`; it is
    checked once, after the loop, so that the steps need no host–device synchronisation of their own.
    """
    images = x.clone()
    was_fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    active = torch.arange(len(x), device=x.device)  # positions still attacked
    finite = torch.ones((), dtype=torch.bool, device=x.device)
    for _ in range(threat.steps):
        delta.requires_grad_(True)
        inputs = x + delta
        repeated = inputs if eot_draws == 1 else inputs.repeat(eot_draws, 1, 1, 1)
        logits, extra = logits_and_objective(model, repeated)
        loss = loss_fn(logits, y if eot_draws == 1 else y.repeat(eot_draws)).sum()
        if extra is not None:
            loss = loss + extra.sum()
        (grad,) = torch.autograd.grad(loss, delta)
        if grad is None:
            raise AttackError("PGD obtained no input gradient: the model is not differentiable here")
        with torch.no_grad():
            finite &= torch.isfinite(grad).all()
            if early_stop:
                now = fooled(logits, y, targeted)
                if now.any():
                    images[active[now]] = inputs[now].detach()
                    was_fooled[active[now]] = True
                    keep = ~now
                    active, x, y, delta, grad = active[keep], x[keep], y[keep], delta[keep], grad[keep]
                    if len(active) == 0:
                        break
            delta = project(delta + threat.step_size * ascent_direction(grad, threat), threat)
            delta = (x + delta).clamp(0, 1) - x
    if not bool(finite):
        raise AttackError("PGD obtained no finite input gradient: the model is not differentiable here")
    images[active] = (x + delta).detach()
    return images, was_fooled


def pgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    loss_fn: LossFn,
    generator: torch.Generator,
    eot_draws: int = 1,
    targeted: bool = False,
    start: torch.Tensor | None = None,
    early_stop: bool = False,
) -> torch.Tensor:
    """Run PGD with ``threat``'s budget and return ``x_adv`` (see the module docstring).

    ``y`` are the true labels, or with ``targeted`` the target classes; ``loss_fn`` is given them
    and a restart succeeds on a sample when the prediction differs from the label (equals the target).
    ``start`` (images in the ε-ball around ``x``): where the first restart begins instead of a random
    point (the adaptive track starts from the oblivious attack's result); later restarts start randomly.

    With ``eot_draws = n > 1`` every step evaluates the batch ``n`` times (one forward pass of a
    batch ``n`` times as large) and ascends the summed loss: the EOT estimate of the expected loss's
    gradient for a randomised ``model``. If ``model`` provides a defense-aware objective
    (:mod:`vlmbench.adaptive`), its per-sample term is added to the loss.

    ``early_stop``: a sample keeps the first iterate that fools ``model`` and takes no further step
    (:func:`ascend`); for a deterministic ``model`` this returns what a run of every step would
    have found first, at a fraction of the passes once most samples are fooled.
    """
    if threat.steps < 1:
        raise AttackError(f"PGD needs at least one step, got {threat.steps}")
    if early_stop and eot_draws > 1:
        raise AttackError("PGD cannot stop early on a random model (EOT): one draw's misclassification is not a success")
    x_adv = x.clone()
    pending = torch.ones(len(x), dtype=torch.bool, device=x.device)  # not yet fooled by a restart
    for restart in range(threat.restarts):
        index = pending.nonzero().squeeze(1)
        if len(index) == 0:
            break
        xr, yr = x[index], y[index]
        if restart == 0 and start is not None:
            delta = project(start[index] - xr, threat)
            delta = (xr + delta).clamp(0, 1) - xr
        else:
            delta = random_start(xr, threat, generator) if threat.random_start else torch.zeros_like(xr)
        candidate, success = ascend(model, xr, yr, delta, threat, loss_fn, eot_draws, targeted, early_stop)
        if threat.restarts == 1:
            return candidate
        with torch.no_grad():
            unknown = (~success).nonzero().squeeze(1)
            if len(unknown):
                success[unknown] = fooled(model(candidate[unknown]), yr[unknown], targeted)
        last = restart == threat.restarts - 1
        take = success | last
        x_adv[index[take]] = candidate[take]
        pending[index[success]] = False
    return x_adv


class PGD(Attack):
    """ℓ∞/ℓ2 PGD on the cross-entropy, with random start and restarts (Madry et al. 2018)."""

    name: ClassVar[str] = "pgd"
    description: ClassVar[str] = "PGD on cross-entropy (Madry et al. 2018), l-inf/l2, random start, restarts"

    honours: ClassVar[frozenset[str]] = Attack.honours | {"defense_loss", "targeted", "start", "early_stop"}

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                target: torch.Tensor | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
        if target is not None:
            return pgd(model, x, target, self.threat, targeted_cross_entropy_loss, generator, self.eot_draws, True, start,
                       self.early_stop)
        return pgd(model, x, y, self.threat, cross_entropy_loss, generator, self.eot_draws, start=start,
                   early_stop=self.early_stop)


@dataclass(frozen=True)
class CWConfig:
    """Attributes:
    kappa: the margin κ (50 in TeCoA, PMG-AFT, TTC, HPT-GPD).
    """

    kappa: float = 50.0


class CW(Attack):
    """The CLIP-robustness literature's "CW": PGD on the margin loss −ReLU(z_y − max_{j≠y} z_j + κ), κ = 50."""

    name: ClassVar[str] = "cw"
    description: ClassVar[str] = "'CW' of TeCoA/TTC: PGD on the margin loss, kappa=50 (not Carlini-Wagner L2)"
    Config: ClassVar[type] = CWConfig

    honours: ClassVar[frozenset[str]] = Attack.honours | {"defense_loss", "targeted", "start", "early_stop"}

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                target: torch.Tensor | None = None, start: torch.Tensor | None = None) -> torch.Tensor:
        kappa = self.config.kappa
        if target is not None:
            return pgd(model, x, target, self.threat, lambda z, t: targeted_margin_loss(z, t, kappa), generator,
                       self.eot_draws, True, start, self.early_stop)
        return pgd(model, x, y, self.threat, lambda z, labels: margin_loss(z, labels, kappa), generator,
                   self.eot_draws, start=start, early_stop=self.early_stop)
