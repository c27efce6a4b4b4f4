"""SCC — self-calibrated consistency (Liu et al., arXiv 2510.22785, ICML 2026), re-implemented.

A re-implementation from the procedure assembled in docs/provenance.md#scc (paper summary,
project page and reviews; the authors' code was not available), not the authors' code. Per image
``x_a`` in [0,1], classifier logits ``z``, unit class-text embeddings ``t_k``::

    1. warm-up:       x_w = x_a + Δ_TTC(x_a)                      (TTC, τ-gated, see defenses/ttc.py)
    2. pseudo-label:  ŷ = argmax_k z_k(x_w)
    3. soft prototype: q̄ = (1/V) Σ_i softmax z(v_i(x_w));  q_k ∝ q̄_k^{1/T};  t_soft = Σ_k q_k t_k
    4. margin ascent of a corrective δ (start: the warm-up's Δ), S steps:
         L(δ) = cos(f(x_a+δ), t_soft) − max_{k≠ŷ} cos(f(x_a+δ), t_k)
         δ ← Π( δ + α · sign ∇_δ L )                              (‖δ‖∞ ≤ ε, x_a + δ ∈ [0,1])
    5. multi-view logit averaging with the one shared δ:
         logits = (1/V) Σ_j z(u_j(x_a + δ))

Views ``v_i`` / ``u_j``: ``v_0`` the image itself, ``v_1`` its horizontal flip, the others the image plus
N(0, σ²) noise (clipped to [0,1]); the noise of step 3 and of step 5 are independent draws.

Unspecified by the paper (defaults chosen here, all in :class:`SCCConfig`): the warm-up is TTC with its
defaults (SCC builds on TTC's code); V = 4 views for both steps 3 and 5, σ = 0.01, T = 0.5; ε = 4/255, S = 2,
α = 1/255 for the corrective perturbation (TTC's counterattack budget); δ starts at the warm-up's Δ so
that SCC refines TTC; the margin is unweighted (the paper's "confidence weighting" is unknown).

Adaptive attack (docs/defenses.md#scc): random (δ₀ of the warm-up, the noise views) → ``stochastic``
(EOT). One declared non-differentiable step, ``correction``: ``x ↦ x + δ(x)`` (steps 1–4: the warm-up's
sign steps and τ gate, the pseudo-label argmax, the margin's sign steps) is written with ``bpda`` and the
identity surrogate — δ is computed without a graph and added as a constant. The view averaging of step 5
is differentiated exactly (flip and noise are differentiable). Defense-aware objective: TTC's τ term for
the warm-up (``tau_loss_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from vlmbench.adaptive import bpda
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.defense import Defense, DefenseContext
from vlmbench.defenses.ttc import Counterattacker, TTCConfig, tau_model
from vlmbench.protocol import ReportedFigure


@dataclass(frozen=True)
class SCCConfig:
    """Attributes:
    warmup_eps, warmup_steps, warmup_step_size, tau_threshold, beta, tau_encoder: the TTC warm-up.
    views: V, views of steps 3 and 5 (≥ 1: the image; 2: + flip; more: + noise views).
    noise_std: σ of the noise views ([0,1] pixels).
    temperature: T < 1 sharpens the averaged view probabilities.
    eps, steps, step_size: ℓ∞ radius, steps S and step α of the corrective margin ascent.
    tau_loss_weight, tau_margin: the defense-aware adaptive objective of the warm-up (see TTC).
    """

    warmup_eps: float = 4 / 255
    warmup_steps: int = 2
    warmup_step_size: float = 1 / 255
    tau_threshold: float = 0.2
    beta: float = 2.0
    tau_encoder: str = "original"
    views: int = 4
    noise_std: float = 0.01
    temperature: float = 0.5
    eps: float = 4 / 255
    steps: int = 2
    step_size: float = 1 / 255
    tau_loss_weight: float = 0.0
    tau_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ValueError(f"views must be ≥ 1, got {self.views}")
        if not 0 < self.temperature:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def warmup(self) -> TTCConfig:
        return TTCConfig(self.warmup_eps, self.warmup_steps, self.warmup_step_size, self.tau_threshold, self.beta,
                         self.tau_encoder, self.tau_loss_weight, self.tau_margin)


def views(x: torch.Tensor, n: int, noise_std: float) -> torch.Tensor:
    """``(n·N,3,H,W)``: the images, their horizontal flips, then noisy copies (global generator); differentiable."""
    out = [x, x.flip(-1)][:n]
    out += [(x + noise_std * torch.randn_like(x)).clamp(0, 1) for _ in range(n - len(out))]
    return torch.cat(out)


def view_average(logits: torch.Tensor, n: int) -> torch.Tensor:
    """Mean over ``n`` views of logits stacked view-major ``(n·N, C)`` → ``(N, C)``."""
    return logits.view(n, -1, logits.shape[-1]).mean(dim=0)


def soft_prototype(probabilities: torch.Tensor, class_embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Unit ``t_soft`` ``(N,D)`` from mean view probabilities ``(N,C)`` sharpened with temperature T."""
    sharpened = F.normalize(probabilities.pow(1 / temperature), p=1, dim=1)
    return F.normalize(sharpened @ class_embeddings, dim=1)


