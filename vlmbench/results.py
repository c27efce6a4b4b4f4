"""Per-sample results as Parquet: the schema, atomic writes, validated reads and the summary table.

One file holds one cell (model × defense × attack × dataset × threat model), one row per evaluated
image. Every row carries the cell's full protocol (flattened into columns, and complete as JSON in
``protocol``). Run metadata (package versions, git revision, device, wall time, command) is stored
in the file's key-value metadata under ``vlmbench.run``. The schema is documented in
``docs/results-schema.md``; a test keeps the two in sync.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlmbench.errors import VlmbenchError

SCHEMA_VERSION = "2"
SCHEMA_KEY = b"vlmbench.schema_version"
RUN_KEY = b"vlmbench.run"
PARTIAL_DIR = ".partial"


class ResultsError(VlmbenchError):
    """A results path is missing, not vlmbench's, or corrupted."""


def _field(name: str, type_: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, type_, nullable=False, metadata={"description": description})


SCHEMA = pa.schema(
    [
        _field("cell_id", pa.string(), "hash of the protocol without package versions (16 hex digits)"),
        _field("model", pa.string(), "model spec as given to --model"),
        _field("model_fingerprint", pa.string(), "SHA-256 prefix of the evaluated weights (after training-time defenses)"),
        _field("defense", pa.string(), "defense name (plus-joined when composed)"),
        _field("attack", pa.string(), "attack name as given (pgd-10)"),
        _field("track", pa.string(), "oblivious: crafted without the test-time defenses; adaptive: on the defended pipeline; transfer: on the source model"),
        _field("eot_draws", pa.int64(), "draws of the defense's randomness per attack gradient (EOT)"),
        _field("dataset", pa.string(), "dataset name"),
        _field("split", pa.string(), "dataset split"),
        _field("norm", pa.string(), "linf or l2"),
        _field("eps", pa.float64(), "radius of the threat model on [0,1] pixels"),
        _field("eps_label", pa.string(), "the radius as written, canonical (4/255)"),
        _field("steps", pa.int64(), "attack iterations per restart"),
        _field("step_size", pa.float64(), "attack step size"),
        _field("restarts", pa.int64(), "random restarts"),
        _field("random_start", pa.bool_(), "whether the attack starts at a random point of the ball"),
        _field("seed", pa.int64(), "base seed of the cell"),
        _field("precision", pa.string(), "numeric precision of attack and evaluation (fp32)"),
        _field("resolution", pa.string(), "where resizing happens relative to the attack"),
        _field("n_samples", pa.int64(), "number of images in the cell"),
        _field("sample_index", pa.int64(), "index of the image in the dataset split"),
        _field("label", pa.int64(), "true class"),
        _field("clean_pred", pa.int64(), "prediction of the defended model on the clean image"),
        _field("adv_pred", pa.int64(), "prediction of the defended model on the adversarial image"),
        _field("clean_correct", pa.bool_(), "clean_pred == label"),
        _field("adv_correct", pa.bool_(), "adv_pred == label"),
        _field("robust", pa.bool_(), "clean_correct and adv_correct (AutoAttack's definition)"),
        _field("linf", pa.float32(), "l-inf norm of the perturbation"),
        _field("l2", pa.float32(), "l2 norm of the perturbation"),
        _field("time_s", pa.float64(), "wall seconds for this image (its batch's time / batch size)"),
        _field("forward_passes", pa.float64(), "model forward passes per image spent by the attack"),
        _field("backward_passes", pa.float64(), "model backward passes per image spent by the attack"),
        _field("flags", pa.string(), "sanity flags measured on the cell (';'-separated, see docs/flags.md)"),
        _field("infer_time_s", pa.float64(), "seconds per image of one clean prediction by the defended model (cell's first batch)"),
        _field("infer_time_s_undefended", pa.float64(), "the same for the classifier without test-time defenses"),
        _field("infer_forward_passes", pa.float64(), "image-encoder forward passes per image of one defended prediction (undefended: 1)"),
        _field("infer_backward_passes", pa.float64(), "image-encoder backward passes per image of one defended prediction (undefended: 0)"),
        _field("defense_loss", pa.bool_(), "the adaptive attack added the defense's own objective to its loss"),
        _field("target_mode", pa.string(), "untargeted, random, least-likely or label:K"),
        _field("target", pa.int64(), "class the targeted attack aimed at (-1: untargeted or not attacked)"),
        _field("attacked", pa.bool_(), "the attack ran on this image (false: broken by an earlier attack of the cascade, or its label is the target)"),
        _field("cascade_after", pa.string(), "earlier attacks whose still-robust images alone were attacked (','-separated; empty: all)"),
        _field("superclasses", pa.string(), "superclass map the attack was crafted against (empty: the classes themselves)"),
        _field("superclass_label", pa.int64(), "true superclass (-1 without a superclass map)"),
        _field("clean_superclass_pred", pa.int64(), "superclass of clean_pred (-1 without a superclass map)"),
        _field("adv_superclass_pred", pa.int64(), "superclass of adv_pred (-1 without a superclass map)"),
        _field("protocol", pa.string(), "the full protocol record as canonical JSON"),
    ]
)


