"""Unit specs: ``"mixed4a:476"``, ``"layer3.1.conv2:17@(3,4)"``, ``"blocks.6.mlp.hook_post:123@5"``.

A unit is a hook plus an index along the feature axis (channels for conv maps, the last axis for
token activations and for channels-last ``[B, H, W, C]`` maps, which an adapter lists in
``channels_last_hooks()``) and an optional position (``(y, x)`` for conv maps, a token index for ViTs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from torch import Tensor

from .validation import VisionLensError

_UNIT = re.compile(r"^(?P<layer>[^:@]+):(?P<index>-?\d+)(?:@\(?(?P<pos>[\d\s,]+)\)?)?$")


@dataclass(frozen=True)
class Unit:
    """One unit of one hook."""

    hook: str
    index: int
    position: Optional[tuple[int, ...]] = None

    def __str__(self) -> str:
        pos = "" if self.position is None else "@(" + ",".join(map(str, self.position)) + ")"
        return f"{self.hook}:{self.index}{pos}"

    def select(self, activation: Tensor, channels_last: bool = False) -> Tensor:
        """This unit's activation per example: ``[batch]`` with a position, else ``[batch, *spatial]``."""
        if activation.ndim == 4 and not channels_last:  # [B, C, H, W]
            a = activation[:, self.index]
            return a if self.position is None else a[:, self.position[0], self.position[1]]
        a = activation[..., self.index]  # [B, pos, ...] token layout
        if self.position is None:
            return a
        return a[(slice(None),) + tuple(self.position)]


def parse_unit(spec: Union[str, Unit], model: Any = None) -> Unit:
    """Parse a unit spec; with a model, resolve layer aliases and check the index range."""
    if isinstance(spec, Unit):
        return spec
    m = _UNIT.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise VisionLensError(
            f"Expected a unit spec 'layer:index' such as 'mixed4a:476', 'layer1.0.conv1:12@(3,4)' or "
            f"'blocks.6.mlp.hook_post:123@5', got {spec!r}."
        )
    layer, index = m.group("layer").strip(), int(m.group("index"))
    pos = tuple(int(p) for p in m.group("pos").replace(" ", "").split(",") if p) if m.group("pos") else None
    if model is not None:
        layer = model.resolve_hook(layer)
        size = _unit_count(model, layer)
        if size is not None and not 0 <= index < size:
            raise VisionLensError(
                f"Unit index {index} is out of range for {layer!r}, which has {size} units (0..{size - 1})."
            )
    return Unit(layer, index, pos)


def _unit_count(model: Any, hook: str) -> Optional[int]:
    counts = getattr(model, "_unit_counts", None)
    if counts is None:
        try:
            shapes = model.hook_shapes()
        except Exception:
            return None
        cl_fn = getattr(getattr(model, "adapter", None), "channels_last_hooks", None)
        channels_last = cl_fn() if callable(cl_fn) else frozenset()
        counts = {}
        for name, shape in shapes.items():
            counts[name] = (
                shape[1]
                if len(shape) == 4
                and name not in channels_last  # [B, H, W, C] module outputs (ConvNeXt's channels-last MLP)
                and not name.endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result"))
                else shape[-1]
            )
        model._unit_counts = counts
    return counts.get(hook)
