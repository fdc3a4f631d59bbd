"""torchvision models through ``torchvision.models.get_model`` and its weights enums, or a local checkpoint."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..checkpoints import is_checkpoint_path, load_state_dict_file
from ..validation import VisionLensError

__all__ = ["load_torchvision"]


def load_torchvision(name: str, weights: Any = None, eval: bool = True, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model`` with its weights enum (hash-checked download/cache) or a local path."""
    import torchvision

    available = torchvision.models.list_models()
    if name not in available:
        import difflib

        close = difflib.get_close_matches(name, available, n=5)
        raise VisionLensError(f"Unknown torchvision model {name!r}. Closest: {', '.join(close) or 'none'}.")
    local = None
    if is_checkpoint_path(weights):
        local, weights = str(weights), None
    elif weights is True:
        weights = "DEFAULT"
    if name == "googlenet" and weights is None:
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    model = torchvision.models.get_model(name, weights=weights, **kwargs)
    if weights is not None:
        enum = torchvision.models.get_model_weights(name)
        w = (
            enum[weights]
            if isinstance(weights, str) and weights != "DEFAULT"
            else (enum.DEFAULT if weights == "DEFAULT" else weights)
        )
        meta = getattr(w, "meta", {})
        if "categories" in meta:
            model.visionlens_class_names = list(meta["categories"])
    if local:
        model.load_state_dict(load_state_dict_file(local))
    return model.eval() if eval else model
