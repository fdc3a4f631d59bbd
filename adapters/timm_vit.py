"""timm Vision Transformers (ViT, DeiT incl. distilled, register tokens, layer scale).

The adapter runs its own forward over timm's modules with TransformerLens hook names.
Every hook is inline and skipped when empty; fused SDPA attention stays on unless
``hook_attn_scores`` or ``hook_pattern`` of that layer is active. Layer scale and drop-path are
folded into ``hook_attn_out`` / ``hook_mlp_out`` (and the layer scale into per-head
``hook_result``), so ``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out``
hold exactly.

``ln*.hook_normalized`` is the LayerNorm output *including* its affine weight and bias (timm
weights are not folded); ``ln*.hook_scale`` is the per-vector ``sqrt(var + eps)``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint, InlineHookPoint, capture_deferred, fire, is_active, is_hooked

from . import Adapter
from .tl_weights import TLBlock, TLWeightSource
from .transformer_blocks import LayerHooks, LinearReadout, fire_ln_scale, is_identity

__all__ = ["TimmViTAdapter", "ATTN_INTERNAL"]

ATTN_INTERNAL = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z", "hook_result")


def _timm_classes():
    from timm.layers import LayerScale, Mlp
    from timm.layers.attention import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

    return VisionTransformer, Block, Attention, Mlp, LayerScale


class TimmViTAdapter(Adapter):
    """timm ``VisionTransformer`` (and DeiT's distilled variant) with TransformerLens names."""

    name = "timm_vit"
    family = "vit"
    priority = 10
    image_methods = ("forward_features",)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        VisionTransformer, Block, Attention, Mlp, _ = _timm_classes()
        if not isinstance(module, VisionTransformer):
            return False
        for blk in module.blocks:
            if type(blk) is not Block or type(blk.attn) is not Attention or type(blk.mlp) is not Mlp:
                return False
            if getattr(blk.attn, "gate", None) is not None:
                return False
        return not getattr(module, "dynamic_img_pad", False)

    @classmethod
    def example_source(cls) -> Optional[nn.Module]:
        """A 2-block ViT-Tiny on 32 px images with 8 px patches (random weights, seeded)."""
        import timm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(
                "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10
            ).eval()

    def __init__(self, source: nn.Module):
        super().__init__(source)
        s = source
        self.distilled = getattr(s, "dist_token", None) is not None
        self.layers: list[LayerHooks] = []
        for blk in s.blocks:
            self.layers.append(LayerHooks(with_result=is_identity(blk.attn.norm)))
        self._layer_index = {id(h): i for i, h in enumerate(self.layers)}
        if not is_identity(s.norm):
            self.final_ln: Optional[nn.Module] = s.norm
            self.norm_first = True
        elif not is_identity(s.fc_norm):
            self.final_ln = s.fc_norm
            self.norm_first = False
        else:
            self.final_ln, self.norm_first = None, True
        self.hook_embed, self.hook_pos_embed = InlineHookPoint(), InlineHookPoint()
        self.ln_final_scale, self.ln_final = InlineHookPoint(), InlineHookPoint()
        self.hook_pooled, self.hook_logits = InlineHookPoint(), InlineHookPoint()

    # --------------------------------------------------------------- description
    def config(self) -> VisionConfig:
        s = self.source
        blk0 = s.blocks[0]
        pe = s.patch_embed
        dc = getattr(s, "pretrained_cfg", None) or {}
        n_classes = s.num_classes
        return VisionConfig(
            family="vit",
            architecture=dc.get("architecture", type(s).__name__),
            adapter=self.name,
            n_layers=len(s.blocks),
            d_model=s.embed_dim,
            n_heads=blk0.attn.num_heads,
            d_head=blk0.attn.head_dim,
            d_mlp=blk0.mlp.fc1.out_features,
            image_size=tuple(pe.img_size) if pe.img_size else None,
            patch_size=_effective_patch(pe),
            in_chans=_in_chans(pe),
            n_classes=n_classes,
            mean=tuple(dc.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(dc.get("std", (0.229, 0.224, 0.225))),
            crop_pct=float(dc.get("crop_pct", 0.875)),
            interpolation=dc.get("interpolation", "bicubic"),
            num_prefix_tokens=s.num_prefix_tokens,
            pool_type="distilled" if self.distilled else (s.global_pool or ""),
            normalization_type="LN" if self.final_ln is not None else None,
            dynamic_img_size=bool(getattr(s, "dynamic_img_size", False)),
            extra={
                "embed_sum_is_resid_pre": is_identity(s.norm_pre) and is_identity(getattr(s, "patch_drop", None)),
                "has_cls_token": s.cls_token is not None,
                "distilled": self.distilled,
                "n_register_tokens": int(getattr(s, "num_reg_tokens", 0) or 0),
                "layer_scale": not is_identity(blk0.ls1),
            },
        )

    def hook_points(self) -> dict[str, HookPoint]:
        points: dict[str, HookPoint] = {"hook_embed": self.hook_embed, "hook_pos_embed": self.hook_pos_embed}
        for l, lh in enumerate(self.layers):
            points.update({f"blocks.{l}.{n}": hp for n, hp in lh.points.items()})
        if self.final_ln is not None:
            points["ln_final.hook_scale"] = self.ln_final_scale
            points["ln_final.hook_normalized"] = self.ln_final
        points["hook_pooled"] = self.hook_pooled
        points["hook_logits"] = self.hook_logits
        return points

    def readout(self) -> LinearReadout:
        """The final linear readout (for direct logit attribution)."""
        s = self.source
        P = s.num_prefix_tokens
        if self.distilled:
            pools = [(lambda x: x[..., 0, :], s.head, 0.5), (lambda x: x[..., 1, :], s.head_dist, 0.5)]
        else:
            if getattr(s, "attn_pool", None) is not None or s.global_pool not in ("token", "avg"):
                raise NotImplementedError(
                    f"logit attribution needs a linear pool ('token' or 'avg'); this model uses {s.global_pool!r}."
                )
            if s.global_pool == "token":
                pool = lambda x: x[..., 0, :]  # noqa: E731
            elif getattr(s, "pool_include_prefix", False):
                pool = lambda x: x.mean(dim=-2)  # noqa: E731
            else:
                pool = lambda x: x[..., P:, :].mean(dim=-2)  # noqa: E731
            pools = [(pool, s.head, 1.0)]
        for _, head, _ in pools:
            if not isinstance(head, nn.Linear):
                raise NotImplementedError("logit attribution needs a linear classification head (num_classes > 0).")
        return LinearReadout(ln=self.final_ln, norm_first=self.norm_first, pools=pools)

    # --------------------------------------------------------------- forward
    def _embed(self, x: Tensor) -> Tensor:
        s = self.source
        x = s.patch_embed(x)
        if getattr(s, "dynamic_img_size", False):
            from timm.layers import resample_abs_pos_embed

            B, H, W, C = x.shape
            pos_embed = (
                resample_abs_pos_embed(
                    s.pos_embed,
                    new_size=(H, W),
                    old_size=s.patch_embed.grid_size,
                    num_prefix_tokens=0 if s.no_embed_class else s.num_prefix_tokens,
                )
                if s.pos_embed is not None
                else None
            )
            x = x.view(B, -1, C)
        else:
            pos_embed = s.pos_embed
        B = x.shape[0]
        prefix = []
        if s.cls_token is not None:
            prefix.append(s.cls_token.expand(B, -1, -1))
        if self.distilled:
            prefix.append(s.dist_token.expand(B, -1, -1))
        if getattr(s, "reg_token", None) is not None:
            prefix.append(s.reg_token.expand(B, -1, -1))
        hooked = is_active(self.hook_embed) or is_active(self.hook_pos_embed)
        if pos_embed is None:
            emb = torch.cat(prefix + [x], dim=1) if prefix else x
            if hooked:
                emb = fire(self.hook_embed, emb)
                pos = fire(self.hook_pos_embed, torch.zeros_like(emb))
                emb = emb + pos
            return s.pos_drop(emb)
        if not s.no_embed_class:
            emb = torch.cat(prefix + [x], dim=1) if prefix else x
            if hooked:
                emb = fire(self.hook_embed, emb)
                pos_embed = fire(self.hook_pos_embed, pos_embed.expand(B, -1, -1))
            return s.pos_drop(emb + pos_embed)
        if not hooked:
            x = x + pos_embed
            return s.pos_drop(torch.cat(prefix + [x], dim=1) if prefix else x)
        emb = fire(self.hook_embed, torch.cat(prefix + [x], dim=1) if prefix else x)
        n_prefix = emb.shape[1] - x.shape[1]
        pos = torch.cat([pos_embed.new_zeros(1, n_prefix, pos_embed.shape[-1]), pos_embed], dim=1).expand(B, -1, -1)
        pos = fire(self.hook_pos_embed, pos)
        return s.pos_drop(emb + pos)

    def _attention(self, attn: nn.Module, h: LayerHooks, x: Tensor, ls: nn.Module) -> Tensor:
        """Attention + layer scale. Returns the block's attention contribution before drop-path."""
        B, N, _ = x.shape
        H, dh = attn.num_heads, attn.head_dim
        qkv = attn.qkv(x).reshape(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if is_active(h.q):
            q = fire(h.q, q.transpose(1, 2)).transpose(1, 2)
        if is_active(h.k):
            k = fire(h.k, k.transpose(1, 2)).transpose(1, 2)
        if is_active(h.v):
            v = fire(h.v, v.transpose(1, 2)).transpose(1, 2)
        if attn.fused_attn and not (is_hooked(h.scores) or is_hooked(h.pattern)):
            if h.scores._capture is not None or h.pattern._capture is not None:
                # cached but not hooked: scores and pattern are computed from q and k when the cache is read,
                # exactly as the explicit path below computes them; the forward keeps fused attention
                qd, kd, scale = q.detach(), k.detach(), attn.scale
                scores = functools.cache(lambda: (qd * scale) @ kd.transpose(-2, -1))  # one GEMM serves both reads
                capture_deferred(h.scores, scores)
                capture_deferred(h.pattern, lambda: scores().softmax(dim=-1))
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        else:
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            scores = fire(h.scores, scores)
            pattern = fire(h.pattern, scores.softmax(dim=-1))
            z = attn.attn_drop(pattern) @ v
        z = z.transpose(1, 2)
        z = fire(h.z, z)
        if h.result is not None and is_hooked(h.result):
            # per-head z_h @ W_O[h].T as one batched matmul over heads: [H, B*N, dh] @ [H, dh, D]
            W_hdo = attn.proj.weight.view(attn.proj.out_features, H, dh).permute(1, 2, 0)
            result = torch.bmm(z.permute(2, 0, 1, 3).reshape(H, B * N, dh), W_hdo)
            result = result.view(H, B, N, -1).permute(1, 2, 0, 3)
            bias = attn.proj.bias
            gamma = getattr(ls, "gamma", None)
            if gamma is not None:
                result = result * gamma
                bias = bias * gamma if bias is not None else None
            result = fire(h.result, result)
            out = result.sum(dim=-2)
            if bias is not None:
                out = out + bias
            return attn.proj_drop(out)
        if h.result is not None and h.result._capture is not None:
            # cached but not hooked: per-head results are computed from z when the cache is read
            layer, zd = self._layer_index[id(h)], z.detach()
            capture_deferred(h.result, lambda: self.head_results_from_z(layer, zd))
        out = attn.proj_drop(attn.proj(attn.norm(z.reshape(B, N, H * dh))))
        return ls(out)

    def _block(self, blk: nn.Module, h: LayerHooks, x: Tensor) -> Tensor:
        x = fire(h.resid_pre, x)
        if is_active(h.ln1_scale):
            fire_ln_scale(h.ln1_scale, blk.norm1, x)
        y = fire(h.ln1, blk.norm1(x))
        attn_out = fire(h.attn_out, blk.drop_path1(self._attention(blk.attn, h, y, blk.ls1)))
        x = fire(h.resid_mid, x + attn_out)
        if is_active(h.ln2_scale):
            fire_ln_scale(h.ln2_scale, blk.norm2, x)
        y = fire(h.ln2, blk.norm2(x))
        mlp = blk.mlp
        y = fire(h.mlp_pre, mlp.fc1(y))
        y = fire(h.mlp_post, mlp.act(y))
        y = mlp.drop2(mlp.fc2(mlp.norm(mlp.drop1(y))))
        mlp_out = fire(h.mlp_out, blk.drop_path2(blk.ls2(y)))
        return fire(h.resid_post, x + mlp_out)

    def forward(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=pre_logits)

    def public_methods(self) -> dict[str, Callable[..., Any]]:
        """timm's ``forward_features`` (tokens after the final norm) and ``forward_head``, with the hooks."""
        return {"forward_features": self.forward_features, "forward_head": self.forward_head}

    def forward_features(self, x: Tensor) -> Tensor:
        """``source.forward_features(x)``: embeddings, blocks and the final norm, firing their hooks."""
        s = self.source
        x = self._embed(x)
        x = s.norm_pre(s.patch_drop(x))
        for blk, h in zip(s.blocks, self.layers):
            x = self._block(blk, h, x) if h.any_active else blk(x)
        if self.norm_first and self.final_ln is not None:
            if is_active(self.ln_final_scale):
                fire_ln_scale(self.ln_final_scale, s.norm, x)
            return fire(self.ln_final, s.norm(x))
        return s.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """``source.forward_head(x, pre_logits)``: pooling, ``fc_norm`` and the head, firing their hooks."""
        s = self.source
        if self.distilled:
            pooled = fire(self.hook_pooled, torch.stack([x[:, 0], x[:, 1]], dim=1))
            a, b = s.head_drop(pooled[:, 0]), s.head_drop(pooled[:, 1])
            if pre_logits:
                return (a + b) / 2
            a, b = s.head(a), s.head_dist(b)
            if s.distilled_training and s.training:
                return a, b
            return fire(self.hook_logits, (a + b) / 2)
        pooled = s.pool(x)
        if not self.norm_first and self.final_ln is not None:
            if is_active(self.ln_final_scale):
                fire_ln_scale(self.ln_final_scale, s.fc_norm, pooled)
            pooled = fire(self.ln_final, s.fc_norm(pooled))
        else:
            pooled = s.fc_norm(pooled)
        pooled = fire(self.hook_pooled, pooled)
        pooled = s.head_drop(pooled)
        if pre_logits:
            return pooled
        return fire(self.hook_logits, s.head(pooled))

    def aliases(self) -> dict[str, str]:
        out = {}
        for l in range(len(self.layers)):
            out[f"blocks.{l}"] = f"blocks.{l}.hook_resid_post"
            out[f"blocks.{l}.mlp"] = f"blocks.{l}.mlp.hook_post"
        return out

    def tl_weights(self, tower: Optional[str] = None) -> TLWeightSource:
        """TransformerLens's matrices (``model.W_Q`` ...; what is folded: :mod:`visionlens.adapters.tl_weights`).

        ``W_U`` / ``b_U``: the classification head with the final norm (``norm`` or ``fc_norm``) folded in;
        ``W_E``: the patch-embedding conv as ``[in_chans * ph * pw, d_model]``; ``W_pos``: ``pos_embed[0]``
        (``[n_prefix + n_patches, d_model]``, or patches only with ``no_embed_class``)."""
        if tower not in (None, "visual"):
            raise ValueError(f"a timm ViT has one tower; got tower={tower!r}")
        s = self.source
        blocks = []
        for blk in s.blocks:
            a, mlp = blk.attn, blk.mlp
            blocks.append(
                TLBlock(
                    ln1=blk.norm1,
                    qkv_weight=a.qkv.weight,
                    qkv_bias=a.qkv.bias,
                    n_heads=a.num_heads,
                    d_head=a.head_dim,
                    out=a.proj,
                    ln2=blk.norm2,
                    fc1=mlp.fc1,
                    fc2=mlp.fc2,
                    gamma1=getattr(blk.ls1, "gamma", None),
                    gamma2=getattr(blk.ls2, "gamma", None),
                    qk_why="" if is_identity(a.q_norm) and is_identity(a.k_norm) else "q/k are normalized (qk_norm)",
                    out_why="" if is_identity(a.norm) else "the heads' output is normalized before the projection",
                    mlp_out_why="" if is_identity(mlp.norm) else "the MLP normalizes its hidden layer",
                )
            )
        pe = s.patch_embed
        hybrid = getattr(pe, "backbone", None) is not None
        W_E = None if hybrid else pe.proj.weight.reshape(pe.proj.weight.shape[0], -1).T
        W_pos = s.pos_embed[0] if s.pos_embed is not None else None
        head, why = s.head, ""
        if self.distilled:
            head, why = None, "a distilled model averages two heads reading different tokens (use head / head_dist)"
        elif not isinstance(head, nn.Linear):
            head, why = None, "the model has no linear classification head (num_classes=0)"
        elif getattr(s, "attn_pool", None) is not None or s.global_pool not in ("token", "avg"):
            head, why = None, f"the pool ({s.global_pool!r}) is not linear"
        return TLWeightSource(
            blocks=blocks,
            W_E=W_E,
            W_pos=W_pos,
            unembed_norm=self.final_ln,
            unembed_weight=head.weight if head is not None else None,
            unembed_bias=head.bias if head is not None else None,
            embed_why="a hybrid (conv backbone) patch embedding is not linear" if hybrid else "",
            unembed_why=why,
        )

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        """Per-head outputs ``[..., pos, head, d_model]`` from cached ``hook_z`` (layer scale folded in)."""
        attn = self.source.blocks[layer].attn
        if not is_identity(attn.norm):
            raise NotImplementedError("per-head results are not linear when the attention output is normalized")
        W_O = attn.proj.weight.view(attn.proj.out_features, attn.num_heads, attn.head_dim)
        result = torch.einsum("...hd,ohd->...ho", z, W_O)
        gamma = getattr(self.source.blocks[layer].ls1, "gamma", None)
        return result * gamma if gamma is not None else result


def _in_chans(pe: nn.Module) -> int:
    """Input channels of the patch embedding (a hybrid embedding's conv backbone sees the image first)."""
    backbone = getattr(pe, "backbone", None)
    if backbone is not None:
        first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            return int(first.in_channels)
    return int(pe.proj.in_channels)


def _effective_patch(pe: nn.Module) -> tuple:
    """Image pixels per token side (hybrid embeddings: the backbone's stride times the projection's patch)."""
    if getattr(pe, "backbone", None) is not None and pe.img_size and getattr(pe, "grid_size", None):
        return tuple(int(i) // int(g) for i, g in zip(pe.img_size, pe.grid_size))
    return tuple(pe.patch_size)
