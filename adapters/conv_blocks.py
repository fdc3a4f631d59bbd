"""Building blocks shared by the conv-net adapters (ResNet, ConvNeXt, MobileNet, Inception); public API.

* :class:`ConvReadout` - a conv net's linear classifier, for direct logit attribution.
* :func:`data_config` - image size / mean / std / crop / interpolation for ``VisionConfig``.
* :func:`first_conv` - the first ``nn.Conv2d`` of a module (its ``in_channels`` is the input's).
* :func:`linear_out` - the class count of a linear classifier (0 for none).

The bridging pieces (:class:`~visionlens.adapters.bridging.ConvBridge`,
:class:`~visionlens.adapters.bridging.ConvNetAdapter`, :func:`~visionlens.adapters.bridging.find_inplace_targets`)
live in :mod:`visionlens.adapters.bridging`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from visionlens.config import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ConvReadout", "data_config", "first_conv", "linear_out"]


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
    """

    pooled_hook: str
    fc: nn.Linear
    features_hook: Optional[str] = None
    global_avg: bool = True
    norm: Optional[nn.Module] = None
    extra: dict[str, Any] = field(default_factory=dict)

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
    dc = {}
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
