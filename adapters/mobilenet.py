"""torchvision MobileNetV2 (``torchvision.models.MobileNetV2``, any ``width_mult``).

Stages
------
``features`` is a flat ``Sequential``: ``features.0`` is the stem conv, then 17 ``InvertedResidual``
blocks, then the final 1x1 conv. visionlens groups the blocks into the 7 stages of the standard
MobileNetV2 table (one stage per ``(t, c, n, s)`` row: depths 1, 2, 3, 4, 3, 3, 1; output widths
16, 24, 32, 64, 96, 160, 320 times ``width_mult``). For a custom ``inverted_residual_setting`` a new
stage starts at every block without an identity shortcut (each table row starts with a stride-2
or channel-changing block). ``cfg.extra["features_index"]`` maps ``stages.{s}.blocks.{b}`` to the
``features`` index, and ``cfg.extra["residual"]`` says which blocks add their input.

Hook names
----------
* Module tree: ``<module path>.hook_out`` (``features.0.hook_out``, ``features.4.conv.1.hook_out``,
  ``classifier.1.hook_out``).
* Per block::

    stages.{s}.blocks.{b}.hook_resid_pre     block input
    stages.{s}.blocks.{b}.hook_expand        expansion 1x1 conv + BN + ReLU6 output (blocks with t != 1)
    stages.{s}.blocks.{b}.hook_depthwise     depthwise 3x3 conv + BN + ReLU6 output
    stages.{s}.blocks.{b}.hook_branch_out    the block's ``conv`` Sequential output (linear bottleneck)
    stages.{s}.blocks.{b}.hook_resid_post    block output

  For blocks with an identity shortcut (``use_res_connect``: stride 1 and equal widths)
  ``resid_post == resid_pre + branch_out`` exactly; for the others ``resid_post == branch_out``.
* Head: ``hook_pooled`` (globally average-pooled ``features`` output, what the classifier's
  ``Linear`` reads) and ``hook_logits``.
* Aliases: ``stages.{s}.blocks.{b}`` -> ``...hook_resid_post``, ``stages.{s}`` -> the stage's last
  ``hook_resid_post``, ``stem`` -> ``features.0.hook_out``; TransformerLens's flat block index
  ``blocks.{i}.hook_resid_pre|hook_expand|hook_depthwise|hook_branch_out|hook_resid_post`` (and
  ``blocks.{i}``), ``i`` numbering the 17 blocks in order, so ``cache["resid_post", 3]`` works.

Direct logit attribution
------------------------
The additive residual stream ends at the last block (``features.17``); the head conv
(``features.18``: 1x1 conv + BN + ReLU6), the average pool and the classifier follow. Conv + BN is
affine; ReLU6 is not, so ``readout()`` takes ReLU6 with its gates frozen at the cached forward
(``relu6(z) = g * z + 6 * [z >= 6]``, ``g = [0 < z < 6]``, an identity for this input): the
components of ``cache.decompose_resid(stage=-1)`` map to exact terms of the logit that sum to
``logit - cache.folded_head_bias(classes)`` (that bias is per image: the classifier bias plus the BN
shift and saturated units through the frozen gates). The terms are exact for this input; they are
not what the logit would be with a component removed (the gates would change).
``cache.decompose_final_features(classes)`` splits the logit over the 1280 channels / locations of
the head's output instead (no frozen gate: it sits after ReLU6).
"""

from __future__ import annotations

from torch import nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint

from .bridging import ConvNetAdapter
from .conv_blocks import ConvReadout, data_config, first_conv, flat_block_aliases, linear_out

__all__ = ["MobileNetV2Adapter", "STANDARD_DEPTHS"]

STANDARD_DEPTHS = (1, 2, 3, 4, 3, 3, 1)  # n of each (t, c, n, s) row of the MobileNetV2 paper's table


def _mobilenet_classes() -> tuple[type, type]:
    from torchvision.models.mobilenetv2 import InvertedResidual, MobileNetV2

    return MobileNetV2, InvertedResidual


