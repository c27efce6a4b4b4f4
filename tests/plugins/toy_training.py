"""A deliberately simple training-time defense for composition tests (loaded with --plugin).

``toy-finetune``: scales the image tower's weights by a fixed factor — deterministic, instant, and it
changes the weights fingerprint like a real fine-tuning would.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from vlmbench.defense import Defense, DefenseContext
from vlmbench.models import ClipModel, parameter_fingerprint


@dataclass(frozen=True)
class FinetuneConfig:
    """Attributes: scale: factor applied to every parameter of the image tower."""

    scale: float = 1.05


class ToyFinetune(Defense):
    """Returns a copy of the model whose image-tower parameters are multiplied by ``scale``."""

    name: ClassVar[str] = "toy-finetune"
    description: ClassVar[str] = "test defense: deterministic weight change of the image tower (training time)"
    Config: ClassVar[type] = FinetuneConfig

    def adapt_model(self, model: ClipModel, context: DefenseContext) -> ClipModel:
        module = copy.deepcopy(model.module)
        with torch.no_grad():
            for parameter in module.visual.parameters():
                parameter.mul_(self.config.scale)
        return replace(model, module=module, fingerprint=parameter_fingerprint(module))
