"""Class hierarchies as data: trees over a dataset's classes, for superclass attacks and hierarchical training.

A *hierarchy* is one JSON file: a name, the datasets whose classes it covers, its source and licence,
and one or more *trees* over the same leaves (several trees make a "forest"). A tree has levels
``0..L``: level 0 is the classes themselves, level ``l >= 1`` groups them into coarser nodes, level
``L`` is the coarsest. Each class lists its ancestors at levels ``1..L``::

    {"format": "vlmbench-hierarchy/1", "name": "world", "datasets": ["world-combo"],
     "source": "where the grouping comes from", "licence": "the licence of that source",
     "trees": [{"name": "shape", "levels": ["class", "shape", "outline"],
                "ancestors": {"red circle": ["circle", "circle or ring"], ...}}]}

Rules (:func:`load_hierarchy` checks them and raises :class:`HierarchyError`, one line, naming the file):

* ``format`` is :data:`FORMAT`; ``name`` and tree names are non-empty and contain no ``:`` (they are
  used in level specs, :func:`parse_level_spec`); tree names are unique within the file; no other keys.
* ``levels`` names levels ``0..L`` with ``L >= 1``: ``levels[0]`` is the leaf level (``"class"``).
* ``ancestors`` maps every class name to exactly ``L`` labels, level 1 first. A node is identified by
  its level and its label, so a label names one node per level: two different groups at one level need
  two different labels. Labels are what a prompt says (``"a photo of a {label}."``): non-empty
  one-line strings without surrounding blanks.
* Each tree is a tree: a node at level ``l`` has the same parent at level ``l + 1`` for every class
  that passes through it. Level 1 has at least two nodes. All trees of a file have the same classes.

A dataset may use a subset of a file's classes (ImageNet-R's 200 of ImageNet's 1000):
:meth:`Tree.nodes` and :meth:`Tree.superclass_map` work on the class names they are given, in their
order; :meth:`Hierarchy.check_classes` says whether every class of a dataset is covered. Classes with
the same name (CLIP's ImageNet names ``missile`` and ``sunglasses`` name two synsets each) share one
entry and so one ancestry.

Shipped hierarchies (``vlmbench/hierarchies/*.json``, docs/hierarchies.md lists their sources and
licences): :func:`shipped_hierarchies`, :func:`hierarchies_for`. Hierarchies that only a dataset's own
files determine are read from them at run time: :func:`cifar100_coarse_from_pickle`,
:func:`aircraft_from_annotations`, :func:`oxford_pets_from_annotations`, :func:`stanford_cars_by_make`,
and :func:`hierarchy_from_data` for all four by dataset name.

This module does not import torch, except :meth:`Tree.superclass_map` (it builds a
:class:`vlmbench.targets.SuperclassMap`) and :func:`cifar100_coarse_from_pickle` (it cleans names as
the CIFAR-100 dataset plugin does).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from vlmbench.errors import VlmbenchError

if TYPE_CHECKING:
    from vlmbench.targets import SuperclassMap

FORMAT = "vlmbench-hierarchy/1"
HIERARCHIES_DIR = Path(__file__).resolve().parent / "hierarchies"

_HIERARCHY_KEYS = ("format", "name", "datasets", "source", "licence", "trees")
_TREE_KEYS = ("name", "levels", "ancestors")


class HierarchyError(VlmbenchError):
    """A hierarchy file, tree or level spec that cannot be used (one-line message naming the problem)."""


def _check_label(label: object, what: str) -> str:
    """``label`` if it is a non-empty one-line string without surrounding blanks, else HierarchyError."""
    if not isinstance(label, str) or not label:
        raise HierarchyError(f"{what} must be a non-empty string, not {label!r}")
    if "\n" in label or "\r" in label or label.strip() != label:
        raise HierarchyError(f"{what} {label!r} must be one line without surrounding blanks")
    return label


def _check_name(name: object, what: str) -> str:
    name = _check_label(name, what)
    if ":" in name:
        raise HierarchyError(f"{what} {name!r} must not contain ':' (level specs use it as a separator)")
    return name


@dataclass(frozen=True)
class Tree:
    """One tree over a set of classes, levels ``0..L`` (checked on construction, see the module docstring).

    Attributes:
        name: the tree's name, unique within its hierarchy.
        levels: level names; ``levels[0]`` is the leaf level, ``len(levels) == L + 1``.
        ancestors: class name -> its ancestors at levels ``1..L`` (read-only).
    """

    name: str
    levels: tuple[str, ...]
    ancestors: Mapping[str, tuple[str, ...]]

    def __post_init__(self) -> None:
        where = f"tree {self.name!r}"
        _check_name(self.name, "tree name")
        if isinstance(self.levels, str) or not isinstance(self.levels, Sequence):
            raise HierarchyError(f"{where}: levels must be a list of level names")
        levels = tuple(_check_label(level, f"{where}: level name") for level in self.levels)
        if len(levels) < 2:
            raise HierarchyError(f"{where}: levels must name the class level and at least one level above it, got {list(levels)}")
        if len(set(levels)) != len(levels):
            raise HierarchyError(f"{where}: level names repeat: {list(levels)}")
        if not isinstance(self.ancestors, Mapping) or not self.ancestors:
            raise HierarchyError(f"{where}: ancestors must be a non-empty mapping of class name -> ancestor labels")
        depth = len(levels) - 1
        ancestors: dict[str, tuple[str, ...]] = {}
        for classname, path in self.ancestors.items():
            _check_label(classname, f"{where}: class name")
            if isinstance(path, str) or not isinstance(path, Sequence) or len(path) != depth:
                raise HierarchyError(f"{where}: class {classname!r} needs {depth} ancestors (levels "
                                     f"{', '.join(levels[1:])}), got {path!r}")
            ancestors[classname] = tuple(_check_label(label, f"{where}: ancestor of {classname!r}") for label in path)
        _check_is_tree(where, levels, ancestors)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "ancestors", MappingProxyType(ancestors))

    @property
    def depth(self) -> int:
        """``L``: the number of levels above the classes."""
        return len(self.levels) - 1

    def _paths(self, classnames: Sequence[str]) -> list[tuple[str, ...]]:
        missing = [c for c in classnames if c not in self.ancestors]
        if missing:
            raise HierarchyError(f"tree {self.name!r} has no ancestors for {len(missing)} of {len(classnames)} "
                                 f"classes (e.g. {missing[0]!r})")
        return [self.ancestors[c] for c in classnames]

    def _check_level(self, level: int, top: int) -> None:
        if not 0 <= level <= top:
            raise HierarchyError(f"tree {self.name!r}: level {level} is out of range 0..{top}"
                                 + (f" (level {self.depth} is the top: it has no parent)" if level == self.depth else ""))

    def nodes(self, level: int, classnames: Sequence[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The nodes at ``level`` over ``classnames`` and the node index of every class.

        Returns ``(names, index)``: ``names`` are the labels of the nodes that ``classnames`` reach at
        ``level``, in order of first appearance; ``index[k]`` is the node of ``classnames[k]``. Level 0
        gives ``(classnames, (0, 1, ...))``. Raises HierarchyError for a level out of ``0..L`` or a
        class the tree does not cover.
        """
        self._check_level(level, self.depth)
        paths = self._paths(classnames)
        if level == 0:
            return tuple(classnames), tuple(range(len(classnames)))
        order: dict[str, int] = {}
        index = tuple(order.setdefault(path[level - 1], len(order)) for path in paths)
        return tuple(order), index

    def parents(self, level: int, classnames: Sequence[str]) -> tuple[int, ...]:
        """For each node of :meth:`nodes` ``(level, classnames)``, the index of its parent among the
        nodes of ``level + 1``; ``level`` must be below ``L``."""
        self._check_level(level, self.depth - 1)
        names, child = self.nodes(level, classnames)
        _, parent = self.nodes(level + 1, classnames)
        parents = [-1] * len(names)
        for c, p in zip(child, parent):
            parents[c] = p
        return tuple(parents)

    def superclass_map(self, level: int, classnames: Sequence[str], hierarchy: str) -> SuperclassMap:
        """The grouping of ``classnames`` by their ancestor at ``level`` (``1..L``), named
        ``"{hierarchy}:{tree}:{level}"``, for superclass attacks (:mod:`vlmbench.targets`).

        Classes with the same name go to the same superclass. Raises HierarchyError for a level out of
        range or an uncovered class, and :class:`vlmbench.targets.TargetError` when the classes reach
        fewer than two nodes at ``level``.
        """
        from vlmbench.targets import SuperclassMap, TargetError

        if level == 0:
            raise HierarchyError(f"tree {self.name!r}: level 0 is the classes themselves; superclasses are at levels 1..{self.depth}")
        names, index = self.nodes(level, classnames)
        name = f"{hierarchy}:{self.name}:{level}"
        if len(names) < 2:
            raise TargetError(f"superclass map {name!r} needs at least 2 superclasses")
        return SuperclassMap(name, names, index)


