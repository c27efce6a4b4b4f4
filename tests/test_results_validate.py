"""`vlmbench results validate`: ok and failing results files, folders and submissions, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vlmbench import results
from vlmbench.cli import app
from vlmbench.protocol import Protocol
from vlmbench.validate import protocol_field_problems, validate


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_world_checkpoint: Path) -> Path:
    """Two cells (pgd-2 and cw-2 on world-shape, 3 images) of the random tiny world model."""
    from vlmbench import registry

    root = tmp_path_factory.mktemp("validate")
    plugin = root / "tiny_plugin.py"
    plugin.write_text(
        "from vlmbench.models import OpenClipModel\n"
        "from vlmbench.world.tokenizer import WorldTokenizer\n"
        f"TINY = OpenClipModel('tiny-world', 'random-init world ViT', 'local-dir:{tiny_world_checkpoint}', tokenizer=WorldTokenizer)\n"
    )
    registry.reset()
    outcome = CliRunner().invoke(app, ["run", "--model", "tiny-world", "--dataset", "world-shape", "--attack", "pgd-2,cw-2",
                                       "--eps", "2/255", "--samples", "3", "--batch-size", "3", "--threads", "1",
                                       "--no-eps-sweep", "--plugin", str(plugin), "--output", str(root / "out")])
    registry.reset()
    assert outcome.exit_code == 0, outcome.output
    return root / "out"


@pytest.fixture
def out(made: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(made, copy)
    return copy


def first_file(folder: Path) -> Path:
    return sorted(folder.glob("*pgd-2*.parquet"))[0]


def rewrite(path: Path, rows=None, run=None) -> None:
    """Rewrite with new rows and/or run metadata and a recomputed checksum (so read_cell may pass)."""
    table = results.read_file(path)
    rows = table.to_pandas() if rows is None else rows
    run = json.loads(table.schema.metadata[results.RUN_KEY]) if run is None else run
    results.write_atomic(results.to_table(rows, run), path)


def validate_cli(*paths: Path):
    return CliRunner().invoke(app, ["results", "validate", *map(str, paths)])


def test_valid_results_pass(out):
    assert validate(out) == []
    assert validate(first_file(out)) == []
    done = validate_cli(out)
    assert done.exit_code == 0, done.output
    lines = done.output.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith(": ok") for line in lines)


def test_a_tampered_protocol_fails_its_checksum(out):
    file = first_file(out)
    table = pq.read_table(file)
    rows = table.to_pandas()
    rows["protocol"] = rows["protocol"].str.replace('"seed":0', '"seed":1')
    pq.write_table(pa.Table.from_pandas(rows, schema=table.schema, preserve_index=False), file)
    problems = validate(out)
    assert len(problems) == 1 and "fails its checksum" in problems[0]
    done = validate_cli(out)
    assert done.exit_code == 1
    assert f"{file}: FAIL: " in done.output and done.output.count(": ok") == 1


def test_a_missing_protocol_field_is_found_even_with_a_valid_checksum_and_cell_id(out):
    """A record without data.fingerprint still loads (the field has a default); re-hashed and
    re-checksummed, only the completeness check sees it."""
    file = first_file(out)
    rows = results.read_cell(file)
    record = json.loads(rows["protocol"].iloc[0])
    del record["data"]["fingerprint"]
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    rows["protocol"] = text
    rows["cell_id"] = Protocol.from_json(text).cell_hash()
    rewrite(file, rows=rows)
    results.read_cell(file)  # the existing checks pass
    problems = validate(file)
    assert problems == [f"{file}: protocol record lacks field data.fingerprint"]
    assert validate_cli(out).exit_code == 1


def test_protocol_completeness_is_recursive():
    assert protocol_field_problems({"threat": {}})[0] == "protocol record lacks field model"
    found = protocol_field_problems({"threat": {"norm": "linf"}, "source": None, "extra": 1})
    assert "protocol record lacks field threat.eps" in found
    assert "protocol record has unknown field extra" in found
    assert not any(p.startswith("protocol record lacks field source.") for p in found)


def test_a_mirrored_column_that_disagrees_with_the_protocol(out):
    file = first_file(out)
    rows = results.read_cell(file)
    rewrite(file, rows=rows.assign(steps=99))
    results.read_cell(file)
    problems = validate(file)
    assert len(problems) == 1 and "column steps differs from the protocol's threat.steps 2" in problems[0]


def test_run_metadata_needs_versions_and_command(out):
    file = first_file(out)
    run = results.run_metadata_of(file)
    rewrite(file, run={k: v for k, v in run.items() if k != "command"})
    assert validate(file) == [f"{file}: run metadata lacks command"]
    rewrite(file, run={**run, "defenses": {"x": {"kind": "test-time", "reported": [{"value": 1}]}}})
    assert "reported has an entry that is not a reported figure" in validate(file)[0]


def test_a_cell_stored_twice(out):
    (out / "copy").mkdir()
    file = first_file(out)
    shutil.copy(file, out / "copy" / file.name)
    problems = validate(out)
    assert len(problems) == 1 and "is stored twice" in problems[0]
    assert validate_cli(out).exit_code == 1


def _submission(folder: Path, results_from: Path, **overrides) -> Path:
    shutil.copytree(results_from, folder / "results")
    meta = {"method": "tiny", "paper": None, "code": "https://example.org/code", "weights": "random init",
            "submitted_by": "tests", "hardware": "CPU", **overrides}
    (folder / "submission.json").write_text(json.dumps(meta))
    return folder


def test_submissions(made, tmp_path):
    good = _submission(tmp_path / "good", made)
    assert validate(good) == []
    done = validate_cli(good)
    assert done.exit_code == 0 and done.output.strip() == "submission good: ok"
    bad_url = _submission(tmp_path / "bad-url", made, code="javascript:alert(1)")
    missing = _submission(tmp_path / "missing", made, hardware=None)
    assert "code must be an http(s) URL or null" in validate(bad_url)[0]
    assert "hardware must be a string" in validate(missing)[0]
    done = validate_cli(good, bad_url)
    assert done.exit_code == 1
    assert done.output.splitlines()[0] == "submission good: ok"
    assert done.output.splitlines()[1].startswith("submission bad-url: FAIL: ")


def test_exit_codes(tmp_path):
    missing = validate_cli(tmp_path / "nothing-here")
    assert missing.exit_code == 1 and "FAIL" in missing.output and "does not exist" in missing.output
    assert validate_cli().exit_code == 2  # no path: a usage error
