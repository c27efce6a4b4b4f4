"""``vlmbench results verify``: re-check the adversarial images a run stored (``run --save-adversarials``).

For each cell file with an adversarial file beside it (:func:`vlmbench.cell.adversarial_path`):

1. the file is the cell's: its ``cell_id`` and ``protocol`` equal the cell file's (a file renamed onto
   another cell is caught), its ``sample_index`` equals the rows' (same order), its images have the
   shape of the clean images;
2. the model and defense are rebuilt through the registry from the protocol record, with the runner's
   own functions (:func:`vlmbench.plan.resolve_defense`, :func:`~vlmbench.execute.defended_pipeline`,
   :func:`~vlmbench.plan.prepare_dataset`). Verification is refused with one line (``cannot verify: …``)
   when the loaded weights, or a defense or dataset plugin's source, do not have the recorded fingerprint;
3. the clean images are recomputed from the dataset by sample index; every adversarial image must lie in
   [0,1] and in the recorded ε-ball of its clean image (the tolerances of the runner's own check);
4. clean and adversarial images are re-scored by the defended model exactly as the runner scored them
   (:func:`vlmbench.batch.predict_draws`: the cell's batches, the same per-batch seeds, the majority
   vote over ``eval_draws`` forward draws) and compared with the recorded ``clean_pred``/``adv_pred``.

Tolerance. A deterministic pipeline must reproduce every prediction. A random defense (``eval_draws``
> 1) is re-scored with the same seeds, so on the same hardware and library versions its draws repeat
exactly; elsewhere floating-point differences can flip a draw where the vote is close. A differing
prediction of a random defense is therefore tolerated when the verifier's own draws were split and at
least one of them chose the recorded class; a differing prediction against a unanimous re-scoring
fails. Tolerated images are counted in the ``ok`` line.

Rows a cascade kept from an earlier attack (``cascade_after`` non-empty and ``attacked`` false) store
the clean image and the earlier attack's prediction: their images are checked, their adversarial
prediction is not re-scored.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vlmbench import results
from vlmbench.batch import Cell, load_batch, predict_draws
from vlmbench.cell import adversarial_path, batch_seed, clean_identity
from vlmbench.execute import defended_pipeline
from vlmbench.plan import DataChoice, RunRequest, prepare_dataset, resolve_defense, resolve_device
from vlmbench.attack import perturbation_norms
from vlmbench.errors import VlmbenchError
from vlmbench.protocol import Protocol

MEMBERS = ("sample_index", "images", "encoding", "cell_id", "protocol")
ENCODINGS = {"float32": np.float32, "uint8/255": np.uint8}


class CannotVerify(VlmbenchError):
    """The recorded model, defense or data cannot be rebuilt as they were (one line)."""


@dataclass
class Outcome:
    line: str  # "ok (4/4 agree)", "FAIL: ...", "cannot verify: ...", "no adversarial file"
    failed: bool

    @property
    def status(self) -> str:
        """``verified``, ``failed``, ``cannot verify``, ``no attack`` (a clean-only cell) or ``no adversarial file``."""
        if self.line.startswith("ok"):
            return "verified"
        if self.line.startswith("FAIL"):
            return "failed"
        if self.line.startswith("cannot verify"):
            return "cannot verify"
        return "no attack" if self.line.endswith("(no attack)") else "no adversarial file"


REPORT_KIND = "vlmbench results verify"


def verify_paths(paths: list[Path], data_root: Path | None = None, device: str = "auto",
                 require_adversarials: bool = False) -> Iterator[tuple[Path, Outcome]]:
    """``(cell file, outcome)`` for every cell file under ``paths``."""
    verifier = Verifier(data_root, resolve_device(device))
    for path in paths:
        for file in results.result_files(path):
            yield file, verifier.verify(file, require_adversarials)


def report_record(outcomes: list[tuple[Path, Outcome]]) -> dict[str, Any]:
    """The JSON report of a verify run (``results verify --report``), which ``vlmbench leaderboard build
    --verification`` reads to mark verified rows: per cell file its ``cell_id`` (None if unreadable),
    ``file``, ``status`` (:attr:`Outcome.status`) and ``line``."""
    cells = []
    for file, outcome in outcomes:
        try:
            cell_id: str | None = str(results.read_file(file).column("cell_id")[0])
        except (results.ResultsError, OSError, IndexError):
            cell_id = None
        cells.append({"cell_id": cell_id, "file": str(file), "status": outcome.status, "line": outcome.line})
    return {"kind": REPORT_KIND, "cells": cells}


def load_adversarials(path: Path) -> dict[str, Any]:
    """The members of an adversarial file, images decoded to float32 (``uint8/255``: ``k / 255`` exactly).

    Raises:
        ValueError: not a readable adversarial file (one line).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in MEMBERS if name not in archive.files]
            if missing:
                raise ValueError(f"adversarial file {path.name} lacks {', '.join(missing)}")
            found = {name: archive[name] for name in MEMBERS}
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"adversarial file {path.name} is unreadable ({exc})") from None
    encoding = str(found["encoding"])
    if encoding not in ENCODINGS or found["images"].dtype != ENCODINGS[encoding]:
        raise ValueError(f"adversarial file {path.name} has images of type {found['images'].dtype} with encoding {encoding!r}")
    images = found["images"].astype(np.float32)
    if encoding == "uint8/255":
        images = images / np.float32(255)
    return {**found, "images": images, "cell_id": str(found["cell_id"]), "protocol": str(found["protocol"])}


