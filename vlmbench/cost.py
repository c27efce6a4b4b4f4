"""Inference cost of a defended pipeline, relative to the classifier without test-time defenses.

A test-time defense buys robustness with computation (TTC's counterattack, SCC's views). Per cell the
runner measures, on the first batch of clean images: the wall seconds per image of one prediction
(``torch.no_grad()``, as the runner predicts) of the defended pipeline and of the undefended
classifier, and the image-encoder forward and backward passes per image of the defended prediction.

An *image-encoder pass* is one image through the ``visual`` tower of a CLIP module (open_clip's
``CLIP.visual``) held anywhere inside the pipeline — including a second model such as the original
encoder TTC measures τ with; the undefended classifier spends exactly one forward pass per image.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

COST_COLUMNS = ("infer_time_s", "infer_time_s_undefended", "infer_forward_passes", "infer_backward_passes")


class PassCount:
    """Counts images sent forward (``forward``) and gradients sent back (``backward``) through a model:
    :meth:`record` each output; its backward pass, if any, is counted when the gradient arrives."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def record(self, n: int, output: object) -> None:
        """``n`` images went forward and produced ``output``."""
        self.forward += n
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(lambda grad: self._on_backward(n))

    def add(self, other: PassCount) -> None:
        self.forward += other.forward
        self.backward += other.backward

    def _on_forward(self, module: torch.nn.Module, inputs: tuple, output: object) -> None:
        self.record(int(inputs[0].shape[0]), output)

    def _on_backward(self, n: int) -> None:
        self.backward += n


def image_encoders(pipeline: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``visual`` towers of the CLIP modules inside ``pipeline`` (each once)."""
    found: dict[int, torch.nn.Module] = {}
    for module in pipeline.modules():
        visual = getattr(module, "visual", None)
        if isinstance(visual, torch.nn.Module):
            found.setdefault(id(visual), visual)
    return list(found.values())


@contextmanager
def counting_encoder_passes(pipeline: torch.nn.Module) -> Iterator[PassCount]:
    """Count the image-encoder passes of ``pipeline`` inside the ``with`` block."""
    passes = PassCount()
    handles = [encoder.register_forward_hook(passes._on_forward) for encoder in image_encoders(pipeline)]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def inference_cost(defended: torch.nn.Module, undefended: torch.nn.Module, x: torch.Tensor, seed: int,
                   repeats: int = 3) -> dict[str, float]:
    """:data:`COST_COLUMNS` for no-grad predictions of ``x`` ``(N,3,H,W)`` in [0,1]: passes of the first
    prediction, seconds the fastest of ``repeats``. Seeds torch's global generator."""
    n = x.shape[0]
    torch.manual_seed(seed)
    with counting_encoder_passes(defended) as passes, torch.no_grad():
        defended(x)
    return {
        "infer_time_s": _seconds_per_image(defended, x, repeats),
        "infer_time_s_undefended": _seconds_per_image(undefended, x, repeats),
        "infer_forward_passes": passes.forward / n,
        "infer_backward_passes": passes.backward / n,
    }


def _seconds_per_image(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    timings = []
    with torch.no_grad():
        for _ in range(repeats):
            started = time.perf_counter()
            model(x)
            timings.append(time.perf_counter() - started)
    return min(timings) / x.shape[0]
