"""ResNets from timm (``timm.models.resnet.ResNet``) and torchvision (``torchvision.models.ResNet``).

Hook names
----------
* Module tree: ``<module path>.hook_out`` on every submodule output, named as in the source model
  (``conv1.hook_out``, ``layer1.0.conv1.hook_out``, ``layer3.1.bn2.hook_out``, ``fc.hook_out``).
* Residual stream, ``s`` = stage (``layer1`` .. ``layer4`` -> 0 .. 3), ``b`` = block in the stage::

    stages.{s}.blocks.{b}.hook_resid_pre     block input
    stages.{s}.blocks.{b}.hook_act{i}        activation after the i-th conv of the branch
                                             (i = 1 for BasicBlock, 1..2 for Bottleneck)
    stages.{s}.blocks.{b}.hook_branch_out    residual branch output right before the addition
                                             (bn2 / bn3, or timm's se / drop_path when present)
    stages.{s}.blocks.{b}.hook_shortcut      projection shortcut output (blocks with a downsample only)
    stages.{s}.blocks.{b}.hook_resid_sum     branch_out + shortcut, before the final activation
    stages.{s}.blocks.{b}.hook_resid_post    block output

  ResNet (v1) puts a ReLU after the residual sum, so the stream is *not* additive::

    resid_sum  = branch_out + shortcut(resid_pre)     (shortcut = identity without downsample)
    resid_post = relu(resid_sum)

  Both relations hold exactly (bit for bit) and are tested.
* Head: ``hook_pooled`` (the vector ``fc`` reads: globally average-pooled features) and
  ``hook_logits`` (``fc`` output).
* Aliases: ``stages.{s}.blocks.{b}`` -> its ``hook_resid_post``, ``stages.{s}`` -> the last block's
  ``hook_resid_post``, ``stem`` -> ``maxpool.hook_out``. ``layer3`` / ``layer3.1.conv2`` resolve to
  their ``.hook_out`` automatically. TransformerLens's flat block index: ``blocks.{i}.hook_resid_pre|
  hook_act{k}|hook_branch_out|hook_shortcut|hook_resid_sum|hook_resid_post`` (and ``blocks.{i}``),
  ``i`` numbering all blocks in order, so ``cache["resid_post", 3]`` works.

Direct logit attribution: because of the ReLU after each sum, ``cache.decompose_resid(stage=...)``
refuses (there is no additive split into blocks). Exact instead: ``cache.decompose_final_features``
splits the logit over the channels / locations of the final feature map (``layer4`` output; the
head is average pool + ``fc``, linear), summing to ``logit - fc.bias``; ``cache.logit_attrs`` also
reads any stack of maps shaped like the final feature map (e.g. ``accumulated_resid(stage=-1)``).

torchvision's blocks call one shared ``relu`` module two or three times per block, so the module
tree hook ``layer1.0.relu.hook_out`` fires on every call (a cache keeps the last call, which is the
block output); use ``hook_act{i}`` / ``hook_resid_sum`` for the individual calls.

In-place operations
-------------------
Both libraries use ``ReLU(inplace=True)`` and ``out += shortcut`` (torchvision's MobileNetV2 ReLU6
and GoogLeNet ``F.relu(x, inplace=True)`` too). A plain bridge hands a hook, and the cache (which
stores ``tensor.detach()``, a view), a tensor that the next op overwrites: a cached ``bn1`` output
would silently read as post-ReLU, a cached ``branch_out`` as the sum, and a backward hook there
makes autograd raise "Output 0 of BackwardHookFunction is a view and is being modified inplace".
So when a model is wrapped, :func:`~visionlens.adapters.bridging.find_inplace_targets` runs the
source once (no grad, eval mode) and records, via tensor version counters, which module outputs /
inputs get overwritten in place later; bridges on exactly those hand the downstream code a copy of
the hooked tensor (:class:`~visionlens.adapters.bridging.ConvBridge` ``copy=True``), so hooks and
the cache see the value as it was produced.
In-place *activation modules* (``nn.ReLU(inplace=True)``, ReLU6, ...) are run out of place while any
hook is attached or cached (:class:`~visionlens.adapters.bridging.OutOfPlace`; same values, the flags
are restored when the last hook goes), so only tensors that the source's own code overwrites
(``out += shortcut``, functional ``F.relu(x, inplace=True)``) are copied, once per tensor however
many points sit on it. Nothing happens while no hook is attached: the unhooked model runs the source
code untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint

from .bridging import ConvNetAdapter
from .conv_blocks import ConvReadout, data_config, first_conv, flat_block_aliases, linear_out

__all__ = ["ResNetAdapter"]


# ============================================================================ ResNet
def _timm_resnet_classes() -> tuple[type, type, type]:
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNet, BasicBlock, Bottleneck


def _tv_resnet_classes() -> tuple[type, type, type]:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNet, BasicBlock, Bottleneck


_TV_NAMES: dict[tuple[str, tuple[int, ...]], str] = {
    ("BasicBlock", (2, 2, 2, 2)): "resnet18",
    ("BasicBlock", (3, 4, 6, 3)): "resnet34",
    ("Bottleneck", (3, 4, 6, 3)): "resnet50",
    ("Bottleneck", (3, 4, 23, 3)): "resnet101",
    ("Bottleneck", (3, 8, 36, 3)): "resnet152",
}


class ResNetAdapter(ConvNetAdapter):
    """timm and torchvision ResNets (ResNet-18/34/50/101/152, ResNeXt, wide, SE / D variants in timm).

    Blocks of an unknown type (e.g. timm's selective-kernel blocks) get ``hook_resid_pre`` /
    ``hook_resid_post`` only.
    """

    name = "resnet"
    family = "resnet"
    priority = 10

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        try:
            if isinstance(module, _timm_resnet_classes()[0]):
                return True
        except ImportError:  # pragma: no cover - timm is a dependency
            pass
        try:
            return isinstance(module, _tv_resnet_classes()[0])
        except ImportError:  # pragma: no cover
            return False

    @classmethod
    def example_source(cls) -> Optional[nn.Module]:
        """A timm ResNet with one BasicBlock per stage and widths 8-64 (random weights, seeded)."""
        from timm.models.resnet import BasicBlock, ResNet

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ResNet(
                BasicBlock, [1, 1, 1, 1], num_classes=10, stem_width=8, channels=(8, 16, 32, 64), zero_init_last=False
            ).eval()

    def __init__(self, source: nn.Module):
        super().__init__(source)
        try:
            self.library = "timm" if isinstance(source, _timm_resnet_classes()[0]) else "torchvision"
        except ImportError:  # pragma: no cover
            self.library = "torchvision"
        self.stages: list[nn.Sequential] = []
        i = 1
        while isinstance(getattr(source, f"layer{i}", None), nn.Module):
            self.stages.append(getattr(source, f"layer{i}"))
            i += 1

    # ----------------------------------------------------------------- blocks
    def _block_kind(self, blk: nn.Module) -> Optional[str]:
        classes = _timm_resnet_classes() if self.library == "timm" else _tv_resnet_classes()
        if type(blk) is classes[1]:
            return "BasicBlock"
        if type(blk) is classes[2]:
            return "Bottleneck"
        return None

    def _block_hooks(self, blk: nn.Module, pre: str) -> dict[str, HookPoint]:
        b = self.bridge
        pts: dict[str, HookPoint] = {f"{pre}hook_resid_pre": b(blk, "input", 0)}
        kind = self._block_kind(blk)
        if kind is not None:
            n_convs = 2 if kind == "BasicBlock" else 3
            if self.library == "timm":
                acts = [blk.act1] if kind == "BasicBlock" else [blk.act1, blk.act2]
                final_act = blk.act2 if kind == "BasicBlock" else blk.act3
                last_bn = blk.bn2 if kind == "BasicBlock" else blk.bn3
                branch = blk.drop_path if blk.drop_path is not None else (blk.se if blk.se is not None else last_bn)
                for i, act in enumerate(acts):
                    pts[f"{pre}hook_act{i + 1}"] = b(act)
            else:
                branch = blk.bn2 if kind == "BasicBlock" else blk.bn3
                for i in range(n_convs - 1):
                    pts[f"{pre}hook_act{i + 1}"] = b(blk.relu, call=i, scope=blk)
                final_act = None
            pts[f"{pre}hook_branch_out"] = b(branch)
            if blk.downsample is not None:
                pts[f"{pre}hook_shortcut"] = b(blk.downsample)
            if final_act is not None:
                pts[f"{pre}hook_resid_sum"] = b(final_act, "input", 0)
            else:
                pts[f"{pre}hook_resid_sum"] = b(blk.relu, "input", 0, call=n_convs - 1, scope=blk)
        pts[f"{pre}hook_resid_post"] = b(blk)
        return pts

    def canonical_hooks(self) -> dict[str, HookPoint]:
        pts: dict[str, HookPoint] = {}
        for s, stage in enumerate(self.stages):
            for j, blk in enumerate(stage):
                pts.update(self._block_hooks(blk, f"stages.{s}.blocks.{j}."))
        self.canonical_names = tuple(pts)
        pts.update(self.head_hooks(getattr(self.source, "fc", None)))
        return pts

    def aliases(self) -> dict[str, str]:
        out = {}
        for s, stage in enumerate(self.stages):
            n = len(stage)
            for j in range(n):
                out[f"stages.{s}.blocks.{j}"] = f"stages.{s}.blocks.{j}.hook_resid_post"
            if n:
                out[f"stages.{s}"] = f"stages.{s}.blocks.{n - 1}.hook_resid_post"
        if isinstance(getattr(self.source, "maxpool", None), nn.Module):
            out["stem"] = "maxpool.hook_out"
        names = getattr(self, "canonical_names", None)
        out.update(flat_block_aliases(names if names is not None else self.canonical_hooks()))
        return out

    # ----------------------------------------------------------------- description
    def config(self) -> VisionConfig:
        s = self.source
        depths = tuple(len(st) for st in self.stages)
        widths = []
        kinds = set()
        for st in self.stages:
            blk = st[-1]
            kind = self._block_kind(blk)
            kinds.add(kind or type(blk).__name__)
            bn = getattr(blk, "bn3", None) if kind == "Bottleneck" else getattr(blk, "bn2", None)
            widths.append(int(bn.num_features) if isinstance(bn, nn.BatchNorm2d) else 0)
        conv = first_conv(s)
        data = data_config(s if self.library == "timm" else None)
        if self.library == "timm":
            arch = (getattr(s, "pretrained_cfg", None) or {}).get("architecture", "resnet")
        else:
            arch = _TV_NAMES.get((next(iter(kinds)) if len(kinds) == 1 else "", depths), "resnet")
            blk = self.stages[0][0] if self.stages and len(self.stages[0]) else None
            if arch != "resnet" and blk is not None:
                groups = getattr(getattr(blk, "conv2", None), "groups", 1)
                width = getattr(getattr(blk, "conv1", None), "out_channels", 64)
                if groups > 1:
                    arch = f"resnext{arch.removeprefix('resnet')}_{groups}x{width // groups}d"
                elif width != 64:
                    arch = f"wide_{arch}_{width // 64}"
        pool = getattr(s, "global_pool", None)
        pool_type = getattr(pool, "pool_type", "avg") if pool is not None else "avg"
        return VisionConfig(
            family="resnet",
            architecture=arch,
            adapter=self.name,
            n_layers=sum(depths),
            stage_depths=depths,
            stage_widths=tuple(widths),
            in_chans=conv.in_channels if conv else 3,
            n_classes=linear_out(getattr(s, "fc", None)),
            pool_type=pool_type or "",
            normalization_type="BN",
            dynamic_img_size=True,
            min_image_size=32,
            **data,
            extra={
                "library": self.library,
                "block": sorted(kinds)[0] if len(kinds) == 1 else sorted(kinds),
                "resid_post": "relu(resid_sum)",
                "resid_sum": "branch_out + shortcut(resid_pre)",
                "additive_resid": False,
                "stage_modules": [f"layer{i + 1}" for i in range(len(self.stages))],
            },
        )

    def readout(self) -> ConvReadout:
        fc = getattr(self.source, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise NotImplementedError("this ResNet has no linear classifier (num_classes=0)")
        pool = getattr(self.source, "global_pool", None)
        global_avg = pool is None or getattr(pool, "pool_type", "avg") == "avg"
        if self.library == "torchvision":
            global_avg = isinstance(self.source.avgpool, nn.AdaptiveAvgPool2d) and tuple(
                torch.nn.modules.utils._pair(self.source.avgpool.output_size)
            ) == (1, 1)
        last = len(self.stages) - 1
        return ConvReadout(
            pooled_hook="hook_pooled",
            fc=fc,
            features_hook=f"layer{len(self.stages)}.hook_out",
            global_avg=global_avg,
            stream_hook=f"stages.{last}.blocks.{len(self.stages[last]) - 1}.hook_resid_post" if self.stages else None,
        )
