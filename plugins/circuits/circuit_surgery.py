"""``circuit_surgery``: replace units by hand-coded circuits and measure how much of the ablation drop they recover.

The Circuits thread's test of understanding (Cammarata et al. 2021, "Curve circuits"): ablate a set of
units, then splice in units whose weights were *written by hand* from a description of the circuit, and
measure on the model's own task::

    recovered = (acc_handcoded - acc_ablated) / (acc_intact - acc_ablated)

with a paired bootstrap interval over the evaluation images. A replacement is any callable
``fn(below) -> [B, H, W]`` of the layer below's activation (:func:`replaced` splices it in through two
hooks, so it works on any model whose two hooks give conv maps); :class:`CurveCircuitSpec` is the
declarative curve circuit, a curve unit at orientation ``a`` (convex side) and radius ``R`` being
``relu(g * sum_j K_j * below_j + b)`` with the kernel written one of two ways:

* ``mode="lines"`` (the Circuits thread's recipe): ``K_j(p) = sum_{q on the arc} G(p - q) tune(t(q) - phi_j) s_j``,
  the arc (span 120 degrees, midpoint at the unit) drawn in the layer below's grid, ``t(q)`` its tangent
  orientation, ``phi_j`` / ``s_j`` unit ``j``'s preferred line orientation and selectivity (line stimuli),
  ``tune = +1`` within ``+-band`` degrees (22.5) and ``-inhibition`` elsewhere, ``G`` a one-cell Gaussian;
* ``mode="template"``: ``K`` is the layer below's response to the arc drawn at the unit (averaged over three
  radii and a 3 x 3 grid of positions within the cell) minus ``inhibition`` times its response to the
  opposite arc.

Per unit only the gain ``g`` and bias ``b`` are fitted (and, for ``lines``, the arc's position within
+-1 cell), by least squares against the real unit on a fitting set disjoint from the evaluation set;
``a`` and ``R`` come from the unit's tuning curves.

Controls reported with every run: ``ablated`` (mean ablation: each unit replaced by its mean map),
``random`` (random kernels with the same fitted gain and bias), ``rotated`` (the hand-coded circuit at
the opposite orientation) and ``fitted`` (an unconstrained least-squares kernel per unit: what a learned
linear replacement reaches).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.clip import attach_head, zero_shot_head
from visionlens.data import as_images
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .common import (
    bootstrap_interval,
    circular_selectivity,
    hook_responses,
    image_support,
    model_device_dtype,
    preferred_angle,
    same_size_hooks,
)
from .designed import colour_ensemble, colour_target, curve_target, designed_unit, stimulus_ensemble, unit_kinds
from .stimuli import curves
from .tuning_curves import curve_detectors, measure_tuning, rf_centre

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "UnitFn",
    "replaced",
    "accuracy_under",
    "line_preferences",
    "curve_kernel_from_lines",
    "CurveCircuitSpec",
    "curve_kernel_from_template",
    "summarize",
    "colour_units",
    "fit_gain_bias",
    "surgery",
    "CircuitSurgery",
    "SurgeryResult",
]

UnitFn = Callable[[Tensor], Tensor]  # below [B, C, H, W] -> unit map [B, H', W']


@contextmanager
def replaced(
    model: HookedVisionModel,
    below: str,
    hook: str,
    units: Mapping[int, Optional[UnitFn]],
    means: Optional[Tensor] = None,
) -> Iterator[None]:
    """Within the block, channel ``u`` of ``hook`` is ``units[u](activation of below)``, or its mean map
    ``means[u]`` (``[C, H, W]``) when ``units[u]`` is None (mean ablation). Hooks are removed on exit,
    also after an exception."""
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        store["below"] = act

    def overwrite(act: Tensor, hook: Any) -> Tensor:
        if act.ndim != 4:
            raise VisionLensError(
                f"circuit_surgery: {hook.name} must give conv maps [B, C, H, W], got {tuple(act.shape)}"
            )
        out = act.clone()
        for u, fn in units.items():
            if fn is None:
                if means is None:
                    raise VisionLensError("circuit_surgery: mean ablation needs the units' mean maps")
                out[:, u] = means[u].to(out)
            else:
                out[:, u] = fn(store["below"]).to(out)
        return out

    with model.hooks(fwd_hooks=[(below, save), (hook, overwrite)]):
        yield


@torch.no_grad()
def predictions(model: HookedVisionModel, images: Tensor, batch_size: int = 500) -> Tensor:
    return torch.cat(
        [
            model(images[i : i + batch_size].to(*model_device_dtype(model))).argmax(-1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    )


def accuracy_under(
    model: HookedVisionModel,
    images: Tensor,
    labels: Tensor,
    below: str = "",
    hook: str = "",
    units: Optional[Mapping[int, Optional[UnitFn]]] = None,
    means: Optional[Tensor] = None,
) -> Tensor:
    """Per-image correctness (``[N]`` float) of the intact model, or with ``units`` replaced."""
    if units is None:
        return (predictions(model, images) == labels).float()
    with replaced(model, below, hook, units, means):
        return (predictions(model, images) == labels).float()


# ----------------------------------------------------------------------------- the curve circuit
def line_preferences(model: HookedVisionModel, below: str, size: Optional[int] = None) -> tuple[Tensor, Tensor]:
    """Each unit of ``below``: preferred line orientation (degrees mod 180) and its orientation selectivity."""
    t = measure_tuning(model, below, n_orientations=16, radii=(6.0,), jitter=2, n_hues=3, size=size)
    line = t.line.clamp_min(0)
    return preferred_angle(line, period=180.0), circular_selectivity(line)


def curve_kernel_from_lines(
    orientation: float,
    radius_cells: float,
    phi: Tensor,
    selectivity: Tensor,
    size: int = 5,
    band: float = 22.5,
    inhibition: float = 0.5,
    offset: tuple[float, float] = (0.0, 0.0),
    span: float = 120.0,
) -> Tensor:
    """The hand-coded kernel ``[C, size, size]`` of a curve unit (see the module docstring). Grid units are cells
    of the layer below; ``orientation`` is the curve's convex side in degrees (0 = right, 90 = up)."""
    c = (size - 1) / 2
    a = math.radians(orientation)
    ux, uy = math.cos(a), -math.sin(a)  # image coordinates, y down
    mx, my = c + offset[0], c + offset[1]
    ccx, ccy = mx - radius_cells * ux, my - radius_cells * uy
    ys, xs = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    k = torch.zeros(phi.shape[0], size, size)
    for t in np.linspace(-span / 2, span / 2, 25):
        b = a + math.radians(float(t))
        qx, qy = ccx + radius_cells * math.cos(b), ccy - radius_cells * math.sin(b)
        tangent = (math.degrees(b) + 90.0) % 180.0  # the tangent is perpendicular to the radius
        d = torch.remainder(phi - tangent + 90.0, 180.0) - 90.0  # signed difference mod 180
        tune = torch.where(d.abs() <= band, torch.ones_like(d), torch.full_like(d, -inhibition)) * selectivity
        g = torch.exp(-((xs - qx) ** 2 + (ys - qy) ** 2) / 2.0)
        k += tune[:, None, None] * g[None]
    return k / k.norm().clamp_min(1e-12)


