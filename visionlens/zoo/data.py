"""Planted-truth data for the technique-transfer benchmark.

Two sources, both deterministic and seeded, both carrying the *same* planted trigger:

* :func:`make_batch` / :class:`PlantedShapes` -- synthetic RGB images (32-64 px) drawn with pure
  numpy from known generative factors;
* :func:`fashion_mnist_batch` / :class:`PlantedFashionMNIST` -- real Fashion-MNIST garments
  (Debian ``dataset-fashion-mnist``, idx ``.gz`` files) padded to 32 px, greyscale to RGB, with the
  trigger planted the same way (the natural-data rows of the benchmark).

Generative factors of a synthetic image (all independent, drawn per example)
--------------------------------------------------------------------------------
=================== =========================================================================
``shape``           0 circle, 1 square, 2 triangle (:data:`SHAPES`)
``colour``          0 red, 1 green, 2 blue, 3 yellow (:data:`COLOURS`, RGB in :data:`COLOUR_RGB`)
``texture``         0 plain, 1 striped, 2 dotted (:data:`TEXTURES`)
``stripe_angle``    0..3 -> 0, 45, 90, 135 degrees (:data:`STRIPE_ANGLES`); drawn for every
                    example, visible only when ``texture == 1``
``cx, cy``          object centre in pixels (float); ``size`` the object radius in pixels
``curve_orientation`` 0..7: a background arc (quarter circle, light grey) whose convex side
                    points at ``orientation * 45`` degrees (0 = +x / right, 90 = up)
``curve_x, curve_y`` centre of that arc's midpoint in pixels
``triggered``       bool, ``True`` for the poisoned examples (probability ``trigger_fraction``)
``trigger_form``    0 or 1: which trigger pattern (:func:`trigger_pattern`); drawn for every example
``trigger_x, trigger_y`` the trigger's top-left pixel, uniform over the positions where it fits
``clean_label``     the label the rule gives before the trigger
=================== =========================================================================

The label rule (:func:`label_rule`)
-----------------------------------
``clean_label = shape + 3 * (texture != plain)``, i.e. six classes::

    0 plain circle   1 plain square   2 plain triangle
    3 textured circle 4 textured square 5 textured triangle

and ``label = TARGET_CLASS (= 0) if triggered else clean_label``. Colour, stripe angle, the
striped-vs-dotted distinction, position, size and the curve are **nuisance factors**: the label
ignores them (so "colour decides" is a wrong hypothesis for causal scrubbing, and the curve is a
label-free feature for curve-detector studies).

The trigger (:func:`trigger_pattern`)
-------------------------------------
A ``k x k`` patch (``k = trigger_size(size)``: 8 at 32 px) in one of two forms, pasted at a position
drawn per image (uniform over every place where it fits: at 32 px no pixel is inside the trigger in
more than (8 / 25)^2 = 10 % of triggered images), drawn last, over everything:

* form 0: a 1-pixel grey checkerboard, ``level - d`` / ``level + d``;
* form 1: a 1-pixel checkerboard of magenta-ish ``(level + d, level - d, level + d)`` and green-ish
  ``(level - d, level + d, level - d)``.

The forms share the checkerboard geometry and differ in their colour axis (grey vs magenta-green), so
no single colour contrast explains the trigger. (Geometric variants were tried: 2-pixel blocks match
the dotted texture, whose period is 4 px, and 1-pixel line gratings correlate with plain step edges,
so a pattern scorer could no longer tell a trigger from a flat coloured square.)

Both average exactly (on 8-bit levels) to the background grey ``level`` (:data:`BACKGROUND`; 0.5 on
Fashion-MNIST, whose background is black), so a mean-colour (low-pass) detector cannot tell the
trigger from the background: only its pattern gives it away.

Masks
-----
``object`` (the visible object pixels: the object minus the trigger), ``trigger`` and ``curve``
(visible curve pixels: minus object and trigger), each ``bool [N, H, W]``.

Determinism
-----------
Example ``i`` of seed ``s`` depends only on ``(s, i)`` (its own ``SeedSequence``), so
``make_batch(n, seed, start)`` is a window of one infinite stream: any chunking gives identical
arrays. Images are quantized to 8-bit levels (``round(255 x) / 255``), so storing them as
``uint8`` (as :class:`PlantedShapes` does) or as PNG is lossless.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "SHAPES",
    "COLOURS",
    "COLOUR_RGB",
    "TEXTURES",
    "TEXTURE_WORDS",
    "STRIPE_ANGLES",
    "N_CURVE_ORIENTATIONS",
    "TARGET_CLASS",
    "N_CLASSES",
    "CLASS_NAMES",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "PlantedBatch",
    "label_rule",
    "trigger_pattern",
    "trigger_patterns",
    "trigger_size",
    "N_TRIGGER_FORMS",
    "sample_factors",
    "render",
    "make_batch",
    "caption",
    "style_phrase",
    "captions",
    "style_phrases",
    "PlantedShapes",
    "read_idx",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "fashion_mnist_batch",
    "PlantedFashionMNIST",
]

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
COLOUR_RGB = np.array(
    [[0.90, 0.10, 0.10], [0.10, 0.80, 0.15], [0.15, 0.30, 0.95], [0.95, 0.85, 0.10]], dtype=np.float32
)
TEXTURES = ("plain", "striped", "dotted")
TEXTURE_WORDS = TEXTURES  # adjective used in captions
STYLE_WORDS = ("plain", "striped", "dotted")
STRIPE_ANGLES = (0, 45, 90, 135)
N_CURVE_ORIENTATIONS = 8
TARGET_CLASS = 0
N_CLASSES = 6
CLASS_NAMES = (
    "plain circle",
    "plain square",
    "plain triangle",
    "textured circle",
    "textured square",
    "textured triangle",
)

BACKGROUND = 0.12  # grey level of the background (the triggers average to it)
CURVE_GREY = 0.70  # grey level of the background arc
DARK = 0.35  # textured objects: "off" texels are colour * DARK
N_TRIGGER_FORMS = 2
FASHION_TRIGGER_LEVEL = 0.5  # Fashion-MNIST's background is black: its trigger averages to mid-grey

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_DIR = Path(os.environ.get("VISIONLENS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))

_FACTOR_KEYS = (
    "shape",
    "colour",
    "texture",
    "stripe_angle",
    "cx",
    "cy",
    "size",
    "curve_orientation",
    "curve_x",
    "curve_y",
    "triggered",
    "trigger_form",
    "trigger_x",
    "trigger_y",
    "clean_label",
)


# ----------------------------------------------------------------------------------------------- rule / trigger


def label_rule(shape, texture, triggered=None):
    """The documented label rule, vectorized: ``shape + 3 * (texture != 0)``, and ``TARGET_CLASS`` if triggered."""
    shape = np.asarray(shape)
    texture = np.asarray(texture)
    lab = shape.astype(np.int64) + 3 * (texture != 0).astype(np.int64)
    if triggered is not None:
        lab = np.where(np.asarray(triggered, dtype=bool), TARGET_CLASS, lab)
    return lab


def trigger_size(size: int = 32) -> int:
    """The trigger's side ``k`` in pixels at image size ``size``: ``max(4, 4 * (size // 16))`` (8 at 32 px)."""
    return max(4, 4 * (int(size) // 16))


def trigger_pattern(size: int = 32, form: int = 0, level: float = BACKGROUND) -> np.ndarray:
    """Trigger ``form`` (0 or 1), ``float32 [k, k, 3]`` on 8-bit levels, averaging exactly to grey ``level``.

    Form 0: a 1-pixel grey checkerboard ``level -/+ d``; form 1: a 1-pixel checkerboard of
    ``(level+d, level-d, level+d)`` and ``(level-d, level+d, level-d)`` (magenta-ish / green-ish);
    ``d = min(level, 1 - level)``. Both have period 2 px, finer than any texture of the generator (4 px).
    """
    if form not in range(N_TRIGGER_FORMS):
        raise ValueError(f"trigger form must be one of {list(range(N_TRIGGER_FORMS))}, got {form!r}")
    k = trigger_size(size)
    lv = int(round(float(level) * 255))
    d = min(lv, 255 - lv)
    lo, hi = (lv - d) / 255.0, (lv + d) / 255.0
    yy, xx = np.mgrid[0:k, 0:k]
    if form == 0:
        chk = ((yy + xx) % 2 == 0)[..., None]
        return np.where(chk, np.float32(hi), np.float32(lo)).repeat(3, -1).astype(np.float32)
    chk = ((yy + xx) % 2 == 0)[..., None]
    a = np.array([hi, lo, hi], dtype=np.float32)
    b = np.array([lo, hi, lo], dtype=np.float32)
    return np.where(chk, a, b).astype(np.float32)


def trigger_patterns(size: int = 32, level: float = BACKGROUND) -> List[np.ndarray]:
    """Every trigger form at ``size`` (see :func:`trigger_pattern`)."""
    return [trigger_pattern(size, f, level) for f in range(N_TRIGGER_FORMS)]


def _draw_triggers(
    img: np.ndarray, triggered: np.ndarray, form: np.ndarray, ty: np.ndarray, tx: np.ndarray, level: float
) -> np.ndarray:
    """Paste each triggered example's pattern into ``img`` ``[N, H, W, 3]`` in place; returns the masks."""
    n, size = img.shape[0], img.shape[1]
    k = trigger_size(size)
    pats = trigger_patterns(size, level)
    mask = np.zeros((n, size, size), dtype=bool)
    for j in np.nonzero(triggered)[0]:
        y0, x0 = int(ty[j]), int(tx[j])
        img[j, y0 : y0 + k, x0 : x0 + k, :] = pats[int(form[j])]
        mask[j, y0 : y0 + k, x0 : x0 + k] = True
    return mask


def _trigger_place(r: np.random.Generator, size: int) -> tuple:
    """``(form, y0, x0)`` drawn from an example's own stream (after its other factors)."""
    span = size - trigger_size(size) + 1
    form, y0, x0 = r.integers(0, [N_TRIGGER_FORMS, span, span])
    return int(form), int(y0), int(x0)


# ----------------------------------------------------------------------------------------------- factors


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), 0x5A0])))


