"""Issue: verifiable results. ``run --save-adversarials`` stores each attacked cell's adversarial images
beside its Parquet file; ``results verify`` re-checks them (ε-ball, re-scoring) against the rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from test_runner import fail_at_batch
from vlmbench import results
from vlmbench.cell import adversarial_filename, adversarial_path, write_adversarials
from vlmbench.cli import app
from vlmbench.protocol import Protocol

PLUGINS = Path(__file__).parent / "plugins"
EPS = 8 / 255
RUN = ["run", "--model", "tiny-world", "--dataset", "world-shape", "--attack", "none,pgd-2", "--eps", "8/255",
       "--samples", "4", "--batch-size", "2", "--threads", "1", "--adaptive-steps", "0", "--no-eps-sweep"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def run(plugin: Path, output: Path, *extra: str):
    return invoke(*RUN, "--plugin", str(plugin), "--output", str(output), *extra)


def verify(plugin: Path, *paths: Path, extra: tuple[str, ...] = ()):
    return invoke("results", "verify", *map(str, paths), "--plugin", str(plugin), "--threads", "1", *extra)


def cells(output: Path) -> dict[str, Path]:
    """Cell files by attack name."""
    return {Protocol.from_json(results.read_cell(f)["protocol"].iloc[0]).attack.name: f for f in output.glob("*.parquet")}


def lines(result) -> dict[str, str]:
    """Verify's output, one line per cell file: file name → verdict."""
    found = {}
    for line in result.output.strip().splitlines():
        file, _, verdict = line.partition(": ")
        found[Path(file).name] = verdict
    return found


