"""The world's zero-shot datasets honour the ZeroShotDataset / DatasetPlugin contract."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from vlmbench.data import DatasetPlugin, ZeroShotDataset
from vlmbench.world.datasets import WORLD_COMBO, WORLD_DATASETS
from vlmbench.world.render import COUNT_WORDS, HELD_OUT

EXPECTED_CLASSES = {
    "world-shape": 6,
    "world-colour": 6,
    "world-count": 4,
    "world-texture": 4,
    "world-size": 2,
    "world-combo": 36,
}


def test_registry_lists_the_required_datasets_in_a_fixed_order():
    assert list(WORLD_DATASETS)[: len(EXPECTED_CLASSES)] == list(EXPECTED_CLASSES)
    for name, plugin in WORLD_DATASETS.items():
        assert isinstance(plugin, DatasetPlugin) and plugin.name == name
        assert plugin.status(None) == "generated"
        assert plugin.splits[0] == "test" and "val" in plugin.splits


def test_label_spaces_are_distinct():
    spaces = [frozenset(plugin.classnames) for plugin in WORLD_DATASETS.values()]
    assert len(set(spaces)) == len(spaces)


@pytest.mark.parametrize("name", list(WORLD_DATASETS))
def test_split_sizes_classes_and_templates(name):
    plugin = WORLD_DATASETS[name]
    test, val = plugin.load(None), plugin.load(None, "val")
    assert isinstance(test, ZeroShotDataset) and (test.name, test.split, val.split) == (name, "test", "val")
    assert test.num_classes == len(set(test.classnames)) == EXPECTED_CLASSES.get(name, test.num_classes)
    assert len(test) >= 500 and len(val) >= 200
    assert len(test) % test.num_classes == 0 and len(val) % val.num_classes == 0
    assert len(test.templates) >= 3 and all(t.count("{}") == 1 for t in test.templates)
    for classname in test.classnames:
        prompts = test.prompts(classname)
        assert len(prompts) == len(test.templates) and all(classname in p and "{}" not in p for p in prompts)


@pytest.mark.parametrize("name", list(WORLD_DATASETS))
def test_items_are_images_in_range_with_balanced_labels_matching_their_scene(name):
    dataset = WORLD_DATASETS[name].load(None, "val")
    labels = []
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert isinstance(label, int) and 0 <= label < dataset.num_classes
        scene = dataset.scene(index)
        for attribute, value in dataset.class_attributes[label].items():
            assert getattr(scene, attribute) == value
        labels.append(label)
    assert set(Counter(labels).values()) == {len(dataset) // dataset.num_classes}


def test_class_names_describe_the_fixed_attribute():
    count = WORLD_DATASETS["world-count"].load(None)
    for label, classname in enumerate(count.classnames):
        assert classname.split()[0] == COUNT_WORDS[count.class_attributes[label]["count"] - 1]
    combo = WORLD_COMBO.load(None)
    for classname, attributes in zip(combo.classnames, combo.class_attributes):
        assert classname == f"{attributes['colour']} {attributes['shape']}"


def test_combo_tests_the_combinations_held_out_of_pretraining():
    dataset = WORLD_COMBO.load(None)
    shown = {(dataset.scene(i).shape, dataset.scene(i).colour) for i in range(len(dataset))}
    assert HELD_OUT <= shown and len(shown) == 36


def test_items_are_reproducible_random_access_and_splits_differ():
    plugin = WORLD_DATASETS["world-shape"]
    first, second = plugin.load(None), plugin.load(None)
    image, label = second[321]
    assert torch.equal(first[321][0], image) and first[321][1] == label
    assert not torch.equal(plugin.load(None, "val")[5][0], first[5][0])
    with pytest.raises(IndexError):
        first.scene(len(first))
    with pytest.raises(ValueError):
        plugin.load(None, "train")