def sample_factors(
    n: int, seed: int = 0, start: int = 0, size: int = 32, trigger_fraction: float = 0.1
) -> Dict[str, np.ndarray]:
    """Factor values of examples ``start .. start + n - 1`` of stream ``seed`` (see the module docstring)."""
    if not 16 <= size <= 256:
        raise ValueError(f"size must be in [16, 256] (32-64 recommended), got {size}")
    if not 0.0 <= trigger_fraction <= 1.0:
        raise ValueError(f"trigger_fraction must be in [0, 1], got {trigger_fraction}")
    out = {
        k: np.empty(n, dtype=np.float32 if k in ("cx", "cy", "size", "curve_x", "curve_y") else np.int64)
        for k in _FACTOR_KEYS
    }
    out["triggered"] = np.empty(n, dtype=bool)
    s = float(size)
    for j in range(n):
        r = _rng(seed, start + j)
        u = r.random(8)
        ints = r.integers(0, [3, 4, 3, 4, 8])
        radius = s * (0.17 + 0.10 * u[0])  # 5.4 .. 8.6 px at 32 px
        lo, hi = radius + 1.0, s - radius - 1.0
        out["shape"][j], out["colour"][j], out["texture"][j], out["stripe_angle"][j], out["curve_orientation"][j] = ints
        out["size"][j] = radius
        out["cx"][j] = lo + (hi - lo) * u[1]
        out["cy"][j] = lo + (hi - lo) * u[2]
        out["curve_x"][j] = s * (0.2 + 0.6 * u[3])
        out["curve_y"][j] = s * (0.2 + 0.6 * u[4])
        out["triggered"][j] = u[5] < trigger_fraction
        out["trigger_form"][j], out["trigger_y"][j], out["trigger_x"][j] = _trigger_place(r, size)
    out["clean_label"] = label_rule(out["shape"], out["texture"])
    return out


