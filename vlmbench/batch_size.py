"""A cell's batch size when the run leaves it to vlmbench (``--batch-size`` not given).

The batch size is part of a cell's protocol: random starts, random targets and a random defense's
draws are seeded per batch (:func:`vlmbench.cell.batch_seed`), so two batch sizes are two
measurements, and each is recorded (``batch_size`` in every row, and in the cell id). Left to
vlmbench, a cell's batch size is, in this order:

1. **the size of a cell of the same measurement already in the output folder** (the same protocol
   but for the batch size; finished cells first, then staged or claimed ones), so that a rerun reads
   or resumes it — on any machine — instead of starting a second copy at another size;
2. **the size of the output folder's cells of the same setting** (model, defense, images, seed,
   evaluation draws: :data:`vlmbench.cell.SETTING_KEYS`), so that a setting's cells share their clean
   predictions — a random defense's clean draws are seeded per batch too, and both tracks and every
   attack of a setting must show one clean figure;
3. **on the CPU, 128** (:data:`~vlmbench.request.CPU_BATCH_SIZE`): there is no accelerator memory to
   fill, and larger batches do not run faster;
4. **on a GPU, measured from free memory, once per setting**: the peak memory of one attack step
   (forward and input gradient of the model the attack differentiates, EOT draws included, then a
   forward of the defended pipeline) at :data:`PROBE_SIZES` images gives a fixed and a per-image
   cost; to the per-image cost come :data:`STATE_COPIES` image-sized tensors, the attack's own state
   (AutoAttack's APGD keeps about ten). The batch is the largest power of two, at most
   :data:`MAX_AUTO_BATCH`, whose estimate fits in :data:`HEADROOM` of the memory free now — for the
   heaviest track the run plans for the setting (the adaptive track with its EOT draws, where there is
   one) — and no larger than the images need (a power of two ≥ their count).

The choice is made under a lock per setting and claimed at once (the cell's protocol is staged,
:func:`vlmbench.cell.stage_protocol`), so concurrent processes writing into one folder adopt one size.
How each cell's size was chosen, with the measured figures, is in its run metadata
(``batch_size_choice``). The estimate can still be wrong (fragmentation, a defense whose memory grows
otherwise): a batch that does not fit stops the run in one line with a size to give, keeping every
finished cell.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol as Interface

import torch

from vlmbench.cell import cell_lock, setting_identity, stage_protocol, staged_protocols
from vlmbench.plan import RunError
from vlmbench.protocol import Protocol, identity_hash
from vlmbench.request import CPU_BATCH_SIZE

MAX_AUTO_BATCH = 1024
"""The largest batch vlmbench chooses: beyond it a GPU gains little, and a batch is the unit an
interrupted cell resumes from."""

HEADROOM = 0.8
"""The share of the free memory a chosen batch's estimate may fill (the rest: fragmentation, the
allocator's rounding, what the estimate misses)."""

STATE_COPIES = 16
"""Image-sized float32 tensors per image counted for the attack's own state (iterates, best points,
gradients, momentum), on top of the measured model cost."""

PROBE_SIZES = (4, 8)
"""The batch sizes the memory of one attack step is measured at; their difference gives the cost of
one image."""


@dataclass(frozen=True)
class BatchChoice:
    """A cell's batch size and how it was chosen.

    Attributes:
        size: images per batch.
        rule: ``given`` (``--batch-size``), ``existing cell`` (the output folder's cell of the same
            measurement), ``setting's cells`` (the folder's cells of the same setting), ``cpu default``
            or ``measured`` (free GPU memory).
        figures: for ``measured``, what decided it (free, fixed, per-image model and state MiB, the
            headroom, the probe sizes, the heaviest track).
    """

    size: int
    rule: str
    figures: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What the run metadata keeps (``batch_size_choice``)."""
        return {"batch_size": self.size, "rule": self.rule, **self.figures}


class MemoryMeter(Interface):
    """Measures accelerator memory: what is free, and the peak a function allocates."""

    def free_bytes(self) -> int: ...

    def peak_bytes(self, run: Callable[[], None]) -> int: ...


class CudaMeter:
    """:class:`MemoryMeter` of one CUDA device, through torch's caching allocator: free is the driver's
    free memory plus what the allocator holds unused; a peak is ``max_memory_allocated`` above what was
    allocated before."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def free_bytes(self) -> int:
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device))

    def peak_bytes(self, run: Callable[[], None]) -> int:
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        run()
        torch.cuda.synchronize(self.device)
        return int(torch.cuda.max_memory_allocated(self.device) - before)


