"""``vlmbench check``: does a defense (or an attack) keep vlmbench's contracts, and is it evaluated soundly?

A robust accuracy is only as good as the attack behind it, and the field's history is of defenses whose
numbers fell once someone attacked them properly (BPDA on TTC, CLIPure's vanishing gradients, PGD vs
AutoAttack gaps). This module runs the checks a reviewer applies before trusting such a number, on the
embedded world (offline, minutes on a CPU), and reports each as ``pass``, ``warn``, ``fail`` or ``skip``
(does not apply), with what was measured and the fix. Each check is documented in docs/checks.md under
its id, with its source.

**Contract** (in-process, on one batch): :data:`CHECKS` ``declarations``, ``output-contract``,
``randomness``, ``bpda-declared``, ``gradients``, ``bpda-needed``, ``inference-cost``,
``training-cache`` for defenses; ``declarations``, ``attack-contract``, ``attack-randomness`` for
attacks.

**Evaluation soundness** (cells computed by the runner, compared per example): ``eps-sweep``,
``convergence``, ``whitebox-vs-transfer``, ``transfer-vs-noise``, ``whitebox-vs-noise``,
``square-vs-whitebox``, ``adaptive-vs-oblivious``, ``targeted``, and ``binarization`` (in-process).

A per-example order check ("the white-box attack is at least as strong as transfer") counts the images
the weaker attack fooled and the stronger one did not: none is a pass, up to :func:`tolerance` a warning
(the noise of random starts and random defenses), more a failure.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
import torch.nn.functional as F

from vlmbench.errors import VlmbenchError

Status = Literal["pass", "warn", "fail", "skip"]
DOCS = "docs/checks.md"


@dataclass(frozen=True)
class CheckInfo:
    """A check's title, group (``contract`` or ``soundness``) and source (paper or practice it comes from)."""

    title: str
    group: str
    source: str


CHECKS: dict[str, CheckInfo] = {
    "declarations": CheckInfo("version and source fingerprint", "contract", "vlmbench's plugin contract (docs/plugins.md)"),
    "output-contract": CheckInfo("(N,3,H,W) in [0,1] → finite (N,C) logits, input untouched, batch-independent", "contract",
                                 "vlmbench's defense contract (a prediction must not depend on its batch)"),
    "randomness": CheckInfo("declared stochastic matches the measured forward randomness", "contract",
                            "Athalye et al. 2018 (EOT); AutoAttack's randomness check (Croce & Hein 2020)"),
    "bpda-declared": CheckInfo("declared non-differentiable steps run through bpda(), and only those", "contract",
                               "Athalye et al. 2018 (BPDA)"),
    "gradients": CheckInfo("input gradients through the defense are finite, non-zero and not vanishing", "contract",
                           "Athalye et al. 2018 (obfuscated gradients); Croce et al. 2022 (CLIPure-like masking)"),
    "bpda-needed": CheckInfo("each declared step really lacks a useful gradient", "contract", "Athalye et al. 2018 (BPDA)"),
    "inference-cost": CheckInfo("inference cost is counted (image-encoder passes per image)", "contract",
                                "Croce et al. 2022 (test-time defenses must report their cost)"),
    "training-cache": CheckInfo("trained weights are cached, reused, and keyed by the config", "contract",
                                "vlmbench's defense contract (adapt_model)"),
    "attack-contract": CheckInfo("adversarials stay in the ε-ball and [0,1], with the input's shape and dtype", "contract",
                                 "vlmbench's attack contract; RobustBench's checks"),
    "attack-randomness": CheckInfo("the attack draws only from the generator it is given", "contract",
                                   "vlmbench's attack contract (reproducible cells)"),
    "eps-sweep": CheckInfo("robust accuracy falls with ε and reaches about 0% at a large ε", "soundness",
                           "Carlini et al. 2019 (checklist: unbounded attacks must succeed)"),
    "convergence": CheckInfo("4× the steps and 2 restarts do not lower robust accuracy beyond a tolerance", "soundness",
                             "Carlini et al. 2019 (checklist); Mosbach et al. 2018"),
    "whitebox-vs-transfer": CheckInfo("the white-box attack is at least as strong as transfer from the undefended model",
                                      "soundness", "Carlini et al. 2019 (checklist); Athalye et al. 2018"),
    "transfer-vs-noise": CheckInfo("transfer from the undefended model is at least as strong as random noise", "soundness",
                                   "Carlini et al. 2019 (checklist)"),
    "whitebox-vs-noise": CheckInfo("the attack is at least as strong as random noise in the ε-ball", "soundness",
                                   "Carlini et al. 2019 (checklist)"),
    "square-vs-whitebox": CheckInfo("the black-box Square attack does not beat the white-box attack", "soundness",
                                    "Croce & Hein 2020 (AutoAttack's flag); Carlini et al. 2019 (checklist)"),
    "adaptive-vs-oblivious": CheckInfo("the adaptive attack is at least as strong as the oblivious one", "soundness",
                                       "Tramèr et al. 2020; Croce et al. 2022"),
    "targeted": CheckInfo("targeted and untargeted attacks both run; untargeted is not weaker", "soundness",
                          "Carlini et al. 2019 (checklist)"),
    "binarization": CheckInfo("the attack finds a known adversarial example of a linear head on the features", "soundness",
                              "Zimmermann et al., NeurIPS 2022 (binarization test)"),
}


class CheckError(VlmbenchError):
    """The check itself cannot run (bad settings, an unloadable plugin): one line."""


@dataclass
class Finding:
    """The outcome of one check: ``status``, what was measured (``summary``), the fix (for warn/fail) and
    numbers (``details``: JSON-able)."""

    id: str
    status: Status
    summary: str
    fix: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        info = CHECKS[self.id]
        return {"id": self.id, "group": info.group, "title": info.title, "status": self.status, "summary": self.summary,
                "fix": self.fix, "source": info.source, "docs": f"{DOCS}#{self.id}", "details": self.details}


