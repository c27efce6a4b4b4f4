"""Registry-wide conformance: every registered defense, dataset and model honours its contract.

(Attacks have their own registry-wide tests in test_attacks.py.) A third-party plugin installed in the
environment is checked by these same tests.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.data import DatasetNotFoundError, ZeroShotDataset
from vlmbench.defense import Defense, DefenseContext
from vlmbench.models import ClipModel
from vlmbench.registry import plugins


@pytest.fixture(scope="module")
def world_classifier() -> tuple[ZeroShotClassifier, torch.Tensor]:
    dataset = plugins().datasets.get("world-shape").load(None)
    model = plugins().models.get("world-vit").load()
    x = torch.stack([dataset[i][0] for i in range(6)])
    return ZeroShotClassifier.build(model, dataset.classnames, dataset.templates), x


@pytest.mark.parametrize("name", plugins().defenses.names())
def test_every_defense_conforms(name, world_classifier, tmp_path):
    cls = plugins().defenses.get(name)
    assert issubclass(cls, Defense) and cls.__doc__ and cls.description
    assert cls.kind() in ("none", "training", "test-time", "training+test-time")
    defense = cls(cls.smoke_config())  # training-time defenses: a few steps, not the full budget
    json.dumps(defense.params())  # parameters must be recordable in the protocol
    classifier, x = world_classifier
    context = DefenseContext(tmp_path, torch.device("cpu"), 0, original=classifier.model)
    model = defense.adapt_model(classifier.model, context)
    assert isinstance(model, ClipModel)
    defended = defense.wrap(classifier, context)
    torch.manual_seed(0)
    logits = defended(x)
    assert logits.shape == (len(x), classifier.num_classes) and logits.dtype == torch.float32
    if not cls.stochastic:
        torch.manual_seed(1)
        assert torch.allclose(defended(x), logits), "a defense not declared stochastic must be deterministic"
    if not cls.non_differentiable:
        x_grad = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(defended(x_grad).sum(), x_grad)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name", plugins().datasets.names())
def test_every_dataset_conforms(name):
    plugin = plugins().datasets.get(name)
    assert plugin.description and plugin.splits
    assert plugin.status(None) in ("ready", "generated", "missing")
    if plugin.status(None) == "missing":  # a dataset on disk: without files it fails fast, saying what to do
        with pytest.raises(DatasetNotFoundError) as info:
            plugin.load(None)
        assert str(info.value) and "\n" not in str(info.value)
        return  # its items are checked from fabricated files (tests/test_datasets_real.py for the built-ins)
    dataset = plugin.load(None)
    assert isinstance(dataset, ZeroShotDataset) and dataset.split == plugin.splits[0]
    assert len(dataset) > 0 and dataset.num_classes >= 2
    assert all(t.count("{}") == 1 for t in dataset.templates) and dataset.templates
    assert len(set(dataset.classnames)) == dataset.num_classes
    for index in (0, len(dataset) - 1):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.ndim == 3 and image.shape[0] == 3
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(label, int) and 0 <= label < dataset.num_classes


@pytest.mark.parametrize("name", plugins().models.names())
def test_every_model_conforms(name):
    model = plugins().models.get(name).load()
    tokens = model.tokenizer(["a photo of a red circle.", "two shapes"])
    assert tokens.dtype == torch.long and tokens.shape[0] == 2
    with torch.no_grad():
        text = model.module.encode_text(tokens)
        image = model.module.encode_image(torch.zeros(1, 3, *model.preprocess.size))
    assert text.shape[-1] == image.shape[-1]
    assert 0 < model.logit_scale <= 100 + 1e-3
    assert len(model.fingerprint) == 16
