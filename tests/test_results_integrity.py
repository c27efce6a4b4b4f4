"""Integrity of results files (checksum, types, consistent rows) and aggregation that never mixes cells."""

from __future__ import annotations

import errno
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlmbench import results
from vlmbench.flags import result_flags
from vlmbench.protocol import DataSpec, PluginRef, Protocol, ThreatModel, indices_sha256

VERSIONS = {"vlmbench": "0.1.0", "torch": "2.5.0"}


def make_cell(
    dataset: str = "ds-a",
    indices: tuple[int, ...] = (0, 1, 2, 3, 4, 5),
    attack: str = "pgd-2",
    *,
    eps: str = "2/255",
    norm: str = "linf",
    seed: int = 0,
    versions: dict[str, str] | None = None,
    n_requested: int = -1,
    templates: str | None = None,
    track: str = "oblivious",
    clean: tuple[int, ...] | None = None,
    adv: tuple[int, ...] | None = None,
) -> pd.DataFrame:
    """A consistent cell: one row per index, every SCHEMA column, a real protocol record.

    ``clean``/``adv``: per row 1 when the prediction is right (default: clean all right, adv right on
    the odd positions)."""
    n = len(indices)
    selection = "all" if n_requested == -1 else "first"
    steps = 0 if attack == "none" else 2
    threat = ThreatModel.build(norm, eps, steps)
    protocol = Protocol(
        model=PluginRef("tiny", "f00dfeed"),
        defense=PluginRef("none", "1"),
        attack=PluginRef(attack, "1"),
        threat=threat,
        data=DataSpec(dataset=dataset, split="test", n_samples=n, indices_sha256=indices_sha256(list(indices)),
                      selection=selection, resolution="native", templates=templates),
        seed=seed,
        batch_size=4,
        track=track,
        versions=dict(versions or VERSIONS),
    )
    labels = np.array([i % 3 for i in indices], dtype=np.int64)
    clean = clean if clean is not None else (1,) * n
    adv = adv if adv is not None else tuple(k % 2 for k in range(n))
    clean_pred = np.where(np.array(clean, bool), labels, (labels + 1) % 3)
    adv_pred = np.where(np.array(adv, bool), labels, (labels + 1) % 3)
    clean_correct, adv_correct = clean_pred == labels, adv_pred == labels
    return pd.DataFrame({
        "cell_id": protocol.cell_hash(), "model": "tiny", "model_fingerprint": "f00dfeed", "defense": "none",
        "attack": attack, "track": track, "eot_draws": 1, "dataset": dataset, "split": "test", "norm": norm,
        "eps": threat.eps, "eps_label": threat.eps_label, "steps": steps, "step_size": threat.step_size,
        "restarts": 1, "random_start": True, "seed": seed, "precision": "fp32", "resolution": "native",
        "n_samples": n, "sample_index": np.array(indices, dtype=np.int64), "label": labels,
        "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_correct": clean_correct, "adv_correct": adv_correct,
        "robust": clean_correct & adv_correct, "clean_correct_rate": clean_correct.astype(float),
        "robust_rate": (clean_correct & adv_correct).astype(float),
        "linf": np.full(n, threat.eps * 0.5, dtype=np.float32), "l2": np.full(n, 0.1, dtype=np.float32),
        "time_s": 0.01, "forward_passes": 2.0, "backward_passes": 2.0, "flags": "", "infer_time_s": 0.002,
        "infer_time_s_undefended": 0.001, "infer_forward_passes": 1.0, "infer_backward_passes": 0.0,
        "defense_loss": False, "target_mode": "untargeted", "target": -1, "attacked": True, "cascade_after": "",
        "superclasses": "", "superclass_label": -1, "clean_superclass_pred": -1, "adv_superclass_pred": -1,
        "preset": "", "selection": selection, "n_requested": n_requested, "templates": templates or "",
        "start": "attack", "source_model": "", "eval_draws": 1, "bpda": "", "defense_fingerprint": "d" * 16,
        "attack_fingerprint": "a" * 16, "dataset_fingerprint": "c" * 16, "protocol": protocol.to_json(),
    })


