"""Random noise in the ε-ball: the baseline every gradient attack must beat (Carlini et al. 2019, §5.2).

Algorithm (``noise-N``: N draws per image, no gradient)::

    for draw in 1..N:                                   on the images not yet misclassified
        δ ← ε · s,  s ∈ {−1, +1}^d uniform                (ℓ∞: a random vertex of the box)
        δ ← ε · u / ‖u‖₂,  u ~ N(0, I)                    (ℓ2: a random point of the sphere)
        x' ← clip(x + δ, 0, 1)
        keep x' for the images it misclassifies (targeted: classifies as the target)
    return x' (the last draw for images no draw fooled)

The draws sit on the boundary of the ball, where noise is strongest; a uniform draw inside the box
barely moves a classifier. Randomness comes only from the generator the runner gives. A white-box attack
that leaves more images correct than this attack is not working (``vlmbench check``: ``whitebox-vs-noise``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from vlmbench.attack import Attack, Model


class RandomNoise(Attack):
    """N random draws on the boundary of the ε-ball, keeping the first that fools the model."""

    name: ClassVar[str] = "noise"
    description: ClassVar[str] = "random noise on the eps-ball's boundary, N draws (the baseline a gradient attack must beat)"
    default_steps: ClassVar[int] = 10
    honours: ClassVar[frozenset[str]] = frozenset({"targeted"})

    def estimated_passes(self, num_classes: int) -> tuple[float, float]:
        """At most N forward draws per image, no backward."""
        return float(self.threat.steps), 0.0

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                target: torch.Tensor | None = None) -> torch.Tensor:
        x_adv = x.clone()
        pending = torch.ones(len(x), dtype=torch.bool, device=x.device)
        eps = self.threat.eps
        for _ in range(self.threat.steps):
            index = pending.nonzero().squeeze(1)
            if len(index) == 0:
                break
            shape = x[index].shape
            if self.threat.norm == "linf":
                signs = torch.randint(0, 2, shape, generator=generator, device=x.device, dtype=torch.int64)
                delta = eps * (2 * signs.to(x.dtype) - 1)
            else:
                u = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
                delta = eps * u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (u.dim() - 1)))
            candidate = (x[index] + delta).clamp(0, 1)
            with torch.no_grad():
                predicted = model(candidate).argmax(dim=1)
            fooled = predicted == target[index] if target is not None else predicted != y[index]
            x_adv[index] = candidate
            pending[index[fooled]] = False
        return x_adv
