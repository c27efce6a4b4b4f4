"""The zero-shot classifier: pixels in [0,1] → class logits, differentiable w.r.t. the pixels.

Resizing and normalisation happen inside :meth:`ZeroShotClassifier.forward`, so every attack acts on
[0,1] pixels at the dataset's native resolution and the ε-ball means what the protocol says.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from vlmbench.models import ClipModel, Preprocess
from vlmbench.paths import cache_dir


def resize_and_normalize(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Map images ``(N,3,H,W)`` in [0,1] to the model's normalised input ``(N,3,h,w)``; differentiable.

    ``shortest``: resize so the short side equals the target, then centre-crop; ``squash``: resize
    both sides. Down-sampling is antialiased; an input already at the target size is not resampled.
    """
    h, w = preprocess.size
    if x.shape[-2:] != (h, w):
        if preprocess.resize_mode == "shortest":
            scale = max(h / x.shape[-2], w / x.shape[-1])
            size = (max(h, round(x.shape[-2] * scale)), max(w, round(x.shape[-1] * scale)))
        else:
            size = (h, w)
        x = F.interpolate(
            x,
            size=size,
            mode=preprocess.interpolation,
            align_corners=False,
            antialias=size[0] < x.shape[-2] or size[1] < x.shape[-1],
        )
        top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
        x = x[..., top : top + h, left : left + w]
    mean, std = _normalisation(tuple(preprocess.mean), tuple(preprocess.std), x.dtype, x.device)
    return (x - mean) / std


@functools.lru_cache(maxsize=64)
def _normalisation(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and std as ``(1, 3, 1, 1)`` tensors, made once per device and dtype: building them on
    every forward copied them from the host (a synchronising transfer on CUDA) at every attack step."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1))


_TEXT_CACHE: dict[str, torch.Tensor] = {}


@torch.no_grad()
def class_text_embeddings(
    model: ClipModel,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    disk_cache: bool = True,
) -> torch.Tensor:
    """Zero-shot class weights ``(C, D)``: per class, the mean of the unit-normalised embeddings of
    every template filled with the class name, normalised again (the CLIP prompt-ensemble recipe).

    Cached per (model weights, class names, templates): in memory, and on disk under
    ``cache_dir()/text`` (``disk_cache=False`` to skip the disk). A disk entry that cannot be read
    back as float32 ``(C, D)`` (truncated, foreign) is deleted and rebuilt once.
    """
    key_text = "\x1f".join([model.fingerprint, "\x1e".join(classnames), "\x1e".join(templates)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:24]
    device = next(model.module.parameters()).device
    if key in _TEXT_CACHE:
        return _TEXT_CACHE[key].to(device)
    path = cache_dir() / "text" / f"{key}.pt"
    weights = _load_cached_embeddings(path, len(classnames)) if disk_cache else None
    if weights is None:
        prompts = [template.format(name) for name in classnames for template in templates]
        chunks = []
        for start in range(0, len(prompts), batch_size):
            tokens = model.tokenizer(prompts[start : start + batch_size]).to(device)
            chunks.append(F.normalize(model.module.encode_text(tokens).float(), dim=-1).cpu())
        per_prompt = torch.cat(chunks).view(len(classnames), len(templates), -1)
        weights = F.normalize(per_prompt.mean(dim=1), dim=-1)
        if disk_cache:
            _atomic_torch_save(weights, path)
    _TEXT_CACHE[key] = weights
    return weights.to(device)


def _load_cached_embeddings(path: Path, n_classes: int) -> torch.Tensor | None:
    """The class embeddings stored at ``path``, or None when there are none. A file that fails to
    load, or holds anything but a finite float32 ``(n_classes, D)`` tensor, is deleted (the caller
    rebuilds it); an unreadable one (permissions, I/O) raises its ``OSError``."""
    if not path.is_file():
        return None
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception:  # truncated or foreign file: pickle, zip and torch errors alike
        weights = None
    if (isinstance(weights, torch.Tensor) and weights.dtype == torch.float32 and weights.dim() == 2
            and weights.shape[0] == n_classes and weights.shape[1] > 0 and bool(torch.isfinite(weights).all())):
        return weights
    path.unlink(missing_ok=True)
    return None


def _atomic_torch_save(tensor: torch.Tensor, path: Path) -> None:
    """Write ``tensor`` to ``path`` through a temporary file and a rename: readers see the old file
    or the whole new one, never a part; a failed write (disk full) leaves no temporary behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(tensor, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ZeroShotClassifier(torch.nn.Module):
    """CLIP as a classifier over fixed class-text embeddings.

    ``forward(x)``: ``x`` float32 ``(N,3,H,W)`` in [0,1] at any resolution → logits ``(N,C)`` =
    ``logit_scale · cos(f(x), t_c)``. Differentiable with respect to ``x``; parameters are frozen.

    Attributes:
        model: the loaded CLIP model.
        class_embeddings: unit class-text embeddings ``(C, D)`` (a buffer).
        logit_scale: the model's learned temperature, ``exp(logit_scale)`` (≤ 100 for CLIP).
        templates: the prompt templates the class embeddings were built from (for defenses that
            embed other prompts the same way, e.g. a blank template).
    """

    def __init__(self, model: ClipModel, class_embeddings: torch.Tensor, templates: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.templates = tuple(templates)
        self.clip = model.module  # a registered submodule, so .to(device) moves the weights
        self.register_buffer("class_embeddings", class_embeddings.float())
        self.logit_scale = model.logit_scale

    @classmethod
    def build(cls, model: ClipModel, classnames: Sequence[str], templates: Sequence[str]) -> ZeroShotClassifier:
        return cls(model, class_text_embeddings(model, classnames, templates), templates)

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def encode_image(self, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """Image embeddings ``(N, D)`` of pixels ``x`` in [0,1]; un-normalised unless asked."""
        features = self.model.module.encode_image(resize_and_normalize(x, self.model.preprocess))
        return F.normalize(features, dim=-1) if normalize else features

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Float32 logits (also under autocast) from (un-normalised) image embeddings; for defenses that
        act in embedding space."""
        return (self.logit_scale * F.normalize(features, dim=-1) @ self.class_embeddings.T).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.encode_image(x))
