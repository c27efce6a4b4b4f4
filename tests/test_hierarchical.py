"""The hierarchical defense: Poincaré-ball geometry against closed forms, the multi-level loss against a
direct computation on a tiny two-level tree, gradients near the boundary, HITA's budgets, and fine-tuning
through the engine (cache, resume, the hierarchy in the key), ``vlmbench run`` and ``vlmbench check``."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from vlmbench import hyperbolic as H
from vlmbench.cli import app
from vlmbench.defense import DefenseContext
from vlmbench.finetune import (
    RESUME_FILE, WEIGHTS_FILE, Encoder, FineTuneError, Phase, Step, WorldTrainingSet, finetune, read_loss_curve,
    resolve_settings,
)
from vlmbench.hierarchy import Tree
from vlmbench.registry import plugins

CURVATURES = (0.3, 1.0, 2.5)


def ball_points(n: int, dim: int, r: float, spread: float = 1.0, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Random points of D_r whose tangent vectors have √r‖v‖ ≈ ``spread`` (ball norm ≈ tanh(spread)/√r)."""
    generator = torch.Generator().manual_seed(seed)
    return H.expmap0(spread * torch.randn(n, dim, generator=generator, dtype=dtype) / math.sqrt(dim * r), r)


def mobius_distance(x: torch.Tensor, y: torch.Tensor, r: float) -> torch.Tensor:
    """The definition, written out: (2/√r)·artanh(√r‖(−x) ⊕ y‖), without projection, in float64."""
    x, y = -x.double(), y.double()
    xy, x2, y2 = (x * y).sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    added = ((1 + 2 * r * xy + r * y2) * x + (1 - r * x2) * y) / (1 + 2 * r * xy + r**2 * x2 * y2)
    return 2 / math.sqrt(r) * torch.atanh(math.sqrt(r) * added.norm(dim=-1))


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("r", CURVATURES)
def test_distance_from_the_origin_and_the_definition(r):
    x = ball_points(6, 5, r, spread=1.5)
    expected = 2 / math.sqrt(r) * torch.atanh(math.sqrt(r) * x.norm(dim=-1))
    assert torch.allclose(H.distance(torch.zeros_like(x), x, r), expected, rtol=1e-10, atol=1e-10)
    y = ball_points(6, 5, r, spread=1.5, seed=1)
    assert torch.allclose(H.distance(x, y, r), mobius_distance(x, y, r), rtol=1e-8)


@pytest.mark.parametrize("r", CURVATURES)
def test_distance_is_symmetric_zero_on_the_diagonal_and_pairwise_agrees(r):
    x, y = ball_points(5, 4, r, seed=2), ball_points(3, 4, r, seed=3)
    assert torch.allclose(H.distance(x[:, None], y[None], r), H.distance(y[None], x[:, None], r), rtol=1e-10)
    assert float(H.distance(x, x, r).abs().max()) < 1e-6
    assert torch.allclose(H.pairwise_distance(x, y, r), H.distance(x[:, None], y[None], r), rtol=1e-8)
    near = ball_points(4, 8, r, spread=6.0, seed=4, dtype=torch.float32)  # at the projection's limit
    pairwise = H.pairwise_distance(near, near.flip(0), r)
    assert torch.allclose(pairwise.double(), mobius_distance(near[:, None], near.flip(0)[None], r), rtol=1e-5, atol=1e-4)
    assert float(H.pairwise_distance(near, near, r).diagonal().abs().max()) < 1e-4  # formed in float64


@pytest.mark.parametrize("r", CURVATURES)
def test_expmap0_norm_and_direction(r):
    v = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) / (2 * math.sqrt(r))
    point = H.expmap0(v, r)  # √r‖v‖ ≈ 1.2: inside the projection's limit
    assert torch.allclose(point.norm(dim=-1), torch.tanh(math.sqrt(r) * v.norm(dim=-1)) / math.sqrt(r), rtol=1e-10)
    assert torch.allclose(F.cosine_similarity(point, v, dim=-1), torch.ones(7, dtype=torch.float64))
    assert float(H.expmap0(torch.zeros(2, 3), r).abs().max()) == 0.0
    far = H.expmap0(torch.full((1, 3), 100.0), r)  # tanh saturates: the projection keeps it inside
    assert float(far.norm()) == pytest.approx((1 - H.BOUNDARY_EPS) / math.sqrt(r), rel=1e-6)


