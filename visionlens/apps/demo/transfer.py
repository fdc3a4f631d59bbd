"""Demo report section: the technique-transfer table on the quick subset (``bench transfer --quick``).

:func:`demo_transfer_section` runs :func:`visionlens.zoo.bench.run_transfer` over every shipped zoo
model (quick budgets, one progress line per cell), writes the full result under ``out_dir/transfer``
(results.json, results.md, index.html with the figures) and returns an HTML fragment: the table, a
headline computed from it (verdicts from :func:`visionlens.zoo.bench_report.verdict`: localization cells
from their bootstrap interval against the constant and random baselines stored in each row, the other
claims from fixed cut-offs, said so), its caveats and two captioned figures.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ...zoo.bench import run_transfer
from ...zoo.bench_report import (
    baseline_bar,
    baselines_text,
    cell_text,
    edge_as_good,
    figure_caption,
    has_interval,
    interval_text,
    verdict,
    verdict_colour,
)
from ...zoo.catalog import available, get_entry
from ...zoo.technique import LOCALIZATION_IMAGES
from ...zoo.techniques_features import EXAMPLES_N, FV_BUDGET
from .progress import Steps

__all__ = ["demo_transfer_section", "transfer_html"]

SHOWN_FIGURES = (("resnet", "feature_visualization"), ("resnet", "activation_patching_swap"))


def _budget(rows: Sequence[Mapping[str, Any]], claim: str, key: str) -> str:
    """What the quick run used (from the rows' details): e.g. the images of a localization batch (the largest)."""
    seen = [r["details"][key] for r in rows if r.get("claim") == claim and key in (r.get("details") or {})]
    return str(max(seen)) if seen else "?"


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
        rows = run_transfer(
            out, families=names, techniques=techniques, quick=True, resume=False, verbose=steps.enabled, workers=None
        )
    return transfer_html(out, rows, time.perf_counter() - t0)


def transfer_html(out: Path, rows: Sequence[Mapping[str, Any]], secs: float) -> str:
    """The demo's HTML fragment for transfer-table ``rows`` (figures read from ``out``), run in ``secs``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    techs = list(dict.fromkeys(r["technique"] for r in rows))
    by = {(r["model"], r["technique"]): r for r in rows}
    e = html.escape

    # each localization row carries its own baselines (same images, same grid) and interval
    loc = [r for r in rows if r.get("claim") == "localization" and r.get("normalized") is not None]
    with_iv = [r for r in loc if has_interval(r)]
    under = {(r["model"], r["technique"]) for r in with_iv if float(r["normalized"]) <= baseline_bar(r)}
    edge = {(r["model"], r["technique"]) for r in with_iv if edge_as_good(r)}
    no_iv = sorted({r["technique"] for r in rows if r.get("normalized") is not None and not has_interval(r)})

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
                mark = "<br><small>&le; a constant map</small>" if (m, t) in under else ""
                iv = f"<br><small>{e(interval_text(cell))}</small>" if has_interval(cell) else ""
                cells.append(
                    f"<td style='background:{verdict_colour(cell)}' title='{e(baselines_text(cell))}'>"
                    f"{e(cell_text(cell))}{iv}{mark}</td>"
                )
        body.append(f"<tr><td>{e(t)}</td>{''.join(cells)}</tr>")
    n_flag = sum(1 for r in rows if r.get("sanity_passed") is False)
    n_scored = sum(1 for r in rows if r.get("normalized") is not None)
    by_const: Dict[str, List[str]] = {}
    for r in sorted(with_iv, key=lambda r: r["technique"]):
        if (r["model"], r["technique"]) in under:
            by_const.setdefault(r["technique"], []).append(r["model"].removeprefix("zoo:"))
    const_vals = [float(r["baselines"]["constant"]["normalized"]) for r in with_iv]
    base_txt = ""
    if with_iv:
        base_txt = (
            "Every localization cell is compared with maps scored on the same images and grid: the best "
            "<i>constant</i> map (fitted on a separate batch: it knows where the truth usually is, not the image), "
            f"uniform noise and an edge detector. The constant map scores {min(const_vals):.2f}&ndash;"
            f"{max(const_vals):.2f} normalized here. <b>{len(under)} of {len(with_iv)}</b> localization cells do no "
            "better than it or than noise (marked &le;)"
            + (
                ": " + "; ".join(f"<code>{e(t)}</code> on {', '.join(ms)}" for t, ms in by_const.items())
                if by_const
                else ""
            )
            + f". On <b>{len(edge)}</b> the edge detector (no model at all) reaches the lower end of the interval "
            "(&asymp;edge)."
        )
    caveats = [
        f"<b>Quick budgets.</b> {len(rows)} cells in {secs:.0f} s: {_budget(rows, 'localization', 'n_images')} images "
        f"per localization batch ({LOCALIZATION_IMAGES['full']} in the full run), "
        f"{_budget(rows, 'feature visualization', 'steps')} feature-visualization steps ({FV_BUDGET['full'][0]}), "
        f"{_budget(rows, 'dataset examples', 'n_images')} held-out images for dataset examples "
        f"({EXAMPLES_N['full']}). Scores move "
        "by ~0.1 between the quick and the full table (<code>docs/transfer.md</code>, made with full budgets); "
        "a localization interval from this few images is wide, so many cells are <i>partial</i> (undecided).",
        "<b>Where the truth usually is must not be learnable without the image.</b> The trigger moves: its "
        "position is drawn per image over every place it fits, in one of two forms that average to the "
        "background grey, so a map that ignores the image cannot find it (CLIP, trained without the trigger, "
        "is scored on a target object against a distractor object, which a fixed map cannot tell apart). "
        f"{base_txt} Objects alone are centre-biased, so the object part of the classifiers' cells (clean "
        "images) is only in each cell's details (<code>object_normalized</code>), next to its own interval.",
        "<b>Verdicts.</b> Localization: <i>transfers</i> when the 95% bootstrap interval over images lies above "
        "chance and above the constant and random maps, <i>breaks</i> when it lies at or below one of them, "
        "<i>partial</i> when it straddles them. "
        + (
            f"{', '.join(f'<code>{e(t)}</code>' for t in no_iv)} have <b>no interval yet</b>: their verdicts still "
            "come from fixed cut-offs (&ge; 0.5 transfers, &ge; 0.2 partial)."
            if no_iv
            else ""
        )
        + " The ViT's <code>dla_heatmap</code> is an approximation (the heads' direct contributions split over the "
        "patches they attend to); its coverage of logit &minus; bias is in the row's details.",
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
        f"{e('⚠')} = the score did not drop on random weights; &asymp;edge = an edge detector does as well; "
        "— = not supported. Green: transfers, orange: fails the sanity check, yellow: partial, red: breaks "
        "(localization: from the interval against the baselines; see the caveats). "
        "<a href='transfer/index.html'>Full table with every figure</a>.</p>"
        f"<table><tr><th>technique</th>{head}</tr>{''.join(body)}</table>"
        f"<h3>Headline</h3><p>{_summary(rows)}</p><ul>" + "".join(_headline(rows)) + "</ul>"
        "<h3>Caveats: read these before the headline</h3><ul>"
        + "".join(f"<li>{c}</li>" for c in caveats)
        + "</ul>"
        + "".join(_figure(out, rows, m, t) for m, t in SHOWN_FIGURES)
    )
