"""PGD-10 throughput on the embedded world's models: vlmbench's attack vs a straightforward loop.

Prints images/second for
  * ``vlmbench``: ``vlmbench.attacks.pgd.PGD`` on the ``ZeroShotClassifier`` (frozen weights, gradient
    taken w.r.t. the perturbation only, cached class-text embeddings);
  * ``reference``: the textbook loop most research scripts use — weights left trainable, ``loss.backward()``
    on the image tensor, the class-text embeddings recomputed on every forward;
  * ``runner``: the whole ``vlmbench run`` path per image (clean pass, attack, budget check, adversarial
    pass, row assembly, Parquet staging).

    uv run python benchmarks/attack_throughput.py [--threads 1] [--images 256] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmbench.attacks.pgd import PGD
from vlmbench.classifier import ZeroShotClassifier, resize_and_normalize
from vlmbench.protocol import ThreatModel
from vlmbench.registry import plugins
from vlmbench.runner import RunRequest, execute, plan


def reference_pgd(model, tokens, preprocess, x, y, eps, alpha, steps, generator):
    """The straightforward loop: full autograd through trainable weights, texts encoded every step."""
    def logits(images):
        image = F.normalize(model.encode_image(resize_and_normalize(images, preprocess)), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        return model.logit_scale.exp() * image @ text.T

    x_adv = (x + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(logits(x_adv), y)
        model.zero_grad()
        loss.backward()
        x_adv = torch.min(torch.max(x_adv + alpha * x_adv.grad.sign(), x - eps), x + eps).clamp(0, 1)
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threat = ThreatModel.build("linf", "4/255", steps=10)
    dataset = plugins().datasets.get("world-shape").load(None, "test")
    items = [dataset[i] for i in range(args.images)]
    x = torch.stack([img for img, _ in items])
    y = torch.tensor([label for _, label in items])
    print(f"PGD-10, eps 4/255, {args.images} images of world-shape, batch {args.batch_size}, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'model':<10} {'vlmbench img/s':>15} {'reference img/s':>16} {'speed-up':>9} {'runner img/s':>13}")
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

        def whole_runner() -> None:
            with tempfile.TemporaryDirectory() as out:
                request = RunRequest(models=(name,), datasets=("world-shape",), attacks=("pgd-10",), eps=("4/255",),
                                     n_samples=args.images, batch_size=args.batch_size, output=Path(out))
                execute(plan(request))

        t_ours, t_ref, t_run = timed(ours), timed(reference), timed(whole_runner, repeats=1)
        n = args.images
        print(f"{name:<10} {n / t_ours:>15.0f} {n / t_ref:>16.0f} {t_ref / t_ours:>8.2f}x {n / t_run:>13.0f}")


if __name__ == "__main__":
    main()