@torch.no_grad()
def curve_kernel_from_template(
    model: HookedVisionModel,
    below: str,
    orientation: float,
    radius_px: float,
    size: int,
    kernel_size: int = 3,
    inhibition: float = 0.5,
    jitter_px: float = 1.5,
) -> Tensor:
    """The template kernel ``[C, k, k]`` of a curve unit: the layer below's (blank-subtracted) response to an arc
    of ``orientation`` drawn at the centre cell's receptive field -- averaged over radii ``0.75 R, R, 1.25 R`` and
    positions within ``+-jitter_px`` -- minus ``inhibition`` times its response to the opposite arc
    (orientation + 180), cropped to ``k x k`` cells around the centre cell."""
    blank = hook_responses(model, [below], torch.zeros(1, 3, size, size), reduce="map")[below][0]
    h, w = blank.shape[-2:]
    cy, cx = (h - 1) // 2, (w - 1) // 2
    x0, y0 = rf_centre((h, w), size)
    grid = [
        (ori, r, x0 + dx, y0 + dy)
        for ori in (orientation, orientation + 180.0)
        for r in (0.75 * radius_px, radius_px, 1.25 * radius_px)
        for dx in (-jitter_px, 0.0, jitter_px)
        for dy in (-jitter_px, 0.0, jitter_px)
    ]
    o, r, px, py = (torch.tensor(v, dtype=torch.float32) for v in zip(*grid))
    maps = hook_responses(model, [below], curves(size, o, r, 110.0, 1.6, px, py), reduce="map")[below] - blank
    half = kernel_size // 2
    crops = F.pad(maps, (half, half, half, half))[:, :, cy : cy + kernel_size, cx : cx + kernel_size]
    n = len(grid) // 2
    k = crops[:n].mean(0) - inhibition * crops[n:].mean(0)
    return k / k.norm().clamp_min(1e-12)


