"""Model loading through each library's own loader, and ``visionlens.load(spec)``.

Spec strings (shared with the CLI): ``timm:NAME``, ``torchvision:NAME``, ``open_clip:NAME``,
``diffusers:PATH``; plugins may add prefixes (the model zoo will register ``zoo:``) (``visionlens_register_model_specs``).
Weights come from the library's hub name / weights enum, or a local checkpoint file loaded with
safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .validation import VisionLensError


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or a torch file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise VisionLensError(f"Expected a state dict in {str(path)!r}, found {type(sd).__name__}.")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike)) and (os.sep in str(value) or Path(str(value)).suffix in
                                                      (".pth", ".pt", ".bin", ".safetensors", ".ckpt"))


def load_timm(name: str, pretrained: Union[bool, str] = False, checkpoint_path: Optional[str] = None,
              eval: bool = True, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained loader, or a local checkpoint path."""
    import timm

    if isinstance(pretrained, (str, os.PathLike)) and _is_path(pretrained):
        checkpoint_path, pretrained = str(pretrained), False
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VisionLensError(f"Unknown timm model {name!r}. Similar timm names: {', '.join(close) or 'none'}.")
    model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    if checkpoint_path:
        model.load_state_dict(load_state_dict_file(checkpoint_path))
    return model.eval() if eval else model


def load_torchvision(name: str, weights: Any = None, eval: bool = True, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model`` with its weights enum (hash-checked download/cache) or a local path."""
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5)
        raise VisionLensError(f"Unknown torchvision model {name!r}. Closest: {', '.join(close) or 'none'}.")
    local = None
    if _is_path(weights):
        local, weights = str(weights), None
    elif weights is True:
        weights = "DEFAULT"
    if name == "googlenet" and weights is None:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    if weights is not None:
        enum = torchvision.models.get_model_weights(name)
        w = enum[weights] if isinstance(weights, str) and weights != "DEFAULT" else (
            enum.DEFAULT if weights == "DEFAULT" else weights)
        meta = getattr(w, "meta", {})
        if "categories" in meta:
            model.visionlens_class_names = list(meta["categories"])
    if local:
        model.load_state_dict(load_state_dict_file(local))
    return model.eval() if eval else model


def parse_spec(spec: str) -> tuple[str, str]:
    if ":" not in spec:
        raise VisionLensError(f"Expected a model spec 'prefix:name' (e.g. 'timm:resnet50', 'torchvision:mobilenet_v2'), got {spec!r}.")
    prefix, name = spec.split(":", 1)
    return prefix, name


def load(spec: str, pretrained: Any = False, adapter: Any = "auto", **kwargs: Any):
    """Build a :class:`HookedVisionModel` from a spec string such as ``"timm:resnet50"``.

    ``pretrained`` is passed to the library's loader: ``True`` / a tag / a local checkpoint path
    (for torchvision it may also be a weights enum name such as ``"DEFAULT"``).
    """
    from .hooked_model import HookedVisionModel
    from .registry import collect_model_specs

    prefix, name = parse_spec(spec)
    loaders = collect_model_specs()
    if prefix == "torchvision":
        module = load_torchvision(name, weights=pretrained if pretrained is not False else None, **kwargs)
    elif prefix in loaders:
        result = loaders[prefix](name, pretrained=pretrained, **kwargs)
        if isinstance(result, HookedVisionModel):
            return result
        module = result
    else:
        known = sorted(set(loaders) | {"timm", "torchvision", "open_clip", "diffusers"})
        raise VisionLensError(f"Unknown model spec prefix {prefix!r} in {spec!r}. Known prefixes: {', '.join(known)}.")
    return HookedVisionModel(module, adapter=adapter)
