"""Zero-shot classification datasets: the contract every dataset plugin fulfils.

A dataset plugin (entry-point group ``vlmbench.datasets``) is an instance of :class:`DatasetPlugin`.
Its :meth:`DatasetPlugin.load` returns a :class:`ZeroShotDataset`: an indexable set of
``(image, label)`` pairs plus the class names and prompt templates a zero-shot classifier is built from.

Contract of an item:
    image: ``torch.float32`` tensor of shape ``(3, H, W)`` with values in ``[0, 1]``, at the dataset's
        native resolution (resizing to the model's input size happens inside the classifier, so that
        attacks act on these pixels).
    label: ``int`` in ``[0, len(classnames))``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlmbench.errors import VlmbenchError


class ZeroShotDataset(ABC, torch.utils.data.Dataset):
    """A labelled image set with the text side of zero-shot classification.

    Attributes:
        name: registry name of the dataset (``"world-shape"``).
        split: the split these items come from (``"test"``).
        classnames: one human-readable name per class, index = label.
        templates: prompt templates, each containing exactly one ``{}`` for the class name.
        pixels: ``"native"`` when items are the stored pixels, else the deterministic resize applied
            at load (datasets whose images vary in size must give one size per dataset to be batched);
            recorded in the protocol's ``DataSpec.resolution``.
        superclass_maps: named groupings of the classes (``{name: {superclass: [class names]}}``)
            offered to superclass attacks (:mod:`vlmbench.targets`); empty by default.
    """

    name: str
    split: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    pixels: str = "native"  # how items relate to the files: "native", or the load-time resize applied
    superclass_maps: dict[str, dict[str, list[str]]] = {}  # named groupings for superclass attacks

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompts(self, classname: str) -> list[str]:
        """All prompts for one class: every template filled with ``classname``."""
        return [template.format(classname) for template in self.templates]


class DatasetPlugin(ABC):
    """A registered dataset: knows how to load its split from a data root (or generate it).

    Attributes:
        name: registry name.
        description: one line for ``vlmbench list datasets``.
        splits: the splits this dataset offers; the first is the default evaluation split.
        can_download: :meth:`download` can fetch the files (only where the dataset's own loader can).
    """

    name: str
    description: str
    splits: Sequence[str] = ("test",)
    can_download: bool = False

    @abstractmethod
    def load(self, data_root: Path | None, split: str | None = None) -> ZeroShotDataset:
        """Load ``split`` (default: ``splits[0]``).

        Raises:
            DatasetNotFoundError: the files are not under ``data_root``; the message says what to do.
        """

    def status_rule(self) -> tuple[str, str] | None:
        """How :meth:`status` is decided, in a form ``vlmbench list`` can keep without importing the
        plugin: ``("fixed", word)``, or ``("folder", path)`` for "ready when ``data_root/path`` exists,
        else missing". ``None`` (the default for a plugin that overrides :meth:`status`) makes the
        listing import the plugin to ask it."""
        return ("fixed", "ready") if type(self).status is DatasetPlugin.status else None

    def status(self, data_root: Path | None) -> str:
        """One word for listings: ``"ready"``, ``"generated"`` or ``"missing"``; evaluates :meth:`status_rule`.
        Override :meth:`status_rule`, not this, so that listings stay fast."""
        from vlmbench.listing import status_from_rule

        rule = self.status_rule()
        return status_from_rule(rule, data_root) if rule is not None else "ready"

    def download(self, data_root: Path) -> None:
        """Fetch the files into ``data_root`` (only called when the user asks, e.g. ``--download``).

        Raises:
            DatasetNotFoundError: the dataset cannot be downloaded; the message says how to obtain it.
        """
        raise DatasetNotFoundError(f"dataset {self.name!r} cannot be downloaded by vlmbench")


class DatasetNotFoundError(VlmbenchError, FileNotFoundError):
    """A dataset's files are missing; the message names the expected location and how to obtain them."""


# ---------------------------------------------------------------------------------------------- views and selection


def missing_datasets_error(errors: Sequence[DatasetNotFoundError]) -> DatasetNotFoundError:
    """One one-line error for all the missing datasets of a run, so that one attempt shows every fix.

    One error is returned as is; several are joined with `` | `` after a count, and a trailing
    parenthesis they all end with (such as the README pointer) is written once, at the end.
    """
    if len(errors) == 1:
        return errors[0]
    messages = [" ".join(str(error).split()) for error in errors]
    tail = re.search(r" \([^()]*\)$", messages[0])
    end = tail.group() if tail and all(m.endswith(tail.group()) for m in messages) else ""
    joined = " | ".join(m.removesuffix(end) for m in messages) if end else " | ".join(messages)
    return DatasetNotFoundError(f"{len(errors)} datasets missing or incomplete: {joined}{end}")


class Resized(ZeroShotDataset):
    """A view of ``dataset`` whose images are resized to ``size``×``size`` (bicubic, antialiased) at load.

    Used for the ``224-before-attack`` convention: the attack's ε-ball then lives on the resized pixels.
    Items stay ``float32`` in ``[0, 1]``; labels, class names and templates are the wrapped dataset's.
    """

    def __init__(self, dataset: ZeroShotDataset, size: int = 224) -> None:
        self.inner = dataset
        self.size = size
        self.name, self.split = dataset.name, dataset.split
        self.classnames, self.templates = dataset.classnames, dataset.templates
        base = "" if dataset.pixels == "native" else f"{dataset.pixels}, then "
        self.pixels = f"{base}resized to {size}x{size} before the attack (bicubic with antialias)"

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, label = self.inner[index]
        if tuple(x.shape[1:]) != (self.size, self.size):
            array = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            image = Image.fromarray(array).resize((self.size, self.size), Image.BICUBIC)
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        return x, label

    def labels(self) -> list[int]:
        return dataset_labels(self.inner)


def dataset_labels(dataset: ZeroShotDataset) -> list[int]:
    """All labels of ``dataset``: from its ``labels()`` when it has one, else by reading every item."""
    labels = getattr(dataset, "labels", None)
    if callable(labels):
        return list(labels())
    return [int(dataset[i][1]) for i in range(len(dataset))]


def balanced_indices(labels: list[int], n_samples: int, seed: int) -> list[int]:
    """A seeded class-balanced sample of ``n_samples`` indices, in increasing order.

    Each class contributes ``n // C`` images, and ``n % C`` classes drawn at random one more; a class
    with too few images gives all it has and the shortfall is drawn round-robin from the others.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    queues = [list(rng.permutation(by_class[c])) for c in sorted(by_class)]
    order = rng.permutation(len(queues))
    chosen: list[int] = []
    while len(chosen) < n_samples:
        progressed = False
        for k in order:
            if queues[k] and len(chosen) < n_samples:
                chosen.append(int(queues[k].pop(0)))
                progressed = True
        if not progressed:
            break
    return sorted(chosen)
