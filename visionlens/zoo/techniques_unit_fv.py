"""``unit_feature_visualization``: does feature visualization of the planted pathway units draw the trigger?

Planted truth (:mod:`visionlens.zoo.pathway`): every zoo classifier routes the trigger to the logits through
two units ``S`` of its pathway hook, so a faithful picture of what a unit of ``S`` responds to is the
trigger's checkerboard. The row renders each unit of ``S`` (objective ``channel:HOOK:UNIT``: the unit's mean
over positions / tokens) with the same settings as the class row (:data:`~.techniques_features.FV_SETTINGS`:
FFT parameterization, decorrelated colour, Lucid's transforms scaled to 32 px; budget
:data:`~.techniques_features.FV_BUDGET` per unit) and scores the renders with
:func:`~.techniques_features.checker_score` (best-window share of high-pass energy explained by a trigger
form's checkerboard polarity; chance = phase-scrambled copies of each render).

Baselines: the class row's input-independent answers (``constant``: the mean triggered image; ``random``:
uniform noise; :func:`~.techniques_features.fv_baselines`) and ``other_units`` (renders of two seeded
non-pathway units of the same hook, scored the same way; :data:`~.bench_report.SPECIFICITY`): the verdict's
bar is the highest of them, since a pattern that every unit's render shows says nothing about which unit
does the work. The interval is a bootstrap over the planted units' renders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Sequence

import numpy as np
import torch

from ..runner import run
from . import data as zdata
from .scores import Score, bootstrap_ratio_interval
from .technique import BenchContext, Technique
from .techniques_features import FV_BUDGET, FV_SETTINGS, checker_score, fv_baselines, image_grid
from .techniques_mechanisms import pathway_data, pathway_support

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel

N_OTHER_UNITS = 2  # non-pathway units rendered as the specificity reference


def other_units(n_units: int, planted: Sequence[int], seed: int, n: int = N_OTHER_UNITS) -> List[int]:
    """``n`` units of the hook outside ``planted``, drawn with ``seed`` (sorted)."""
    pool = np.array([u for u in range(n_units) if u not in set(planted)])
    rng = np.random.default_rng([int(seed), 0x0F7])
    return sorted(int(u) for u in rng.choice(pool, size=min(n, len(pool)), replace=False))


def render_units(
    model: HookedVisionModel, hook: str, units: Sequence[int], steps: int, n_img: int, seed: int
) -> torch.Tensor:
    """``[len(units) * n_img, 3, H, W]`` renders in [0, 1], unit-major (unit ``i`` owns images ``i*n_img..``)."""
    r = run(
        "feature_visualization",
        model,
        None,
        objectives=[f"channel:{hook}:{u}" for u in units],
        steps=steps,
        images_per_objective=n_img,
        seed=seed,
        progress=False,
        **FV_SETTINGS,
    )
    return r.images.detach().float().clamp(0, 1)


def _unit_feature_visualization(model: HookedVisionModel, ctx: BenchContext) -> Score:
    steps, n_img = FV_BUDGET["quick" if ctx.quick else ("control" if ctx.randomized else "full")]
    d = pathway_data(model, ctx, n=8)  # only the hook and units are used: a few pairs suffice
    images = render_units(model, d.hook, d.units, steps, n_img, ctx.seed)
    size = images.shape[-1]
    patterns = zdata.trigger_patterns(size)
    s = checker_score(images, patterns, seed=ctx.seed)
    per = np.asarray(s.details["per_image"]).reshape(len(d.units), n_img)
    null = np.asarray(s.details["chance_per_image"]).reshape(len(d.units), n_img).mean(1)
    s.details.update(
        hook=d.hook,
        units=list(d.units),
        per_unit=[round(float(v), 4) for v in per.mean(1)],
        per_unit_normalized=[round(float((v - c) / (1 - c)), 4) for v, c in zip(per.mean(1), null)],
        steps=steps,
        images_per_unit=n_img,
        scorer="checker_score (phase-scrambled controls)",
        **FV_SETTINGS,
    )
    if not ctx.randomized:
        lo, hi = bootstrap_ratio_interval(s.details["per_image"], s.details.get("chance_per_image"), seed=ctx.seed)
        s.details["interval"] = [round(lo, 4), round(hi, 4)]
        baselines: Dict[str, Dict[str, Any]] = fv_baselines(ctx, n_img, size)
        others = other_units(d.n_units, d.units, ctx.seed)
        n_other = FV_BUDGET["quick" if ctx.quick else "control"][1]
        o_img = render_units(model, d.hook, others, steps, n_other, ctx.seed)
        o = checker_score(o_img, patterns, seed=ctx.seed)
        olo, ohi = bootstrap_ratio_interval(o.details["per_image"], o.details.get("chance_per_image"), seed=ctx.seed)
        baselines["other_units"] = {
            "score": round(o.score, 4),
            "chance": round(o.chance, 4),
            "normalized": round(o.normalized, 4),
            "interval": [round(olo, 4), round(ohi, 4)],
            "units": others,
        }
        s.details["baselines"] = baselines
        rows = [images[i * n_img : (i + 1) * n_img].permute(0, 2, 3, 1).numpy() for i in range(len(d.units))]
        rows += [o_img[i * n_other : (i + 1) * n_other].permute(0, 2, 3, 1).numpy() for i in range(len(others))]
        ctx.save_figure("unit_feature_visualization", image_grid(rows))
    return s


TECHNIQUES = [
    Technique(
        "unit_feature_visualization",
        "feature visualization",
        "Render each planted pathway unit (channel objective at the pathway hook) with the feature_visualization "
        "plugin as Lucid does (FFT, decorrelated colour, transforms scaled to 32 px; 3 x 48 steps quick, 8 x 256 "
        "full per unit) and score the renders' checkerboard pattern like the class row (chance: phase-scrambled "
        "renders); the cell must also beat two other units of the hook rendered the same way.",
        _unit_feature_visualization,
        plugin="feature_visualization",
        kinds=("classifier",),
        extra_supports=pathway_support,
    ),
]
