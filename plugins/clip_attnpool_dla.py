"""``attnpool_dla``: exact direct attribution through the attention pool of a CLIP ResNet tower.

open_clip's ``ModifiedResNet`` (RN50-style) ends in an attention pool: the tokens are the mean of the
final feature map followed by its ``HW`` positions (each plus a positional embedding), and only the
first query (the mean token) is read out. Given the attention pattern of that query, the embedding is
linear in the value vectors, so it splits exactly::

    embedding = c_proj.bias + sum_h sum_k pattern[h, 0, k] * W_O[h] @ (W_V[h] @ token_k + b_V[h])

:func:`attnpool_decomposition` returns those parts per head and per key (key 0 is the mean token,
keys ``1..HW`` the spatial positions); :meth:`AttnPoolParts.spatial` folds the mean token back onto
the positions it averages (content of position ``j`` through every key that reads it, plus one
per-head constant for the mean token's positional embedding and value bias), and
:meth:`AttnPoolParts.channels` splits the same sum over the final feature map's channels. Each view
sums to the tower output (checked by :meth:`AttnPoolParts.max_error`). Projected on text directions
(a zero-shot head's class directions) in logit units, ``logit_scale * part . t / |embedding|``, the
parts sum to ``logit - logit_bias``: the pattern and the embedding norm are frozen at their values,
which is what "direct" means here (as the frozen LayerNorm scale in ViT DLA).

The analysis ranks heads (and spatial positions per head) by their contribution to each image's
target class and draws per-head maps over the feature grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.clip import ZeroShotHead, zero_shot_head
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError
from visionlens.viz import diverging_limits

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["AttnPoolParts", "attnpool_decomposition", "ClipAttnPoolDLA", "AttnPoolDLAResult", "is_resnet_clip"]

_TOKENS = "visual.attnpool.hook_tokens"
_PATTERN = "visual.attnpool.hook_pattern"
_OUT = "visual.hook_proj"


def is_resnet_clip(model: HookedVisionModel) -> tuple[bool, str]:
    """Whether ``model`` is an open_clip model whose image tower is a ``ModifiedResNet`` (with the reason if not)."""
    if getattr(getattr(model, "adapter", None), "name", "") != "open_clip":
        return False, f"expected an open_clip CLIP model, got the {model.cfg.adapter!r} adapter"
    if model.cfg.extra.get("visual_type") != "resnet":
        return False, (
            f"the image tower is {model.cfg.extra.get('visual_type')!r}, not an open_clip ModifiedResNet "
            "(use direct_logit_attribution for ViT towers)"
        )
    return True, ""


@dataclass
class AttnPoolParts:
    """Per-head, per-key parts of a ResNet CLIP tower's image embedding (float64).

    ``values``: ``[batch, head, key, embed]`` (key 0 = the mean token, keys ``1..HW`` = positions in
    row-major order over ``grid``); ``bias``: ``c_proj.bias`` ``[embed]``; ``embedding``: the tower's
    output ``[batch, embed]`` as the model computed it; ``pattern``: the read-out query's attention
    ``[batch, head, key]``; ``feature``: the final feature map's tokens ``[batch, HW, channels]`` (without
    positional embedding), ``value_maps``: ``W_O[h] W_V[h]`` ``[head, embed, channels]``, ``pos_values``:
    per-head ``W_O[h] (W_V[h] pos_k + b_V[h])`` ``[head, key, embed]``.
    """

    values: Tensor
    bias: Tensor
    embedding: Tensor
    pattern: Tensor
    grid: tuple[int, int]
    feature: Tensor
    value_maps: Tensor
    pos_values: Tensor

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def total(self) -> Tensor:
        """Sum of every part plus the bias: equals ``embedding`` up to rounding."""
        return self.values.sum(dim=(1, 2)) + self.bias

    def per_head(self) -> Tensor:
        """``[batch, head, embed]``: each head's whole contribution."""
        return self.values.sum(dim=2)

    def spatial(self) -> tuple[Tensor, Tensor]:
        """Fold the mean token onto the positions it averages.

        Returns ``(positions [batch, head, HW, embed], constant [batch, head, embed])``: position ``j``
        gets ``pattern[h, j+1] * W_O W_V (x_j + pos_{j+1}) + pattern[h, j+1] * W_O b_V`` plus its share
        ``pattern[h, 0] / HW * W_O W_V x_j`` of the mean token; the constant is the mean token's
        positional embedding and value bias, ``pattern[h, 0] * W_O (W_V pos_0 + b_V)``.
        """
        hw = self.feature.shape[1]
        content = torch.einsum("bjc,hec->bhje", self.feature, self.value_maps)  # W_O W_V x_j per head
        p0 = self.pattern[:, :, :1, None]  # [b, h, 1, 1]
        positions = self.values[:, :, 1:] + p0 / hw * content
        constant = self.pattern[:, :, 0, None] * self.pos_values[None, :, 0]
        return positions, constant

    def channels(self) -> tuple[Tensor, Tensor]:
        """Split over the final feature map's channels.

        Returns ``(channels [batch, channel, embed], constant [batch, embed])``: channel ``c`` writes
        ``sum_h (sum_k pattern[h, k] x_{k, c}) W_O[h] W_V[h][:, c]`` (``x_0`` the mean), the constant is
        the positional embeddings' and value biases' part plus ``c_proj.bias``.
        """
        mean = self.feature.mean(dim=1, keepdim=True)
        x = torch.cat([mean, self.feature], dim=1)  # [b, key, c]
        weight = torch.einsum("bhk,bkc->bhc", self.pattern, x)  # attention-weighted activation per head
        per_channel = torch.einsum("bhc,hec->bce", weight, self.value_maps)
        constant = torch.einsum("bhk,hke->be", self.pattern, self.pos_values) + self.bias
        return per_channel, constant

    def max_error(self) -> float:
        """Largest absolute difference between any view's sum and the model's embedding."""
        errs = [(self.total() - self.embedding).abs().max()]
        pos, const = self.spatial()
        errs.append((pos.sum(dim=(1, 2)) + const.sum(dim=1) + self.bias - self.embedding).abs().max())
        ch, cconst = self.channels()
        errs.append((ch.sum(dim=1) + cconst - self.embedding).abs().max())
        return float(max(errs))

    def to_logits(self, parts: Tensor, directions: Tensor, logit_scale: float) -> Tensor:
        """Project ``parts [batch, ..., embed]`` on ``directions [n, embed]`` in logit units.

        ``logit_scale * part . d / |embedding|``, per image: summed with the bias's projection they give
        ``logit_scale * cos(embedding, d)``, the zero-shot logit minus its bias (``d`` unit-norm).
        """
        norm = self.embedding.norm(dim=-1)
        shape = (-1,) + (1,) * (parts.ndim - 1)
        return logit_scale * (parts @ directions.to(parts).T) / norm.view(shape)


