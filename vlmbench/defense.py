"""The defense plugin contract (entry-point group ``vlmbench.defenses``).

A defense acts at one or both of two points, by overriding the matching hook:

* **training time** — :meth:`Defense.adapt_model` returns a new :class:`~vlmbench.models.ClipModel`
  (e.g. adversarially fine-tuned weights). It may train; it must cache its result under
  ``context.cache_dir`` keyed by everything that determines it, so a second run reuses it.
* **test time** — :meth:`Defense.wrap` returns a module that maps pixels in [0,1] to logits around the
  (possibly adapted) classifier (e.g. a counterattack or purification before classification).
  A test-time defense declares whether its forward pass is random (``stochastic``; attacks then need
  EOT) and which of its steps are not differentiable (``non_differentiable``; each is written with
  :func:`vlmbench.adaptive.bpda` under its declared name, which the adaptive attack differentiates).

Defenses compose (``tecoa+ttc``): the training-time parts run in order, then the test-time wrappers
are applied in order.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.config import NoConfig, config_dict
from vlmbench.models import ClipModel


@dataclass(frozen=True)
class DefenseContext:
    """What a defense may use besides the model.

    Attributes:
        cache_dir: where to keep trained checkpoints (keyed by the defense's own hash).
        device: where to compute.
        seed: the run's base seed.
        data_root: root of real datasets (training sets for fine-tuning), if any.
        original: the model before any training-time defense ran (TTC's τ uses its encoder).
    """

    cache_dir: Path
    device: torch.device
    seed: int
    data_root: Path | None = None
    original: ClipModel | None = None


class Defense(ABC):
    """Base class of every defense.

    Class attributes:
        name: registry name.
        description: one line for ``vlmbench list defenses``.
        version: bump when a change alters results (the source fingerprint is recorded as well).
        Config: frozen dataclass of parameters, with the paper's defaults.
        stochastic: the test-time forward pass draws random numbers (from torch's global generator);
            adaptive attacks then average gradients over draws (EOT).
        non_differentiable: names of the test-time steps without a useful gradient (sign, threshold,
            argmax, rounding, ...). Contract: each declared name is computed through
            ``vlmbench.adaptive.bpda(exact, surrogate, name=NAME)`` in the module :meth:`wrap` returns,
            and every named BPDA step that module runs is declared; the step counts as run when its
            ``bpda`` wrapper is called, even if a gate then discards its output, so call it on every
            forward pass. :func:`vlmbench.adaptive.check_declared_steps` verifies this per cell.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = NoConfig
    stochastic: ClassVar[bool] = False
    non_differentiable: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def adapt_model(self, model: ClipModel, context: DefenseContext) -> ClipModel:
        """Training-time hook: the defended weights. Default: the model unchanged."""
        return model

    def wrap(self, classifier: ZeroShotClassifier, context: DefenseContext) -> torch.nn.Module:
        """Test-time hook: a module ``pixels (N,3,H,W) in [0,1] -> logits (N,C)``. Default: ``classifier``."""
        return classifier

    @classmethod
    def is_training_time(cls) -> bool:
        return cls.adapt_model is not Defense.adapt_model

    @classmethod
    def is_test_time(cls) -> bool:
        return cls.wrap is not Defense.wrap

    @classmethod
    def kind(cls) -> str:
        """``none``, ``training``, ``test-time`` or ``training+test-time`` (derived from the hooks)."""
        parts = [k for k, on in (("training", cls.is_training_time()), ("test-time", cls.is_test_time())) if on]
        return "+".join(parts) or "none"

    def params(self) -> dict[str, Any]:
        return config_dict(self.config)

    @classmethod
    def smoke_config(cls) -> Any:
        """The cheapest configuration that still runs every hook (contract tests use it; a training-time
        defense returns a budget of a few steps). Default: ``Config()``."""
        return cls.Config()
