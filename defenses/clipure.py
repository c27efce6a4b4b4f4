"""CLIPure-Cos — purification in CLIP's latent space (Zhang et al., ICLR 2025), re-implemented.

A re-implementation from the procedure in the authors' code (docs/provenance.md#clipure; read from their
``CLIP_eval/CLIPure_Cos.py``), not the authors' code. With ``b`` the blank-template embedding (the mean
of the unit text embeddings of every prompt template with an empty class name, "a photo of a .")::

    u = f(x) / ‖f(x)‖,  m = 0
    repeat K times:
        g   = ∇_u [ −cos(u, b) ]            (autograd without create_graph: a constant to an attacker)
        g_u = ‖u‖ · g
        m   = γ·m − (1−γ) · g_u / ‖g_u‖₂
        u   = (u + η·m) / ‖u + η·m‖
    logits = s · ⟨u, t_k⟩

Defaults are the released code's: K = 10, η = 30, γ = 0. The templates are those the classifier's class
embeddings were built from (the released script uses ImageNet's 80 templates for both). CLIPure-Diff
(a DALL·E-2 diffusion prior instead of the cosine) is not included: it needs a prior for the backbone.

Known problem (docs/provenance.md#clipure-no-op, checked by the tests and by :meth:`CLIPureCosModule.sanity_checks`): each
step rotates u by atan(η) ≈ 88.1° towards b in the plane (u, b); when the angle to b is smaller, it
overshoots and the next step rotates back, so after an even number of steps u = f(x)/‖f(x)‖ — the
plain classifier's prediction — while the exact input gradient shrinks by ≈ ‖u + η·m‖ ≈ 30 per step
(≈ 1e-15 after 10). The per-cell checks report ``undefended-agreement`` and ``vanishing-gradients``.

Adaptive attack (docs/defenses.md#clipure-cos): ``purification`` is declared non-differentiable and
written with ``bpda``: forward exact, backward the identity in embedding space (``backward="bpda"``, the
default). ``backward="exact"`` runs the same step under :func:`vlmbench.adaptive.exact_gradients`: the
released code's gradient (through the renormalisations only). Deterministic: no EOT needed.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmbench.adaptive import bpda, exact_gradients
from vlmbench.classifier import ZeroShotClassifier, class_text_embeddings
from vlmbench.defense import Defense, DefenseContext
from vlmbench.errors import VlmbenchError
from vlmbench.flags import AGREEMENT_THRESHOLD, VANISHING_RATIO
from vlmbench.protocol import ReportedFigure


@dataclass(frozen=True)
class CLIPureCosConfig:
    """Attributes:
    steps: purification steps K.
    step_size: η, on the unit sphere along a unit direction.
    momentum: γ.
    backward: ``bpda`` (identity through the purification, the adaptive recipe) or ``exact``.
    """

    steps: int = 10
    step_size: float = 30.0
    momentum: float = 0.0
    backward: str = "bpda"

    def __post_init__(self) -> None:
        if self.backward not in ("bpda", "exact"):
            raise ValueError(f"backward must be 'bpda' or 'exact', got {self.backward!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be ≥ 0, got {self.steps}")


def purify(u: torch.Tensor, blank: torch.Tensor, steps: int, step_size: float, momentum: float) -> torch.Tensor:
    """The purification loop on unit embeddings ``u`` ``(N,D)`` towards ``blank`` ``(D,)``.

    The update direction is computed without a graph; gradients (if ``u`` has any) flow only through
    the renormalisations, as in the released code.
    """
    m = torch.zeros_like(u)
    for _ in range(steps):
        with torch.enable_grad():
            v = u.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(-F.cosine_similarity(v, blank[None], dim=1).sum(), v)
        g_u = u.detach().norm(dim=1, keepdim=True) * g
        m = momentum * m - (1 - momentum) * F.normalize(g_u, dim=1)
        u = F.normalize(u + step_size * m, dim=1)
    return u


class CLIPureCosModule(torch.nn.Module):
    """Pixels (N,3,H,W) in [0,1] → logits (N,C) of the purified embedding; deterministic."""

    def __init__(self, classifier: ZeroShotClassifier, blank: torch.Tensor, config: CLIPureCosConfig) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("blank", blank)
        self.config = config

    def _purify(self, u: torch.Tensor) -> torch.Tensor:
        c = self.config
        return purify(u, self.blank, c.steps, c.step_size, c.momentum)

    def logits(self, x: torch.Tensor, backward: str) -> torch.Tensor:
        """Logits ``(N,C)``; the purification's gradient is the identity (``bpda``) or the exact one (``exact``)."""
        u = F.normalize(self.classifier.encode_image(x), dim=1)
        with exact_gradients() if backward == "exact" else nullcontext():
            purified = bpda(self._purify, name="purification")(u)
        return self.classifier.logits_from_features(purified)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x, self.config.backward)

    def sanity_checks(self, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        """Two checks of the analysis in docs/provenance.md#clipure-no-op, on clean images: agreement with the plain classifier, and the
        fraction of images whose exact input gradient is vanishing relative to the plain classifier's."""
        with torch.no_grad():
            agreement = float((self(x).argmax(1) == self.classifier(x).argmax(1)).float().mean())
        norms = []
        for model in (lambda v: self.logits(v, "exact"), self.classifier):
            v = x.detach().clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(v), y, reduction="sum"), v)
            norms.append(grad.flatten(1).norm(dim=1))
        vanishing = float((norms[0] <= VANISHING_RATIO * norms[1]).float().mean())
        found = []
        if agreement >= AGREEMENT_THRESHOLD:
            found.append(f"undefended-agreement={agreement:.2f}")
        if vanishing > 0:
            found.append(f"vanishing-gradients={vanishing:.2f}")
        return found