@dataclass(frozen=True)
class CheckSettings:
    """How hard the check attacks. The defaults take a few minutes per defense on 2 CPU cores.

    Attributes:
        model, dataset: where to evaluate (world-vit on world-shape: offline).
        samples: images (class-balanced, seeded).
        eps: the check's radius (ℓ∞; the world standard's 1/255); the sweep runs at 1, 4, 16 and 64 times it.
        steps: steps of the white-box attack (PGD); ``convergence`` runs 4× as many with 2 restarts.
        eot_draws, eval_draws: EOT draws and scoring draws for a stochastic defense.
        square_steps: Square's budget (50 queries per step, as in AutoAttack's suites).
        binarization_samples, inner_points: images of the binarization test (None: 8, or all the
            images if fewer), and the points of each image's inner ball.
        smoke: evaluate a training-time defense with its ``smoke_config()`` (fast, barely trained)
            instead of its ``Config()``.
        seed: base seed.
        only: run just these checks (ids of :data:`CHECKS`); empty: all that apply to the plugin's kind.
    """

    model: str = "world-vit"
    dataset: str = "world-shape"
    samples: int = 16
    eps: str = "1/255"
    steps: int = 10
    eot_draws: int = 5
    eval_draws: int = 5
    square_steps: int = 10
    binarization_samples: int | None = None
    inner_points: int = 10
    smoke: bool = False
    seed: int = 0
    only: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.binarization_samples is None:
            object.__setattr__(self, "binarization_samples", min(8, self.samples))
        for name in ("samples", "steps", "eot_draws", "eval_draws", "square_steps", "binarization_samples", "inner_points"):
            if getattr(self, name) < 1:
                raise CheckError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.binarization_samples > self.samples:
            raise CheckError(f"--binarization-samples ({self.binarization_samples}) exceeds --samples ({self.samples})")

    def eps_value(self) -> Fraction:
        try:
            value = Fraction(self.eps)
        except (ValueError, ZeroDivisionError):
            raise CheckError(f"bad --eps {self.eps!r}: expected a fraction such as 4/255 or a float") from None
        if not 0 < value * SWEEP_FACTORS[-1] <= 1:
            raise CheckError(f"--eps {self.eps} must be in (0, 1/{SWEEP_FACTORS[-1]}]: the sweep runs to "
                             f"{SWEEP_FACTORS[-1]} ε and an ℓ∞ ε stops at 1")
        return value


@dataclass
class Report:
    """What ``vlmbench check`` prints and writes as JSON."""

    kind: str
    name: str
    version: str
    fingerprint: str
    settings: CheckSettings
    findings: list[Finding]
    seconds: float = 0.0

    @property
    def status(self) -> Status:
        statuses = {f.status for f in self.findings}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in ("pass", "warn", "fail", "skip")}

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.version, "fingerprint": self.fingerprint,
                "status": self.status, "counts": self.counts(), "seconds": round(self.seconds, 1),
                "settings": dataclasses.asdict(self.settings), "checks": [f.record() for f in self.findings]}


# ---------------------------------------------------------------------------------------------- rules

def tolerance(n: int) -> int:
    """Images one attack may lose to another before an order check fails: 5% of ``n``, at least 1."""
    return max(1, round(0.05 * n))


def order_finding(check: str, strong: str, weak: str, strong_rows: pd.DataFrame, weak_rows: pd.DataFrame,
                  fix: str) -> Finding:
    """``strong`` must fool every image ``weak`` fools (per example, on the same images): the images it
    missed are counted; none passes, up to :func:`tolerance` warns, more fails."""
    robust_strong = strong_rows.set_index("sample_index")["robust"]
    robust_weak = weak_rows.set_index("sample_index")["robust"].reindex(robust_strong.index)
    missed = sorted(int(i) for i in robust_strong.index[robust_strong & ~robust_weak.astype(bool)])
    n = len(robust_strong)
    details = {strong: _pct(robust_strong.mean()), weak: _pct(robust_weak.mean()), "missed": missed, "n": n,
               "tolerance": tolerance(n)}
    summary = (f"robust {strong} {details[strong]}% vs {weak} {details[weak]}%; {len(missed)} of {n} images fooled by "
               f"{weak} but not by {strong}")
    if not missed:
        return Finding(check, "pass", summary, details=details)
    status: Status = "warn" if len(missed) <= tolerance(n) else "fail"
    return Finding(check, status, summary + f" (indices {_short(missed)})", fix, details)


def _pct(value: float) -> float:
    return round(100 * float(value), 1)


def _short(values: Sequence[int], most: int = 8) -> str:
    shown = ", ".join(map(str, values[:most]))
    return shown + (f", … (+{len(values) - most})" if len(values) > most else "")


# ------------------------------------------------------------------------------------------- running

@dataclass
class _Setup:
    """The defended pipeline on the check's images."""

    original: Any  # ClipModel before training-time defenses
    model: Any  # after them
    parts: tuple[Any, ...]
    classifier: torch.nn.Module
    defended: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    indices: list[int]
    device: torch.device
    context: Any


class _Cells:
    """Runs the soundness cells through the runner into one work folder and returns their rows."""

    def __init__(self, settings: CheckSettings, workdir: Path, defense: str, defense_params: tuple[str, ...],
                 device: str, progress: Callable[[str], None]) -> None:
        self.settings, self.workdir, self.defense, self.defense_params = settings, workdir, defense, defense_params
        self.device, self.progress = device, progress
        self._done: dict[str, dict[str, pd.DataFrame]] = {}

    def request(self, attack: str, eps: Sequence[str], **changes: Any) -> Any:
        from vlmbench.request import RunRequest

        s = self.settings
        base = RunRequest(models=(s.model,), defenses=(self.defense,), attacks=(attack,), datasets=(s.dataset,),
                          eps=tuple(eps), n_samples=s.samples, selection="balanced", seed=s.seed, output=self.workdir,
                          defense_params=self.defense_params, eot_draws=s.eot_draws, eval_draws=s.eval_draws,
                          adaptive_steps=0, eps_sweep=False, device=self.device, track="oblivious")
        return replace(base, **changes)

    def run(self, label: str, request: Any) -> dict[str, pd.DataFrame]:
        """ε as requested → rows of the request's one attack on its one track (cells in ε order)."""
        from vlmbench.runner import execute, plan

        if label in self._done:
            return self._done[label]
        self.progress(label)
        outcomes = execute(plan(request))
        if len(outcomes) != len(request.eps):
            raise CheckError(f"{label}: expected {len(request.eps)} cells, the runner made {len(outcomes)}")
        self._done[label] = {eps: outcome.rows for eps, outcome in zip(request.eps, outcomes)}
        return self._done[label]