@pytest.mark.parametrize("r", CURVATURES)
def test_mobius_addition_identities(r):
    x, y = ball_points(4, 3, r, seed=6), ball_points(4, 3, r, seed=7)
    zero = torch.zeros_like(x)
    assert torch.allclose(H.mobius_add(x, zero, r), x) and torch.allclose(H.mobius_add(zero, x, r), x)
    assert float(H.mobius_add(-x, x, r).abs().max()) < 1e-12
    assert torch.allclose(H.mobius_add(-x, H.mobius_add(x, y, r), r), y, atol=1e-10)  # left cancellation


@pytest.mark.parametrize("r", CURVATURES)
def test_einstein_midpoint(r):
    x = ball_points(3, 4, r, spread=1.2, seed=8)
    assert float(H.einstein_midpoint(torch.stack([x[0], -x[0]]), None, r).abs().max()) < 1e-12  # symmetric about 0
    assert torch.allclose(H.einstein_midpoint(x[:1].repeat(3, 1), None, r), x[0])  # identical points
    middle = H.einstein_midpoint(x[:2], None, r)  # two points: the geodesic midpoint
    half = H.distance(x[0], x[1], r) / 2
    assert float(H.distance(x[0], middle, r)) == pytest.approx(float(half), rel=1e-9)
    assert float(H.distance(middle, x[1], r)) == pytest.approx(float(half), rel=1e-9)
    weights = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)  # two midpoints at once
    both = H.einstein_midpoint(x, weights, r)
    assert torch.allclose(both[0], middle) and torch.allclose(both[1], x[2])
    # Klein route written out: k = 2p/(1+r‖p‖²), γ = 1/√(1−r‖k‖²), m = Σwγk/Σwγ, p = m/(1+√(1−r‖m‖²))
    w = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    k = 2 * x / (1 + r * (x * x).sum(-1, keepdim=True))
    gamma = 1 / torch.sqrt(1 - r * (k * k).sum(-1, keepdim=True))
    m = (w[:, None] * gamma * k).sum(0) / (w[:, None] * gamma).sum(0)
    assert torch.allclose(H.einstein_midpoint(x, w, r), m / (1 + torch.sqrt(1 - r * (m * m).sum())))


def test_project_and_float32_under_autocast():
    r = 2.0
    outside = torch.tensor([[3.0, 4.0], [0.1, 0.0]])
    projected = H.project(outside, r, eps=1e-3)
    assert float(projected[0].norm()) == pytest.approx((1 - 1e-3) / math.sqrt(r), rel=1e-6)
    assert torch.equal(projected[1], outside[1])  # inside: unchanged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = ball_points(3, 4, r, dtype=torch.bfloat16, seed=9)
        assert x.dtype == torch.float32
        assert H.pairwise_distance(x, x, r).dtype == torch.float32 and H.distance(x, x.flip(0), r).dtype == torch.float32
        assert H.einstein_midpoint(x, None, r).dtype == torch.float32


@pytest.mark.parametrize("r", CURVATURES)
def test_gradients_near_the_boundary_are_finite_and_nonzero(r):
    generator = torch.Generator().manual_seed(10)
    direction = F.normalize(torch.randn(4, 6, generator=generator), dim=-1)
    x = (direction * (1 - 1e-3) / math.sqrt(r)).requires_grad_(True)  # at the projection's limit
    y = ball_points(4, 6, r, seed=11, dtype=torch.float32)
    for value in (H.distance(x, y, r).sum(), H.pairwise_distance(x, y, r).sum(),
                  H.einstein_midpoint(x, None, r).norm(), H.distance(H.mobius_add(x, y, r), y, r).sum()):
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(grad).all() and float(grad.norm(dim=-1).min()) > 0
    v = (direction * 8.0).requires_grad_(True)  # tanh(√r‖v‖) has saturated: the tangential gradient remains
    (grad,) = torch.autograd.grad(H.distance(H.expmap0(v, r), y, r).sum(), v)
    assert torch.isfinite(grad).all() and float(grad.norm(dim=-1).min()) > 0


