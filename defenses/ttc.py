"""TTC — test-time counterattacks (Xing, Zhao, Sebe, "CLIP is Strong Enough to Fight Back", CVPR 2025).

A re-implementation from the procedure in the authors' code (docs/provenance.md#ttc; read from their
``code/test_time_counterattack.py``), not the authors' code. Per image ``x`` in [0,1], with ``f`` the
image encoder (un-normalised output) of the evaluated model and ``f_τ`` the encoder used for τ::

    δ₀ ~ U(−ε_c, ε_c)^d, clipped so that x + δ₀ ∈ [0,1]                       (one random draw)
    τ  = ‖f_τ(x + δ₀) − f_τ(x)‖₂ / ‖f_τ(x)‖₂                                  (sensitivity to noise)
    for n = 1..N:  δ_n = Π( δ_{n−1} + α_c · sign ∇_δ ‖f(x + δ) − f(x)‖₂² )    (push f away from itself)
    if τ ≤ τ_th:   Δ = Σ_{n=0..N} w_n δ_n,  w_n = e^{βn} / Σ_m e^{βm}         ("falsely stable": attacked)
    else:          Δ = δ₀                                                      (clean: keep only the noise)
    logits = classifier(x + Δ)

``Π`` projects onto ‖δ‖∞ ≤ ε_c and x + δ ∈ [0,1]; ``x + Δ`` is a convex combination of points of that
set, so it stays in it. Defaults are the paper's (TTC.sh): ε_c = 4/255, N = 2, α_c = 1/255, τ_th = 0.2,
β = 2 (weights 0.016, 0.117, 0.867). Stacked on a fine-tuned model, ``f_τ`` is the *original* encoder
(``DefenseContext.original``), as in the authors' code; ``tau_encoder="defended"`` uses the evaluated one.

Adaptive attack (docs/defenses.md#ttc): the forward pass is random (δ₀) → ``stochastic`` (EOT).
One declared non-differentiable step, ``counterattack``: ``x ↦ x + Δ(x)`` — the sign steps and the τ gate
— is written with ``bpda`` and the identity surrogate: Δ is computed without a graph and the attacker
differentiates the classifier at ``x + Δ`` (the unrolled loop's exact derivative through ``sign`` is
zero almost everywhere; the gate has none). The gradient follows the branch taken, and the defense-aware
objective (``forward_with_objective``) ``λ · min(τ(x) − τ_th − m, 0)``, differentiable in ``x`` for the
drawn δ₀, pushes τ above the threshold so the attacked image is routed to the noise-only branch
(``tau_loss_weight`` λ > 0 enables it).
Unspecified by the paper (defaults chosen here): λ = 0, margin m = 0.05 — the term is off by default
because on the embedded world it made the adaptive attack weaker, not stronger (docs/defenses.md#ttc:
clean τ there is mostly below τ_th, so the noise-only branch is out of reach and the term only pulls
the attack away from the cross-entropy). The adaptive track starts from the oblivious attack's result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmbench.adaptive import bpda
from vlmbench.classifier import ZeroShotClassifier, resize_and_normalize
from vlmbench.defense import Defense, DefenseContext
from vlmbench.errors import VlmbenchError
from vlmbench.models import ClipModel
from vlmbench.protocol import ReportedFigure

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TTCConfig:
    """Attributes:
    eps: counterattack radius ε_c (ℓ∞, [0,1] pixels).
    steps: counterattack steps N.
    step_size: counterattack step α_c.
    tau_threshold: τ_th; inputs with τ ≤ τ_th are counterattacked.
    beta: β of the exponential step weights.
    tau_encoder: ``original`` (the model before training-time defenses, as the paper) or ``defended``.
    tau_loss_weight: λ of the defense-aware adaptive objective (0: no defense-aware term).
    tau_margin: the objective stops rewarding τ once τ ≥ τ_th + margin.
    """

    eps: float = 4 / 255
    steps: int = 2
    step_size: float = 1 / 255
    tau_threshold: float = 0.2
    beta: float = 2.0
    tau_encoder: str = "original"
    tau_loss_weight: float = 0.0
    tau_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.tau_encoder not in ("original", "defended"):
            raise ValueError(f"tau_encoder must be 'original' or 'defended', got {self.tau_encoder!r}")
        if self.steps < 0 or self.eps < 0 or self.step_size < 0:
            raise ValueError("eps, steps and step_size must be ≥ 0")


def step_weights(steps: int, beta: float) -> torch.Tensor:
    """``w_n = e^{βn} / Σ_{m=0..N} e^{βm}`` for n = 0..N (later counterattack steps weigh more)."""
    return torch.softmax(beta * torch.arange(steps + 1, dtype=torch.float64), dim=0).float()


def random_draw(x: torch.Tensor, eps: float) -> torch.Tensor:
    """δ₀ ~ U(−ε, ε) from torch's global generator, clipped so that ``x + δ₀`` ∈ [0,1]."""
    delta = (torch.rand_like(x) * 2 - 1) * eps
    return (x + delta).clamp(0, 1) - x


