"""Per-feature evidence for a spliced dictionary: top dataset examples with heatmaps, activation histograms,
logit effects (ablation; the decoder direction through a pool + linear head) and feature visualizations.

Everything goes through the ``H.hook_sae_acts`` point of :mod:`.splice` with the error term on, so the model
computes exactly what it computed before the splice and only the measured feature is edited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence

import torch
from torch import Tensor

from ...data import as_images
from ...featurevis import channel, render
from ...reducers import TopK
from ...validation import VisionLensError
from .splice import Splice, feature_hook

if TYPE_CHECKING:
    from ...hooked_model import HookedVisionModel

__all__ = ["FeatureSweep", "sweep_features", "ablation_effects", "readout_weights", "visualize_features"]

HIST_EDGES = 24  # histogram bins over (0, max] of the non-zero activations


@dataclass
class FeatureSweep:
    """One pass over images: per feature the top-``k`` images (value, image index, position), the fraction of
    images where it fires, and a histogram of its non-zero per-image maxima."""

    hook: str
    top: TopK
    density: Tensor  # [F] fraction of images with the feature > 0 somewhere
    hist_counts: Tensor  # [F, bins]
    hist_edges: Tensor  # [F, bins + 1]
    pos_shape: tuple
    n_images: int
    maps: Dict[int, Tensor]  # image index -> feature map [F, *pos] of the top images (for heatmaps)


def _image_max(acts: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, F, *pos]`` / ``[B, T, F]`` -> per-image max ``[B, F]`` and its flat position ``[B, F]``."""
    if acts.ndim == 2:
        return acts, torch.zeros_like(acts, dtype=torch.long)
    flat = acts.flatten(2) if acts.ndim == 4 else acts.transpose(1, 2)
    v, i = flat.max(-1)
    return v, i


@torch.no_grad()
def sweep_features(
    model: HookedVisionModel, s: Splice, images: Any, k: int = 8, batch_size: int = 64, max_images: Optional[int] = None
) -> FeatureSweep:
    """Stream ``images`` through the spliced model and reduce the feature activations (reducers: ``TopK``,
    ``Histogram``; mergeable, so a sweep can be split and merged)."""
    name = feature_hook(s.hook)
    top = TopK(k)
    maxima, fire, n, pos_shape = [], None, 0, ()
    src = as_images(images)
    for i, x in src.batches(model, batch_size, limit=max_images):
        _, cache = model.run_with_cache(x, names_filter=[name], return_cache_object=False)
        acts = cache[name].float().cpu()
        pos_shape = tuple(acts.shape[2:]) if acts.ndim == 4 else tuple(acts.shape[1:2])
        v, loc = _image_max(acts)
        idx = torch.arange(i, i + x.shape[0])
        top.update(v, idx, loc)
        maxima.append(v)
        act = (v > 0).float().sum(0)
        fire = act if fire is None else fire + act
        n += int(x.shape[0])
    if n == 0:
        raise VisionLensError("No images to sweep (the image source is empty).")
    m = torch.cat(maxima)  # [N, F]
    hi = m.amax(0).clamp_min(1e-6)
    edges = torch.stack([torch.linspace(0, float(e), HIST_EDGES + 1) for e in hi])
    counts = torch.stack([torch.histc(m[:, f][m[:, f] > 0], HIST_EDGES, 0, float(hi[f])) for f in range(m.shape[1])])
    assert fire is not None
    # feature maps of every top image, for heatmaps
    assert top.index is not None
    need = sorted({int(j) for j in top.index.flatten().tolist() if j >= 0})
    maps: Dict[int, Tensor] = {}
    if src.random_access and need:
        xs = torch.stack([_image_at(src, j, model) for j in need])
        for a in range(0, len(need), batch_size):
            _, cache = model.run_with_cache(xs[a : a + batch_size], names_filter=[name], return_cache_object=False)
            acts = cache[name].float().cpu()
            acts = acts.transpose(1, 2) if acts.ndim == 3 else acts
            for jj, j in enumerate(need[a : a + batch_size]):
                maps[j] = acts[jj]
    return FeatureSweep(s.hook, top, fire / n, counts, edges, pos_shape, n, maps)


def _image_at(src: Any, j: int, model: HookedVisionModel) -> Tensor:
    for _, x in src.batches(model, 1, start=j, limit=j + 1):
        return x[0]
    raise VisionLensError(f"Image {j} is out of range.")


@torch.no_grad()
def ablation_effects(
    model: HookedVisionModel, s: Splice, images: Tensor, features: Sequence[int], batch_size: int = 128
) -> Tensor:
    """Mean change of every output logit when one feature is zeroed (error term kept): ``[len(features), C]``.
    On a pool + linear head this equals the feature's direct logit attribution."""
    name = feature_hook(s.hook)
    outs = []
    base = torch.cat([model(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])
    for f in features:

        def zero(acts: Tensor, hook: Any, f: int = f) -> Tensor:
            acts = acts.clone()
            if acts.ndim == 3:
                acts[..., f] = 0
            else:
                acts[:, f] = 0
            return acts

        ab = torch.cat(
            [
                model.run_with_hooks(images[i : i + batch_size], fwd_hooks=[(name, zero)]).float()
                for i in range(0, len(images), batch_size)
            ]
        )
        outs.append((ab - base).mean(0))
    return torch.stack(outs) if outs else torch.zeros(0, base.shape[-1])


def readout_weights(model: HookedVisionModel, s: Splice) -> Optional[Tensor]:
    """``[F, classes]``: each feature's decoder direction through a pool + linear head (logit change per unit of
    the feature at one of the map's positions, times the number of positions), or None for other heads."""
    try:
        ro = model.adapter.readout()
    except Exception:
        return None
    fc = getattr(ro, "fc", None)
    if fc is None or getattr(ro, "norm", None) is not None or (getattr(ro, "extra", None) or {}).get("pre_logits"):
        return None
    dirs = s.dictionary.directions()
    if dirs.shape[1] != fc.weight.shape[1]:
        return None
    return (dirs @ fc.weight.detach().T).float()


def visualize_features(
    model: HookedVisionModel, s: Splice, features: Sequence[int], steps: int = 128, size: Optional[int] = None
) -> Tensor:
    """One feature visualization per feature (objective: the feature's activation, ``channel`` on its map /
    the mean over tokens): ``[len(features), 3, H, W]`` in [0, 1]."""
    objs = [channel(feature_hook(s.hook), int(f)) for f in features]
    r = render(model, objs, steps=steps, size=size, progress=False, evaluate_start_end=False)
    return r.images.detach().cpu()