# ---------------------------------------------------------------------------------------------- the loss

TINY_TREE = Tree("tiny", ("class", "mid", "top"), {
    "c0": ("p0", "g0"), "c1": ("p0", "g0"), "c2": ("p1", "g0"), "c3": ("p2", "g1"),
})
CLASSES = ("c0", "c1", "c2", "c3")


def tiny_case(r: float, dtype=torch.float64):
    """4 images (labels 0, 1, 2, 3) and node texts at levels 0, 1, 2 of :data:`TINY_TREE` in D = 3."""
    from vlmbench.defenses.hierarchical import tree_levels

    levels = tree_levels(TINY_TREE, CLASSES)
    phi = ball_points(4, 3, r, spread=0.8, seed=12, dtype=dtype)
    texts = [ball_points(n, 3, r, spread=0.8, seed=13 + n, dtype=dtype) for n in (4, 3, 2)]
    return levels, phi, torch.tensor([0, 1, 2, 3]), texts


def reference_terms(phi, y, texts, r, tau, hnsa, margin_vic, margin_gap):
    """The loss by its definition, one sample and one candidate at a time (float64)."""
    parent = {0: [0, 0, 1, 2], 1: [0, 0, 1]}  # TINY_TREE: c → p, p → g
    d = lambda a, b: float(mobius_distance(a, b, r))  # noqa: E731

    def midpoint(points, weights):
        k = [2 * p / (1 + r * float(p @ p)) for p in points]
        g = [1 / math.sqrt(1 - r * float(kk @ kk)) for kk in k]
        m = sum(w * gg * kk for w, gg, kk in zip(weights, g, k)) / sum(w * gg for w, gg in zip(weights, g))
        return m / (1 + math.sqrt(1 - r * float(m @ m)))

    # level 0: the images; level 1: p0 = mid(φ0, φ1), p1 = φ2, p2 = φ3; level 2: g0 = mid(p0 ×2, p1 ×1), g1 = p2
    p0 = midpoint([phi[0], phi[1]], [1, 1])
    level1 = {0: p0, 1: phi[2], 2: phi[3]}
    level2 = {0: midpoint([p0, phi[2]], [2, 1]), 1: phi[3]}
    samples = [{i: (phi[i], int(y[i])) for i in range(4)}, {n: (p, n) for n, p in level1.items()},
               {n: (p, n) for n, p in level2.items()}]
    ce = 0.0
    for level, items in enumerate(samples):
        losses = []
        for point, label in items.values():
            candidates = [(d(point, t), n == label) for n, t in enumerate(texts[level])]
            if hnsa in ("both", "above") and level < 2:
                candidates += [(d(point, t), False) for n, t in enumerate(texts[level + 1]) if n != parent[level][label]]
            if hnsa in ("both", "below") and level > 0:
                candidates += [(d(point, t), False) for n, t in enumerate(texts[level - 1]) if parent[level - 1][n] != label]
            true = next(dist for dist, is_true in candidates if is_true)
            losses.append(tau * true + math.log(sum(math.exp(-tau * dist) for dist, _ in candidates)))
        ce += (1 - level / 3) * sum(losses) / len(losses)
    vic = sum(sum(max(0.0, d(p, texts[level][label]) - margin_vic) for p, label in items.values()) / len(items)
              for level, items in enumerate(samples))
    hinge = lambda child, up: max(0.0, float(up.norm()) - float(child.norm()) + margin_gap)  # noqa: E731
    label_pairs = [hinge(texts[l][n], texts[l + 1][parent[l][n]]) for l in (0, 1) for n in range(len(texts[l]))]
    intra_pairs = ([hinge(phi[i], level1[parent[0][int(y[i])]]) for i in range(4)]
                   + [hinge(level1[n], level2[parent[1][n]]) for n in range(3)])
    gap = sum(label_pairs) / len(label_pairs) + sum(intra_pairs) / len(intra_pairs)
    return ce, vic, gap


