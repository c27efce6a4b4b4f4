"""``vlmbench parity``: measure whether a faster precision gives float32's robust accuracy, and record it.

The measurement runs the requested cells three times through the ordinary runner — float32, float32
with other random starts, and the candidate precision — compares the per-image robust verdicts
(:func:`vlmbench.precision.verdict`) and the attack time, and stores the record that
:func:`vlmbench.precision.resolve` consults (``--precision auto`` takes a passing, faster precision).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from vlmbench.paths import cache_dir
from vlmbench.precision import PrecisionError, key_for, measuring, verdict, write_record
from vlmbench.request import CPU_BATCH_SIZE, RunRequest


def measure(request: RunRequest, candidate: str) -> dict[str, Any]:
    """Run ``request`` (one model and one defense) in fp32, in fp32 with other random starts and in
    ``candidate``; store and return the parity record of (hardware, model weights, the defense's
    test-time parts, ``candidate``, torch version).

    The candidate's cells differ from fp32's in their id (the precision is part of it), so their
    random starts differ too. The noise reference therefore runs fp32 on the same images with other
    random starts: in batches of half the size (a cell's random starts are drawn per batch, from its
    id, which contains the batch size), not with another seed, which would choose other images."""
    from vlmbench.execute import execute
    from vlmbench.plan import plan

    if candidate not in ("bf16", "tf32"):
        raise PrecisionError(f"parity is measured for bf16 or tf32 against fp32, not {candidate!r}")
    if len(request.models) != 1 or len(request.defenses) != 1:
        raise PrecisionError("a parity record is per model and defense: give one --model and one --defense")
    batch = request.batch_size or CPU_BATCH_SIZE  # one given size: the noise reference halves it
    runs = {"fp32": replace(request, precision="fp32", batch_size=batch),
            "fp32_other_starts": replace(request, precision="fp32", batch_size=batch // 2 if batch > 1 else 2),
            "candidate": replace(request, precision=candidate, batch_size=batch)}
    scratch = tempfile.mkdtemp(prefix="parity-", dir=_scratch_root())
    rows: dict[str, pd.DataFrame] = {}
    try:
        with measuring():
            for name, run in runs.items():
                the_plan = plan(replace(run, output=Path(scratch) / name))
                outcomes = execute(the_plan)
                rows[name] = pd.concat([o.rows for o in outcomes], ignore_index=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    order = ["dataset", "eps", "track", "attack", "sample_index"]
    aligned = {name: frame.sort_values(order, kind="stable").reset_index(drop=True) for name, frame in rows.items()}
    if any(not aligned[name][order].equals(aligned["fp32"][order]) for name in aligned):
        raise PrecisionError("the three parity runs evaluated different images; nothing was recorded")
    seconds = {name: float(frame["time_s"].sum()) for name, frame in rows.items()}
    figures = verdict(*(aligned[name]["robust"].astype(bool).tolist() for name in ("fp32", "fp32_other_starts", "candidate")),
                      seconds)
    weights = json.loads(rows["candidate"]["protocol"].iloc[0])["model"]["version"]  # before training-time parts
    key = key_for(the_plan.device, request.models[0], weights, the_plan.defenses[0].test_time, candidate)
    measured = {**figures, "cells": int(rows["fp32"]["cell_id"].nunique()),
                "request": {"defense": request.defenses[0], "attacks": list(request.attacks),
                            "datasets": sorted(set(rows["fp32"]["dataset"])), "eps": list(request.eps),
                            "samples_per_dataset": request.n_samples, "seed": request.seed,
                            "batch_size": batch}}
    return write_record(key, measured)


def _scratch_root() -> str:
    folder = cache_dir() / "parity" / "runs"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)
