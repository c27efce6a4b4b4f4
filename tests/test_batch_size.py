"""The batch size vlmbench chooses when none is given: an existing cell's, the CPU's default, or measured
from free memory (on the CPU with a meter counting the bytes autograd saves, since there is no GPU here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from test_runner import RUN, cell_files, fail_at_batch, invoke, run_tiny
from vlmbench import batch_size as batch_size_module
from vlmbench import cell as cell_module
from vlmbench import execute as execute_module
from vlmbench import results
from vlmbench.batch_size import (HEADROOM, MAX_AUTO_BATCH, STATE_COPIES, BatchChoice, OutputIndex, choose,
                                 largest_fitting, step_memory)
from vlmbench.protocol import Protocol


class SavedBytesMeter:
    """A CPU :class:`~vlmbench.batch_size.MemoryMeter`: a function's peak is the bytes autograd saves for
    backward while it runs (what grows with the batch in an attack step); ``free`` is given."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.probes: list[int] = []

    def free_bytes(self) -> int:
        return self.free

    def peak_bytes(self, run: Callable[[], None]) -> int:
        saved = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            if tensor.requires_grad or tensor.grad_fn is not None:  # not the frozen weights, saved by reference
                saved += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run()
        self.probes.append(saved)
        return saved


def test_largest_fitting_is_the_largest_power_of_two_within_the_headroom():
    mib = 2**20
    # 100 MiB free, 10 MiB fixed: 80 MiB usable → 70 MiB for images at 1 MiB each → 64
    assert largest_fitting(100 * mib, 10 * mib, 1 * mib, images=10_000) == 64
    assert 10 * mib + 64 * mib <= HEADROOM * 100 * mib < 10 * mib + 128 * mib
    assert largest_fitting(10_000 * mib, 0, 1, images=10_000) == MAX_AUTO_BATCH  # capped
    assert largest_fitting(10_000 * mib, 0, 1, images=30) == 32  # no larger than the images need
    assert largest_fitting(10_000 * mib, 0, 1, images=32) == 32
    assert largest_fitting(10_000 * mib, 0, 1, images=1) == 1
    assert largest_fitting(100 * mib, 79 * mib, 2 * mib, images=100) == 0  # not one image fits


def test_step_memory_grows_with_the_batch_and_counts_every_eot_draw(tiny_world_checkpoint):
    from vlmbench.classifier import ZeroShotClassifier
    from vlmbench.models import OpenClipModel
    from vlmbench.world.tokenizer import WorldTokenizer

    model = OpenClipModel("tiny-world", "test", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load(
        torch.device("cpu"))
    classifier = ZeroShotClassifier.build(model, ["a", "b", "c"], ["a photo of a {}."])
    image = torch.rand(3, 32, 32)
    meter = SavedBytesMeter(free=2**30)
    fixed, per_image = step_memory(meter, classifier, classifier, image, eot_draws=1)
    small, large = meter.probes
    assert large > small > 0 and per_image == pytest.approx((large - small) / 4) and fixed >= 0
    _, per_image_eot = step_memory(meter, classifier, classifier, image, eot_draws=3)
    assert per_image_eot == pytest.approx(3 * per_image, rel=0.05)  # each draw is a forward of its own


def _protocol(output: Path) -> Protocol:
    rows = results.load_results(output)
    return Protocol.from_json(rows["protocol"].iloc[0])


def test_a_choice_is_claimed_so_a_second_process_adopts_it_and_the_planner_claims_nothing(tiny_model_plugin_file,
                                                                                        tmp_path):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "done").exit_code == 0
    protocol = replace(_protocol(tmp_path / "done"), data=replace(_protocol(tmp_path / "done").data, split="other"))
    at = lambda size: replace(protocol, batch_size=size)  # noqa: E731
    output = tmp_path / "shared"
    planned = choose(None, at, output, OutputIndex(output), lambda: BatchChoice(8, "measured"), claim=False)
    assert planned.size == 8 and not output.exists()  # the planner looks, and writes nothing
    first = choose(None, at, output, OutputIndex(output), lambda: BatchChoice(8, "measured"), claim=True)
    staged = output / results.PARTIAL_DIR / at(8).cell_hash() / cell_module.STAGED_PROTOCOL
    assert first == BatchChoice(8, "measured") and json.loads(staged.read_text())["batch_size"] == 8
    second = choose(None, at, output, OutputIndex(output), lambda: BatchChoice(16, "measured"), claim=True)
    assert second == BatchChoice(8, "existing cell")  # another process measuring 16 takes the claimed 8
    assert choose(32, at, output, OutputIndex(output), None, claim=True) == BatchChoice(32, "given")


