"""Planning a run: a :class:`RunRequest` (what the user asked for) becomes a validated :class:`Plan`
(resolved plugins, loaded dataset splits, chosen images, one attack choice per (attack, ε)); nothing is
computed. Every name, ε and parameter is checked here, before any model runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmbench.attack import Attack, parse_attack_name
from vlmbench.paths import cache_dir
from vlmbench.config import build_config
from vlmbench.data import DatasetNotFoundError, DatasetPlugin, ZeroShotDataset
from vlmbench.defense import Defense
from vlmbench.request import (DEFAULT_ADAPTIVE_STEPS, DEFAULT_EOT_DRAWS, DEFAULT_EVAL_DRAWS, RunError,  # noqa: F401 (re-exported)
                              RunRequest)
from vlmbench.preflight import expand_datasets
from vlmbench.fingerprint import combined, source_fingerprint
from vlmbench.models import ModelPlugin
from vlmbench.resolve import resolve_model
from vlmbench.datasets.text import with_templates
from vlmbench.preflight import validate_request_options
from vlmbench.precision import check_request
from vlmbench.data import Resized, balanced_indices, dataset_labels, missing_datasets_error
from vlmbench.presets import PresetDataset, get_preset
from vlmbench.protocol import (PluginRef, ThreatModel)
from vlmbench.registry import plugins
from vlmbench.targets import UNTARGETED, SuperclassMap, parse_target, resolve_superclasses


@dataclass(frozen=True)
class AttackChoice:
    spec: str  # as written: "pgd-10"
    cls: type[Attack]
    threat: ThreatModel
    config: Any

    def build(self, eot_draws: int = 1, early_stop: bool = False) -> Attack:
        """The attack instance (constructing it validates norm support, EOT and early stop)."""
        return self.cls(self.threat, self.config, eot_draws, early_stop)


@dataclass(frozen=True)
class DefenseChoice:
    spec: str  # as written: "tecoa+ttc"
    parts: tuple[Defense, ...]
    tracks: tuple[str, ...]  # the tracks evaluated for this defense
    eot_draws: int  # on the adaptive track
    eval_draws: int = 1  # majority vote over this many forward draws (1: deterministic)

    def eot_on(self, track: str) -> int:
        """EOT draws per attack gradient on ``track``: the defense's on the adaptive track, else 1."""
        return self.eot_draws if track == "adaptive" else 1

    @property
    def test_time(self) -> str:
        """Its test-time parts, ``+``-joined (``""``: none); they key a precision's parity record."""
        return "+".join(part.name for part in self.parts if part.is_test_time())

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
        return len(self.cells())

    @property
    def n_images(self) -> int:
        """Images to evaluate over all cells (for progress bars)."""
        return sum(self.n_images_of(key) for key in self.cells())

    def n_images_of(self, key: CellKey) -> int:
        return len(self.datasets[key.dataset][2])

    def cells(self) -> list[CellKey]:
        """Every cell, in the local executor's order: model, defense, dataset, then each attack (and ε)
        on each of the defense's tracks."""
        return [CellKey(m, d, s, a, track)
                for m in range(len(self.models)) for d, defense in enumerate(self.defenses)
                for s in range(len(self.datasets)) for a in range(len(self.attacks)) for track in defense.tracks]

    def jobs(self) -> list[tuple[CellKey, ...]]:
        """The cells grouped into the units an executor schedules, in :meth:`cells` order: one cell
        each, except under ``--cascade``, where the attacks of one (model, defense, dataset, track, ε)
        form one chain that runs in order in one place (each attacks only what the earlier left)."""
        if not self.request.cascade:
            return [(key,) for key in self.cells()]
        chains: dict[tuple[Any, ...], list[CellKey]] = {}
        for key in self.cells():
            stage = (key.model, key.defense, key.dataset, key.track, self.attacks[key.attack].threat.eps_label)
            chains.setdefault(stage, []).append(key)
        return [tuple(chain) for chain in chains.values()]

    def label(self, key: CellKey) -> str:
        """``model / defense / dataset / attack ε / track``: the cell in words, for progress and plans."""
        attack = self.attacks[key.attack]
        return (f"{self.models[key.model].name} / {self.defenses[key.defense].spec} / {self.datasets[key.dataset][0].name} / "
                f"{attack.spec} {attack.threat.eps_label} / {key.track}")

    def attack_for(self, key: CellKey) -> AttackChoice:
        """The cell's attack as it runs: with the adaptive track's step budget on that track."""
        attack = self.attacks[key.attack]
        return adaptive_budget(attack, self.request) if key.track == "adaptive" else attack

    def attacked_classes(self, key: CellKey) -> int:
        """Classes of the label space the cell's attack runs in (superclasses on a superclass cell)."""
        plugin, dataset, _ = self.datasets[key.dataset]
        superclasses = self.label_spaces.get(plugin.name, ("", None))[1]
        return len(superclasses.superclasses) if superclasses is not None else dataset.num_classes

    def early_stop(self, key: CellKey) -> bool:
        """Whether the cell's attack stops on an image at the first iterate that fools the model it
        attacks. Only where that model is the model scored, deterministically: no test-time defense
        part (or the adaptive track, which attacks the whole pipeline), no random part, one EOT and
        one evaluation draw, not the transfer track; and only for attacks that honour ``early_stop``.
        Recorded in the attack's params, so it is part of the cell's identity."""
        attack, defense = self.attack_for(key), self.defenses[key.defense]
        eot = defense.eot_on(key.track)
        random = any(part.stochastic for part in defense.parts)
        return ("early_stop" in attack.cls.honours and eot == 1 and defense.eval_draws == 1 and not random
                and key.track != "transfer" and (key.track == "adaptive" or not defense.test_time))

    def estimated_passes(self, key: CellKey) -> tuple[float, float]:
        """Planning estimate of the cell's ``(forward, backward)`` model calls over all its images:
        the attack's own (:meth:`vlmbench.attack.Attack.estimated_passes`, EOT draws on the adaptive
        track), the oblivious start of an adaptive attack, and the evaluation forwards (clean and
        adversarial, each ``eval_draws`` times). A test-time defense multiplies each call by its own
        inference cost (measured per cell, recorded as ``inference_passes``). An upper bound where the
        attack stops early (:meth:`early_stop`)."""
        attack, defense = self.attack_for(key), self.defenses[key.defense]
        classes = self.attacked_classes(key)
        eot = defense.eot_on(key.track)
        forward, backward = attack.build(eot).estimated_passes(classes)
        if key.track == "adaptive" and "start" in attack.cls.honours:
            start = attack.build().estimated_passes(classes)
            forward, backward = forward + start[0], backward + start[1]
        forward += 2 * defense.eval_draws
        n = self.n_images_of(key)
        return forward * n, backward * n