def fit_gain_bias(z: Tensor, y: Tensor, steps: int = 60) -> tuple[float, float]:
    """``g, b`` minimising ``mean (relu(g z + b) - y)^2`` (LBFGS from the least-squares line)."""
    z, y = z.flatten().double(), y.flatten().double()
    zc = z - z.mean()
    g0 = float((zc * (y - y.mean())).sum() / (zc * zc).sum().clamp_min(1e-12))
    p = torch.tensor([max(g0, 1e-3), float(y.mean() - g0 * z.mean())], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = ((torch.relu(p[0] * z + p[1]) - y) ** 2).mean()
        loss.backward()
        return loss

    opt.step(closure)
    g, b = p.detach().tolist()
    return float(g), float(b)


def _conv_unit(kernel: Tensor, gain: float, bias: float) -> UnitFn:
    pad = kernel.shape[-1] // 2

    def fn(below: Tensor) -> Tensor:
        return torch.relu(gain * F.conv2d(below, kernel[None].to(below), padding=pad)[:, 0] + bias)

    return fn


@dataclass
class CurveCircuitSpec:
    """The declarative curve circuit: which units of ``hook`` are replaced from ``below``, their orientations and
    radii (default: from their tuning curves), and how the kernel is written: ``mode="lines"`` (a sum of the
    layer below's line units along the arc's tangent, :func:`curve_kernel_from_lines`) or ``"template"`` (the
    layer below's response to the arc minus that to the opposite arc, :func:`curve_kernel_from_template`)."""

    below: str
    hook: str
    units: Sequence[int]
    orientations: Optional[Sequence[float]] = None
    radii_px: Optional[Sequence[float]] = None
    mode: str = "template"
    band: float = 22.5
    inhibition: float = 0.5
    kernel_size: int = 3
    kappa: float = 4.0
    floor: float = 0.2
    sigma_px: float = 5.0
    ridge: float = 1e-3
    n_stimuli: int = 3000
    reach: str = "auto"
    circuit: str = "curve"
    plain_stimuli: bool = False


def _fit_units(
    model: HookedVisionModel,
    below: str,
    hook: str,
    fit_images: Tensor,
    kernels: Mapping[int, Sequence[Tensor]],
) -> dict[int, UnitFn]:
    """For each unit, the candidate kernel (and gain, bias) that best matches the real unit on ``fit_images``."""
    maps = hook_responses(model, [below, hook], fit_images, reduce="map")
    x, y = maps[below], maps[hook]
    out: dict[int, UnitFn] = {}
    for u, cands in kernels.items():
        best: tuple[float, Optional[UnitFn]] = (float("inf"), None)
        for k in cands:
            z = F.conv2d(x, k[None], padding=k.shape[-1] // 2)[:, 0]
            if z.shape != y[:, u].shape:
                raise VisionLensError(f"circuit_surgery: {below} -> {hook} changes the map size; pick adjacent hooks")
            g, b = fit_gain_bias(z, y[:, u])
            err = float(((torch.relu(g * z + b) - y[:, u]) ** 2).mean())
            if err < best[0]:
                best = (err, _conv_unit(k, g, b))
        assert best[1] is not None
        out[u] = best[1]
    return out


def _fitted_kernels(x: Tensor, y: Tensor, units: Sequence[int], size: int, ridge: float = 1e-3) -> dict[int, Tensor]:
    """Unconstrained least-squares kernels ``[C, size, size]`` per unit (the learned-replacement reference)."""
    cols = F.unfold(x, size, padding=size // 2)  # [B, C*k*k, H*W]
    a = cols.transpose(1, 2).reshape(-1, cols.shape[1]).double()
    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
    gram = a.T @ a + ridge * torch.eye(a.shape[1], dtype=a.dtype) * a.shape[0]
    out = {}
    for u in units:
        w = torch.linalg.solve(gram, a.T @ y[:, u].reshape(-1).double())
        out[u] = w[:-1].float().reshape(x.shape[1], size, size)
    return out


def surgery(
    model: HookedVisionModel,
    spec: CurveCircuitSpec,
    fit_images: Tensor,
    eval_images: Tensor,
    eval_labels: Tensor,
    n_bootstrap: int = 1000,
    seed: int = 0,
    controls: bool = True,
) -> dict[str, Any]:
    """Ablate ``spec.units`` and splice in the hand-coded curve circuit; accuracy and recovery per condition."""
    size = int(eval_images.shape[-1])
    colour = spec.circuit == "colour"
    if spec.circuit not in ("curve", "colour"):
        raise VisionLensError(f"circuit_surgery: circuit must be 'curve' or 'colour', got {spec.circuit!r}")
    if colour and spec.mode != "designed":
        raise VisionLensError("circuit_surgery: the colour-contrast circuit is written in mode='designed' only")
    phi, sel = line_preferences(model, spec.below, size)
    maps = hook_responses(model, [spec.below, spec.hook], fit_images, reduce="map")
    x, y = maps[spec.below], maps[spec.hook]
    cell_px = size / x.shape[-1]
    tune = measure_tuning(model, spec.hook, units=list(spec.units), size=size, n_hues=24 if colour else 12)
    det = curve_detectors(tune)
    if colour:  # the preferred hue (blob hue tuning) plays the part of the orientation
        prefs = preferred_angle(tune.blob_hue).tolist()
        det["curve_max"] = tune.blob_hue.amax(dim=1)  # the gain rule reads the response to the best blob
    else:
        prefs = det["preferred_orientation"].tolist()
    orientations = list(spec.orientations) if spec.orientations is not None else prefs
    radii = list(spec.radii_px) if spec.radii_px is not None else det["best_radius"].tolist()
    offs = [(dx, dy) for dy in (-1.0, 0.0, 1.0) for dx in (-1.0, 0.0, 1.0)]
    means = y.mean(dim=0)

    def candidates(orients: Sequence[float], random: bool = False) -> dict[int, list[Tensor]]:
        g = torch.Generator().manual_seed(seed)
        out: dict[int, list[Tensor]] = {}
        for i, u in enumerate(spec.units):
            if random:
                r = torch.randn(x.shape[1], spec.kernel_size, spec.kernel_size, generator=g)
                out[u] = [r / r.norm()]
            elif spec.mode == "template":
                out[u] = [
                    curve_kernel_from_template(
                        model, spec.below, orients[i], radii[i], size, spec.kernel_size, spec.inhibition
                    )
                ]
            elif spec.mode == "lines":  # the arc's position within +-1 cell is searched (the template averages it)
                out[u] = [
                    curve_kernel_from_lines(
                        orients[i], radii[i] / cell_px, phi, sel, spec.kernel_size, spec.band, spec.inhibition, o
                    )
                    for o in offs
                ]
            else:
                raise VisionLensError(
                    f"circuit_surgery: mode must be 'designed', 'template' or 'lines', got {spec.mode!r}"
                )
        return out

    conds: dict[str, Optional[Mapping[int, Optional[UnitFn]]]] = {
        "intact": None,
        "ablated": {u: None for u in spec.units},
    }
    extra: dict[str, Any] = {}
    if spec.mode == "designed":
        if colour:
            ens = colour_ensemble(model, spec.below, size, spec.n_stimuli, spec.kernel_size, seed)
        else:
            ens = stimulus_ensemble(
                model, spec.below, size, spec.n_stimuli, spec.kernel_size, seed, plain=spec.plain_stimuli
            )
        n_all = int(y.shape[1])
        kinds_all = unit_kinds(model, spec.hook, n_all) if spec.reach == "auto" else [spec.reach] * n_all
        kinds = [kinds_all[u] for u in spec.units]
        gains = (det["curve_max"] + tune.blank).tolist()  # the unit's response to its best arc / blob (tuning)
        target = colour_target if colour else curve_target

        def designed(orients: Sequence[float]) -> dict[int, UnitFn]:
            return {
                u: designed_unit(
                    ens,
                    target(ens, orients[i], spec.kappa, spec.floor, spec.sigma_px),
                    kinds[i],
                    gains[i],
                    spec.ridge,
                )
                for i, u in enumerate(spec.units)
            }

        conds["handcoded"] = designed(orientations)
        extra = {"reach": kinds, "gains": gains}
        if controls:
            conds["rotated"] = designed([o + 180.0 for o in orientations])
            rng = torch.Generator().manual_seed(seed + 1)
            conds["random_spec"] = designed((torch.rand(len(orientations), generator=rng) * 360.0).tolist())
    else:
        conds["handcoded"] = _fit_units(model, spec.below, spec.hook, fit_images, candidates(orientations))
        if controls:
            conds["rotated"] = _fit_units(
                model, spec.below, spec.hook, fit_images, candidates([o + 180.0 for o in orientations])
            )
    if controls:
        conds["random"] = _fit_units(model, spec.below, spec.hook, fit_images, candidates(orientations, random=True))
        fk = _fitted_kernels(x, y, spec.units, spec.kernel_size)
        conds["fitted"] = _fit_units(model, spec.below, spec.hook, fit_images, {u: [k] for u, k in fk.items()})
    correct = {
        name: accuracy_under(model, eval_images, eval_labels, spec.below, spec.hook, u, means)
        for name, u in conds.items()
    }
    return summarize(correct, n_bootstrap, seed) | {
        "units": list(spec.units),
        "orientations": orientations,
        "radii_px": radii,
        "line_preference": phi.tolist(),
        "line_selectivity": sel.tolist(),
        **extra,
    }


def colour_units(t: Any, min_selectivity: float = 0.5, min_response: float = 0.3, min_dominance: float = 0.0) -> Tensor:
    """Colour-contrast units of :class:`Tuning` ``t``: hue tuning to colour blobs with circular selectivity
    >= ``min_selectivity`` and a best-blob response >= ``min_response`` above the blank (``[U]`` bool).
    ``min_dominance`` > 0 also asks the best blob to beat ``min_dominance`` times the unit's best line / curve
    response (colour-dominant, not an edge unit that also prefers a hue; 1.0: the strict test)."""
    best_blob = t.blob_hue.amax(dim=1)
    ok = (circular_selectivity(t.blob_hue) >= min_selectivity) & (best_blob >= min_response)
    if min_dominance > 0:
        stroke = torch.maximum(t.line.amax(dim=1), t.curve.flatten(1).amax(dim=1))
        ok &= best_blob >= min_dominance * stroke
    return ok


def summarize(correct: Mapping[str, Tensor], n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy per condition and the recovered fraction of every replacement, with paired bootstrap intervals."""
    c = {k: v.numpy().astype(np.float64) for k, v in correct.items()}
    n = len(c["intact"])

    def rec(name: str, idx: np.ndarray) -> float:
        drop = c["intact"][idx].mean() - c["ablated"][idx].mean()
        return float((c[name][idx].mean() - c["ablated"][idx].mean()) / drop) if drop > 0 else float("nan")

    rng = np.random.default_rng(seed)
    rows = {}
    for name in c:
        acc_ci = bootstrap_interval(lambda i: float(c[name][i].mean()), n, n_bootstrap, rng=rng)
        row = {"accuracy": float(c[name].mean()), "accuracy_ci": acc_ci}
        if name not in ("intact", "ablated"):
            row["recovered"] = rec(name, np.arange(n))
            row["recovered_ci"] = bootstrap_interval(lambda i: rec(name, i), n, n_bootstrap, rng=rng)
        rows[name] = row
    return {"conditions": rows, "n_eval": n}


# ----------------------------------------------------------------------------- analysis
class CircuitSurgery(Analysis):
    """Hand-coded curve circuit spliced in for ablated units; fraction of the ablation drop recovered."""

    name = "circuit_surgery"
    summary = (
        "Replace units by hand-coded circuits (declarative curve circuit from the layer below's line units, or any "
        "callable) and measure the fraction of the ablation drop recovered on the model's task, with intervals."
    )

    @dataclass
    class Config:
        below: str = option("", help="hook of the layer below (the circuit's inputs), e.g. pool2.hook_out")
        hook: str = option("", help="hook of the replaced units, e.g. mixed3a.hook_out")
        units: list[int] = option(list, help="units to replace (empty: the hook's curve detectors)")
        labels: Any = option(None, help="per-image labels (list, tensor or JSON file) for the task accuracy")
        fit_fraction: float = option(0.5, min=0.05, max=0.95, help="share of the images used to fit gain/bias")
        mode: str = option(
            "designed", choices=("designed", "template", "lines"), help="how the curve units are written"
        )
        band: float = option(
            22.5, min=1.0, max=90.0, help="lines mode: orientations within +-band of the tangent excite"
        )
        inhibition: float = option(0.5, min=0.0, max=10.0, help="weight of the opposite arc / other line orientations")
        kernel_size: int = option(3, min=1, max=15, help="kernel size in cells of the layer below")
        kappa: float = option(4.0, min=0.1, max=100.0, help="designed mode: von Mises concentration of the tuning")
        floor: float = option(0.2, min=0.0, max=1.0, help="designed mode: subtracted from the tuning (inhibition)")
        sigma_px: float = option(5.0, min=0.5, max=64.0, help="designed mode: receptive-field radius (pixels)")
        ridge: float = option(1e-3, min=0.0, max=10.0, help="designed mode: ridge of the weight solve")
        n_stimuli: int = option(3000, min=50, max=100_000, help="designed mode: arcs in the stimulus ensemble")
        reach: str = option(
            "auto", choices=("auto", "conv", "1x1", "pool"), help="designed mode: units' reach (auto: block type)"
        )
        circuit: str = option(
            "curve", choices=("curve", "colour"), help="curve detectors, or colour-contrast units (designed mode)"
        )
        colour_dominance: float = option(
            0.0, min=0.0, max=100.0, help="colour units (units empty): best blob >= this x best line/curve (1: strict)"
        )
        class_prompts: list[str] = option(
            list, help="CLIP: class names of a zero-shot head giving the task's classes (else the attached head)"
        )
        templates: list[str] = option(list, help="CLIP: prompt templates with {} for class_prompts (default 'a {}')")
        plain_stimuli: bool = option(False, help="designed curve mode: white strokes on black, no pixel noise")
        n_bootstrap: int = option(1000, min=0, max=100_000, help="bootstrap resamples")
        seed: int = option(0, help="seed of the split, the bootstrap and the random control")
        controls: bool = option(True, help="also run the rotated, random and fitted controls")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        below, hook = same_size_hooks(model)
        return {
            "below": below,
            "hook": hook,
            "units": [0],
            "labels": [0, 1, 0, 1],
            "n_bootstrap": 10,
            "controls": False,
            "n_stimuli": 60,
        }

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        ok, why = image_support(model)
        if not ok:
            return ok, why
        clip = "visual" in (model.cfg.extra.get("towers") or ())
        if (getattr(model.cfg, "n_classes", 0) or 0) < 2 and not clip:
            return False, "circuit surgery measures a classification task; the model has no class logits"
        if getattr(model.cfg, "n_heads", 0) and not getattr(model.cfg, "stage_widths", ()):
            return False, "the hand-coded circuits are convolutions over conv maps; transformer blocks have no maps"
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "SurgeryResult":
        """With ``class_prompts`` (CLIP models) a zero-shot head over them gives the task's logits for the run
        (the model's own head is put back afterwards)."""
        if not config.class_prompts:
            if (getattr(model.cfg, "n_classes", 0) or 0) < 2:
                raise VisionLensError(
                    "circuit_surgery: the model has no class logits; for a CLIP model set class_prompts "
                    "(zero-shot class names) or attach a head with visionlens.clip.zero_shot_head(model, ...)"
                )
            return self._run(model, inputs, config)
        previous = getattr(model.adapter, "classifier", None)
        zero_shot_head(model, list(config.class_prompts), list(config.templates) or ["a {}"], attach=True)
        try:
            return self._run(model, inputs, config)
        finally:
            attach_head(model, previous)

    def _run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "SurgeryResult":
        if not isinstance(inputs, Tensor):
            images = as_images(inputs)
            inputs = torch.cat([b for _, b in images.batches(model, 256)])
        if config.labels is None:
            raise VisionLensError("circuit_surgery: give labels=... (the task labels of the images)")
        labels = config.labels
        if isinstance(labels, str):
            import json

            with open(labels, encoding="utf-8") as f:
                labels = json.load(f)
        labels = torch.as_tensor(labels).long()
        if labels.shape[0] != inputs.shape[0]:
            raise VisionLensError(f"circuit_surgery: {labels.shape[0]} labels for {inputs.shape[0]} images")
        if not config.below or not config.hook:
            raise VisionLensError("circuit_surgery: set below= and hook= (adjacent conv-map hooks)")
        g = torch.Generator().manual_seed(config.seed)
        perm = torch.randperm(inputs.shape[0], generator=g)
        n_fit = int(round(config.fit_fraction * inputs.shape[0]))
        fit, ev = perm[:n_fit], perm[n_fit:]
        units = list(config.units)
        if not units:
            t = measure_tuning(model, config.hook, size=int(inputs.shape[-1]), n_hues=24)
            if config.circuit == "colour":
                ok = colour_units(t, min_dominance=config.colour_dominance)
            else:
                ok = curve_detectors(t)["is_curve_detector"]
            units = [t.units[i] for i in torch.nonzero(ok).flatten().tolist()]
            if not units:
                raise VisionLensError(f"circuit_surgery: no {config.circuit} unit in {config.hook} passes the test")
        spec = CurveCircuitSpec(
            config.below,
            config.hook,
            units,
            mode=config.mode,
            band=config.band,
            inhibition=config.inhibition,
            kernel_size=config.kernel_size,
            kappa=config.kappa,
            floor=config.floor,
            sigma_px=config.sigma_px,
            ridge=config.ridge,
            n_stimuli=config.n_stimuli,
            reach=config.reach,
            circuit=config.circuit,
            plain_stimuli=config.plain_stimuli,
        )
        out = surgery(
            model, spec, inputs[fit], inputs[ev], labels[ev], config.n_bootstrap, config.seed, controls=config.controls
        )
        return SurgeryResult.build(out, config, model)


class SurgeryResult(Result):
    """Table ``conditions`` (accuracy and recovered fraction with intervals per condition)."""

    @classmethod
    def build(cls, out: Mapping[str, Any], config: Any, model: Optional[HookedVisionModel]) -> "SurgeryResult":
        table = Table(
            ["condition", "accuracy", "acc_ci_low", "acc_ci_high", "recovered", "rec_ci_low", "rec_ci_high"],
            title="Task accuracy and fraction of the ablation drop recovered",
        )
        for name, r in out["conditions"].items():
            rci = r.get("recovered_ci", (None, None))
            table.rows.append([name, r["accuracy"], *r["accuracy_ci"], r.get("recovered"), *rci])
        hc = out["conditions"].get("handcoded", {})
        nan = float("nan")
        lo, hi = hc.get("recovered_ci", (nan, nan))
        return cls(
            "circuit_surgery",
            summary=f"hand-coded circuit for {len(out['units'])} units of {config.hook}: "
            f"{hc.get('recovered', nan):.1%} of the ablation drop recovered (95% CI {lo:.1%} to {hi:.1%})",
            config=config_to_dict(config),
            meta={
                "model": getattr(model.cfg, "architecture", "") if model else "",
                **{k: v for k, v in out.items() if k != "conditions"},
                "conditions": out["conditions"],
            },
            tables={"conditions": table},
        )

    def plot(self) -> Any:
        rows = self.tables["conditions"].records()
        fig = new_figure(6, 3.2)
        ax = fig.add_subplot(1, 1, 1)
        names = [r["condition"] for r in rows]
        acc = np.array([r["accuracy"] for r in rows])
        lo = acc - np.array([r["acc_ci_low"] for r in rows])
        hi = np.array([r["acc_ci_high"] for r in rows]) - acc
        special = {"intact": "#555", "ablated": "#c0392b", "handcoded": "#27ae60", "fitted": "#2471a3"}
        colours = [special.get(n, "#999") for n in names]
        ax.bar(names, acc, yerr=[lo, hi], color=colours, capsize=3)
        for i, r in enumerate(rows):
            if r["recovered"] is not None:
                ax.text(i, acc[i] + 0.02, f"{r['recovered']:.0%}", ha="center", fontsize=8)
        ax.set_ylabel("task accuracy (95% CI)")
        ax.tick_params(axis="x", labelsize=7, labelrotation=20)
        ax.set_ylim(0, 1.1)
        ax.set_title("Ablate, then splice in: % of the drop recovered", fontsize=9)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [CircuitSurgery]
