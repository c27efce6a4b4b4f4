"""Inference cost of a defended pipeline, relative to the classifier without test-time defenses.

A test-time defense buys robustness with computation (TTC's counterattack, SCC's views). Per cell the
runner measures, on the first batch of clean images: the wall seconds per image of one prediction
(``torch.no_grad()``, as the runner predicts) of the defended pipeline and of the undefended
classifier, and the image-encoder forward and backward passes per image of the defended prediction.

An *image-encoder pass* is one image through a ``visual`` tower (open_clip's ``CLIP.visual``): the
towers the caller passes (:func:`encoder_of` the evaluated and the original model — a defense may hold
the classifier in a closure, invisible to ``pipeline.modules()``) merged, by identity, with those found
inside the pipeline and the undefended classifier. The undefended classifier must spend exactly one
forward pass per image (a check of the counter itself), and a defended prediction with no counted pass
is an error rather than a recorded 0.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from vlmbench.errors import VlmbenchError

if TYPE_CHECKING:
    from vlmbench.models import ClipModel

COST_COLUMNS = ("infer_time_s", "infer_time_s_undefended", "infer_forward_passes", "infer_backward_passes")


class CostError(VlmbenchError):
    """The image-encoder passes of a pipeline could not be counted."""


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


def encoder_of(model: ClipModel) -> torch.nn.Module:
    """The image tower (``model.module.visual``) of a loaded CLIP model, whose passes are counted."""
    visual = getattr(model.module, "visual", None)
    if not isinstance(visual, torch.nn.Module):
        raise CostError(f"model {model.name!r} has no image tower module.visual: its image-encoder passes cannot be counted")
    return visual


def image_encoders(*modules: torch.nn.Module) -> list[torch.nn.Module]:
    """The ``visual`` towers of the CLIP modules inside ``modules`` (each once, by identity)."""
    found: dict[int, torch.nn.Module] = {}
    for root in modules:
        for module in root.modules():
            visual = getattr(module, "visual", None)
            if isinstance(visual, torch.nn.Module):
                found.setdefault(id(visual), visual)
    return list(found.values())


@contextmanager
def counting_passes(encoders: Sequence[torch.nn.Module]) -> Iterator[PassCount]:
    """Count the forward and backward passes through ``encoders`` (distinct modules) inside the ``with`` block."""
    passes = PassCount()
    handles = [encoder.register_forward_hook(passes._on_forward) for encoder in encoders]
    try:
        yield passes
    finally:
        for handle in handles:
            handle.remove()


def inference_cost(defended: torch.nn.Module, undefended: torch.nn.Module, x: torch.Tensor, seed: int,
                   encoders: Sequence[torch.nn.Module] | None = None, repeats: int = 3, *,
                   defense: str | None = None) -> dict[str, float]:
    """:data:`COST_COLUMNS` for no-grad predictions of ``x`` ``(N,3,H,W)`` in [0,1]: passes of the first
    prediction, seconds the fastest of ``repeats``. Seeds torch's global generator before the defended
    prediction. When ``defended`` is ``undefended`` (no test-time part) it is measured once and both
    timings are that measurement.

    ``encoders``: the image towers to count (:func:`encoder_of` the evaluated and the original model);
    those found inside ``defended`` and ``undefended`` are added (None: only those). ``defense`` names
    the defense in errors.

    Raises:
        CostError: the undefended classifier did not count exactly one forward pass per image, or the
            defended prediction counted none.
    """
    n = x.shape[0]
    towers = {id(tower): tower for tower in [*(encoders or ()), *image_encoders(defended, undefended)]}
    label = defense or type(defended).__name__
    with counting_passes(list(towers.values())) as plain, torch.no_grad():
        undefended(x)
    if plain.forward != n:
        raise CostError(
            f"could not count the image-encoder passes of defense {label!r}: the undefended classifier counted "
            f"{plain.forward / n:g} forward passes per image instead of 1 through the {len(towers)} image towers "
            f"known; pass the evaluated model's tower as encoders (cost.encoder_of)"
        )
    passes = plain
    if defended is not undefended:  # a test-time part: count the defended prediction's own passes
        torch.manual_seed(seed)
        with counting_passes(list(towers.values())) as passes, torch.no_grad():
            defended(x)
        if passes.forward == 0:
            raise CostError(
                f"could not count the image-encoder passes of defense {label!r}: its prediction ran none of the "
                f"{len(towers)} image towers known (of the evaluated and original models and inside its module); "
                f"register any other encoder it uses as a submodule of the module wrap returns"
            )
    undefended_seconds = _seconds_per_image(undefended, x, repeats)
    return {
        "infer_time_s": undefended_seconds if defended is undefended else _seconds_per_image(defended, x, repeats),
        "infer_time_s_undefended": undefended_seconds,
        "infer_forward_passes": passes.forward / n,
        "infer_backward_passes": passes.backward / n,
    }


def _seconds_per_image(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Fastest wall seconds per image of ``repeats`` no-grad predictions (CUDA work awaited, not just launched)."""
    timings = []
    with torch.no_grad():
        for _ in range(repeats):
            _synchronize(x.device)
            started = time.perf_counter()
            model(x)
            _synchronize(x.device)
            timings.append(time.perf_counter() - started)
    return min(timings) / x.shape[0]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
