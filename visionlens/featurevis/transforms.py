"""Random image transforms for transformation robustness (Lucid's ``transform`` module).

A transform is called as ``t(images, generators)`` with ``images`` ``[N, C, H, W]`` and one
``torch.Generator`` per image: every random choice for image ``i`` is drawn from
``generators[i]``, so a batch of N renders draws exactly what N single renders draw.

Lucid's standard set (:func:`standard_transforms`)::

    pad(12, constant 0.5), jitter(8), random_scale([1 + (i - 5) / 50 for i in range(11)]),
    random_rotate(list(range(-10, 11)) + 5 * [0]), jitter(4)

Differences from Lucid, made so that a batch can hold a different random transform per image:
``RandomScale`` and ``RandomRotate`` resample around the image centre at a fixed output size
(a scale ``s > 1`` magnifies the content by ``s`` and crops; ``s < 1`` shrinks it and fills the
border with zeros) instead of changing the image size, and :class:`Compose` fuses consecutive
scale / rotate steps into one ``grid_sample`` (bilinear). Jitter is an integer random crop, as in
Lucid.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Transform",
    "Pad",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "Resize",
    "Compose",
    "standard_transforms",
    "scaled_transforms",
    "make_transforms",
    "LUCID_SCALES",
    "LUCID_ANGLES",
]

Generators = Sequence[torch.Generator]

LUCID_SCALES = tuple(1 + (i - 5) / 50.0 for i in range(11))
LUCID_ANGLES = tuple(list(range(-10, 11)) + 5 * [0])


def _choice(options: Sequence[Any], g: torch.Generator) -> Any:
    return options[int(torch.randint(len(options), (1,), generator=g))]


class Transform:
    """Base class: ``__call__(images [N, C, H, W], generators) -> images``."""

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Pad(Transform):
    """Pad every side by ``width`` pixels (``mode`` ``"constant"`` with ``value``, or ``"reflect"``)."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5):
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        if self.width <= 0:
            return x
        w = self.width
        if self.mode == "constant":
            return F.pad(x, (w, w, w, w), mode="constant", value=self.value)
        return F.pad(x, (w, w, w, w), mode=self.mode)


class Jitter(Transform):
    """Random integer crop, ``d`` pixels smaller on each axis (Lucid's ``jitter(d)``)."""

    def __init__(self, d: int):
        self.d = int(d)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        d = self.d
        if d <= 0:
            return x
        H, W = x.shape[-2:]
        h, w = H - d, W - d
        if h < 1 or w < 1:
            raise ValueError(f"Jitter({d}) needs images larger than {d} pixels, got {H}x{W}.")
        offsets = [
            (int(torch.randint(d + 1, (1,), generator=g)), int(torch.randint(d + 1, (1,), generator=g)))
            for g in generators
        ]
        if all(o == offsets[0] for o in offsets):
            oy, ox = offsets[0]
            return x[:, :, oy : oy + h, ox : ox + w]
        return torch.stack([x[i, :, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offsets)])


class _Affine(Transform):
    """A random 2x2 linear map per image around the centre (pixel coordinates); see :class:`Compose`."""

    padding_mode = "zeros"

    def matrix(self, g: torch.Generator) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        return _apply_affine(x, [self.matrix(g) for g in generators], self.padding_mode)


class RandomScale(_Affine):
    """Magnify the content by a factor drawn from ``scales`` (fixed output size)."""

    def __init__(self, scales: Sequence[float] = LUCID_SCALES):
        self.scales = tuple(float(s) for s in scales)

    def matrix(self, g: torch.Generator) -> Tensor:
        s = _choice(self.scales, g)
        return torch.tensor([[1.0 / s, 0.0], [0.0, 1.0 / s]], dtype=torch.float64)


class RandomRotate(_Affine):
    """Rotate by an angle drawn from ``angles`` (degrees by default)."""

    def __init__(self, angles: Sequence[float] = LUCID_ANGLES, units: str = "degrees"):
        self.angles = tuple(float(a) for a in angles)
        self.units = units

    def matrix(self, g: torch.Generator) -> Tensor:
        a = _choice(self.angles, g)
        if self.units.startswith("deg"):
            a = math.radians(a)
        c, s = math.cos(a), math.sin(a)
        return torch.tensor([[c, -s], [s, c]], dtype=torch.float64)


