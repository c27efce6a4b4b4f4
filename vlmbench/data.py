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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

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
