"""timm models through ``timm.create_model`` (timm's own pretrained loader) or a local checkpoint."""

from __future__ import annotations

import os
from typing import Any, Optional, Union

from torch import nn

from ..checkpoints import is_checkpoint_path, load_state_dict_file
from ..validation import VisionLensError

__all__ = ["load_timm"]


def load_timm(
    name: str,
    pretrained: Union[bool, str] = False,
    checkpoint_path: Optional[str] = None,
    eval: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained loader, or a local checkpoint path."""
    import timm

    if isinstance(pretrained, (str, os.PathLike)) and is_checkpoint_path(pretrained):
        checkpoint_path, pretrained = str(pretrained), False
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise VisionLensError(f"Unknown timm model {name!r}. Similar timm names: {', '.join(close) or 'none'}.")
    model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    if checkpoint_path:
        model.load_state_dict(load_state_dict_file(checkpoint_path))
    return model.eval() if eval else model
