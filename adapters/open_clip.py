"""open_clip CLIP models: both towers with TransformerLens hook names.

The adapter wraps a whole open_clip ``CLIP`` / ``CustomTextCLIP`` model. Hook names are
prefixed by tower:

* ``visual.*`` - the image tower. A ``VisionTransformer`` gets TransformerLens names
  (``visual.hook_embed``, ``visual.hook_pos_embed``, ``visual.ln_pre.hook_scale``,
  ``visual.blocks.{l}.attn.hook_pattern`` ..., ``visual.ln_final.hook_scale|hook_normalized``
  for ``ln_post``, ``visual.hook_pooled``, ``visual.hook_proj``). A ``ModifiedResNet`` (RN50
  style) gets the module tree (``visual.layer1.0.conv1.hook_out`` ...), residual-stream names
  (``visual.stages.{s}.blocks.{b}.hook_resid_pre|hook_branch_out|hook_resid_post``) and the
  attention-pool hooks (``visual.attnpool.hook_tokens|hook_q|hook_k|hook_v|hook_attn_scores|
  hook_pattern|hook_z|hook_result|hook_out``).
* ``text.*`` - the text transformer (``text.hook_embed``, ``text.blocks.{l}...``,
  ``text.ln_final.*``, ``text.hook_pooled``, ``text.hook_proj``).
* ``hook_logits`` - image-text similarity logits (or zero-shot class logits).

What ``model(...)`` returns (``HookedVisionModel.forward`` passes its arguments here):

* ``model(images)`` - image embeddings ``[batch, embed_dim]`` (``clip.encode_image``), or
  zero-shot class logits ``[batch, n_classes]`` when a zero-shot head is attached
  (:func:`visionlens.clip.zero_shot_head`).
* ``model(None, texts)`` - text embeddings (``clip.encode_text``); ``texts`` is a list of
  strings (tokenized with open_clip's own tokenizer) or a token tensor ``[batch, context]``.
* ``model(images, texts)`` - similarity logits ``[n_images, n_texts]``
  (``clip.get_logits(images, texts)[0]``: logit scale times cosine similarity, plus the logit bias).
* ``return_type="embeds"`` always returns the embeddings (a tuple when both towers run).

A tower with no hook attached runs the source module itself (exact, no overhead). A hooked
transformer block runs visionlens code over the source's modules with fused SDPA attention
unless an attention-internal hook (q, k, v, scores, pattern, z, result) of that block is active.
Layer scale is folded into ``hook_attn_out`` / ``hook_mlp_out`` (and per-head ``hook_result``) so
``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out`` hold exactly.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.cache import VisionActivationCache
from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint, InlineHookPoint, fire, is_active
from visionlens.validation import VisionLensError, check_image_batch

from . import Adapter
from .timm_vit import LinearReadout, _is_identity, _LayerHooks, _ln_scale

__all__ = ["OpenCLIPAdapter", "ClipActivationCache", "load_open_clip"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


# ---------------------------------------------------------------------------- helpers
class _ActiveSet:
    """Tracks which of a group of hook points currently have hooks (O(1) per add/remove)."""

    def __init__(self) -> None:
        self.points: set[int] = set()

    def watch(self, hp: HookPoint) -> None:
        key = id(hp)

        def sync() -> None:
            if is_active(hp):
                self.points.add(key)
            else:
                self.points.discard(key)

        hp._listeners.append(sync)

    def __bool__(self) -> bool:
        return bool(self.points)


def _is_open_clip(module: nn.Module) -> bool:
    return type(module).__module__.startswith("open_clip")


def _block_supported(blk: nn.Module) -> bool:
    from open_clip.transformer import Attention, CustomResidualAttentionBlock, ResidualAttentionBlock

    if type(blk) is ResidualAttentionBlock:
        a = blk.attn
        return (isinstance(a, nn.MultiheadAttention) and a.batch_first and a._qkv_same_embed_dim
                and a.bias_k is None and not a.add_zero_attn and not hasattr(blk, "ln_1_kv"))
    if type(blk) is CustomResidualAttentionBlock:
        return type(blk.attn) is Attention and blk.attn.logit_scale is None
    return False


def _result_linear(blk: nn.Module) -> bool:
    """Per-head outputs sum linearly to the attention output (no norm after the heads)."""
    return _is_identity(getattr(blk.attn, "ln_inner", None)) and _is_identity(getattr(blk, "ln_attn", None))


def _attn_parts(blk: nn.Module) -> SimpleNamespace:
    a = blk.attn
    if isinstance(a, nn.MultiheadAttention):
        return SimpleNamespace(W=a.in_proj_weight, b=a.in_proj_bias, H=a.num_heads, dh=a.head_dim, ln_q=None,
                               ln_k=None, head_scale=None, ln_inner=None, out=a.out_proj, out_drop=None,
                               drop=a.dropout, post=None)
    return SimpleNamespace(W=a.in_proj_weight, b=a.in_proj_bias, H=a.num_heads, dh=a.head_dim,
                           ln_q=None if _is_identity(a.ln_q) else a.ln_q, ln_k=None if _is_identity(a.ln_k) else a.ln_k,
                           head_scale=a.head_scale, ln_inner=None if _is_identity(a.ln_inner) else a.ln_inner,
                           out=a.out_proj, out_drop=a.out_drop, drop=a.attn_drop.p,
                           post=None if _is_identity(blk.ln_attn) else blk.ln_attn)


def _prepare_mask(mask: Optional[Tensor], B: int, H: int, L: int, dtype: torch.dtype) -> Optional[Tensor]:
    if mask is None:
        return None
    if mask.ndim == 3:  # [B*H, L, L] -> [B, H, L, L]
        mask = mask.reshape(B, H, L, L)
    if mask.dtype == torch.bool:
        new = torch.zeros_like(mask, dtype=dtype)
        new.masked_fill_(mask, float("-inf"))
        return new
    return mask.to(dtype)


# ---------------------------------------------------------------------------- transformer stacks
class _Blocks:
    """Hooked execution of an open_clip ``Transformer`` (a list of residual attention blocks)."""

    def __init__(self, resblocks: nn.ModuleList, tower_active: _ActiveSet):
        self.resblocks = resblocks
        self.layers: list[_LayerHooks] = []
        self.active: list[_ActiveSet] = []
        for blk in resblocks:
            lh = _LayerHooks(with_result=_result_linear(blk))
            act = _ActiveSet()
            for hp in lh.points.values():
                act.watch(hp)
                tower_active.watch(hp)
            self.layers.append(lh)
            self.active.append(act)

    def points(self, prefix: str) -> dict[str, HookPoint]:
        out: dict[str, HookPoint] = {}
        for l, lh in enumerate(self.layers):
            out.update({f"{prefix}blocks.{l}.{n}": hp for n, hp in lh.points.items()})
        return out

    def run(self, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        for blk, h, act in zip(self.resblocks, self.layers, self.active):
            x = self._block(blk, h, x, mask) if act else blk(x, attn_mask=mask)
        return x

    def _attention(self, blk: nn.Module, h: _LayerHooks, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        p = _attn_parts(blk)
        B, L, _ = x.shape
        H, dh = p.H, p.dh
        q, k, v = F.linear(x, p.W, p.b).chunk(3, dim=-1)
        q, k, v = q.view(B, L, H, dh), k.view(B, L, H, dh), v.view(B, L, H, dh)
        if p.ln_q is not None:
            q = p.ln_q(q.transpose(1, 2)).transpose(1, 2)
        if p.ln_k is not None:
            k = p.ln_k(k.transpose(1, 2)).transpose(1, 2)
        q, k, v = fire(h.q, q), fire(h.k, k), fire(h.v, v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        m = _prepare_mask(mask, B, H, L, q.dtype)
        training = blk.training
        if not (is_active(h.scores) or is_active(h.pattern)):
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=m, dropout_p=p.drop if training else 0.0)
        else:
            scores = (q * dh ** -0.5) @ k.transpose(-2, -1)
            if m is not None:
                scores = scores + m
            scores = fire(h.scores, scores)
            pattern = fire(h.pattern, scores.softmax(dim=-1))
            if training and p.drop > 0:
                pattern = F.dropout(pattern, p.drop)
            z = pattern @ v
        if p.head_scale is not None:
            z = z * p.head_scale
        z = fire(h.z, z.transpose(1, 2))  # [B, L, H, dh]
        gamma = getattr(blk.ls_1, "gamma", None)
        if h.result is not None and is_active(h.result):
            W_O = p.out.weight.view(p.out.out_features, H, dh)
            result = torch.einsum("bnhd,ohd->bnho", z, W_O)
            bias = p.out.bias
            if gamma is not None:
                result = result * gamma
                bias = bias * gamma if bias is not None else None
            result = fire(h.result, result)
            out = result.sum(dim=-2)
            if bias is not None:
                out = out + bias
            if p.out_drop is not None:
                out = p.out_drop(out)
            return out
        out = z.reshape(B, L, H * dh)
        if p.ln_inner is not None:
            out = p.ln_inner(out)
        out = p.out(out)
        if p.out_drop is not None:
            out = p.out_drop(out)
        if p.post is not None:
            out = p.post(out)
        return blk.ls_1(out)

    def _block(self, blk: nn.Module, h: _LayerHooks, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        x = fire(h.resid_pre, x)
        if is_active(h.ln1_scale):
            fire(h.ln1_scale, _ln_scale(blk.ln_1, x))
        y = fire(h.ln1, blk.ln_1(x))
        attn_out = fire(h.attn_out, self._attention(blk, h, y, mask))
        x = fire(h.resid_mid, x + attn_out)
        if is_active(h.ln2_scale):
            fire(h.ln2_scale, _ln_scale(blk.ln_2, x))
        y = fire(h.ln2, blk.ln_2(x))
        mlp = blk.mlp
        y = fire(h.mlp_pre, mlp.c_fc(y))
        y = fire(h.mlp_post, mlp.gelu(y))
        ln = getattr(mlp, "ln", None)
        if ln is not None:
            y = ln(y)
        mlp_out = fire(h.mlp_out, blk.ls_2(mlp.c_proj(y)))
        return fire(h.resid_post, x + mlp_out)

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        blk = self.resblocks[layer]
        if not _result_linear(blk):
            raise NotImplementedError("per-head results are not linear when the attention output is normalized")
        p = _attn_parts(blk)
        W_O = p.out.weight.view(p.out.out_features, p.H, p.dh)
        result = torch.einsum("...hd,ohd->...ho", z, W_O)
        gamma = getattr(blk.ls_1, "gamma", None)
        return result * gamma if gamma is not None else result


def _tower_cfg(blocks: nn.ModuleList, family: str, architecture: str, prefix: str, **kw: Any) -> VisionConfig:
    blk0 = blocks[0]
    p = _attn_parts(blk0)
    extra = {"hook_prefix": prefix}
    extra.update(kw.pop("extra", {}))
    return VisionConfig(family=family, architecture=architecture, adapter="open_clip", n_layers=len(blocks),
                        d_model=p.out.out_features, n_heads=p.H, d_head=p.dh, d_mlp=blk0.mlp.c_fc.out_features,
                        normalization_type="LN", extra=extra, **kw)


# ---------------------------------------------------------------------------- visual towers
class _ViTTower:
    """open_clip ``VisionTransformer``."""

    kind = "vit"

    def __init__(self, visual: nn.Module):
        self.m = visual
        self.active = _ActiveSet()
        self.blocks = _Blocks(visual.transformer.resblocks, self.active)
        self.hook_embed, self.hook_pos_embed = InlineHookPoint(), InlineHookPoint()
        self.ln_pre_scale = InlineHookPoint()
        self.ln_final_scale, self.ln_final = InlineHookPoint(), InlineHookPoint()
        self.hook_pooled, self.hook_proj = InlineHookPoint(), InlineHookPoint()
        for hp in self._own().values():
            self.active.watch(hp)
        self.attn_pool = getattr(visual, "attn_pool", None) is not None
        self.norm_first = not (self.attn_pool or visual.final_ln_after_pool)

    def _own(self) -> dict[str, HookPoint]:
        return {"hook_embed": self.hook_embed, "hook_pos_embed": self.hook_pos_embed,
                "ln_pre.hook_scale": self.ln_pre_scale, "ln_final.hook_scale": self.ln_final_scale,
                "ln_final.hook_normalized": self.ln_final, "hook_pooled": self.hook_pooled,
                "hook_proj": self.hook_proj}

    def points(self) -> dict[str, HookPoint]:
        own = self._own()
        out = {f"visual.{n}": own[n] for n in ("hook_embed", "hook_pos_embed")}
        if not _is_identity(self.m.ln_pre):
            out["visual.ln_pre.hook_scale"] = own["ln_pre.hook_scale"]
        out.update(self.blocks.points("visual."))
        if not self.attn_pool:
            out["visual.ln_final.hook_scale"] = own["ln_final.hook_scale"]
            out["visual.ln_final.hook_normalized"] = own["ln_final.hook_normalized"]
        out["visual.hook_pooled"] = own["hook_pooled"]
        if self.m.proj is not None:
            out["visual.hook_proj"] = own["hook_proj"]
        return out

    def config(self) -> dict[str, Any]:
        v = self.m
        return dict(n_layers=len(v.transformer.resblocks), d_model=v.transformer.width,
                    n_heads=_attn_parts(v.transformer.resblocks[0]).H, d_head=_attn_parts(v.transformer.resblocks[0]).dh,
                    d_mlp=v.transformer.resblocks[0].mlp.c_fc.out_features, image_size=tuple(v.image_size),
                    patch_size=tuple(v.patch_size), num_prefix_tokens=1,
                    pool_type={"tok": "token", "avg": "avg"}.get(v.pool_type, v.pool_type) if not self.attn_pool else "attn",
                    normalization_type="LN",
                    extra={"embed_sum_is_resid_pre": _is_identity(v.ln_pre) and (_is_identity(v.patch_dropout) or not v.training),
                           "has_cls_token": True, "visual_type": "vit", "layer_scale": not _is_identity(v.transformer.resblocks[0].ls_1)})

    def forward(self, x: Tensor) -> Any:
        v = self.m
        if not self.active:
            return v(x)
        x = v.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        B = x.shape[0]
        x = torch.cat([v.class_embedding.view(1, 1, -1).expand(B, -1, -1).to(x.dtype), x], dim=1)
        x = fire(self.hook_embed, x)
        pos = v.positional_embedding.to(x.dtype)
        if is_active(self.hook_pos_embed):
            pos = fire(self.hook_pos_embed, pos.expand(B, -1, -1))
        x = v.patch_dropout(x + pos)
        if is_active(self.ln_pre_scale) and not _is_identity(v.ln_pre):
            fire(self.ln_pre_scale, _ln_scale(v.ln_pre, x))
        x = v.ln_pre(x)
        x = self.blocks.run(x, None)
        if self.attn_pool:
            pooled, tokens = v._pool(x)
        elif v.final_ln_after_pool:
            pooled, tokens = v._global_pool(x)
            if is_active(self.ln_final_scale):
                fire(self.ln_final_scale, _ln_scale(v.ln_post, pooled))
            pooled = fire(self.ln_final, v.ln_post(pooled))
        else:
            if is_active(self.ln_final_scale):
                fire(self.ln_final_scale, _ln_scale(v.ln_post, x))
            x = fire(self.ln_final, v.ln_post(x))
            pooled, tokens = v._global_pool(x)
        pooled = fire(self.hook_pooled, pooled)
        if v.proj is not None:
            pooled = fire(self.hook_proj, pooled @ v.proj)
        if v.output_tokens:
            return pooled, tokens
        return pooled

    def pool_fn(self):
        pt = self.m.pool_type
        if self.attn_pool or pt not in ("tok", "avg"):
            raise NotImplementedError(f"logit attribution needs a linear pool ('tok' or 'avg'); this tower uses "
                                      f"{'an attentional pooler' if self.attn_pool else repr(pt)}.")
        return (lambda x: x[..., 0, :]) if pt == "tok" else (lambda x: x[..., 1:, :].mean(dim=-2))

    def proj_matrix(self) -> Tensor:
        """``[width, embed_dim]``: pooled residual -> joint embedding space."""
        return self.m.proj


class _ResNetTower:
    """open_clip ``ModifiedResNet`` (RN50-style): conv module tree + residual names + attention pool."""

    kind = "resnet"
    STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
    BOTTLENECK = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "avgpool", "conv3", "bn3", "downsample", "act3")
    POOL = ("hook_tokens", "hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result",
            "hook_out")

    def __init__(self, visual: nn.Module):
        self.m = visual
        self.active = _ActiveSet()
        self.stem_active = _ActiveSet()
        self.stem = {n: InlineHookPoint() for n in self.STEM}
        for hp in self.stem.values():
            self.stem_active.watch(hp)
            self.active.watch(hp)
        self.stages: list[list[dict[str, InlineHookPoint]]] = []
        self.block_active: list[list[_ActiveSet]] = []
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            hooks, acts = [], []
            for blk in layer:
                names = [n for n in self.BOTTLENECK if n != "downsample" or blk.downsample is not None]
                if isinstance(blk.avgpool, nn.Identity):
                    names.remove("avgpool")
                d = {n: InlineHookPoint() for n in names}
                d.update({r: InlineHookPoint() for r in ("hook_resid_pre", "hook_branch_out", "hook_resid_post")})
                act = _ActiveSet()
                for hp in d.values():
                    act.watch(hp)
                    self.active.watch(hp)
                hooks.append(d)
                acts.append(act)
            self.stages.append(hooks)
            self.block_active.append(acts)
        self.pool = {n: InlineHookPoint() for n in self.POOL}
        self.pool_active = _ActiveSet()
        for hp in self.pool.values():
            self.pool_active.watch(hp)
            self.active.watch(hp)
        self.hook_pooled, self.hook_proj = InlineHookPoint(), InlineHookPoint()
        self.active.watch(self.hook_pooled)
        self.active.watch(self.hook_proj)

    def points(self) -> dict[str, HookPoint]:
        out: dict[str, HookPoint] = {f"visual.{n}.hook_out": hp for n, hp in self.stem.items()}
        for s, blocks in enumerate(self.stages):
            for b, d in enumerate(blocks):
                out[f"visual.stages.{s}.blocks.{b}.hook_resid_pre"] = d["hook_resid_pre"]
                for n, hp in d.items():
                    if not n.startswith("hook_"):
                        out[f"visual.layer{s + 1}.{b}.{n}.hook_out"] = hp
                out[f"visual.stages.{s}.blocks.{b}.hook_branch_out"] = d["hook_branch_out"]
                out[f"visual.stages.{s}.blocks.{b}.hook_resid_post"] = d["hook_resid_post"]
        out.update({f"visual.attnpool.{n}": hp for n, hp in self.pool.items()})
        out["visual.hook_pooled"] = self.hook_pooled
        out["visual.hook_proj"] = self.hook_proj
        return out

    def aliases(self) -> dict[str, str]:
        out = {}
        for s, blocks in enumerate(self.stages):
            for b in range(len(blocks)):
                out[f"visual.layer{s + 1}.{b}"] = f"visual.stages.{s}.blocks.{b}.hook_resid_post"
        out["visual.attnpool"] = "visual.attnpool.hook_out"
        return out

    def config(self) -> dict[str, Any]:
        v = self.m
        depths = tuple(len(l) for l in (v.layer1, v.layer2, v.layer3, v.layer4))
        widths = tuple(l[-1].conv3.out_channels for l in (v.layer1, v.layer2, v.layer3, v.layer4))
        size = v.image_size if isinstance(v.image_size, (tuple, list)) else (v.image_size, v.image_size)
        ap = v.attnpool
        return dict(n_layers=sum(depths), d_model=ap.q_proj.in_features, n_heads=ap.num_heads,
                    d_head=ap.q_proj.in_features // ap.num_heads, image_size=tuple(size), stage_depths=depths,
                    stage_widths=widths, min_image_size=32, pool_type="attn",
                    extra={"visual_type": "resnet"})

    @staticmethod
    def _act(m: nn.Module, x: Tensor) -> Tensor:
        return torch.relu(x) if isinstance(m, nn.ReLU) else m(x)

    def _stem(self, x: Tensor) -> Tensor:
        v, h = self.m, self.stem
        for n in self.STEM:
            mod = getattr(v, n)
            x = self._act(mod, x) if n.startswith("act") else mod(x)
            x = fire(h[n], x)
        return x

    def _bottleneck(self, blk: nn.Module, h: dict[str, InlineHookPoint], x: Tensor) -> Tensor:
        x = fire(h["hook_resid_pre"], x)
        out = x
        for n in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "avgpool", "conv3", "bn3"):
            mod = getattr(blk, n)
            if n == "avgpool" and n not in h:
                continue
            out = self._act(mod, out) if n.startswith("act") else mod(out)
            out = fire(h[n], out)
        out = fire(h["hook_branch_out"], out)
        identity = x
        if blk.downsample is not None:
            identity = fire(h["downsample"], blk.downsample(x))
        out = self._act(blk.act3, out + identity)
        out = fire(h["act3"], out)
        return fire(h["hook_resid_post"], out)

    def _attnpool(self, x: Tensor) -> Tensor:
        ap, h = self.m.attnpool, self.pool
        if not self.pool_active:
            return ap(x)
        N, C = x.shape[0], x.shape[1]
        t = x.reshape(N, C, -1).permute(0, 2, 1)  # [N, HW, C]
        t = torch.cat([t.mean(dim=1, keepdim=True), t], dim=1)
        t = t + ap.positional_embedding[None].to(t.dtype)
        t = fire(h["hook_tokens"], t)
        L, H = t.shape[1], ap.num_heads
        dh = C // H
        q = fire(h["hook_q"], ap.q_proj(t).view(N, L, H, dh)).transpose(1, 2)
        k = fire(h["hook_k"], ap.k_proj(t).view(N, L, H, dh)).transpose(1, 2)
        v = fire(h["hook_v"], ap.v_proj(t).view(N, L, H, dh)).transpose(1, 2)
        if is_active(h["hook_attn_scores"]) or is_active(h["hook_pattern"]):
            scores = fire(h["hook_attn_scores"], (q * dh ** -0.5) @ k.transpose(-2, -1))
            z = fire(h["hook_pattern"], scores.softmax(dim=-1)) @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v)
        z = fire(h["hook_z"], z.transpose(1, 2))  # [N, L, H, dh]
        if is_active(h["hook_result"]):
            W_O = ap.c_proj.weight.view(ap.c_proj.out_features, H, dh)
            result = fire(h["hook_result"], torch.einsum("bnhd,ohd->bnho", z, W_O))
            out = result[:, 0].sum(dim=-2) + ap.c_proj.bias
        else:
            out = ap.c_proj(z[:, 0].reshape(N, C))
        return fire(h["hook_out"], out)

    def forward(self, x: Tensor) -> Tensor:
        v = self.m
        if not self.active:
            return v(x)
        x = self._stem(x) if self.stem_active else v.stem(x)
        for layer, hooks, acts in zip((v.layer1, v.layer2, v.layer3, v.layer4), self.stages, self.block_active):
            for blk, h, act in zip(layer, hooks, acts):
                x = self._bottleneck(blk, h, x) if act else blk(x)
        x = self._attnpool(x)
        x = fire(self.hook_pooled, x)
        return fire(self.hook_proj, x)

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        raise NotImplementedError("The ResNet tower has no transformer blocks; use visual.attnpool.hook_result.")


# ---------------------------------------------------------------------------- text tower
class _TextTower:
    """open_clip text transformer: the flattened tower of ``CLIP`` or ``CustomTextCLIP.text``."""

    def __init__(self, source: nn.Module):
        from open_clip.transformer import TextTransformer

        self.source = source
        self.holder = source.text if isinstance(getattr(source, "text", None), TextTransformer) else source
        self.custom = self.holder is not source
        self.active = _ActiveSet()
        self.blocks = _Blocks(self.holder.transformer.resblocks, self.active)
        self.hook_embed, self.hook_pos_embed = InlineHookPoint(), InlineHookPoint()
        self.ln_final_scale, self.ln_final = InlineHookPoint(), InlineHookPoint()
        self.hook_pooled, self.hook_proj = InlineHookPoint(), InlineHookPoint()
        for hp in (self.hook_embed, self.hook_pos_embed, self.ln_final_scale, self.ln_final, self.hook_pooled,
                   self.hook_proj):
            self.active.watch(hp)

    # attributes that CLIP stores under other names than TextTransformer
    @property
    def pool_type(self) -> str:
        return self.holder.pool_type if self.custom else self.holder.text_pool_type

    @property
    def eos_id(self) -> Optional[int]:
        return getattr(self.holder, "eos_id" if self.custom else "text_eos_id", None)

    @property
    def cls_emb(self) -> Optional[Tensor]:
        return getattr(self.holder, "cls_emb", None) if self.custom else None

    @property
    def context_length(self) -> int:
        return int(self.holder.context_length)

    @property
    def vocab_size(self) -> int:
        return int(self.holder.vocab_size)

    def points(self) -> dict[str, HookPoint]:
        out = {"text.hook_embed": self.hook_embed, "text.hook_pos_embed": self.hook_pos_embed}
        out.update(self.blocks.points("text."))
        out["text.ln_final.hook_scale"] = self.ln_final_scale
        out["text.ln_final.hook_normalized"] = self.ln_final
        out["text.hook_pooled"] = self.hook_pooled
        if self.holder.text_projection is not None:
            out["text.hook_proj"] = self.hook_proj
        return out

    def cfg(self) -> VisionConfig:
        t = self.holder
        return _tower_cfg(t.transformer.resblocks, "clip_text", "open_clip TextTransformer", "text.",
                          num_prefix_tokens=0, pool_type=self.pool_type if self.cls_emb is None else "last",
                          extra={"embed_sum_is_resid_pre": True, "context_length": self.context_length,
                                 "vocab_size": self.vocab_size, "causal": getattr(t, "attn_mask", None) is not None})

    def pool_index(self, text: Tensor) -> Tensor:
        """Position of the pooled token of each sequence (for readouts)."""
        B, L = text.shape
        if self.cls_emb is not None:
            return torch.full((B,), L, dtype=torch.long, device=text.device)
        pt = self.pool_type
        if pt == "first":
            return torch.zeros(B, dtype=torch.long, device=text.device)
        if pt == "last":
            return torch.full((B,), L - 1, dtype=torch.long, device=text.device)
        if pt == "argmax":
            return text.argmax(dim=-1)
        if pt == "eos":
            return (text == self.eos_id).int().argmax(dim=-1)
        raise NotImplementedError(f"text pool type {pt!r} has no single pooled token")

    def forward(self, text: Tensor) -> Any:
        t = self.holder
        if not self.active:
            return t(text) if self.custom else self.source.encode_text(text)
        cast_dtype = t.transformer.get_cast_dtype()
        B, seq_len = text.shape
        x = t.token_embedding(text).to(cast_dtype)
        cls_emb = self.cls_emb
        if cls_emb is not None:
            x = torch.cat([x, cls_emb.view(1, 1, -1).expand(B, -1, -1)], dim=1)
            seq_len += 1
        attn_mask = t.attn_mask
        if self.custom and (t.use_pad_mask or cls_emb is not None):
            add_mask = t._build_additive_mask(text, seq_len, x.dtype)
            attn_mask = attn_mask[:seq_len, :seq_len].unsqueeze(0) + add_mask if attn_mask is not None else add_mask
        pos = t.positional_embedding[:seq_len] if self.custom else t.positional_embedding
        pos = pos.to(cast_dtype)
        x = fire(self.hook_embed, x)
        if is_active(self.hook_pos_embed):
            pos = fire(self.hook_pos_embed, pos.expand(B, -1, -1))
        x = x + pos
        if attn_mask is not None and attn_mask.ndim == 2:
            attn_mask = attn_mask.to(x.dtype)
        x = self.blocks.run(x, attn_mask)
        if cls_emb is not None:
            pooled = x[:, -1]
            if is_active(self.ln_final_scale):
                fire(self.ln_final_scale, _ln_scale(t.ln_final, pooled))
            pooled = fire(self.ln_final, t.ln_final(pooled))
            tokens = x[:, :-1]
        else:
            if is_active(self.ln_final_scale):
                fire(self.ln_final_scale, _ln_scale(t.ln_final, x))
            x = fire(self.ln_final, t.ln_final(x))
            from open_clip.transformer import text_global_pool

            pooled = text_global_pool(x, text, self.pool_type, eos_token_id=self.eos_id)
            tokens = x
        pooled = fire(self.hook_pooled, pooled)
        proj = t.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
            pooled = fire(self.hook_proj, pooled)
        if self.custom and t.output_tokens:
            return pooled, tokens
        return pooled

    def proj_matrix(self) -> tuple[Tensor, Optional[Tensor]]:
        proj = self.holder.text_projection
        if isinstance(proj, nn.Linear):
            return proj.weight.T, proj.bias
        return proj, None


# ---------------------------------------------------------------------------- readout / cache views
class _DirectionHead:
    """A linear head ``weight [n_classes, width]`` / ``bias [n_classes]`` in a tower's residual space."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        self.weight, self.bias = weight, bias


