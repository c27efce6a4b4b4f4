"""Executing a plan: load each model, apply each defense, build each dataset's zero-shot pipeline,
describe every cell's protocol and run the cell (:mod:`vlmbench.cell`).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
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
from vlmbench.batch import Cell, attacked_model, label_space_of
from vlmbench.batch_size import BatchChoice, MemoryMeter, OutputIndex, choose, measured, meter_for
from vlmbench import results
from vlmbench.cell import CellOutcome, cell_filename, remove_leftovers, run_cell
from vlmbench.errors import VlmbenchError
from vlmbench.plan import CellKey, Plan, shard
from vlmbench.precision import hardware_name, resolve as resolve_precision, running_in
from vlmbench.targets import SuperclassMap


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
        "device": hardware_name(device),  # the GPU's name, else the CPU's model name
        "torch_threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
    }




def execute(
    plan_: Plan,
    on_cell: Callable[[Protocol, int], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    jobs: list[tuple[CellKey, ...]] | None = None,
) -> list[CellOutcome]:
    """Run the cells of ``plan_`` in this process (the local executor): every job of
    :meth:`Plan.jobs`, or only ``jobs`` (a shard's); ``on_cell(protocol, n)`` announces a cell,
    ``on_advance(k)`` reports images done, ``on_wait(message)`` that a cell is being computed by another
    process."""
    remove_leftovers(plan_.request.output)
    bench = Workbench(plan_)
    try:
        return [outcome for job in (plan_.jobs() if jobs is None else jobs)
                for outcome in bench.run_job(job, on_cell, on_advance, on_wait)]
    finally:
        remove_leftovers(plan_.request.output)


@dataclass
class _Setting:
    """What every cell of one (model, defense, dataset) shares: pipelines, label space, data record."""

    model: ClipModel  # after training-time defenses
    original: ClipModel
    classifier: ZeroShotClassifier
    defended: torch.nn.Module
    source_classifier: torch.nn.Module | None
    superclasses: SuperclassMap | None
    target_mode: str
    data_spec: DataSpec


def use_fp32() -> None:
    """Make the ``fp32`` that every row records true on CUDA too: torch runs cuDNN convolutions in TF32 by
    default (ResNet towers would silently attack in TF32), and a user or library may have switched TF32
    matmuls on. A faster precision will be used only where its parity with fp32 has been measured."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class NotTrained(VlmbenchError):
    """A training-time defense has no cached checkpoint and this workbench may not train."""


class Workbench:
    """One executor process's loaded state, kept between cells: the models, each model after each
    defense, and each (model, defense, dataset)'s zero-shot pipeline (its text embeddings). A cell is
    identified by its :class:`~vlmbench.plan.CellKey`; :meth:`protocol` describes it (its hash names
    its file) and :meth:`run_job` computes it. The most recent ``keep`` models and settings stay loaded.

    ``train=False`` (the planner) refuses to fine-tune: a training-time defense without a cached
    checkpoint raises :class:`NotTrained` instead of training for hours.
    """

    def __init__(self, plan_: Plan, train: bool = True, keep: int = 2, meter: MemoryMeter | None = None) -> None:
        self.plan, self.train, self.keep = plan_, train, keep
        self.meter = meter if meter is not None else meter_for(plan_.device)  # chooses GPU batch sizes
        use_fp32()
        self.meta = run_metadata(plan_.device)
        self._originals: OrderedDict[int, ClipModel] = OrderedDict()
        self._adapted: OrderedDict[tuple[int, int], tuple[ClipModel, DefenseContext]] = OrderedDict()
        self._settings: OrderedDict[tuple[int, int, int], _Setting] = OrderedDict()
        self._source: tuple[ClipModel | None, DefenseContext | None, tuple[Defense, ...]] | None = None
        self._precisions: dict[tuple[int, int], tuple[str, dict[str, Any] | None]] = {}
        self._batch_sizes: dict[tuple[CellKey, tuple[str, ...], bool], BatchChoice] = {}
        self._held = OutputIndex(plan_.request.output)
        self._measured: dict[tuple[int, int, int], BatchChoice] = {}

    def _remember(self, cache: OrderedDict, key: Any, make: Callable[[], Any]) -> Any:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        value = make()
        cache[key] = value
        while len(cache) > self.keep:
            cache.popitem(last=False)
        return value

    def original(self, m: int) -> ClipModel:
        plan_ = self.plan
        return self._remember(self._originals, m, lambda: plan_.models[m].load(plan_.device, download=plan_.request.download))

    def adapted(self, m: int, d: int) -> tuple[ClipModel, DefenseContext]:
        """Model ``m`` after defense ``d``'s training-time parts, and the defense context."""
        def make() -> tuple[ClipModel, DefenseContext]:
            request, original = self.plan.request, self.original(m)
            context = DefenseContext(cache_dir() / "defenses", self.plan.device, request.seed, request.data_root, original)
            model = original
            for part in self.plan.defenses[d].parts:
                if not self.train and part.kind() == "training" and not part.is_cached(model, context):
                    raise NotTrained(f"{part.name} is not trained for {self.plan.models[m].name} in this cache")
                model = part.adapt_model(model, context)
            return model, context
        return self._remember(self._adapted, (m, d), make)

    def source(self) -> tuple[ClipModel | None, DefenseContext | None, tuple[Defense, ...]]:
        if self._source is None:
            self._source = _defended_source(self.plan)
        return self._source

    def setting(self, m: int, d: int, s: int) -> _Setting:
        def make() -> _Setting:
            plan_ = self.plan
            model, context = self.adapted(m, d)
            defense = plan_.defenses[d]
            dataset_plugin, dataset, indices = plan_.datasets[s]
            data_choice = plan_.data_choices[dataset_plugin.name]
            classifier, defended = defended_pipeline(model, defense.parts, dataset, context, plan_.device)
            source, source_context, source_wrappers = self.source()
            source_classifier = None
            if source is not None:
                source_classifier = ZeroShotClassifier.build(source, dataset.classnames, dataset.templates).to(plan_.device)
                for part in source_wrappers:
                    source_classifier = part.wrap(source_classifier, source_context)  # type: ignore[arg-type]
            target_mode, superclasses = plan_.label_spaces[dataset_plugin.name]
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
            return _Setting(model, self.original(m), classifier, defended, source_classifier, superclasses, target_mode,
                            data_spec)
        return self._remember(self._settings, (m, d, s), make)

    def protocol(self, key: CellKey, cascade_after: tuple[str, ...] = ()) -> Protocol:
        """The cell's full protocol record (its hash is the cell id and names its file), at the batch size
        :meth:`batch_size` chooses without claiming it (what the planner shows; a run claims its own)."""
        at = self._protocol_at(key, cascade_after)
        return at(self.batch_size(key, cascade_after, at).size)

    def batch_size(self, key: CellKey, cascade_after: tuple[str, ...], at: Callable[[int], Protocol],
                   claim: bool = False) -> BatchChoice:
        """The cell's batch size: the one given, else :func:`vlmbench.batch_size.choose`'s (an existing
        cell's, the CPU's default, or measured from free GPU memory), decided once per workbench;
        ``claim``: a run's choice, which claims the size it chose in the output folder."""
        slot = (key, cascade_after, claim)  # a run's choice is its own, made under the lock and claimed
        if slot not in self._batch_sizes:
            measure = None if self.meter is None else (lambda: self._measured_batch_size(key))
            self._batch_sizes[slot] = choose(self.plan.request.batch_size, at, self.plan.request.output, self._held,
                                             measure, claim)
        return self._batch_sizes[slot]

    def _measured_batch_size(self, key: CellKey) -> BatchChoice:
        """The batch size of the cell's setting from free memory (:func:`vlmbench.batch_size.measured`),
        for the heaviest track this plan runs the setting on; measured once per setting."""
        setting_key = (key.model, key.defense, key.dataset)
        if setting_key not in self._measured:
            plan_, setting = self.plan, self.setting(*setting_key)
            assert self.meter is not None
            defense = plan_.defenses[key.defense]
            tracks = sorted({k.track for k in plan_.cells() if (k.model, k.defense, k.dataset) == setting_key})
            attacked = {track: (label_space_of(attacked_model(track, setting.classifier, setting.defended,
                                                              setting.source_classifier), setting.superclasses),
                                defense.eot_on(track)) for track in tracks}
            _, dataset, indices = plan_.datasets[key.dataset]
            image = dataset[indices[0]][0].to(plan_.device, torch.float32)
            what = f"{plan_.models[key.model].name} / {defense.spec} / {plan_.datasets[key.dataset][0].name}"
            with running_in(self.precision(key)[0], plan_.device):
                self._measured[setting_key] = measured(self.meter, attacked, setting.defended, image, len(indices), what)
        return self._measured[setting_key]

    def _protocol_at(self, key: CellKey, cascade_after: tuple[str, ...]) -> Callable[[int], Protocol]:
        """The cell's protocol as a function of its batch size."""
        plan_ = self.plan
        setting = self.setting(key.model, key.defense, key.dataset)
        defense, attack, track = plan_.defenses[key.defense], plan_.attack_for(key), key.track
        eot = defense.eot_on(track)
        # the label space the attack runs in: its parameters (AutoAttack's sub-attacks and target counts)
        # are recorded as they take effect there, on the superclasses of a superclass cell
        return lambda batch_size: Protocol(
            model=PluginRef(plan_.models[key.model].name, setting.original.fingerprint),
            defense=defense.ref(),
            attack=PluginRef(attack.spec, attack.cls.version,
                             attack.build(eot, plan_.early_stop(key)).params(plan_.attacked_classes(key)),
                             source_fingerprint(attack.cls)),
            threat=attack.threat,
            data=setting.data_spec,
            seed=plan_.request.seed,
            batch_size=batch_size,
            precision=self.precision(key)[0],
            track=track,  # type: ignore[arg-type]
            eot_draws=eot,
            defense_loss=(track == "adaptive" and provides_objective(setting.defended)
                          and "defense_loss" in attack.cls.honours),
            start="oblivious" if track == "adaptive" and "start" in attack.cls.honours else "attack",
            source=_source_ref(plan_, self.source()[0]),
            target=setting.target_mode,
            superclasses=setting.superclasses.record() if setting.superclasses is not None else None,
            cascade_after=cascade_after,
            eval_draws=defense.eval_draws,
            bpda=defense.non_differentiable if track == "adaptive" else (),
            versions=self.meta["versions"],
        )

    def precision(self, key: CellKey) -> tuple[str, dict[str, Any] | None]:
        """The precision the cell runs in and the parity record that allows it (:func:`vlmbench.precision.resolve`:
        the weights before training-time defenses and the defense's test-time parts key the record). Resolved
        once per (model, defense) in this workbench, so a cell's protocol and its run metadata agree."""
        slot = (key.model, key.defense)
        if slot not in self._precisions:
            plan_ = self.plan
            self._precisions[slot] = resolve_precision(plan_.request.precision, plan_.device, plan_.models[key.model].name,
                                                       self.original(key.model).fingerprint,
                                                       plan_.defenses[key.defense].test_time)
        return self._precisions[slot]

    def run_job(self, job: tuple[CellKey, ...], on_cell: Callable[[Protocol, int], None] | None = None,
                on_advance: Callable[[int], None] | None = None,
                on_wait: Callable[[str], None] | None = None) -> list[CellOutcome]:
        """Compute (or read) the cells of one job in order; a cascade chain passes on what each attack broke."""
        plan_, outcomes = self.plan, []
        broken: dict[int, int] = {}  # cascade: sample index → adv_pred of an earlier attack of the chain
        earlier: list[str] = []
        for key in job:
            setting = self.setting(key.model, key.defense, key.dataset)
            defense, attack = plan_.defenses[key.defense], plan_.attack_for(key)
            at = self._protocol_at(key, tuple(earlier))
            chosen = self.batch_size(key, tuple(earlier), at, claim=True)
            protocol = at(chosen.size)
            indices = plan_.datasets[key.dataset][2]
            if on_cell:
                on_cell(protocol, len(indices))
            cell = Cell(protocol, setting.model, attack, setting.classifier, setting.defended, plan_.datasets[key.dataset][1],
                        indices, plan_.device, setting.source_classifier, setting.superclasses, dict(broken),
                        plan_.request.eps_sweep, defense.parts, setting.original,
                        plan_.request.save_adversarials and attack.cls.name != "none")
            parity = self.precision(key)[1]
            meta = {**self.meta, "batch_size_choice": chosen.record()}
            if parity is not None:
                meta["precision_parity"] = parity
            outcome = run_cell(cell, plan_.request.output, meta, on_advance, on_wait)
            outcomes.append(outcome)
            if plan_.request.cascade:
                earlier.append(attack.spec)
                done = outcome.rows[~outcome.rows["robust"]]
                broken.update(zip(done["sample_index"].tolist(), done["adv_pred"].tolist()))
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


# ---------------------------------------------------------------------------------------------- planning


def job_cost(plan_: Plan, job: tuple[CellKey, ...]) -> float:
    """A job's estimated cost in model calls, a backward counted as two forwards (longest-first
    scheduling and shard balancing use it; its unit cancels)."""
    return sum(f + 2 * b for f, b in (plan_.estimated_passes(key) for key in job))


def shard_work(plans: list[Plan], work: list[tuple[int, tuple[CellKey, ...]]], index: int, count: int
               ) -> list[tuple[int, tuple[CellKey, ...]]]:
    """The ``(plan index, job)`` items of ``--shard index/count``: :func:`vlmbench.plan.shard` balanced on
    :func:`job_cost`, over the jobs of every plan of a run (a matrix's entries together)."""
    return shard(work, [job_cost(plans[i], job) for i, job in work], index, count)


@dataclass(frozen=True)
class CellPreview:
    """What running one cell would do (``vlmbench plan``): its status in the output folder and cost.

    ``status``: ``complete`` (its file exists), ``partial`` (``batches_done`` of ``batches`` staged),
    ``pending``, or ``needs training`` (a training-time defense is not in the checkpoint cache; the
    cell id is unknown until it is trained, so its status is not looked up).
    """

    key: CellKey
    label: str
    images: int
    forward: float  # estimated model calls over the cell's images
    backward: float
    status: str
    batches_done: int = 0
    batches: int = 0
    cell_id: str | None = None
    batch_size: int | None = None  # unknown until trained (its id is), when vlmbench chooses it
    precision: str = "fp32"  # what the cell runs in (--precision auto resolved; vlmbench.precision)


def preview(plan_: Plan, jobs: list[tuple[CellKey, ...]] | None = None) -> list[CellPreview]:
    """The cells of ``jobs`` (default: all) with their status in the output folder and estimated cost;
    loads the models (for their fingerprints, part of each cell's id) but trains and attacks nothing."""
    bench = Workbench(plan_, train=False)
    output = plan_.request.output
    previews = []
    for job in plan_.jobs() if jobs is None else jobs:
        earlier: list[str] = []
        for key in job:
            n = plan_.n_images_of(key)
            forward, backward = plan_.estimated_passes(key)
            base = dict(key=key, label=plan_.label(key), images=n, forward=forward, backward=backward,
                        precision=bench.precision(key)[0])
            try:
                protocol = bench.protocol(key, tuple(earlier))
            except NotTrained:
                previews.append(CellPreview(**base, status="needs training"))  # type: ignore[arg-type]
                continue
            finally:
                if plan_.request.cascade:
                    earlier.append(plan_.attacks[key.attack].spec)
            cell_id, batches = protocol.cell_hash(), -(-n // protocol.batch_size)
            if (output / cell_filename(protocol)).exists():
                status, done = "complete", batches
            else:
                staged = output / results.PARTIAL_DIR / cell_id
                done = len(list(staged.glob("*.parquet"))) if staged.is_dir() else 0
                status = "partial" if done else "pending"
            previews.append(CellPreview(**base, status=status, batches_done=done, batches=batches,  # type: ignore[arg-type]
                                        cell_id=cell_id, batch_size=protocol.batch_size))
    return previews


def measured_seconds_per_call(output: Path, model: str, device: str) -> tuple[float, int] | None:
    """``(seconds per model call, cells measured)`` from the finished cells of ``model`` in ``output``
    that ran on ``device`` (run metadata): their batches' wall time over their model calls (attack
    forwards and backwards, and the evaluation forwards). None when no such cell exists."""
    seconds = calls = 0.0
    cells = 0
    for path in sorted(output.glob("*.parquet")) if output.is_dir() else []:
        try:
            if results.run_metadata_of(path).get("device") != device:
                continue
            rows = results.read_file(path).select(["model", "time_s", "forward_passes", "backward_passes", "eval_draws"]).to_pandas()
        except (results.ResultsError, KeyError, ValueError):
            continue
        if rows.empty or rows["model"].iloc[0] != model:
            continue
        seconds += float(rows["time_s"].sum())
        calls += float((rows["forward_passes"] + 2 * rows["backward_passes"] + 2 * rows["eval_draws"]).sum())
        cells += 1
    return (seconds / calls, cells) if calls > 0 else None
