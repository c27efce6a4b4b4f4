"""FARE: unsupervised adversarial fine-tuning of the image embedding (Schlarmann et al., ICML 2024,
arXiv 2402.12336).

Re-implementation from the paper and ``chs20/RobustVLM`` (docs/provenance.md#fare), not the authors' code::

    x_adv = argmax_{‖δ‖∞ ≤ ε} ‖f_θ(x + δ) − f_θ0(x)‖²₂     (PGD, un-normalised embeddings)
    L = ‖f_θ(x_adv) − f_θ0(x)‖²₂                          (sum over dims, mean over batch; no labels, no text)

The inner attack is any registered attack, and attacks maximise a classification loss; FARE's
objective is handed to it as the two "logits" ``[0, d(x+δ)]`` with label 0, where ``d`` is the squared
embedding distance. Their cross-entropy is ``softplus(d)``, increasing in ``d`` with the same input
gradient direction, so ℓ∞ PGD's sign steps are exactly the steps of PGD on ``d``.

Paper preset: ImageNet, batch 128, 20 000 steps, AdamW lr 1e-5, weight decay 1e-4, warm-up 1400,
ε = 2/255 (the README's ViT-L setting; the released ViT-B/32 checkpoints use 1 and 4), PGD-10 step 1/255.
World preset: :data:`WORLD`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from vlmbench.defense import DefenseContext
from vlmbench.finetune import FineTuneConfig, FineTuneDefense, Settings, Step, original_model
from vlmbench.models import ClipModel
from vlmbench.protocol import ReportedFigure

PAPER = Settings(
    data="imagenet", batch_size=128, steps=20_000, lr=1e-5, warmup=1400, optimizer="adamw", weight_decay=1e-4,
    train_eps=2 / 255, attack="pgd", attack_steps=10, attack_step_size=1 / 255, logit_scale=0.0, trainable="visual",
)
WORLD = Settings(
    data="world-combo", batch_size=64, steps=150, lr=2e-4, warmup=15, optimizer="adamw", weight_decay=1e-4,
    train_eps=2 / 255, attack="pgd", attack_steps=3, attack_step_size=1 / 255, logit_scale=0.0, trainable="visual",
)


def embedding_distance(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared ℓ2 distance ``(N,)`` between embeddings ``(N, D)``."""
    return (features - target).pow(2).sum(dim=1)


def distance_logits(distance: torch.Tensor) -> torch.Tensor:
    """``[0, d]`` per sample ``(N, 2)``: with label 0 their cross-entropy is ``softplus(d)``."""
    return torch.stack([torch.zeros_like(distance), distance], dim=1)


@dataclass(frozen=True)
class FAREConfig(FineTuneConfig):
    """FARE has no loss weights: only the shared fine-tuning settings (see :class:`FineTuneConfig`)."""


class FARE(FineTuneDefense):
    """FARE (ICML 2024): keep adversarial image embeddings at the original clean ones; re-implementation."""

    name: ClassVar[str] = "fare"
    description: ClassVar[str] = "FARE: unsupervised l2 embedding matching on PGD examples; re-implementation"
    Config: ClassVar[type] = FAREConfig
    paper: ClassVar[str | None] = "https://arxiv.org/abs/2402.12336"
    code: ClassVar[str | None] = "https://github.com/chs20/RobustVLM"
    reported: ClassVar[tuple[ReportedFigure, ...]] = (
        ReportedFigure(
            value=38.0, metric="robust", dataset="mean of FARE's zero-shot datasets", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "FARE checkpoint fine-tuned on ImageNet at ε=1/255; AutoAttack APGD-CE + APGD-T, 100 iterations, 1000 "
                "images per dataset, CLIP_benchmark templates"
            ),
            source="zero-shot table of the authors' README (github.com/chs20/RobustVLM), FARE¹ ViT-B/32 row",
        ),
        ReportedFigure(
            value=60.5, metric="clean", dataset="mean of FARE's zero-shot datasets", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="1/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "FARE checkpoint fine-tuned on ImageNet at ε=1/255; AutoAttack APGD-CE + APGD-T, 100 iterations, 1000 "
                "images per dataset, CLIP_benchmark templates"
            ),
            source="zero-shot table of the authors' README (github.com/chs20/RobustVLM), FARE¹ ViT-B/32 row",
        ),
        ReportedFigure(
            value=21.9, metric="robust", dataset="mean of FARE's zero-shot datasets", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="4/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "FARE checkpoint fine-tuned on ImageNet at ε=4/255; AutoAttack APGD-CE + APGD-T, 100 iterations, 1000 "
                "images per dataset, CLIP_benchmark templates"
            ),
            source="zero-shot table of the authors' README (github.com/chs20/RobustVLM), FARE⁴ ViT-B/32 row",
        ),
        ReportedFigure(
            value=48.6, metric="clean", dataset="mean of FARE's zero-shot datasets", attack="AutoAttack (APGD-CE, APGD-T)",
            eps_label="4/255", norm="linf", model="ViT-B-32:openai",
            protocol=(
                "FARE checkpoint fine-tuned on ImageNet at ε=4/255; AutoAttack APGD-CE + APGD-T, 100 iterations, 1000 "
                "images per dataset, CLIP_benchmark templates"
            ),
            source="zero-shot table of the authors' README (github.com/chs20/RobustVLM), FARE⁴ ViT-B/32 row",
        ),
    )

    @classmethod
    def presets(cls) -> dict[str, Settings]:
        return {"paper": PAPER, "world": WORLD}

    def references(self, model: ClipModel, context: DefenseContext, settings: Settings) -> dict[str, ClipModel]:
        return {"original": original_model(model, context)}

    def loss(self, step: Step) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            target = step.refs["original"].features(step.x)
        zeros = torch.zeros_like(step.y)
        x_adv = step.craft(lambda x: distance_logits(embedding_distance(step.student.features(x), target)), zeros)
        return {"l2": embedding_distance(step.student.features(x_adv), target).mean()}
