"""The text side of the real datasets: class-name lists and prompt-template sets, read from JSON data files.

Both are data, not code (``vlmbench/datasets/data/``), and every list names its source and licence:

* ``imagenet.json``: the 1000 ILSVRC-2012 synsets in label order, the ImageNet-R and ImageNet-A
  200-class subsets, and OpenAI CLIP's cleaned class names.
* ``classnames.json``: fixed class-name lists for datasets whose files carry no usable names.
* ``templates.json``: template sets, one per protocol family:

  ========================  ==================================================================
  set                       prompts
  ========================  ==================================================================
  ``clip_benchmark``        CLIP_benchmark's per-dataset lists (80 OpenAI templates for ImageNet)
  ``tecoa``                 TeCoA family: ``This is a photo of a {}`` and per-dataset variants
  ``ttc``                   as ``tecoa``, with TTC's final period on the generic prompt
  ``coop``                  CoOp's one hand-written prompt per dataset
  ========================  ==================================================================

A set gives, per dataset, its templates (or the set's ``default``) and optionally the name of a
class-name list that replaces the dataset's own names (TeCoA's PCAM sentences).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib.resources import files
from typing import Any

from vlmbench.data import ZeroShotDataset
from vlmbench.errors import VlmbenchError
from vlmbench.registry import unknown_name_message

DATASET_DEFAULT = "dataset"  # the template-set name meaning "the dataset's own classnames and templates"


@cache
def _load(filename: str) -> dict[str, Any]:
    return json.loads(files("vlmbench.datasets").joinpath("data", filename).read_text(encoding="utf-8"))


def imagenet() -> dict[str, Any]:
    """``wnids`` (1000, label order), ``imagenet_r_wnids``, ``imagenet_a_wnids`` (200 each), ``classnames`` (1000)."""
    return _load("imagenet.json")


def classnames(list_name: str) -> tuple[str, ...]:
    """A shipped class-name list (``classnames.json``) by name."""
    lists = _load("classnames.json")["lists"]
    if list_name not in lists:
        raise VlmbenchError(unknown_name_message("class-name list", list_name, sorted(lists)))
    return tuple(lists[list_name]["names"])


def template_sets() -> list[str]:
    """Names of the shipped template sets, plus ``"dataset"`` (each dataset's own)."""
    return [DATASET_DEFAULT, *_load("templates.json")["sets"]]


def text_for(set_name: str, dataset: str) -> tuple[tuple[str, ...], str | None]:
    """``(templates, classnames list name or None)`` of template set ``set_name`` for ``dataset``."""
    sets = _load("templates.json")["sets"]
    if set_name not in sets:
        raise VlmbenchError(unknown_name_message("template set", set_name, template_sets()))
    entry = sets[set_name]
    own = entry.get("datasets", {}).get(dataset)
    if own is None and "inherit" in entry:
        parent = sets[entry["inherit"]].get("datasets", {}).get(dataset)
        own = parent
    if own is None:
        return tuple(entry["default"]), None
    return tuple(own["templates"]), own.get("classnames")


def with_templates(dataset: ZeroShotDataset, set_name: str) -> ZeroShotDataset:
    """``dataset`` with the prompts (and, where the set says so, the class names) of ``set_name``.

    The items are shared, not copied; ``"dataset"`` returns ``dataset`` itself. Raises
    :class:`VlmbenchError` when a replacement class-name list does not match the class count.
    """
    if set_name == DATASET_DEFAULT:
        return dataset
    templates, names = text_for(set_name, dataset.name)
    view = copy.copy(dataset)
    view.templates = templates
    if names is not None:
        replacement = classnames(names)
        if len(replacement) != dataset.num_classes:
            raise VlmbenchError(f"class-name list {names!r} has {len(replacement)} names, {dataset.name} has {dataset.num_classes} classes")
        view.classnames = replacement
    return view


def clean(name: str) -> str:
    """Class-name cleaning used by TeCoA and CLIP_benchmark for names read from files: ``_`` and ``/`` → space."""
    return " ".join(name.replace("_", " ").replace("/", " ").split())
