"""The fine-tuning engine of training-time defenses (adversarial fine-tuning, distillation).

The engine knows nothing about any one method. A method is a :class:`FineTuneDefense` plugin that
supplies four things, the parts of its paper's algorithm box:

* :meth:`FineTuneDefense.presets`: its hyperparameters (``"paper"`` and ``"world"``, see below);
* :meth:`FineTuneDefense.phases`: the learning-rate schedule, one or more :class:`Phase`;
* :meth:`FineTuneDefense.references`: frozen models it compares with (the original model, a proxy);
* :meth:`FineTuneDefense.loss`: its loss on one :class:`Step` (clean batch, labels, class texts, the
  trainable student, the frozen references, and the inner attack to craft adversarial examples with).

The engine owns everything else:

* **training data** (:func:`training_set`): ``world-combo`` (the embedded world's 36 colour × shape
  classes, a ``train`` stream disjoint from every evaluation split — the world's analogue of
  fine-tuning on ImageNet and evaluating zero-shot elsewhere), or ``tinyimagenet`` / ``imagenet`` read
  as image folders under ``data_root`` for real runs;
* **the inner attack**: any registered attack, built from the registry with a
  :class:`~vlmbench.protocol.ThreatModel` (``attack``, ``train_eps``, ``attack_steps``,
  ``attack_step_size``), crafting on a logits function the method chooses;
* **which parameters train** (the image tower by default, or everything), the **optimizer** (SGD with
  momentum or AdamW), the **schedule** (phases, each with linear warm-up then cosine or constant),
  **logit-scale handling** (the learned scale is clamped to ≤ 100 when it trains; a fixed temperature
  may replace it in the method's logits), and **seeding**: batch order and every batch's attack
  randomness are functions of (seed, step), so a resumed run equals an uninterrupted one;
* **the checkpoint cache**: ``cache_dir/<defense>/<key>/`` where ``key`` hashes everything that
  determines the weights (engine version, method name/version/settings, model and reference weight
  fingerprints, training data, seed). It holds ``weights.safetensors`` (the trained parameters),
  ``train.json`` (the full key record, final loss, wall time) and ``loss_curve.parquet`` (one row per
  step: phase, learning rate, loss and its terms). While training, ``resume.pt`` is rewritten
  atomically every ``checkpoint_every`` steps; an interrupted training resumes from it.
* **progress**: a callback ``(key, description, done, total)`` (:func:`reporting` installs one for a
  block of code; the CLI shows it as a progress bar with the loss and an ETA).

Presets. Every method has its papers' hyperparameters as the ``paper`` preset and hyperparameters tuned
for the embedded world's tiny models as the ``world`` preset (far fewer steps on 32×32 images, a larger
learning rate). ``preset=auto`` (default) takes ``world`` for the world's models and ``paper``
otherwise; any single hyperparameter set explicitly (``--defense-param lr=1e-4``) overrides the preset.
Both presets are printed in each plugin's docstring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import json
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from vlmbench.classifier import resize_and_normalize
from vlmbench.defense import Defense, DefenseContext
from vlmbench.errors import VlmbenchError
from vlmbench.fingerprint import source_fingerprint
from vlmbench.models import ClipModel, freeze, parameter_fingerprint, sequence_first_attention
from vlmbench.paths import write_atomically
from vlmbench.protocol import ThreatModel

if TYPE_CHECKING:
    import pandas as pd

ENGINE_VERSION = "1"
WEIGHTS_FILE = "weights.safetensors"
RECORD_FILE = "train.json"
CURVE_FILE = "loss_curve.parquet"
RESUME_FILE = "resume.pt"
MAX_LOGIT_SCALE = math.log(100.0)
WORLD_MODELS = ("world-vit", "world-rn")


class FineTuneError(VlmbenchError):
    """A fine-tuning request that cannot be carried out (missing training data, bad settings...)."""


# ---------------------------------------------------------------------------------------------- progress

ProgressFn = Callable[[str, str, int, int], None]
"""``(key, description, done, total)``: ``key`` names one training run, ``description`` carries the loss."""

_REPORTER: contextvars.ContextVar[ProgressFn | None] = contextvars.ContextVar("vlmbench_finetune_progress", default=None)


@contextlib.contextmanager
def reporting(callback: ProgressFn) -> Iterator[None]:
    """Send the progress of every fine-tuning started inside the block to ``callback``."""
    token = _REPORTER.set(callback)
    try:
        yield
    finally:
        _REPORTER.reset(token)


# ---------------------------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class Phase:
    """One phase of training with its own learning-rate schedule.

    Attributes:
        name: shown in the loss curve and passed to the method's loss (``"hpt"``, ``"warmup"``...).
        steps: optimiser steps in this phase.
        lr: peak learning rate.
        warmup: linear warm-up steps from ``lr/warmup`` to ``lr`` (capped at the phase length).
        decay: after warm-up, ``cosine`` decay to 0 over the rest of the phase, or ``constant``.
    """

    name: str
    steps: int
    lr: float
    warmup: int = 0
    decay: Literal["cosine", "constant"] = "cosine"

    def lr_at(self, step: int) -> float:
        """Learning rate at ``step`` (0-based, within the phase)."""
        warmup = min(self.warmup, self.steps)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.decay == "constant":
            return self.lr
        progress = (step - warmup) / max(1, self.steps - warmup)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * progress))


def schedule(phases: Sequence[Phase]) -> list[tuple[Phase, float]]:
    """The (phase, learning rate) of every global step, phases in order."""
    return [(phase, phase.lr_at(i)) for phase in phases for i in range(phase.steps)]


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The training hyperparameters every method shares (resolved: no ``None``).

    Attributes:
        data: training set (:func:`training_set`): ``world-combo``, ``tinyimagenet`` or ``imagenet``.
        batch_size: images per step.
        steps: optimiser steps (all phases together; a method with phases splits them).
        lr: peak learning rate; warmup: linear warm-up steps.
        optimizer: ``sgd`` (momentum 0.9) or ``adamw``; weight_decay: its weight decay.
        train_eps: ε of the inner attack (ℓ∞, [0,1] pixel scale); attack: registered attack name;
        attack_steps, attack_step_size: its budget.
        logit_scale: temperature of the method's logits; ``0`` = the model's learned scale.
        trainable: ``visual`` (image tower), ``visual+text_projection`` (the image tower and the text
            tower's final projection, a parameter named ``text_projection``) or ``all``.
    """

    data: str
    batch_size: int
    steps: int
    lr: float
    warmup: int
    optimizer: Literal["sgd", "adamw"]
    weight_decay: float
    train_eps: float
    attack: str
    attack_steps: int
    attack_step_size: float
    logit_scale: float
    trainable: Literal["visual", "visual+text_projection", "all"]


