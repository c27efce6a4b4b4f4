"""The runner: expands a request into cells, evaluates them batch by batch, writes Parquet.

Data flows one way: :class:`RunRequest` → :func:`plan` (every name, ε and parameter validated before
any computation) → cells → per-sample rows → one Parquet file per cell.

Resume: each finished batch is written atomically to ``OUTPUT/.partial/<cell>/``; when a cell is
complete its rows are merged into ``OUTPUT/<cell>.parquet`` (atomically) and the staging folder is
removed. A rerun skips complete cells and, inside an interrupted cell, the finished batches. Every
batch's randomness is seeded from (seed, cell, batch position), so a resumed cell has exactly the
rows an uninterrupted one would have had.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vlmbench import results
from vlmbench.adaptive import provides_objective, trace_steps, verify_declared_steps
from vlmbench.attack import Attack, check_perturbation, parse_attack_name, perturbation_norms
from vlmbench.classifier import ZeroShotClassifier
from vlmbench.paths import cache_dir
from vlmbench.config import build_config
from vlmbench.data import DatasetNotFoundError, DatasetPlugin, ZeroShotDataset
from vlmbench.defense import Defense, DefenseContext
from vlmbench.errors import VlmbenchError
from vlmbench.cost import PassCount, encoder_of, inference_cost
from vlmbench.fingerprint import combined, source_fingerprint
from vlmbench.flags import cell_flags
from vlmbench.models import ClipModel, ModelPlugin
from vlmbench.resolve import resolve_model
from vlmbench.datasets.text import with_templates
from vlmbench.preflight import validate_request_options
from vlmbench.presets import (PresetDataset, Resized, balanced_indices, dataset_labels, get_preset,
                              missing_datasets_error)
from vlmbench.protocol import (DataSpec, PluginRef, Protocol, ThreatModel, canonical_json, default_step_size,
                               indices_sha256)
from vlmbench.registry import PluginError, plugins, unknown_name_message
from vlmbench.targets import NO_TARGET, UNTARGETED, SuperclassLogits, SuperclassMap, choose_targets, parse_target, resolve_superclasses

VERSIONED_PACKAGES = ("vlmbench", "torch", "torchvision", "open_clip_torch", "pyautoattack", "numpy")


class RunError(VlmbenchError):
    """A run request that cannot be carried out (bad combination of options, unusable output path...)."""


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for; list-valued fields expand to a matrix (their product).

    Attributes:
        models, defenses, attacks, datasets, eps: names/specs; ``datasets`` entries may be glob
            patterns over registered names (``world-*``); a defense may be a ``+``-joined composition.
        norm: ``linf`` or ``l2``.
        step_size: override of the default step-size rule (``1/255`` or a float), or None.
        restarts: random restarts per attack.
        random_start: start attacks at a random point of the ball.
        n_samples: images per dataset (None: the whole split).
        selection: ``first`` (indices 0..n-1), ``random`` (a seeded sample, kept in index order) or
            ``balanced`` (seeded, class-balanced).
        seed: base seed.
        batch_size: images per batch.
        split: dataset split (None: each dataset's default).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: root of real datasets.
        download: fetch missing datasets whose own loader can download them (never otherwise).
        protocol: a protocol preset (:mod:`vlmbench.presets`): it fixes datasets (``datasets``
            then filters them), splits, sample counts, selection, templates and resolution.
        output: results folder.
        attack_params, defense_params: ``key=value`` plugin parameters (``NAME.key=value`` when
            several plugins are given).
        track: ``oblivious``, ``adaptive`` or ``both``; None: ``both`` for a defense with a test-time
            part, else ``oblivious`` (the two coincide without one).
        eot_draws: EOT draws on the adaptive track of a stochastic defense (None: 10); always 1 for a
            deterministic one.
        eval_draws: forward draws scoring a random defense, majority vote and expectation (None: 10);
            always 1 for a deterministic one.
        adaptive_steps: on the adaptive track, iterative attacks that can start from the oblivious
            result (PGD, CW) run at least this many steps (None: :data:`DEFAULT_ADAPTIVE_STEPS`; 0: the
            attack's own steps). The steps that ran are recorded (``threat.steps``).
        source_model: craft every attack on this model instead (transfer track; replaces ``track``).
        source_defense: defend the source model with this defense (training-time weights and
            test-time wrappers) before crafting on it.
        target: ``random``, ``least-likely``, a class index or name (targeted attacks), or None.
        superclasses: craft against the superclass label space of this mapping (a name the dataset
            offers, or a JSON file; :mod:`vlmbench.targets`), or None.
        cascade: attack with each later attack only the samples every earlier attack of the request
            (same ε, track, dataset) left robust, as AutoAttack does; recorded as ``cascade_after``.
        eps_sweep: measure the per-cell ``eps-not-monotone`` flag with a quick sweep (the cell's
            attack at 2ε and 4ε on the first images).
        save_adversarials: store each attacked cell's adversarial images beside its Parquet file
            (:func:`adversarial_filename`; docs/results-schema.md, "Adversarial images"). Run
            metadata, not protocol: it does not change the cell id.
    """

    models: tuple[str, ...] = ("world-vit",)
    defenses: tuple[str, ...] = ("none",)
    attacks: tuple[str, ...] = ("pgd-10",)
    datasets: tuple[str, ...] = ("world-*",)
    eps: tuple[str, ...] = ("1/255",)  # Protocol A (TeCoA, PMG-AFT, TTC, HPT-GPD) main setting
    norm: str = "linf"
    step_size: str | None = None
    restarts: int = 1
    random_start: bool = True
    n_samples: int | None = None
    selection: str = "first"
    seed: int = 0
    batch_size: int = 128
    split: str | None = None
    device: str = "auto"
    data_root: Path | None = None
    output: Path = Path("results")
    attack_params: tuple[str, ...] = ()
    defense_params: tuple[str, ...] = ()
    track: str | None = None
    eot_draws: int | None = None
    eval_draws: int | None = None
    adaptive_steps: int | None = None
    source_model: str | None = None
    source_defense: str | None = None
    download: bool = False
    protocol: str | None = None
    target: str | None = None
    superclasses: str | None = None
    cascade: bool = False
    eps_sweep: bool = True
    save_adversarials: bool = False


