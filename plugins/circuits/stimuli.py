"""Parametric stimuli for circuit studies: curves, lines, gratings and colour blobs, rendered with torch.

Every renderer is vectorised over a batch: each parameter is a number (shared) or a length-``N`` tensor,
colours are ``[3]`` or ``[N, 3]`` RGB in [0, 1]. Images are ``float32 [N, 3, size, size]`` in [0, 1],
anti-aliased (a pixel's coverage falls off linearly over one pixel from the stroke's edge).

Geometry (pixel centres at ``i + 0.5``, ``y`` grows downwards):

* **orientation** of a curve is the direction its convex side points to, in degrees, counter-clockwise
  from ``+x`` (0 = right, 90 = up), as in :mod:`visionlens.zoo.data`; a curve is a circular arc of
  ``radius`` (curvature ``1 / radius``) and angular ``span`` whose *midpoint* sits at ``(cx, cy)``;
* **orientation** of a line is its direction modulo 180 (0 = horizontal, 90 = vertical), centred at
  ``(cx, cy)``;
* a **grating** is a sinusoid whose stripes run along ``orientation``;
* a **blob** is a Gaussian of colour ``colour`` over ``background``.

:func:`sweep` builds a one-parameter family around a base stimulus (what a tuning curve needs).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "KINDS",
    "DEFAULTS",
    "curves",
    "lines",
    "gratings",
    "blobs",
    "render",
    "sweep",
]

Num = Union[float, int, Tensor, Sequence[float]]

KINDS = ("curve", "line", "grating", "blob")
# default parameters of each kind at 32 px (positions default to the image centre)
DEFAULTS: dict[str, dict[str, Any]] = {
    "curve": {"orientation": 0.0, "radius": 6.0, "span": 110.0, "width": 1.6},
    "line": {"orientation": 0.0, "length": 10.0, "width": 1.6},
    "grating": {"orientation": 0.0, "period": 6.0, "phase": 0.0},
    "blob": {"sigma": 3.0},
}
WHITE = (1.0, 1.0, 1.0)
BLACK = (0.0, 0.0, 0.0)


def _vec(value: Num, n: int) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 0:
        return t.expand(n).clone()
    if t.shape != (n,):
        raise ValueError(f"expected a number or {n} values, got shape {tuple(t.shape)}")
    return t


def _colour(value: Any, n: int) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.shape == (3,):
        return t.expand(n, 3).clone()
    if t.shape != (n, 3):
        raise ValueError(f"expected an RGB colour [3] or [{n}, 3], got shape {tuple(t.shape)}")
    return t


def _n_of(numbers: Sequence[Any], colours: Sequence[Any]) -> int:
    """The batch size: the length of any per-stimulus parameter (``[N]`` numbers, ``[N, 3]`` colours), else 1."""
    sizes = {int(torch.as_tensor(v).shape[0]) for v in numbers if v is not None and torch.as_tensor(v).ndim >= 1}
    sizes |= {int(torch.as_tensor(c).shape[0]) for c in colours if torch.as_tensor(c).ndim == 2}
    if len(sizes) > 1:
        raise ValueError(f"per-stimulus parameters disagree on the batch size: {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _grid(size: int) -> tuple[Tensor, Tensor]:
    c = torch.arange(size, dtype=torch.float32) + 0.5
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return xx[None], yy[None]  # [1, H, W]


def _paint(coverage: Tensor, colour: Tensor, background: Tensor) -> Tensor:
    """``background * (1 - coverage) + colour * coverage`` as ``[N, 3, H, W]``."""
    cov = coverage.clamp(0.0, 1.0)[:, None]
    return background[:, :, None, None] * (1 - cov) + colour[:, :, None, None] * cov


def _stroke(dist: Tensor, width: Tensor) -> Tensor:
    return (width[:, None, None] / 2 + 0.5 - dist).clamp(0.0, 1.0)


def _seg_dist(xx: Tensor, yy: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor) -> Tensor:
    """Distance of every pixel to the segment ``a``-``b`` (``[N]`` endpoints)."""
    ax, ay, bx, by = (t[:, None, None] for t in (ax, ay, bx, by))
    dx, dy = bx - ax, by - ay
    t = (((xx - ax) * dx + (yy - ay) * dy) / (dx * dx + dy * dy).clamp_min(1e-9)).clamp(0.0, 1.0)
    return torch.hypot(xx - (ax + t * dx), yy - (ay + t * dy))


def curves(
    size: int = 32,
    orientation: Num = 0.0,
    radius: Num = 6.0,
    span: Num = 110.0,
    width: Num = 1.6,
    cx: Optional[Num] = None,
    cy: Optional[Num] = None,
    colour: Any = WHITE,
    background: Any = BLACK,
) -> Tensor:
    """Circular arcs whose convex side points to ``orientation`` degrees, midpoint at ``(cx, cy)``."""
    n = _n_of((orientation, radius, span, width, cx, cy), (colour, background))
    phi = torch.deg2rad(_vec(orientation, n))
    r, w = _vec(radius, n), _vec(width, n)
    half = torch.deg2rad(_vec(span, n)) / 2
    px = _vec(size / 2 if cx is None else cx, n)
    py = _vec(size / 2 if cy is None else cy, n)
    ux, uy = torch.cos(phi), -torch.sin(phi)
    ccx, ccy = px - r * ux, py - r * uy  # the circle's centre sits behind the midpoint
    xx, yy = _grid(size)
    vx, vy = xx - ccx[:, None, None], yy - ccy[:, None, None]
    dist_c = torch.hypot(vx, vy)
    cosang = (vx * ux[:, None, None] + vy * uy[:, None, None]) / dist_c.clamp_min(1e-6)
    on_arc = cosang >= torch.cos(half)[:, None, None]
    ends = []
    for sgn in (1.0, -1.0):  # endpoints: the midpoint direction rotated by +-span/2 (y flipped)
        a = phi + sgn * half
        ex, ey = ccx + r * torch.cos(a), ccy - r * torch.sin(a)
        ends.append(torch.hypot(xx - ex[:, None, None], yy - ey[:, None, None]))
    dist = torch.where(on_arc, (dist_c - r[:, None, None]).abs(), torch.minimum(ends[0], ends[1]))
    return _paint(_stroke(dist, w), _colour(colour, n), _colour(background, n))


def lines(
    size: int = 32,
    orientation: Num = 0.0,
    length: Num = 10.0,
    width: Num = 1.6,
    cx: Optional[Num] = None,
    cy: Optional[Num] = None,
    colour: Any = WHITE,
    background: Any = BLACK,
) -> Tensor:
    """Straight segments of ``length`` along ``orientation`` degrees (mod 180), centred at ``(cx, cy)``."""
    n = _n_of((orientation, length, width, cx, cy), (colour, background))
    phi = torch.deg2rad(_vec(orientation, n))
    half = _vec(length, n) / 2
    px = _vec(size / 2 if cx is None else cx, n)
    py = _vec(size / 2 if cy is None else cy, n)
    dx, dy = torch.cos(phi) * half, -torch.sin(phi) * half
    xx, yy = _grid(size)
    dist = _seg_dist(xx, yy, px - dx, py - dy, px + dx, py + dy)
    return _paint(_stroke(dist, _vec(width, n)), _colour(colour, n), _colour(background, n))


def gratings(
    size: int = 32,
    orientation: Num = 0.0,
    period: Num = 6.0,
    phase: Num = 0.0,
    colour: Any = WHITE,
    background: Any = BLACK,
) -> Tensor:
    """Sinusoidal gratings (stripes along ``orientation`` degrees), from ``background`` to ``colour``."""
    n = _n_of((orientation, period, phase), (colour, background))
    phi = torch.deg2rad(_vec(orientation, n))[:, None, None]
    xx, yy = _grid(size)
    # the coordinate across the stripes: the normal of direction (cos phi, -sin phi) is (sin phi, cos phi)
    across = torch.sin(phi) * (xx - size / 2) + torch.cos(phi) * (yy - size / 2)
    wave = 0.5 + 0.5 * torch.cos(2 * math.pi * across / _vec(period, n)[:, None, None] + _vec(phase, n)[:, None, None])
    return _paint(wave, _colour(colour, n), _colour(background, n))


def blobs(
    size: int = 32,
    sigma: Num = 3.0,
    cx: Optional[Num] = None,
    cy: Optional[Num] = None,
    colour: Any = (1.0, 0.0, 0.0),
    background: Any = BLACK,
) -> Tensor:
    """Gaussian colour blobs of standard deviation ``sigma`` pixels at ``(cx, cy)``."""
    n = _n_of((sigma, cx, cy), (colour, background))
    px = _vec(size / 2 if cx is None else cx, n)[:, None, None]
    py = _vec(size / 2 if cy is None else cy, n)[:, None, None]
    s = _vec(sigma, n)[:, None, None]
    xx, yy = _grid(size)
    g = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * s * s))
    return _paint(g, _colour(colour, n), _colour(background, n))


_RENDERERS: dict[str, Callable[..., Tensor]] = {"curve": curves, "line": lines, "grating": gratings, "blob": blobs}


def render(kind: str, size: int = 32, **params: Any) -> Tensor:
    """Stimuli of ``kind`` (one of :data:`KINDS`) with ``params`` (numbers, ``[N]`` tensors or colours)."""
    if kind not in _RENDERERS:
        raise ValueError(f"unknown stimulus kind {kind!r}; expected one of {', '.join(KINDS)}")
    return _RENDERERS[kind](size=size, **params)


def sweep(
    kind: str,
    param: str,
    values: Sequence[Any],
    size: int = 32,
    base: Optional[Mapping[str, Any]] = None,
) -> Tensor:
    """``[len(values), 3, S, S]``: one stimulus per value of ``param``, the others at :data:`DEFAULTS` + ``base``."""
    if kind not in _RENDERERS:
        raise ValueError(f"unknown stimulus kind {kind!r}; expected one of {', '.join(KINDS)}")
    params = {**DEFAULTS[kind], **dict(base or {})}
    vals = list(values)
    if param in ("colour", "background"):
        params[param] = torch.as_tensor(vals, dtype=torch.float32).reshape(len(vals), 3)
    else:
        params[param] = torch.as_tensor(vals, dtype=torch.float32)
    n = len(vals)
    for k, v in list(params.items()):  # broadcast the shared parameters to the sweep's length
        if k in ("colour", "background"):
            params[k] = _colour(v, n)
        elif v is not None:
            params[k] = _vec(v, n)
    return render(kind, size=size, **params)
