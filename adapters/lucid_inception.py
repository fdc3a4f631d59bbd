"""The literature's InceptionV1 (Lucid's ``InceptionV1`` / TF ``inception5h``), as a PyTorch module.

This is the network that Lucid, OpenAI Microscope and the Circuits thread study (``mixed4a:476``,
the curve detectors ``mixed3b:379`` ...). It is *not* torchvision's ``googlenet``: no batch norm,
local response norm after ``conv2d0`` / ``conv2d2``, TensorFlow "SAME" padding, different widths
(mixed4a has 508 channels, torchvision's inception4a 512) and 1008 classes.

Parameter names and shapes follow the widely shared PyTorch port of Lucid's weights (ProGamerGov's
``inception5h.pth``, the state dict Lucent's ``modelzoo.inceptionv1`` loads), so that file loads
with ``strict=True``::

    model = load_lucid_inceptionv1("inception5h.pth")   # local file; random weights without a path

Module names follow the port as well (``conv2d0_pre_relu_conv``, ``conv2d0`` (ReLU), ``maxpool0``,
``localresponsenorm0``, ``mixed4a_3x3_bottleneck_pre_relu_conv``, ``mixed4a_3x3`` (ReLU),
``mixed4a_pool``, ``mixed4a`` (concat), ``softmax2_pre_activation_matmul``), so Lucent layer names
resolve unchanged through the module-tree hooks (``mixed4a`` -> ``mixed4a.hook_out``).

Differences from the port, none of which changes a result at 224 px:

* ``forward`` returns the logits (``softmax2_pre_activation_matmul``); Lucent's returns the softmax.
* The final pool is a global average pool (``avgpool0``, output ``[batch, 1024]``) instead of a
  fixed 7x7 window, so any input size >= 32 px works (Lucent's breaks below 224 px).
* 3x3 / 5x5 convs pad inside ``nn.Conv2d`` instead of a separate ``F.pad`` (same zeros).
* ``redirected_relu=True`` reproduces Lucent's default gradient trick for feature visualization
  (ReLUs pass 0.1 x the gradient where their input is negative); the default is the true gradient.

Input: RGB scaled like Lucid, ``pixels_0_1 * 255 - 117`` (value range ``[-117, 138]``); in
mean/std terms ``mean = 117/255``, ``std = 1/255`` per channel (this is what ``model.cfg`` says).

Lucent's own module (``lucent.modelzoo.inceptionv1.InceptionV1``) is recognized too
(:func:`is_lucid_inceptionv1`: Lucid's module names and parameter shapes), so
``HookedVisionModel.from_module(InceptionV1())`` gets the Lucid adapter, these names and this input
convention. Lucent does not subtract the mean inside the model either: its ``render_vis`` appends
``transform.preprocess_inceptionv1()`` (``x * 255 - 117``) to the transforms of an ``InceptionV1``
and upsamples images below 224 px to 224 px. Its ``forward`` returns the softmax and runs only at
224 px (a fixed 7x7 average pool); hooks up to ``mixed5b`` work at any size >= 32 px.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.checkpoints import load_state_dict_file

__all__ = [
    "LucidInceptionV1",
    "load_lucid_inceptionv1",
    "is_lucid_inceptionv1",
    "lucid_parameter_shapes",
    "MIXED_SPECS",
    "MIXED_CHANNELS",
    "LUCID_MEAN",
    "LUCID_STD",
]

LUCID_MEAN = (117.0 / 255.0,) * 3
LUCID_STD = (1.0 / 255.0,) * 3

# name: (in, 1x1, 3x3_bottleneck, 3x3, 5x5_bottleneck, 5x5, pool_reduce), from Lucid's graph / the port
MIXED_SPECS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "mixed3a": (192, 64, 96, 128, 16, 32, 32),
    "mixed3b": (256, 128, 128, 192, 32, 96, 64),
    "mixed4a": (480, 192, 96, 204, 16, 48, 64),
    "mixed4b": (508, 160, 112, 224, 24, 64, 64),
    "mixed4c": (512, 128, 128, 256, 24, 64, 64),
    "mixed4d": (512, 112, 144, 288, 32, 64, 64),
    "mixed4e": (528, 256, 160, 320, 32, 128, 128),
    "mixed5a": (832, 256, 160, 320, 48, 128, 128),
    "mixed5b": (832, 384, 192, 384, 48, 128, 128),
}
MIXED_CHANNELS = {name: s[1] + s[3] + s[5] + s[6] for name, s in MIXED_SPECS.items()}
# stride-2 "SAME" max pools between groups of mixed blocks, named as in Lucid
_POOL_BEFORE = {"mixed4a": "maxpool4", "mixed5a": "maxpool10"}
# branch suffixes in the order Lucid concatenates them
BRANCH_SUFFIXES = ("1x1", "3x3", "5x5", "pool_reduce")


def lucid_parameter_shapes(num_classes: int = 1008) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of Lucid's InceptionV1 (the port's / Lucent's state-dict keys, 116 of them)."""
    convs: dict[str, tuple[int, int, int]] = {"conv2d0": (64, 3, 7), "conv2d1": (64, 64, 1), "conv2d2": (192, 64, 3)}
    for n, (cin, c1, c3r, c3, c5r, c5, cp) in MIXED_SPECS.items():
        convs.update(
            {
                f"{n}_1x1": (c1, cin, 1),
                f"{n}_3x3_bottleneck": (c3r, cin, 1),
                f"{n}_3x3": (c3, c3r, 3),
                f"{n}_5x5_bottleneck": (c5r, cin, 1),
                f"{n}_5x5": (c5, c5r, 5),
                f"{n}_pool_reduce": (cp, cin, 1),
            }
        )
    shapes: dict[str, tuple[int, ...]] = {}
    for n, (cout, cin, k) in convs.items():
        shapes[f"{n}_pre_relu_conv.weight"] = (cout, cin, k, k)
        shapes[f"{n}_pre_relu_conv.bias"] = (cout,)
    shapes["softmax2_pre_activation_matmul.weight"] = (num_classes, MIXED_CHANNELS["mixed5b"])
    shapes["softmax2_pre_activation_matmul.bias"] = (num_classes,)
    return shapes


