"""open_clip towers: hooked execution of the visual (ViT or ModifiedResNet) and text towers.

Used by :class:`~visionlens.adapters.open_clip.OpenCLIPAdapter` (see that module for the hook names).
A tower with no hook attached runs the source module itself (exact, no overhead); a hooked
transformer block runs visionlens code over the source's modules with fused SDPA attention unless
an attention-internal hook (q, k, v, scores, pattern, z, result) of that block is active.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint, InlineHookPoint, fire, is_active

from .transformer_blocks import LayerHooks, fire_ln_scale, is_identity, ln_scale

__all__ = ["ViTTower", "ResNetTower", "TextTower", "block_supported"]


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


def block_supported(blk: nn.Module) -> bool:
    """Whether visionlens can run this open_clip residual attention block with hooks (else the adapter declines)."""
    from open_clip.transformer import Attention, CustomResidualAttentionBlock, ResidualAttentionBlock

    if type(blk) is ResidualAttentionBlock:
        a = blk.attn
        return (
            isinstance(a, nn.MultiheadAttention)
            and a.batch_first
            and a._qkv_same_embed_dim
            and a.bias_k is None
            and not a.add_zero_attn
            and not hasattr(blk, "ln_1_kv")
        )
    if type(blk) is CustomResidualAttentionBlock:
        return type(blk.attn) is Attention and blk.attn.logit_scale is None
    return False


def _result_linear(blk: nn.Module) -> bool:
    """Per-head outputs sum linearly to the attention output (no norm after the heads)."""
    return is_identity(getattr(blk.attn, "ln_inner", None)) and is_identity(getattr(blk, "ln_attn", None))


def _attn_parts(blk: nn.Module) -> SimpleNamespace:
    a = blk.attn
    if isinstance(a, nn.MultiheadAttention):
        return SimpleNamespace(
            W=a.in_proj_weight,
            b=a.in_proj_bias,
            H=a.num_heads,
            dh=a.head_dim,
            ln_q=None,
            ln_k=None,
            head_scale=None,
            ln_inner=None,
            out=a.out_proj,
            out_drop=None,
            drop=a.dropout,
            post=None,
        )
    return SimpleNamespace(
        W=a.in_proj_weight,
        b=a.in_proj_bias,
        H=a.num_heads,
        dh=a.head_dim,
        ln_q=None if is_identity(a.ln_q) else a.ln_q,
        ln_k=None if is_identity(a.ln_k) else a.ln_k,
        head_scale=a.head_scale,
        ln_inner=None if is_identity(a.ln_inner) else a.ln_inner,
        out=a.out_proj,
        out_drop=a.out_drop,
        drop=a.attn_drop.p,
        post=None if is_identity(blk.ln_attn) else blk.ln_attn,
    )


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
        self.layers: list[LayerHooks] = []
        self.active: list[_ActiveSet] = []
        for blk in resblocks:
            lh = LayerHooks(with_result=_result_linear(blk))
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

    def _attention(self, blk: nn.Module, h: LayerHooks, x: Tensor, mask: Optional[Tensor]) -> Tensor:
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
            scores = (q * dh**-0.5) @ k.transpose(-2, -1)
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

    def _block(self, blk: nn.Module, h: LayerHooks, x: Tensor, mask: Optional[Tensor]) -> Tensor:
        x = fire(h.resid_pre, x)
        if is_active(h.ln1_scale):
            fire_ln_scale(h.ln1_scale, blk.ln_1, x)
        y = fire(h.ln1, blk.ln_1(x))
        attn_out = fire(h.attn_out, self._attention(blk, h, y, mask))
        x = fire(h.resid_mid, x + attn_out)
        if is_active(h.ln2_scale):
            fire_ln_scale(h.ln2_scale, blk.ln_2, x)
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
    return VisionConfig(
        family=family,
        architecture=architecture,
        adapter="open_clip",
        n_layers=len(blocks),
        d_model=p.out.out_features,
        n_heads=p.H,
        d_head=p.dh,
        d_mlp=blk0.mlp.c_fc.out_features,
        normalization_type="LN",
        extra=extra,
        **kw,
    )


# ---------------------------------------------------------------------------- visual towers
class ViTTower:
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
        return {
            "hook_embed": self.hook_embed,
            "hook_pos_embed": self.hook_pos_embed,
            "ln_pre.hook_scale": self.ln_pre_scale,
            "ln_final.hook_scale": self.ln_final_scale,
            "ln_final.hook_normalized": self.ln_final,
            "hook_pooled": self.hook_pooled,
            "hook_proj": self.hook_proj,
        }

    def points(self) -> dict[str, HookPoint]:
        own = self._own()
        out = {f"visual.{n}": own[n] for n in ("hook_embed", "hook_pos_embed")}
        if not is_identity(self.m.ln_pre):
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
        return dict(
            n_layers=len(v.transformer.resblocks),
            d_model=v.transformer.width,
            n_heads=_attn_parts(v.transformer.resblocks[0]).H,
            d_head=_attn_parts(v.transformer.resblocks[0]).dh,
            d_mlp=v.transformer.resblocks[0].mlp.c_fc.out_features,
            image_size=tuple(v.image_size),
            patch_size=tuple(v.patch_size),
            num_prefix_tokens=1,
            pool_type={"tok": "token", "avg": "avg"}.get(v.pool_type, v.pool_type) if not self.attn_pool else "attn",
            normalization_type="LN",
            extra={
                "embed_sum_is_resid_pre": is_identity(v.ln_pre) and (is_identity(v.patch_dropout) or not v.training),
                "has_cls_token": True,
                "visual_type": "vit",
                "layer_scale": not is_identity(v.transformer.resblocks[0].ls_1),
            },
        )

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
        if is_active(self.ln_pre_scale) and not is_identity(v.ln_pre):
            fire(self.ln_pre_scale, ln_scale(v.ln_pre, x))
        x = v.ln_pre(x)
        x = self.blocks.run(x, None)
        if self.attn_pool:
            pooled, tokens = v._pool(x)
        elif v.final_ln_after_pool:
            pooled, tokens = v._global_pool(x)
            if is_active(self.ln_final_scale):
                fire_ln_scale(self.ln_final_scale, v.ln_post, pooled)
            pooled = fire(self.ln_final, v.ln_post(pooled))
        else:
            if is_active(self.ln_final_scale):
                fire_ln_scale(self.ln_final_scale, v.ln_post, x)
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
            raise NotImplementedError(
                f"logit attribution needs a linear pool ('tok' or 'avg'); this tower uses "
                f"{'an attentional pooler' if self.attn_pool else repr(pt)}."
            )
        return (lambda x: x[..., 0, :]) if pt == "tok" else (lambda x: x[..., 1:, :].mean(dim=-2))

    def proj_matrix(self) -> Tensor:
        """``[width, embed_dim]``: pooled residual -> joint embedding space."""
        return self.m.proj


class ResNetTower:
    """open_clip ``ModifiedResNet`` (RN50-style): conv module tree + residual names + attention pool."""

    kind = "resnet"
    STEM = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool")
    BOTTLENECK = ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "avgpool", "conv3", "bn3", "downsample", "act3")
    POOL = (
        "hook_tokens",
        "hook_q",
        "hook_k",
        "hook_v",
        "hook_attn_scores",
        "hook_pattern",
        "hook_z",
        "hook_result",
        "hook_out",
    )

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
        return dict(
            n_layers=sum(depths),
            d_model=ap.q_proj.in_features,
            n_heads=ap.num_heads,
            d_head=ap.q_proj.in_features // ap.num_heads,
            image_size=tuple(size),
            stage_depths=depths,
            stage_widths=widths,
            min_image_size=32,
            pool_type="attn",
            extra={"visual_type": "resnet"},
        )

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
            scores = fire(h["hook_attn_scores"], (q * dh**-0.5) @ k.transpose(-2, -1))
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
class TextTower:
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
        for hp in (
            self.hook_embed,
            self.hook_pos_embed,
            self.ln_final_scale,
            self.ln_final,
            self.hook_pooled,
            self.hook_proj,
        ):
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
        return _tower_cfg(
            t.transformer.resblocks,
            "clip_text",
            "open_clip TextTransformer",
            "text.",
            num_prefix_tokens=0,
            pool_type=self.pool_type if self.cls_emb is None else "last",
            extra={
                "embed_sum_is_resid_pre": True,
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "causal": getattr(t, "attn_mask", None) is not None,
            },
        )

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
                fire_ln_scale(self.ln_final_scale, t.ln_final, pooled)
            pooled = fire(self.ln_final, t.ln_final(pooled))
            tokens = x[:, :-1]
        else:
            if is_active(self.ln_final_scale):
                fire_ln_scale(self.ln_final_scale, t.ln_final, x)
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