def _check_is_tree(where: str, levels: tuple[str, ...], ancestors: Mapping[str, tuple[str, ...]]) -> None:
    """Every node at levels ``1..L-1`` has one parent over all classes; level 1 has at least 2 nodes."""
    for level in range(1, len(levels) - 1):
        parent: dict[str, tuple[str, str]] = {}  # label at level -> (label at level + 1, a class through it)
        for classname, path in ancestors.items():
            node, up = path[level - 1], path[level]
            seen = parent.setdefault(node, (up, classname))
            if seen[0] != up:
                raise HierarchyError(f"{where} is not a tree: {node!r} at level {level} ({levels[level]}) has two parents "
                                     f"at level {level + 1}: {seen[0]!r} (via {seen[1]!r}) and {up!r} (via {classname!r})")
    if len({path[0] for path in ancestors.values()}) < 2:
        raise HierarchyError(f"{where}: level 1 ({levels[1]}) has a single node; it needs at least 2")


@dataclass(frozen=True)
class Hierarchy:
    """A hierarchy file: one or more trees over the same classes, with where they come from.

    Attributes:
        name: the hierarchy's name (a shipped file's stem).
        datasets: names of the datasets whose classes it covers (may be subsets of its classes).
        source: where the grouping comes from.
        licence: the licence of that source (notice included where the licence asks for it).
        trees: the trees; the first is the default.
    """

    name: str
    datasets: tuple[str, ...]
    source: str
    licence: str
    trees: tuple[Tree, ...]

    def __post_init__(self) -> None:
        _check_name(self.name, "hierarchy name")
        if isinstance(self.datasets, str) or not isinstance(self.datasets, Sequence):
            raise HierarchyError("datasets must be a list of dataset names")
        object.__setattr__(self, "datasets", tuple(_check_label(d, "dataset name") for d in self.datasets))
        for field in ("source", "licence"):
            _check_text(getattr(self, field), field)
        if isinstance(self.trees, (str, Mapping)) or not isinstance(self.trees, Sequence) or not self.trees:
            raise HierarchyError("trees must be a non-empty list of trees")
        trees = tuple(self.trees)
        if not all(isinstance(tree, Tree) for tree in trees):
            raise HierarchyError("trees must be Tree instances")
        names = [tree.name for tree in trees]
        if len(set(names)) != len(names):
            raise HierarchyError(f"tree names repeat: {names}")
        first = set(trees[0].ancestors)
        for tree in trees[1:]:
            extra, lacking = set(tree.ancestors) - first, first - set(tree.ancestors)
            if extra or lacking:
                odd = sorted(extra or lacking)[0]
                raise HierarchyError(f"all trees must have the same classes: {odd!r} is in tree "
                                     f"{(tree.name if extra else trees[0].name)!r} but not in "
                                     f"{(trees[0].name if extra else tree.name)!r}")
        object.__setattr__(self, "trees", trees)

    def tree(self, name: str | None = None) -> Tree:
        """The tree called ``name``, or the first tree when ``name`` is None."""
        if name is None:
            return self.trees[0]
        for tree in self.trees:
            if tree.name == name:
                return tree
        raise HierarchyError(f"hierarchy {self.name!r} has no tree {name!r}; its trees: "
                             f"{', '.join(t.name for t in self.trees)}")

    def check_classes(self, classnames: Sequence[str]) -> None:
        """Raise HierarchyError unless every class in ``classnames`` has ancestors in every tree."""
        for tree in self.trees:
            missing = [c for c in classnames if c not in tree.ancestors]
            if missing:
                raise HierarchyError(f"hierarchy {self.name!r}, tree {tree.name!r} does not cover {len(missing)} of "
                                     f"{len(classnames)} classes (e.g. {missing[0]!r})")


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise HierarchyError(f"{what} must be a non-empty string")
    return value


