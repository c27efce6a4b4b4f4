"""`vlmbench check` on every built-in defense (and the white-box attacks), at the check's full default
scale: world-vit, 16 class-balanced world-shape images, ε = 1/255, PGD-10, EOT 5, Square-10, 8 binarization
images. Prints one Markdown table (the README's) and the time each check took; writes each JSON report.

Training-time defenses are checked with their default ``Config()`` (the world preset), as the
leaderboard evaluates them: their checkpoints are trained on the first run (minutes each on a CPU) and
cached in ``$VLMBENCH_CACHE`` like any run's.

    uv run python benchmarks/conformance.py --threads 1 --out conformance/
    uv run python benchmarks/conformance.py --defenses ttc,scc --attacks none
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MARK = {"pass": "✓", "warn": "⚠", "fail": "✗", "skip": "–"}


def main() -> None:
    import torch

    from vlmbench.check import ATTACK_CHECKS, DEFENSE_CHECKS, CheckSettings, check_attack, check_defense, write_report
    from vlmbench.registry import plugins

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defenses", default=",".join(plugins().defenses.names()))
    parser.add_argument("--attacks", default="pgd,cw", help="attacks to check ('none': no attack check)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("conformance"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = CheckSettings()
    tables = []
    for kind, names, checks, run in (("defense", args.defenses, DEFENSE_CHECKS, check_defense),
                                     ("attack", args.attacks, ATTACK_CHECKS, check_attack)):
        names = [n for n in names.split(",") if n and not (kind == "attack" and n == "none")]
        if not names:
            continue
        rows = []
        for name in names:
            started = time.perf_counter()
            report = run(name, settings, progress=lambda step, name=name: print(f"[{name}] {step}", flush=True))
            write_report(report, args.out / f"{kind}-{name}.json")
            status = {f.id: f.status for f in report.findings}
            rows.append(f"| {name} | {report.status.upper()} | " + " | ".join(MARK[status[c]] for c in checks)
                        + f" | {time.perf_counter() - started:.0f} |")
            problems = [f"{f.id}: {f.summary}" for f in report.findings if f.status in ("warn", "fail")]
            print(f"[{name}] {report.status}: " + ("; ".join(problems) or "all pass"), flush=True)
        header = f"| {kind} | status | " + " | ".join(f"`{c}`" for c in checks) + " | s |"
        tables.append("\n".join([header, "|" + "---|" * (len(checks) + 3), *rows]))
    print("\n" + "\n\n".join(tables))
    print(f"\n{MARK['pass']} pass, {MARK['warn']} warn, {MARK['fail']} fail, {MARK['skip']} does not apply; "
          f"settings: {json.dumps(settings.__dict__)}")


if __name__ == "__main__":
    main()
