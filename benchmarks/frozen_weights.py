"""Why frozen weights slowed CLIP attacks on the CPU, and what vlmbench does about it: one forward plus
input gradient of open_clip ViT-B-32 (random init, 224px, batch 4)

- with the weights frozen (``requires_grad=False``, as vlmbench loads every model) and open_clip's
  batch-first attention, as open_clip builds it;
- frozen, with the attention stacks switched to sequence-first, as vlmbench loads them
  (:func:`vlmbench.models.sequence_first_attention`);
- with the weights left trainable (what the research loops and pyautoattack's users do);

and ``nn.MultiheadAttention`` alone, batch-first and not. The variants run in alternating rounds, side
by side; the gradients are compared with the first variant's (largest difference relative to the
largest component: float rounding of another matmul order, or none).

    uv run python benchmarks/frozen_weights.py [--threads 1] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import open_clip
import torch

from vlmbench.models import sequence_first_attention


def input_gradient_seconds(forward, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    """Seconds per forward + input gradient of ``forward`` at ``x`` (the mean of ``repeats``), and the gradient."""
    start = time.perf_counter()
    for _ in range(repeats):
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(forward(leaf).sum(), leaf)
    return (time.perf_counter() - start) / repeats, grad


def compare(label: str, variants: dict[str, Callable[[], None]], forward, x: torch.Tensor, rounds: int,
            repeats: int) -> None:
    """Time ``forward``'s input gradient under each variant (a function that sets the module up), in
    alternating rounds; print the best of each, its ratio to the first, and its gradient's difference."""
    best = {name: float("inf") for name in variants}
    grads: dict[str, torch.Tensor] = {}
    for _ in range(rounds):
        for name, setup in variants.items():
            setup()
            seconds, grads[name] = input_gradient_seconds(forward, x, repeats)
            best[name] = min(best[name], seconds)
    first = next(iter(variants))
    print(label)
    for name in variants:
        difference = float((grads[name] - grads[first]).abs().max() / grads[first].abs().max())
        print(f"  {name:<44} {best[name] * 1e3:8.1f} ms  {best[first] / best[name]:5.2f}x of the first  "
              f"gradient differs by {difference:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.rounds} alternating rounds")
    vit = open_clip.create_model("ViT-B-32", pretrained=None).eval()

    def setup(frozen: bool, batch_first: bool) -> Callable[[], None]:
        return lambda: (vit.requires_grad_(not frozen), sequence_first_attention(vit, not batch_first))  # type: ignore[func-returns-value]

    compare("ViT-B-32 image tower, batch 4, 224px, forward + input gradient",
            {"frozen, batch-first (open_clip's build)": setup(True, True),
             "frozen, sequence-first (vlmbench's load)": setup(True, False),
             "trainable, batch-first": setup(False, True)},
            vit.encode_image, torch.rand(4, 3, 224, 224), args.rounds, 1)
    for batch_first in (True, False):
        mha = torch.nn.MultiheadAttention(768, 12, batch_first=batch_first).eval()
        x = torch.randn(4, 50, 768) if batch_first else torch.randn(50, 4, 768)
        compare(f"nn.MultiheadAttention(768, 12, batch_first={batch_first}), 10 repeats",
                {"frozen": lambda m=mha: m.requires_grad_(False), "trainable": lambda m=mha: m.requires_grad_(True)},
                lambda q, m=mha: m(q, q, q, need_weights=False)[0], x, args.rounds, 10)


if __name__ == "__main__":
    main()