# --- reading and writing files ------------------------------------------------------------------

def _tree_from_json(raw: object, k: int) -> Tree:
    if not isinstance(raw, dict):
        raise HierarchyError(f"trees[{k}] must be an object with keys {', '.join(_TREE_KEYS)}")
    _check_keys(raw, _TREE_KEYS, f"trees[{k}]")
    return Tree(raw["name"], raw["levels"], raw["ancestors"])


def _check_keys(raw: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in raw]
    unknown = [key for key in raw if key not in keys]
    if missing or unknown:
        problem = f"missing key {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"
        raise HierarchyError(f"{where}: {problem} (expected keys {', '.join(keys)})")


def hierarchy_from_json(raw: object) -> Hierarchy:
    """The hierarchy of a parsed JSON document (checked as the module docstring says)."""
    if not isinstance(raw, dict):
        raise HierarchyError(f"expected a JSON object with keys {', '.join(_HIERARCHY_KEYS)}")
    if "format" not in raw:
        raise HierarchyError(f"no 'format' key: a hierarchy file starts with \"format\": \"{FORMAT}\"")
    if raw["format"] != FORMAT:
        raise HierarchyError(f"unknown format {raw.get('format')!r} (expected {FORMAT!r})")
    _check_keys(raw, _HIERARCHY_KEYS, "hierarchy")
    if not isinstance(raw["trees"], list):
        raise HierarchyError("trees must be a non-empty list of trees")
    trees = tuple(_tree_from_json(tree, k) for k, tree in enumerate(raw["trees"]))
    return Hierarchy(raw["name"], raw["datasets"], raw["source"], raw["licence"], trees)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (a class listed twice is an error, not the last one wins)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise HierarchyError(f"key {key!r} appears twice in one object")
        obj[key] = value
    return obj


