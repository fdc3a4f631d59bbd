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
from .validation import VisionLensError, warn_random_weights

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


_RANDOM_OK = ("timm", "torchvision", "open_clip")  # library loaders that build random weights when none are asked


def load(
    spec: str,
    pretrained: Any = None,
    adapter: Any = "auto",
    *,
    weights: Any = None,
    checkpoint_path: Optional[str] = None,
    download: Optional[bool] = None,
    **kwargs: Any,
) -> HookedVisionModel:
    """Build a :class:`HookedVisionModel` from a spec string such as ``"timm:resnet50"``.

    Weights, as each library takes them (``weights=`` is the same argument as ``pretrained=``):

    * ``torchvision:NAME``: ``weights=`` / ``pretrained=`` a weights enum member, its name
      (``"IMAGENET1K_V1"``), ``"DEFAULT"`` or ``True``, or a local checkpoint path.
    * ``timm:NAME``: ``pretrained=True`` (timm's default tag; ``"timm:resnet50.a1_in1k"`` picks one), a
      tag, or ``checkpoint_path=`` / ``pretrained=`` a local checkpoint file.
    * ``open_clip:NAME``: ``pretrained=`` an open_clip tag or a local file.

    Weights are read from the local caches (torch hub, Hugging Face) with no network attempt; missing ones
    raise a :class:`VisionLensError` naming what is installed, unless ``download=True`` (or
    ``VISIONLENS_DOWNLOAD=1``). ``strict=False`` loads a checkpoint whose keys only partly match. With no
    weights argument a library model has random weights, and a :class:`RandomWeightsWarning` says so
    (``pretrained=False`` asks for random weights explicitly, without the warning).
    """
    prefix, name = parse_spec(spec)
    if weights is not None and pretrained not in (False, None):
        raise VisionLensError(f"Pass the weights once: pretrained={pretrained!r} or weights={weights!r}, not both.")
    chosen = weights if weights is not None else pretrained
    if checkpoint_path is not None and chosen not in (False, None):
        raise VisionLensError(
            f"Pass the weights once: checkpoint_path={checkpoint_path!r} or pretrained/weights={chosen!r}, not both."
        )
    random_weights = chosen in (False, None) and checkpoint_path is None
    loaders = collect_model_specs()
    extra: dict[str, Any] = {"download": download} if download is not None else {}
    if prefix == "torchvision":
        module = load_torchvision(name, weights=checkpoint_path or chosen or None, **extra, **kwargs)
    elif prefix == "timm":
        module = load_timm(name, pretrained=chosen or False, checkpoint_path=checkpoint_path, **extra, **kwargs)
    elif prefix in loaders:
        if checkpoint_path is not None:
            extra["checkpoint_path"] = checkpoint_path
        loaded = loaders[prefix](name, pretrained=chosen if chosen is not None else False, **extra, **kwargs)
        if isinstance(loaded, HookedVisionModel):
            if random_weights and prefix in _RANDOM_OK:
                _random(spec, loaded, warn=chosen is None)
            return loaded
        module = loaded
    else:
        known = sorted(set(loaders) | {"timm", "torchvision", "open_clip", "diffusers"})
        raise VisionLensError(f"Unknown model spec prefix {prefix!r} in {spec!r}. Known prefixes: {', '.join(known)}.")
    model = HookedVisionModel(module, adapter=adapter)
    if random_weights and prefix in _RANDOM_OK:
        _random(spec, model, warn=chosen is None)
    return model


def _random(spec: str, model: HookedVisionModel, warn: bool) -> None:
    """Mark ``model`` as random weights; warn unless they were asked for explicitly (``pretrained=False``)."""
    if warn:
        warn_random_weights(spec, model.cfg, stacklevel=3)
    else:
        model.cfg.extra["weights"] = "random"


def _open_clip_spec(
    name: str, pretrained: Any = None, checkpoint_path: Optional[str] = None, **kwargs: Any
) -> HookedVisionModel:
    kwargs.pop("download", None)  # open_clip downloads tags itself
    return load_open_clip(name, pretrained=checkpoint_path or pretrained or None, **kwargs)


def _diffusers_spec(path: str, pretrained: Any = None, **kwargs: Any) -> HookedVisionModel:
    kwargs.pop("download", None)
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
