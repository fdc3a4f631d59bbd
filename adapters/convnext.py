"""timm ConvNeXt (``timm.models.convnext.ConvNeXt``: convnext_atto ... convnext_xxlarge, ConvNeXt-V2).

Hook names
----------
* Module tree: ``<module path>.hook_out`` on every submodule output, named as in timm
  (``stem.0.hook_out``, ``stages.2.downsample.1.hook_out``, ``stages.2.blocks.3.conv_dw.hook_out``,
  ``stages.2.blocks.3.mlp.fc1.hook_out``, ``head.fc.hook_out``). Note that in models built with
  ``conv_mlp=False`` (convnext_tiny and larger) timm runs the block's norm and MLP channels-last, so
  those module-tree hooks are ``[batch, H, W, C]``; the canonical MLP hooks below are always
  ``[batch, C, H, W]``.
* Residual stream, ``s`` = stage (``stages.{s}``), ``b`` = block (``stages.{s}.blocks.{b}``)::

    stages.{s}.blocks.{b}.hook_resid_pre     block input
    stages.{s}.blocks.{b}.mlp.hook_pre       MLP hidden pre-activation  [batch, 4C, H, W]
    stages.{s}.blocks.{b}.mlp.hook_post      MLP hidden activation (GELU output, the usual "neurons")
    stages.{s}.blocks.{b}.hook_branch_out    branch output incl. layer scale (gamma) and drop-path,
                                             right before the addition (bridged on ``drop_path``)
    stages.{s}.blocks.{b}.hook_resid_post    block output

  ConvNeXt blocks have an identity shortcut and no activation after the sum, so
  ``resid_post == resid_pre + branch_out`` holds exactly (tested with ``torch.equal``). Blocks with
  a projection shortcut (none in the standard models) also get ``hook_shortcut``.
* Head: ``hook_pooled`` (what ``head.fc`` reads: pooled features after the head LayerNorm) and
  ``hook_logits``.
* Aliases: ``stages.{s}.blocks.{b}.mlp`` -> ``...mlp.hook_post``; ``stages.{s}.blocks.{b}`` and
  ``stages.{s}`` resolve to their module-tree ``.hook_out`` (the block / stage output).
  TransformerLens's flat block index: ``blocks.{i}.hook_resid_pre|hook_resid_post|hook_branch_out|
  mlp.hook_pre|mlp.hook_post`` (and ``blocks.{i}``), ``i`` numbering all blocks in order, so
  ``cache["resid_post", 3]`` / ``get_act_name("post", 3)`` work.
* Channels-last module-tree hooks (``norm`` and ``mlp.*`` of ``conv_mlp=False`` blocks) are listed by
  ``adapter.channels_last_hooks()``; unit specs on them index the last axis (``C``).

Direct logit attribution
------------------------
The last stage's output is averaged, put through the head LayerNorm and the classifier. With the
LayerNorm's scale frozen at the cached forward (as TransformerLens does), this is linear, so the
components of ``cache.decompose_resid(stage=-1)`` give logit terms summing to
``logit - cache.folded_head_bias(classes)`` (fc bias + fc applied to the LN bias), exactly;
``cache.decompose_final_features(classes)`` splits it per channel / location.
"""

from __future__ import annotations

from torch import nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint

from .bridging import ConvNetAdapter
from .conv_blocks import ConvReadout, data_config, first_conv, flat_block_aliases, linear_out

__all__ = ["ConvNeXtAdapter"]


def _convnext_classes() -> tuple[type, type]:
    from timm.models.convnext import ConvNeXt, ConvNeXtBlock

    return ConvNeXt, ConvNeXtBlock


