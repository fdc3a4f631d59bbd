"""Weight explorer: channel-to-channel connection strengths, expanded weights, sparsity, NMF pictures.

* :func:`conv_layers`: the ``nn.Conv2d`` modules of a model in forward execution order.
* :func:`channel_strengths`: ``[out, in]`` strength of each connection of one conv layer, the
  ``L2`` (or ``L1`` / ``sum``) norm of the kernel ``W[out, in]`` (grouped convs: zero outside a group).
* :func:`adjacent_pairs`: pairs ``(a, b)`` of conv layers where ``b`` reads ``a``'s channels
  (the nearest earlier conv in execution order with ``a.out_channels == b.in_channels``; a
  heuristic for branching nets, exact for chains).
* :func:`top_connections`: a unit's strongest inputs (``direction="in"``) or outputs.
* :func:`expanded_weights`: the weights between two hooks along the model's *linear path* (Olah et
  al., "Visualizing Weights", Distill 2020: multiply the weights and ignore the nonlinearities).
  The convention, applied to every operation that touches the earlier hook's map, whether it is a
  module or a functional call in ``forward`` (it is enforced with a ``TorchFunctionMode``):

  - rectifiers (ReLU, ReLU6, LeakyReLU, GELU, SiLU, ELU, Mish, Hardswish, Softplus, Lucid's
    ``LucidReLU``) are the identity: the path a positive pre-activation takes;
  - max-pooling is the mean over the same window's real positions (a ``-inf`` padding, as in
    Lucid's ``SameMaxPool2d``, is excluded from the mean as max-pooling never picks it);
  - linear operations (convs, linear layers, eval-mode BatchNorm, sums, concatenation, average
    pooling, reshapes, products with constants such as layer scale) run unchanged;
  - anything else that touches the map (local response norm, LayerNorm, GroupNorm, attention,
    sigmoid gates, a product of two input-dependent tensors, an op it cannot see) raises
    :class:`InputDependentError` naming the op and its module; ``norms="no_scale"`` opts into a
    second convention for norms (drop their division by the input's norm).

  The result (the Jacobian of the later hook's channel, its spatial mean or centre location, with
  respect to the earlier map, by autograd) is therefore independent of the input by construction.
  With 1x1 convs ``matrix == W2 @ W1``; with kxk convs the centre Jacobian is the composed kernel.
* :func:`motifs`: a motif search across a layer pair: strongest positive and negative connections
  and per-unit sparsity (top-k mass, Gini, number of inputs carrying 90% of the weight).
* :func:`banner`: a unit's weight banner, its expanded-weight kernel per input unit, as an image.
* :func:`connection_sparsity`: per output unit, the fraction of total strength in its top-k inputs
  and the Gini coefficient of its input strengths.
* :func:`nmf_rgb`: pictures of weights: non-negative matrix factorisation (scikit-learn ``NMF``) of
  ``|W|`` over input channels into 3 factors, shown as RGB per output channel (a 3-channel first
  layer is shown directly).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = [
    "conv_layers",
    "channel_strengths",
    "adjacent_pairs",
    "top_connections",
    "expanded_weights",
    "ExpandedWeights",
    "connection_sparsity",
    "gini",
    "nmf_rgb",
    "conv_hook",
    "InputDependentError",
    "motifs",
    "Motifs",
    "inputs_for_mass",
    "banner",
]


def _side(image_size: Any) -> int:
    """The height of ``cfg.image_size`` (a ``(H, W)`` pair, or a bare int some configs carry)."""
    return int(image_size) if isinstance(image_size, int) else int(image_size[0])


def conv_layers(model: Union[HookedVisionModel, nn.Module], image_size: int = 32) -> list[tuple[str, nn.Conv2d]]:
    """``[(module path, conv)]`` of ``model.source`` (or ``model``) in forward execution order."""
    src: nn.Module = getattr(model, "source", model)
    convs = {id(m): n for n, m in src.named_modules() if isinstance(m, nn.Conv2d)}
    order: list[str] = []
    handles = []
    for n, m in src.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None))
    try:
        cfg = getattr(model, "cfg", None)
        size = image_size
        if cfg is not None and cfg.image_size and not getattr(cfg, "dynamic_img_size", True):
            size = _side(cfg.image_size)
        first = next((m for m in src.modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            return []
        x = torch.zeros(1, first.in_channels, size, size, device=first.weight.device)
        was = src.training
        src.eval()
        try:
            with torch.no_grad():
                src(x)
        except Exception:
            order = [n for n in convs.values()]
        finally:
            src.train(was)
    finally:
        for h in handles:
            h.remove()
    mods = dict(src.named_modules())
    return [(n, mods[n]) for n in order]


def conv_hook(model: HookedVisionModel, module_path: str) -> Optional[str]:
    """The hook name recording the output of source module ``module_path`` (``None`` when there is none)."""
    name = f"{module_path}.hook_out"
    return name if name in getattr(model, "hook_dict", {}) else None


def _weight(conv_or_weight: Any) -> tuple[Tensor, int]:
    if isinstance(conv_or_weight, nn.Conv2d):
        return conv_or_weight.weight.detach(), int(conv_or_weight.groups)
    if isinstance(conv_or_weight, nn.Linear):
        return conv_or_weight.weight.detach()[:, :, None, None], 1
    w = torch.as_tensor(conv_or_weight).detach()
    if w.ndim == 2:
        w = w[:, :, None, None]
    if w.ndim != 4:
        raise VisionLensError(
            f"Expected a conv weight [out, in, kh, kw] (or a matrix [out, in]), got shape {tuple(w.shape)}."
        )
    return w, 1


def full_weight(conv_or_weight: Any) -> Tensor:
    """The weight as ``[out, in_total, kh, kw]``; grouped / depthwise convs are expanded with zeros."""
    w, groups = _weight(conv_or_weight)
    if groups == 1:
        return w
    out, in_g = w.shape[:2]
    full = w.new_zeros(out, in_g * groups, *w.shape[2:])
    per = out // groups
    for g in range(groups):
        full[g * per : (g + 1) * per, g * in_g : (g + 1) * in_g] = w[g * per : (g + 1) * per]
    return full


def channel_strengths(conv_or_weight: Any, norm: Literal["l2", "l1", "sum", "max"] = "l2") -> Tensor:
    """``[out, in]`` strength of each channel-to-channel connection: a norm of the kernel ``W[out, in]``."""
    w = full_weight(conv_or_weight).float().flatten(2)
    if norm == "l2":
        return w.norm(dim=2)
    if norm == "l1":
        return w.abs().sum(dim=2)
    if norm == "sum":
        return w.sum(dim=2)
    if norm == "max":
        return w.abs().amax(dim=2)
    raise VisionLensError(f"channel_strengths: norm must be one of l2, l1, sum, max; got {norm!r}.")


def adjacent_pairs(layers: Sequence[tuple[str, nn.Conv2d]]) -> list[tuple[str, str]]:
    """``(a, b)`` for each conv ``b`` and the nearest earlier conv ``a`` whose outputs it can read."""
    pairs = []
    for j, (nb, cb) in enumerate(layers):
        for na, ca in reversed(layers[:j]):
            if ca.out_channels == cb.in_channels:
                pairs.append((na, nb))
                break
    return pairs


def top_connections(
    strengths: Tensor, unit: int, k: int = 5, direction: Literal["in", "out"] = "in", signed: bool = False
) -> list[tuple[int, float]]:
    """``[(channel, strength)]`` of the ``k`` strongest inputs (row ``unit``) or outputs (column ``unit``)."""
    vec = strengths[unit] if direction == "in" else strengths[:, unit]
    key = vec if signed else vec.abs()
    order = torch.argsort(key.double(), descending=True, stable=True)[:k]
    return [(int(i), float(vec[i])) for i in order]


def gini(x: Tensor, dim: int = -1) -> Tensor:
    """Gini coefficient of non-negative values along ``dim`` (0 = uniform, -> 1 = one non-zero)."""
    x = x.abs().double().movedim(dim, -1)
    n = x.shape[-1]
    s = torch.sort(x, dim=-1).values
    total = s.sum(-1)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    g = (2 * (i * s).sum(-1) / (n * total.clamp_min(1e-300))) - (n + 1) / n
    return torch.where(total > 0, g, torch.zeros_like(g))


def connection_sparsity(strengths: Tensor, k: int = 5) -> dict[str, Tensor]:
    """Per output unit: ``topk_mass`` (share of the total ``|strength|`` in its top-k inputs) and ``gini``."""
    a = strengths.abs().double()
    k = min(k, a.shape[1])
    top = torch.topk(a, k, dim=1).values.sum(1)
    total = a.sum(1)
    mass = torch.where(total > 0, top / total.clamp_min(1e-300), torch.zeros_like(total))
    return {"topk_mass": mass, "gini": gini(a, dim=1), "k": torch.tensor(k)}


# ----------------------------------------------------------------------------- expanded weights
class InputDependentError(VisionLensError):
    """Expanded weights refused: an operation between the two hooks makes the map depend on the input."""


# Operation names (``func.__name__`` of the torch function, Tensor method or operator) by how the
# linear path treats them when they touch the source map (see the module docstring).
_RECTIFIERS = frozenset(
    "relu relu_ relu6 hardtanh hardtanh_ leaky_relu leaky_relu_ gelu silu silu_ elu elu_ celu celu_ selu selu_ "
    "mish hardswish hardswish_ softplus prelu rrelu rrelu_".split()
)
_MAXPOOLS = frozenset("max_pool2d max_pool2d_with_indices adaptive_max_pool2d".split())
_NORMS = frozenset("local_response_norm layer_norm group_norm rms_norm".split())
# linear in every argument together; other tensor arguments may depend on the input (an affine offset)
_ADDITIVE = frozenset(
    "add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ cat concat concatenate stack".split()
)
# linear in the source map; other tensor arguments (indices, sizes) must not depend on the input
_STRUCTURAL = frozenset(
    "sum mean neg neg_ __neg__ negative clone contiguous view view_as reshape reshape_as flatten unflatten permute "
    "transpose transpose_ t squeeze squeeze_ unsqueeze unsqueeze_ expand expand_as repeat __getitem__ __setitem__ "
    "narrow split chunk unbind select index_select movedim moveaxis roll flip to float double type_as "
    "avg_pool2d adaptive_avg_pool2d interpolate upsample pixel_shuffle pixel_unshuffle dropout dropout2d "
    "feature_alpha_dropout alpha_dropout pad".split()
)
# bilinear: linear when exactly one operand carries the source map and the others are constants
_BILINEAR = frozenset(
    "mul mul_ __mul__ __rmul__ __imul__ div div_ __truediv__ __itruediv__ matmul __matmul__ __rmatmul__ mm bmm "
    "einsum conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d linear batch_norm".split()
)
_DIVISIONS = frozenset("div div_ __truediv__ __itruediv__".split())
_METADATA = frozenset(
    "size dim numel __len__ __get__ is_floating_point is_contiguous stride is_complex element_size "
    "__format__ __repr__ __hash__ data_ptr get_device".split()
)
_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _op_name(func: Any) -> str:
    return str(getattr(func, "__name__", func))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Reached(Exception):
    """Stops the forward pass at the later hook."""


class _LinearPath(TorchFunctionMode):
    """Runs the model with every operation on the source map checked and, where needed, linearized."""

    def __init__(self, model: nn.Module, route: str, norms: str) -> None:
        super().__init__()
        self.route, self.norms = route, norms
        self.vetted: dict[int, Tensor] = {}  # tensors carrying the source map, produced by a checked op
        self.input_dep: dict[int, Tensor] = {}  # tensors that depend on the input image
        self.masks: dict[int, Tensor] = {}  # -inf padded maps (padded with 0 here) -> [1, 1, H, W] validity
        self.applied: Counter[str] = Counter()
        src = getattr(model, "source", model)
        self.names = {id(m): n or type(m).__name__ for n, m in model.named_modules()}
        self.names.update({id(m): n or type(m).__name__ for n, m in src.named_modules()})
        self.stack: list[nn.Module] = []

    # bookkeeping ------------------------------------------------------------------
    def mark_input(self, t: Tensor) -> None:
        self.input_dep[id(t)] = t

    def mark_source(self, t: Tensor) -> None:
        self.input_dep.pop(id(t), None)
        self.vetted[id(t)] = t

    def where(self) -> str:
        if not self.stack:
            return "the model's forward"
        m = self.stack[-1]
        return f"module {self.names.get(id(m), '?')!r} ({type(m).__name__})"

    def refuse(self, what: str, hint: str = "") -> None:
        raise InputDependentError(
            f"expanded_weights {self.route}: {what} in {self.where()} makes the map depend on the input, so "
            f"expanded weights would differ from image to image.{(' ' + hint) if hint else ''}"
        )

    # dispatch ---------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, Tensor)]
        src = [t for t in tensors if t.requires_grad]
        xdep = any(id(t) in self.input_dep for t in tensors)
        if not src:
            out = func(*args, **kwargs)
        else:
            name = _op_name(func)
            for t in src:
                if id(t) not in self.vetted:
                    self.refuse(
                        f"a map produced by an operation that cannot be inspected (a custom autograd.Function or "
                        f"C++ extension) reaches {name!r}"
                    )
            out = self._linear(func, name, args, kwargs, src, tensors)
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                if t.requires_grad:
                    self.vetted[id(t)] = t
                if xdep:
                    self.input_dep[id(t)] = t
        return out

    def _constant(self, others: Sequence[Tensor], name: str) -> None:
        if any(id(t) in self.input_dep for t in others):
            self.refuse(f"{name!r} combines the map with another input-dependent tensor")

    def _linear(
        self,
        func: Any,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        src: list[Tensor],
        tensors: list[Tensor],
    ) -> Any:
        others = [t for t in tensors if not t.requires_grad]
        if any(id(t) in self.masks for t in src) and name not in _MAXPOOLS:
            self.refuse(f"{name!r} reads a map padded with -inf (only max-pooling may)")
        if name in _RECTIFIERS:
            self.applied[f"{name} -> identity"] += 1
            return args[0] if args else kwargs["input"]
        if name in _MAXPOOLS:
            return self._pool(func, name, args, kwargs)
        if name == "pad":
            return self._pad(func, args, kwargs)
        if name in _NORMS:
            return self._norm(name, args, kwargs)
        if name in ("scaled_dot_product_attention", "softmax", "multi_head_attention_forward"):
            self.refuse(f"attention ({name!r})")
        if name in ("dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout"):
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            if training:
                self.refuse(f"{name!r} in training mode")
        if name == "batch_norm" and kwargs.get("training", args[5] if len(args) > 5 else False):
            self.refuse("batch_norm in training mode (batch statistics)")
        if name in _ADDITIVE:
            out = func(*args, **kwargs)
        elif name in _STRUCTURAL:
            self._constant(others, name)
            out = func(*args, **kwargs)
        elif name in _BILINEAR:
            if len(src) > 1:
                self.refuse(f"{name!r} multiplies the map by itself (a product of two paths from the source)")
            first = args[0] if args else None
            if name in _DIVISIONS and first is not src[0]:
                self.refuse(f"{name!r} divides by the map")
            self._constant(others, name)
            out = func(*args, **kwargs)
        elif name in _METADATA:
            out = func(*args, **kwargs)
            if not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):
                return out
        else:
            self.refuse(f"{name!r}", "Only linear operations, rectifiers, max-pooling and (opt-in) norms are handled.")
        if not any(isinstance(t, Tensor) and t.requires_grad for t in tree_flatten(out)[0]):
            self.refuse(f"{name!r} detaches the map (the linear path would be cut)")
        return out

    def _pool(self, func: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        a = dict(zip(_POOL_ARGS, args))
        a.update(kwargs)
        x: Tensor = a["input"]
        if name == "adaptive_max_pool2d":
            if id(x) in self.masks or a.get("return_indices"):
                self.refuse("adaptive_max_pool2d on a padded map or with indices")
            self.applied["adaptive_max_pool2d -> adaptive mean"] += 1
            return F.adaptive_avg_pool2d(x, a.get("kernel_size", args[1] if len(args) > 1 else None))
        if a.get("return_indices") or name == "max_pool2d_with_indices":
            self.refuse("max-pooling that returns indices")
        if _pair(a.get("dilation", 1)) != (1, 1):
            self.refuse("dilated max-pooling")
        k = _pair(a["kernel_size"])
        stride = _pair(a.get("stride") or k)
        pad, ceil = _pair(a.get("padding", 0)), bool(a.get("ceil_mode", False))
        mask = self.masks.get(id(x))
        if mask is None:
            mask = x.new_ones(1, 1, *x.shape[-2:])
        kw = dict(kernel_size=k, stride=stride, padding=pad, ceil_mode=ceil, count_include_pad=True, divisor_override=1)
        total = F.avg_pool2d(x, **kw)  # type: ignore[arg-type]
        count = F.avg_pool2d(mask, **kw)  # type: ignore[arg-type]
        self.applied["max_pool2d -> mean over the window"] += 1
        return total / count.clamp_min(1.0)

    def _pad(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        names = ("input", "pad", "mode", "value")
        a = dict(zip(names, args))
        a.update(kwargs)
        value = a.get("value")
        if a.get("mode", "constant") != "constant" or value is None or math.isfinite(float(value)):
            return func(*args, **kwargs)
        x: Tensor = a["input"]
        out = F.pad(x, a["pad"], value=0.0)
        self.masks[id(out)] = F.pad(x.new_ones(1, 1, *x.shape[-2:]), a["pad"], value=0.0)
        return out

    def _norm(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Tensor:
        if self.norms != "no_scale":
            self.refuse(
                f"{name!r} (its division by a norm of the input)",
                "Pass norms='no_scale' to drop that division (LRN -> identity, LayerNorm/GroupNorm -> centring "
                "and affine, RMSNorm -> its gain), a convention, or choose hooks on one side of it.",
            )
        x: Tensor = args[0] if args else kwargs["input"]
        self.applied[f"{name} -> no scale"] += 1
        if name == "local_response_norm":
            return x
        if name in ("layer_norm", "rms_norm"):
            shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            bias = args[3] if len(args) > 3 and name == "layer_norm" else kwargs.get("bias")
            dims = tuple(range(-len(tuple(shape)), 0))
            y = x - x.mean(dim=dims, keepdim=True) if name == "layer_norm" else x
        else:  # group_norm(input, num_groups, weight, bias, eps)
            groups = int(args[1] if len(args) > 1 else kwargs["num_groups"])
            weight = args[2] if len(args) > 2 else kwargs.get("weight")
            bias = args[3] if len(args) > 3 else kwargs.get("bias")
            g = x.reshape(x.shape[0], groups, -1)
            y = (g - g.mean(dim=-1, keepdim=True)).reshape(x.shape)
            shape_w = (1, -1) + (1,) * (x.ndim - 2)
            weight = None if weight is None else weight.reshape(shape_w)
            bias = None if bias is None else bias.reshape(shape_w)
        if weight is not None:
            y = y * weight
        if bias is not None:
            y = y + bias
        return y


@contextlib.contextmanager
def _module_stack(path: _LinearPath) -> Iterator[None]:
    """Keeps ``path.stack`` = the modules being run (for error messages)."""

    def enter(m: nn.Module, i: Any) -> None:
        path.stack.append(m)

    def leave(m: nn.Module, i: Any, o: Any) -> None:
        if path.stack:
            path.stack.pop()

    h1 = register_module_forward_pre_hook(enter)
    h2 = register_module_forward_hook(leave)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad (so only the source map does) and the module runs in eval mode."""
    params = [p for p in module.parameters() if p.requires_grad]
    was = module.training
    module.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
        module.train(was)


