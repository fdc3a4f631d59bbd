"""``mean_attention_distance``: attention-weighted query-key distance per layer and head of a ViT."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import Tensor

from visionlens import hookimpl
from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.data import as_images
from visionlens.reducers import RunningMoments
from visionlens.results import Result, Table, new_figure


def pattern_hooks(model: Any) -> list[str]:
    """The ``hook_pattern`` of every block, image tower first (CLIP: ``visual.blocks...``)."""
    names = [n for n in model.hook_dict if fnmatch.fnmatchcase(n, "*blocks.*.attn.hook_pattern")]
    visual = [n for n in names if n.startswith("visual.")]
    return visual or names


def patch_distances(grid: tuple[int, int], patch: tuple[int, int]) -> Tensor:
    """``[P, P]`` Euclidean distances in pixels between patch centres of a ``grid`` of patches."""
    gh, gw = grid
    ys, xs = torch.meshgrid(torch.arange(gh) * patch[0], torch.arange(gw) * patch[1], indexing="ij")
    centres = torch.stack([ys.flatten(), xs.flatten()], dim=-1).double()
    return torch.cdist(centres, centres)


def mean_distance(pattern: Tensor, dist: Tensor, n_prefix: int, include_prefix: bool) -> Tensor:
    """``[batch, head]`` mean over query patches of the attention-weighted distance to key patches.

    Prefix tokens (CLS, registers) are dropped as queries and keys, and each query's attention is
    renormalised over the patch keys; with ``include_prefix`` it is not renormalised, so attention
    paid to prefix tokens counts as distance 0.
    """
    a = pattern[..., n_prefix:, n_prefix:].double()  # [B, H, P, P]
    if not include_prefix:
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    return (a * dist.to(a.device)).sum(-1).mean(-1)


class MeanAttentionDistance(Analysis):
    name = "mean_attention_distance"
    summary = "Attention-weighted query-key distance (pixels) per layer and head of a vision transformer."

    @dataclass
    class Config:
        batch_size: int = option(16, min=1, help="images per forward pass")
        max_images: Optional[int] = option(None, min=1, help="stop after this many images")
        include_prefix: bool = option(False, help="keep attention paid to CLS/register tokens in the normaliser")
        units: Literal["pixels", "patches"] = option("pixels", help="distance unit")

    def supports(self, model: Any) -> tuple[bool, str]:
        cfg = model.cfg
        if not pattern_hooks(model):
            return False, "needs attention patterns (blocks.L.attn.hook_pattern); this model has none"
        if not cfg.patch_size or not cfg.image_size:
            return False, "needs model.cfg.patch_size and image_size to place patches on a grid"
        return True, ""

    def run(self, model: Any, inputs: Any, config: Any) -> Result:
        cfg = model.cfg
        hooks = pattern_hooks(model)
        grid = (cfg.image_size[0] // cfg.patch_size[0], cfg.image_size[1] // cfg.patch_size[1])
        patch = tuple(cfg.patch_size) if config.units == "pixels" else (1, 1)
        dist = patch_distances(grid, patch)
        n_prefix = int(cfg.num_prefix_tokens or 0)
        moments = RunningMoments()
        n = 0
        with torch.no_grad():
            for _, x in as_images(inputs).batches(model, config.batch_size, limit=config.max_images):
                _, cache = model.run_with_cache(x, names_filter=hooks, return_cache_object=False)
                per_layer = [mean_distance(cache[h], dist, n_prefix, config.include_prefix) for h in hooks]
                moments.update(torch.stack(per_layer, dim=1))  # [B, layers, heads]
                n += x.shape[0]
        mean, std = moments.mean.float(), moments.std.float()
        table = Table(
            ["layer", "head", "mean_distance", "std_over_images"], title=f"Mean attention distance ({config.units})"
        )
        for layer in range(mean.shape[0]):
            for head in range(mean.shape[1]):
                table.rows.append([layer, head, float(mean[layer, head]), float(std[layer, head])])
        meta = {
            "model": f"{cfg.architecture or cfg.family} ({cfg.adapter})",
            "n_images": n,
            "hooks": hooks,
            "grid": list(grid),
            "num_prefix_tokens": n_prefix,
        }
        return AttentionDistanceResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors={"mean_distance": mean, "std_distance": std},
            tables={"heads": table},
        )


class AttentionDistanceResult(Result):
    """``tensors["mean_distance"]`` / ``["std_distance"]``: ``[n_layers, n_heads]``."""

    def plot(self) -> Any:
        mean = self.tensors["mean_distance"]
        fig = new_figure(6, 4)
        ax = fig.add_subplot(1, 1, 1)
        for head in range(mean.shape[1]):
            ax.scatter(range(mean.shape[0]), mean[:, head].numpy(), s=14, label=f"head {head}")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"mean attention distance ({self.config.get('units', 'pixels')})")
        ax.set_title(f"{self.meta.get('model', '')}, {self.meta.get('n_images', '?')} images", fontsize=9)
        if mean.shape[1] <= 16:
            ax.legend(fontsize=6, ncol=2)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [MeanAttentionDistance]
