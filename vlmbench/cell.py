"""One cell's life on disk: its file names, its lock, its staged batches and resume, its per-cell
sanity flags, and the final Parquet file.

Resume: each finished batch is written atomically to ``OUTPUT/.partial/<cell>/``; when a cell is
complete its rows are merged into ``OUTPUT/<cell>.parquet`` (atomically) and the staging folder is
removed. A rerun skips complete cells and, inside an interrupted cell, the finished batches. Every
batch's randomness is seeded from (seed, cell, batch position), so a resumed cell has exactly the
rows an uninterrupted one would have had. One process at a time computes a cell (its lock file), so
several processes, shards or workers may write into one output folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vlmbench import results
from vlmbench.adaptive import trace_steps, verify_declared_steps
from vlmbench.defense import Defense
from vlmbench.cost import encoder_of, inference_cost
from vlmbench.flags import cell_flags
from vlmbench.paths import write_atomically
from vlmbench.precision import running_in
from vlmbench.protocol import Protocol, default_step_size, identity_hash
from vlmbench.batch import (Cell, attack_images, check_logits, crafting_model, in_label_space, load_batch, predict,
                            prefetched, run_batch)
from vlmbench.plan import RunError


@dataclass
class CellOutcome:
    path: Path
    protocol: Protocol
    status: str  # "computed", "resumed" or "cached"
    rows: pd.DataFrame = field(repr=False)


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


STAGED_PROTOCOL = "protocol.json"


def stage_protocol(output: Path, protocol: Protocol) -> None:
    """Write the cell's protocol (canonical JSON) into its staging folder, atomically, unless it is there:
    a staged or claimed cell says what it measures, so that a run leaving the batch size to vlmbench
    adopts its size (:mod:`vlmbench.batch_size`)."""
    path = output / results.PARTIAL_DIR / protocol.cell_hash() / STAGED_PROTOCOL
    if not path.exists():
        write_atomically(path, lambda tmp: tmp.write_text(protocol.to_json()))


def release_unstarted(staging: Path) -> None:
    """Remove a cell's staging folder when it holds no finished batch (only its claim, or nothing)."""
    if staging.is_dir() and not any(staging.glob("*.parquet")):
        shutil.rmtree(staging, ignore_errors=True)


def staged_protocols(output: Path) -> Iterator[dict[str, Any]]:
    """The protocols (as dicts) of the cells staged or claimed in ``output`` (:func:`stage_protocol`);
    a folder whose record is missing or unreadable is passed over."""
    partial = output / results.PARTIAL_DIR
    for path in sorted(partial.glob(f"*/{STAGED_PROTOCOL}")) if partial.is_dir() else []:
        try:
            yield json.loads(path.read_text())
        except (OSError, ValueError):
            continue


def _staged_adversarials(path: Path, n: int) -> bool:
    """Whether a staged batch of ``n`` adversarial images is present and readable."""
    try:
        return path.exists() and np.load(path, mmap_mode="r").shape[0] == n
    except (OSError, ValueError):
        return False