def blank_embedding(classifier: ZeroShotClassifier) -> torch.Tensor:
    """Unit mean of the unit text embeddings of the classifier's templates filled with an empty name."""
    if not classifier.templates:
        raise VlmbenchError("clipure_cos needs the prompt templates of the classifier (ZeroShotClassifier.build)")
    return class_text_embeddings(classifier.model, [""], classifier.templates)[0].float()


class CLIPureCos(Defense):
    """CLIPure-Cos latent-space purification, re-implemented; see the module docstring."""

    name: ClassVar[str] = "clipure_cos"
    description: ClassVar[str] = "CLIPure-Cos: latent purification toward the blank template (Zhang et al., ICLR 2025)"
    Config: ClassVar[type] = CLIPureCosConfig
    non_differentiable: ClassVar[tuple[str, ...]] = ("purification",)
    paper: ClassVar[str | None] = "https://arxiv.org/abs/2502.18176"
    code: ClassVar[str | None] = "https://github.com/TMLResearchGroup-CAS/CLIPure"
    reported: ClassVar[tuple[ReportedFigure, ...]] = (
        ReportedFigure(
            value=72.6, metric="robust", dataset="imagenet", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="4/255", norm="linf", model="ViT-L-14:openai",
            protocol=(
                "attack through the purification, 1000 test images; the abstract names neither the variant (Cos or "
                "Diff), ε nor backbone: 4/255 and ViT-L/14 are the released code's defaults"
            ),
            source="abstract of Zhang et al., ICLR 2025 (arXiv 2502.18176)",
        ),
        ReportedFigure(
            value=91.1, metric="robust", dataset="cifar10", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="4/255", norm="linf", model="ViT-L-14:openai",
            protocol=(
                "attack through the purification, 1000 test images; the abstract names neither the variant (Cos or "
                "Diff), ε nor backbone: 4/255 and ViT-L/14 are the released code's defaults"
            ),
            source="abstract of Zhang et al., ICLR 2025 (arXiv 2502.18176)",
        ),
    )

    def wrap(self, classifier: ZeroShotClassifier, context: DefenseContext) -> torch.nn.Module:
        if not isinstance(classifier, ZeroShotClassifier):
            raise VlmbenchError("clipure_cos needs the zero-shot classifier itself: put it first among the test-time defenses")
        return CLIPureCosModule(classifier, blank_embedding(classifier).to(classifier.class_embeddings.device), self.config)
