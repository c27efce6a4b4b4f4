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

A defense also declares where it comes from — its paper (``paper``), the authors' code (``code``) and
the figures the paper reports (``reported``) — which every result file records in its run metadata
(:meth:`Defense.declaration`) and :func:`check_declarations` validates when the defense is loaded.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import torch

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.config import NoConfig, config_dict
from vlmbench.errors import VlmbenchError
from vlmbench.models import ClipModel
from vlmbench.protocol import ReportedFigure

REPORTED_METRICS = ("robust", "clean")
REPORTED_NORMS = ("linf", "l2")


class DeclarationError(VlmbenchError):
    """A defense class declares a bad ``paper``, ``code`` or ``reported`` (one line, naming the defense)."""


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
        paper: URL of the paper (e.g. its arXiv abstract page); ``None`` for no paper.
        code: URL of the authors' code; ``None`` when none is public.
        reported: the figures the paper reports (:class:`~vlmbench.protocol.ReportedFigure`: value in
            percent, metric ``robust``/``clean``, dataset, attack, ε, norm ``linf``/``l2``, backbone, the
            paper's protocol in one line, and where in the paper). Recorded in every result file's run
            metadata, never in the protocol, so they do not change a cell's identity; leaderboards show
            them beside vlmbench's own figure. Declare only figures the paper (or the authors' README)
            gives; none rather than a guess.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "1"
    Config: ClassVar[type] = NoConfig
    stochastic: ClassVar[bool] = False
    non_differentiable: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str | None] = None
    code: ClassVar[str | None] = None
    reported: ClassVar[tuple[ReportedFigure, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Refuse a bad declaration where the class is defined: a ``--plugin`` source would otherwise skip
        # the class silently (the registry's check decides which plugin kind a value is).
        super().__init_subclass__(**kwargs)
        message = check_declarations(cls)
        if message:
            raise DeclarationError(f"defense {getattr(cls, 'name', cls.__name__)!r}: {message}")

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()

    def adapt_model(self, model: ClipModel, context: DefenseContext) -> ClipModel:
        """Training-time hook: the defended weights. Default: the model unchanged."""
        return model

    def is_cached(self, model: ClipModel, context: DefenseContext) -> bool:
        """Whether :meth:`adapt_model` would only load (no training) for ``model`` in ``context``.
        Default: true for a defense without a training-time hook, false (cannot tell) for one with
        it; the fine-tuning engine's defenses look their checkpoint up. The planner uses this so that
        ``vlmbench plan`` never trains."""
        return not self.is_training_time()

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
    def declaration(cls) -> dict[str, Any]:
        """What the defense declares, as each result file's run metadata records it
        (``defenses.NAME`` of ``vlmbench.run``): kind, randomness, BPDA steps, paper, code and the
        paper's reported figures."""
        return {
            "kind": cls.kind(),
            "stochastic": bool(cls.stochastic),
            "non_differentiable": list(cls.non_differentiable),
            "paper": cls.paper,
            "code": cls.code,
            "reported": [asdict(figure) for figure in cls.reported],
        }

    @classmethod
    def smoke_config(cls) -> Any:
        """The cheapest configuration that still runs every hook (contract tests use it; a training-time
        defense returns a budget of a few steps). Default: ``Config()``."""
        return cls.Config()


def _url_problem(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"is {value!r}, expected None or an http(s) URL"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in value):
        return f"is {value!r}, expected None or an http(s) URL"
    return None


def _figure_problem(figure: Any) -> str | None:
    if not isinstance(figure, ReportedFigure):
        return f"is {figure!r}, expected a vlmbench.protocol.ReportedFigure"
    value = figure.value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 100:
        return f"has value {value!r}, expected a finite percentage in [0, 100]"
    if figure.metric not in REPORTED_METRICS:
        return f"has metric {figure.metric!r}, expected one of {', '.join(REPORTED_METRICS)}"
    if figure.norm not in REPORTED_NORMS:
        return f"has norm {figure.norm!r}, expected one of {', '.join(REPORTED_NORMS)}"
    for field_ in fields(ReportedFigure):
        text = getattr(figure, field_.name)
        if field_.name != "value" and (not isinstance(text, str) or not text.strip() or "\n" in text):
            return f"has {field_.name} {text!r}, expected a non-empty one-line string"
    return None


def check_declarations(cls: Any) -> str | None:
    """What is wrong with a defense class's ``paper``, ``code`` and ``reported`` declarations, in one
    line, or ``None``: ``paper``/``code`` are ``None`` or an http(s) URL, ``reported`` a tuple of
    :class:`~vlmbench.protocol.ReportedFigure` with a finite value in [0, 100], metric ``robust`` or
    ``clean``, norm ``linf`` or ``l2`` and non-empty one-line text fields."""
    for attr in ("paper", "code"):
        problem = _url_problem(getattr(cls, attr, None))
        if problem:
            return f"{attr} {problem}"
    reported = getattr(cls, "reported", ())
    if not isinstance(reported, tuple):
        return f"reported is {type(reported).__name__}, expected a tuple of ReportedFigure"
    for i, figure in enumerate(reported):
        problem = _figure_problem(figure)
        if problem:
            return f"reported[{i}] {problem}"
    return None
