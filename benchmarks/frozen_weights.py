"""Why frozen weights slow CLIP attacks on the CPU: one forward plus input gradient with the weights
frozen (``requires_grad=False``, as vlmbench loads every model) against left trainable, for open_clip
ViT-B-32 (random init, 224px, batch 4) and for ``nn.MultiheadAttention`` alone, batch-first (as
open_clip builds it) and not. The gradients are compared too (largest difference
relative to the largest component: float rounding of another matmul order, or none). Rounds alternate frozen and trainable.

    uv run python benchmarks/frozen_weights.py [--threads 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import open_clip
import torch


def input_gradient_seconds(forward, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Seconds per forward + input gradient of ``forward`` at ``x`` (the mean of ``repeats``), and the gradient."""
    start = time.perf_counter()
    for _ in range(repeats):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(leaf).sum(), leaf)
    return (time.perf_counter() - start) / repeats, grad


def compare(label: str, module: torch.nn.Module, forward, x: torch.Tensor, rounds: int, repeats: int) -> None:
    best = {True: float("inf"), False: float("inf")}
    grads = {}
    for _ in range(rounds):
        for frozen in (True, False):
            module.requires_grad_(not frozen)
            seconds, grads[frozen] = input_gradient_seconds(forward, x, repeats)
            best[frozen] = min(best[frozen], seconds)
    difference = float((grads[True] - grads[False]).abs().max() / grads[False].abs().max())
    print(f"{label:<50} frozen {best[True] * 1e3:7.1f} ms  trainable {best[False] * 1e3:7.1f} ms  "
          f"{best[True] / best[False]:.2f}x  gradients differ by {difference:.1e} of their largest component")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} alternating rounds")
    vit = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    compare("ViT-B-32 image tower, batch 4, 224px", vit, vit.encode_image, torch.rand(4, 3, 224, 224), args.rounds, 1)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(768, 12, batch_first=batch_first).eval()
        x = torch.randn(4, 50, 768) if batch_first else torch.randn(50, 4, 768)
        compare(f"nn.MultiheadAttention(768, 12, batch_first={batch_first})", mha,
                lambda q, m=mha: m(q, q, q, need_weights=False)[0], x, args.rounds, 10)


if __name__ == "__main__":
    main()
