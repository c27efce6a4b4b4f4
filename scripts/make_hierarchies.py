"""Write the shipped class hierarchies that vlmbench's own data determines: ``world``, ``cifar10``,
``oxford-pets`` (and ``cifar100`` from the dataset's pickles when given a data root).

Usage::

    python scripts/make_hierarchies.py                          # rewrite world, cifar10, oxford-pets
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


def either(words: Sequence[str]) -> str:
    """``"a"``, ``"a or b"``, ``"a, b or c"``: a label the world's tokenizer reads word by word."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def world() -> Hierarchy:
    """``world-combo``'s 36 classes by shape (-> round or angular) and by colour (-> warm or cool).

    Labels use only the world's vocabulary (its tokenizer maps other words, such as "round", to one
    unknown token, so "round" and "angular" would be the same prompt): a group is named by its members.
    """
    from vlmbench.world.datasets import WORLD_COMBO
    from vlmbench.world.render import COLOUR_NAMES, SHAPES

    unknown = set(ROUND_SHAPES) - set(SHAPES) | set(WARM_COLOURS) - set(COLOUR_NAMES)
    if unknown:
        raise SystemExit(f"the world has no {sorted(unknown)}: update ROUND_SHAPES / WARM_COLOURS")
    outline = {s: either(ROUND_SHAPES) if s in ROUND_SHAPES else either([x for x in SHAPES if x not in ROUND_SHAPES])
               for s in SHAPES}
    cool = [c for c in COLOUR_NAMES if c not in WARM_COLOURS]
    warmth = {c: f"{either(WARM_COLOURS if c in WARM_COLOURS else cool)} shape" for c in COLOUR_NAMES}
    classes = list(zip(WORLD_COMBO.classnames, WORLD_COMBO.class_attributes))
    shape = Tree("shape", ("class", "shape", "outline"),
                 {name: (a["shape"], outline[a["shape"]]) for name, a in classes})
    colour = Tree("colour", ("class", "colour", "warmth"),
                  {name: (f"{a['colour']} shape", warmth[a["colour"]]) for name, a in classes})
    return Hierarchy("world", (WORLD_COMBO.name,),
                     f"vlmbench's world (vlmbench/world/render.py SHAPES, COLOUR_NAMES); round shapes: {', '.join(ROUND_SHAPES)}; "
                     f"warm colours: {', '.join(WARM_COLOURS)}; written by scripts/make_hierarchies.py",
                     MIT, (shape, colour))


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


BUILDERS: dict[str, Callable[[], Hierarchy]] = {"world": world, "cifar10": cifar10, "oxford-pets": oxford_pets}


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
