"""Test settings: offline, one CPU thread, a private cache, tiny models."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("VLMBENCH_CACHE", tempfile.mkdtemp(prefix="vlmbench-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


class TinyLinearClassifier(torch.nn.Module):
    """A differentiable classifier on (N,3,8,8) images in [0,1]: a fixed random linear map to C logits."""

    def __init__(self, num_classes: int = 5, size: int = 8, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(num_classes, 3 * size * size, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.T


@pytest.fixture
def tiny_classifier() -> TinyLinearClassifier:
    return TinyLinearClassifier()


@pytest.fixture(scope="session")
def tiny_world_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised world-vit-shaped CLIP in open_clip's local-dir format (no training)."""
    from vlmbench.world import train

    folder = tmp_path_factory.mktemp("tiny-world")
    model = train.build_model(train.MODEL_CONFIGS["world-vit"], seed=0)
    train.save_checkpoint(model, train.MODEL_CONFIGS["world-vit"], folder, {"note": "random init, for tests"})
    return folder


@pytest.fixture
def tiny_model_plugin_file(tmp_path: Path, tiny_world_checkpoint: Path) -> Path:
    """A --plugin source registering the random tiny model as 'tiny-world'."""
    source = tmp_path / "tiny_plugin.py"
    source.write_text(
        "from vlmbench.models import OpenClipModel\n"
        "from vlmbench.world.tokenizer import WorldTokenizer\n"
        f"TINY = OpenClipModel('tiny-world', 'random-init world ViT', 'local-dir:{tiny_world_checkpoint}', tokenizer=WorldTokenizer)\n"
    )
    return source


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test sees the registries as freshly read from the entry points."""
    from vlmbench import registry

    registry.reset()
    yield
    registry.reset()



def _tiny_zero_shot_class() -> type:
    from vlmbench.classifier import ZeroShotClassifier

    class TinyZeroShot(ZeroShotClassifier):
        """A zero-shot classifier with a linear image encoder, for hand-checked test-time defense cases.

        ``encode_image(x) = x.flatten(1) @ encoder.T`` (identity by default); logits
        ``scale · cos(f(x), t_c)`` over unit ``class_embeddings``, as the real classifier computes them.
        """

        def __init__(self, class_embeddings: torch.Tensor, encoder: torch.Tensor | None = None, scale: float = 10.0) -> None:
            torch.nn.Module.__init__(self)
            dim = class_embeddings.shape[1]
            self.register_buffer("encoder", torch.eye(dim) if encoder is None else encoder)
            self.register_buffer("class_embeddings", torch.nn.functional.normalize(class_embeddings, dim=1))
            self.logit_scale = scale
            self.templates = ()

        def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
            features = x.flatten(1) @ self.encoder.T
            return torch.nn.functional.normalize(features, dim=-1) if normalize else features

    return TinyZeroShot


@pytest.fixture
def tiny_zero_shot() -> type:
    """The class ``TinyZeroShot(class_embeddings (C,D), encoder (D, 3·H·W) | None, scale)``."""
    return _tiny_zero_shot_class()