def describe_schema() -> list[tuple[str, str, str]]:
    """``(column, type, description)`` for every column, for docs and ``vlmbench results schema``."""
    return [(f.name, str(f.type), f.metadata[b"description"].decode()) for f in SCHEMA]


def to_table(rows: pd.DataFrame, run: dict[str, Any]) -> pa.Table:
    """Validate ``rows`` against :data:`SCHEMA` and attach the metadata."""
    missing = set(SCHEMA.names) - set(rows.columns)
    if missing:
        raise ValueError(f"result rows lack columns {sorted(missing)}")
    table = pa.Table.from_pandas(rows[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    return table.replace_schema_metadata(
        {SCHEMA_KEY: SCHEMA_VERSION.encode(), RUN_KEY: json.dumps(run, sort_keys=True, default=str).encode()}
    )


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_file(path: Path) -> pa.Table:
    """Read one results file, checking it is vlmbench's and of a known schema version."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{path} is not a readable Parquet file ({reason})") from None
    meta = table.schema.metadata or {}
    version = meta.get(SCHEMA_KEY)
    if version is None:
        raise ResultsError(f"{path} is not a vlmbench results file (no {SCHEMA_KEY.decode()} metadata)")
    if version.decode() != SCHEMA_VERSION:
        raise ResultsError(f"{path} has results schema version {version.decode()}, this vlmbench reads {SCHEMA_VERSION}")
    missing = set(SCHEMA.names) - set(table.schema.names)
    if missing:
        raise ResultsError(f"{path} is missing columns {sorted(missing)}")
    return table


def run_metadata_of(path: Path) -> dict[str, Any]:
    """The ``vlmbench.run`` metadata of one results file."""
    return json.loads(read_file(path).schema.metadata[RUN_KEY])


def result_files(path: Path) -> list[Path]:
    """The results files at ``path`` (a file, or every ``*.parquet`` under a folder, staging excluded)."""
    if not path.exists():
        raise ResultsError(f"results path {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet") if PARTIAL_DIR not in p.relative_to(path).parts)
    if not files:
        raise ResultsError(f"no results files (*.parquet) under {path}")
    return files


def load_results(path: Path) -> pd.DataFrame:
    """All rows of the results file or folder at ``path`` as one DataFrame."""
    tables = [read_file(p) for p in result_files(path)]
    return pa.concat_tables([t.replace_schema_metadata(None).select(SCHEMA.names) for t in tables]).to_pandas()


GROUP = ["model", "defense", "attack", "track", "norm", "eps_label"]
WORST = "worst"
COST_SUMMARY = ["cost_time_ratio", "cost_forward", "cost_backward"]
"""Attack name of the per-sample worst case over the attacks of a group (AutoAttack's robust accuracy)."""


def worst_case(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-sample worst case over attacks: one pseudo-attack per (model, defense,
    track, norm, ε, dataset, seed) evaluated by two or more attacks (named ``worst``).

    A sample is robust when it is robust under every attack (AutoAttack's definition of robust
    accuracy). Only samples evaluated by all of the group's attacks count; the rows keep the columns
    of the first attack's rows, with ``attack`` = ``worst``, ``adv_correct``/``robust`` replaced, and
    no target or superclass (the worst case is over leaf labels).
    """
    key = ["model", "defense", "track", "norm", "eps_label", "dataset", "seed"]
    frames = []
    for _, group in rows.groupby(key, sort=False):
        attacks = list(dict.fromkeys(group["attack"]))
        if len(attacks) < 2:
            continue
        robust = group.pivot_table(index="sample_index", columns="attack", values="robust", aggfunc="all")
        robust = robust.dropna().astype(bool).all(axis=1)
        base = group[group["attack"] == attacks[0]].set_index("sample_index").loc[robust.index].reset_index()
        base["attack"] = WORST
        base["robust"] = robust.to_numpy()
        base["adv_correct"] = base["robust"]
        # the worst case is over leaf labels, whatever each attack aimed at
        base[["target_mode", "superclasses", "cascade_after"]] = ["untargeted", "", ""]
        base[["target", "superclass_label"]] = -1
        frames.append(base)
    return pd.concat(frames, ignore_index=True) if frames else rows.iloc[:0]


def attack_labels(rows: pd.DataFrame) -> pd.Series:
    """The attack as summaries name it: ``pgd-10``, plus ``→random`` (target mode), ``⊂shape``
    (superclass map) or ``after pgd-10`` (cascade) when the cell was run that way."""
    label = rows["attack"].astype(str)
    targeted = rows["target_mode"] != "untargeted"
    label = label.where(~targeted, label + " →" + rows["target_mode"].astype(str))
    coarse = rows["superclasses"] != ""
    label = label.where(~coarse, label + " ⊂" + rows["superclasses"].astype(str))
    cascade = rows["cascade_after"] != ""
    return label.where(~cascade, label + " after " + rows["cascade_after"].astype(str))


def summarize(rows: pd.DataFrame, with_worst_case: bool = True) -> pd.DataFrame:
    """Accuracy per cell, plus a ``mean`` row per (model, defense, attack, track, norm, ε).

    Columns: the ``GROUP`` keys (``attack`` as :func:`attack_labels` names it), ``dataset``, ``n``,
    ``clean_acc`` and ``robust_acc`` (percent); ``target_success`` (percent of attacked images
    classified as their target; NaN for untargeted cells); ``super_clean_acc`` and
    ``super_robust_acc`` (superclass accuracy clean, and clean and attacked; NaN without a superclass
    map). The mean is the unweighted average over datasets (the literature's convention). With
    ``with_worst_case``, groups evaluated by several attacks also get the :func:`worst_case` rows.
    Inference cost of the defended model relative to the undefended one: ``cost_time_ratio``
    (seconds per image), ``cost_forward`` and ``cost_backward`` (image-encoder passes per image).
    """
    if with_worst_case:
        rows = pd.concat([rows, worst_case(rows)], ignore_index=True)
    rows = rows.assign(attack=attack_labels(rows))
    aimed = rows["attacked"] & (rows["target"] >= 0)
    coarse = rows["superclass_label"] >= 0
    super_clean = rows["clean_superclass_pred"] == rows["superclass_label"]
    rows = rows.assign(
        _hit=(rows["adv_pred"] == rows["target"]).where(aimed),
        _super_clean=super_clean.where(coarse),
        _super_robust=(super_clean & (rows["adv_superclass_pred"] == rows["superclass_label"])).where(coarse),
    )
    per_cell = (
        rows.groupby([*GROUP, "eps", "dataset"], sort=False)
        .agg(n=("robust", "size"), clean_acc=("clean_correct", "mean"), robust_acc=("robust", "mean"),
             target_success=("_hit", "mean"), super_clean_acc=("_super_clean", "mean"),
             super_robust_acc=("_super_robust", "mean"), _time=("infer_time_s", "mean"),
             _time_undefended=("infer_time_s_undefended", "mean"), cost_forward=("infer_forward_passes", "mean"),
             cost_backward=("infer_backward_passes", "mean"))
        .reset_index()
    )
    per_cell.insert(per_cell.columns.get_loc("cost_forward"), "cost_time_ratio",
                    per_cell.pop("_time") / per_cell.pop("_time_undefended"))
    metrics = ["clean_acc", "robust_acc", "target_success", "super_clean_acc", "super_robust_acc"]
    per_cell[metrics] = per_cell[metrics].astype(float) * 100
    frames = []
    for _, group in per_cell.groupby([*GROUP, "eps"], sort=False):
        frames.append(group)
        if len(group) > 1:
            mean = group.iloc[:1].copy()
            mean["dataset"] = "mean"
            mean["n"] = group["n"].sum()
            for metric in [*metrics, *COST_SUMMARY]:
                mean[metric] = group[metric].mean()
            frames.append(mean)
    return pd.concat(frames, ignore_index=True).drop(columns="eps")