def _as_directions(head: Any) -> Tensor:
    """Class directions in the joint embedding space ``[n_classes, embed_dim]``."""
    w = getattr(head, "weight", head)
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise VisionLensError("Expected class directions: a ZeroShotHead (visionlens.clip.zero_shot_head) or a tensor "
                              f"[n_classes, embed_dim]; got {type(head).__name__}.")
    return w


class _TowerAdapterView:
    """What the cache needs from an adapter, for one tower."""

    def __init__(self, adapter: "OpenCLIPAdapter", tower: str, head: Any = None, text_tokens: Optional[Tensor] = None):
        self.adapter, self.tower, self.head, self.text_tokens = adapter, tower, head, text_tokens
        t = adapter.text if tower == "text" else adapter.visual
        self.impl = t
        if tower == "text":
            self.final_ln = t.holder.ln_final
        else:
            self.final_ln = getattr(t.m, "ln_post", None)

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        return self.impl.blocks.head_results_from_z(layer, z)

    def aliases(self) -> dict[str, str]:
        return self.adapter.aliases()

    def readout(self) -> LinearReadout:
        head = self.head
        if head is None and self.tower == "visual":
            head = self.adapter.classifier
        if head is not None:
            return self._readout(_as_directions(head))
        what = ("a zero-shot head (visionlens.clip.zero_shot_head(model, classnames, templates)) or text embeddings"
                if self.tower == "visual" else "image embeddings or any [n, embed_dim] directions")
        # Normalizing / pooling (apply_ln_to_stack) works without classes; logits name what is missing.
        return self._readout(None, missing=f"CLIP {self.tower}-tower logit attribution needs class directions: "
                                           f"pass cache.tower({self.tower!r}, head=...) with {what}.")

    def _readout(self, dirs: Optional[Tensor], missing: str = "") -> LinearReadout:
        if self.tower == "visual":
            if self.impl.kind != "vit":
                raise NotImplementedError("Residual-stream logit attribution needs the ViT visual tower; the ResNet "
                                          "tower pools with attention (use visual.attnpool.hook_result).")
            P = self.impl.proj_matrix()
            pool = self.impl.pool_fn()
            norm_first = self.impl.norm_first
            bias = None
        else:
            P, b = self.impl.proj_matrix()
            if self.text_tokens is None:
                raise VisionLensError("Text-tower readouts need the text tokens of the cached run (run_with_cache "
                                      "with texts).")
            idx = self.impl.pool_index(self.text_tokens)
            ar = torch.arange(idx.shape[0], device=idx.device)
            norm_first = self.impl.cls_emb is None

            def pool(x: Tensor) -> Tensor:
                return x[..., ar.to(x.device), idx.to(x.device), :]

            bias = dirs.to(b.dtype) @ b if (b is not None and dirs is not None) else None
        if dirs is None:
            head: Any = _MissingHead(missing)
        else:
            head = _DirectionHead(dirs.to(P.dtype) @ P.T if P is not None else dirs, bias)
        return LinearReadout(ln=self.final_ln, norm_first=norm_first, pools=[(pool, head, 1.0)])


