"""Executing a plan: load each model, apply each defense, build each dataset's zero-shot pipeline,
describe every cell's protocol and run the cell (:mod:`vlmbench.cell`).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from vlmbench.adaptive import provides_objective
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.paths import cache_dir
from vlmbench.data import ZeroShotDataset
from vlmbench.defense import Defense, DefenseContext
from vlmbench.fingerprint import source_fingerprint
from vlmbench.models import ClipModel
from vlmbench.protocol import (DataSpec, PluginRef, Protocol, indices_sha256)
from vlmbench.batch import Cell
from vlmbench.cell import CellOutcome, remove_leftovers, run_cell
from vlmbench.plan import Plan, adaptive_budget


VERSIONED_PACKAGES = ("vlmbench", "torch", "torchvision", "open_clip_torch", "pyautoattack", "numpy")


def package_versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_revision() -> str | None:
    """The vlmbench checkout's commit (with ``-dirty`` if modified), or None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_metadata(device: torch.device) -> dict[str, Any]:
    return {
        "versions": package_versions(),
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }




def execute(
    plan_: Plan,
    on_cell: Callable[[Protocol, int], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> list[CellOutcome]:
    """Run every cell of ``plan_``; ``on_cell(protocol, n)`` announces a cell, ``on_advance(k)`` reports
    images done, ``on_wait(message)`` that a cell is being computed by another process."""
    remove_leftovers(plan_.request.output)
    try:
        return _execute(plan_, on_cell, on_advance, on_wait)
    finally:
        remove_leftovers(plan_.request.output)


def _execute(
    plan_: Plan,
    on_cell: Callable[[Protocol, int], None] | None,
    on_advance: Callable[[int], None] | None,
    on_wait: Callable[[str], None] | None,
) -> list[CellOutcome]:
    request = plan_.request
    device = plan_.device
    outcomes: list[CellOutcome] = []
    meta = run_metadata(device)
    versions = meta["versions"]
    source, source_context, source_wrappers = _defended_source(plan_)
    for model_plugin in plan_.models:
        original = model_plugin.load(device, download=request.download)
        for defense in plan_.defenses:
            context = DefenseContext(cache_dir() / "defenses", device, request.seed, request.data_root, original)
            model = original
            for part in defense.parts:
                model = part.adapt_model(model, context)
            for dataset_plugin, dataset, indices in plan_.datasets:
                data_choice = plan_.data_choices[dataset_plugin.name]
                classifier, defended = defended_pipeline(model, defense.parts, dataset, context, device)
                source_classifier = None
                if source is not None:
                    source_classifier = ZeroShotClassifier.build(source, dataset.classnames, dataset.templates).to(device)
                    for part in source_wrappers:
                        source_classifier = part.wrap(source_classifier, source_context)  # type: ignore[arg-type]
                target_mode, superclasses = plan_.label_spaces[dataset_plugin.name]
                # the label space the attack runs in: its parameters (AutoAttack's sub-attacks and target
                # counts) are recorded as they take effect there, on the superclasses of a superclass cell
                attacked_classes = len(superclasses.superclasses) if superclasses is not None else dataset.num_classes
                broken: dict[tuple[str, str], dict[int, int]] = {}  # cascade: (track, ε) → {index: adv_pred}
                earlier: dict[tuple[str, str], list[str]] = {}  # cascade: attacks already run at (track, ε)
                data_spec = DataSpec(
                    dataset=dataset_plugin.name,
                    split=dataset.split,
                    n_samples=len(indices),
                    indices_sha256=indices_sha256(indices),
                    selection=data_choice.selection if len(indices) < len(dataset) else "all",
                    resolution=describe_resolution(dataset, indices, model),
                    preset=data_choice.preset,
                    templates=data_choice.templates,
                    n_requested=data_choice.n_requested,
                    fingerprint=source_fingerprint(dataset_plugin),
                )
                for requested, track in ((a, t) for a in plan_.attacks for t in defense.tracks):
                    attack = adaptive_budget(requested, request) if track == "adaptive" else requested
                    eot = defense.eot_draws if track == "adaptive" else 1
                    stage = (track, attack.threat.eps_label)
                    cascade_after = tuple(earlier.get(stage, ()))
                    protocol = Protocol(
                        model=PluginRef(model_plugin.name, original.fingerprint),
                        defense=defense.ref(),
                        attack=PluginRef(attack.spec, attack.cls.version,
                                         attack.build(eot).params(attacked_classes), source_fingerprint(attack.cls)),
                        threat=attack.threat,
                        data=data_spec,
                        seed=request.seed,
                        batch_size=request.batch_size,
                        track=track,  # type: ignore[arg-type]
                        eot_draws=eot,
                        defense_loss=(track == "adaptive" and provides_objective(defended)
                                      and "defense_loss" in attack.cls.honours),
                        start="oblivious" if track == "adaptive" and "start" in attack.cls.honours else "attack",
                        source=_source_ref(plan_, source),
                        target=target_mode,
                        superclasses=superclasses.record() if superclasses is not None else None,
                        cascade_after=cascade_after,
                        eval_draws=defense.eval_draws,
                        bpda=defense.non_differentiable if track == "adaptive" else (),
                        versions=versions,
                    )
                    if on_cell:
                        on_cell(protocol, len(indices))
                    cell = Cell(protocol, model, attack, classifier, defended, dataset, indices, device, source_classifier,
                                 superclasses, broken.get(stage, {}), request.eps_sweep, defense.parts, original,
                                 request.save_adversarials and attack.cls.name != "none")
                    outcome = run_cell(cell, request.output, meta, on_advance, on_wait)
                    outcomes.append(outcome)
                    if request.cascade:
                        earlier.setdefault(stage, []).append(attack.spec)
                        done = outcome.rows[~outcome.rows["robust"]]
                        broken.setdefault(stage, {}).update(zip(done["sample_index"].tolist(), done["adv_pred"].tolist()))
    return outcomes


def defended_pipeline(model: ClipModel, parts: tuple[Defense, ...], dataset: ZeroShotDataset, context: DefenseContext,
                      device: torch.device) -> tuple[ZeroShotClassifier, torch.nn.Module]:
    """``(classifier, defended)``: the zero-shot classifier of ``model`` (after training-time defenses)
    over ``dataset``'s classes, and that classifier wrapped by each part's test-time defense."""
    classifier = ZeroShotClassifier.build(model, dataset.classnames, dataset.templates).to(device)
    defended: torch.nn.Module = classifier
    for part in parts:
        defended = part.wrap(defended, context)  # type: ignore[arg-type]
    return classifier, defended


def describe_resolution(dataset: ZeroShotDataset, indices: list[int], model: ClipModel) -> str:
    """Where resizing happens, as it really does: the dataset's pixels (native or resized at load),
    then the model's resize, or none when the images already have the model's input size."""
    size = tuple(dataset[indices[0]][0].shape[-2:]) if indices else None
    if size == tuple(model.preprocess.size):
        return f"{dataset.pixels}; {size[0]}x{size[1]} images enter the model as they are (no resampling)"
    return f"{dataset.pixels}; resized inside the model ({model.preprocess.describe()})"


def _defended_source(plan_: Plan) -> tuple[ClipModel | None, DefenseContext | None, tuple[Defense, ...]]:
    """The transfer source model after its defense's training-time parts, the defense context, and
    its test-time parts."""
    if plan_.source is None:
        return None, None, ()
    source = plan_.source.load(plan_.device, download=plan_.request.download)
    parts = plan_.source_defense.parts if plan_.source_defense else ()
    context = DefenseContext(cache_dir() / "defenses", plan_.device, plan_.request.seed, plan_.request.data_root, source)
    for part in parts:
        source = part.adapt_model(source, context)
    return source, context, tuple(part for part in parts if part.is_test_time())


def _source_ref(plan_: Plan, source: ClipModel | None) -> PluginRef | None:
    """The transfer source in the protocol record: model spec, weights fingerprint, and its defense."""
    if source is None or plan_.source is None:
        return None
    defense = plan_.source_defense
    params = {} if defense is None else {"defense": defense.spec, "defense_params": {p.name: p.params() for p in defense.parts}}
    return PluginRef(plan_.source.name, source.fingerprint, params)
