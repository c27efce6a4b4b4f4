"""The embedded world's two CLIP models as registered model plugins (``world-vit``, ``world-rn``).

Both are open_clip models loaded from their shipped ``local-dir:`` checkpoints through the same code
path as any other open_clip model; only the tokenizer is the world's own word-level one.
"""

from __future__ import annotations

from vlmbench.models import OpenClipModel
from vlmbench.world import checkpoint_dir


def _world_tokenizer():  # noqa: ANN202 - the factory's return type is the tokenizer class
    from vlmbench.world.tokenizer import WorldTokenizer

    return WorldTokenizer()


WORLD_VIT = OpenClipModel(
    "world-vit",
    "embedded world: tiny CLIP, ViT image tower (ships with vlmbench)",
    f"local-dir:{checkpoint_dir('world-vit')}",
    tokenizer=_world_tokenizer,
)
WORLD_RN = OpenClipModel(
    "world-rn",
    "embedded world: tiny CLIP, ResNet image tower (ships with vlmbench)",
    f"local-dir:{checkpoint_dir('world-rn')}",
    tokenizer=_world_tokenizer,
)