def load_hierarchy(path: Path) -> Hierarchy:
    """Read and check the hierarchy file ``path``; every problem is a one-line HierarchyError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HierarchyError(f"hierarchy file {path} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise HierarchyError(f"hierarchy file {path} cannot be read ({' '.join(str(exc).split())})") from None
    try:
        return hierarchy_from_json(json.loads(text, object_pairs_hook=_unique_keys))
    except json.JSONDecodeError as exc:
        raise HierarchyError(f"hierarchy file {path} is not JSON ({' '.join(str(exc).split())})") from None
    except HierarchyError as exc:
        raise HierarchyError(f"hierarchy file {path}: {exc}") from None


def dumps(hierarchy: Hierarchy) -> str:
    """The canonical text of ``hierarchy``'s file: one line per class and tree, UTF-8, final newline."""
    def j(value: object) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{" + f'"format": {j(FORMAT)}, "name": {j(hierarchy.name)}, "datasets": {j(list(hierarchy.datasets))},',
             f' "source": {j(hierarchy.source)},', f' "licence": {j(hierarchy.licence)},', ' "trees": [']
    for k, tree in enumerate(hierarchy.trees):
        lines.append(f'  {{"name": {j(tree.name)}, "levels": {j(list(tree.levels))}, "ancestors": {{')
        entries = [f"   {j(c)}: {j(list(path))}" for c, path in tree.ancestors.items()]
        lines.append(",\n".join(entries))
        lines.append("  }}" + ("," if k < len(hierarchy.trees) - 1 else ""))
    lines.append(" ]}")
    return "\n".join(lines) + "\n"


