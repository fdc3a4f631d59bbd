"""``head_roles``: what each attention head of a CLIP image tower does, in one report (ResNet and ViT towers).

ResNet towers (open_clip ``ModifiedResNet``): the heads of the attention pool, each with its exact part
of the image embedding from :func:`visionlens.plugins.clip_attnpool_dla.attnpool_decomposition`.
ViT towers (open_clip ``VisionTransformer``): every head of every layer, each with its *direct*
part of the embedding (:func:`vit_head_parts`: the head's output through the final LayerNorm with its
scale frozen, pooled and projected, as in text-direction DLA and TextSpan; the parts, the MLPs, the
embeddings and the biases sum to the embedding exactly). Per head:

* **attention statistics** of the read-out query (ResNet: the mean token; ViT: CLS): share of its
  attention on that token itself (``mean_token_attention``), entropy over the spatial keys normalized
  by ``log(HW)`` (1 = global, uniform over positions; near 0 = local, one position). ViT heads also
  get the statistics of their *patch* queries: attention on CLS (``patch_cls_attention``), the share
  of their patch attention within one patch (``local_attention``, 3 x 3 neighbourhood; the uniform
  pattern's share is ``meta["local_attention_uniform"]``) and the mean attention distance in patches;
* **TextSpan** (Gandelsman et al. 2024): greedily the texts from a pool whose directions explain the
  most variance of the head's parts over the images, each projected out before the next, with the
  share of variance each explains;
* **ablation per factor**: zero-shot accuracy of each factor's head (class names x templates) when
  the head's part is replaced by its mean over the images (mean ablation, exact through the
  decomposition: the other heads' parts are untouched), the drop from the intact model, and the
  accuracy with *only* that head kept (all others mean-ablated: what the head alone carries, which
  shows roles that redundancy between heads hides from single ablations). For ViT heads these are
  direct-effect ablations (the later layers see the intact head), so ``total_drop_*`` adds the total
  effect: the head's ``hook_z`` replaced by its image mean and the model rerun (for the ResNet pool,
  the last layer, total and direct effects are the same, so the columns repeat ``drop_*``).
  Labels: the given ones per factor, else the intact model's predictions (then "accuracy" is agreement).

The ``role`` column names the factor whose accuracy drops most when the head is ablated, or ``-`` when
no drop exceeds ``min_drop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.cache import VisionActivationCache
from visionlens.clip import encode_text, zero_shot_head
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .clip_attnpool_dla import attnpool_decomposition

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "HeadRoles",
    "HeadRolesResult",
    "ViTHeadParts",
    "vit_head_parts",
    "vit_attention_stats",
    "textspan_basis",
    "ablation_accuracy",
    "parse_factors",
]


class HeadParts(Protocol):
    """What the ablations read: the embedding ``[batch, embed]`` and each head's part ``[batch, head, embed]``."""

    embedding: Tensor

    @property
    def n_heads(self) -> int: ...

    def per_head(self) -> Tensor: ...


def is_clip_with_heads(model: HookedVisionModel) -> tuple[bool, str]:
    """Whether ``model`` is an open_clip model with a ResNet (attention pool) or ViT image tower."""
    if getattr(getattr(model, "adapter", None), "name", "") != "open_clip":
        return False, f"expected an open_clip CLIP model, got the {model.cfg.adapter!r} adapter"
    kind = model.cfg.extra.get("visual_type")
    if kind not in ("resnet", "vit"):
        return False, f"the image tower is {kind!r}, not an open_clip ModifiedResNet or VisionTransformer"
    return True, ""


@dataclass
class ViTHeadParts:
    """Direct parts of a ViT CLIP tower's image embedding (float64).

    ``values``: ``[batch, layer * head, embed]`` (head ``h`` of layer ``l`` at ``l * n_heads_per_layer + h``);
    ``rest``: ``[batch, embed]``, everything else (embeddings, MLPs, attention / MLP biases and the final
    LayerNorm's bias, projected); ``embedding``: the tower output as the model computed it; ``labels``:
    ``"L{l}H{h}"``; ``patterns``: ``[layer, batch, head, query, key]`` attention patterns.
    """

    values: Tensor
    rest: Tensor
    embedding: Tensor
    labels: list[str]
    patterns: Tensor

    @property
    def n_heads(self) -> int:
        return int(self.values.shape[1])

    def per_head(self) -> Tensor:
        return self.values

    def total(self) -> Tensor:
        return self.values.sum(1) + self.rest

    def max_error(self) -> float:
        """Largest absolute difference between the parts' sum and the model's embedding."""
        return float((self.total() - self.embedding).abs().max())