class MobileNetV2Adapter(ConvNetAdapter):
    """torchvision MobileNetV2 with per-block residual hooks, grouped into the paper's 7 stages."""

    name = "mobilenet_v2"
    family = "mobilenet"
    priority = 10

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        try:
            return isinstance(module, _mobilenet_classes()[0])
        except ImportError:  # pragma: no cover
            return False

    @classmethod
    def example_source(cls) -> nn.Module:
        """torchvision MobileNetV2 at width 0.25 (all 17 blocks, so the standard stages; seeded)."""
        import torch
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25).eval()

    def __init__(self, source: nn.Module):
        super().__init__(source)
        _, IR = _mobilenet_classes()
        blocks = [(i, m) for i, m in enumerate(source.features) if isinstance(m, IR)]
        self.stages: list[list[tuple[int, nn.Module]]] = []
        if len(blocks) == sum(STANDARD_DEPTHS):
            it = iter(blocks)
            self.stages = [[next(it) for _ in range(n)] for n in STANDARD_DEPTHS]
        else:
            for i, blk in blocks:
                if not self.stages or not getattr(blk, "use_res_connect", False):
                    self.stages.append([])
                self.stages[-1].append((i, blk))

    def canonical_hooks(self) -> dict[str, HookPoint]:
        pts: dict[str, HookPoint] = {}
        for s, stage in enumerate(self.stages):
            for b, (_, blk) in enumerate(stage):
                pre = f"stages.{s}.blocks.{b}."
                pts[pre + "hook_resid_pre"] = self.bridge(blk, "input", 0)
                conv = blk.conv
                if len(conv) == 4:  # expand, depthwise, project conv, bn
                    pts[pre + "hook_expand"] = self.bridge(conv[0])
                if len(conv) >= 3:
                    pts[pre + "hook_depthwise"] = self.bridge(conv[len(conv) - 3])
                pts[pre + "hook_branch_out"] = self.bridge(conv)
                pts[pre + "hook_resid_post"] = self.bridge(blk)
        self.canonical_names = tuple(pts)
        pts.update(self.head_hooks(self._fc()))
        return pts

    def _fc(self):
        cls = getattr(self.source, "classifier", None)
        if isinstance(cls, nn.Sequential) and len(cls) and isinstance(cls[-1], nn.Linear):
            return cls[-1]
        return cls if isinstance(cls, nn.Linear) else None

    def aliases(self) -> dict[str, str]:
        out = {"stem": "features.0.hook_out"}
        for s, stage in enumerate(self.stages):
            for b in range(len(stage)):
                out[f"stages.{s}.blocks.{b}"] = f"stages.{s}.blocks.{b}.hook_resid_post"
            if stage:
                out[f"stages.{s}"] = f"stages.{s}.blocks.{len(stage) - 1}.hook_resid_post"
        names = getattr(self, "canonical_names", None)
        out.update(flat_block_aliases(names if names is not None else self.canonical_hooks()))
        return out

    def config(self) -> VisionConfig:
        src = self.source
        depths = tuple(len(st) for st in self.stages)
        widths = tuple(int(st[-1][1].out_channels) for st in self.stages)
        conv = first_conv(src)
        return VisionConfig(
            family="mobilenet",
            architecture="mobilenet_v2",
            adapter=self.name,
            n_layers=sum(depths),
            stage_depths=depths,
            stage_widths=widths,
            in_chans=conv.in_channels if conv else 3,
            n_classes=linear_out(self._fc()),
            pool_type="avg",
            normalization_type="BN",
            dynamic_img_size=True,
            min_image_size=32,
            **data_config(None),
            extra={
                "library": "torchvision",
                "last_channel": int(getattr(src, "last_channel", 0)),
                "features_index": {
                    f"stages.{s}.blocks.{b}": i for s, st in enumerate(self.stages) for b, (i, _) in enumerate(st)
                },
                "residual": [[bool(blk.use_res_connect) for _, blk in st] for st in self.stages],
                "resid_post": "resid_pre + branch_out (residual blocks), branch_out (others)",
            },
        )

    def readout(self) -> ConvReadout:
        fc = self._fc()
        if fc is None:
            raise NotImplementedError("this MobileNetV2 has no linear classifier")
        feats = self.source.features
        last = len(feats) - 1
        ro = ConvReadout("hook_pooled", fc, features_hook=f"features.{last}.hook_out", global_avg=True)
        if not self.stages or not self.stages[-1]:
            ro.stream_why = "no inverted-residual blocks"
            return ro
        s, b = len(self.stages) - 1, len(self.stages[-1]) - 1
        ro.stream_hook = f"stages.{s}.blocks.{b}.hook_resid_post"
        head = feats[last]
        parts = list(head) if isinstance(head, nn.Sequential) else []
        kinds = [type(m).__name__ for m in parts]
        if self.stages[-1][-1][0] != last - 1 or kinds[:2] != ["Conv2d", "BatchNorm2d"] or len(parts) != 3:
            ro.stream_why = "the head after the last block is not conv + BatchNorm + ReLU/ReLU6"
        elif isinstance(parts[2], nn.ReLU6) or (
            isinstance(parts[2], nn.Hardtanh) and (parts[2].min_val, parts[2].max_val) == (0.0, 6.0)
        ):
            ro.head_act = "relu6"
        elif isinstance(parts[2], nn.ReLU):
            ro.head_act = "relu"
        else:
            ro.stream_why = f"the head activation {kinds[2]} has no exact frozen-gate form"
        if not ro.stream_why:
            ro.head_conv, ro.head_bn, ro.head_pre_hook = parts[0], parts[1], f"features.{last}.1.hook_out"
        return ro
