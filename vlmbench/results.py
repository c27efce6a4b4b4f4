"""Per-sample results as Parquet: the schema, atomic writes, validated reads and the summary table.

One file holds one cell (model × defense × attack × dataset × threat model), one row per evaluated
image. Every row carries the cell's full protocol (flattened into columns, and complete as JSON in
``protocol``). Run metadata (package versions, git revision, device, wall time, command) is stored
in the file's key-value metadata under ``vlmbench.run``, and a SHA-256 of the content under
``vlmbench.checksum``. The schema is documented in ``docs/results-schema.md``; a test keeps the two
in sync.

Reading checks, in layers: :func:`read_file` (one Parquet file: schema version, column types,
checksum), :func:`read_cell` (plus :func:`check_cell_rows`: the rows agree with each other and with
their protocol) and :func:`load_results` (every cell of a folder, each stored once).

Aggregation (:func:`summarize`, :func:`worst_case`, :func:`describe_cells`) never merges two cells:
the unit is the ``cell_id``, and cells that share a display key (model, defense, attack, track,
norm, ε, dataset) but were measured differently are told apart by a ``variant`` label.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vlmbench.errors import VlmbenchError

SCHEMA_VERSION = "3"
SCHEMA_KEY = b"vlmbench.schema_version"
RUN_KEY = b"vlmbench.run"
CHECKSUM_KEY = b"vlmbench.checksum"
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
        _field("precision", pa.string(), "numeric precision attacks and evaluation ran in: fp32, tf32 or bf16 (docs/protocol.md, Precision)"),
        _field("resolution", pa.string(), "where resizing happens relative to the attack"),
        _field("n_samples", pa.int64(), "number of images in the cell"),
        _field("sample_index", pa.int64(), "index of the image in the dataset split"),
        _field("label", pa.int64(), "true class"),
        _field("clean_pred", pa.int64(), "prediction of the defended model on the clean image"),
        _field("adv_pred", pa.int64(), "prediction of the defended model on the adversarial image"),
        _field("clean_correct", pa.bool_(), "clean_pred == label"),
        _field("adv_correct", pa.bool_(), "adv_pred == label"),
        _field("robust", pa.bool_(), "clean_correct and adv_correct (AutoAttack's definition)"),
        _field("clean_correct_rate", pa.float64(), "fraction of the eval draws that classified the clean image correctly (= clean_correct for a deterministic pipeline)"),
        _field("robust_rate", pa.float64(), "fraction of the eval draws k on which clean draw k and adversarial draw k were both correct: the expected robustness of one draw (= robust for a deterministic pipeline)"),
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
        _field("preset", pa.string(), "protocol preset (--protocol) that chose the data; empty when none"),
        _field("selection", pa.string(), "how the sample indices were chosen (first, random, balanced, all)"),
        _field("n_requested", pa.int64(), "images per dataset the run asked for (-1: the whole split); n_samples is less when the split is smaller"),
        _field("templates", pa.string(), "prompt-template set; empty for the dataset's own prompts"),
        _field("start", pa.string(), "where the attack began: attack (its own rule) or oblivious (from the oblivious attack's result)"),
        _field("source_model", pa.string(), "transfer source model spec; empty unless track is transfer"),
        _field("eval_draws", pa.int64(), "forward draws per prediction of a random defense (majority vote); 1 for a deterministic one"),
        _field("bpda", pa.string(), "test-time steps whose gradient the adaptive attack took through a BPDA surrogate (','-separated; empty: none)"),
        _field("defense_fingerprint", pa.string(), "SHA-256 prefix of the defense plugins' source (','-joined for compositions)"),
        _field("attack_fingerprint", pa.string(), "SHA-256 prefix of the attack plugin's source"),
        _field("dataset_fingerprint", pa.string(), "SHA-256 prefix of the dataset plugin's source"),
        _field("protocol", pa.string(), "the full protocol record as canonical JSON"),
    ]
)


def describe_schema() -> list[tuple[str, str, str]]:
    """``(column, type, description)`` for every column, for docs and ``vlmbench results schema``."""
    return [(f.name, str(f.type), f.metadata[b"description"].decode()) for f in SCHEMA]


# ---------------------------------------------------------------------------------------------
# checksum, writing, reading one file


_NUMERIC = {pa.int64(): "<i8", pa.float64(): "<f8", pa.float32(): "<f4"}


def content_checksum(table: pa.Table) -> str:
    """SHA-256 (hex) of ``table``'s :data:`SCHEMA` columns and its ``vlmbench.run`` metadata.

    The byte encoding is vlmbench's own, independent of pyarrow's and Parquet's: the row count as
    8-byte little-endian, then per column its name and type (each as 8-byte little-endian length +
    UTF-8) and its values: int64/float64/float32 as little-endian IEEE/two's-complement bytes, bools
    as one byte 0/1, strings as all lengths (8-byte little-endian) then all UTF-8 bytes; finally the
    ``vlmbench.run`` metadata bytes (length-prefixed). ``table`` must have the schema's types and no
    nulls (:func:`read_file` checks both first).
    """
    digest = hashlib.sha256()

    def chunk(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    digest.update(table.num_rows.to_bytes(8, "little"))
    for field in SCHEMA:
        column = table.column(field.name)
        chunk(field.name.encode())
        chunk(str(field.type).encode())
        if field.type in _NUMERIC:
            digest.update(np.ascontiguousarray(column.to_numpy(), dtype=_NUMERIC[field.type]).tobytes())
        elif field.type == pa.bool_():
            digest.update(np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
        else:
            encoded = [value.encode() for value in column.to_pylist()]
            digest.update(np.array([len(e) for e in encoded], dtype="<i8").tobytes())
            digest.update(b"".join(encoded))
    chunk((table.schema.metadata or {}).get(RUN_KEY, b""))
    return digest.hexdigest()


def to_table(rows: pd.DataFrame, run: dict[str, Any]) -> pa.Table:
    """Validate ``rows`` against :data:`SCHEMA` and attach the metadata (schema version, ``run``,
    and the :func:`content_checksum` that every read verifies)."""
    missing = set(SCHEMA.names) - set(rows.columns)
    if missing:
        raise ValueError(f"result rows lack columns {sorted(missing)}")
    table = pa.Table.from_pandas(rows[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(
        {SCHEMA_KEY: SCHEMA_VERSION.encode(), RUN_KEY: json.dumps(run, sort_keys=True, default=str).encode()}
    )
    return table.replace_schema_metadata({**table.schema.metadata, CHECKSUM_KEY: content_checksum(table).encode()})


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to ``path`` so that ``path`` is either the old file or the complete new one.

    Raises:
        ResultsError: the disk or quota is full, or the folder is not writable (one line; the old
            file, if any, is left untouched and no temporary file is left behind).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResultsError(f"no space left on the device writing {path}: free some space and rerun; "
                               "finished cells are kept") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
            raise ResultsError(f"cannot write {path}: {reason}; make the folder writable or choose another --output") from None
        raise
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def read_file(path: Path) -> pa.Table:
    """Read one results file, checking it is vlmbench's, of the current schema version, with the
    schema's column types, no missing values, and the content its checksum was computed on.

    Returns the :data:`SCHEMA` columns in schema order, with vlmbench's metadata keys only.

    Raises:
        ResultsError: one line naming ``path`` and what is wrong.
    """
    try:
        table = pq.read_table(path)
        names, meta = table.schema.names, table.schema.metadata or {}
    except Exception as exc:  # noqa: BLE001 - a damaged file can make the reader fail in many ways
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(f"{path} is not a readable Parquet file ({reason})") from None
    version = meta.get(SCHEMA_KEY)
    if version is None:
        raise ResultsError(f"{path} is not a vlmbench results file (no {SCHEMA_KEY.decode()} metadata)")
    if version != SCHEMA_VERSION.encode():
        raise ResultsError(f"{path} has results schema version {version.decode(errors='replace')}, "
                           f"this vlmbench reads {SCHEMA_VERSION}")
    missing = set(SCHEMA.names) - set(names)
    if missing:
        raise ResultsError(f"{path} is missing columns {sorted(missing)}")
    columns = []
    for field in SCHEMA:
        found = table.schema.get_all_field_indices(field.name)
        if len(found) != 1:
            raise ResultsError(f"{path} has {len(found)} columns named {field.name}; delete it to recompute the cell")
        column = table.column(found[0])
        if column.type != field.type:
            raise ResultsError(f"{path}: column {field.name} has type {column.type}, expected {field.type}; "
                               "delete it to recompute the cell")
        if column.null_count:
            raise ResultsError(f"{path}: column {field.name} has {column.null_count} missing values; "
                               "delete it to recompute the cell")
        columns.append(column)
    kept = {key: meta[key] for key in (SCHEMA_KEY, RUN_KEY, CHECKSUM_KEY) if key in meta}
    table = pa.Table.from_arrays(columns, schema=SCHEMA.with_metadata(kept))
    try:
        actual = content_checksum(table).encode()
    except Exception:  # noqa: BLE001 - damaged values (invalid UTF-8, ...) cannot match it
        actual = None
    if meta.get(CHECKSUM_KEY) != actual:
        raise ResultsError(f"{path} fails its checksum (the file was modified or corrupted); delete it to recompute the cell")
    return table


def run_metadata_of(path: Path) -> dict[str, Any]:
    """The ``vlmbench.run`` metadata of one results file."""
    return json.loads(read_file(path).schema.metadata[RUN_KEY])


# ---------------------------------------------------------------------------------------------
# one cell: rows consistent with each other and with their protocol


LINF_TOLERANCE = 1e-6  # absolute, on [0,1] pixels (float32 rounding of the perturbation)
L2_RTOL, L2_ATOL = 1e-5, 1e-7
# columns that repeat a protocol field: (column, getter on the Protocol)
_MIRRORED: tuple[tuple[str, Callable[[Any], Any]], ...] = (
    ("dataset", lambda p: p.data.dataset),
    ("split", lambda p: p.data.split),
    ("n_samples", lambda p: p.data.n_samples),
    ("norm", lambda p: p.threat.norm),
    ("eps", lambda p: p.threat.eps),
    ("eps_label", lambda p: p.threat.eps_label),
    ("seed", lambda p: p.seed),
    ("track", lambda p: p.track),
)


def check_cell_rows(rows: pd.DataFrame, path: Path) -> None:
    """Check that the rows of the one cell stored at ``path`` are consistent.

    One ``cell_id`` and one protocol for all rows; ``cell_id`` is the protocol's
    :meth:`~vlmbench.protocol.Protocol.cell_hash`; the columns that repeat the protocol (dataset,
    split, n_samples, norm, eps, eps_label, seed, track) equal it; labels and predictions are ≥ 0;
    ``clean_correct``, ``adv_correct`` and ``robust`` follow from predictions and labels; no
    ``sample_index`` twice; exactly ``n_samples`` rows, whose indices (in row order) hash to the
    protocol's ``indices_sha256``; every perturbation inside the threat model's ball.

    Raises:
        ResultsError: the first violation, one line naming ``path``.
    """
    from vlmbench.protocol import Protocol, indices_sha256

    def fail(what: str) -> NoReturn:
        raise ResultsError(f"{path} is not a consistent cell: {what}; delete it to recompute the cell")

    if rows.empty:
        fail("it has no rows")
    ids = rows["cell_id"].unique()
    if len(ids) > 1:
        fail(f"it holds several cells ({', '.join(map(str, ids[:3]))})")
    if rows["protocol"].nunique() > 1:
        fail("its rows carry different protocols")
    try:
        protocol = Protocol.from_json(rows["protocol"].iloc[0])
    except Exception as exc:  # noqa: BLE001 - any malformed record
        fail(f"its protocol record is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
    if ids[0] != protocol.cell_hash():
        fail(f"cell_id {ids[0]} is not its protocol's hash {protocol.cell_hash()}")
    for column, of in _MIRRORED:
        if not (rows[column] == of(protocol)).all():
            fail(f"column {column} differs from the protocol's {of(protocol)!r}")
    for column in ("label", "clean_pred", "adv_pred"):
        if (rows[column] < 0).any():
            fail(f"column {column} has negative values")
    for column, expected in (
        ("clean_correct", rows["clean_pred"] == rows["label"]),
        ("adv_correct", rows["adv_pred"] == rows["label"]),
        ("robust", rows["clean_correct"] & rows["adv_correct"]),
    ):
        wrong = int((rows[column] != expected).sum())
        if wrong:
            fail(f"column {column} contradicts the predictions and labels in {wrong} rows")
    for column, outcome in (("clean_correct_rate", "clean_correct"), ("robust_rate", "robust")):
        if not rows[column].between(0, 1).all():
            fail(f"column {column} has values outside [0, 1]")
        if protocol.eval_draws == 1 and not (rows[column] == rows[outcome].astype(float)).all():
            fail(f"column {column} contradicts {outcome} for a single evaluation draw")
    duplicated = rows["sample_index"].duplicated()
    if duplicated.any():
        fail(f"sample_index {int(rows['sample_index'][duplicated].iloc[0])} appears more than once")
    if len(rows) != protocol.data.n_samples:
        fail(f"it holds {len(rows)} rows but its protocol has {protocol.data.n_samples} samples")
    if indices_sha256(rows["sample_index"].tolist()) != protocol.data.indices_sha256:
        fail("its sample indices do not hash to the protocol's indices_sha256")
    eps = protocol.threat.eps
    if protocol.threat.norm == "linf":
        outside = rows["linf"] > eps + LINF_TOLERANCE
    else:
        outside = rows["l2"] > eps * (1 + L2_RTOL) + L2_ATOL
    if outside.any():
        fail(f"{int(outside.sum())} perturbations exceed the {protocol.threat.norm} ball of radius {protocol.threat.eps_label}")


def read_cell(path: Path) -> pd.DataFrame:
    """The rows of the cell file ``path``: :func:`read_file` plus :func:`check_cell_rows`."""
    rows = read_file(path).to_pandas()
    check_cell_rows(rows, path)
    return rows


# ---------------------------------------------------------------------------------------------
# folders


def result_files(path: Path) -> list[Path]:
    """The results files at ``path``: the file itself, or every ``*.parquet`` under a folder except
    the staging folder (``.partial/``) and names starting with ``.`` (temporary files)."""
    if not path.exists():
        raise ResultsError(f"results path {path} does not exist")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*.parquet")
                   if PARTIAL_DIR not in p.relative_to(path).parts and not p.name.startswith("."))
    if not files:
        raise ResultsError(f"no results files (*.parquet) under {path}")
    return files


def load_results(path: Path) -> pd.DataFrame:
    """All rows of the results file or folder at ``path`` as one DataFrame.

    Every file is read with :func:`read_cell` (so a corrupted, partial or inconsistent file stops
    with the same one-line error as ``vlmbench run``), and each cell must be stored once.

    Raises:
        ResultsError: a bad file, or one ``cell_id`` in two files.
    """
    frames, seen = [], {}
    for file in result_files(path):
        rows = read_cell(file)
        cell = rows["cell_id"].iloc[0]
        if cell in seen:
            raise ResultsError(f"cell {cell} is stored twice: {seen[cell]} and {file}; remove one")
        seen[cell] = file
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# cells, variants and families


GROUP = ["model", "defense", "attack", "track", "norm", "eps_label"]
TABLE = ["model", "defense", "track", "norm", "eps_label", "eps"]
"""What a summary table shares (one table per value; attacks are columns, datasets rows)."""
WORST = "worst"
"""Attack name of the per-sample worst case over the attacks of a group (AutoAttack's robust accuracy)."""
COST_SUMMARY = ["cost_time_ratio", "cost_forward", "cost_backward"]
IDENTITY_COLUMNS = ("model_fingerprint", "preset", "selection", "n_requested", "templates", "start", "source_model",
                    "eval_draws", "bpda", "defense_fingerprint", "attack_fingerprint", "dataset_fingerprint")
"""Cell-constant columns that take part in a cell's description (besides its protocol record)."""

_DATASET_KEYS = {"data.dataset", "data.split", "data.n_samples", "data.indices_sha256", "data.resolution",
                 "data.fingerprint", "dataset_fingerprint"}
_ATTACK_KEYS = {"threat.steps", "threat.step_size", "threat.restarts", "threat.random_start", "eot_draws",
                "defense_loss", "start", "target", "cascade_after", "bpda", "worst_of"}
_TRACK_KEYS = {"track", "start", "defense_loss", "eot_draws", "bpda", "threat.steps", "threat.step_size"}
# (the adaptive track runs iterative attacks for at least --adaptive-steps: steps and step size follow the track)
_EPS_KEYS = {"threat.eps", "threat.eps_label", "threat.step_size"}
_SELECTION_KEYS = ("data.selection", "selection")
_REQUESTED_KEYS = ("data.n_requested", "n_requested")


def is_dataset_part(key: str) -> bool:
    """A description key that legitimately differs between the datasets of one run (which images,
    at which resolution, the dataset plugin, the superclass map)."""
    return key in _DATASET_KEYS or key.startswith("superclasses")


def is_attack_part(key: str) -> bool:
    """A description key that belongs to the attack (its plugin, steps, EOT, start, target, ...)."""
    return key in _ATTACK_KEYS or key.startswith(("attack.", "attack_", "source", "superclasses"))


def is_track_part(key: str) -> bool:
    """A description key that follows from the track (adaptive attacks add EOT, BPDA, a start)."""
    return key in _TRACK_KEYS or key.startswith("source")


def is_eps_part(key: str) -> bool:
    """A description key that follows from ε (the default step size does)."""
    return key in _EPS_KEYS


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    if isinstance(value, (list, tuple)):
        return {prefix[:-1]: json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)}
    return {prefix[:-1]: _scalar(value)}


