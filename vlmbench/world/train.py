"""Contrastive training of the world's tiny CLIP models, saved in open_clip's ``local-dir:`` format.

Two models share one text tower configuration and differ in the image tower:

* ``world-vit``: a Vision Transformer (32x32 input, 4x4 patches);
* ``world-rn``: open_clip's ModifiedResNet with one bottleneck per stage.

Training (:func:`train_world_model`) renders ``n_pairs`` pretraining pairs (held-out shape-colour
combinations excluded), then runs AdamW with linear warm-up and cosine decay on open_clip's
``ClipLoss``, clamping the logit scale to ``ln 100``, on CPU with ``recipe.threads`` threads. Given
the same recipe, torch version and thread count the result is reproducible. The shipped recipes
(:data:`RECIPES`: 1000 steps of 128 pairs drawn from 30 000) take about 2.5 min (``world-rn``) and
6.5 min (``world-vit``) on one CPU thread.

Output folder (loadable with ``open_clip.create_model("local-dir:<folder>")``):

* ``open_clip_config.json``: ``{"model_cfg": ..., "preprocess_cfg": ..., "vlmbench_tokenizer": ...}``
  (the last names the tokenizer factory as ``"module:attr"``; open_clip ignores it);
* ``open_clip_model.safetensors``: the fp32 state dict;
* ``recipe.json``: the recipe, the safetensors file's sha256, initial/final loss, wall time, versions.

The models expect images normalised with ``preprocess_cfg`` mean/std and text from
:class:`vlmbench.world.tokenizer.WorldTokenizer`.

Command line: ``vlmbench world train --model world-vit --out DIR [--steps N ...]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.loss import ClipLoss
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors.torch import save_file

from vlmbench.world.render import IMAGE_SIZE, pretraining_set
from vlmbench.world.tokenizer import WorldTokenizer

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
RECIPE_FILE = "recipe.json"
TOKENIZER_SPEC = "vlmbench.world.tokenizer:WorldTokenizer"

# Approximate per-channel pixel statistics of the pretraining images.
WORLD_MEAN: tuple[float, float, float] = (0.50, 0.50, 0.50)
WORLD_STD: tuple[float, float, float] = (0.12, 0.11, 0.12)
MAX_LOGIT_SCALE = math.log(100.0)
LOSS_WINDOW = 20  # initial/final loss: mean over this many steps (at most a quarter of the run)

_TOKENIZER = WorldTokenizer()
_TEXT_CFG: dict[str, Any] = {
    "context_length": _TOKENIZER.context_length,
    "vocab_size": _TOKENIZER.vocab_size,
    "width": 64,
    "heads": 4,
    "layers": 2,
}
MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "world-vit": {
        "embed_dim": 64,
        "vision_cfg": {
            "image_size": IMAGE_SIZE,
            "patch_size": 4,
            "width": 96,
            "layers": 4,
            "head_width": 32,
            "mlp_ratio": 2.0,
        },
        "text_cfg": _TEXT_CFG,
    },
    "world-rn": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": _TEXT_CFG,
    },
}
PREPROCESS_CFG: dict[str, Any] = {
    "mean": list(WORLD_MEAN),
    "std": list(WORLD_STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "size": IMAGE_SIZE,
}


@dataclass(frozen=True)
class TrainRecipe:
    """Everything that determines a trained world model.

    Attributes:
        model: key of :data:`MODEL_CONFIGS` (``"world-vit"`` or ``"world-rn"``).
        steps: optimiser steps; batch_size: pairs per step.
        lr: peak AdamW learning rate; weight_decay: on weights with >= 2 dims only.
        warmup_steps: linear warm-up length (capped at ``steps // 10``), then cosine decay to zero.
        n_pairs: pretraining pairs rendered (``0..n_pairs-1`` of the pretraining stream).
        seed: model initialisation and batch order; data_seed: the pretraining stream's seed.
        threads: torch CPU threads used while training.
    """

    model: str
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    n_pairs: int = 30000
    seed: int = 0
    data_seed: int = 0
    threads: int = 1


RECIPES: dict[str, TrainRecipe] = {
    "world-vit": TrainRecipe(model="world-vit"),
    "world-rn": TrainRecipe(model="world-rn"),
}


def build_model(model_cfg: dict[str, Any], seed: int) -> open_clip.CLIP:
    """A freshly initialised CLIP from an open_clip ``model_cfg``; same seed, same weights."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**copy.deepcopy(model_cfg))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """Map images in ``[0, 1]`` (``(..., 3, H, W)``) to model inputs using :data:`PREPROCESS_CFG`."""
    mean = torch.tensor(WORLD_MEAN, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(WORLD_STD, dtype=images.dtype).view(3, 1, 1)
    return (images - mean) / std


def learning_rate(recipe: TrainRecipe, step: int) -> float:
    """Learning rate at ``step`` (0-based): linear warm-up to ``lr``, then cosine decay to 0.

    The warm-up lasts ``warmup_steps``, capped at a tenth of ``steps`` (at least one step), so that
    a run shortened with ``--steps`` still reaches its peak rate and decays.
    """
    warmup = max(1, min(recipe.warmup_steps, recipe.steps // 10))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe.steps - warmup)
    return 0.5 * recipe.lr * (1.0 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, recipe: TrainRecipe) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6)


def _batches(n: int, batch_size: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` index batches, drawn epoch by epoch from seeded permutations of ``range(n)``."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def clip_loss(model: open_clip.CLIP, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Symmetric contrastive loss of a batch: ``images`` in ``[0, 1]`` ``(B, 3, 32, 32)``, ``tokens`` ``(B, L)``."""
    image_features, text_features, logit_scale = model(normalise(images), tokens)
    return ClipLoss()(image_features, text_features, logit_scale)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_checkpoint(model: open_clip.CLIP, model_cfg: dict[str, Any], out_dir: Path, record: dict[str, Any]) -> Path:
    """Write ``model`` to ``out_dir`` in ``local-dir:`` format; ``record`` goes to ``recipe.json`` with the sha256."""
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS_CFG, "vlmbench_tokenizer": TOKENIZER_SPEC}
    (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {name: tensor.detach().float().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    record = {**record, "sha256": _sha256(out_dir / WEIGHTS_FILE)}
    (out_dir / RECIPE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def _progress_bar(enabled: bool) -> Progress:
    """A progress bar with the loss in its description; hidden when not ``enabled``."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def train_world_model(recipe: TrainRecipe, out_dir: Path, progress: bool = True) -> Path:
    """Train ``recipe.model`` following ``recipe`` and save it to ``out_dir``; returns ``out_dir``.

    Raises:
        KeyError: unknown ``recipe.model``.
    """
    model_cfg = MODEL_CONFIGS[recipe.model]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    start = time.perf_counter()
    try:
        images, captions = pretraining_set(recipe.n_pairs, recipe.data_seed)
        images = torch.from_numpy(images)
        tokens = _TOKENIZER(captions)
        model = build_model(model_cfg, recipe.seed)
        model.train()
        optimizer = _optimizer(model, recipe)
        losses: list[float] = []
        with _progress_bar(progress) as bar:
            task = bar.add_task(f"{recipe.model} training", total=recipe.steps)
            for step, index in enumerate(_batches(recipe.n_pairs, recipe.batch_size, recipe.steps, recipe.seed)):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(recipe, step)
                loss = clip_loss(model, images[index].float() / 255.0, tokens[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
                losses.append(loss.item())
                bar.update(task, advance=1, description=f"{recipe.model} loss {loss.item():.3f}")
    finally:
        torch.set_num_threads(previous_threads)
    window = max(1, min(LOSS_WINDOW, len(losses) // 4))
    record = {
        "recipe": asdict(recipe),
        "initial_loss": float(np.mean(losses[:window])),
        "final_loss": float(np.mean(losses[-window:])),
        "loss_window": window,
        "wall_time_s": round(time.perf_counter() - start, 1),
        "torch_version": torch.__version__,
        "open_clip_version": open_clip.__version__,
        "numpy_version": np.__version__,
        "tokenizer": TOKENIZER_SPEC,
    }
    model.eval()
    return save_checkpoint(model, model_cfg, Path(out_dir), record)
