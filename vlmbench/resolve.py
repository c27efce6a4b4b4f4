"""``--model`` values → model plugins: the one place where the model contract meets the registry.

Kept apart from :mod:`vlmbench.models` so that the dependency stays one-way: the registry knows the
contracts, no contract knows the registry.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlmbench.models import ModelLoadError, ModelPlugin, OpenClipModel
from vlmbench.registry import PluginError, plugins, unknown_name_message


def resolve_model(spec: str) -> ModelPlugin:
    """The model plugin for a ``--model`` value (grammar: :mod:`vlmbench.models`). Nothing is loaded.

    Raises:
        ModelLoadError: malformed spec or unknown architecture (with close matches).
    """
    registry = plugins().models
    if spec in registry:
        try:
            return registry.get(spec)
        except PluginError as exc:
            raise ModelLoadError(str(exc)) from exc
    if spec.startswith(("hf-hub:", "local-dir:")):
        if spec.startswith("local-dir:") and not Path(spec.split(":", 1)[1]).is_dir():
            raise ModelLoadError(f"model folder {spec.split(':', 1)[1]!r} does not exist")
        return OpenClipModel(spec, "open_clip model", spec)
    arch, sep, pretrained = spec.partition(":")
    import open_clip

    if arch not in open_clip.list_models():
        known = registry.names() + open_clip.list_models()
        raise ModelLoadError(unknown_name_message("model", arch if sep else spec, known))
    if not sep or not pretrained:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)[:6]) or "none built in"
        raise ModelLoadError(
            f"model {spec!r} needs weights: use {arch}:TAG (tags: {tags}) or {arch}:/path/to/checkpoint"
        )
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path and not Path(pretrained).is_file():
        raise ModelLoadError(f"checkpoint file {pretrained!r} does not exist")
    if not looks_like_path and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
        known_tags = open_clip.list_pretrained_tags_by_model(arch)
        raise ModelLoadError(unknown_name_message(f"pretrained tag for {arch}", pretrained, known_tags))
    return OpenClipModel(spec, "open_clip model", arch, pretrained)
