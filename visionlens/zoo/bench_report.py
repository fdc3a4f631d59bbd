"""Write the transfer table: ``results.md`` (technique x family) and a self-contained ``index.html``.

Cells show the normalized score ``(score - chance) / (1 - chance)`` (0 = chance, 1 = the planted
truth recovered), the raw score, and a flag where the randomized-model sanity check failed
(the score did not drop on random weights). Unsupported pairs show the reason. Localization cells
also carry a 95% bootstrap interval over images and three baselines on the same images and grid
(``constant``, ``random``, ``edge``: :mod:`visionlens.zoo.baselines`); unit and causal-scrubbing cells an
interval and a weight-only (``constant``) and a random baseline; feature visualization, dataset examples and
style neurons an interval and their own input-independent answers (see docs/transfer.md). The :func:`verdict`
comes from the interval; a third-party row without one falls back to fixed cut-offs, said so.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

FLAG = "⚠"  # sanity check failed
EDGE = "≈edge"  # the edge-detector baseline does as well as the technique (localization cells)

# What each technique's figure shows, by figure label (else by the row's claim). Shared with the demo.
FIGURE_CAPTIONS = {
    "cascade": "Cascading randomization (Adebayo et al. 2018): the technique's normalized score on the trained "
    "model, then with its weights replaced by random ones from the head down to the unit on the axis. A score "
    "that survives randomizing the layers it reads is explained by the architecture and the input, not by what "
    "the model learned.",
    "localization": "Top row: held-out images (titled <i>trigger</i> when the planted trigger is pasted in, "
    "<i>clean</i> without it; CLIP: <i>target + distractor</i>, two objects of which the outlined one is the class "
    "asked). Bottom row: the technique's heatmap for the target class at its own resolution; the cyan outline is "
    "the planted truth (the trigger on triggered images, the object on clean ones, the target on CLIP's). Score: "
    "the fraction of positive heat inside the outline, the map read as a pixel map (CLIP: of the heat on the two "
    "objects).",
    "feature_visualization": "First images: the planted truth, the trigger in its two forms (1 px checkerboards, grey "
    "and magenta-green, averaging to the background) on the background. The others: renders from noise that "
    "maximise the trigger class's logit as the field renders them (FFT parameterization, decorrelated colour, "
    "Lucid's transforms scaled to 32 px). Score: the best 8 x 8 window's share of zero-mean per-channel energy "
    "explained by the checkerboard "
    "pattern, in any colour (chance: the same statistic on phase-scrambled copies of each render), so a colour-only "
    "render cannot pass; a render that recovers the trigger shows a checkerboard patch, wherever it is.",
    "unit_feature_visualization": "One row per unit of the pathway hook, rendered from noise to maximise its mean "
    "activation as the field renders (FFT parameterization, decorrelated colour, Lucid's transforms scaled to 32 px): "
    "first the planted pathway units (8 renders each), then two other units of the same hook (4 renders each, the "
    "specificity reference). Score: the class row's checkerboard statistic on the planted units' renders; the cell "
    "must beat the other units' renders too.",
    "dataset_examples": "One row per unit (the 6 units of the last block whose top examples are purest): its top "
    "held-out images, best first. Score: how often a unit's top-16 images share the label-relevant factor (shape "
    "and texture; Fashion-MNIST: the class; CLIP: shape, colour, texture), against random top-k sets.",
    "causal_scrubbing": "Loss recovered (KL to the model) on triggered images when the units of a hypothesis keep "
    "their values and every other unit of the pathway hook takes its value on the trigger-free twin: the planted "
    "pair (green), each half of it (orange), wrong pairs (grey). 1 = the hypothesis explains the model's output, "
    "0 = as bad as taking every unit from the twin.",
    "style_neuron_search": "Top row: samples for styled prompts; bottom row: the same seeds with the 32 top-ranked "
    "units ablated to their unstyled values at every sampling step. Score: how much of the style the judge stops "
    "seeing, against 32 random units.",
}


def figure_caption(label: str, row: Mapping[str, Any]) -> str:
    """The caption (HTML) of a row's figure ``label``: :data:`FIGURE_CAPTIONS` by label, then by claim."""
    if label.startswith("cascade_"):
        return FIGURE_CAPTIONS["cascade"]
    return FIGURE_CAPTIONS.get(label) or FIGURE_CAPTIONS.get(str(row.get("claim") or ""), "")


