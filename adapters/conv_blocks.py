"""Building blocks shared by the conv-net adapters (ResNet, ConvNeXt, MobileNet, Inception); public API.

* :class:`ConvReadout` - a conv net's linear classifier, for direct logit attribution.
* :func:`flat_block_aliases` - ``blocks.{i}.*`` aliases numbering all residual blocks in order.
* :func:`data_config` - image size / mean / std / crop / interpolation for ``VisionConfig``.
* :func:`first_conv` - the first ``nn.Conv2d`` of a module (its ``in_channels`` is the input's).
* :func:`linear_out` - the class count of a linear classifier (0 for none).

The bridging pieces (:class:`~visionlens.adapters.bridging.ConvBridge`,
:class:`~visionlens.adapters.bridging.ConvNetAdapter`, :func:`~visionlens.adapters.bridging.find_inplace_targets`)
live in :mod:`visionlens.adapters.bridging`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ConvReadout", "data_config", "first_conv", "flat_block_aliases", "linear_out"]

Lookup = Callable[[str], Tensor]  # a cached activation by hook name


@dataclass
class ConvReadout:
    """The linear classifier of a conv net, for direct logit attribution.

    ``logits = fc(pooled) = pooled @ fc.weight.T + fc.bias`` where ``pooled`` is what the hook
    ``pooled_hook`` (``hook_pooled``) records. So for any class ``k``::

        channel_contributions(pooled, k).sum(-1) + bias(k) == logits[:, k]

    ``global_avg`` is True when ``pooled`` is exactly the spatial mean of the feature map recorded by
    ``features_hook`` (no norm or nonlinearity in between); then
    ``spatial_contributions(features, k)`` (``[batch, C, H, W]``) also sums to ``logit - bias``.
    ``norm`` is a module between pooling and ``fc`` (ConvNeXt's head LayerNorm), else None.

    Residual-stream attribution (``cache.logit_attrs``): ``stream_hook`` is where the additive residual
    stream ends (the last block's ``hook_resid_post``); components of that map go through an optional
    ``head_conv`` + ``head_bn`` (MobileNetV2's 1x1 head conv) whose activation (``head_act``:
    ``"relu6"`` / ``"relu"``) is taken *with its gates frozen at the cached forward*: ``relu6(z) =
    g * z + 6 * [z >= 6]`` with ``g = [0 < z < 6]`` read from ``head_pre_hook`` (the BN output), which
    is an identity for this input, so the component terms sum to the logit exactly (like
    TransformerLens's frozen LayerNorm scale). A head ``norm`` is applied with its scale frozen
    the same way. ``stream_why`` says why there is no such readout, else "".
    """

    pooled_hook: str
    fc: nn.Linear
    features_hook: Optional[str] = None
    global_avg: bool = True
    norm: Optional[nn.Module] = None
    extra: dict[str, Any] = field(default_factory=dict)
    stream_hook: Optional[str] = None
    head_conv: Optional[nn.Conv2d] = None
    head_bn: Optional[nn.BatchNorm2d] = None
    head_pre_hook: Optional[str] = None
    head_act: str = ""
    stream_why: str = ""

    @property
    def W(self) -> Tensor:
        """``[n_classes, d_pooled]`` classifier weight."""
        return self.fc.weight

    def _classes(self, classes: Union[int, Sequence[int], Tensor]) -> Tensor:
        return torch.as_tensor(classes, device=self.fc.weight.device, dtype=torch.long)

    def bias(self, classes: Union[int, Sequence[int], Tensor]) -> Tensor:
        """Classifier bias of ``classes`` (zeros when ``fc`` has no bias)."""
        c = self._classes(classes)
        if self.fc.bias is None:
            return torch.zeros(c.shape, dtype=self.fc.weight.dtype, device=self.fc.weight.device)
        return self.fc.bias[c]

    def channel_contributions(self, pooled: Tensor, classes: Union[int, Sequence[int], Tensor]) -> Tensor:
        """``pooled[:, c] * W[class, c]``: ``[batch, C]``; one class for all, or one per example."""
        w = self.fc.weight[self._classes(classes)]
        return pooled * w

    def spatial_contributions(self, features: Tensor, classes: Union[int, Sequence[int], Tensor]) -> Tensor:
        """``features[:, c, y, x] * W[class, c] / (H * W)``: ``[batch, C, H, W]`` (needs ``global_avg``)."""
        if not self.global_avg:
            raise NotImplementedError("spatial contributions need a plain global average pool before the classifier")
        w = self.fc.weight[self._classes(classes)]
        h, wd = features.shape[-2:]
        return features * w[..., :, None, None] / (h * wd)

    # ------------------------------------------------------------ exact attribution (frozen gates / norm scale)
    def direction(self, classes: Any, incorrect: Any = None) -> Tensor:
        """``W[classes]`` (minus ``W[incorrect]``): ``[d_pooled]`` or one row per example ``[batch, d_pooled]``."""
        d = self.fc.weight[self._classes(classes)]
        if incorrect is not None:
            d = d - self.fc.weight[self._classes(incorrect)]
        return d

    def _head_affine(self) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        """The head conv + BN as ``linear(x) + shift`` (BN in eval mode: a per-channel affine map)."""
        conv, bn = self.head_conv, self.head_bn
        assert conv is not None
        if bn is not None and (bn.training or bn.running_mean is None):
            raise ValueError("the head BatchNorm is in training mode (not a fixed affine map); call model.eval().")
        w = conv.weight
        scale = w.new_ones(w.shape[0])
        shift = conv.bias if conv.bias is not None else w.new_zeros(w.shape[0])
        if bn is not None:
            scale = (bn.weight if bn.weight is not None else scale) / (bn.running_var + bn.eps).sqrt()
            b = bn.bias if bn.bias is not None else torch.zeros_like(scale)
            shift = (shift - bn.running_mean) * scale + b

        def linear(x: Tensor) -> Tensor:
            lead = x.shape[:-3]
            y = F.conv2d(x.reshape(-1, *x.shape[-3:]), w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
            y = y * scale[:, None, None]
            return y.reshape(*lead, *y.shape[-3:])

        return linear, shift

    def _gate(self, lookup: Lookup) -> tuple[Tensor, Tensor]:
        """``(g, c)`` with ``act(z) == g * z + c`` exactly at the cached pre-activation ``z``."""
        assert self.head_pre_hook is not None
        z = lookup(self.head_pre_hook)
        if self.head_act == "relu6":
            return ((z > 0) & (z < 6)).to(z.dtype), 6.0 * (z >= 6).to(z.dtype)
        if self.head_act == "relu":
            return (z > 0).to(z.dtype), torch.zeros_like(z)
        raise NotImplementedError(f"no exact gate for head activation {self.head_act!r}")

    def _sigma(self, lookup: Lookup) -> Tensor:
        """The head norm's scale ``sqrt(var + eps)`` of the pooled stream, ``[batch, 1]``."""
        assert self.stream_hook is not None
        pooled = lookup(self.stream_hook).mean((-2, -1))
        eps = float(getattr(self.norm, "eps", 1e-6))
        return (pooled.var(-1, unbiased=False, keepdim=True) + eps).sqrt()

    def _check_stream(self) -> None:
        if self.stream_why or self.stream_hook is None:
            why = self.stream_why or "no stream hook"
            raise ValueError(
                f"this model's classifier cannot be read from the residual stream: {why}. "
                "Exact alternative: cache.decompose_final_features(classes) (per channel / location of the final "
                "feature map)."
            )
        if not (self.global_avg or (self.norm is not None and self.extra.get("avg_pool", False))):
            raise ValueError("residual-stream logit attribution needs a plain global average pool before the head")

    def stream_attrs(
        self, stack: Tensor, classes: Any, incorrect: Any, lookup: Lookup, per_example: bool = True
    ) -> Tensor:
        """Each component's term of the logit: ``[components, batch]`` for a stack ``[components, batch, C, H, W]``
        of the ``stream_hook`` map; with :meth:`stream_bias` they sum to the logit (difference) exactly."""
        self._check_stream()
        assert self.stream_hook is not None
        ref = lookup(self.stream_hook)
        if tuple(stack.shape[-3:]) != tuple(ref.shape[-3:]):
            want, got = ", ".join(map(str, ref.shape[-3:])), ", ".join(map(str, stack.shape[-3:]))
            raise ValueError(
                f"logit_attrs reads components of {self.stream_hook!r} (shape [..., {want}]), "
                f"got [..., {got}]: pass decompose_resid(stage=last) / "
                "accumulated_resid(stage=last) of the last stage (earlier stages do not reach the head linearly)."
            )
        x = stack
        if self.head_conv is not None:
            linear, _ = self._head_affine()
            g, _ = self._gate(lookup)
            x = linear(x) * g
        x = x.mean((-2, -1))
        if self.norm is not None:
            x = (x - x.mean(-1, keepdim=True)) / self._sigma(lookup)
            if getattr(self.norm, "weight", None) is not None:
                x = x * self.norm.weight
        d = self.direction(classes, incorrect).to(x.dtype)
        if d.ndim == 2 and per_example:
            return (x * d).sum(-1)
        return x @ d.T if d.ndim == 2 else x @ d

    def stream_bias(self, classes: Any, incorrect: Any, lookup: Lookup) -> Tensor:
        """The logit part no stream component explains: fc bias, the head norm's bias, and (with a head conv)
        the head's shift and saturated units through the frozen gates; ``[batch]`` or a scalar."""
        self._check_stream()
        b = self.bias(classes) - (self.bias(incorrect) if incorrect is not None else 0)
        d = self.direction(classes, incorrect)
        if self.norm is not None and getattr(self.norm, "bias", None) is not None:
            b = b + d @ self.norm.bias
        if self.head_conv is not None:
            _, shift = self._head_affine()
            g, c = self._gate(lookup)
            const = (g * shift[:, None, None] + c).mean((-2, -1))  # [batch, C']
            b = b + (const * d).sum(-1)
        return b

    def final_feature_attrs(self, classes: Any, incorrect: Any, lookup: Lookup) -> tuple[Tensor, Tensor]:
        """``(contributions [batch, C, H, W], bias)`` of the final feature map (``features_hook``): they sum
        to the logit (difference) exactly (the head norm's scale, if any, frozen at the cached forward)."""
        if self.features_hook is None:
            raise NotImplementedError("this classifier's input is not a spatial feature map")
        feats = lookup(self.features_hook)
        if feats.ndim != 4:
            raise NotImplementedError(f"{self.features_hook!r} is not a [batch, C, H, W] map")
        d = self.direction(classes, incorrect).to(feats.dtype)
        if d.ndim == 1:
            d = d.expand(feats.shape[0], -1)
        hw = feats.shape[-2] * feats.shape[-1]
        b = self.bias(classes) - (self.bias(incorrect) if incorrect is not None else 0)
        pre_logits = self.extra.get("pre_logits")
        if pre_logits is not None:
            raise NotImplementedError("the head has a hidden layer (pre_logits): not linear in the features")
        if self.norm is None:
            if not self.global_avg:
                raise NotImplementedError("the head does not average-pool the feature map")
            return feats * d[:, :, None, None] / hw, b.expand(feats.shape[0])
        if not self.extra.get("avg_pool", False):
            raise NotImplementedError("the head does not average-pool the feature map")
        eps = float(getattr(self.norm, "eps", 1e-6))
        sigma = (feats.mean((-2, -1)).var(-1, unbiased=False, keepdim=True) + eps).sqrt()  # [B, 1]
        w = self.norm.weight if getattr(self.norm, "weight", None) is not None else torch.ones_like(d[0])
        centred = feats - feats.mean(1, keepdim=True)
        attrs = centred * (d * w / sigma)[:, :, None, None] / hw
        if getattr(self.norm, "bias", None) is not None:
            b = b + d @ self.norm.bias
        return attrs, b.expand(feats.shape[0])


def flat_block_aliases(names: Iterable[str]) -> dict[str, str]:
    """``blocks.{i}.<rest>`` -> ``stages.{s}.blocks.{b}.<rest>`` for every per-block canonical hook in
    ``names``, ``i`` numbering all blocks in forward order (TransformerLens's ``get_act_name("resid_post", i)``);
    also ``blocks.{i}`` -> that block's ``hook_resid_post``. Module-tree ``.hook_out`` names are left out."""
    per_block: dict[tuple[int, int], list[str]] = {}
    for n in names:
        m = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$", n)
        if m is None or m.group(3).endswith("hook_out"):
            continue
        per_block.setdefault((int(m.group(1)), int(m.group(2))), []).append(m.group(3))
    out: dict[str, str] = {}
    for i, (s, b) in enumerate(sorted(per_block)):
        for rest in per_block[(s, b)]:
            out[f"blocks.{i}.{rest}"] = f"stages.{s}.blocks.{b}.{rest}"
        if "hook_resid_post" in per_block[(s, b)]:
            out[f"blocks.{i}"] = f"stages.{s}.blocks.{b}.hook_resid_post"
    return out


def first_conv(module: nn.Module) -> Optional[nn.Conv2d]:
    """The first ``nn.Conv2d`` in ``module.modules()`` order, or None."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return m
    return None


def data_config(
    source: Optional[nn.Module], default_size: int = 224, default_interpolation: str = "bilinear"
) -> dict[str, Any]:
    """image_size / mean / std / crop_pct / interpolation from a timm ``pretrained_cfg``, else ImageNet defaults."""
    dc: dict[str, Any] = {}
    if source is not None:
        dc = getattr(source, "pretrained_cfg", None) or getattr(source, "default_cfg", None) or {}
    size = dc.get("input_size")
    return dict(
        image_size=tuple(size[-2:]) if size else (default_size, default_size),
        mean=tuple(dc.get("mean", IMAGENET_MEAN)),
        std=tuple(dc.get("std", IMAGENET_STD)),
        crop_pct=float(dc.get("crop_pct", 0.875)),
        interpolation=dc.get("interpolation", default_interpolation),
    )


def linear_out(module: Optional[nn.Module]) -> int:
    """``out_features`` of an ``nn.Linear`` classifier, else 0."""
    return module.out_features if isinstance(module, nn.Linear) else 0
