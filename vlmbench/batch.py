"""One batch of one cell: load the images, craft the adversarial examples on the model the cell's
track attacks, score clean and adversarial images with the defended pipeline, and return the
per-sample rows (docs/results-schema.md).

:class:`Cell` holds everything a cell's batches need; batches are pure functions of the cell, the
image indices and their seeds, which is what makes a resumed cell equal to an uninterrupted one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlmbench.attack import check_perturbation, perturbation_norms
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.data import ZeroShotDataset
from vlmbench.defense import Defense
from vlmbench.cost import PassCount
from vlmbench.models import ClipModel
from vlmbench.protocol import (Protocol)
from vlmbench.targets import NO_TARGET, UNTARGETED, SuperclassLogits, SuperclassMap, choose_targets
from vlmbench.plan import AttackChoice, RunError


class _PassCounter(torch.nn.Module):
    """Counts images sent forward through, and gradients sent back through, the wrapped model."""

    def __init__(self, inner: torch.nn.Module, objective: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.passes = PassCount()
        if objective:  # expose the defense-aware objective only when the attack may use it
            self.forward_with_objective = self._forward_with_objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x).float()  # losses and margins in float32, also under bf16 autocast
        self.passes.record(x.shape[0], out)
        return out

    def _forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, extra = self.inner.forward_with_objective(x)
        self.passes.record(x.shape[0], logits)
        return logits.float(), extra.float()


@dataclass(frozen=True)
class Cell:
    """Everything one cell's batches need."""

    protocol: Protocol
    model: ClipModel  # after training-time defenses
    attack: AttackChoice
    classifier: ZeroShotClassifier  # without test-time defenses: the oblivious track crafts on it
    defended: torch.nn.Module  # the classifier wrapped by the test-time defenses
    dataset: ZeroShotDataset
    indices: list[int]
    device: torch.device
    source: torch.nn.Module | None = None  # the transfer track crafts on it
    superclasses: SuperclassMap | None = None  # craft against this label space
    skip: dict[int, int] = field(default_factory=dict)  # cascade: sample index → adv_pred of an earlier attack
    eps_sweep: bool = True
    parts: tuple[Defense, ...] = ()  # the defense's parts (their declared non-differentiable steps are checked)
    original: ClipModel | None = None  # the model before training-time defenses (TTC's τ encoder)
    save_adversarials: bool = False  # store the adversarial images (attacked cells of --save-adversarials)

    @property
    def early_stop(self) -> bool:
        """Whether the attack stops on an image once it fools the model, as the protocol records it
        (:meth:`vlmbench.plan.Plan.early_stop`): what runs is what the cell id says."""
        return bool(self.protocol.attack.params.get("early_stop", False))


def read_batch(cell: Cell, indices: list[int], pool: ThreadPoolExecutor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N,3,H,W)`` float32 in [0,1] and labels ``(N,)`` of ``indices`` on the CPU, checked there
    (one size, pixels in [0,1]); decoded by ``pool``'s threads when given; in pinned memory when the
    cell runs on CUDA, so that :func:`to_device` copies asynchronously."""
    items = list(pool.map(cell.dataset.__getitem__, indices)) if pool is not None else [cell.dataset[i] for i in indices]
    shapes = {tuple(img.shape) for img, _ in items}
    if len(shapes) != 1:
        raise RunError(f"dataset {cell.protocol.data.dataset!r} yields images of several sizes {sorted(shapes)} in one batch")
    x = torch.stack([img for img, _ in items]).to(dtype=torch.float32)
    y = torch.tensor([label for _, label in items], dtype=torch.long)
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise RunError(f"dataset {cell.protocol.data.dataset!r} yields pixels outside [0,1]")
    if cell.device.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    return x, y


def to_device(cell: Cell, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    return x.to(cell.device, non_blocking=True), y.to(cell.device, non_blocking=True)


def load_batch(cell: Cell, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`read_batch` on the cell's device."""
    return to_device(cell, read_batch(cell, indices))