DEFAULT_EOT_DRAWS = 10  # Athalye et al. 2018: EOT over ≥ 10 draws for random defenses
DEFAULT_ADAPTIVE_STEPS = 40  # measured: benchmarks/adaptive_convergence.py (README, "Test-time defenses")
DEFAULT_EVAL_DRAWS = 10  # majority vote over this many draws scores a random defense (issue: one draw
# of TTC gave 32.5% and 22.5% clean accuracy on the same 40 images; 20 draws average 30.75%)


@dataclass(frozen=True)
class AttackChoice:
    spec: str  # as written: "pgd-10"
    cls: type[Attack]
    threat: ThreatModel
    config: Any

    def build(self, eot_draws: int = 1) -> Attack:
        """The attack instance (constructing it validates norm support and EOT)."""
        return self.cls(self.threat, self.config, eot_draws)


@dataclass(frozen=True)
class DefenseChoice:
    spec: str  # as written: "tecoa+ttc"
    parts: tuple[Defense, ...]
    tracks: tuple[str, ...]  # the tracks evaluated for this defense
    eot_draws: int  # on the adaptive track
    eval_draws: int = 1  # majority vote over this many forward draws (1: deterministic)

    @property
    def non_differentiable(self) -> tuple[str, ...]:
        """The declared non-differentiable steps of every part (BPDA on the adaptive track)."""
        return tuple(sorted({step for part in self.parts for step in part.non_differentiable}))

    def ref(self) -> PluginRef:
        """The defense in the protocol record: versions, parameters and source fingerprints of its parts."""
        return PluginRef(self.spec, "+".join(p.version for p in self.parts), {p.name: p.params() for p in self.parts},
                         combined([source_fingerprint(p) for p in self.parts]))


@dataclass(frozen=True)
class DataChoice:
    """How one dataset's images and prompts were chosen (recorded in ``DataSpec``)."""

    selection: str
    preset: str | None = None
    templates: str | None = None
    resize_before_attack: bool = False
    n_requested: int | None = None  # images asked for (--samples or the preset's count); None: the whole split


@dataclass
class Plan:
    """A validated request: resolved plugins and the cells to run, in execution order."""

    request: RunRequest
    models: list[ModelPlugin]
    defenses: list[DefenseChoice]
    datasets: list[tuple[DatasetPlugin, ZeroShotDataset, list[int]]]  # plugin, loaded split, chosen indices
    attacks: list[AttackChoice]  # one per (attack, ε)
    device: torch.device
    source: ModelPlugin | None = None  # transfer attacks are crafted on this model
    source_defense: DefenseChoice | None = None  # ... defended by this
    label_spaces: dict[str, tuple[str, SuperclassMap | None]] = field(default_factory=dict)  # per dataset
    data_choices: dict[str, DataChoice] = field(default_factory=dict)  # per dataset: how its data was chosen
    notes: list[str] = field(default_factory=list)  # what the user should know before reading the numbers

    @property
    def n_cells(self) -> int:
        return len(self.models) * sum(len(d.tracks) for d in self.defenses) * len(self.datasets) * len(self.attacks)

    @property
    def n_images(self) -> int:
        """Images to evaluate over all cells (for progress bars)."""
        per_dataset_set = sum(len(indices) for _, _, indices in self.datasets)
        cells_per_model = sum(len(d.tracks) for d in self.defenses) * len(self.attacks)
        return len(self.models) * cells_per_model * per_dataset_set


@dataclass
class CellOutcome:
    path: Path
    protocol: Protocol
    status: str  # "computed", "resumed" or "cached"
    rows: pd.DataFrame = field(repr=False)


