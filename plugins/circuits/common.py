"""Shared pieces of the circuits analyses: unit maps of any hook, unit responses, circular statistics, bootstrap."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "unit_maps",
    "model_device_dtype",
    "hook_responses",
    "image_size_of",
    "image_support",
    "circular_selectivity",
    "preferred_angle",
    "n_peaks",
    "bootstrap_interval",
    "same_size_hooks",
]


def unit_maps(act: Tensor, hook: str = "") -> Tensor:
    """An activation as channel maps ``[B, C, H, W]``: conv maps as they are, ViT tokens ``[B, T, D]`` as the
    patch grid (prefix tokens -- class, registers -- dropped: the largest square number of tokens kept)."""
    if act.ndim == 4:
        return act
    if act.ndim == 3:
        b, t, d = act.shape
        g = int(math.isqrt(t))
        if g < 1:
            raise VisionLensError(f"{hook}: cannot lay {t} tokens out on a grid")
        return act[:, t - g * g :].transpose(1, 2).reshape(b, d, g, g)
    raise VisionLensError(f"{hook}: expected conv maps [B, C, H, W] or tokens [B, T, D], got shape {tuple(act.shape)}")


def model_device_dtype(model: HookedVisionModel) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating parameter (CPU / float32 without one)."""
    source: torch.nn.Module = getattr(model, "source", None) or model
    for p in source.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


@torch.no_grad()
def hook_responses(
    model: HookedVisionModel,
    hooks: Sequence[str],
    images: Tensor,
    reduce: str = "centre",
    batch_size: int = 256,
) -> dict[str, Tensor]:
    """Each hook's unit responses to ``images``: ``[N, C]`` at the map's centre (``reduce="centre"``), its
    spatial maximum (``"max"``) or mean (``"mean"``); ``reduce="map"`` keeps ``[N, C, H, W]``."""
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    names = set(hooks)
    dev, dtype = model_device_dtype(model)
    for i in range(0, images.shape[0], batch_size):
        batch = images[i : i + batch_size].to(device=dev, dtype=dtype)
        _, cache = model.run_with_cache(batch, names_filter=lambda n: n in names)
        for h in hooks:
            if h not in cache:
                raise VisionLensError(f"hook {h!r} did not fire on an image batch")
            m = unit_maps(cache[h].float(), h)
            if reduce == "centre":
                r = m[:, :, (m.shape[2] - 1) // 2, (m.shape[3] - 1) // 2]
            elif reduce == "max":
                r = m.amax(dim=(2, 3))
            elif reduce == "mean":
                r = m.mean(dim=(2, 3))
            elif reduce == "map":
                r = m
            else:
                raise VisionLensError(f"reduce must be centre, max, mean or map, got {reduce!r}")
            out[h].append(r.cpu())
    return {h: torch.cat(v) for h, v in out.items()}


def image_size_of(model: HookedVisionModel, default: int = 32) -> int:
    size = getattr(model.cfg, "image_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return int(size) if size else default


def image_support(model: HookedVisionModel) -> tuple[bool, str]:
    """Whether ``model`` takes an RGB image batch and has hooks (what every stimulus-driven analysis needs)."""
    fam = (getattr(model.cfg, "family", "") or "").lower()
    if "diffusion" in fam:
        return False, "diffusion UNets need timesteps and conditioning; stimuli are images for a classifier"
    if getattr(model.cfg, "in_chans", 3) != 3:
        return False, f"stimuli are RGB images; the model takes {model.cfg.in_chans} channels"
    if not getattr(model, "hook_dict", None):
        return False, "the model has no hook points"
    return True, ""


def circular_selectivity(curve: Tensor, period: float = 360.0) -> Tensor:
    """``|sum r e^{i theta}| / sum r`` of rectified tuning curves ``[..., K]`` sampled evenly over ``period``:
    1 for a response at a single angle, 0 for a flat (or perfectly symmetric) one."""
    r = curve.clamp_min(0)
    k = r.shape[-1]
    theta = torch.arange(k, dtype=r.dtype) * (2 * math.pi / k)
    re, im = (r * torch.cos(theta)).sum(-1), (r * torch.sin(theta)).sum(-1)
    return torch.hypot(re, im) / r.sum(-1).clamp_min(1e-12)


def preferred_angle(curve: Tensor, period: float = 360.0) -> Tensor:
    """The circular mean angle (degrees, in ``[0, period)``) of rectified tuning curves ``[..., K]``."""
    r = curve.clamp_min(0)
    k = r.shape[-1]
    theta = torch.arange(k, dtype=r.dtype) * (2 * math.pi / k)
    ang = torch.atan2((r * torch.sin(theta)).sum(-1), (r * torch.cos(theta)).sum(-1))
    return torch.remainder(ang * period / (2 * math.pi), period)


def n_peaks(curve: Tensor, level: float = 0.5) -> Tensor:
    """Number of circular local maxima of each tuning curve ``[..., K]`` above ``level`` times its maximum
    (plateaus count once)."""
    r = curve.clamp_min(0)
    top = r.amax(-1, keepdim=True)
    left, right = torch.roll(r, 1, -1), torch.roll(r, -1, -1)
    peak = (r >= left) & (r > right) & (r >= level * top) & (top > 0)
    return peak.sum(-1)


def bootstrap_interval(
    stat: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    rng: Optional[Any] = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` items resampled with replacement."""
    if n_boot <= 0:
        return float("nan"), float("nan")
    g = rng or np.random.default_rng(seed)
    vals = np.array([stat(g.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1 - ci) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


@torch.no_grad()
def same_size_hooks(model: HookedVisionModel) -> tuple[str, str]:
    """Two hooks with conv maps of the same spatial size, the second later in the hook order (a quick pair for
    smoke runs of the circuit analyses); raises when the model has none."""
    size = image_size_of(model)
    dev, dtype = model_device_dtype(model)
    _, cache = model.run_with_cache(torch.zeros(1, 3, size, size, device=dev, dtype=dtype))
    maps = [(n, tuple(cache[n].shape)) for n in model.hook_dict if n in cache and cache[n].ndim == 4]
    for i, (a, sa) in enumerate(maps):
        for b, sb in maps[i + 1 :]:
            if sb[2:] == sa[2:] and sb[1] >= 1:
                return a, b
    raise VisionLensError("no two hooks give conv maps of the same spatial size")