@dataclass(frozen=True, order=True)
class CellKey:
    """A cell's place in its plan: indices into :attr:`Plan.models`, ``defenses``, ``datasets`` and
    ``attacks`` (one per attack and ε), and the track. The cell's identity (its protocol hash) needs the
    loaded model; the key does not, so plans, shards and schedulers use it."""

    model: int
    defense: int
    dataset: int
    attack: int
    track: str


def shard(jobs: list[tuple[CellKey, ...]], costs: list[float], index: int, count: int) -> list[tuple[CellKey, ...]]:
    """The jobs of shard ``index`` of ``count`` (1-based), in their original order.

    Longest-processing-time first: jobs sorted by decreasing cost (ties by position) each go to the
    shard with the least cost so far (ties: the lowest index). Every shard computes the same
    assignment from the same plan, so the shards are disjoint and together are the whole plan.
    """
    if not 1 <= index <= count:
        raise RunError(f"--shard {index}/{count}: write I/N with 1 ≤ I ≤ N")
    loads = [0.0] * count
    owner = [0] * len(jobs)
    for position in sorted(range(len(jobs)), key=lambda k: (-costs[k], k)):
        target = min(range(count), key=lambda s: (loads[s], s))
        owner[position] = target
        loads[target] += costs[position]
    return [job for job, who in zip(jobs, owner) if who == index - 1]


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
        source_defense=request.source_defense, precision=request.precision,
    )
    if request.output.exists() and not request.output.is_dir():
        raise RunError(f"output {request.output} exists and is not a folder")
    models = [resolve_model(spec) for spec in request.models]
    defenses = [resolve_defense(spec, request) for spec in request.defenses]
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
        source_defense = resolve_defense(request.source_defense, replace(request, defense_params=(), track="oblivious"))
    label_spaces = {plugin.name: _label_space(request, dataset, attacks) for plugin, dataset, _ in datasets}
    check_writable(request.output, "output folder")
    check_writable(cache_dir(), "cache folder (VLMBENCH_CACHE)")
    device = resolve_device(request.device)
    check_request(request.precision, device, list(request.models),  # tf32 off CUDA; any parity record at all
                  sorted({d.test_time for d in defenses}))
    return Plan(request, models, defenses, datasets, attacks, device, source, source_defense,
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


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise RunError(f"bad device {spec!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"device {spec!r} requested but CUDA is not available")
    return device


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


def resolve_defense(spec: str, request: RunRequest) -> DefenseChoice:
    registry = plugins().defenses
    names = spec.split("+")
    everyone = [part for other in request.defenses for part in other.split("+")] if spec in request.defenses else names
    parts = []
    for name in names:
        cls: type[Defense] = registry.get(name)
        # NAME.key=value reaches NAME only, even when another defense of the request is being resolved
        mine = _assignments_for(name, everyone, request.defense_params, "defense")
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
        return [(PresetDataset(name, request.split, request.n_samples), choice) for name in expand_datasets(request.datasets)]
    preset = get_preset(request.protocol)
    fixed = {"--samples": request.n_samples is not None, "--split": request.split is not None,
             "--selection": request.selection != "first"}
    clashing = [option for option, given in fixed.items() if given]
    if clashing:
        raise RunError(f"--protocol {preset.name} fixes {', '.join(clashing)}; leave them out or run without --protocol")
    wanted = set(expand_datasets(request.datasets))
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
