"""The empty attack: returns the clean images, for clean-accuracy-only runs (``--attack none``)."""

from __future__ import annotations

from typing import ClassVar

import torch

from vlmbench.attack import Attack, Model


class NoAttack(Attack):
    """Identity: ``x_adv = x``. Robust accuracy equals clean accuracy by construction."""

    name: ClassVar[str] = "none"
    description: ClassVar[str] = "no attack: clean accuracy only"
    default_steps: ClassVar[int] = 0

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x.clone()
