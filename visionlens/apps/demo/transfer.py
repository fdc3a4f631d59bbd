"""Demo report section: the technique-transfer table on the quick subset (``bench transfer --quick``).

:func:`demo_transfer_section` runs :func:`visionlens.zoo.bench.run_transfer` over every shipped zoo
model (quick budgets, one progress line per cell), writes the full result under ``out_dir/transfer``
(results.json, results.md, index.html with the figures) and returns an HTML fragment: the table, a
headline computed from it, its caveats (with a baseline computed here: how well a constant map that
always points at the trigger's corner scores) and two captioned figures.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ...zoo.bench import run_transfer
from ...zoo.bench_report import cell_text, figure_caption, verdict, verdict_colour
from ...zoo.catalog import available, get_entry
from ...zoo.scores import planted_localization
from ...zoo.technique import LOCALIZATION_IMAGES, BenchContext
from ...zoo.techniques_features import EXAMPLES_N, FV_BUDGET
from ...zoo.techniques_localization import localization_batch, to_grid
from .progress import Steps

__all__ = ["demo_transfer_section", "constant_corner_baseline", "transfer_html"]

SHOWN_FIGURES = (("resnet", "feature_visualization"), ("resnet", "activation_patching_swap"))


def _budget(rows: Sequence[Dict[str, Any]], claim: str, key: str) -> str:
    """What the quick run used (from the rows' details): e.g. the images of a localization batch (the largest)."""
    seen = [r["details"][key] for r in rows if r.get("claim") == claim and key in (r.get("details") or {})]
    return str(max(seen)) if seen else "?"


def constant_corner_baseline(entry_name: str, grid: str, seed: int = 0) -> Optional[float]:
    """Normalized localization score of a map that ignores model and image: all its mass on the cells of
    the (fixed) trigger corner, on the ``"HxW"`` grid, scored like the benchmark's localization cells."""
    try:
        h, w = (int(v) for v in grid.split("x"))
        b = localization_batch(BenchContext(entry=get_entry(entry_name), quick=True, seed=seed))
    except (ValueError, KeyError, TypeError):
        return None
    tmask = to_grid(b["trigger_mask"], h, w)
    omask = to_grid(b["object_mask"], h, w)
    trig = np.asarray(b["triggered"], bool)
    if not trig.any():
        return None
    corner = tmask[trig][0].astype(np.float64)
    heat = np.broadcast_to(corner, tmask.shape)
    res = planted_localization(heat, tmask, omask, trig, method="mass")
    score = float(np.mean([s.score for s in res.values()]))
    chance = float(np.mean([s.chance for s in res.values()]))
    return (score - chance) / (1 - chance) if chance < 1 else None


def _summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """One computed sentence: which techniques transfer everywhere they apply, which families carry most."""
    techs: Dict[str, List[int]] = {}
    fams: Dict[str, List[int]] = {}
    for r in rows:
        v = verdict(r)
        if v == "n/a":
            continue
        ok = int(v == "transfers")
        techs.setdefault(r["technique"], []).append(ok)
        fams.setdefault(r["model"].removeprefix("zoo:"), []).append(ok)
    everywhere = [t for t, v in techs.items() if len(v) > 1 and all(v)]
    rate = {f: sum(v) / len(v) for f, v in fams.items() if len(v) > 2}
    if not rate:
        return ""
    best = max(rate, key=lambda f: rate[f])
    worst = min(rate, key=lambda f: rate[f])
    return (
        (f"Transfers on every family it applies to: {', '.join(everywhere)}. " if everywhere else "")
        + f"Most techniques transfer on <b>{best}</b> ({sum(fams[best])} of {len(fams[best])}), fewest on "
        f"<b>{worst}</b> ({sum(fams[worst])} of {len(fams[worst])}): that a technique works on one "
        "architecture is no evidence that it works on the next."
    )


def _headline(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    per: Dict[str, Dict[str, List[str]]] = {}
    for r in rows:
        v = verdict(r)
        if v != "n/a":
            per.setdefault(r["technique"], {}).setdefault(v, []).append(r["model"].removeprefix("zoo:"))
    lines = []
    for t, d in sorted(per.items(), key=lambda it: -len(it[1].get("transfers", [])) / sum(map(len, it[1].values()))):
        n = sum(len(v) for v in d.values())
        good = d.get("transfers", [])
        parts = [
            f"<b>transfers on {len(good)} of {n}</b>" + (f" ({', '.join(good)})" if good and len(good) < n else "")
        ]
        for v in ("fails sanity", "partial", "breaks"):
            if d.get(v):
                parts.append(f"{v}: {', '.join(d[v])}")
        lines.append(f"<li><code>{html.escape(t)}</code>: " + "; ".join(parts) + "</li>")
    return lines


def _figure(out: Path, rows: Sequence[Mapping[str, Any]], model: str, technique: str) -> str:
    r = next((r for r in rows if r["model"] == f"zoo:{model}" and r["technique"] == technique), None)
    if r is None or not r.get("figures"):
        return ""
    label, rel = next(iter(r["figures"].items()))
    p = out / rel
    if not p.is_file():
        return ""
    b64 = base64.b64encode(p.read_bytes()).decode("ascii")
    score = cell_text(r)
    return (
        f"<figure><img alt='{html.escape(rel)}' style='max-width:560px' src='data:image/png;base64,{b64}'>"
        f"<figcaption><b>zoo:{html.escape(model)} &times; {html.escape(technique)}</b> (normalized {score}, "
        f"{verdict(r)}). {figure_caption(label, r)}</figcaption></figure>"
    )


def demo_transfer_section(
    out_dir: Union[str, Path],
    steps: Optional[Steps] = None,
    families: Optional[Sequence[str]] = None,
    techniques: Optional[Sequence[str]] = None,
) -> str:
    """Run the quick transfer table and return an HTML fragment for the demo page.

    ``families`` / ``techniques`` restrict the table (default: every trained zoo model, every technique).
    """
    out = Path(out_dir) / "transfer"
    steps = steps or Steps(enabled=False)
    names = [n for n in available() if get_entry(n).benchmark and (families is None or n in families)]
    if not names:
        return "<h2>Technique transfer</h2><p class='warn'>No trained zoo models in this install.</p>"
    t0 = time.perf_counter()
    with steps(f"technique transfer table (quick), {len(names)} zoo models"):
        rows = run_transfer(out, families=names, techniques=techniques, quick=True, resume=False, verbose=steps.enabled)
    return transfer_html(out, rows, time.perf_counter() - t0)


def transfer_html(out: Path, rows: Sequence[Mapping[str, Any]], secs: float) -> str:
    """The demo's HTML fragment for transfer-table ``rows`` (figures read from ``out``), run in ``secs``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    techs = list(dict.fromkeys(r["technique"] for r in rows))
    by = {(r["model"], r["technique"]): r for r in rows}
    e = html.escape

    # the constant-corner baseline for every (model, grid) of the localization cells
    baseline: Dict[tuple, Optional[float]] = {}
    below: Dict[str, List[str]] = {}  # technique -> models whose cell is at or under the constant map
    under = set()
    compared = 0
    for r in rows:
        grid = (r.get("details") or {}).get("grid")
        if r.get("claim") != "localization" or not grid or r.get("normalized") is None or r["family"] == "clip":
            continue
        key = (r["model"].removeprefix("zoo:"), grid)
        if key not in baseline:
            baseline[key] = constant_corner_baseline(key[0], grid)
        b = baseline[key]
        compared += b is not None
        if b is not None and r["normalized"] <= b:
            below.setdefault(r["technique"], []).append(key[0])
            under.add((r["model"], r["technique"]))
    by_grid: Dict[str, List[float]] = {}
    for (_, grid), v in baseline.items():
        if v is not None:
            by_grid.setdefault(grid, []).append(v)

    head = "".join(f"<th>{e(m.removeprefix('zoo:'))}</th>" for m in models)
    body = []
    for t in techs:
        cells = []
        for m in models:
            cell = by.get((m, t))
            if cell is None:
                cells.append("<td></td>")
            elif not cell.get("supported") or cell.get("score") is None:
                cells.append(
                    f"<td style='background:#eee' title='{e(cell.get('reason') or '')}'>{cell_text(cell)}</td>"
                )
            else:
                mark = "<br><small>&le; constant map</small>" if (m, t) in under else ""
                cells.append(f"<td style='background:{verdict_colour(cell)}'>{e(cell_text(cell))}{mark}</td>")
        body.append(f"<tr><td>{e(t)}</td>{''.join(cells)}</tr>")
    n_flag = sum(1 for r in rows if r.get("sanity_passed") is False)
    n_scored = sum(1 for r in rows if r.get("normalized") is not None)
    n_under = sum(len(v) for v in below.values())
    fake = [f"{t} on {m}" for t, ms in below.items() for m in ms if verdict(by[(f"zoo:{m}", t)]) == "transfers"]
    base_txt = ""
    if by_grid:
        grids = sorted(by_grid, key=lambda g: int(g.split("x")[0]))
        per_grid = ", ".join(
            f"{g}: {min(by_grid[g]):.2f}"
            + (f"&ndash;{max(by_grid[g]):.2f}" if max(by_grid[g]) - min(by_grid[g]) >= 0.005 else "")
            for g in grids
        )
        base_txt = (
            "A map that ignores the model and the image and puts all its mass on the trigger's corner scores, "
            f"normalized and by heatmap grid, <b>{per_grid}</b>: close to the 0.5 line that counts as "
            "<i>transfers</i>, and above it on the coarsest grids (one cell of a 2 &times; 2 map holds the trigger "
            f"and often part of the object). <b>{n_under} of {compared}</b> localization cells do no better than that "
            "constant map (marked &le; in the table): "
            + "; ".join(f"<code>{e(t)}</code> on {', '.join(ms)}" for t, ms in below.items())
            + "."
            + (f" That includes {len(fake)} <i>transfers</i> verdict(s): {', '.join(fake)}." if fake else "")
        )
    caveats = [
        f"<b>Quick budgets.</b> {len(rows)} cells in {secs:.0f} s: {_budget(rows, 'localization', 'n_images')} images "
        f"per localization batch ({LOCALIZATION_IMAGES['full']} in the full run), "
        f"{_budget(rows, 'feature visualization', 'steps')} feature-visualization steps ({FV_BUDGET['full'][0]}), "
        f"{_budget(rows, 'dataset examples', 'n_images')} held-out images for dataset examples "
        f"({EXAMPLES_N['full']}). Scores move "
        "by ~0.1 between the quick and the full table (<code>docs/transfer.md</code>, made with full budgets); "
        "read verdicts near a threshold as undecided.",
        "<b>The trigger is always in the same place</b> (one pixel in from the bottom-right corner), so on triggered "
        f"images a constant map is a strong localizer. {base_txt} The object half of the score (clean images) is "
        "where a map has to look at the image; it is in each cell's details (<code>object_mass</code>).",
        f"<b>Randomization (the {e('⚠')} flag).</b> Each score is recomputed on one seeded random initialization of "
        f"the same architecture; {n_flag} of {n_scored} cells score at least half as much there, so their output "
        "is not explained by what the model learned. Minimal-pair patching (<code>activation_patching</code>, "
        "<code>attribution_patching</code>: the corrupted image differs only at the trigger or the object) localizes "
        "where the two inputs differ, which any network does; a cell that passes means the random copy happened "
        "to be flat, so compare <code>activation_patching_swap</code> (different images as pairs). Passing is "
        "necessary, not sufficient: one random seed, one threshold (half the trained score).",
        "<b>One trained model per family, one seed.</b> Differences of a few points between families are within "
        "seed noise (not measured).",
    ]
    return (
        "<h2>Technique transfer: which techniques survive a change of architecture? (quick subset)</h2>"
        "<p>Every technique on every family of the planted-truth zoo (small models trained here, with a known "
        "answer: a trigger patch that forces class 0, objects whose shape decides the label), scored against that "
        "answer. Cells: normalized score, 0 = chance, 1 = the planted truth recovered; "
        f"{e('⚠')} = the score did not drop on random weights; — = not supported. Green: transfers (&ge; 0.5 and "
        "passes the sanity check), orange: fails the sanity check, yellow: partial (&ge; 0.2), red: breaks. "
        "<a href='transfer/index.html'>Full table with every figure</a>.</p>"
        f"<table><tr><th>technique</th>{head}</tr>{''.join(body)}</table>"
        f"<h3>Headline</h3><p>{_summary(rows)}</p><ul>" + "".join(_headline(rows)) + "</ul>"
        "<h3>Caveats: read these before the headline</h3><ul>"
        + "".join(f"<li>{c}</li>" for c in caveats)
        + "</ul>"
        + "".join(_figure(out, rows, m, t) for m, t in SHOWN_FIGURES)
    )
