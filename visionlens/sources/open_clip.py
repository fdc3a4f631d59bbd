"""Build a raw open_clip model (``CLIP`` / ``CustomTextCLIP``) with open_clip's own factory; no wrapping."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from visionlens.validation import VisionLensError

__all__ = ["load_open_clip_module"]


def _is_path(p: Any) -> bool:
    return isinstance(p, (str, os.PathLike)) and (
        os.path.exists(str(p)) or os.sep in str(p) or Path(str(p)).suffix in (".pt", ".pth", ".bin", ".safetensors")
    )


def load_open_clip_module(
    name: Union[str, dict], pretrained: Optional[str] = None, eval: bool = True, **kwargs: Any
) -> nn.Module:
    """Build an open_clip model with open_clip's own factory (not wrapped: the caller wraps it).

    ``name``: a built-in model name (``"ViT-B-32"``, ``"RN50"``), an open_clip schema name
    (``"local-dir:/path"``, ``"hf-hub:org/repo"``), or a model config dict
    (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``, like open_clip's JSON configs).
    ``pretrained``: ``None`` (random init), an open_clip tag (downloaded by open_clip), a local
    ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file (read with ``weights_only=True`` or
    safetensors) or a directory holding ``open_clip_config.json`` and weights.
    Extra keyword arguments go to ``open_clip.create_model``. The model's ``_visionlens_name`` is set
    to ``name`` (None for a config dict); ``eval=True`` returns it in eval mode.
    """
    import open_clip

    if isinstance(pretrained, (str, os.PathLike)) and _is_path(pretrained):
        p = Path(str(pretrained))
        if not p.exists():
            raise FileNotFoundError(f"open_clip checkpoint {str(p)!r} does not exist.")
        if p.is_dir():
            if isinstance(name, str) and not name.startswith("local-dir:") and (p / "open_clip_config.json").is_file():
                name, pretrained = f"local-dir:{p}", None
            elif not (p / "open_clip_config.json").is_file():
                raise VisionLensError(
                    f"Expected an open_clip checkpoint directory with open_clip_config.json, got {str(p)!r}."
                )
        pretrained = str(pretrained) if pretrained is not None else None
    if isinstance(name, dict):
        cfg = dict(name)
        cfg.update(kwargs.pop("model_kwargs", {}))
        custom = cfg.pop("custom_text", False)
        cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
        model = cls(**cfg)
        if pretrained:
            if not os.path.isfile(pretrained):
                raise VisionLensError(
                    f"With a config dict, pretrained must be a local checkpoint file, got {pretrained!r}."
                )
            open_clip.load_checkpoint(model, pretrained)
        label = "custom"
    else:
        if not name.startswith(("local-dir:", "hf-hub:")):
            known = open_clip.list_models()
            if name.replace("/", "-") not in known:
                import difflib

                close = difflib.get_close_matches(name, known, n=6)
                raise VisionLensError(
                    f"Unknown open_clip model {name!r}. Closest: {', '.join(close) or 'none'} "
                    "(see open_clip.list_models())."
                )
        model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        label = name
    model._visionlens_name = label if label != "custom" else None
    if eval:
        model = model.eval()
    return model