DEFENSE_CHECKS = ("declarations", "output-contract", "randomness", "bpda-declared", "gradients", "bpda-needed",
                  "inference-cost", "training-cache", "eps-sweep", "convergence", "whitebox-vs-transfer",
                  "transfer-vs-noise", "square-vs-whitebox", "adaptive-vs-oblivious", "targeted", "binarization")
ATTACK_CHECKS = ("declarations", "attack-contract", "attack-randomness", "eps-sweep", "convergence", "whitebox-vs-noise",
                 "targeted", "binarization")


def _selected(kind: str, every: tuple[str, ...], only: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [c for c in only if c not in every]
    if unknown:
        raise CheckError(f"no {kind} check {unknown[0]!r}; the {kind} checks: {', '.join(every)}")
    return tuple(c for c in every if not only or c in only)


def check_defense(name: str, settings: CheckSettings = CheckSettings(), device: str = "auto",
                  workdir: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Run the defense checks (all, or ``settings.only``) on ``name``: a registered or ``--plugin``
    defense, or a ``+`` composition."""
    from vlmbench.fingerprint import combined, source_fingerprint
    from vlmbench.registry import plugins

    started = time.perf_counter()
    wanted = _selected("defense", DEFENSE_CHECKS, settings.only)
    classes = [plugins().defenses.get(part) for part in name.split("+")]
    params = _smoke_params(classes) if settings.smoke else ()
    test_time, stochastic = any(c.is_test_time() for c in classes), any(c.stochastic for c in classes)
    with _workdir(workdir) as folder:
        cells = _Cells(settings, folder, name, params, device, progress)
        progress("contract checks")
        setup = _setup(cells)
        checks: dict[str, Callable[[], list[Finding]]] = {
            "declarations": lambda: [_declarations(classes)],
            "output-contract": lambda: [_output_contract(setup, name)],
            "randomness": lambda: [_randomness(setup, stochastic)],
            "bpda-declared": lambda: _bpda_and_gradients(setup),  # these three share one traced pass
            "inference-cost": lambda: [_inference_cost(setup, name)],
            "training-cache": lambda: [_training_cache(classes, setup, progress)],
            **_defense_soundness(cells, setup, test_time, stochastic),
        }
        checks["gradients"] = checks["bpda-needed"] = checks["bpda-declared"]
        findings = _run_checks(checks, wanted)
    return Report("defense", name, "+".join(c.version for c in classes), combined([source_fingerprint(c) for c in classes]),
                  settings, findings, time.perf_counter() - started)


def check_attack(name: str, settings: CheckSettings = CheckSettings(), device: str = "auto",
                 workdir: Path | None = None, progress: Callable[[str], None] = lambda _: None) -> Report:
    """Run the attack checks (all, or ``settings.only``) on ``name`` (registered or ``--plugin``),
    against the undefended model."""
    from vlmbench.fingerprint import source_fingerprint
    from vlmbench.registry import plugins

    started = time.perf_counter()
    wanted = _selected("attack", ATTACK_CHECKS, settings.only)
    cls = plugins().attacks.get(name)
    if cls.default_steps == 0:
        raise CheckError(f"attack {name!r} takes no steps (it only reports clean accuracy): there is nothing to check")
    with _workdir(workdir) as folder:
        cells = _Cells(settings, folder, "none", (), device, progress)
        progress("contract checks")
        setup = _setup(cells)
        checks: dict[str, Callable[[], list[Finding]]] = {
            "declarations": lambda: [_declarations([cls])],
            "attack-contract": lambda: _attack_contract(cls, setup, settings),
            **_attack_soundness(cls, cells, setup),
        }
        checks["attack-randomness"] = checks["attack-contract"]
        findings = _run_checks(checks, wanted)
    return Report("attack", name, cls.version, source_fingerprint(cls), settings, findings, time.perf_counter() - started)


def _run_checks(checks: dict[str, Callable[[], list[Finding]]], wanted: tuple[str, ...]) -> list[Finding]:
    """The findings of the ``wanted`` checks, in that order; a function that yields several findings runs once."""
    done: dict[str, Finding] = {}
    for check in wanted:
        if check not in done:
            for finding in checks[check]():
                done.setdefault(finding.id, finding)
    return [done[check] for check in wanted]


@contextmanager
def _workdir(folder: Path | None) -> Iterator[Path]:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="vlmbench-check-") as tmp:
        yield Path(tmp)


def _smoke_params(classes: Sequence[type]) -> tuple[str, ...]:
    """``--defense-param`` assignments for each part's ``smoke_config()`` (fields differing from ``Config()``)."""
    out = []
    for cls in classes:
        smoke, default = dataclasses.asdict(cls.smoke_config()), dataclasses.asdict(cls.Config())
        prefix = f"{cls.name}." if len(classes) > 1 else ""
        out += [f"{prefix}{key}={value}" for key, value in smoke.items() if value != default[key]]
    return tuple(out)


def _setup(cells: _Cells) -> _Setup:
    """The defended pipeline on the check's images, built as the runner builds a cell's."""
    from vlmbench.defense import DefenseContext
    from vlmbench.paths import cache_dir
    from vlmbench.execute import defended_pipeline
    from vlmbench.plan import plan

    p = plan(cells.request("none", [cells.settings.eps]))
    defense, (_, dataset, indices) = p.defenses[0], p.datasets[0]
    original = p.models[0].load(p.device)
    context = DefenseContext(cache_dir() / "defenses", p.device, cells.settings.seed, None, original)
    model = original
    for part in defense.parts:
        model = part.adapt_model(model, context)
    classifier, defended = defended_pipeline(model, defense.parts, dataset, context, p.device)
    items = [dataset[i] for i in indices]
    x = torch.stack([img for img, _ in items]).to(p.device, torch.float32)
    y = torch.tensor([label for _, label in items], device=p.device)
    return _Setup(original, model, defense.parts, classifier, defended, x, y, indices, p.device, context)


# ------------------------------------------------------------------------------------------ contract

def _declarations(classes: Sequence[type]) -> Finding:
    from vlmbench.fingerprint import source_fingerprint

    problems, prints = [], []
    for cls in classes:
        version = getattr(cls, "version", None)
        if not isinstance(version, str) or not version.strip():
            problems.append(f"{cls.name}: version is {version!r}")
        fp = source_fingerprint(cls)
        prints.append(fp)
        if fp.startswith(("dist:", "module:")):
            problems.append(f"{cls.name}: no source file to fingerprint (recorded as {fp})")
    summary = f"version {'+'.join(str(getattr(c, 'version', None)) for c in classes)}, fingerprint {'+'.join(prints)}"
    if problems:
        return Finding("declarations", "fail" if any("version" in p for p in problems) else "warn",
                       summary + "; " + "; ".join(problems),
                       "set version = \"1\" (bump it when results change) and ship the plugin as a .py source file, "
                       "so edits change its fingerprint and never reuse old results",
                       {"fingerprints": prints})
    return Finding("declarations", "pass", summary, details={"fingerprints": prints})


def _output_contract(setup: _Setup, name: str) -> Finding:
    x, n, classes = setup.x, len(setup.x), setup.classifier.num_classes
    kept = x.clone()
    torch.manual_seed(0)
    with torch.no_grad():
        logits = setup.defended(x)
    from vlmbench.batch import check_logits
    from vlmbench.plan import RunError

    try:  # the runner's own refusal of a bad shape or non-finite logits
        check_logits(logits, n, classes, name)
    except RunError as exc:
        return Finding("output-contract", "fail", str(exc),
                       "wrap() must return a module mapping (N,3,H,W) pixels in [0,1] to finite logits (N,C)")
    problems = []
    if not logits.is_floating_point():
        problems.append(f"logits of dtype {logits.dtype}")
    if not torch.equal(x, kept):
        problems.append("the input images were modified in place")
    if problems:
        return Finding("output-contract", "fail", "; ".join(problems),
                       "return finite float logits and never write into the input tensor (clone it first)")
    torch.manual_seed(0)
    with torch.no_grad():
        alone = torch.cat([setup.defended(x[i:i + 1]) for i in range(min(n, 4))])
    differs = float((F.normalize(alone, dim=1) - F.normalize(logits[:len(alone)], dim=1)).abs().max())
    summary = f"({n}, {classes}) finite float logits; input untouched"
    stochastic = any(p.stochastic for p in setup.parts)
    if differs > 1e-3 and not stochastic:
        return Finding("output-contract", "warn", summary + f"; an image's logits depend on the rest of its batch "
                       f"(max difference {differs:.3g})",
                       "do not use batch statistics (batch norm in train mode, batch-wide normalisation): a result "
                       "must not depend on the batch size or on which images share a batch", {"batch_dependence": differs})
    return Finding("output-contract", "pass", summary, details={"batch_dependence": differs})


def _normalised_logits(module: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return F.normalize(module(x).float(), dim=1)


def _randomness(setup: _Setup, declared: bool) -> Finding:
    from vlmbench.flags import RANDOMNESS_TOLERANCE

    first = _normalised_logits(setup.defended, setup.x, 1)
    same_seed = float((first - _normalised_logits(setup.defended, setup.x, 1)).abs().max())
    other_seed = max(float((first - _normalised_logits(setup.defended, setup.x, seed)).abs().max()) for seed in (2, 3))
    random = max(same_seed, other_seed) > RANDOMNESS_TOLERANCE
    details = {"declared": declared, "same_seed_difference": same_seed, "other_seed_difference": other_seed}
    if same_seed > RANDOMNESS_TOLERANCE:
        return Finding("randomness", "fail", f"two forward passes under the same torch seed differ by {same_seed:.3g}",
                       "draw every random number from torch's global generator (torch.rand*, not numpy/random or a "
                       "private torch.Generator), so runs are reproducible from the seed", details)
    if random and not declared:
        return Finding("randomness", "fail", f"forward is random (logits differ by {other_seed:.3g} between seeds) but "
                       "stochastic = False", "the forward pass is random: declare stochastic = True so EOT is used "
                       "and predictions are scored over several draws", details)
    if declared and not random:
        return Finding("randomness", "warn", "declared stochastic, but three seeds gave identical logits",
                       "declare stochastic = False if the forward pass is deterministic: EOT then costs nothing", details)
    return Finding("randomness", "pass", ("random, declared stochastic" if random else "deterministic, as declared")
                   + f" (difference between seeds {other_seed:.3g})", details=details)


def _input_gradient(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor | None:
    torch.manual_seed(seed)
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(module(x), y, reduction="sum")
    if not loss.requires_grad:
        return None
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True)
    return grad


AGREEING_GRADIENTS = 0.9  # bpda-needed: mean cosine above which the exact gradient serves as well as BPDA's


def _bpda_and_gradients(setup: _Setup) -> list[Finding]:
    """``bpda-declared``, ``gradients`` and ``bpda-needed``."""
    from vlmbench.adaptive import check_declared_steps, exact_gradients
    from vlmbench.flags import VANISHING_RATIO
    from vlmbench.registry import PluginError

    declared = sorted({s for p in setup.parts for s in p.non_differentiable})
    torch.manual_seed(0)
    try:
        ran = check_declared_steps(setup.parts, setup.defended, setup.x)
        bpda = Finding("bpda-declared", "pass", f"steps {', '.join(ran)} run through bpda()" if ran else
                       "no non-differentiable step declared, none run through bpda()", details={"steps": list(ran)})
    except PluginError as exc:
        bpda = Finding("bpda-declared", "fail", str(exc),
                       "write each step without a useful gradient as vlmbench.adaptive.bpda(exact, surrogate, name=NAME) "
                       "and list NAME in non_differentiable", {"declared": declared})

    grad = _input_gradient(setup.defended, setup.x, setup.y)
    plain = _input_gradient(setup.classifier, setup.x, setup.y)
    n = len(setup.x)
    if grad is None:
        gradients = Finding("gradients", "fail", "the defended output does not depend differentiably on the input (no graph)",
                            "an attack gets no gradient: write the step that detaches the input (torch.no_grad, .detach(), "
                            "numpy) with vlmbench.adaptive.bpda and declare it in non_differentiable")
    else:
        flat = grad.flatten(1)
        nonfinite = int((~torch.isfinite(flat)).any(dim=1).sum())
        zero = int((flat.abs().amax(dim=1) == 0).sum())
        ratio = float(flat.norm(dim=1).median() / plain.flatten(1).norm(dim=1).median().clamp_min(1e-30)) if plain is not None else math.nan
        details = {"zero": zero, "nonfinite": nonfinite, "n": n, "norm_ratio_to_undefended": ratio}
        if nonfinite or zero:
            gradients = Finding("gradients", "fail", f"{zero} of {n} images have an exactly zero input gradient, "
                                f"{nonfinite} a NaN/inf one", "gradients are masked: find the step that saturates, "
                                "rounds or detaches (e.g. huge logit scales, thresholds) and write it with "
                                "vlmbench.adaptive.bpda, declared in non_differentiable, so adaptive attacks get a gradient",
                                details)
        elif ratio < VANISHING_RATIO:
            gradients = Finding("gradients", "warn", f"input gradients are {ratio:.2g}× the undefended model's (median norm)",
                                "gradients vanish: give the adaptive attack a usable objective (forward_with_objective) "
                                "or a BPDA surrogate for the saturating step; expect gradient attacks to be masked", details)
        else:
            gradients = Finding("gradients", "pass", f"finite, non-zero on {n} images; {ratio:.3g}× the undefended "
                                "model's norm", details=details)
    if not declared:
        needed = Finding("bpda-needed", "skip", "no non-differentiable step declared")
    else:
        with exact_gradients():
            exact = _input_gradient(setup.defended, setup.x, setup.y)
        useless = exact is None or not torch.isfinite(exact).all() or bool((exact.flatten(1).abs().amax(dim=1) == 0).all())
        cos = math.nan if useless or grad is None else float(F.cosine_similarity(exact.flatten(1), grad.flatten(1), dim=1).mean())
        steps = ", ".join(declared)
        if useless:
            needed = Finding("bpda-needed", "pass", f"without BPDA the gradient of {steps} is zero, NaN or absent: "
                             "the surrogate is needed")
        elif cos < AGREEING_GRADIENTS:
            needed = Finding("bpda-needed", "pass", f"the exact gradient through {steps} points elsewhere than the BPDA "
                             f"gradient (mean cosine {cos:.2f}): the surrogate replaces it", details={"cosine": cos})
        else:
            needed = Finding("bpda-needed", "warn", f"the exact gradient through {steps} agrees with the BPDA gradient "
                             f"(mean cosine {cos:.2f})", "a step with a usable gradient needs no BPDA: drop it from "
                             "non_differentiable, or document why its exact gradient misleads", {"cosine": cos})
    return [bpda, gradients, needed]


def _inference_cost(setup: _Setup, name: str) -> Finding:
    from vlmbench.cost import CostError, encoder_of, inference_cost

    try:
        cost = inference_cost(setup.defended, setup.classifier, setup.x[:4], 0,
                              [encoder_of(setup.model), encoder_of(setup.original)], repeats=1, defense=name)
    except CostError as exc:
        return Finding("inference-cost", "fail", str(exc), "register every image encoder the defense runs as a "
                       "submodule of the module wrap() returns (not only in a closure)")
    return Finding("inference-cost", "pass", f"{cost['infer_forward_passes']:g} forward and {cost['infer_backward_passes']:g} "
                   "backward image-encoder passes per image", details=cost)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _varied(config: Any) -> tuple[str, Any] | None:
    """One numeric field of ``config`` changed (int + 1, float × ½), as ``(field, new config)``; None without one."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        new = value + 1 if isinstance(value, int) else (value / 2 if value else 0.5)
        return f.name, replace(config, **{f.name: new})
    return None


def _training_cache(classes: Sequence[type], setup: _Setup, progress: Callable[[str], None]) -> Finding:
    """Each training-time part, with its smoke config, in a private cache: trains once, reuses, re-keys."""
    from vlmbench.models import parameter_fingerprint

    trained = [c for c in classes if c.is_training_time()]
    if not trained:
        return Finding("training-cache", "skip", "no training-time part")
    notes, details = [], {}
    for cls in trained:
        progress(f"training-cache: {cls.name} (smoke config, 3 trainings)")
        with tempfile.TemporaryDirectory(prefix="vlmbench-check-cache-") as tmp:
            context = replace(setup.context, cache_dir=Path(tmp))
            config = cls.smoke_config()
            first = cls(config).adapt_model(setup.original, context)
            after_first = _snapshot(Path(tmp))
            if not after_first:
                return Finding("training-cache", "fail", f"{cls.name}: adapt_model wrote nothing under context.cache_dir",
                               "cache the trained weights under context.cache_dir, in a folder keyed by everything that "
                               "determines them (vlmbench.finetune does this)")
            second = cls(config).adapt_model(setup.original, context)
            if _snapshot(Path(tmp)) != after_first:
                return Finding("training-cache", "fail", f"{cls.name}: a second identical run rewrote the cache (it trained again)",
                               "look the key up before training and return the cached weights")
            if parameter_fingerprint(first.module) != parameter_fingerprint(second.module):
                return Finding("training-cache", "fail", f"{cls.name}: the reused weights differ from the trained ones",
                               "save and load the complete trained state")
            varied = _varied(config)
            if varied is None:
                notes.append(f"{cls.name}: cached and reused (no numeric config field to vary)")
                continue
            key, other = varied
            cls(other).adapt_model(setup.original, context)
            if len(_snapshot(Path(tmp))) <= len(after_first):
                return Finding("training-cache", "fail", f"{cls.name}: changing config.{key} reused the cached weights",
                               "the cache key must cover every config field (hash dataclasses.asdict(config))")
            notes.append(f"{cls.name}: cached, reused, re-trained when config.{key} changed")
            details[cls.name] = {"files": len(after_first), "varied": key}
    return Finding("training-cache", "pass", "; ".join(notes), details=details)


def _attack_contract(cls: type, setup: _Setup, settings: CheckSettings) -> list[Finding]:
    from vlmbench.attack import AttackError, check_perturbation
    from vlmbench.protocol import ThreatModel

    steps = max(1, min(settings.steps, cls.default_steps))
    radii = {"linf": settings.eps, "l2": "0.5"}
    problems, done = [], []
    x, y = setup.x[:4], setup.y[:4]
    for norm in cls.norms:
        threat = ThreatModel.build(norm, radii.get(norm, settings.eps), steps, None if "step_size" in cls.honours else 0.0)
        kept = x.clone()
        try:
            x_adv = cls(threat).perturb(setup.classifier, x, y, torch.Generator(device=x.device).manual_seed(0))
            check_perturbation(x, x_adv, threat, cls.name)
        except AttackError as exc:
            problems.append(str(exc))
            continue
        if not torch.equal(x, kept):
            problems.append(f"{norm}: the clean images were modified in place")
        done.append(norm)
    contract = (Finding("attack-contract", "fail", "; ".join(problems), "project onto the ε-ball and clip to [0,1] after "
                        "every step, return a new tensor of the input's shape and dtype") if problems else
                Finding("attack-contract", "pass", f"in the ball and [0,1] for {', '.join(done)}, shape and dtype kept"))
    threat = ThreatModel.build(cls.norms[0], radii.get(cls.norms[0], settings.eps), steps,
                               None if "step_size" in cls.honours else 0.0)
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        outputs.append(cls(threat).perturb(setup.classifier, x, y, torch.Generator(device=x.device).manual_seed(0)))
    differs = float((outputs[0] - outputs[1]).abs().max())
    randomness = (Finding("attack-randomness", "fail", f"equal generators, different global seeds: results differ by {differs:.3g}",
                          "draw every random number from the generator argument (torch.rand(..., generator=generator))")
                  if differs > 0 else Finding("attack-randomness", "pass", "the result depends only on the generator given"))
    return [contract, randomness]


# ----------------------------------------------------------------------------------------- soundness

SWEEP_FACTORS = (Fraction(1), Fraction(4), Fraction(16), Fraction(64))
SWEEP_ZERO = 0.05  # at the largest ε, at most this fraction of the images (and at least 1) may stay robust


def _label(value: Fraction) -> str:
    return f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)


def _sweep_finding(sweep: dict[str, pd.DataFrame], labels: list[str]) -> Finding:
    robust = [_pct(sweep[label]["robust"].mean()) for label in labels]
    largest = sweep[labels[-1]]
    left = sorted(int(i) for i in largest.loc[largest["robust"], "sample_index"])
    n = len(largest)
    counts = [int(sweep[label]["robust"].sum()) for label in labels]
    from vlmbench.cell import SWEEP_TOLERANCE

    rises = [labels[i + 1] for i in range(len(counts) - 1) if counts[i + 1] > counts[i] + SWEEP_TOLERANCE]
    details = {"eps": labels, "robust": robust, "robust_at_largest": left}
    summary = "robust " + ", ".join(f"{r}% at {e}" for r, e in zip(robust, labels))
    if len(left) > max(1, round(SWEEP_ZERO * n)):
        return Finding("eps-sweep", "fail", summary + f"; {len(left)} of {n} images survive ε = {labels[-1]} "
                       f"(indices {_short(left)})", "the attack cannot reach 0% even with a huge budget: gradients are "
                       "masked or the attack is broken; check 'gradients', add BPDA/EOT or a defense-aware objective",
                       details)
    if rises:
        return Finding("eps-sweep", "warn", summary + f"; robust accuracy rises at {', '.join(rises)}",
                       "the attack is unreliable (robust accuracy should fall as ε grows): use more steps or restarts",
                       details)
    return Finding("eps-sweep", "pass", summary, details=details)


def _convergence(cells: _Cells, attack: str, base: pd.DataFrame, eps: str, track: str) -> Finding:
    """The same attack with 4× the steps and 2 restarts (when it takes restarts) on the same images: the
    images it fools that ``attack`` left robust are counted; beyond :func:`tolerance`, a warning (the
    check's own budget had not converged; a leaderboard figure needs the converged one)."""
    from vlmbench.names import parse_attack_name
    from vlmbench.registry import plugins

    name, steps = parse_attack_name(attack, plugins().attacks.names())
    cls = plugins().attacks.get(name)
    restarts = 2 if "restarts" in cls.honours else 1
    longer = f"{name}-{4 * (steps or cls.default_steps)}"
    rows = cells.run(f"convergence: {longer} x {restarts} restarts",
                     cells.request(longer, [eps], track=track, restarts=restarts))[eps]
    short_robust = set(base.loc[base["robust"], "sample_index"])
    gained = sorted(int(i) for i in short_robust - set(rows.loc[rows["robust"], "sample_index"]))
    n = len(base)
    details = {attack: _pct(base["robust"].mean()), f"{longer}x{restarts}": _pct(rows["robust"].mean()),
               "gained_by_longer": gained, "n": n, "tolerance": tolerance(n)}
    summary = (f"robust {attack} {details[attack]}% -> {longer} x {restarts} restarts {details[f'{longer}x{restarts}']}%; "
               f"{len(gained)} of {n} images fooled only by the longer attack")
    if len(gained) > tolerance(n):
        return Finding("convergence", "warn", summary + f" (indices {_short(gained)})",
                       f"{attack} has not converged on this model: evaluate with more steps (pgd-N, --adaptive-steps) "
                       "and restarts, and report the converged figure", details)
    return Finding("convergence", "pass", summary, details=details)


def _targeted(cells: _Cells, attack: str, untargeted: pd.DataFrame, eps: str, track: str) -> Finding:
    rows = cells.run(f"targeted: {attack} --target random", cells.request(attack, [eps], track=track, target="random"))[eps]
    aimed = rows[rows["target"] >= 0]
    hit = _pct((aimed["adv_pred"] == aimed["target"]).mean()) if len(aimed) else 0.0
    finding = order_finding("targeted", "untargeted", "targeted", untargeted, rows,
                            "a random-target attack fooled images the untargeted one did not: its loss is masked or too "
                            "weak; try the margin loss (cw) or a multi-targeted attack")
    finding.summary = f"both ran (targeted reached its target on {hit}% of the attacked images); " + finding.summary
    finding.details["target_reached"] = hit
    return finding


Checks = dict[str, Callable[[], list[Finding]]]


def _defense_soundness(cells: _Cells, setup: _Setup, test_time: bool, stochastic: bool) -> Checks:
    """The soundness checks of a defense, each computing (or reusing) the cells it compares."""
    s = cells.settings
    eps = s.eps_value()
    labels = [_label(eps * f) for f in SWEEP_FACTORS]
    main = _label(eps)
    attack = f"pgd-{s.steps}"
    whitebox = "adaptive" if test_time else "oblivious"
    black_box = whitebox  # queries go to the whole defended pipeline, one draw each (no gradient to average)

    def sweep() -> dict[str, pd.DataFrame]:
        return cells.run(f"eps-sweep: {attack} at {', '.join(labels)} ({whitebox})", cells.request(attack, labels, track=whitebox))

    def base() -> pd.DataFrame:
        return sweep()[main]

    def transfer() -> pd.DataFrame:
        return cells.run(f"transfer: {attack} crafted on undefended {s.model}",
                         cells.request(attack, [main], track=None, source_model=s.model))[main]

    def noise() -> pd.DataFrame:
        return cells.run(f"noise: noise-{4 * s.steps}", cells.request(f"noise-{4 * s.steps}", [main], track=black_box,
                                                                      eot_draws=1))[main]

    def square() -> pd.DataFrame:
        return cells.run(f"square: square-{s.square_steps}",
                         cells.request(f"square-{s.square_steps}", [main], track=black_box, eot_draws=1))[main]

    def adaptive_vs_oblivious() -> list[Finding]:
        if not test_time:
            return [Finding("adaptive-vs-oblivious", "skip", "no test-time part: the two tracks coincide")]
        oblivious = cells.run(f"oblivious: {attack}", cells.request(attack, [main], track="oblivious"))[main]
        return [order_finding("adaptive-vs-oblivious", "adaptive", "oblivious", base(), oblivious,
                              "the adaptive attack missed images the oblivious one fooled: it is broken for this "
                              "defense; start it from the oblivious result and check its BPDA/EOT/objective")]

    def binarize() -> list[Finding]:
        cells.progress("binarization test")
        return [binarization(setup, cells, attack, eot=s.eot_draws if stochastic else 1)]

    return {
        "eps-sweep": lambda: [_sweep_finding(sweep(), labels)],
        "convergence": lambda: [_convergence(cells, attack, base(), main, whitebox)],
        "whitebox-vs-transfer": lambda: [order_finding(
            "whitebox-vs-transfer", f"white-box {attack}", "transfer", base(), transfer(),
            "transfer from the undefended model fooled images the white-box attack did not: the white-box gradient "
            "is masked; attack adaptively (BPDA, EOT, a defense-aware objective)")],
        "transfer-vs-noise": lambda: [order_finding(
            "transfer-vs-noise", "transfer", "noise", transfer(), noise(),
            "random noise fooled images transfer did not: the defended model breaks under noise alone, so the "
            "transfer attack says little; attack it white-box")],
        "square-vs-whitebox": lambda: [order_finding(
            "square-vs-whitebox", f"white-box {attack}", "square", base(), square(),
            "a black-box attack beat the white-box one: gradients are masked; attack adaptively (BPDA for "
            "non-differentiable steps, EOT for randomness, a defense-aware objective)")],
        "adaptive-vs-oblivious": adaptive_vs_oblivious,
        "targeted": lambda: [_targeted(cells, attack, base(), main, whitebox)],
        "binarization": binarize,
    }


def _attack_soundness(cls: type, cells: _Cells, setup: _Setup) -> Checks:
    """The soundness checks of an attack on the undefended model."""
    s = cells.settings
    eps = s.eps_value()
    labels = [_label(eps * f) for f in SWEEP_FACTORS]
    main = _label(eps)
    attack = f"{cls.name}-{s.steps}"

    def sweep() -> dict[str, pd.DataFrame]:
        return cells.run(f"eps-sweep: {attack} at {', '.join(labels)}", cells.request(attack, labels))

    def noise() -> pd.DataFrame:
        return cells.run(f"noise: noise-{4 * s.steps}", cells.request(f"noise-{4 * s.steps}", [main]))[main]

    def targeted() -> list[Finding]:
        if "targeted" not in cls.honours:
            return [Finding("targeted", "skip", f"{cls.name} does not honour targeted")]
        return [_targeted(cells, attack, sweep()[main], main, "oblivious")]

    def binarize() -> list[Finding]:
        cells.progress("binarization test")
        return [binarization(setup, cells, attack, eot=1)]

    return {
        "eps-sweep": lambda: [_sweep_finding(sweep(), labels)],
        "convergence": lambda: [_convergence(cells, attack, sweep()[main], main, "oblivious")],
        "whitebox-vs-noise": lambda: [order_finding(
            "whitebox-vs-noise", attack, "noise", sweep()[main], noise(),
            "random noise fooled images the attack did not: the attack is not following a useful direction (check "
            "its loss, its sign and its projection)")],
        "targeted": targeted,
        "binarization": binarize,
    }


# --------------------------------------------------------------------------------------- binarization

class LinearHead(torch.nn.Module):
    """A two-class classifier on a model's (standardised) logits: class 1 iff ``w·z + b > 0``."""

    def __init__(self, features: torch.nn.Module, w: torch.Tensor, b: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, draws: int = 1) -> None:
        super().__init__()
        self.features, self.draws = features, draws
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x).float() - self.mean) / self.std
        return z @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        return torch.stack([torch.zeros_like(s), s], dim=1)


BINARIZATION_FAIL = 0.25  # failure rate above which the test fails (any failure warns)
INNER_RADIUS = 0.5  # inner points are drawn within this fraction of ε


def _fit_head(z: torch.Tensor, labels: torch.Tensor, steps: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression (class-weighted, weight decay) of ``labels`` on standardised features ``z``."""
    w = torch.zeros(z.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    weight = torch.where(labels == 1, (labels == 0).sum() / labels.sum().clamp_min(1), torch.ones(()))
    optimiser = torch.optim.Adam([w, b], lr=0.1)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, labels.float(), weight=weight) + 1e-3 * w.square().sum()
        loss.backward()
        optimiser.step()
    return w.detach(), b.detach()


def binarization(setup: _Setup, cells: _Cells, attack: str, eot: int) -> Finding:
    """Zimmermann et al.'s binarization test on the first ``binarization_samples`` images.

    Per image x: ``inner_points`` points uniform within ½ε of x (and x itself) are class 0, one vertex
    x_b of the ε-box is class 1. A logistic head on the defended model's logits (standardised) is fit to
    separate them; if it does (the test is valid for x), an adversarial example provably exists in the
    ball: x_b. The attack then runs on head ∘ defended from x; it must find a point scored class 1.
    Failure rate = misses / valid images. A random defense's features are averaged over its eval draws.
    """
    from vlmbench.attack import check_perturbation
    from vlmbench.runner import plan

    s = cells.settings
    choice = plan(cells.request(attack, [s.eps])).attacks[0]
    eps = float(s.eps_value())
    draws = s.eval_draws if eot > 1 else 1
    defended = setup.defended

    def features(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.stack([defended(x).float() for _ in range(draws)]).mean(0)

    valid, missed = [], []
    for i in range(s.binarization_samples):
        x = setup.x[i:i + 1]
        generator = torch.Generator().manual_seed(s.seed * 1000 + i)
        inner = (x + INNER_RADIUS * eps * (2 * torch.rand((s.inner_points, *x.shape[1:]), generator=generator) - 1)).clamp(0, 1)
        vertex = (x + eps * (2 * torch.randint(0, 2, x.shape, generator=generator).float() - 1)).clamp(0, 1)
        points = torch.cat([x, inner, vertex]).to(setup.device)
        torch.manual_seed(s.seed + i)
        z = features(points).cpu()
        mean, std = z.mean(0), z.std(0).clamp_min(1e-6)
        labels = torch.zeros(len(points), dtype=torch.long)
        labels[-1] = 1
        w, b = _fit_head((z - mean) / std, labels)
        scores = ((z - mean) / std) @ w + b
        if not (bool((scores[:-1] < 0).all()) and bool(scores[-1] > 0)):
            continue  # not separable: the test says nothing about this image
        valid.append(setup.indices[i])
        head = LinearHead(defended, w, b, mean, std).to(setup.device)
        generator = torch.Generator(device=setup.device).manual_seed(s.seed + i)
        x_adv = choice.build(eot).perturb(head, x.to(setup.device), torch.zeros(1, dtype=torch.long, device=setup.device), generator)
        check_perturbation(x.to(setup.device), x_adv, choice.threat, choice.spec)
        torch.manual_seed(s.seed + i)
        with torch.no_grad():
            score = torch.stack([head.score(x_adv) for _ in range(draws)]).mean()
        if not score > 0:
            missed.append(setup.indices[i])
    details = {"valid": valid, "missed": missed, "tested": s.binarization_samples}
    if not valid:
        return Finding("binarization", "warn", f"no image of {s.binarization_samples} gave a separable inner/boundary set",
                       "the test is inconclusive: the defense's logits barely move within the ε-ball; raise --eps or "
                       "--inner-points", details)
    rate = len(missed) / len(valid)
    details["failure_rate"] = rate
    summary = f"{attack} missed the known adversarial example on {len(missed)} of {len(valid)} valid images (failure rate {rate:.0%})"
    if not missed:
        return Finding("binarization", "pass", summary, details=details)
    return Finding("binarization", "fail" if rate > BINARIZATION_FAIL else "warn", summary + f" (indices {_short(missed)})",
                   "the attack fails where an adversarial example is known to exist: its gradient is masked or "
                   "misleading; use BPDA for non-differentiable steps, EOT for randomness, more steps", details)


# ------------------------------------------------------------------------------------------- output

def report_lines(report: Report) -> list[str]:
    """The report as the terminal shows it: a header, one line per check, then each warning's and failure's fix."""
    marks = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    counts = report.counts()
    lines = [f"{report.kind} {report.name} (version {report.version}, fingerprint {report.fingerprint}): "
             f"{report.status.upper()} — {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail, "
             f"{counts['skip']} skip in {report.seconds:.0f} s"]
    for group in ("contract", "soundness"):
        members = [f for f in report.findings if CHECKS[f.id].group == group]
        if members:
            lines.append(f"{group}:")
            lines += [f"  {marks[f.status]}  {f.id:<22} {f.summary}" for f in members]
    fixes = [f for f in report.findings if f.status in ("warn", "fail") and f.fix]
    if fixes:
        lines.append("fixes:")
        lines += [f"  {f.id}: {f.fix} ({DOCS}#{f.id})" for f in fixes]
    return lines


def write_report(report: Report, path: Path) -> None:
    """Write the report as JSON to ``path``, atomically."""
    from vlmbench.paths import write_json

    write_json(report.record(), path)