@pytest.mark.parametrize("hnsa", ["both", "above", "below", "off"])
@pytest.mark.parametrize("r", [0.5, 1.0])
def test_the_loss_equals_its_definition_on_a_tiny_tree(hnsa, r):
    from vlmbench.defenses.hierarchical import batch_levels, gap_loss, hierarchy_ce, vic_loss

    levels, phi, y, texts = tiny_case(r)
    tau, margin_vic, margin_gap = 3.0, 0.4, 0.05
    batch = batch_levels(phi, y, levels, r)
    assert [b.tolist() for b in batch.labels] == [[0, 1, 2, 3], [0, 1, 2], [0, 1]]
    assert batch.counts[1].tolist() == [2, 1, 1] and batch.counts[2].tolist() == [3, 1]
    ce, vic, gap = reference_terms(phi, y, texts, r, tau, hnsa, margin_vic, margin_gap)
    assert float(hierarchy_ce(batch, texts, levels, tau, r, hnsa)) == pytest.approx(ce, rel=1e-9)
    assert float(vic_loss(batch, texts, margin_vic, r)) == pytest.approx(vic, rel=1e-9)
    assert vic > 0 and gap > 0  # both hinges are active somewhere in this case
    assert float(gap_loss(batch, texts, levels, margin_gap)) == pytest.approx(gap, rel=1e-9)


def test_the_leaf_term_at_the_origin_by_hand():
    """An image at 0: d(0, t) = 2·artanh(‖t‖) (r = 1), so the leaf CE is a softmax over −2τ·artanh(‖t_n‖)."""
    from vlmbench.defenses.hierarchical import batch_levels, level_logits, tree_levels

    levels = tree_levels(TINY_TREE, CLASSES)
    norms = torch.tensor([0.1, 0.5, 0.3, 0.7], dtype=torch.float64)
    texts = [norms[:, None] * torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64), torch.zeros(3, 3), torch.zeros(2, 3)]
    batch = batch_levels(torch.zeros(1, 3, dtype=torch.float64), torch.tensor([1]), levels, 1.0)
    logits = level_logits(batch, texts, levels, 0, 2.0, 1.0, "off")
    expected = -2.0 * 2 * torch.atanh(norms)
    assert torch.allclose(logits[0], expected)
    assert float(F.cross_entropy(logits, torch.tensor([1]))) == pytest.approx(
        float(-expected[1] + torch.logsumexp(expected, 0)), rel=1e-12)


def test_a_few_optimisation_steps_lower_the_loss():
    from vlmbench.defenses.hierarchical import batch_levels, gap_loss, hierarchy_ce, vic_loss

    r = 1.0
    levels, phi, y, texts = tiny_case(r, dtype=torch.float32)
    image_tangent = torch.randn(4, 3, generator=torch.Generator().manual_seed(20)).requires_grad_(True)
    text_tangent = [torch.randn(len(t), 3, generator=torch.Generator().manual_seed(21)).requires_grad_(True) for t in texts]
    optimiser = torch.optim.Adam([image_tangent, *text_tangent], lr=0.05)

    def total() -> torch.Tensor:
        points = [H.expmap0(t, r) for t in text_tangent]
        batch = batch_levels(H.expmap0(image_tangent, r), y, levels, r)
        return (hierarchy_ce(batch, points, levels, 5.0, r, "both") + vic_loss(batch, points, 0.5, r)
                + gap_loss(batch, points, levels, 0.05))

    losses = []
    for _ in range(30):
        loss = total()
        optimiser.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in [image_tangent, *text_tangent])
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_loss_gradients_near_the_boundary_are_finite_and_nonzero():
    from vlmbench.defenses.hierarchical import batch_levels, gap_loss, hierarchy_ce, vic_loss

    r = 1.0
    levels, _, y, texts = tiny_case(r, dtype=torch.float32)
    direction = F.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(22)), dim=-1)
    phi = (direction * (1 - 1e-3)).requires_grad_(True)
    batch = batch_levels(phi, y, levels, r)
    loss = (hierarchy_ce(batch, texts, levels, 5.0, r, "both") + vic_loss(batch, texts, 0.5, r)
            + gap_loss(batch, texts, levels, 0.05))
    (grad,) = torch.autograd.grad(loss, phi)
    assert torch.isfinite(grad).all() and float(grad.norm(dim=-1).min()) > 0