def plan(request: RunRequest) -> Plan:
    """Validate every part of ``request`` and resolve its plugins; nothing is computed yet."""
    registry = plugins()
    for option, values in (("--eps", request.eps), ("--attack", request.attacks), ("--defense", request.defenses),
                           ("--model", request.models), ("--dataset", request.datasets)):
        if not values or any(not str(v).strip() for v in values):
            raise RunError(f"{option} is empty: give at least one value (or leave the option out for its default)")
    validate_request_options(  # the option-level checks the CLI makes before importing torch: one home
        models=request.models, source_model=request.source_model, download=request.download,
        defenses=request.defenses, attacks=request.attacks, datasets=request.datasets, eps=request.eps,
        norm=request.norm, step_size=request.step_size, restarts=request.restarts, samples=request.n_samples,
        selection=request.selection, seed=request.seed, batch_size=request.batch_size, track=request.track,
        eot=request.eot_draws, eval_draws=request.eval_draws, adaptive_steps=request.adaptive_steps,
        source_defense=request.source_defense,
    )
    if request.output.exists() and not request.output.is_dir():
        raise RunError(f"output {request.output} exists and is not a folder")
    models = [resolve_model(spec) for spec in request.models]
    defenses = [_resolve_defense(spec, request) for spec in request.defenses]
    datasets, data_choices, missing, notes = [], {}, [], []
    for entry, choice in _dataset_entries(request):
        plugin: DatasetPlugin = registry.datasets.get(entry.name)
        if entry.split is not None and entry.split not in plugin.splits:
            raise RunError(f"dataset {entry.name!r} has no split {entry.split!r}; its splits: {', '.join(plugin.splits)}")
        try:
            if request.download and plugin.status(request.data_root) == "missing":
                if request.data_root is None:
                    raise RunError("--download needs --data-root (or VLMBENCH_DATA_ROOT): where to put the files")
                plugin.download(request.data_root)
            dataset = plugin.load(request.data_root, entry.split)
        except DatasetNotFoundError as exc:  # keep going: one error then names every missing dataset
            missing.append(exc)
            continue
        dataset = prepare_dataset(dataset, choice)
        labels = dataset_labels(dataset) if choice.selection == "balanced" and entry.n_samples is not None else None
        indices = select_indices(len(dataset), entry.n_samples, choice.selection, request.seed, labels)
        if entry.n_samples is not None and entry.n_samples > len(dataset):
            notes.append(f"{entry.name}: {entry.n_samples} images asked for, but its {dataset.split} split has "
                         f"{len(dataset)}; all {len(dataset)} evaluated (recorded as n_requested)")
        datasets.append((plugin, dataset, indices))
        data_choices[entry.name] = replace(choice, n_requested=entry.n_samples)
    if missing:
        raise missing_datasets_error(missing)
    attack_names = [parse_attack_name(spec, registry.attacks.names())[0] for spec in request.attacks]
    attacks = []
    for choice in (_resolve_attack(spec, eps, request, attack_names) for spec in request.attacks for eps in request.eps):
        if all((choice.spec, choice.threat) != (other.spec, other.threat) for other in attacks):
            attacks.append(choice)  # one cell per value: "4/255" and "0.0156862745" are one ε
    for defense in defenses:
        for attack in attacks:
            if "adaptive" in defense.tracks and defense.eot_draws > 1 and "eot" not in attack.cls.honours:
                raise RunError(f"attack {attack.spec!r} cannot average over the randomness of {defense.spec!r} (EOT); "
                               "use an attack that supports EOT or --eot 1")
    if request.source_defense is not None and request.source_model is None:
        raise RunError("--source-defense needs --source-model (the model it defends)")
    source = resolve_model(request.source_model) if request.source_model else None
    source_defense = None
    if request.source_defense is not None:  # the source's defense runs with its defaults
        source_defense = _resolve_defense(request.source_defense, replace(request, defense_params=(), track="oblivious"))
    label_spaces = {plugin.name: _label_space(request, dataset, attacks) for plugin, dataset, _ in datasets}
    check_writable(request.output, "output folder")
    check_writable(cache_dir(), "cache folder (VLMBENCH_CACHE)")
    return Plan(request, models, defenses, datasets, attacks, _device(request.device), source, source_defense,
                label_spaces, data_choices, notes)


def prepare_dataset(dataset: ZeroShotDataset, choice: DataChoice) -> ZeroShotDataset:
    """A loaded split as the cells see it: its prompt templates and the preset's load-time resize."""
    if choice.templates is not None:
        dataset = with_templates(dataset, choice.templates)
    if choice.resize_before_attack:
        dataset = Resized(dataset, 224)
    return dataset


