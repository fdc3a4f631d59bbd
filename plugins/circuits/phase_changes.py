"""``phase_changes``: do curve detectors form abruptly? Metrics across training checkpoints and change-point fits.

For every checkpoint (a folder of ``step_*.safetensors`` or one packed file whose keys are
``step_XXXXXX/<param>``, loaded into the model's own module) the analysis measures, on a hook:

* ``n_curve_detectors``: units passing the curve-detector test of :mod:`.tuning_curves`;
* ``top_selectivity``: mean curve selectivity of the ``top_k`` most selective units;
* ``family_size``: the largest rotation family found from stimuli (:mod:`.equivariance`);
* ``loss`` / ``accuracy`` on the task, when labelled inputs are given.

Each metric's trajectory gets a model-free change point (:func:`empirical_rise`: the steps ``t10``, ``t50``,
``t90`` at which it has covered 10/50/90% of its way from the first value to its final plateau) and, for
reference, a logistic fit ``m(t) = a + b / (1 + exp(-(t - t0) / w))`` (``t0`` within the steps spanned, its
10-90% width ``2 ln(9) w``, ``R^2`` against a straight line's, a residual-bootstrap interval for ``t0``).
A metric *changes* when its plateau differs from its first value by at least half its range (not noise
around a level), and changes as a **phase change** when its 10-90% rise takes at most ``phase_fraction``
(default 10%) of the steps spanned -- the resolution is the checkpoint spacing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .common import image_support, model_device_dtype
from .equivariance import rotation_signature, stimulus_families
from .tuning_curves import curve_detectors, default_unit_hook, measure_tuning

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "iter_checkpoints",
    "empirical_rise",
    "logistic_fit",
    "checkpoint_metrics",
    "PhaseChanges",
    "PhaseChangeResult",
]

_STEP = re.compile(r"step_(\d+)")


def iter_checkpoints(source: Union[str, Path]) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """``(step, state_dict)`` in step order from a folder of ``step_*.safetensors`` or a packed safetensors file."""
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_dir():
        files = [(int(m.group(1)), f) for f in path.glob("step_*.safetensors") if (m := _STEP.search(f.name))]
        if not files:
            raise VisionLensError(f"phase_changes: no step_*.safetensors in {path}")
        for step, f in sorted(files):
            yield step, load_file(str(f))
        return
    if not path.is_file():
        raise VisionLensError(
            f"phase_changes: no checkpoints at {path} (a folder of step_*.safetensors or a packed file)"
        )
    by_step: dict[int, dict[str, Tensor]] = {}
    for key, value in load_file(str(path)).items():
        head, _, rest = key.partition("/")
        m = _STEP.fullmatch(head)
        if not m or not rest:
            raise VisionLensError(f"phase_changes: {path} is not a packed checkpoint file (key {key!r})")
        by_step.setdefault(int(m.group(1)), {})[rest] = value
    for step in sorted(by_step):
        yield step, by_step[step]


def empirical_rise(steps: np.ndarray, values: np.ndarray, plateau: int = 5) -> dict[str, float]:
    """Model-free change: the first steps at which the trajectory has covered 10%, 50% and 90% of its way from
    its first value to its final plateau (the mean of the last ``plateau`` values); ``rise_width = t90 - t10``."""
    t = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    start, end = y[0], y[-plateau:].mean()
    out = {}
    for q in (10, 50, 90):
        if end == start:
            out[f"t{q}"] = float("nan")
            continue
        frac = (y - start) / (end - start)
        hit = np.nonzero(frac >= q / 100)[0]
        out[f"t{q}"] = float(t[hit[0]]) if len(hit) else float("nan")
    out["rise_width"] = out["t90"] - out["t10"]
    return out


def _logistic(t: np.ndarray, a: float, b: float, t0: float, w: float) -> np.ndarray:
    return a + b / (1.0 + np.exp(-np.clip((t - t0) / w, -60, 60)))


def logistic_fit(steps: np.ndarray, values: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Logistic fit of a trajectory: ``step`` (t0), ``width`` (10-90%), ``r2``, ``r2_linear``, ``amplitude`` and a
    residual-bootstrap 95% interval of ``step``."""
    from scipy.optimize import curve_fit

    t = np.asarray(steps, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    span = float(t.max() - t.min()) or 1.0
    nan = {k: float("nan") for k in ("step", "width", "r2", "r2_linear", "amplitude", "step_ci_low", "step_ci_high")}
    if len(t) < 5 or np.ptp(y) == 0:
        return nan

    def fit(yy: np.ndarray, start: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        best: Optional[tuple[float, np.ndarray]] = None
        starts = (
            [list(start)]
            if start is not None
            else [
                [yy[:2].mean(), yy[-2:].mean() - yy[:2].mean(), t0, w]
                for t0 in np.quantile(t, [0.1, 0.25, 0.5, 0.75])
                for w in (span / 50, span / 10)
            ]
        )
        for p0 in starts:
            try:
                p, _ = curve_fit(
                    _logistic,
                    t,
                    yy,
                    p0=p0,
                    maxfev=4000,
                    bounds=([-np.inf, -np.inf, t.min(), span / 1000], [np.inf, np.inf, t.max(), 10 * span]),
                )
            except (RuntimeError, ValueError):
                continue
            sse = float(((_logistic(t, *p) - yy) ** 2).sum())
            if best is None or sse < best[0]:
                best = (sse, p)
        return None if best is None else best[1]

    p = fit(y)
    if p is None:
        return nan
    pred = _logistic(t, *p)
    sst = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - pred) ** 2).sum()) / sst
    lin = np.polyval(np.polyfit(t, y, 1), t)
    r2_lin = 1 - float(((y - lin) ** 2).sum()) / sst
    rng = np.random.default_rng(seed)
    res = y - pred
    boots = []
    for _ in range(n_boot):
        q = fit(pred + rng.choice(res, len(res), replace=True), start=p)
        if q is not None:
            boots.append(q[2])
    lo, hi = np.quantile(boots, [0.025, 0.975]) if boots else (np.nan, np.nan)
    return {
        "step": float(p[2]),
        "width": float(2 * math.log(9) * p[3]),
        "r2": r2,
        "r2_linear": r2_lin,
        "amplitude": float(p[1]),
        "step_ci_low": float(lo),
        "step_ci_high": float(hi),
    }