# ---------------------------------------------------------------------------------------------- the plugin


def make(**params):
    cls = plugins().defenses.get("hierarchical")
    return cls(cls.Config(**params))


@pytest.fixture
def world_vit():
    return plugins().models.get("world-vit").load()


def context(path, model):
    return DefenseContext(path, torch.device("cpu"), 0, None, model)


def test_presets_and_declarations():
    from vlmbench.defenses.hierarchical import PAPER, WORLD

    method = make()
    assert method.kind() == "training" and method.params()["test_time_classifier"] == "cosine"
    assert PAPER.data == "imagenet" and PAPER.train_eps == pytest.approx(1 / 255) and PAPER.attack_steps == 3
    assert PAPER.attack_step_size == pytest.approx(1 / 255) and method.config.text_eps == 2e-4
    assert WORLD.data == "world-combo" and {PAPER.trainable, WORLD.trainable} == {"visual+text_projection"}
    assert "2604.18867" in method.paper


def test_prepare_resolves_trees_prompts_and_identity(world_vit, tmp_path):
    method = make(preset="world", trees=2)
    settings = resolve_settings(method.config, method.presets(), world_vit)
    data = WorldTrainingSet(size=8)
    identity = method.prepare(world_vit, data, context(tmp_path, world_vit), settings)
    assert identity["hierarchy"] == "world" and identity["trees"] == ["shape", "colour"] and identity["depth"] == [2, 2]
    assert len(identity["sha256"]) == 64 and 0 < identity["feature_scale"] < 1
    prepared = method._prepared
    assert [len(rows) for rows in prepared.slots[0]] == [30, 6, 2] and torch.equal(prepared.slots[0][0], prepared.slots[1][0])
    assert method.params()["hierarchy_used"] == identity
    with pytest.raises(FineTuneError, match="has 2"):
        make(preset="world", trees=3).prepare(world_vit, data, context(tmp_path, world_vit), settings)
    with pytest.raises(Exception, match="no tree 'size'"):
        make(preset="world", tree="size").prepare(world_vit, data, context(tmp_path, world_vit), settings)


def test_a_hierarchy_that_does_not_cover_the_training_classes_is_a_one_line_error(world_vit, tmp_path):
    from types import SimpleNamespace

    method = make(preset="world")
    settings = resolve_settings(method.config, method.presets(), world_vit)
    data = SimpleNamespace(name="world-combo", classnames=("red circle", "mauve blob"), templates=("a photo of a {}.",))
    with pytest.raises(FineTuneError, match="does not fit the training set 'world-combo'.*'mauve blob'"):
        method.prepare(world_vit, data, context(tmp_path, world_vit), settings)


def test_prompts_the_tokenizer_cannot_tell_apart_are_an_error(world_vit, tmp_path):
    from vlmbench.hierarchy import shipped_hierarchies

    raw = json.loads(shipped_hierarchies()["world"].read_text())
    shape = raw["trees"][0]
    shape["ancestors"] = {c: [a[0], "round" if a[1].startswith("circle") else "angular"] for c, a in shape["ancestors"].items()}
    path = tmp_path / "unknown-words.json"
    path.write_text(json.dumps({**raw, "trees": [shape]}))
    method = make(preset="world", hierarchy=str(path))
    settings = resolve_settings(method.config, method.presets(), world_vit)
    with pytest.raises(FineTuneError, match="'round' and 'angular'|'angular' and 'round'"):
        method.prepare(world_vit, WorldTrainingSet(size=8), context(tmp_path, world_vit), settings)