@dataclass
class ExpandedWeights:
    """``jacobian`` ``[C_to, C_from, h, w]``: d(reduced to-channel) / d(from activation map);
    ``matrix`` ``[C_to, C_from]`` = ``jacobian`` summed over space; ``conventions``: how often each
    nonlinearity was replaced on the path (``{"relu -> identity": 9, ...}``)."""

    from_hook: str
    to_hook: str
    reduce: str
    jacobian: Tensor
    conventions: dict[str, int] = field(default_factory=dict)

    @property
    def matrix(self) -> Tensor:
        return self.jacobian.sum(dim=(-2, -1))

    def kernel(self, size: int) -> Tensor:
        """The ``size x size`` window of the Jacobian around its centre.

        This is the composed kernel for ``reduce='centre'``.
        """
        h, w = self.jacobian.shape[-2:]
        y0, x0 = h // 2 - size // 2, w // 2 - size // 2
        return self.jacobian[..., max(y0, 0) : y0 + size, max(x0, 0) : x0 + size]

    def support(self, tol: float = 0.0) -> int:
        """Side of the smallest centred square window holding every entry with ``|J| > tol`` (``reduce='centre'``)."""
        h, w = self.jacobian.shape[-2:]
        nz = (self.jacobian.abs() > tol).flatten(0, 1).any(0).nonzero()
        if nz.numel() == 0:
            return 0
        cy, cx = h // 2, w // 2
        r = int(max((nz[:, 0] - cy).abs().max(), (nz[:, 1] - cx).abs().max()))
        return 2 * r + 1


