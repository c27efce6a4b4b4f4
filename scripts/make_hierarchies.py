"""Write the shipped class hierarchies that vlmbench's own data determines: ``world``, ``world-forest``,
``cifar10``, ``oxford-pets`` (and ``cifar100`` from the dataset's pickles when given a data root).

Usage::

    python scripts/make_hierarchies.py                          # rewrite world, world-forest, cifar10, oxford-pets
    python scripts/make_hierarchies.py --cifar100-root DATA     # also cifar100 from DATA/cifar-100-python
    python scripts/make_hierarchies.py --check                  # exit 1 if a shipped file differs

The WordNet hierarchy has its own script (``make_wordnet_hierarchy.py``). docs/hierarchies.md explains
each grouping; tests/test_hierarchies.py checks the shipped files equal what this script writes.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from vlmbench.hierarchy import (
    CIFAR100_SOURCE,
    HIERARCHIES_DIR,
    Hierarchy,
    Tree,
    cifar100_coarse_from_pickle,
    dumps,
)

MIT = "MIT (vlmbench)"

# The world's shapes with a curved outline; the others have corners.
ROUND_SHAPES = ("circle", "ring")
# The warm side of the colour wheel; the world's purple (0.62, 0.18, 0.80) is a bluish violet, so cool.
WARM_COLOURS = ("red", "yellow")
# world-forest's extra trees. The three lightest colours: highest luma, Rec. 709 weights on the RGB values of
# vlmbench/world/render.py COLOURS (yellow 0.82, cyan 0.66, green 0.56; purple 0.32, red 0.28, blue 0.28; the
# same three on linearised sRGB); _world_trees checks it.
LIGHT_COLOURS = ("green", "yellow", "cyan")
# Neighbours on the hue circle (hues of COLOURS: red 2, yellow 53, green 123, cyan 184, blue 232, purple 283
# degrees); each pair lies on one side of the warm/cool split, so the pairs nest under warmth.
HUE_PAIRS = (("red", "yellow"), ("green", "cyan"), ("blue", "purple"))
# Shapes whose mask (render.py _shape_mask) is not convex: the cross (a plus sign) and the ring (an annulus).
NON_CONVEX_SHAPES = ("cross", "ring")


def either(words: Sequence[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``: a label the world's tokenizer reads word by word."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def split(members: Sequence[str], words: Sequence[str]) -> dict[str, str]:
    """Each word of ``words`` -> the group it is in, ``members`` or the rest, named by :func:`either`
    (in the order of ``words``)."""
    inside, outside = [w for w in words if w in members], [w for w in words if w not in members]
    return {w: either(inside if w in members else outside) for w in words}


def _world_trees() -> tuple[str, dict[str, Tree]]:
    """``world-combo``'s name and every tree over its 36 classes, by name (world: shape, colour;
    world-forest: those and lightness, hue, convexity).

    Labels use only the world's vocabulary (its tokenizer maps other words, such as "round", to one
    unknown token, so "round" and "angular" would be the same prompt): a group is named by its members.
    """
    from vlmbench.world.datasets import WORLD_COMBO
    from vlmbench.world.render import COLOUR_NAMES, COLOURS, SHAPES

    unknown = (set(ROUND_SHAPES) | set(NON_CONVEX_SHAPES)) - set(SHAPES)
    unknown |= (set(WARM_COLOURS) | set(LIGHT_COLOURS) | {c for pair in HUE_PAIRS for c in pair}) - set(COLOUR_NAMES)
    if unknown:
        raise SystemExit(f"the world has no {sorted(unknown)}: update the groups at the top of this script")
    if sorted(c for pair in HUE_PAIRS for c in pair) != sorted(COLOUR_NAMES):
        raise SystemExit("HUE_PAIRS must hold every colour of the world once")
    luma = {c: 0.2126 * r + 0.7152 * g + 0.0722 * b for c, (r, g, b) in COLOURS.items()}
    if set(sorted(luma, key=luma.get)[-len(LIGHT_COLOURS):]) != set(LIGHT_COLOURS):
        raise SystemExit(f"LIGHT_COLOURS are not the world's lightest colours (luma {luma})")
    outline, convexity = split(ROUND_SHAPES, SHAPES), split([s for s in SHAPES if s not in NON_CONVEX_SHAPES], SHAPES)
    warmth = {c: f"{group} shape" for c, group in split(WARM_COLOURS, COLOUR_NAMES).items()}
    lightness = split(LIGHT_COLOURS, COLOUR_NAMES)
    hue = {c: f"{either([x for x in COLOUR_NAMES if x in pair])} shape" for pair in HUE_PAIRS for c in pair}
    if any(len({warmth[c] for c in pair}) != 1 for pair in HUE_PAIRS):
        raise SystemExit("a pair of HUE_PAIRS straddles the warm/cool split: the hue tree would not be a tree")
    classes = [(name, a["colour"], a["shape"]) for name, a in zip(WORLD_COMBO.classnames, WORLD_COMBO.class_attributes)]

    def tree(name: str, levels: tuple[str, ...], path: Callable[[str, str], tuple[str, str]]) -> Tree:
        return Tree(name, ("class", *levels), {c: path(colour, shape) for c, colour, shape in classes})

    trees = [
        tree("shape", ("shape", "outline"), lambda colour, shape: (shape, outline[shape])),
        tree("colour", ("colour", "warmth"), lambda colour, shape: (f"{colour} shape", warmth[colour])),
        tree("lightness", ("lightness and shape", "lightness"),
             lambda colour, shape: (f"{lightness[colour]} {shape}", f"{lightness[colour]} shape")),
        tree("hue", ("hue pair", "warmth"), lambda colour, shape: (hue[colour], warmth[colour])),
        tree("convexity", ("shape", "convexity"), lambda colour, shape: (shape, convexity[shape])),
    ]
    return WORLD_COMBO.name, {t.name: t for t in trees}


def world() -> Hierarchy:
    """``world-combo``'s 36 classes by shape (-> round or angular) and by colour (-> warm or cool)."""
    dataset, trees = _world_trees()
    return Hierarchy("world", (dataset,),
                     f"vlmbench's world (vlmbench/world/render.py SHAPES, COLOUR_NAMES); round shapes: {', '.join(ROUND_SHAPES)}; "
                     f"warm colours: {', '.join(WARM_COLOURS)}; written by scripts/make_hierarchies.py",
                     MIT, (trees["shape"], trees["colour"]))