def test_hita_stays_within_both_budgets_and_raises_the_objective(world_vit, tmp_path):
    method = make(preset="world", attack_steps=3, text_eps=1e-3, text_step_size=1e-3)
    settings = resolve_settings(method.config, method.presets(), world_vit)
    data = WorldTrainingSet(size=8)
    method.prepare(world_vit, data, context(tmp_path, world_vit), settings)
    x, y = data.batch(range(8))
    student = Encoder(world_vit, world_vit.tokenizer(["a photo of a red circle."]), 1, settings.logit_scale, False)
    step = Step(x, y, student, {}, Phase("train", 1, 1.0), settings, lambda fn, labels: x)
    features = method._prepared.texts(world_vit.module)
    x_adv, delta_t = method.hita(step, features)
    assert float((x_adv - x).abs().max()) <= settings.train_eps + 1e-6 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
    assert float(delta_t.abs().max()) <= 1e-3 + 1e-9 and delta_t.shape == features.shape
    with torch.no_grad():
        clean, _ = method.forest_ce(method._embed_images(step, x), y, method._node_points(features, None), student.scale)
        attacked, _ = method.forest_ce(method._embed_images(step, x_adv), y, method._node_points(features, delta_t),
                                       student.scale)
    assert float(attacked) > float(clean)


def test_smoke_fine_tune_trains_the_image_tower_and_text_projection_then_reuses_the_cache(world_vit, tmp_path):
    method = make(**{**vars(plugins().defenses.get("hierarchical").smoke_config()), "preset": "world"})
    adapted = method.adapt_model(world_vit, context(tmp_path, world_vit))
    folder = method.checkpoint
    before, after = world_vit.module.state_dict(), adapted.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "text_projection" in changed and all(k.startswith("visual.") or k == "text_projection" for k in changed)
    curve = read_loss_curve(folder)
    assert len(curve) == 2 and {"loss_hierarchy", "loss_vic", "loss_gap"} <= set(curve.columns)
    key = json.loads((folder / "key.json").read_text())
    assert key["prepared"]["hierarchy"] == "world" and key["prepared"]["trees"] == ["shape"]
    stamp = (folder / WEIGHTS_FILE).stat().st_mtime_ns
    again = make(**{**vars(method.config)})
    reused = again.adapt_model(world_vit, context(tmp_path, world_vit))
    assert again.checkpoint == folder and (folder / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert reused.fingerprint == adapted.fingerprint != world_vit.fingerprint
    assert again.params()["hierarchy_used"] == method.params()["hierarchy_used"]


def test_the_cache_key_covers_the_hierarchy_file_and_the_ablations(world_vit, tmp_path):
    from vlmbench.hierarchy import shipped_hierarchies

    base = {**vars(plugins().defenses.get("hierarchical").smoke_config()), "preset": "world", "steps": 1}
    first = make(**base)
    first.adapt_model(world_vit, context(tmp_path, world_vit))
    copy = tmp_path / "world-copy.json"
    copy.write_text(shipped_hierarchies()["world"].read_text().replace('"licence": "MIT', '"licence": "MIT, copied'))
    edited = make(**{**base, "hierarchy": str(copy)})
    edited.adapt_model(world_vit, context(tmp_path, world_vit))
    assert edited.checkpoint != first.checkpoint
    folders = {first.checkpoint, edited.checkpoint}
    for ablation in ({"hita": False}, {"vic": False, "gap": False}, {"trees": 2}, {"hnsa": "off"}):
        method = make(**{**base, **ablation})
        method.adapt_model(world_vit, context(tmp_path, world_vit))
        assert method.checkpoint not in folders
        folders.add(method.checkpoint)
        terms = set(read_loss_curve(method.checkpoint).columns)
        assert ("loss_vic" in terms) == method.config.vic and ("loss_gap" in terms) == method.config.gap


def test_interrupted_training_resumes_to_the_same_weights(world_vit, tmp_path, monkeypatch):
    cls = plugins().defenses.get("hierarchical")
    monkeypatch.setattr(cls, "checkpoint_every", 1)
    config = {**vars(cls.smoke_config()), "preset": "world", "steps": 3}
    straight = make(**config)
    settings = resolve_settings(straight.config, straight.presets(), world_vit)
    expected = finetune(straight, world_vit, context(tmp_path / "a", world_vit), settings)
    interrupted = make(**config)
    finetune(interrupted, world_vit, context(tmp_path / "b", world_vit), settings, stop_after=1)
    assert (interrupted.checkpoint / RESUME_FILE).is_file() and not (interrupted.checkpoint / WEIGHTS_FILE).exists()
    resumed = finetune(make(**config), world_vit, context(tmp_path / "b", world_vit), settings)
    assert resumed.fingerprint == expected.fingerprint
    assert len(read_loss_curve(interrupted.checkpoint)) == 3


def test_a_few_fine_tuning_steps_lower_the_loss(world_vit, tmp_path, monkeypatch):
    monkeypatch.setattr(WorldTrainingSet, "SIZE", 16)  # every step sees the same 16 images
    method = make(preset="world", steps=8, batch_size=16, lr=1e-3, warmup=0, attack_steps=1)
    method.adapt_model(world_vit, context(tmp_path, world_vit))
    curve = read_loss_curve(method.checkpoint)
    assert len(curve) == 8 and curve["loss"].iloc[-2:].mean() < curve["loss"].iloc[0]


def test_vlmbench_run_classifies_the_fine_tuned_model_by_cosine(tmp_path, monkeypatch):
    from vlmbench.protocol import Protocol

    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, [
        "run", "--defense", "hierarchical", "--defense-param", "steps=2", "--defense-param", "batch_size=4",
        "--defense-param", "attack_steps=1", "--dataset", "world-shape", "--attack", "pgd-2", "--samples", "4",
        "--threads", "1", "--output", str(tmp_path / "out"),
    ])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(next((tmp_path / "out").glob("*.parquet")))
    assert len(rows) == 4
    params = Protocol.from_json(rows["protocol"].iloc[0]).defense.params["hierarchical"]
    assert params["test_time_classifier"] == "cosine" and params["hierarchy_used"]["hierarchy"] == "world"
    assert params["resolved"]["trainable"] == "visual+text_projection"
    assert len(list((tmp_path / "cache" / "defenses" / "hierarchical").iterdir())) == 1