def expanded_weights(
    model: HookedVisionModel,
    from_hook: str,
    to_hook: str,
    reduce: Literal["mean", "centre"] = "mean",
    image_size: Optional[int] = None,
    x: Optional[Tensor] = None,
    chunk: int = 64,
    norms: Literal["refuse", "no_scale"] = "refuse",
) -> ExpandedWeights:
    """Expanded weights ``from_hook -> to_hook`` along the model's linear path (see the module docstring).

    Input-independent by construction: every operation that touches the source map is checked; an
    operation that would make the map depend on the input raises :class:`InputDependentError` naming
    it and its module. ``x`` (default: zeros) only drives the forward pass.
    """
    if reduce not in ("mean", "centre", "center"):
        raise VisionLensError(f"expanded_weights: reduce must be 'mean' or 'centre', got {reduce!r}.")
    if norms not in ("refuse", "no_scale"):
        raise VisionLensError(f"expanded_weights: norms must be 'refuse' or 'no_scale', got {norms!r}.")
    from_hook, to_hook = model.resolve_hook(from_hook), model.resolve_hook(to_hook)
    if x is None:
        size = image_size or (_side(model.cfg.image_size) if model.cfg.image_size else 32)
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        x = torch.zeros(1, int(model.cfg.in_chans or 3), size, size, device=model.device, dtype=dtype)
    x = x[:1].detach().clone()
    path = _LinearPath(model, f"{from_hook!r} -> {to_hook!r}", norms)
    path.mark_input(x)
    store: dict[str, Tensor] = {}

    def replace(t: Tensor, hook: Any = None) -> Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        path.mark_source(leaf)
        store["from"] = leaf
        return leaf

    def grab(t: Tensor, hook: Any = None) -> None:
        store["to"] = t
        raise _Reached  # nothing after the later hook is part of the path (nor checked)

    with _frozen(model), torch.enable_grad():
        with _module_stack(path), path, contextlib.suppress(_Reached):
            model.run_with_hooks(x, fwd_hooks=[(from_hook, replace), (to_hook, grab)])
        if "from" not in store or "to" not in store:
            missing = [h for h, k in ((from_hook, "from"), (to_hook, "to")) if k not in store]
            raise VisionLensError(f"expanded_weights: hook(s) {', '.join(missing)} did not fire.")
        a, y = store["from"], store["to"]
        if a.ndim != 4 or y.ndim != 4:
            raise VisionLensError(
                f"expanded_weights needs conv maps [B, C, H, W] at both hooks; got "
                f"{tuple(a.shape)} at {from_hook!r} and {tuple(y.shape)} at {to_hook!r}."
            )
        if not y.requires_grad:
            raise VisionLensError(f"expanded_weights: {to_hook!r} does not depend on {from_hook!r} (is it earlier?).")
        if reduce == "mean":
            red = y[0].mean(dim=(1, 2))
        else:
            red = y[0, :, y.shape[2] // 2, y.shape[3] // 2]
        n = red.shape[0]
        rows = []
        eye = torch.eye(n, dtype=red.dtype, device=red.device)
        for i in range(0, n, chunk):
            go = eye[i : i + chunk]
            (g,) = torch.autograd.grad(red, a, grad_outputs=go, is_grads_batched=True, retain_graph=True)
            rows.append(g[:, 0].detach())
    return ExpandedWeights(
        from_hook, to_hook, "centre" if reduce == "center" else reduce, torch.cat(rows), dict(path.applied)
    )


# ----------------------------------------------------------------------------- motifs and banners
def inputs_for_mass(strengths: Tensor, mass: float = 0.9) -> Tensor:
    """Per row of ``[out, in]``: the fewest inputs whose ``|strength|`` sums to ``mass`` of the row's total."""
    if not 0.0 < mass <= 1.0:
        raise VisionLensError(f"inputs_for_mass: mass must be in (0, 1], got {mass}.")
    a = torch.sort(strengths.abs().double(), dim=1, descending=True).values
    cum = a.cumsum(1)
    need = mass * cum[:, -1:] * (1 - 1e-12)
    n = (cum < need).sum(1) + 1
    return torch.where(cum[:, -1] > 0, n, torch.zeros_like(n))


@dataclass
class Motifs:
    """A layer pair's strongest connections and per-unit sparsity (see :func:`motifs`)."""

    positive: list[tuple[int, int, float]]  # (to unit, from unit, weight), most positive first
    negative: list[tuple[int, int, float]]  # most negative first
    topk_mass: Tensor  # [out] share of |weight| in each unit's top-k inputs
    gini: Tensor  # [out] Gini coefficient of each unit's |weights|
    n_for_mass: Tensor  # [out] fewest inputs carrying `mass` of each unit's |weight|
    k: int
    mass: float

    def sparsest(self, n: int = 10) -> list[int]:
        """Units with the highest Gini (the most concentrated inputs), most concentrated first."""
        return torch.argsort(self.gini, descending=True, stable=True)[:n].tolist()


def motifs(matrix: Tensor, n: int = 20, k: int = 5, mass: float = 0.9) -> Motifs:
    """Motif search on a connection matrix ``[out, in]`` (weights or expanded weights of a layer pair).

    The ``n`` most positive and most negative single connections over the whole pair, and for each
    output unit its top-``k`` mass, Gini coefficient and the number of inputs carrying ``mass`` of its
    ``|weight|``.
    """
    if matrix.ndim != 2:
        raise VisionLensError(f"motifs expects a connection matrix [out, in], got shape {tuple(matrix.shape)}.")
    m = matrix.detach().double().cpu()
    flat = m.flatten()
    n = min(n, flat.numel())
    cols = m.shape[1]

    def pick(order: Tensor) -> list[tuple[int, int, float]]:
        return [(int(i) // cols, int(i) % cols, float(flat[i])) for i in order[:n]]

    pos = pick(torch.argsort(flat, descending=True, stable=True))
    neg = pick(torch.argsort(flat, descending=False, stable=True))
    sp = connection_sparsity(m, k)
    return Motifs(
        [p for p in pos if p[2] > 0],
        [q for q in neg if q[2] < 0],
        sp["topk_mass"],
        sp["gini"],
        inputs_for_mass(m, mass),
        int(sp["k"]),
        mass,
    )


def banner(
    ew: ExpandedWeights, unit: int, k: Optional[int] = None, size: Optional[int] = None, pad: int = 1
) -> tuple[np.ndarray, list[tuple[int, float]]]:
    """A unit's weight banner: its expanded-weight kernel for each input unit, side by side.

    Returns ``(image [size, n * (size + pad) - pad, 3] in [0, 1], [(input unit, summed weight)])``.
    Inputs are ordered by ``|summed weight|`` (the ``k`` strongest; all by default); kernels are the
    centred ``size x size`` window of ``ew.jacobian[unit]`` (``ew.support()`` by default; use
    ``reduce='centre'`` for composed kernels), drawn on one diverging scale shared by the whole banner:
    white = 0, red = positive, blue = negative; kernels are separated by grey columns.
    """
    if not 0 <= unit < ew.jacobian.shape[0]:
        raise VisionLensError(f"banner: unit {unit} out of range for {ew.to_hook!r} ({ew.jacobian.shape[0]} units).")
    size = int(size or max(ew.support(), 1))
    kern = ew.kernel(size)[unit].double()  # [C_from, s, s]
    weights = ew.matrix[unit].double()
    order = torch.argsort(weights.abs(), descending=True, stable=True)[: k or weights.numel()]
    scale = float(kern[order].abs().max()) or 1.0
    n, s = len(order), kern.shape[-1]
    img = np.full((kern.shape[-2], n * (s + pad) - pad, 3), 0.55, dtype=np.float32)  # grey gaps
    for j, i in enumerate(order.tolist()):
        v = (kern[i] / scale).clamp(-1, 1).numpy()
        rgb = np.stack([1 - np.clip(-v, 0, 1), 1 - np.abs(v), 1 - np.clip(v, 0, 1)], axis=-1)
        img[:, j * (s + pad) : j * (s + pad) + s] = rgb
    return img, [(int(i), float(weights[i])) for i in order]


# ----------------------------------------------------------------------------- pictures
def nmf_rgb(weight: Any, seed: int = 0, max_iter: int = 400) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Weight pictures: ``(images [out, kh, kw, 3] float in [0, 1], factors [3, in] or None)``.

    ``|W|`` ([out, in, kh, kw]) is factorised over input channels into 3 non-negative factors
    (scikit-learn ``NMF``); each output channel's picture shows the 3 factor loadings as RGB at each
    kernel position (normalised per output channel). A weight with 3 inputs (an RGB first layer) is
    shown directly, scaled to ``[0, 1]`` around 0.5.
    """
    w = full_weight(weight).float().cpu()
    out, cin, kh, kw = w.shape
    if cin == 3:
        m = w.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
        img = (0.5 + 0.5 * w / m).permute(0, 2, 3, 1).numpy()
        return img.clip(0, 1), None
    X = w.abs().permute(0, 2, 3, 1).reshape(-1, cin).numpy().astype(np.float64)
    if cin < 3:
        X = np.concatenate([X, np.zeros((X.shape[0], 3 - cin))], axis=1)
        W_, H_ = X, np.eye(3)
    else:
        import warnings

        from sklearn.decomposition import NMF

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nmf = NMF(n_components=3, init="nndsvda", random_state=seed, max_iter=max_iter)
            W_ = nmf.fit_transform(X)
            H_ = nmf.components_
    img = W_.reshape(out, kh, kw, 3)
    m = img.reshape(out, -1).max(axis=1).reshape(out, 1, 1, 1)
    img = img / np.where(m > 0, m, 1.0)
    return img.clip(0, 1).astype(np.float32), H_