def is_vit_clip(model: HookedVisionModel) -> bool:
    return model.cfg.extra.get("visual_type") == "vit"


@torch.no_grad()
def vit_head_parts(model: HookedVisionModel, images: Tensor) -> ViTHeadParts:
    """Each head's direct part of a ViT CLIP tower's image embedding, and the rest, summing to it exactly.

    The final LayerNorm's scale is frozen at its value on each image (so it is linear); each component of
    the final residual stream is centred, divided by that scale, pooled as the tower pools (CLS token or
    mean), multiplied by the LayerNorm weight and projected; the LayerNorm bias, projected, joins ``rest``.
    """
    if not is_vit_clip(model):
        raise VisionLensError("vit_head_parts: the image tower is not an open_clip VisionTransformer.")
    vis = model.source.visual
    _, cache = model.run_with_cache(images)
    assert isinstance(cache, VisionActivationCache)
    stack, labels = cache.get_full_resid_decomposition(expand_neurons=False, apply_ln=True, return_labels=True)
    pool = model.adapter.readout().pools[0][0]
    pooled = pool(stack.double()) if stack.ndim == 4 else stack.double()  # [component, batch, width]
    ln = vis.ln_post
    if getattr(ln, "weight", None) is not None:
        pooled = pooled * ln.weight.double()
    proj = vis.proj.double()
    parts = pooled @ proj  # [component, batch, embed]
    n_head_parts = sum(1 for lab in labels if lab.startswith("L") and "H" in lab)
    rest = parts[n_head_parts:].sum(0)
    if getattr(ln, "bias", None) is not None:
        rest = rest + ln.bias.double() @ proj
    L = model.cfg.n_layers
    patterns = torch.stack([cache[f"visual.blocks.{l}.attn.hook_pattern"].double() for l in range(L)])
    return ViTHeadParts(
        values=parts[:n_head_parts].movedim(0, 1),
        rest=rest,
        embedding=cache["visual.hook_proj"].double(),
        labels=list(labels[:n_head_parts]),
        patterns=patterns,
    )