# --- shipped hierarchies ------------------------------------------------------------------------

def shipped_hierarchies() -> dict[str, Path]:
    """Name -> file of every hierarchy shipped under ``vlmbench/hierarchies/`` (the file's stem is its name)."""
    return {path.stem: path for path in sorted(HIERARCHIES_DIR.glob("*.json"), key=lambda p: p.stem)}


@cache
def _load_shipped(path: Path) -> Hierarchy:
    return load_hierarchy(path)


# The hierarchy a dataset is trained and attacked with by default (``hierarchy=auto`` of the hierarchical
# defense): named, so that shipping another file that covers the dataset never changes what a default means.
DEFAULT_HIERARCHY: dict[str, str] = {
    "world-combo": "world",
    **{name: "wordnet" for name in ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "tinyimagenet")},
}


def hierarchies_for(dataset: str) -> list[Hierarchy]:
    """The shipped hierarchies whose ``datasets`` include ``dataset``: its default
    (:data:`DEFAULT_HIERARCHY`) first, then the others in name order."""
    loaded = (_load_shipped(path) for path in shipped_hierarchies().values())
    covering = [hierarchy for hierarchy in loaded if dataset in hierarchy.datasets]
    default = DEFAULT_HIERARCHY.get(dataset)
    return sorted(covering, key=lambda hierarchy: hierarchy.name != default)  # stable: name order otherwise


def parse_level_spec(spec: str) -> tuple[str, str | None, int]:
    """``"HIERARCHY:LEVEL"`` or ``"HIERARCHY:TREE:LEVEL"`` -> ``(hierarchy, tree or None, level)``, level >= 1.

    ``"wordnet:2"`` -> ``("wordnet", None, 2)``; ``"world:colour:1"`` -> ``("world", "colour", 1)``. The
    hierarchy part may be a file path; the level and the tree are split off from the right.
    """
    parts = spec.rsplit(":", 2)
    usage = "use HIERARCHY:LEVEL or HIERARCHY:TREE:LEVEL, e.g. wordnet:2 or world:colour:1"
    if len(parts) < 2 or not all(parts):
        raise HierarchyError(f"bad superclass level {spec!r}: {usage}")
    if not parts[-1].isdigit() or int(parts[-1]) < 1:
        raise HierarchyError(f"bad superclass level {spec!r}: the level must be an integer >= 1 (0 is the classes); {usage}")
    tree = parts[1] if len(parts) == 3 else None
    return parts[0], tree, int(parts[-1])


# --- hierarchies read from a dataset's own files ------------------------------------------------

# CIFAR-100's coarse names "vehicles_1" / "vehicles_2" say nothing a prompt can use; everything else is
# cleaned as the dataset plugin cleans class names ("_" -> " ").
_CIFAR100_COARSE_LABELS = {"vehicles_1": "vehicles", "vehicles_2": "other vehicles"}
CIFAR100_SOURCE = ("CIFAR-100's own coarse labels (Krizhevsky 2009): cifar-100-python/meta coarse_label_names and "
                   "the test pickle's coarse_labels beside fine_labels; vehicles_1/vehicles_2 read 'vehicles'/'other vehicles'")