def cell_description(row: dict[str, Any]) -> dict[str, Any]:
    """Everything that determines a cell's numbers, flat: the protocol record (dotted keys such as
    ``data.n_samples`` or ``versions.torch``) plus the :data:`IDENTITY_COLUMNS` of ``row`` (one row
    of the cell). A worst-case pseudo-cell (``worst_of`` set) has no attack parts but ``worst_of``."""
    description = {c: _scalar(row[c]) for c in IDENTITY_COLUMNS if c in row}
    if isinstance(row.get("protocol"), str):
        description.update(_flatten(json.loads(row["protocol"])))
    worst_of = row.get("worst_of")
    if isinstance(worst_of, str) and worst_of:
        description = {k: v for k, v in description.items() if not is_attack_part(k)}
        description["worst_of"] = worst_of
    return description


def description_key(description: dict[str, Any], ignore: Callable[[str], bool] = lambda key: False) -> str:
    """Canonical text of ``description`` without the keys ``ignore`` names: equal keys, same measurement."""
    kept = {k: v for k, v in description.items() if not ignore(k)}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def cell_ids(rows: pd.DataFrame) -> pd.Series:
    """``rows``' ``cell_id``; rows without one (hand-made frames) get one per display key."""
    if "cell_id" in rows:
        return rows["cell_id"].astype(str)
    keys = [c for c in (*GROUP, "eps", "dataset") if c in rows]
    return "cell-" + rows.groupby(keys, sort=False, dropna=False).ngroup().astype(str)