class Verifier:
    """Verifies cells, rebuilding each (model, defense, dataset) once."""

    def __init__(self, data_root: Path | None, device: torch.device) -> None:
        self.data_root, self.device = data_root, device
        self._models: dict[str, Any] = {}
        self._pipelines: dict[str, Any] = {}

    def verify(self, file: Path, require_adversarials: bool = False) -> Outcome:
        try:
            rows = results.read_cell(file)
        except results.ResultsError as exc:
            return Outcome(f"FAIL: {exc}", True)
        protocol = Protocol.from_json(rows["protocol"].iloc[0])
        images_file = adversarial_path(file)
        if not images_file.exists():
            if protocol.attack.name == "none":
                return Outcome("no adversarial file (no attack)", False)
            recorded = results.run_metadata_of(file).get("adversarials")
            note = f" (the run saved {recorded}; it is missing)" if recorded else ""
            return Outcome(f"no adversarial file{note}", require_adversarials)
        try:
            stored = load_adversarials(images_file)
        except ValueError as exc:
            return Outcome(f"FAIL: {exc}", True)
        problem = _identity_problem(stored, rows, protocol, images_file)
        if problem:
            return Outcome(f"FAIL: {problem}", True)
        try:
            cell = self._cell(protocol, rows)
        except CannotVerify as exc:
            return Outcome(f"cannot verify: {exc}", True)
        except VlmbenchError as exc:
            return Outcome(f"cannot verify: {' '.join(str(exc).split())}", True)
        return _check(cell, rows, stored["images"])

    # -- rebuilding ------------------------------------------------------------------------------

    def _cell(self, protocol: Protocol, rows: pd.DataFrame) -> Any:
        """A :class:`vlmbench.batch.Cell` able to load the cell's clean images and score like the runner."""
        from vlmbench.defense import DefenseContext
        from vlmbench.fingerprint import source_fingerprint
        from vlmbench.paths import cache_dir
        from vlmbench.presets import get_preset
        from vlmbench.registry import plugins
        from vlmbench.resolve import resolve_model

        registry = plugins()
        names = protocol.defense.name.split("+")
        recorded = protocol.defense.fingerprint.split("+")
        for name, before in zip(names, recorded if len(recorded) == len(names) else [protocol.defense.fingerprint] * len(names)):
            now = source_fingerprint(registry.defenses.get(name))
            if now != before:
                raise CannotVerify(f"defense {name}'s code changed since the cell was made (fingerprint {before} → {now})")
        data = protocol.data
        dataset_plugin = registry.datasets.get(data.dataset)
        now = source_fingerprint(dataset_plugin)
        if now != data.fingerprint:
            raise CannotVerify(f"dataset {data.dataset}'s code changed since the cell was made (fingerprint {data.fingerprint} → {now})")
        # the recorded parameters are the config fields, plus what a part adds once it ran (a fine-tuning
        # defense's resolved settings): rebuild from the fields, compare everything after adapt_model
        fields = {name: {f.name for f in dataclasses.fields(registry.defenses.get(name).Config)} for name in names}
        assignments = tuple(f"{part}.{key}={'none' if value is None else value}"
                            for part, params in protocol.defense.params.items() for key, value in params.items()
                            if key in fields.get(part, ()))
        request = RunRequest(defenses=(protocol.defense.name,), defense_params=assignments, track="oblivious",
                                    eval_draws=protocol.eval_draws, data_root=self.data_root)
        defense = resolve_defense(protocol.defense.name, request)
        if defense.eval_draws != protocol.eval_draws:
            raise CannotVerify(f"defense {protocol.defense.name}'s parameters cannot be rebuilt from the record")

        model_name = protocol.model.name
        if model_name not in self._models:
            self._models[model_name] = resolve_model(model_name).load(self.device)
        original = self._models[model_name]
        if original.fingerprint != protocol.model.version:
            raise CannotVerify(f"model {model_name}'s weights changed since the cell was made "
                               f"(fingerprint {protocol.model.version} → {original.fingerprint})")
        key = json.dumps([model_name, protocol.model.version, protocol.defense.name, protocol.defense.params, protocol.seed, data.dataset, data.split,
                          data.templates, data.preset, protocol.eval_draws], sort_keys=True, default=str)
        if key not in self._pipelines:
            context = DefenseContext(cache_dir() / "defenses", self.device, protocol.seed, self.data_root, original)
            model = original
            for part in defense.parts:
                model = part.adapt_model(model, context)
            if json.loads(json.dumps(defense.ref().params)) != protocol.defense.params:
                raise CannotVerify(f"defense {protocol.defense.name}'s parameters cannot be rebuilt from the record")
            resize = data.preset is not None and get_preset(data.preset).resolution == "224-before-attack"
            choice = DataChoice(data.selection, data.preset, data.templates, resize)
            dataset = prepare_dataset(dataset_plugin.load(self.data_root, data.split), choice)
            classifier, defended = defended_pipeline(model, defense.parts, dataset, context, self.device)
            self._pipelines[key] = (model, classifier, defended, dataset, defense.parts)
        model, classifier, defended, dataset, parts = self._pipelines[key]
        evaluated = rows["model_fingerprint"].iloc[0]
        if model.fingerprint != evaluated:
            raise CannotVerify(f"the weights after defense {protocol.defense.name}'s training differ from the evaluated ones "
                               f"(fingerprint {evaluated} → {model.fingerprint})")
        indices = rows["sample_index"].tolist()
        return Cell(protocol, model, None, classifier, defended, dataset, indices, self.device,  # type: ignore[arg-type]
                            parts=parts, original=original)


