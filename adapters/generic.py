"""Generic adapter: any ``nn.Module`` gets ``<module path>.hook_out`` on every submodule output.

Bridges hand on copies where the module overwrites a tensor in place later (dry run at wrap
time); if the dry run cannot run the module on an image batch, every bridge copies (safe).
"""

from __future__ import annotations

from torch import nn

from visionlens.config import VisionConfig

from .bridging import ConvNetAdapter


class GenericAdapter(ConvNetAdapter):
    name = "generic"
    family = "generic"
    priority = -100

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return True

    def canonical_hooks(self) -> dict:
        return {}

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
        return VisionConfig(
            family="generic",
            architecture=type(self.source).__name__,
            adapter=self.name,
            in_chans=in_chans,
            n_classes=n_classes,
        )
