"""Model specs: registered names, open_clip ARCH:TAG / ARCH:/checkpoint, local-dir: and hf-hub: (offline)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from vlmbench.models import ModelLoadError, OpenClipModel
from vlmbench.resolve import resolve_model

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory) -> str:
    """An open_clip architecture registered from a config file, as a user's custom config would be."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / "vlmbench-test-tiny.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    return "vlmbench-test-tiny"


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_arch, tmp_path_factory) -> Path:
    model = open_clip.create_model(tiny_arch)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def test_registered_name_resolves_to_its_plugin():
    assert resolve_model("world-vit").name == "world-vit"


def test_arch_with_checkpoint_file_loads_with_open_clip_tokenizer(tiny_arch, tiny_checkpoint):
    model = resolve_model(f"{tiny_arch}:{tiny_checkpoint}").load()
    assert model.tokenizer(["a photo of a dog"]).shape == (1, 16)
    assert model.preprocess.size == (32, 32)
    assert model.preprocess.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert torch.equal(model.module.visual.conv1.weight, state["visual.conv1.weight"])


def test_fingerprint_tracks_the_weights(tiny_arch, tiny_checkpoint, tmp_path):
    first = resolve_model(f"{tiny_arch}:{tiny_checkpoint}").load().fingerprint
    assert first == resolve_model(f"{tiny_arch}:{tiny_checkpoint}").load().fingerprint
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["visual.conv1.weight"] += 1e-3
    other = tmp_path / "other.pt"
    torch.save(state, other)
    assert resolve_model(f"{tiny_arch}:{other}").load().fingerprint != first


