"""``activation_patching``: causal effect of each component between a clean and a corrupted input.

A thin analysis over the engine in :mod:`visionlens.patching` (read its docstring for the
vocabulary). It picks hooks and targets, runs exact batched patching and/or attribution patching
(AtP) and returns heatmaps over the image grid, layer x position / layer x head matrices, ranked
tables and the AtP-vs-exact correlation.

Inputs
------
* Images (anything :func:`visionlens.data.as_images` reads, e.g. ``--images folder``): the clean
  image is the first one and the corrupted image the second, unless ``clean`` / ``corrupted``
  name others (an index, an image name such as ``skimage:chelsea`` or a unique suffix of one, or
  an image file path).
* ``{"clean": x, "corrupted": y}``: tensor batches ``[N, C, H, W]`` (``N`` pairs), image paths /
  arrays, or, for a diffusion UNet, its call arguments ``(sample, timestep, encoder_hidden_states)``
  (or ``{"args": ..., "kwargs": ...}``).

Defaults
--------
``hooks`` empty = the residual stream: ``blocks.{l}.hook_resid_pre`` of every layer for ViTs (and
``attn.hook_z`` of every layer for ``target=head``), the output of every stage for conv nets, the
down / mid / up block outputs of a UNet. ``target=auto`` = ``position`` for transformers,
``region`` for conv nets and UNets. ``metric=auto`` = ``normalized_logit_diff`` for classifiers
(CLIP: zero-shot logits over ``class_prompts``) and ``normalized_output_mse`` for UNets.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.clip import attach_head, zero_shot_head
from visionlens.data import as_images, denormalize
from visionlens.hook_select import default_patching_hooks, resolve_hooks, stream_family
from visionlens.hookspecs import hookimpl
from visionlens.patching import PatchInputs, run_patching
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError, closest_names
from visionlens.viz import diverging_limits, grid_shape, imshow_overlay, labels_fit, short_hook

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["ActivationPatching", "PatchingResult", "default_patching_hooks"]


def _resolve(model: HookedVisionModel, specs: list[str]) -> list[str]:
    return resolve_hooks(model, specs, owner="activation_patching")


class ActivationPatching(Analysis):
    """Exact (batched) and attribution patching between a clean and a corrupted input."""

    name = "activation_patching"
    summary = (
        "Activation patching (denoising / noising) over hooks x positions / heads / channels / regions, "
        "batched exact sweeps plus attribution patching, with heatmaps over the image."
    )

    @dataclass
    class Config:
        hooks: list[str] = option(list, help="hook names, aliases or globs; empty = residual stream per layer/stage")
        target: Literal["auto", "whole", "position", "head", "channel", "region"] = option(
            "auto", help="what is patched per forward row (auto: position for ViTs, region for conv nets / UNets)"
        )
        grid: int = option(4, min=1, max=256, help="region targets: grid cells per side")
        positions: list[int] = option(list, help="position targets: only these token indices (or flat y*W+x)")
        direction: Literal["denoising", "noising"] = option(
            "denoising", help="denoising: run corrupted, patch in clean; noising: run clean, patch in corrupted"
        )
        metric: Literal[
            "auto", "normalized_logit_diff", "logit_diff", "logprob", "prob", "output_mse", "normalized_output_mse"
        ] = option("auto", help="metric of the output (normalized: 0 = corrupted, 1 = clean)")
        label: Optional[int] = option(None, min=0, help="correct class (default: the clean run's top class)")
        foil: Optional[int] = option(
            None, min=0, help="incorrect class for logit differences (default: the corrupted run's top class)"
        )
        clean: Optional[str] = option(None, help="clean image: index, name or file (default: the first image)")
        corrupted: Optional[str] = option(None, help="corrupted image: index, name or file (default: the second)")
        method: Literal["exact", "attribution", "both"] = option(
            "both", help="exact patching, attribution patching (gradient approximation) or both (+ correlation)"
        )
        batching: Literal["auto", "expand", "stack", "loop"] = option(
            "auto",
            help="exact sweeps: auto/expand (share the computation before the hook), stack (repeat the "
            "input), loop (one forward per target, the slow reference)",
        )
        max_batch: int = option(64, min=1, max=1_000_000, help="patched copies per forward at most")
        memory_budget_mb: float = option(2048.0, min=1.0, help="activation memory budget per forward (estimate)")
        class_prompts: list[str] = option(list, help="CLIP: class names for a zero-shot head (else the attached one)")
        templates: list[str] = option(list, help="CLIP: prompt templates with {}")
        top_k: int = option(20, min=1, max=1_000_000, help="rows in the ranked table")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: 2x2 regions, a short table."""
        return {"grid": 2, "top_k": 5}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        if not getattr(model, "hook_dict", None):
            return False, "the model has no hook points"
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "PatchingResult":
        restore = None
        fam = stream_family(model)
        if (model.cfg.family or "").lower() == "clip":
            restore = _clip_head(model, config)
        try:
            clean, corrupted, names, disp = self._pair(model, inputs, config)
            target = config.target
            if target == "auto":
                target = "position" if fam == "transformer" else "region"
            hooks = _resolve(model, config.hooks) if config.hooks else default_patching_hooks(model, target)
            if not hooks:
                raise VisionLensError("activation_patching: no hooks to patch; set hooks=... (see `visionlens hooks`).")
            metric = config.metric
            if metric == "auto":
                metric = "normalized_output_mse" if fam == "unet" else "normalized_logit_diff"
            t0 = time.perf_counter()
            outcome = run_patching(
                model,
                clean,
                corrupted,
                hooks,
                kind=target,
                metric=metric,
                direction=config.direction,
                label=config.label,
                foil=config.foil,
                method=config.method,
                batching=config.batching,
                grid=config.grid,
                positions=config.positions or None,
                max_batch=config.max_batch,
                memory_budget_mb=config.memory_budget_mb,
            )
            total = time.perf_counter() - t0
        finally:
            if restore is not None:
                restore()
        return _result(self, model, config, outcome, names, disp, target, total)

    # ------------------------------------------------------------------ inputs
    def _pair(
        self, model: HookedVisionModel, inputs: Any, config: Any
    ) -> tuple[Any, Any, list[str], list[Optional[np.ndarray]]]:
        fam = stream_family(model)
        if isinstance(inputs, dict) and "clean" in inputs and "corrupted" in inputs:
            c, k = inputs["clean"], inputs["corrupted"]
            if fam == "unet":
                return PatchInputs.of(c), PatchInputs.of(k), ["clean", "corrupted"], [None, None]
            xc, xk = _as_batch(model, c), _as_batch(model, k)
            disp = [_display(model, xc[0]), _display(model, xk[0])]
            return xc, xk, ["clean", "corrupted"], disp
        if fam == "unet":
            raise VisionLensError(
                "activation_patching on a UNet expects inputs={'clean': (sample, timestep, "
                "encoder_hidden_states), 'corrupted': (...)}."
            )
        images = as_images(inputs)
        if images.length is None:
            raise VisionLensError(
                "activation_patching needs random access to the clean and corrupted images; pass a "
                "folder, a list or {'clean': ..., 'corrupted': ...}, not a stream."
            )
        xc, nc = _pick(model, images, config.clean, 0, "clean")
        xk, nk = _pick(model, images, config.corrupted, 1, "corrupted")
        return xc, xk, [nc, nk], [_display(model, xc[0]), _display(model, xk[0])]


