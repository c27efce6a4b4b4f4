"""Test-time defenses on the embedded world: clean, oblivious-robust and adaptive-robust accuracy.

Runs ``vlmbench run``'s runner for the undefended model, TTC, SCC, CLIPure-Cos and one composition of a
training-time with a test-time defense, at ε = 1/255 and 4/255 (PGD-10, both tracks, EOT 10 for the
random defenses), and prints a markdown table: accuracies (unweighted mean over the datasets), the
inference cost relative to the undefended model, and the sanity flags raised. Results are kept in
``--output`` (a rerun reuses finished cells).

    uv run python benchmarks/test_time_evidence.py --model world-rn --samples 40 --threads 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from vlmbench import results
from vlmbench.flags import result_flags
from vlmbench.runner import RunRequest, execute, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="world-rn")
    parser.add_argument("--defenses", default="none,ttc,scc,clipure_cos,tecoa+ttc")
    parser.add_argument("--datasets", default="world-shape,world-colour")
    parser.add_argument("--attack", default="pgd-10")
    parser.add_argument("--eps", default="1/255,4/255")
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--eot", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("results/test-time-evidence"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    request = RunRequest(
        models=(args.model,), defenses=tuple(args.defenses.split(",")), attacks=(args.attack,),
        datasets=tuple(args.datasets.split(",")), eps=tuple(args.eps.split(",")), n_samples=args.samples,
        seed=args.seed, eot_draws=args.eot, output=args.output,
        eps_sweep=False,  # both ε are run anyway: eps-not-monotone is derived across the cells
    )
    rows = pd.concat([outcome.rows for outcome in execute(plan(request))], ignore_index=True)
    print(table(rows, list(request.defenses), list(request.eps)))


def table(rows: pd.DataFrame, defenses: list[str], eps_labels: list[str]) -> str:
    """One markdown row per (defense, ε): mean accuracies over datasets, cost ratios, flags."""
    summary = results.summarize(rows, with_worst_case=False)
    per_dataset = summary[summary["dataset"] != "mean"]
    flags = result_flags(rows)
    lines = ["| defense | ε | clean % | oblivious robust % | adaptive robust % | time × | fwd / bwd passes | flags |",
             "|---|---|---|---|---|---|---|---|"]
    for defense in defenses:
        for eps in eps_labels:
            cells = per_dataset[(per_dataset["defense"] == defense) & (per_dataset["eps_label"] == eps)]
            tracks = {track: part for track, part in cells.groupby("track")}
            oblivious = tracks["oblivious"]
            adaptive = tracks.get("adaptive")
            raised = flags[(flags["defense"] == defense) & flags["eps_label"].isin([eps, "*"])]
            adaptive_acc = "—" if adaptive is None else f"{adaptive['robust_acc'].mean():.1f}"
            names = ", ".join(f"{flag} ({track})" for flag, track in dict.fromkeys(zip(raised["flag"], raised["track"])))
            lines.append(
                f"| {defense} | {eps} | {oblivious['clean_acc'].mean():.1f} | {oblivious['robust_acc'].mean():.1f} | "
                f"{adaptive_acc} | "
                f"{oblivious['cost_time_ratio'].mean():.1f} | "
                f"{oblivious['cost_forward'].mean():.0f} / {oblivious['cost_backward'].mean():.0f} | {names or '—'} |"
            )
    datasets = ", ".join(dict.fromkeys(per_dataset["dataset"]))
    n = int(per_dataset["n"].iloc[0])
    lines.append("")
    adaptive_rows = rows[rows["track"] == "adaptive"]
    budget = ""
    if len(adaptive_rows):
        budget = (f"; the adaptive track ran {', '.join(map(str, sorted(set(adaptive_rows['steps']))))} steps with "
                  f"EOT {', '.join(map(str, sorted(set(adaptive_rows['eot_draws']))))} from the oblivious result")
    draws = sorted(set(rows["eval_draws"]))
    clean = rows.groupby(["defense", "eps_label", "dataset", "sample_index"])["clean_pred"].nunique()
    same_clean = "identical on both tracks" if (clean == 1).all() else "NOT identical on both tracks"
    lines.append(f"Model {rows['model'].iloc[0]}, {n} images per dataset ({datasets}); accuracies are unweighted means "
                 f"over the datasets; clean % from the oblivious cells ({same_clean}); random defenses scored over "
                 f"{', '.join(map(str, draws))} draws (expected accuracy of one draw){budget}; time × and passes: one clean "
                 "prediction of the defended model per image relative to the undefended classifier (1 forward / 0 backward).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
