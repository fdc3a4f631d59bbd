"""``activation_stats``: per-unit activation statistics and top-activating images over a dataset.

For each chosen hook and each unit (channels of a conv map ``[B, C, H, W]``, the last axis of
token activations ``[B, pos, d]``; the same unit convention as :mod:`visionlens.units`):

* ``mean``, ``std`` (population, ``ddof=0``), ``min``, ``max`` and ``frac_active``
  (fraction ``> threshold``) over every (image, position) value;
* the ``top_k`` images ranked by the unit's maximum over positions, with the position of that
  maximum: ``(y, x)`` for conv maps, the token index for token activations.

Images stream through the model in batches into mergeable reducers
(:mod:`visionlens.reducers`), so memory does not depend on the number of images; with
``checkpoint=PATH`` the reducer state is saved atomically every ``checkpoint_every`` batches and
an interrupted sweep resumes where it stopped. Uses only the public model API
(``run_with_cache`` with a ``names_filter``, ``hook_dict``, ``resolve_hook``, ``cfg``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.data import Images, as_images
from visionlens.hook_select import (
    default_hooks,
    fired_hooks,
    image_batch_support,
    model_description,
    position_kind,
    unit_layout,
    unravel,
)
from visionlens.hook_select import resolve_hooks as _resolve_hooks
from visionlens.hookspecs import hookimpl
from visionlens.reducers import FractionActive, RunningMoments, TopK, load_checkpoint, save_checkpoint
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["ActivationStats", "ActivationStatsResult", "default_hooks", "resolve_hooks", "unit_layout"]

STATS = ("mean", "std", "min", "max", "frac_active")


# ----------------------------------------------------------------------------- hooks
def resolve_hooks(model: HookedVisionModel, specs: list[str]) -> list[str]:
    """Expand hook names, layer aliases and globs (``blocks.*.hook_resid_post``) to hook names."""
    return _resolve_hooks(model, specs, owner="activation_stats")


# ----------------------------------------------------------------------------- analysis
class ActivationStats(Analysis):
    """Per-unit mean / std / fraction active / max and top-k images for chosen hooks."""

    name = "activation_stats"
    summary = "Per-unit mean, std, fraction active, max and top-k images (with argmax location) over a dataset."

    @dataclass
    class Config:
        hooks: list[str] = option(list, help="hook names, layer aliases or globs; empty = residual/block outputs")
        top_k: int = option(8, min=1, max=100_000, help="top-activating images kept per unit")
        batch_size: int = option(16, min=1, max=65_536, help="images per forward pass")
        max_images: Optional[int] = option(None, min=1, help="stop after this many images")
        threshold: float = option(0.0, help="a value counts as active when > threshold")
        rank_by: Literal["max", "mean", "std", "frac_active", "min"] = option(
            "max", help="statistic that orders units in the ranked table and the figure"
        )
        table_rows: int = option(20, min=0, max=1_000_000, help="ranked-table rows per hook")
        figure_hook: Optional[str] = option(None, help="hook whose top units get example crops (default: last)")
        figure_units: int = option(6, min=0, max=64, help="units shown with example crops")
        figure_examples: int = option(4, min=1, max=32, help="example crops per unit")
        checkpoint: Optional[str] = option(None, help="checkpoint file: saved periodically, resumed when present")
        checkpoint_every: int = option(10, min=1, help="batches between checkpoints")

        def __post_init__(self) -> None:
            if self.figure_examples > self.top_k and self.figure_units:
                self.figure_examples = self.top_k

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: two units with two example crops in the figure, short tables."""
        return {"top_k": 2, "figure_units": 2, "figure_examples": 2, "table_rows": 5}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_batch_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "ActivationStatsResult":
        images = as_images(inputs)
        explicit = bool(config.hooks)
        hooks = resolve_hooks(model, config.hooks) if explicit else default_hooks(model)
        moments: dict[str, RunningMoments] = {}
        active: dict[str, FractionActive] = {}
        tops: dict[str, TopK] = {}
        pos_shapes: dict[str, tuple[int, ...]] = {}
        act_shapes: dict[str, tuple[int, ...]] = {}
        start = 0
        fingerprint = {
            "analysis": self.name,
            "model": model_description(model),
            "hooks": hooks,
            "top_k": config.top_k,
            "threshold": config.threshold,
            "max_images": config.max_images,
            "n_images": images.length,
        }
        if config.checkpoint and os.path.exists(config.checkpoint):
            start, hooks = self._resume(config.checkpoint, fingerprint, moments, active, tops, pos_shapes, act_shapes)

        def save(next_index: int) -> None:
            reducers: dict[str, Any] = {}
            for h in moments:
                reducers[f"{h}/moments"], reducers[f"{h}/active"], reducers[f"{h}/topk"] = (
                    moments[h],
                    active[h],
                    tops[h],
                )
            meta = dict(
                fingerprint,
                hooks=hooks,
                next_index=next_index,
                pos_shapes={h: list(s) for h, s in pos_shapes.items()},
                act_shapes={h: list(s) for h, s in act_shapes.items()},
            )
            save_checkpoint(config.checkpoint, reducers, meta)

        seen = start
        n_batches = 0
        with torch.no_grad():
            for offset, x in images.batches(model, config.batch_size, start=start, limit=config.max_images):
                _, cache = model.run_with_cache(x, names_filter=hooks, return_cache_object=False)
                if not moments and not act_shapes:
                    hooks = fired_hooks(cache, hooks, explicit, "activation_stats")
                b = x.shape[0]
                index = torch.arange(offset, offset + b)
                for h in hooks:
                    act = cache[h]
                    samples, pos_shape = unit_layout(h, act)
                    pos_shapes.setdefault(h, pos_shape)
                    act_shapes.setdefault(h, tuple(act.shape[1:]))
                    flat = samples.reshape(-1, samples.shape[-1])
                    moments.setdefault(h, RunningMoments()).update(flat)
                    active.setdefault(h, FractionActive(config.threshold)).update(flat)
                    # one pass for max and argmax; the first maximal position wins (as argmax), so
                    # locations do not depend on batching
                    peak, where = torch.max(samples, dim=1)
                    loc = unravel(where, pos_shape) if pos_shape else None
                    tops.setdefault(h, TopK(config.top_k)).update(peak, index, loc)
                del cache
                seen = offset + b
                n_batches += 1
                if config.checkpoint and n_batches % config.checkpoint_every == 0:
                    save(seen)
        if not moments:
            raise VisionLensError(
                "activation_stats: no images to analyse (the input is empty"
                + (f" or was fully processed by checkpoint {config.checkpoint!r}" if start else "")
                + ")."
            )
        if config.checkpoint:
            save(seen)
        return self._result(model, images, config, hooks, moments, active, tops, pos_shapes, act_shapes, seen)

    # -------------------------------------------------------------- checkpoint
    def _resume(
        self,
        path: str,
        fingerprint: dict[str, Any],
        moments: dict,
        active: dict,
        tops: dict,
        pos_shapes: dict,
        act_shapes: dict,
    ) -> tuple[int, list[str]]:
        reducers, meta = load_checkpoint(path)
        for key in ("analysis", "model", "top_k", "threshold", "max_images", "n_images"):
            if meta.get(key) != fingerprint[key]:
                raise VisionLensError(
                    f"activation_stats: checkpoint {path!r} belongs to a different run ({key} is "
                    f"{meta.get(key)!r} there, {fingerprint[key]!r} now). Delete it or pick "
                    "another checkpoint path."
                )
        if not set(meta["hooks"]) <= set(fingerprint["hooks"]):
            raise VisionLensError(
                f"activation_stats: checkpoint {path!r} was written for hooks {meta['hooks']}, "
                f"not {fingerprint['hooks']}."
            )
        hooks = list(meta["hooks"])
        for h in hooks:
            if f"{h}/moments" in reducers:
                moments[h], active[h], tops[h] = (
                    reducers[f"{h}/moments"],
                    reducers[f"{h}/active"],
                    reducers[f"{h}/topk"],
                )
                pos_shapes[h] = tuple(meta["pos_shapes"][h])
                act_shapes[h] = tuple(meta["act_shapes"][h])
        return int(meta["next_index"]), hooks

    # -------------------------------------------------------------- result
    def _result(
        self,
        model: HookedVisionModel,
        images: Images,
        config: Any,
        hooks: list[str],
        moments: dict,
        active: dict,
        tops: dict,
        pos_shapes: dict,
        act_shapes: dict,
        n_images: int,
    ) -> "ActivationStatsResult":
        tensors: dict[str, Tensor] = {}
        for h in hooks:
            m, a, t = moments[h], active[h], tops[h]
            tensors[f"{h}/mean"] = m.mean.float()
            tensors[f"{h}/std"] = m.std.float()
            tensors[f"{h}/min"] = m.min.float()
            tensors[f"{h}/max"] = m.max.float()
            tensors[f"{h}/frac_active"] = a.fraction.float()
            tensors[f"{h}/topk_values"] = t.values.T.float().contiguous()  # [units, k]
            tensors[f"{h}/topk_index"] = t.index.T.contiguous()
            if t.location is not None:
                tensors[f"{h}/topk_location"] = t.location.transpose(0, 1).contiguous()  # [units, k, dims]
        names = images.names if images.length is not None else []
        meta: dict[str, Any] = {
            "model": model_description(model),
            "family": model.cfg.family,
            "n_images": n_images,
            "inputs": repr(images),
            "hooks": hooks,
            "activation_shapes": {h: list(act_shapes[h]) for h in hooks},
            "position_shapes": {h: list(pos_shapes[h]) for h in hooks},
            "position_kind": {h: position_kind(h, act_shapes[h]) for h in hooks},
            "num_prefix_tokens": int(getattr(model.cfg, "num_prefix_tokens", 0) or 0),
            "std": "population (ddof=0) over all images and positions",
        }
        if names and len(names) <= 10_000:
            meta["image_names"] = list(names[:n_images])
        res = ActivationStatsResult(
            self.name, summary=self.summary, config=config_to_dict(config), meta=meta, tensors=tensors
        )
        res.tables = res.build_tables(config.rank_by, config.table_rows)
        if config.figure_units and images.random_access:
            fig_hook = model.resolve_hook(config.figure_hook) if config.figure_hook else hooks[-1]
            if fig_hook not in hooks:
                raise ConfigError(
                    f"activation_stats: figure_hook {config.figure_hook!r} is not one of the analysed "
                    f"hooks ({', '.join(hooks)})."
                )
            res._add_crops(model, images, fig_hook, config.rank_by, config.figure_units, config.figure_examples)
        return res