_LABEL_ORDER = ("n_requested", "selection", "preset", "templates", "seed", "n_samples", "split")
_LABEL_NAMES = {
    "model.version": "weights", "model_fingerprint": "weights", "model.fingerprint": "model code",
    "defense_fingerprint": "defense code", "defense.fingerprint": "defense code", "attack_fingerprint": "attack code",
    "attack.fingerprint": "attack code", "dataset_fingerprint": "dataset code", "data.fingerprint": "dataset code",
    "data.indices_sha256": "indices",
    "threat.step_size": "step", "eot_draws": "eot", "eval_draws": "draws", "source_model": "source",
    "source.name": "source", "batch_size": "batch", "worst_of": "of",
}


def _value_text(value: Any) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if len(text) >= 16 and all(c in "0123456789abcdef" for c in text):
        return text[:8]  # a hash
    return text if len(text) <= 28 else text[:27] + "…"


def _part_label(key: str, value: Any) -> str:
    """One ``key=value`` of a variant label, short: ``n=32``, ``seed=1``, ``vlmbench 0.1.1``."""
    last = key.rsplit(".", 1)[-1]
    if key.startswith("versions."):
        return f"{last} {_value_text(value)}"
    if last == "n_requested":
        return "n=all" if value in (None, -1) else f"n={value}"
    if last == "n_samples":
        return f"n={value}"
    if last == "templates" and value in (None, ""):
        return "templates=dataset"
    if key in _LABEL_NAMES:
        name = _LABEL_NAMES[key]
        spaced = name in ("weights", "indices", "of") or name.endswith(" code")
        return f"{name} {_value_text(value)}" if spaced else f"{name}={_value_text(value)}"
    if key.startswith(("model.params.", "defense.params.", "attack.params.")):
        return f"{key.split('.', 1)[0]} {key.split('.', 2)[2]}={_value_text(value)}"
    if last == "version":
        return f"{key.split('.', 1)[0]} v{_value_text(value)}"
    return f"{last}={_value_text(value)}"


