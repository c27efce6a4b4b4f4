"""Zero-shot datasets of the world, generated on the fly (no files; ``data_root`` is ignored).

Each dataset fixes one attribute of the scene per class and draws every other attribute uniformly
(held-out shape-colour combinations included). Item ``i`` has label ``i % num_classes`` and is drawn
from :func:`vlmbench.world.render.item_rng` ``("<name>/<split>", i, DATASET_SEED)``, so items are
class-balanced, reproducible and generated independently of each other.

Splits and sizes: ``test`` (default) has the smallest multiple of the class count that is at least
500 items, ``val`` at least 200 (a disjoint random stream).

========================  =======  ==========================================================
name                      classes  what the class fixes
========================  =======  ==========================================================
``world-shape``           6        the shape (``circle`` ... ``diamond``)
``world-colour``          6        the colour (``red`` ... ``cyan``)
``world-count``           4        the number of objects (``one shape`` ... ``four shapes``)
``world-texture``         4        the background texture (``plain`` ... ``checkered``)
``world-size``            2        the object size (``small``, ``large``)
``world-combo``           36       colour and shape (``red circle`` ...), fine-grained; includes
                                   the six combinations held out of pretraining; superclass maps
                                   ``shape`` (6) and ``colour`` (6) for superclass attacks
========================  =======  ==========================================================
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from vlmbench.data import DatasetPlugin, ZeroShotDataset
from vlmbench.world.render import (
    COLOUR_NAMES,
    COUNT_WORDS,
    SHAPES,
    SIZES,
    TEXTURES,
    Scene,
    item_rng,
    plural,
    render,
    sample_scene,
)

DATASET_SEED = 0
SPLIT_MIN_SIZES: dict[str, int] = {"test": 500, "val": 200}


class WorldDataset(ZeroShotDataset):
    """A generated split: item ``i`` is the rendering of a scene whose class attributes are fixed by label ``i % C``.

    Images are ``float32`` ``(3, 32, 32)`` in ``[0, 1]``; labels are ints in ``[0, C)``.
    """

    def __init__(
        self,
        name: str,
        split: str,
        classnames: tuple[str, ...],
        templates: tuple[str, ...],
        class_attributes: tuple[dict[str, Any], ...],
        size: int,
        seed: int = DATASET_SEED,
    ) -> None:
        self.name = name
        self.split = split
        self.classnames = classnames
        self.templates = templates
        self.class_attributes = class_attributes
        self.size = size
        self.seed = seed

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        """Label of item ``index``: ``index % num_classes``."""
        return index % self.num_classes

    def scene(self, index: int) -> Scene:
        """The scene of item ``index`` (``0 <= index < len(self)``)."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.name}/{self.split} of size {self.size}")
        rng = item_rng(f"{self.name}/{self.split}", index, self.seed)
        return sample_scene(rng, **self.class_attributes[self.label(index)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(render(self.scene(index))), self.label(index)


class WorldDatasetPlugin(DatasetPlugin):
    """A world dataset: class names, prompt templates and the scene attributes each class fixes."""

    splits = ("test", "val")

    def __init__(
        self,
        name: str,
        description: str,
        classnames: tuple[str, ...],
        templates: tuple[str, ...],
        class_attributes: tuple[dict[str, Any], ...],
        superclass_maps: dict[str, dict[str, list[str]]] | None = None,
    ) -> None:
        if len(classnames) != len(class_attributes):
            raise ValueError("one attribute dict per class name is required")
        if any(template.count("{}") != 1 for template in templates):
            raise ValueError("every template needs exactly one '{}'")
        self.name = name
        self.description = description
        self.classnames = classnames
        self.templates = templates
        self.class_attributes = class_attributes
        self.superclass_maps = superclass_maps or {}

    def split_size(self, split: str) -> int:
        """Number of items in ``split``: the smallest multiple of the class count >= the split's minimum."""
        if split not in SPLIT_MIN_SIZES:
            raise ValueError(f"{self.name} has splits {', '.join(self.splits)}, not {split!r}")
        classes = len(self.classnames)
        return classes * math.ceil(SPLIT_MIN_SIZES[split] / classes)

    def load(self, data_root: Path | None, split: str | None = None) -> WorldDataset:
        """Generate ``split`` (default ``"test"``); ``data_root`` is ignored."""
        split = split or self.splits[0]
        dataset = WorldDataset(
            name=self.name,
            split=split,
            classnames=self.classnames,
            templates=self.templates,
            class_attributes=self.class_attributes,
            size=self.split_size(split),
        )
        dataset.superclass_maps = self.superclass_maps
        return dataset

    def status_rule(self) -> tuple[str, str]:
        return ("fixed", "generated")


_OBJECT_TEMPLATES = (
    "a photo of a {}.",
    "an image of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
)

_ADJECTIVE_TEMPLATES = (  # for class names that are adjectives of the objects (colour, size)
    "a photo of a {} shape.",
    "an image of {} objects.",
    "a picture of a {} thing.",
    "a drawing of {} shapes.",
)

WORLD_SHAPE = WorldDatasetPlugin(
    name="world-shape",
    description="World: which shape (6 classes), generated",
    classnames=SHAPES,
    templates=_OBJECT_TEMPLATES,
    class_attributes=tuple({"shape": shape} for shape in SHAPES),
)

WORLD_COLOUR = WorldDatasetPlugin(
    name="world-colour",
    description="World: which colour (6 classes), generated",
    classnames=COLOUR_NAMES,
    templates=_ADJECTIVE_TEMPLATES,
    class_attributes=tuple({"colour": colour} for colour in COLOUR_NAMES),
)

WORLD_COUNT = WorldDatasetPlugin(
    name="world-count",
    description="World: how many objects (1-4), generated",
    classnames=tuple(f"{word} {'shape' if n == 1 else plural('shape')}" for n, word in enumerate(COUNT_WORDS, 1)),
    templates=("a photo of {}.", "an image of {}.", "a picture of {}.", "a drawing of {}."),
    class_attributes=tuple({"count": n} for n in range(1, len(COUNT_WORDS) + 1)),
)

WORLD_TEXTURE = WorldDatasetPlugin(
    name="world-texture",
    description="World: background texture (4 classes), generated",
    classnames=TEXTURES,
    templates=(
        "a photo of a shape on a {} background.",
        "an image of objects in front of a {} background.",
        "a picture of things and the background is {}.",
    ),
    class_attributes=tuple({"texture": texture} for texture in TEXTURES),
)

WORLD_SIZE = WorldDatasetPlugin(
    name="world-size",
    description="World: small or large objects (binary), generated",
    classnames=SIZES,
    templates=_ADJECTIVE_TEMPLATES,
    class_attributes=tuple({"size": size} for size in SIZES),
)

WORLD_COMBO = WorldDatasetPlugin(
    name="world-combo",
    description="World: colour and shape (36 classes, fine-grained, incl. combinations unseen in pretraining)",
    classnames=tuple(f"{colour} {shape}" for colour in COLOUR_NAMES for shape in SHAPES),
    templates=_OBJECT_TEMPLATES,
    class_attributes=tuple({"colour": colour, "shape": shape} for colour in COLOUR_NAMES for shape in SHAPES),
    superclass_maps={  # the two natural hierarchies, for superclass attacks (vlmbench.targets)
        "shape": {shape: [f"{colour} {shape}" for colour in COLOUR_NAMES] for shape in SHAPES},
        "colour": {colour: [f"{colour} {shape}" for shape in SHAPES] for colour in COLOUR_NAMES},
    },
)

WORLD_DATASETS: dict[str, WorldDatasetPlugin] = {
    plugin.name: plugin for plugin in (WORLD_SHAPE, WORLD_COLOUR, WORLD_COUNT, WORLD_TEXTURE, WORLD_SIZE, WORLD_COMBO)
}
