"""A deliberately broken attack for testing the sanity flags (loaded with --plugin).

``toy-shy`` runs PGD only when ε ≤ 1/255 and returns the clean images for any larger ε, so robust
accuracy *rises* with ε: exactly what the ``eps-not-monotone`` flag must catch.
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
