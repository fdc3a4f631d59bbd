"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

from .validation import VisionLensError

__all__ = ["load_state_dict_file", "is_checkpoint_path", "CHECKPOINT_SUFFIXES"]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


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


def is_checkpoint_path(value: Any) -> bool:
    """Whether ``value`` names a local checkpoint file (a path with a separator or a checkpoint suffix)."""
    return isinstance(value, (str, os.PathLike)) and (
        os.sep in str(value) or Path(str(value)).suffix in CHECKPOINT_SUFFIXES
    )
