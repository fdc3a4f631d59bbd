"""Clear errors for bad inputs and unknown names."""

from __future__ import annotations

import difflib
from typing import Iterable, Optional

import torch
from torch import Tensor

from .config import VisionConfig


class VisionLensError(ValueError):
    """Base class for user-facing input errors."""


class UnknownHookError(KeyError, VisionLensError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


def closest_names(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The real names closest to ``name`` (edit similarity, then shared suffix)."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    if len(close) < n:
        tail = name.split(".")[-1]
        close += [c for c in cands if c.endswith(tail) and c not in close][: n - len(close)]
    return close


def unknown_hook(name: str, candidates: Iterable[str]) -> UnknownHookError:
    suggestions = closest_names(name, candidates)
    hint = f" Closest real names: {', '.join(suggestions)}." if suggestions else ""
    return UnknownHookError(f"Unknown hook name {name!r}.{hint} See `model.hook_dict` or `visionlens hooks SPEC`.")


def check_image_batch(x: object, cfg: VisionConfig, check_values: bool = True) -> Tensor:
    """Validate a model input: a float tensor ``[batch, channels, height, width]``."""
    if not isinstance(x, Tensor):
        raise VisionLensError(
            f"Expected a torch.Tensor of shape [batch, {cfg.in_chans}, H, W], got {type(x).__name__}. "
            "Use `model.preprocess(image)` to turn PIL images or arrays into a batch."
        )
    if x.ndim != 4:
        fix = " Add a batch dimension with `x.unsqueeze(0)`." if x.ndim == 3 else ""
        raise VisionLensError(
            f"Expected a 4-D image batch [batch, {cfg.in_chans}, H, W], got shape {tuple(x.shape)} "
            f"(rank {x.ndim}).{fix}"
        )
    if x.shape[1] != cfg.in_chans:
        fix = " The input looks channels-last; use `x.permute(0, 3, 1, 2)`." if x.shape[-1] == cfg.in_chans else ""
        raise VisionLensError(
            f"Expected {cfg.in_chans} channels in dim 1 ([batch, {cfg.in_chans}, H, W]), "
            f"got shape {tuple(x.shape)}.{fix}"
        )
    if not torch.is_floating_point(x):
        raise VisionLensError(
            "Expected a floating-point image tensor (e.g. float32, normalized with the model's mean/std), "
            f"got {x.dtype}. "
            "Use `model.preprocess(image)` or `x.float() / 255` followed by normalization."
        )
    h, w = x.shape[-2:]
    if cfg.image_size is not None and not cfg.dynamic_img_size and (h, w) != tuple(cfg.image_size):
        raise VisionLensError(
            f"Expected images of size {tuple(cfg.image_size)} (H, W) for this {cfg.architecture or cfg.family} model, "
            f"got {(h, w)}. Resize with `model.preprocess` or build the model with img_size=({h}, {w})."
        )
    if min(h, w) < cfg.min_image_size:
        raise VisionLensError(
            f"Expected images of at least {cfg.min_image_size}x{cfg.min_image_size} pixels for "
            f"{cfg.architecture or cfg.family}, got {(h, w)}."
        )
    if check_values and x.device.type == "cpu" and x.numel():
        peak = x.detach().abs().amax()
        if not bool(peak <= 100.0):
            if not bool(torch.isfinite(x).all()):
                raise VisionLensError("Expected finite pixel values, but the input contains NaN or inf.")
            raise VisionLensError(
                "Expected normalized pixel values (roughly -3..3 after mean/std), but the input reaches "
                f"{float(peak):.1f}; "
                "it looks like raw 0-255 pixels. Use `model.preprocess(image)`."
            )
    return x


def check_unit_index(name: str, index: int, size: Optional[int]) -> None:
    if size is not None and not 0 <= index < size:
        raise VisionLensError(
            f"Unit index {index} is out of range for {name!r}, which has {size} units (0..{size - 1})."
        )
