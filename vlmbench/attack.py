"""The attack plugin contract (entry-point group ``vlmbench.attacks``) and its runtime checks.

An attack receives a classifier, clean images and labels, and returns adversarial images. It never
decides its own budget: the :class:`~vlmbench.protocol.ThreatModel` (norm, ε, steps, step size,
restarts, random start) is given to it, and :func:`check_perturbation` verifies, on every batch, that
the result lies in the ε-ball around the clean images and in [0,1]. A violation is a hard error,
never a reported number.

Attack names on the command line are ``NAME`` or ``NAME-STEPS`` (``pgd-10``, ``cw-100``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from vlmbench.config import NoConfig, config_dict
from vlmbench.errors import VlmbenchError
from vlmbench.names import parse_attack_name  # noqa: F401  (re-exported: its home is torch-free)
from vlmbench.protocol import ThreatModel

Model = Callable[[torch.Tensor], torch.Tensor]


class AttackError(VlmbenchError):
    """An attack broke its contract (left the ε-ball or [0,1], lost its gradient, ...)."""


class Attack(ABC):
    """Base class of every attack.

    Class attributes:
        name: registry name (``"pgd"``).
        description: one line for ``vlmbench list attacks``.
        version: bump when a change alters results.
        Config: frozen dataclass of the attack's own parameters, with the paper's defaults.
        norms: the threat-model norms the attack supports.
        default_steps: steps when the name carries no ``-STEPS`` suffix.
        honours: the optional settings the attack obeys (``step_size``, ``restarts``,
            ``random_start``, ``eot``: averaging gradients over draws of a random defense;
            ``defense_loss``: adding a defense's own objective on the adaptive track, see
            :mod:`vlmbench.adaptive`; ``targeted``: the target modes of :mod:`vlmbench.targets`;
            ``start``: beginning from given images, which the adaptive track uses to start from the
            oblivious attack's result; ``early_stop``: returning, per image, the first iterate that
            fools the model and spending no further step on it — the runner asks for it only where
            the attacked model is the scored one, deterministically).
            Setting one it does not honour is an error; in the protocol record a step size it does
            not use is 0 (adaptive, e.g. APGD) and its restarts are in its params.

    Args:
        threat: the budget to respect.
        config: instance of ``Config`` (default: all defaults).
        eot_draws: estimate each gradient over this many forward passes of a random model (EOT).
        early_stop: stop on an image at the first iterate that fools the model (attacks that honour
            ``early_stop``; never with EOT, where one draw's misclassification is not a success).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = NoConfig
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    default_steps: ClassVar[int] = 10
    honours: ClassVar[frozenset[str]] = frozenset({"step_size", "restarts", "random_start", "eot"})

    def __init__(self, threat: ThreatModel, config: Any = None, eot_draws: int = 1, early_stop: bool = False) -> None:
        if threat.norm not in self.norms:
            raise AttackError(f"attack {self.name!r} does not support norm {threat.norm!r} (supports {', '.join(self.norms)})")
        if eot_draws < 1 or (eot_draws > 1 and "eot" not in self.honours):
            raise AttackError(f"attack {self.name!r} cannot average gradients over {eot_draws} draws (EOT)")
        if early_stop and ("early_stop" not in self.honours or eot_draws > 1):
            raise AttackError(f"attack {self.name!r} cannot stop early here ({'with EOT' if eot_draws > 1 else 'not supported'})")
        self.threat = threat
        self.config = config if config is not None else self.Config()
        self.eot_draws = eot_draws
        self.early_stop = early_stop

    @abstractmethod
    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Adversarial examples for ``model`` at ``(x, y)``.

        Args:
            model: differentiable map from images ``(N,3,H,W)`` in [0,1] to logits ``(N,C)``.
            x: clean images, float32, in [0,1].
            y: true labels ``(N,)``, int64.
            generator: the only source of randomness (seeded per batch by the runner), on ``x.device``.
            target: (keyword, only passed to attacks that honour ``targeted``) the class ``(N,)``
                each image should be classified as; the attack then aims at it instead of away from ``y``.
            start: (keyword, only passed to attacks that honour ``start``) images in the ε-ball around
                ``x`` where the attack begins instead of its own starting point.

        Returns:
            ``x_adv`` of the same shape and dtype, within ``threat.eps`` of ``x`` in ``threat.norm``
            and in [0,1].
        """

    def params(self, num_classes: int | None = None) -> dict[str, Any]:
        """The attack's parameters for the protocol record, as they take effect on a dataset with
        ``num_classes`` classes (attacks whose behaviour depends on it, such as target counts, say so).
        Attacks that honour ``early_stop`` record whether they stopped early."""
        params = config_dict(self.config)
        if "early_stop" in self.honours:
            params["early_stop"] = self.early_stop
        return params

    def estimated_passes(self, num_classes: int) -> tuple[float, float]:
        """Planning estimate, per image, of ``(forward, backward)`` calls of the model the attack
        differentiates, on ``num_classes`` classes, EOT draws included: an upper bound for attacks
        that stop early (AutoAttack's later sub-attacks only see the images the earlier ones left).
        The default, ``steps × restarts × EOT`` of each, is exact for PGD-style attacks (an upper bound
        when they stop early on fooled images); attacks that
        spend their budget otherwise override it. The planner (``vlmbench plan``) sums these; the
        passes that really ran are measured and recorded in every row (``forward_passes``)."""
        calls = float(self.threat.steps * max(self.threat.restarts, 1) * self.eot_draws)
        return calls, calls


# Tolerances for the budget check: float32 rounding of x + δ, nothing more.
_LINF_TOL = 1e-6
_L2_RTOL = 1e-5


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ℓ∞ and ℓ2 norms of ``x_adv - x``."""
    delta = (x_adv - x).flatten(1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)


def check_perturbation(x: torch.Tensor, x_adv: torch.Tensor, threat: ThreatModel, attack: str) -> None:
    """Raise :class:`AttackError` unless ``x_adv`` is a valid adversarial example under ``threat``."""
    if x_adv.shape != x.shape or x_adv.dtype != x.dtype:
        raise AttackError(f"attack {attack!r} returned {tuple(x_adv.shape)}/{x_adv.dtype}, expected {tuple(x.shape)}/{x.dtype}")
    if not torch.isfinite(x_adv).all():
        raise AttackError(f"attack {attack!r} returned non-finite pixels")
    low, high = float(x_adv.min()), float(x_adv.max())
    if low < 0 or high > 1:
        raise AttackError(f"attack {attack!r} left [0,1]: pixel range [{low:.6g}, {high:.6g}]")
    linf, l2 = perturbation_norms(x, x_adv)
    if threat.norm == "linf":
        worst = float(linf.max())
        if worst > threat.eps + _LINF_TOL:
            raise AttackError(f"attack {attack!r} left the linf ball: ‖δ‖∞ = {worst:.6g} > ε = {threat.eps:.6g}")
    else:
        worst = float(l2.max())
        if worst > threat.eps * (1 + _L2_RTOL) + 1e-7:
            raise AttackError(f"attack {attack!r} left the l2 ball: ‖δ‖₂ = {worst:.6g} > ε = {threat.eps:.6g}")
