"""The README's main job, `vlmbench run --defense none --attack pgd-10` on the embedded world, timed for two
revisions of vlmbench side by side: a baseline revision and this one.

Each revision is exported with ``git archive`` into a temporary folder laid out as the installed
package (``vlmbench/`` with ``attacks/`` and ``defenses/`` inside it) and run in a fresh process with
that folder first on ``PYTHONPATH``; both share the Python environment and one warm cache (the class
text embeddings are computed by a warm-up run of each revision first).

Each revision runs in the bytecode state a fresh install of it gives on a machine that writes no
bytecode (``PYTHONDONTWRITEBYTECODE=1``, as on CI): when its ``pyproject.toml`` sets uv's
``compile-bytecode``, the installed packages are read from bytecode compiled once beforehand (a
``PYTHONPYCACHEPREFIX`` filled by ``compileall``), else every run compiles them from source (an empty
prefix of its own). The revision's own sources are compiled in every run either way, as an editable
install's are. Rounds are interleaved, so a
busy moment of the machine hits both alike; every round writes to a fresh output folder (nothing is
reused between runs). Prints the wall time of each run (process start to exit, imports included), the
best of each revision, and the ratio; and checks that both revisions' rows give the same robust
accuracy per dataset (they differ where the code changed the attack, which is then printed).

    uv run python benchmarks/default_run_speed.py --baseline 74d7af0 [--revision HEAD --revision BRANCH] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import sysconfig
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMAND = ["run", "--defense", "none", "--attack", "pgd-10"]


def export(revision: str, into: Path) -> Path:
    """``revision``'s vlmbench as an importable folder (``into/vlmbench`` with its plugins inside)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "vlmbench", "attacks", "defenses"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for plugins in ("attacks", "defenses"):
        (into / plugins).rename(into / "vlmbench" / plugins)
    return into


def installs_bytecode(revision: str) -> bool:
    """Whether ``revision``'s pyproject has uv compile the installed packages to bytecode."""
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:pyproject.toml"], check=True,
                          capture_output=True, text=True).stdout
    return bool(tomllib.loads(text).get("tool", {}).get("uv", {}).get("compile-bytecode", False))


def compiled_packages(prefix: Path) -> Path:
    """A ``PYTHONPYCACHEPREFIX`` holding the bytecode of the environment's installed packages, as uv's
    ``compile-bytecode`` leaves it."""
    env_vars = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    for folder in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        subprocess.run([sys.executable, "-c", f"import compileall; compileall.compile_dir({folder!r}, quiet=2, workers=0)"],
                       env=env_vars, check=True)
    return prefix


def run_once(tree: Path, output: Path, threads: int, cache: Path, pycache: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "VLMBENCH_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(pycache)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from vlmbench.cli import app; app()", *COMMAND, "--threads", str(threads),
                    "--output", str(output)], env=env, check=True, capture_output=True, cwd=tree)
    return time.perf_counter() - started


def robust_by_dataset(output: Path) -> dict[str, float]:
    import pandas as pd

    frames = [pd.read_parquet(path, columns=["dataset", "robust"]) for path in output.glob("*.parquet")]
    rows = pd.concat(frames)
    return {k: round(100 * v, 1) for k, v in rows.groupby("dataset")["robust"].mean().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--revision", action="append", help="git revisions measured (repeatable; default: HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    measured = args.revision or ["HEAD"]
    names = {"baseline": args.baseline, **{f"r{i}": rev for i, rev in enumerate(measured, 1)}}
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        trees = {}
        for name, revision in names.items():
            (scratch_path / name).mkdir()
            trees[name] = export(revision, scratch_path / name)
        cache = scratch_path / "cache"
        bytecode = {name: installs_bytecode(revision) for name, revision in names.items()}
        installed = compiled_packages(scratch_path / "pyc-installed") if any(bytecode.values()) else None

        def pycache(name: str, run: str) -> Path:  # installed bytecode, or an empty prefix: compile all
            return installed if bytecode[name] else scratch_path / f"pyc-{name}-{run}"

        for name, tree in trees.items():  # warm-up: text embeddings into the shared cache
            run_once(tree, scratch_path / f"warm-{name}", args.threads, cache, pycache(name, "warm"))
        times: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            for name, tree in trees.items():
                times[name].append(run_once(tree, scratch_path / f"{name}-{round_}", args.threads, cache,
                                            pycache(name, str(round_))))
        short = {name: subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True,
                                      text=True).stdout.strip() for name, rev in names.items()}
        accuracy = {name: robust_by_dataset(scratch_path / f"{name}-0") for name in trees}
        cells = len(list((scratch_path / "baseline-0").glob("*.parquet")))
        print(f"`vlmbench {' '.join(COMMAND)}` ({len(accuracy['baseline'])} world datasets in {cells} cells), "
              f"{args.threads} thread(s), "
              f"{args.rounds} interleaved round(s), warm cache; packages read from installed bytecode "
              f"('bytecode') or compiled from source in every run ('compiles')")
        for name in trees:
            ratio = "" if name == "baseline" else f"   {min(times['baseline']) / min(times[name]):.2f}x the baseline"
            state = "bytecode" if bytecode[name] else "compiles"
            print(f"  {names[name]:<12} {short[name]:<9} {state:<9}" + "  ".join(f"{t:6.1f} s" for t in times[name])
                  + f"   best {min(times[name]):6.1f} s{ratio}")
        print("  robust accuracy % per dataset: " + " | ".join(names[name] for name in trees))
        for dataset in sorted(accuracy["baseline"]):
            values = [accuracy[name].get(dataset, float("nan")) for name in trees]
            print(f"    {dataset:<14} " + "  ".join(f"{v:5.1f}" for v in values))


if __name__ == "__main__":
    main()