class _MissingHead:
    def __init__(self, message: str):
        self.message = message

    @property
    def weight(self) -> Tensor:
        raise VisionLensError(self.message)

    bias = weight


class _TowerModelView:
    """A stand-in for the model inside a tower view: its own ``cfg`` and ``adapter``, the rest delegated."""

    def __init__(self, model: Any, cfg: VisionConfig, adapter: _TowerAdapterView):
        self.__dict__.update(_model=model, cfg=cfg, adapter=adapter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_model"], name)


class ClipActivationCache(VisionActivationCache):
    """Activation cache of a CLIP model; ``cache.tower("visual" | "text")`` gives per-tower views.

    Without a view, the residual-stream helpers (``accumulated_resid``, ``decompose_resid``,
    ``stack_head_results``, ``logit_attrs``) read the visual tower. In a tower view, plain names
    (``"blocks.0.hook_resid_pre"``) are looked up under that tower's prefix.
    """

    def __init__(self, cache_dict: dict[str, Tensor], model: Any, has_batch_dim: bool = True,
                 text_tokens: Optional[Tensor] = None):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        if text_tokens is None:
            adapter = getattr(model, "adapter", None)
            text_tokens = getattr(adapter, "last_text_tokens", None)
        self.text_tokens = text_tokens

    def tower(self, name: str, head: Any = None) -> "ClipTowerCache":
        """A view of one tower (``"visual"`` or ``"text"``).

        ``head``: class directions in the joint embedding space used by ``logit_attrs`` -- a
        :class:`visionlens.clip.ZeroShotHead`, text embeddings (visual tower) or image
        embeddings (text tower), ``[n_classes, embed_dim]``. The visual tower defaults to the
        zero-shot head attached to the model.
        """
        root = self.model
        adapter = root.adapter
        if name not in ("visual", "text"):
            raise VisionLensError(f"Expected tower 'visual' or 'text', got {name!r}.")
        if name == "text" and adapter.text is None:
            raise VisionLensError("This CLIP model's text tower is not hooked (unsupported text encoder).")
        cfg = adapter.tower_cfg(name)
        view = _TowerModelView(root, cfg, _TowerAdapterView(adapter, name, head, self.text_tokens))
        return ClipTowerCache(self.cache_dict, view, has_batch_dim=self.has_batch_dim, text_tokens=self.text_tokens)

    def embed_scale(self, tower: str = "visual") -> Tensor:
        """``1 / |embedding|`` per example: multiplies ``logit_attrs`` into cosine-similarity units.

        (Times ``model.adapter.logit_scale`` gives contributions to the CLIP logits.)
        """
        return 1.0 / self._need_full(f"{tower}.hook_proj").norm(dim=-1)

    def _need_full(self, name: str) -> Tensor:
        if name not in self.cache_dict:
            raise KeyError(f"{name!r} is not in the cache; include it in names_filter.")
        return self.cache_dict[name]


class ClipTowerCache(ClipActivationCache):
    """One tower of a :class:`ClipActivationCache` (shares its tensors)."""

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, str) and key not in self.cache_dict:
            full = self._name(key)
            if full in self.cache_dict:
                return self.cache_dict[full]
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        return key in self.cache_dict or (isinstance(key, str) and self._name(key) in self.cache_dict)


