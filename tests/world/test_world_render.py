"""The world's scenes, renderings and captions: determinism, ranges, held-out combinations."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmbench.world import render
from vlmbench.world.render import (
    COLOUR_NAMES,
    COUNT_WORDS,
    GENERIC_NOUNS,
    HELD_OUT,
    SHAPES,
    item_rng,
    plural,
    pretraining_example,
    pretraining_pair,
    pretraining_set,
    sample_scene,
)


@settings(max_examples=25, deadline=None)
@given(index=st.integers(0, 10**9), seed=st.integers(0, 2**31))
def test_pretraining_pair_is_a_reproducible_image_in_range(index, seed):
    image, text = pretraining_pair(index, seed)
    again, text_again = pretraining_pair(index, seed)
    assert image.shape == (3, 32, 32) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert np.array_equal(image, again) and text == text_again


def test_items_are_random_access_and_depend_on_stream_index_and_seed():
    _, captions = pretraining_set(40, seed=3)
    assert pretraining_pair(37, seed=3)[1] == captions[37]  # item 37 alone equals item 37 of the sequence
    draws = {
        (stream, index, seed): item_rng(stream, index, seed).random()
        for stream in ("pretrain", "world-shape/test")
        for index in (0, 1)
        for seed in (0, 1)
    }
    assert len(set(draws.values())) == len(draws)


def test_pretraining_set_quantises_the_rendered_images():
    images, _ = pretraining_set(5, seed=0)
    assert images.dtype == np.uint8 and images.shape == (5, 3, 32, 32)
    assert np.abs(images[4] / 255.0 - pretraining_pair(4, 0)[0]).max() <= 0.5 / 255 + 1e-6


def test_held_out_combinations_form_a_latin_square():
    assert len(HELD_OUT) == len(SHAPES) == len(COLOUR_NAMES)
    assert {shape for shape, _ in HELD_OUT} == set(SHAPES)
    assert {colour for _, colour in HELD_OUT} == set(COLOUR_NAMES)


def test_held_out_combinations_never_appear_in_pretraining_and_the_others_do():
    seen = {(scene.shape, scene.colour) for scene, _ in (pretraining_example(i, 0) for i in range(3000))}
    assert not seen & HELD_OUT
    assert seen == {(s, c) for s in SHAPES for c in COLOUR_NAMES} - HELD_OUT


def test_excluded_pair_cannot_be_forced():
    shape, colour = sorted(HELD_OUT)[0]
    with pytest.raises(ValueError):
        sample_scene(item_rng("t", 0, 0), shape=shape, colour=colour, exclude=HELD_OUT)
    assert sample_scene(item_rng("t", 0, 0), shape=shape, colour=colour).colour == colour


def test_fixed_attributes_are_respected_and_objects_stay_on_the_canvas():
    for i in range(50):
        scene = sample_scene(item_rng("t", i, 0), shape="ring", size="large", count=4, texture="dotted")
        assert (scene.shape, scene.size, scene.count, scene.texture) == ("ring", "large", 4, "dotted")
        assert len(scene.centres) == 4
        for x, y in scene.centres:
            assert scene.radius <= x <= 32 - scene.radius and scene.radius <= y <= 32 - scene.radius


def _object_pixels(scene: render.Scene) -> int:
    """Pixels that change when the objects are removed from the scene."""
    empty = render.render(dataclasses.replace(scene, centres=()))
    return int((np.abs(render.render(scene) - empty).max(axis=0) > 0.02).sum())


def test_object_area_grows_with_size_and_count():
    for i in range(20):
        small = sample_scene(item_rng("area", i, 0), size="small", count=1)
        large = sample_scene(item_rng("area", i, 0), size="large", count=1)
        assert _object_pixels(large) > 1.8 * _object_pixels(small)
        many = sample_scene(item_rng("area", i, 0), size="small", count=3)
        assert _object_pixels(many) > 2 * _object_pixels(dataclasses.replace(many, centres=many.centres[:1]))


def test_every_shape_draws_a_distinct_silhouette():
    scene = sample_scene(item_rng("t", 0, 0), size="large", count=1, texture="plain")
    masks = {shape: render.render(dataclasses.replace(scene, shape=shape)) for shape in SHAPES}
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (np.abs(masks[a] - masks[b]).max(axis=0) > 0.05).sum() >= 30, (a, b)


def test_every_texture_is_visible_on_the_background():
    scene = sample_scene(item_rng("t", 1, 0), count=1)
    plain = render.render(dataclasses.replace(scene, texture="plain", centres=()))
    assert np.ptp(plain, axis=(1, 2)).max() < 1e-6
    for texture in ("striped", "dotted", "checkered"):
        assert np.ptp(render.render(dataclasses.replace(scene, texture=texture, centres=()))) > 0.05


def test_captions_only_name_the_scene_attributes_and_use_the_vocabulary():
    vocabulary = set(render.vocabulary())
    generic = {*GENERIC_NOUNS, *map(plural, GENERIC_NOUNS)}
    plurals = set(map(plural, (*SHAPES, *GENERIC_NOUNS)))
    mentioned = {"shape": 0, "colour": 0, "count": 0, "texture": 0, "size": 0}
    for i in range(400):
        scene, text = pretraining_example(i, 0)
        words = re.findall(r"[a-z]+", text)
        assert set(words) <= vocabulary
        nouns = [w for w in words if w in {*SHAPES, *plurals, *generic}]
        assert len(nouns) == 1 and nouns[0] in {scene.shape, plural(scene.shape), *generic}, (text, scene)
        assert (nouns[0] in plurals) == (scene.count > 1), (text, scene)
        for attribute, values, truth in (
            ("colour", COLOUR_NAMES, scene.colour),
            ("count", COUNT_WORDS, COUNT_WORDS[scene.count - 1]),
            ("texture", render.TEXTURES, scene.texture),
            ("size", render.SIZES, scene.size),
        ):
            said = [w for w in words if w in values]
            assert said in ([], [truth]), (text, scene)
            mentioned[attribute] += bool(said)
        mentioned["shape"] += nouns[0] not in generic
    assert all(100 < n < 400 for n in mentioned.values()), mentioned  # each attribute sometimes omitted


def test_articles_agree_with_the_next_word():
    for i in range(300):
        text = pretraining_example(i, 1)[1]
        assert not re.search(r"\ban [^aeiou]|\ba [aeiou]", text), text