def _families(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    return list(dict.fromkeys(r["model"] for r in rows))


def _techniques(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    return list(dict.fromkeys(r["technique"] for r in rows))


def cell_text(r: Mapping[str, Any]) -> str:
    """``0.82`` = normalized, ``⚠`` when it failed the sanity check, ``≈edge`` when the edge detector does as
    well (:func:`edge_as_good`); ``—`` unsupported; ``error`` when it crashed."""
    if not r.get("supported"):
        return "—"
    if r.get("score") is None:
        return "error"
    txt = f"{r['normalized']:.2f}"
    if r.get("sanity_passed") is False:
        txt += " " + FLAG
    if has_interval(r) and edge_as_good(r):
        txt += " " + EDGE
    return txt


INPUT_INDEPENDENT = ("constant", "random")  # baselines a cell must beat to transfer (answers that ignore the input)
STANDARD_METHODS = ("pca",)  # the standard method a new one must beat too, where a row has it (dictionary row)
SPECIFICITY = ("other_units",)  # a unit-level row must show more than the same method on other units


def has_interval(r: Mapping[str, Any]) -> bool:
    """Whether a row carries a bootstrap ``interval``, a ``random`` baseline and a ``constant`` one or a
    standard method (``pca``) to be compared with."""
    iv = r.get("interval") or []
    bl = r.get("baselines") or {}
    return len(iv) == 2 and "random" in bl and any(k in bl for k in ("constant", *STANDARD_METHODS))


def baseline_bar(r: Mapping[str, Any]) -> float:
    """What a cell's interval is compared with: max(0 = chance, the normalized point estimates of the
    ``constant`` and ``random`` baselines, of a standard method (``pca``) and of the same method on
    non-planted units (``other_units``) where the row has them)."""
    bl = r.get("baselines") or {}
    keys = (*INPUT_INDEPENDENT, *STANDARD_METHODS, *SPECIFICITY)
    return max([0.0] + [float(bl[k]["normalized"]) for k in keys if k in bl])


def edge_as_good(r: Mapping[str, Any]) -> bool:
    """The edge-detector baseline does as well: its normalized point estimate reaches the lower end of the
    technique's interval (the technique is not shown to beat an image filter that ignores the model)."""
    e = (r.get("baselines") or {}).get("edge")
    iv = r.get("interval") or []
    if e is None or len(iv) != 2:
        return False
    return float(e["normalized"]) >= float(iv[0])


def verdict(r: Mapping[str, Any]) -> str:
    """A cell's verdict: ``transfers``, ``ties baseline``, ``partial``, ``breaks``, ``fails sanity`` or ``n/a``.

    Rows with an interval: with ``bar`` = :func:`baseline_bar` (max of 0, the ``constant`` and ``random``
    baselines' normalized scores, and ``pca`` / ``other_units`` where a row has them), ``transfers`` when
    the interval's lower end is above ``bar`` (above chance *and* above every input-independent answer),
    ``breaks`` when its upper end is at or below ``bar`` (no better
    than chance or than a map that ignores the image), ``partial`` otherwise (the interval straddles
    ``bar``: undecided on these images), and ``ties baseline`` when the whole interval sits *at* ``bar``
    (e.g. a perfect unit ranking ``[1, 1]`` where a weight-only ranking is perfect too: not shown to beat
    the baseline, not beaten by it). No fixed cut-off. The edge baseline does not enter the verdict
    (:func:`edge_as_good` marks the cell instead).

    Rows without an interval (the other claims, for now): the fixed cut-offs ``transfers`` (normalized
    >= 0.5), ``partial`` (>= 0.2), ``breaks`` (below).

    Either way, a row that is not ``breaks`` but failed the randomized-weights sanity check is
    ``fails sanity``.
    """
    if not r.get("supported") or r.get("score") is None:
        return "n/a"
    if has_interval(r):
        lo, hi = (float(v) for v in r["interval"])
        bar = baseline_bar(r)
        v = "transfers" if lo > bar else ("ties baseline" if lo >= bar else ("breaks" if hi <= bar else "partial"))
    else:
        n = r["normalized"]
        v = "transfers" if n >= 0.5 else ("partial" if n >= 0.2 else "breaks")
    if r.get("sanity_passed") is False and v != "breaks":
        return "fails sanity"
    return v


def interval_text(r: Mapping[str, Any]) -> str:
    """``[0.41, 0.93]``, or ``no interval yet`` for a scored row without one."""
    iv = r.get("interval")
    if iv and len(iv) == 2:
        return f"[{float(iv[0]):.2f}, {float(iv[1]):.2f}]"
    return "no interval yet"


def baselines_text(r: Mapping[str, Any]) -> str:
    """``const 0.62, rnd 0.01, edge 0.20`` (normalized point estimates), empty without baselines."""
    bl = r.get("baselines") or {}
    short = {"constant": "const", "random": "rnd", "edge": "edge"}
    return ", ".join(f"{short.get(k, k)} {float(v['normalized']):.2f}" for k, v in bl.items())


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    models = _families(rows)
    techs = _techniques(rows)
    by = {(r["model"], r["technique"]): r for r in rows}
    fam = {r["model"]: r["family"] for r in rows}
    head = "| technique | claim | " + " | ".join(f"{m.removeprefix('zoo:')} ({fam[m]})" for m in models) + " |"
    lines = [head, "|" + "---|" * (len(models) + 2)]
    for t in techs:
        claim = next((r["claim"] for r in rows if r["technique"] == t), "")
        cells = [cell_text(by[(m, t)]) if (m, t) in by else "" for m in models]
        lines.append(f"| {t} | {claim} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, List[str]]]:
    """``{technique: {verdict: [families]}}``; a row that scores another model than its column's (its
    ``details.scored_model``, e.g. ``handcoded_curve_circuit`` in the inception column scores ``zoo:curve``)
    is named ``"inception (scored on zoo:curve)"``."""
    out: Dict[str, Dict[str, List[str]]] = {}
    for r in rows:
        v = verdict(r)
        if v == "n/a":
            continue
        name = r["model"].removeprefix("zoo:")
        scored = str((r.get("details") or {}).get("scored_model") or "").split(" ")[0]
        if scored and scored != r["model"]:
            name += f" (scored on {scored})"
        out.setdefault(r["technique"], {}).setdefault(v, []).append(name)
    return out


VERDICT_SHORT = {"transfers": "T", "ties baseline": "=", "partial": "p", "breaks": "B", "fails sanity": "S"}


def seed_table(runs: Mapping[int, Sequence[Mapping[str, Any]]]) -> str:
    """Markdown: one cell per (technique, model) with each training seed's verdict (``T`` transfers, ``=`` ties
    baseline, ``p`` partial, ``B`` breaks, ``S`` fails sanity, ``·`` not scored) and the normalized scores'
    range over the seeds. ``runs``: ``{model seed: rows}`` (the rows of one ``results.json`` per seed). A
    verdict that holds on every seed is what the table can claim; a split one is seed-dependent."""
    seeds = sorted(runs)
    cells: Dict[Tuple[str, str], Dict[int, Mapping[str, Any]]] = {}
    techs: List[str] = []
    models: List[str] = []
    for sd in seeds:
        for r in runs[sd]:
            if verdict(r) == "n/a":
                continue
            key = (r["technique"], r["model"])
            cells.setdefault(key, {})[sd] = r
            if r["technique"] not in techs:
                techs.append(r["technique"])
            if r["model"] not in models:
                models.append(r["model"])
    head = "| technique | " + " | ".join(m.removeprefix("zoo:") for m in models) + " |"
    lines = [head, "|---|" + "---|" * len(models)]
    for t in techs:
        row = []
        for m in models:
            c = cells.get((t, m), {})
            if not c:
                row.append("—")
                continue
            vs = "".join(VERDICT_SHORT.get(verdict(c[sd]), "?") if sd in c else "·" for sd in seeds)
            vals = [float(c[sd]["normalized"]) for sd in seeds if sd in c]
            rng = f"{min(vals):.2f}" if len(vals) == 1 else f"{min(vals):.2f}–{max(vals):.2f}"
            row.append(f"{vs} {rng}")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def run_history(payload: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The runs that wrote a ``results.json`` payload, oldest first: its ``runs`` list, or for files written
    before the history existed, the one ``command`` / ``run`` record they kept (empty when neither is there)."""
    if isinstance(payload.get("runs"), list):
        return [dict(r) for r in payload["runs"]]
    if payload.get("command") or payload.get("run"):
        return [{"command": payload.get("command"), **dict(payload.get("run") or {})}]
    return []


def cascade_text(r: Mapping[str, Any]) -> str:
    """``0.65 → 0.41 (layer3.0) → 0.08 (conv1)``: the cascading-randomization curve of a row (normalized score
    on the trained model, then with the weights randomized from the head down to the named unit), or ``""``."""
    pts = [p for p in (r.get("cascade") or []) if p.get("normalized") is not None]
    if len(pts) < 2:
        return ""
    out = [f"{float(pts[0]['normalized']):.2f}"]
    out += [f"{float(p['normalized']):.2f} ({p.get('randomized_from')})" for p in pts[1:]]
    return " → ".join(out)


def cascade_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown: every row with a cascading-randomization curve, one line each (empty when none has one)."""
    lines = [
        f"| {r['model'].removeprefix('zoo:')} | {r['technique']} | {cascade_text(r)} |" for r in rows if cascade_text(r)
    ]
    if not lines:
        return ""
    return "\n".join(
        ["| model | technique | trained → randomized from the head down to ... |", "|---|---|---|", *lines]
    )


def write_markdown(out: Path, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], command: str) -> str:
    lines = [
        "# Technique transfer: every technique on every zoo family",
        "",
        f"Command: `{command}` (settings: {dict(settings)})",
        "",
        "Cells: normalized score, 0 = chance, 1 = the planted truth recovered; "
        f"{FLAG} = the score did not drop on a randomly initialised copy (Adebayo et al. sanity check); "
        f"{EDGE} = an edge detector on the image (Sobel magnitude, no model) scores at least the lower end of "
        "the cell's interval; — = not supported (reason below).",
        "",
        markdown_table(rows),
        "",
        "## Verdicts",
        "",
        "Every cell: a 95% bootstrap interval (1000 resamples over images; feature visualization: over renders; "
        "dataset examples: over units; style: over samples) of the normalized score, compared with the "
        "normalized scores of two input-independent answers: `constant` (localization: the best fixed map, "
        "fitted on a separate batch; units: the ranking by readout-weight norm; feature visualization: the "
        "data's mean image; dataset examples: the same images for every unit; style: the first units searched) "
        "and `random` (and `pca`, the standard method, on the dictionary row). "
        "**transfers**: the interval's lower end is above "
        "chance and above both; **ties baseline**: the whole interval sits at that bar; **breaks**: its upper "
        "end is not above it; **partial**: the interval straddles it (undecided on these images). "
        f"The edge-detector baseline is reported, not part of the verdict ({EDGE}). "
        "A row without an interval (a third-party technique that gives none) falls back to fixed cut-offs "
        "(transfers >= 0.5, partial >= 0.2). "
        "Either way, a cell above *breaks* that fails the sanity check is **fails sanity**.",
        "",
        "## Headline",
        "",
    ]
    for t, verdicts in headline(rows).items():
        parts = [f"**{v}**: {', '.join(fams)}" for v, fams in verdicts.items()]
        lines.append(f"- `{t}`: " + "; ".join(parts))
    lines += [
        "",
        "## All rows",
        "",
        "| model | technique | score | chance | normalized | 95% interval | baselines (normalized) | verdict "
        "| random-weights score | sanity | seconds | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.get("supported") or r.get("score") is None:
            lines.append(
                f"| {r['model']} | {r['technique']} | | | | | | | | | {r.get('seconds') or ''} | "
                f"{(r.get('reason') or '').replace('|', '/')} |"
            )
            continue
        lines.append(
            f"| {r['model']} | {r['technique']} | {r['score']:.3f} | {r['chance']:.3f} | "
            f"{r['normalized']:.3f} | {interval_text(r)} | {baselines_text(r)} | {verdict(r)} | "
            f"{_fmt(r.get('sanity_score'))} | "
            f"{'' if r.get('sanity_passed') is None else ('pass' if r['sanity_passed'] else 'FAIL')} | "
            f"{r['seconds']} | {_note(r)} |"
        )
    casc = cascade_table(rows)
    if casc:
        lines += ["", "## Cascading randomization (Adebayo et al. 2018)", "", casc]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}"


def _note(r: Mapping[str, Any]) -> str:
    """Notes of a scored row: the edge baseline doing as well; the DLA map being an approximation and its coverage."""
    d = r.get("details") or {}
    notes = []
    if has_interval(r) and edge_as_good(r):
        notes.append("edge detector does as well")
    if d.get("approximation"):
        notes.append("approximation: " + str(d["approximation"]))
    if d.get("coverage") is not None:
        notes.append(f"coverage of logit - bias {float(d['coverage']):.2f} (median over images)")
    return "; ".join(notes).replace("|", "/")


def _img(out: Path, rel: str) -> str:
    p = out / rel
    if not p.is_file():
        return ""
    b64 = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(rel)}" src="data:image/png;base64,{b64}">'


def verdict_colour(r: Mapping[str, Any]) -> str:
    """The cell background of a row's :func:`verdict` (green transfers, yellow partial, red breaks, ...)."""
    v = verdict(r)
    return {
        "transfers": "#c8efc8",
        "ties baseline": "#dfe8f6",
        "partial": "#fbeeb8",
        "breaks": "#f6c6c6",
        "fails sanity": "#f3d1a8",
    }.get(v, "#eeeeee")


def write_html(out: Path, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], command: str) -> None:
    models = _families(rows)
    techs = _techniques(rows)
    by = {(r["model"], r["technique"]): r for r in rows}
    fam = {r["model"]: r["family"] for r in rows}
    h = [
        "<!doctype html><html><head><meta charset='utf-8'><title>visionlens technique transfer</title><style>",
        "body{font-family:sans-serif;margin:1.5em;max-width:1400px} table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:4px 8px;font-size:13px;text-align:center}"
        "td.t{text-align:left} .s{color:#555;font-size:11px} img{max-width:420px;display:block;margin:6px 0}"
        "details{margin:4px 0} a{color:#225} figure{margin:6px 0;max-width:640px} figcaption{text-align:left}",
        "</style></head><body><h1>Technique transfer across image-model families</h1>",
        f"<p>Command: <code>{html.escape(command)}</code>. Cell: normalized score (0 = chance, 1 = planted truth "
        f"recovered), raw score / chance and the random-weights normalized score below, {FLAG} = did not drop on "
        "random weights; localization cells also show the 95% bootstrap interval over images and the baselines "
        "on the same images and grid (const: the best fixed map, fitted on another batch; rnd: uniform noise; "
        f"edge: Sobel magnitude of the image), {EDGE} = the edge detector does as well. Green: transfers "
        "(the interval's lower end above chance and above the constant and random baselines; a row without an "
        "interval: &ge; 0.5), blue: ties a baseline, orange: fails the sanity check, yellow: partial "
        "(the interval straddles them; without an interval: &ge; 0.2), red: breaks, grey: not supported.</p>",
        "<table><tr><th>technique</th>"
        + "".join(
            f"<th>{html.escape(m.removeprefix('zoo:'))}<br><span class=s>{html.escape(fam[m])}</span></th>"
            for m in models
        )
        + "</tr>",
    ]
    for t in techs:
        h.append(f"<tr><td class=t><b>{html.escape(t)}</b></td>")
        for m in models:
            r = by.get((m, t))
            if r is None:
                h.append("<td></td>")
                continue
            if not r.get("supported") or r.get("score") is None:
                h.append(
                    f"<td style='background:#eee' title='{html.escape(r.get('reason') or '')}'>"
                    f"{cell_text(r)}<br><span class=s>{html.escape((r.get('reason') or '')[:60])}</span></td>"
                )
                continue
            anchor = f"{m.removeprefix('zoo:')}__{t}"
            extra = (  # numbers and fixed words only: nothing to escape
                f"<br>{interval_text(r)}<br>{baselines_text(r)}" if has_interval(r) else "<br>no interval yet"
            )
            h.append(
                f"<td style='background:{verdict_colour(r)}'><a href='#{html.escape(anchor)}'>{cell_text(r)}</a>"
                f"<br><span class=s>{r['score']:.2f} / {r['chance']:.2f}; rnd weights "
                f"{_fmt(r.get('sanity_normalized'))}{extra}"
                f"</span></td>"
            )
        h.append("</tr>")
    h.append("</table><h2>Figures and details</h2>")
    for r in rows:
        if not r.get("supported") or r.get("score") is None:
            continue
        anchor = f"{r['model'].removeprefix('zoo:')}__{r['technique']}"
        imgs = "".join(
            f"<figure>{_img(out, rel)}<figcaption class=s>{figure_caption(label, r)}</figcaption></figure>"
            for label, rel in (r.get("figures") or {}).items()
            if (out / rel).is_file()
        )
        det = html.escape(
            ", ".join(f"{k}={v}" for k, v in (r.get("details") or {}).items() if not isinstance(v, (list, dict)))[:600]
        )
        note = html.escape(_note(r))
        h.append(
            f"<details id='{html.escape(anchor)}'><summary>{html.escape(r['model'])} &times; "
            f"{html.escape(r['technique'])}: {cell_text(r)} {interval_text(r)} ({verdict(r)}, {r['seconds']} s)"
            f"</summary><p class=s>{html.escape(baselines_text(r))}{'; ' if note and r.get('baselines') else ''}"
            f"{note}</p><p class=s>{det}</p>{imgs}</details>"
        )
    h.append("</body></html>")
    (out / "index.html").write_text("\n".join(h))


def write_report(out: Path, rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any], command: str) -> None:
    write_markdown(out, rows, settings, command)
    write_html(out, rows, settings, command)