def _label(description: dict[str, Any], keys: Iterable[str], quiet: bool = True) -> str:
    """The label of ``description`` from ``keys`` (deduplicated, in a fixed order). ``quiet`` leaves
    out the defaults ``selection=first`` and ``selection=all``."""
    def order(key: str) -> tuple[int, str]:
        last = key.rsplit(".", 1)[-1]
        rank = _LABEL_ORDER.index(last) if last in _LABEL_ORDER else len(_LABEL_ORDER) + key.startswith("versions.")
        return rank, key

    parts: list[str] = []
    for key in sorted(keys, key=order):
        if quiet and key in _SELECTION_KEYS and description.get(key) in ("first", "all"):
            continue
        part = _part_label(key, description.get(key))
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


def _varying(descriptions: list[dict[str, Any]]) -> set[str]:
    """The keys whose values are not the same in every description (absent counts as None)."""
    keys = set().union(*descriptions) if descriptions else set()
    return {k for k in keys if len({json.dumps(d.get(k), default=str) for d in descriptions}) > 1}


def _family_description(description: dict[str, Any]) -> dict[str, Any]:
    """``description`` without its dataset parts (with a preset, the requested sample count is one:
    presets set it per dataset)."""
    preset = description.get("data.preset") or description.get("preset")
    return {k: v for k, v in description.items()
            if not is_dataset_part(k) and not (preset and k in _REQUESTED_KEYS)}