def world_forest() -> Hierarchy:
    """``world``'s two trees and three more over the same 36 classes, a five-tree forest (vlmbench's, for the
    hierarchical defense's ``trees=5``): lightness and shape (-> light or dark), hue pair (-> warm or cool),
    shape (-> convex or not).

    Named with ``_``, not ``-``: shipped files are listed in file-name order, ``world-forest.json`` would come
    before ``world.json`` (``-`` < ``.``), and ``hierarchy=auto`` takes the first that covers world-combo.
    """
    dataset, trees = _world_trees()
    return Hierarchy("world-forest", (dataset,),
                     "vlmbench's world (vlmbench/world/render.py SHAPES, COLOURS, _shape_mask); trees 'shape' and "
                     "'colour' are world.json's; 'lightness': class -> lightness and shape -> lightness, light colours "
                     f"(highest Rec. 709 luma): {', '.join(LIGHT_COLOURS)}; 'hue': class -> hue pair "
                     f"({'; '.join(', '.join(p) for p in HUE_PAIRS)}) -> warmth; 'convexity': class -> shape -> convex "
                     f"or not (not convex: {', '.join(NON_CONVEX_SHAPES)}); a five-tree forest of vlmbench's construction; "
                     "written by scripts/make_hierarchies.py",
                     MIT, tuple(trees.values()))


CIFAR10_VEHICLES = ("airplane", "automobile", "ship", "truck")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10() -> Hierarchy:
    """CIFAR-10's six animal and four vehicle classes (class names as the dataset's batches.meta gives them)."""
    tree = Tree("animal-vehicle", ("class", "kind"),
                {c: ("vehicle" if c in CIFAR10_VEHICLES else "animal",) for c in CIFAR10_CLASSES})
    return Hierarchy("cifar10", ("cifar10",),
                     "CIFAR-10 (Krizhevsky 2009): its classes are six animals and four vehicles "
                     "(airplane, automobile, ship, truck); class names from cifar-10-batches-py/batches.meta",
                     MIT + "; the class names are CIFAR-10's", (tree,))


# The 12 cat breeds of Oxford-IIIT Pet (species 1 in annotations/list.txt); the other 25 breeds are dogs.
CAT_BREEDS = ("Abyssinian", "Bengal", "Birman", "Bombay", "British Shorthair", "Egyptian Mau", "Maine Coon",
              "Persian", "Ragdoll", "Russian Blue", "Siamese", "Sphynx")


def oxford_pets() -> Hierarchy:
    """Oxford-IIIT Pets' 37 breeds by species, over the class names the ``oxford-pets`` plugin uses."""
    from vlmbench.datasets.text import classnames

    names = classnames("oxford-pets")
    if not set(CAT_BREEDS) <= set(names):
        raise SystemExit(f"oxford-pets class names lack {sorted(set(CAT_BREEDS) - set(names))}")
    tree = Tree("species", ("breed", "species"), {n: ("cat" if n in CAT_BREEDS else "dog",) for n in names})
    return Hierarchy("oxford-pets", ("oxford-pets",),
                     "Oxford-IIIT Pet (Parkhi et al. 2012), annotations/list.txt SPECIES column (1 = cat, 2 = dog): "
                     "12 cat and 25 dog breeds; class names of vlmbench's oxford-pets plugin",
                     "Oxford-IIIT Pet annotations: CC BY-SA 4.0", (tree,))


def cifar100(root: Path) -> Hierarchy:
    """CIFAR-100's 20 coarse classes, read from the dataset's pickles under ``root``."""
    return Hierarchy("cifar100", ("cifar100",), CIFAR100_SOURCE,
                     "CIFAR-100 (Krizhevsky 2009); no licence is stated with the dataset",
                     (cifar100_coarse_from_pickle(root),))


BUILDERS: dict[str, Callable[[], Hierarchy]] = {"world": world, "world-forest": world_forest, "cifar10": cifar10,
                                                "oxford-pets": oxford_pets}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cifar100-root", type=Path, help="data root holding cifar-100-python/ (meta, test)")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files instead of writing")
    args = parser.parse_args(argv)
    builders = dict(BUILDERS)
    if args.cifar100_root is not None:
        builders["cifar100"] = lambda: cifar100(args.cifar100_root)
    stale = []
    for name, build in builders.items():
        path, text = HIERARCHIES_DIR / f"{name}.json", dumps(build())
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"differs from this script's output: {', '.join(stale)}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