# modules the adapter hooks by name, besides the convolutions
_NAMED_MODULES = ("conv2d0", "conv2d1", "conv2d2") + tuple(
    f"{n}{sfx}"
    for n in MIXED_SPECS
    for sfx in ("", "_1x1", "_3x3_bottleneck", "_3x3", "_5x5_bottleneck", "_5x5", "_pool_reduce")
)


def is_lucid_inceptionv1(module: nn.Module) -> bool:
    """True for :class:`LucidInceptionV1` and for modules laid out like it, i.e. Lucent's
    ``modelzoo.inceptionv1.InceptionV1`` (ProGamerGov's port): Lucid's parameter names and shapes
    (any number of classes) and the named ReLU / concat modules. Nothing is imported from Lucent."""
    if isinstance(module, LucidInceptionV1):
        return True
    children = module._modules
    if any(children.get(n) is None for n in _NAMED_MODULES):
        return False
    got = {k: tuple(p.shape) for k, p in module.named_parameters()}
    fc = got.get("softmax2_pre_activation_matmul.weight")
    if fc is None or len(fc) != 2:
        return False
    return got == lucid_parameter_shapes(num_classes=fc[0])


class _RedirectedReLUFn(torch.autograd.Function):
    """ReLU whose backward lets 0.1 x the gradient through where the input is negative (Lucid's trick)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return torch.where(x < 0, grad * 0.1, grad)


class LucidReLU(nn.Module):
    """ReLU (out of place); ``redirected=True`` uses Lucid's redirected gradient."""

    def __init__(self, redirected: bool = False):
        super().__init__()
        self.redirected = redirected

    def forward(self, x: Tensor) -> Tensor:
        return _RedirectedReLUFn.apply(x) if self.redirected else F.relu(x)

    def extra_repr(self) -> str:
        return "redirected=True" if self.redirected else ""


class SameMaxPool2d(nn.Module):
    """TF-style max pool: pad with -inf (right/bottom for stride 2, all sides for stride 1), no implicit padding."""

    def __init__(self, kernel_size: int, stride: int, pad: tuple[int, int, int, int]):
        super().__init__()
        self.kernel_size, self.stride, self.pad = kernel_size, stride, pad

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.pad(x, self.pad, value=float("-inf")), self.kernel_size, stride=self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad}"


class Concat(nn.Module):
    """Channel concatenation of the branch outputs (an inception block's output)."""

    def forward(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1)


