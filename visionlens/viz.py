"""Small plotting helpers shared by the built-in analyses: heatmaps over images, patch grids.

Everything here draws onto matplotlib ``Figure`` objects made by
:func:`visionlens.results.new_figure` (no pyplot state) or returns numpy arrays / PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "patch_grid",
    "tokens_to_grid",
    "upsample",
    "overlay",
    "imshow_overlay",
    "array_to_png",
    "diverging_limits",
    "short_hook",
]


def patch_grid(cfg: Any, n_tokens: int) -> tuple[int, Optional[tuple[int, int]]]:
    """``(n_prefix, (grid_h, grid_w))`` for a token sequence of length ``n_tokens``.

    Uses ``cfg.image_size / cfg.patch_size`` when they match the token count, else a square grid
    after the prefix tokens, else ``None`` (tokens do not lie on a grid).
    """
    n_prefix = int(getattr(cfg, "num_prefix_tokens", 0) or 0)
    if n_prefix >= n_tokens:
        n_prefix = 0
    n_patch = n_tokens - n_prefix
    img, patch = getattr(cfg, "image_size", None), getattr(cfg, "patch_size", None)
    if img and patch:
        gh, gw = img[0] // patch[0], img[1] // patch[1]
        if gh * gw == n_patch:
            return n_prefix, (gh, gw)
    for prefix in dict.fromkeys((n_prefix, 0, 1)):
        side = int(round(math.sqrt(max(n_tokens - prefix, 0))))
        if side > 0 and side * side == n_tokens - prefix:
            return prefix, (side, side)
    return n_prefix, None


def tokens_to_grid(values: Tensor, n_prefix: int, grid: tuple[int, int]) -> Tensor:
    """``[..., tokens]`` -> ``[..., grid_h, grid_w]`` (prefix tokens dropped)."""
    return values[..., n_prefix:].reshape(*values.shape[:-1], grid[0], grid[1])


def upsample(heat: Any, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """A 2-D map ``[h, w]`` resized to ``size`` (H, W) as float32."""
    t = torch.as_tensor(np.asarray(heat, dtype=np.float32))[None, None]
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in size), mode=mode, **kw)
    return out[0, 0].numpy()


def diverging_limits(values: Any) -> tuple[float, float]:
    """Symmetric colour limits ``(-m, m)`` for signed maps."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    m = float(np.abs(arr).max()) if arr.size else 1.0
    m = m if m > 0 else 1.0
    return -m, m


def overlay(
    image: np.ndarray,
    heat: Any,
    alpha: float = 0.55,
    cmap: str = "inferno",
    signed: bool = False,
    mode: str = "nearest",
) -> np.ndarray:
    """``uint8 HxWx3`` image with ``heat`` (any 2-D size) blended on top, as ``uint8 HxWx3``."""
    import matplotlib

    h = upsample(heat, image.shape[:2], mode=mode)
    if signed:
        lo, hi = diverging_limits(h)
        cmap = "RdBu_r" if cmap == "inferno" else cmap
    else:
        lo, hi = float(np.nanmin(h)), float(np.nanmax(h))
    norm = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    rgb = matplotlib.colormaps[cmap](np.clip(norm, 0, 1))[..., :3]
    out = (1 - alpha) * image.astype(np.float32) / 255.0 + alpha * rgb
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def imshow_overlay(
    ax: Any,
    image: Optional[np.ndarray],
    heat: Any,
    title: str = "",
    signed: bool = False,
    alpha: float = 0.55,
    fontsize: int = 8,
    mode: str = "nearest",
) -> Any:
    """Draw ``heat`` over ``image`` (or alone when ``image`` is None) on ``ax`` with a colorbar-free look."""
    arr = np.asarray(heat, dtype=np.float32)
    if image is not None:
        ax.imshow(image)
        extent = (-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5)
        lo, hi = diverging_limits(arr) if signed else (float(np.nanmin(arr)), float(np.nanmax(arr)))
        im = ax.imshow(
            arr,
            cmap="RdBu_r" if signed else "inferno",
            alpha=alpha,
            extent=extent,
            interpolation=mode,
            vmin=lo,
            vmax=hi if hi > lo else lo + 1e-9,
        )
    else:
        lo, hi = diverging_limits(arr) if signed else (float(np.nanmin(arr)), float(np.nanmax(arr)))
        im = ax.imshow(
            arr,
            cmap="RdBu_r" if signed else "inferno",
            interpolation="nearest",
            vmin=lo,
            vmax=hi if hi > lo else lo + 1e-9,
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)
    return im


def array_to_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8 HxWx3`` array."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def short_hook(name: str) -> str:
    """A compact label for plots: ``blocks.3.hook_resid_pre`` -> ``3.resid_pre``."""
    out = name.replace(".hook_out", "").replace("hook_", "")
    for prefix in ("visual.blocks.", "blocks.", "stages."):
        if out.startswith(prefix):
            out = out[len(prefix) :]
            break
    return out.replace(".blocks.", ".")


def grid_shape(n: int, max_cols: int = 6) -> tuple[int, int]:
    cols = min(max_cols, max(1, n))
    return int(math.ceil(n / cols)), cols


def labels_fit(labels: Sequence[str], limit: int = 40) -> list[str]:
    return [s if len(s) <= limit else s[: limit - 1] + "\u2026" for s in labels]
