"""Training-time defenses: each loss against a hand-computed tiny case, a few-step fine-tune that lowers
its own loss, HPT-GPD's proxy checks and phases, and runs through ``vlmbench run`` / ``vlmbench train``."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from vlmbench.cli import app
from vlmbench.defense import DefenseContext
from vlmbench.finetune import FineTuneError, Phase, WorldTrainingSet, kl_divergence, read_loss_curve
from vlmbench.registry import plugins

METHODS = ("tecoa", "pmg_aft", "fare", "tga_zsr", "hpt_gpd")
LN3 = math.log(3.0)


class Linear:
    """A stand-in model for hand computations: logits = features = ``factor · x`` for ``x`` of shape (N, C)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x

    def features(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.factor * x


def make_step(x, x_adv, y, refs=None, phase="train", seen=None):
    def craft(logits_fn, labels):
        if seen is not None:
            seen.append((logits_fn(x_adv).detach(), labels))
        return x_adv

    return SimpleNamespace(x=x, y=y, student=Linear(1.0), refs=refs or {}, phase=Phase(phase, 1, 1.0), craft=craft)


def defense(name, **params):
    cls = plugins().defenses.get(name)
    return cls(cls.Config(**params))


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


X = torch.tensor([[0.0, 0.0]])
X_ADV = torch.tensor([[0.0, LN3]])  # student logits on x_adv: softmax = (1/4, 3/4)
Y = torch.tensor([1])


def test_kl_divergence_by_hand():
    teacher = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    student = torch.zeros(2, 2)
    expected = kl([0.25, 0.75], [0.5, 0.5]) + 0.0
    assert float(kl_divergence(teacher, student, "sum")) == pytest.approx(expected, rel=1e-5)
    assert float(kl_divergence(teacher, student, "batchmean")) == pytest.approx(expected / 2, rel=1e-5)


def test_tecoa_loss_by_hand():
    terms = defense("tecoa").loss(make_step(X, X_ADV, Y))
    assert float(sum(terms.values())) == pytest.approx(math.log(4 / 3), rel=1e-5)


def test_pmg_aft_loss_by_hand():
    step = make_step(X, X_ADV, Y, refs={"original": Linear(2.0)})  # original on x_adv: (1/10, 9/10)
    terms = defense("pmg_aft", w_original=1.0, w_clean=0.5).loss(step)
    assert float(terms["ce"]) == pytest.approx(math.log(4 / 3), rel=1e-5)
    assert float(terms["kl_original"]) == pytest.approx(kl([0.1, 0.9], [0.25, 0.75]), rel=1e-5)
    assert float(terms["kl_clean"]) == pytest.approx(0.5 * kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)


def test_fare_loss_and_attack_objective_by_hand():
    x, x_adv, seen = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 2.0]]), []
    terms = defense("fare").loss(make_step(x, x_adv, Y, refs={"original": Linear(1.0)}, seen=seen))
    assert float(terms["l2"]) == pytest.approx(4.0)  # ‖(1,2) − (1,0)‖²
    logits, labels = seen[0]
    assert logits.tolist() == [[0.0, 4.0]] and labels.tolist() == [0]  # CE = softplus(d): ascends d
    assert float(torch.nn.functional.cross_entropy(logits, labels)) == pytest.approx(math.log1p(math.exp(4.0)), rel=1e-5)


def test_tga_zsr_loss_by_hand(monkeypatch):
    import vlmbench.defenses.tga_zsr as tga

    monkeypatch.setattr(tga, "attention_map", lambda encoder, x, y: encoder.logits(x)[:, None, :])  # (N, 1, 2) maps
    x = torch.tensor([[1.0, 0.0]])
    terms = defense("tga_zsr", alpha=0.1, beta=0.2).loss(make_step(x, X_ADV, Y, refs={"original": Linear(2.0)}))
    assert float(terms["ce"]) == pytest.approx(math.log(4 / 3), rel=1e-5)
    assert float(terms["attention_adv"]) == pytest.approx(0.1 * math.sqrt(4 + LN3**2), rel=1e-5)  # (0, ln3) vs (2, 0)
    assert float(terms["attention_clean"]) == pytest.approx(0.2 * 1.0, rel=1e-5)  # (1, 0) vs (2, 0)


def test_tga_zsr_attention_map_and_distance(tiny_world_checkpoint):
    from vlmbench.defenses.tga_zsr import attention_map, map_distance
    from vlmbench.finetune import Encoder
    from vlmbench.models import OpenClipModel
    from vlmbench.world.tokenizer import WorldTokenizer

    model = OpenClipModel("tiny", "t", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()
    encoder = Encoder(model, model.tokenizer(["a red circle", "a blue square"]), 2, 0.0, False)
    maps = attention_map(encoder, torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 0]))
    assert maps.shape == (3, 32, 32) and float(maps.min()) >= 0 and float(maps.max()) <= 1
    assert float(map_distance(torch.zeros(2, 2, 2), torch.ones(2, 2, 2))) == pytest.approx(2.0)
    rn = plugins().models.get("world-rn").load()
    with pytest.raises(FineTuneError, match="ViT image tower"):
        attention_map(Encoder(rn, rn.tokenizer(["a red circle"]), 1, 0.0, False), torch.rand(1, 3, 32, 32), torch.tensor([0]))


