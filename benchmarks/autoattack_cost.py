"""What AutoAttack's early stopping saves: standard AutoAttack on the embedded world's models, run
pyautoattack's way versus every sub-attack on every sample.

Prints, per model, wall time, images/second and robust accuracy of
  * ``early stop``: ``aa`` as ``vlmbench run`` runs it (``vlmbench.attacks.autoattack.AutoAttackStandard``,
    i.e. pyautoattack's ``run_standard_evaluation``): APGD-CE, APGD-T, FAB-T and Square in sequence,
    each only on the samples every earlier one left correctly classified;
  * ``no early stop``: the same configured sub-attacks, each on every clean-correct sample
    (pyautoattack's ``run_standard_evaluation_individual``); a sample is robust if it survives all four.
    Each sub-attack's own robust accuracy is printed too.
Clean-misclassified samples are attacked in neither mode.

    uv run python benchmarks/autoattack_cost.py [--images 64] [--steps 10] [--eps 1/255] [--dataset world-shape] [--progress]

``--steps`` is the APGD/FAB iteration count (AutoAttack's is 100; fewer here so that a CPU run takes
minutes) and Square gets 50 queries per step; both are printed. ``--progress`` shows pyautoattack's
own DEBUG log (robust accuracy and cumulative time after each sub-attack) on stderr.
"""

from __future__ import annotations

import argparse
import logging
import time
from importlib.metadata import version

import torch

from vlmbench.attacks.autoattack import AutoAttackStandard, seed_from
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eps", default="1/255")
    parser.add_argument("--dataset", default="world-shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show pyautoattack's progress log")
    args = parser.parse_args()
    if args.progress:
        logging.basicConfig(format="%(relativeCreated)9.0f ms  %(message)s")
        logging.getLogger("auto-attack").setLevel(logging.DEBUG)
    torch.set_num_threads(args.threads)
    dataset = plugins().datasets.get(args.dataset).load(None)
    items = [dataset[i] for i in range(args.images)]
    x = torch.stack([image for image, _ in items])
    y = torch.tensor([label for _, label in items])
    attack = AutoAttackStandard(ThreatModel.build("linf", args.eps, args.steps, 0.0))
    classes = len(dataset.classnames)
    settings = {a["attack"]: a for a in attack.params(classes)["attacks"]}
    print(f"AutoAttack standard, linf ε={args.eps}, {args.images} images of {args.dataset} ({classes} classes), "
          f"one batch, {args.threads} thread(s), torch {torch.__version__}, pyautoattack {version('pyautoattack')}")
    print(f"APGD/FAB {args.steps} iterations, {settings['apgd-t']['n_target_classes']} target classes, "
          f"Square {settings['square']['n_queries']} queries")
    print(f"{'model':<10} {'mode':<14} {'wall s':>8} {'img/s':>7} {'clean %':>8} {'robust %':>9}  per sub-attack robust %")
    for name in ("world-vit", "world-rn"):
        classifier = ZeroShotClassifier.build(plugins().models.get(name).load(), dataset.classnames, dataset.templates)
        with torch.no_grad():
            clean = float((classifier(x).argmax(1) == y).float().mean()) * 100

        start = time.perf_counter()
        x_adv = attack.perturb(classifier, x, y, torch.Generator().manual_seed(args.seed))
        early = time.perf_counter() - start
        with torch.no_grad():
            robust_early = float((classifier(x_adv).argmax(1) == y).float().mean()) * 100

        aa = attack.configure(classifier, classes, seed_from(torch.Generator().manual_seed(args.seed)), x.device)
        start = time.perf_counter()
        per_attack = aa.run_standard_evaluation_individual(x, y, batch_size=len(x))
        every = time.perf_counter() - start
        robust_each = {a: y_adv == y for a, (_, y_adv) in per_attack.items()}
        robust_every = float(torch.stack(list(robust_each.values())).all(0).float().mean()) * 100
        each = "  ".join(f"{a} {float(r.float().mean()) * 100:.1f}" for a, r in robust_each.items())

        n = args.images
        print(f"{name:<10} {'early stop':<14} {early:>8.1f} {n / early:>7.2f} {clean:>8.1f} {robust_early:>9.1f}")
        print(f"{name:<10} {'no early stop':<14} {every:>8.1f} {n / every:>7.2f} {clean:>8.1f} {robust_every:>9.1f}  {each}")
        print(f"{name:<10} early stopping is {every / early:.1f}x faster")


if __name__ == "__main__":
    main()
