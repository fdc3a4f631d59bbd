"""Build a raw diffusers UNet (from a module, a pipeline or a ``from_pretrained`` location); no wrapping."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from torch import nn

from visionlens.validation import VisionLensError

__all__ = ["load_diffusers_module"]


def _unet_class(name: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None:
        raise VisionLensError(f"diffusers has no model class {name!r}.")
    return cls


def load_diffusers_module(
    unet_or_path: Any, subfolder: Optional[str] = None, pipeline: bool = False, eval: bool = True, **kwargs: Any
) -> tuple[nn.Module, Any]:
    """A diffusers UNet module and the pipeline it came from: ``(unet, pipeline or None)``.

    ``unet_or_path``: a UNet module, a pipeline (its ``.unet``), or a location. Paths: a model
    directory (``config.json`` with ``_class_name``), a pipeline directory (``model_index.json``; its
    ``unet`` subfolder is loaded, or the whole pipeline with ``pipeline=True``), or a hub id
    (diffusers' own loader; ``subfolder`` defaults to ``"unet"``). Weights are read by diffusers
    (safetensors preferred). Extra keyword arguments go to ``from_pretrained``. An already wrapped
    model (anything with ``hook_dict`` and ``adapter``) comes back as ``(model, None)`` unchanged.
    """
    obj = unet_or_path
    if hasattr(obj, "hook_dict") and hasattr(obj, "adapter"):
        return obj, None
    pipe = None
    if not isinstance(obj, nn.Module) and hasattr(obj, "unet") and hasattr(obj, "components"):
        pipe, obj = obj, obj.unet
    elif isinstance(obj, (str, os.PathLike)):
        path = Path(str(obj))
        if path.is_dir():
            index = path / "model_index.json"
            if pipeline and index.is_file():
                from diffusers import DiffusionPipeline

                pipe = DiffusionPipeline.from_pretrained(str(path), **kwargs)
                obj = pipe.unet
            else:
                sub = subfolder
                if sub is None and index.is_file() and not (path / "config.json").is_file():
                    sub = "unet"
                cfg_file = (path / sub / "config.json") if sub else (path / "config.json")
                if not cfg_file.is_file():
                    raise VisionLensError(
                        f"Expected a diffusers model directory (config.json) or pipeline directory "
                        f"(model_index.json with a unet/ folder), got {str(path)!r}."
                    )
                cls_name = json.loads(cfg_file.read_text()).get("_class_name", "UNet2DConditionModel")
                obj = _unet_class(cls_name).from_pretrained(str(path), subfolder=sub, **kwargs)
        elif path.exists():
            raise VisionLensError(f"Expected a diffusers directory (from save_pretrained), got the file {str(path)!r}.")
        elif os.sep in str(obj) and str(obj).startswith((".", "/", "~")):
            raise FileNotFoundError(f"diffusers model directory {str(obj)!r} does not exist.")
        else:  # a hub id: diffusers' own loader
            from diffusers import UNet2DConditionModel

            obj = UNet2DConditionModel.from_pretrained(str(obj), subfolder=subfolder or "unet", **kwargs)
    if not isinstance(obj, nn.Module):
        raise VisionLensError(f"Expected a diffusers UNet, pipeline or path, got {type(obj).__name__}.")
    if eval:
        obj = obj.eval()
    return obj, pipe
