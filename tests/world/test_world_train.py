"""Training the world models: a short real run, reproducibility, and the shipped checkpoints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import open_clip
import pytest
from typer.testing import CliRunner
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vlmbench.cli import app
from vlmbench.world import WORLD_MODEL_NAMES, checkpoint_dir
from vlmbench.world.datasets import WORLD_DATASETS
from vlmbench.world.render import pretraining_pair
from vlmbench.world.tokenizer import WorldTokenizer
from vlmbench.world.train import (
    CONFIG_FILE,
    MAX_LOGIT_SCALE,
    MODEL_CONFIGS,
    RECIPE_FILE,
    RECIPES,
    TOKENIZER_SPEC,
    WEIGHTS_FILE,
    TrainRecipe,
    build_model,
    clip_loss,
    learning_rate,
    normalise,
    train_world_model,
)

TINY = {"steps": 40, "batch_size": 32, "n_pairs": 256, "warmup_steps": 5, "lr": 2e-3}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _held_out_batch(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Pretraining pairs beyond the tiny recipe's ``n_pairs``: never trained on."""
    pairs = [pretraining_pair(10_000 + i, 0) for i in range(n)]
    images = torch.stack([torch.from_numpy(image) for image, _ in pairs])
    return images, WorldTokenizer()([text for _, text in pairs])


def test_learning_rate_warms_up_then_decays_to_zero():
    recipe = TrainRecipe(model="world-rn", steps=100, warmup_steps=10, lr=1e-3)
    rates = [learning_rate(recipe, step) for step in range(recipe.steps + 1)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(rates[:10], rates[1:10]))
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    short = dataclasses.replace(recipe, steps=20)  # warm-up capped at a tenth of the run
    assert learning_rate(short, 1) == pytest.approx(1e-3) and learning_rate(short, 19) < 1e-4


@pytest.mark.parametrize("model", ["world-rn", "world-vit"])
def test_short_training_writes_a_loadable_checkpoint_whose_loss_went_down(model, tmp_path):
    recipe = dataclasses.replace(RECIPES[model], **TINY)
    out = train_world_model(recipe, tmp_path / model, progress=False)
    assert {p.name for p in out.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE, RECIPE_FILE}

    record = json.loads((out / RECIPE_FILE).read_text())
    assert record["recipe"] == dataclasses.asdict(recipe)
    assert record["sha256"] == _sha256(out / WEIGHTS_FILE)
    assert record["final_loss"] < record["initial_loss"]
    assert record["wall_time_s"] > 0 and record["torch_version"] == torch.__version__

    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["model_cfg"] == MODEL_CONFIGS[model] and config["preprocess_cfg"]["size"] == 32
    assert config["vlmbench_tokenizer"] == TOKENIZER_SPEC

    loaded = open_clip.create_model(f"local-dir:{out}").eval()
    saved = load_file(str(out / WEIGHTS_FILE))
    assert all(saved[k].dtype == torch.float32 for k in saved)
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())
    assert 0.0 <= float(loaded.logit_scale.detach()) <= MAX_LOGIT_SCALE + 1e-6

    images, tokens = _held_out_batch()
    untrained = build_model(MODEL_CONFIGS[model], recipe.seed).eval()
    with torch.no_grad():
        assert clip_loss(loaded, images, tokens) < clip_loss(untrained, images, tokens)


def test_training_is_reproducible_from_the_recipe_and_the_cli_applies_overrides(tmp_path):
    recipe = dataclasses.replace(RECIPES["world-rn"], steps=6, batch_size=16, n_pairs=64, warmup_steps=2)
    by_function = train_world_model(recipe, tmp_path / "a", progress=False)
    result = CliRunner().invoke(app, ["world", "train", "--model", "world-rn", "--out", str(tmp_path / "b"), "--steps", "6",
                                      "--batch-size", "16", "--n-pairs", "64", "--warmup-steps", "2"])
    assert result.exit_code == 0, result.output
    first = json.loads((by_function / RECIPE_FILE).read_text())
    second = json.loads((tmp_path / "b" / RECIPE_FILE).read_text())
    assert second["recipe"] == first["recipe"]
    assert second["sha256"] == first["sha256"] == _sha256(tmp_path / "b" / WEIGHTS_FILE)


@pytest.mark.parametrize("name", WORLD_MODEL_NAMES)
def test_shipped_checkpoint_matches_its_recipe(name):
    folder = checkpoint_dir(name)
    record = json.loads((folder / RECIPE_FILE).read_text())
    assert record["sha256"] == _sha256(folder / WEIGHTS_FILE)
    assert record["recipe"] == dataclasses.asdict(RECIPES[name])
    assert record["final_loss"] < record["initial_loss"]
    config = json.loads((folder / CONFIG_FILE).read_text())
    assert config["model_cfg"] == MODEL_CONFIGS[name]
    assert config["model_cfg"]["text_cfg"]["vocab_size"] == WorldTokenizer().vocab_size


@pytest.mark.parametrize("name", WORLD_MODEL_NAMES)
def test_shipped_checkpoint_classifies_colours_zero_shot(name):
    model = open_clip.create_model(f"local-dir:{checkpoint_dir(name)}").eval()
    dataset = WORLD_DATASETS["world-colour"].load(None, "val")
    tokenizer = WorldTokenizer()
    with torch.no_grad():
        weights = torch.stack([
            F.normalize(F.normalize(model.encode_text(tokenizer(dataset.prompts(c))), dim=-1).mean(0), dim=0)
            for c in dataset.classnames
        ])
        images, labels = zip(*(dataset[i] for i in range(60)))
        features = F.normalize(model.encode_image(normalise(torch.stack(images))), dim=-1)
    accuracy = ((features @ weights.T).argmax(1) == torch.tensor(labels)).float().mean()
    assert accuracy >= 0.9


def test_unknown_world_model_is_a_key_error():
    with pytest.raises(KeyError):
        checkpoint_dir("world-nope")
