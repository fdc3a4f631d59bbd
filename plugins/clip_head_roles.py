"""``head_roles``: what each attention-pool head of a CLIP ResNet tower does, in one report.

Per head of the attention pool (its exact part of the image embedding, from
:func:`visionlens.plugins.clip_attnpool_dla.attnpool_decomposition`):

* **attention statistics** of the read-out query (the mean token): share of attention on the mean
  token itself (the "CLS" share), entropy over the spatial keys normalized by ``log(HW)`` (1 = global,
  uniform over positions; near 0 = local, one position);
* **TextSpan** (Gandelsman et al. 2024): greedily the texts from a pool whose directions explain the
  most variance of the head's parts over the images, each projected out before the next, with the
  share of variance each explains;
* **ablation per factor**: zero-shot accuracy of each factor's head (class names x templates) when
  the head's part is replaced by its mean over the images (mean ablation, exact through the
  decomposition: the other heads' parts are untouched), the drop from the intact model, and the
  accuracy with *only* that head kept (all others mean-ablated: what the head alone carries, which
  shows roles that redundancy between heads hides from single ablations).
  Labels: the given ones per factor, else the intact model's predictions (then "accuracy" is agreement).

The ``role`` column names the factor whose accuracy drops most when the head is ablated, or ``-`` when
no drop exceeds ``min_drop``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.clip import encode_text, zero_shot_head
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure

from .clip_attnpool_dla import AttnPoolParts, attnpool_decomposition, is_resnet_clip

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["HeadRoles", "HeadRolesResult", "textspan_basis", "ablation_accuracy", "parse_factors"]


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


def ablation_accuracy(
    parts: AttnPoolParts, directions: Tensor, labels: Tensor
) -> tuple[float, list[float], list[float]]:
    """Zero-shot accuracy intact, with each head mean-ablated (its part replaced by its image mean), and
    with only that head kept (every other head mean-ablated)."""
    emb = parts.embedding
    per_head = parts.per_head()
    means = per_head.mean(0)
    dirs = directions.double()

    def acc(e: Tensor) -> float:
        return float(((F.normalize(e, dim=-1) @ dirs.T).argmax(-1) == labels).double().mean())

    ablated, only = [], []
    for h in range(parts.n_heads):
        ablated.append(acc(emb - per_head[:, h] + means[h]))
        only.append(acc(parts.bias + means.sum(0) - means[h] + per_head[:, h]))
    return acc(emb), ablated, only


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
    """Head roles of a CLIP ResNet tower's attention pool: attention stats, TextSpan, ablation per factor."""

    name = "head_roles"
    summary = (
        "CLIP ResNet towers: per attention-pool head, attention statistics (mean-token share, spatial "
        "entropy), TextSpan descriptions and zero-shot accuracy drops per factor under mean ablation."
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
        return is_resnet_clip(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> HeadRolesResult:
        factors = parse_factors(list(config.factors))
        if not factors:
            head = getattr(model.adapter, "classifier", None)
            if head is None:
                raise ConfigError("head_roles: give factors ('name:class1,class2,...') or attach a zero-shot head.")
            factors = {"classes": list(head.class_names)}
        templates = list(config.templates) or None
        images = torch.cat([x for _, x in as_images(inputs).batches(model, 128, limit=config.max_images)])
        parts = attnpool_decomposition(model, images)
        given: dict[str, Tensor] = {}
        for s in config.labels:
            name, _, rest = s.partition(":")
            vals = [int(v) for v in rest.split(",") if v.strip()]
            if name not in factors or len(vals) != len(images):
                raise ConfigError(
                    f"head_roles: labels {name!r}: expected a factor of {sorted(factors)} and {len(images)} values."
                )
            given[name] = torch.tensor(vals)
        drops, kept, rows_acc, names = [], [], [], list(factors)
        for name in names:
            zs = zero_shot_head(model, factors[name], templates, attach=False)
            dirs = zs.weight.double()
            pred = (F.normalize(parts.embedding, dim=-1) @ dirs.T).argmax(-1)
            labels = given.get(name, pred)
            acc, ablated, only = ablation_accuracy(parts, dirs, labels)
            drops.append([acc - a for a in ablated])
            kept.append(only)
            chance = float(torch.bincount(labels, minlength=len(factors[name])).max()) / len(labels)
            rows_acc.append([name, acc, chance, "given" if name in given else "agreement with the intact model"])
        drop = torch.tensor(drops)  # [factor, head]
        pool = list(config.text_pool) or [
            (t or "a photo of a {}.").replace("{}", c) for n in names for c in factors[n] for t in (templates or [None])
        ]
        with torch.no_grad():
            text_emb = encode_text(model, pool).double()
        pat = parts.pattern  # [b, h, key]
        hw = pat.shape[-1] - 1
        spatial = pat[:, :, 1:] / pat[:, :, 1:].sum(-1, keepdim=True).clamp_min(1e-12)
        ent = -(spatial * spatial.clamp_min(1e-12).log()).sum(-1) / (math.log(hw) if hw > 1 else 1.0)
        head_rows = []
        per_head = parts.per_head()
        for h in range(parts.n_heads):
            idx, shares = textspan_basis(per_head[:, h], text_emb, config.textspan_k)
            f = int(drop[:, h].argmax())
            role = names[f] if float(drop[f, h]) >= config.min_drop else "-"
            head_rows.append(
                [
                    h,
                    float(pat[:, h, 0].mean()),
                    float(ent[:, h].mean()) if hw > 1 else None,
                    float(per_head[:, h].norm(dim=-1).mean() / parts.embedding.norm(dim=-1).mean()),
                    [pool[i] for i in idx],
                    [round(s, 4) for s in shares],
                    role,
                    *[float(drop[j, h]) for j in range(len(names))],
                    *[float(kept[j][h]) for j in range(len(names))],
                ]
            )
        return HeadRolesResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta={
                "model": model_description(model),
                "n_images": len(images),
                "factors": names,
                "spatial_positions": hw,
                "max_sum_error_embedding": parts.max_error(),
            },
            tensors={
                "accuracy_drop": drop.float(),
                "accuracy_only_head": torch.tensor(kept, dtype=torch.float32),
                "mean_token_attention": pat[:, :, 0].mean(0).float(),
            },
            tables={
                "heads": Table(
                    [
                        "head",
                        "mean_token_attention",
                        "spatial_entropy",
                        "relative_norm",
                        "textspan",
                        "textspan_variance",
                        "role",
                        *[f"drop_{n}" for n in names],
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
