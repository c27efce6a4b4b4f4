"""The fine-tuning engine: schedules, batch order, cache hit/miss, resume, loss curve, seeding, data errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from vlmbench import finetune
from vlmbench.defense import DefenseContext
from vlmbench.finetune import (
    CURVE_FILE, RECORD_FILE, RESUME_FILE, WEIGHTS_FILE, FineTuneConfig, FineTuneDefense, FineTuneError, Phase,
    Settings, Step, WorldTrainingSet, batch_indices, read_loss_curve, schedule, training_set,
)
from vlmbench.models import OpenClipModel, parameter_fingerprint
from vlmbench.world.tokenizer import WorldTokenizer

TINY = Settings(
    data="world-combo", batch_size=4, steps=4, lr=1e-3, warmup=1, optimizer="adamw", weight_decay=0.0,
    train_eps=2 / 255, attack="pgd", attack_steps=1, attack_step_size=1 / 255, logit_scale=0.0, trainable="visual",
)


@dataclass(frozen=True)
class ToyConfig(FineTuneConfig):
    weight: float = 1.0


class ToyCE(FineTuneDefense):
    """Cross-entropy on adversarial examples, for engine tests."""

    name: ClassVar[str] = "toy_ce"
    description: ClassVar[str] = "test"
    Config: ClassVar[type] = ToyConfig
    checkpoint_every: ClassVar[int] = 1
    calls = 0

    @classmethod
    def presets(cls) -> dict[str, Settings]:
        return {"paper": TINY, "world": TINY}

    def loss(self, step: Step) -> dict[str, torch.Tensor]:
        type(self).calls += 1
        x_adv = step.craft(step.student.logits, step.y)
        return {"ce": self.config.weight * F.cross_entropy(step.student.logits(x_adv), step.y)}


@pytest.fixture
def tiny_model(tiny_world_checkpoint):
    return OpenClipModel("tiny-world", "random init", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()


def context(tmp_path, model, seed=0):
    return DefenseContext(tmp_path / "cache", torch.device("cpu"), seed, None, model)


def test_phase_schedule_shapes():
    warm_cosine = Phase("a", steps=10, lr=1.0, warmup=2)
    lrs = [warm_cosine.lr_at(i) for i in range(10)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.05
    constant = Phase("b", steps=5, lr=0.1, warmup=0, decay="constant")
    assert [constant.lr_at(i) for i in range(5)] == [0.1] * 5
    plan = schedule([constant, warm_cosine])
    assert len(plan) == 15 and [p.name for p, _ in plan[4:6]] == ["b", "a"] and plan[5][1] == 0.5


def test_batch_order_is_a_function_of_seed_and_step():
    first = [batch_indices(10, 4, step, seed=0) for step in range(5)]
    epoch = torch.cat(first)[:10]
    assert sorted(epoch.tolist()) == list(range(10))  # each epoch is a permutation
    assert torch.equal(batch_indices(10, 4, 3, seed=0), first[3])
    assert not torch.equal(batch_indices(10, 4, 3, seed=1), first[3])


def test_world_training_set_is_disjoint_from_evaluation():
    data = WorldTrainingSet(size=8)
    assert len(data.classnames) == 30  # 36 colour-shape classes minus the 6 held out of pretraining
    x, y = data.batch([0, 1, 2])
    assert x.shape == (3, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1 and y.tolist() == [0, 1, 2]
    from vlmbench.registry import plugins

    test = plugins().datasets.get("world-combo").load(None, "test")
    assert not any(torch.equal(x[0], test[i][0]) for i in range(36))


def test_real_training_data_missing_is_a_one_line_error(tmp_path):
    with pytest.raises(FineTuneError, match="needs --data-root"):
        training_set("tinyimagenet", None, 224)
    with pytest.raises(FineTuneError, match="tiny-imagenet-200/train"):
        training_set("tinyimagenet", tmp_path, 224)
    with pytest.raises(FineTuneError, match="unknown training set"):
        training_set("cifar", tmp_path, 224)


def test_image_folder_training_set(tmp_path):
    from PIL import Image

    for wnid in ("n01", "n02"):
        (tmp_path / "tiny-imagenet-200" / "train" / wnid / "images").mkdir(parents=True)
        Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "tiny-imagenet-200" / "train" / wnid / "images" / "a.JPEG")
    (tmp_path / "tiny-imagenet-200" / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttabby cat\n")
    data = training_set("tinyimagenet", tmp_path, 32)
    assert data.classnames == ("goldfish", "tabby cat") and len(data) == 2
    x, y = data.batch([1, 0])
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 0] and float(x[0, 0].mean()) == pytest.approx(1.0, abs=0.01)


def test_cache_miss_trains_and_hit_reuses(tmp_path, tiny_model):
    ToyCE.calls = 0
    defense = ToyCE(ToyConfig(preset="world"))
    adapted = defense.adapt_model(tiny_model, context(tmp_path, tiny_model))
    assert ToyCE.calls == TINY.steps
    assert adapted.fingerprint != tiny_model.fingerprint == parameter_fingerprint(tiny_model.module)
    assert adapted.fingerprint == parameter_fingerprint(adapted.module)
    folder = defense.checkpoint
    assert {p.name for p in folder.iterdir()} >= {WEIGHTS_FILE, RECORD_FILE, CURVE_FILE, "key.json"}
    assert not (folder / RESUME_FILE).exists()
    curve = read_loss_curve(folder)
    assert list(curve["step"]) == list(range(TINY.steps)) and {"phase", "lr", "loss", "loss_ce"} <= set(curve.columns)
    again = ToyCE(ToyConfig(preset="world")).adapt_model(tiny_model, context(tmp_path, tiny_model))
    assert ToyCE.calls == TINY.steps and again.fingerprint == adapted.fingerprint  # cache hit: no training
    other = ToyCE(ToyConfig(preset="world", weight=0.5))
    other.adapt_model(tiny_model, context(tmp_path, tiny_model))
    assert other.checkpoint != folder and ToyCE.calls == 2 * TINY.steps  # any setting changes the key


def test_only_the_image_tower_trains_and_the_input_model_is_untouched(tmp_path, tiny_model):
    before = {k: v.clone() for k, v in tiny_model.module.state_dict().items()}
    adapted = ToyCE(ToyConfig(preset="world")).adapt_model(tiny_model, context(tmp_path, tiny_model))
    after = adapted.module.state_dict()
    assert all(torch.equal(before[k], tiny_model.module.state_dict()[k]) for k in before)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("visual.") for k in changed)
    assert not any(p.requires_grad for p in adapted.module.parameters())


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, tiny_model):
    settings = TINY
    straight = ToyCE(ToyConfig(preset="world"))
    expected = finetune.finetune(straight, tiny_model, context(tmp_path / "a", tiny_model), settings)
    interrupted = ToyCE(ToyConfig(preset="world"))
    finetune.finetune(interrupted, tiny_model, context(tmp_path / "b", tiny_model), settings, stop_after=2)
    assert (interrupted.checkpoint / RESUME_FILE).is_file() and not (interrupted.checkpoint / WEIGHTS_FILE).exists()
    ToyCE.calls = 0
    resumed = finetune.finetune(interrupted, tiny_model, context(tmp_path / "b", tiny_model), settings)
    assert ToyCE.calls == settings.steps - 2  # only the remaining steps ran
    assert resumed.fingerprint == expected.fingerprint
    assert len(read_loss_curve(interrupted.checkpoint)) == settings.steps


def test_seed_changes_the_checkpoint(tmp_path, tiny_model):
    a, b = ToyCE(ToyConfig(preset="world")), ToyCE(ToyConfig(preset="world"))
    first = a.adapt_model(tiny_model, context(tmp_path, tiny_model, seed=0))
    second = b.adapt_model(tiny_model, context(tmp_path, tiny_model, seed=1))
    assert a.checkpoint != b.checkpoint and first.fingerprint != second.fingerprint


def test_presets_and_overrides(tiny_model):
    from vlmbench.finetune import resolve_settings

    presets = {"paper": TINY, "world": TINY.__class__(**{**TINY.__dict__, "lr": 5.0})}
    assert resolve_settings(ToyConfig(), presets, tiny_model).lr == 1e-3  # not a world model: paper
    assert resolve_settings(ToyConfig(preset="world"), presets, tiny_model).lr == 5.0
    assert resolve_settings(ToyConfig(preset="world", lr=0.25), presets, tiny_model).lr == 0.25


def test_an_edited_defense_source_never_reuses_the_old_checkpoint(tmp_path, tiny_model, monkeypatch):
    """The checkpoint key covers the defense's source fingerprint: editing the loss retrains."""
    import vlmbench.finetune as finetune

    ToyCE.calls = 0
    first = ToyCE(ToyConfig(preset="world"))
    first.adapt_model(tiny_model, context(tmp_path, tiny_model))
    monkeypatch.setattr(finetune, "source_fingerprint", lambda plugin: "edited-source")
    edited = ToyCE(ToyConfig(preset="world"))
    edited.adapt_model(tiny_model, context(tmp_path, tiny_model))
    assert edited.checkpoint != first.checkpoint and ToyCE.calls == 2 * TINY.steps
