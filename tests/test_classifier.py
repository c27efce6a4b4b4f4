"""The zero-shot classifier: preprocessing inside forward, prompt ensembles, text cache, gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlmbench import classifier as clf
from vlmbench.classifier import ZeroShotClassifier, class_text_embeddings, resize_and_normalize
from vlmbench.models import OpenClipModel, Preprocess


def _load(tiny_world_checkpoint):
    from vlmbench.world.tokenizer import WorldTokenizer

    return OpenClipModel("tiny", "t", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()


def test_native_size_is_only_normalised():
    pre = Preprocess((8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(resize_and_normalize(x, pre), (x - 0.5) / 0.25)


def test_shortest_side_resize_then_centre_crop():
    pre = Preprocess((8, 8), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bilinear", "shortest")
    x = torch.zeros(1, 3, 16, 32)
    x[..., :, 4:28] = 1.0  # white well beyond the centre square, black at the sides
    out = resize_and_normalize(x, pre)
    assert out.shape == (1, 3, 8, 8)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)  # the crop dropped the black sides


def test_squash_resize_and_upsampling_shape():
    pre = Preprocess((12, 12), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "bicubic", "squash")
    assert resize_and_normalize(torch.rand(3, 3, 5, 9), pre).shape == (3, 3, 12, 12)


def test_logits_are_scaled_cosines_and_differentiable(tiny_world_checkpoint):
    model = _load(tiny_world_checkpoint)
    classes = ["red circle", "blue square", "green star"]
    templates = ["a photo of a {}.", "a {} on a plain background."]
    zs = ZeroShotClassifier.build(model, classes, templates)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    logits = zs(x)
    features = F.normalize(model.module.encode_image(resize_and_normalize(x, model.preprocess)), dim=-1)
    assert torch.allclose(logits, model.logit_scale * features @ zs.class_embeddings.T, atol=1e-5)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), x)
    assert grad.abs().sum() > 0
    assert zs.num_classes == 3


def test_prompt_ensemble_is_mean_of_normalised_embeddings(tiny_world_checkpoint):
    model = _load(tiny_world_checkpoint)
    templates = ["a photo of a {}.", "a {} on a plain background."]
    weights = class_text_embeddings(model, ["red circle"], templates, disk_cache=False)
    with torch.no_grad():
        each = F.normalize(model.module.encode_text(model.tokenizer([t.format("red circle") for t in templates])), dim=-1)
    assert torch.allclose(weights[0], F.normalize(each.mean(0), dim=-1), atol=1e-6)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(1))


def test_text_embeddings_are_computed_once_and_cached_on_disk(tiny_world_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(clf, "_TEXT_CACHE", {})
    model = _load(tiny_world_checkpoint)
    calls = []
    original = model.module.encode_text
    monkeypatch.setattr(model.module, "encode_text", lambda tokens: calls.append(1) or original(tokens))
    first = class_text_embeddings(model, ["red circle", "blue square"], ["a {}."])
    second = class_text_embeddings(model, ["red circle", "blue square"], ["a {}."])
    assert len(calls) == 1 and torch.equal(first, second)
    assert len(list((tmp_path / "text").glob("*.pt"))) == 1
    monkeypatch.setattr(clf, "_TEXT_CACHE", {})  # a new process: the disk cache answers
    third = class_text_embeddings(model, ["red circle", "blue square"], ["a {}."])
    assert len(calls) == 1 and torch.equal(first, third)
    class_text_embeddings(model, ["red circle", "blue square"], ["a photo of a {}."])  # other templates: recomputed
    assert len(calls) == 2


def test_parameters_are_frozen_float32(tiny_world_checkpoint):
    model = _load(tiny_world_checkpoint)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.module.parameters())
    assert not model.module.training