def _clip_head(model: HookedVisionModel, config: Any):
    previous = model.adapter.classifier
    if config.class_prompts:
        zero_shot_head(model, list(config.class_prompts), list(config.templates) or None, attach=True)
        return lambda: attach_head(model, previous)
    if previous is None and config.metric not in ("output_mse", "normalized_output_mse"):
        raise ConfigError(
            "activation_patching: a CLIP model needs classes for logit metrics: set class_prompts or "
            "attach a zero-shot head (visionlens.clip.zero_shot_head); or use metric=output_mse."
        )
    return None


def _as_batch(model: HookedVisionModel, x: Any) -> Tensor:
    if isinstance(x, Tensor):
        x = x if x.ndim == 4 else x.unsqueeze(0)
        return x.to(model.device)
    images = as_images(x)
    return torch.cat([b for _, b in images.batches(model, 64)])


def _display(model: HookedVisionModel, x: Tensor) -> Optional[np.ndarray]:
    try:
        if x.ndim == 3 and x.shape[0] in (1, 3):
            return denormalize(x, model.cfg)
    except Exception:
        return None
    return None


def _pick(model: HookedVisionModel, images: Any, spec: Optional[str], default: int, what: str) -> tuple[Tensor, str]:
    n = len(images)
    if spec is None:
        if n < 2:
            raise VisionLensError(
                f"activation_patching needs a clean and a corrupted image: got {n} image(s). "
                "Pass two images (clean first) or set clean=... and corrupted=..."
            )
        idx = default
    elif spec.strip().lstrip("-").isdigit():
        idx = int(spec)
        if not -n <= idx < n:
            raise ConfigError(f"activation_patching: {what} image index {idx} is out of range ({n} images).")
        idx %= n
    else:
        names = list(images.names)
        exact = [i for i, s in enumerate(names) if s == spec]
        loose = [i for i, s in enumerate(names) if s.endswith(spec) or s.split(":")[-1].split(".")[0] == spec]
        hits = exact or loose
        if len(hits) == 1:
            idx = hits[0]
        elif os.path.isfile(spec):
            return model.preprocess([spec]), Path(spec).name
        elif len(hits) > 1:
            raise ConfigError(
                f"activation_patching: {what} image {spec!r} matches several images: "
                f"{', '.join(names[i] for i in hits[:5])}."
            )
        else:
            close = closest_names(spec, names)
            raise ConfigError(
                f"activation_patching: no {what} image named {spec!r}. Closest: {', '.join(close) or 'none'}."
            )
    x = next(b for _, b in images.batches(model, 1, start=idx, limit=idx + 1))
    return x, images.name(idx)


