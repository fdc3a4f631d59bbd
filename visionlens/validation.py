"""Clear errors for bad inputs and unknown names."""

from __future__ import annotations

import difflib
import warnings
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
        low, high = torch.aminmax(x.detach())  # one pass, no temporary (NaN propagates into both)
        peak = max(-float(low), float(high))  # Python floats: each further tensor op costs microseconds
        if not peak <= 100.0:  # also true for NaN
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


class RandomWeightsWarning(UserWarning):
    """A model was built without trained weights (``visionlens.load(spec)`` with no weights argument)."""


def random_weights_message(spec: str) -> str:
    return f"{spec} has random weights; pass pretrained=True/weights=... for trained ones."


def warn_random_weights(spec: str, cfg: VisionConfig, stacklevel: int = 2) -> None:
    """Mark ``cfg`` as random weights (``cfg.extra["weights"] = "random"``) and warn; ``stacklevel`` counts from
    the function that calls this one (2: its caller)."""
    cfg.extra["weights"] = "random"
    warnings.warn(random_weights_message(spec), RandomWeightsWarning, stacklevel=stacklevel + 1)


class UnknownCacheKeyError(KeyError, VisionLensError):
    """A name that is not in an activation cache."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def unknown_cache_key(key: object, cached: Iterable[str], hook_names: Iterable[str] = ()) -> UnknownCacheKeyError:
    """The error for ``cache[key]`` when ``key`` was not cached: the closest cached names, and whether
    ``key`` is a real hook that the run's ``names_filter`` left out."""
    names = list(cached)
    text = key if isinstance(key, str) else str(key[0]) if isinstance(key, tuple) and key else str(key)
    close = closest_names(text, names)
    hint = f" Closest cached names: {', '.join(close)}." if close else ""
    if text in set(hook_names):
        hint = f" It is a hook of this model, but the run's names_filter left it out.{hint}"
    return UnknownCacheKeyError(f"{key!r} is not in the cache ({len(names)} names cached: cache.keys()).{hint}")


def hook_output_error(name: str, before: Tensor, after: object) -> VisionLensError:
    """A hook function on ``name`` returned something other than a tensor of the input's shape."""
    got = f"a tensor of shape {tuple(after.shape)}" if isinstance(after, Tensor) else type(after).__name__
    return VisionLensError(
        f"A hook on {name!r} returned {got}, but {name!r} has shape {tuple(before.shape)}. A hook function "
        "must return a tensor of the same shape (edit it in place or return a new one), or None to keep it."
    )