def run_cell(
    cell: Cell, output: Path, meta: dict[str, Any], on_advance: Callable[[int], None] | None,
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
                with running_in(protocol.precision, cell.device):
                    try:
                        return compute_cell(cell, final, staging, meta, on_advance)
                    except torch.cuda.OutOfMemoryError:  # its checks, sweep or a batch: one line, what to do
                        release_unstarted(staging)  # a size that does not fit is not one for a rerun to adopt
                        raise RunError(out_of_memory_message(cell, min(protocol.batch_size, len(indices)))) from None
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


def compute_cell(
    cell: Cell, final: Path, staging: Path, meta: dict[str, Any], on_advance: Callable[[int], None] | None
) -> CellOutcome:
    protocol, indices = cell.protocol, cell.indices
    cell_id = protocol.cell_hash()
    batch_size = protocol.batch_size
    stage_protocol(final.parent, protocol)
    first, first_labels = load_batch(cell, indices[:batch_size])  # loaded once: the checks and batch 0 share it
    torch.manual_seed(batch_seed(protocol.seed, cell_id, -3))
    with trace_steps() as seen, torch.no_grad():  # the defense's contract, before anything else uses it:
        logits = cell.defended(first)
    check_logits(logits, len(first), cell.classifier.num_classes, protocol.defense.name)  # (N, C), finite
    verify_declared_steps(cell.parts, seen)  # every declared step has its BPDA path, and no other
    flags: str | None = None  # measured with batch 0, whose attack the ε sweep reuses at 1ε
    encoders = [encoder_of(model) for model in (cell.model, cell.original) if model is not None]
    cost = inference_cost(cell.defended, cell.classifier, first, batch_seed(protocol.seed, cell_id, -2),
                          encoders=encoders, defense=protocol.defense.name)
    clean_id = clean_identity(protocol)
    started = time.perf_counter()
    frames, resumed, adversarial_parts = [], False, []
    starts = range(0, len(indices), batch_size)
    staged = {start: _staged_batch(cell, staging, start) for start in starts}
    pending = [indices[start : start + batch_size] for start in starts if start and staged[start] is None]
    with prefetched(cell, pending) as loaded:  # read ahead while the batches before are computed
        for start in starts:
            adversarial_part = staging / f"{start:09d}.adv.npy"  # staged before the rows: rows imply images
            batch_indices = indices[start : start + batch_size]
            frame = staged[start]
            if frame is None:
                kept: list[torch.Tensor] | None = [] if cell.save_adversarials else None
                frame = run_batch(cell, batch_indices, batch_seed(protocol.seed, cell_id, start),
                                  batch_seed(protocol.seed, clean_id, start), kept,
                                  loaded=(first, first_labels) if start == 0 else next(loaded))
                if flags is None:
                    flags = measure_cell_flags(cell, first, first_labels, batch_seed(protocol.seed, cell_id, -1),
                                               frame if start == 0 else None, logits)
                frame["flags"] = flags
                frame = frame.assign(**cost)
                if kept is not None:
                    _save_npy_atomic(kept[0].numpy().astype("<f4", copy=False), adversarial_part)
                results.write_atomic(results.to_table(frame, {}), staging / f"{start:09d}.parquet")
            else:
                resumed = True
                if flags is None:
                    flags = str(frame["flags"].iloc[0])  # measured when the batch was staged
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


def out_of_memory_message(cell: Cell, images: int) -> str:
    """One line for a batch that does not fit in GPU memory: what to change, and what it costs."""
    free = ""
    if cell.device.type == "cuda":
        available, total = torch.cuda.mem_get_info(cell.device)
        free = f" ({available / 2**30:.1f} of {total / 2**30:.1f} GiB free now)"
    protocol = cell.protocol
    return (f"a batch of {images} images of {protocol.data.dataset} · {protocol.defense.name} · {protocol.attack.name} "
            f"does not fit in GPU memory{free}; rerun with a smaller --batch-size (e.g. {max(images // 2, 1)}): the "
            "finished cells are kept, but a new batch size is a new cell (random starts are drawn per batch)")


SETTING_KEYS = ("model", "defense", "data", "seed", "eval_draws")
"""The protocol fields of a cell's setting: with the batch size, what determines its clean predictions."""


def clean_identity(protocol: Protocol) -> str:
    """What determines a cell's clean predictions: model, defense, images, seed, evaluation draws and
    batch size — not the track or the attack, so every cell of one setting and batch size shares its
    clean figure (:mod:`vlmbench.batch_size` gives a setting's cells one batch size when it chooses)."""
    record = protocol.to_dict()
    return identity_hash({k: record[k] for k in (*SETTING_KEYS, "batch_size")}, without=())


def setting_identity(record: dict[str, Any]) -> str:
    """The setting of a protocol (as :meth:`Protocol.to_dict` or its JSON gives it): :data:`SETTING_KEYS`
    hashed, 16 hex digits; cells of one setting differ in attack, ε, track or batch size."""
    return identity_hash({k: record[k] for k in SETTING_KEYS}, without=())


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


def _staged_batch(cell: Cell, staging: Path, start: int) -> pd.DataFrame | None:
    """The rows of the cell's batch at ``start`` if a previous run staged them usably, else None."""
    batch_indices = cell.indices[start : start + cell.protocol.batch_size]
    frame = _read_part(staging / f"{start:09d}.parquet", batch_indices)
    if cell.save_adversarials and frame is not None and not _staged_adversarials(
            staging / f"{start:09d}.adv.npy", len(batch_indices)):
        return None  # staged by a run without --save-adversarials: recompute (same seeds, same rows)
    return frame


def _read_part(path: Path, batch_indices: list[int]) -> pd.DataFrame | None:
    """A finished batch from staging, or None when absent or unusable (it is then recomputed)."""
    if not path.exists():
        return None
    try:
        frame = results.read_file(path).to_pandas()
    except results.ResultsError:
        return None
    return frame if frame["sample_index"].tolist() == batch_indices else None


def measure_cell_flags(cell: Cell, x: torch.Tensor, y: torch.Tensor, seed: int,
                       first_rows: pd.DataFrame | None = None, predicted: torch.Tensor | None = None) -> str:
    """The per-cell sanity flags (:func:`vlmbench.flags.cell_flags`, and the ε sweep) on the cell's
    first batch ``x``, ``y``, as a ``;``-joined string. ``first_rows``: the rows the cell's attack
    produced on that batch; the sweep takes its 1ε point from them instead of attacking again.
    ``predicted``: the defended model's logits on ``x`` from the contract check, which the randomness
    check compares with a new prediction."""
    torch.manual_seed(seed)
    labels = y if cell.superclasses is None else cell.superclasses.of(y)
    found = cell_flags(cell.defended, in_label_space(cell, crafting_model(cell)), x, labels,
                       declared_stochastic=cell.protocol.eval_draws > 1, predicted=predicted)
    if cell.eps_sweep and cell.attack.cls.name != "none":
        at_eps = None
        if first_rows is not None and not cell.skip:  # a cascade's rows keep earlier attacks' outcomes
            at_eps = int(first_rows["adv_correct"].iloc[:SWEEP_SAMPLES].sum())
        found += _eps_sweep_flags(cell, x[:SWEEP_SAMPLES], y[:SWEEP_SAMPLES], seed, at_eps)
    return ";".join(found)


SWEEP_SAMPLES = 16


SWEEP_FACTORS = (1, 2, 4)


SWEEP_TOLERANCE = 1  # images: one more robust image at a larger ε is within the random starts' noise


def _eps_sweep_flags(cell: Cell, x: torch.Tensor, y: torch.Tensor, seed: int, at_eps: int | None = None) -> list[str]:
    """``eps-not-monotone`` when the cell's attack leaves more than :data:`SWEEP_TOLERANCE` more robust
    images at a larger multiple of ε (1, 2, 4 ε; the default step-size rule at each ε when the cell
    used it, else its step scaled alike) on the first :data:`SWEEP_SAMPLES` images. ``at_eps``: the
    robust count the cell's own attack left on them at 1ε, when known (it is not attacked again)."""
    robust = [] if at_eps is None else [at_eps]
    threat = cell.attack.threat
    default_rule = threat.steps > 0 and threat.step_size == default_step_size(threat.norm, threat.eps, threat.steps)
    for factor in SWEEP_FACTORS[len(robust):]:
        eps = threat.eps * factor
        if threat.norm == "linf" and eps > 1:  # beyond the [0,1] box: the sweep ends here
            break
        # the step-size rule at the larger ε when the cell used it, else the cell's step scaled alike
        step = default_step_size(threat.norm, eps, threat.steps) if default_rule else threat.step_size * factor
        scaled = replace(threat, eps=eps, eps_label=f"{factor}x{threat.eps_label}", step_size=step)
        torch.manual_seed(seed)
        generator = torch.Generator(device=cell.device).manual_seed(seed)
        x_adv, _, _, _ = attack_images(cell, x, y, replace(cell.attack, threat=scaled), generator)
        robust.append(int((predict(cell, x_adv, seed) == y).sum()))
    rises = [f for f, a, b in zip(SWEEP_FACTORS[1:], robust, robust[1:]) if b > a + SWEEP_TOLERANCE]
    return [f"eps-not-monotone=sweep {'/'.join(map(str, robust))} at {'/'.join(f'{f}x' for f in SWEEP_FACTORS[:len(robust)])}"] if rises else []

def defense_metadata(parts: tuple[Defense, ...]) -> dict[str, dict[str, Any]]:
    """The run metadata's ``defenses``: each part of the cell's defense (``tecoa+ttc`` has two) with what it
    declares (:meth:`Defense.declaration`: kind, randomness, BPDA steps, paper, code, reported figures).
    Run metadata, not protocol: declaring a paper or a figure does not change a cell's identity."""
    return {part.name: part.declaration() for part in parts}
