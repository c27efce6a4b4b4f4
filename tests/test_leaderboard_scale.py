"""The leaderboard scale benchmark's fabrication (benchmarks/leaderboard_scale.py): every clone is a
valid cell under its own identity, and the site builds over the clones."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from vlmbench import results
from vlmbench.protocol import Protocol

torch.set_num_threads(1)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "leaderboard_scale.py"


def _benchmark():
    """The benchmark module (``benchmarks/`` is not a package: loaded from its path)."""
    name = "leaderboard_scale_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
    return sys.modules[name]


SEED = ("--model", "tiny-world", "--defense", "none", "--attack", "pgd-10,cw-10", "--eps", "1/255,4/255",
        "--dataset", "world-shape", "--samples", "4", "--selection", "balanced", "--adaptive-steps", "0",
        "--batch-size", "4", "--threads", "1", "--no-eps-sweep")


def test_fabricated_cells_are_valid_and_build(tmp_path: Path, tiny_model_plugin_file: Path) -> None:
    bench = _benchmark()
    seed_folder = bench.make_seed(tmp_path / "seed", [*SEED, "--plugin", str(tiny_model_plugin_file)])
    seed = bench.load_seed(seed_folder)
    assert len(seed) == 4

    fab = bench.fabricate(seed, 12, tmp_path / "data", entries=2, submissions=1, defenses=2)
    assert len(fab.files) == 12 and fab.rows == 12 * 4
    assert len(set(fab.cell_ids)) == 12
    assert fab.models == ["synthetic-model-000", "synthetic-model-001"]
    assert fab.submissions is not None and len(fab.sources) == 2

    seed_ids = {c.rows["cell_id"].iloc[0] for c in seed}
    figures = set()
    for file, cell_id in zip(fab.files, fab.cell_ids):
        rows = results.read_cell(file)  # checksum, protocol hash, consistency of the outcomes
        protocol = Protocol.from_json(rows["protocol"].iloc[0])
        assert set(rows["cell_id"]) == {cell_id} == {protocol.cell_hash()}
        assert cell_id not in seed_ids
        assert file.name.endswith(f"__{cell_id}.parquet")
        assert (rows["model"] == protocol.model.name).all() and protocol.model.name.startswith("synthetic-model-")
        assert (rows["defense"] == protocol.defense.name).all() and protocol.defense.name.startswith("synthetic-defense-")
        assert (rows["model_fingerprint"] == protocol.model.version).all()
        figures.add((rows["clean_correct"].sum(), rows["robust"].sum(), tuple(rows["adv_pred"])))
    assert len(figures) > 1  # the perturbation makes the clones differ

    for folder in [*fab.sources, *(p / "results" for p in sorted(fab.submissions.iterdir()))]:
        rows = results.load_results(folder)  # each cell stored once
        assert rows["cell_id"].nunique() == len(list(folder.glob("*.parquet")))

    # deterministic: a second fabrication writes the same cells
    again = bench.fabricate(seed, 12, tmp_path / "again", entries=2, submissions=1, defenses=2)
    assert again.cell_ids == fab.cell_ids
    assert [f.read_bytes() for f in again.files] == [f.read_bytes() for f in fab.files]

    from vlmbench.leaderboards import site

    report = site.build(fab.sources, tmp_path / "site", submissions=fab.submissions)
    assert report.invalid == [] and report.entries == 3 and report.boards >= 2
    statuses = bench.board_rows(tmp_path / "site")
    assert sum(statuses.values()) == 2 * 3  # two boards (one per ε), three (model, defense) pairs
    import json

    model = json.loads((tmp_path / "site" / "site.json").read_text())
    shown = {row["model"] for board in model["boards"] for row in board["rows"]}
    assert shown == set(fab.models)
    files, size, _ = bench.tree_stats(tmp_path / "site")
    assert files == report.files and size == report.bytes
