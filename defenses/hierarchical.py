"""Hierarchically robust fine-tuning: multi-level hyperbolic alignment under one universal hierarchical
perturbation (Dong, Zhang, Zhu, Ong, Koniusz, "Hierarchically Robust Zero-shot Vision-language Models",
CVPR 2026, arXiv 2604.18867).

Re-implementation from the paper as two detailed paper notes describe it (docs/provenance.md#hierarchical);
no code is public, so every value the paper does not give is a parameter with a documented default::

    trees T_1..T_K over the training classes (K = trees; a "forest" when K > 1), levels l = 0 (the classes) .. L
    φ(x) = exp_0^r(s·f_θ(x)),  ψ(n) = exp_0^r(s·g_θ(t_n) + δ_T,n)       (Poincaré ball D_r; t_n: the prompts of node n)
    level-l image embeddings: φ^0_i = φ(x_i);  φ^l_c = EinsteinMidpoint{φ^{l−1}_j : j a child of c in the batch},
        each child weighted by its number of images                      (no image of a superclass exists)
    p^l(c | φ^l) = softmax_c(−τ·d_r(φ^l, ψ(n)))  over the level-l nodes n, the denominator augmented (HNSA)
        by the level-(l+1) nodes other than c's parent and the level-(l−1) nodes other than c's children
    CE_H(x, δ_T) = Σ_trees Σ_l ω_l · CE(p^l, y^l),  ω_l = 1 − l/(L+1)
    for each minibatch (x, y):
        HITA: (δ_X, δ_T) = PGD maximising CE_H(x + δ_X, δ_T)             # ONE perturbation for all levels
              ‖δ_X‖∞ ≤ ε_X (step α_X, zero start, x + δ_X in [0,1]);  ‖δ_T‖∞ ≤ ε_T (step α_T)
        L' = CE_H(x + δ_X, δ_T)
        L_vic = Σ_trees Σ_l mean_c [d_r(φ^l_c, ψ(y^l_c)) − ζ_vic]_+       (on x + δ_X and δ_T)
        L_gap = Σ_trees mean over (child, parent) text pairs of [‖ψ(parent)‖ − ‖ψ(child)‖ + ζ_gap]_+     (label pairs)
              + mean over (child, parent) pairs of the batch's φ^l of [‖φ^{l+1}‖ − ‖φ^l‖ + ζ_gap]_+             (intra pairs)
        L = L' + λ1·L_vic + λ2·L_gap;  update the image tower and the text projection

Test-time classification is **cosine**, through vlmbench's ``ZeroShotClassifier`` like every other model:
the fine-tuned weights are an ordinary CLIP, the exponential map at 0 keeps directions, and the class
texts are encoded by the fine-tuned text tower. So every attack, the adaptive track and superclass
attacks apply unchanged and aim at what the model predicts with. Hyperbolic distances are used in
training only; ``params()`` records ``test_time_classifier = "cosine"``.

Not given by the paper, chosen here (each a parameter):

* ``curvature`` r = 1 (MERU's initial curvature); ``feature_scale`` s: CLIP's raw embeddings have norms
  of about 10, and ``tanh(10)`` sits on the boundary in float32, so features are scaled before the exp
  map; ``0`` (default) takes ``1 / mean ‖g(t_c)‖`` over the original model's class texts (tangent norms
  about 1, ball norms about 0.76), computed once before training (recorded in the cache key and params).
* τ, the temperature of the distance logits: the engine's ``logit_scale`` (``0``: the model's learned
  scale, as MERU multiplies −d by CLIP's). On the world model the hyperbolic leaf classifier then starts
  where the cosine one is (75 vs 76% on training images, cross-entropy 0.83 vs 0.62).
* The Einstein midpoint is computed in the Klein model (:mod:`vlmbench.hyperbolic`); a superclass's image
  embedding averages its children in the batch, recursively level by level, each weighted by its number
  of images. Only the superclasses present in the batch are classified at level l ≥ 1.
* HNSA ("non-sibling classes of adjacent levels"): read as the adjacent-level nodes outside the class's
  own lineage (not its parent, not its children: those are right answers at their own levels).
  ``hnsa=above`` / ``below`` keep one side only (the paper's ablation), ``off`` none.
* HITA: δ_T is added to the scaled text embedding in tangent space (units where text embeddings have
  norm about 1, as CLIP's normalised ones), ℓ∞, step α_T = ε_T as α_X = ε_X; both start at zero, so
  HITA draws no random numbers (a resumed run equals an uninterrupted one). HITA is its own PGD: the
  ``attack`` setting is used only by ``hita=false``. With several trees the one perturbation maximises
  the sum over trees.
* ``hita=false`` is the leaf-only ablation: x_adv from the engine's inner attack (``attack``, PGD by
  default) on the leaf level's distance logits, no text perturbation; the loss is unchanged.
* L_vic sums over levels the mean over each level's samples; L_gap's "intra pairs" are read as the
  image side's (child, parent) embeddings of the batch, "label pairs" as the text side's over the whole
  tree. Norms are Euclidean norms in the ball. λ1 = λ2 = 1, ζ_vic = 2.5 (between the 10th and 25th
  percentiles, 2.44 and 2.66, of world-vit's matched image–text distances before training; the median
  is 2.96), ζ_gap = 0.05 (ball-norm units).
* Node prompts are the training set's templates filled with the node's label (``"a photo of a
  {label}."``), averaged over templates in tangent space. Two superclasses of one level whose prompts
  the model's tokenizer cannot tell apart are an error (the classes themselves are the training set's).
* What trains: the image tower and the text projection (``trainable=visual+text_projection``); the
  text transformer's pooled output is computed once and only the projection is re-applied per step.
* Paper preset: the paper gives ViT-B/32, ImageNet, the WordNet hierarchy (L = 5), ε_X = α_X = 1/255
  with 3 steps, ε_T = 2e-4; batch, learning rate and epochs are not known: TeCoA's (batch 256, SGD lr
  1e-5, momentum 0.9, warm-up 1000, 10 epochs = 50 050 steps), which the paper compares against.
  World preset: :data:`WORLD`, the other world presets' budget (150 AdamW steps of 64 images, lr 2e-4,
  15 warm-up steps, ε = 2/255) with 3 PGD steps of 1/255 as in FARE's world preset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from vlmbench import hyperbolic
from vlmbench.defense import DefenseContext
from vlmbench.finetune import FineTuneConfig, FineTuneDefense, FineTuneError, Settings, Step, TrainingSet
from vlmbench.hierarchy import Hierarchy, HierarchyError, Tree, hierarchies_for, load_hierarchy, shipped_hierarchies
from vlmbench.models import ClipModel
from vlmbench.protocol import ReportedFigure

PAPER = Settings(
    data="imagenet", batch_size=256, steps=50_050, lr=1e-5, warmup=1000, optimizer="sgd", weight_decay=0.0,
    train_eps=1 / 255, attack="pgd", attack_steps=3, attack_step_size=1 / 255, logit_scale=0.0,
    trainable="visual+text_projection",
)
WORLD = Settings(
    data="world-combo", batch_size=64, steps=150, lr=2e-4, warmup=15, optimizer="adamw", weight_decay=0.0,
    train_eps=2 / 255, attack="pgd", attack_steps=3, attack_step_size=1 / 255, logit_scale=0.0,
    trainable="visual+text_projection",
)
TEST_TIME_CLASSIFIER = "cosine"


@dataclass(frozen=True)
class HierarchicalConfig(FineTuneConfig):
    """Attributes (besides :class:`FineTuneConfig`'s); the paper publishes ε_T and one tree as the default,
    every other value is a choice (module docstring, docs/provenance.md#hierarchical):
    hierarchy: ``auto`` (the first shipped hierarchy covering the training set: ``world`` for
        ``world-combo``, WordNet for ``imagenet``), a shipped hierarchy's name, or a hierarchy file.
    tree: train on this tree alone (a name); empty: the first ``trees`` trees.
    trees: how many of the hierarchy's trees, from the first (1: the paper's default; more: a forest).
    curvature: r of the Poincaré ball D_r (curvature −r).
    feature_scale: s multiplying the embeddings before the exp map; 0: 1 / mean class-text norm.
    hnsa: hierarchical negatives from both adjacent levels, only the one ``above`` (l+1) or ``below``
        (l−1), or ``off``.
    hita: the universal hierarchical perturbation; false: leaf-only adversarial examples (ablation).
    text_eps, text_step_size: ε_T and α_T of the text-embedding perturbation (ℓ∞; paper: ε_T = 2e-4).
    vic, lambda_vic, margin_vic: L_vic on/off, its weight λ1 and margin ζ_vic (a distance).
    gap, lambda_gap, margin_gap: L_gap on/off, its weight λ2 and margin ζ_gap (a ball norm).
    """

    hierarchy: str = "auto"
    tree: str = ""
    trees: int = 1
    curvature: float = 1.0
    feature_scale: float = 0.0
    hnsa: Literal["both", "above", "below", "off"] = "both"
    hita: bool = True
    text_eps: float = 2e-4
    text_step_size: float = 2e-4
    vic: bool = True
    lambda_vic: float = 1.0
    margin_vic: float = 2.5
    gap: bool = True
    lambda_gap: float = 1.0
    margin_gap: float = 0.05


# ---------------------------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class Levels:
    """One tree over the training classes as index tensors.

    Attributes:
        name: the tree's name.
        node_of: per level ``l = 0..L``, the level-l node of every class ``(C,)`` (level 0: ``arange(C)``).
        parent: per level ``l = 0..L-1``, the level-(l+1) parent of every level-l node ``(N_l,)``.
        nodes: per level, the node labels (prompts are made from them).
    """

    name: str
    node_of: tuple[torch.Tensor, ...]
    parent: tuple[torch.Tensor, ...]
    nodes: tuple[tuple[str, ...], ...]

    @property
    def depth(self) -> int:
        return len(self.node_of) - 1

    def weight(self, level: int) -> float:
        """ω_l = 1 − l/(L+1)."""
        return 1.0 - level / (self.depth + 1)

    def to(self, device: torch.device) -> Levels:
        return Levels(self.name, tuple(t.to(device) for t in self.node_of), tuple(t.to(device) for t in self.parent), self.nodes)


def tree_levels(tree: Tree, classnames: Sequence[str]) -> Levels:
    """:class:`Levels` of ``tree`` over ``classnames`` (in their order)."""
    node_of, parent, nodes = [], [], []
    for level in range(tree.depth + 1):
        names, index = tree.nodes(level, classnames)
        nodes.append(names)
        node_of.append(torch.tensor(index, dtype=torch.long))
        if level < tree.depth:
            parent.append(torch.tensor(tree.parents(level, classnames), dtype=torch.long))
    return Levels(tree.name, tuple(node_of), tuple(parent), tuple(nodes))


@dataclass
class BatchLevels:
    """The batch's embeddings at every level: ``points[l]`` ``(M_l, D)`` with node labels ``labels[l]``
    ``(M_l,)``, image counts ``counts[l]``, and ``up[l]`` the row of each one's parent in ``points[l+1]``."""

    points: list[torch.Tensor]
    labels: list[torch.Tensor]
    counts: list[torch.Tensor]
    up: list[torch.Tensor]


def batch_levels(phi: torch.Tensor, y: torch.Tensor, levels: Levels, r: float) -> BatchLevels:
    """Level 0: the images ``phi (B, D)`` with labels ``y``; level l ≥ 1: one Einstein midpoint per node
    present in the batch, of its children's level-(l−1) embeddings weighted by their image counts."""
    out = BatchLevels([phi], [y], [torch.ones_like(y, dtype=phi.dtype)], [])
    for level in range(1, levels.depth + 1):
        below, counts = out.labels[-1], out.counts[-1]
        nodes, up = torch.unique(levels.parent[level - 1][below], return_inverse=True)
        weights = torch.zeros(len(nodes), len(below), dtype=phi.dtype, device=phi.device)
        weights[up, torch.arange(len(below), device=phi.device)] = counts
        out.points.append(hyperbolic.einstein_midpoint(out.points[-1], weights, r))
        out.labels.append(nodes)
        out.counts.append(weights.sum(dim=1))
        out.up.append(up)
    return out


def level_logits(batch: BatchLevels, texts: Sequence[torch.Tensor], levels: Levels, level: int, tau: float | torch.Tensor,
                 r: float, hnsa: str) -> torch.Tensor:
    """``−τ·d_r`` of the level-``level`` embeddings to the level's node texts, then (HNSA) to the
    adjacent levels' node texts outside each sample's lineage; excluded entries are ``−inf``.
    Columns: the level's nodes first (so the labels index them), then level+1's, then level−1's."""
    points, labels = batch.points[level], batch.labels[level]
    candidates, excluded = [texts[level]], [torch.zeros(len(labels), len(texts[level]), dtype=torch.bool, device=points.device)]
    if hnsa in ("both", "above") and level < levels.depth:
        parent = levels.parent[level][labels]
        candidates.append(texts[level + 1])
        excluded.append(torch.arange(len(texts[level + 1]), device=points.device)[None, :] == parent[:, None])
    if hnsa in ("both", "below") and level > 0:
        candidates.append(texts[level - 1])
        excluded.append(levels.parent[level - 1][None, :] == labels[:, None])
    logits = -tau * hyperbolic.pairwise_distance(points, torch.cat(candidates), r)
    return logits.masked_fill(torch.cat(excluded, dim=1), float("-inf"))


def hierarchy_ce(batch: BatchLevels, texts: Sequence[torch.Tensor], levels: Levels, tau: float | torch.Tensor, r: float,
                 hnsa: str) -> torch.Tensor:
    """``Σ_l ω_l · CE(p^l, y^l)`` of one tree (each CE a mean over the level's samples)."""
    return sum(levels.weight(level) * F.cross_entropy(level_logits(batch, texts, levels, level, tau, r, hnsa),
                                                      batch.labels[level])
               for level in range(levels.depth + 1))  # type: ignore[return-value]


def vic_loss(batch: BatchLevels, texts: Sequence[torch.Tensor], margin: float, r: float) -> torch.Tensor:
    """``Σ_l mean [d_r(φ^l, ψ(y^l)) − ζ_vic]_+``."""
    return sum(F.relu(hyperbolic.distance(points, text[labels], r) - margin).mean()
               for points, text, labels in zip(batch.points, texts, batch.labels))  # type: ignore[return-value]


def gap_loss(batch: BatchLevels, texts: Sequence[torch.Tensor], levels: Levels, margin: float) -> torch.Tensor:
    """Label pairs (every node's text and its parent's) plus intra pairs (every batch embedding and its
    parent midpoint): mean of ``[‖parent‖ − ‖child‖ + ζ_gap]_+`` over each kind of pair."""
    def hinge(child: list[torch.Tensor], parent: list[torch.Tensor]) -> torch.Tensor:
        return F.relu(torch.cat(parent).norm(dim=-1) - torch.cat(child).norm(dim=-1) + margin).mean()

    label = hinge(list(texts[:-1]), [texts[l + 1][levels.parent[l]] for l in range(levels.depth)])
    intra = hinge(batch.points[:-1], [batch.points[l + 1][batch.up[l]] for l in range(levels.depth)])
    return label + intra


# ---------------------------------------------------------------------------------------------- node texts


class NodeTexts:
    """Raw text embeddings ``(N, D)`` of every node's prompts (the mean over templates), for the text
    tower as it trains. When only the projection ``text_projection`` trains, the transformer's pooled
    output is computed once and the current projection applied per call; otherwise the whole text tower
    runs per call."""

    def __init__(self, module: torch.nn.Module, tokens: torch.Tensor, n_templates: int, projection_only: bool) -> None:
        self._tokens = tokens
        self._templates = n_templates
        self._pooled: torch.Tensor | None = None
        projection = getattr(module, "text_projection", None)
        if projection_only and isinstance(projection, torch.nn.Parameter) and projection.dim() == 2:
            with torch.no_grad(), _without_projection(module):
                pooled = module.encode_text(tokens).float()
            with torch.no_grad():
                if torch.allclose(pooled[:4] @ projection.float(), module.encode_text(tokens[:4]).float(), rtol=1e-4, atol=1e-5):
                    self._pooled = pooled

    def __call__(self, module: torch.nn.Module) -> torch.Tensor:
        if self._pooled is not None:
            features = self._pooled @ module.text_projection.float()
        else:
            features = module.encode_text(self._tokens).float()
        return features.view(-1, self._templates, features.shape[-1]).mean(dim=1)


@contextmanager
def _without_projection(module: torch.nn.Module) -> Iterator[None]:
    """``encode_text`` returns the pooled features before the projection (open_clip skips a None one)."""
    saved = module.text_projection
    module.text_projection = None
    try:
        yield
    finally:
        module.text_projection = saved


@contextmanager
def _parameters_frozen(module: torch.nn.Module) -> Iterator[None]:
    """No parameter gradients (HITA needs the input's and the text perturbation's only)."""
    training = [p for p in module.parameters() if p.requires_grad]
    for p in training:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in training:
            p.requires_grad_(True)


@dataclass
class Prepared:
    """What :meth:`Hierarchical.prepare` resolved: the trees, the node prompts, the feature scale.

    ``slots[k][l]`` are the rows of tree ``k``'s level-``l`` nodes in the node-text matrix (level 0, the
    classes, is shared by all trees)."""

    trees: list[Levels]
    slots: list[list[torch.Tensor]]
    texts: NodeTexts
    scale: float
    identity: dict[str, Any]


def resolve_hierarchy(spec: str, dataset: str) -> tuple[Hierarchy, str]:
    """The hierarchy ``spec`` names (``auto``, a shipped name or a file) and its file's SHA-256."""
    shipped = shipped_hierarchies()
    if spec == "auto":
        found = hierarchies_for(dataset)
        if not found:
            raise FineTuneError(f"hierarchical: no shipped hierarchy covers the training set {dataset!r}; "
                                "pass hierarchy=NAME or hierarchy=FILE.json")
        path = shipped[found[0].name]
    else:
        path = shipped.get(spec, Path(spec))
    return load_hierarchy(path), hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _distinct_prompts(tokens: torch.Tensor, names: Sequence[str], where: str) -> None:
    """Raise unless the nodes' prompts ``tokens (N, T, context)`` differ pairwise."""
    seen: dict[tuple[int, ...], str] = {}
    for name, row in zip(names, tokens.reshape(len(names), -1).tolist()):
        other = seen.setdefault(tuple(row), name)
        if other != name:
            raise FineTuneError(f"hierarchical: the tokenizer reads the prompts of {other!r} and {name!r} ({where}) as the "
                                "same tokens (words it does not know?); relabel the nodes in the hierarchy file")


# ---------------------------------------------------------------------------------------------- the plugin


class Hierarchical(FineTuneDefense):
    """Hierarchically robust zero-shot fine-tuning (CVPR 2026): multi-level hyperbolic alignment with HNSA,
    HITA, L_vic and L_gap; re-implementation (no public code). Classifies by cosine at test time."""

    name: ClassVar[str] = "hierarchical"
    description: ClassVar[str] = ("Hierarchical AFT: hyperbolic multi-level alignment + universal perturbation; cosine at "
                                  "test time; re-implementation")
    Config: ClassVar[type] = HierarchicalConfig
    paper: ClassVar[str | None] = "https://arxiv.org/abs/2604.18867"
    code: ClassVar[str | None] = None
    # No reported figure: the paper's tables were read only through secondary notes (docs/provenance.md).
    reported: ClassVar[tuple[ReportedFigure, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._prepared: Prepared | None = None

    @classmethod
    def presets(cls) -> dict[str, Settings]:
        return {"paper": PAPER, "world": WORLD}

    def params(self) -> dict[str, Any]:
        """The configuration, ``test_time_classifier`` (``cosine``), and after :meth:`adapt_model` the
        resolved settings and ``hierarchy_used`` (name, file hash, trees, feature scale)."""
        params = super().params()
        params["test_time_classifier"] = TEST_TIME_CLASSIFIER
        if self._prepared is not None:
            params["hierarchy_used"] = self._prepared.identity
        return params

    def prepare(self, model: ClipModel, data: TrainingSet, context: DefenseContext, settings: Settings) -> dict[str, Any]:
        """Resolve the hierarchy and trees over the training classes, tokenize every node's prompts and
        fix the feature scale; returns their identity for the cache key."""
        config = self.config
        hierarchy, digest = resolve_hierarchy(config.hierarchy, data.name)
        if config.tree:
            if config.trees != 1:
                raise FineTuneError(f"hierarchical: tree={config.tree!r} picks one tree; leave trees at 1 (got {config.trees})")
            trees = [hierarchy.tree(config.tree)]
        else:
            if not 1 <= config.trees <= len(hierarchy.trees):
                raise FineTuneError(f"hierarchical: trees={config.trees}, but hierarchy {hierarchy.name!r} has "
                                    f"{len(hierarchy.trees)} ({', '.join(t.name for t in hierarchy.trees)})")
            trees = list(hierarchy.trees[: config.trees])
        try:
            layouts = [tree_levels(tree, data.classnames) for tree in trees]
        except HierarchyError as exc:
            raise FineTuneError(f"hierarchical: hierarchy {hierarchy.name!r} does not fit the training set {data.name!r}: "
                                f"{exc}; its classes must be named as the hierarchy names them") from None
        device = next(model.module.parameters()).device
        layouts = [layout.to(device) for layout in layouts]
        labels: list[str] = list(data.classnames)
        slots: list[list[torch.Tensor]] = []
        leaf = torch.arange(len(labels), device=device)
        for layout in layouts:
            rows = [leaf]
            for names in layout.nodes[1:]:
                rows.append(torch.arange(len(labels), len(labels) + len(names), device=device))
                labels.extend(names)
            slots.append(rows)
        templates = data.templates
        tokens = model.tokenizer([t.format(label) for label in labels for t in templates]).to(device)
        per_node = tokens.view(len(labels), len(templates), -1)
        for layout, rows in zip(layouts, slots):
            for level in range(1, layout.depth + 1):
                _distinct_prompts(per_node[rows[level]], layout.nodes[level], f"tree {layout.name!r}, level {level}")
        texts = NodeTexts(model.module, tokens, len(templates), settings.trainable != "all")
        scale = config.feature_scale
        if scale == 0:  # rounded: the same on every device, so the cache key is too
            with torch.no_grad():
                scale = float(f"{float(1.0 / texts(model.module)[: len(data.classnames)].norm(dim=-1).mean()):.6g}")
        identity = {
            "hierarchy": hierarchy.name, "sha256": digest, "trees": [t.name for t in trees],
            "depth": [t.depth for t in trees], "feature_scale": scale,
            "geometry": hashlib.sha256(Path(hyperbolic.__file__).read_bytes()).hexdigest()[:16],
        }
        self._prepared = Prepared(layouts, slots, texts, scale, identity)
        return identity

    # ------------------------------------------------------------------------------------------ per step

    def _embed_images(self, step: Step, x: torch.Tensor) -> torch.Tensor:
        assert self._prepared is not None
        return hyperbolic.expmap0(self._prepared.scale * step.student.features(x), self.config.curvature)

    def _node_points(self, features: torch.Tensor, delta: torch.Tensor | None) -> list[list[torch.Tensor]]:
        """Per tree, per level, the node texts in the ball."""
        assert self._prepared is not None
        tangent = self._prepared.scale * features
        points = hyperbolic.expmap0(tangent if delta is None else tangent + delta, self.config.curvature)
        return [[points[rows] for rows in tree_rows] for tree_rows in self._prepared.slots]

    def forest_ce(self, phi: torch.Tensor, y: torch.Tensor, texts: list[list[torch.Tensor]], tau: float | torch.Tensor
                  ) -> tuple[torch.Tensor, list[BatchLevels]]:
        """``Σ_trees CE_H`` and each tree's batch levels."""
        assert self._prepared is not None
        r, total, batches = self.config.curvature, phi.new_zeros(()), []
        for levels, tree_texts in zip(self._prepared.trees, texts):
            batch = batch_levels(phi, y, levels, r)
            total = total + hierarchy_ce(batch, tree_texts, levels, tau, r, self.config.hnsa)
            batches.append(batch)
        return total, batches

    def hita(self, step: Step, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The universal hierarchical perturbation: ``(x + δ_X, δ_T)`` by PGD on ``Σ_trees CE_H``."""
        settings, config = step.settings, self.config
        x = step.x
        delta_x, delta_t = torch.zeros_like(x), torch.zeros_like(features)
        with _parameters_frozen(step.student.model.module):
            tau = step.student.scale
            for _ in range(settings.attack_steps):
                delta_x.requires_grad_(True)
                delta_t.requires_grad_(True)
                objective, _ = self.forest_ce(self._embed_images(step, x + delta_x), step.y,
                                              self._node_points(features, delta_t), tau)
                grad_x, grad_t = torch.autograd.grad(objective, [delta_x, delta_t])
                delta_x = (delta_x.detach() + settings.attack_step_size * grad_x.sign()).clamp(-settings.train_eps,
                                                                                                 settings.train_eps)
                delta_x = (x + delta_x).clamp(0.0, 1.0) - x
                delta_t = (delta_t.detach() + config.text_step_size * grad_t.sign()).clamp(-config.text_eps, config.text_eps)
        return (x + delta_x).detach(), delta_t.detach()

    def leaf_only(self, step: Step, features: torch.Tensor) -> torch.Tensor:
        """The ablation's adversarial images: the engine's inner attack on the leaf distance logits."""
        leaf = self._node_points(features, None)[0][0]

        def logits(x: torch.Tensor) -> torch.Tensor:
            return -step.student.scale * hyperbolic.pairwise_distance(self._embed_images(step, x), leaf, self.config.curvature)

        return step.craft(logits, step.y)

    def loss(self, step: Step) -> dict[str, torch.Tensor]:
        if self._prepared is None:
            raise FineTuneError("hierarchical: loss() before prepare(); train through adapt_model")
        config = self.config
        features = self._prepared.texts(step.student.model.module)
        if config.hita:
            x_adv, delta_t = self.hita(step, features.detach())
        else:
            x_adv, delta_t = self.leaf_only(step, features.detach()), None
        texts = self._node_points(features, delta_t)
        ce, batches = self.forest_ce(self._embed_images(step, x_adv), step.y, texts, step.student.scale)
        terms = {"hierarchy": ce}
        r = config.curvature
        if config.vic:
            terms["vic"] = config.lambda_vic * sum(vic_loss(b, t, config.margin_vic, r) for b, t in zip(batches, texts))
        if config.gap:
            terms["gap"] = config.lambda_gap * sum(gap_loss(b, t, levels, config.margin_gap)
                                                   for b, t, levels in zip(batches, texts, self._prepared.trees))
        return terms
