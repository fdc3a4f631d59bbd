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

    @classmethod
    def example_source(cls) -> nn.Module:
        """A plain two-conv ``nn.Sequential`` classifier (no family matches it; seeded)."""
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(inplace=True),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(16, 10),
            ).eval()

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