def _unpickle(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HierarchyError(f"{path} not found; get CIFAR-100 (python version) from "
                             "https://www.cs.toronto.edu/~kriz/cifar.html and unpack it in the data root")
    with path.open("rb") as f:
        return pickle.load(f, encoding="latin1")


def cifar100_coarse_from_pickle(root: Path) -> Tree:
    """The 20 coarse classes of CIFAR-100 over its 100 classes, read from the dataset's pickles.

    Reads ``root/cifar-100-python/meta`` (``fine_label_names``, ``coarse_label_names``) and ``.../test``
    (``fine_labels``, ``coarse_labels``: the coarse label of every image beside its fine one). Class
    names are cleaned as the ``cifar100`` dataset plugin cleans them; coarse labels likewise, with
    ``vehicles_1``/``vehicles_2`` read as ``vehicles``/``other vehicles``. Tree ``coarse``, levels
    ``("class", "coarse class")``. Raises HierarchyError for missing files or a fine class with two coarse
    labels. Imports torch (through the dataset plugin's name cleaning).
    """
    from vlmbench.datasets.text import clean

    base = Path(root) / "cifar-100-python"
    meta, test = _unpickle(base / "meta"), _unpickle(base / "test")
    fine_names, coarse_names = meta["fine_label_names"], meta["coarse_label_names"]
    coarse_of: dict[int, int] = {}
    for fine, coarse in zip(test["fine_labels"], test["coarse_labels"]):
        if coarse_of.setdefault(int(fine), int(coarse)) != int(coarse):
            raise HierarchyError(f"{base / 'test'}: class {fine_names[fine]!r} has two coarse labels "
                                 f"({coarse_names[coarse_of[int(fine)]]!r} and {coarse_names[coarse]!r})")
    missing = [name for k, name in enumerate(fine_names) if k not in coarse_of]
    if missing:
        raise HierarchyError(f"{base / 'test'}: no image of class {missing[0]!r}, so its coarse class is unknown")
    label = {name: _CIFAR100_COARSE_LABELS.get(name, clean(name)) for name in coarse_names}
    return Tree("coarse", ("class", "coarse class"),
                {clean(name): (label[coarse_names[coarse_of[k]]],) for k, name in enumerate(fine_names)})


def _read_lines(path: Path, obtain: str) -> list[str]:
    if not path.is_file():
        raise HierarchyError(f"{path} not found; {obtain}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_AIRCRAFT = "get fgvc-aircraft-2013b.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ and unpack it in the data root"


def aircraft_from_annotations(root: Path, split: str = "test") -> Tree:
    """FGVC-Aircraft's own three levels: variant (the classes) -> family -> manufacturer.

    Joins ``root/fgvc-aircraft-2013b/data/images_{variant,family,manufacturer}_{split}.txt`` (lines
    ``<image id> <label>``) on the image id. Tree ``aircraft``, levels ``("variant", "family",
    "manufacturer")``; class names are the variant labels as the ``fgvc-aircraft`` plugin names them.
    Raises HierarchyError for missing files, an image missing from one file, or a variant in two families.
    """
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    tables = []
    for level in ("variant", "family", "manufacturer"):
        lines = _read_lines(data / f"images_{level}_{split}.txt", _AIRCRAFT)
        tables.append(dict(line.split(" ", 1) for line in lines))
    variants, families, makers = tables
    unmatched = [image for image in variants if image not in families or image not in makers]
    if unmatched:
        raise HierarchyError(f"{data}: image {unmatched[0]} has a variant but no family or manufacturer ({split} split)")
    ancestors: dict[str, tuple[str, str]] = {}
    for image, variant in variants.items():
        path = (families[image], makers[image])
        if ancestors.setdefault(variant, path) != path:
            raise HierarchyError(f"{data}: variant {variant!r} is both {ancestors[variant]} and {path} ({split} split)")
    try:
        return Tree("aircraft", ("variant", "family", "manufacturer"), ancestors)
    except HierarchyError as exc:
        raise HierarchyError(f"{data}: {exc} ({split} split)") from None


_PETS = "get annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ and unpack it into oxford-iiit-pet/"
_SPECIES = {"1": "cat", "2": "dog"}


def oxford_pets_from_annotations(root: Path, classnames: Sequence[str]) -> Tree:
    """Oxford-IIIT Pets' breeds grouped by species (cat, dog), from the dataset's own list.

    Reads ``root/oxford-iiit-pet/annotations/list.txt`` (lines ``<image> <CLASS-ID> <SPECIES> <BREED ID>``,
    ``#`` comments; class ids ``1..37``, species 1 = cat, 2 = dog). ``classnames`` are the dataset's class
    names in label order (label = class id - 1). Tree ``species``, levels ``("breed", "species")``.
    """
    path = Path(root) / "oxford-iiit-pet" / "annotations" / "list.txt"
    species: dict[str, str] = {}
    for line in _read_lines(path, _PETS):
        if line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 4 or fields[2] not in _SPECIES or not fields[1].isdigit() or not 1 <= int(fields[1]) <= len(classnames):
            raise HierarchyError(f"{path}: bad line {line!r} (expected '<image> <class id 1..{len(classnames)}> <species 1|2> <breed id>')")
        name = classnames[int(fields[1]) - 1]
        if species.setdefault(name, _SPECIES[fields[2]]) != _SPECIES[fields[2]]:
            raise HierarchyError(f"{path}: class {name!r} is listed as both cat and dog")
    unlisted = [name for name in classnames if name not in species]
    if unlisted:
        raise HierarchyError(f"{path}: class {unlisted[0]!r} has no line, so its species is unknown")
    return Tree("species", ("breed", "species"), {name: (species[name],) for name in classnames})


# Makes of Stanford Cars whose names are more than one word; every other make is the first word.
CAR_MAKES_OF_TWO_WORDS = ("AM General", "Aston Martin", "Land Rover")


def stanford_cars_by_make(classnames: Sequence[str]) -> Tree:
    """Stanford Cars' models grouped by make, read off the class names (``"Aston Martin V8 Vantage
    Convertible 2012"`` -> ``"Aston Martin"``): the first word, or the two-word make of
    :data:`CAR_MAKES_OF_TWO_WORDS`. Tree ``make``, levels ``("model", "make")``."""
    def make(name: str) -> str:
        two = next((m for m in CAR_MAKES_OF_TWO_WORDS if name.startswith(m + " ")), None)
        return two or name.split()[0]

    return Tree("make", ("model", "make"), {name: (make(name),) for name in classnames})


_DATA_SOURCES = {
    "cifar100": (CIFAR100_SOURCE, "CIFAR-100 (Krizhevsky 2009); no licence is stated with the dataset"),
    "fgvc-aircraft": ("FGVC-Aircraft 2013b's own annotations (Maji et al. 2013): images_{variant,family,manufacturer}_test.txt",
                      "FGVC-Aircraft: data for non-commercial research purposes only (the dataset's terms)"),
    "oxford-pets": ("Oxford-IIIT Pet annotations/list.txt, SPECIES column (Parkhi et al. 2012)",
                    "Oxford-IIIT Pet annotations: CC BY-SA 4.0"),
    "stanford-cars": ("the make in Stanford Cars' class names (Krause et al. 2013): the first word, or AM General, Aston Martin, Land Rover",
                      "derived from the dataset's class names at run time"),
}


def hierarchy_from_data(dataset: str, data_root: Path, classnames: Sequence[str]) -> Hierarchy:
    """The hierarchy of ``dataset`` read from its own files under ``data_root`` (named after the dataset).

    ``dataset`` is one of ``cifar100``, ``fgvc-aircraft``, ``oxford-pets``, ``stanford-cars``;
    ``classnames`` are the loaded dataset's class names (used by Pets and Cars).
    """
    readers = {
        "cifar100": lambda: cifar100_coarse_from_pickle(data_root),
        "fgvc-aircraft": lambda: aircraft_from_annotations(data_root),
        "oxford-pets": lambda: oxford_pets_from_annotations(data_root, classnames),
        "stanford-cars": lambda: stanford_cars_by_make(classnames),
    }
    if dataset not in readers:
        raise HierarchyError(f"no hierarchy can be read from the files of dataset {dataset!r}; "
                             f"readers exist for {', '.join(readers)}")
    source, licence = _DATA_SOURCES[dataset]
    return Hierarchy(dataset, (dataset,), source, licence, (readers[dataset](),))
