"""Evidence for the training-time defenses on the embedded world: clean and robust accuracy of the
world ViT undefended and after TeCoA, PMG-AFT, FARE, TGA-ZSR, naive HPT and HPT-GPD, under PGD-10 and
AutoAttack at ε = 1, 2, 4/255, averaged (unweighted) over the six world datasets' test splits.

Every row is a ``vlmbench run`` (through :func:`vlmbench.runner.plan` / ``execute``, the code path of the
command line): the defense trains with its ``world`` preset on first use and is reused from the
checkpoint cache afterwards. The equivalent command for one row::

    uv run vlmbench run --defense hpt_gpd --defense-param gpd=false --attack pgd-10 \
        --eps 1/255,2/255,4/255 --samples 50 --no-eps-sweep       # and --attack aa-20 --samples 20

Usage::

    uv run python benchmarks/aft_evidence.py [--samples 50] [--aa aa-20] [--aa-samples 20] [--threads 1]
        [--homogeneous] [--rows TeCoA,FARE] [--output results/aft-evidence]

PGD-10 runs on the first ``--samples`` test images of each world dataset, AutoAttack on the first
``--aa-samples`` (it costs far more per image). Results are ordinary ``vlmbench run`` folders, so a rerun
reuses every finished cell: several processes may run disjoint ``--rows`` and a final run without
``--rows`` prints the whole table. The per-cell ε sweep flag is off (the three ε are run anyway).
``--homogeneous`` adds HPT-GPD with a same-architecture proxy (world-vit retrained with seed 1, about
6 CPU-minutes once). Prints a markdown table, and the training time of each defense (from the
checkpoint's record, so a reused checkpoint shows the time of the run that trained it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from vlmbench import results
from vlmbench.runner import RunRequest, execute, plan

ROWS: list[tuple[str, str, tuple[str, ...]]] = [
    ("none", "none", ()),
    ("TeCoA", "tecoa", ()),
    ("PMG-AFT", "pmg_aft", ()),
    ("FARE", "fare", ()),
    ("TGA-ZSR", "tga_zsr", ()),
    ("HPT (no GPD)", "hpt_gpd", ("gpd=false",)),
    ("HPT-GPD", "hpt_gpd", ()),
]
HOMOGENEOUS = ("HPT-GPD (homogeneous proxy)", "hpt_gpd", ("proxy=homogeneous",))
EPS = ("1/255", "2/255", "4/255")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50, help="PGD-10 images per dataset")
    parser.add_argument("--aa", default="aa-20", help="AutoAttack spec (aa = standard with 100 iterations)")
    parser.add_argument("--aa-samples", type=int, default=20, help="AutoAttack images per dataset")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--homogeneous", action="store_true")
    parser.add_argument("--rows", default=None, help="comma-separated row labels to run (default: all)")
    parser.add_argument("--output", type=Path, default=Path("results/aft-evidence"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = ROWS + ([HOMOGENEOUS] if args.homogeneous else [])
    if args.rows:
        wanted = {r.strip() for r in args.rows.split(",")}
        rows = [r for r in rows if r[0] in wanted]
    attacks = (("pgd-10", args.samples), (args.aa, args.aa_samples))
    lines = [
        "| defense | clean | " + " | ".join(f"{a} {e}" for a, _ in attacks for e in EPS) + " | training |",
        "|---" * (3 + len(attacks) * len(EPS)) + "|",
    ]
    began = time.perf_counter()
    for label, name, params in rows:
        robust: dict[tuple[str, str], float] = {}
        clean = float("nan")
        trained = ""
        for attack, samples in attacks:
            request = RunRequest(defenses=(name,), defense_params=params, attacks=(attack,), eps=EPS,
                                 n_samples=samples, eps_sweep=False,
                                 output=args.output / label.replace(" ", "_").replace(",", "") / attack)
            the_plan = plan(request)
            outcomes = execute(the_plan)
            summary = results.summarize(pd.concat([o.rows for o in outcomes], ignore_index=True), with_worst_case=False)
            mean = summary[summary["dataset"] == "mean"]
            if attack == "pgd-10":
                clean = mean["clean_acc"].iloc[0]
            robust.update({(attack, r.eps_label): r.robust_acc for r in mean.itertuples()})
            folder = getattr(the_plan.defenses[0].parts[0], "checkpoint", None)
            if folder is not None:
                record = json.loads((folder / "train.json").read_text())
                trained = f"{record['steps']} steps, {record['wall_time_s_last_session']:.0f} s"
        cells = " | ".join(f"{robust[(a, e)]:.1f}" for a, _ in attacks for e in EPS)
        lines.append(f"| {label} | {clean:.1f} | {cells} | {trained} |")
        print(lines[-1], flush=True)
    print(f"\nworld-vit; means over the 6 world datasets; clean and pgd-10 on {args.samples} test images per dataset, "
          f"{args.aa} on the first {args.aa_samples}; {time.perf_counter() - began:.0f} s with {args.threads} thread(s)\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
