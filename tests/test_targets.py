"""Targeted and superclass attacks, the cascade option, the ε-sweep flag, defended transfer sources,
the defense-aware objective and aa-rand's EOT draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TinyLinearClassifier
from vlmbench import results
from vlmbench.attacks.pgd import PGD, CW
from vlmbench.cli import app
from vlmbench.protocol import Protocol, ThreatModel
from vlmbench.targets import (
    NO_TARGET,
    SuperclassLogits,
    SuperclassMap,
    TargetError,
    choose_targets,
    parse_target,
    resolve_superclasses,
)

PLUGINS = Path(__file__).parent / "plugins"
CLASSES = ("cat", "dog", "car", "truck", "ship")


def _run(tmp_path: Path, *args: str, name: str = "out"):
    result = CliRunner().invoke(app, ["run", "--threads", "1", "--output", str(tmp_path / name), *args])
    assert result.exit_code == 0, result.output
    return results.load_results(tmp_path / name), result.output


def test_target_modes_parse_and_choose():
    assert parse_target(None, CLASSES) == "untargeted"
    assert parse_target("random", CLASSES) == "random"
    assert parse_target("2", CLASSES) == parse_target("car", CLASSES) == "label:2"
    with pytest.raises(TargetError, match="out of range"):
        parse_target("7", CLASSES)
    with pytest.raises(TargetError, match="bad target 'plane'"):
        parse_target("plane", CLASSES)
    y = torch.tensor([0, 1, 2, 3, 4] * 20)
    logits = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
    random = choose_targets("random", y, logits, torch.Generator().manual_seed(1))
    assert (random != y).all() and set(random.tolist()) == set(range(5))  # every wrong class occurs
    assert torch.equal(random, choose_targets("random", y, logits, torch.Generator().manual_seed(1)))
    assert torch.equal(choose_targets("least-likely", y, logits, torch.Generator()), logits.argmin(dim=1))
    given = choose_targets("label:2", y, logits, torch.Generator())
    assert (given[y == 2] == NO_TARGET).all() and (given[y != 2] == 2).all()


@pytest.mark.parametrize("attack", [PGD, CW])
def test_targeted_pgd_reaches_the_target_on_a_linear_model(attack):
    model = TinyLinearClassifier(num_classes=5)
    x = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(dim=1)
    target = (y + 2) % 5
    threat = ThreatModel.build("linf", "64/255", 20)
    x_adv = attack(threat).perturb(model, x, y, torch.Generator().manual_seed(0), target=target)
    assert (x_adv - x).abs().max() <= 64 / 255 + 1e-6
    assert (model(x_adv).argmax(dim=1) == target).float().mean() >= 0.9


def test_superclass_map_validation_and_pooling(tmp_path):
    groups = {"animal": ["cat", "dog"], "vehicle": ["car", "truck", "ship"]}
    mapping = SuperclassMap.from_groups("av", groups, CLASSES)
    assert mapping.assignment == (0, 0, 1, 1, 1)
    assert mapping.of(torch.tensor([4, 0, -1])).tolist() == [1, 0, -1]
    with pytest.raises(TargetError, match="leaves 1 classes out"):
        SuperclassMap.from_groups("bad", {"animal": ["cat", "dog"], "vehicle": ["car", "truck"]}, CLASSES)
    with pytest.raises(TargetError, match="in two superclasses"):
        SuperclassMap.from_groups("bad", {"a": ["cat", "dog"], "b": ["dog", "car", "truck", "ship"]}, CLASSES)
    with pytest.raises(TargetError, match="'plane' is not a class"):
        SuperclassMap.from_groups("bad", {"a": ["cat", "dog", "plane"], "b": ["car", "truck", "ship"]}, CLASSES)
    # the pooled argmax is the superclass of the leaf argmax: the attacked prediction is the scored one
    logits = torch.randn(200, 5)
    pooled = SuperclassLogits(torch.nn.Identity(), mapping)(logits)
    assert torch.equal(pooled.argmax(dim=1), mapping.of(logits.argmax(dim=1)))
    assert torch.equal(pooled, torch.stack([logits[:, :2].amax(1), logits[:, 2:].amax(1)], dim=1))
    assert mapping.record()["pooling"] == "max"
    # a case logsumexp pooling got wrong: three moderately likely animals outweigh the most likely class, a car
    many = SuperclassMap.from_groups("av", {"animal": ["cat", "dog", "car"], "vehicle": ["truck", "ship"]}, CLASSES)
    leaf = torch.tensor([[2.0, 2.0, 2.0, 2.5, -9.0]])
    assert int(SuperclassLogits(torch.nn.Identity(), many)(leaf).argmax()) == int(many.of(leaf.argmax(dim=1)))
    assert int(torch.logsumexp(leaf[:, :3], 1) > leaf[:, 3:].amax(1)) == 1  # the old rule picked 'animal'
    # from a JSON file, and a one-line error for an unknown name
    path = tmp_path / "av.json"
    path.write_text(json.dumps({"name": "animals-vehicles", "superclasses": groups}))
    assert resolve_superclasses(str(path), {}, CLASSES, "toy").name == "animals-vehicles"
    with pytest.raises(TargetError, match="has no superclass map 'size'"):
        resolve_superclasses("size", {"av": groups}, CLASSES, "toy")


def test_targeted_run_records_targets_and_success(tmp_path):
    common = ["--model", "world-rn", "--dataset", "world-combo", "--samples", "36", "--eps", "4/255",
              "--no-eps-sweep"]
    rows, output = _run(tmp_path, *common, "--attack", "pgd-10", "--target", "random")
    assert set(rows["target_mode"]) == {"random"} and (rows["target"] != rows["label"]).all()
    assert rows["attacked"].all()
    hits = (rows["adv_pred"] == rows["target"]).mean()
    assert hits >= 0.5, hits  # 4/255 on world-rn: most images reach a random target
    assert "hit" in output  # the target-success column
    protocol = Protocol.from_json(rows["protocol"].iloc[0])
    assert protocol.target == "random"
    given, _ = _run(tmp_path, *common, "--attack", "pgd-10", "--target", "red circle", name="given")
    own = given["label"] == 0
    assert (~given.loc[own, "attacked"]).all() and (given.loc[own, "target"] == NO_TARGET).all()
    assert (given.loc[own, "linf"] == 0).all()  # not attacked: the clean image
    assert (given.loc[~own, "target"] == 0).all()
    bad = CliRunner().invoke(app, ["run", *common, "--attack", "apgd-ce", "--target", "random",
                                   "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "has no targeted mode" in bad.output


def test_superclass_attack_reports_superclass_and_leaf_accuracy(tmp_path):
    common = ["--model", "world-rn", "--dataset", "world-combo", "--samples", "36", "--eps", "2/255",
              "--attack", "pgd-10", "--no-eps-sweep"]
    coarse, output = _run(tmp_path, *common, "--superclasses", "colour", name="coarse")
    leaf, _ = _run(tmp_path, *common, name="leaf")
    assert set(coarse["superclasses"]) == {"colour"}
    colours = coarse["label"] // 6  # world-combo classes are colour-major: 6 shapes per colour
    assert (coarse["superclass_label"] == colours).all()
    assert (coarse["clean_superclass_pred"] == coarse["clean_pred"] // 6).all()
    record = Protocol.from_json(coarse["protocol"].iloc[0]).superclasses
    assert record["name"] == "colour" and len(record["assignment"]) == 36
    super_robust = lambda r: ((r["clean_superclass_pred"] == r["superclass_label"])  # noqa: E731
                              & (r["adv_superclass_pred"] == r["superclass_label"])).mean()
    leaf_super = ((leaf["clean_pred"] // 6 == leaf["label"] // 6) & (leaf["adv_pred"] // 6 == leaf["label"] // 6)).mean()
    # aimed at the colour, the attack breaks colour accuracy more than a leaf attack does
    assert super_robust(coarse) < leaf_super, (super_robust(coarse), leaf_super)
    assert "super %" in output
    bad = CliRunner().invoke(app, ["run", *common, "--superclasses", "size", "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "offers: shape, colour" in bad.output


def test_cascade_attacks_only_still_robust_images_and_resumes(tmp_path):
    common = ["--model", "world-rn", "--dataset", "world-shape", "--samples", "24", "--eps", "1/255",
              "--attack", "pgd-3,cw-3", "--cascade", "--no-eps-sweep"]
    rows, _ = _run(tmp_path, *common)
    first, second = rows[rows["attack"] == "pgd-3"], rows[rows["attack"] == "cw-3"]
    assert first["attacked"].all() and (first["cascade_after"] == "").all()
    still = set(first.loc[first["robust"], "sample_index"])
    assert set(second.loc[second["attacked"], "sample_index"]) == still
    assert set(second.loc[second["robust"], "sample_index"]) <= still  # cumulative: the worst case so far
    assert (second["cascade_after"] == "pgd-3").all()
    assert Protocol.from_json(second["protocol"].iloc[0]).cascade_after == ("pgd-3",)
    skipped = second[~second["attacked"]].set_index("sample_index")
    assert (skipped["adv_pred"] == first.set_index("sample_index").loc[skipped.index, "adv_pred"]).all()
    assert (second.loc[~second["attacked"], "forward_passes"] >= 0).all()
    # a rerun with the first cell complete feeds its outcome to the second again: identical rows
    (tmp_path / "out" / next(p.name for p in (tmp_path / "out").glob("*cw-3*"))).unlink()
    again, _ = _run(tmp_path, *common)
    redo = again[again["attack"] == "cw-3"].sort_values("sample_index").reset_index(drop=True)
    assert redo[["sample_index", "attacked", "adv_pred", "robust"]].equals(
        second.sort_values("sample_index").reset_index(drop=True)[["sample_index", "attacked", "adv_pred", "robust"]])


def test_eps_sweep_flags_an_attack_that_weakens_with_eps(tmp_path):
    common = ["--model", "world-rn", "--dataset", "world-colour", "--samples", "16", "--eps", "1/255",
              "--plugin", str(PLUGINS / "toy_attacks.py")]
    shy, output = _run(tmp_path, *common, "--attack", "toy-shy-5", name="shy")
    assert any(f.startswith("eps-not-monotone=") for f in shy["flags"].iloc[0].split(";")), shy["flags"].iloc[0]
    assert "eps-not-monotone" in output
    sound, _ = _run(tmp_path, *common, "--attack", "pgd-5", name="sound")
    assert "eps-not-monotone" not in sound["flags"].iloc[0]


def test_eps_sweep_stops_at_the_unit_box(tmp_path):
    """A large ℓ∞ ε whose 4x would leave [0,1]: the sweep ends there instead of failing the run."""
    rows, _ = _run(tmp_path, "--model", "world-rn", "--dataset", "world-size", "--samples", "4", "--eps", "0.4",
                   "--attack", "pgd-1")
    assert len(rows) == 4


def test_transfer_from_a_defended_source_is_recorded(tmp_path):
    rows, _ = _run(tmp_path, "--model", "world-vit", "--dataset", "world-colour", "--samples", "8",
                   "--attack", "pgd-3", "--source-model", "world-rn", "--source-defense", "toy-quantise",
                   "--plugin", str(PLUGINS / "toy_defenses.py"), "--no-eps-sweep")
    source = Protocol.from_json(rows["protocol"].iloc[0]).source
    assert source.name == "world-rn" and source.params["defense"] == "toy-quantise"
    assert source.params["defense_params"] == {"toy-quantise": {"levels": 8}}
    bad = CliRunner().invoke(app, ["run", "--source-defense", "none", "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--source-defense needs --source-model" in bad.output


def test_defense_aware_objective_is_used_on_the_adaptive_track_only(tmp_path):
    rows, _ = _run(tmp_path, "--model", "world-rn", "--dataset", "world-size", "--samples", "8", "--attack", "pgd-3,apgd-ce-3",
                   "--defense", "toy-objective", "--plugin", str(PLUGINS / "toy_defenses.py"), "--no-eps-sweep")
    used = rows.groupby(["track", "attack"])["defense_loss"].all()
    assert used[("adaptive", "pgd-3")] and not used[("oblivious", "pgd-3")]
    assert not used[("adaptive", "apgd-ce-3")]  # AutoAttack cannot add the term: recorded as not used
    # the term steers PGD: with a huge weight every pixel moves up by ε
    from vlmbench.attacks.pgd import cross_entropy_loss, pgd

    class Bright(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2) + 0 * x.sum()

        def forward_with_objective(self, x):
            return self(x), 1e3 * x.flatten(1).sum(dim=1)

    x = torch.full((2, 3, 4, 4), 0.5)
    x_adv = pgd(Bright(), x, torch.zeros(2, dtype=torch.long), ThreatModel.build("linf", "2/255", 3, random_start=False),
                cross_entropy_loss, torch.Generator())
    assert torch.allclose(x_adv - x, torch.full_like(x, 2 / 255))


def test_aa_rand_takes_the_runs_eot_draws():
    from vlmbench.attacks.autoattack import AutoAttackRand

    threat = ThreatModel.build("linf", "1/255", 5, step_size=0)
    own = AutoAttackRand(threat).params(10)["attacks"]
    assert {a["eot_iter"] for a in own} == {20}  # AutoAttack's default without --eot
    drawn = AutoAttackRand(threat, eot_draws=7).params(10)["attacks"]
    assert {a["eot_iter"] for a in drawn} == {7}


def test_a_hierarchy_level_is_a_superclass_map():
    """``--superclasses HIERARCHY[:TREE]:LEVEL``: one level of a shipped hierarchy, a hierarchy file, or
    the dataset's own files; every wrong spec is a one-line error."""
    from vlmbench.datasets import text
    from vlmbench.hierarchy import HierarchyError, load_hierarchy, shipped_hierarchies
    from vlmbench.registry import plugins

    combo = plugins().datasets.get("world-combo").classnames
    colour = resolve_superclasses("world:colour:2", {}, combo, "world-combo")
    assert colour.name == "world:colour:2" and len(colour.superclasses) == 2 and len(colour.assignment) == 36
    assert resolve_superclasses("world:1", {}, combo, "world-combo").name == "world:shape:1"  # the first tree
    imagenet = text.imagenet()["classnames"]
    level2 = resolve_superclasses("wordnet:2", {}, imagenet, "imagenet")
    assert level2.name == "wordnet:first:2" and len(level2.assignment) == 1000 and 100 < len(level2.superclasses) < 1000
    coarser = resolve_superclasses("wordnet:5", {}, imagenet, "imagenet")
    assert len(coarser.superclasses) < len(level2.superclasses)
    # a file with a level, as a user supplies one
    path = shipped_hierarchies()["world"]
    assert resolve_superclasses(f"{path}:colour:1", {}, combo, "world-combo").record()["assignment"] == \
        load_hierarchy(path).tree("colour").superclass_map(1, combo, "world").record()["assignment"]
    for spec, message in (("world:3", "has levels 1..2, not 3"), ("wordnet:1", "has no hierarchy 'wordnet'"),
                          ("world:nope:1", "nope"), ("fgvc-aircraft:1", "has no hierarchy")):
        with pytest.raises((TargetError, HierarchyError), match=message):
            resolve_superclasses(spec, {}, combo, "world-combo")
    with pytest.raises(TargetError, match="give --data-root"):
        resolve_superclasses("fgvc-aircraft:1", {}, ("a",), "fgvc-aircraft")


def test_a_superclass_attack_at_a_hierarchy_level_through_the_command_line(tmp_path):
    common = ["--model", "world-rn", "--dataset", "world-combo", "--samples", "12", "--eps", "2/255",
              "--attack", "pgd-5", "--no-eps-sweep"]
    rows, output = _run(tmp_path, *common, "--superclasses", "world:colour:2", name="level2")
    assert set(rows["superclasses"]) == {"world:colour:2"}
    assert set(rows["superclass_label"]) <= {0, 1} and "super %" in output
    bad = CliRunner().invoke(app, ["run", *common, "--superclasses", "world:7", "--output", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "has levels 1..2, not 7" in bad.output and bad.output.strip().count("\n") == 0