def check_writable(folder: Path, what: str) -> None:
    """Prove, before any computation, that files can be written in ``folder`` (or, when it does not
    exist yet, in its nearest existing ancestor, where it will be created). Creates nothing."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, f"{existing} is not a folder")
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".vlmbench-write-test-"):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to the {what} {folder}: {exc.strerror or exc}; choose another folder") from None


def _label_space(request: RunRequest, dataset: ZeroShotDataset, attacks: list[AttackChoice]) -> tuple[str, SuperclassMap | None]:
    """The target mode and superclass map of ``dataset``'s cells, validated against the attacks."""
    target = parse_target(request.target, dataset.classnames)
    if target != UNTARGETED:
        if request.superclasses is not None:
            raise RunError("targeted superclass attacks are not supported: use --target or --superclasses")
        refusing = sorted({a.spec for a in attacks if "targeted" not in a.cls.honours and a.cls.name != "none"})
        if refusing:
            raise RunError(f"attack {refusing[0]!r} has no targeted mode; targeted attacks: "
                           + ", ".join(n for n, c, _ in plugins().attacks.items() if c is not None and "targeted" in c.honours))
    superclasses = None
    if request.superclasses is not None:
        superclasses = resolve_superclasses(request.superclasses, getattr(dataset, "superclass_maps", {}),
                                            dataset.classnames, dataset.name, request.data_root)
    return target, superclasses


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise RunError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {spec!r} requested but CUDA is not available")
    return device


def _expand_datasets(patterns: tuple[str, ...]) -> list[str]:
    known = plugins().datasets.names()
    chosen: list[str] = []
    for pattern in patterns:
        matches = fnmatch.filter(known, pattern) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise PluginError(f"no dataset matches {pattern!r}; known: {', '.join(known)}")
        for name in matches:
            if name not in known:
                raise PluginError(unknown_name_message("dataset", name, known))
            if name not in chosen:
                chosen.append(name)
    return chosen


def _resolve_attack(spec: str, eps: str, request: RunRequest, names: list[str]) -> AttackChoice:
    """``names``: the base names of every attack of the request (to route ``NAME.key=value``)."""
    registry = plugins().attacks
    name, steps = parse_attack_name(spec, registry.names())
    cls: type[Attack] = registry.get(name)
    steps = cls.default_steps if steps is None else steps
    if steps == 0 and cls.default_steps != 0:
        raise RunError(f"attack {spec!r} needs at least one step")
    chosen = {"step_size": request.step_size is not None, "restarts": request.restarts != 1,
              "random_start": not request.random_start}
    ignored = sorted(k for k, on in chosen.items() if on and k not in cls.honours)
    if ignored:
        raise RunError(f"attack {spec!r} does not take {', '.join(ignored)}: it sets its own (see its description)")
    threat = ThreatModel.build(
        request.norm, eps, steps,
        request.step_size if "step_size" in cls.honours else 0.0,
        request.restarts, request.random_start,
    )
    config = build_config(cls.Config, _assignments_for(name, names, request.attack_params, "attack"), f"attack {name!r}")
    choice = AttackChoice(spec, cls, threat, config)
    choice.build()  # validates norm support now rather than mid-run
    return choice


def _resolve_defense(spec: str, request: RunRequest) -> DefenseChoice:
    registry = plugins().defenses
    names = spec.split("+")
    parts = []
    for name in names:
        cls: type[Defense] = registry.get(name)
        mine = _assignments_for(name, names, request.defense_params, "defense")
        parts.append(cls(build_config(cls.Config, mine, f"defense {name!r}")))
    test_time = any(part.is_test_time() for part in parts)
    if request.source_model is not None:
        tracks: tuple[str, ...] = ("transfer",)
    elif not test_time:
        tracks = ("oblivious",)  # nothing at test time: both tracks are the same attack
    elif request.track in (None, "both"):
        tracks = ("oblivious", "adaptive")
    else:
        tracks = (request.track,)
    stochastic = any(part.stochastic for part in parts)
    eot = (request.eot_draws or DEFAULT_EOT_DRAWS) if stochastic else 1  # nothing to average without randomness
    votes = (request.eval_draws or DEFAULT_EVAL_DRAWS) if stochastic else 1
    return DefenseChoice(spec, tuple(parts), tracks, eot, votes)


def _assignments_for(name: str, names: list[str], assignments: tuple[str, ...], kind: str) -> list[str]:
    """The ``key=value`` parameters meant for plugin ``name`` among ``names``: ``NAME.key=value`` always
    targets one plugin; a bare ``key=value`` is allowed only when there is a single plugin."""
    mine = []
    for assignment in assignments:
        target, dot, rest = assignment.partition(".")
        if dot and "=" not in target and target in names:
            if target == name:
                mine.append(rest)
        elif len(set(names)) == 1:
            mine.append(assignment)
        else:
            raise RunError(f"{kind} parameter {assignment!r} is ambiguous with several {kind}s: write {kind.upper()}.key=value")
    return mine


def _dataset_entries(request: RunRequest) -> list[tuple[PresetDataset, DataChoice]]:
    """The datasets of the request, each with its split and sample count and how they were chosen:
    from ``--protocol`` (``datasets`` patterns then filter the preset's list), or from the options."""
    if request.protocol is None:
        choice = DataChoice(request.selection)
        return [(PresetDataset(name, request.split, request.n_samples), choice) for name in _expand_datasets(request.datasets)]
    preset = get_preset(request.protocol)
    fixed = {"--samples": request.n_samples is not None, "--split": request.split is not None,
             "--selection": request.selection != "first"}
    clashing = [option for option, given in fixed.items() if given]
    if clashing:
        raise RunError(f"--protocol {preset.name} fixes {', '.join(clashing)}; leave them out or run without --protocol")
    wanted = set(_expand_datasets(request.datasets))
    entries = [entry for entry in preset.datasets if entry.name in wanted]
    if not entries:
        raise RunError(f"--dataset selects none of preset {preset.name!r}'s datasets: {', '.join(e.name for e in preset.datasets)}")
    choice = DataChoice(preset.selection, preset.name, preset.templates, preset.resolution == "224-before-attack")
    return [(entry, choice) for entry in entries]