# ============================================================================ result
def _result(
    analysis: Any,
    model: HookedVisionModel,
    config: Any,
    outcome: Any,
    names: list[str],
    disp: list,
    target: str,
    total: float,
) -> "PatchingResult":
    tensors: dict[str, Tensor] = {}
    hooks = list(outcome.sweeps)
    targets_meta, labels_meta, info_meta = {}, {}, {}
    top = Table(["hook", "target", "score", "atp_estimate"], title="")
    rows = []
    summary = Table(["hook", "kind", "targets", "max_score", "best_target", "batching", "forwards"], title="Per hook")
    for h, sw in outcome.sweeps.items():
        ts = sw.targets
        targets_meta[h] = ts.describe()
        targets_meta[h]["grid_pos"] = [list(p) if p is not None else None for p in ts.grid_pos]
        labels_meta[h] = ts.labels
        info_meta[h] = sw.info
        score = sw.scores if sw.scores is not None else sw.atp
        if sw.scores is not None:
            tensors[f"scores/{h}"] = sw.scores.float()
        if sw.atp is not None:
            tensors[f"atp/{h}"] = sw.atp.float()
        mean = score.mean(-1)
        finite = torch.nan_to_num(mean, nan=-math.inf)
        best = int(finite.argmax()) if mean.numel() else 0
        summary.rows.append(
            [
                h,
                ts.kind,
                len(ts),
                float(mean[best]) if mean.numel() else None,
                ts.labels[best],
                sw.info.get("mode", "attribution only"),
                sw.info.get("forwards", 0),
            ]
        )
        atp_mean = sw.atp.mean(-1) if sw.atp is not None else None
        for i in range(len(ts)):
            rows.append([h, ts.labels[i], float(mean[i]), float(atp_mean[i]) if atp_mean is not None else None])
    key = 2
    rows.sort(key=lambda r: -abs(r[key]) if r[key] is not None and r[key] == r[key] else 0)
    if outcome.metric.normalize:
        # rank by distance from the unpatched baseline (0 when denoising, 1 when noising)
        base = 0.0 if outcome.direction == "denoising" else 1.0
        rows.sort(key=lambda r: -abs(r[key] - base) if r[key] is not None and r[key] == r[key] else 0)
    top.rows = rows[: config.top_k]
    which = "exact" if config.method != "attribution" else "attribution-patching estimate"
    top.title = f"Top {config.top_k} targets ({which}; {outcome.metric.name}, {outcome.direction})"
    corr = outcome.correlation()
    meta: dict[str, Any] = {
        "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
        "family": model.cfg.family,
        "hooks": hooks,
        "target": target,
        "targets": targets_meta,
        "target_labels": labels_meta,
        "batching": info_meta,
        "direction": outcome.direction,
        "metric": outcome.metric.describe(),
        "inputs": names,
        "n_pairs": int(outcome.clean_output.shape[0]),
        "seconds": {**outcome.seconds, "total": total},
        "atp_correlation": corr,
        "score_meaning": (
            "normalized: 0 = behaves like the corrupted run, 1 = like the clean run"
            if outcome.metric.normalize
            else f"raw {outcome.metric.name} of the patched run"
        ),
    }
    class_names = model.cfg.extra.get("class_names") or []
    m = outcome.metric
    if m.label is not None:
        meta["label_names"] = [str(class_names[i]) if i < len(class_names) else f"class {i}" for i in m.label.tolist()]
    if m.foil is not None:
        meta["foil_names"] = [str(class_names[i]) if i < len(class_names) else f"class {i}" for i in m.foil.tolist()]
    if disp and disp[0] is not None:
        tensors["clean_image"] = torch.from_numpy(disp[0]).to(torch.uint8)
    if len(disp) > 1 and disp[1] is not None:
        tensors["corrupted_image"] = torch.from_numpy(disp[1]).to(torch.uint8)
    tables = {"top": top, "hooks": summary}
    return PatchingResult(
        analysis.name,
        summary=analysis.summary,
        config=config_to_dict(config),
        meta=meta,
        tensors=tensors,
        tables=tables,
    )


