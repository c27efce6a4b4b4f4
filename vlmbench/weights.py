"""Where open_clip weights come from, answered without the network and without importing torch.

vlmbench never downloads weights implicitly: before open_clip is asked to load a pretrained tag or an
``hf-hub:`` repository, :func:`weights_are_local` checks the caches open_clip would read (the Hugging
Face cache for hub-hosted weights, ``~/.cache/clip`` for URL-hosted ones), and :func:`hub_offline`
keeps the hub from being contacted during a load that did not ask to download.

Importing open_clip itself costs about ten seconds (torchvision, torch's compiler); the tag table
is read from a private copy of ``open_clip.pretrained`` instead, so that a missing-weights error
answers in about a second.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmbench.errors import VlmbenchError

_PRIVATE_PACKAGE = "_vlmbench_open_clip_tables"


class ModelLoadError(VlmbenchError):
    """A model spec could not be resolved or its weights could not be loaded."""


def missing_weights_message(name: str) -> str:
    return (f"weights for model {name!r} are not in the local cache; rerun with --download to fetch them, "
            "or pass a checkpoint file as ARCH:/path/to/weights")


def _open_clip_submodule(name: str) -> Any | None:
    """open_clip's torch-free submodule ``name`` (``pretrained``, ``constants``): the real one once
    open_clip is imported, else a private copy loaded without open_clip's package ``__init__`` and
    with ``safetensors.torch`` hidden (its only torch import, an optional one). None when open_clip
    is not installed or the copy fails to load (then callers fall back to open_clip proper)."""
    if "open_clip" in sys.modules:
        return importlib.import_module(f"open_clip.{name}")
    if _PRIVATE_PACKAGE not in sys.modules:
        spec = importlib.util.find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            return None
        package = types.ModuleType(_PRIVATE_PACKAGE)
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules[_PRIVATE_PACKAGE] = package
    hide = "safetensors.torch" not in sys.modules
    if hide:
        sys.modules["safetensors.torch"] = None  # type: ignore[assignment]  # makes that import fail fast
    try:
        return importlib.import_module(f"{_PRIVATE_PACKAGE}.{name}")
    except Exception:
        return None
    finally:
        if hide:
            sys.modules.pop("safetensors.torch", None)


def pretrained_cfg(arch: str, tag: str) -> dict[str, Any] | None:
    """open_clip's pretrained config of ``arch:tag`` (``hf_hub``, ``url``, ...), or None when the tag is
    not one of open_clip's (a checkpoint path, an unknown name) or the table cannot be read."""
    module = _open_clip_submodule("pretrained")
    if module is None:
        return None
    return module.get_pretrained_cfg(arch.replace("/", "-"), tag) or None


def weights_are_local(model_name: str, pretrained: str | None) -> bool:
    """Whether open_clip would find the weights of ``model_name`` (an architecture, ``hf-hub:REPO`` or
    ``local-dir:PATH``) with ``pretrained`` (a tag, a file or None) without the network: the sources it
    reads, in its order of preference. Checkpoint files and ``local-dir:`` folders count as local."""
    if model_name.startswith("local-dir:") or (not pretrained and not model_name.startswith("hf-hub:")):
        return True
    constants = _open_clip_submodule("constants")
    if constants is None:
        return True  # cannot tell: open_clip's own load will say what is missing
    if model_name.startswith("hf-hub:"):
        repo = model_name[len("hf-hub:"):]
        return (_in_hf_cache(repo, [constants.HF_CONFIG_NAME])
                and _in_hf_cache(repo, _hf_weight_files(constants.HF_WEIGHTS_NAME, constants)))
    cfg = pretrained_cfg(model_name, pretrained or "")
    if cfg is None:  # a checkpoint file, not a tag
        return True
    if "file" in cfg:
        return Path(cfg["file"]).is_file()
    if cfg.get("hf_hub") and _has_hf_hub():
        repo, filename = os.path.split(cfg["hf_hub"])
        return _in_hf_cache(repo, _hf_weight_files(filename or constants.HF_WEIGHTS_NAME, constants))
    if cfg.get("url"):  # open_clip's own download folder for URL-hosted weights
        return (Path.home() / ".cache" / "clip" / os.path.basename(cfg["url"])).is_file()
    return True


def _has_hf_hub() -> bool:
    return importlib.util.find_spec("huggingface_hub") is not None


def _hf_weight_files(filename: str, constants: Any) -> list[str]:
    """The files open_clip tries for ``filename``: its safetensors twin first, as open_clip does."""
    if filename == constants.HF_WEIGHTS_NAME:
        return [constants.HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def _in_hf_cache(repo: str, filenames: list[str]) -> bool:
    """Whether any of ``filenames`` of model repository ``repo`` is in the local Hugging Face cache."""
    if not _has_hf_hub():
        return False
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in filenames)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the duration, in the environment and in huggingface_hub's constants
    (which it reads once, at import); both are restored afterwards."""
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = None
    if _has_hf_hub():
        import huggingface_hub.constants as constants

        saved_constant = constants.HF_HUB_OFFLINE
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env
        if constants is not None:
            constants.HF_HUB_OFFLINE = saved_constant
