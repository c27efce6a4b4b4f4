"""The protocol record: everything that determines a number, as one frozen value.

A :class:`Protocol` is built once per cell (model × defense × attack × dataset × ε), stored with
every per-sample result row (as JSON plus flattened columns), and hashed to name the cell. Two rows
with equal protocol hashes were measured the same way; rows whose hashes differ must not be averaged
together without saying so.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from vlmbench.errors import VlmbenchError

Norm = Literal["linf", "l2"]
Track = Literal["oblivious", "adaptive", "transfer"]
NORMS: tuple[str, ...] = ("linf", "l2")


class ProtocolError(VlmbenchError, ValueError):
    """An invalid protocol value (ε, norm, steps, ...). The message is one line, fit for a user."""


EPS_SNAP_RTOL = 1e-7  # a float within this relative distance of q/255 (q a multiple of 0.5) *is* q/255


def _parse_number(text: str) -> float:
    """One float in any valid spelling (``4``, ``.5``, ``1e-3``, ``1E-3``); ``nan``/``inf`` refused."""
    if not re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", text):
        raise ValueError(text)
    return float(text)


def parse_eps(text: str | float, norm: str = "linf") -> tuple[float, str]:
    """Parse an ε given as ``"4/255"``, ``"0.0157"``, ``"1e-3"`` or a float, canonically.

    Equal values give one ε and one label, however they were written (:func:`canonical_eps`), so
    ``--eps 0.0156862745`` and ``--eps 4/255`` name the same cell.

    Returns:
        ``(value, label)``: the canonical float radius and its label (:func:`eps_label`).

    Raises:
        ProtocolError: not a number or a fraction of two numbers, not positive, or not finite.
    """
    if isinstance(text, bool):
        raise ProtocolError(f"bad ε {text!r}: give a number such as 0.0157 or a fraction such as 4/255")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        parts = text.split("/")
        try:
            if len(parts) > 2:
                raise ValueError(text)
            numbers = [_parse_number(part) for part in parts]
        except ValueError:
            raise ProtocolError(f"bad ε {text!r}: give a number such as 0.0157 or a fraction such as 4/255") from None
        if len(numbers) == 2 and numbers[1] == 0:
            raise ProtocolError(f"bad ε {text!r}: division by zero")
        value = numbers[0] / numbers[1] if len(numbers) == 2 else numbers[0]
    if not math.isfinite(value) or value <= 0:
        raise ProtocolError(f"bad ε {text!r}: must be a positive finite number")
    value = canonical_eps(value, norm)
    return value, eps_label(value, norm)


def canonical_eps(value: float, norm: str = "linf") -> float:
    """ℓ∞ radii are conventionally multiples of 1/255: a value within :data:`EPS_SNAP_RTOL` of
    ``q/255`` (``q`` a multiple of 0.5: 1, 4, 0.5, ...) becomes exactly ``q/255``. Other values, and ℓ2
    radii, are kept as they are."""
    if norm == "linf":
        q = round(value * 510) / 2
        if q > 0 and abs(q / 255 - value) <= EPS_SNAP_RTOL * value:
            return q / 255
    return float(value)


def eps_label(value: float, norm: str = "linf") -> str:
    """The label of a canonical radius: ℓ∞ ``"4/255"`` (``"0.5/255"``) when it is ``q/255`` with ``q`` a
    multiple of 0.5, else the shortest float repr (ℓ2 radii always: ``"0.5"``)."""
    if norm == "linf":
        q = round(value * 510) / 2
        if q > 0 and q / 255 == value:
            return f"{q:g}/255"
    return repr(float(value))


def default_step_size(norm: Norm, eps: float, steps: int) -> float:
    """The step size used when none is given.

    ℓ∞: the literature's fixed 1/255 (TeCoA, PMG-AFT, TTC, HPT-GPD: ε ∈ {1,2,4}/255 with 2–100 steps
    all use α = 1/255), raised to Madry et al.'s 2.5·ε/steps when 1/255 could not cross the ball
    within the step budget, and never more than ε:  ``α = min(ε, max(1/255, 2.5·ε/steps))``.
    So ε = 1/255 with 10 steps gives 1/255, ε = 4/255 with 10 steps gives 1/255, ε = 16/255 with
    10 steps gives 4/255.

    ℓ2: Madry's rule ``α = 2.5·ε/steps``.
    """
    if steps < 1:
        raise ProtocolError(f"bad number of steps {steps}: must be ≥ 1")
    if norm == "linf":
        return min(eps, max(1 / 255, 2.5 * eps / steps))
    return 2.5 * eps / steps


def check_eps(norm: str, eps: float) -> None:
    """ℓ∞ radii above 1 make the [0,1] box constraint the only one: almost surely a unit mistake."""
    if norm not in NORMS:
        raise ProtocolError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    if norm == "linf" and eps > 1:
        hint = f" (did you mean {eps:g}/255?)" if eps <= 255 and eps_label(canonical_eps(eps / 255)).endswith("/255") else ""
        raise ProtocolError(f"bad ε {eps:.6g} for linf: pixels are in [0,1], so ε must be ≤ 1 = 255/255{hint}")


@dataclass(frozen=True)
class ThreatModel:
    """The attacker's budget.

    Attributes:
        norm: ``"linf"`` or ``"l2"``, measured on [0,1] pixels at the dataset's native resolution
            (or at whatever resolution ``DataSpec.resolution`` says the attack runs).
        eps: radius of the ball.
        eps_label: how the user wrote it, canonicalised (``"4/255"``).
        steps: iterations per restart (0 for the clean-only "attack").
        step_size: per-iteration step (ℓ∞: sign step; ℓ2: normalised-gradient step); ``0`` when the
            attack chooses its own steps (APGD's adaptive step size).
        restarts: independent random starts; a sample counts as broken if any restart breaks it.
        random_start: start uniformly inside the ball (else at the clean image).
    """

    norm: Norm
    eps: float
    eps_label: str
    steps: int
    step_size: float
    restarts: int = 1
    random_start: bool = True

    def __post_init__(self) -> None:
        check_eps(self.norm, self.eps)
        if self.steps < 0 or self.restarts < 1:
            raise ProtocolError(f"bad steps/restarts {self.steps}/{self.restarts}: need steps ≥ 0, restarts ≥ 1")
        if self.steps > 0 and not (self.step_size >= 0 and math.isfinite(self.step_size)):
            raise ProtocolError(f"bad step size {self.step_size!r}: must be a positive number")

    @classmethod
    def build(
        cls,
        norm: str,
        eps: str | float,
        steps: int,
        step_size: str | float | None = None,
        restarts: int = 1,
        random_start: bool = True,
    ) -> ThreatModel:
        """Parse user-facing values (ε and step size as ``"1/255"`` or floats) into a threat model.

        ``step_size=None`` applies :func:`default_step_size`; ``0`` means the attack sets its own."""
        value, label = parse_eps(eps, norm)
        check_eps(norm, value)
        if steps < 0:
            raise ProtocolError(f"bad number of steps {steps}: must be ≥ 0")
        if step_size is None:
            alpha = default_step_size(norm, value, steps) if steps > 0 else 0.0  # type: ignore[arg-type]
        elif step_size == 0:
            alpha = 0.0
        else:
            alpha = parse_eps(step_size)[0]
        return cls(norm, value, label, steps, alpha, restarts, random_start)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DataSpec:
    """Which images were evaluated.

    Attributes:
        dataset: registry name.
        split: dataset split.
        n_samples: how many images were evaluated.
        indices_sha256: SHA-256 of the chosen indices (as comma-separated decimal text, in order);
            the indices themselves are in every row's ``sample_index`` column.
        selection: how the indices were chosen (``"first"``, ``"random"``: seeded permutation,
            ``"balanced"``: seeded, class-balanced; ``"all"``: the whole split).
        resolution: where resizing happens: ``"native"`` means the attack acts on the dataset's
            native pixels and the model resizes inside its forward (``"native→224 bicubic"``);
            otherwise the load-time or pre-attack resize comes first (``ZeroShotDataset.pixels``).
        preset: the protocol preset (``--protocol``) that chose dataset, split, samples, templates
            and resolution, else None.
        templates: the prompt-template set (``vlmbench.datasets.text``), or None for the dataset
            plugin's own class names and prompts.
        n_requested: the images per dataset the request asked for (None: the whole split); more than
            ``n_samples`` when the split is smaller.
        fingerprint: the dataset plugin's source fingerprint (:mod:`vlmbench.fingerprint`).
    """

    dataset: str
    split: str
    n_samples: int
    indices_sha256: str
    selection: str
    resolution: str
    preset: str | None = None
    templates: str | None = None
    n_requested: int | None = None
    fingerprint: str = ""


@dataclass(frozen=True)
class PluginRef:
    """A plugin as used: registry name, the plugin's declared version, its parameters (JSON-able), and
    the fingerprint of its source (:mod:`vlmbench.fingerprint`; for a model: of its weights, which is
    also its ``version``)."""

    name: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""

    def __hash__(self) -> int:  # params is a dict; hash the canonical JSON instead
        return hash(canonical_json(asdict(self)))


@dataclass(frozen=True)
class Protocol:
    """The complete description of one evaluation cell.

    Attributes:
        model: the model (``name`` is the user's spec, ``version`` the weights' SHA-256 prefix).
        defense: the defense and its parameters.
        attack: the attack and its parameters (loss, κ, ...).
        threat: the threat model.
        data: the evaluated images.
        seed: base seed; every batch's generator is derived from it and the batch's position.
        batch_size: evaluation batch size (random starts are drawn per batch).
        precision: ``"fp32"``: attacks and evaluation run in float32.
        track: ``"oblivious"`` (craft on the classifier without its test-time defenses, evaluate the
            defended pipeline) or ``"adaptive"`` (craft on the full defended pipeline, BPDA through the
            steps it declares non-differentiable). Without a test-time defense both coincide and the
            track is ``"oblivious"``.
            ``"transfer"``: crafted on another model (``source``), evaluated on the defended target.
        eot_draws: draws of the defense's randomness averaged per attack gradient (EOT); 1 when
            the crafting model is deterministic.
        defense_loss: the adaptive attack added the defense's own objective to its loss
            (:mod:`vlmbench.adaptive`); False on other tracks, for defenses without one, and for
            attacks that cannot use one.
        start: where the attack began: ``"attack"`` (its own rule: random or clean, per the threat
            model) or ``"oblivious"`` (adaptive track: from the oblivious attack's adversarial example,
            crafted on the classifier without test-time defenses — Croce et al. 2022's recommended
            initialisation for attacking test-time defenses; its passes are counted).
        source: the model the attack was crafted on (transfer track), with the defense it carried
            (``params.defense``), else None.
        target: ``untargeted``, ``random``, ``least-likely`` or ``label:K`` (:mod:`vlmbench.targets`).
        superclasses: the superclass map the attack was crafted against (name, superclass names,
            class → superclass assignment, hash), else None.
        cascade_after: attacks (same ε and track) whose still-robust samples alone this attack
            attacked; the others keep the earlier attack's outcome (AutoAttack's early stop). Empty
            when every sample was attacked.
        eval_draws: forward draws per prediction of a random (``stochastic``) defense; the recorded
            prediction is their majority vote (ties: the class with the higher mean probability). 1
            for a deterministic pipeline. Clean and adversarial images are scored alike, and the
            clean draws do not depend on the track or attack, so both tracks share one clean figure.
        bpda: the defense's declared non-differentiable steps the adaptive attack differentiated
            through their BPDA surrogate (:mod:`vlmbench.adaptive`); empty on other tracks.
        versions: versions of the packages the numbers depend on (vlmbench, torch, open_clip, ...).
    """

    model: PluginRef
    defense: PluginRef
    attack: PluginRef
    threat: ThreatModel
    data: DataSpec
    seed: int
    batch_size: int
    precision: str = "fp32"
    track: Track = "oblivious"
    eot_draws: int = 1
    defense_loss: bool = False
    start: str = "attack"
    source: PluginRef | None = None
    target: str = "untargeted"
    superclasses: dict[str, Any] | None = None
    cascade_after: tuple[str, ...] = ()
    eval_draws: int = 1
    bpda: tuple[str, ...] = ()
    versions: dict[str, str] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash(self.to_json())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return canonical_json(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Protocol:
        raw = json.loads(text)
        return cls(
            model=PluginRef(**raw["model"]),
            defense=PluginRef(**raw["defense"]),
            attack=PluginRef(**raw["attack"]),
            threat=ThreatModel(**raw["threat"]),
            data=DataSpec(**raw["data"]),
            source=PluginRef(**raw["source"]) if raw.get("source") else None,
            cascade_after=tuple(raw.get("cascade_after", ())),
            bpda=tuple(raw.get("bpda", ())),
            **{f.name: raw[f.name] for f in fields(cls) if f.name not in {"model", "defense", "attack", "threat", "data", "source", "cascade_after", "bpda"}},
        )

    def cell_hash(self) -> str:
        """Identity of the measurement: the protocol minus package versions, 16 hex digits.

        Versions are left out so that re-running a finished cell after a patch-level upgrade is a
        resume, not a new cell; they stay in every row for provenance.
        """
        return identity_hash(self.to_dict())


def identity_hash(record: dict[str, Any], without: tuple[str, ...] = ("versions",)) -> str:
    """16 hex digits of the SHA-256 of ``record`` (a protocol as :meth:`Protocol.to_dict` or its JSON gives
    it) without the keys ``without``: :meth:`Protocol.cell_hash` by default."""
    identity = {k: v for k, v in record.items() if k not in without}
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no whitespace) used for hashing and storage."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def indices_sha256(indices: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()


@dataclass(frozen=True)
class ReportedFigure:
    """A figure a defense's paper reports, as the plugin declares it (``Defense.reported``). It is
    recorded in each result file's run metadata (``defenses.NAME.reported``), never in the protocol:
    it describes the paper, not the measurement, so it does not change a cell's identity.
    Leaderboards show it beside vlmbench's own figure.

    Attributes:
        value: the reported accuracy in percent.
        metric: ``"robust"`` or ``"clean"``.
        dataset: the paper's dataset (``"cifar10"``) or aggregate (``"mean of 16"``).
        attack: as the paper names it (``"PGD-10"``, ``"AutoAttack (APGD-CE, APGD-DLR)"``).
        eps_label: ``"1/255"``; norm: ``"linf"`` or ``"l2"``.
        model: the backbone the paper reports for (``"ViT-B-32:openai"``).
        protocol: how the paper measured it, one line.
        source: where in the paper (``"Table 1 of Xing et al., CVPR 2025"``).
    """

    value: float
    metric: str
    dataset: str
    attack: str
    eps_label: str
    norm: str
    model: str
    protocol: str
    source: str
