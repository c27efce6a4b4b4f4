"""PGD-10 throughput on the embedded world's models: vlmbench's attack vs a straightforward loop.

Prints images/second for
  * ``vlmbench``: ``vlmbench.attacks.pgd.PGD`` on the ``ZeroShotClassifier`` (frozen weights, gradient
    taken w.r.t. the perturbation only, cached class-text embeddings);
  * ``reference``: the textbook loop most research scripts use — weights left trainable, ``loss.backward()``
    on the image tensor, the class-text embeddings recomputed on every forward;
  * ``plain``: the same loop written without waste — frozen weights, ``torch.autograd.grad`` with respect to
    the images only, text embeddings computed once. vlmbench's speed-up over ``reference`` is exactly what
    ``plain`` also gains (no weight gradients, no text tower per step); against ``plain`` it is at parity;
  * ``runner``: the whole ``vlmbench run`` path per image (clean pass, attack, budget check, adversarial
    pass, row assembly, Parquet staging).

    uv run python benchmarks/attack_throughput.py [--threads 1] [--images 256] [--batch-size 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from throughput import reference_pgd  # the research-style loop, shared with benchmarks/throughput.py
from vlmbench.attacks.pgd import PGD
from vlmbench.classifier import ZeroShotClassifier, resize_and_normalize
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins
from vlmbench.runner import RunRequest, execute, plan


def plain_pgd(model, text, preprocess, x, y, eps, alpha, steps, generator):
    """The loop without waste: frozen weights, the input gradient only, the text embeddings ``text`` given."""
    def logits(images):
        image = F.normalize(model.encode_image(resize_and_normalize(images, preprocess)), dim=-1)
        return model.logit_scale.exp() * image @ text.T

    x_adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (the best of each is kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threat = ThreatModel.build("linf", "4/255", steps=10)
    dataset = plugins().datasets.get("world-shape").load(None, "test")
    items = [dataset[i] for i in range(args.images)]
    x = torch.stack([img for img, _ in items])
    y = torch.tensor([label for _, label in items])
    print(f"PGD-10, eps 4/255, {args.images} images of world-shape, batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':<10} {'vlmbench img/s':>15} {'reference img/s':>16} {'plain img/s':>12} {'vs reference':>13} "
          f"{'vs plain':>9} {'runner img/s':>13}")
    for name in ("world-vit", "world-rn"):
        model = plugins().models.get(name).load()
        zs = ZeroShotClassifier.build(model, dataset.classnames, dataset.templates)
        batches = [(x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]

        def ours() -> None:
            for xb, yb in batches:
                PGD(threat).perturb(zs, xb, yb, torch.Generator().manual_seed(0))

        trainable = plugins().models.get(name).load().module
        for p in trainable.parameters():
            p.requires_grad_(True)
        prompts = [dataset.templates[0].format(c) for c in dataset.classnames]
        tokens = model.tokenizer(prompts)

        def reference() -> None:
            for xb, yb in batches:
                reference_pgd(trainable, tokens, model.preprocess, xb, yb, threat.eps, threat.step_size,
                              threat.steps, torch.Generator().manual_seed(0))

        frozen = plugins().models.get(name).load().module
        with torch.no_grad():
            text = F.normalize(frozen.encode_text(tokens), dim=-1)

        def plain() -> None:
            for xb, yb in batches:
                plain_pgd(frozen, text, model.preprocess, xb, yb, threat.eps, threat.step_size, threat.steps,
                          torch.Generator().manual_seed(0))

        def whole_runner() -> None:
            with tempfile.TemporaryDirectory() as out:
                request = RunRequest(models=(name,), datasets=("world-shape",), attacks=("pgd-10",), eps=("4/255",),
                                     n_samples=args.images, batch_size=args.batch_size, output=Path(out))
                execute(plan(request))

        best = {"ours": float("inf"), "reference": float("inf"), "plain": float("inf")}
        for _ in range(args.rounds):  # interleaved, so a busy moment of the machine hits all three alike
            for key, fn in (("ours", ours), ("reference", reference), ("plain", plain)):
                best[key] = min(best[key], timed(fn, repeats=1))
        t_ours, t_ref, t_plain, t_run = best["ours"], best["reference"], best["plain"], timed(whole_runner, repeats=1)
        n = args.images
        print(f"{name:<10} {n / t_ours:>15.0f} {n / t_ref:>16.0f} {n / t_plain:>12.0f} {t_ref / t_ours:>12.2f}x "
              f"{t_plain / t_ours:>8.2f}x {n / t_run:>13.0f}")


if __name__ == "__main__":
    main()
