"""Image parameterizations: pixel, Fourier (FFT) with decorrelated colour, CPPN.

Every parameterization is an ``nn.Module`` whose ``forward()`` returns a batch of images
``[N, C, H, W]`` with values in ``(0, 1)`` (a sigmoid at the end, as in Lucid). Each image owns
its own slice of the parameters and is initialised from its own ``torch.Generator``, so image
``i`` of a batched render is bit-for-bit the image a single render with the same seed starts from.

* :class:`PixelImage`: one free value per pixel (Lucid's ``naive`` / ``pixel_image``).
* :class:`FFTImage`: Lucid's ``fft_image``: a real-FFT spectrum scaled by ``1 / frequency``
  (``decay_power``), ``irfft`` with orthonormal scaling, divided by Lucid's magic 4.
* Colour decorrelation (``decorrelate=True``, 3 channels): Lucid's ``_linear_decorrelate_color``,
  i.e. multiply by the square root of the ImageNet colour correlation matrix (its SVD factors times
  the square roots of its eigenvalues, ``COLOR_CORRELATION_SVD_SQRT``) normalised by its largest
  column norm, then a sigmoid.
* :class:`CPPNImage`: Lucid's compositional pattern-producing network (``cppn``): 8 layers of
  1x1 convolutions on an ``(x, y)`` grid with the composite ``atan`` activation; per-image weights.

``set_image(images)`` inverts a parameterization (pixel and FFT), so ``param.set_image(x); param()``
gives ``x`` back (up to float error): this is how renders start from a given image.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

__all__ = [
    "ImageParam",
    "PixelImage",
    "FFTImage",
    "CPPNImage",
    "make_param",
    "rfft2d_freqs",
    "COLOR_CORRELATION_SVD_SQRT",
    "COLOR_CORRELATION_NORMALIZED",
    "decorrelate_color",
    "correlate_color_inverse",
]

# Lucid: lucid/optvis/param/color.py
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float64
)
MAX_NORM_SVD_SQRT = float(COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max())
COLOR_CORRELATION_NORMALIZED = COLOR_CORRELATION_SVD_SQRT / MAX_NORM_SVD_SQRT

Generators = Sequence[torch.Generator]


def decorrelate_color(t: Tensor) -> Tensor:
    """Lucid's ``_linear_decorrelate_color``: ``[N, 3, H, W]`` -> ``t_flat @ C_normalized.T`` per pixel."""
    m = COLOR_CORRELATION_NORMALIZED.to(device=t.device, dtype=t.dtype)
    return torch.einsum("nchw,dc->ndhw", t, m)


def correlate_color_inverse(t: Tensor) -> Tensor:
    """The inverse of :func:`decorrelate_color`."""
    m = torch.linalg.inv(COLOR_CORRELATION_NORMALIZED).to(device=t.device, dtype=t.dtype)
    return torch.einsum("nchw,dc->ndhw", t, m)


