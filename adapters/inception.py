"""InceptionV1 under Lucid / Microscope layer names: Lucid's network and torchvision's ``googlenet``.

Two architectures, one naming scheme:

* :class:`LucidInceptionV1Adapter` wraps :class:`~visionlens.adapters.lucid_inception.LucidInceptionV1`,
  the literature's InceptionV1 (the network behind ``mixed4a:476``, the curve detectors ``mixed3b:379``
  and Microscope). Unit indices there mean what the papers mean.
* :class:`GoogLeNetAdapter` maps torchvision's ``googlenet`` (batch norm, other widths, the
  known 3x3-instead-of-5x5 "5x5" branch) onto the same names: ``conv1`` -> ``conv2d0``, ``conv2`` ->
  ``conv2d1``, ``conv3`` -> ``conv2d2``, ``inception3a`` -> ``mixed3a`` ... ``inception5b`` ->
  ``mixed5b``. **Its unit indices are its own**: ``mixed4a:476`` on googlenet is a different,
  unrelated channel (its mixed4a has 512 channels, Lucid's 508).

Hook names (both)
-----------------
::

    conv2d{0,1,2}.hook_out              after ReLU
    conv2d{0,1,2}.hook_pre_relu         conv output before ReLU (googlenet: conv + BN)
    mixed{3a..5b}.hook_out              the block output: concatenated branches (after their ReLUs)
    mixed{X}.{branch}.hook_out          branch ReLU output, branch in
                                        branch1x1, branch3x3_bottleneck, branch3x3,
                                        branch5x5_bottleneck, branch5x5, branch_pool
                                        (branch_pool = the 1x1 "pool_reduce" conv after the 3x3 max pool)
    mixed{X}.{branch}.hook_pre_relu     the same before ReLU (googlenet: conv + BN)
    hook_pooled                         global-average-pooled mixed5b, what the classifier reads
    hook_logits                         classifier output (Lucid: softmax2_pre_activation)

The module tree is hooked too (``<module path>.hook_out``): Lucid names such as
``mixed4a_3x3_pre_relu_conv``, ``maxpool4``, ``localresponsenorm0`` for the Lucid network,
``inception4a.branch2.1.conv`` for googlenet. The concatenation order of ``mixed{X}.hook_out`` is
1x1, 3x3, 5x5, pool (both architectures), so channel ``c`` of a block maps to a branch via
``cfg.extra["branch_offsets"]``.

Aliases (both): Lucid's flat names ``mixed4a_1x1``, ``mixed4a_3x3_bottleneck``, ``mixed4a_3x3``,
``mixed4a_5x5_bottleneck``, ``mixed4a_5x5``, ``mixed4a_pool_reduce`` (and ``*_pre_relu``,
``*_pre_relu_conv``), ``conv2d0_pre_relu``, ``softmax2_pre_activation`` / ``softmax2_pre_activation_matmul``
(-> ``hook_logits``), ``avgpool0`` (-> ``hook_pooled``). ``mixed4a`` resolves to ``mixed4a.hook_out``, so
``mixed4a:476`` parses everywhere. Lucid's max-pool names are not aliased on googlenet, whose own
``maxpool1`` .. ``maxpool4`` modules sit at other places.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from visionlens.config import IMAGENET_MEAN, IMAGENET_STD, VisionConfig
from visionlens.hook_points import HookPoint
from visionlens.validation import VisionLensError, check_image_batch

from .bridging import ConvNetAdapter, find_inplace_targets
from .conv_blocks import ConvReadout, linear_out
from .lucid_inception import LUCID_MEAN, LUCID_STD, MIXED_SPECS, LucidInceptionV1, is_lucid_inceptionv1

__all__ = ["GoogLeNetAdapter", "LucidInceptionV1Adapter", "MIXED_LAYERS", "BRANCHES"]

MIXED_LAYERS = tuple(MIXED_SPECS)  # mixed3a ... mixed5b
STEM_LAYERS = ("conv2d0", "conv2d1", "conv2d2")
# canonical branch name -> Lucid suffix
BRANCHES = {
    "branch1x1": "1x1",
    "branch3x3_bottleneck": "3x3_bottleneck",
    "branch3x3": "3x3",
    "branch5x5_bottleneck": "5x5_bottleneck",
    "branch5x5": "5x5",
    "branch_pool": "pool_reduce",
}
_CONCAT_ORDER = ("branch1x1", "branch3x3", "branch5x5", "branch_pool")


class _InceptionAdapter(ConvNetAdapter):
    """Shared naming: subclasses give ``_stem()``, ``_mixed()``, ``_fc()`` module maps."""

    family = "inception"
    priority = 10

    def _stem(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        """``conv2d{i}`` -> (post-ReLU module, pre-ReLU module)."""
        raise NotImplementedError

    def _mixed(self) -> dict[str, tuple[nn.Module, dict[str, tuple[nn.Module, nn.Module]]]]:
        """``mixed{X}`` -> (block module, {branch: (post-ReLU module, pre-ReLU module)})."""
        raise NotImplementedError

    def _fc(self) -> nn.Module:
        raise NotImplementedError

    def canonical_hooks(self) -> dict[str, HookPoint]:
        b = self.bridge
        pts: dict[str, HookPoint] = {}
        for name, (post, pre) in self._stem().items():
            pts[f"{name}.hook_out"] = b(post)
            pts[f"{name}.hook_pre_relu"] = b(pre)
        for name, (block, branches) in self._mixed().items():
            for br, (post, pre) in branches.items():
                pts[f"{name}.{br}.hook_pre_relu"] = b(pre)
                pts[f"{name}.{br}.hook_out"] = b(post)
            pts[f"{name}.hook_out"] = b(block)
        fc = self._fc()
        pts["hook_pooled"] = b(fc, "input", 0)
        pts["hook_logits"] = b(fc)
        return pts

    def aliases(self) -> dict[str, str]:
        out = {}
        for name in STEM_LAYERS:
            out[f"{name}_pre_relu"] = f"{name}.hook_pre_relu"
            out[f"{name}_pre_relu_conv"] = f"{name}.hook_pre_relu"
        for name in MIXED_LAYERS:
            for br, suffix in BRANCHES.items():
                out[f"{name}_{suffix}"] = f"{name}.{br}.hook_out"
                out[f"{name}_{suffix}_pre_relu"] = f"{name}.{br}.hook_pre_relu"
                out[f"{name}_{suffix}_pre_relu_conv"] = f"{name}.{br}.hook_pre_relu"
        out["softmax2_pre_activation"] = "hook_logits"
        out["softmax2_pre_activation_matmul"] = "hook_logits"
        out["avgpool0"] = "hook_pooled"
        return out

    def _channels(self) -> dict[str, dict[str, int]]:
        raise NotImplementedError

    def _config(self, architecture: str, mean: tuple, std: tuple, normalization: Any, extra: dict) -> VisionConfig:
        ch = self._channels()
        widths = {n: sum(ch[n][br] for br in _CONCAT_ORDER) for n in MIXED_LAYERS}
        offsets: dict[str, dict[str, tuple[int, int]]] = {}
        for n in MIXED_LAYERS:
            o, offsets[n] = 0, {}
            for br in _CONCAT_ORDER:
                offsets[n][br] = (o, o + ch[n][br])
                o += ch[n][br]
        groups = [[n for n in MIXED_LAYERS if n.startswith(f"mixed{g}")] for g in "345"]
        return VisionConfig(
            family="inception",
            architecture=architecture,
            adapter=self.name,
            n_layers=len(MIXED_LAYERS),
            stage_depths=tuple(len(g) for g in groups),
            stage_widths=tuple(widths[g[-1]] for g in groups),
            in_chans=3,
            n_classes=linear_out(self._fc()),
            image_size=(224, 224),
            mean=mean,
            std=std,
            crop_pct=0.875,
            interpolation="bilinear",
            pool_type="avg",
            normalization_type=normalization,
            dynamic_img_size=True,
            min_image_size=32,
            extra={
                "layers": list(STEM_LAYERS + MIXED_LAYERS),
                "layer_channels": widths,
                "branch_channels": ch,
                "branch_offsets": offsets,
                **extra,
            },
        )

    def readout(self) -> ConvReadout:
        fc = self._fc()
        if not isinstance(fc, nn.Linear):
            raise NotImplementedError("this model has no linear classifier")
        return ConvReadout("hook_pooled", fc, features_hook="mixed5b.hook_out", global_avg=True)


# ============================================================================ torchvision googlenet
def _googlenet_class() -> type:
    from torchvision.models import GoogLeNet

    return GoogLeNet


_TV_STEM = {"conv2d0": "conv1", "conv2d1": "conv2", "conv2d2": "conv3"}


class GoogLeNetAdapter(_InceptionAdapter):
    """torchvision ``googlenet`` under Lucid layer names (its unit indices are its own)."""

    name = "googlenet"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        try:
            return isinstance(module, _googlenet_class())
        except ImportError:  # pragma: no cover
            return False

    @classmethod
    def example_source(cls) -> nn.Module:
        """torchvision GoogLeNet without aux heads, 10 classes (its widths are fixed; fast on small inputs; seeded)."""
        import torchvision

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return torchvision.models.GoogLeNet(num_classes=10, aux_logits=False, init_weights=True).eval()

    def _stem(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        s = self.source
        return {lucid: (getattr(s, tv), getattr(s, tv).bn) for lucid, tv in _TV_STEM.items()}

    def _mixed(self) -> dict[str, tuple[nn.Module, dict[str, tuple[nn.Module, nn.Module]]]]:
        out = {}
        for name in MIXED_LAYERS:
            blk = getattr(self.source, "inception" + name.removeprefix("mixed"))
            convs = {
                "branch1x1": blk.branch1,
                "branch3x3_bottleneck": blk.branch2[0],
                "branch3x3": blk.branch2[1],
                "branch5x5_bottleneck": blk.branch3[0],
                "branch5x5": blk.branch3[1],
                "branch_pool": blk.branch4[1],
            }
            out[name] = (blk, {br: (c, c.bn) for br, c in convs.items()})
        return out

    def _fc(self) -> nn.Module:
        return self.source.fc

    def _channels(self) -> dict[str, dict[str, int]]:
        return {
            name: {br: int(post.bn.num_features) for br, (post, _) in branches.items()}
            for name, (_, branches) in self._mixed().items()
        }

    def config(self) -> VisionConfig:
        return self._config(
            "googlenet",
            IMAGENET_MEAN,
            IMAGENET_STD,
            "BN",
            {
                "library": "torchvision",
                "lucid_names": "mapped; unit indices are torchvision's own",
                "transform_input": bool(getattr(self.source, "transform_input", False)),
                "module_map": {**_TV_STEM, **{n: "inception" + n.removeprefix("mixed") for n in MIXED_LAYERS}},
                "branch5x5_kernel": 3,
            },
        )


# ============================================================================ Lucid InceptionV1
class LucidInceptionV1Adapter(_InceptionAdapter):
    """:class:`LucidInceptionV1` (the literature's InceptionV1; Lucent's ``inceptionv1`` weights) and
    Lucent's own ``modelzoo.inceptionv1.InceptionV1`` module (same names, same input convention)."""

    name = "lucid_inceptionv1"

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return is_lucid_inceptionv1(module)

    def _inplace(self) -> Any:
        if not hasattr(self, "_inplace_targets") and not isinstance(self.source, LucidInceptionV1):
            # Lucent's forward runs only at 224 px (fixed 7x7 average pool): dry-run there
            p = next(self.source.parameters())
            x = torch.zeros(1, 3, 224, 224, device=p.device, dtype=p.dtype)
            self._inplace_targets = find_inplace_targets(self.source, x)
        return super()._inplace()

    @classmethod
    def example_source(cls) -> nn.Module:
        """:class:`LucidInceptionV1` with 10 classes (fixed widths; fast on small inputs; seeded)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return LucidInceptionV1(num_classes=10).eval()

    def _m(self, name: str) -> nn.Module:
        return self.source._modules[name]

    def _stem(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        return {n: (self._m(n), self._m(f"{n}_pre_relu_conv")) for n in STEM_LAYERS}

    def _mixed(self) -> dict[str, tuple[nn.Module, dict[str, tuple[nn.Module, nn.Module]]]]:
        return {
            name: (
                self._m(name),
                {
                    br: (self._m(f"{name}_{sfx}"), self._m(f"{name}_{sfx}_pre_relu_conv"))
                    for br, sfx in BRANCHES.items()
                },
            )
            for name in MIXED_LAYERS
        }

    def _fc(self) -> nn.Module:
        return self.source.softmax2_pre_activation_matmul

    def _channels(self) -> dict[str, dict[str, int]]:
        return {
            name: {br: int(pre.out_channels) for br, (_, pre) in branches.items()}
            for name, (_, branches) in self._mixed().items()
        }

    def config(self) -> VisionConfig:
        return self._config(
            "lucid_inceptionv1",
            LUCID_MEAN,
            LUCID_STD,
            None,
            {
                "library": "visionlens" if isinstance(self.source, LucidInceptionV1) else "lucent",
                "input_range": (-117.0, 138.0),
                "labels": "inception5h (1008 classes; index 0 is a dummy background class)",
                "local_response_norm": True,
            },
        )

    def validate(self, x: Any) -> None:
        """Shape / dtype checks as usual; values are Lucid-scaled (``[-117, 138]``), not mean/std-normalized."""
        check_image_batch(x, self.cfg, check_values=False)
        if x.device.type == "cpu" and x.numel():
            peak = x.detach().abs().amax()
            if not bool(torch.isfinite(peak)):
                raise VisionLensError("Expected finite pixel values, but the input contains NaN or inf.")
            if float(peak) > 200.0:
                raise VisionLensError(
                    f"Expected Lucid-scaled pixels (pixels_0_1 * 255 - 117, range -117..138) for "
                    f"LucidInceptionV1, but the input reaches {float(peak):.1f}; it looks like raw 0-255 "
                    "pixels. Use `model.preprocess(image)`."
                )