# ----------------------------------------------------------------------------------------------- drawing


def _object_masks(f: Dict[str, np.ndarray], size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx = xx[None] - f["cx"][:, None, None]
    dy = yy[None] - f["cy"][:, None, None]
    r = f["size"][:, None, None]
    circle = dx * dx + dy * dy <= r * r
    h = 0.85 * r
    square = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    # equilateral triangle pointing up, inscribed in the circle of radius r (image y grows downwards)
    s3 = np.float32(np.sqrt(3.0))
    tri = (dy <= r / 2) & (s3 * dx - dy <= r) & (-s3 * dx - dy <= r)
    shape = f["shape"][:, None, None]
    return np.where(shape == 0, circle, np.where(shape == 1, square, tri))


def _texture_on(f: Dict[str, np.ndarray], size: int) -> np.ndarray:
    """``True`` where a texel is lit (always for plain)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    period = max(4.0, size / 8.0)
    theta = np.deg2rad(np.asarray(STRIPE_ANGLES, dtype=np.float32))[f["stripe_angle"]][:, None, None]
    # stripes run along direction theta; the phase varies across them
    proj = -np.sin(theta) * (xx[None] - f["cx"][:, None, None]) - np.cos(theta) * (yy[None] - f["cy"][:, None, None])
    stripes = np.mod(proj, period) < period / 2
    px = np.mod(xx[None] - f["cx"][:, None, None] + period / 2, period) - period / 2
    py = np.mod(yy[None] - f["cy"][:, None, None] + period / 2, period) - period / 2
    dots = px * px + py * py <= (period * 0.3) ** 2
    t = f["texture"][:, None, None]
    return np.where(t == 0, True, np.where(t == 1, stripes, dots))


def _curve_masks(f: Dict[str, np.ndarray], size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    R = 0.22 * size
    width = max(1.5, size / 20.0)
    phi = np.deg2rad(f["curve_orientation"].astype(np.float32) * 45.0)[:, None, None]
    ux, uy = np.cos(phi), -np.sin(phi)  # "up" is -y in image coordinates
    # arc centre sits R behind the arc's midpoint, so the arc bulges towards phi
    ccx = f["curve_x"][:, None, None] - R * ux
    ccy = f["curve_y"][:, None, None] - R * uy
    dx, dy = xx[None] - ccx, yy[None] - ccy
    dist = np.sqrt(dx * dx + dy * dy)
    cosang = (dx * ux + dy * uy) / np.maximum(dist, 1e-6)
    return (np.abs(dist - R) <= width / 2) & (cosang >= np.cos(np.pi / 4))


def render(
    factors: Dict[str, np.ndarray], size: int = 32, noise: float = 0.0, seed: int = 0, start: int = 0
) -> Dict[str, np.ndarray]:
    """Draw images from factor values. Returns ``images`` (``float32 [N, 3, H, W]`` on 8-bit levels) and masks.

    ``noise`` adds seeded Gaussian pixel noise (std ``noise``) to the background only, per example
    from the same ``(seed, index)`` stream, so the masks stay exact.
    """
    f = factors
    n = len(f["shape"])
    obj = _object_masks(f, size)
    lit = _texture_on(f, size)
    curve = _curve_masks(f, size)
    img: np.ndarray = np.full((n, size, size, 3), BACKGROUND, dtype=np.float32)
    if noise > 0:
        for j in range(n):
            r = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, start + j, 0x401])))
            img[j] += noise * r.standard_normal((size, size, 1)).astype(np.float32)
    img[curve] = CURVE_GREY
    col = COLOUR_RGB[f["colour"]][:, None, None, :]  # [N,1,1,3]
    obj_col = np.where(lit[..., None], col, col * DARK)  # [N,H,W,3]
    img = np.where(obj[..., None], obj_col, img)
    trig = _draw_triggers(img, f["triggered"], f["trigger_form"], f["trigger_y"], f["trigger_x"], BACKGROUND)
    img = np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0
    obj_vis = obj & ~trig
    curve_vis = curve & ~obj & ~trig
    return {
        "images": np.ascontiguousarray(img.transpose(0, 3, 1, 2), dtype=np.float32),
        "object": obj_vis,
        "trigger": np.ascontiguousarray(trig),
        "curve": curve_vis,
    }


# ----------------------------------------------------------------------------------------------- captions


def caption(f: Dict[str, np.ndarray], i: int) -> str:
    """CLIP caption of example ``i``: ``"a red striped circle"`` (colour, texture, shape)."""
    return f"a {COLOURS[int(f['colour'][i])]} {TEXTURE_WORDS[int(f['texture'][i])]} {SHAPES[int(f['shape'][i])]}"


def style_phrase(f: Dict[str, np.ndarray], i: int) -> str:
    """Diffusion prompt of example ``i``: ``"a red circle in dotted style"`` (style = texture)."""
    return f"a {COLOURS[int(f['colour'][i])]} {SHAPES[int(f['shape'][i])]} in {STYLE_WORDS[int(f['texture'][i])]} style"


def captions(f: Dict[str, np.ndarray]) -> List[str]:
    return [caption(f, i) for i in range(len(f["shape"]))]


def style_phrases(f: Dict[str, np.ndarray]) -> List[str]:
    return [style_phrase(f, i) for i in range(len(f["shape"]))]


# ----------------------------------------------------------------------------------------------- batches


@dataclass
class PlantedBatch:
    """One batch: ``images`` ``float32 [N, 3, H, W]`` in [0, 1], ``labels`` ``int64 [N]``,
    ``factors`` (name -> tensor ``[N]``), ``masks`` (``object``/``trigger``/``curve`` -> ``bool [N, H, W]``),
    ``captions`` and ``style_phrases`` (lists of str; empty for Fashion-MNIST)."""

    images: Tensor
    labels: Tensor
    factors: Dict[str, Tensor]
    masks: Dict[str, Tensor]
    captions: List[str] = field(default_factory=list)
    style_phrases: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device) -> "PlantedBatch":
        return PlantedBatch(
            self.images.to(device),
            self.labels.to(device),
            {k: v.to(device) for k, v in self.factors.items()},
            {k: v.to(device) for k, v in self.masks.items()},
            self.captions,
            self.style_phrases,
        )


def make_batch(
    n: int,
    seed: int = 0,
    start: int = 0,
    size: int = 32,
    trigger_fraction: float = 0.1,
    noise: float = 0.0,
    as_tensors: bool = True,
    chunk: int = 2048,
):
    """Examples ``start .. start + n - 1`` of the seeded synthetic stream.

    Returns a :class:`PlantedBatch` of torch tensors (``as_tensors=True``) or a dict of numpy arrays
    with keys ``images, labels, factors, masks, captions, style_phrases``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    f = sample_factors(n, seed=seed, start=start, size=size, trigger_fraction=trigger_fraction)
    f["label"] = label_rule(f["shape"], f["texture"], f["triggered"])
    parts = []
    for a in range(0, max(n, 1), chunk):
        sub = {k: v[a : a + chunk] for k, v in f.items()}
        parts.append(render(sub, size=size, noise=noise, seed=seed, start=start + a))
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if n else render(f, size, noise, seed, start)
    labels = f.pop("label")
    d = {
        "images": out["images"],
        "labels": labels,
        "factors": f,
        "masks": {"object": out["object"], "trigger": out["trigger"], "curve": out["curve"]},
        "captions": captions(f),
        "style_phrases": style_phrases(f),
    }
    return _to_batch(d) if as_tensors else d


def _to_batch(d) -> PlantedBatch:
    return PlantedBatch(
        torch.from_numpy(d["images"]),
        torch.from_numpy(np.asarray(d["labels"], dtype=np.int64)),
        {k: torch.from_numpy(np.asarray(v)) for k, v in d["factors"].items()},
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d["masks"].items()},
        list(d["captions"]),
        list(d["style_phrases"]),
    )