def test_vlmbench_check_training_cache_and_gradients_pass():
    from vlmbench.check import CheckSettings, check_defense

    report = check_defense("hierarchical", CheckSettings(samples=4, steps=3, smoke=True, only=("training-cache", "gradients")))
    statuses = {f.id: f.status for f in report.findings}
    assert set(statuses) == {"training-cache", "gradients"}
    assert "fail" not in statuses.values(), [f.summary for f in report.findings]


def test_paper_preset_fine_tunes_on_an_imagenet_folder_with_the_wordnet_forest(tmp_path):
    """The paper's setting in miniature: ImageNet-1k's 1000 synset folders (one 8-pixel image each, with
    ImageNet's own LOC_synset_mapping.txt names), the WordNet hierarchy's two trees of depth 5, a tiny
    open_clip model with the real BPE tokenizer. The training classes take vlmbench's ImageNet names (the
    names the hierarchy and the evaluation use), so every class is found in both trees."""
    import open_clip
    from PIL import Image

    from vlmbench.datasets import text
    from vlmbench.finetune import training_set
    from vlmbench.resolve import resolve_model

    meta = text.imagenet()
    train = tmp_path / "imagenet" / "train"
    for wnid in meta["wnids"]:
        (train / wnid).mkdir(parents=True)
        Image.new("RGB", (8, 8), (len(wnid) * 9 % 255, 40, 90)).save(train / wnid / f"{wnid}_1.JPEG")
    # ImageNet's own first names differ from CLIP's for about a third of the classes ('tench' vs 'tench, Tinca tinca').
    (tmp_path / "imagenet" / "LOC_synset_mapping.txt").write_text(
        "".join(f"{wnid} imagenet-name-{k}, other\n" for k, wnid in enumerate(meta["wnids"])))
    data = training_set("imagenet", tmp_path, 16)
    assert data.classnames == tuple(meta["classnames"]) and len(data) == 1000

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 16, "patch_size": 8, "head_width": 8},
              "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "vlmbench-test-paper.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "configs")
    torch.manual_seed(0)
    torch.save(open_clip.create_model("vlmbench-test-paper").state_dict(), tmp_path / "tiny.pt")
    model = resolve_model(f"vlmbench-test-paper:{tmp_path / 'tiny.pt'}").load()

    method = make(preset="paper", trees=2, steps=1, batch_size=4, warmup=0)
    adapted = method.adapt_model(model, DefenseContext(tmp_path / "cache", torch.device("cpu"), 0, tmp_path, model))
    key = json.loads((method.checkpoint / "key.json").read_text())
    assert key["prepared"]["hierarchy"] == "wordnet" and key["prepared"]["trees"] == ["first", "second"]
    assert key["prepared"]["depth"] == [5, 5] and key["data"].startswith("imagenet:") and "names=" in key["data"]
    assert key["settings"]["train_eps"] == pytest.approx(1 / 255) and key["settings"]["attack_steps"] == 3
    assert adapted.fingerprint != model.fingerprint
    assert len(read_loss_curve(method.checkpoint)) == 1


