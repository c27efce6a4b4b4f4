"""The embedded default world: a procedurally generated image-text world and two tiny CLIP models.

* :mod:`vlmbench.world.render` draws 32x32 scenes of coloured shapes on textured backgrounds and
  captions them; some shape-colour combinations are held out of pretraining.
* :mod:`vlmbench.world.tokenizer` is the word-level tokenizer of the world's vocabulary.
* :mod:`vlmbench.world.datasets` offers zero-shot datasets (``world-shape``, ``world-combo``, ...)
  generated on the fly, as :class:`vlmbench.data.DatasetPlugin` instances.
* :mod:`vlmbench.world.train` trains the CLIP models ``world-vit`` and ``world-rn`` whose
  checkpoints ship under ``assets/`` in open_clip's ``local-dir:`` format.

This module imports nothing heavy; it only names the shipped checkpoints.
"""

from __future__ import annotations

from pathlib import Path

WORLD_MODEL_NAMES: tuple[str, ...] = ("world-vit", "world-rn")
ASSETS_DIR = Path(__file__).resolve().parent / "assets"


def checkpoint_dir(name: str) -> Path:
    """Folder of the shipped checkpoint ``name`` (load it with ``open_clip.create_model("local-dir:" + str(path))``).

    Raises:
        KeyError: ``name`` is not one of :data:`WORLD_MODEL_NAMES`.
    """
    if name not in WORLD_MODEL_NAMES:
        raise KeyError(f"unknown world model {name!r}; known: {', '.join(WORLD_MODEL_NAMES)}")
    return ASSETS_DIR / name