@torch.no_grad()
def checkpoint_metrics(
    model: HookedVisionModel,
    hook: str,
    images: Optional[Tensor] = None,
    labels: Optional[Tensor] = None,
    top_k: int = 8,
    size: Optional[int] = None,
) -> dict[str, float]:
    """The metrics of the module's current weights (see the module docstring)."""
    t = measure_tuning(model, hook, n_orientations=16, radii=(3.0, 4.5, 6.0, 8.0), jitter=3, n_hues=3, size=size)
    det = curve_detectors(t)
    sel = torch.where(det["curve_max"] > 0, det["selectivity"], torch.zeros_like(det["selectivity"]))
    fams, _, _ = stimulus_families(rotation_signature(t))
    out = {
        "n_curve_detectors": float(det["is_curve_detector"].sum()),
        "top_selectivity": float(sel.topk(min(top_k, len(sel))).values.mean()),
        "family_size": float(max((len(f.members) for f in fams), default=0)),
    }
    if images is not None and labels is not None:
        logits = torch.cat(
            [model(images[i : i + 500].to(*model_device_dtype(model))).cpu() for i in range(0, len(images), 500)]
        )
        out["loss"] = float(F.cross_entropy(logits, labels))
        out["accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    return out


class PhaseChanges(Analysis):
    """Curve-detector metrics across training checkpoints, with change-point fits."""

    name = "phase_changes"
    summary = (
        "Track curve-detector count, selectivity, family size and task loss across training checkpoints; "
        "logistic change-point fits (step, width, R^2, interval) decide whether they form as a phase change."
    )

    @dataclass
    class Config:
        checkpoints: str = option("", help="folder of step_*.safetensors or a packed file ('' = current weights only)")
        hook: str = option("", help="hook of the units (default: mixed3b, else a middle block)")
        labels: Any = option(None, help="labels of the input images (list, tensor or JSON file) for loss/accuracy")
        top_k: int = option(8, min=1, max=1024, help="units averaged in top_selectivity")
        every: int = option(1, min=1, help="use every n-th checkpoint")
        phase_fraction: float = option(0.1, min=0.0, max=1.0, help="max width / span for a phase change")
        n_bootstrap: int = option(200, min=0, max=10_000, help="residual bootstrap resamples of the change step")
        seed: int = option(0, help="bootstrap seed")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"n_bootstrap": 0}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "PhaseChangeResult":
        """Measure every checkpoint (``inputs``: labelled task images for loss/accuracy, or None)."""
        hook = config.hook or default_unit_hook(model)
        images = inputs if isinstance(inputs, Tensor) else None
        labels = None
        if config.labels is not None:
            lab = config.labels
            if isinstance(lab, str):
                import json

                with open(lab, encoding="utf-8") as f:
                    lab = json.load(f)
            labels = torch.as_tensor(lab).long()
        original = {k: v.detach().clone() for k, v in model.source.state_dict().items()}
        rows: list[tuple[int, dict[str, float]]] = []
        if not config.checkpoints:  # the current weights only: the metrics, no change point
            rows.append((0, checkpoint_metrics(model, hook, images, labels, config.top_k)))
            return PhaseChangeResult.build(rows, hook, config, model)
        try:
            for i, (step, state) in enumerate(iter_checkpoints(config.checkpoints)):
                if i % config.every:
                    continue
                model.source.load_state_dict(state)
                model.source.eval()
                rows.append((step, checkpoint_metrics(model, hook, images, labels, config.top_k)))
        finally:
            model.source.load_state_dict(original)
        return PhaseChangeResult.build(rows, hook, config, model)