def test_local_dir_takes_preprocessing_from_its_config(tiny_world_checkpoint):
    from vlmbench.world.tokenizer import WorldTokenizer

    config = json.loads((tiny_world_checkpoint / "open_clip_config.json").read_text())
    model = OpenClipModel("t", "t", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()
    assert model.preprocess.mean == tuple(config["preprocess_cfg"]["mean"])
    assert model.preprocess.std == tuple(config["preprocess_cfg"]["std"])


def test_hf_hub_model_loads_from_the_local_cache_offline(tiny_arch, tiny_checkpoint, tmp_path, monkeypatch):
    """Fabricate a Hugging Face cache entry in the hub's on-disk layout and load it with HF_HUB_OFFLINE=1."""
    import huggingface_hub.constants as hf_constants
    from safetensors.torch import save_file

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--vlmbench--tiny-clip"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (snapshot / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    )
    save_file(torch.load(tiny_checkpoint, weights_only=True), snapshot / "open_clip_model.safetensors")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    model = resolve_model("hf-hub:vlmbench/tiny-clip").load()
    assert model.preprocess.mean == (0.5, 0.5, 0.5)
    assert model.tokenizer(["a dog"]).shape[0] == 1


def test_pretrained_tag_offline_is_a_one_line_error():
    with pytest.raises(ModelLoadError) as info:
        resolve_model("RN50:openai").load(download=True)  # asked to download, but the hub is offline (conftest)
    message = str(info.value)
    assert "not in the local Hugging Face cache" in message and "\n" not in message


@pytest.mark.parametrize("spec", ["RN50:openai", "hf-hub:vlmbench/not-cached"])
def test_weights_missing_from_the_cache_are_never_fetched_implicitly(spec, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(OpenClipModel, "_make_tokenizer", lambda self: pytest.fail("open_clip was asked to load"))
    plugin = resolve_model(spec)
    with pytest.raises(ModelLoadError) as info:
        plugin.load()
    assert str(info.value) == (
        f"weights for model {spec!r} are not in the local cache; rerun with --download to fetch them, "
        "or pass a checkpoint file as ARCH:/path/to/weights"
    )
    with pytest.raises(ModelLoadError, match="not in the local cache; rerun with --download"):
        plugin.check_weights(download=False)
    plugin.check_weights(download=True)  # asked for: nothing to refuse


def test_a_load_without_download_keeps_the_hub_offline_and_restores_the_setting(
        tiny_arch, tiny_checkpoint, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    seen = []
    real_create = open_clip.create_model

    def create_model(*args, **kwargs):
        seen.append((os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE))
        return real_create(*args, **kwargs)

    monkeypatch.setattr(open_clip, "create_model", create_model)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    resolve_model(f"{tiny_arch}:{tiny_checkpoint}").load()
    assert seen == [("1", True)]
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE is False
    resolve_model(f"{tiny_arch}:{tiny_checkpoint}").load(download=True)
    assert seen[1] == (None, False)  # downloading was asked for: the hub may be used


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "wrong dtype"])
def test_damaged_text_embedding_cache_is_rebuilt_once(damage, tiny_world_checkpoint, tmp_path, monkeypatch):
    from vlmbench import classifier as clf
    from vlmbench.world.tokenizer import WorldTokenizer

    monkeypatch.setenv("VLMBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(clf, "_TEXT_CACHE", {})
    model = OpenClipModel("tiny", "t", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()
    calls = []
    original = model.module.encode_text
    monkeypatch.setattr(model.module, "encode_text", lambda tokens: calls.append(1) or original(tokens))
    classes, templates = ["red circle", "blue square"], ["a {}."]
    first = clf.class_text_embeddings(model, classes, templates)
    (path,) = (tmp_path / "text").glob("*.pt")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        torch.save(first[:1] if damage == "wrong shape" else first.double(), path)
    monkeypatch.setattr(clf, "_TEXT_CACHE", {})  # a later process
    second = clf.class_text_embeddings(model, classes, templates)
    assert len(calls) == 2 and torch.equal(first, second)
    assert torch.equal(torch.load(path, weights_only=True), first)  # the file was rewritten whole
    monkeypatch.setattr(clf, "_TEXT_CACHE", {})
    clf.class_text_embeddings(model, classes, templates)
    assert len(calls) == 2  # and serves later runs again


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ViT-B-23:openai", "did you mean 'ViT-B-32'"),
        ("world-vitt", "did you mean 'world-vit'"),
        ("ViT-B-32", "needs weights: use ViT-B-32:TAG"),
        ("ViT-B-32:opnai", "did you mean 'openai'"),
        ("ViT-B-32:/no/such/file.pt", "does not exist"),
        ("local-dir:/no/such/folder", "does not exist"),
    ],
)
def test_bad_model_specs_explain_themselves(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(spec)


def test_broken_local_dir_is_a_load_error(tmp_path, tiny_world_checkpoint):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_world_checkpoint, broken)
    (broken / "open_clip_config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        resolve_model(f"local-dir:{broken}").load()


def test_local_dir_checkpoint_names_its_own_tokenizer():
    from vlmbench.world import checkpoint_dir
    from vlmbench.world.tokenizer import WorldTokenizer

    model = resolve_model(f"local-dir:{checkpoint_dir('world-rn')}").load()
    assert isinstance(model.tokenizer, WorldTokenizer)
    assert model.fingerprint == resolve_model("world-rn").load().fingerprint


def test_tokenizer_larger_than_the_text_tower_is_refused(tmp_path, tiny_world_checkpoint):
    folder = tmp_path / "small-vocab"
    shutil.copytree(tiny_world_checkpoint, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["vocab_size"] = 8
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "open_clip_model.safetensors")
    state["token_embedding.weight"] = state["token_embedding.weight"][:8].clone()
    save_file(state, folder / "open_clip_model.safetensors")
    with pytest.raises(ModelLoadError, match="tokenizer has .* tokens but the text tower only 8"):
        resolve_model(f"local-dir:{folder}").load()


def test_loaded_open_clip_models_attend_sequence_first_with_the_same_arithmetic(tiny_world_checkpoint):
    """vlmbench switches open_clip's attention stacks to sequence-first at load (frozen weights made the
    batch-first layout 1.6x slower on the CPU): same logits and input gradients as open_clip's build."""
    from vlmbench.classifier import ZeroShotClassifier
    from vlmbench.models import sequence_first_attention
    from vlmbench.world.tokenizer import WorldTokenizer

    model = OpenClipModel("tiny-world", "test", f"local-dir:{tiny_world_checkpoint}", tokenizer=WorldTokenizer).load()
    stacks = [m for m in model.module.modules() if type(m) is open_clip.transformer.Transformer]
    assert len(stacks) == 2 and not any(s.batch_first or s.resblocks[0].attn.batch_first for s in stacks)
    classifier = ZeroShotClassifier.build(model, ["circle", "square", "triangle"], ["a photo of a {}."])
    x = torch.rand(6, 3, *model.preprocess.size, generator=torch.Generator().manual_seed(0))

    def logits_and_gradient() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.clone().requires_grad_(True)
        logits = classifier(leaf)
        (grad,) = torch.autograd.grad(logits.logsumexp(dim=1).sum(), leaf)
        return logits.detach(), grad

    sequence_first = logits_and_gradient()
    assert sequence_first_attention(model.module, enabled=False) == 2  # back to open_clip's own build
    assert all(s.batch_first and s.resblocks[0].attn.batch_first for s in stacks)
    batch_first = logits_and_gradient()
    for ours, theirs in zip(sequence_first, batch_first):
        assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-7)
    assert sequence_first_attention(model.module) == 2  # and switching again finds them all


def test_only_plain_multi_head_attention_stacks_are_switched():
    from vlmbench.models import sequence_first_attention

    plain = open_clip.transformer.Transformer(width=32, layers=1, heads=2)
    custom = open_clip.transformer.CustomTransformer(width=32, layers=1, heads=2)
    assert sequence_first_attention(torch.nn.ModuleList([plain, custom])) == 1
    assert not plain.batch_first and custom.batch_first  # its blocks have their own attention: left as built
    x = torch.rand(2, 5, 32)
    assert plain(x).shape == (2, 5, 32)  # still takes and returns (N, L, D)
