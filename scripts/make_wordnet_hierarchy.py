"""Write vlmbench/hierarchies/wordnet.json: WordNet 3.0 hypernym trees over ImageNet's classes.

Usage (WordNet 3.0 from Debian: ``apt-get install wordnet-base``)::

    python scripts/make_wordnet_hierarchy.py [--wordnet /usr/share/wordnet/data.noun]
                                             [--copyright /usr/share/doc/wordnet-base/copyright] [--check]

What it writes (docs/hierarchies.md explains the choices):

* leaves: the 1000 ImageNet-1k synsets under the class names vlmbench gives them (CLIP's names,
  ``vlmbench/datasets/data/imagenet.json``; ImageNet-V2/-Sketch use all, ImageNet-R/-A subsets) and the
  200 TinyImageNet synsets under TinyImageNet's own names (the first word of ``words.txt``, which is the
  synset's first WordNet lemma). A name given to two synsets (CLIP's ``missile``, ``sunglasses``) gets
  the ancestry of the synset whose first lemma it is.
* levels: ``L = 5``; in a tree of stride ``s`` the ancestor at level ``l`` is the ``(s·l)``-th hypernym
  above the class (``@`` and ``@i`` pointers of ``data.noun``; a wnid's digits are its synset offset). A
  path that reaches the root ``entity`` in fewer steps stays at ``entity`` above it.
* trees (:data:`TREES`): ``first`` (stride 1) follows every synset's first hypernym; ``second`` (stride 1)
  follows the second hypernym wherever a synset has more than one (at the class or any ancestor), else
  the first. Three more make a five-tree forest for the hierarchical defense's ``trees=5``, vlmbench's
  construction (the paper does not publish its own): ``first-stride-2`` and ``second-stride-2`` (levels
  at hypernyms 2, 4, 6, 8, 10 of those paths) and ``first-stride-3`` (3, 6, 9, 12, 15 of ``first``'s).
  ``second-stride-3`` is not used: its level 5 is a single node over ImageNet-A's classes.
* labels: a synset's first lemma (``_`` -> space); lemmas that name several synsets in the file get
  their first hypernym in brackets (``plant (organism)``), and the synset's wnid if that still collides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from vlmbench.hierarchy import HIERARCHIES_DIR, Hierarchy, Tree, dumps

DEPTH = 5  # the paper's "WordNet hypernym path, depth 5"
DATASETS = ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a", "tinyimagenet")
# (name, follow the second hypernym, stride): the ancestor at level l is the (stride·l)-th hypernym.
TREES = (("first", False, 1), ("second", True, 1), ("first-stride-2", False, 2), ("second-stride-2", True, 2),
         ("first-stride-3", False, 3))

# TinyImageNet's 200 synsets: tiny-imagenet-200/wnids.txt of http://cs231n.stanford.edu/tiny-imagenet-200.zip,
# sorted (the order vlmbench's tinyimagenet loader labels them in). All are ImageNet-1k synsets.
TINYIMAGENET_WNIDS = tuple(sorted("""
n02124075 n04067472 n04540053 n04099969 n07749582 n01641577 n02802426 n09246464 n07920052 n03970156
n03891332 n02106662 n03201208 n02279972 n02132136 n04146614 n07873807 n02364673 n04507155 n03854065
n03838899 n03733131 n01443537 n07875152 n03544143 n09428293 n03085013 n02437312 n07614500 n03804744
n04265275 n02963159 n02486410 n01944390 n09256479 n02058221 n04275548 n02321529 n02769748 n02099712
n07695742 n02056570 n02281406 n01774750 n02509815 n03983396 n07753592 n04254777 n02233338 n04008634
n02823428 n02236044 n03393912 n07583066 n04074963 n01629819 n09332890 n02481823 n03902125 n03404251
n09193705 n03637318 n04456115 n02666196 n03796401 n02795169 n02123045 n01855672 n01882714 n02917067
n02988304 n04398044 n02843684 n02423022 n02669723 n04465501 n02165456 n03770439 n02099601 n04486054
n02950826 n03814639 n04259630 n03424325 n02948072 n03179701 n03400231 n02206856 n03160309 n01984695
n03977966 n03584254 n04023962 n02814860 n01910747 n04596742 n03992509 n04133789 n03937543 n02927161
n01945685 n02395406 n02125311 n03126707 n04532106 n02268443 n02977058 n07734744 n03599486 n04562935
n03014705 n04251144 n04356056 n02190166 n03670208 n02002724 n02074367 n04285008 n04560804 n04366367
n02403003 n07615774 n04501370 n03026506 n02906734 n01770393 n04597913 n03930313 n04118538 n04179913
n04311004 n02123394 n04070727 n02793495 n02730930 n02094433 n04371430 n04328186 n03649909 n04417672
n03388043 n01774384 n02837789 n07579787 n04399382 n02791270 n03089624 n02814533 n04149813 n07747607
n03355925 n01983481 n04487081 n03250847 n03255030 n02892201 n02883205 n03100240 n02415577 n02480495
n01698640 n01784675 n04376876 n03444034 n01917289 n01950731 n03042490 n07711569 n04532670 n03763968
n07768694 n02999410 n03617480 n06596364 n01768244 n02410509 n03976657 n01742172 n03980874 n02808440
n02226429 n02231487 n02085620 n01644900 n02129165 n02699494 n03837869 n02815834 n07720875 n02788148
n02909870 n03706229 n07871810 n03447447 n02113799 n12267677 n03662601 n02841315 n07715103 n02504458
""".split()))


@dataclass(frozen=True)
class Synset:
    lemmas: tuple[str, ...]  # as in data.noun: "_" for spaces
    hypernyms: tuple[str, ...]  # offsets of the @ and @i pointers, in file order

    @property
    def name(self) -> str:
        return self.lemmas[0].replace("_", " ")


def read_wordnet(path: Path) -> dict[str, Synset]:
    """Noun synsets of a WordNet ``data.noun`` by 8-digit offset (format: WordNet's wndb(5WN))."""
    synsets = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(" "):  # the licence header
            continue
        fields = line.split(" | ", 1)[0].split()
        count = int(fields[3], 16)
        lemmas = tuple(fields[4 + 2 * k] for k in range(count))
        at = 4 + 2 * count
        pointers = [fields[at + 1 + 4 * k: at + 5 + 4 * k] for k in range(int(fields[at]))]
        synsets[fields[0]] = Synset(lemmas, tuple(p[1] for p in pointers if p[0] in ("@", "@i") and p[2] == "n"))
    return synsets


def read_licence(copyright_file: Path) -> str:
    """The WordNet 3.0 licence paragraph of Debian's ``copyright`` file (DEP-5) as plain text: its
    paragraphs separated by blank lines, each on one line."""
    lines = copyright_file.read_text(encoding="utf-8").splitlines()
    paragraphs: list[str] = [""]
    for line in lines[lines.index("License: WordNet3.0") + 1:]:
        if not line.startswith(" "):
            break
        text = line.strip()
        if text == ".":
            paragraphs.append("")
        else:  # a word broken over two lines ("MERCHANT-" / "ABILITY") is joined again
            last = paragraphs[-1]
            paragraphs[-1] = last + text if last.endswith("-") or not last else f"{last} {text}"
    return "\n\n".join(paragraphs)


def hypernym_path(synsets: dict[str, Synset], offset: str, second: bool) -> list[str]:
    """Offsets of the hypernyms above ``offset`` up to the root, nearest first (the first hypernym at each
    step, or the second where ``second`` and there is one)."""
    path = []
    while synsets[offset].hypernyms:
        up = synsets[offset].hypernyms
        offset = up[1] if second and len(up) > 1 else up[0]
        path.append(offset)
    return path


def levels_of(path: list[str], stride: int = 1) -> tuple[str, ...]:
    """Hypernyms ``stride``, ``2·stride`` .. ``DEPTH·stride`` of ``path`` (1-based, nearest first), the root
    (the path's last) where the path is shorter; stride 1: the first :data:`DEPTH` hypernyms."""
    return tuple(path[min(stride * level, len(path)) - 1] for level in range(1, DEPTH + 1))


def tree_paths(synsets: dict[str, Synset], offsets: set[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Tree name -> class synset offset -> its level-1..DEPTH ancestors (offsets), for every tree of :data:`TREES`."""
    paths = {second: {o: hypernym_path(synsets, o, second) for o in offsets} for second in (False, True)}
    return {name: {o: levels_of(paths[second][o], stride) for o in offsets} for name, second, stride in TREES}


def node_labels(synsets: dict[str, Synset], used: set[str]) -> dict[str, str]:
    """A distinct readable label for every synset in ``used``: its first lemma; where that repeats, the
    lemma with its first hypernym in brackets; where that still repeats, with the wnid too."""
    def qualified(offset: str, *extra: str) -> str:
        up = synsets[offset].hypernyms
        inside = ([synsets[up[0]].name] if up else []) + list(extra)
        return f"{synsets[offset].name} ({', '.join(inside)})"

    rules = (lambda o: qualified(o), lambda o: qualified(o, f"n{o}"))
    labels = {o: synsets[o].name for o in used}
    for rule in rules:
        counts = Counter(labels.values())
        labels = {o: rule(o) if counts[label] > 1 else label for o, label in labels.items()}
    if len(set(labels.values())) != len(labels):
        raise SystemExit("node labels still collide")
    return labels


def leaf_synsets(synsets: dict[str, Synset]) -> dict[str, str]:
    """Class name -> offset of the synset whose ancestry it gets (see the module docstring)."""
    imagenet = json.loads(files("vlmbench.datasets").joinpath("data", "imagenet.json").read_text(encoding="utf-8"))
    named = [(name, wnid[1:]) for wnid, name in zip(imagenet["wnids"], imagenet["classnames"])]
    missing = sorted(set(TINYIMAGENET_WNIDS) - set(imagenet["wnids"]))
    if missing:
        raise SystemExit(f"TinyImageNet synsets outside ImageNet-1k: {missing}")
    named += [(synsets[wnid[1:]].name, wnid[1:]) for wnid in TINYIMAGENET_WNIDS]
    candidates: dict[str, list[str]] = defaultdict(list)
    for name, offset in named:
        if offset not in candidates[name]:
            candidates[name].append(offset)
    chosen = {}
    for name, offsets in candidates.items():
        own = [o for o in offsets if synsets[o].name == name]
        chosen[name] = own[0] if len(own) == 1 else offsets[0]
        if len(offsets) > 1:
            print(f"{name!r} names {['n' + o for o in offsets]}: ancestry of n{chosen[name]}", file=sys.stderr)
    return chosen


def build(wordnet: Path, copyright_file: Path) -> Hierarchy:
    synsets = read_wordnet(wordnet)
    leaves = leaf_synsets(synsets)
    paths = tree_paths(synsets, set(leaves.values()))
    labels = node_labels(synsets, {a for tree in paths.values() for path in tree.values() for a in path})
    trees = tuple(Tree(name, ("class", *(f"hypernym {stride * l}" for l in range(1, DEPTH + 1))),
                       {c: tuple(labels[a] for a in paths[name][o]) for c, o in leaves.items()})
                  for name, _, stride in TREES)
    source = ("WordNet 3.0 (Princeton University; Debian's wordnet-base, data.noun) hypernym paths of the ImageNet-1k "
              "synsets under vlmbench's class names (CLIP's, vlmbench/datasets/data/imagenet.json) and of TinyImageNet's "
              f"200 synsets under their first lemma (TinyImageNet's own names); L = {DEPTH}, the root 'entity' repeated "
              "above shorter paths; tree 'first' follows first hypernyms, tree 'second' the second hypernym wherever a "
              "synset has several, level l = the l-th hypernym (@, @i) above the class; trees 'first-stride-2' and "
              "'second-stride-2' (level l = hypernym 2l of those paths) and 'first-stride-3' (hypernym 3l of 'first') "
              "complete a five-tree forest, vlmbench's construction (the paper does not publish its own); written by "
              "scripts/make_wordnet_hierarchy.py")
    licence = "WordNet 3.0 licence (a notice that must accompany all copies):\n\n" + read_licence(copyright_file)
    return Hierarchy("wordnet", DATASETS, source, licence, trees)


def report(wordnet: Path, hierarchy: Hierarchy) -> None:
    """Print the statistics docs/hierarchies.md quotes: over the 1000 ImageNet-1k synsets, and the nodes per
    level of every tree over all the file's classes."""
    synsets = read_wordnet(wordnet)
    imagenet = json.loads(files("vlmbench.datasets").joinpath("data", "imagenet.json").read_text(encoding="utf-8"))
    offsets = [w[1:] for w in imagenet["wnids"]]
    resolved = [o for o in offsets if o in synsets]
    depths = [len(hypernym_path(synsets, o, False)) for o in resolved]
    several = Counter(len(synsets[o].hypernyms) for o in resolved)
    paths = tree_paths(synsets, set(resolved))
    print(f"ImageNet synsets resolved: {len(resolved)} of {len(offsets)}; first-hypernym path length "
          f"min {min(depths)} / median {statistics.median(depths)} / max {max(depths)}; direct hypernyms per class "
          f"{dict(sorted(several.items()))}")
    for name, _, _ in TREES:
        tree = hierarchy.tree(name)
        nodes = [len(tree.nodes(l, list(tree.ancestors))[0]) for l in range(1, tree.depth + 1)]
        print(f"tree {name!r}: nodes per level 1..{DEPTH} over the file's {len(tree.ancestors)} classes: {nodes}")
    names = [name for name, _, _ in TREES]
    print("ImageNet classes whose ancestors differ between two trees (any level):")
    for a, name in enumerate(names):
        counts = [sum(paths[name][o] != paths[other][o] for o in resolved) for other in names[:a]]
        print(f"  {name}: " + ", ".join(f"{n} vs {other}" for n, other in zip(counts, names)) if counts else f"  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet/data.noun"))
    parser.add_argument("--copyright", type=Path, default=Path("/usr/share/doc/wordnet-base/copyright"))
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing")
    args = parser.parse_args(argv)
    for path in (args.wordnet, args.copyright):
        if not path.is_file():
            raise SystemExit(f"{path} not found: apt-get install wordnet-base (WordNet 3.0)")
    hierarchy = build(args.wordnet, args.copyright)
    text, out = dumps(hierarchy), HIERARCHIES_DIR / "wordnet.json"
    report(args.wordnet, hierarchy)
    if args.check:
        same = out.is_file() and out.read_text(encoding="utf-8") == text
        print("wordnet.json is up to date" if same else "wordnet.json differs from this script's output", file=sys.stderr)
        return 0 if same else 1
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
