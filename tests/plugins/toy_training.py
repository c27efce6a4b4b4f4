"""A deliberately simple training-time defense for composition tests (loaded with --plugin).

``toy-finetune``: scales the image tower's weights by a fixed factor — deterministic, instant, and it
changes the weights fingerprint like a real fine-tuning would. It caches nothing (``vlmbench check``'s
``training-cache`` must fail it).

``toy-cached-by-name``: the same change, cached under ``context.cache_dir`` in a folder named after the
defense only, so a changed ``scale`` silently reuses the old weights: the bug ``training-cache`` exists
to catch.
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


class ToyCachedByName(ToyFinetune):
    """``toy-finetune`` with a cache whose key forgets the config (deliberately wrong)."""

    name: ClassVar[str] = "toy-cached-by-name"
    description: ClassVar[str] = "broken test defense: caches its weights under its name only (config not in the key)"

    def adapt_model(self, model: ClipModel, context: DefenseContext) -> ClipModel:
        path = context.cache_dir / self.name / "visual.pt"
        if path.exists():
            module = copy.deepcopy(model.module)
            module.visual.load_state_dict(torch.load(path))
            return replace(model, module=module, fingerprint=parameter_fingerprint(module))
        adapted = super().adapt_model(model, context)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(adapted.module.visual.state_dict(), path)
        return adapted
