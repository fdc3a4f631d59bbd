"""Models whose circuits are known by construction, for proving the circuits analyses.

:func:`planted_rotation_model`: one hand-set conv layer (``conv``, 16 units of 9 x 9 on RGB, ReLU) in which
8 units are a curve template rotated by 0, 45, ..., 315 degrees -- the planted rotation family -- and 8 are
distractors: line detectors at 0/45/90/135 degrees (rotation-related to each other but symmetric, not curves),
two colour-opponent blobs and two random kernels. The family's unit indices are shuffled among the others.

:func:`planted_hue_model`: the same layer with 8 colour-opponent blob units whose colour axis is rotated about
the grey axis by 0, 45, ..., 315 degrees (the planted hue family) among 8 distractors (4 achromatic line
detectors, a grey centre-surround blob, 3 random kernels).

:func:`planted_reflection_model`: a chiral template (a J: an arc with a tail at one end) and its 8 mirror
images (mirrored left-right, then rotated by 0, 45, ..., 315 degrees; rendered, not resampled): the planted
reflection family of 9 (the template is the mirror image of each of the others at some offset), among 7
distractors (4 line detectors, 2 colour blobs, a random kernel).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from visionlens.hooked_model import HookedVisionModel

from .equivariance import hue_rotation
from .stimuli import blobs, curves, lines

__all__ = [
    "PlantedRotationNet",
    "planted_rotation_model",
    "planted_hue_model",
    "planted_reflection_model",
    "curve_kernel",
]

KERNEL = 9


def curve_kernel(orientation: float, radius: float = 3.0, size: int = KERNEL, width: float = 1.4) -> Tensor:
    """A zero-mean grey ``[3, size, size]`` kernel of an arc (convex side to ``orientation`` degrees), unit norm."""
    img = curves(size, orientation, radius, span=120.0, width=width)[0].mean(0)
    k = img - img.mean()
    k = k / k.norm()
    return k.expand(3, size, size) / 3**0.5


def _line_kernel(orientation: float, size: int = KERNEL, width: float = 1.4) -> Tensor:
    img = lines(size, orientation, length=size - 2.0, width=width)[0].mean(0)
    k = img - img.mean()
    return (k / k.norm()).expand(3, size, size) / 3**0.5


def _colour_kernel(sign: float, size: int = KERNEL) -> Tensor:
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(c[:, None] ** 2 + c[None] ** 2) / 4.0)
    k = torch.stack([sign * g, -sign * g, torch.zeros_like(g)])
    return k / k.norm()


class PlantedRotationNet(nn.Module):
    """``conv`` (hand-set, see the module docstring) -> ReLU (``act``) -> mean -> ``fc`` (random, 4 logits)."""

    def __init__(self, kernel: int = KERNEL) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, kernel, padding=kernel // 2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def planted_rotation_model(
    seed: int = 0, kernel: int = KERNEL, radius: float = 4.5, width: float = 2.5, threshold: float = 0.5
) -> tuple[HookedVisionModel, dict[str, Any]]:
    """The planted model and its truth: ``{"family": unit ids, "offsets": their rotation in degrees, "hook": ...,
    "layer": ...}``; the family's member at offset ``k * 45`` is the template rotated by ``k * 45`` degrees.

    ``threshold``: every unit's bias is ``-threshold`` times the family's response to its own arc (a thresholded
    matched filter is sharper than a plain one)."""
    g = torch.Generator().manual_seed(seed)
    kernels = [curve_kernel(45.0 * k, radius, kernel, width) for k in range(8)]
    kernels += [_line_kernel(a, kernel, width) for a in (0.0, 45.0, 90.0, 135.0)]
    kernels += [_colour_kernel(1.0, kernel), _colour_kernel(-1.0, kernel)]
    for _ in range(2):
        r = torch.randn(3, kernel, kernel, generator=g)
        kernels.append(r / r.norm())
    perm = torch.randperm(16, generator=g)
    m = PlantedRotationNet(kernel)
    with torch.no_grad():
        w = torch.stack(kernels)
        m.conv.weight.copy_(w[torch.argsort(perm)])  # unit perm[i] holds kernel i
        m.conv.bias.zero_()
        x = curves(32, 0.0, radius, span=120.0, width=width)
        peak = float(m.conv(x)[0, int(perm[0])].max())
        m.conv.bias.fill_(-threshold * peak)
        m.fc.weight.copy_(torch.randn(4, 16, generator=g) * 0.1)
        m.fc.bias.zero_()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No visionlens adapter recognises")
        model = HookedVisionModel.from_module(m.eval())
    truth = {
        "family": [int(perm[k]) for k in range(8)],
        "offsets": [45.0 * k for k in range(8)],
        "hook": "act.hook_out",
        "layer": "conv",
    }
    return model, truth


def _blob(size: int, sigma: float = 2.0) -> Tensor:
    c = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return torch.exp(-(c[:, None] ** 2 + c[None] ** 2) / (2 * sigma**2))


def _hook_kernel(orientation: float, mirrored: bool, size: int = KERNEL, width: float = 2.5) -> Tensor:
    """A zero-mean grey J: an arc (convex side to ``orientation``, radius 4.5, span 100) with a straight tail of 3 px
    continuing from its counter-clockwise end (its clockwise end when ``mirrored``), unit norm. The mirrored J at
    ``o`` is the J at ``o + 180`` mirrored left-right."""
    r, span, tail = 4.5, 100.0, 3.0
    c = size / 2
    phi = math.radians(orientation)
    ccx, ccy = c - r * math.cos(phi), c + r * math.sin(phi)  # the circle's centre (image coordinates, y down)
    sgn = -1.0 if mirrored else 1.0
    a = phi + sgn * math.radians(span / 2)
    ex, ey = ccx + r * math.cos(a), ccy - r * math.sin(a)
    dx, dy = -sgn * math.sin(a), -sgn * math.cos(a)  # the arc's direction of travel at that end
    arc = curves(size, orientation, r, span=span, width=width, cx=c, cy=c)[0, 0]
    direction = math.degrees(math.atan2(-dy, dx))
    tl = lines(size, direction, length=tail, width=width, cx=ex + dx * tail / 2, cy=ey + dy * tail / 2)[0, 0]
    img = torch.maximum(arc, tl)
    k = img - img.mean()
    return (k / k.norm()).expand(3, size, size) / 3**0.5


def _build(kernels: list[Tensor], probe: Tensor, seed: int, threshold: float) -> tuple[HookedVisionModel, Tensor]:
    """A :class:`PlantedRotationNet` holding ``kernels`` (shuffled); the bias is ``-threshold`` times the first
    family member's peak response to ``probe``; returns the model and the permutation (kernel ``i`` -> unit)."""
    g = torch.Generator().manual_seed(seed)
    n = len(kernels)
    perm = torch.randperm(n, generator=g)
    m = PlantedRotationNet(kernels[0].shape[-1])
    with torch.no_grad():
        m.conv.weight.copy_(torch.stack(kernels)[torch.argsort(perm)])
        m.conv.bias.zero_()
        peak = float(m.conv(probe)[0, int(perm[0])].max())
        m.conv.bias.fill_(-threshold * peak)
        m.fc.weight.copy_(torch.randn(4, n, generator=g) * 0.1)
        m.fc.bias.zero_()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No visionlens adapter recognises")
        model = HookedVisionModel.from_module(m.eval())
    return model, perm


