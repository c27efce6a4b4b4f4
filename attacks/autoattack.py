"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020), through pyautoattack behind one adapter.

Registered names and what each runs (C = number of classes, read from the model's output):

============  =========================================================================================
name          sub-attacks, in order
============  =========================================================================================
``aa``        AutoAttack ``standard``: APGD-CE (1 restart), APGD-T (min(9, C−1) targets × 1),
              FAB-T (min(9, C−1) targets × 1), Square (1 restart)
``aa-plus``   ``plus``: APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square, APGD-T, FAB-T
``aa-rand``   ``rand``, for randomised defenses: APGD-CE and APGD-DLR, 1 restart, each gradient the
              mean over ``--eot`` forward passes on the adaptive track of a random defense, else
              AutoAttack's 20 (EOT)
``aa-tecoa``  the subset of TeCoA, TTC and TGA-ZSR: APGD-CE, APGD-DLR, 1 restart each (``standard``
              settings with the attack list replaced, as in their ``attack_auto``)
``aa-fare``   the subset of FARE and CLIPure: APGD-CE with 5 restarts (pyautoattack's ``custom``
              default, which FARE's evaluation keeps), APGD-T (min(9, C−1) targets × 1)
``apgd-ce``   APGD on the cross-entropy; restarts from the threat model
``apgd-dlr``  APGD on the DLR loss; restarts from the threat model
``apgd-t``    targeted APGD on the DLR loss, min(9, C−1) targets; restarts per target from the threat model
``fab-t``     targeted FAB (Croce & Hein, ICML 2020), min(9, C−1) targets, 1 restart each
``square``    Square Attack (Andriushchenko et al., ECCV 2020), 1 restart
============  =========================================================================================

Budget. ε and the norm come from the threat model (``linf`` → ``Linf``, ``l2`` → ``L2``). ``steps``
(the ``NAME-STEPS`` suffix; default 100, AutoAttack's own) is the iteration count of APGD and FAB;
APGD's step-size checkpoints follow it, as in an APGD constructed with that many iterations. In the
suites Square gets 50 queries per step (5000 at the default, AutoAttack's own); for ``square`` the
steps *are* the queries (default 5000). No attack here takes a step size (APGD's is adaptive) or a
random-start switch; only ``apgd-ce``, ``apgd-dlr`` and ``apgd-t`` take restarts, every other name
fixes its own (pyautoattack runs FAB-T with one restart per target whatever it is told). Square's
``l2`` version needs images of at least 5×5 pixels (its initial perturbation tiles the image in fifths).

Class counts. The DLR loss divides by the gap to the third-largest logit and its targeted form uses
the fourth-largest, so APGD-DLR needs C > 2 and APGD-T needs C > 3; below that they are dropped and
the protocol record says so. Everything else is defined from C = 2 (FAB-T then has the one other
class as target), so on a binary dataset ``aa`` runs APGD-CE, FAB-T and Square, and ``aa-fare`` and
``aa-tecoa`` run APGD-CE alone, as FARE and TeCoA do on PCAM. An attack left with no sub-attack
(``apgd-t`` on 3 classes), and any attack on fewer than 2 classes, raises
:class:`~vlmbench.attack.AttackError`.

Semantics: the pointwise worst case. Sub-attacks run in order, each from the clean images and only on
the samples that every earlier one left correctly classified; a sample keeps the first adversarial
example found, otherwise its clean image. The result is pyautoattack's, unmodified: its sub-attacks
project onto the ε-ball and [0,1] themselves, and the runner's budget check verifies every batch.

Randomness: pyautoattack's integer seed is drawn from the batch generator, so the same generator
state gives the same result. pyautoattack seeds torch's global generator with it; the adapter saves
and restores the global generator state around the run, so callers see no change.

Logging: pyautoattack reports progress on the ``auto-attack`` logger at DEBUG (silent unless the
application enables it) and its checks (randomised or dynamic model, too few classes) at WARNING.
The adapter leaves logging configuration alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from typing import Any, ClassVar

import torch
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack

from vlmbench.attack import Attack, AttackError, Model

IMPLEMENTATION = "pyautoattack"
MAX_TARGET_CLASSES = 9
"""AutoAttack's number of target classes for APGD-T and FAB-T; fewer when the dataset has fewer."""
SQUARE_QUERIES_PER_STEP = 50
"""Square's queries per APGD/FAB iteration in the suites: AutoAttack's 5000 queries for 100 iterations."""

_NORMS = {"linf": "Linf", "l2": "L2"}

_MIN_CLASSES: dict[str, tuple[int, str]] = {
    "apgd-dlr": (3, "the DLR loss needs more than 2 classes (it divides by the gap to the third-largest logit)"),
    "apgd-t": (4, "the targeted DLR loss needs more than 3 classes (it uses the fourth-largest logit)"),
}
"""Sub-attacks undefined below a class count: ``name -> (minimum C, reason)``. Others need C ≥ 2."""


def target_classes(num_classes: int) -> int:
    """Target classes of APGD-T and FAB-T on ``num_classes`` classes: ``min(9, C − 1)``."""
    return min(MAX_TARGET_CLASSES, num_classes - 1)


def dropped_sub_attacks(attacks: list[str], num_classes: int) -> dict[str, str]:
    """The sub-attacks among ``attacks`` that are undefined with ``num_classes`` classes, with the reason."""
    return {a: _MIN_CLASSES[a][1] for a in attacks if a in _MIN_CLASSES and num_classes < _MIN_CLASSES[a][0]}


def seed_from(generator: torch.Generator) -> int:
    """pyautoattack's integer seed, drawn from ``generator`` (one draw: the generator advances)."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))


def set_apgd_iterations(apgd: APGDAttack, n_iter: int) -> None:
    """Give ``apgd`` ``n_iter`` iterations and the step-size checkpoint schedule pyautoattack derives
    from that count when it constructs an APGD (setting ``n_iter`` alone keeps the checkpoints of the
    iteration count it was built with, 100 in AutoAttack)."""
    reference = APGDAttack(None, n_iter=n_iter, eps=apgd.eps)
    for attribute in ("n_iter", "n_iter_orig", "n_iter_2", "n_iter_min", "size_decr"):
        setattr(apgd, attribute, getattr(reference, attribute))


@contextmanager
def _global_rng_preserved(device: torch.device) -> Iterator[None]:
    """Restore torch's global generator (and the device's, on CUDA) on exit: pyautoattack reseeds them."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def describe_sub_attack(aa: AutoAttack, attack: str, num_classes: int | None) -> dict[str, Any]:
    """The settings ``attack`` runs with in the configured ``aa``, for the protocol record; target
    counts read ``"min(9, C-1)"`` when ``num_classes`` is unknown."""

    def targets(count: int) -> int | str:
        return count if num_classes is not None else "min(9, C-1)"

    if attack in ("apgd-ce", "apgd-dlr"):
        return {"attack": attack, "n_iter": aa.apgd.n_iter, "n_restarts": aa.apgd.n_restarts,
                "eot_iter": aa.apgd.eot_iter}
    if attack == "apgd-t":
        return {"attack": attack, "n_iter": aa.apgd_targeted.n_iter, "n_restarts": aa.apgd_targeted.n_restarts,
                "n_target_classes": targets(aa.apgd_targeted.n_target_classes), "eot_iter": aa.apgd_targeted.eot_iter}
    if attack == "fab":
        return {"attack": attack, "n_iter": aa.fab.n_iter, "n_restarts": aa.fab.n_restarts}
    if attack == "fab-t":  # pyautoattack sets FAB's restarts to 1 before running FAB-T
        return {"attack": attack, "n_iter": aa.fab.n_iter, "n_restarts": 1,
                "n_target_classes": targets(aa.fab.n_target_classes)}
    if attack == "square":
        return {"attack": attack, "n_queries": aa.square.n_queries, "n_restarts": aa.square.n_restarts}
    raise AttackError(f"unknown AutoAttack sub-attack {attack!r}")


class AutoAttackAdapter(Attack):
    """Base of every pyautoattack-backed attack: configures one ``pyautoattack.AutoAttack`` per batch.

    Subclasses set:
        aa_version: pyautoattack's ``version``: ``standard``, ``plus``, ``rand`` (its own attack list
            and restarts) or ``custom`` (the list ``aa_attacks``).
        aa_attacks: the sub-attacks of a ``custom`` suite, in order.
        aa_restarts: restarts fixed by the suite, keyed by the pyautoattack attribute they set
            (``apgd``: APGD-CE/-DLR, ``apgd_targeted``: APGD-T per target); the rest keep
            pyautoattack's values for ``aa_version``.
    """

    aa_version: ClassVar[str] = "custom"
    aa_attacks: ClassVar[tuple[str, ...]] = ()
    aa_restarts: ClassVar[dict[str, int]] = {}
    default_steps: ClassVar[int] = 100
    honours: ClassVar[frozenset[str]] = frozenset()

    def restarts(self) -> dict[str, int]:
        """Restarts to set, keyed by pyautoattack attribute (``apgd``, ``apgd_targeted``)."""
        return dict(self.aa_restarts)

    def square_queries(self) -> int:
        """Square's query budget: 50 per step in the suites."""
        return SQUARE_QUERIES_PER_STEP * self.threat.steps

    def suite(self) -> list[str]:
        """The sub-attacks in order, before any is dropped for the class count."""
        return list(self._autoattack(None, None, "cpu").attacks_to_run)

    def _autoattack(self, model: Model | None, seed: int | None, device: torch.device | str) -> AutoAttack:
        """pyautoattack's object for ``aa_version`` (and ``aa_attacks``), as it constructs it."""
        common: dict[str, Any] = {"device": device, "eps": self.threat.eps, "norm": _NORMS[self.threat.norm],
                                  "seed": seed, "version": self.aa_version}
        if self.aa_version == "custom":
            return AutoAttack(model, attacks=list(self.aa_attacks), **common)
        return AutoAttack(model, **common)

    def configure(self, model: Model | None, num_classes: int | None, seed: int | None,
                  device: torch.device | str) -> AutoAttack:
        """A ``pyautoattack.AutoAttack`` set up as this attack runs on ``num_classes`` classes.

        ``num_classes=None`` (unknown) drops nothing and keeps 9 target classes; ``model=None`` gives
        an object to read settings from, not to run.

        Raises:
            AttackError: fewer than 2 classes, fewer than 1 step, or no sub-attack defined for ``num_classes``.
        """
        if num_classes is not None and num_classes < 2:
            raise AttackError(f"attack {self.name!r} needs at least 2 classes, got {num_classes}")
        if self.threat.steps < 1:
            raise AttackError(f"attack {self.name!r} needs at least one step, got {self.threat.steps}")
        aa = self._autoattack(model, seed, device)
        if num_classes is not None:
            dropped = dropped_sub_attacks(aa.attacks_to_run, num_classes)
            aa.attacks_to_run = [a for a in aa.attacks_to_run if a not in dropped]
            if not aa.attacks_to_run:
                reasons = "; ".join(dropped.values())
                raise AttackError(f"attack {self.name!r} is not defined for {num_classes} classes: {reasons}")
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = target_classes(num_classes)
        for apgd in (aa.apgd, aa.apgd_targeted):
            set_apgd_iterations(apgd, self.threat.steps)
        aa.fab.n_iter = self.threat.steps
        aa.square.n_queries = self.square_queries()
        for attribute, count in self.restarts().items():
            getattr(aa, attribute).n_restarts = count
        return aa

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """AutoAttack's worst case over the sub-attacks (see the module docstring); ``x_adv`` as
        pyautoattack returns it: same shape and dtype as ``x``, on ``x.device``."""
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        aa = self.configure(model, num_classes, seed_from(generator), x.device)
        with _global_rng_preserved(x.device):
            x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv

    def estimated_passes(self, num_classes: int) -> tuple[float, float]:
        """Upper bound per image, as if every image survived to the last sub-attack (AutoAttack runs
        each later one only on the images still robust): APGD iterations × restarts × EOT draws (×
        targets for APGD-T) and FAB-T iterations × targets, a forward and a backward each; untargeted
        FAB a backward per class (its Jacobian); Square's queries, forwards only."""
        aa = self.configure(None, num_classes, None, "cpu")
        forward = backward = 0.0
        for sub in aa.attacks_to_run:
            setting = describe_sub_attack(aa, sub, num_classes)
            if sub == "square":
                forward += setting["n_queries"] * setting["n_restarts"]
                continue
            calls = (setting["n_iter"] * setting["n_restarts"] * setting.get("n_target_classes", 1)
                     * setting.get("eot_iter", 1))
            forward += calls
            backward += calls * (num_classes if sub == "fab" else 1)
        return forward, backward

    def params(self, num_classes: int | None = None) -> dict[str, Any]:
        """Implementation and version, AutoAttack version, the sub-attacks that run on ``num_classes``
        classes with their settings, and the ones dropped with the reason."""
        aa = self.configure(None, num_classes, None, "cpu")
        dropped = {} if num_classes is None else dropped_sub_attacks(self.suite(), num_classes)
        return {
            "implementation": IMPLEMENTATION,
            "implementation_version": package_version(IMPLEMENTATION),
            "aa_version": self.aa_version,
            "num_classes": num_classes,
            "attacks": [describe_sub_attack(aa, a, num_classes) for a in aa.attacks_to_run],
            "dropped": [{"attack": a, "reason": reason} for a, reason in dropped.items()],
        }


class AutoAttackStandard(AutoAttackAdapter):
    """AutoAttack ``standard``: APGD-CE, APGD-T, FAB-T, Square (Croce & Hein 2020)."""

    name: ClassVar[str] = "aa"
    description: ClassVar[str] = "AutoAttack standard (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square; steps = APGD/FAB iterations"
    aa_version: ClassVar[str] = "standard"


class AutoAttackPlus(AutoAttackAdapter):
    """AutoAttack ``plus``: APGD-CE/-DLR and FAB with 5 restarts, Square, APGD-T, FAB-T."""

    name: ClassVar[str] = "aa-plus"
    description: ClassVar[str] = "AutoAttack plus: APGD-CE, APGD-DLR, FAB (5 restarts each), Square, APGD-T, FAB-T"
    aa_version: ClassVar[str] = "plus"


class AutoAttackRand(AutoAttackAdapter):
    """AutoAttack ``rand``, for randomised defenses: APGD-CE and APGD-DLR, each gradient averaged over
    forward passes (EOT): the run's EOT draws on the adaptive track of a random defense (``--eot``),
    otherwise AutoAttack's own 20."""

    name: ClassVar[str] = "aa-rand"
    description: ClassVar[str] = "AutoAttack rand, for randomised defenses: APGD-CE, APGD-DLR, EOT (--eot draws, else 20)"
    aa_version: ClassVar[str] = "rand"
    honours: ClassVar[frozenset[str]] = frozenset({"eot"})

    def configure(self, model: Model | None, num_classes: int | None, seed: int | None,
                  device: torch.device | str) -> AutoAttack:
        aa = super().configure(model, num_classes, seed, device)
        if self.eot_draws > 1:
            aa.apgd.eot_iter = aa.apgd_targeted.eot_iter = self.eot_draws
        return aa


class AutoAttackTeCoA(AutoAttackAdapter):
    """The AutoAttack subset of TeCoA, TTC and TGA-ZSR: APGD-CE then APGD-DLR, one restart each."""

    name: ClassVar[str] = "aa-tecoa"
    description: ClassVar[str] = "AutoAttack subset of TeCoA/TTC/TGA-ZSR: APGD-CE, APGD-DLR, 1 restart each"
    aa_attacks: ClassVar[tuple[str, ...]] = ("apgd-ce", "apgd-dlr")
    aa_restarts: ClassVar[dict[str, int]] = {"apgd": 1}


class AutoAttackFARE(AutoAttackAdapter):
    """The AutoAttack subset of FARE and CLIPure: APGD-CE (5 restarts) then APGD-T."""

    name: ClassVar[str] = "aa-fare"
    description: ClassVar[str] = "AutoAttack subset of FARE/CLIPure: APGD-CE (5 restarts), APGD-T"
    aa_attacks: ClassVar[tuple[str, ...]] = ("apgd-ce", "apgd-t")
    aa_restarts: ClassVar[dict[str, int]] = {"apgd": 5, "apgd_targeted": 1}


class _RestartingAPGD(AutoAttackAdapter):
    """A single APGD attack: its restarts (per target for APGD-T) are the threat model's."""

    honours: ClassVar[frozenset[str]] = frozenset({"restarts"})

    def restarts(self) -> dict[str, int]:
        return {"apgd": self.threat.restarts, "apgd_targeted": self.threat.restarts}


class APGDCE(_RestartingAPGD):
    """APGD on the cross-entropy (Croce & Hein 2020): adaptive step size, momentum, restarts."""

    name: ClassVar[str] = "apgd-ce"
    description: ClassVar[str] = "APGD on cross-entropy (Croce & Hein 2020): adaptive step, restarts"
    aa_attacks: ClassVar[tuple[str, ...]] = ("apgd-ce",)


class APGDDLR(_RestartingAPGD):
    """APGD on the DLR loss (Croce & Hein 2020); needs more than 2 classes."""

    name: ClassVar[str] = "apgd-dlr"
    description: ClassVar[str] = "APGD on the DLR loss (Croce & Hein 2020), needs > 2 classes, restarts"
    aa_attacks: ClassVar[tuple[str, ...]] = ("apgd-dlr",)


class APGDT(_RestartingAPGD):
    """Targeted APGD on the DLR loss against the min(9, C−1) highest-scoring other classes; needs more than 3 classes."""

    name: ClassVar[str] = "apgd-t"
    description: ClassVar[str] = "targeted APGD-DLR (Croce & Hein 2020), min(9, C-1) targets, needs > 3 classes"
    aa_attacks: ClassVar[tuple[str, ...]] = ("apgd-t",)


class FABT(AutoAttackAdapter):
    """Targeted FAB (Croce & Hein, ICML 2020) against min(9, C−1) target classes, one restart each."""

    name: ClassVar[str] = "fab-t"
    description: ClassVar[str] = "targeted FAB (Croce & Hein 2020), min(9, C-1) targets, 1 restart each"
    aa_attacks: ClassVar[tuple[str, ...]] = ("fab-t",)


class Square(AutoAttackAdapter):
    """Square Attack (Andriushchenko et al., ECCV 2020), score-based: ``steps`` is its query budget."""

    name: ClassVar[str] = "square"
    description: ClassVar[str] = "Square Attack (Andriushchenko et al. 2020), score-based; steps = queries (5000)"
    aa_attacks: ClassVar[tuple[str, ...]] = ("square",)
    default_steps: ClassVar[int] = 5000

    def square_queries(self) -> int:
        return self.threat.steps