def write(rows: pd.DataFrame, path: Path) -> Path:
    results.write_atomic(results.to_table(rows, {"versions": VERSIONS}), path)
    return path


def one_line_error(call, *args) -> str:
    with pytest.raises(results.ResultsError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- one file -------------------------------------------------------------------------------------


def test_valid_cell_reads_back_equal_with_its_checksum(tmp_path):
    rows = make_cell()
    path = write(rows, tmp_path / "cell.parquet")
    assert pq.read_schema(path).metadata[results.CHECKSUM_KEY].decode() == results.content_checksum(
        results.read_file(path))
    pd.testing.assert_frame_equal(results.read_cell(path), rows)


def test_one_flipped_bit_in_clean_pred_values_fails_the_checksum(tmp_path):
    rows = make_cell()
    table = results.to_table(rows, {})
    path = tmp_path / "plain.parquet"
    pq.write_table(table, path, compression="none", use_dictionary=False)
    data = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(results.SCHEMA.get_field_index("clean_pred"))
    start = chunk.data_page_offset
    at = data.find(rows["clean_pred"].to_numpy(dtype="<i8").tobytes(), start, start + chunk.total_compressed_size)
    assert at > start
    data[at + 8] ^= 1  # the second prediction, lowest bit
    path.write_bytes(bytes(data))
    assert pq.read_table(path)["clean_pred"].to_pylist() != rows["clean_pred"].tolist()  # Parquet does not notice
    assert "fails its checksum" in one_line_error(results.read_file, path)


def test_no_single_bit_flip_is_accepted_with_changed_values(tmp_path):
    rows = make_cell()
    path = write(rows, tmp_path / "cell.parquet")
    original = path.read_bytes()
    want = results.read_file(path)
    victim = tmp_path / "victim.parquet"
    generator = random.Random(0)
    silent = []
    for _ in range(400):
        bit = generator.randrange(len(original) * 8)
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        victim.write_bytes(bytes(data))
        try:
            got = results.read_file(victim)
        except results.ResultsError:
            continue
        if not (got.equals(want) and got.schema.metadata == want.schema.metadata):
            silent.append(bit)
    assert silent == []


def test_string_typed_column_is_one_line_error(tmp_path):
    table = results.to_table(make_cell(), {})
    index = table.schema.get_field_index("clean_pred")
    as_text = pa.array([str(v) for v in table["clean_pred"].to_pylist()])
    table = table.set_column(index, pa.field("clean_pred", pa.string(), nullable=False), as_text)
    path = tmp_path / "strings.parquet"
    pq.write_table(table, path)
    message = one_line_error(results.read_file, path)
    assert str(path) in message and "clean_pred" in message and "string" in message
    assert "clean_pred" in one_line_error(results.load_results, path)


def _robust_wrong(rows):
    rows["robust"] = ~rows["robust"]


def _duplicated_row(rows):
    rows.loc[5, "sample_index"] = rows.loc[4, "sample_index"]


def _other_cell_id(rows):
    rows.loc[0, "cell_id"] = "0123456789abcdef"


def _cell_id_not_the_hash(rows):
    rows["cell_id"] = "0123456789abcdef"


def _clean_correct_wrong(rows):
    rows.loc[0, "clean_correct"] = not rows.loc[0, "clean_correct"]
    rows["robust"] = rows["clean_correct"] & rows["adv_correct"]


def _adv_correct_wrong(rows):
    rows.loc[1, "adv_correct"] = not rows.loc[1, "adv_correct"]
    rows["robust"] = rows["clean_correct"] & rows["adv_correct"]


def _reordered(rows):
    rows["sample_index"] = rows["sample_index"].to_numpy()[::-1]


def _eps_column(rows):
    rows["eps"] = 4 / 255


def _outside_ball(rows):
    rows.loc[2, "linf"] = np.float32(3 / 255)


def _negative_prediction(rows):
    rows.loc[0, "adv_pred"] = -1
    rows.loc[0, "adv_correct"] = False
    rows["robust"] = rows["clean_correct"] & rows["adv_correct"]


def _two_protocols(rows):
    rows.loc[0, "protocol"] = make_cell(seed=1)["protocol"].iloc[0]


def _rate_outside(rows):
    rows.loc[0, "robust_rate"] = 1.5


def _rate_contradicts_one_draw(rows):
    rows.loc[0, "clean_correct_rate"] = 0.5


@pytest.mark.parametrize(("damage", "words"), [
    (_robust_wrong, "robust contradicts"),
    (_duplicated_row, "appears more than once"),
    (_other_cell_id, "several cells"),
    (_cell_id_not_the_hash, "is not its protocol's hash"),
    (_clean_correct_wrong, "clean_correct contradicts"),
    (_adv_correct_wrong, "adv_correct contradicts"),
    (_reordered, "indices_sha256"),
    (_eps_column, "column eps"),
    (_outside_ball, "exceed the linf ball"),
    (_negative_prediction, "negative"),
    (_two_protocols, "different protocols"),
    (_rate_outside, "robust_rate has values outside [0, 1]"),
    (_rate_contradicts_one_draw, "clean_correct_rate contradicts clean_correct"),
])
def test_inconsistent_rows_are_refused_naming_the_file(tmp_path, damage, words):
    rows = make_cell()
    damage(rows)
    path = write(rows, tmp_path / "cell.parquet")
    message = one_line_error(results.read_cell, path)
    assert str(path) in message and words in message
    assert str(path) in one_line_error(results.load_results, tmp_path)


def test_l2_perturbation_outside_the_ball_is_refused(tmp_path):
    rows = make_cell(norm="l2", eps="0.5")
    write(rows, tmp_path / "fine.parquet")
    rows["l2"] = np.float32(0.5001)
    path = write(rows, tmp_path / "bad.parquet")
    assert "exceed the l2 ball" in one_line_error(results.read_cell, path)
    results.read_cell(tmp_path / "fine.parquet")


def test_half_empty_cell_is_refused_by_results_show(tmp_path):
    path = write(make_cell().iloc[:3], tmp_path / "cell.parquet")
    message = one_line_error(results.load_results, tmp_path)
    assert str(path) in message and "3 rows but its protocol has 6 samples" in message


def test_copied_cell_file_is_detected(tmp_path):
    first = write(make_cell(), tmp_path / "a.parquet")
    shutil.copy(first, tmp_path / "b.parquet")
    message = one_line_error(results.load_results, tmp_path)
    cell = make_cell()["cell_id"].iloc[0]
    assert f"cell {cell} is stored twice" in message and "a.parquet" in message and "b.parquet" in message


def test_hidden_and_staging_files_are_not_results(tmp_path):
    write(make_cell(), tmp_path / "cell.parquet")
    (tmp_path / ".cell.parquet.123.parquet").write_bytes(b"half a write")
    (tmp_path / results.PARTIAL_DIR / "x").mkdir(parents=True)
    (tmp_path / results.PARTIAL_DIR / "x" / "000000000.parquet").write_bytes(b"staging")
    assert results.result_files(tmp_path) == [tmp_path / "cell.parquet"]
    assert len(results.load_results(tmp_path)) == 6


def test_disk_full_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    path = write(make_cell(), tmp_path / "cell.parquet")
    before = path.read_bytes()

    def full(table, where, **kwargs):
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    message = one_line_error(results.write_atomic, results.to_table(make_cell(seed=3), {}), path)
    assert message.startswith(f"no space left on the device writing {path}") and "finished cells are kept" in message
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.parquet"]


def test_unwritable_folder_is_one_line(tmp_path, monkeypatch):
    def denied(source, target):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr("os.replace", denied)
    message = one_line_error(results.write_atomic, results.to_table(make_cell(), {}), tmp_path / "cell.parquet")
    assert message.startswith(f"cannot write {tmp_path / 'cell.parquet'}")
    assert list(tmp_path.iterdir()) == []


# --- aggregation ----------------------------------------------------------------------------------


def test_two_sample_sets_of_one_setting_are_two_labelled_rows(tmp_path):
    write(make_cell("ds-a", tuple(range(12))), tmp_path / "all.parquet")
    write(make_cell("ds-a", (0, 1, 2, 3), n_requested=4), tmp_path / "four.parquet")
    summary = results.summarize(results.load_results(tmp_path))
    rows = summary[summary["dataset"] == "ds-a"]
    assert sorted(rows["n"]) == [4, 12]  # never 16: no image counted twice
    assert dict(zip(rows["n"], rows["variant"])) == {12: "n=all", 4: "n=4"}
    assert "mean" not in summary["dataset"].tolist()


def test_mean_only_over_one_variant(tmp_path):
    old = {"vlmbench": "0.1.0", "torch": "2.5.0"}
    new = {"vlmbench": "0.1.1", "torch": "2.5.0"}
    frames = [make_cell("ds-a", versions=old, adv=(0, 0, 0, 0, 0, 0)), make_cell("ds-b", versions=new),
              make_cell("ds-c", versions=new, adv=(1, 1, 1, 1, 1, 1))]
    summary = results.summarize(pd.concat(frames, ignore_index=True)).set_index(["variant", "dataset"])
    assert summary.loc[("vlmbench 0.1.0", "ds-a"), "robust_acc"] == 0
    assert ("vlmbench 0.1.0", "mean") not in summary.index  # one dataset: nothing to average
    mean = summary.loc[("vlmbench 0.1.1", "mean")]
    assert mean["robust_acc"] == pytest.approx(75.0) and mean["n"] == 12  # ds-b and ds-c only
    plain = results.summarize(pd.concat([make_cell("ds-a"), make_cell("ds-b")], ignore_index=True))
    assert plain["variant"].tolist() == ["", "", ""] and plain["dataset"].tolist() == ["ds-a", "ds-b", "mean"]


def test_mean_not_over_other_seeds_or_templates():
    frames = [make_cell("ds-a"), make_cell("ds-b", seed=1), make_cell("ds-c", templates="openai")]
    summary = results.summarize(pd.concat(frames, ignore_index=True))
    assert "mean" not in summary["dataset"].tolist()
    assert summary["variant"].tolist() == ["templates=dataset, seed=0", "templates=dataset, seed=1",
                                           "templates=openai, seed=0"]


def test_worst_case_never_intersects_different_sample_sets():
    pgd = make_cell("ds-a", tuple(range(6)), "pgd-2", adv=(1, 1, 1, 1, 0, 0))
    fewer = make_cell("ds-a", (0, 1, 2, 3), "cw-2", n_requested=4, adv=(0, 0, 0, 0))
    assert results.worst_case(pd.concat([pgd, fewer], ignore_index=True)).empty
    same = make_cell("ds-a", tuple(range(6)), "cw-2", adv=(0, 1, 1, 1, 1, 1))
    worst = results.worst_case(pd.concat([pgd, fewer, same], ignore_index=True))
    assert worst["sample_index"].tolist() == list(range(6))
    assert worst["robust"].tolist() == [False, True, True, True, False, False]
    assert set(worst["worst_of"]) == {"pgd-2,cw-2"}
    summary = results.summarize(pd.concat([pgd, fewer, same], ignore_index=True))
    row = summary[summary["attack"] == results.WORST]
    assert row["n"].tolist() == [6] and row["variant"].tolist() == ["n=all"]


def test_worst_case_needs_the_same_versions():
    pgd = make_cell("ds-a", attack="pgd-2")
    cw = make_cell("ds-a", attack="cw-2", versions={"vlmbench": "0.2.0", "torch": "2.5.0"})
    assert results.worst_case(pd.concat([pgd, cw], ignore_index=True)).empty


def test_flags_compare_cells_of_one_variant_only():
    small = make_cell("ds-a", (0, 1, 2, 3), eps="1/255", n_requested=4, adv=(0, 0, 0, 0))
    large = make_cell("ds-a", tuple(range(6)), eps="4/255", adv=(1, 1, 1, 1, 1, 0))
    assert result_flags(pd.concat([small, large], ignore_index=True)).empty  # other images: not a sweep
    same = make_cell("ds-a", tuple(range(6)), eps="1/255", adv=(0, 0, 0, 0, 0, 0))
    found = result_flags(pd.concat([small, large, same], ignore_index=True))
    assert found["flag"].tolist() == ["eps-not-monotone"] and found["variant"].tolist() == ["n=all"]
