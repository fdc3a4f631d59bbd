"""torchvision models through ``torchvision.models.get_model`` and its weights enums, or a local checkpoint.

Weights are read from torch hub's cache (``$TORCH_HOME/hub/checkpoints``) by torchvision's own
hash-checked loader. Nothing is downloaded unless asked (``download=True`` or ``VISIONLENS_DOWNLOAD=1``):
a request for weights that are not in the cache raises one :class:`VisionLensError` naming the
installed ones, with no network attempt.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoints import DOWNLOAD_ENV, download_allowed, is_checkpoint_path, load_checked, load_state_dict_file
from ..validation import VisionLensError

__all__ = ["load_torchvision", "resolve_torchvision_weights", "weights_file", "installed_weights"]


def weights_file(w: Any) -> Path:
    """Where torchvision's loader caches the weights ``w`` (torch hub's checkpoints dir + the url's file name)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)


def installed_weights(enum: Any) -> list[Any]:
    """The members of a weights enum whose file is in torch hub's cache."""
    return [w for w in enum if weights_file(w).is_file()]


def _weights_enum(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def resolve_torchvision_weights(name: str, weights: Any) -> Any:
    """A weights enum member for ``weights``: a member, its name (``"IMAGENET1K_V1"``, ``"DEFAULT"``, also
    ``"MobileNet_V2_Weights.IMAGENET1K_V1"``) or ``True`` (the default); unknown tags raise listing the real ones."""
    enum = _weights_enum(name)
    if enum is None:
        raise VisionLensError(f"torchvision has no pretrained weights for {name!r}; pass a local checkpoint path.")
    tags = [w.name for w in enum]
    if weights is True:
        return enum.DEFAULT
    if isinstance(weights, Enum):
        if weights in list(enum):
            return weights
        raise VisionLensError(
            f"{weights} are weights for another model; {name} takes {enum.__name__}: {', '.join(tags)} (or 'DEFAULT')."
        )
    if isinstance(weights, str):
        tag = weights.split(".", 1)[1] if weights.startswith(enum.__name__ + ".") else weights
        if tag.upper() == "DEFAULT":
            return enum.DEFAULT
        if tag in enum.__members__:
            return enum[tag]
        raise VisionLensError(
            f"Unknown weights {weights!r} for torchvision {name}. Weights tags: {', '.join(tags)} "
            f"(or 'DEFAULT' = {enum.DEFAULT.name}), or a local checkpoint path."
        )
    raise VisionLensError(
        f"Expected weights as a {enum.__name__} member, a tag ({', '.join(tags)}, 'DEFAULT'), True, or a local "
        f"checkpoint path; got {type(weights).__name__}."
    )


def _check_available(name: str, w: Any, requested: Any, download: Optional[bool]) -> None:
    """Raise when the weights ``w`` are not in the cache and downloading is not allowed."""
    path = weights_file(w)
    if path.is_file() or download_allowed(download):
        return
    enum = type(w)
    have = installed_weights(enum)
    installed = ", ".join(f"{h.name} ({weights_file(h).name})" for h in have) or "none"
    default = requested is True or (isinstance(requested, str) and requested.split(".")[-1].upper() == "DEFAULT")
    what = f"{w.name} (the DEFAULT weights of {name})" if default else w.name
    msg = f"{what} is not available offline ({path} is missing); installed: {installed}."
    if have:
        use = have[-1].name
        msg += f" Use weights={use!r}" + (
            f" (different weights from the default {w.name}: results will differ)." if default else "."
        )
    msg += f" To fetch {w.name}, pass download=True (or set {DOWNLOAD_ENV}=1)."
    raise VisionLensError(msg)


def load_torchvision(
    name: str,
    weights: Any = None,
    eval: bool = True,
    download: Optional[bool] = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``torchvision.models.get_model`` with its weights enum (hash-checked, from torch hub's cache) or a local path.

    ``weights``: ``None`` / ``False`` (random init), ``True`` or ``"DEFAULT"`` (the enum's default), a tag such as
    ``"IMAGENET1K_V1"``, an enum member, or a local checkpoint file (``strict=False`` loads a partial one).
    Weights missing from the cache are downloaded only with ``download=True`` (or ``VISIONLENS_DOWNLOAD=1``).
    The weights' category names are kept as ``visionlens_class_names``.
    """
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5)
        raise VisionLensError(f"Unknown torchvision model {name!r}. Closest: {', '.join(close) or 'none'}.")
    local = None
    w = None
    if weights is False:
        weights = None
    if weights is not None and is_checkpoint_path(weights):
        local = str(weights)
    elif weights is not None:
        w = resolve_torchvision_weights(name, weights)
        _check_available(name, w, weights, download)
    if name == "googlenet" and w is None:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        model = torchvision.models.get_model(name, weights=w, **kwargs)
    except OSError as exc:  # a download that failed (URLError is an OSError)
        if w is None:
            raise
        raise VisionLensError(
            f"Could not download {w} for torchvision {name} ({exc}); no network? "
            f"Installed: {', '.join(x.name for x in installed_weights(type(w))) or 'none'}."
        ) from None
    if w is not None:
        meta = getattr(w, "meta", {})
        if "categories" in meta:
            model.visionlens_class_names = list(meta["categories"])
        model.visionlens_weights = f"torchvision {type(w).__name__}.{w.name}"
    if local:
        load_checked(model, load_state_dict_file(local), repr(local), strict=strict)
        model.visionlens_weights = local
    return model.eval() if eval else model
