"""Class hierarchies as data (vlmbench.hierarchy): the file format and its checks, the tree operations,
every shipped file against its datasets' classes and the script that writes it, and the readers of the
datasets' own hierarchy files (run on fabricated copies in the native formats)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from vlmbench.hierarchy import (
    FORMAT,
    HIERARCHIES_DIR,
    Hierarchy,
    HierarchyError,
    Tree,
    aircraft_from_annotations,
    cifar100_coarse_from_pickle,
    dumps,
    hierarchies_for,
    hierarchy_from_data,
    load_hierarchy,
    oxford_pets_from_annotations,
    parse_level_spec,
    shipped_hierarchies,
    stanford_cars_by_make,
)
from vlmbench.registry import plugins

ROOT = Path(__file__).resolve().parent.parent
WORDNET = Path("/usr/share/wordnet/data.noun")

# CIFAR-100's published superclass table (https://www.cs.toronto.edu/~kriz/cifar.html), spelt as the
# pickle spells the names; the fabricated pickles below carry it in the native format.
CIFAR100_TABLE = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def script(name: str) -> ModuleType:
    """A script of scripts/ imported as a module (registered, as dataclasses need)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# --- fabricated dataset files in their native formats ---------------------------------------------

@pytest.fixture
def no_md5(monkeypatch):
    """Fabricated files cannot match torchvision's published md5 sums: check existence only."""
    import torchvision.datasets.cifar

    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def fabricate_cifar100(root: Path, table: dict[str, list[str]] = CIFAR100_TABLE) -> None:
    """``cifar-100-python/{meta,test,train}`` as the dataset ships them: names sorted, two images per class."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    fine, coarse = sorted(f for members in table.values() for f in members), sorted(table)
    coarse_of = {f: coarse.index(c) for c, members in table.items() for f in members}
    labels = [k for k in range(len(fine)) for _ in range(2)]
    with open(base / "meta", "wb") as f:
        pickle.dump({"fine_label_names": fine, "coarse_label_names": coarse}, f)
    with open(base / "test", "wb") as f:
        pickle.dump({"filenames": [f"{k}.png" for k in range(len(labels))], "batch_label": "testing batch 1 of 1",
                     "fine_labels": labels, "coarse_labels": [coarse_of[fine[k]] for k in labels],
                     "data": np.zeros((len(labels), 3072), np.uint8)}, f)
    (base / "train").touch()


def fabricate_cifar10(root: Path) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_NAMES, "num_cases_per_batch": 10, "num_vis": 3072}, f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((10, 3072), np.uint8), "labels": list(range(10))}, f)
    for k in range(1, 6):
        (base / f"data_batch_{k}").touch()


def fabricate_aircraft(root: Path, rows: list[tuple[str, str, str, str]]) -> None:
    """``images_{variant,family,manufacturer}_test.txt`` from ``(image id, variant, family, manufacturer)``."""
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    for column, level in enumerate(("variant", "family", "manufacturer"), start=1):
        (data / f"images_{level}_test.txt").write_text("".join(f"{row[0]} {row[column]}\n" for row in rows))


def fabricate_pets(root: Path, species_of: list[int]) -> None:
    """``annotations/list.txt``: a header and one image per class id (1-based) with its species (1 cat, 2 dog)."""
    folder = root / "oxford-iiit-pet" / "annotations"
    folder.mkdir(parents=True)
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n#BREED ID: 1-25:Dog 1:12:Cat\n"
    lines = [f"Breed{k}_{n} {k} {s} {k} \n" for k, s in enumerate(species_of, start=1) for n in (1, 2)]
    (folder / "list.txt").write_text(header + "".join(lines))


# --- class names of the datasets a shipped file names ---------------------------------------------

def dataset_classnames(name: str, root: Path) -> tuple[str, ...] | None:
    """The class names the dataset plugin gives, obtained without the real data (fabricated where the
    names come from the files), or None where they cannot be had offline (TinyImageNet's words.txt)."""
    from vlmbench.datasets import text

    plugin = plugins().datasets.get(name)
    if hasattr(plugin, "classnames"):
        return tuple(plugin.classnames)
    meta = text.imagenet()
    subsets = {"imagenet-r": "imagenet_r_wnids", "imagenet-a": "imagenet_a_wnids"}
    if name in ("imagenet", "imagenet-v2", "imagenet-sketch"):
        return tuple(meta["classnames"])
    if name in subsets:
        wanted = set(meta[subsets[name]])
        return tuple(c for w, c in zip(meta["wnids"], meta["classnames"]) if w in wanted)
    if name == "oxford-pets":
        return text.classnames("oxford-pets")
    if name in ("cifar10", "cifar100"):
        (fabricate_cifar10 if name == "cifar10" else fabricate_cifar100)(root)
        return plugin.load(root).classnames
    if name == "tinyimagenet":
        return None
    raise AssertionError(f"no way to get the class names of {name!r}: add one here")


SHIPPED = sorted(shipped_hierarchies())


def test_the_expected_hierarchies_ship():
    assert SHIPPED == ["cifar10", "cifar100", "oxford-pets", "wordnet", "world", "world-forest"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_is_valid_and_canonical(name):
    path = shipped_hierarchies()[name]
    hierarchy = load_hierarchy(path)
    assert hierarchy.name == name == path.stem
    assert path.read_text(encoding="utf-8") == dumps(hierarchy)  # written by dumps: one line per class
    assert hierarchy.source.strip() and hierarchy.licence.strip()
    registered = plugins().datasets.names()
    assert hierarchy.datasets and all(d in registered for d in hierarchy.datasets)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_class_of_every_named_dataset_is_a_leaf_and_every_leaf_a_class(name, tmp_path, no_md5):
    hierarchy = load_hierarchy(shipped_hierarchies()[name])
    union: set[str] = set()
    for dataset in hierarchy.datasets:
        classnames = dataset_classnames(dataset, tmp_path / dataset)
        if classnames is None:
            continue
        hierarchy.check_classes(classnames)
        for tree in hierarchy.trees:
            for level in range(1, tree.depth + 1):
                assert len(tree.superclass_map(level, classnames, name).assignment) == len(classnames)
        union |= set(classnames)
    leaves = set(hierarchy.tree().ancestors)
    if "tinyimagenet" in hierarchy.datasets:
        # TinyImageNet's names come from its words.txt (the synsets' first WordNet lemmas), not shipped:
        # they are the only leaves no other dataset has, one per TinyImageNet synset at most.
        assert 0 < len(leaves - union) <= 200
    else:
        assert leaves == union


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_tree_is_a_tree(name):
    """Independently of the loader's check: every node has one parent, and nodes/parents agree."""
    for tree in load_hierarchy(shipped_hierarchies()[name]).trees:
        classes = list(tree.ancestors)
        for level in range(1, tree.depth):
            parent = {}
            for path in tree.ancestors.values():
                assert parent.setdefault(path[level - 1], path[level]) == path[level]
        for level in range(tree.depth):
            names, index = tree.nodes(level, classes)
            up, up_index = tree.nodes(level + 1, classes)
            parents = tree.parents(level, classes)
            assert [parents[i] for i in index] == list(up_index) and len(parents) == len(names)


def test_shipped_files_ship_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["vlmbench"]
    shipped = {path for pattern in patterns for path in (ROOT / "vlmbench").glob(pattern) if path.is_file()}
    assert set(shipped_hierarchies().values()) <= shipped


def test_hierarchies_for_a_dataset():
    assert [h.name for h in hierarchies_for("world-combo")] == ["world", "world-forest"]  # auto picks world
    assert [h.name for h in hierarchies_for("imagenet-r")] == ["wordnet"]
    assert [h.name for h in hierarchies_for("tinyimagenet")] == ["wordnet"]
    assert hierarchies_for("world-shape") == []


def test_scripted_files_equal_the_scripts_output():
    """world, world-forest, cifar10 and oxford-pets are exactly what scripts/make_hierarchies.py writes."""
    assert script("make_hierarchies").main(["--check"]) == 0


def test_world_trees_are_two_levels_deep_in_the_worlds_own_words():
    from vlmbench.world.tokenizer import UNK_ID, WorldTokenizer

    world = load_hierarchy(shipped_hierarchies()["world"])
    assert [t.name for t in world.trees] == ["shape", "colour"] and all(t.depth == 2 for t in world.trees)
    tokenizer = WorldTokenizer()
    for tree in world.trees:
        for level in (1, 2):
            names, _ = tree.nodes(level, list(tree.ancestors))
            assert len(names) >= 2
            prompts = [tokenizer.encode(f"a photo of a {n}.") for n in names]
            assert len({tuple(p) for p in prompts}) == len(names)  # distinct prompts for the world's models
            assert all(sum(i != UNK_ID for i in p) > 4 for p in prompts)  # each names a known word
    assert world.tree("shape").ancestors["green circle"] == ("circle", "circle or ring")
    assert world.tree("colour").ancestors["cyan ring"] == ("cyan shape", "green, blue, purple or cyan shape")


WORLD_FOREST_TREES = ["shape", "colour", "lightness", "hue", "convexity"]


def test_world_forest_is_world_plus_three_trees_in_the_worlds_own_words():
    from vlmbench.finetune import WorldTrainingSet
    from vlmbench.world.tokenizer import UNK_ID, WorldTokenizer

    world, forest = (load_hierarchy(shipped_hierarchies()[name]) for name in ("world", "world-forest"))
    assert forest.datasets == world.datasets == ("world-combo",) and forest.licence == world.licence
    assert [t.name for t in forest.trees] == WORLD_FOREST_TREES and all(t.depth == 2 for t in forest.trees)
    assert forest.trees[:2] == world.trees  # world.json's trees exactly (names, levels, every class's ancestors)
    for a, tree in enumerate(forest.trees):  # pairwise different groupings
        for other in forest.trees[:a]:
            assert any(tree.ancestors[c] != other.ancestors[c] for c in tree.ancestors), (tree.name, other.name)
    tokenizer = WorldTokenizer()
    training = WorldTrainingSet(size=1).classnames  # the 30 classes the hierarchical defense trains on
    expected = {"shape": [6, 2], "colour": [6, 2], "lightness": [12, 2], "hue": [3, 2], "convexity": [6, 2]}
    for tree in forest.trees:
        for level in (1, 2):
            names, _ = tree.nodes(level, list(tree.ancestors))
            assert len(names) == expected[tree.name][level - 1] == len(tree.nodes(level, training)[0])
            prompts = [tokenizer.encode(f"a photo of a {n}.") for n in names]
            assert len({tuple(p) for p in prompts}) == len(names)
            assert all(sum(i != UNK_ID for i in p) > 4 for p in prompts)
    lightness, hue, convexity = (forest.tree(name).ancestors for name in WORLD_FOREST_TREES[2:])
    assert lightness["cyan ring"] == ("green, yellow or cyan ring", "green, yellow or cyan shape")
    assert lightness["purple ring"] == ("red, blue or purple ring", "red, blue or purple shape")
    assert hue["cyan ring"] == ("green or cyan shape", "green, blue, purple or cyan shape")
    assert hue["yellow cross"] == ("red or yellow shape", "red or yellow shape")
    assert convexity["red cross"] == ("cross", "cross or ring")
    assert convexity["red circle"] == ("circle", "circle, square, triangle or diamond")
    assert parse_level_spec("world-forest:hue:1") == ("world-forest", "hue", 1)
    mapping = forest.tree("hue").superclass_map(1, list(forest.tree().ancestors), "world-forest")
    assert mapping.name == "world-forest:hue:1" and mapping.superclasses == ("red or yellow shape", "green or cyan shape",
                                                                               "blue or purple shape")


def test_wordnet_file_covers_imagenet_with_five_trees_of_depth_5():
    wordnet = load_hierarchy(shipped_hierarchies()["wordnet"])
    assert [t.name for t in wordnet.trees] == WORDNET_TREES and all(t.depth == 5 for t in wordnet.trees)
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in wordnet.licence
    first, second = wordnet.trees[:2]
    assert first.levels == second.levels == ("class", "hypernym 1", "hypernym 2", "hypernym 3", "hypernym 4", "hypernym 5")
    assert first.ancestors["tench"][:2] == ("cyprinid", "cypriniform fish")
    assert second.ancestors["accordion"][0] == "keyboard instrument"  # its second direct hypernym
    assert sum(first.ancestors[c] != second.ancestors[c] for c in first.ancestors) > 100
    assert first.ancestors["cliff"][-2:] == ("entity", "entity")  # a path of 4 steps stays at the root


WORDNET_TREES = ["first", "second", "first-stride-2", "second-stride-2", "first-stride-3"]
# Nodes per level 1..5 over the file's 1044 classes, as make_wordnet_hierarchy.py reports them (docs/hierarchies.md).
WORDNET_NODES = {"first": [555, 302, 185, 114, 73], "second": [558, 304, 184, 114, 72],
                 "first-stride-2": [302, 114, 45, 18, 10], "second-stride-2": [304, 114, 44, 17, 9],
                 "first-stride-3": [185, 45, 13, 7, 4]}


def test_wordnet_stride_trees_relevel_the_first_and_second_paths():
    """A stride-s tree's level l is hypernym s·l of its path: where the L = 5 trees reach, it is their node."""
    wordnet = load_hierarchy(shipped_hierarchies()["wordnet"])
    first, second, first2, second2, first3 = (wordnet.tree(name) for name in WORDNET_TREES)
    assert first2.levels == ("class", "hypernym 2", "hypernym 4", "hypernym 6", "hypernym 8", "hypernym 10")
    assert first3.levels == ("class", "hypernym 3", "hypernym 6", "hypernym 9", "hypernym 12", "hypernym 15")
    for c, path in first.ancestors.items():
        assert first2.ancestors[c][:2] == (path[1], path[3]) and first3.ancestors[c][0] == path[2]
        assert second2.ancestors[c][:2] == (second.ancestors[c][1], second.ancestors[c][3])
    assert first2.ancestors["tench"][:3] == ("cypriniform fish", "teleost fish", "fish")
    assert (first2.ancestors["accordion"][0], second2.ancestors["accordion"][0]) == ("wind instrument", "musical instrument")
    assert first3.ancestors["Maltese"] == ("canine", "mammal", "animal", "whole", "entity")
    # cliff's path has 4 steps (geological formation, object, physical entity, entity): the root repeats above it
    assert first2.ancestors["cliff"] == ("object", *["entity"] * 4)
    assert first3.ancestors["cliff"] == ("physical entity", *["entity"] * 4)
    for tree in wordnet.trees:
        classes = list(tree.ancestors)
        assert [len(tree.nodes(l, classes)[0]) for l in range(1, 6)] == WORDNET_NODES[tree.name]
    # Every new tree gives every class other parents than 'first' (level 1 is a farther hypernym); the two
    # stride-2 trees differ as 'first' and 'second' do, where a synset on the path has a second hypernym.
    for tree in (first2, second2, first3):
        assert all(tree.ancestors[c][0] != first.ancestors[c][0] for c in classes)
    assert sum(first2.ancestors[c] != second2.ancestors[c] for c in classes) > 250


@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet 3.0 not installed (apt-get install wordnet-base)")
def test_wordnet_script_reports_how_many_classes_differ_between_trees(capsys):
    """The figures docs/hierarchies.md quotes: over the 1000 ImageNet-1k synsets, classes whose ancestors differ."""
    wn = script("make_wordnet_hierarchy")
    wordnet = load_hierarchy(shipped_hierarchies()["wordnet"])
    wn.report(WORDNET, wordnet)
    out = capsys.readouterr().out
    assert "second: 296 vs first\n" in out
    assert "first-stride-2: 1000 vs first, 1000 vs second\n" in out
    assert "second-stride-2: 1000 vs first, 1000 vs second, 301 vs first-stride-2\n" in out
    assert "first-stride-3: 1000 vs first, 1000 vs second, 1000 vs first-stride-2, 1000 vs second-stride-2\n" in out
    for name, nodes in WORDNET_NODES.items():
        assert f"tree {name!r}: nodes per level 1..5 over the file's 1044 classes: {nodes}" in out


@pytest.mark.skipif(not WORDNET.is_file(), reason="WordNet 3.0 not installed (apt-get install wordnet-base)")
def test_wordnet_file_equals_the_scripts_output():
    assert script("make_wordnet_hierarchy").main(["--check"]) == 0


def test_wordnet_script_on_a_fabricated_data_noun(tmp_path, monkeypatch):
    """The parser follows @ and @i pointers, the second tree the second hypernym, short paths stay at the
    root, and repeated lemmas are told apart by their hypernym."""
    wn = script("make_wordnet_hierarchy")
    lines = [
        "  1 This software and database is being provided to you ...",
        "00000001 03 n 01 entity 0 000 | the root",
        "00000002 03 n 01 thing 0 001 ~ 00000003 n 0000 | child of entity (no hypernym yet: see below)",
        "00000003 03 n 02 animal 0 beast 0 001 @ 00000001 n 0000 | an animal",
        "00000004 03 n 01 pet 0 001 @ 00000001 n 0000 | a pet",
        "00000005 05 n 01 dog 0 002 @ 00000003 n 0000 @i 00000004 n 0000 | a dog",
        "00000006 05 n 01 plant 0 001 @ 00000003 n 0000 | an odd plant",
        "00000007 05 n 01 plant 0 001 @ 00000004 n 0000 | another plant",
    ]
    data = tmp_path / "data.noun"
    data.write_text("\n".join(lines) + "\n")
    synsets = wn.read_wordnet(data)
    assert synsets["00000005"].hypernyms == ("00000003", "00000004") and synsets["00000003"].name == "animal"
    assert wn.hypernym_path(synsets, "00000005", second=False) == ["00000003", "00000001"]
    assert wn.hypernym_path(synsets, "00000005", second=True) == ["00000004", "00000001"]
    monkeypatch.setattr(wn, "DEPTH", 4)
    assert wn.levels_of(["00000003", "00000001"]) == ("00000003", "00000001", "00000001", "00000001")
    labels = wn.node_labels(synsets, {"00000006", "00000007", "00000003"})
    assert labels == {"00000006": "plant (animal)", "00000007": "plant (pet)", "00000003": "animal"}
    copyright_file = tmp_path / "copyright"
    copyright_file.write_text("Files: *\nLicense: WordNet3.0\n First line\n MERCHANT-\n ABILITY.\n .\n Second.\n\nFiles: debian/*\n")
    assert wn.read_licence(copyright_file) == "First line MERCHANT-ABILITY.\n\nSecond."


# --- tree operations on a small hand-built tree ---------------------------------------------------

def small_tree() -> Tree:
    """cat, dog -> mammal; trout -> fish; mammal, fish -> animal; oak -> tree -> plant."""
    return Tree("t", ("class", "group", "kingdom"), {
        "cat": ["mammal", "animal"], "dog": ["mammal", "animal"], "trout": ["fish", "animal"], "oak": ["tree", "plant"],
    })


def test_nodes_are_in_order_of_first_appearance():
    tree = small_tree()
    assert tree.depth == 2 and tree.levels == ("class", "group", "kingdom")
    assert tree.nodes(0, ["dog", "oak"]) == (("dog", "oak"), (0, 1))
    assert tree.nodes(1, ["oak", "cat", "trout", "dog"]) == (("tree", "mammal", "fish"), (0, 1, 2, 1))
    assert tree.nodes(2, ["cat", "oak", "trout"]) == (("animal", "plant"), (0, 1, 0))
    assert tree.nodes(1, ["cat", "cat"]) == (("mammal",), (0, 0))  # repeated class names share a node


def test_parents_index_the_next_level():
    tree = small_tree()
    classes = ["oak", "cat", "trout", "dog"]
    assert tree.parents(0, classes) == (0, 1, 2, 1)  # the classes' level-1 nodes: tree, mammal, fish
    assert tree.parents(1, classes) == (0, 1, 1)  # tree -> plant, mammal -> animal, fish -> animal
    with pytest.raises(HierarchyError, match="level 2 is the top"):
        tree.parents(2, classes)


def test_superclass_map_groups_by_the_ancestor_at_a_level():
    from vlmbench.targets import SuperclassMap, TargetError

    tree = small_tree()
    mapping = tree.superclass_map(1, ["cat", "dog", "trout", "oak"], "toy")
    assert isinstance(mapping, SuperclassMap)
    assert (mapping.name, mapping.superclasses, mapping.assignment) == ("toy:t:1", ("mammal", "fish", "tree"), (0, 0, 1, 2))
    assert tree.superclass_map(2, ["trout", "oak"], "toy").assignment == (0, 1)  # a subset of the leaves
    with pytest.raises(TargetError, match="at least 2 superclasses"):
        tree.superclass_map(2, ["cat", "dog", "trout"], "toy")  # one node: nothing to attack
    with pytest.raises(HierarchyError, match="level 0 is the classes"):
        tree.superclass_map(0, ["cat", "oak"], "toy")
    with pytest.raises(HierarchyError, match="out of range 0..2"):
        tree.superclass_map(3, ["cat", "oak"], "toy")
    with pytest.raises(HierarchyError, match="no ancestors for 1 of 2 classes .*'lion'"):
        tree.superclass_map(1, ["cat", "lion"], "toy")


def test_imagenet_superclass_maps_keep_classes_that_share_a_name():
    """CLIP's ImageNet names repeat ('missile', 'sunglasses'): every one of the 1000 classes is assigned."""
    from vlmbench.datasets import text

    names = text.imagenet()["classnames"]
    mapping = load_hierarchy(shipped_hierarchies()["wordnet"]).tree().superclass_map(2, names, "wordnet")
    assert len(mapping.assignment) == 1000 and min(mapping.assignment) == 0
    first, second = [k for k, n in enumerate(names) if n == "missile"]
    assert mapping.assignment[first] == mapping.assignment[second]


def test_hierarchy_tree_and_check_classes():
    other = Tree("u", ("class", "size"), {"cat": ["small"], "dog": ["small"], "trout": ["small"], "oak": ["big"]})
    hierarchy = Hierarchy("toy", ("toyset",), "made up", "MIT", (small_tree(), other))
    assert hierarchy.tree() is hierarchy.trees[0] and hierarchy.tree("u") is other
    hierarchy.check_classes(["oak", "cat"])
    with pytest.raises(HierarchyError, match="no tree 'v'; its trees: t, u"):
        hierarchy.tree("v")
    with pytest.raises(HierarchyError, match="tree 't' does not cover 1 of 2 classes .*'lion'"):
        hierarchy.check_classes(["cat", "lion"])


# --- bad files ------------------------------------------------------------------------------------

def good() -> dict:
    return {"format": FORMAT, "name": "toy", "datasets": ["toyset"], "source": "made up", "licence": "MIT",
            "trees": [{"name": "t", "levels": ["class", "group", "kingdom"],
                       "ancestors": {"cat": ["mammal", "animal"], "trout": ["fish", "animal"], "oak": ["tree", "plant"]}}]}


def broken(edit) -> dict:
    raw = good()
    edit(raw)
    return raw


BAD = {
    "not a tree": (lambda r: r["trees"][0]["ancestors"].update(dog=["mammal", "plant"]),
                   r"not a tree: 'mammal' at level 1 \(group\) has two parents at level 2: 'animal' \(via 'cat'\) and 'plant' \(via 'dog'\)"),
    "wrong length": (lambda r: r["trees"][0]["ancestors"].update(dog=["mammal"]),
                     r"class 'dog' needs 2 ancestors \(levels group, kingdom\), got \['mammal'\]"),
    "unknown format": (lambda r: r.update(format="vlmbench-hierarchy/9"),
                       r"unknown format 'vlmbench-hierarchy/9' \(expected 'vlmbench-hierarchy/1'\)"),
    "no format": (lambda r: r.pop("format"), r"no 'format' key"),
    "missing key": (lambda r: r.pop("licence"), r"hierarchy: missing key 'licence'"),
    "unknown key": (lambda r: r["trees"][0].update(parents={}), r"trees\[0\]: unknown key 'parents'"),
    "no level above the classes": (lambda r: r["trees"][0].update(levels=["class"]), r"at least one level above it"),
    "one node at level 1": (lambda r: r["trees"][0].update(ancestors={"cat": ["animal", "x"], "dog": ["animal", "x"]}),
                            r"level 1 \(group\) has a single node"),
    "two-line label": (lambda r: r["trees"][0]["ancestors"].update(dog=["mam\nmal", "animal"]), r"must be one line"),
    "empty label": (lambda r: r["trees"][0]["ancestors"].update(dog=["", "animal"]), r"must be a non-empty string"),
    "colon in a name": (lambda r: r.update(name="a:b"), r"must not contain ':'"),
    "trees disagree on classes": (lambda r: r["trees"].append({"name": "u", "levels": ["class", "size"],
                                                               "ancestors": {"cat": ["small"], "oak": ["big"]}}),
                                  r"same classes: 'trout' is in tree 't' but not in 'u'"),
    "repeated tree name": (lambda r: r["trees"].append(r["trees"][0]), r"tree names repeat"),
    "no trees": (lambda r: r.update(trees=[]), r"non-empty list of trees"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_give_one_line_errors_naming_file_and_problem(case, tmp_path):
    edit, message = BAD[case]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(broken(edit)))
    with pytest.raises(HierarchyError) as raised:
        load_hierarchy(path)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"hierarchy file {path}: ")
    assert raised.match(message)


def test_unreadable_files(tmp_path):
    with pytest.raises(HierarchyError, match=r"hierarchy file .*nope.json not found"):
        load_hierarchy(tmp_path / "nope.json")
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(HierarchyError, match=r"a.json is not JSON \("):
        load_hierarchy(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps(good()).replace('"oak"', '"cat"'))  # a class listed twice
    with pytest.raises(HierarchyError, match=r"b.json: key 'cat' appears twice"):
        load_hierarchy(tmp_path / "b.json")


def test_a_good_file_round_trips_through_dumps(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps(good()))
    hierarchy = load_hierarchy(path)
    path.write_text(dumps(hierarchy))
    assert load_hierarchy(path) == hierarchy


def test_parse_level_spec():
    assert parse_level_spec("wordnet:2") == ("wordnet", None, 2)
    assert parse_level_spec("world:colour:1") == ("world", "colour", 1)
    assert parse_level_spec("my/dir/h.json:shape:3") == ("my/dir/h.json", "shape", 3)
    for bad in ("wordnet", "wordnet:", ":2", "world::1", "wordnet:two", "wordnet:0", "wordnet:-1"):
        with pytest.raises(HierarchyError, match="HIERARCHY:LEVEL or HIERARCHY:TREE:LEVEL"):
            parse_level_spec(bad)


def test_the_module_does_not_import_torch():
    code = ("import sys; from vlmbench.hierarchy import hierarchies_for; "
            "t = hierarchies_for('imagenet')[0].tree(); t.nodes(3, list(t.ancestors)); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


# --- readers of the datasets' own files -----------------------------------------------------------

def test_cifar100_coarse_classes_from_the_pickle_are_the_shipped_file(tmp_path, no_md5):
    fabricate_cifar100(tmp_path)
    tree = cifar100_coarse_from_pickle(tmp_path)
    shipped = load_hierarchy(shipped_hierarchies()["cifar100"])
    assert tree == shipped.tree()
    assert dumps(hierarchy_from_data("cifar100", tmp_path, [])) == dumps(shipped)
    assert tree.ancestors["maple tree"] == ("trees",) and tree.ancestors["lawn mower"] == ("other vehicles",)
    assert tree.ancestors["bus"] == ("vehicles",) and tree.ancestors["possum"] == ("medium mammals",)
    assert set(tree.ancestors) == set(plugins().datasets.get("cifar100").load(tmp_path).classnames)


def test_cifar100_reader_refuses_inconsistent_or_missing_pickles(tmp_path):
    with pytest.raises(HierarchyError, match=r"cifar-100-python/meta not found; get CIFAR-100"):
        cifar100_coarse_from_pickle(tmp_path)
    fabricate_cifar100(tmp_path)
    test_file = tmp_path / "cifar-100-python" / "test"
    with open(test_file, "rb") as f:
        batch = pickle.load(f)
    batch["coarse_labels"][1] = (batch["coarse_labels"][1] + 1) % 20  # the second image of class 0
    with open(test_file, "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(HierarchyError, match=r"class 'apple' has two coarse labels"):
        cifar100_coarse_from_pickle(tmp_path)


AIRCRAFT_ROWS = [
    ("0001", "707-320", "Boeing 707", "Boeing"), ("0002", "727-200", "Boeing 727", "Boeing"),
    ("0003", "A300B4", "A300", "Airbus"), ("0004", "707-320", "Boeing 707", "Boeing"),
    ("0005", "Cessna 172", "Cessna 172", "Cessna"),
]


def test_aircraft_levels_from_the_annotation_files(tmp_path):
    fabricate_aircraft(tmp_path, AIRCRAFT_ROWS)
    tree = aircraft_from_annotations(tmp_path)
    assert tree.levels == ("variant", "family", "manufacturer")
    assert dict(tree.ancestors) == {"707-320": ("Boeing 707", "Boeing"), "727-200": ("Boeing 727", "Boeing"),
                                    "A300B4": ("A300", "Airbus"), "Cessna 172": ("Cessna 172", "Cessna")}
    hierarchy = hierarchy_from_data("fgvc-aircraft", tmp_path, [])
    assert hierarchy.name == "fgvc-aircraft" and hierarchy.datasets == ("fgvc-aircraft",)


def test_aircraft_reader_refuses_inconsistent_files(tmp_path):
    with pytest.raises(HierarchyError, match=r"images_variant_test.txt not found; get fgvc-aircraft-2013b"):
        aircraft_from_annotations(tmp_path)
    fabricate_aircraft(tmp_path / "a", [*AIRCRAFT_ROWS, ("0006", "707-320", "Boeing 727", "Boeing")])
    with pytest.raises(HierarchyError, match=r"variant '707-320' is both"):
        aircraft_from_annotations(tmp_path / "a")
    fabricate_aircraft(tmp_path / "b", [*AIRCRAFT_ROWS, ("0006", "727-100", "Boeing 727", "Airbus")])
    with pytest.raises(HierarchyError, match=r"data: tree 'aircraft' is not a tree: 'Boeing 727' at level 1 \(family\) has two parents"):
        aircraft_from_annotations(tmp_path / "b")


def test_pets_species_from_list_txt_are_the_shipped_file(tmp_path):
    shipped = load_hierarchy(shipped_hierarchies()["oxford-pets"])
    names = dataset_classnames("oxford-pets", tmp_path)
    fabricate_pets(tmp_path, [1 if shipped.tree().ancestors[n] == ("cat",) else 2 for n in names])
    assert oxford_pets_from_annotations(tmp_path, names) == shipped.tree()
    assert sum(path == ("cat",) for path in shipped.tree().ancestors.values()) == 12
    assert shipped.tree().ancestors["Sphynx"] == ("cat",) and shipped.tree().ancestors["Pug"] == ("dog",)


def test_pets_reader_refuses_bad_lines(tmp_path):
    fabricate_pets(tmp_path, [1, 2])
    with pytest.raises(HierarchyError, match=r"bad line 'Breed2_1 2 2 2'"):
        oxford_pets_from_annotations(tmp_path, ["A"])  # class id 2 of a 1-class list
    with pytest.raises(HierarchyError, match=r"class 'C' has no line"):
        oxford_pets_from_annotations(tmp_path, ["A", "B", "C"])


def test_stanford_cars_by_make():
    names = ["AM General Hummer SUV 2000", "Aston Martin V8 Vantage Convertible 2012", "BMW M3 Coupe 2012",
             "Land Rover Range Rover SUV 2012", "smart fortwo Convertible 2012", "BMW X6 SUV 2012"]
    tree = stanford_cars_by_make(names)
    assert tree.nodes(1, names)[0] == ("AM General", "Aston Martin", "BMW", "Land Rover", "smart")
    assert hierarchy_from_data("stanford-cars", Path("unused"), names).tree().levels == ("model", "make")
    with pytest.raises(HierarchyError, match=r"readers exist for cifar100, fgvc-aircraft, oxford-pets, stanford-cars"):
        hierarchy_from_data("dtd", Path("unused"), [])


def test_a_new_hierarchy_file_never_changes_a_datasets_default(tmp_path, monkeypatch):
    """`hierarchy=auto` takes the first of hierarchies_for: the dataset's named default, even when another
    file covering the dataset sorts before it (a name such as 'a-forest')."""
    import json

    from vlmbench import hierarchy as module

    for name in ("world", "world-forest"):
        shutil.copy(module.HIERARCHIES_DIR / f"{name}.json", tmp_path / f"{name}.json")
    earlier = json.loads((tmp_path / "world-forest.json").read_text())
    earlier["name"] = "a-forest"
    (tmp_path / "a-forest.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(module, "HIERARCHIES_DIR", tmp_path)
    assert [h.name for h in module.hierarchies_for("world-combo")] == ["world", "a-forest", "world-forest"]
    assert module.DEFAULT_HIERARCHY["imagenet"] == "wordnet" and module.DEFAULT_HIERARCHY["world-combo"] == "world"