# ---------------------------------------------------------------------------- the adapter
class OpenCLIPAdapter(Adapter):
    """open_clip ``CLIP`` / ``CustomTextCLIP``: visual (ViT or ModifiedResNet) and text towers."""

    name = "open_clip"
    family = "clip"
    priority = 20

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        if not _is_open_clip(module) or type(module).__name__ not in ("CLIP", "CustomTextCLIP"):
            return False
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = getattr(module, "visual", None)
        if type(visual) is VisionTransformer:
            if not all(_block_supported(b) for b in visual.transformer.resblocks):
                return False
        elif type(visual) is not ModifiedResNet:
            return False
        return True

    def __init__(self, source: nn.Module):
        super().__init__(source)
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import TextTransformer

        self.visual = _ResNetTower(source.visual) if isinstance(source.visual, ModifiedResNet) else _ViTTower(source.visual)
        text_mod = getattr(source, "text", None)
        text_ok = (isinstance(text_mod, TextTransformer) if type(source).__name__ == "CustomTextCLIP"
                   else hasattr(source, "transformer"))
        if text_ok:
            blocks = (text_mod if text_mod is not None else source).transformer.resblocks
            text_ok = all(_block_supported(b) for b in blocks)
        self.text: Optional[_TextTower] = _TextTower(source) if text_ok else None
        if self.text is None:
            warnings.warn("open_clip text tower is not a supported TextTransformer; text hooks are not available and "
                          "encode_text runs the source tower unhooked.", UserWarning, stacklevel=3)
        self.hook_logits = InlineHookPoint()
        self.classifier: Any = None  # a ZeroShotHead attached by visionlens.clip.zero_shot_head
        self.model_name: Optional[str] = getattr(source, "_visionlens_name", None)
        self._tokenizer: Any = None
        self.last_text_tokens: Optional[Tensor] = None

    # --------------------------------------------------------------- description
    def config(self) -> VisionConfig:
        s = self.source
        v = self.visual
        pp = getattr(s.visual, "preprocess_cfg", None) or {}
        vc = v.config()
        extra = {"hook_prefix": "visual.", "towers": ("visual", "text") if self.text is not None else ("visual",),
                 "embed_dim": self.embed_dim, "model_name": self.model_name}
        extra.update(vc.pop("extra"))
        if self.text is not None:
            extra["text"] = self.text.cfg().to_dict()
            extra["context_length"] = self.text.context_length
            extra["vocab_size"] = self.text.vocab_size
        mean = tuple(pp.get("mean", getattr(s.visual, "image_mean", None) or OPENAI_MEAN))
        std = tuple(pp.get("std", getattr(s.visual, "image_std", None) or OPENAI_STD))
        arch = self.model_name or f"{type(s).__name__}({type(s.visual).__name__})"
        return VisionConfig(family="clip", architecture=arch, adapter=self.name, mean=mean, std=std,
                            crop_pct=1.0, interpolation=pp.get("interpolation", "bicubic"), n_classes=0, extra=extra,
                            **vc)

    @property
    def embed_dim(self) -> int:
        s = self.source
        v = s.visual
        if self.visual.kind == "vit":
            return int(v.proj.shape[1]) if v.proj is not None else int(v.transformer.width)
        return int(v.attnpool.c_proj.out_features)

    def tower_cfg(self, name: str) -> VisionConfig:
        if name == "text":
            return self.text.cfg()
        vc = self.visual.config()
        extra = vc.pop("extra")
        extra["hook_prefix"] = "visual."
        return VisionConfig(family="clip_visual", architecture=self.cfg.architecture, adapter=self.name,
                            extra=extra, **vc)

    def hook_points(self) -> dict[str, HookPoint]:
        points = dict(self.visual.points())
        if self.text is not None:
            points.update(self.text.points())
        points["hook_logits"] = self.hook_logits
        return points

    def aliases(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if isinstance(self.visual, _ResNetTower):
            out.update(self.visual.aliases())
        else:
            for l in range(len(self.visual.blocks.layers)):
                out[f"visual.blocks.{l}"] = f"visual.blocks.{l}.hook_resid_post"
                out[f"visual.blocks.{l}.mlp"] = f"visual.blocks.{l}.mlp.hook_post"
            out["visual.ln_post"] = "visual.ln_final.hook_normalized"
        if self.text is not None:
            for l in range(len(self.text.blocks.layers)):
                out[f"text.blocks.{l}"] = f"text.blocks.{l}.hook_resid_post"
                out[f"text.blocks.{l}.mlp"] = f"text.blocks.{l}.mlp.hook_post"
        return out

    def cache_class(self) -> type:
        return ClipActivationCache

    def readout(self) -> LinearReadout:
        """The visual tower's readout onto the attached zero-shot head (for ``logit_attrs``)."""
        return _TowerAdapterView(self, "visual").readout()

    @property
    def final_ln(self) -> Optional[nn.Module]:
        return getattr(self.visual.m, "ln_post", None) if self.visual.kind == "vit" else None

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        if self.visual.kind != "vit":
            return self.visual.head_results_from_z(layer, z)
        return self.visual.blocks.head_results_from_z(layer, z)

    @property
    def logit_scale(self) -> Tensor:
        return self.source.logit_scale.exp()

    # --------------------------------------------------------------- inputs
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer: ``source.visionlens_tokenizer`` when the model carries its own (e.g. the zoo
        CLIP's word-level one), else open_clip's for this model (built lazily; the BPE vocabulary ships with
        open_clip)."""
        if self._tokenizer is None:
            own = getattr(self.source, "visionlens_tokenizer", None)
            if own is not None:
                self._tokenizer = own
                return own
            import open_clip

            ctx = self.text.context_length if self.text is not None else getattr(self.source, "context_length", 77)
            if self.model_name:
                try:
                    self._tokenizer = open_clip.get_tokenizer(self.model_name, context_length=ctx)
                except Exception:  # unknown names fall back to CLIP's BPE tokenizer
                    self._tokenizer = None
            if self._tokenizer is None:
                self._tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        return self._tokenizer

    def tokenize(self, texts: Union[str, Sequence[str]]) -> Tensor:
        """Strings -> token ids ``[batch, context_length]`` on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise VisionLensError(f"Expected text as a list of strings or a token tensor [batch, context_length], got "
                                  f"{_describe(texts)}.")
        if len(texts) == 0:
            raise VisionLensError("Expected at least one text string, got an empty list.")
        tokens = self.tokenizer(list(texts))
        return tokens.to(self._device())

    def _device(self) -> torch.device:
        for p in self.source.parameters():
            return p.device
        return torch.device("cpu")

    def validate(self, x: Any) -> None:
        if x is None:
            return
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x)):
            raise VisionLensError("Expected an image batch first; texts go second: model(None, texts) for text "
                                  "embeddings, model(images, texts) for similarity logits.")
        check_image_batch(x, self.cfg)

    def validate_text(self, text: Any) -> Tensor:
        """A token tensor for ``text`` (strings are tokenized); raises VisionLensError for anything else."""
        if isinstance(text, Tensor):
            ctx = self.text.context_length if self.text is not None else None
            vocab = self.text.vocab_size if self.text is not None else None
            if text.ndim != 2 or text.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise VisionLensError(f"Expected text tokens as an integer tensor [batch, {ctx or 'context_length'}], "
                                      f"got {text.dtype} tensor of shape {tuple(text.shape)}. Pass a list of strings "
                                      "to tokenize with the model's tokenizer.")
            if ctx is not None and text.shape[1] != ctx:
                raise VisionLensError(f"Expected text tokens of length {ctx} (the model's context length), got shape "
                                      f"{tuple(text.shape)}. Use model.adapter.tokenize(strings).")
            if vocab is not None and text.numel() and (int(text.min()) < 0 or int(text.max()) >= vocab):
                raise VisionLensError(f"Token ids must be in [0, {vocab}) for this model's vocabulary, got range "
                                      f"[{int(text.min())}, {int(text.max())}].")
            return text.long()
        return self.tokenize(text)

    def example_inputs(self, image_size: Optional[int] = None, batch: int = 1) -> tuple[tuple, dict]:
        """Arguments for a dummy call that reaches every hook (images and two short texts)."""
        size = (image_size, image_size) if image_size else tuple(self.cfg.image_size or (224, 224))
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, self.cfg.in_chans, *size, generator=g).to(self._device())
        if self.text is None:
            return (images,), {}
        texts = ["a photo of a cat", "a diagram"][: max(1, batch)]
        return (images, texts), {}

    # --------------------------------------------------------------- computation
    def encode_image(self, image: Tensor, normalize: bool = False, validate: bool = True) -> Tensor:
        """``clip.encode_image``, with the ``visual.*`` hooks."""
        if validate:
            check_image_batch(image, self.cfg)
        feats = self.visual.forward(image)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: Any, normalize: bool = False) -> Tensor:
        """``clip.encode_text`` on strings (tokenized here) or tokens, with the ``text.*`` hooks."""
        tokens = self.validate_text(text)
        self.last_text_tokens = tokens
        if self.text is None:
            feats = self.source.encode_text(tokens)
        else:
            feats = self.text.forward(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def similarity(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``logit_scale * cos(image, text)`` (+ logit bias): ``[n_images, n_texts]`` (inputs normalized here)."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        logits = self.source.logit_scale.exp() * img @ txt.T
        if getattr(self.source, "logit_bias", None) is not None:
            logits += self.source.logit_bias
        return logits

    def forward(self, image: Optional[Tensor] = None, text: Any = None, return_type: str = "auto") -> Any:
        if return_type not in ("auto", "embeds", "logits"):
            raise VisionLensError(f"return_type must be 'auto', 'embeds' or 'logits', got {return_type!r}.")
        if image is None and text is None:
            raise VisionLensError("Expected images and/or texts: model(images), model(images, texts) or model(None, texts).")
        if text is None:
            self.last_text_tokens = None
        img = self.encode_image(image, validate=False) if image is not None else None
        txt = self.encode_text(text) if text is not None else None
        if return_type == "embeds":
            return img if txt is None else txt if img is None else (img, txt)
        if img is not None and txt is not None:
            return fire(self.hook_logits, self.similarity(img, txt))
        if img is not None and self.classifier is not None:
            return fire(self.hook_logits, self.classifier(img))
        if return_type == "logits":
            raise VisionLensError("return_type='logits' needs both images and texts, or an attached zero-shot head.")
        return img if img is not None else txt


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        kinds = sorted({type(i).__name__ for i in x})
        return f"{type(x).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(x).__name__


# ---------------------------------------------------------------------------- loading
def _is_path(p: Any) -> bool:
    return isinstance(p, (str, os.PathLike)) and (os.path.exists(str(p)) or os.sep in str(p) or
                                                  Path(str(p)).suffix in (".pt", ".pth", ".bin", ".safetensors"))


def load_open_clip(name: Union[str, dict], pretrained: Optional[str] = None, eval: bool = True, **kwargs: Any):
    """Build a hooked open_clip model with open_clip's own factory.

    ``name``: a built-in model name (``"ViT-B-32"``, ``"RN50"``), an open_clip schema name
    (``"local-dir:/path"``, ``"hf-hub:org/repo"``), or a model config dict
    (``{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}``, like open_clip's JSON configs).
    ``pretrained``: ``None`` (random init), an open_clip tag (downloaded by open_clip), a local
    ``.pt`` / ``.pth`` / ``.bin`` / ``.safetensors`` file (read with ``weights_only=True`` or
    safetensors) or a directory holding ``open_clip_config.json`` and weights.
    Extra keyword arguments go to ``open_clip.create_model``.
    """
    import open_clip

    from visionlens.hooked_model import HookedVisionModel

    if isinstance(pretrained, (str, os.PathLike)) and _is_path(pretrained):
        p = Path(str(pretrained))
        if not p.exists():
            raise FileNotFoundError(f"open_clip checkpoint {str(p)!r} does not exist.")
        if p.is_dir():
            if isinstance(name, str) and not name.startswith("local-dir:") and (p / "open_clip_config.json").is_file():
                name, pretrained = f"local-dir:{p}", None
            elif not (p / "open_clip_config.json").is_file():
                raise VisionLensError(f"Expected an open_clip checkpoint directory with open_clip_config.json, got {str(p)!r}.")
        pretrained = str(pretrained) if pretrained is not None else None
    if isinstance(name, dict):
        cfg = dict(name)
        cfg.update(kwargs.pop("model_kwargs", {}))
        custom = cfg.pop("custom_text", False)
        cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
        model = cls(**cfg)
        if pretrained:
            if not os.path.isfile(pretrained):
                raise VisionLensError(f"With a config dict, pretrained must be a local checkpoint file, got {pretrained!r}.")
            open_clip.load_checkpoint(model, pretrained)
        label = "custom"
    else:
        if not name.startswith(("local-dir:", "hf-hub:")):
            known = open_clip.list_models()
            if name.replace("/", "-") not in known:
                import difflib

                close = difflib.get_close_matches(name, known, n=6)
                raise VisionLensError(f"Unknown open_clip model {name!r}. Closest: {', '.join(close) or 'none'} "
                                      "(see open_clip.list_models()).")
        model = open_clip.create_model(name, pretrained=pretrained, **kwargs)
        label = name
    model._visionlens_name = label if label != "custom" else None
    if eval:
        model = model.eval()
    hooked = HookedVisionModel(model, adapter="open_clip")
    return hooked