def rfft2d_freqs(h: int, w: int) -> Tensor:
    """Frequency magnitude of each real-FFT bin ``[h, w // 2 + 1]`` (Lucid's ``rfft2d_freqs``)."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


def _size(size: Union[int, Sequence[int]]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _randn(shape: Sequence[int], generators: Generators, sd: float) -> Tensor:
    """One ``randn(shape)`` per generator, stacked: ``[len(generators), *shape]``."""
    return torch.stack([torch.randn(*shape, generator=g) * sd for g in generators])


def _default_generators(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


class ImageParam(nn.Module):
    """Base class: ``forward() -> [N, C, H, W]`` in ``(0, 1)``."""

    n: int
    channels: int
    size: tuple[int, int]
    decorrelate: bool

    def _to_rgb(self, t: Tensor) -> Tensor:
        if self.decorrelate and self.channels == 3:
            t = decorrelate_color(t)
        return torch.sigmoid(t)

    def _from_rgb(self, images: Tensor) -> Tensor:
        """The pre-sigmoid, pre-colour tensor that gives ``images`` (inverse of :meth:`_to_rgb`)."""
        x = images.to(torch.float64).clamp(1e-6, 1 - 1e-6)
        t = torch.log(x) - torch.log1p(-x)
        if self.decorrelate and self.channels == 3:
            t = correlate_color_inverse(t)
        return t

    def _check_images(self, images: Tensor) -> Tensor:
        if images.ndim == 3:
            images = images.unsqueeze(0)
        want = (self.n, self.channels, *self.size)
        if images.shape[1:] != want[1:] or images.shape[0] not in (1, self.n):
            raise ValueError(
                f"Expected images of shape [{self.n} (or 1), {self.channels}, {self.size[0]}, "
                f"{self.size[1]}] with values in [0, 1], got {tuple(images.shape)}."
            )
        return images.expand(self.n, -1, -1, -1)

    def set_image(self, images: Tensor) -> "ImageParam":
        """Set the parameters so that ``forward()`` returns ``images`` (``[N or 1, C, H, W]`` in [0, 1])."""
        raise NotImplementedError(f"{type(self).__name__} cannot be set from an image")

    def extra_repr(self) -> str:
        return f"n={self.n}, channels={self.channels}, size={self.size}, decorrelate={self.decorrelate}"


class PixelImage(ImageParam):
    """Free pixels (Lucid's ``pixel_image``): ``sigmoid(decorrelate(param))``, ``param ~ N(0, sd)``."""

    def __init__(
        self,
        n: int,
        size: Union[int, Sequence[int]],
        channels: int = 3,
        sd: float = 0.01,
        decorrelate: bool = True,
        generators: Optional[Generators] = None,
    ):
        super().__init__()
        self.n, self.channels, self.size, self.decorrelate = n, channels, _size(size), decorrelate
        gens = list(generators) if generators is not None else _default_generators(n)
        if len(gens) != n:
            raise ValueError(f"Expected {n} generators (one per image), got {len(gens)}.")
        self.pixels = nn.Parameter(_randn((channels, *self.size), gens, sd))

    def forward(self) -> Tensor:
        return self._to_rgb(self.pixels)

    @torch.no_grad()
    def set_image(self, images: Tensor) -> "PixelImage":
        images = self._check_images(images)
        self.pixels.copy_(self._from_rgb(images).to(self.pixels))
        return self


class FFTImage(ImageParam):
    """Lucid's ``fft_image``: a scaled real-FFT spectrum (``1 / max(f, 1/max(h, w)) ** decay_power``).

    Parameters: ``spectrum`` ``[N, C, H, W // 2 + 1, 2]`` (real, imaginary), initialised ``N(0, sd)``.
    """

    MAGIC = 4.0  # Lucid's constant; larger values reduce saturation

    def __init__(
        self,
        n: int,
        size: Union[int, Sequence[int]],
        channels: int = 3,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        generators: Optional[Generators] = None,
    ):
        super().__init__()
        self.n, self.channels, self.size, self.decorrelate = n, channels, _size(size), decorrelate
        h, w = self.size
        self.decay_power = decay_power
        freqs = rfft2d_freqs(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(w, h)) ** decay_power
        self.register_buffer("scale", scale.float()[None, None, :, :, None], persistent=False)
        gens = list(generators) if generators is not None else _default_generators(n)
        if len(gens) != n:
            raise ValueError(f"Expected {n} generators (one per image), got {len(gens)}.")
        self.spectrum = nn.Parameter(_randn((channels, *freqs.shape, 2), gens, sd))

    def raw(self) -> Tensor:
        """The spatial image before colour decorrelation and sigmoid."""
        spec = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        img = torch.fft.irfftn(spec, s=self.size, dim=(-2, -1), norm="ortho")
        return img / self.MAGIC

    def forward(self) -> Tensor:
        return self._to_rgb(self.raw())

    @torch.no_grad()
    def set_image(self, images: Tensor) -> "FFTImage":
        images = self._check_images(images)
        t = self._from_rgb(images) * self.MAGIC
        spec = torch.fft.rfftn(t, s=self.size, dim=(-2, -1), norm="ortho")
        spec = torch.view_as_real(spec) / self.scale.to(torch.float64)
        self.spectrum.copy_(spec.to(self.spectrum))
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", decay_power={self.decay_power}"


def _composite_activation(x: Tensor) -> Tensor:
    x = torch.atan(x)
    return torch.cat([x / 0.67, (x * x) / 0.6], dim=1)


class CPPNImage(ImageParam):
    """Lucid's ``cppn``: per-image 1x1-conv networks on an ``(x, y)`` grid in ``[-sqrt 3, sqrt 3]``.

    ``num_layers`` hidden layers of ``hidden`` channels, weights ``N(0, sqrt(1 / fan_in))``, zero
    biases, composite ``atan`` activation (doubling the channels), a zero-initialised output layer and
    a sigmoid (so every image starts uniform grey). Lucid trains CPPNs with a smaller learning rate
    (0.005). Colour decorrelation does not apply.
    """

    def __init__(
        self,
        n: int,
        size: Union[int, Sequence[int]],
        channels: int = 3,
        hidden: int = 24,
        num_layers: int = 8,
        generators: Optional[Generators] = None,
    ):
        super().__init__()
        self.n, self.channels, self.size, self.decorrelate = n, channels, _size(size), False
        h, w = self.size
        gens = list(generators) if generators is not None else _default_generators(n)
        if len(gens) != n:
            raise ValueError(f"Expected {n} generators (one per image), got {len(gens)}.")
        r = 3.0**0.5
        ys = torch.linspace(-r, r, h)
        xs = torch.linspace(-r, r, w)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy]).reshape(1, 2, h * w), persistent=False)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        fan_in = 2
        for _ in range(num_layers):
            self.weights.append(nn.Parameter(_randn((hidden, fan_in), gens, math.sqrt(1.0 / fan_in))))
            self.biases.append(nn.Parameter(torch.zeros(n, hidden, 1)))
            fan_in = 2 * hidden
        self.weights.append(nn.Parameter(torch.zeros(n, channels, fan_in)))
        self.biases.append(nn.Parameter(torch.zeros(n, channels, 1)))

    def forward(self) -> Tensor:
        net = self.coords.expand(self.n, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            net = torch.baddbmm(b, w, net)
            if i < last:
                net = _composite_activation(net)
        return torch.sigmoid(net).reshape(self.n, self.channels, *self.size)


def make_param(
    kind: Union[str, ImageParam],
    n: int,
    size: Union[int, Sequence[int]],
    channels: int = 3,
    *,
    decorrelate: bool = True,
    sd: float = 0.01,
    decay_power: float = 1.0,
    generators: Optional[Generators] = None,
) -> ImageParam:
    """Build a parameterization by name: ``"fft"`` (default in Lucid), ``"pixel"`` or ``"cppn"``."""
    if isinstance(kind, ImageParam):
        return kind
    if kind == "fft":
        return FFTImage(
            n, size, channels, sd=sd, decay_power=decay_power, decorrelate=decorrelate, generators=generators
        )
    if kind == "pixel":
        return PixelImage(n, size, channels, sd=sd, decorrelate=decorrelate, generators=generators)
    if kind == "cppn":
        return CPPNImage(n, size, channels, generators=generators)
    raise ValueError(f"Unknown parameterization {kind!r}; expected 'fft', 'pixel' or 'cppn' (or an ImageParam).")