def test_hpt_gpd_loss_by_hand_in_both_phases():
    refs = {"original": Linear(2.0), "proxy": Linear(3.0)}  # proxy on x_adv: (1/28, 27/28); original on x: (1/2, 1/2)
    method = defense("hpt_gpd", w_anchor_warmup=0.5, w_anchor=0.01)
    anchor = method.loss(make_step(X, X_ADV, Y, refs=refs, phase="anchor"))
    assert set(anchor) == {"anchor"}
    assert float(anchor["anchor"]) == pytest.approx(0.5 * kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)
    hpt = method.loss(make_step(X, X_ADV, Y, refs=refs, phase="hpt"))
    assert float(hpt["proxy"]) == pytest.approx(kl([1 / 28, 27 / 28], [0.25, 0.75]), rel=1e-5)
    assert float(hpt["anchor"]) == pytest.approx(0.01 * kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)


def test_hpt_gpd_phases():
    from vlmbench.defenses.hpt_gpd import WORLD

    gpd = defense("hpt_gpd", gpd_fraction=0.3, gpd_lr_ratio=0.1).phases(WORLD)
    assert [p.name for p in gpd] == ["anchor", "hpt"] and sum(p.steps for p in gpd) == WORLD.steps
    assert gpd[0].lr == pytest.approx(0.1 * WORLD.lr) and gpd[0].decay == "constant" and gpd[1].lr == WORLD.lr
    naive = defense("hpt_gpd", gpd=False).phases(WORLD)
    assert [(p.name, p.steps, p.lr) for p in naive] == [("hpt", WORLD.steps, WORLD.lr)]


@pytest.fixture
def world_vit():
    return plugins().models.get("world-vit").load()


def test_the_proxy_must_have_another_architecture(world_vit, tmp_path):
    context = DefenseContext(tmp_path, torch.device("cpu"), 0, None, world_vit)
    same = defense("hpt_gpd", proxy="world-vit")
    with pytest.raises(FineTuneError, match="same image-tower architecture"):
        same.references(world_vit, context, same.presets()["world"])
    allowed = defense("hpt_gpd", proxy="world-vit", allow_homogeneous=True)
    assert allowed.references(world_vit, context, allowed.presets()["world"])["proxy"].name == "world-vit"
    auto = defense("hpt_gpd")
    assert auto.references(world_vit, context, auto.presets()["world"])["proxy"].name == "world-rn"


@pytest.mark.parametrize("name", METHODS)
def test_a_few_steps_lower_the_methods_own_loss(name, world_vit, tmp_path, monkeypatch):
    monkeypatch.setattr(WorldTrainingSet, "SIZE", 16)  # every step sees the same 16 images
    extra = {"gpd": False} if name == "hpt_gpd" else {}
    method = defense(name, preset="world", steps=8, batch_size=16, lr=1e-3, warmup=0, attack_steps=1, **extra)
    method.adapt_model(world_vit, DefenseContext(tmp_path, torch.device("cpu"), 0, None, world_vit))
    curve = read_loss_curve(method.checkpoint)
    assert len(curve) == 8 and curve["loss"].iloc[-2:].mean() < curve["loss"].iloc[0]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


TINY = ["--defense-param", "steps=2", "--defense-param", "batch_size=4", "--defense-param", "attack_steps=1"]


def test_run_trains_once_then_reuses_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    args = ["run", "--defense", "tecoa", *TINY, "--dataset", "world-size", "--attack", "pgd-2", "--samples", "4",
            "--threads", "1"]
    first = invoke(*args, "--output", str(tmp_path / "a"))
    assert first.exit_code == 0, first.output
    folders = list((tmp_path / "cache" / "defenses" / "tecoa").iterdir())
    assert len(folders) == 1 and (folders[0] / "weights.safetensors").is_file()
    stamp = (folders[0] / "weights.safetensors").stat().st_mtime_ns
    second = invoke(*args, "--output", str(tmp_path / "b"))
    assert second.exit_code == 0, second.output
    assert list((tmp_path / "cache" / "defenses" / "tecoa").iterdir()) == folders
    assert (folders[0] / "weights.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    rows = pd.read_parquet(next((tmp_path / "b").glob("*.parquet")))
    assert len(rows) == 4


def test_train_command_then_run_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    trained = invoke("train", "--defense", "hpt_gpd", *TINY, "--threads", "1")
    assert trained.exit_code == 0, trained.output
    assert "hpt_gpd on world-vit" in trained.output
    folder = next((tmp_path / "cache" / "defenses" / "hpt_gpd").iterdir())
    assert set(read_loss_curve(folder)["phase"]) == {"anchor", "hpt"}
    ran = invoke("run", "--defense", "hpt_gpd", *TINY, "--dataset", "world-size", "--attack", "none",
                 "--samples", "4", "--threads", "1", "--output", str(tmp_path / "out"))
    assert ran.exit_code == 0, ran.output
    assert list((tmp_path / "cache" / "defenses" / "hpt_gpd").iterdir()) == [folder]


def test_train_rejects_a_defense_without_training(tmp_path, monkeypatch):
    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path / "cache"))
    result = invoke("train", "--defense", "none")
    assert result.exit_code == 2 and "nothing to train" in result.output
