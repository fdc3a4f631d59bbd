"""Units designed from a written specification of what they respond to, wired from the layer below.

A hand-coded unit is written as a *target tuning* over a parametric stimulus ensemble -- e.g. a curve detector
at orientation ``a``: ``(exp(kappa (cos(o - a) - 1)) - floor) * exp(-|d|^2 / 2 sigma^2)`` for an arc of
orientation ``o`` whose midpoint lies ``d`` pixels from the unit's receptive-field centre, and ``0`` for lines,
blobs and blank backgrounds. Its weights on the layer below are the ridge least-squares solution over the
layer below's responses to that ensemble (:func:`solve_weights`): the specification is written by hand, the
wiring follows from it by a fixed rule (a matched filter decorrelated over the stimuli), and neither the task
images nor the replaced unit's activations enter. The ensemble (:func:`stimulus_ensemble`) holds isolated arcs,
arcs with a distractor line, lines, colour blobs and blank fields (random bright colours on dark grey, the
stimulus family of :mod:`.stimuli`).

A unit's *reach* on the layer below follows the block it lives in (:func:`unit_kinds`): ``"1x1"`` (a 1 x 1
conv: the centre cell only), ``"pool"`` (a 3 x 3 max-pool then 1 x 1, as an Inception pool branch) or
``"conv"`` (a ``k x k`` kernel), read from torchvision ``Inception`` blocks and ``"conv"`` elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .common import hook_responses
from .stimuli import blobs, curves, lines
from .tuning_curves import rf_centre

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "Ensemble",
    "stimulus_ensemble",
    "curve_target",
    "colour_ensemble",
    "colour_target",
    "solve_weights",
    "unit_kinds",
    "designed_unit",
    "DesignedUnit",
]

UnitFn = Callable[[Tensor], Tensor]


@dataclass
class Ensemble:
    """The layer below's responses to the stimulus ensemble and the stimuli's parameters.

    ``crops [N, C, k, k]``: the ``k x k`` cells around the centre cell; ``pooled [N, C]``: the 3 x 3 max-pool at
    the centre cell; ``kind [N]``: 0 arc, 1 arc + distractor line, 2 line, 3 blob, 4 blank; ``orientation``,
    ``dx``, ``dy``, ``radius`` (pixels, arcs only; 0 elsewhere)."""

    crops: Tensor
    pooled: Tensor
    kind: Tensor
    orientation: Tensor
    dx: Tensor
    dy: Tensor
    radius: Tensor
    images: Optional[Tensor] = None
    hue: Optional[Tensor] = None  # colour ensembles: each stimulus's hue (degrees) and saturation
    saturation: Optional[Tensor] = None

    @property
    def is_arc(self) -> Tensor:
        return self.kind <= 1


@torch.no_grad()
def stimulus_ensemble(
    model: HookedVisionModel,
    below: str,
    size: int,
    n: int = 3000,
    kernel_size: int = 3,
    seed: int = 0,
    keep_images: bool = False,
    plain: bool = False,
) -> Ensemble:
    """``n`` arcs (orientation 0-360, radius 3-11 px, span 80-140 degrees, width 1.2-2.2 px, midpoint within
    +-6 px of the centre cell's receptive field), ``n`` arcs with a distractor line, ``n / 2`` lines,
    ``n / 6`` blobs and ``n / 15`` blank fields; bright random colours on grey 0-0.25, pixel noise 0.02
    (lengths in pixels at 32 px, scaled with ``size``). ``plain``: white strokes on black, no noise (the
    tuning stimuli's conventions instead of the task-like ones)."""
    g = torch.Generator().manual_seed(seed)
    s = size / 32.0

    def u(lo: float, hi: float, m: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(m, generator=g)

    def bright(m: int) -> Tensor:
        c = torch.rand(m, 3, generator=g)
        return torch.ones(m, 3) if plain else 0.35 + 0.65 * c / c.max(dim=1, keepdim=True).values

    def grey(m: int, hi: float = 0.25) -> Tensor:
        return u(0.0, 0.0 if plain else hi, m)[:, None].expand(m, 3).clone()

    blank = hook_responses(model, [below], torch.zeros(1, 3, size, size), reduce="map")[below]
    h, w = blank.shape[-2:]
    x0, y0 = rf_centre((h, w), size)
    o, r, dx, dy = u(0.0, 360.0, n), u(3.0, 11.0, n) * s, u(-6.0, 6.0, n) * s, u(-6.0, 6.0, n) * s
    arcs = curves(size, o, r, u(80.0, 140.0, n), u(1.2, 2.2, n) * s, x0 + dx, y0 + dy, bright(n), grey(n))
    cov = lines(
        size,
        u(0.0, 180.0, n),
        u(5.0, 14.0, n) * s,
        u(1.2, 2.2, n) * s,
        x0 + u(-8.0, 8.0, n) * s,
        y0 + u(-8.0, 8.0, n) * s,
        torch.ones(n, 3),
        torch.zeros(n, 3),
    )[:, :1]
    cluttered = arcs * (1 - cov) + bright(n)[:, :, None, None] * cov
    nl, nb, n0 = n // 2, n // 6, n // 15
    lns = lines(
        size,
        u(0.0, 180.0, nl),
        u(5.0, 14.0, nl) * s,
        u(1.2, 2.2, nl) * s,
        x0 + u(-6.0, 6.0, nl) * s,
        y0 + u(-6.0, 6.0, nl) * s,
        bright(nl),
        grey(nl),
    )
    bls = blobs(size, u(1.5, 3.5, nb) * s, x0 + u(-6.0, 6.0, nb) * s, y0 + u(-6.0, 6.0, nb) * s, bright(nb), grey(nb))
    fields = grey(n0, 0.3)[:, :, None, None].expand(n0, 3, size, size)
    images = torch.cat([arcs, cluttered, lns, bls, fields])
    noise = 0.0 if plain else 0.02
    images = (images + noise * torch.randn(images.shape, generator=g)).clamp(0, 1)
    maps = hook_responses(model, [below], images, reduce="map")[below]
    cy, cx = (h - 1) // 2, (w - 1) // 2
    half = kernel_size // 2
    crops = F.pad(maps, (half, half, half, half))[:, :, cy : cy + kernel_size, cx : cx + kernel_size]
    pooled = F.max_pool2d(maps, 3, 1, 1)[:, :, cy, cx]
    zeros = torch.zeros(nl + nb + n0)
    kind = torch.cat(
        [torch.zeros(n), torch.ones(n), torch.full((nl,), 2.0), torch.full((nb,), 3.0), torch.full((n0,), 4.0)]
    )
    return Ensemble(
        crops=crops.contiguous(),
        pooled=pooled,
        kind=kind.long(),
        orientation=torch.cat([o, o, zeros]),
        dx=torch.cat([dx, dx, zeros]),
        dy=torch.cat([dy, dy, zeros]),
        radius=torch.cat([r, r, zeros]),
        images=images if keep_images else None,
    )


def curve_target(
    ens: Ensemble, orientation: float, kappa: float = 4.0, floor: float = 0.2, sigma_px: float = 5.0
) -> Tensor:
    """The written tuning of a curve detector at ``orientation``: a von Mises bump of concentration ``kappa``
    minus ``floor`` (so the opposite bends are inhibited), times a Gaussian of the arc's distance to the
    receptive-field centre (``sigma_px``); 0 for every stimulus that is not an arc."""
    d = torch.deg2rad(ens.orientation - orientation)
    t = (torch.exp(kappa * (torch.cos(d) - 1)) - floor) * torch.exp(-(ens.dx**2 + ens.dy**2) / (2 * sigma_px**2))
    return torch.where(ens.is_arc, t, torch.zeros_like(t))


@torch.no_grad()
def colour_ensemble(
    model: HookedVisionModel, below: str, size: int, n: int = 3000, kernel_size: int = 3, seed: int = 0
) -> Ensemble:
    """``n`` colour stimuli -- blobs (sigma 1.5-3.5 px), arcs and lines in equal shares -- of random hue,
    saturation 0-1 and value 0.5-1 on grey 0-0.25, within +-4 px of the centre cell's receptive field, pixel
    noise 0.02 (lengths at 32 px, scaled with ``size``); ``kind`` 0 blob, 1 arc, 2 line."""
    import colorsys

    g = torch.Generator().manual_seed(seed)
    s = size / 32.0

    def u(lo: float, hi: float, m: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(m, generator=g)

    hue, sat, val = u(0.0, 360.0, n), u(0.0, 1.0, n), u(0.5, 1.0, n)
    cols = torch.tensor(
        [colorsys.hsv_to_rgb(float(h) / 360.0, float(a), float(v)) for h, a, v in zip(hue, sat, val)],
        dtype=torch.float32,
    )
    blank = hook_responses(model, [below], torch.zeros(1, 3, size, size), reduce="map")[below]
    h, w = blank.shape[-2:]
    x0, y0 = rf_centre((h, w), size)
    dx, dy = u(-4.0, 4.0, n) * s, u(-4.0, 4.0, n) * s
    kind = torch.arange(n) % 3
    bg = u(0.0, 0.25, n)[:, None].expand(n, 3).clone()
    im_b = blobs(size, u(1.5, 3.5, n) * s, x0 + dx, y0 + dy, cols, bg)
    im_c = curves(
        size, u(0.0, 360.0, n), u(3.0, 11.0, n) * s, u(80.0, 140.0, n), u(1.2, 2.2, n) * s, x0 + dx, y0 + dy, cols, bg
    )
    im_l = lines(size, u(0.0, 180.0, n), u(5.0, 14.0, n) * s, u(1.2, 2.2, n) * s, x0 + dx, y0 + dy, cols, bg)
    k4 = kind[:, None, None, None]
    images = torch.where(k4 == 0, im_b, torch.where(k4 == 1, im_c, im_l))
    images = (images + 0.02 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    maps = hook_responses(model, [below], images, reduce="map")[below]
    cy, cx = (h - 1) // 2, (w - 1) // 2
    half = kernel_size // 2
    crops = F.pad(maps, (half, half, half, half))[:, :, cy : cy + kernel_size, cx : cx + kernel_size]
    zeros = torch.zeros(n)
    return Ensemble(
        crops=crops.contiguous(),
        pooled=F.max_pool2d(maps, 3, 1, 1)[:, :, cy, cx],
        kind=kind,
        orientation=zeros,
        dx=dx,
        dy=dy,
        radius=zeros,
        hue=hue,
        saturation=sat,
    )


def colour_target(ens: Ensemble, hue: float, kappa: float = 2.0, floor: float = 0.2, sigma_px: float = 3.0) -> Tensor:
    """The written tuning of a colour-contrast unit preferring ``hue``: a von Mises bump over hue minus ``floor``,
    times the stimulus's saturation (grey strokes: 0) and a Gaussian of its distance to the receptive field."""
    if ens.hue is None or ens.saturation is None:
        raise ValueError("colour_target needs a colour ensemble (colour_ensemble)")
    d = torch.deg2rad(ens.hue - hue)
    rf = torch.exp(-(ens.dx**2 + ens.dy**2) / (2 * sigma_px**2))
    return (torch.exp(kappa * (torch.cos(d) - 1)) - floor) * ens.saturation * rf


def solve_weights(inputs: Tensor, target: Tensor, ridge: float = 1e-3) -> tuple[Tensor, float]:
    """Ridge least squares ``target ~ inputs . w + c`` over the ensemble (``inputs [N, ...]``): ``(w, c)``."""
    a = inputs.reshape(inputs.shape[0], -1).double()
    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
    gram = a.T @ a + ridge * a.shape[0] * torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(gram, a.T @ target.double())
    return w[:-1].float().reshape(inputs.shape[1:]), float(w[-1])


def unit_kinds(model: HookedVisionModel, hook: str, n_units: int) -> list[str]:
    """Each unit's reach on the layer below: ``"1x1"``, ``"pool"`` or ``"conv"`` (see the module docstring)."""
    from torchvision.models.googlenet import Inception

    source = getattr(model, "source", None)
    name = hook[: -len(".hook_out")] if hook.endswith(".hook_out") else hook
    try:
        mod = source.get_submodule(name) if source is not None else None
    except AttributeError:
        mod = None
    if not isinstance(mod, Inception):
        return ["conv"] * n_units

    def width(branch: torch.nn.Module) -> int:
        last = branch[-1] if isinstance(branch, torch.nn.Sequential) else branch
        return int(last.conv.out_channels)

    kinds = (
        ["1x1"] * width(mod.branch1)
        + ["conv"] * (width(mod.branch2) + width(mod.branch3))
        + ["pool"] * width(mod.branch4)
    )
    return kinds if len(kinds) == n_units else ["conv"] * n_units


@dataclass
class DesignedUnit:
    """A designed unit: ``relu(gain * (w . reach(below)) + gain * intercept)``; ``weights [C, k, k]`` (``conv``),
    ``[C, 1, 1]`` (``1x1``) or ``[C]`` applied after a 3 x 3 max-pool (``pool``)."""

    kind: str
    weights: Tensor
    intercept: float
    gain: float

    def __call__(self, below: Tensor) -> Tensor:
        w = self.weights.to(below)
        if self.kind == "pool":
            z = F.conv2d(F.max_pool2d(below, 3, 1, 1), w[None, :, None, None])[:, 0]
        else:
            z = F.conv2d(below, w[None], padding=w.shape[-1] // 2)[:, 0]
        return torch.relu(self.gain * (z + self.intercept))

    def kernel_norm(self) -> float:
        return float(self.weights.norm())


def designed_unit(ens: Ensemble, target: Tensor, kind: str, gain: float, ridge: float = 1e-3) -> DesignedUnit:
    """Solve a unit of ``kind`` for ``target`` over ``ens``; ``gain`` scales the target's units to the unit's."""
    if kind == "pool":
        w, c = solve_weights(ens.pooled, target, ridge)
    elif kind == "1x1":
        k = ens.crops.shape[-1] // 2
        w, c = solve_weights(ens.crops[:, :, k : k + 1, k : k + 1], target, ridge)
    else:
        w, c = solve_weights(ens.crops, target, ridge)
    if not math.isfinite(c):
        c = 0.0
    return DesignedUnit(kind, w, c, float(gain))