@torch.no_grad()
def attnpool_decomposition(model: HookedVisionModel, images: Tensor) -> AttnPoolParts:
    """Exact per-head, per-key parts of ``model``'s image embeddings (a ResNet-tower open_clip model)."""
    ok, why = is_resnet_clip(model)
    if not ok:
        raise VisionLensError(f"attnpool_decomposition: {why}.")
    cache: dict[str, Tensor] = {}

    def keep(t: Tensor, hook: Any) -> None:
        cache[hook.name] = t.detach()

    hooks = [(n, keep) for n in (_TOKENS, _PATTERN, _OUT)]
    with model.hooks(fwd_hooks=hooks):
        model.adapter.encode_image(images)
    ap = model.source.visual.attnpool
    tokens = cache[_TOKENS].double()  # [b, key, C] (positional embedding included)
    pattern = cache[_PATTERN][:, :, 0].double()  # [b, h, key] (query = the mean token)
    n_heads = ap.num_heads
    channels = tokens.shape[-1]
    dh = channels // n_heads
    w_v = ap.v_proj.weight.double().view(n_heads, dh, channels)
    b_v = ap.v_proj.bias.double().view(n_heads, dh)
    w_o = ap.c_proj.weight.double().view(-1, n_heads, dh).permute(1, 0, 2)  # [h, embed, dh]
    value_maps = w_o @ w_v  # [h, embed, C]
    v = torch.einsum("hdc,bkc->bhkd", w_v, tokens) + b_v[None, :, None]
    values = pattern[..., None] * torch.einsum("hed,bhkd->bhke", w_o, v)
    pos = ap.positional_embedding.double()  # [key, C]
    pos_values = torch.einsum("hec,kc->hke", value_maps, pos) + torch.einsum("hed,hd->he", w_o, b_v)[:, None]
    feature = tokens[:, 1:] - pos[None, 1:]
    hw = feature.shape[1]
    side = int(round(math.sqrt(hw)))
    grid = (side, hw // side) if side * (hw // side) == hw else (1, hw)
    return AttnPoolParts(
        values=values,
        bias=ap.c_proj.bias.double(),
        embedding=cache[_OUT].double(),
        pattern=pattern,
        grid=grid,
        feature=feature,
        value_maps=value_maps,
        pos_values=pos_values,
    )


# ============================================================================ analysis
class AttnPoolDLAResult(Result):
    """Per-head and per-position direct contributions to each image's target logit."""

    def plot(self) -> Any:
        maps = self.tensors["position_logit"]  # [b, h, gh, gw]
        heads = self.tensors["head_logit"]  # [b, h]
        b, h = heads.shape
        n = min(b, 4)
        fig = new_figure(2.0 * (h + 1), 2.0 * n)
        lo, hi = diverging_limits(maps[:n].numpy())
        for i in range(n):
            ax = fig.add_subplot(n, h + 1, i * (h + 1) + 1)
            ax.barh(np.arange(h), heads[i].numpy(), color=["#c44e52" if v < 0 else "#4c72b0" for v in heads[i]])
            ax.set_yticks(np.arange(h), [f"head {j}" for j in range(h)], fontsize=7)
            ax.set_title(f"image {i}: {self.meta['targets'][i]}", fontsize=8)
            for j in range(h):
                ax2 = fig.add_subplot(n, h + 1, i * (h + 1) + j + 2)
                ax2.imshow(maps[i, j].numpy(), cmap="RdBu_r", vmin=lo, vmax=hi)
                ax2.set_title(f"head {j} by position", fontsize=7)
                ax2.set_axis_off()
        return fig


def _head(model: HookedVisionModel, prompts: list[str], templates: list[str]) -> ZeroShotHead:
    if prompts:
        return zero_shot_head(model, prompts, templates or None, attach=False)
    head = getattr(model.adapter, "classifier", None)
    if head is None:
        raise VisionLensError("attnpool_dla needs class_prompts or a zero-shot head attached to the model.")
    return head


class ClipAttnPoolDLA(Analysis):
    """Exact direct logit attribution through a CLIP ResNet tower's attention pool (heads x positions)."""

    name = "attnpool_dla"
    summary = (
        "CLIP ResNet towers: exact per-head and per-position contributions of the attention pool to the "
        "image embedding and to zero-shot logits (they sum to the embedding / logit)."
    )

    @dataclass
    class Config:
        class_prompts: list[str] = option(list, help="class names for a zero-shot head (else the attached head)")
        templates: list[str] = option(list, help="prompt templates with {} (default 'a photo of a {}.')")
        classes: list[int] = option(list, help="target class per image (one for all, or one per image); empty = top")
        max_images: int = option(8, min=1, max=100_000, help="images analysed (from the start of the inputs)")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"class_prompts": ["cat", "dog"], "max_images": 2}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return is_resnet_clip(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> AttnPoolDLAResult:
        head = _head(model, list(config.class_prompts), list(config.templates))
        images = torch.cat([x for _, x in as_images(inputs).batches(model, 64, limit=config.max_images)])
        parts = attnpool_decomposition(model, images)
        err = parts.max_error()
        logits = parts.to_logits(parts.embedding, head.weight.double(), head.logit_scale)  # [b, n]
        if config.classes:
            cls = list(config.classes) * (len(images) if len(config.classes) == 1 else 1)
            if len(cls) != len(images) or max(cls) >= head.n_classes or min(cls) < 0:
                raise VisionLensError(
                    f"classes: expected one class or one per image ({len(images)}) in [0, {head.n_classes}), got "
                    f"{list(config.classes)}."
                )
            target = torch.tensor(cls)
        else:
            target = logits.argmax(-1)
        dirs = head.weight.double()[target]  # [b, embed]
        scale = head.logit_scale
        norm = parts.embedding.norm(dim=-1)
        head_logit = scale * torch.einsum("bhe,be->bh", parts.per_head(), dirs) / norm[:, None]
        pos, const = parts.spatial()
        pos_logit = scale * torch.einsum("bhje,be->bhj", pos, dirs) / norm[:, None, None]
        const_logit = scale * torch.einsum("bhe,be->bh", const, dirs) / norm[:, None]
        bias_logit = scale * (parts.bias[None] * dirs).sum(-1) / norm
        target_logit = logits.gather(1, target[:, None])[:, 0]
        logit_err = float((head_logit.sum(1) + bias_logit - target_logit).abs().max())
        fold_err = float((pos_logit.sum((1, 2)) + const_logit.sum(1) + bias_logit - target_logit).abs().max())
        rows = []
        names = head.class_names
        for i in range(len(images)):
            for h in range(parts.n_heads):
                best = int(pos_logit[i, h].abs().argmax())
                rows.append(
                    [
                        i,
                        names[int(target[i])],
                        h,
                        float(head_logit[i, h]),
                        float(parts.pattern[i, h, 0]),
                        [best // parts.grid[1], best % parts.grid[1]],
                        float(pos_logit[i, h, best]),
                    ]
                )
        table = Table(
            [
                "image",
                "class",
                "head",
                "logit_contribution",
                "mean_token_attention",
                "top_position",
                "top_position_logit",
            ],
            rows,
            title="Per-head direct contributions to the target logit (logit units)",
        )
        return AttnPoolDLAResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta={
                "model": model_description(model),
                "n_images": len(images),
                "targets": [names[int(t)] for t in target],
                "grid": list(parts.grid),
                "max_sum_error_embedding": err,
                "max_sum_error_logit": logit_err,
                "max_sum_error_logit_spatial": fold_err,
            },
            tensors={
                "head_logit": head_logit.float(),
                "position_logit": pos_logit.view(len(images), parts.n_heads, *parts.grid).float(),
                "head_constant_logit": const_logit.float(),
                "bias_logit": bias_logit.float(),
                "target_logit": target_logit.float(),
                "head_embedding": parts.per_head().float(),
            },
            tables={"heads": table},
        )


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [ClipAttnPoolDLA]