def rewrite(path: Path, **changes: np.ndarray) -> None:
    with np.load(path, allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    np.savez_compressed(path, **{**members, **changes})  # the name ends in .npz: written in place


@pytest.fixture
def saved(tiny_model_plugin_file, tmp_path) -> Path:
    result = run(tiny_model_plugin_file, tmp_path / "out", "--save-adversarials")
    assert result.exit_code == 0, result.output
    return tmp_path / "out"


def test_saved_adversarials_have_the_cell_identity_and_shapes(saved, tiny_model_plugin_file, tmp_path):
    by_attack = cells(saved)
    assert set(by_attack) == {"none", "pgd-2"}
    assert sorted(p.name for p in saved.glob("*.adv.npz")) == [adversarial_path(by_attack["pgd-2"]).name]
    assert not adversarial_path(by_attack["none"]).exists()  # no attack: nothing stored
    cell = by_attack["pgd-2"]
    rows = results.read_cell(cell)
    protocol = Protocol.from_json(rows["protocol"].iloc[0])
    images = adversarial_path(cell)
    assert images.name == adversarial_filename(protocol) and images.name.endswith(f"{protocol.cell_hash()}.adv.npz")
    with np.load(images, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["cell_id", "encoding", "images", "protocol", "sample_index"]
        assert str(archive["cell_id"]) == protocol.cell_hash() and str(archive["protocol"]) == protocol.to_json()
        assert archive["sample_index"].dtype == np.int64 and archive["sample_index"].tolist() == [0, 1, 2, 3]
        assert str(archive["encoding"]) == "float32" and archive["images"].dtype == np.float32  # PGD: not k/255
        assert archive["images"].shape == (4, 3, 32, 32)
        assert archive["images"].min() >= 0 and archive["images"].max() <= 1
    assert results.run_metadata_of(cell)["adversarials"] == images.name
    assert "adversarials" not in results.run_metadata_of(by_attack["none"])
    # the option is run metadata, not protocol: the same cells, the same rows
    plain = run(tiny_model_plugin_file, tmp_path / "plain")
    assert plain.exit_code == 0, plain.output
    assert sorted(p.name for p in (tmp_path / "plain").glob("*.parquet")) == sorted(p.name for p in saved.glob("*.parquet"))
    assert not list((tmp_path / "plain").glob("*.adv.npz"))
    timings = [c for c in results.SCHEMA.names if "time_s" in c]
    assert results.read_cell(cell).drop(columns=timings).equals(
        results.read_cell(tmp_path / "plain" / cell.name).drop(columns=timings))
    # the stored images are the evaluated ones: their perturbation norms are the recorded ones
    with np.load(images) as archive:
        delta = (archive["images"] - _clean_images(cell)).reshape(4, -1)
    np.testing.assert_array_equal(np.abs(delta).max(axis=1), rows["linf"].to_numpy())


def test_verify_reports_ok_and_no_file(saved, tiny_model_plugin_file):
    result = verify(tiny_model_plugin_file, saved)
    assert result.exit_code == 0, result.output
    by_attack = cells(saved)
    verdicts = lines(result)
    assert verdicts[by_attack["pgd-2"].name] == "ok (4/4 agree)"
    assert verdicts[by_attack["none"].name] == "no adversarial file (no attack)"
    adversarial_path(by_attack["pgd-2"]).unlink()
    missing = verify(tiny_model_plugin_file, saved)
    assert missing.exit_code == 0 and lines(missing)[by_attack["pgd-2"].name].startswith("no adversarial file")
    required = verify(tiny_model_plugin_file, saved, extra=("--require-adversarials",))
    assert required.exit_code == 1, required.output


def test_tampered_adversarials_are_caught(saved, tiny_model_plugin_file):
    cell = cells(saved)["pgd-2"]
    path = adversarial_path(cell)
    rows = results.read_cell(cell)
    with np.load(path) as archive:
        original = archive["images"].copy()
    # one image pushed out of the ε-ball (still in [0,1])
    moved = original.copy()
    moved[1] = np.where(moved[1] > 0.5, moved[1] - 0.05, moved[1] + 0.05)
    rewrite(path, images=moved)
    result = verify(tiny_model_plugin_file, cell)
    assert result.exit_code == 1
    verdict = lines(result)[cell.name]
    assert verdict.startswith("FAIL: image 1 outside the ε-ball (linf 0.") and f"> {EPS:.4f})" in verdict, verdict
    # two images swapped: each lies far outside the other's ball
    swapped = original.copy()
    swapped[[0, 2]] = original[[2, 0]]
    rewrite(path, images=swapped)
    verdict = lines(verify(tiny_model_plugin_file, cell))[cell.name]
    assert verdict.startswith("FAIL: image 0 outside the ε-ball") and "2 images" in verdict, verdict
    # an image replaced by one inside the ball whose prediction differs: the clean image of a broken sample
    broken = rows.index[rows["adv_pred"] != rows["clean_pred"]].tolist()
    assert broken, "the attack broke no prediction at 8/255; the test needs one"
    replaced = original.copy()
    replaced[broken[0]] = _clean_images(cell)[broken[0]]
    rewrite(path, images=replaced)
    result = verify(tiny_model_plugin_file, cell)
    assert result.exit_code == 1
    verdict = lines(result)[cell.name]
    assert verdict.startswith("FAIL: 1 of 4 predictions differ (image "), verdict
    assert "adversarial recorded" in verdict and "outside" not in verdict
    # the original images verify again
    rewrite(path, images=original)
    assert verify(tiny_model_plugin_file, cell).exit_code == 0


def _clean_images(cell: Path) -> np.ndarray:
    from vlmbench.registry import plugins

    protocol = Protocol.from_json(results.read_cell(cell)["protocol"].iloc[0])
    dataset = plugins().datasets.get(protocol.data.dataset).load(None, protocol.data.split)
    return np.stack([dataset[i][0].numpy() for i in range(protocol.data.n_samples)])


def test_a_file_renamed_onto_another_cell_is_caught(saved, tiny_model_plugin_file):
    by_attack = cells(saved)
    adversarial_path(by_attack["pgd-2"]).rename(adversarial_path(by_attack["none"]))
    result = verify(tiny_model_plugin_file, saved)
    assert result.exit_code == 1
    verdict = lines(result)[by_attack["none"].name]
    none_id = results.read_cell(by_attack["none"])["cell_id"].iloc[0]
    assert verdict.startswith("FAIL: adversarial file") and f"not {none_id} (renamed or copied)" in verdict, verdict


def test_interrupted_and_resumed_run_gives_a_byte_identical_file(saved, tiny_model_plugin_file, tmp_path, monkeypatch):
    restore = fail_at_batch(monkeypatch, 4, KeyboardInterrupt())  # the none cell has batches 1-2, pgd-2 has 3-4
    interrupted = run(tiny_model_plugin_file, tmp_path / "again", "--save-adversarials")
    assert interrupted.exit_code != 0
    assert not list((tmp_path / "again").glob("*.adv.npz"))  # the pgd cell is unfinished: no file yet
    assert len(list((tmp_path / "again" / results.PARTIAL_DIR).rglob("*.adv.npy"))) == 1
    restore()
    resumed = run(tiny_model_plugin_file, tmp_path / "again", "--save-adversarials")
    assert resumed.exit_code == 0 and "1 already complete, 1 resumed" in resumed.output, resumed.output
    (got,) = (tmp_path / "again").glob("*.adv.npz")
    assert got.read_bytes() == (saved / got.name).read_bytes()
    run_meta = results.run_metadata_of(got.with_name(got.name.replace(".adv.npz", ".parquet")))
    assert run_meta["resumed"] is True and run_meta["adversarials"] == got.name


def test_a_random_defense_verifies_and_a_changed_plugin_refuses(tiny_model_plugin_file, tmp_path):
    noise = tmp_path / "toy_defenses.py"
    shutil.copy(PLUGINS / "toy_defenses.py", noise)
    args = [("pgd-2" if value == "none,pgd-2" else value) for value in RUN]
    result = invoke(*args, "--plugin", str(tiny_model_plugin_file), "--plugin", str(noise), "--output", str(tmp_path / "out"),
                    "--save-adversarials", "--defense", "toy-noise", "--defense-param", "sigma=0.2",
                    "--eval-draws", "3", "--track", "oblivious")
    assert result.exit_code == 0, result.output
    (cell,) = (tmp_path / "out").glob("*.parquet")
    checked = verify(tiny_model_plugin_file, cell, extra=("--plugin", str(noise)))
    assert checked.exit_code == 0 and lines(checked)[cell.name] == "ok (4/4 agree)", checked.output  # same seeds, same draws
    before = Protocol.from_json(results.read_cell(cell)["protocol"].iloc[0]).defense.fingerprint
    noise.write_text(noise.read_text() + "\n# edited after the run\n")
    from vlmbench import registry

    registry.reset()
    refused = verify(tiny_model_plugin_file, cell, extra=("--plugin", str(noise)))
    assert refused.exit_code == 1
    verdict = lines(refused)[cell.name]
    assert verdict.startswith(f"cannot verify: defense toy-noise's code changed since the cell was made (fingerprint {before} → ")
    assert refused.output.strip().count("\n") == 0


def test_images_exactly_on_the_255_grid_are_stored_as_uint8_and_decoded_bit_exactly(tmp_path):
    from types import SimpleNamespace

    from vlmbench.verify import load_adversarials

    grid = (np.random.default_rng(0).integers(0, 256, (5, 3, 4, 4)).astype(np.float32) / np.float32(255))
    parts = [tmp_path / "a.npy", tmp_path / "b.npy"]
    np.save(parts[0], grid[:3])
    np.save(parts[1], grid[3:])
    record = SimpleNamespace(cell_hash=lambda: "0123456789abcdef", to_json=lambda: "{}")
    write_adversarials(parts, [0, 2, 4, 6, 8], record, tmp_path / "x.adv.npz")
    with np.load(tmp_path / "x.adv.npz") as archive:
        assert archive["images"].dtype == np.uint8 and str(archive["encoding"]) == "uint8/255"
    loaded = load_adversarials(tmp_path / "x.adv.npz")
    assert loaded["images"].dtype == np.float32 and np.array_equal(loaded["images"].view(np.uint32), grid.view(np.uint32))
    assert loaded["sample_index"].tolist() == [0, 2, 4, 6, 8] and loaded["cell_id"] == "0123456789abcdef"
    np.save(parts[1], np.nextafter(grid[3:], np.float32(1)))  # one ulp off the grid: kept as float32
    write_adversarials(parts, [0, 2, 4, 6, 8], record, tmp_path / "y.adv.npz")
    assert load_adversarials(tmp_path / "y.adv.npz")["images"].dtype == np.float32
    with np.load(tmp_path / "y.adv.npz") as archive:
        assert str(archive["encoding"]) == "float32" and archive["images"].dtype == np.float32
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_verification_report_marks_leaderboard_rows_and_a_tampered_file_unmarks_them(saved, tiny_model_plugin_file, tmp_path):
    """`results verify --report` → `leaderboard build --verification`: the rows whose attacked cells all
    re-scored from their stored images carry the "verified" badge; one tampered image removes it."""
    from vlmbench.leaderboards import boards, site
    from vlmbench.leaderboards.collect import collect

    by_attack = cells(saved)
    report = tmp_path / "verify.json"

    def marked() -> tuple[list[bool], str]:
        model = boards.site_model(collect([saved], None), boards.load_standards())
        site.apply_verification(model, site.read_verification(report))
        rows = [row for board in model.boards for row in board.rows if by_attack["pgd-2"].stem.split("__")[-1] in row.cells]
        built = tmp_path / "site"
        assert invoke("leaderboard", "build", str(saved), "--out", str(built), "--verification", str(report)).exit_code == 0
        pages = "".join(p.read_text() for p in built.rglob("*.html"))
        return [row.verified for row in rows], pages

    result = verify(tiny_model_plugin_file, saved, extra=("--report", str(report)))
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    assert record["kind"] == "vlmbench results verify"
    assert {Path(c["file"]).name: c["status"] for c in record["cells"]} == {
        by_attack["pgd-2"].name: "verified", by_attack["none"].name: "no attack"}
    assert {c["cell_id"] for c in record["cells"]} == {f.stem.split("__")[-1] for f in by_attack.values()}
    verified, pages = marked()
    assert verified and all(verified) and ">verified</span>" in pages

    path = adversarial_path(by_attack["pgd-2"])
    with np.load(path) as archive:
        moved = archive["images"].copy()
    moved[1] = np.where(moved[1] > 0.5, moved[1] - 0.05, moved[1] + 0.05)  # out of the ε-ball
    rewrite(path, images=moved)
    tampered = verify(tiny_model_plugin_file, saved, extra=("--report", str(report)))
    assert tampered.exit_code == 1
    assert [c["status"] for c in json.loads(report.read_text())["cells"] if c["file"] == str(by_attack["pgd-2"])] == ["failed"]
    verified, pages = marked()
    assert verified and not any(verified) and ">verified</span>" not in pages


def test_a_report_that_is_not_verify_s_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text('{"cells": []}')
    result = invoke("leaderboard", "build", str(tmp_path), "--out", str(tmp_path / "site"), "--verification", str(bad))
    assert result.exit_code == 2 and "not a report of `vlmbench results verify --report`" in result.output


def test_a_fine_tuned_defense_verifies(tiny_model_plugin_file, tmp_path):
    """A fine-tuning defense records its resolved training settings beside its config; verify rebuilds
    it from the config fields and compares the whole record once it has (re)loaded the weights."""
    smoke = ["steps=2", "batch_size=4", "attack_steps=1", "warmup=0", "preset=world"]
    out = tmp_path / "out"
    result = run(tiny_model_plugin_file, out, "--defense", "tecoa", *[p for s in smoke for p in ("--defense-param", s)],
                 "--save-adversarials")
    assert result.exit_code == 0, result.output
    pgd = cells(out)["pgd-2"]
    assert "resolved" in Protocol.from_json(results.read_cell(pgd)["protocol"].iloc[0]).defense.params["tecoa"]
    checked = verify(tiny_model_plugin_file, out)
    assert checked.exit_code == 0, checked.output
    assert lines(checked)[pgd.name] == "ok (4/4 agree)"
