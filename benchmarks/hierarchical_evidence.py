"""Evidence for hierarchical robustness on the embedded world: leaf and superclass robust accuracy.

The world ViT undefended and after TeCoA, PMG-AFT, FARE and the hierarchical defense (Dong et al., CVPR
2026), on world-combo and its shipped hierarchy ``world`` (trees ``shape`` and ``colour``, levels 1 and 2).

For every defense and attack (PGD-10 and AutoAttack at ε = 1/255 ℓ∞ by default) it runs the attack in
each label space: the 36 leaf classes, and the superclasses of each ``world:TREE:LEVEL``
(``--superclasses world:shape:1`` ... on the command line; docs/hierarchies.md, vlmbench/targets.py).
From the rows of those cells it reports, in percent of the evaluated images:

* ``clean``: clean leaf accuracy;
* ``leaf``: leaf robust accuracy under the leaf attack (correct clean and attacked);
* per ``TREE:LEVEL``:
  - ``sup``: superclass robust accuracy under the attack crafted against that level's superclass
    classifier (superclass correct clean and attacked);
  - ``→leaf``: superclass→leaf transfer, the share of the images classified correctly at the leaf level
    on clean that the superclass-crafted attack makes wrong at the leaf level (the measurement of the
    paper's Fig. 1b; ``—`` when no image is clean-correct);
  - ``flat``: superclass robust accuracy at that level under the *leaf* attack (the leaf predictions
    mapped to that level's superclasses): what a flat attack does to the superclasses, to compare
    with ``sup``.

Every cell is a ``vlmbench run`` computed in-process through :func:`vlmbench.runner.plan` / ``execute``
(the code path of the command line), one request per defense, attack and label space, on ``--samples``
class-balanced test images of world-combo (``selection=balanced``, the same images in every cell), with
the per-cell ε sweep off. Results are ordinary ``vlmbench run`` folders under ``--output``, so a rerun
reuses every finished cell (and several processes may run disjoint ``--defenses`` into one folder). The
equivalent command for one superclass cell::

    uv run vlmbench run --dataset world-combo --defense hierarchical --attack pgd-10 --eps 1/255 \
        --samples 72 --selection balanced --superclasses world:shape:1 --no-eps-sweep

Training-time defenses (``tecoa``, ``pmg_aft``, ``fare``, ``hierarchical``) fine-tune world-vit with
their ``world`` preset on first use and are cached in the checkpoint cache (``~/.cache/vlmbench/defenses``,
or ``VLMBENCH_CACHE``); later runs load the weights. The first defense×attack block of a defense that is
not cached yet therefore includes its training time (minutes on CPU) in the printed wall time.
``--defense-param NAME.key=value`` (repeatable) passes a setting to one defense, e.g.
``hierarchical.trees=2`` for the forest of both trees (the default trains on the first tree, ``shape``).

AutoAttack (``aa``: APGD-CE, APGD-T, FAB-T, Square with 100 iterations) is far slower than PGD-10 on
CPU, and its cost grows with robustness: each sub-attack runs only on the images the earlier ones left
correct. Measured on world-vit undefended, 6 images, one thread (on a busy 2-core machine): an image
APGD-CE breaks costs about 0.5 s, one that survives the whole ensemble about 17 s on 6 superclasses and
9 s on 2 (where APGD-T is dropped: it needs more than 3 classes; the protocol record says so); the five
``aa`` cells took 216 s (the colour levels, which PGD cannot break even undefended, 160 s of it), the
five PGD-2 cells about 1 s each, mostly overhead. So ``--samples 72`` costs roughly 0.5 to 1.5
CPU-hours of ``aa`` per defense (more for the robust ones), several hours for the five defenses, against
minutes for PGD-10; run defenses in parallel processes (disjoint ``--defenses``, one ``--output``).

Usage::

    uv run python benchmarks/hierarchical_evidence.py [--samples 72] [--defenses none,tecoa,pmg_aft,fare,hierarchical]
        [--attacks pgd-10,aa] [--eps 1/255] [--superclasses world:shape:1,world:shape:2,world:colour:1,world:colour:2]
        [--defense-param hierarchical.trees=2] [--threads 1] [--output hierarchical-evidence]

Prints one markdown table per attack (after that attack has run for every defense) and the wall time
of each defense.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from vlmbench.hierarchy import hierarchies_for
from vlmbench.runner import RunRequest, execute, plan
from vlmbench.targets import SuperclassMap

DATASET = "world-combo"
MODEL = "world-vit"
HIERARCHY = "world"


def default_levels() -> str:
    """Every level ≥ 1 of every tree of the shipped ``world`` hierarchy, as ``world:TREE:LEVEL`` specs."""
    hierarchy = next(h for h in hierarchies_for(DATASET) if h.name == HIERARCHY)
    return ",".join(f"{HIERARCHY}:{tree.name}:{level}" for tree in hierarchy.trees for level in range(1, tree.depth + 1))


def pct(values: pd.Series) -> str:
    return "—" if len(values) == 0 else f"{100 * values.mean():.1f}"


def run_cells(args: argparse.Namespace, defense: str, attack: str, superclasses: str | None
              ) -> tuple[pd.DataFrame, SuperclassMap | None]:
    """The rows of one (defense, attack, label space) cell, and the superclass map of the label space."""
    params = tuple(p for p in args.defense_param if p.partition(".")[0] == defense)
    request = RunRequest(models=(MODEL,), defenses=(defense,), defense_params=params, attacks=(attack,),
                         datasets=(DATASET,), eps=(args.eps,), n_samples=args.samples, selection="balanced",
                         seed=args.seed, superclasses=superclasses, eps_sweep=False, output=args.output)
    the_plan = plan(request)
    rows = pd.concat([o.rows for o in execute(the_plan)], ignore_index=True)
    return rows, the_plan.label_spaces[DATASET][1]


def measures(leaf: pd.DataFrame, by_level: dict[str, tuple[pd.DataFrame, SuperclassMap]]) -> list[tuple[str, pd.Series]]:
    """Per image, the booleans behind the table cells of one defense × attack: ``("clean", …)``, then
    ``("robust", …)`` (leaf; per level sup and flat) and ``("broken", …)`` (per level →leaf, over the
    clean-correct leaves)."""
    out = [("clean", leaf["clean_correct"]), ("robust", leaf["robust"])]
    leaf = leaf.set_index("sample_index")
    for rows, mapping in by_level.values():
        rows = rows.set_index("sample_index")
        if not rows.index.equals(leaf.index):
            raise SystemExit("the leaf and superclass cells evaluated different images")
        sup = (rows["clean_superclass_pred"] == rows["superclass_label"]) & (rows["adv_superclass_pred"] == rows["superclass_label"])
        transfer = ~rows["adv_correct"][rows["clean_correct"]]  # clean-correct leaves the superclass attack breaks
        label, clean, adv = (mapping.of(torch.tensor(leaf[c].to_numpy())).numpy()
                             for c in ("label", "clean_pred", "adv_pred"))
        flat = pd.Series((clean == label) & (adv == label), index=leaf.index)
        out += [("robust", sup), ("broken", transfer), ("robust", flat)]
    return out


def worst_case(per_attack: list[list[tuple[str, pd.Series]]]) -> list[tuple[str, pd.Series]]:
    """The measures of the per-image worst case over several attacks: an image is robust only if it
    survives every attack, and a leaf is broken if any attack's superclass example breaks it."""
    combined = []
    for column in zip(*per_attack):
        kind = column[0][0]
        values = [series.reset_index(drop=True) for _, series in column]
        if kind == "clean":
            combined.append((kind, values[0]))
        elif kind == "robust":
            combined.append((kind, pd.concat(values, axis=1).all(axis=1)))
        else:
            combined.append((kind, pd.concat(values, axis=1).any(axis=1)))
    return combined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--defenses", default="none,tecoa,pmg_aft,fare,hierarchical")
    parser.add_argument("--attacks", default="pgd-10,aa")
    parser.add_argument("--eps", default="1/255", help="one ℓ∞ budget")
    parser.add_argument("--superclasses", default=None,
                        help="comma-separated HIERARCHY:TREE:LEVEL specs (default: every level of world's trees)")
    parser.add_argument("--samples", type=int, default=72, help="class-balanced world-combo test images (36 classes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--defense-param", action="append", default=[],
                        help="NAME.key=value for one defense (repeatable), e.g. hierarchical.trees=2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("hierarchical-evidence"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    levels = [s.strip() for s in (args.superclasses or default_levels()).split(",") if s.strip()]
    for p in args.defense_param:
        if p.partition(".")[0] not in defenses or "=" not in p:
            parser.error(f"--defense-param {p!r}: write NAME.key=value with NAME one of --defenses")

    short = [s.removeprefix(f"{HIERARCHY}:") for s in levels]
    header = ["defense", "clean", "leaf"] + [f"{s} {k}" for s in short for k in ("sup", "→leaf", "flat")] + ["wall s"]
    walls: dict[str, dict[str, float]] = {d: {} for d in defenses}
    began = time.perf_counter()
    measured: dict[str, list[list[tuple[str, pd.Series]]]] = {d: [] for d in defenses}
    n = 0
    for attack in attacks:
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for defense in defenses:
            start = time.perf_counter()
            leaf, _ = run_cells(args, defense, attack, None)
            by_level = {}
            for spec in levels:
                rows, mapping = run_cells(args, defense, attack, spec)
                assert mapping is not None
                by_level[spec] = (rows, mapping)
            walls[defense][attack] = time.perf_counter() - start
            measured[defense].append(measures(leaf, by_level))
            cells = [pct(series) for _, series in measured[defense][-1]]
            lines.append("| " + " | ".join([defense, *cells, f"{walls[defense][attack]:.0f}"]) + " |")
            print(f"[{attack}] {defense}: {walls[defense][attack]:.0f} s", flush=True)
        n = len(leaf)
        print(f"\n### {attack}, {MODEL} on {DATASET}, ε = {args.eps} ℓ∞, {n} class-balanced images (seed {args.seed})\n")
        print("\n".join(lines) + "\n", flush=True)
    if len(attacks) > 1:  # AutoAttack's own rule: robust only against every attack run
        lines = ["| " + " | ".join(header[:-1]) + " |", "|---" * (len(header) - 1) + "|"]
        for defense in defenses:
            lines.append("| " + " | ".join([defense, *(pct(s) for _, s in worst_case(measured[defense]))]) + " |")
        print(f"\n### worst case over {', '.join(attacks)} per image, {n} images\n")
        print("\n".join(lines) + "\n", flush=True)
    print("Columns (percent of the images): clean = clean leaf accuracy; leaf = leaf robust accuracy under the leaf "
          "attack; TREE:LEVEL sup = superclass robust accuracy under the attack crafted at that level; →leaf = share "
          "of the clean-correct leaves that attack makes wrong (superclass→leaf transfer); flat = superclass robust "
          "accuracy at that level under the leaf attack. wall s includes any first-use training and reused cells.\n")
    print("| defense | " + " | ".join(f"{a} s" for a in attacks) + " | total s |")
    print("|---" * (len(attacks) + 2) + "|")
    for defense in defenses:
        print(f"| {defense} | " + " | ".join(f"{walls[defense][a]:.0f}" for a in attacks)
              + f" | {sum(walls[defense].values()):.0f} |")
    print(f"\n{time.perf_counter() - began:.0f} s in all with {args.threads} thread(s)")


if __name__ == "__main__":
    main()
