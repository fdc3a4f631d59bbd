"""``tuning_curves``: each unit's response to parametric stimuli, radial tuning plots and a curve-detector test.

For every unit of a hook (its response at the map's centre; ViT tokens: the centre patch) the analysis
sweeps the stimuli of :mod:`.stimuli` -- curves by orientation x radius, lines by orientation, gratings by
orientation, colour blobs by hue, and curves by position and by colour at the unit's preferred
orientation. Curves are shown on a small grid of positions (``jitter``) and each unit's curve tuning is
read at its own best position (the one of its strongest curve response), so a unit whose receptive
field is off-centre by a few pixels is measured where it looks; lines count at their best position.
Responses are relative to the response to the blank background.

**Curve-detector test** (:func:`curve_detectors`): a unit is a curve detector when its orientation
tuning over 360 degrees (curves at its best radius) is unimodal (one peak above half its maximum), its
circular selectivity ``|sum r e^(i theta)| / sum r`` is at least ``selectivity_threshold`` (default 0.4;
a half-wave rectified cosine scores 0.79, a line detector -- two opposite peaks -- about 0), its
best curve beats its best line by ``curve_line_ratio`` (default 1.1), and its tuning is smooth (two
samples above half maximum) and consistent across radii (correlation >= 0.5 with the neighbouring radius).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.hook_select import default_hooks
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .common import (
    circular_selectivity,
    hook_responses,
    image_size_of,
    image_support,
    model_device_dtype,
    n_peaks,
    preferred_angle,
)
from .stimuli import DEFAULTS, blobs, curves, gratings, lines

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "Tuning",
    "rf_centre",
    "measure_tuning",
    "curve_detectors",
    "TuningCurves",
    "TuningResult",
    "default_unit_hook",
]


def hues(n: int) -> Tensor:
    """``n`` fully saturated colours evenly around the hue wheel (``[n, 3]``)."""
    return torch.tensor([colorsys.hsv_to_rgb(i / n, 1.0, 1.0) for i in range(n)], dtype=torch.float32)


@dataclass
class Tuning:
    """Blank-subtracted responses of ``units`` of ``hook`` (every tensor's first axis is the unit)."""

    hook: str
    units: list[int]
    orientations: Tensor  # [O] degrees over 360 (curves); lines and gratings use the first half (mod 180)
    radii: Tensor  # [R]
    curve: Tensor  # [U, O, R] at the unit's best position
    line: Tensor  # [U, O // 2]
    grating: Tensor  # [U, O // 2]
    blob_hue: Tensor  # [U, Hu]
    curve_hue: Tensor  # [U, Hu] curves at the unit's preferred orientation (nearest of 8), by hue
    positions: Tensor  # [P] offsets in pixels along x and y
    curve_x: Tensor  # [U, P] the preferred curve moved along x
    curve_y: Tensor  # [U, P] ... along y
    blank: Tensor  # [U] response to the blank background

    @property
    def best_radius_index(self) -> Tensor:
        return self.curve.amax(dim=1).argmax(dim=1)

    def orientation_curve(self) -> Tensor:
        """``[U, O]``: each unit's curve response by orientation at its best radius."""
        idx = self.best_radius_index
        return self.curve[torch.arange(len(self.units)), :, idx]

    def radius_curve(self) -> Tensor:
        """``[U, R]``: each unit's curve response by radius at its best orientation."""
        best_o = self.curve.amax(dim=2).argmax(dim=1)
        return self.curve[torch.arange(len(self.units)), best_o, :]


def _positions(cx: float, cy: float, jitter: int) -> list[tuple[float, float]]:
    offs = [-jitter, 0, jitter] if jitter > 0 else [0]
    return [(cx + dx, cy + dy) for dy in offs for dx in offs]


def rf_centre(map_hw: tuple[int, int], size: int) -> tuple[float, float]:
    """Image coordinates of the centre unit ``((H - 1) // 2, (W - 1) // 2)`` of an ``H x W`` map over a ``size``
    image (the middle of its stride cell), so the stimulus grid is symmetric about the unit being measured."""
    h, w = map_hw
    return ((w - 1) // 2 + 0.5) * size / w, ((h - 1) // 2 + 0.5) * size / h


def _max_over_positions(resp: Tensor, n_pos: int) -> Tensor:
    """``[S * P, U]`` (stimulus-major, position-minor) -> ``[U, S]`` maximum over positions."""
    return resp.reshape(-1, n_pos, resp.shape[1]).amax(dim=1).T


@torch.no_grad()
def measure_tuning(
    model: HookedVisionModel,
    hook: str,
    units: Optional[list[int]] = None,
    n_orientations: int = 16,
    radii: tuple[float, ...] = (3.0, 4.5, 6.0, 8.0, 11.0),
    jitter: int = 3,
    n_hues: int = 12,
    size: Optional[int] = None,
    batch_size: int = 256,
) -> Tuning:
    """Measure :class:`Tuning` of ``units`` (default: all) of ``hook``; white strokes on black."""
    if n_orientations < 4 or n_orientations % 2:
        raise VisionLensError(f"n_orientations must be an even number >= 4, got {n_orientations}")
    size = size or image_size_of(model)
    dev, dtype = model_device_dtype(model)

    def respond(images: Tensor) -> Tensor:
        r = hook_responses(model, [hook], images, batch_size=batch_size)[hook]
        return r if units is None else r[:, units]

    blank_map = hook_responses(model, [hook], torch.zeros(1, 3, size, size, device=dev, dtype=dtype), reduce="map")[
        hook
    ]
    cx0, cy0 = rf_centre((blank_map.shape[2], blank_map.shape[3]), size)
    pos = _positions(cx0, cy0, jitter)
    n_pos = len(pos)
    px = torch.tensor([p[0] for p in pos])
    py = torch.tensor([p[1] for p in pos])
    blank = respond(torch.zeros(1, 3, size, size, device=dev, dtype=dtype))[0]
    n_units = blank.shape[0]
    ori = torch.arange(n_orientations, dtype=torch.float32) * (360.0 / n_orientations)
    rad = torch.tensor(radii, dtype=torch.float32)
    d_c, d_l = DEFAULTS["curve"], DEFAULTS["line"]
    # curves: orientation x radius x position
    pidx = torch.arange(n_pos, dtype=torch.float32)
    o, r, p = torch.meshgrid(ori, rad, pidx, indexing="ij")
    pi = p.flatten().long()
    imgs = curves(size, o.flatten(), r.flatten(), d_c["span"], d_c["width"], px[pi], py[pi])
    full = respond(imgs).T.reshape(n_units, len(ori) * len(rad), n_pos)
    best_pos = full.amax(dim=1).argmax(dim=1)  # each unit's best stimulus position, where it is then measured
    curve = full[torch.arange(n_units), :, best_pos].reshape(n_units, len(ori), len(rad))
    half = ori[: n_orientations // 2]
    o, p = torch.meshgrid(half, pidx, indexing="ij")
    pi = p.flatten().long()
    imgs = lines(size, o.flatten(), 2 * float(rad.max()), d_l["width"], px[pi], py[pi])
    line = _max_over_positions(respond(imgs), n_pos)
    periods, phases = (4.0, 6.0, 9.0), torch.arange(4) * (math.pi / 2)
    o, per, ph = torch.meshgrid(half, torch.tensor(periods), phases.float(), indexing="ij")
    grating = respond(gratings(size, o.flatten(), per.flatten(), ph.flatten())).T.reshape(n_units, len(half), -1)
    grating = grating.amax(dim=2)
    hue = hues(n_hues)
    blob = respond(blobs(size, sigma=d_c["radius"] / 2, cx=cx0, cy=cy0, colour=hue)).T
    # per-unit sweeps at the preferred orientation (the nearest of 8)
    pref8 = torch.round(preferred_angle(curve.amax(dim=2)) / 45.0) % 8
    coarse = torch.arange(8, dtype=torch.float32) * 45.0
    o, h = torch.meshgrid(coarse, torch.arange(n_hues, dtype=torch.float32), indexing="ij")
    by_hue = curves(size, o.flatten(), float(rad[len(rad) // 2]), cx=cx0, cy=cy0, colour=hue[h.flatten().long()])
    by_hue = respond(by_hue).T
    by_hue = by_hue.reshape(n_units, 8, n_hues)[torch.arange(n_units), pref8.long()]
    offsets = torch.arange(-6, 7, 2, dtype=torch.float32)
    o, off = torch.meshgrid(coarse, offsets, indexing="ij")
    mid = float(rad[len(rad) // 2])
    cx = respond(curves(size, o.flatten(), mid, cx=cx0 + off.flatten(), cy=cy0)).T
    cy = respond(curves(size, o.flatten(), mid, cx=cx0, cy=cy0 + off.flatten())).T
    cx = cx.reshape(n_units, 8, -1)[torch.arange(n_units), pref8.long()]
    cy = cy.reshape(n_units, 8, -1)[torch.arange(n_units), pref8.long()]
    b = blank[:, None]
    return Tuning(
        hook=hook,
        units=list(range(n_units)) if units is None else list(units),
        orientations=ori,
        radii=rad,
        curve=curve - blank[:, None, None],
        line=line - b,
        grating=grating - b,
        blob_hue=blob - b,
        curve_hue=by_hue - b,
        positions=offsets,
        curve_x=cx - b,
        curve_y=cy - b,
        blank=blank,
    )


def _consistency(t: Tuning) -> Tensor:
    """Pearson correlation of each unit's orientation tuning at its best radius with that at the stronger
    neighbouring radius (1 with a single radius): real detectors keep their preference across radii."""
    n_r = t.curve.shape[2]
    if n_r == 1:
        return torch.ones(t.curve.shape[0])
    best = t.best_radius_index
    out = torch.empty(t.curve.shape[0])
    for i in range(t.curve.shape[0]):
        b = int(best[i])
        nbs = [j for j in (b - 1, b + 1) if 0 <= j < n_r]
        nb = max(nbs, key=lambda j: float(t.curve[i, :, j].max()))
        x, y = t.curve[i, :, b], t.curve[i, :, nb]
        x, y = x - x.mean(), y - y.mean()
        out[i] = (x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-12)
    return out


def curve_detectors(
    t: Tuning,
    selectivity_threshold: float = 0.4,
    curve_line_ratio: float = 1.1,
    peak_level: float = 0.5,
    min_consistency: float = 0.5,
) -> dict[str, Tensor]:
    """The curve-detector test on :class:`Tuning` (see the module docstring); per-unit tensors.

    Besides unimodality, selectivity and curve-beats-line, a detector's tuning must be smooth (at least two
    orientation samples above half its maximum) and consistent across radii (:func:`_consistency` >=
    ``min_consistency``): a unit of a random network that answers one stimulus scores selectivity 1 but
    fails both.
    """
    oc = t.orientation_curve()
    sel = circular_selectivity(oc)
    peaks = n_peaks(oc, peak_level)
    width = (oc.clamp_min(0) >= peak_level * oc.amax(dim=1, keepdim=True)).sum(dim=1)
    cons = _consistency(t)
    cmax = t.curve.amax(dim=(1, 2))
    lmax = t.line.amax(dim=1).clamp_min(0)
    ratio = cmax / lmax.clamp_min(1e-6)
    ok = (
        (cmax > 0)
        & (peaks == 1)
        & (width >= 2)
        & (cons >= min_consistency)
        & (sel >= selectivity_threshold)
        & (cmax >= curve_line_ratio * lmax)
    )
    return {
        "selectivity": sel,
        "preferred_orientation": preferred_angle(oc),
        "n_peaks": peaks,
        "width": width,
        "consistency": cons,
        "curve_max": cmax,
        "line_max": lmax,
        "curve_line_ratio": ratio.clamp_max(1e6),
        "best_radius": t.radii[t.best_radius_index],
        "is_curve_detector": ok,
    }


def default_unit_hook(model: HookedVisionModel) -> str:
    """``mixed3b.hook_out`` when the model has it (the Circuits thread's curve layer), else the middle block."""
    for name in ("mixed3b.hook_out", "mixed3b", "mixed3a.hook_out"):
        if name in model.hook_dict:
            return name
    hooks = default_hooks(model)
    return hooks[len(hooks) // 2]


class TuningCurves(Analysis):
    """Tuning curves to parametric stimuli and the curve-detector test."""

    name = "tuning_curves"
    summary = (
        "Tuning curves of units to parametric stimuli (curves by orientation/radius/position/colour, lines, "
        "gratings, colour blobs), radial plots, and a curve-detector test (unimodal, selective, curve beats line)."
    )

    @dataclass
    class Config:
        hook: str = option("", help="hook whose units are measured (default: mixed3b, else a middle block)")
        units: list[int] = option(list, help="unit (channel) indices; empty = every unit")
        n_orientations: int = option(16, min=4, max=360, help="curve orientations over 360 degrees (even)")
        radii: list[float] = option([3.0, 4.5, 6.0, 8.0, 11.0], min_len=1, help="curve radii in pixels")
        jitter: int = option(3, min=0, max=16, help="stimulus position grid +-jitter px (max over 9 positions)")
        n_hues: int = option(12, min=3, max=64, help="hues of the colour sweeps")
        image_size: int = option(0, min=0, max=1024, help="stimulus size (0: the model's image size, else 32)")
        selectivity_threshold: float = option(0.4, min=0.0, max=1.0, help="curve-detector test: min selectivity")
        curve_line_ratio: float = option(1.1, min=0.0, help="curve-detector test: best curve / best line")
        plot_units: int = option(8, min=1, max=64, help="units in the radial plots")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"n_orientations": 8, "radii": [4.0], "jitter": 0, "n_hues": 4, "units": [0, 1]}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "TuningResult":
        hook = config.hook or default_unit_hook(model)
        if hook not in model.hook_dict:
            raise VisionLensError(f"tuning_curves: unknown hook {hook!r}")
        t = measure_tuning(
            model,
            hook,
            units=list(config.units) or None,
            n_orientations=config.n_orientations,
            radii=tuple(config.radii),
            jitter=config.jitter,
            n_hues=config.n_hues,
            size=config.image_size or None,
        )
        return TuningResult.from_tuning(t, config, model)


class TuningResult(Result):
    """Tensors ``curve [U, O, R]``, ``line``, ``grating``, ``blob_hue``, ``curve_hue``, ``curve_x``, ``curve_y``;
    table ``units`` (the curve-detector test per unit)."""

    @classmethod
    def from_tuning(cls, t: Tuning, config: Any, model: Optional[HookedVisionModel] = None) -> "TuningResult":
        det = curve_detectors(t, config.selectivity_threshold, config.curve_line_ratio)
        table = Table(
            [
                "unit",
                "curve_detector",
                "selectivity",
                "preferred_orientation",
                "n_peaks",
                "width",
                "consistency",
                "best_radius",
                "curve_max",
                "line_max",
                "curve_line_ratio",
            ],
            title=f"Curve-detector test on {t.hook} (selectivity >= {config.selectivity_threshold}, "
            f"unimodal, curve >= {config.curve_line_ratio} x line)",
        )
        # curve detectors first, then by selectivity (the radial plots show the first rows)
        order = torch.argsort(
            det["is_curve_detector"] * 2.0 + det["selectivity"] * (det["curve_max"] > 0), descending=True
        )
        for i in order.tolist():
            table.rows.append(
                [
                    t.units[i],
                    bool(det["is_curve_detector"][i]),
                    float(det["selectivity"][i]),
                    float(det["preferred_orientation"][i]),
                    int(det["n_peaks"][i]),
                    int(det["width"][i]),
                    float(det["consistency"][i]),
                    float(det["best_radius"][i]),
                    float(det["curve_max"][i]),
                    float(det["line_max"][i]),
                    float(det["curve_line_ratio"][i]),
                ]
            )
        tensors = {
            k: getattr(t, k)
            for k in ("orientations", "radii", "curve", "line", "grating", "blob_hue", "curve_hue", "positions")
        }
        tensors.update(curve_x=t.curve_x, curve_y=t.curve_y, blank=t.blank, units=torch.tensor(t.units))
        n_det = int(det["is_curve_detector"].sum())
        return cls(
            "tuning_curves",
            summary=f"{n_det} of {len(t.units)} units of {t.hook} pass the curve-detector test.",
            config=config_to_dict(config),
            meta={"model": getattr(model.cfg, "architecture", "") if model else "", "hook": t.hook},
            tensors=tensors,
            tables={"units": table},
        )

    def tuning(self) -> Tuning:
        tt = self.tensors
        return Tuning(
            hook=str(self.meta.get("hook", "")),
            units=[int(u) for u in tt["units"].tolist()],
            orientations=tt["orientations"],
            radii=tt["radii"],
            curve=tt["curve"],
            line=tt["line"],
            grating=tt["grating"],
            blob_hue=tt["blob_hue"],
            curve_hue=tt["curve_hue"],
            positions=tt["positions"],
            curve_x=tt["curve_x"],
            curve_y=tt["curve_y"],
            blank=tt["blank"],
        )

    def figures(self) -> dict[str, Any]:
        return {"radial_tuning": self.plot(), "parameters": self.plot_parameters()}

    def _top(self) -> list[int]:
        rows = self.tables["units"].records()
        idx = {u: i for i, u in enumerate(self.tensors["units"].tolist())}
        k = int(self.config.get("plot_units", 8))
        return [idx[r["unit"]] for r in rows[:k]]

    def plot(self) -> Any:
        """Radial plots of orientation tuning (curves at the best radius; lines mirrored over 360) of the top units."""
        t = self.tuning()
        top = self._top()
        cols = min(4, max(1, len(top)))
        rows = math.ceil(len(top) / cols)
        fig = new_figure(3.0 * cols, 3.0 * rows)
        oc = t.orientation_curve()
        theta = np.deg2rad(np.append(t.orientations.numpy(), 360.0))
        rec = {r["unit"]: r for r in self.tables["units"].records()}
        for j, i in enumerate(top):
            ax = fig.add_subplot(rows, cols, j + 1, projection="polar")
            c = oc[i].clamp_min(0).numpy()
            line = t.line[i].clamp_min(0).numpy()
            line360 = np.concatenate([line, line])
            ax.plot(theta, np.append(c, c[0]), color="#c0392b", label="curve")
            ax.plot(theta, np.append(line360, line360[0]), color="#2471a3", ls="--", label="line")
            r = rec[t.units[i]]
            mark = " curve det." if r["curve_detector"] else ""
            ax.set_title(f"unit {t.units[i]}: sel {r['selectivity']:.2f}{mark}", fontsize=8)
            ax.set_yticklabels([])
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.legend(fontsize=6, loc="lower left")
        return fig

    def plot_parameters(self) -> Any:
        """Response vs radius, position and hue for the top units."""
        t = self.tuning()
        top = self._top()
        fig = new_figure(12, 3)
        axes = [fig.add_subplot(1, 4, k + 1) for k in range(4)]
        rc = t.radius_curve()
        for i in top:
            lab = f"unit {t.units[i]}"
            axes[0].plot(t.radii.numpy(), rc[i].numpy(), marker="o", label=lab)
            axes[1].plot(t.positions.numpy(), t.curve_x[i].numpy(), marker=".")
            axes[2].plot(t.positions.numpy(), t.curve_y[i].numpy(), marker=".")
            axes[3].plot(np.arange(t.curve_hue.shape[1]), t.curve_hue[i].numpy(), marker=".")
        for ax, xl in zip(axes, ("radius (px)", "x offset (px)", "y offset (px)", "hue index")):
            ax.set_xlabel(xl, fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_ylabel("response - blank", fontsize=8)
        axes[0].legend(fontsize=6)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [TuningCurves]