def meter_for(device: torch.device) -> MemoryMeter | None:
    """The memory meter of ``device``: CUDA's, none on the CPU."""
    return CudaMeter(device) if device.type == "cuda" else None


def step_memory(meter: MemoryMeter, crafted: torch.nn.Module, defended: torch.nn.Module, image: torch.Tensor,
                eot_draws: int) -> tuple[float, float]:
    """``(fixed, per_image)`` bytes of one attack step at :data:`PROBE_SIZES` images: the forward and input
    gradient of ``crafted`` (the model the attack differentiates, in its label space) on ``eot_draws``
    copies of each image, then a forward of ``defended`` (which may run optimisation of its own).
    ``image``: one ``(3,H,W)`` image in [0,1] on the device, repeated to each size."""

    def step(n: int) -> None:
        x = image.unsqueeze(0).repeat(n * eot_draws, 1, 1, 1).requires_grad_(True)
        logits = crafted(x).float()
        (grad,) = torch.autograd.grad(logits.logsumexp(dim=1).sum(), x)
        del grad, logits
        with torch.no_grad():
            defended(image.unsqueeze(0).repeat(n, 1, 1, 1))

    small, large = PROBE_SIZES
    peaks = [meter.peak_bytes(lambda n=n: step(n)) for n in (small, large)]
    per_image = (peaks[1] - peaks[0]) / (large - small)
    if per_image <= 0:  # no growth measured (the allocator's rounding): take the whole peak as per-image
        per_image = peaks[1] / large
    return max(peaks[1] - per_image * large, 0.0), per_image


def largest_fitting(free: float, fixed: float, per_image: float, images: int) -> int:
    """The largest power of two ≤ :data:`MAX_AUTO_BATCH` with ``fixed + size × per_image`` within
    :data:`HEADROOM` of ``free``, and no larger than the power of two ≥ ``images``; 0 when not even one
    image fits."""
    need = 1 << max(images - 1, 0).bit_length()
    size = min(MAX_AUTO_BATCH, need)
    while size >= 1 and fixed + size * per_image > HEADROOM * free:
        size //= 2
    return size


def measured(meter: MemoryMeter, attacked: dict[str, tuple[torch.nn.Module, int]], defended: torch.nn.Module,
             image: torch.Tensor, images: int, what: str) -> BatchChoice:
    """The batch size of a setting from free memory (module docstring, rule 4): the smallest over its
    tracks. ``attacked``: per track, the model its attacks differentiate (in their label space) and
    their EOT draws; ``defended``: the pipeline the setting scores; ``image``: one of its images on the
    device; ``images``: how many the setting evaluates; ``what``: the setting, for the error when not
    even one image fits."""
    free = meter.free_bytes()
    state = STATE_COPIES * image.numel() * 4
    chosen: tuple[int, str, float, float] | None = None
    for track, (crafted, eot_draws) in attacked.items():
        try:
            fixed, model_per_image = step_memory(meter, crafted, defended, image, eot_draws)
        except torch.cuda.OutOfMemoryError:
            fixed, model_per_image = float("inf"), float("inf")
        size = largest_fitting(free, fixed, model_per_image + state, images)
        if chosen is None or size < chosen[0]:
            chosen = (size, track, fixed, model_per_image)
    assert chosen is not None, "a setting has at least one track"
    size, track, fixed, model_per_image = chosen
    if size < 1:
        raise RunError(f"not even one image of {what} fits in the accelerator's free memory ({free / 2**30:.2f} GiB); "
                       "free memory on the device or run on a larger one")
    mib = 2**20
    return BatchChoice(size, "measured", {"free_mib": round(free / mib, 1), "fixed_mib": round(fixed / mib, 1),
                                          "model_mib_per_image": round(model_per_image / mib, 2),
                                          "state_mib_per_image": round(state / mib, 2), "headroom": HEADROOM,
                                          "probe_sizes": list(PROBE_SIZES), "heaviest_track": track})


