"""Receptive fields of conv hooks, measured from the architecture by probing input gradients.

For a hook whose activation is a map ``[B, C, h, w]``, :func:`receptive_field` runs the model
(eval mode, gradients on) on a few random inputs, back-propagates the sum over channels of the
activation at one output location, and takes the bounding box of the input pixels whose gradient
is non-zero (the union over the probe images, so ReLU / max-pool zeros do not shrink it). Probing
two neighbouring locations gives the stride. The result is the *theoretical* receptive field
(the support of the gradient), cached per ``(model, hook, input size)``.

``rf.box(y, x, H, W)`` is the input window ``(y0, x0, y1, x1)`` (end-exclusive, clipped to the
image) that can influence output location ``(y, x)``.

Token activations (ViTs) have a global receptive field (attention), so they have no
:class:`ReceptiveField`; callers crop the token's patch with some context instead.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = ["ReceptiveField", "receptive_field", "probe_support"]

_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Optional[ReceptiveField]]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a conv hook: ``size`` (rows, cols), ``stride`` and ``offset`` in input pixels.

    Output location ``(y, x)`` sees input rows ``offset[0] + y * stride[0]`` ..
    ``+ size[0]`` (end-exclusive; may extend past the image, :meth:`box` clips it).
    """

    hook: str
    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    output_size: tuple[int, int]

    def box(self, y: int, x: int, H: Optional[int] = None, W: Optional[int] = None) -> tuple[int, int, int, int]:
        """``(y0, x0, y1, x1)`` of output location ``(y, x)``, clipped to ``H x W`` (default: the probe size)."""
        H = self.input_size[0] if H is None else H
        W = self.input_size[1] if W is None else W
        y0 = self.offset[0] + y * self.stride[0]
        x0 = self.offset[1] + x * self.stride[1]
        return max(0, y0), max(0, x0), min(H, y0 + self.size[0]), min(W, x0 + self.size[1])

    def to_dict(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "size": list(self.size),
            "stride": list(self.stride),
            "offset": list(self.offset),
            "input_size": list(self.input_size),
            "output_size": list(self.output_size),
        }


def _bbox(mask: Tensor) -> Optional[tuple[int, int, int, int]]:
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def probe_support(
    model: HookedVisionModel,
    hook: str,
    size: tuple[int, int],
    locations: list[tuple[int, int]],
    n_probe: int = 3,
    seed: int = 0,
    architectural: bool = True,
) -> tuple[list[Optional[tuple[int, int, int, int]]], tuple[int, ...]]:
    """Bounding boxes of the input-gradient support of ``hook`` at each output location.

    With ``architectural=True`` the probe runs with every weight replaced by a random *positive*
    value (``torch.func.functional_call``; the model is not modified) on positive inputs, so the
    support is the field the architecture allows, not one that a particular weight setting (e.g.
    timm's zero-initialised last BN of each residual branch) hides. Returns
    ``(boxes, activation_shape)``; the model's train/eval state is restored afterwards.
    """
    gen = torch.Generator().manual_seed(seed)
    shape_in = (n_probe, int(model.cfg.in_chans or 3), size[0], size[1])
    params: Optional[dict[str, Tensor]] = None
    if architectural:
        x = torch.rand(shape_in, generator=gen).add_(0.5).to(model.device)
        params = {
            n: (torch.rand(p.shape, generator=gen) + 0.5).to(p.device, p.dtype) for n, p in model.named_parameters()
        }
    else:
        x = torch.randn(shape_in, generator=gen).to(model.device)
    was_training = model.training
    model.eval()
    store: dict[str, Tensor] = {}

    def grab(t: Tensor, hook: Any = None) -> None:
        store["a"] = t

    boxes: list[Optional[tuple[int, int, int, int]]] = []
    try:
        with torch.enable_grad():
            for y, xx in locations:
                xin = x.clone().requires_grad_(True)
                if params is None:
                    model.run_with_hooks(xin, fwd_hooks=[(hook, grab)])
                else:
                    from torch.func import functional_call

                    with model.hooks(fwd_hooks=[(hook, grab)]):
                        functional_call(model, params, (xin,), strict=False)
                a = store.pop("a", None)
                if a is None:
                    raise VisionLensError(f"receptive_field: hook {hook!r} did not fire on an image batch.")
                if a.ndim != 4:
                    return [None] * len(locations), tuple(a.shape[1:])
                if not a.requires_grad:
                    raise VisionLensError(f"receptive_field: hook {hook!r} does not depend on the input image.")
                (g,) = torch.autograd.grad(a[:, :, y, xx].sum(), xin, allow_unused=True)
                if g is None:
                    boxes.append(None)
                else:
                    boxes.append(_bbox(g.detach().abs().sum(dim=(0, 1)) > 0))
                shape = tuple(a.shape[1:])
    finally:
        model.train(was_training)
    return boxes, shape


def receptive_field(
    model: HookedVisionModel, hook: str, input_size: Optional[tuple[int, int]] = None, cache: bool = True
) -> Optional[ReceptiveField]:
    """The receptive field of ``hook`` (a conv map) for ``input_size`` images; ``None`` for token/vector hooks.

    Cached per model (weakly) and ``(hook, input_size)``.
    """
    hook = model.resolve_hook(hook)
    if input_size is None:
        input_size = model.cfg.image_size or (64, 64)
    H, W = int(input_size[0]), int(input_size[1])
    key = (hook, H, W)
    per_model = _CACHE.setdefault(model, {}) if cache else {}
    if key in per_model:
        return per_model[key]
    shape = tuple(model.hook_shapes(image_size=H).get(hook, ())) if H == W else ()
    if not shape:
        _, shape = probe_support(model, hook, (H, W), [(0, 0)], n_probe=1)
    rf: Optional[ReceptiveField] = None
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 3:
        h, w = int(shape[1]), int(shape[2])
        cy, cx = h // 2, w // 2
        ny, nx = (cy + 1 if cy + 1 < h else cy - 1), (cx + 1 if cx + 1 < w else cx - 1)
        boxes, _ = probe_support(model, hook, (H, W), [(cy, cx), (ny, nx)])
        b0, b1 = boxes
        if b0 is not None:
            if b1 is not None and h > 1 and ny != cy:
                sy = abs(b1[0] - b0[0]) if b1[0] != b0[0] else abs(b1[2] - b0[2])
            else:
                sy = 0
            if b1 is not None and w > 1 and nx != cx:
                sx = abs(b1[1] - b0[1]) if b1[1] != b0[1] else abs(b1[3] - b0[3])
            else:
                sx = 0
            sy = sy or max(1, round(H / h))
            sx = sx or max(1, round(W / w))
            # size of the unclipped field: a window clipped by the image border is smaller on that side
            size_y = b0[2] - b0[0]
            size_x = b0[3] - b0[1]
            if b1 is not None:
                size_y, size_x = max(size_y, b1[2] - b1[0]), max(size_x, b1[3] - b1[1])
            # centre of the field of (cy, cx): keep its centre when one side is clipped
            if b0[0] == 0 and b0[2] < H:
                y0 = b0[2] - size_y
            else:
                y0 = b0[0]
            if b0[1] == 0 and b0[3] < W:
                x0 = b0[3] - size_x
            else:
                x0 = b0[1]
            rf = ReceptiveField(
                hook,
                (int(size_y), int(size_x)),
                (int(sy), int(sx)),
                (int(y0 - cy * sy), int(x0 - cx * sx)),
                (H, W),
                (h, w),
            )
    per_model[key] = rf
    return rf
