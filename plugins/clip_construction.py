"""``construction``: how sparse the expanded weights between two layers are, and whether a unit is a
sparse combination of the previous layer's units.

For a layer pair of conv maps (default, on a CLIP ResNet tower: the last two stage outputs) the
expanded weights ``W [C_to, C_from]`` (:func:`visionlens.weights.expanded_weights`, spatial-mean
convention: rectifiers as identity, BatchNorm and pooling linear) give per-unit sparsity: the share
of ``|W|`` in the top-``k`` inputs, the Gini coefficient and the number of inputs carrying 90%.
On a ViT tower (default: the MLP neurons of the last two blocks, ``visual.blocks.{l}.mlp.hook_post``)
``W`` is the direct path's *virtual weights* from the earlier MLP's neurons to the later MLP's
(:func:`vit_virtual_weights`: ``W_in diag(ln_2 weight) (centred W_out)``; the LayerNorm's scale, the
attention layers in between and the GELU are left out, so ``W`` is input-independent but only the
direct route).

Each unit's activation (spatial mean over its map, or mean over the tokens, per image) is then
explained from the previous layer's mean activations, fitted on a training split of the images and
scored as ``R^2`` on the held-out split:

* ``weights_all`` -- the expanded-weight prediction ``sum_i W[j, i] a_i`` itself, with only a scale and
  an offset fitted (no per-input freedom);
* ``sparse_weights`` -- least squares on the ``k`` inputs with the largest ``|W[j, i]| * std(a_i)`` (the
  largest expected contribution): the "sparse combination" explanation;
* baselines -- ``sparse_random`` (``k`` random inputs, mean over draws), ``sparse_correlation`` (the
  ``k`` inputs most correlated with the unit on the training split: the data-driven standard),
  ``dense_ridge`` (every input, ridge: the linear ceiling) and ``shuffled`` (the sparse-weights fit with
  the images of the two layers mismatched: a control that destroys the relation, ~0 or below).

Intervals: a bootstrap over units for each mean ``R^2``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hooked_model import HookedVisionModel
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError
from visionlens.weights import InputDependentError, expanded_weights, motifs

__all__ = [
    "Construction",
    "ConstructionResult",
    "layer_pair_weights",
    "explain_units",
    "default_pair",
    "vit_virtual_weights",
]

_STAGE = re.compile(r"^visual\.stages\.(\d+)\.blocks\.(\d+)\.hook_resid_post$")
_VIT_MLP = re.compile(r"^visual\.blocks\.(\d+)\.mlp\.hook_post$")


def default_pair(model: HookedVisionModel) -> tuple[str, str]:
    """The last two residual stage outputs of a CLIP ResNet tower (or of a conv net's stages); on a ViT image
    tower, the MLP neurons of its last two blocks."""
    mlps = [n for n in model.hook_dict if _VIT_MLP.match(n)]
    if len(mlps) >= 2 and hasattr(getattr(model.source, "visual", None), "transformer"):
        return mlps[-2], mlps[-1]
    names = [n for n in model.hook_dict if n.endswith("hook_resid_post") and ".blocks." in n]
    names = [n for n in names if not n.startswith("text.")]
    stage_last: dict[str, str] = {}
    for n in names:
        stage_last[n.split(".blocks.")[0]] = n  # hook_dict is in forward order
    outs = list(stage_last.values())
    if len(outs) < 2:
        raise VisionLensError("construction: no two stage outputs (*.blocks.*.hook_resid_post) found; pass hooks.")
    return outs[-2], outs[-1]


class _Segment(nn.Module):
    """The blocks of a ResNet CLIP tower between two stage outputs, as a standalone module."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.inp = nn.Identity()
        self.body = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(self.inp(x))


def layer_pair_weights(model: HookedVisionModel, from_hook: str, to_hook: str, shape: tuple[int, ...]) -> Tensor:
    """Expanded weights ``[C_to, C_from]`` (spatial-mean convention) between two conv-map hooks.

    On a CLIP ResNet tower the pair is cut out of the tower (the attention pool after it would make
    :func:`expanded_weights` refuse the forward); elsewhere :func:`expanded_weights` runs on the model.
    ``shape``: the from-hook's map shape ``[C, H, W]``.
    """
    va, vb = _VIT_MLP.match(from_hook), _VIT_MLP.match(to_hook)
    if va and vb:
        return vit_virtual_weights(model, int(va[1]), int(vb[1]))
    a, b = _STAGE.match(from_hook), _STAGE.match(to_hook)
    if a and b:
        v = model.source.visual
        layers = [v.layer1, v.layer2, v.layer3, v.layer4]
        flat = [(s, i, blk) for s, layer in enumerate(layers) for i, blk in enumerate(layer)]
        start = next(k for k, (s, i, _) in enumerate(flat) if (s, i) == (int(a[1]), int(a[2])))
        stop = next(k for k, (s, i, _) in enumerate(flat) if (s, i) == (int(b[1]), int(b[2])))
        if stop <= start:
            raise VisionLensError(f"construction: {to_hook!r} is not after {from_hook!r}.")
        seg = HookedVisionModel(_Segment([blk for _, _, blk in flat[start + 1 : stop + 1]]).eval(), adapter="generic")
        ew = expanded_weights(seg, "inp.hook_out", "body.hook_out", x=torch.zeros(1, *shape))
        return ew.matrix
    try:
        return expanded_weights(model, from_hook, to_hook).matrix
    except InputDependentError as e:
        msg = f"construction: expanded weights {from_hook!r} -> {to_hook!r} are not defined: {e}"
        raise VisionLensError(msg) from e


def vit_virtual_weights(model: HookedVisionModel, from_layer: int, to_layer: int) -> Tensor:
    """``[mlp_to, mlp_from]``: the direct residual path from block ``from_layer``'s MLP neurons to block
    ``to_layer``'s MLP pre-activations in an open_clip ViT tower, ``W_in diag(ln_2.weight) (W_out - mean)``."""
    blocks = model.source.visual.transformer.resblocks
    if not 0 <= from_layer < to_layer < len(blocks):
        raise VisionLensError(
            f"construction: need 0 <= from < to < {len(blocks)} ViT blocks, got {from_layer} -> {to_layer}."
        )
    w_out = blocks[from_layer].mlp.c_proj.weight.double()  # [width, mlp]
    w_out = w_out - w_out.mean(0, keepdim=True)  # the LayerNorm removes the mean over the width
    ln = blocks[to_layer].ln_2
    gain = ln.weight.double() if getattr(ln, "weight", None) is not None else torch.ones(w_out.shape[0]).double()
    w_in = blocks[to_layer].mlp.c_fc.weight.double()  # [mlp, width]
    return ((w_in * gain) @ w_out).detach()


def _r2(y: Tensor, pred: Tensor) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss if ss > 0 else float("nan")


def _fit(x_tr: Tensor, y_tr: Tensor, x_te: Tensor, ridge: float = 0.0) -> Tensor:
    """Least squares with intercept (optionally ridge on the standardized inputs); predictions on ``x_te``
    (``y_tr`` ``[n]`` or ``[n, targets]``, fitted jointly)."""
    mu, sd = x_tr.mean(0), x_tr.std(0).clamp_min(1e-12)
    xt = torch.cat([(x_tr - mu) / sd, torch.ones(len(x_tr), 1, dtype=x_tr.dtype)], 1)
    reg = ridge * torch.eye(xt.shape[1], dtype=xt.dtype)
    reg[-1, -1] = 0
    rhs = xt.T @ (y_tr if y_tr.ndim == 2 else y_tr[:, None])
    coef = torch.linalg.lstsq(xt.T @ xt + reg, rhs).solution
    xe = torch.cat([(x_te - mu) / sd, torch.ones(len(x_te), 1, dtype=x_te.dtype)], 1)
    pred = xe @ coef
    return pred if y_tr.ndim == 2 else pred[:, 0]


def explain_units(
    W: Tensor, a_from: Tensor, a_to: Tensor, units: list[int], k: int = 5, train_fraction: float = 0.5, seed: int = 0
) -> dict[str, np.ndarray]:
    """Held-out ``R^2`` per unit and method (see the module docstring); ``a_*``: ``[images, channels]``."""
    g = torch.Generator().manual_seed(seed)
    n = len(a_from)
    perm = torch.randperm(n, generator=g)
    n_tr = int(round(train_fraction * n))
    if n_tr < k + 1 or n - n_tr < 2:
        raise VisionLensError(
            f"construction: {n} images split {n_tr}/{n - n_tr} are too few for k={k} "
            f"(need >= {k + 1} to fit, 2 held out)."
        )
    tr, te = perm[:n_tr], perm[n_tr:]
    X, Y = a_from.double(), a_to.double()
    W = W.double()
    sd = X[tr].std(0)
    shuffled = X[torch.roll(perm, 1)]  # every image paired with another image's previous-layer activations
    out: dict[str, list[float]] = {m: [] for m in METHODS}
    dense = _fit(X[tr], Y[tr][:, units], X[te], ridge=1.0)  # one solve for every unit: [test, units]
    xc = X[tr] - X[tr].mean(0)
    yc = Y[tr] - Y[tr].mean(0)
    corr = (xc.T @ yc) / (xc.norm(dim=0)[:, None] * yc.norm(dim=0)[None]).clamp_min(1e-12)  # [in, out]
    for col, j in enumerate(units):
        y = Y[:, j]
        z = X @ W[j]
        out["weights_all"].append(_r2(y[te], _fit(z[tr, None], y[tr], z[te, None])))
        top = (W[j].abs() * sd).topk(k).indices
        out["sparse_weights"].append(_r2(y[te], _fit(X[tr][:, top], y[tr], X[te][:, top])))
        out["shuffled"].append(_r2(y[te], _fit(shuffled[tr][:, top], y[tr], shuffled[te][:, top])))
        rand = [torch.randperm(X.shape[1], generator=g)[:k] for _ in range(5)]
        out["sparse_random"].append(float(np.mean([_r2(y[te], _fit(X[tr][:, r], y[tr], X[te][:, r])) for r in rand])))
        cidx = corr[:, j].abs().topk(k).indices
        out["sparse_correlation"].append(_r2(y[te], _fit(X[tr][:, cidx], y[tr], X[te][:, cidx])))
        out["dense_ridge"].append(_r2(y[te], dense[:, col]))
    return {m: np.array(v) for m, v in out.items()}


METHODS = ("weights_all", "sparse_weights", "sparse_random", "sparse_correlation", "dense_ridge", "shuffled")


def _bootstrap(x: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return float("nan"), float("nan")
    g = np.random.default_rng(seed)
    means = [x[g.integers(0, len(x), len(x))].mean() for _ in range(n)]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


class ConstructionResult(Result):
    """Per-unit sparsity of expanded weights and held-out R^2 of sparse explanations."""

    def plot(self) -> Any:
        fig = new_figure(10, 3.5)
        ax = fig.add_subplot(1, 2, 1)
        ax.hist(self.tensors["n_for_mass"].numpy(), bins=30, color="#4c72b0")
        ax.set_xlabel(f"inputs carrying {self.config.get('mass', 0.9):.0%} of |expanded weight|")
        ax.set_ylabel("units")
        ax.set_title("sparsity of expanded weights", fontsize=9)
        ax2 = fig.add_subplot(1, 2, 2)
        methods = [m for m in METHODS if f"r2/{m}" in self.tensors]
        data = [self.tensors[f"r2/{m}"].numpy() for m in methods]
        ax2.boxplot([d[np.isfinite(d)] for d in data], showfliers=False)
        ax2.set_xticks(range(1, len(methods) + 1), methods, rotation=30, fontsize=7)
        ax2.axhline(0, color="#888", lw=0.8)
        ax2.set_ylabel("held-out R^2")
        ax2.set_title(f"explaining each unit from k={self.config.get('k')} previous-layer units", fontsize=9)
        return fig


class Construction(Analysis):
    """Expanded-weight sparsity between two conv layers (or ViT MLP layers: virtual weights) and sparse
    explanations of units (held-out R^2)."""

    name = "construction"
    summary = (
        "How a unit is built from the previous layer: sparsity of expanded weights (top-k mass, Gini, inputs "
        "for 90%) and held-out R^2 of a sparse combination of previous-layer units, with baselines."
    )

    @dataclass
    class Config:
        from_hook: str = option("", help="earlier conv-map hook (default: the second-to-last stage output)")
        to_hook: str = option("", help="later conv-map hook (default: the last stage output)")
        units: list[int] = option(list, help="later-layer units to explain (default: all)")
        k: int = option(5, min=1, max=4096, help="inputs in the sparse explanation")
        mass: float = option(0.9, min=0.01, max=1.0, help="weight mass for the 'inputs carrying' count")
        max_images: int = option(512, min=8, max=1_000_000, help="images for activations")
        train_fraction: float = option(0.5, min=0.1, max=0.9, help="share of images used to fit")
        batch_size: int = option(128, min=1, max=4096, help="images per forward")
        seed: int = option(0, help="split and random-baseline seed")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"max_images": 16, "k": 1, "units": [0, 1]}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        try:
            default_pair(model)
        except VisionLensError as e:
            return False, str(e)
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> ConstructionResult:
        pair = default_pair(model) if not (config.from_hook and config.to_hook) else None
        from_hook = model.resolve_hook(config.from_hook) if config.from_hook else pair[0]  # type: ignore[index]
        to_hook = model.resolve_hook(config.to_hook) if config.to_hook else pair[1]  # type: ignore[index]
        acts: dict[str, list[Tensor]] = {from_hook: [], to_hook: []}
        shape: Optional[tuple[int, ...]] = None
        with torch.no_grad():
            for _, x in as_images(inputs).batches(model, config.batch_size, limit=config.max_images):
                _, cache = model.run_with_cache(x, names_filter=[from_hook, to_hook], return_cache_object=False)
                for h in (from_hook, to_hook):
                    t = cache[h]
                    if t.ndim not in (3, 4):
                        raise VisionLensError(
                            f"construction: {h!r} is neither a conv map [B, C, H, W] nor tokens [B, T, D] "
                            f"({tuple(t.shape)})."
                        )
                    acts[h].append((t.mean(dim=(2, 3)) if t.ndim == 4 else t.mean(dim=1)).cpu())
                shape = tuple(cache[from_hook].shape[1:])
        if shape is None:
            raise VisionLensError("construction: no images.")
        a_from, a_to = torch.cat(acts[from_hook]), torch.cat(acts[to_hook])
        W = layer_pair_weights(model, from_hook, to_hook, shape).cpu()
        units = list(config.units) or list(range(W.shape[0]))
        if max(units) >= W.shape[0] or min(units) < 0:
            raise ConfigError(f"construction: units must be in [0, {W.shape[0]}), got {units[:10]}.")
        k = min(config.k, W.shape[1])
        mo = motifs(W, k=k, mass=config.mass)
        r2 = explain_units(W, a_from, a_to, units, k=k, train_fraction=config.train_fraction, seed=config.seed)
        summary_rows = []
        for m, v in r2.items():
            lo, hi = _bootstrap(v, seed=config.seed)
            summary_rows.append([m, float(np.nanmean(v)), lo, hi, float(np.nanmedian(v))])
        unit_rows = []
        for idx, j in enumerate(units):
            top = (W[j].abs() * a_from.double().std(0)).topk(k).indices.tolist()
            unit_rows.append(
                [j, float(mo.topk_mass[j]), float(mo.gini[j]), int(mo.n_for_mass[j]), top]
                + [float(r2[m][idx]) for m in METHODS]
            )
        return ConstructionResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta={
                "model": model_description(model),
                "from_hook": from_hook,
                "to_hook": to_hook,
                "n_images": len(a_from),
                "in_units": int(W.shape[1]),
                "out_units": int(W.shape[0]),
                "mean_topk_mass": float(mo.topk_mass.mean()),
                "mean_gini": float(mo.gini.mean()),
                "median_n_for_mass": float(mo.n_for_mass.double().median()),
            },
            tensors={
                "expanded_weights": W.float(),
                "topk_mass": mo.topk_mass.float(),
                "gini": mo.gini.float(),
                "n_for_mass": mo.n_for_mass.float(),
                **{f"r2/{m}": torch.tensor(v, dtype=torch.float32) for m, v in r2.items()},
            },
            tables={
                "summary": Table(
                    ["method", "mean_r2", "ci_low", "ci_high", "median_r2"],
                    summary_rows,
                    title="Held-out R^2 of each explanation (mean over units, bootstrap 95% interval)",
                ),
                "units": Table(
                    ["unit", "topk_mass", "gini", "n_for_mass", "top_inputs", *[f"r2_{m}" for m in METHODS]],
                    unit_rows,
                    title="Per unit: expanded-weight sparsity and held-out R^2",
                ),
            },
        )


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [Construction]