class OutputIndex:
    """The batch sizes of the cells an output folder holds: finished cells (their files are read once,
    being written atomically and never changed) and staged or claimed ones (read each time)."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self._finished: dict[str, Held | None] = {}  # file name → what the file holds

    def sizes(self, measurement: str, setting: str) -> tuple[list[int], list[int]]:
        """The batch sizes of the held cells of ``measurement`` (:func:`held` of a protocol: its identity
        but for the batch size), and of ``setting`` (:func:`vlmbench.cell.setting_identity`); each the finished cells' sizes when
        there are any, else the staged ones'. Staging is read first: a cell that finishes meanwhile has its
        file written before its staging folder goes."""
        staged = [held(raw) for raw in staged_protocols(self.output)]
        finished = []
        for path in sorted(self.output.glob("*.parquet")) if self.output.is_dir() else []:
            if path.name not in self._finished:
                self._finished[path.name] = _file_held(path)
            finished.append(self._finished[path.name])

        def of(field: str, wanted: str) -> list[int]:
            done = [h.size for h in finished if h is not None and getattr(h, field) == wanted]
            return done or [h.size for h in staged if getattr(h, field) == wanted]

        return of("measurement", measurement), of("setting", setting)


@dataclass(frozen=True)
class Held:
    """What a cell of an output folder measures: its protocol's identity but for the batch size, its
    setting (:func:`vlmbench.cell.setting_identity`), and its batch size."""

    measurement: str
    setting: str
    size: int


def held(record: dict[str, Any]) -> Held:
    """:class:`Held` of a protocol, as :meth:`Protocol.to_dict` or its JSON gives it."""
    return Held(identity_hash(record, without=("versions", "batch_size")), setting_identity(record),
                int(record["batch_size"]))


def _file_held(path: Path) -> Held | None:
    """What a finished cell file holds, or None when it has no readable protocol (it is then no cell to
    adopt; the run checks the files it uses itself)."""
    import json

    import pyarrow.parquet as pq

    try:
        column = pq.ParquetFile(path).read_row_group(0, columns=["protocol"]).column(0)
        return held(json.loads(column[0].as_py()))
    except Exception:  # noqa: BLE001 — any unreadable file is simply not a cell to adopt
        return None


def choose(given: int | None, protocol_at: Callable[[int], Protocol], output: Path, index: OutputIndex,
           measure: Callable[[], BatchChoice] | None, claim: bool) -> BatchChoice:
    """A cell's batch size (module docstring). ``protocol_at(size)``: the cell's protocol at a batch
    size; ``measure``: rule 4 for the cell's setting, None where there is no meter (the CPU); ``claim``:
    stage the chosen cell's protocol under the setting's lock (a run does, the planner does not)."""
    if given is not None:
        return BatchChoice(given, "given")
    cell = held(protocol_at(CPU_BATCH_SIZE).to_dict())
    lock = cell_lock(output, f"batch-size-{cell.setting}") if claim else nullcontext()
    with lock:
        same_measurement, same_setting = index.sizes(cell.measurement, cell.setting)
        if same_measurement:
            return BatchChoice(max(same_measurement), "existing cell")
        if same_setting:
            return BatchChoice(max(same_setting), "setting's cells")
        choice = BatchChoice(CPU_BATCH_SIZE, "cpu default") if measure is None else measure()
        if claim:
            stage_protocol(output, protocol_at(choice.size))
        return choice