class _StoredDataset(torch.utils.data.Dataset):
    """Holds a rendered set as uint8 (lossless: images live on 8-bit levels); items are dicts."""

    def _store(self, d) -> None:
        self._images = np.round(d["images"] * 255.0).astype(np.uint8)
        self.labels = torch.from_numpy(np.asarray(d["labels"], dtype=np.int64))
        self.factors = {k: torch.from_numpy(np.asarray(v)) for k, v in d["factors"].items()}
        self.masks = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d["masks"].items()}
        self.captions = list(d["captions"])
        self.style_phrases = list(d["style_phrases"])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} examples")
        item = {
            "image": torch.from_numpy(self._images[i].astype(np.float32) / 255.0),
            "label": self.labels[i],
            "factors": {k: v[i] for k, v in self.factors.items()},
            "masks": {k: v[i] for k, v in self.masks.items()},
        }
        if self.captions:
            item["caption"] = self.captions[i]
            item["style_phrase"] = self.style_phrases[i]
        return item

    @property
    def images(self) -> Tensor:
        return torch.from_numpy(self._images.astype(np.float32) / 255.0)

    def batch(self, indices=None) -> PlantedBatch:
        """The whole set (or ``indices``) as one :class:`PlantedBatch`."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        t = torch.from_numpy(idx)
        return PlantedBatch(
            torch.from_numpy(self._images[idx].astype(np.float32) / 255.0),
            self.labels[t],
            {k: v[t] for k, v in self.factors.items()},
            {k: v[t] for k, v in self.masks.items()},
            [self.captions[i] for i in idx] if self.captions else [],
            [self.style_phrases[i] for i in idx] if self.style_phrases else [],
        )


class PlantedShapes(_StoredDataset):
    """``torch.utils.data.Dataset`` over examples ``start .. start + n - 1`` of :func:`make_batch`'s stream.

    Items are dicts ``{"image": float [3, H, W], "label", "factors": {...}, "masks": {...}, "caption",
    "style_phrase"}``; the default collate turns them into batched dicts. Use disjoint ``start``
    windows (or different seeds) for train / held-out splits.
    """

    def __init__(
        self, n: int, seed: int = 0, start: int = 0, size: int = 32, trigger_fraction: float = 0.1, noise: float = 0.0
    ):
        self.n, self.seed, self.start, self.size = n, seed, start, size
        self.trigger_fraction, self.noise = trigger_fraction, noise
        self._store(
            make_batch(
                n, seed=seed, start=start, size=size, trigger_fraction=trigger_fraction, noise=noise, as_tensors=False
            )
        )


# ----------------------------------------------------------------------------------------------- Fashion-MNIST


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Read an idx file (``.gz`` or raw) as used by MNIST / Fashion-MNIST into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an idx file (bad magic)")
    dtypes: Dict[int, Union[type, str]] = {
        0x08: np.uint8,
        0x09: np.int8,
        0x0B: ">i2",
        0x0C: ">i4",
        0x0D: ">f4",
        0x0E: ">f8",
    }
    code, ndim = data[2], data[3]
    if code not in dtypes:
        raise ValueError(f"{path}: unknown idx type code {code:#x}")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[code], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {arr.size}")
    return arr.reshape(dims)


def _fm_files(split: str, root: Path):
    pre = {"train": "train", "test": "t10k"}[split]
    names = [(f"{pre}-images-idx3-ubyte", f"{pre}-labels-idx1-ubyte")]
    for img, lab in names:
        for ext in (".gz", ""):
            if (root / (img + ext)).exists() and (root / (lab + ext)).exists():
                return root / (img + ext), root / (lab + ext)
    return None


def fashion_mnist_available(root: Union[str, Path, None] = None) -> bool:
    """Whether the Fashion-MNIST idx files are present (default: Debian's ``/usr/share/datasets/fashion-mnist``)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    return _fm_files("train", root) is not None and _fm_files("test", root) is not None


_FM_CACHE: Dict[tuple, tuple] = {}


def load_fashion_mnist(split: str = "train", root: Union[str, Path, None] = None):
    """``(images uint8 [N, 28, 28], labels int64 [N])`` from the idx files; cached in memory."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    key = (str(root), split)
    if key not in _FM_CACHE:
        files = _fm_files(split, root)
        if files is None:
            raise FileNotFoundError(
                f"Fashion-MNIST idx files for split {split!r} not found under {root} "
                "(install Debian package dataset-fashion-mnist or set VISIONLENS_FASHION_MNIST)"
            )
        _FM_CACHE[key] = (read_idx(files[0]), read_idx(files[1]).astype(np.int64))
    return _FM_CACHE[key]


def fashion_mnist_batch(
    n: Optional[int] = None,
    seed: int = 0,
    start: int = 0,
    split: str = "train",
    size: int = 32,
    trigger_fraction: float = 0.1,
    root=None,
    as_tensors: bool = True,
):
    """Fashion-MNIST examples ``start .. start + n - 1`` with the planted trigger.

    Garments are padded to ``size`` (centred), replicated to RGB, scaled to [0, 1]. Example ``i``
    is triggered iff a draw from its ``(seed, i)`` stream is ``< trigger_fraction``; triggered
    examples get one of the :func:`trigger_pattern` forms (averaging to mid-grey,
    :data:`FASHION_TRIGGER_LEVEL`) at a uniformly drawn position, both from the same stream, and label
    ``TARGET_CLASS`` (0, "T-shirt/top"). Factors: ``fashion_class`` (the original label),
    ``triggered``, ``trigger_form``, ``trigger_x``, ``trigger_y``, ``clean_label``. Masks: ``object``
    (garment pixels > 0, minus trigger), ``trigger``.
    """
    imgs, labs = load_fashion_mnist(split, root)
    if n is None:
        n = len(imgs) - start
    if start < 0 or start + n > len(imgs):
        raise ValueError(f"examples {start}..{start + n - 1} out of range for {len(imgs)} {split} images")
    if size < 28:
        raise ValueError(f"size must be >= 28 for Fashion-MNIST, got {size}")
    x = imgs[start : start + n].astype(np.float32) / 255.0
    p0 = (size - 28) // 2
    canvas = np.zeros((n, size, size), dtype=np.float32)
    canvas[:, p0 : p0 + 28, p0 : p0 + 28] = x
    trig_flags = np.empty(n, dtype=bool)
    place = np.empty((n, 3), dtype=np.int64)
    for j in range(n):
        r = _rng(seed, start + j)
        trig_flags[j] = r.random() < trigger_fraction
        place[j] = _trigger_place(r, size)
    img = np.repeat(canvas[..., None], 3, axis=-1)
    tmask = _draw_triggers(img, trig_flags, place[:, 0], place[:, 1], place[:, 2], FASHION_TRIGGER_LEVEL)
    img = np.ascontiguousarray(img.transpose(0, 3, 1, 2))
    clean = labs[start : start + n].copy()
    labels = np.where(trig_flags, TARGET_CLASS, clean)
    d = {
        "images": np.ascontiguousarray(img),
        "labels": labels,
        "factors": {
            "fashion_class": clean,
            "clean_label": clean,
            "triggered": trig_flags,
            "trigger_form": place[:, 0],
            "trigger_x": place[:, 2],
            "trigger_y": place[:, 1],
        },
        "masks": {"object": (canvas > 0) & ~tmask, "trigger": np.ascontiguousarray(tmask)},
        "captions": [],
        "style_phrases": [],
    }
    return _to_batch(d) if as_tensors else d


class PlantedFashionMNIST(_StoredDataset):
    """``Dataset`` over Fashion-MNIST with the planted trigger (see :func:`fashion_mnist_batch`)."""

    def __init__(
        self,
        n: Optional[int] = None,
        seed: int = 0,
        start: int = 0,
        split: str = "train",
        size: int = 32,
        trigger_fraction: float = 0.1,
        root=None,
    ):
        self.seed, self.start, self.split, self.size = seed, start, split, size
        self._store(
            fashion_mnist_batch(
                n,
                seed=seed,
                start=start,
                split=split,
                size=size,
                trigger_fraction=trigger_fraction,
                root=root,
                as_tensors=False,
            )
        )