# ----------------------------------------------------------------------------- result
class ActivationStatsResult(Result):
    """Result of ``activation_stats``: ``stats(hook)``, ``top_examples(hook, unit)``, tables and figures.

    Tensors are stored as ``"{hook}/{stat}"`` with stat in ``mean, std, min, max, frac_active``
    (``[units]``) and ``topk_values`` / ``topk_index`` (``[units, k]``), ``topk_location``
    (``[units, k, position dims]``).
    """

    @property
    def hooks(self) -> list[str]:
        return list(self.meta.get("hooks", []))

    def stats(self, hook: str) -> dict[str, Tensor]:
        """``{stat: tensor}`` of one hook (``KeyError`` naming the analysed hooks otherwise)."""
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not analysed; hooks: {', '.join(self.hooks)}")
        prefix = f"{hook}/"
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def image_name(self, index: int) -> str:
        names = self.meta.get("image_names") or []
        return names[index] if 0 <= index < len(names) else f"#{index}"

    def top_examples(self, hook: str, unit: int) -> list[dict[str, Any]]:
        """The unit's top images, best first: ``{index, name, value, location}``."""
        s = self.stats(hook)
        out = []
        for j in range(s["topk_index"].shape[1]):
            idx = int(s["topk_index"][unit, j])
            loc = tuple(int(v) for v in s["topk_location"][unit, j]) if "topk_location" in s else ()
            out.append(
                {"index": idx, "name": self.image_name(idx), "value": float(s["topk_values"][unit, j]), "location": loc}
            )
        return out

    def ranked_units(self, hook: str, rank_by: str = "max") -> Tensor:
        """Unit indices of ``hook`` sorted by ``rank_by`` (descending; stable)."""
        if rank_by not in STATS:
            raise ValueError(f"rank_by must be one of {', '.join(STATS)}, got {rank_by!r}")
        vals = self.stats(hook)[rank_by].double().nan_to_num(nan=-math.inf)
        return torch.argsort(vals, descending=True, stable=True)

    def _location_text(self, hook: str, loc: tuple[int, ...]) -> str:
        kind = self.meta.get("position_kind", {}).get(hook, "")
        if not loc:
            return ""
        if kind == "token":
            npt = int(self.meta.get("num_prefix_tokens", 0))
            return f"token {loc[0]}" + (" (prefix)" if loc[0] < npt else "")
        if kind == "token,head":
            return f"token {loc[0]}, head {loc[1]}"
        if kind == "query,key":
            return f"query {loc[0]}, key {loc[1]}"
        return "(" + ", ".join(map(str, loc)) + ")"

    def build_tables(self, rank_by: str = "max", rows_per_hook: int = 20) -> dict[str, Table]:
        """The ranked ``units`` table and the per-hook ``hooks`` summary."""
        units = Table(
            ["hook", "unit", "mean", "std", "frac_active", "max", "min", "top_images", "top_location"],
            title=f"Top units per hook by {rank_by}",
        )
        summary = Table(
            ["hook", "shape", "units", "mean", "mean_std", "mean_frac_active", "dead_units", "max"], title="Hooks"
        )
        for h in self.hooks:
            s = self.stats(h)
            n_units = int(s["mean"].numel())
            dead = int((s["frac_active"] == 0).sum())
            summary.rows.append(
                [
                    h,
                    list(self.meta["activation_shapes"][h]),
                    n_units,
                    float(s["mean"].mean()),
                    float(s["std"].mean()),
                    float(s["frac_active"].mean()),
                    dead,
                    float(s["max"].max()),
                ]
            )
            for u in self.ranked_units(h, rank_by)[:rows_per_hook].tolist():
                ex = self.top_examples(h, u)
                units.rows.append(
                    [
                        h,
                        u,
                        float(s["mean"][u]),
                        float(s["std"][u]),
                        float(s["frac_active"][u]),
                        float(s["max"][u]),
                        float(s["min"][u]),
                        [e["name"] for e in ex[:3]],
                        self._location_text(h, ex[0]["location"]) if ex else "",
                    ]
                )
        return {"units": units, "hooks": summary}

    # ------------------------------------------------------------------ crops
    def _add_crops(
        self, model: HookedVisionModel, images: Images, hook: str, rank_by: str, n_units: int, n_ex: int, size: int = 64
    ) -> None:
        from PIL import Image

        units = self.ranked_units(hook, rank_by)[:n_units].tolist()
        crops = torch.zeros(len(units), n_ex, size, size, 3, dtype=torch.uint8)
        boxes = torch.full((len(units), n_ex, 4), -1.0)
        labels = []
        cache: dict[int, Any] = {}
        for r, u in enumerate(units):
            row = []
            for j, ex in enumerate(self.top_examples(hook, u)[:n_ex]):
                if ex["index"] not in cache:
                    cache[ex["index"]] = images.display(ex["index"], model)
                img = cache[ex["index"]]
                (y0, x0, y1, x1), cell = self._crop_window(hook, ex["location"], img.shape[0], img.shape[1], model)
                piece = Image.fromarray(img[y0:y1, x0:x1]).resize((size, size), Image.BILINEAR)
                crops[r, j] = torch.from_numpy(np.array(piece))
                if cell is not None:
                    cy0, cx0, cy1, cx1 = cell
                    h, w = y1 - y0, x1 - x0
                    boxes[r, j] = torch.tensor([(cx0 - x0) / w, (cy0 - y0) / h, (cx1 - x0) / w, (cy1 - y0) / h])
                row.append(f"{ex['name']} {ex['value']:.3g}")
            labels.append({"unit": u, "examples": row})
        self.tensors["figure/crops"] = crops
        self.tensors["figure/boxes"] = boxes
        self.meta["figure"] = {"hook": hook, "rank_by": rank_by, "units": labels}

    def _crop_window(
        self, hook: str, loc: tuple[int, ...], H: int, W: int, model: HookedVisionModel
    ) -> tuple[tuple[int, int, int, int], Optional[tuple[float, float, float, float]]]:
        whole = (0, 0, H, W)
        kind = self.meta.get("position_kind", {}).get(hook, "")
        pos = self.meta.get("position_shapes", {}).get(hook, [])
        if not loc or kind in ("none", "spatial", "query,key"):
            return whole, None
        if kind == "y,x":
            gh, gw = pos
            y, x = loc
        else:  # token (or token,head): map a patch token onto the patch grid
            npt = int(self.meta.get("num_prefix_tokens", 0))
            t = loc[0] - npt
            n_patch = pos[0] - npt
            cfg = model.cfg
            if cfg.patch_size and cfg.image_size:
                gh, gw = cfg.image_size[0] // cfg.patch_size[0], cfg.image_size[1] // cfg.patch_size[1]
            else:
                side = int(round(math.sqrt(max(n_patch, 0))))
                gh = gw = side
            if t < 0 or gh * gw != n_patch or gh == 0:
                return whole, None
            y, x = divmod(t, gw)
        ch, cw = H / gh, W / gw
        cell = (y * ch, x * cw, (y + 1) * ch, (x + 1) * cw)
        side_h, side_w = max(3 * ch, H / 4), max(3 * cw, W / 4)
        cy, cx = (y + 0.5) * ch, (x + 0.5) * cw
        y0 = int(max(0, min(H - side_h, cy - side_h / 2)))
        x0 = int(max(0, min(W - side_w, cx - side_w / 2)))
        y1, x1 = int(min(H, y0 + math.ceil(side_h))), int(min(W, x0 + math.ceil(side_w)))
        return (y0, x0, y1, x1), cell

    # ------------------------------------------------------------------ figures
    def figures(self) -> dict[str, Any]:
        figs = {"overview": self.plot()}
        if "figure/crops" in self.tensors:
            figs["top_units"] = self.plot_top_units()
        return figs

    def plot(self) -> Any:
        """Overview: distribution of unit means per hook, activity per hook, histogram of the last hook's means."""
        hooks = self.hooks
        fig = new_figure(12, 4)
        ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[2, 2, 1.3])
        means = [self.stats(h)["mean"].numpy() for h in hooks]
        short = [_short(h) for h in hooks]
        ax1.boxplot(means, showfliers=False)
        ax1.set_xticks(range(1, len(hooks) + 1), short, rotation=60, ha="right", fontsize=7)
        ax1.set_title("per-unit mean activation", fontsize=9)
        frac = [float(self.stats(h)["frac_active"].mean()) for h in hooks]
        dead = [float((self.stats(h)["frac_active"] == 0).float().mean()) for h in hooks]
        xs = range(len(hooks))
        ax2.plot(xs, frac, "o-", label="mean fraction active")
        ax2.plot(xs, dead, "s--", label="fraction of dead units")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_xticks(list(xs), short, rotation=60, ha="right", fontsize=7)
        ax2.legend(fontsize=7)
        ax2.set_title(f"activity (> {self.config.get('threshold', 0)})", fontsize=9)
        if hooks:
            ax3.hist(self.stats(hooks[-1])["mean"].numpy(), bins=40, color="#4c72b0")
            ax3.set_title(f"unit means: {_short(hooks[-1])}", fontsize=9)
        fig.suptitle(
            f"activation_stats: {self.meta.get('model', '')}, {self.meta.get('n_images', '?')} images", fontsize=10
        )
        return fig

    def plot_top_units(self) -> Any:
        """Top units of the figure hook with crops of their top images (argmax cell outlined)."""
        from matplotlib.patches import Rectangle

        info = self.meta.get("figure", {})
        crops, boxes = self.tensors["figure/crops"], self.tensors["figure/boxes"]
        n_units, n_ex = crops.shape[:2]
        fig = new_figure(1.6 * n_ex + 1.2, 1.7 * max(1, n_units))
        axes = fig.subplots(max(1, n_units), n_ex, squeeze=False)
        for r in range(n_units):
            unit = info["units"][r]
            for j in range(n_ex):
                ax = axes[r][j]
                ax.imshow(crops[r, j].numpy())
                ax.set_xticks([])
                ax.set_yticks([])
                if j < len(unit["examples"]):
                    ax.set_title(unit["examples"][j], fontsize=6)
                b = boxes[r, j]
                if float(b[0]) >= 0:
                    s = crops.shape[2]
                    ax.add_patch(
                        Rectangle(
                            (float(b[0]) * s, float(b[1]) * s),
                            float(b[2] - b[0]) * s,
                            float(b[3] - b[1]) * s,
                            fill=False,
                            edgecolor="red",
                            linewidth=1,
                        )
                    )
            axes[r][0].set_ylabel(f"unit {unit['unit']}", fontsize=8)
        fig.suptitle(f"{info.get('hook', '')}: top units by {info.get('rank_by', '')}", fontsize=9)
        return fig


def _short(name: str) -> str:
    return name.replace(".hook_out", "").replace("hook_", "")


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [ActivationStats]