def vit_attention_stats(patterns: Tensor, grid: tuple[int, int]) -> dict[str, Tensor]:
    """Per-head attention statistics from ``patterns [layer, batch, head, query, key]`` (token 0 = CLS).

    Returns ``[layer, head]`` tensors: ``mean_token_attention`` (CLS query on CLS), ``spatial_entropy`` (the
    CLS query's attention over the patches, entropy / log(patches)), ``patch_cls_attention`` (patch queries
    on CLS), ``local_attention`` (patch queries' patch attention within Chebyshev distance 1) and
    ``mean_attention_distance`` (patch queries, in patches); plus ``local_attention_uniform``, the local
    share a uniform pattern would give (the input-independent baseline).
    """
    gh, gw = grid
    n = gh * gw
    p = patterns
    cls_row = p[..., 0, 1:]
    spatial = cls_row / cls_row.sum(-1, keepdim=True).clamp_min(1e-12)
    ent = -(spatial * spatial.clamp_min(1e-12).log()).sum(-1) / (math.log(n) if n > 1 else 1.0)
    patch_rows = p[..., 1:, :]  # [l, b, h, q, key]
    to_patches = patch_rows[..., 1:]
    to_patches = to_patches / to_patches.sum(-1, keepdim=True).clamp_min(1e-12)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    ys, xs = ys.reshape(-1).double(), xs.reshape(-1).double()
    cheb = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs())
    dist = ((ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2).sqrt()
    near = (cheb <= 1).double()
    return {
        "mean_token_attention": p[..., 0, 0].mean(1),
        "spatial_entropy": ent.mean(1),
        "patch_cls_attention": patch_rows[..., 0].mean(-1).mean(1),
        "local_attention": (to_patches * near).sum(-1).mean(-1).mean(1),
        "mean_attention_distance": (to_patches * dist).sum(-1).mean(-1).mean(1),
        "local_attention_uniform": torch.tensor(float(near.sum(-1).mean()) / n),
    }


@torch.no_grad()
def total_effect_embeddings(model: HookedVisionModel, images: Tensor, batch_size: int = 256) -> list[Tensor]:
    """Image embeddings ``[batch, embed]`` with each ViT head's ``hook_z`` mean-ablated (replaced by its mean
    over ``images``) and the model rerun, one per head in ``L{l}H{h}`` order: the head's total effect."""
    _, cache = model.run_with_cache(images, names_filter=lambda n: n.endswith("attn.hook_z"))
    out = []
    for l in range(model.cfg.n_layers):
        name = f"visual.blocks.{l}.attn.hook_z"
        mean = cache[name].mean(0)  # [pos, head, d_head]
        for h in range(model.cfg.n_heads):

            def ablate(z: Tensor, hook: Any, h: int = h, mean: Tensor = mean) -> Tensor:
                z = z.clone()
                z[:, :, h] = mean[:, h]
                return z

            embs = []
            with model.hooks(fwd_hooks=[(name, ablate)]):
                for i in range(0, len(images), batch_size):
                    embs.append(model.adapter.encode_image(images[i : i + batch_size]).double())
            out.append(torch.cat(embs))
    return out


def textspan_basis(outputs: Tensor, texts: Tensor, k: int) -> tuple[list[int], list[float]]:
    """Greedy TextSpan: indices of ``k`` rows of ``texts [M, E]`` and the share of the variance of
    ``outputs [N, E]`` each explains (projected out in turn, from both the outputs and the pool)."""
    c = (outputs - outputs.mean(0)).double()
    t = F.normalize(texts.double(), dim=-1)
    total = float((c**2).sum()) or 1.0
    picked: list[int] = []
    shares: list[float] = []
    for _ in range(min(k, len(t))):
        gain = ((c @ t.T) ** 2).sum(0)  # variance along each (still unit-normalized) text direction
        if picked:
            gain[picked] = -1
        j = int(gain.argmax())
        d = t[j] / t[j].norm().clamp_min(1e-12)
        shares.append(float(((c @ d) ** 2).sum()) / total)
        picked.append(j)
        c = c - (c @ d)[:, None] * d
        t = t - (t @ d)[:, None] * d
        t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return picked, shares


def ablation_accuracy(parts: HeadParts, directions: Tensor, labels: Tensor) -> tuple[float, list[float], list[float]]:
    """Zero-shot accuracy intact, with each head mean-ablated (its part replaced by its image mean), and
    with only that head kept (every other head mean-ablated; parts that are not heads stay intact)."""
    emb = parts.embedding
    per_head = parts.per_head()
    centred = per_head - per_head.mean(0)
    others = emb - centred.sum(1)  # every head at its mean
    dirs = directions.double()

    ablated, only = [], []
    for h in range(parts.n_heads):
        ablated.append(_accuracy(emb - centred[:, h], dirs, labels))
        only.append(_accuracy(others + centred[:, h], dirs, labels))
    return _accuracy(emb, dirs, labels), ablated, only


def parse_factors(specs: list[str]) -> dict[str, list[str]]:
    """``["shape:circle,square", ...]`` -> ``{"shape": ["circle", "square"], ...}``."""
    out: dict[str, list[str]] = {}
    for s in specs:
        name, sep, rest = s.partition(":")
        classes = [c.strip() for c in rest.split(",") if c.strip()]
        if not sep or not name or len(classes) < 2:
            raise ConfigError(f"head_roles: factor {s!r}: expected 'name:class1,class2,...' with at least two classes.")
        out[name.strip()] = classes
    return out


_STAT_COLUMNS = (
    "mean_token_attention",
    "spatial_entropy",
    "patch_cls_attention",
    "local_attention",
    "mean_attention_distance",
)


def _accuracy(emb: Tensor, dirs: Tensor, labels: Tensor) -> float:
    return float(((F.normalize(emb, dim=-1) @ dirs.T).argmax(-1) == labels).double().mean())


def _attention_stats(model: HookedVisionModel, parts: Any, vit: bool) -> tuple[dict[str, list], dict[str, Any]]:
    """Per-head attention statistics (``_STAT_COLUMNS``, ``None`` where a tower has none) and meta entries."""
    if vit:
        gh, gw = (int(g) for g in model.source.visual.grid_size)
        grid = (gh, gw)
        st = vit_attention_stats(parts.patterns, grid)  # [layer, head]
        flat = {k: [float(v) for v in st[k].reshape(-1)] for k in _STAT_COLUMNS}
        return flat, {
            "spatial_positions": grid[0] * grid[1],
            "local_attention_uniform": float(st["local_attention_uniform"]),
        }
    pat = parts.pattern  # [b, h, key]
    hw = pat.shape[-1] - 1
    spatial = pat[:, :, 1:] / pat[:, :, 1:].sum(-1, keepdim=True).clamp_min(1e-12)
    ent = -(spatial * spatial.clamp_min(1e-12).log()).sum(-1) / (math.log(hw) if hw > 1 else 1.0)
    out: dict[str, list] = {k: [None] * parts.n_heads for k in _STAT_COLUMNS}
    out["mean_token_attention"] = [float(pat[:, h, 0].mean()) for h in range(parts.n_heads)]
    out["spatial_entropy"] = [float(ent[:, h].mean()) if hw > 1 else None for h in range(parts.n_heads)]
    return out, {"spatial_positions": hw}


class HeadRolesResult(Result):
    """Per-head statistics, TextSpan texts and per-factor ablation drops."""

    def plot(self) -> Any:
        factors = self.meta["factors"]
        panels = [
            ("accuracy_drop", "accuracy drop, head mean-ablated", "RdBu_r", True),
            ("accuracy_only_head", "accuracy with only this head kept", "viridis", False),
        ]
        n_heads = int(self.tensors["accuracy_drop"].shape[1])
        fig = new_figure(2 * (2 + 0.5 * n_heads), 1.2 + 0.5 * len(factors))
        for i, (key, title, cmap, signed) in enumerate(panels):
            data = self.tensors[key].numpy()
            ax = fig.add_subplot(1, 2, i + 1)
            lim = max(float(np.abs(data).max()), 1e-6)
            im = ax.imshow(data, cmap=cmap, vmin=-lim if signed else 0, vmax=lim if signed else 1, aspect="auto")
            ax.set_yticks(range(len(factors)), factors)
            ax.set_xticks(range(n_heads), [f"h{h}" for h in range(n_heads)])
            for f in range(data.shape[0]):
                for h in range(n_heads):
                    ax.text(h, f, f"{data[f, h]:.2f}", ha="center", va="center", fontsize=7, color="w")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        return fig


class HeadRoles(Analysis):
    """Head roles of a CLIP image tower (ResNet attention pool or ViT): attention stats, TextSpan, ablations."""

    name = "head_roles"
    summary = (
        "CLIP ResNet and ViT towers: per head, attention statistics (CLS / mean-token share, spatial "
        "entropy; ViT: local share, attention distance), TextSpan descriptions and zero-shot accuracy "
        "drops per factor under mean ablation (direct and total effect)."
    )

    @dataclass
    class Config:
        factors: list[str] = option(
            list, help="'name:class1,class2,...' per factor (default: one factor from the attached head)"
        )
        templates: list[str] = option(list, help="prompt templates with {} (default 'a photo of a {}.')")
        labels: list[str] = option(list, help="'name:0,2,1,...' true class per image for a factor (else agreement)")
        text_pool: list[str] = option(list, help="TextSpan candidates (default: every factor's prompts)")
        textspan_k: int = option(3, min=1, max=100, help="TextSpan texts per head")
        min_drop: float = option(0.02, min=0.0, max=1.0, help="smallest accuracy drop that names a role")
        max_images: int = option(256, min=2, max=1_000_000, help="images analysed")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"factors": ["animal:cat,dog", "colour:red,blue"], "max_images": 4}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return is_clip_with_heads(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> HeadRolesResult:
        factors = parse_factors(list(config.factors))
        if not factors:
            head = getattr(model.adapter, "classifier", None)
            if head is None:
                raise ConfigError("head_roles: give factors ('name:class1,class2,...') or attach a zero-shot head.")
            factors = {"classes": list(head.class_names)}
        templates = list(config.templates) or None
        images = torch.cat([x for _, x in as_images(inputs).batches(model, 128, limit=config.max_images)])
        vit = is_vit_clip(model)
        parts: Any = vit_head_parts(model, images) if vit else attnpool_decomposition(model, images)
        given: dict[str, Tensor] = {}
        for s in config.labels:
            name, _, rest = s.partition(":")
            vals = [int(v) for v in rest.split(",") if v.strip()]
            if name not in factors or len(vals) != len(images):
                raise ConfigError(
                    f"head_roles: labels {name!r}: expected a factor of {sorted(factors)} and {len(images)} values."
                )
            given[name] = torch.tensor(vals)
        ablated_embs = total_effect_embeddings(model, images) if vit else None
        drops, total_drops, kept, rows_acc, names = [], [], [], [], list(factors)
        for name in names:
            zs = zero_shot_head(model, factors[name], templates, attach=False)
            dirs = zs.weight.double()
            pred = (F.normalize(parts.embedding, dim=-1) @ dirs.T).argmax(-1)
            labels = given.get(name, pred)
            acc, ablated, only = ablation_accuracy(parts, dirs, labels)
            drops.append([acc - a for a in ablated])
            total = [_accuracy(e, dirs, labels) for e in ablated_embs] if ablated_embs is not None else ablated
            total_drops.append([acc - a for a in total])
            kept.append(only)
            chance = float(torch.bincount(labels, minlength=len(factors[name])).max()) / len(labels)
            rows_acc.append([name, acc, chance, "given" if name in given else "agreement with the intact model"])
        drop = torch.tensor(drops)  # [factor, head]
        pool = list(config.text_pool) or [
            (t or "a photo of a {}.").replace("{}", c) for n in names for c in factors[n] for t in (templates or [None])
        ]
        with torch.no_grad():
            text_emb = encode_text(model, pool).double()
        stats, meta_extra = _attention_stats(model, parts, vit)
        head_rows = []
        per_head = parts.per_head()
        for h in range(parts.n_heads):
            idx, shares = textspan_basis(per_head[:, h], text_emb, config.textspan_k)
            f = int(drop[:, h].argmax())
            role = names[f] if float(drop[f, h]) >= config.min_drop else "-"
            head_rows.append(
                [
                    parts.labels[h] if vit else h,
                    *[stats[k][h] for k in _STAT_COLUMNS],
                    float(per_head[:, h].norm(dim=-1).mean() / parts.embedding.norm(dim=-1).mean()),
                    [pool[i] for i in idx],
                    [round(s, 4) for s in shares],
                    role,
                    *[float(drop[j, h]) for j in range(len(names))],
                    *[float(total_drops[j][h]) for j in range(len(names))],
                    *[float(kept[j][h]) for j in range(len(names))],
                ]
            )
        return HeadRolesResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta={
                "model": model_description(model),
                "tower": "vit" if vit else "resnet",
                "n_images": len(images),
                "factors": names,
                "max_sum_error_embedding": parts.max_error(),
                **meta_extra,
            },
            tensors={
                "accuracy_drop": drop.float(),
                "total_accuracy_drop": torch.tensor(total_drops, dtype=torch.float32),
                "accuracy_only_head": torch.tensor(kept, dtype=torch.float32),
                "mean_token_attention": torch.tensor([stats["mean_token_attention"][h] for h in range(parts.n_heads)]),
            },
            tables={
                "heads": Table(
                    [
                        "head",
                        *_STAT_COLUMNS,
                        "relative_norm",
                        "textspan",
                        "textspan_variance",
                        "role",
                        *[f"drop_{n}" for n in names],
                        *[f"total_drop_{n}" for n in names],
                        *[f"only_{n}" for n in names],
                    ],
                    head_rows,
                    title="Per head: attention statistics, TextSpan texts, accuracy drop per factor when ablated",
                ),
                "accuracy": Table(
                    ["factor", "accuracy", "majority_class_rate", "labels"],
                    rows_acc,
                    title="Intact zero-shot accuracy (and the input-independent majority-class rate)",
                ),
            },
        )


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [HeadRoles]