def select_indices(total: int, n_samples: int | None, selection: str, seed: int, labels: list[int] | None = None) -> list[int]:
    """The evaluated indices: the first ``n``, a seeded random ``n``, or a seeded class-balanced ``n``
    (needs ``labels``), always in increasing order."""
    if n_samples is None or n_samples >= total:
        return list(range(total))
    if selection == "first":
        return list(range(n_samples))
    if selection == "balanced":
        if labels is None:
            raise RunError("balanced selection needs the dataset's labels")
        return balanced_indices(labels, n_samples, seed)
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(total, size=n_samples, replace=False))


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


def defense_metadata(parts: tuple[Defense, ...]) -> dict[str, dict[str, Any]]:
    """The run metadata's ``defenses``: each part of the cell's defense (``tecoa+ttc`` has two) with what it
    declares (:meth:`Defense.declaration`: kind, randomness, BPDA steps, paper, code, reported figures).
    Run metadata, not protocol: declaring a paper or a figure does not change a cell's identity."""
    return {part.name: part.declaration() for part in parts}


class _PassCounter(torch.nn.Module):
    """Counts images sent forward through, and gradients sent back through, the wrapped model."""

    def __init__(self, inner: torch.nn.Module, objective: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.passes = PassCount()
        if objective:  # expose the defense-aware objective only when the attack may use it
            self.forward_with_objective = self._forward_with_objective

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        self.passes.record(x.shape[0], out)
        return out

    def _forward_with_objective(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, extra = self.inner.forward_with_objective(x)
        self.passes.record(x.shape[0], logits)
        return logits, extra


def batch_seed(seed: int, cell_id: str, start: int) -> int:
    digest = hashlib.sha256(f"{seed}:{cell_id}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def cell_filename(protocol: Protocol) -> str:
    parts = [protocol.data.dataset, protocol.model.name, protocol.defense.name, protocol.attack.name,
             f"{protocol.threat.norm}-{protocol.threat.eps_label}", protocol.cell_hash()]
    safe = ["".join(c if c.isalnum() or c in ".-" else "_" for c in p) for p in parts]
    return "__".join(safe) + ".parquet"


ADVERSARIAL_SUFFIX = ".adv.npz"


def adversarial_filename(protocol: Protocol) -> str:
    """The cell's adversarial-image file: its Parquet file's name with ``.adv.npz`` for ``.parquet``."""
    return adversarial_path(Path(cell_filename(protocol))).name


def adversarial_path(cell_file: Path) -> Path:
    """Where the adversarial images of the cell stored at ``cell_file`` lie: beside it."""
    name = cell_file.name[: -len(".parquet")] if cell_file.name.endswith(".parquet") else cell_file.name
    return cell_file.with_name(name + ADVERSARIAL_SUFFIX)


_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # members carry no wall-clock time: equal images give equal files


def uint8_exact(images: np.ndarray) -> bool:
    """Whether every float32 pixel is exactly ``k / 255`` as float32 computes it (then stored as uint8 ``k``)."""
    if images.size == 0:
        return True
    if float(images.min()) < 0 or float(images.max()) > 1:
        return False
    levels = np.rint(images * np.float32(255)).astype(np.uint8)
    return bool(np.array_equal(levels.astype(np.float32) / np.float32(255), images))


def write_adversarials(parts: list[Path], indices: list[int], protocol: Protocol, path: Path) -> None:
    """Merge the staged per-batch adversarial images (``.npy``, float32) into the cell's ``.adv.npz``,
    atomically (``.NAME.PID.tmp``, ``fsync``, rename), streaming one batch at a time.

    The file is a NumPy ``.npz`` (deflate-compressed zip of ``.npy`` members, readable by ``np.load``)
    with ``sample_index`` (int64, N), ``images`` (N, 3, H, W), ``encoding`` (``"uint8/255"`` when every
    pixel is exactly k/255 and stored as uint8 k, else ``"float32"``), ``cell_id`` and ``protocol``
    (canonical JSON). Members carry a fixed timestamp, so a resumed cell's file is byte-identical to
    an uninterrupted one's.
    """
    import zipfile

    from numpy.lib import format as npy

    shapes = [np.load(part, mmap_mode="r").shape for part in parts]
    if sum(shape[0] for shape in shapes) != len(indices) or len({shape[1:] for shape in shapes}) > 1:
        raise RunError(f"staged adversarial images of cell {protocol.cell_hash()} do not match its samples; rerun")
    as_uint8 = all(uint8_exact(np.load(part)) for part in parts)
    dtype = np.dtype(np.uint8 if as_uint8 else "<f4")
    members = {"sample_index": np.asarray(indices, dtype="<i8"), "encoding": np.array("uint8/255" if as_uint8 else "float32"),
               "cell_id": np.array(protocol.cell_hash()), "protocol": np.array(protocol.to_json())}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def member(name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        return info

    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, value in members.items():
                with archive.open(member(name), "w", force_zip64=True) as handle:
                    npy.write_array(handle, value, allow_pickle=False)
            with archive.open(member("images"), "w", force_zip64=True) as handle:
                header = {"descr": npy.dtype_to_descr(dtype), "fortran_order": False,
                          "shape": (len(indices), *shapes[0][1:])}
                npy.write_array_header_1_0(handle, header)
                for part in parts:
                    batch = np.ascontiguousarray(np.load(part), dtype="<f4")
                    if as_uint8:
                        batch = np.rint(batch * np.float32(255)).astype(np.uint8)
                    handle.write(batch.tobytes())
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _save_npy_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _staged_adversarials(path: Path, n: int) -> bool:
    """Whether a staged batch of ``n`` adversarial images is present and readable."""
    try:
        return path.exists() and np.load(path, mmap_mode="r").shape[0] == n
    except (OSError, ValueError):
        return False


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
                    cell = _Cell(protocol, model, attack, classifier, defended, dataset, indices, device, source_classifier,
                                 superclasses, broken.get(stage, {}), request.eps_sweep, defense.parts, original,
                                 request.save_adversarials and attack.cls.name != "none")
                    outcome = _run_cell(cell, request.output, meta, on_advance, on_wait)
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


def adaptive_budget(attack: AttackChoice, request: RunRequest) -> AttackChoice:
    """The attack as the adaptive track runs it: iterative attacks that start from the oblivious result
    get at least ``request.adaptive_steps`` steps (the default-rule step size at that budget, unless a
    step size was given). A single PGD-10 from the oblivious start did not converge against TTC and
    SCC on the world (README: doubling its steps still lowered robust accuracy)."""
    minimum = DEFAULT_ADAPTIVE_STEPS if request.adaptive_steps is None else request.adaptive_steps
    threat = attack.threat
    if "start" not in attack.cls.honours or threat.steps == 0 or threat.steps >= minimum:
        return attack
    step_size = threat.step_size if request.step_size is not None else None
    return replace(attack, threat=ThreatModel.build(threat.norm, threat.eps, minimum, step_size, threat.restarts,
                                                    threat.random_start))


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


@dataclass(frozen=True)
class _Cell:
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


def _run_cell(
    cell: _Cell, output: Path, meta: dict[str, Any], on_advance: Callable[[int], None] | None,
    on_wait: Callable[[str], None] | None = None,
) -> CellOutcome:
    """The cell's rows: read from its finished file, or computed (resuming its finished batches).

    One process at a time computes a cell: the cell's lock file (``.partial/<cell>.lock``) is held
    while it runs, and a second process waits for it (``on_wait`` says so), then reads the result.
    """
    protocol, indices = cell.protocol, cell.indices
    cell_id = protocol.cell_hash()
    final = output / cell_filename(protocol)
    staging = output / results.PARTIAL_DIR / cell_id
    if not final.exists():
        with cell_lock(output, cell_id, on_wait):
            if not final.exists():
                return _compute_cell(cell, final, staging, meta, on_advance)
    rows = _validated_existing(final, protocol)
    shutil.rmtree(staging, ignore_errors=True)  # left by a process killed between its final write and cleanup
    if on_advance:
        on_advance(len(indices))
    return CellOutcome(final, protocol, "cached", rows)


@contextmanager
def cell_lock(output: Path, cell_id: str, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cell's exclusive lock (``fcntl.flock``, released by the kernel if the process dies)."""
    path = output / results.PARTIAL_DIR / f"{cell_id}.lock"
    while True:  # another process may remove the empty staging folder between mkdir and open
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            handle = open(path, "a")
            break
        except FileNotFoundError:
            continue
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait(f"cell {cell_id} is being computed by another process writing to {output}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # waiters hold the old file; they re-check the result after it
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compute_cell(
    cell: _Cell, final: Path, staging: Path, meta: dict[str, Any], on_advance: Callable[[int], None] | None
) -> CellOutcome:
    protocol, indices = cell.protocol, cell.indices
    cell_id = protocol.cell_hash()
    batch_size = protocol.batch_size
    first = _load_batch(cell, indices[:batch_size])[0]
    torch.manual_seed(batch_seed(protocol.seed, cell_id, -3))
    with trace_steps() as seen, torch.no_grad():  # the defense's contract, before anything else uses it:
        logits = cell.defended(first)
    check_logits(logits, len(first), cell.classifier.num_classes, protocol.defense.name)  # (N, C), finite
    verify_declared_steps(cell.parts, seen)  # every declared step has its BPDA path, and no other
    flags = _measure_cell_flags(cell, indices[:batch_size], batch_seed(protocol.seed, cell_id, -1))
    encoders = [encoder_of(model) for model in (cell.model, cell.original) if model is not None]
    cost = inference_cost(cell.defended, cell.classifier, first, batch_seed(protocol.seed, cell_id, -2),
                          encoders=encoders, defense=protocol.defense.name)
    clean_id = _clean_identity(protocol)
    started = time.perf_counter()
    frames, resumed, adversarial_parts = [], False, []
    for start in range(0, len(indices), batch_size):
        part = staging / f"{start:09d}.parquet"
        adversarial_part = staging / f"{start:09d}.adv.npy"  # staged before the rows: rows imply images
        batch_indices = indices[start : start + batch_size]
        frame = _read_part(part, batch_indices)
        if cell.save_adversarials and frame is not None and not _staged_adversarials(adversarial_part, len(batch_indices)):
            frame = None  # staged by a run without --save-adversarials: recompute (same seeds, same rows)
        if frame is None:
            kept: list[torch.Tensor] | None = [] if cell.save_adversarials else None
            frame = _run_batch(cell, batch_indices, batch_seed(protocol.seed, cell_id, start),
                               batch_seed(protocol.seed, clean_id, start), kept)
            frame["flags"] = flags
            frame = frame.assign(**cost)
            if kept is not None:
                _save_npy_atomic(kept[0].numpy().astype("<f4", copy=False), adversarial_part)
            results.write_atomic(results.to_table(frame, {}), part)
        else:
            resumed = True
        frames.append(frame)
        adversarial_parts.append(adversarial_part)
        if on_advance:
            on_advance(len(batch_indices))
    rows = pd.concat(frames, ignore_index=True)
    run = {**meta, "defenses": defense_metadata(cell.parts), "wall_time_s": time.perf_counter() - started,
           "resumed": resumed, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cell.save_adversarials:  # before the cell file: a cell file that names its images always has them
        images = adversarial_path(final)
        write_adversarials(adversarial_parts, indices, protocol, images)
        run["adversarials"] = images.name
    results.write_atomic(results.to_table(rows, run), final)
    shutil.rmtree(staging, ignore_errors=True)
    return CellOutcome(final, protocol, "resumed" if resumed else "computed", rows)


def _clean_identity(protocol: Protocol) -> str:
    """What determines a cell's clean predictions: model, defense, images, seed and evaluation draws —
    not the track or the attack, so every cell of one setting shares its clean figure."""
    identity = {k: protocol.to_dict()[k] for k in ("model", "defense", "data", "seed", "eval_draws", "batch_size")}
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def remove_leftovers(output: Path) -> None:
    """Remove what killed runs left in ``output``: temporary files of an interrupted atomic write
    (``.NAME.PID.tmp`` of a process that no longer runs), the staging folders of cells whose final
    file exists, and the staging folder itself when nothing is left in it. Staging of unfinished cells
    is kept (it is resumed). Safe while other processes write to ``output``."""
    if not output.is_dir():
        return
    for tmp in [*output.glob(".*.tmp"), *output.glob(f"{results.PARTIAL_DIR}/*/.*.tmp")]:
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)
    partial = output / results.PARTIAL_DIR
    if partial.is_dir():
        finished = {path.stem.rsplit("__", 1)[-1] for path in output.glob("*.parquet")}
        for folder in partial.iterdir():
            if folder.is_dir() and folder.name in finished:
                shutil.rmtree(folder, ignore_errors=True)
        try:
            partial.rmdir()  # only when empty
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _validated_existing(path: Path, protocol: Protocol) -> pd.DataFrame:
    """An existing cell file must be complete and of the same protocol; otherwise stop, touching nothing."""
    rows = results.read_cell(path)  # checksum, types and row consistency, as `results show` reads it
    complete = len(rows) == protocol.data.n_samples and (rows["cell_id"] == protocol.cell_hash()).all()
    if not complete:
        raise results.ResultsError(
            f"existing results file {path} is incomplete or from another protocol; move it away to recompute the cell"
        )
    return rows


def _read_part(path: Path, batch_indices: list[int]) -> pd.DataFrame | None:
    """A finished batch from staging, or None when absent or unusable (it is then recomputed)."""
    if not path.exists():
        return None
    try:
        frame = results.read_file(path).to_pandas()
    except results.ResultsError:
        return None
    return frame if frame["sample_index"].tolist() == batch_indices else None


def _load_batch(cell: _Cell, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N,3,H,W)`` float32 in [0,1] and labels ``(N,)`` of ``indices``, on the cell's device."""
    items = [cell.dataset[index] for index in indices]
    shapes = {tuple(img.shape) for img, _ in items}
    if len(shapes) != 1:
        raise RunError(f"dataset {cell.protocol.data.dataset!r} yields images of several sizes {sorted(shapes)} in one batch")
    x = torch.stack([img for img, _ in items]).to(device=cell.device, dtype=torch.float32)
    y = torch.tensor([label for _, label in items], dtype=torch.long, device=cell.device)
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise RunError(f"dataset {cell.protocol.data.dataset!r} yields pixels outside [0,1]")
    return x, y


def _crafting_model(cell: _Cell) -> torch.nn.Module:
    """What the attack differentiates: the classifier without test-time defenses (oblivious track),
    the whole defended pipeline (adaptive track), or the source model's classifier (transfer track)."""
    if cell.protocol.track == "transfer":
        assert cell.source is not None
        return cell.source
    return cell.classifier if cell.protocol.track == "oblivious" else cell.defended


def _in_label_space(cell: _Cell, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` as the cell's attack sees it: its logits pooled to superclasses when the cell has a map."""
    return model if cell.superclasses is None else SuperclassLogits(model, cell.superclasses)


def _measure_cell_flags(cell: _Cell, indices: list[int], seed: int) -> str:
    torch.manual_seed(seed)
    x, y = _load_batch(cell, indices)
    labels = y if cell.superclasses is None else cell.superclasses.of(y)
    found = cell_flags(cell.defended, _in_label_space(cell, _crafting_model(cell)), x, labels,
                       declared_stochastic=cell.protocol.eval_draws > 1)
    if cell.eps_sweep and cell.attack.cls.name != "none":
        found += _eps_sweep_flags(cell, x[:SWEEP_SAMPLES], y[:SWEEP_SAMPLES], seed)
    return ";".join(found)


SWEEP_SAMPLES = 16
SWEEP_FACTORS = (1, 2, 4)
SWEEP_TOLERANCE = 1  # images: one more robust image at a larger ε is within the random starts' noise


def _eps_sweep_flags(cell: _Cell, x: torch.Tensor, y: torch.Tensor, seed: int) -> list[str]:
    """``eps-not-monotone`` when the cell's attack leaves more than :data:`SWEEP_TOLERANCE` more robust
    images at a larger multiple of ε (1, 2, 4 ε; the default step-size rule at each ε when the cell
    used it, else its step scaled alike) on the first :data:`SWEEP_SAMPLES` images."""
    robust = []
    threat = cell.attack.threat
    default_rule = threat.steps > 0 and threat.step_size == default_step_size(threat.norm, threat.eps, threat.steps)
    for factor in SWEEP_FACTORS:
        eps = threat.eps * factor
        if threat.norm == "linf" and eps > 1:  # beyond the [0,1] box: the sweep ends here
            break
        # the step-size rule at the larger ε when the cell used it, else the cell's step scaled alike
        step = default_step_size(threat.norm, eps, threat.steps) if default_rule else threat.step_size * factor
        scaled = replace(threat, eps=eps, eps_label=f"{factor}x{threat.eps_label}", step_size=step)
        torch.manual_seed(seed)
        generator = torch.Generator(device=cell.device).manual_seed(seed)
        x_adv, _, _, _ = _attack(cell, x, y, replace(cell.attack, threat=scaled), generator)
        robust.append(int((predict(cell, x_adv, seed) == y).sum()))
    rises = [f for f, a, b in zip(SWEEP_FACTORS[1:], robust, robust[1:]) if b > a + SWEEP_TOLERANCE]
    return [f"eps-not-monotone=sweep {'/'.join(map(str, robust))} at {'/'.join(f'{f}x' for f in SWEEP_FACTORS[:len(robust)])}"] if rises else []


def _attack(
    cell: _Cell, x: torch.Tensor, y: torch.Tensor, attack: AttackChoice, generator: torch.Generator,
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
    counter = _PassCounter(_in_label_space(cell, _crafting_model(cell)), objective=protocol.defense_loss)
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
            warm = _PassCounter(_in_label_space(cell, cell.classifier))
            extra["start"] = attack.build().perturb(warm, x[index], labels[index], generator, **extra).detach()
            counter.passes.add(warm.passes)
        x_adv[index] = attack.build(protocol.eot_draws).perturb(counter, x[index], labels[index], generator, **extra).detach()
    return x_adv, target, attacked, counter


def predict(cell: _Cell, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Predictions ``(N,)`` of the defended pipeline for images ``x``: the majority vote of
    :func:`predict_draws`."""
    return predict_draws(cell, x, seed)[0]


def predict_draws(cell: _Cell, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
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
            predictions.append(logits.argmax(dim=1))
            votes += F.one_hot(predictions[-1], classes)
            probabilities += logits.float().softmax(dim=1)
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


def _run_batch(cell: _Cell, indices: list[int], seed: int, clean_seed: int,
               adversarials: list[torch.Tensor] | None = None) -> pd.DataFrame:
    """One batch's rows. ``seed`` drives the attack and the adversarial predictions; ``clean_seed``
    the clean predictions (it does not depend on the track or attack: :func:`_clean_identity`).
    ``adversarials``, when given, receives the batch's evaluated adversarial images (on the CPU)."""
    protocol, attack, device = cell.protocol, cell.attack, cell.device
    x, y = _load_batch(cell, indices)
    started = time.perf_counter()
    clean_pred, clean_draws = predict_draws(cell, x, clean_seed)
    torch.manual_seed(seed)  # test-time defenses draw from the global generator
    generator = torch.Generator(device=device).manual_seed(seed)
    skip = torch.tensor([i in cell.skip for i in indices], dtype=torch.bool, device=device)
    x_adv, target, attacked, crafting = _attack(cell, x, y, attack, generator, skip)
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