@dataclass(frozen=True)
class FineTuneConfig:
    """Parameters every fine-tuning defense takes; ``None`` means "the preset's value".

    Attributes:
        preset: ``auto`` (``world`` for the world's models, else ``paper``), ``paper`` or ``world``.
        data, batch_size, steps, lr, warmup, optimizer, weight_decay, train_eps, attack, attack_steps,
        attack_step_size, logit_scale, trainable: override one setting of the preset (see :class:`Settings`).
        seed: training seed offset, added to the run's ``--seed``.
    """

    preset: Literal["auto", "paper", "world"] = "auto"
    data: str | None = None
    batch_size: int | None = None
    steps: int | None = None
    lr: float | None = None
    warmup: int | None = None
    optimizer: Literal["sgd", "adamw"] | None = None
    weight_decay: float | None = None
    train_eps: float | None = None
    attack: str | None = None
    attack_steps: int | None = None
    attack_step_size: float | None = None
    logit_scale: float | None = None
    trainable: Literal["visual", "visual+text_projection", "all"] | None = None
    seed: int = 0


def original_model(model: ClipModel, context: DefenseContext) -> ClipModel:
    """The model before any training-time defense ran (``context.original``, else ``model``)."""
    return context.original if context.original is not None else model


def is_world_model(model: ClipModel) -> bool:
    return model.name in WORLD_MODELS


