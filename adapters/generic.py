"""Generic adapter: any ``nn.Module`` gets ``<module path>.hook_out`` on every submodule output."""

from __future__ import annotations

from torch import nn

from visionlens.config import VisionConfig

from . import BridgedAdapter


class GenericAdapter(BridgedAdapter):
    name = "generic"
    family = "generic"
    priority = -100

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return True

    def config(self) -> VisionConfig:
        n_classes = 0
        in_chans = 3
        for m in self.source.modules():
            if isinstance(m, nn.Conv2d):
                in_chans = m.in_channels
                break
        for m in self.source.modules():
            if isinstance(m, nn.Linear):
                n_classes = m.out_features
        return VisionConfig(family="generic", architecture=type(self.source).__name__, adapter=self.name,
                            in_chans=in_chans, n_classes=n_classes)
