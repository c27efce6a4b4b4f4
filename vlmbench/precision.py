"""Numeric precision of attacks and evaluation, and the measured parity that allows a faster one.

A robust accuracy is only as good as the attack behind it, and an attack in reduced precision can be
quietly weaker (rounded gradients, underflowing margins). vlmbench therefore runs in float32 unless a
faster precision has been **measured** to give the same result on this hardware, model and test-time
defense — and records on every row the precision that really ran.

Precisions (the ``precision`` field of the protocol and of every row):

* ``fp32``: float32 everywhere; TF32 is switched off on CUDA (torch runs cuDNN convolutions in TF32
  by default, so without this a ResNet tower would silently attack in TF32).
* ``tf32``: float32 tensors, CUDA matmuls and cuDNN convolutions in TF32 (10-bit mantissa). CUDA only.
* ``bf16``: forward passes under ``torch.autocast(dtype=torch.bfloat16)``. Images, perturbations, their
  gradients and the budget check stay float32, and the logits are cast to float32 before any loss,
  margin, softmax or vote (:class:`~vlmbench.classifier.ZeroShotClassifier` returns float32 logits and
  the runner casts every defended model's output), so losses and margins are computed in float32.

``--precision auto`` (the default) is the fastest precision with a passing parity record for this
(hardware, model weights, test-time defense, torch version), else ``fp32``. ``--precision bf16`` or
``tf32`` without a passing record is refused. ``vlmbench parity`` writes the record: it runs the same
PGD cells three times — in float32, in float32 with other random starts (the noise every
attack with random starts has), and in the candidate precision — and the candidate passes when

* its robust accuracy is within :data:`TOLERANCE_POINTS` of float32's, and
* its per-image agreement with float32 (same robust verdict) is at most :data:`AGREEMENT_SLACK`
  points below float32's agreement with itself with other random starts, and
* at least :data:`MIN_SAMPLES` images were compared.

``auto`` takes a passing precision only if the record also measured it at least :data:`MIN_SPEEDUP`
times faster than float32; on the CPUs measured so far bf16 autocast is slower, so ``auto`` is fp32
there. Records live in the cache (``$VLMBENCH_CACHE/parity``) and are keyed by everything they depend
on, so a record for another GPU, model or torch version never applies.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vlmbench.errors import VlmbenchError
from vlmbench.paths import cache_dir, write_json
from vlmbench.request import PRECISIONS as REQUEST_PRECISIONS

AUTO = "auto"
CHOICES = REQUEST_PRECISIONS
PRECISIONS = tuple(p for p in CHOICES if p != AUTO)

TOLERANCE_POINTS = 1.0
"""A candidate's robust accuracy must be within this many points of float32's."""

AGREEMENT_SLACK = 2.0
"""Its per-image agreement with float32 may fall at most this many points below float32's own
agreement with other random starts."""

MIN_SAMPLES = 200
"""Images a parity measurement must compare (per precision, over all its cells)."""

MIN_SPEEDUP = 1.10
"""``auto`` takes a passing precision only when it was measured at least this much faster."""


class PrecisionError(VlmbenchError):
    """A precision that may not run here (unknown, CUDA-only on a CPU, or without measured parity)."""


def check_choice(precision: str, device: torch.device | None = None) -> None:
    """One-line error for an unknown precision, or TF32 off CUDA."""
    if precision not in CHOICES:
        raise PrecisionError(f"unknown precision {precision!r}; choose one of {', '.join(CHOICES)}")
    if precision == "tf32" and device is not None and device.type != "cuda":
        raise PrecisionError("tf32 exists only on CUDA devices; this run is on the CPU (use fp32)")


def hardware_name(device: torch.device) -> str:
    """The GPU's name, else the CPU's model name (``/proc/cpuinfo``), else the processor type."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


@contextmanager
def running_in(precision: str, device: torch.device) -> Iterator[None]:
    """Run the enclosed forward and backward passes in ``precision`` (see the module docstring)."""
    if precision == "fp32":
        yield
        return
    if precision == "tf32":
        previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
        return
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
        return
    raise PrecisionError(f"cannot run in precision {precision!r}")


@dataclass(frozen=True)
class ParityKey:
    """What a parity measurement depends on."""

    hardware: str
    model: str  # the --model spec
    weights: str  # its weights' fingerprint
    test_time_defense: str  # the test-time parts of the defense ("none": the classifier alone)
    precision: str
    torch: str

    def path(self) -> Path:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:20]
        return cache_dir() / "parity" / f"{digest}.json"


def key_for(device: torch.device, model: str, weights: str, test_time_defense: str, precision: str) -> ParityKey:
    return ParityKey(hardware_name(device), model, weights, test_time_defense or "none", precision, torch.__version__)


