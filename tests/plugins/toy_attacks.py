"""A deliberately broken attack for testing the sanity flags (loaded with --plugin).

``toy-shy`` runs PGD only when ε ≤ 1/255 and returns the clean images for any larger ε, so robust
accuracy *rises* with ε: exactly what the ``eps-not-monotone`` flag must catch.

``toy-global-rng`` draws its noise from torch's global generator instead of the one it is given, and
``toy-overshoot`` steps 2ε without projecting back: ``vlmbench check attack`` must fail both.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vlmbench.attack import Attack
from vlmbench.attacks.pgd import cross_entropy_loss, pgd


class ShyAttack(Attack):
    name: ClassVar[str] = "toy-shy"
    description: ClassVar[str] = "test attack: PGD at eps <= 1/255, nothing above (broken on purpose)"

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.threat.eps > 1 / 255 + 1e-9:
            return x.clone()
        return pgd(model, x, y, self.threat, cross_entropy_loss, generator)


class GlobalRngAttack(Attack):
    name: ClassVar[str] = "toy-global-rng"
    description: ClassVar[str] = "test attack: random sign noise from the global generator (broken on purpose)"

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (x + self.threat.eps * torch.randn_like(x).sign()).clamp(0, 1)


class OvershootAttack(Attack):
    name: ClassVar[str] = "toy-overshoot"
    description: ClassVar[str] = "test attack: a 2-eps sign step, never projected (broken on purpose)"
    norms: ClassVar[tuple[str, ...]] = ("linf",)

    def perturb(self, model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (x + 2 * self.threat.eps).clamp(0, 1)