def planted_hue_model(
    seed: int = 0, kernel: int = KERNEL, threshold: float = 0.5
) -> tuple[HookedVisionModel, dict[str, Any]]:
    """The planted hue family (see the module docstring) and its truth (offsets: hue rotation in degrees)."""
    g = torch.Generator().manual_seed(seed + 100)
    red = torch.tensor([2.0, -1.0, -1.0]) / 6**0.5
    blob = _blob(kernel)
    kernels = [(hue_rotation(45.0 * k) @ red)[:, None, None] * blob[None] for k in range(8)]
    kernels = [k / k.norm() for k in kernels]
    kernels += [_line_kernel(a, kernel) for a in (0.0, 45.0, 90.0, 135.0)]
    dog = _blob(kernel, 1.5) - 0.5 * _blob(kernel, 3.0)
    kernels.append((dog - dog.mean()).expand(3, kernel, kernel) / (dog - dog.mean()).norm() / 3**0.5)
    for _ in range(3):
        r = torch.randn(3, kernel, kernel, generator=g)
        kernels.append(r / r.norm())
    probe = blobs(32, 3.0, colour=(1.0, 0.0, 0.0))
    model, perm = _build(kernels, probe, seed, threshold)
    truth = {
        "family": [int(perm[k]) for k in range(8)],
        "offsets": [45.0 * k for k in range(8)],
        "hook": "act.hook_out",
        "layer": "conv",
    }
    return model, truth


def planted_reflection_model(
    seed: int = 0, kernel: int = KERNEL, threshold: float = 0.5
) -> tuple[HookedVisionModel, dict[str, Any]]:
    """The planted reflection family (see the module docstring): ``family[0]`` is the template, ``family[1 + k]``
    its mirror image (left-right) rotated by ``offsets[1 + k]`` degrees."""
    g = torch.Generator().manual_seed(seed + 200)
    kernels = [_hook_kernel(0.0, False, kernel)] + [_hook_kernel(45.0 * k, True, kernel) for k in range(8)]
    kernels += [_line_kernel(a, kernel) for a in (0.0, 45.0, 90.0, 135.0)]
    kernels += [_colour_kernel(1.0, kernel), _colour_kernel(-1.0, kernel)]
    r = torch.randn(3, kernel, kernel, generator=g)
    kernels.append(r / r.norm())
    probe = curves(32, 0.0, 4.5, span=100.0, width=2.5)
    model, perm = _build(kernels, probe, seed, threshold)
    truth = {
        "family": [int(perm[k]) for k in range(9)],
        "offsets": [0.0] + [(45.0 * k + 180.0) % 360.0 for k in range(8)],
        "hook": "act.hook_out",
        "layer": "conv",
    }
    return model, truth