class PhaseChangeResult(Result):
    """Tables ``trajectory`` (metrics per step) and ``changes`` (the logistic fit and verdict per metric)."""

    @classmethod
    def build(
        cls, rows: list[tuple[int, dict[str, float]]], hook: str, config: Any, model: Optional[HookedVisionModel]
    ) -> "PhaseChangeResult":
        if not rows:
            raise VisionLensError("phase_changes: no checkpoints were measured")
        names = list(rows[0][1])
        traj = Table(["step", *names], title=f"Metrics per checkpoint ({hook})")
        for step, m in rows:
            traj.rows.append([step, *[m[n] for n in names]])
        steps = np.array([s for s, _ in rows], dtype=np.float64)
        span = float(steps.max() - steps.min()) if len(steps) > 1 else 0.0
        changes = Table(
            [
                "metric",
                "t10",
                "t50",
                "t90",
                "rise_width",
                "rise_fraction",
                "logistic_step",
                "step_ci_low",
                "step_ci_high",
                "logistic_width",
                "r2",
                "r2_linear",
                "changes",
                "phase_change",
            ],
            title=f"Change points (phase change: the 10-90% rise takes at most {config.phase_fraction:.0%} of the "
            "steps spanned; logistic fit for reference)",
        )
        for n in names:
            y = np.array([m[n] for _, m in rows])
            e = empirical_rise(steps, y)
            f = logistic_fit(steps, y, config.n_bootstrap, config.seed)
            frac = e["rise_width"] / span if span else float("nan")
            # a change at all: the trajectory mostly moves from its first value to its plateau (not noise around it)
            moves = bool(len(y) > 1 and abs(y[-5:].mean() - y[0]) >= 0.5 * float(np.ptp(y)) > 0)
            phase = bool(moves and np.isfinite(frac) and frac <= config.phase_fraction)
            changes.rows.append(
                [
                    n,
                    e["t10"],
                    e["t50"],
                    e["t90"],
                    e["rise_width"],
                    frac,
                    f["step"],
                    f["step_ci_low"],
                    f["step_ci_high"],
                    f["width"],
                    f["r2"],
                    f["r2_linear"],
                    moves,
                    phase,
                ]
            )
        verdict = {r[0]: r[-1] for r in changes.rows}
        return cls(
            "phase_changes",
            summary=f"{len(rows)} checkpoints on {hook}: curve detectors "
            + ("form as a phase change" if verdict.get("n_curve_detectors") else "do not form as a phase change")
            + " (n_curve_detectors)",
            config=config_to_dict(config),
            meta={"model": getattr(model.cfg, "architecture", "") if model else "", "hook": hook},
            tables={"trajectory": traj, "changes": changes},
        )

    def plot(self) -> Any:
        traj = self.tables["trajectory"]
        ch = {r["metric"]: r for r in self.tables["changes"].records()}
        steps = np.array(traj.column("step"), dtype=np.float64)
        names = traj.columns[1:]
        fig = new_figure(3.2 * len(names), 3.0)
        for j, n in enumerate(names):
            ax = fig.add_subplot(1, len(names), j + 1)
            y = np.array(traj.column(n), dtype=np.float64)
            ax.plot(steps, y, marker=".", color="#2c3e50")
            c = ch[n]
            if c.get("changes") and c["t50"] is not None and np.isfinite(c["t50"]):
                ax.axvline(c["t50"], color="#c0392b", lw=1)
                ax.axvspan(c["t10"], c["t90"], color="#c0392b", alpha=0.15)
            tag = "phase change" if c["phase_change"] else ("gradual" if c.get("changes") else "no change")
            ax.set_title(f"{n}\nt50={c['t50']:.0f}, 10-90%: {c['rise_width']:.0f} steps ({tag})", fontsize=8)
            ax.set_xlabel("training step", fontsize=8)
            ax.tick_params(labelsize=7)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [PhaseChanges]