def test_without_a_batch_size_the_cpu_runs_128_and_records_how(tiny_model_plugin_file, tmp_path):
    result = _run_without_batch_size(tiny_model_plugin_file, tmp_path / "fresh")
    assert result.exit_code == 0, result.output
    files = cell_files(tmp_path / "fresh")
    assert len(files) == 2
    for path in files:
        assert results.run_metadata_of(path)["batch_size_choice"] == {"batch_size": 128, "rule": "cpu default"}
        assert results.read_cell(path)["protocol"].map(lambda p: json.loads(p)["batch_size"]).eq(128).all()


def _run_without_batch_size(plugin: Path, output: Path, *extra: str):
    position = RUN.index("--batch-size")
    return invoke(*RUN[:position], *RUN[position + 2:], "--plugin", str(plugin), "--output", str(output), *extra)


def test_a_rerun_without_a_batch_size_reads_the_finished_cells_of_any_size(tiny_model_plugin_file, tmp_path):
    output = tmp_path / "out"
    assert run_tiny(tiny_model_plugin_file, output).exit_code == 0  # --batch-size 4
    before = {path.name: path.stat().st_mtime_ns for path in cell_files(output)}
    result = _run_without_batch_size(tiny_model_plugin_file, output)
    assert result.exit_code == 0, result.output
    assert "2 already complete" in result.output
    assert {path.name: path.stat().st_mtime_ns for path in cell_files(output)} == before  # no second copy at 128


def test_an_interrupted_cell_resumes_at_its_size_without_a_batch_size(tiny_model_plugin_file, tmp_path, monkeypatch):
    assert run_tiny(tiny_model_plugin_file, tmp_path / "reference").exit_code == 0  # batch 4, uninterrupted
    restore = fail_at_batch(monkeypatch, 2, KeyboardInterrupt())
    output = tmp_path / "out"
    run_tiny(tiny_model_plugin_file, output)  # batch 4: one batch staged, then interrupted
    assert not cell_files(output) and list((output / results.PARTIAL_DIR).glob("*/000000000.parquet"))
    restore()
    result = _run_without_batch_size(tiny_model_plugin_file, output)
    assert result.exit_code == 0, result.output
    assert "1 resumed" in result.output
    resumed, reference = results.load_results(output), results.load_results(tmp_path / "reference")
    sizes = resumed.groupby("dataset")["protocol"].first().map(lambda p: json.loads(p)["batch_size"]).to_dict()
    assert sizes == {"world-shape": 4, "world-size": 128}  # the staged cell kept 4; the unstarted one is new
    columns = ["cell_id", "sample_index", "adv_pred", "linf"]
    shape = lambda rows: rows[rows["dataset"] == "world-shape"].sort_values("sample_index")[columns].reset_index(drop=True)  # noqa: E731
    assert len(shape(resumed)) == 10 and shape(resumed).equals(shape(reference))  # nothing lost or duplicated


def test_on_a_gpu_the_batch_is_measured_and_recorded(tiny_model_plugin_file, tmp_path, monkeypatch):
    """The measured rule end to end, with the CPU standing in for the GPU: a meter with 8 MiB free."""
    meter = SavedBytesMeter(free=8 * 2**20)
    monkeypatch.setattr(execute_module, "meter_for", lambda device: meter)
    result = _run_without_batch_size(tiny_model_plugin_file, tmp_path / "out")
    assert result.exit_code == 0, result.output
    for path in cell_files(tmp_path / "out"):
        choice = results.run_metadata_of(path)["batch_size_choice"]
        size = choice["batch_size"]
        assert choice["rule"] == "measured" and choice["heaviest_track"] == "oblivious" and size & (size - 1) == 0
        per_image = (choice["model_mib_per_image"] + choice["state_mib_per_image"]) * 2**20
        fits = lambda n: choice["fixed_mib"] * 2**20 + n * per_image <= HEADROOM * choice["free_mib"] * 2**20  # noqa: E731
        assert size < 16 and fits(size) and not fits(2 * size)  # memory bound it (10 images alone would take 16)
        assert choice["state_mib_per_image"] == pytest.approx(STATE_COPIES * 3 * 32 * 32 * 4 / 2**20, abs=0.01)
        rows = results.read_cell(path)
        assert rows["protocol"].map(lambda p: json.loads(p)["batch_size"]).eq(size).all()
    assert batch_size_module.MAX_AUTO_BATCH >= 16


