"""Models whose circuits are known by construction, for proving the circuits analyses.

:func:`planted_rotation_model`: one hand-set conv layer (``conv``, 16 units of 9 x 9 on RGB, ReLU) in which
8 units are a curve template rotated by 0, 45, ..., 315 degrees -- the planted rotation family -- and 8 are
distractors: line detectors at 0/45/90/135 degrees (rotation-related to each other but symmetric, not curves),
two colour-opponent blobs and two random kernels. The family's unit indices are shuffled among the others.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from visionlens.hooked_model import HookedVisionModel

from .stimuli import curves, lines

__all__ = ["PlantedRotationNet", "planted_rotation_model", "curve_kernel"]

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