class ConvNeXtAdapter(ConvNetAdapter):
    """timm ConvNeXt / ConvNeXt-V2 with residual-stream and MLP-neuron hooks."""

    name = "convnext"
    family = "convnext"
    priority = 10

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        try:
            return isinstance(module, _convnext_classes()[0])
        except ImportError:  # pragma: no cover - timm is a dependency
            return False

    @classmethod
    def example_source(cls) -> nn.Module:
        """A timm ConvNeXt with one block per stage, widths 8-64, conv MLPs like ``convnext_atto`` (seeded)."""
        import torch
        from timm.models.convnext import ConvNeXt

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), num_classes=10, conv_mlp=True).eval()

    def _blocks(self):
        _, Block = _convnext_classes()
        for s, stage in enumerate(self.source.stages):
            for b, blk in enumerate(stage.blocks):
                yield s, b, blk, type(blk) is Block

    def canonical_hooks(self) -> dict[str, HookPoint]:
        pts: dict[str, HookPoint] = {}
        for s, b, blk, known in self._blocks():
            pre = f"stages.{s}.blocks.{b}."
            pts[pre + "hook_resid_pre"] = self.bridge(blk, "input", 0)
            if known:
                act = getattr(blk.mlp, "act", None)
                if isinstance(act, nn.Module):
                    cl = not blk.use_conv_mlp
                    pts[pre + "mlp.hook_pre"] = self.bridge(act, "input", 0, channels_last=cl)
                    pts[pre + "mlp.hook_post"] = self.bridge(act, channels_last=cl)
                pts[pre + "hook_branch_out"] = self.bridge(blk.drop_path)
                if not isinstance(blk.shortcut, nn.Identity):
                    pts[pre + "hook_shortcut"] = self.bridge(blk.shortcut)
            pts[pre + "hook_resid_post"] = self.bridge(blk)
        self.canonical_names = tuple(pts)
        pts.update(self.head_hooks(getattr(self.source.head, "fc", None)))
        return pts

    def aliases(self) -> dict[str, str]:
        out = {}
        for s, b, blk, known in self._blocks():
            if known and isinstance(getattr(blk.mlp, "act", None), nn.Module):
                out[f"stages.{s}.blocks.{b}.mlp"] = f"stages.{s}.blocks.{b}.mlp.hook_post"
        names = getattr(self, "canonical_names", None)
        out.update(flat_block_aliases(names if names is not None else self.canonical_hooks()))
        return out

    def channels_last_hooks(self) -> frozenset[str]:
        """Module-tree hooks whose tensors are ``[batch, H, W, C]``: timm runs the norm and MLP of
        ``conv_mlp=False`` blocks channels-last (the canonical ``mlp.hook_pre|post`` are channels-first)."""
        out = set()
        for s, b, blk, known in self._blocks():
            if not known or blk.use_conv_mlp:
                continue
            pre = f"stages.{s}.blocks.{b}."
            out.add(pre + "norm.hook_out")
            out.update(f"{pre}mlp.{p}.hook_out" if p else f"{pre}mlp.hook_out" for p, _ in blk.mlp.named_modules())
        return frozenset(out)

    def config(self) -> VisionConfig:
        src = self.source
        depths = tuple(len(st.blocks) for st in src.stages)
        widths = []
        for st in src.stages:
            blk = st.blocks[-1] if len(st.blocks) else None
            conv = getattr(blk, "conv_dw", None)
            widths.append(int(conv.out_channels) if isinstance(conv, nn.Conv2d) else 0)
        blk0 = next((blk for _, _, blk, known in self._blocks() if known), None)
        d_mlp = None
        if blk0 is not None:
            fc1 = blk0.mlp.fc1
            d_mlp = int(getattr(fc1, "out_features", getattr(fc1, "out_channels", 0)))
        conv = first_conv(src)
        fc = getattr(src.head, "fc", None)
        pool = getattr(src.head, "global_pool", None)
        arch = (getattr(src, "pretrained_cfg", None) or {}).get("architecture", "convnext")
        return VisionConfig(
            family="convnext",
            architecture=arch,
            adapter=self.name,
            n_layers=sum(depths),
            stage_depths=depths,
            stage_widths=tuple(widths),
            d_mlp=d_mlp,
            in_chans=conv.in_channels if conv else 3,
            n_classes=linear_out(fc),
            pool_type=getattr(pool, "pool_type", "avg") or "",
            normalization_type="LN",
            dynamic_img_size=True,
            min_image_size=32,
            **data_config(src),
            extra={
                "library": "timm",
                "conv_mlp": bool(getattr(blk0, "use_conv_mlp", False)),
                "layer_scale": getattr(blk0, "gamma", None) is not None,
                "grn": hasattr(getattr(blk0, "mlp", None), "grn"),
                "head_norm_first": not isinstance(src.norm_pre, nn.Identity),
                "resid_post": "resid_pre + branch_out",
            },
        )

    def readout(self) -> ConvReadout:
        """``head.fc`` reads ``hook_pooled``. With the default head (pool -> LayerNorm -> fc) the pooled
        vector is the LayerNorm of the spatial mean of the last stage, so ``global_avg`` is False and
        ``norm`` is the head LayerNorm; with ``head_norm_first`` it is the mean of ``norm_pre``'s output."""
        src = self.source
        fc = getattr(src.head, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise NotImplementedError("this ConvNeXt has no linear classifier (num_classes=0)")
        pool = getattr(src.head, "global_pool", None)
        is_avg = getattr(pool, "pool_type", "avg") == "avg"
        pre_logits = getattr(src.head, "pre_logits", None)
        if pre_logits is not None and not isinstance(pre_logits, nn.Identity):
            return ConvReadout(
                "hook_pooled", fc, features_hook=None, global_avg=False, norm=None, extra={"pre_logits": pre_logits}
            )
        if not isinstance(src.norm_pre, nn.Identity):
            return ConvReadout(
                "hook_pooled",
                fc,
                features_hook="norm_pre.hook_out",
                global_avg=is_avg,
                stream_why="the stream is normalized per location (norm_pre) before pooling",
            )
        norm = getattr(src.head, "norm", None)
        n_stages = len(src.stages)
        last = [b for s, b, _, _ in self._blocks() if s == n_stages - 1]
        return ConvReadout(
            "hook_pooled",
            fc,
            features_hook=f"stages.{n_stages - 1}.hook_out",
            global_avg=is_avg and (norm is None or isinstance(norm, nn.Identity)),
            norm=None if isinstance(norm, nn.Identity) else norm,
            extra={"avg_pool": is_avg},
            stream_hook=f"stages.{n_stages - 1}.blocks.{last[-1]}.hook_resid_post" if last else None,
            stream_why="" if is_avg and last else "the head does not average-pool the last stage",
        )
