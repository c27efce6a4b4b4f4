"""CLIP models: loading any open_clip model, and the model plugins of the registry.

``--model`` accepts, in this order of precedence:

* a registered model name (``world-vit``; see ``vlmbench list models``);
* ``hf-hub:ORG/REPO``: an open_clip model repository from the Hugging Face cache (or hub when online);
* ``local-dir:PATH``: a folder in open_clip's hub format (``open_clip_config.json`` + weights);
* ``ARCH:PRETRAINED``: an open_clip architecture (``open_clip.list_models()``) with a pretrained tag
  (``ViT-B-32:openai``) or a checkpoint file (``ViT-B-32:/ckpt/tecoa.pt``).

Preprocessing constants (mean, std, interpolation, input size) come from the pretrained tag or the
model folder's config, exactly as open_clip would use them, and are applied inside the classifier.

Weights are never downloaded implicitly: a pretrained tag or an ``hf-hub:`` repository whose weights
are not in the local cache is a :class:`ModelLoadError` unless the load asks for ``download=True``
(``vlmbench run --download``). :func:`vlmbench.resolve.resolve_model` turns a spec into a plugin.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmbench.names import import_object
from vlmbench.weights import ModelLoadError, hub_offline, missing_weights_message, weights_are_local

Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class Preprocess:
    """How pixels in [0,1] become the model's input: resize, then normalise.

    Attributes:
        size: model input size ``(H, W)``.
        mean, std: per-channel normalisation constants of the pretrained weights.
        interpolation: ``"bicubic"`` or ``"bilinear"`` (as in the pretrained tag's config).
        resize_mode: ``"shortest"`` (resize the short side to ``size``, then centre-crop) or
            ``"squash"`` (resize both sides to ``size``).
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def describe(self) -> str:
        return f"{self.resize_mode}-{self.interpolation}-{self.size[0]}x{self.size[1]}"


@dataclass
class ClipModel:
    """A loaded CLIP model in float32, evaluation mode, parameters frozen.

    Attributes:
        name: the spec it was loaded from (as recorded in the protocol).
        module: the open_clip model (``encode_image``, ``encode_text``, ``logit_scale``).
        tokenizer: ``list[str] -> LongTensor[N, context_length]``.
        preprocess: resize/normalise constants.
        fingerprint: SHA-256 of the parameters (first 16 hex digits); changes whenever the weights do.
    """

    name: str
    module: torch.nn.Module
    tokenizer: Tokenizer
    preprocess: Preprocess
    fingerprint: str

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp())


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def preprocess_of(module: torch.nn.Module) -> Preprocess:
    """The input size, normalisation and resize rule open_clip configured for ``module``."""
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(module)
    size = cfg.get("size", 224)
    return Preprocess(
        size=(size, size) if isinstance(size, int) else tuple(size),  # type: ignore[arg-type]
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """float32, eval mode, no parameter gradients (attacks only need input gradients), and open_clip's
    attention stacks sequence-first (:func:`sequence_first_attention`): how vlmbench holds every model."""
    module = module.float().eval()
    for p in module.parameters():
        p.requires_grad_(False)
    sequence_first_attention(module)
    return module


def sequence_first_attention(module: torch.nn.Module, enabled: bool = True) -> int:
    """Run ``module``'s open_clip attention stacks sequence-first, ``(L, N, D)``, instead of batch-first
    (``enabled=False``: back to open_clip's batch-first build); returns how many stacks were set. The
    same computation: each stack transposes its input once, and its layer norms hand contiguous rows to
    the attention's input projection. Only the matmul kernels differ, so rounding may: by 1.4e-6 of the
    largest input-gradient component on ViT-B-32, by nothing on the world models (their committed
    results recompute bit for bit).

    Why: batch-first, ``nn.MultiheadAttention`` transposes its input internally and the input projection
    receives it non-contiguous; with frozen weights (as vlmbench loads every model) and only the input
    requiring a gradient, torch's matmul then runs it as a batched matmul over an expanded weight. On
    the CPU that makes one forward plus input gradient of ViT-B-32 1.6× slower
    (``benchmarks/frozen_weights.py``). Only open_clip's plain ``Transformer`` stacks whose blocks all
    use ``nn.MultiheadAttention`` are switched; their ``forward`` honours ``batch_first``.
    """
    from open_clip.transformer import ResidualAttentionBlock, Transformer

    switched = 0
    for stack in module.modules():
        if type(stack) is not Transformer or not hasattr(stack, "batch_first"):
            continue
        blocks = list(stack.resblocks)
        if not all(type(b) is ResidualAttentionBlock and isinstance(b.attn, torch.nn.MultiheadAttention) for b in blocks):
            continue
        stack.batch_first = not enabled
        for block in blocks:
            block.attn.batch_first = not enabled
        switched += 1
    return switched


class ModelPlugin(ABC):
    """A registered model (entry-point group ``vlmbench.models``)."""

    name: str
    description: str

    @abstractmethod
    def load(self, device: torch.device | str = "cpu", download: bool = False) -> ClipModel:
        """Load the model onto ``device``; raises :class:`ModelLoadError` with a one-line message.

        ``download``: fetch weights that are not in the local cache; without it, missing weights are
        an error and nothing is fetched."""

    def check_weights(self, download: bool = False) -> None:
        """Raise :class:`ModelLoadError` now when :meth:`load` would need weights that are not local
        and ``download`` is False. Cheap (no weights are read); the default has nothing to check."""


class OpenClipModel(ModelPlugin):
    """Any open_clip model: ``model_name`` as open_clip takes it, plus an optional ``pretrained``.

    Args:
        name: registry name or the user's spec.
        description: one line for listings.
        model_name: open_clip model name, ``hf-hub:...`` or ``local-dir:...``.
        pretrained: tag or checkpoint path (only without a schema).
        tokenizer: factory of a custom tokenizer; default ``open_clip.get_tokenizer(model_name)``.
    """

    def __init__(
        self,
        name: str,
        description: str,
        model_name: str,
        pretrained: str | None = None,
        tokenizer: Callable[[], Tokenizer] | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.model_name = model_name
        self.pretrained = pretrained
        self._tokenizer = tokenizer

    def load(self, device: torch.device | str = "cpu", download: bool = False) -> ClipModel:
        """See :meth:`ModelPlugin.load`; without ``download`` the hub is not contacted at all
        (``HF_HUB_OFFLINE=1`` for the duration of the load)."""
        self.check_weights(download)
        import open_clip

        try:
            with contextlib.nullcontext() if download else hub_offline():
                module = open_clip.create_model(
                    self.model_name, pretrained=self.pretrained, device=device, require_pretrained=True
                )
                tokenizer = self._make_tokenizer()
        except Exception as exc:
            raise ModelLoadError(_explain_load_failure(self.name, exc)) from exc
        preprocess = preprocess_of(module)
        if preprocess.resize_mode not in ("shortest", "squash"):
            raise ModelLoadError(
                f"model {self.name!r}: resize_mode {preprocess.resize_mode!r} is not supported (use shortest or squash)"
            )
        vocab = getattr(tokenizer, "vocab_size", None)
        embedding = getattr(module, "token_embedding", None)
        if vocab is not None and embedding is not None and vocab > embedding.num_embeddings:
            raise ModelLoadError(
                f"model {self.name!r}: its tokenizer has {vocab} tokens but the text tower only {embedding.num_embeddings}; "
                "the checkpoint was made with another vocabulary"
            )
        module = freeze(module)
        return ClipModel(self.name, module, tokenizer, preprocess, parameter_fingerprint(module))

    def check_weights(self, download: bool = False) -> None:
        """Pretrained tags and ``hf-hub:`` repositories must be in the local cache unless ``download``
        (:func:`vlmbench.weights.weights_are_local`); checkpoint files and ``local-dir:`` folders are local."""
        if not download and not weights_are_local(self.model_name, self.pretrained):
            raise ModelLoadError(missing_weights_message(self.name))

    def _make_tokenizer(self) -> Tokenizer:
        """The explicit tokenizer factory, else the one a local-dir config names under
        ``"vlmbench_tokenizer": "module:attr"`` (world checkpoints do), else open_clip's own."""
        import open_clip

        if self._tokenizer is not None:
            return self._tokenizer()
        if self.model_name.startswith("local-dir:"):
            config = json.loads((Path(self.model_name.split(":", 1)[1]) / "open_clip_config.json").read_text())
            if "vlmbench_tokenizer" in config:
                return import_object(config["vlmbench_tokenizer"])()
        return open_clip.get_tokenizer(self.model_name)


def _explain_load_failure(spec: str, exc: Exception) -> str:
    chain, cause = [], exc
    while cause is not None:
        chain.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if any(name in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "gaierror") for name in chain):
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        return (
            f"cannot load weights for model {spec!r}: not in the local Hugging Face cache and no network{offline}; "
            "put the weights in the cache or pass a checkpoint file as ARCH:/path/to/weights"
        )
    return f"cannot load model {spec!r}: {text}"
