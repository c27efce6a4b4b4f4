"""How the executors scale: per-cell overhead, Ray against the local executor, and a full protocol on a cluster.

Three measurements, each printed as a markdown table:

``overhead``
    Many tiny cells (world-vit, PGD-1 on 2 images, the six world datasets × ``--tiny-eps`` radii): the
    wall time per cell of the local executor and of Ray with ``--workers`` actors, against the time the
    cells' batches took (``wall_time_s`` in each file's run metadata). The difference is what the
    executor adds per cell: planning the cell, its protocol record and id, the per-cell sanity checks
    on the first batch, its lock, the atomic writes and, on Ray, the round trip to the actor.

``ray``
    One matrix (world-vit × ``--defenses`` × PGD-10 × the six world datasets × ``--samples`` images)
    run three times into fresh folders: the local executor with 1 torch thread, the local executor
    with ``--workers`` threads, and Ray with ``--workers`` actors of 1 thread each (the same cores).
    Ray's start-up (``ray.init``) is timed separately. Training-time defenses must already be in the
    checkpoint cache (run them once), or their training is timed too.

``cluster``
    A calculation, not a run: the ``all22`` protocol (the 22 real datasets, full test splits) × every
    built-in defense × PGD-10, CW-10 and AutoAttack at three ε (adaptive track for the test-time
    defenses) on 1, 8 and 64 GPUs. Each cell's cost is the planner's count of model calls
    (:meth:`vlmbench.plan.Plan.estimated_passes`, with AutoAttack's as described below) times the
    dataset's test-split size; the cells are scheduled longest-first (the Ray executor's order) on G
    identical GPUs, and the makespan is compared with the perfect split (total / G). The absolute
    times assume ``--call-ms`` milliseconds per image per model call; the speed-ups do not depend on
    it. Scaling stops where one cell, which runs on one GPU, is as long as the perfect split.

Usage::

    uv run python benchmarks/matrix_scaling.py [--parts overhead,ray,cluster] [--workers 2] [--samples 32]
        [--defenses none,tecoa,fare] [--tiny-eps 8] [--call-ms 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

# Standard test-split sizes (the split each loader reads by default; CLIP_benchmark's where it differs).
TEST_SPLIT_SIZES = {
    "imagenet": 50_000, "imagenet-v2": 10_000, "imagenet-r": 30_000, "imagenet-a": 7_500, "imagenet-sketch": 50_889,
    "tinyimagenet": 10_000, "cifar10": 10_000, "cifar100": 10_000, "stl10": 8_000, "caltech101": 6_085,
    "caltech256": 6_000, "oxford-pets": 3_669, "flowers102": 6_149, "fgvc-aircraft": 3_333, "stanford-cars": 8_041,
    "sun397": 19_850, "country211": 21_100, "food101": 25_250, "eurosat": 2_700, "dtd": 1_880, "pcam": 32_768,
    "ucf101": 3_783,
}
# Classes per dataset (AutoAttack's targeted sub-attacks use min(9, C - 1) targets).
CLASSES = {"cifar10": 10, "stl10": 10, "eurosat": 10, "pcam": 2, "oxford-pets": 37, "dtd": 47}


def run_cli(args: list[str]) -> float:
    """Wall seconds of one ``vlmbench run`` (in this process, through the CLI)."""
    from typer.testing import CliRunner

    from vlmbench.cli import app

    began = time.perf_counter()
    result = CliRunner().invoke(app, ["run", *args])
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return time.perf_counter() - began


def batch_seconds(output: Path) -> tuple[float, int]:
    """Σ wall_time_s of the cells in ``output`` (their batches) and the number of cells."""
    from vlmbench import results

    files = sorted(output.glob("*.parquet"))
    return sum(results.run_metadata_of(f)["wall_time_s"] for f in files), len(files)


def overhead(args: argparse.Namespace, scratch: Path) -> None:
    import ray

    eps = ",".join(f"{k}/255" for k in range(1, args.tiny_eps + 1))
    common = ["--model", "world-vit", "--attack", "pgd-1", "--eps", eps, "--samples", "2", "--batch-size", "2",
              "--threads", "1", "--no-eps-sweep"]
    rows = []
    local = run_cli([*common, "--output", str(scratch / "tiny-local")])
    inside, cells = batch_seconds(scratch / "tiny-local")
    rows.append(("local, 1 process", cells, local, inside))
    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - started
    try:
        on_ray = run_cli([*common, "--output", str(scratch / "tiny-ray"), "--executor", "ray"])
    finally:
        ray.shutdown()
    inside_ray, cells_ray = batch_seconds(scratch / "tiny-ray")
    rows.append((f"ray, {args.workers} workers", cells_ray, on_ray, inside_ray))
    print(f"\n### Per-cell overhead: {cells} tiny cells (world-vit, PGD-1, 2 images, 6 datasets × {args.tiny_eps} ε)\n")
    print("| executor | cells | wall s | s per cell | batches s per cell | overhead s per cell |")
    print("|---|---|---|---|---|---|")
    for name, n, wall, inner in rows:
        per_worker = wall if name.startswith("local") else wall * args.workers  # core-seconds for Ray
        print(f"| {name} | {n} | {wall:.1f} | {wall / n:.2f} | {inner / n:.2f} | {(per_worker - inner) / n:.2f} |")
    print(f"\nRay's start-up (`ray.init`, {args.workers} CPUs): {init:.1f} s, not included. On Ray the overhead "
          "column counts core-seconds (wall × workers), so it also holds a worker's wait while the other finishes.")


def ray_against_local(args: argparse.Namespace, scratch: Path) -> None:
    import ray

    common = ["--model", "world-vit", "--defense", args.defenses, "--attack", "pgd-10", "--eps", "1/255",
              "--samples", str(args.samples), "--selection", "balanced", "--no-eps-sweep"]
    rows = []
    rows.append(("local, 1 thread", run_cli([*common, "--threads", "1", "--output", str(scratch / "m-local1")])))
    rows.append((f"local, {args.workers} threads",
                 run_cli([*common, "--threads", str(args.workers), "--output", str(scratch / "m-local2")])))
    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - started
    from vlmbench.ray_executor import execute_on_ray

    import torch

    from vlmbench.plan import plan
    from vlmbench.request import RunRequest

    torch.set_num_threads(1)
    request = RunRequest(models=("world-vit",), defenses=tuple(args.defenses.split(",")), attacks=("pgd-10",),
                         datasets=("world-*",), eps=("1/255",), n_samples=args.samples, selection="balanced",
                         eps_sweep=False, output=scratch / "m-ray")
    finished: list[float] = []
    try:
        began = time.perf_counter()
        the_plan = plan(request)  # what `vlmbench run --executor ray` does, without the progress bar
        execute_on_ray([the_plan], [(0, job) for job in the_plan.jobs()], threads=1,
                       on_advance=lambda k: finished.append(time.perf_counter() - began))
        rows.append((f"ray, {args.workers} workers × 1 thread", time.perf_counter() - began))
    finally:
        ray.shutdown()
    warm = finished[args.workers - 1] if len(finished) >= args.workers else finished[-1]
    steady = (finished[-1] - warm) / max(len(finished) - args.workers, 1)
    from vlmbench import results

    same = results.load_results(scratch / "m-ray").sort_values(["cell_id", "sample_index"])["adv_pred"].tolist() == \
        results.load_results(scratch / "m-local1").sort_values(["cell_id", "sample_index"])["adv_pred"].tolist()
    n_cells = len(list((scratch / "m-local1").glob("*.parquet")))
    print(f"\n### Ray against the local executor: {n_cells} cells (world-vit × {args.defenses} × PGD-10 × 6 world "
          f"datasets × {args.samples} images)\n")
    print("| executor | wall s | speed-up vs local 1 thread |")
    print("|---|---|---|")
    for name, wall in rows:
        print(f"| {name} | {wall:.1f} | {rows[0][1] / wall:.2f}× |")
    local_per_cell = rows[0][1] / n_cells
    print(f"\nRay's start-up: {init:.1f} s, not included. Ray's rows equal the local executor's: {same}. Each Ray worker "
          f"first imports torch, plans the request and loads the model: the first {args.workers} results came after "
          f"{warm:.1f} s; after that one cell finished every {steady:.2f} s ({local_per_cell / steady:.2f}× the local "
          f"1-thread executor's {local_per_cell:.2f} s per cell).")


def cluster(args: argparse.Namespace) -> None:
    """The all22 protocol's cells and their costs, scheduled longest-first on G GPUs."""
    from vlmbench.presets import get_preset
    from vlmbench.registry import plugins

    registry = plugins()
    defenses = [name for name in registry.defenses.names()]
    test_time = {name for name in defenses if registry.defenses.get(name).is_test_time()}
    stochastic = {name for name in defenses if getattr(registry.defenses.get(name), "stochastic", False)}
    datasets = [entry.name for entry in get_preset("all22").datasets]
    radii = 3
    costs: list[tuple[float, str]] = []
    for dataset in datasets:
        n, classes = TEST_SPLIT_SIZES[dataset], CLASSES.get(dataset, 100)
        targets = min(9, classes - 1)
        for defense in defenses:
            tracks = ("oblivious", "adaptive") if defense in test_time else ("oblivious",)
            for track in tracks:
                eot = 10 if (track == "adaptive" and defense in stochastic) else 1
                steps = 40 if track == "adaptive" else 10  # the adaptive track's 40-step minimum
                start = steps if track == "adaptive" else 0  # the adaptive attack starts from the oblivious one
                for attack, calls in (("pgd-10", 2 * steps * eot + 2 * start),
                                      ("cw-10", 2 * steps * eot + 2 * start),
                                      # AutoAttack standard on the images that survive each sub-attack: APGD-CE 100
                                      # steps on all, APGD-T 100 × targets, FAB-T 100 × targets and Square 5000
                                      # forward queries on the survivors (--robust of them), forward + backward = 2 calls
                                      ("aa", 2 * 100 + args.robust * (2 * 100 * targets * 2 + 5000))):
                    calls += 2 * (10 if defense in stochastic else 1)  # clean and adversarial evaluation
                    for _ in range(radii):
                        costs.append((n * calls * args.call_ms / 1e3, f"{dataset}/{defense}/{track}/{attack}"))
    total = sum(c for c, _ in costs)
    largest = max(costs)
    print(f"\n### A full 22-dataset protocol on a cluster (a calculation; {len(costs):,} cells)\n")
    print(f"all22 × {len(defenses)} defenses × (PGD-10, CW-10, AutoAttack) × {radii} ε, adaptive track for the "
          f"{len(test_time)} test-time defenses, full test splits; {args.call_ms} ms per image per model call, "
          f"AutoAttack's later sub-attacks on {args.robust:.0%} of the images.\n")
    print("| GPUs | makespan h | perfect split h | efficiency | speed-up vs 1 GPU |")
    print("|---|---|---|---|---|")
    for gpus in (1, 8, 64, 256, 512):
        loads = [0.0] * gpus
        for cost, _ in sorted(costs, reverse=True):  # longest first, each to the least-loaded GPU
            k = loads.index(min(loads))
            loads[k] += cost
        makespan = max(loads)
        print(f"| {gpus} | {makespan / 3600:.1f} | {total / gpus / 3600:.1f} | {total / gpus / makespan:.0%} | "
              f"{total / makespan:.1f}× |")
    print(f"\nTotal {total / 3600:.0f} GPU-hours; the largest cell ({largest[1]}) takes {largest[0] / 3600:.1f} h, "
          f"so no number of GPUs finishes sooner: scaling stops near {total / largest[0]:.0f} GPUs "
          "(splitting a cell's images across workers would lift that bound; vlmbench does not do it yet).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="overhead,ray,cluster")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--defenses", default="none,tecoa,fare")
    parser.add_argument("--tiny-eps", type=int, default=8)
    parser.add_argument("--call-ms", type=float, default=0.5,
                        help="ms per image per model call on one GPU (default 0.5: ViT-B/32's 8.8 GFLOPs per image per "
                             "forward, an input-gradient backward about the same, at about 25%% of an H200's 66.9 "
                             "TFLOPS FP32 peak; not measured: this project has had no GPU)")
    parser.add_argument("--robust", type=float, default=0.4, help="share of images AutoAttack's first sub-attack leaves")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    scratch = Path(tempfile.mkdtemp(prefix="vlmbench-scaling-"))
    try:
        if "overhead" in parts:
            overhead(args, scratch)
        if "ray" in parts:
            ray_against_local(args, scratch)
        if "cluster" in parts:
            cluster(args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + json.dumps({"parts": parts, "workers": args.workers, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