def margin(features: torch.Tensor, prototype: torch.Tensor, class_embeddings: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    """``cos(f, t_soft) − max_{k≠ŷ} cos(f, t_k)`` per image."""
    unit = F.normalize(features, dim=1)
    cos = unit @ class_embeddings.T
    others = cos.scatter(1, pseudo[:, None], float("-inf")).amax(dim=1)
    return (unit * prototype).sum(dim=1) - others


class SCCModule(torch.nn.Module):
    """Pixels (N,3,H,W) in [0,1] → logits (N,C): view-averaged logits at ``x + δ``; random.

    Works under ``torch.no_grad()`` (inner optimisations re-enable gradients).
    """

    def __init__(self, counter: Counterattacker, config: SCCConfig) -> None:
        super().__init__()
        self.counter = counter
        self.classifier = counter.classifier
        self.config = config
        if config.tau_loss_weight > 0:
            self.forward_with_objective = self._forward_with_objective

    def correction(self, x: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        """δ for images ``x`` and the warm-up's draw δ₀ (steps 1–4), without graph."""
        c, classifier = self.config, self.classifier
        x = x.detach()
        warm, _ = self.counter.perturbation(x, delta0)
        with torch.no_grad():
            view_logits = classifier(views(x + warm, c.views, c.noise_std))
            pseudo = view_logits[: len(x)].argmax(dim=1)  # view 0 is the warm-up image itself
            mean_probs = view_average(view_logits.softmax(dim=1), c.views)
            prototype = soft_prototype(mean_probs, classifier.class_embeddings, c.temperature)
        delta = warm
        with torch.enable_grad():
            for _ in range(c.steps):
                delta = delta.clone().requires_grad_(True)
                objective = margin(classifier.encode_image(x + delta), prototype, classifier.class_embeddings, pseudo)
                (grad,) = torch.autograd.grad(objective.sum(), delta)
                delta = (delta.detach() + c.step_size * grad.sign()).clamp(-c.eps, c.eps)
                delta = (x + delta).clamp(0, 1) - x
        return delta.detach()

    def corrected(self, x: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        """``x + δ(x)``: the BPDA step ``correction`` (identity backward through steps 1–4)."""
        return bpda(lambda v: v + self.correction(v, delta0), name="correction")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._averaged(self.corrected(x, self.counter.draw(x)))

    def _averaged(self, x: torch.Tensor) -> torch.Tensor:
        return view_average(self.classifier(views(x, self.config.views, self.config.noise_std)), self.config.views)

    def _forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta0 = self.counter.draw(x)
        return self._averaged(self.corrected(x, delta0)), self.counter.tau_objective(x, delta0)


class SCC(Defense):
    """Self-calibrated consistency (test time), re-implemented; see the module docstring."""

    name: ClassVar[str] = "scc"
    description: ClassVar[str] = "SCC: TTC warm-up, soft-prototype margin correction, multi-view averaging (Liu et al. 2025)"
    Config: ClassVar[type] = SCCConfig
    stochastic: ClassVar[bool] = True
    non_differentiable: ClassVar[tuple[str, ...]] = ("correction",)
    paper: ClassVar[str | None] = "https://arxiv.org/abs/2510.22785"
    code: ClassVar[str | None] = None  # announced at github.com/JXLiu-AI/SCC, not public when this was declared
    reported: ClassVar[tuple[ReportedFigure, ...]] = (
        ReportedFigure(
            value=51.68, metric="robust", dataset="mean of 16", attack="PGD-10",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol="oblivious: PGD-10 (step 1/255) on plain CLIP, then SCC; TTC's 16 datasets and loaders",
            source=(
                "Table 1 of Liu et al., arXiv 2510.22785 (ICML 2026), as shown on the project page github.com/JXLiu-"
                "AI/scc-page"
            ),
        ),
        ReportedFigure(
            value=60.21, metric="clean", dataset="mean of 16", attack="PGD-10",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol="oblivious: PGD-10 (step 1/255) on plain CLIP, then SCC; TTC's 16 datasets and loaders",
            source=(
                "Table 1 of Liu et al., arXiv 2510.22785 (ICML 2026), as shown on the project page github.com/JXLiu-"
                "AI/scc-page"
            ),
        ),
    )

    def wrap(self, classifier: ZeroShotClassifier, context: DefenseContext) -> torch.nn.Module:
        warmup = self.config.warmup()
        return SCCModule(Counterattacker(classifier, tau_model(warmup, classifier, context), warmup), self.config)
