"""diffusers UNets (``UNet2DConditionModel``, ``UNet2DModel``) with hooks on every block.

The source UNet runs untouched: every hook is a bridged point on a source module (installed only
while something is attached), so a hooked UNet also works *inside* a diffusers pipeline, which
calls ``pipe.unet`` directly (see :mod:`visionlens.diffusion` for per-denoising-step caching).

Hook names follow the diffusers module paths, each with ``.hook_out`` for the module's output:

* ``time_proj.hook_out`` (sinusoidal features), ``time_embedding.hook_out`` ``[batch, temb]``
  (and ``class_embedding`` / ``add_embedding`` / ``encoder_hid_proj`` where present),
* ``conv_in.hook_out``, ``down_blocks.{i}.hook_out`` (the block's main output; skip connections
  are the outputs of its ``resnets`` / ``attentions`` / ``downsamplers``), ``mid_block.hook_out``,
  ``up_blocks.{i}.hook_out``, ``conv_norm_out`` / ``conv_act`` / ``conv_out``,
* ``{block}.resnets.{j}.hook_out``, ``{block}.attentions.{j}.hook_out``,
  ``{block}.downsamplers.0.hook_out`` / ``{block}.upsamplers.0.hook_out``,
* inside transformer blocks: ``{block}.attentions.{j}.(norm|proj_in|proj_out).hook_out``,
  ``...transformer_blocks.{k}.hook_out`` and its ``norm1|attn1|norm2|attn2|norm3|ff``,
* every ``Attention`` module (``...attn1`` self-attention, ``...attn2`` cross-attention, and the
  plain attention blocks of ``UNet2DModel``): ``hook_out`` plus the attention internals
  ``hook_q`` ``[batch, pixels, head, d_head]``, ``hook_k`` / ``hook_v`` ``[batch, keys, head, d_head]``
  (``keys`` = text tokens for cross-attention), ``hook_attn_scores`` / ``hook_pattern``
  ``[batch, head, pixels, keys]``, ``hook_z`` ``[batch, pixels, head, d_head]``.

Attention uses the module's default processor (``AttnProcessor2_0``: fused SDPA) until one of its
internal hooks is active; then an explicit visionlens processor that computes the same thing
with hook points replaces it, and the default returns when the hooks are removed.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.config import VisionConfig
from visionlens.hook_points import (
    BridgedHookPoint,
    HookPoint,
    InlineHookPoint,
    capture_deferred,
    fire,
    is_active,
    is_hooked,
)
from visionlens.validation import VisionLensError, check_image_batch

from . import Adapter

__all__ = ["UNetAdapter", "ATTN_INTERNAL"]

UNET_CLASSES = ("UNet2DConditionModel", "UNet2DModel")
ATTN_INTERNAL = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
_TOP = (
    "time_proj",
    "time_embedding",
    "class_embedding",
    "add_time_proj",
    "add_embedding",
    "encoder_hid_proj",
    "conv_in",
    "mid_block",
    "conv_norm_out",
    "conv_act",
    "conv_out",
)
_ORDER = {
    n: i
    for i, n in enumerate(
        (
            "time_proj",
            "time_embedding",
            "class_embedding",
            "add_time_proj",
            "add_embedding",
            "encoder_hid_proj",
            "conv_in",
            "down_blocks",
            "mid_block",
            "up_blocks",
            "conv_norm_out",
            "conv_act",
            "conv_out",
        )
    )
}
_PATTERNS = [
    re.compile(p)
    for p in (
        r"^(down_blocks|up_blocks)\.\d+$",
        r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(resnets|attentions|downsamplers|upsamplers)\.\d+$",
        r"\.attentions\.\d+\.(norm|proj_in|proj_out)$",
        r"\.transformer_blocks\.\d+$",
        r"\.transformer_blocks\.\d+\.(norm1|norm2|norm3|attn1|attn2|ff)$",
    )
]


def _is_unet(module: nn.Module) -> bool:
    return any(c.__name__ in UNET_CLASSES and c.__module__.startswith("diffusers") for c in type(module).__mro__)


def _select(path: str) -> bool:
    return path in _TOP or any(p.search(path) for p in _PATTERNS)


class _OutputBridge(BridgedHookPoint):
    """A bridged output hook that also reaches the tensor inside tuple / ``BaseOutput`` returns."""

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        if isinstance(output, Tensor):
            return fire(self, output)
        if isinstance(output, tuple) and output and isinstance(output[0], Tensor):
            return (fire(self, output[0]),) + tuple(output[1:])
        sample = getattr(output, "sample", None)
        if isinstance(sample, Tensor):
            output.sample = fire(self, sample)
            return output
        return None


class _AttnHooks:
    """Internal hooks of one diffusers ``Attention``; swaps in the explicit processor while active."""

    def __init__(self, attn: nn.Module, path: str):
        self.attn = attn
        self.path = path
        self.points: dict[str, InlineHookPoint] = {n: InlineHookPoint() for n in ATTN_INTERNAL}
        self.q, self.k, self.v = self.points["hook_q"], self.points["hook_k"], self.points["hook_v"]
        self.scores, self.pattern, self.z = (
            self.points["hook_attn_scores"],
            self.points["hook_pattern"],
            self.points["hook_z"],
        )
        self.original: Any = None
        self._guard: Any = None
        for hp in self.points.values():
            hp._listeners.append(self._sync)

    @property
    def swapped(self) -> bool:
        return self.original is not None

    def _sync(self) -> None:
        want = any(is_active(hp) for hp in self.points.values())
        if want and self.original is None:
            from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

            proc = self.attn.processor
            if type(proc) not in (AttnProcessor, AttnProcessor2_0):
                if self._guard is None:  # first request: say so now, and refuse to run while it stands
                    msg = (
                        f"Attention-internal hooks of {self.path!r} need diffusers' default attention processor "
                        f"(AttnProcessor2_0 / AttnProcessor); this module uses {type(proc).__name__}. Its output "
                        f"is still available as {self.path}.hook_out."
                    )

                    def guard(module: nn.Module, args: Any) -> None:
                        raise VisionLensError(msg)

                    self._guard = self.attn.register_forward_pre_hook(guard)
                    raise VisionLensError(msg)
                return
            self.original = proc
            self.attn.set_processor(_HookedAttnProcessor(self, classic=type(proc) is AttnProcessor))
        elif not want:
            if self._guard is not None:
                self._guard.remove()
                self._guard = None
            if self.original is not None:
                self.attn.set_processor(self.original)
                self.original = None


def _scores(q: Tensor, k: Tensor, scale: float, mask: Optional[Tensor], upcast: tuple[bool, bool]) -> Tensor:
    """Attention scores ``[batch, head, q_pos, k_pos]`` as diffusers' classic processor computes them.

    One GEMM with the scale fused in (``baddbmm``, ``alpha=scale``), then the additive mask; ``upcast``
    = (upcast q and k, upcast the scores) for the classic processor's ``upcast_attention`` /
    ``upcast_softmax``.
    """
    qs, ks = (q.float(), k.float()) if upcast[0] else (q, k)
    B, H, Nq, Nk = qs.shape[0], qs.shape[1], qs.shape[2], ks.shape[2]
    q3, k3 = qs.reshape(B * H, Nq, -1), ks.reshape(B * H, Nk, -1)
    scores = torch.baddbmm(q3.new_empty(B * H, Nq, Nk), q3, k3.transpose(1, 2), beta=0, alpha=scale)
    scores = scores.view(B, H, Nq, Nk)
    if mask is not None:
        scores = scores + mask
    return scores.float() if upcast[1] else scores


class _HookedAttnProcessor:
    """diffusers' ``AttnProcessor2_0`` / ``AttnProcessor`` computation with hook points."""

    def __init__(self, hooks: _AttnHooks, classic: bool = False):
        self.hooks = hooks
        self.classic = classic

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,
        encoder_hidden_states: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        temb: Optional[Tensor] = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        h = self.hooks
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        B = batch_size
        q = query.view(B, -1, attn.heads, head_dim)
        k = key.view(B, -1, attn.heads, head_dim)
        v = value.view(B, -1, attn.heads, head_dim)
        if not self.classic:
            if attn.norm_q is not None:
                q = attn.norm_q(q.transpose(1, 2)).transpose(1, 2)
            if attn.norm_k is not None:
                k = attn.norm_k(k.transpose(1, 2)).transpose(1, 2)
        q, k, v = fire(h.q, q), fire(h.k, k), fire(h.v, v)  # [batch, pos, head, d_head]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        dtype = q.dtype
        hooked = is_hooked(h.scores) or is_hooked(h.pattern)
        if not self.classic and not hooked:
            if h.scores._capture is not None or h.pattern._capture is not None:
                # cached but not hooked: scores and pattern are computed from q and k when the cache is read,
                # exactly as the explicit path below computes them; the forward keeps fused attention
                qd, kd = q.detach(), k.detach()
                scale, mask, upcast = attn.scale, attention_mask, (False, False)
                scores = functools.cache(lambda: _scores(qd, kd, scale, mask, upcast))  # one GEMM serves both reads
                capture_deferred(h.scores, scores)
                capture_deferred(h.pattern, lambda: scores().softmax(dim=-1).to(dtype))
            z = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, scale=attn.scale
            )
        else:
            upcast = (self.classic and attn.upcast_attention, self.classic and attn.upcast_softmax)
            scores = fire(h.scores, _scores(q, k, attn.scale, attention_mask, upcast))
            pattern = fire(h.pattern, scores.softmax(dim=-1).to(dtype))
            z = pattern @ v
        z = fire(h.z, z.transpose(1, 2))  # [batch, pixels, head, d_head]
        hidden_states = z.reshape(B, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class UNetAdapter(Adapter):
    """diffusers ``UNet2DConditionModel`` / ``UNet2DModel``: bridged block hooks + attention internals."""

    name = "diffusers_unet"
    family = "diffusion"
    priority = 20
    input_name = "sample"  # unet(sample=..., timestep=..., encoder_hidden_states=...) works as in diffusers

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return _is_unet(module)

    @classmethod
    def example_source(cls) -> nn.Module:
        """A tiny SD-style ``UNet2DConditionModel`` on 8x8 latents (the config of
        ``visionlens.diffusion.tiny_unet("conditional")``; random weights, seeded)."""
        from diffusers import UNet2DConditionModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return UNet2DConditionModel(
                sample_size=8,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=32,
                attention_head_dim=8,
                norm_num_groups=32,
            ).eval()

    def __init__(self, source: nn.Module):
        super().__init__(source)
        from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

        self.conditional = any(c.__name__ == "UNet2DConditionModel" for c in type(source).__mro__)
        self.pipeline: Any = None  # set when wrapped from a pipeline
        self.current_step: Optional[int] = None  # set by visionlens.diffusion while a pipeline runs
        self.current_timestep: Any = None
        self.outputs: dict[str, _OutputBridge] = {}
        self.attn_hooks: dict[str, _AttnHooks] = {}
        entries = []
        for path, mod in source.named_modules():
            if not path:
                continue
            is_attn = isinstance(mod, Attention)
            if not (_select(path) or is_attn):
                continue
            entries.append((path, mod, is_attn))
        entries.sort(key=lambda e: _ORDER.get(e[0].split(".")[0], len(_ORDER)))
        self._entries = entries
        for path, mod, is_attn in entries:
            self.outputs[path] = _OutputBridge(mod, "output")
            if is_attn and type(mod.processor) in (AttnProcessor, AttnProcessor2_0):
                self.attn_hooks[path] = _AttnHooks(mod, path)
        self.self_attention = [p for p, m, a in entries if a and not getattr(m, "is_cross_attention", False)]
        self.cross_attention = [p for p, m, a in entries if a and getattr(m, "is_cross_attention", False)]

    # --------------------------------------------------------------- description
    def config(self) -> VisionConfig:
        s = self.source
        c = s.config
        size = c.sample_size
        if isinstance(size, int):
            size = (size, size)
        elif size is not None:
            size = tuple(size)
        n_down = sum(1 for b in s.down_blocks if getattr(b, "downsamplers", None) is not None)
        heads = [m.heads for _, m, a in self._entries if a]
        ch = int(c.in_channels)
        lpb = c.layers_per_block
        depths = tuple(lpb) if isinstance(lpb, (list, tuple)) else (int(lpb),) * len(c.block_out_channels)
        return VisionConfig(
            family="diffusion",
            architecture=type(s).__name__,
            adapter=self.name,
            n_layers=len(s.down_blocks) + (1 if s.mid_block is not None else 0) + len(s.up_blocks),
            d_model=int(c.block_out_channels[-1]),
            n_heads=int(heads[0]) if heads else 0,
            d_head=int(self.source_head_dim()) if heads else 0,
            image_size=size,
            in_chans=ch,
            mean=(0.5,) * ch,
            std=(0.5,) * ch,
            crop_pct=1.0,
            dynamic_img_size=True,
            min_image_size=2**n_down,
            stage_depths=depths,
            stage_widths=tuple(int(w) for w in c.block_out_channels),
            extra={
                "conditional": self.conditional,
                "cross_attention_dim": self.context_dim(),
                "out_channels": int(c.out_channels),
                "down_block_types": list(c.down_block_types),
                "up_block_types": list(c.up_block_types),
                "self_attention": list(self.self_attention),
                "cross_attention": list(self.cross_attention),
                "n_downsamplers": n_down,
            },
        )

    def source_head_dim(self) -> int:
        for _, m, a in self._entries:
            if a:
                return m.inner_dim // m.heads
        return 0

    def context_dim(self) -> Optional[int]:
        """Width of ``encoder_hidden_states`` this UNet expects (``None`` for unconditional UNets)."""
        if not self.conditional:
            return None
        c = self.source.config
        if getattr(c, "encoder_hid_dim", None):
            return int(c.encoder_hid_dim)
        d = c.cross_attention_dim
        return int(d[0] if isinstance(d, (list, tuple)) else d)

    def hook_points(self) -> dict[str, HookPoint]:
        points: dict[str, HookPoint] = {}
        for path, _, _ in self._entries:
            ah = self.attn_hooks.get(path)
            if ah is not None:
                points.update({f"{path}.{n}": hp for n, hp in ah.points.items()})
            points[f"{path}.hook_out"] = self.outputs[path]
        return points

    def aliases(self) -> dict[str, str]:
        return {"time_embedding": "time_embedding.hook_out", "temb": "time_embedding.hook_out"}

    # --------------------------------------------------------------- inputs
    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        for p in self.source.parameters():
            return p.device, p.dtype
        return torch.device("cpu"), torch.float32

    def validate(self, x: Any) -> None:
        check_image_batch(x, self.cfg, check_values=False)
        if not self.conditional:
            f = 2 ** self.cfg.extra.get("n_downsamplers", 0)
            h, w = x.shape[-2:]
            if h % f or w % f:
                raise VisionLensError(
                    f"Expected a sample whose height and width are multiples of {f} for this "
                    f"UNet2DModel ({self.cfg.extra['n_downsamplers']} downsamplers), got {(h, w)}."
                )

    def example_inputs(self, image_size: Optional[int] = None, batch: int = 1) -> tuple[tuple, dict]:
        """Arguments for a dummy call reaching every hook: ``(sample, timestep[, encoder_hidden_states])``."""
        dev, dtype = self._device_dtype()
        size = (image_size, image_size) if image_size else tuple(self.cfg.image_size or (32, 32))
        g = torch.Generator().manual_seed(0)
        sample = torch.randn(batch, self.cfg.in_chans, *size, generator=g).to(dev, dtype)
        t = torch.tensor(10, device=dev)
        kwargs: dict[str, Any] = {}
        c = self.source.config
        if getattr(self.source, "class_embedding", None) is not None:
            if c.class_embed_type in (None, "identity") and c.num_class_embeds:
                kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=dev)
            elif c.class_embed_type == "timestep":
                kwargs["class_labels"] = torch.zeros(batch, dtype=torch.long, device=dev)
            elif c.class_embed_type in ("projection", "simple_projection"):
                kwargs["class_labels"] = torch.zeros(
                    batch, c.projection_class_embeddings_input_dim, device=dev, dtype=dtype
                )
        if not self.conditional:
            return (sample, t), kwargs
        ctx = torch.randn(batch, 77, self.context_dim(), generator=g).to(dev, dtype)
        if getattr(c, "addition_embed_type", None) == "text_time":
            n_time = 6 * c.addition_time_embed_dim
            kwargs["added_cond_kwargs"] = {
                "text_embeds": torch.randn(batch, c.projection_class_embeddings_input_dim - n_time, generator=g).to(
                    dev, dtype
                ),
                "time_ids": torch.zeros(batch, 6, device=dev, dtype=dtype),
            }
        return (sample, t, ctx), kwargs

    # --------------------------------------------------------------- forward
    # keeps diffusers' keyword names (``sample=``, ``timestep=``) rather than the base's ``x``
    def forward(self, sample: Tensor, timestep: Any = None, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``unet(sample, timestep, encoder_hidden_states, ...)``: returns exactly what the source returns."""
        if timestep is None:
            need = "model(sample, timestep, encoder_hidden_states)" if self.conditional else "model(sample, timestep)"
            raise VisionLensError(f"A diffusion UNet needs a timestep: call {need}.")
        if self.conditional:
            ctx = args[0] if args else kwargs.get("encoder_hidden_states")
            dim = self.context_dim()
            if ctx is None:
                raise VisionLensError(
                    f"{type(self.source).__name__} needs encoder_hidden_states "
                    f"[batch, tokens, {dim}] (e.g. CLIP text-encoder states)."
                )
            if (
                not isinstance(ctx, Tensor)
                or ctx.ndim != 3
                or (dim and ctx.shape[-1] != dim and not getattr(self.source.config, "encoder_hid_dim_type", None))
            ):
                got = tuple(ctx.shape) if isinstance(ctx, Tensor) else type(ctx).__name__
                raise VisionLensError(f"Expected encoder_hidden_states of shape [batch, tokens, {dim}], got {got}.")
        return self.source(sample, timestep, *args, **kwargs)

    # --------------------------------------------------------------- introspection
    def active_processors(self) -> dict[str, str]:
        """Processor class of every hooked attention module (``_HookedAttnProcessor`` while internals are hooked)."""
        return {p: type(ah.attn.processor).__name__ for p, ah in self.attn_hooks.items()}
