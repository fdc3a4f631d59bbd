"""``visionlens.load(spec)``: models from spec strings, through each library's own loader.

Spec strings (shared with the CLI): ``timm:NAME``, ``torchvision:NAME``, ``open_clip:NAME``,
``diffusers:PATH``; plugins add prefixes through ``visionlens_register_model_specs`` (the zoo
registers ``zoo:``). Weights come from the library's hub name / weights enum, or a local checkpoint
file loaded with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from .checkpoints import load_state_dict_file
from .hooked_model import HookedVisionModel
from .hookspecs import hookimpl
from .registry import collect_model_specs
from .sources.timm import load_timm
from .sources.torchvision import load_torchvision
from .validation import VisionLensError

__all__ = [
    "load",
    "parse_spec",
    "load_timm",
    "load_torchvision",
    "load_open_clip",
    "load_diffusers",
    "load_state_dict_file",
]


def load_open_clip(name: Union[str, dict], pretrained: Optional[str] = None, **kwargs: Any) -> HookedVisionModel:
    """A hooked open_clip model (both towers): :meth:`HookedVisionModel.from_open_clip`."""
    return HookedVisionModel.from_open_clip(name, pretrained=pretrained, **kwargs)


def load_diffusers(unet_or_path: Any, **kwargs: Any) -> HookedVisionModel:
    """A hooked diffusers UNet: :meth:`HookedVisionModel.from_diffusers`."""
    return HookedVisionModel.from_diffusers(unet_or_path, **kwargs)


def parse_spec(spec: str) -> tuple[str, str]:
    if ":" not in spec:
        raise VisionLensError(
            f"Expected a model spec 'prefix:name' (e.g. 'timm:resnet50', 'torchvision:mobilenet_v2'), got {spec!r}."
        )
    prefix, name = spec.split(":", 1)
    return prefix, name


def load(spec: str, pretrained: Any = False, adapter: Any = "auto", **kwargs: Any):
    """Build a :class:`HookedVisionModel` from a spec string such as ``"timm:resnet50"``.

    ``pretrained`` is passed to the library's loader: ``True`` / a tag / a local checkpoint path
    (for torchvision it may also be a weights enum name such as ``"DEFAULT"``).
    """
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


def _open_clip_spec(name: str, pretrained: Any = None, **kwargs: Any) -> HookedVisionModel:
    return load_open_clip(name, pretrained=pretrained or None, **kwargs)


def _diffusers_spec(path: str, pretrained: Any = None, **kwargs: Any) -> HookedVisionModel:
    return load_diffusers(path, **kwargs)


@hookimpl
def visionlens_register_model_specs() -> list[tuple[str, Any]]:
    """The built-in spec prefixes (registered like a third-party plugin's)."""
    return [
        ("timm", load_timm),
        ("torchvision", load_torchvision),
        ("open_clip", _open_clip_spec),
        ("diffusers", _diffusers_spec),
    ]
