"""``curve_scrubbing``: causal scrubbing of curve units with hypotheses built from the stimulus parameters.

The hypotheses (each a :class:`visionlens.scrubbing.Node` tree, run by :func:`visionlens.scrubbing.causal_scrub`)
claim that the output reads the curve units of ``hook`` -- the other units of that hook kept from the input
itself -- and that the curve units depend only on a feature of the input computed from its parameters
(``factors``: per-input ``orientation`` in degrees, ``cx``, ``cy``, ``radius`` in pixels, as
:func:`visionlens.zoo.curve_model.curve_batch` returns them). Refined step by step, like the induction
hypotheses of the causal-scrubbing write-up:

* ``any``: the curve units carry nothing about this input (a resampling ablation: the floor);
* ``orientation``: they depend only on the arc's bend direction (binned to ``n_orientation_bins``);
* ``orientation+position``: ... and on where the arc is (its midpoint's cell in a ``position_cells`` grid):
  "a curve unit depends only on the orientation of the input near its receptive field";
* ``orientation+position+radius``: ... and on its radius (``radius_bins`` equal-count bins);
* ``identity``: they depend on everything (the ceiling: 100% by construction).

Loss recovered ``(L_random - L_scrubbed) / (L_random - L_model)`` with a bootstrap interval per hypothesis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.scrubbing import Node, causal_scrub
from visionlens.validation import VisionLensError

from .common import image_support
from .tuning_curves import curve_detectors, default_unit_hook, measure_tuning

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["curve_features", "curve_hypotheses", "CurveScrubbing", "CurveScrubbingResult"]

HYPOTHESES = ("any", "orientation", "orientation+position", "orientation+position+radius", "identity")


def curve_features(
    factors: Mapping[str, Any],
    size: int,
    n_orientation_bins: int = 8,
    position_cells: int = 4,
    radius_bins: int = 2,
) -> dict[str, list[Any]]:
    """Per-input feature values of each hypothesis from the stimulus parameters (see the module docstring)."""
    missing = [k for k in ("orientation", "cx", "cy", "radius") if k not in factors]
    if missing:
        raise VisionLensError(f"curve_scrubbing: factors lack {', '.join(missing)} (per-input stimulus parameters)")
    o = np.asarray(factors["orientation"], dtype=np.float64)
    ob = np.round(np.mod(o, 360.0) / (360.0 / n_orientation_bins)).astype(int) % n_orientation_bins
    cell = size / position_cells
    pos = (np.asarray(factors["cy"]) // cell).astype(int) * position_cells + (np.asarray(factors["cx"]) // cell).astype(
        int
    )
    r = np.asarray(factors["radius"], dtype=np.float64)
    edges = np.quantile(r, np.linspace(0, 1, radius_bins + 1)[1:-1])
    rb = np.searchsorted(edges, r)
    return {
        "orientation": ob.tolist(),
        "orientation+position": (ob * 1000 + pos).tolist(),
        "orientation+position+radius": ((ob * 1000 + pos) * 10 + rb).tolist(),
    }


def curve_hypotheses(
    hook: str, units: Sequence[int], n_units: int, features: Mapping[str, Sequence[Any]]
) -> dict[str, Node]:
    """One hypothesis per entry of :data:`HYPOTHESES`: the curve units with that feature, the others identity."""
    others = [u for u in range(n_units) if u not in set(units)]
    out = {}
    for name in HYPOTHESES:
        feat: Any = features[name] if name in features else name
        parents = [Node(hook=hook, channels=list(units), feature=feat, name=f"curve units ({name})")]
        if others:
            parents.append(Node(hook=hook, channels=others, feature="identity", name="other units"))
        out[name] = Node(hook=None, parents=parents)
    return out


class CurveScrubbing(Analysis):
    """Causal scrubbing of curve units: naive to refined hypotheses from the stimulus parameters."""

    name = "curve_scrubbing"
    summary = (
        "Causal scrubbing of a layer's curve units with hypotheses built from stimulus parameters (orientation, "
        "position, radius): loss recovered per hypothesis, naive to refined, with bootstrap intervals."
    )

    @dataclass
    class Config:
        hook: str = option("", help="hook of the curve units (default: mixed3b, else a middle block)")
        units: list[int] = option(list, help="curve units (empty: the hook's curve detectors)")
        labels: Any = option(None, help="per-image labels (list, tensor or JSON file); the loss is cross-entropy")
        factors: Any = option(None, help="{orientation, cx, cy, radius: per-image values} (dict or JSON file)")
        n_orientation_bins: int = option(8, min=1, max=360, help="orientation bins")
        position_cells: int = option(4, min=1, max=64, help="position grid cells per side")
        radius_bins: int = option(2, min=1, max=16, help="equal-count radius bins")
        n_resamples: int = option(2, min=1, max=100, help="scrubbed samples per reference input")
        n_bootstrap: int = option(500, min=0, max=100_000, help="bootstrap resamples")
        seed: int = option(0, help="resampling seed")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        factors = {"orientation": [0, 90, 0, 90], "cx": [8, 8, 20, 20], "cy": [8, 20, 8, 20], "radius": [4, 5, 4, 5]}
        return {"units": [0], "labels": [0, 1, 0, 1], "factors": factors, "n_bootstrap": 10, "n_resamples": 1}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "CurveScrubbingResult":
        if not isinstance(inputs, Tensor):
            raise VisionLensError("curve_scrubbing: give the images as a tensor [N, 3, H, W] with their factors")
        labels, factors = config.labels, config.factors
        if isinstance(labels, str):
            with open(labels, encoding="utf-8") as f:
                labels = json.load(f)
        if isinstance(factors, str):
            with open(factors, encoding="utf-8") as f:
                factors = json.load(f)
        if labels is None or factors is None:
            raise VisionLensError("curve_scrubbing: give labels=... and factors=... for the images")
        hook = config.hook or default_unit_hook(model)
        size = int(inputs.shape[-1])
        units = list(config.units)
        t = measure_tuning(model, hook, size=size)
        if not units:
            units = [t.units[i] for i in torch.nonzero(curve_detectors(t)["is_curve_detector"]).flatten().tolist()]
            if not units:
                raise VisionLensError(f"curve_scrubbing: no unit of {hook} passes the curve-detector test")
        feats = curve_features(factors, size, config.n_orientation_bins, config.position_cells, config.radius_bins)
        hyps = curve_hypotheses(hook, units, len(t.units), feats)
        reports = {
            name: causal_scrub(
                model,
                inputs,
                h,
                labels=torch.as_tensor(labels).long(),
                metric="ce",
                n_resamples=config.n_resamples,
                n_bootstrap=config.n_bootstrap,
                seed=config.seed,
            )
            for name, h in hyps.items()
        }
        return CurveScrubbingResult.build(reports, hook, units, config, model)


class CurveScrubbingResult(Result):
    """Table ``hypotheses``: losses and loss recovered (with its interval) per hypothesis."""

    @classmethod
    def build(
        cls, reports: Mapping[str, Any], hook: str, units: list[int], config: Any, model: Optional[HookedVisionModel]
    ) -> "CurveScrubbingResult":
        table = Table(
            ["hypothesis", "loss_model", "loss_scrubbed", "loss_random", "loss_recovered", "ci_low", "ci_high"],
            title=f"Causal scrubbing of {len(units)} curve units of {hook}",
        )
        for name, r in reports.items():
            table.rows.append([name, r.loss_model, r.loss_scrubbed, r.loss_random, r.recovered, r.ci_low, r.ci_high])
        rec = {r[0]: r[4] for r in table.rows}
        return cls(
            "curve_scrubbing",
            summary="loss recovered: " + ", ".join(f"{k} {v:.0%}" for k, v in rec.items()),
            config=config_to_dict(config),
            meta={"model": getattr(model.cfg, "architecture", "") if model else "", "hook": hook, "units": units},
            tables={"hypotheses": table},
        )

    def plot(self) -> Any:
        rows = self.tables["hypotheses"].records()
        fig = new_figure(7, 3.2)
        ax = fig.add_subplot(1, 1, 1)
        y = np.array([r["loss_recovered"] for r in rows], dtype=np.float64)
        lo = np.array([r["ci_low"] if r["ci_low"] is not None else np.nan for r in rows], dtype=np.float64)
        hi = np.array([r["ci_high"] if r["ci_high"] is not None else np.nan for r in rows], dtype=np.float64)
        ax.barh(
            [r["hypothesis"] for r in rows],
            y,
            xerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)],
            color="#2471a3",
            capsize=3,
        )
        ax.axvline(1.0, color="#555", lw=0.8, ls="--")
        ax.set_xlabel("loss recovered (95% CI)")
        ax.invert_yaxis()
        ax.set_title("Curve units: naive to refined hypotheses", fontsize=9)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [CurveScrubbing]
