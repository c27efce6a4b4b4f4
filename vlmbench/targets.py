"""What an attack aims at: untargeted, targeted (random / least-likely / a given class), or a coarser
label space of superclasses.

**Targeted modes** (``--target``), for attacks that honour ``targeted``:

* ``random``: a class drawn uniformly among the ``C − 1`` wrong ones, from the batch's generator;
* ``least-likely``: the class the attacked model scores lowest on the clean image (Kurakin et al. 2017);
* ``K`` (an integer) or a class name: that class for every image. Images whose true label *is* the
  target are evaluated without an attack (their row says ``attacked = false``), since there is
  nothing to aim at.

A targeted attack succeeds on an image when the defended model predicts the target; rows keep the
target in ``target`` and robust accuracy keeps its meaning (correct both clean and attacked).

**Superclass attacks** (``--superclasses NAME|HIERARCHY:LEVEL|FILE.json``): the classes are grouped into superclasses
(every class in exactly one). The attack is crafted against the superclass classifier whose logit for
superclass ``s`` is the largest of its members' logits, with the true superclass as label, so any attack —
AutoAttack included — applies unchanged, and its argmax is the superclass of the leaf prediction: the attack
aims at exactly what the rows score (``logsumexp`` pooling, used before, let an attack optimise and stop on
a different prediction than the one scored; the record's ``pooling`` says which ran). Rows keep
leaf predictions and add the superclass label and predictions, so both leaf and superclass accuracy are
reported on the same images (the hierarchical-robustness threat, docs/provenance.md#hierarchical).

A mapping comes from the dataset (``ZeroShotDataset.superclass_maps``: the world's ``world-combo``
offers ``shape`` and ``colour``), from one level of a class hierarchy (:func:`hierarchy_level`:
``wordnet:2`` on ImageNet, ``world:colour:2`` on world-combo, ``fgvc-aircraft:1`` from the dataset's
own files; docs/hierarchies.md), or from a JSON file::

    {"name": "animals-vs-vehicles", "superclasses": {"animal": ["cat", "dog"], "vehicle": ["car", "truck"]}}
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmbench.errors import VlmbenchError

UNTARGETED = "untargeted"
TARGET_MODES = ("untargeted", "random", "least-likely")
NO_TARGET = -1  # ``target`` column of untargeted rows


class TargetError(VlmbenchError):
    """A target mode or superclass mapping that cannot be used."""


def parse_target(spec: str | None, classnames: Sequence[str]) -> str:
    """Canonical target mode: ``untargeted``, ``random``, ``least-likely`` or ``label:K``.

    ``spec`` may name a class by index or by its class name.
    """
    if spec is None or spec == UNTARGETED:
        return UNTARGETED
    if spec in TARGET_MODES:
        return spec
    label = spec.removeprefix("label:")
    if label.lstrip("-").isdigit():
        k = int(label)
        if not 0 <= k < len(classnames):
            raise TargetError(f"target class {k} out of range: the dataset has {len(classnames)} classes")
        return f"label:{k}"
    if label in classnames:
        return f"label:{list(classnames).index(label)}"
    raise TargetError(f"bad target {spec!r}: use random, least-likely, a class index or a class name")


def choose_targets(
    mode: str, y: torch.Tensor, clean_logits: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """Target class per image ``(N,)`` for ``mode`` (``-1`` where the image is not attacked).

    Args:
        mode: a canonical mode from :func:`parse_target` other than ``untargeted``.
        y: true labels ``(N,)``.
        clean_logits: the attacked model's logits on the clean images ``(N, C)`` (the class count for
            ``random``; the ranking for ``least-likely``).
        generator: source of the random targets.
    """
    if clean_logits is None:
        raise TargetError("targeted attacks need the attacked model's clean logits")
    num_classes = clean_logits.shape[1]
    if mode == "random":
        if num_classes < 2:
            raise TargetError("a random target needs at least 2 classes")
        offset = torch.randint(1, num_classes, y.shape, generator=generator, device=generator.device).to(y.device)
        return (y + offset) % num_classes  # uniform over the C − 1 wrong classes
    if mode == "least-likely":
        return clean_logits.argmin(dim=1)
    if mode.startswith("label:"):
        target = torch.full_like(y, int(mode.removeprefix("label:")))
        return torch.where(target == y, torch.full_like(y, NO_TARGET), target)
    raise TargetError(f"unknown target mode {mode!r}")


@dataclass(frozen=True)
class SuperclassMap:
    """A grouping of a dataset's classes into superclasses.

    Attributes:
        name: the mapping's name (recorded).
        superclasses: superclass names, index = superclass label.
        assignment: superclass label of every class, index = class label.
    """

    name: str
    superclasses: tuple[str, ...]
    assignment: tuple[int, ...]

    @classmethod
    def from_groups(cls, name: str, groups: Mapping[str, Sequence[str]], classnames: Sequence[str]) -> SuperclassMap:
        """Build from ``{superclass: [class names]}``; every class must be in exactly one group."""
        index = {c: i for i, c in enumerate(classnames)}
        assignment = [-1] * len(classnames)
        for s, (superclass, members) in enumerate(groups.items()):
            for member in members:
                if member not in index:
                    raise TargetError(f"superclass map {name!r}: {member!r} is not a class of the dataset")
                if assignment[index[member]] != -1:
                    raise TargetError(f"superclass map {name!r}: class {member!r} is in two superclasses")
                assignment[index[member]] = s
        missing = [classnames[i] for i, s in enumerate(assignment) if s == -1]
        if missing:
            raise TargetError(f"superclass map {name!r} leaves {len(missing)} classes out (e.g. {missing[0]!r})")
        if len(groups) < 2:
            raise TargetError(f"superclass map {name!r} needs at least 2 superclasses")
        return cls(name, tuple(groups), tuple(assignment))

    def record(self) -> dict[str, object]:
        """The protocol record: name, superclass names, the class → superclass assignment and its hash, and
        the pooling of member logits the attack saw (``max``; cells of the earlier ``logsumexp`` pooling,
        which recorded none, are never reused)."""
        digest = hashlib.sha256(json.dumps([self.superclasses, self.assignment]).encode()).hexdigest()[:16]
        return {"name": self.name, "superclasses": list(self.superclasses), "assignment": list(self.assignment),
                "sha256": digest, "pooling": POOLING}

    def of(self, labels: torch.Tensor) -> torch.Tensor:
        """Superclass label of every class label (``-1`` stays ``-1``)."""
        table = torch.tensor(self.assignment, dtype=torch.long, device=labels.device)
        return torch.where(labels < 0, labels, table[labels.clamp_min(0)])

    def membership(self) -> torch.Tensor:
        """``(S, C)`` boolean matrix: class ``c`` belongs to superclass ``s``."""
        assignment = torch.tensor(self.assignment)
        return F.one_hot(assignment, len(self.superclasses)).T.bool()


def resolve_superclasses(spec: str, dataset_maps: Mapping[str, Mapping[str, Sequence[str]]],
                         classnames: Sequence[str], dataset: str, data_root: Path | None = None) -> SuperclassMap:
    """The superclass map ``spec`` names for ``dataset``: a map the dataset offers by name, a level of a
    class hierarchy (``HIERARCHY:LEVEL`` or ``HIERARCHY:TREE:LEVEL``, :func:`hierarchy_level`), or a
    JSON file of groups."""
    if spec in dataset_maps:
        return SuperclassMap.from_groups(spec, dataset_maps[spec], classnames)
    if spec.rpartition(":")[2].isdigit():
        return hierarchy_level(spec, classnames, dataset, data_root)
    path = Path(spec)
    if spec.endswith(".json") or path.exists():
        if not path.is_file():
            raise TargetError(f"superclass file {spec} not found")
        try:
            raw = json.loads(path.read_text())
            name, groups = raw.get("name", path.stem), raw["superclasses"]
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as exc:
            raise TargetError(f"superclass file {spec} is not of the form "
                              '{"name": ..., "superclasses": {"super": ["class", ...]}}: ' + str(exc)) from None
        return SuperclassMap.from_groups(name, groups, classnames)
    offered = ", ".join([*dataset_maps, *_hierarchy_names(dataset)]) or "none"
    raise TargetError(f"dataset {dataset!r} has no superclass map {spec!r} (it offers: {offered}); "
                      "or give HIERARCHY:LEVEL, a hierarchy file FILE.json:LEVEL, or a JSON file of groups")


def _hierarchy_names(dataset: str) -> list[str]:
    from vlmbench.hierarchy import hierarchies_for

    return [f"{h.name}:1..{min(t.depth for t in h.trees)}" for h in hierarchies_for(dataset)]


def hierarchy_level(spec: str, classnames: Sequence[str], dataset: str, data_root: Path | None = None) -> SuperclassMap:
    """The classes of ``dataset`` grouped by their ancestor at one level of a class hierarchy
    (docs/hierarchies.md), named ``HIERARCHY:TREE:LEVEL``.

    ``spec``: ``HIERARCHY:LEVEL`` or ``HIERARCHY:TREE:LEVEL`` (the first tree when none is named), where
    HIERARCHY is a hierarchy shipped for the dataset (``wordnet`` for ImageNet, ``world`` for
    world-combo, ...), the dataset's own name for one read from its files under ``data_root``
    (``fgvc-aircraft``, ``cifar100``, ``oxford-pets``, ``stanford-cars``), or a hierarchy JSON file.

    Raises:
        TargetError / HierarchyError: unknown hierarchy or tree, a level beyond the tree's depth, a class
            the hierarchy does not cover (one line).
    """
    from vlmbench.hierarchy import (
        hierarchies_for,
        hierarchy_from_data,
        load_hierarchy,
        parse_level_spec,
    )

    name, tree_name, level = parse_level_spec(spec)
    shipped = {h.name: h for h in hierarchies_for(dataset)}
    if name in shipped:
        hierarchy = shipped[name]
    elif name.endswith(".json") or Path(name).is_file():
        if not Path(name).is_file():
            raise TargetError(f"hierarchy file {name} not found")
        hierarchy = load_hierarchy(Path(name))
    elif name == dataset:
        if data_root is None:
            raise TargetError(f"the hierarchy of {dataset!r} is read from its own files: give --data-root")
        hierarchy = hierarchy_from_data(dataset, data_root, classnames)
    else:
        known = ", ".join(shipped) or "none shipped"
        raise TargetError(f"dataset {dataset!r} has no hierarchy {name!r} (for it: {known}; or a hierarchy file "
                          f"FILE.json:LEVEL, docs/hierarchies.md)")
    hierarchy.check_classes(classnames)
    tree = hierarchy.tree(tree_name)
    if level > tree.depth:
        raise TargetError(f"hierarchy {hierarchy.name!r} tree {tree.name!r} has levels 1..{tree.depth}, not {level}")
    return tree.superclass_map(level, classnames, hierarchy.name)


POOLING = "max"  # how SuperclassLogits pools member logits; recorded with every superclass cell


class SuperclassLogits(torch.nn.Module):
    """``logits (N,C) -> superclass logits (N,S)``: the largest of each superclass's members' logits.

    Its argmax is the superclass of the leaf argmax, the prediction a superclass cell scores, so an
    attack on it (AutoAttack's check of which images are still correct, its early stop) aims at that
    prediction. Differentiable almost everywhere (the gradient reaches each superclass's top member).
    """

    def __init__(self, inner: torch.nn.Module, mapping: SuperclassMap) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("mask", mapping.membership(), persistent=False)
        if callable(getattr(inner, "forward_with_objective", None)):  # keep a defense-aware objective
            self.forward_with_objective = self._forward_with_objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.inner(x))

    def _forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, extra = self.inner.forward_with_objective(x)
        return self.pool(logits), extra

    def pool(self, logits: torch.Tensor) -> torch.Tensor:
        expanded = logits[:, None, :].masked_fill(~self.mask.to(logits.device)[None], float("-inf"))
        return expanded.amax(dim=2)