def sensitivity(encode: Encoder, x: torch.Tensor, delta0: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """τ per image ``(N,)``: ``‖f(x+δ₀) − f(x)‖₂ / ‖f(x)‖₂``; differentiable in ``x`` (``reference`` = f(x) if known)."""
    clean = encode(x) if reference is None else reference
    return (encode(x + delta0) - clean).norm(dim=1) / clean.norm(dim=1)


def counterattack(encode: Encoder, x: torch.Tensor, delta0: torch.Tensor, reference: torch.Tensor,
                  eps: float, steps: int, step_size: float) -> list[torch.Tensor]:
    """``[δ₀, δ₁, …, δ_N]``: sign-gradient ascent of ``‖f(x+δ) − f(x)‖₂²`` from δ₀ (no graph kept).

    ``x``, ``delta0``, ``reference`` (= f(x)) are treated as constants; gradients are enabled inside, so
    this works when the caller runs under ``torch.no_grad()``.
    """
    x, reference = x.detach(), reference.detach()
    deltas = [delta0.detach()]
    delta = deltas[0]
    with torch.enable_grad():
        for _ in range(steps):
            delta = delta.clone().requires_grad_(True)
            loss = (encode(x + delta) - reference).pow(2).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
            deltas.append(delta)
    return deltas


def gated_perturbation(deltas: list[torch.Tensor], tau: torch.Tensor, tau_threshold: float, beta: float) -> torch.Tensor:
    """Δ per image: the weighted counterattack where ``τ ≤ τ_th``, else the random draw δ₀."""
    weights = step_weights(len(deltas) - 1, beta).to(deltas[0].device)
    combined = sum(w * d for w, d in zip(weights, deltas))
    attacked = (tau <= tau_threshold).view(-1, *([1] * (deltas[0].dim() - 1)))
    return torch.where(attacked, combined, deltas[0])


class Counterattacker(torch.nn.Module):
    """TTC's procedure as a module (also SCC's warm-up): computes Δ and τ; holds the τ encoder.

    ``tau_model`` (None: the classifier's own encoder) is registered as a submodule so that cost
    accounting sees its passes.
    """

    def __init__(self, classifier: ZeroShotClassifier, tau_model: ClipModel | None, config: TTCConfig) -> None:
        super().__init__()
        if not isinstance(classifier, ZeroShotClassifier):
            raise VlmbenchError("a counterattack defense needs the zero-shot classifier itself: put it first among the test-time defenses")
        self.classifier = classifier
        self.config = config
        self.tau_module = tau_model.module if tau_model is not None else None
        self.tau_preprocess = tau_model.preprocess if tau_model is not None else None

    def encode_tau(self, x: torch.Tensor) -> torch.Tensor:
        if self.tau_module is None:
            return self.classifier.encode_image(x)
        return self.tau_module.encode_image(resize_and_normalize(x, self.tau_preprocess))

    def draw(self, x: torch.Tensor) -> torch.Tensor:
        """δ₀ for images ``x`` (global generator; no graph)."""
        with torch.no_grad():
            return random_draw(x.detach(), self.config.eps)

    def perturbation(self, x: torch.Tensor, delta0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Δ, τ)`` for images ``x`` and their draw δ₀, both without graph (Δ is a constant to an attacker)."""
        c = self.config
        x = x.detach()
        with torch.no_grad():
            reference = self.classifier.encode_image(x)
            if self.tau_module is None:
                tau = sensitivity(self.encode_tau, x, delta0, reference)
            else:
                tau = sensitivity(self.encode_tau, x, delta0)
        deltas = counterattack(self.classifier.encode_image, x, delta0, reference, c.eps, c.steps, c.step_size)
        return gated_perturbation(deltas, tau, c.tau_threshold, c.beta), tau

    def counterattacked(self, x: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        """``x + Δ(x)``: the BPDA step ``counterattack`` (identity backward through the sign steps and the gate)."""
        return bpda(lambda v: v + self.perturbation(v, delta0)[0], name="counterattack")(x)

    def tau_objective(self, x: torch.Tensor, delta0: torch.Tensor) -> torch.Tensor:
        """``λ · min(τ(x) − τ_th − m, 0)`` per image, differentiable in ``x`` (δ₀ fixed)."""
        c = self.config
        tau = sensitivity(self.encode_tau, x, delta0)
        return c.tau_loss_weight * (tau - c.tau_threshold - c.tau_margin).clamp(max=0)


class TTCModule(torch.nn.Module):
    """Pixels (N,3,H,W) in [0,1] → logits (N,C) of ``classifier(x + Δ)``; random (δ₀).

    Works under ``torch.no_grad()`` (the counterattack re-enables gradients internally). With
    ``tau_loss_weight > 0`` it offers ``forward_with_objective`` (the defense-aware adaptive loss).
    """

    def __init__(self, counter: Counterattacker) -> None:
        super().__init__()
        self.counter = counter
        if counter.config.tau_loss_weight > 0:
            self.forward_with_objective = self._forward_with_objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.counter.classifier(self.counter.counterattacked(x, self.counter.draw(x)))

    def _forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta0 = self.counter.draw(x)
        return self.counter.classifier(self.counter.counterattacked(x, delta0)), self.counter.tau_objective(x, delta0)


def tau_model(config: TTCConfig, classifier: ZeroShotClassifier, context: DefenseContext) -> ClipModel | None:
    """The model whose encoder measures τ, or None for the classifier's own encoder."""
    if config.tau_encoder == "defended" or context.original is None:
        return None
    if context.original.fingerprint == classifier.model.fingerprint:
        return None  # no training-time defense ran: the same encoder, computed once
    return context.original


class TTC(Defense):
    """Test-time counterattacks (CVPR 2025), re-implemented; see the module docstring."""

    name: ClassVar[str] = "ttc"
    description: ClassVar[str] = "TTC test-time counterattack with tau gating (Xing et al., CVPR 2025)"
    Config: ClassVar[type] = TTCConfig
    stochastic: ClassVar[bool] = True
    non_differentiable: ClassVar[tuple[str, ...]] = ("counterattack",)
    paper: ClassVar[str | None] = "https://arxiv.org/abs/2503.03613"
    code: ClassVar[str | None] = "https://github.com/Sxing2/CLIP-Test-time-Counterattacks"
    reported: ClassVar[tuple[ReportedFigure, ...]] = (
        ReportedFigure(
            value=39.17, metric="robust", dataset="mean of 16", attack="PGD-10",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "oblivious: PGD-10 (step 1/255, CE) on plain CLIP, then the counterattack; full test splits of TTC's 16"
                " datasets, resized to 224 before the attack"
            ),
            source=(
                "Table 1 of the SCC paper (Liu et al., arXiv 2510.22785; project page github.com/JXLiu-AI/scc-page), "
                "TTC row, re-reporting Xing et al., CVPR 2025"
            ),
        ),
        ReportedFigure(
            value=59.75, metric="clean", dataset="mean of 16", attack="PGD-10",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "oblivious: PGD-10 (step 1/255, CE) on plain CLIP, then the counterattack; full test splits of TTC's 16"
                " datasets, resized to 224 before the attack"
            ),
            source=(
                "Table 1 of the SCC paper (Liu et al., arXiv 2510.22785; project page github.com/JXLiu-AI/scc-page), "
                "TTC row, re-reporting Xing et al., CVPR 2025"
            ),
        ),
        ReportedFigure(
            value=21.22, metric="robust", dataset="mean of 16", attack="PGD-10",
            eps_label="4/255", norm="linf", model="ViT-B-32:openai",
            protocol="oblivious: PGD-10 at ε=4/255 on plain CLIP, then the counterattack; TTC's 16 datasets",
            source=(
                "ε=4/255 table of DOC (Diversifying counterattacks, AAAI 2026; github.com/bookman233/DOC), TTC row, re-"
                "reporting Xing et al., CVPR 2025"
            ),
        ),
        ReportedFigure(
            value=55.63, metric="clean", dataset="mean of 16", attack="PGD-10",
            eps_label="4/255", norm="linf", model="ViT-B-32:openai",
            protocol="oblivious: PGD-10 at ε=4/255 on plain CLIP, then the counterattack; TTC's 16 datasets",
            source=(
                "ε=4/255 table of DOC (Diversifying counterattacks, AAAI 2026; github.com/bookman233/DOC), TTC row, re-"
                "reporting Xing et al., CVPR 2025"
            ),
        ),
    )

    def wrap(self, classifier: ZeroShotClassifier, context: DefenseContext) -> torch.nn.Module:
        return TTCModule(Counterattacker(classifier, tau_model(self.config, classifier, context), self.config))