def read_record(key: ParityKey) -> dict[str, Any] | None:
    """The stored parity record of ``key``, or None (absent, unreadable, or for another key)."""
    try:
        record = json.loads(key.path().read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == asdict(key) else None


def write_record(key: ParityKey, measured: dict[str, Any]) -> dict[str, Any]:
    """Store ``measured`` (see :func:`verdict`) as ``key``'s record; returns the record."""
    record = {"key": asdict(key), **measured, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(record, key.path())
    return record


def verdict(fp32: list[bool], fp32_other_starts: list[bool], candidate: list[bool],
            seconds: dict[str, float]) -> dict[str, Any]:
    """The parity figures of three per-image robust verdicts (same images, same order) and the attack
    time of each run: robust accuracies, agreements, speed-up over float32 and ``passed``."""
    n = len(fp32)
    if not n or len(fp32_other_starts) != n or len(candidate) != n:
        raise PrecisionError("a parity measurement needs the same images in all three runs")

    def percent(values: list[bool]) -> float:
        return 100.0 * sum(values) / n

    def agreement(a: list[bool], b: list[bool]) -> float:
        return 100.0 * sum(x == y for x, y in zip(a, b)) / n

    figures = {
        "samples": n,
        "robust_fp32": percent(fp32),
        "robust_fp32_other_starts": percent(fp32_other_starts),
        "robust_candidate": percent(candidate),
        "agreement_candidate": agreement(candidate, fp32),
        "agreement_fp32_other_starts": agreement(fp32_other_starts, fp32),
        "seconds": seconds,
        "speedup": seconds["fp32"] / seconds["candidate"] if seconds.get("candidate") else 0.0,
        "tolerance_points": TOLERANCE_POINTS,
        "agreement_slack": AGREEMENT_SLACK,
        "min_samples": MIN_SAMPLES,
    }
    reasons = []
    if n < MIN_SAMPLES:
        reasons.append(f"only {n} images compared (at least {MIN_SAMPLES})")
    if abs(figures["robust_candidate"] - figures["robust_fp32"]) > TOLERANCE_POINTS:
        reasons.append(f"robust accuracy {figures['robust_candidate']:.1f}% against fp32's {figures['robust_fp32']:.1f}% "
                       f"(more than {TOLERANCE_POINTS:g} point apart)")
    if figures["agreement_candidate"] < figures["agreement_fp32_other_starts"] - AGREEMENT_SLACK:
        reasons.append(f"agrees with fp32 on {figures['agreement_candidate']:.1f}% of images, fp32 with itself "
                       f"with other random starts on {figures['agreement_fp32_other_starts']:.1f}%")
    return {**figures, "passed": not reasons, "why_not": reasons}


_measuring: contextvars.ContextVar[bool] = contextvars.ContextVar("vlmbench_parity_measuring", default=False)


@contextmanager
def measuring() -> Iterator[None]:
    """Inside, any precision may run without a record: ``vlmbench parity`` measures the record itself."""
    token = _measuring.set(True)
    try:
        yield
    finally:
        _measuring.reset(token)


def records(hardware: str, model: str, test_time_defense: str, precision: str) -> list[dict[str, Any]]:
    """The stored records of ``model`` (any weights) with these hardware, test-time defense, precision
    and this torch version."""
    found = []
    for path in sorted((cache_dir() / "parity").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        key = record.get("key", {})
        if (key.get("hardware"), key.get("model"), key.get("test_time_defense"), key.get("precision"), key.get("torch")) == (
                hardware, model, test_time_defense or "none", precision, torch.__version__):
            found.append(record)
    return found


def check_request(requested: str, device: torch.device, models: list[str], test_time_defenses: list[str]) -> None:
    """Before any work: refuse an explicit ``tf32``/``bf16`` for a (model, test-time defense) that has
    no passing record at all (the record's weights are checked per cell, once they are loaded)."""
    check_choice(requested, device)
    if requested in (AUTO, "fp32") or _measuring.get():
        return
    hardware = hardware_name(device)
    for model in models:
        for defense in test_time_defenses:
            found = records(hardware, model, defense, requested)
            if not any(record.get("passed") for record in found):
                why = ("no parity with fp32 has been measured" if not found
                       else "; ".join(found[-1].get("why_not", ())) or "its parity record did not pass")
                raise PrecisionError(_refusal(requested, model, defense, hardware, why))


def _refusal(precision: str, model: str, defense: str, hardware: str, why: str) -> str:
    return (f"{precision} may not run {model} ({defense or 'none'}) on {hardware}: {why}; measure it with "
            f"`vlmbench parity --model {model} --precision {precision}` or use fp32")


def resolve(requested: str, device: torch.device, model: str, weights: str, test_time_defense: str
            ) -> tuple[str, dict[str, Any] | None]:
    """The precision a cell runs in, and the parity record that allows it (None for fp32).

    ``fp32`` is always allowed; ``tf32`` and ``bf16`` need a passing record (else
    :class:`PrecisionError`, one line saying how to measure it); ``auto`` is the fastest precision
    with a passing record measured at least :data:`MIN_SPEEDUP` faster, else ``fp32``."""
    check_choice(requested, device)
    if requested == "fp32":
        return "fp32", None
    if requested != AUTO:
        if _measuring.get():
            return requested, None
        record = read_record(key_for(device, model, weights, test_time_defense, requested))
        if record is None or not record.get("passed"):
            why = ("no parity with fp32 has been measured for these weights" if record is None
                   else "; ".join(record.get("why_not", ())))
            raise PrecisionError(_refusal(requested, model, test_time_defense, hardware_name(device), why))
        return requested, record
    options = [p for p in ("bf16", "tf32") if p != "tf32" or device.type == "cuda"]
    passing = [(record["speedup"], p, record) for p in options
               if (record := read_record(key_for(device, model, weights, test_time_defense, p)))
               and record.get("passed") and record.get("speedup", 0) >= MIN_SPEEDUP]
    if not passing:
        return "fp32", None
    _, precision, record = max(passing, key=lambda item: item[0])
    return precision, record