def resolve_settings(config: FineTuneConfig, presets: dict[str, Settings], model: ClipModel) -> Settings:
    """The preset chosen by ``config.preset`` (``auto``: by model family) with ``config``'s overrides."""
    name = config.preset if config.preset != "auto" else ("world" if is_world_model(model) else "paper")
    overrides = {f.name: getattr(config, f.name) for f in dataclasses.fields(Settings) if getattr(config, f.name) is not None}
    return dataclasses.replace(presets[name], **overrides)


# ---------------------------------------------------------------------------------------------- data


class TrainingSet:
    """Labelled training images with the text side of their label space.

    Attributes:
        name: as given to :func:`training_set`; fingerprint: identifies the images (for the cache key).
        classnames, templates: class names and prompt templates (class texts = the prompt ensemble).
    """

    name: str
    fingerprint: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(B,3,H,W)`` float32 in [0,1] and labels ``(B,)`` int64."""
        raise NotImplementedError


class WorldTrainingSet(TrainingSet):
    """The world's ``world-combo`` classes (36 colour × shape) drawn from a ``train`` stream.

    Item ``i`` is rendered from ``item_rng("world-combo/train", i, seed)``: a stream no evaluation
    split draws from (``test`` and ``val`` use their own names), so training and evaluation images
    never coincide. The six shape-colour combinations held out of the world's pretraining are
    excluded here too, so that world-combo's test split keeps unseen combinations.
    """

    SIZE = 20_000

    def __init__(self, size: int | None = None) -> None:
        size = size or self.SIZE
        from vlmbench.world.datasets import DATASET_SEED, WORLD_COMBO, WorldDataset
        from vlmbench.world.render import HELD_OUT

        self.name = "world-combo"
        keep = [i for i, a in enumerate(WORLD_COMBO.class_attributes) if (a["shape"], a["colour"]) not in HELD_OUT]
        self.classnames = tuple(WORLD_COMBO.classnames[i] for i in keep)
        self.templates = WORLD_COMBO.templates
        self._dataset = WorldDataset(
            "world-combo", "train", self.classnames, self.templates,
            tuple(WORLD_COMBO.class_attributes[i] for i in keep), size, DATASET_SEED,
        )
        self.fingerprint = f"world-combo/train/{size}/{DATASET_SEED}/{len(keep)}"

    def __len__(self) -> int:
        return len(self._dataset)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self._dataset[int(i)] for i in indices]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


class ImageFolderTrainingSet(TrainingSet):
    """A ``train/<class>/<image>`` folder (ImageNet, TinyImageNet), resized to ``size`` (short side,
    centre crop).

    Class names are those the same classes carry at evaluation, so that training prompts, evaluation
    prompts and the shipped class hierarchies (``vlmbench/hierarchies/wordnet.json``) name a class
    alike: for ``imagenet`` the ImageNet-1k synset folders (``n01440764``, ...) get vlmbench's ImageNet
    class names (CLIP's, as the ``imagenet`` dataset uses them); other folders, and every TinyImageNet
    folder, the first name of their synset in ``words.txt`` / ``LOC_synset_mapping.txt`` next to
    ``train/`` when present (TinyImageNet's own names, as the ``tinyimagenet`` dataset uses them), else
    the folder name. The names are part of :attr:`fingerprint`: renamed classes never reuse a checkpoint.
    """

    EXTENSIONS = (".jpeg", ".jpg", ".png")

    def __init__(self, name: str, root: Path, size: int) -> None:
        self.name = name
        train = root / "train"
        classes = sorted(p.name for p in train.iterdir() if p.is_dir())
        names = _synset_names(root)
        if name == "imagenet":
            from vlmbench.datasets import text

            meta = text.imagenet()
            names |= dict(zip(meta["wnids"], meta["classnames"]))
        self.classnames = tuple(names.get(c, c) for c in classes)
        self.templates = ("This is a photo of a {}",)  # TeCoA / PMG-AFT / TGA-ZSR / HPT-GPD prompt
        self.files = [
            (f, label) for label, c in enumerate(classes)
            for f in sorted((train / c).rglob("*")) if f.suffix.lower() in self.EXTENSIONS
        ]
        self.size = size
        named = hashlib.sha256("\n".join(self.classnames).encode()).hexdigest()[:12]
        self.fingerprint = f"{name}:{root.resolve()}:{len(classes)}:{len(self.files)}:{size}:names={named}"

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, ImageOps

        images, labels = [], []
        for i in indices:
            path, label = self.files[int(i)]
            with Image.open(path) as image:
                square = ImageOps.fit(image.convert("RGB"), (self.size, self.size), Image.Resampling.BICUBIC)
            images.append(torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1))
            labels.append(label)
        return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def _synset_names(root: Path) -> dict[str, str]:
    for filename, sep in (("words.txt", "\t"), ("LOC_synset_mapping.txt", " ")):
        path = root / filename
        if path.is_file():
            pairs = (line.split(sep, 1) for line in path.read_text().splitlines() if sep in line)
            return {wnid: names.split(",")[0].strip() for wnid, names in pairs}
    return {}


REAL_TRAINING_SETS = {"tinyimagenet": "tiny-imagenet-200", "imagenet": "imagenet"}


def training_set(name: str, data_root: Path | None, image_size: int) -> TrainingSet:
    """The training set ``name``: ``world-combo``, or ``tinyimagenet`` / ``imagenet`` found as
    ``<data_root>/tiny-imagenet-200/train/`` / ``<data_root>/imagenet/train/`` (class folders).

    Raises:
        FineTuneError: unknown name or missing folder (one line saying where it was looked for).
    """
    if name == "world-combo":
        return WorldTrainingSet()
    if name not in REAL_TRAINING_SETS:
        raise FineTuneError(f"unknown training set {name!r}; known: world-combo, {', '.join(REAL_TRAINING_SETS)}")
    if data_root is None:
        raise FineTuneError(f"training set {name!r} needs --data-root (or VLMBENCH_DATA_ROOT) with {REAL_TRAINING_SETS[name]}/train/")
    root = Path(data_root) / REAL_TRAINING_SETS[name]
    if not (root / "train").is_dir():
        raise FineTuneError(f"training set {name!r} not found: expected class folders under {root / 'train'}")
    return ImageFolderTrainingSet(name, root, image_size)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of global ``step``: epoch ``e`` is a permutation of ``range(n)`` seeded by (seed, e);
    steps take consecutive slices of the concatenated epochs (a function of (seed, step) only)."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(_derive(seed, "epoch", epoch)))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def _derive(seed: int, *parts: Any) -> int:
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------------------------------- models in training


class Encoder:
    """A CLIP model seen by a training loss: pixels in [0,1] → embeddings or class logits.

    Attributes:
        model: the :class:`ClipModel` (the student's module trains; a reference's is frozen).
        text: unit class-text embeddings ``(C, D)`` of the training label space (computed once with
            the model's own text tower; recomputed per step, with gradient, if the text tower trains).
        scale: temperature of :meth:`logits` (the learned scale, or the method's fixed one).
    """

    def __init__(self, model: ClipModel, tokens: torch.Tensor, n_classes: int, scale: float, text_trains: bool) -> None:
        self.model = model
        self._tokens = tokens
        self._n_classes = n_classes
        self._fixed_scale = scale
        self._text_trains = text_trains
        self._text: torch.Tensor | None = None

    @property
    def text(self) -> torch.Tensor:
        if self._text is None or self._text_trains:
            with torch.set_grad_enabled(self._text_trains):
                per_prompt = F.normalize(self.model.module.encode_text(self._tokens).float(), dim=-1)
                text = F.normalize(per_prompt.view(self._n_classes, -1, per_prompt.shape[-1]).mean(dim=1), dim=-1)
            if self._text_trains:
                return text
            self._text = text
        return self._text

    @property
    def scale(self) -> torch.Tensor | float:
        return self.model.module.logit_scale.exp() if self._fixed_scale == 0 else self._fixed_scale

    def features(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings ``(N, D)`` of pixels ``x`` in [0,1] (resized and normalised inside)."""
        f = self.model.module.encode_image(resize_and_normalize(x, self.model.preprocess))
        return F.normalize(f, dim=-1) if normalize else f

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``scale · cos(f(x), t_c)`` over the training classes ``(N, C)``; differentiable in ``x``."""
        return self.scale * self.features(x, normalize=True) @ self.text.T


@dataclass
class Step:
    """What a method's loss sees at one training step.

    Attributes:
        x: clean images ``(B,3,H,W)`` in [0,1]; y: labels ``(B,)``.
        student: the model being trained (its trainable parameters carry gradients).
        refs: the frozen reference models, by the names :meth:`FineTuneDefense.references` gave.
        phase: the current :class:`Phase` (its name selects phase-dependent terms).
        settings: the resolved hyperparameters.
        craft: ``craft(logits_fn, labels) -> x_adv``: the inner attack, maximising its loss of
            ``logits_fn`` around ``x`` within ``train_eps`` (seeded per step).
    """

    x: torch.Tensor
    y: torch.Tensor
    student: Encoder
    refs: dict[str, Encoder]
    phase: Phase
    settings: Settings
    craft: Callable[[Callable[[torch.Tensor], torch.Tensor], torch.Tensor], torch.Tensor]


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                  reduction: Literal["sum", "batchmean"] = "sum") -> torch.Tensor:
    """``KL(softmax(teacher) || softmax(student))``; ``sum`` adds over the batch (torch's
    ``KLDivLoss(reduction="sum")``, as PMG-AFT and HPT-GPD use it), ``batchmean`` averages over it.
    The teacher is detached."""
    teacher = F.softmax(teacher_logits.detach(), dim=-1)
    return F.kl_div(F.log_softmax(student_logits, dim=-1), teacher, reduction=reduction)


# ---------------------------------------------------------------------------------------------- the plugin base


class FineTuneDefense(Defense):
    """Base of training-time defenses trained by the engine; ``adapt_model`` trains or loads from cache.

    Subclasses set ``Config`` (a subclass of :class:`FineTuneConfig` adding the method's own loss
    weights), :meth:`presets` and :meth:`loss`, and optionally :meth:`phases` and :meth:`references`.
    """

    Config: ClassVar[type] = FineTuneConfig
    checkpoint_every: ClassVar[int] = 25

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.settings: Settings | None = None  # resolved by the last adapt_model
        self.checkpoint: Path | None = None  # its cache folder

    @classmethod
    @abstractmethod
    def presets(cls) -> dict[str, Settings]:
        """``{"paper": ..., "world": ...}``: the paper's hyperparameters and the world-tuned ones."""

    @abstractmethod
    def loss(self, step: Step) -> dict[str, torch.Tensor]:
        """The loss terms of one step (already weighted); the engine minimises their sum."""

    def phases(self, settings: Settings) -> tuple[Phase, ...]:
        """The schedule; default one phase: warm-up then cosine decay over ``settings.steps``."""
        return (Phase("train", settings.steps, settings.lr, settings.warmup),)

    def references(self, model: ClipModel, context: DefenseContext, settings: Settings) -> dict[str, ClipModel]:
        """Frozen models the loss compares with, by name (default none); :func:`original_model` gives
        the model before any training-time defense."""
        return {}

    def prepare(self, model: ClipModel, data: TrainingSet, context: DefenseContext, settings: Settings) -> dict[str, Any]:
        """Called once per :func:`finetune`, before the cache lookup, with the model to fine-tune and the
        training set (its class names and templates), for what the loss needs beyond a :class:`Step`
        (prompts of its own, say). Returns what else determines the weights (a data file's content hash,
        say): added to the cache key when not empty. Default: nothing to prepare, ``{}``."""
        return {}

    def craft_on(self, step: Step) -> Callable[[torch.Tensor], torch.Tensor]:
        """The logits function the inner attack maximises its loss on (default: the student's)."""
        return step.student.logits

    def adapt_model(self, model: ClipModel, context: DefenseContext) -> ClipModel:
        settings = resolve_settings(self.config, self.presets(), model)
        self.settings = settings
        return finetune(self, model, context, settings)

    def is_cached(self, model: ClipModel, context: DefenseContext) -> bool:
        """Whether the checkpoint for ``model`` is finished in the cache (nothing is trained)."""
        folder = checkpoint_folder(self, model, context, resolve_settings(self.config, self.presets(), model))[0]
        return load_cached(folder, model, check_only=True) is not None

    def params(self) -> dict[str, Any]:
        """The configuration, and after :meth:`adapt_model` the resolved settings it trained with."""
        params = super().params()
        if self.settings is not None:
            params["resolved"] = dataclasses.asdict(self.settings)
        return params

    @classmethod
    def smoke_config(cls) -> Any:
        """A tiny budget (2 steps of 4 images) for contract tests."""
        return cls.Config(steps=2, batch_size=4, attack_steps=1, warmup=0)


# ---------------------------------------------------------------------------------------------- the engine


def training_key(defense: FineTuneDefense, model: ClipModel, refs: dict[str, ClipModel], data: TrainingSet,
                 settings: Settings, phases: Sequence[Phase], seed: int,
                 prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines the fine-tuned weights (hashed into the cache folder's name),
    including the defense's source fingerprint: an edited loss never reuses the old checkpoint, and
    what :meth:`FineTuneDefense.prepare` returned (under ``"prepared"``, only when not empty, so that
    the keys of methods without it are unchanged)."""
    key = {
        "engine": ENGINE_VERSION,
        "defense": defense.name,
        "defense_version": defense.version,
        "defense_source": source_fingerprint(defense),
        "config": dataclasses.asdict(defense.config),
        "settings": dataclasses.asdict(settings),
        "phases": [dataclasses.asdict(p) for p in phases],
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "references": {k: {"name": r.name, "fingerprint": r.fingerprint} for k, r in sorted(refs.items())},
        "data": data.fingerprint,
        "seed": seed,
        "torch": torch.__version__,
    }
    if prepared:
        key["prepared"] = prepared
    return key


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_dir(cache_dir: Path, defense: str, key: dict[str, Any]) -> Path:
    return Path(cache_dir) / defense / key_hash(key)


def _trainable(module: torch.nn.Module, trainable: str) -> dict[str, torch.nn.Parameter]:
    params = dict(module.named_parameters())
    if trainable == "visual":
        chosen = {k: p for k, p in params.items() if k.startswith("visual.")}
    elif trainable == "visual+text_projection":
        chosen = {k: p for k, p in params.items() if k.startswith("visual.") or "text_projection" in k.split(".")}
        if not any("text_projection" in k.split(".") for k in chosen):
            raise FineTuneError("trainable=visual+text_projection: the model has no parameter named text_projection; "
                                "use trainable=visual or all")
    elif trainable == "all":
        chosen = params
    else:
        raise FineTuneError(f"bad trainable {trainable!r}: use visual, visual+text_projection or all")
    if not chosen:
        raise FineTuneError(f"model has no parameters to train for trainable={trainable!r}")
    return chosen


def _optimizer(params: list[torch.nn.Parameter], settings: Settings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise FineTuneError(f"bad optimizer {settings.optimizer!r}: use sgd or adamw")


def _encoder(model: ClipModel, data: TrainingSet, settings: Settings, device: torch.device, text_trains: bool) -> Encoder:
    prompts = [t.format(c) for c in data.classnames for t in data.templates]
    tokens = model.tokenizer(prompts).to(device)
    return Encoder(model, tokens, len(data.classnames), settings.logit_scale, text_trains)


def _inner_attack(settings: Settings) -> Any:
    from vlmbench.registry import plugins

    cls = plugins().attacks.get(settings.attack)
    threat = ThreatModel.build("linf", settings.train_eps, settings.attack_steps, settings.attack_step_size)
    return cls(threat)


def _adapted(model: ClipModel, state: dict[str, torch.Tensor]) -> ClipModel:
    module = copy.deepcopy(model.module)
    missing = set(state) - set(module.state_dict())
    if missing:
        raise FineTuneError(f"cached checkpoint does not fit the model (unknown keys such as {sorted(missing)[0]!r})")
    module.load_state_dict(state, strict=False)
    module = freeze(module)
    return ClipModel(model.name, module, model.tokenizer, model.preprocess, parameter_fingerprint(module))


def load_cached(folder: Path, model: ClipModel, check_only: bool = False) -> ClipModel | None:
    """The fine-tuned model stored in ``folder``, or None when training has not finished there
    (``check_only``: ``model`` itself when it has, without loading the weights)."""
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / RECORD_FILE).is_file():
        return None
    if check_only:
        return model
    from safetensors.torch import load_file

    return _adapted(model, load_file(str(folder / WEIGHTS_FILE), device=str(next(model.module.parameters()).device)))


def checkpoint_folder(defense: FineTuneDefense, model: ClipModel, context: DefenseContext, settings: Settings
                      ) -> tuple[Path, dict[str, Any], dict[str, ClipModel], TrainingSet, list[Phase], int]:
    """Where ``defense``'s checkpoint for ``model`` lives, and what determines it: ``(folder, key,
    references, training set, phases, seed)``. Resolves everything the key needs, trains nothing."""
    seed = context.seed + getattr(defense.config, "seed", 0)
    refs = defense.references(model, context, settings)
    data = training_set(settings.data, context.data_root, model.preprocess.size[0])
    phases = list(defense.phases(settings))
    prepared = defense.prepare(model, data, context, settings)
    key = training_key(defense, model, refs, data, settings, phases, seed, prepared)
    return checkpoint_dir(context.cache_dir, defense.name, key), key, refs, data, phases, seed


def finetune(defense: FineTuneDefense, model: ClipModel, context: DefenseContext, settings: Settings,
             stop_after: int | None = None) -> ClipModel:
    """Fine-tune ``model`` with ``defense``'s loss, or load the cached result.

    Args:
        defense: the method (loss, phases, references).
        model: the model to fine-tune (not modified; a trained copy is returned).
        context: cache folder, device, seed, data root, original model.
        settings: the resolved hyperparameters.
        stop_after: stop (as if interrupted) after this many global steps, leaving the resume
            checkpoint and returning the partly trained model; for tests of resumption.

    Returns:
        The fine-tuned :class:`ClipModel` (frozen, float32) with a new fingerprint.
    """
    device = context.device
    folder, key, refs, data, phases, seed = checkpoint_folder(defense, model, context, settings)
    defense.checkpoint = folder
    cached = load_cached(folder, model)
    if cached is not None:
        return cached

    plan = schedule(phases)
    if not plan:
        raise FineTuneError(f"{defense.name}: the schedule has no steps")
    student_module = copy.deepcopy(model.module).float().eval().to(device)
    # train in open_clip's own batch-first layout: with trainable weights it is as fast, and the layout
    # changes the rounding of weight gradients, so checkpoints stay those earlier versions trained
    sequence_first_attention(student_module, enabled=False)
    for p in student_module.parameters():
        p.requires_grad_(False)
    trained = _trainable(student_module, settings.trainable)
    for p in trained.values():
        p.requires_grad_(True)
    student_model = ClipModel(model.name, student_module, model.tokenizer, model.preprocess, model.fingerprint)
    text_trains = any(k.startswith(("transformer.", "token_embedding", "ln_final", "text_projection", "positional_embedding"))
                      for k in trained)
    student = _encoder(student_model, data, settings, device, text_trains)
    ref_encoders = {k: _encoder(r, data, settings, device, False) for k, r in refs.items()}
    optimizer = _optimizer(list(trained.values()), settings)
    attack = _inner_attack(settings)

    rows: list[dict[str, Any]] = []
    start_step = 0
    resume_path = folder / RESUME_FILE
    if resume_path.is_file():
        saved = torch.load(resume_path, map_location=device, weights_only=False)
        if saved["key"] == key:
            student_module.load_state_dict(saved["trained"], strict=False)
            optimizer.load_state_dict(saved["optimizer"])
            rows, start_step = saved["rows"], saved["step"]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / "key.json", lambda p: p.write_text(json.dumps(key, indent=2, default=str) + "\n"))

    report = _REPORTER.get()
    run_key = f"{defense.name}:{folder.name}"
    began = time.perf_counter()
    if report is not None:
        report(run_key, f"training {defense.name}", start_step, len(plan))
    for step in range(start_step, len(plan)):
        if stop_after is not None and step >= stop_after:
            break
        phase, lr = plan[step]
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = data.batch(batch_indices(len(data), settings.batch_size, step, seed))
        x, y = x.to(device), y.to(device)
        generator = torch.Generator(device=device).manual_seed(_derive(seed, "attack", step))

        def craft(logits_fn: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
            with _frozen(trained):
                return attack.perturb(logits_fn, x, labels, generator).detach()

        terms = defense.loss(Step(x, y, student, ref_encoders, phase, settings, craft))
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise FineTuneError(f"{defense.name}: the training loss became {float(loss)} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        if "logit_scale" in trained:
            with torch.no_grad():
                student_module.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        rows.append({"step": step, "phase": phase.name, "lr": lr, "loss": loss.item(),
                     **{f"loss_{k}": v.item() for k, v in terms.items()}})
        done = step + 1
        if done % defense.checkpoint_every == 0 and done < len(plan):
            state = {k: p.detach().cpu() for k, p in trained.items()}
            snapshot = {"key": key, "step": done, "trained": state, "optimizer": optimizer.state_dict(), "rows": rows}
            write_atomically(resume_path, lambda p: torch.save(snapshot, p))
        if report is not None:
            report(run_key, f"training {defense.name} · {phase.name} · loss {loss.item():.4f}", done, len(plan))
    else:
        return _finish(folder, key, trained, model, rows, time.perf_counter() - began)
    return _adapted(model, {k: p.detach() for k, p in trained.items()})


@contextlib.contextmanager
def _frozen(params: dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """No parameter gradients while the inner attack runs (it needs input gradients only)."""
    for p in params.values():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params.values():
            p.requires_grad_(True)


def _finish(folder: Path, key: dict[str, Any], trained: dict[str, torch.nn.Parameter], model: ClipModel,
            rows: list[dict[str, Any]], wall: float) -> ClipModel:
    """Write the weights, the loss curve and the record (each atomically), drop the resume file."""
    from safetensors.torch import save_file

    state = {k: p.detach().cpu().contiguous() for k, p in trained.items()}
    import pandas as pd  # here, not at import: defenses import this module, `vlmbench list` lists them
    import pyarrow as pa
    import pyarrow.parquet as pq

    curve = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    write_atomically(folder / CURVE_FILE, lambda p: pq.write_table(curve, p))
    write_atomically(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p)))
    window = max(1, min(20, len(rows) // 4))
    losses = [r["loss"] for r in rows]
    record = {"key": key, "steps": len(rows), "initial_loss": float(np.mean(losses[:window])),
              "final_loss": float(np.mean(losses[-window:])), "loss_window": window,
              "wall_time_s_last_session": round(wall, 1), "torch_threads": torch.get_num_threads()}
    write_atomically(folder / RECORD_FILE, lambda p: p.write_text(json.dumps(record, indent=2, default=str) + "\n"))
    (folder / RESUME_FILE).unlink(missing_ok=True)
    adapted = _adapted(model, {k: v.to(next(model.module.parameters()).device) for k, v in state.items()})
    return adapted


def read_loss_curve(folder: Path) -> pd.DataFrame:
    """The loss curve saved with a checkpoint."""
    import pyarrow.parquet as pq

    return pq.read_table(folder / CURVE_FILE).to_pandas()
