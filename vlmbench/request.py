"""What the user asked for: a :class:`RunRequest` (the options of ``vlmbench run``, or one product of a
matrix file), before anything is resolved. Torch-free, so that the command line and matrix files can
build and check requests before the heavy imports (:mod:`vlmbench.plan` resolves them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmbench.errors import VlmbenchError


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
        batch_size: images per batch; None: vlmbench chooses per cell (:mod:`vlmbench.batch_size`: an existing
            cell's size, 128 on the CPU, measured from free memory on a GPU). Part of the protocol.
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
        precision: ``auto``, ``fp32``, ``tf32`` or ``bf16`` (:mod:`vlmbench.precision`): a precision other
            than fp32 runs only where its parity with fp32 was measured; ``auto`` is the fastest such.
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
    batch_size: int | None = None
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
    precision: str = "auto"


PRECISIONS = ("auto", "fp32", "tf32", "bf16")  # vlmbench.precision says what each means

CPU_BATCH_SIZE = 128  # the batch size on the CPU when none is given (vlmbench.batch_size)
DEFAULT_EOT_DRAWS = 10  # Athalye et al. 2018: EOT over ≥ 10 draws for random defenses
DEFAULT_ADAPTIVE_STEPS = 40  # measured: benchmarks/adaptive_convergence.py (README, "Test-time defenses")
DEFAULT_EVAL_DRAWS = 10  # majority vote over this many draws scores a random defense (issue: one draw
# of TTC gave 32.5% and 22.5% clean accuracy on the same 40 images; 20 draws average 30.75%)