def _apply_affine(x: Tensor, mats: Sequence[Tensor], padding_mode: str = "zeros") -> Tensor:
    """Sample output pixel ``p`` (centred pixel coordinates) from input ``M @ p``, per image."""
    N, _, H, W = x.shape
    m = torch.stack(list(mats))  # [N, 2, 2] in pixel units (x, y)
    if torch.equal(m, torch.eye(2, dtype=m.dtype).expand_as(m)):
        return x
    # normalised coords u = x / (W / 2): theta = S^-1 M S with S = diag(W / 2, H / 2)
    sx, sy = W / 2.0, H / 2.0
    S = torch.tensor([[sx, 0.0], [0.0, sy]], dtype=torch.float64)
    Si = torch.tensor([[1 / sx, 0.0], [0.0, 1 / sy]], dtype=torch.float64)
    theta = torch.zeros(N, 2, 3, dtype=torch.float64)
    theta[:, :, :2] = Si @ m @ S
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [N, x.shape[1], H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


class Resize(Transform):
    """Resize to ``size`` (bilinear) when the images have another size."""

    def __init__(self, size: Union[int, Sequence[int]]):
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class Compose(Transform):
    """Apply transforms in order; consecutive scale / rotate steps become one resampling."""

    def __init__(self, transforms: Sequence[Union[Transform, Callable]] = ()):
        self.transforms = list(transforms)

    def __call__(self, x: Tensor, generators: Generators) -> Tensor:
        pending: list[_Affine] = []

        def flush(x: Tensor) -> Tensor:
            if not pending:
                return x
            if len(pending) == 1:
                mats = [pending[0].matrix(g) for g in generators]
            else:
                mats = []
                for g in generators:  # draws in transform order, per image
                    m = torch.eye(2, dtype=torch.float64)
                    for t in pending:
                        m = m @ t.matrix(g)
                    mats.append(m)
            mode = pending[-1].padding_mode
            pending.clear()
            return _apply_affine(x, mats, mode)

        for t in self.transforms:
            if isinstance(t, _Affine):
                pending.append(t)
                continue
            x = flush(x)
            x = t(x, generators) if isinstance(t, Transform) else t(x)
        return flush(x)

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def standard_transforms(
    pad: int = 12,
    jitter: int = 8,
    scales: Sequence[float] = LUCID_SCALES,
    angles: Sequence[float] = LUCID_ANGLES,
    final_jitter: int = 4,
) -> Compose:
    """Lucid's ``transform.standard_transforms`` (pad 12 with 0.5, jitter 8, scale, rotate, jitter 4)."""
    ts: list[Transform] = []
    if pad:
        ts.append(Pad(pad, "constant", 0.5))
    if jitter:
        ts.append(Jitter(jitter))
    if scales and tuple(scales) != (1.0,):
        ts.append(RandomScale(scales))
    if angles and any(a != 0 for a in angles):
        ts.append(RandomRotate(angles))
    if final_jitter:
        ts.append(Jitter(final_jitter))
    return Compose(ts)


def scaled_transforms(size: int, reference: int = 128) -> Compose:
    """Lucid's standard set with pad / jitter scaled by ``size / reference`` (for small renders)."""
    f = max(size, 1) / reference

    def px(v: int) -> int:
        return max(1, int(round(v * f)))

    return standard_transforms(pad=px(12), jitter=px(8), final_jitter=px(4))


def make_transforms(spec: Union[None, str, Transform, Sequence[Any]], size: Optional[int] = None) -> Compose:
    """``"standard"`` (Lucid's set), ``"scaled"`` (Lucid's set with pad / jitter scaled to ``size`` / 128
    pixels), ``"none"`` / ``None``, a :class:`Transform`, or a list of them."""
    if spec is None or spec == "none":
        return Compose([])
    if spec == "standard":
        return standard_transforms()
    if spec == "scaled":
        return scaled_transforms(size or 128)
    if isinstance(spec, Compose):
        return spec
    if isinstance(spec, Transform) or callable(spec):
        return Compose([spec])
    if isinstance(spec, (list, tuple)):
        return Compose(list(spec))
    raise ValueError(
        f"Unknown transforms {spec!r}; expected 'standard', 'scaled', 'none', a Transform or a list of them."
    )