class PatchingResult(Result):
    """Result of ``activation_patching``.

    Tensors ``scores/{hook}`` (exact) and ``atp/{hook}`` (attribution patching) ``[targets, pairs]``;
    target labels in ``meta["target_labels"][hook]``, grid placement in ``meta["targets"][hook]``;
    ``clean_image`` / ``corrupted_image`` for overlays.
    """

    @property
    def hooks(self) -> list[str]:
        return list(self.meta.get("hooks", []))

    def scores(self, hook: str, kind: str = "exact") -> Tensor:
        """``[targets]`` scores of ``hook`` averaged over pairs (``kind``: ``exact`` or ``atp``)."""
        key = f"{'scores' if kind == 'exact' else 'atp'}/{hook}"
        if key not in self.tensors:
            key = f"atp/{hook}" if kind == "exact" else f"scores/{hook}"
        return self.tensors[key].mean(-1)

    def grid(self, hook: str, kind: str = "exact") -> Optional[Tensor]:
        """Scores of ``hook`` placed on its spatial grid ``[h, w]`` (NaN off-grid), or None."""
        t = self.meta["targets"][hook]
        if not t.get("grid"):
            return None
        out = torch.full(tuple(t["grid"]), float("nan"))
        s = self.scores(hook, kind)
        for i, p in enumerate(t["grid_pos"]):
            if p is not None:
                out[p[0], p[1]] = s[i]
        return out

    def matrix(self, kind: str = "exact") -> Optional[tuple[Tensor, list[str]]]:
        """``[hooks, targets]`` when every hook has the same number of targets (layer x position / head)."""
        lens = {int(self.meta["targets"][h]["n_targets"]) for h in self.hooks}
        if len(lens) != 1 or len(self.hooks) < 2:
            return None
        return torch.stack([self.scores(h, kind) for h in self.hooks]), self.meta["target_labels"][self.hooks[0]]

    def figures(self) -> dict[str, Any]:
        figs = {"overview": self.plot()}
        spatial = [h for h in self.hooks if self.meta["targets"][h].get("grid")]
        if spatial:
            figs["heatmaps"] = self.plot_heatmaps()
        if any(k.startswith("atp/") for k in self.tensors) and any(k.startswith("scores/") for k in self.tensors):
            figs["atp_vs_exact"] = self.plot_atp()
        return figs

    def plot(self) -> Any:
        """Layer x target matrix when the hooks line up, else bars of each hook's top targets."""
        mat = self.matrix()
        norm = bool(self.meta.get("metric", {}).get("normalized"))
        fig = new_figure(11, max(3.5, 0.28 * len(self.hooks) + 1.5))
        ax = fig.subplots(1, 1)
        if mat is not None:
            values, labels = mat
            v = values.numpy()
            if norm:
                im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            else:
                lo, hi = diverging_limits(v)
                im = ax.imshow(v, aspect="auto", cmap="RdBu_r", vmin=lo, vmax=hi, interpolation="nearest")
            ax.set_yticks(range(len(self.hooks)), [short_hook(h) for h in self.hooks], fontsize=7)
            step = max(1, len(labels) // 24)
            ax.set_xticks(range(0, len(labels), step), labels_fit(labels[::step], 14), rotation=70, fontsize=6)
            fig.colorbar(im, ax=ax, shrink=0.9, label=self.meta.get("metric", {}).get("metric", ""))
        else:
            rows = self.tables["top"].rows[:20][::-1]
            ax.barh(range(len(rows)), [r[2] for r in rows], color="#4c72b0")
            ax.set_yticks(range(len(rows)), labels_fit([f"{short_hook(r[0])}: {r[1]}" for r in rows], 40), fontsize=7)
        direction = self.meta.get("direction", "")
        names = self.meta.get("inputs", ["clean", "corrupted"])
        ax.set_title(
            f"activation patching ({direction}): {names[0]} (clean) vs {names[1]} (corrupted); "
            f"{self.meta.get('score_meaning', '')}",
            fontsize=8,
        )
        return fig

    def plot_heatmaps(self, kind: str = "exact", max_hooks: int = 16) -> Any:
        """Each spatial hook's scores over the image grid, overlaid on the clean image."""
        hooks = [h for h in self.hooks if self.meta["targets"][h].get("grid")][:max_hooks]
        rows, cols = grid_shape(len(hooks), 4)
        fig = new_figure(3 * cols, 3.1 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).flatten()
        img = self.tensors["clean_image"].numpy() if "clean_image" in self.tensors else None
        for i, ax in enumerate(axes):
            if i >= len(hooks):
                ax.set_axis_off()
                continue
            g = self.grid(hooks[i], kind)
            assert g is not None  # hooks were filtered to those with a grid
            imshow_overlay(
                ax, img, np.nan_to_num(g.numpy(), nan=0.0), signed=True, title=short_hook(hooks[i]), fontsize=7
            )
        fig.suptitle(f"patching scores over the image ({self.meta.get('score_meaning', '')})", fontsize=8)
        return fig

    def plot_atp(self) -> Any:
        ex, ap = [], []
        for h in self.hooks:
            if f"scores/{h}" in self.tensors and f"atp/{h}" in self.tensors:
                ex.append(self.tensors[f"scores/{h}"].flatten())
                ap.append(self.tensors[f"atp/{h}"].flatten())
        fig = new_figure(4.5, 4.2)
        ax = fig.subplots(1, 1)
        if ex:
            x, y = torch.cat(ex).numpy(), torch.cat(ap).numpy()
            ax.scatter(x, y, s=6, alpha=0.6)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                lo, hi = float(min(x[ok].min(), y[ok].min())), float(max(x[ok].max(), y[ok].max()))
                ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        c = self.meta.get("atp_correlation", {})
        ax.set_xlabel("exact patching")
        ax.set_ylabel("attribution patching")
        ax.set_title(
            f"AtP vs exact: pearson {c.get('pearson', float('nan')):.3f}, "
            f"spearman {c.get('spearman', float('nan')):.3f}",
            fontsize=8,
        )
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [ActivationPatching]
