"""Weight explorer: channel-to-channel connection strengths, expanded weights, sparsity, NMF pictures.

* :func:`conv_layers`: the ``nn.Conv2d`` modules of a model in forward execution order.
* :func:`channel_strengths`: ``[out, in]`` strength of each connection of one conv layer, the
  ``L2`` (or ``L1`` / ``sum``) norm of the kernel ``W[out, in]`` (grouped convs: zero outside a group).
* :func:`adjacent_pairs`: pairs ``(a, b)`` of conv layers where ``b`` reads ``a``'s channels
  (the nearest earlier conv in execution order with ``a.out_channels == b.in_channels``; a
  heuristic for branching nets, exact for chains).
* :func:`top_connections`: a unit's strongest inputs (``direction="in"``) or outputs.
* :func:`expanded_weights`: the weights between *non-adjacent* layers of the linearized model:
  every nonlinearity module (ReLU, GELU, SiLU, ...) is replaced by the identity and max-pooling by
  average pooling (same window), BatchNorm runs in eval mode (affine), and the Jacobian of the later
  hook's channel (its spatial mean, or its centre location) with respect to the earlier hook's
  activation map is computed by autograd. On a net that is linear between the hooks this is exact:
  for 1x1 convs ``matrix == W2 @ W1``; for kxk convs the centre Jacobian is the composed kernel.
  Only nonlinearity *modules* are replaced; functional calls (``F.relu`` in ``forward``) stay.
* :func:`connection_sparsity`: per output unit, the fraction of total strength in its top-k inputs
  and the Gini coefficient of its input strengths.
* :func:`nmf_rgb`: pictures of weights: non-negative matrix factorisation (scikit-learn ``NMF``) of
  ``|W|`` over input channels into 3 factors, shown as RGB per output channel (a 3-channel first
  layer is shown directly).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Literal, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    "linearized",
    "conv_hook",
]

_NONLIN = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.PReLU,
    nn.SELU,
    nn.CELU,
    nn.Softplus,
    nn.Hardtanh,
)


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
            size = int(cfg.image_size[0])
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
@contextlib.contextmanager
def linearized(model: Union[HookedVisionModel, nn.Module]) -> Iterator[Any]:
    """Temporarily replace nonlinearity modules by the identity and max-pools by average pools; eval mode."""
    src: nn.Module = getattr(model, "source", model)
    patched: list[nn.Module] = []
    was = model.training
    model.eval()
    try:
        for m in src.modules():
            if isinstance(m, _NONLIN):
                m.forward = lambda x, *a, **k: x  # type: ignore[method-assign]
                patched.append(m)
            elif isinstance(m, nn.MaxPool2d):
                m.forward = lambda x, m=m: F.avg_pool2d(
                    x, m.kernel_size, m.stride, m.padding, m.ceil_mode, count_include_pad=True
                )  # type: ignore[method-assign]
                patched.append(m)
            elif isinstance(m, nn.AdaptiveMaxPool2d):
                m.forward = lambda x, m=m: F.adaptive_avg_pool2d(x, m.output_size)  # type: ignore[method-assign]
                patched.append(m)
        yield model
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)
        model.train(was)


@dataclass
class ExpandedWeights:
    """``jacobian`` ``[C_to, C_from, h, w]``: d(reduced to-channel) / d(from activation map);
    ``matrix`` ``[C_to, C_from]`` = ``jacobian`` summed over space."""

    from_hook: str
    to_hook: str
    reduce: str
    jacobian: Tensor

    @property
    def matrix(self) -> Tensor:
        return self.jacobian.sum(dim=(-2, -1))

    def kernel(self, size: int) -> Tensor:
        """The ``size x size`` window of the Jacobian around its centre.

        This is the composed kernel for ``reduce='centre'``.
        """
        h, w = self.jacobian.shape[-2:]
        y0, x0 = h // 2 - size // 2, w // 2 - size // 2
        return self.jacobian[..., y0 : y0 + size, x0 : x0 + size]


def expanded_weights(
    model: HookedVisionModel,
    from_hook: str,
    to_hook: str,
    reduce: Literal["mean", "centre"] = "mean",
    image_size: Optional[int] = None,
    x: Optional[Tensor] = None,
    chunk: int = 64,
) -> ExpandedWeights:
    """Expanded weights ``from_hook -> to_hook`` through the linearized model (see the module docstring)."""
    if reduce not in ("mean", "centre", "center"):
        raise VisionLensError(f"expanded_weights: reduce must be 'mean' or 'centre', got {reduce!r}.")
    from_hook, to_hook = model.resolve_hook(from_hook), model.resolve_hook(to_hook)
    if x is None:
        size = image_size or (int(model.cfg.image_size[0]) if model.cfg.image_size else 32)
        x = torch.zeros(1, int(model.cfg.in_chans or 3), size, size, device=model.device)
    store: dict[str, Tensor] = {}

    def replace(t: Tensor, hook: Any = None) -> Tensor:
        leaf = t.detach().clone().requires_grad_(True)
        store["from"] = leaf
        return leaf

    def grab(t: Tensor, hook: Any = None) -> None:
        store["to"] = t

    with linearized(model), torch.enable_grad():
        model.run_with_hooks(x[:1], fwd_hooks=[(from_hook, replace), (to_hook, grab)])
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
    return ExpandedWeights(from_hook, to_hook, "centre" if reduce == "center" else reduce, torch.cat(rows))


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