def _share_selection(families: list[dict[str, Any]]) -> None:
    """Selection ``all`` (the whole split was taken) matches any selection rule: where the cells that
    agree on everything else used one rule, the ``all`` cells are counted under it (in place)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for family in families:
        groups.setdefault(description_key(family, lambda k: k in _SELECTION_KEYS or is_attack_part(k)), []).append(family)
    for members in groups.values():
        for key in _SELECTION_KEYS:
            rules = {m[key] for m in members if m.get(key) not in (None, "all")}
            if len(rules) == 1:
                rule = rules.pop()
                for member in members:
                    if member.get(key) == "all":
                        member[key] = rule


def describe_cells(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per cell of ``rows`` (in order of appearance), indexed by cell id (:func:`cell_ids`).

    Columns: the display columns (``GROUP``, ``eps``, ``dataset``) where ``rows`` has them, and

    - ``description``: :func:`cell_description`;
    - ``variant``: what tells the cell apart from the other cells of its summary table (``TABLE``:
      same model, defense, track, norm and ε): the setting parts (neither attack nor dataset parts)
      whose values differ among the table's cells, e.g. ``n=32``, ``seed=1``, ``templates=openai``,
      ``vlmbench 0.1.1``; ``""`` when they all agree. When one dataset occurs twice in a family
      (cells that differ in dataset parts only, e.g. ``split``), those parts are appended;
    - ``attack_variant``: the attack parts (step size, parameters, EOT, plugin fingerprint, ...)
      whose values differ among the table's cells of that attack, as a label (``""``: none);
    - ``attack_label``: :func:`attack_labels`, plus ``[attack_variant]`` when not empty;
    - ``family``: cells with equal family were measured the same way except for the dataset parts
      (dataset, split, sample count and indices, resolution, dataset plugin, superclass map; with a
      preset, the requested count): only they may be averaged over datasets;
    - ``family_variant``: the variant without the per-dataset suffix (the label of a family's mean);
    - ``note``: why the family has no mean (one dataset twice), else ``""``.

    A selection of ``all`` (the whole split was taken) counts as the selection rule its family used
    elsewhere, since a run asking for more images than a split holds takes all of them.
    """
    ids = cell_ids(rows)
    firsts = rows.assign(_cell=ids.to_numpy()).drop_duplicates("_cell")
    labelled = {"target_mode", "superclasses", "cascade_after"} <= set(rows.columns)
    labels = (attack_labels(firsts) if labelled else firsts["attack"].astype(str)).tolist()
    records = firsts.to_dict("records")
    shown = [c for c in (*GROUP, "eps", "dataset") if c in rows]
    cells = []
    for record, label in zip(records, labels):
        description = cell_description(record)
        cells.append({"cell_id": record["_cell"], **{c: _scalar(record[c]) for c in shown}, "description": description,
                      "_attack": label, "_family": _family_description(description),
                      "_table": json.dumps([_scalar(record.get(c)) for c in TABLE], default=str)})
    tables: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        tables.setdefault(cell["_table"], []).append(cell)
    for members in tables.values():
        _label_table(members)
    frame = pd.DataFrame(cells, columns=["cell_id", *shown, "description", "attack_label", "attack_variant", "variant", "family",
                                         "family_variant", "note"])
    return frame.set_index("cell_id")