FOREST = ["shape", "colour", "lightness", "hue", "convexity"]


def test_prepare_resolves_the_five_trees_of_the_world_forest(world_vit, tmp_path):
    """trees=5, the paper's forest ablation, on the shipped world_forest hierarchy (docs/hierarchies.md)."""
    import hashlib

    from vlmbench.hierarchy import shipped_hierarchies

    method = make(preset="world", hierarchy="world-forest", trees=5)
    settings = resolve_settings(method.config, method.presets(), world_vit)
    data = WorldTrainingSet(size=8)
    identity = method.prepare(world_vit, data, context(tmp_path, world_vit), settings)
    assert identity["hierarchy"] == "world-forest" and identity["trees"] == FOREST and identity["depth"] == [2] * 5
    assert identity["sha256"] == hashlib.sha256(shipped_hierarchies()["world-forest"].read_bytes()).hexdigest()
    prepared = method._prepared
    # the 30 training classes, then per tree its level-1 and level-2 nodes
    assert [[len(rows) for rows in tree] for tree in prepared.slots] == [[30, 6, 2], [30, 6, 2], [30, 12, 2], [30, 3, 2], [30, 6, 2]]
    assert all(torch.equal(tree[0], prepared.slots[0][0]) for tree in prepared.slots)
    rows = torch.cat([rows for tree in prepared.slots for rows in tree[1:]])
    assert len(set(rows.tolist())) == len(rows) == 73 - 30  # every tree's nodes have their own prompts
    assert prepared.texts(world_vit.module).shape[0] == 73
    assert [levels.name for levels in prepared.trees] == FOREST
    with pytest.raises(FineTuneError, match="has 5 "):
        make(preset="world", hierarchy="world-forest", trees=6).prepare(world_vit, data, context(tmp_path, world_vit), settings)
    auto = make(preset="world", trees=1)  # hierarchy=auto still picks world.json for world-combo
    assert auto.prepare(world_vit, data, context(tmp_path, world_vit), settings)["hierarchy"] == "world"


def test_smoke_fine_tune_on_the_five_tree_world_forest(world_vit, tmp_path):
    base = {**vars(plugins().defenses.get("hierarchical").smoke_config()), "preset": "world"}
    forest = make(**{**base, "hierarchy": "world-forest", "trees": 5})
    adapted = forest.adapt_model(world_vit, context(tmp_path, world_vit))
    key = json.loads((forest.checkpoint / "key.json").read_text())
    assert key["prepared"]["hierarchy"] == "world-forest" and key["prepared"]["trees"] == FOREST
    assert adapted.fingerprint != world_vit.fingerprint
    curve = read_loss_curve(forest.checkpoint)
    assert len(curve) == 2 and {"loss_hierarchy", "loss_vic", "loss_gap"} <= set(curve.columns)
    assert all(math.isfinite(v) for v in curve["loss"])
    one = make(**{**base, "hierarchy": "world-forest", "trees": 1})  # the same file, its first tree only
    one.adapt_model(world_vit, context(tmp_path, world_vit))
    assert one.checkpoint != forest.checkpoint
    # five trees' cross-entropies add up (each includes the classes' own, level 0, at weight 1)
    assert curve["loss_hierarchy"].iloc[0] > 2 * read_loss_curve(one.checkpoint)["loss_hierarchy"].iloc[0]
