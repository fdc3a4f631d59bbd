"""Reading checkpoint files safely: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

import difflib
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from .validation import VisionLensError

__all__ = [
    "download_allowed",
    "DOWNLOAD_ENV",
    "load_state_dict_file",
    "load_checked",
    "state_dict_mismatch",
    "is_checkpoint_path",
    "CHECKPOINT_SUFFIXES",
]

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
DOWNLOAD_ENV = "VISIONLENS_DOWNLOAD"


def download_allowed(download: Optional[bool] = None) -> bool:
    """Whether library loaders may download weights: ``download`` if given, else ``$VISIONLENS_DOWNLOAD``
    set to 1/true/yes. Off by default: weights come from the local caches, with no network attempt."""
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def load_state_dict_file(path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely: safetensors, or a torch file with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except Exception as exc:  # safetensors' SafetensorError ("header too large", "incomplete metadata", ...)
            raise VisionLensError(
                f"Checkpoint {str(path)!r} is not a valid safetensors file (truncated or corrupt?): {exc}"
            ) from None
    else:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "weights only" in str(exc).lower():
                raise VisionLensError(
                    f"Checkpoint {str(path)!r} holds Python objects besides tensors; visionlens reads torch files "
                    "with weights_only=True and does not unpickle them. Re-save only the state dict "
                    "(torch.save(model.state_dict(), path)) or convert it to safetensors."
                ) from None
            raise VisionLensError(
                f"Checkpoint {str(path)!r} is not a valid torch file (truncated or corrupt?): {exc}"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:  # "PytorchStreamReader failed reading zip"
            raise VisionLensError(
                f"Checkpoint {str(path)!r} is not a valid torch file (truncated or corrupt?): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
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


def _prefix_fix(missing: list[str], unexpected: list[str]) -> str:
    """A one-line fix when the two key sets differ by a constant prefix (either way round)."""
    if not missing or not unexpected:
        return ""
    have, m = set(unexpected), missing[0]
    for u in unexpected:
        if u != m and u.endswith(m):  # the checkpoint's keys carry an extra prefix
            p = u[: len(u) - len(m)]
            if sum(p + k in have for k in missing) * 2 >= len(missing):
                return (
                    f"The checkpoint's keys carry an extra prefix {p!r}: strip it before loading "
                    f"({{k.removeprefix({p!r}): v for k, v in sd.items()}}) and re-save, or pass strict=False "
                    "to load only the keys that match."
                )
        if u != m and m.endswith(u):  # the model's keys carry a prefix the checkpoint lacks
            p = m[: len(m) - len(u)]
            if sum(k.startswith(p) and k[len(p) :] in have for k in missing) * 2 >= len(missing):
                return (
                    f"The model's keys start with {p!r} and the checkpoint's do not: add the prefix "
                    f"({{{p!r} + k: v for k, v in sd.items()}}) and re-save, or pass strict=False to load only "
                    "the keys that match."
                )
    return ""


def _diff(module: nn.Module, state_dict: dict[str, Any]) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        (k, tuple(state_dict[k].shape), tuple(own[k].shape))
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    return missing, unexpected, shapes


def state_dict_mismatch(module: nn.Module, state_dict: dict[str, Any], source: str = "state dict") -> str:
    """A summary of why ``state_dict`` does not fit ``module`` ("" when it fits exactly).

    Counts missing / unexpected keys and shape mismatches, shows the closest key pairs, and names the
    fix (strip a prefix, build with the checkpoint's ``num_classes``, or ``strict=False``).
    """
    missing, unexpected, shapes = _diff(module, state_dict)
    if not (missing or unexpected or shapes):
        return ""
    lines = [
        f"Checkpoint {source} does not fit {type(module).__name__}: {len(missing)} missing keys, "
        f"{len(unexpected)} unexpected keys, {len(shapes)} with a different shape."
    ]
    if missing and unexpected:
        pairs = []
        for k in missing[:4]:
            close = [u for u in unexpected if u.endswith(k) or k.endswith(u)][:1]
            close = close or difflib.get_close_matches(k, unexpected, n=1, cutoff=0.4)
            if close:
                pairs.append(f"{k} <-> {close[0]}")
        if pairs:
            lines.append("Closest pairs (model <-> checkpoint): " + "; ".join(pairs) + ".")
    elif missing:
        lines.append(f"Missing (first): {', '.join(missing[:4])}.")
    elif unexpected:
        lines.append(f"Unexpected (first): {', '.join(unexpected[:4])}.")
    if shapes:
        shown = "; ".join(f"{k}: {list(a)} vs {list(b)}" for k, a, b in shapes[:3])
        lines.append(f"Shapes (checkpoint vs model): {shown}.")
        k, a, b = shapes[-1]
        if len(a) >= 1 and a[1:] == b[1:] and k.endswith(("weight", "bias")):
            lines.append(f"The checkpoint's head has {a[0]} outputs: build the model with num_classes={a[0]}.")
    fix = _prefix_fix(missing, unexpected)
    if fix:
        lines.append(fix)
    elif missing or unexpected:
        lines.append("Pass strict=False to load only the keys that match (the rest keep their initial values).")
    return "\n".join(lines)


def load_checked(module: nn.Module, state_dict: dict[str, Any], source: str = "", strict: bool = True) -> None:
    """``module.load_state_dict(state_dict)``, with one summarising :class:`VisionLensError` when keys or shapes
    differ (see :func:`state_dict_mismatch`). ``strict=False`` loads the keys that match and warns how many did
    not; a shape mismatch always raises."""
    missing, unexpected, shapes = _diff(module, state_dict)
    if shapes or (strict and (missing or unexpected)):
        raise VisionLensError(state_dict_mismatch(module, state_dict, source or "state dict"))
    if missing or unexpected:
        warnings.warn(
            f"strict=False: {len(missing)} model keys were not in {source or 'the state dict'} (they keep their "
            f"initial values) and {len(unexpected)} checkpoint keys were ignored.",
            UserWarning,
            stacklevel=3,
        )
    module.load_state_dict(state_dict, strict=False)
