"""Building blocks shared by the transformer adapters (timm ViT, open_clip towers); public API for plugin authors.

* :class:`LayerHooks` - the TransformerLens-named hook points of one transformer block, as plain
  attributes, with a cheap "is any of them in use" flag (run the source block untouched when not).
* :func:`ln_scale` - the ``sqrt(var + eps)`` a LayerNorm divides by (what ``ln*.hook_scale`` records).
* :func:`is_identity` - True for a missing or ``nn.Identity`` submodule.
* :class:`LinearReadout` - the final residual stream -> logits map, for direct logit attribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from visionlens.hook_points import HookPoint, InlineHookPoint, capture_deferred, fire, is_active, is_hooked

__all__ = ["LayerHooks", "LinearReadout", "fire_ln_scale", "is_identity", "ln_scale"]


def ln_scale(norm: nn.Module, x: Tensor) -> Tensor:
    """Per-vector ``sqrt(var + eps)`` of ``x`` over the last dim, with the LayerNorm ``norm``'s eps (default 1e-6)."""
    eps = getattr(norm, "eps", 1e-6)
    return (x.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()


def fire_ln_scale(hp: HookPoint, norm: nn.Module, x: Tensor) -> None:
    """Fire ``ln*.hook_scale`` for the LayerNorm ``norm`` reading ``x``; a point that is only cached gets the
    scale computed from ``x`` when the cache is read (the same op on the same tensor, so the same value)."""
    if is_hooked(hp):
        fire(hp, ln_scale(norm, x))
    elif hp._capture is not None:
        xd = x.detach()
        capture_deferred(hp, lambda: ln_scale(norm, xd))


def is_identity(m: Optional[nn.Module]) -> bool:
    """True when the submodule is absent (None) or an ``nn.Identity``."""
    return m is None or isinstance(m, nn.Identity)


class LayerHooks:
    """The hook points of one transformer block, held as plain attributes for fast access.

    ``points`` maps the block-relative names in :attr:`NAMES` to :class:`InlineHookPoint` s
    (``attn.hook_result`` only when ``with_result``: per-head outputs that sum linearly).
    ``any_active`` is True while any point of the block is in use.
    """

    NAMES = (
        "hook_resid_pre",
        "ln1.hook_scale",
        "ln1.hook_normalized",
        "attn.hook_q",
        "attn.hook_k",
        "attn.hook_v",
        "attn.hook_attn_scores",
        "attn.hook_pattern",
        "attn.hook_z",
        "attn.hook_result",
        "hook_attn_out",
        "hook_resid_mid",
        "ln2.hook_scale",
        "ln2.hook_normalized",
        "mlp.hook_pre",
        "mlp.hook_post",
        "hook_mlp_out",
        "hook_resid_post",
    )

    def __init__(self, with_result: bool):
        self.points: dict[str, HookPoint] = {}
        for n in self.NAMES:
            if n == "attn.hook_result" and not with_result:
                continue
            self.points[n] = InlineHookPoint()
        p = self.points
        self.resid_pre, self.ln1_scale, self.ln1 = p["hook_resid_pre"], p["ln1.hook_scale"], p["ln1.hook_normalized"]
        self.q, self.k, self.v = p["attn.hook_q"], p["attn.hook_k"], p["attn.hook_v"]
        self.scores, self.pattern, self.z = p["attn.hook_attn_scores"], p["attn.hook_pattern"], p["attn.hook_z"]
        self.result = p.get("attn.hook_result")
        self.attn_out, self.resid_mid = p["hook_attn_out"], p["hook_resid_mid"]
        self.ln2_scale, self.ln2 = p["ln2.hook_scale"], p["ln2.hook_normalized"]
        self.mlp_pre, self.mlp_post = p["mlp.hook_pre"], p["mlp.hook_post"]
        self.mlp_out, self.resid_post = p["hook_mlp_out"], p["hook_resid_post"]
        # True while any point of this block is in use; kept current by the points' add/remove/capture
        # notifications, so an untouched block runs the source's own block forward (exactly the source code path).
        self._any_active, self._dirty = False, False
        for hp in self.points.values():
            hp._listeners.append(self._mark_dirty)

    def _mark_dirty(self) -> None:
        self._dirty = True

    @property
    def any_active(self) -> bool:
        """Whether any hook point of this block currently has hooks (or captures)."""
        if self._dirty:  # recomputed lazily: attaching 200 points costs 200 flag writes, not 200 scans
            self._any_active = any(is_active(hp) for hp in self.points.values())
            self._dirty = False
        return self._any_active


@dataclass
class LinearReadout:
    """How the final residual stream becomes logits, as linear maps (for DLA / logit_attrs).

    ``logits = bias + sum_r coef_r * head_r(pool_r(normalize(x)))`` where normalization is the final
    LayerNorm ``ln`` applied before pooling (``norm_first``) or after it. ``pools`` holds one
    ``(pool function, head with .weight / .bias, coefficient)`` per readout.
    """

    ln: Optional[nn.Module]
    norm_first: bool
    pools: list[tuple[Callable[[Tensor], Tensor], nn.Module, float]]

    def _dir(self, head: nn.Module, classes: Tensor) -> Tensor:
        w = head.weight[classes]
        if self.ln is not None and getattr(self.ln, "weight", None) is not None:
            w = w * self.ln.weight
        return w

    def directions(self, classes: Tensor) -> list[Tensor]:
        """Per readout, the residual-space direction of each class (final-LN weight folded in)."""
        return [self._dir(head, classes) for _, head, _ in self.pools]

    def folded_bias(self, classes: Tensor) -> Tensor:
        """The part of the logit no residual component explains: head bias + head(LN bias)."""
        total = 0.0
        for _, head, coef in self.pools:
            b = head.bias[classes] if head.bias is not None else torch.zeros_like(classes, dtype=head.weight.dtype)
            if self.ln is not None and getattr(self.ln, "bias", None) is not None:
                b = b + head.weight[classes] @ self.ln.bias
            total = total + coef * b
        return total
