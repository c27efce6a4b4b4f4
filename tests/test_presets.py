"""Protocol presets: their choices match the literature's protocols, they reach every row's record,
and seeded class-balanced selection is balanced and reproducible."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from test_datasets_real import COOP_STYLE, cifar10, coop_split, dtd, no_md5, pcam  # noqa: F401  (no_md5 is a fixture)
from vlmbench.cli import app
from vlmbench.data import DatasetNotFoundError
from vlmbench.datasets import real, text
from vlmbench.data import balanced_indices
from vlmbench.presets import PRESETS, get_preset
from vlmbench.protocol import Protocol
from vlmbench.registry import plugins
from vlmbench.runner import RunError, RunRequest, plan

TTC16 = {"cifar10", "cifar100", "stl10", "imagenet", "caltech101", "caltech256", "oxford-pets", "flowers102",
         "fgvc-aircraft", "stanford-cars", "sun397", "country211", "food101", "eurosat", "dtd", "pcam"}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_registered_datasets_and_a_template_set(name):
    preset = PRESETS[name]
    registered = plugins().datasets
    for entry in preset.datasets:
        plugin = registered.get(entry.name)
        assert entry.split is None or entry.split in plugin.splits
    assert preset.templates in text.template_sets()
    assert len({e.name for e in preset.datasets}) == len(preset.datasets)


def test_presets_reproduce_the_literature_choices():
    tecoa, ttc = get_preset("tecoa16"), get_preset("ttc16")
    assert {e.name for e in tecoa.datasets} == {e.name for e in ttc.datasets} == TTC16
    assert all(e.n_samples is None and e.split is None for e in tecoa.datasets)  # full default splits
    assert (tecoa.templates, tecoa.resolution) == ("tecoa", "native")
    assert (ttc.templates, ttc.resolution) == ("ttc", "224-before-attack")
    fare = get_preset("fare13")
    sizes = {e.name: e.n_samples for e in fare.datasets}
    assert sizes.pop("imagenet") == 5000 and len(sizes) == 13 and set(sizes.values()) == {1000}
    assert {"imagenet-r", "imagenet-sketch", "pcam", "fgvc-aircraft"} <= set(sizes) and "sun397" not in sizes
    assert (fare.templates, fare.selection) == ("clip_benchmark", "random")
    coop = get_preset("coop")
    assert {e.name for e in coop.datasets} >= {"ucf101", "imagenet-a", "imagenet-v2", "sun397", "food101"}
    assert coop.templates == "coop" and "cifar10" not in {e.name for e in coop.datasets}
    assert {e.name for e in get_preset("all22").datasets} == set(real.DATASETS)
    assert all(e.name.startswith("world-") for e in get_preset("world").datasets)


def test_full_split_protocols_use_the_whole_dataset_where_there_is_no_test_split():
    for name in ("sun397", "caltech101", "caltech256", "eurosat"):
        assert real.DATASETS[name].splits[0] == "all"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=80), st.integers(1, 80), st.integers(0, 3))
def test_balanced_selection_is_balanced_sorted_and_seeded(labels, n, seed):
    chosen = balanced_indices(labels, n, seed)
    assert chosen == sorted(set(chosen)) and len(chosen) == min(n, len(labels))
    assert chosen == balanced_indices(labels, n, seed)
    counts = Counter(labels[i] for i in chosen)
    available = Counter(labels)
    # a class gets fewer than another only when it has run out of images
    for c in available:
        if counts[c] < max(counts.values()) - 1:
            assert counts[c] == available[c]


def test_balanced_selection_depends_on_the_seed():
    labels = [k % 10 for k in range(1000)]
    a, b = balanced_indices(labels, 100, 0), balanced_indices(labels, 100, 1)
    assert a != b and Counter(labels[i] for i in a) == Counter({c: 10 for c in range(10)})


def test_preset_fixes_samples_split_and_selection():
    with pytest.raises(RunError, match="fixes --samples"):
        plan(RunRequest(protocol="fare13", datasets=("*",), n_samples=5))
    with pytest.raises(RunError, match="selects none"):
        plan(RunRequest(protocol="coop", datasets=("cifar10",)))


def test_plan_applies_the_preset_templates_and_resolution(tmp_path, no_md5):  # noqa: F811
    pcam(tmp_path)
    cifar10(tmp_path)
    the_plan = plan(RunRequest(protocol="ttc16", datasets=("pcam", "cifar10"), data_root=tmp_path, device="cpu"))
    loaded = {plugin.name: (dataset, indices) for plugin, dataset, indices in the_plan.datasets}
    pcam_set = loaded["pcam"][0]
    assert pcam_set.classnames == text.classnames("pcam-tecoa") and pcam_set.templates == ("This is a photo of a {}.",)
    cifar = loaded["cifar10"][0]
    assert cifar.templates == ("This is a photo of a {}.",) and tuple(cifar[0][0].shape) == (3, 224, 224)
    assert "before the attack" in cifar.pixels and loaded["cifar10"][1] == list(range(13))


def test_missing_preset_dataset_fails_fast(tmp_path):
    with pytest.raises(Exception, match="imagenet.*not found"):
        plan(RunRequest(protocol="fare13", datasets=("*",), data_root=tmp_path, device="cpu"))


def test_every_missing_dataset_is_named_in_one_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        plan(RunRequest(protocol="coop", datasets=("*",), data_root=tmp_path, device="cpu"))
    message = str(info.value)
    assert "\n" not in message and message.startswith("15 datasets missing or incomplete: ")
    assert message.count("README") == 1 and message.endswith("(README, 'Real datasets')")
    for entry in get_preset("coop").datasets:
        assert f"dataset {entry.name!r}" in message
        assert real.DATASETS[entry.name].layout.obtain in message  # what to do, for each


def test_missing_datasets_error_names_only_the_missing_ones(tmp_path):
    dtd(tmp_path)  # images, but no CoOp split file
    coop_split(tmp_path, "eurosat")  # complete
    request = RunRequest(protocol="coop", datasets=("dtd", "eurosat", "food101"), data_root=tmp_path, device="cpu")
    with pytest.raises(DatasetNotFoundError) as info:
        plan(request)
    message = str(info.value)
    assert message.startswith("2 datasets missing or incomplete: ") and "eurosat" not in message
    assert "split_zhou_DescribableTextures.json" in message and "food-101 not found" in message
    with pytest.raises(DatasetNotFoundError, match="^dataset 'food101'"):  # a single one keeps its own message
        plan(RunRequest(datasets=("eurosat", "food101"), data_root=tmp_path, device="cpu"))


def test_coop_preset_uses_coops_split_files_where_coop_has_one():
    splits = {e.name: e.split for e in get_preset("coop").datasets}
    with_file = {name for name, plugin in real.DATASETS.items() if plugin.coop is not None}
    assert {name for name, split in splits.items() if split == real.COOP_TEST} == with_file == set(COOP_STYLE)
    # FGVC-Aircraft and the ImageNet sets: their official test/val split, as in CoOp
    assert {name: split for name, split in splits.items() if name not in with_file} == {
        name: None for name in ("fgvc-aircraft", "imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")}


def test_coop_preset_plan_loads_the_coop_test_lists(tmp_path):
    sizes = {name: len(coop_split(tmp_path, name)) for name in ("caltech101", "eurosat", "ucf101")}
    the_plan = plan(RunRequest(protocol="coop", datasets=tuple(sizes), data_root=tmp_path, device="cpu"))
    loaded = {plugin.name: (dataset, indices) for plugin, dataset, indices in the_plan.datasets}
    assert set(loaded) == set(sizes)
    for name, (dataset, indices) in loaded.items():
        assert dataset.split == "coop-test" and indices == list(range(sizes[name]))
        assert dataset.templates == text.text_for("coop", name)[0]
        assert dataset.classnames[1] == COOP_STYLE[name](1)[1].replace("_", " ")
    assert loaded["caltech101"][0].num_classes == 100 and tuple(loaded["eurosat"][0][0][0].shape) == (3, 64, 64)


def test_preset_choices_are_recorded_in_every_row(tiny_model_plugin_file, tmp_path, no_md5):  # noqa: F811
    cifar10(tmp_path / "data")
    coop_split(tmp_path / "data", "eurosat")
    out = tmp_path / "out"
    common = ["run", "--model", "tiny-world", "--plugin", str(tiny_model_plugin_file), "--attack", "none",
              "--threads", "1", "--data-root", str(tmp_path / "data")]
    result = CliRunner().invoke(app, [*common, "--protocol", "fare13", "--dataset", "cifar10", "--output", str(out / "a")])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(next((out / "a").glob("*.parquet")))
    data = Protocol.from_json(rows["protocol"].iloc[0]).data
    assert (data.preset, data.templates, data.selection, data.split) == ("fare13", "clip_benchmark", "all", "test")
    assert data.resolution == "native; 32x32 images enter the model as they are (no resampling)" and len(rows) == 13
    result = CliRunner().invoke(app, [*common, "--protocol", "coop", "--dataset", "eurosat", "--output", str(out / "c")])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(next((out / "c").glob("*.parquet")))
    data = Protocol.from_json(rows["protocol"].iloc[0]).data
    assert (data.preset, data.split, data.templates) == ("coop", "coop-test", "coop") and len(rows) == 11
    result = CliRunner().invoke(app, [*common, "--dataset", "cifar10", "--samples", "10", "--selection", "balanced",
                                      "--output", str(out / "b")])
    assert result.exit_code == 0, result.output
    rows = pd.read_parquet(next((out / "b").glob("*.parquet")))
    data = Protocol.from_json(rows["protocol"].iloc[0]).data
    assert data.selection == "balanced" and data.preset is None and sorted(rows["label"]) == list(range(10))