def load_workers(device: torch.device) -> int:
    """Threads decoding a batch's images: one on the CPU (compute needs the cores), up to 8 beside a GPU."""
    return 1 if device.type != "cuda" else max(1, min(8, os.cpu_count() or 1))


@contextmanager
def prefetched(cell: Cell, batches: list[list[int]]) -> Iterator[Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The batches ``batches`` (lists of indices) on the cell's device, in order, each read while the
    one before it is computed: :func:`read_batch` runs in a background thread (with
    :func:`load_workers` decoding threads), so loading overlaps the attack. An error while reading a
    batch is raised when that batch is taken. The threads stop when the block exits."""
    workers = load_workers(cell.device)
    with ThreadPoolExecutor(max_workers=1) as reader, ThreadPoolExecutor(max_workers=workers) as decoders:
        pool = decoders if workers > 1 else None
        futures: list[Future[tuple[torch.Tensor, torch.Tensor]]] = []

        def batches_in_order() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for position, indices in enumerate(batches):
                if position == 0:
                    futures.append(reader.submit(read_batch, cell, indices, pool))
                if position + 1 < len(batches):  # the next one is read while this one is computed
                    futures.append(reader.submit(read_batch, cell, batches[position + 1], pool))
                yield to_device(cell, futures[position].result())

        try:
            yield batches_in_order()
        finally:
            for future in futures:
                future.cancel()


def crafting_model(cell: Cell) -> torch.nn.Module:
    """What the cell's attack differentiates (:func:`attacked_model`)."""
    return attacked_model(cell.protocol.track, cell.classifier, cell.defended, cell.source)


def attacked_model(track: str, classifier: torch.nn.Module, defended: torch.nn.Module,
                   source: torch.nn.Module | None) -> torch.nn.Module:
    """What an attack on ``track`` differentiates: the classifier without test-time defenses (oblivious
    track), the whole defended pipeline (adaptive track), or the source model's classifier (transfer track)."""
    if track == "transfer":
        assert source is not None
        return source
    return classifier if track == "oblivious" else defended


def in_label_space(cell: Cell, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as the cell's attack sees it (:func:`label_space_of`)."""
    return label_space_of(model, cell.superclasses)


def label_space_of(model: torch.nn.Module, superclasses: SuperclassMap | None) -> torch.nn.Module:
    """``model`` with its logits pooled to superclasses when there is a map, else ``model``."""
    return model if superclasses is None else SuperclassLogits(model, superclasses)


def attack_images(
    cell: Cell, x: torch.Tensor, y: torch.Tensor, attack: AttackChoice, generator: torch.Generator,
    skip: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _PassCounter]:
    """Adversarial images of the cell's attack (label space, target mode, tracks) for ``x``.

    On the adaptive track with ``protocol.start == "oblivious"`` the attack first runs on the classifier
    without its test-time defenses, and the adaptive attack starts from that result (its passes count).

    Returns ``(x_adv, target, attacked, counter)``: ``target`` is the aimed class per image (``-1``:
    untargeted, or not attacked because the image's label is the target); ``attacked`` says which
    images the attack ran on — images with ``skip`` set, or with no target in a targeted mode, are
    returned unchanged.
    """
    protocol = cell.protocol
    labels = y if cell.superclasses is None else cell.superclasses.of(y)
    counter = _PassCounter(in_label_space(cell, crafting_model(cell)), objective=protocol.defense_loss)
    target = torch.full_like(y, NO_TARGET)
    attacked = torch.ones_like(y, dtype=torch.bool) if skip is None else ~skip
    if protocol.target != UNTARGETED and attacked.any():
        with torch.no_grad():
            clean_logits = counter.inner(x)
        target = torch.where(attacked, choose_targets(protocol.target, y, clean_logits, generator), target)
        attacked &= target != NO_TARGET
    x_adv = x.clone()
    if attacked.any():
        index = attacked.nonzero().squeeze(1)
        extra = {"target": target[index]} if protocol.target != UNTARGETED else {}
        if protocol.start == "oblivious":
            warm = _PassCounter(in_label_space(cell, cell.classifier))
            extra["start"] = attack.build().perturb(warm, x[index], labels[index], generator, **extra).detach()
            counter.passes.add(warm.passes)
        x_adv[index] = attack.build(protocol.eot_draws, cell.early_stop).perturb(counter, x[index], labels[index], generator, **extra).detach()
    return x_adv, target, attacked, counter


def predict(cell: Cell, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Predictions ``(N,)`` of the defended pipeline for images ``x``: the majority vote of
    :func:`predict_draws`."""
    return predict_draws(cell, x, seed)[0]


def predict_draws(cell: Cell, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vote (N,), draws (N, K))``: the prediction of each of ``protocol.eval_draws`` = K forward
    draws of the defended pipeline for images ``x``, and their majority vote (ties: the class with the
    higher mean probability; K = 1 for a deterministic pipeline). Seeds torch's global generator, from
    which defenses draw.

    Every draw's logits are checked: shape ``(N, C)`` for the dataset's C classes and finite.
    """
    torch.manual_seed(seed)
    n, classes, draws = x.shape[0], cell.classifier.num_classes, cell.protocol.eval_draws
    votes = torch.zeros(n, classes, device=x.device)
    probabilities = torch.zeros(n, classes, device=x.device)
    predictions = []
    with torch.no_grad():
        for _ in range(draws):
            logits = cell.defended(x)
            check_logits(logits, n, classes, cell.protocol.defense.name)
            logits = logits.float()
            predictions.append(logits.argmax(dim=1))
            votes += F.one_hot(predictions[-1], classes)
            probabilities += logits.softmax(dim=1)
    vote = (votes + probabilities / (draws + 1)).argmax(dim=1)  # the probability term is < 1: a tie-break
    return vote, torch.stack(predictions, dim=1)


def check_logits(logits: Any, n: int, classes: int, defense: str) -> None:
    """A defended model must map N images to finite logits of shape ``(N, C)``."""
    if not isinstance(logits, torch.Tensor) or logits.shape != (n, classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RunError(f"defense {defense!r} returned logits of shape {shape} for {n} images of {classes} classes; "
                       f"a defended model must return (N, C) = ({n}, {classes})")
    if not torch.isfinite(logits).all():
        raise RunError(f"defense {defense!r} returned non-finite logits (NaN or inf) for {n} images; nothing was recorded "
                       "for this batch")


def run_batch(cell: Cell, indices: list[int], seed: int, clean_seed: int,
              adversarials: list[torch.Tensor] | None = None,
              loaded: tuple[torch.Tensor, torch.Tensor] | None = None) -> pd.DataFrame:
    """One batch's rows. ``seed`` drives the attack and the adversarial predictions; ``clean_seed``
    the clean predictions (it does not depend on the track or attack: :func:`clean_identity`).
    ``adversarials``, when given, receives the batch's evaluated adversarial images (on the CPU);
    ``loaded``: the batch's images and labels when the caller has already loaded them."""
    protocol, attack, device = cell.protocol, cell.attack, cell.device
    x, y = loaded if loaded is not None else load_batch(cell, indices)
    started = time.perf_counter()
    clean_pred, clean_draws = predict_draws(cell, x, clean_seed)
    torch.manual_seed(seed)  # test-time defenses draw from the global generator
    generator = torch.Generator(device=device).manual_seed(seed)
    skip = torch.tensor([i in cell.skip for i in indices], dtype=torch.bool, device=device)
    x_adv, target, attacked, crafting = attack_images(cell, x, y, attack, generator, skip)
    check_perturbation(x, x_adv, attack.threat, attack.spec)
    adv_pred, adv_draws = predict_draws(cell, x_adv, seed)
    if adversarials is not None:
        adversarials.append(x_adv.detach().cpu())
    if skip.any():  # cascade: keep the earlier attack's outcome
        earlier = torch.tensor([cell.skip.get(i, -1) for i in indices], dtype=adv_pred.dtype, device=device)
        adv_pred = torch.where(skip, earlier, adv_pred)
        adv_draws = torch.where(skip.unsqueeze(1), earlier.unsqueeze(1), adv_draws)
    elapsed = time.perf_counter() - started
    clean_hits, adv_hits = clean_draws == y.unsqueeze(1), adv_draws == y.unsqueeze(1)
    linf, l2 = perturbation_norms(x, x_adv)
    n = len(indices)
    clean_correct = (clean_pred == y).cpu().numpy()
    adv_correct = (adv_pred == y).cpu().numpy()
    threat, data = protocol.threat, protocol.data
    return pd.DataFrame(
        {
            "cell_id": protocol.cell_hash(),
            "model": protocol.model.name,
            "model_fingerprint": cell.model.fingerprint,
            "defense": protocol.defense.name,
            "attack": protocol.attack.name,
            "track": protocol.track,
            "eot_draws": protocol.eot_draws,
            "dataset": data.dataset,
            "split": data.split,
            "norm": threat.norm,
            "eps": threat.eps,
            "eps_label": threat.eps_label,
            "steps": threat.steps,
            "step_size": threat.step_size,
            "restarts": threat.restarts,
            "random_start": threat.random_start,
            "seed": protocol.seed,
            "precision": protocol.precision,
            "resolution": data.resolution,
            "n_samples": data.n_samples,
            "sample_index": indices,
            "label": y.cpu().numpy(),
            "clean_pred": clean_pred.cpu().numpy(),
            "adv_pred": adv_pred.cpu().numpy(),
            "clean_correct": clean_correct,
            "adv_correct": adv_correct,
            "robust": clean_correct & adv_correct,
            "clean_correct_rate": clean_hits.double().mean(dim=1).cpu().numpy(),
            "robust_rate": (clean_hits & adv_hits).double().mean(dim=1).cpu().numpy(),
            "linf": linf.cpu().numpy().astype(np.float32),
            "l2": l2.cpu().numpy().astype(np.float32),
            "time_s": elapsed / n,
            "forward_passes": crafting.passes.forward / n,
            "backward_passes": crafting.passes.backward / n,
            "defense_loss": protocol.defense_loss,
            "target_mode": protocol.target,
            "target": target.cpu().numpy(),
            "attacked": attacked.cpu().numpy(),
            "cascade_after": ",".join(protocol.cascade_after),
            "preset": data.preset or "",
            "selection": data.selection,
            "n_requested": -1 if data.n_requested is None else data.n_requested,
            "templates": data.templates or "",
            "start": protocol.start,
            "source_model": protocol.source.name if protocol.source is not None else "",
            "eval_draws": protocol.eval_draws,
            "bpda": ",".join(protocol.bpda),
            "defense_fingerprint": protocol.defense.fingerprint,
            "attack_fingerprint": protocol.attack.fingerprint,
            "dataset_fingerprint": data.fingerprint,
            "superclasses": cell.superclasses.name if cell.superclasses is not None else "",
            **_superclass_columns(cell.superclasses, y, clean_pred, adv_pred),
            "protocol": protocol.to_json(),
        }
    )


def _superclass_columns(mapping: SuperclassMap | None, y: torch.Tensor, clean_pred: torch.Tensor,
                        adv_pred: torch.Tensor) -> dict[str, np.ndarray]:
    """Superclass label and predictions (``-1`` without a superclass map)."""
    if mapping is None:
        none = np.full(len(y), -1, dtype=np.int64)
        return {"superclass_label": none, "clean_superclass_pred": none, "adv_superclass_pred": none}
    return {"superclass_label": mapping.of(y).cpu().numpy(), "clean_superclass_pred": mapping.of(clean_pred).cpu().numpy(),
            "adv_superclass_pred": mapping.of(adv_pred).cpu().numpy()}
