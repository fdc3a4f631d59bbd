"""Choosing hooks: by name, layer alias or glob with clear errors, and the defaults analyses start from.

Shared by the analyses and the applications, so no one imports another plugin for them.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Iterable

import torch
from torch import Tensor

from .analysis import ConfigError
from .validation import VisionLensError, closest_names

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

PER_HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")


def resolve_hooks(model: HookedVisionModel, specs: Iterable[str], owner: str = "") -> list[str]:
    """Expand hook names, layer aliases and globs (``blocks.*.hook_resid_post``) to hook names, in order."""
    out: list[str] = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            matched = [n for n in model.hook_dict if fnmatch.fnmatchcase(n, spec)]
            if not matched:
                close = closest_names(spec.replace("*", "0"), model.hook_dict)
                prefix = f"{owner}: " if owner else ""
                raise ConfigError(
                    f"{prefix}hooks pattern {spec!r} matched no hook. Closest real names: {', '.join(close) or 'none'}."
                )
        else:
            matched = [model.resolve_hook(spec)]
        out.extend(m for m in matched if m not in out)
    return out


def image_batch_support(model: HookedVisionModel) -> tuple[bool, str]:
    """``supports()`` for analyses that feed plain image batches through the model."""
    fam = (getattr(model.cfg, "family", "") or "").lower()
    if "unet" in fam or "diffusion" in fam:
        return False, "diffusion UNets need timestep and conditioning inputs, not an image batch alone"
    if not getattr(model, "hook_dict", None):
        return False, "the model has no hook points"
    return True, ""


def fired_hooks(cache: Any, hooks: list[str], explicit: bool, owner: str) -> list[str]:
    """The requested hooks that a forward on an image batch reached (errors name the ones that did not)."""
    missing = [h for h in hooks if h not in cache]
    if missing and explicit:
        raise VisionLensError(
            f"{owner}: hook(s) {', '.join(missing)} did not fire on an image batch; choose hooks "
            "on the image path (see `visionlens hooks SPEC`)."
        )
    fired = [h for h in hooks if h in cache]
    if not fired:
        raise VisionLensError(f"{owner}: none of the hooks fired on an image batch.")
    return fired


# ----------------------------------------------------------------------------- defaults
def default_hooks(model: HookedVisionModel) -> list[str]:
    """A sensible hook set for unit statistics: residual-stream / block outputs, else the top-level module outputs."""
    names = list(model.hook_dict)
    picks = [n for n in names if fnmatch.fnmatchcase(n, "*blocks.*.hook_resid_post")]
    visual = [n for n in picks if n.startswith("visual.")]
    if visual:
        picks = visual
    if not picks:
        picks = [n for n in names if n.count(".") == 1 and n.endswith(".hook_out")]
    if not picks:
        picks = [n for n in names if n in ("hook_pooled", "hook_logits")] or names
    return picks


def stream_family(model: HookedVisionModel) -> str:
    """``"transformer"``, ``"conv"`` or ``"unet"``: which kind of residual stream the model has."""
    fam = (model.cfg.family or "").lower()
    if fam in ("vit", "clip"):
        return "transformer" if (fam == "vit" or model.cfg.extra.get("visual_type") == "vit") else "conv"
    if fam == "diffusion":
        return "unet"
    return "conv"


def default_patching_hooks(model: HookedVisionModel, target: str) -> list[str]:
    """The residual stream of every layer / stage: ViT ``blocks.l.hook_resid_pre`` (``attn.hook_z`` for
    ``target="head"``), conv-net stage outputs, UNet block outputs (what patching sweeps by default)."""
    names = list(model.hook_dict)
    fam = stream_family(model)
    prefix = model.cfg.extra.get("hook_prefix", "") or ""
    if fam == "transformer":
        suffix = "attn.hook_z" if target == "head" else "hook_resid_pre"
        return [
            f"{prefix}blocks.{l}.{suffix}"
            for l in range(int(model.cfg.n_layers))
            if f"{prefix}blocks.{l}.{suffix}" in model.hook_dict
        ]
    if fam == "unet":
        return [
            n
            for n in names
            if n.count(".") <= 2
            and (n.startswith(("down_blocks.", "up_blocks.")) or n == "mid_block.hook_out")
            and n.endswith(".hook_out")
        ]
    out: list[str] = []
    depths = getattr(model.cfg, "stage_depths", ()) or ()
    for s in range(len(depths)):
        for cand in (f"{prefix}stages.{s}", f"{prefix}stages.{s}.blocks.{depths[s] - 1}.hook_resid_post"):
            try:
                h = model.resolve_hook(cand)
            except Exception:
                continue
            if h not in out:
                out.append(h)
            break
    layers = model.cfg.extra.get("layers")
    if layers and not out:
        out = [f"{n}.hook_out" for n in layers if f"{n}.hook_out" in model.hook_dict]
    if not out:
        out = [n for n in names if n.count(".") == 1 and n.endswith(".hook_out")]
    return out


# Where diffusion UNets keep their units (style-neuron search): resnet / attention outputs, cross-attention.
DEFAULT_UNIT_HOOKS = (
    "re:(^|\\.)resnets\\.\\d+\\.hook_out$",
    "re:(^|\\.)attentions\\.\\d+\\.hook_out$",
    "re:\\.attn2\\.hook_out$",
    "re:\\.attn2\\.hook_pattern$",
)


# ----------------------------------------------------------------------------- unit layout
def unit_layout(name: str, act: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``act`` -> ``(samples [batch, positions, units], position shape)`` following visionlens.units."""
    b = act.shape[0]
    if act.ndim == 1:
        return act.reshape(b, 1, 1), ()
    if act.ndim == 2:
        return act.reshape(b, 1, act.shape[1]), ()
    if act.ndim == 3:
        return act, (act.shape[1],)
    if act.ndim == 4 and name.endswith(PER_HEAD_HOOKS):  # [B, pos, head, d]: units on the last axis
        return act.reshape(b, -1, act.shape[-1]), tuple(act.shape[1:3])
    # channel-first maps [B, C, *spatial]
    return act.movedim(1, -1).reshape(b, -1, act.shape[1]), tuple(act.shape[2:])


def unravel(flat: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Flat position indices ``[...]`` -> coordinates ``[..., len(shape)]``."""
    coords = []
    rem = flat
    for size in reversed(shape):
        coords.append(rem % size)
        rem = torch.div(rem, size, rounding_mode="floor")
    return torch.stack(list(reversed(coords)), dim=-1) if coords else flat.new_zeros(*flat.shape, 0)


def model_description(model: HookedVisionModel) -> str:
    """``"architecture (adapter)"``: how results and fingerprints name a model."""
    cfg = model.cfg
    return f"{cfg.architecture or cfg.family} ({cfg.adapter})"


def position_kind(name: str, shape: tuple[int, ...]) -> str:
    """What the positions of hook ``name`` with per-unit ``shape`` are: ``none``, ``token``, ``y,x``, ..."""
    nd = len(shape) + 1
    if nd <= 2:
        return "none"
    if nd == 3:
        return "token"
    if nd == 4 and name.endswith(PER_HEAD_HOOKS):
        return "token,head"
    if nd == 4 and name.endswith(("hook_pattern", "hook_attn_scores")):
        return "query,key"
    return "y,x" if nd == 4 else "spatial"


__all__ = [
    "resolve_hooks",
    "image_batch_support",
    "fired_hooks",
    "default_hooks",
    "default_patching_hooks",
    "stream_family",
    "DEFAULT_UNIT_HOOKS",
    "unit_layout",
    "unravel",
    "model_description",
    "position_kind",
    "PER_HEAD_HOOKS",
]
