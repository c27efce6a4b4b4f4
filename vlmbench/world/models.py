"""The embedded world's two CLIP models as registered model plugins (``world-vit``, ``world-rn``).

Both are open_clip models loaded from their shipped ``local-dir:`` checkpoints through the same code
path as any other open_clip model; each checkpoint's config names the world's word-level tokenizer.
"""

from __future__ import annotations

from vlmbench.models import OpenClipModel
from vlmbench.world import checkpoint_dir

WORLD_VIT = OpenClipModel(
    "world-vit",
    "embedded world: tiny CLIP, ViT image tower (ships with vlmbench)",
    f"local-dir:{checkpoint_dir('world-vit')}",
)
WORLD_RN = OpenClipModel(
    "world-rn",
    "embedded world: tiny CLIP, ResNet image tower (ships with vlmbench)",
    f"local-dir:{checkpoint_dir('world-rn')}",
)