class GlobalAvgPool(nn.Module):
    """Mean over H, W: ``[batch, C, H, W] -> [batch, C]`` (Lucid's ``avgpool0`` + reshape at 224 px)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(-2, -1))


class LucidInceptionV1(nn.Module):
    """Lucid's InceptionV1 (GoogLeNet as trained for ``inception5h``): see the module docstring."""

    def __init__(self, num_classes: int = 1008, redirected_relu: bool = False):
        super().__init__()
        self.num_classes = num_classes
        relu = lambda: LucidReLU(redirected_relu)  # noqa: E731

        def conv(name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
            self.add_module(f"{name}_pre_relu_conv", nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
            self.add_module(name, relu())

        # stem: conv2d0 (7x7/2, SAME pad done in forward) -> maxpool0 -> LRN -> conv2d1 (1x1) -> conv2d2 (3x3)
        conv("conv2d0", 3, 64, 7, stride=2)
        self.maxpool0 = SameMaxPool2d(3, 2, (0, 1, 0, 1))
        self.localresponsenorm0 = nn.LocalResponseNorm(9, alpha=9.99999974738e-05, beta=0.5, k=1.0)
        conv("conv2d1", 64, 64, 1)
        conv("conv2d2", 64, 192, 3, padding=1)
        self.localresponsenorm1 = nn.LocalResponseNorm(9, alpha=9.99999974738e-05, beta=0.5, k=1.0)
        self.maxpool1 = SameMaxPool2d(3, 2, (0, 1, 0, 1))
        for name, (cin, c1, c3r, c3, c5r, c5, cp) in MIXED_SPECS.items():
            if name in _POOL_BEFORE:
                self.add_module(_POOL_BEFORE[name], SameMaxPool2d(3, 2, (0, 1, 0, 1)))
            conv(f"{name}_1x1", cin, c1, 1)
            conv(f"{name}_3x3_bottleneck", cin, c3r, 1)
            conv(f"{name}_3x3", c3r, c3, 3, padding=1)
            conv(f"{name}_5x5_bottleneck", cin, c5r, 1)
            conv(f"{name}_5x5", c5r, c5, 5, padding=2)
            self.add_module(f"{name}_pool", SameMaxPool2d(3, 1, (1, 1, 1, 1)))
            conv(f"{name}_pool_reduce", cin, cp, 1)
            self.add_module(name, Concat())
        self.avgpool0 = GlobalAvgPool()
        self.softmax2_pre_activation_matmul = nn.Linear(MIXED_CHANNELS["mixed5b"], num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random weights that keep activations alive through the ReLU stack (He init, zero biases);
        PyTorch's default conv init lets a random InceptionV1 collapse to an input-independent output."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    @property
    def mixed_names(self) -> tuple[str, ...]:
        return tuple(MIXED_SPECS)

    def _unit(self, name: str, x: Tensor) -> Tensor:
        return self._modules[name](self._modules[f"{name}_pre_relu_conv"](x))

    def _mixed(self, name: str, x: Tensor) -> Tensor:
        u = self._unit
        b1 = u(f"{name}_1x1", x)
        b3 = u(f"{name}_3x3", u(f"{name}_3x3_bottleneck", x))
        b5 = u(f"{name}_5x5", u(f"{name}_5x5_bottleneck", x))
        bp = u(f"{name}_pool_reduce", self._modules[f"{name}_pool"](x))
        return self._modules[name](b1, b3, b5, bp)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image ``[batch, 3, H, W]`` (Lucid scaling) -> ``mixed5b`` ``[batch, 1024, H/32, W/32]``."""
        x = self._unit("conv2d0", F.pad(x, (2, 3, 2, 3)))
        x = self.localresponsenorm0(self.maxpool0(x))
        x = self._unit("conv2d1", x)
        x = self._unit("conv2d2", x)
        x = self.maxpool1(self.localresponsenorm1(x))
        for name in MIXED_SPECS:
            if name in _POOL_BEFORE:
                x = self._modules[_POOL_BEFORE[name]](x)
            x = self._mixed(name, x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[batch, num_classes]`` (``softmax2_pre_activation``; apply ``softmax(-1)`` for Lucent's output)."""
        return self.softmax2_pre_activation_matmul(self.avgpool0(self.forward_features(x)))


def load_lucid_inceptionv1(
    path: Optional[Union[str, os.PathLike, Mapping[str, Tensor]]] = None,
    *,
    redirected_relu: bool = False,
    eval: bool = True,
    strict: bool = True,
) -> LucidInceptionV1:
    """Build :class:`LucidInceptionV1`: random weights without ``path``, else a local state dict.

    ``path`` is a safetensors file, a torch file read with ``torch.load(weights_only=True)`` (e.g.
    the ``inception5h.pth`` that Lucent uses) or a state dict already in memory (e.g. a Lucent
    ``InceptionV1().state_dict()``); nothing is downloaded.
    """
    model = LucidInceptionV1(redirected_relu=redirected_relu)
    if path is not None:
        sd = dict(path) if isinstance(path, Mapping) else load_state_dict_file(path)
        n_cls = sd.get("softmax2_pre_activation_matmul.weight")
        if n_cls is not None and n_cls.shape[0] != model.num_classes:
            model = LucidInceptionV1(num_classes=int(n_cls.shape[0]), redirected_relu=redirected_relu)
        model.load_state_dict(sd, strict=strict)
    return model.eval() if eval else model