def _identity_problem(stored: dict[str, Any], rows: pd.DataFrame, protocol: Protocol, path: Path) -> str | None:
    cell_id = protocol.cell_hash()
    if stored["cell_id"] != cell_id:
        return f"adversarial file {path.name} belongs to cell {stored['cell_id']}, not {cell_id} (renamed or copied)"
    if stored["protocol"] != rows["protocol"].iloc[0]:
        return f"adversarial file {path.name} records another protocol than its cell"
    if stored["sample_index"].tolist() != rows["sample_index"].tolist():
        return f"adversarial file {path.name} holds other samples than its cell's {len(rows)}"
    images = stored["images"]
    if images.ndim != 4 or images.shape[0] != len(rows):
        return f"adversarial file {path.name} holds images of shape {images.shape}, expected ({len(rows)}, C, H, W)"
    return None


def _check(cell: Any, rows: pd.DataFrame, images: np.ndarray) -> Outcome:
    """Box, ε-ball and re-scoring of one cell, batch by batch as the runner made it."""
    protocol = cell.protocol
    threat = protocol.threat
    cell_id = protocol.cell_hash()
    clean_id = clean_identity(protocol)
    indices = cell.indices
    kept = ((rows["cascade_after"] != "") & ~rows["attacked"]).to_numpy()  # a cascade's earlier outcome
    outside_box: list[tuple[int, float, float]] = []
    outside_ball: list[tuple[int, float]] = []
    label_differs = 0
    clean_pred, adv_pred, adv_split, clean_split = [], [], [], []
    for start in range(0, len(indices), protocol.batch_size):
        batch = indices[start : start + protocol.batch_size]
        x, y = load_batch(cell, batch)
        x_adv = torch.from_numpy(images[start : start + len(batch)]).to(device=cell.device)
        if x_adv.shape != x.shape:
            return Outcome(f"FAIL: adversarial images have shape {tuple(x_adv.shape[1:])}, the clean images "
                           f"{tuple(x.shape[1:])}", True)
        label_differs += int((y.cpu().numpy() != rows["label"].to_numpy()[start : start + len(batch)]).sum())
        finite = torch.isfinite(x_adv.flatten(1)).all(dim=1)
        low, high = x_adv.flatten(1).amin(dim=1), x_adv.flatten(1).amax(dim=1)
        for i in ((~finite) | (low < 0) | (high > 1)).nonzero().flatten().tolist():
            outside_box.append((batch[i], float(low[i]), float(high[i])))
        linf, l2 = perturbation_norms(x, x_adv)
        size = linf if threat.norm == "linf" else l2
        limit = threat.eps + results.LINF_TOLERANCE if threat.norm == "linf" else threat.eps * (1 + results.L2_RTOL) + results.L2_ATOL
        for i in ((size > limit) | ~torch.isfinite(size)).nonzero().flatten().tolist():
            outside_ball.append((batch[i], float(size[i])))
        vote, draws = predict_draws(cell, x, batch_seed(protocol.seed, clean_id, start))
        clean_pred.append(vote.cpu().numpy())
        clean_split.append(draws.cpu().numpy())
        vote, draws = predict_draws(cell, x_adv, batch_seed(protocol.seed, cell_id, start))
        adv_pred.append(vote.cpu().numpy())
        adv_split.append(draws.cpu().numpy())
    problems = []
    if outside_box:
        index, low, high = outside_box[0]
        more = f"; {len(outside_box)} images" if len(outside_box) > 1 else ""
        problems.append(f"image {index} outside [0,1] (pixels {low:.4g} to {high:.4g}{more})")
    if outside_ball:
        index, size = outside_ball[0]
        more = f"; {len(outside_ball)} images" if len(outside_ball) > 1 else ""
        problems.append(f"image {index} outside the ε-ball ({threat.norm} {size:.4f} > {threat.eps:.4f}{more})")
    if label_differs:
        problems.append(f"{label_differs} recorded labels differ from the dataset's")
    differ, tolerated, detail = _compare(rows, np.concatenate(clean_pred), np.concatenate(adv_pred),
                                         np.concatenate(clean_split), np.concatenate(adv_split), kept,
                                         protocol.eval_draws > 1)
    n = len(rows)
    if differ:
        problems.append(f"{differ} of {n} predictions differ ({detail})")
    if problems:
        return Outcome("FAIL: " + "; ".join(problems), True)
    note = f"; {tolerated} split vote{'s' if tolerated > 1 else ''} of the random defense tolerated" if tolerated else ""
    skipped = f"; {int(kept.sum())} kept from an earlier attack of the cascade" if kept.any() else ""
    return Outcome(f"ok ({n - tolerated}/{n} agree{note}{skipped})", False)


def _compare(rows: pd.DataFrame, clean: np.ndarray, adv: np.ndarray, clean_draws: np.ndarray, adv_draws: np.ndarray,
             kept: np.ndarray, random: bool) -> tuple[int, int, str]:
    """``(images that differ, images tolerated, first difference)``: an image differs when its clean or
    its (re-scored) adversarial prediction differs from the recorded one beyond the tolerance."""
    differ, tolerated, detail = 0, 0, ""
    for i in range(len(rows)):
        bad, soft = [], True
        for what, recorded, got, draws, compared in (
            ("clean", int(rows["clean_pred"].iat[i]), int(clean[i]), clean_draws[i], True),
            ("adversarial", int(rows["adv_pred"].iat[i]), int(adv[i]), adv_draws[i], not kept[i]),
        ):
            if compared and recorded != got:
                bad.append(f"{what} recorded {recorded}, re-scored {got}")
                soft &= random and len(set(draws.tolist())) > 1 and recorded in draws.tolist()
        if not bad:
            continue
        if soft:
            tolerated += 1
            continue
        differ += 1
        if not detail:
            detail = f"image {int(rows['sample_index'].iat[i])}: {', '.join(bad)}"
    return differ, tolerated, detail