def test_a_new_attack_on_a_setting_takes_its_cells_size_so_the_setting_keeps_one_clean_figure(
        tiny_model_plugin_file, tmp_path):
    output = tmp_path / "out"
    assert run_tiny(tiny_model_plugin_file, output).exit_code == 0  # pgd-2 at --batch-size 4
    result = _run_without_batch_size(tiny_model_plugin_file, output, "--attack", "cw-2")
    assert result.exit_code == 0, result.output
    rows = results.load_results(output)
    cw = rows[rows["attack"] == "cw-2"]
    assert len(cw) == 20 and cw["protocol"].map(lambda p: json.loads(p)["batch_size"]).eq(4).all()
    for path in cell_files(output):
        if results.read_cell(path)["attack"].iloc[0] == "cw-2":
            assert results.run_metadata_of(path)["batch_size_choice"] == {"batch_size": 4, "rule": "setting's cells"}
    pgd = rows[rows["attack"] == "pgd-2"]
    merged = pgd.merge(cw, on=["dataset", "sample_index"], suffixes=("_pgd", "_cw"))
    assert (merged["clean_pred_pgd"] == merged["clean_pred_cw"]).all()


def test_on_a_gpu_a_random_defense_gets_one_size_for_both_tracks_from_the_heavier(tiny_model_plugin_file, tmp_path,
                                                                                 monkeypatch):
    """The adaptive track's EOT draws cost memory per image that the oblivious track does not: the
    setting's size is measured on the adaptive track and both tracks run at it (one clean figure)."""
    meter = SavedBytesMeter(free=16 * 2**20)
    monkeypatch.setattr(execute_module, "meter_for", lambda device: meter)
    toys = Path(__file__).parent / "plugins" / "toy_defenses.py"
    result = _run_without_batch_size(tiny_model_plugin_file, tmp_path / "out", "--plugin", str(toys), "--defense",
                                     "toy-noise", "--track", "both", "--eot", "4", "--eval-draws", "2")
    assert result.exit_code == 0, result.output
    cells = [(results.read_cell(path).iloc[0], results.run_metadata_of(path)["batch_size_choice"])
             for path in cell_files(tmp_path / "out")]
    for dataset in ("world-shape", "world-size"):
        choices = {row["track"]: choice for row, choice in cells if row["dataset"] == dataset}
        assert set(choices) == {"oblivious", "adaptive"}
        measured = [c for c in choices.values() if c["rule"] == "measured"]
        assert len(measured) == 1 and measured[0]["heaviest_track"] == "adaptive"  # measured once, for both
        assert {c["batch_size"] for c in choices.values()} == {measured[0]["batch_size"]}
        assert [c["rule"] for c in choices.values() if c["rule"] != "measured"] == ["setting's cells"]
        assert measured[0]["batch_size"] < 16  # at 4 EOT draws the 16 MiB bind; 10 images alone would take 16
    # the probes ran per setting on the adaptive, then the oblivious track: alone, the oblivious track fits more
    adaptive_small, adaptive_large, oblivious_small, oblivious_large = meter.probes[:4]
    assert adaptive_large - adaptive_small > 2 * (oblivious_large - oblivious_small)  # 4 EOT draws per image
    per_image = (oblivious_large - oblivious_small) / 4
    oblivious_alone = largest_fitting(meter.free, max(oblivious_large - 8 * per_image, 0),
                                      per_image + STATE_COPIES * 3 * 32 * 32 * 4, 10)
    shape = next(choice for row, choice in cells if row["dataset"] == "world-shape")
    assert oblivious_alone > shape["batch_size"]
    rows = results.load_results(tmp_path / "out")
    tracks = rows.pivot(index=["dataset", "sample_index"], columns="track", values="clean_correct_rate")
    assert len(tracks) == 20 and (tracks["oblivious"] == tracks["adaptive"]).all()  # one clean figure per setting


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_meter_measures_a_growing_step():
    from vlmbench.batch_size import CudaMeter

    device = torch.device("cuda")
    meter = CudaMeter(device)
    layer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 256), torch.nn.GELU(),
                                torch.nn.Linear(256, 10)).to(device)
    fixed, per_image = step_memory(meter, layer, layer, torch.rand(3, 64, 64, device=device), eot_draws=1)
    assert per_image > 3 * 64 * 64 * 4 * 0.9 and meter.free_bytes() > 0 and fixed >= 0