def _label_table(members: list[dict[str, Any]]) -> None:
    """Set variant, attack_label, family, family_variant and note of the cells of one summary table."""
    _share_selection([m["_family"] for m in members])
    settings = [{k: v for k, v in m["_family"].items() if not is_attack_part(k)} for m in members]
    setting_keys = _varying(settings)
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for member in members:
        by_attack.setdefault(member["_attack"], []).append(member)
    for attack, same in by_attack.items():
        attack_keys = _varying([{k: v for k, v in m["_family"].items() if is_attack_part(k)} for m in same])
        for member in same:
            member["attack_variant"] = extra = _label(member["_family"], attack_keys)
            member["attack_label"] = f"{attack} [{extra}]" if extra else attack
            member["family_variant"] = _label(member["_family"], setting_keys)
            member["family"] = member["attack_label"] + "\n" + description_key(member["_family"])
    # labels must tell families apart; if shortening made two equal, fall back to full labels, then hashes
    for attempt in range(2):
        seen: dict[tuple[str, str], set[str]] = {}
        for member in members:
            seen.setdefault((member["attack_label"], member["family_variant"]), set()).add(member["family"])
        clashing = {key for key, families in seen.items() if len(families) > 1}
        for member in members:
            if (member["attack_label"], member["family_variant"]) in clashing:
                if attempt == 0:
                    member["family_variant"] = _label(member["_family"], setting_keys, quiet=False)
                else:
                    tag = hashlib.sha256(member["family"].encode()).hexdigest()[:6]
                    member["family_variant"] = ", ".join(filter(None, [member["family_variant"], tag]))
    families: dict[str, list[dict[str, Any]]] = {}
    for member in members:
        families.setdefault(member["family"], []).append(member)
        member["variant"], member["note"] = member["family_variant"], ""
    for same in families.values():
        datasets: dict[Any, list[dict[str, Any]]] = {}
        for member in same:
            datasets.setdefault(member.get("dataset"), []).append(member)
        repeated = {d: m for d, m in datasets.items() if len(m) > 1}
        for dataset, twice in repeated.items():
            keys = _varying([m["description"] for m in twice])
            for member in twice:
                member["variant"] = ", ".join(filter(None, [member["family_variant"], _label(member["description"], keys)]))
        if repeated:
            note = f"no mean: {', '.join(map(str, repeated))} measured more than once in this variant"
            for member in same:
                member["note"] = note


