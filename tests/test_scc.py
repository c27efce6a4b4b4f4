"""SCC against hand-checked tiny cases: views, view averaging, the sharpened prototype, the margin."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmbench.defense import DefenseContext
from vlmbench.defenses.scc import SCC, SCCConfig, margin, soft_prototype, view_average, views
from vlmbench.defenses.ttc import random_draw


def test_views_are_the_image_its_flip_then_noisy_copies():
    x = torch.arange(8.0).view(1, 2, 2, 2) / 10
    torch.manual_seed(0)
    out = views(x, 4, 0.01)
    assert out.shape == (4, 2, 2, 2)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[0].flip(-1))
    assert 0 < (out[2] - x[0]).abs().max() < 0.1 and not torch.equal(out[2], out[3])
    assert torch.equal(views(x, 1, 0.01), x)


def test_view_average_is_the_mean_over_views_per_image():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0],   # view 0: images 0, 1
                           [3.0, 0.0], [0.0, 4.0]])  # view 1: images 0, 1
    assert torch.equal(view_average(logits, 2), torch.tensor([[2.0, 0.0], [0.0, 3.0]]))


def test_soft_prototype_sharpens_then_mixes_the_class_embeddings():
    probs = torch.tensor([[0.6, 0.4]])
    texts = torch.eye(2)
    # T = 0.5: q ∝ (0.36, 0.16) → (0.692, 0.308), then normalised to unit length
    expected = F.normalize(torch.tensor([[0.36, 0.16]]) / 0.52, dim=1)
    assert torch.allclose(soft_prototype(probs, texts, 0.5), expected)
    assert torch.allclose(soft_prototype(probs, texts, 1.0), F.normalize(probs, dim=1))


def test_margin_is_prototype_cosine_minus_best_other_class():
    texts = torch.eye(3)
    features = torch.tensor([[2.0, 1.0, 0.0]])  # cos with classes: 0.894, 0.447, 0
    prototype = F.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=1)  # cos: 0.949
    value = margin(features, prototype, texts, torch.tensor([0]))
    assert torch.allclose(value, torch.tensor([0.9487 - 0.4472]), atol=1e-4)


def _module(tiny_zero_shot, **config):
    classifier = tiny_zero_shot(torch.eye(4, 12)[:3] + 0.1)
    context = DefenseContext(cache_dir=None, device=torch.device("cpu"), seed=0)  # type: ignore[arg-type]
    return classifier, SCC(SCCConfig(**config)).wrap(classifier, context)


def test_without_correction_steps_scc_averages_the_views_of_the_warm_up_image(tiny_zero_shot):
    """Warm-up in its clean branch (τ_th = 0): δ = δ₀; S = 0; two views → mean of z(x+δ₀) and z(flip)."""
    classifier, module = _module(tiny_zero_shot, tau_threshold=0.0, steps=0, views=2)
    x = torch.rand(2, 3, 2, 2)
    torch.manual_seed(4)
    delta0 = random_draw(x, 4 / 255)
    torch.manual_seed(4)
    point = x + delta0
    assert torch.allclose(module(x), (classifier(point) + classifier(point.flip(-1))) / 2, atol=1e-6)


def test_correction_ascends_the_margin_within_the_ball(tiny_zero_shot):
    _, module = _module(tiny_zero_shot, tau_threshold=0.0, steps=3, views=2, eps=8 / 255, step_size=2 / 255)
    x = torch.rand(3, 3, 2, 2)
    torch.manual_seed(7)
    delta0 = module.counter.draw(x)
    delta = module.correction(x, delta0)
    assert delta.abs().max() <= 8 / 255 + 1e-7 and (x + delta).min() >= 0 and (x + delta).max() <= 1
    c = module.classifier
    start = _module(tiny_zero_shot, tau_threshold=0.0, steps=0, views=2)[1].correction(x, delta0)
    with torch.no_grad():
        logits = c(views(x + delta0, 2, 0.0))
        prototype = soft_prototype(view_average(logits.softmax(1), 2), c.class_embeddings, 0.5)
        pseudo = logits[:3].argmax(1)
        before = margin(c.encode_image(x + start), prototype, c.class_embeddings, pseudo)
        after = margin(c.encode_image(x + delta), prototype, c.class_embeddings, pseudo)
    assert (after >= before - 1e-6).all() and (after > before).any()


def test_scc_is_deterministic_by_seed_and_the_same_under_no_grad(tiny_zero_shot):
    _, module = _module(tiny_zero_shot)
    x = torch.rand(4, 3, 2, 2)
    torch.manual_seed(0)
    with torch.no_grad():
        silent = module(x)
    torch.manual_seed(0)
    loud = module(x)
    assert torch.equal(silent, loud.detach())
    torch.manual_seed(1)
    assert not torch.equal(silent, module(x).detach())
    assert SCC.stochastic and SCC.non_differentiable == ("correction",)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(module(xg)[:, 0].sum(), xg)
    assert grad.abs().sum() > 0  # the adaptive attacker differentiates the view averaging
