"""``torch.compile`` of the zero-shot classifier for attacks: compile time, PGD-10 speed against eager,
and whether it is the same measurement (clean logits, adversarial images, predictions on them), on the
world models (128 world-shape images, ε = 4/255; best of 2 interleaved rounds after a warm-up).

    uv run python benchmarks/compile_check.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from vlmbench.classifier import ZeroShotClassifier
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = plugins().datasets.get("world-shape").load(None, "test")
    x = torch.stack([data[i][0] for i in range(args.images)])
    y = torch.tensor([data[i][1] for i in range(args.images)])
    pgd = plugins().attacks.get("pgd")(ThreatModel.build("linf", 4 / 255, 10))
    print(f"torch {torch.__version__}, {args.threads} thread(s), PGD-10 at 4/255 on {args.images} world-shape images")
    for name in ("world-vit", "world-rn"):
        model = plugins().models.get(name).load()
        eager = ZeroShotClassifier.build(model, data.classnames, data.templates)
        started = time.perf_counter()
        compiled = torch.compile(eager)
        pgd.perturb(compiled, x, y, torch.Generator().manual_seed(0))  # compiles forward and backward
        compile_s = time.perf_counter() - started
        best, adversarial = {"eager": float("inf"), "compiled": float("inf")}, {}
        for _ in range(2):
            for key, forward in (("eager", eager), ("compiled", compiled)):
                started = time.perf_counter()
                adversarial[key] = pgd.perturb(forward, x, y, torch.Generator().manual_seed(0))
                best[key] = min(best[key], time.perf_counter() - started)
        with torch.no_grad():
            clean = float((eager(x) - compiled(x)).abs().max())
            predicted = {key: eager(images).argmax(1) for key, images in adversarial.items()}
        apart = float((adversarial["eager"] - adversarial["compiled"]).abs().max()) * 255
        print(f"{name}: compile + first attack {compile_s:.1f} s; eager {best['eager']:.2f} s, compiled "
              f"{best['compiled']:.2f} s ({best['eager'] / best['compiled']:.2f}x); clean logits differ by {clean:.1e}; "
              f"adversarial images up to {apart:.1f}/255 apart; predictions on them differ on "
              f"{int((predicted['eager'] != predicted['compiled']).sum())}/{len(x)}; robust eager "
              f"{float((predicted['eager'] == y).float().mean()):.3f}, compiled {float((predicted['compiled'] == y).float().mean()):.3f}")


if __name__ == "__main__":
    main()