# ---------------------------------------------------------------------------------------------
# worst case and summary


def _worst_id(members: list[str]) -> str:
    return hashlib.sha256(("worst:" + ",".join(sorted(members))).encode()).hexdigest()[:16]


def worst_case(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-sample worst case over attacks (AutoAttack's robust accuracy), as pseudo-cells with
    ``attack`` = ``worst``.

    Cells are combined only when they evaluated the same images the same way: equal model, defense,
    track, norm, ε and dataset, and equal :func:`cell_description` apart from the attack parts
    (:func:`is_attack_part`): so the same model weights, defense (and fingerprints), split, sample
    indices, seed, templates, preset and package versions; and exactly the same set of sample
    indices in their rows. Groups of two or more cells get a worst case; cells whose images differ
    fall into different groups, never into a silent intersection.

    A sample is robust when it is robust in every cell of the group. The rows are those of the
    group's first cell, with ``attack`` = ``worst``, a ``cell_id`` of their own, ``worst_of`` (the
    combined attacks, ``,``-joined), ``adv_correct``/``robust`` replaced, and no target, superclass
    map or cascade (the worst case is over leaf labels). Its ``robust_rate`` is the smallest over the
    attacks: for a random defense an upper bound on the expected worst case (the attacks' draws are
    not paired); for a deterministic one exactly ``robust``.
    """
    if rows.empty:
        return rows.iloc[:0]
    firsts = rows.drop_duplicates("cell_id")
    labels = dict(zip(firsts["cell_id"], attack_labels(firsts)))
    samples = rows.groupby("cell_id", sort=False)["sample_index"].agg(lambda s: tuple(sorted(s.tolist())))
    display = ["model", "defense", "track", "norm", "eps_label", "dataset"]
    groups: dict[str, list[str]] = {}
    for record in firsts.to_dict("records"):
        description = cell_description(record)
        key = json.dumps([[_scalar(record[c]) for c in display], description_key(description, is_attack_part),
                          hashlib.sha256(repr(samples[record["cell_id"]]).encode()).hexdigest()], default=str)
        groups.setdefault(key, []).append(record["cell_id"])
    by_cell = dict(tuple(rows.groupby("cell_id", sort=False)))  # split once: per-group masks are quadratic
    frames = []
    for members in groups.values():
        if len(members) < 2:
            continue
        part = pd.concat([by_cell[m] for m in members], ignore_index=True)
        robust = part.groupby("sample_index")["robust"].all()
        base = by_cell[members[0]].copy()
        base["robust"] = base["sample_index"].map(robust).astype(bool).to_numpy()
        rate = part.groupby("sample_index")["robust_rate"].min()
        base["robust_rate"] = base["sample_index"].map(rate).astype(float).to_numpy()
        base["adv_correct"] = base["robust"]
        base["attack"] = WORST
        base["cell_id"] = _worst_id(members)
        base["worst_of"] = ",".join(labels[m] for m in members)
        # the worst case is over leaf labels, whatever each attack aimed at
        base[["target_mode", "superclasses", "cascade_after"]] = ["untargeted", "", ""]
        base[["target", "superclass_label"]] = -1
        frames.append(base)
    return pd.concat(frames, ignore_index=True) if frames else rows.iloc[:0]


def attack_labels(rows: pd.DataFrame) -> pd.Series:
    """The attack as summaries name it: ``pgd-10``, plus ``(40 steps)`` when it ran another number of
    steps than its name says (the adaptive track's minimum budget), ``→random`` (target mode),
    ``⊂shape`` (superclass map) or ``after pgd-10`` (cascade) when the cell was run that way."""
    from vlmbench.names import parse_attack_name

    label = rows["attack"].astype(str)
    named = label.map(lambda spec: parse_attack_name(spec, [])[1])
    other_steps = named.notna() & (named != rows["steps"])
    label = label.where(~other_steps, label + " (" + rows["steps"].astype(str) + " steps)")
    targeted = rows["target_mode"] != "untargeted"
    label = label.where(~targeted, label + " →" + rows["target_mode"].astype(str))
    coarse = rows["superclasses"] != ""
    label = label.where(~coarse, label + " ⊂" + rows["superclasses"].astype(str))
    cascade = rows["cascade_after"] != ""
    return label.where(~cascade, label + " after " + rows["cascade_after"].astype(str))


def summarize(rows: pd.DataFrame, with_worst_case: bool = True) -> pd.DataFrame:
    """Accuracy per cell, plus a ``mean`` row per family of cells (see below).

    The unit is the cell (``cell_id``): two cells are never merged into one row, even when they share
    model, defense, attack, track, norm, ε and dataset; the ``variant`` column then tells them apart
    (:func:`describe_cells`: e.g. ``n=32`` and ``n=all``, ``seed=1``, ``vlmbench 0.1.1``; ``""`` when
    nothing differs), and attack settings that differ within one attack name are appended to the
    attack label in brackets (``pgd-10 [step=0.007843]``).

    Columns: the ``GROUP`` keys (``attack`` as :func:`attack_labels` names it), ``variant``,
    ``dataset``, ``n``, ``clean_acc`` and ``robust_acc`` (percent: the means of ``clean_correct_rate``
    and ``robust_rate``, i.e. the expected accuracy of one draw of a random defense — the criterion by
    which the adaptive budget converged — and plain accuracy for a deterministic one; the rows'
    ``robust`` keeps the majority vote per image); ``target_success`` (percent of
    attacked images classified as their target; NaN for untargeted cells); ``super_clean_acc`` and
    ``super_robust_acc`` (superclass accuracy clean, and clean and attacked; NaN without a
    superclass map); inference cost of the defended model relative to the undefended one:
    ``cost_time_ratio`` (seconds per image), ``cost_forward`` and ``cost_backward`` (image-encoder
    passes per image); ``note`` (why a variant has no mean, else ``""``).

    The ``mean`` row (``n``: the sum) is the unweighted average over the datasets of one family:
    cells of one attack whose protocols agree on everything but the dataset parts (package
    versions, seed, templates, preset, plugin fingerprints, sample request ... all equal). Cells that
    differ in anything else are different variants and are never averaged together; a family that
    holds one dataset twice has no mean (``note`` says so). With ``with_worst_case``, cells that
    evaluated the same images under several attacks also get the :func:`worst_case` rows.
    """
    if with_worst_case:
        rows = pd.concat([rows, worst_case(rows)], ignore_index=True)
    cells = describe_cells(rows)
    rows = rows.assign(attack=rows["cell_id"].map(cells["attack_label"]))
    aimed = rows["attacked"] & (rows["target"] >= 0)
    coarse = rows["superclass_label"] >= 0
    super_clean = rows["clean_superclass_pred"] == rows["superclass_label"]
    rows = rows.assign(
        _hit=(rows["adv_pred"] == rows["target"]).where(aimed),
        _super_clean=super_clean.where(coarse),
        _super_robust=(super_clean & (rows["adv_superclass_pred"] == rows["superclass_label"])).where(coarse),
    )
    per_cell = (
        rows.groupby("cell_id", sort=False)
        .agg(**{c: (c, "first") for c in (*GROUP, "eps", "dataset")},
             n=("robust", "size"), clean_acc=("clean_correct_rate", "mean"), robust_acc=("robust_rate", "mean"),
             target_success=("_hit", "mean"), super_clean_acc=("_super_clean", "mean"),
             super_robust_acc=("_super_robust", "mean"), _time=("infer_time_s", "mean"),
             _time_undefended=("infer_time_s_undefended", "mean"), cost_forward=("infer_forward_passes", "mean"),
             cost_backward=("infer_backward_passes", "mean"))
    )
    per_cell.insert(per_cell.columns.get_loc("cost_forward"), "cost_time_ratio",
                    per_cell.pop("_time") / per_cell.pop("_time_undefended"))
    metrics = ["clean_acc", "robust_acc", "target_success", "super_clean_acc", "super_robust_acc"]
    per_cell[metrics] = per_cell[metrics].astype(float) * 100
    per_cell = per_cell.join(cells[["variant", "family", "family_variant", "note"]])
    frames = []
    for _, group in per_cell.groupby([*GROUP, "eps"], sort=False):
        for _, family in group.groupby("family", sort=False):
            frames.append(family)
            if len(family) > 1 and family["dataset"].is_unique:
                mean = family.iloc[:1].copy()
                mean["dataset"] = "mean"
                mean["variant"] = family["family_variant"].iloc[0]
                mean["n"] = family["n"].sum()
                for metric in [*metrics, *COST_SUMMARY]:
                    mean[metric] = family[metric].mean()
                frames.append(mean)
    summary = pd.concat(frames, ignore_index=True)
    columns = [*GROUP, "variant", "dataset", "n", *metrics, *COST_SUMMARY, "note"]
    return summary[columns]
