"""The demo report's CLIP section: the zoo CLIP's ResNet tower read through four analyses.

:func:`clip_section` (``out`` directory -> ``(html_fragment, png_paths)``, about 10 s on one core)
runs on the zoo CLIP and held-out planted images:

* ``attnpool_dla`` -- exact per-head contributions of the attention pool to shape logits (with the
  largest sum error, which is rounding);
* ``max_activating_text`` -- the best strings found by the gradient-guided discrete search for a few
  last-layer units of both towers (300 forwards each);
* ``head_roles`` -- accuracy per factor with one head ablated / kept alone;
* ``construction`` -- expanded-weight sparsity between the last two stages and held-out R^2 of sparse
  explanations of the first 64 last-stage units
  against baselines;
* ``multimodal_neurons`` -- on ``zoo:clip_glyph`` (trained with written shape names): the top unit per
  shape by joint response to images, written words and captions (the planted multimodal units), and the
  typographic attack against its controls (about 3 s).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import torch

from ...results import figure_to_png
from ...runner import run
from ...zoo import catalog
from ...zoo.clip_glyph_model import MODE_NONE, held_out_glyph_batch, planted_units
from ...zoo.clip_model import FACTOR_CLASSES, held_out_batch

__all__ = ["clip_section"]


def _png(result: Any, out: Path, name: str) -> Path:
    path = out / f"clip_{name}.png"
    path.write_bytes(figure_to_png(result.plot()))
    return path


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:.3f}"
        elif isinstance(v, list):
            v = ", ".join(str(x) for x in v)
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _multimodal(out: Path, pngs: list[Path]) -> str:
    """``multimodal_neurons`` on ``zoo:clip_glyph``: top unit per shape and the typographic attack."""
    model = catalog.load("clip_glyph")
    images, f = held_out_glyph_batch(90, mode=MODE_NONE)
    shapes = list(FACTOR_CLASSES["shape"])
    r = run(
        "multimodal_neurons",
        model,
        images,
        concepts=shapes,
        labels=f["shape"].tolist(),
        n_text_images=16,
        attack_units=1,
        top=1,
    )
    pngs.append(_png(r, out, "multimodal_neurons"))
    planted = planted_units(0)["multimodal"]
    cols = ["concept", "unit", "joint", "z_image", "z_text", "z_caption"]
    rows = [[*(rec[c] for c in cols), planted[rec["concept"]]] for rec in r.tables["ranking"].records()]
    return (
        "<h3>Multimodal neurons and the typographic attack (multimodal_neurons, zoo:clip_glyph)</h3>"
        "<p>Top unit per shape by joint response to its images, its written name and its caption, next to the "
        "planted multimodal unit; then zero-shot shape accuracy with text written on the images.</p>"
        + _table([*cols, "planted unit"], rows)
        + _table(["condition", "accuracy", "predicted as the attack's word"], r.tables["attack"].rows)
    )


def clip_section(out: Path) -> tuple[str, list[Path]]:
    """Run the CLIP analyses on the zoo CLIP, write their PNGs into ``out``; return ``(html, pngs)``."""
    torch.manual_seed(0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = catalog.load("clip")
    batch = held_out_batch(300)
    shapes = list(FACTOR_CLASSES["shape"])
    parts, pngs = [], []

    dla = run("attnpool_dla", model, batch.images[:2], class_prompts=shapes, templates=["a {}"], max_images=2)
    pngs.append(_png(dla, out, "attnpool_dla"))
    rows = [[r["image"], r["class"], r["head"], r["logit_contribution"]] for r in dla.tables["heads"].records()]
    parts.append(
        "<h3>Attention-pool heads, exactly (attnpool_dla)</h3>"
        f"<p>Per-head contributions to the predicted shape logit; they sum to the logit within "
        f"{dla.meta['max_sum_error_logit']:.1e}.</p>" + _table(["image", "class", "head", "logit"], rows[:8])
    )

    n_layers = int(model.cfg.extra["text"]["n_layers"])
    targets = [f"text.blocks.{n_layers - 1}.mlp.hook_post:{u}" for u in (0, 1)] + ["image_unit:0", "image_unit:1"]
    mat = run("max_activating_text", model, None, targets=targets, methods=["discrete"], budget=300, top=1)
    pngs.append(_png(mat, out, "max_activating_text"))
    rows = [[r["target"], r["text"], r["score"], r["forwards"]] for r in mat.tables["strings"].records()]
    parts.append(
        "<h3>Max-activating text (max_activating_text, gradient-guided beam search)</h3>"
        + _table(["target", "best string", "score", "forwards"], rows)
    )

    factors = [f"{k}:{','.join(v)}" for k, v in FACTOR_CLASSES.items()]
    labels = [f"{k}:{','.join(str(int(x)) for x in batch.factors[k])}" for k in FACTOR_CLASSES]
    roles = run("head_roles", model, batch.images, factors=factors, labels=labels, templates=["a {}"], max_images=300)
    pngs.append(_png(roles, out, "head_roles"))
    cols = ["head", "textspan", *[f"only_{k}" for k in FACTOR_CLASSES]]
    rows = [[r[c] for c in cols] for r in roles.tables["heads"].records()]
    parts.append("<h3>Head roles (head_roles)</h3>" + _table(cols, rows))

    cons = run("construction", model, batch.images, max_images=300, units=list(range(64)))
    pngs.append(_png(cons, out, "construction"))
    parts.append(
        "<h3>How last-stage units are built (construction)</h3>"
        f"<p>Inputs carrying 90% of |expanded weight| (median): {cons.meta['median_n_for_mass']:.0f} of "
        f"{cons.meta['in_units']}.</p>"
        + _table(["method", "mean R^2", "CI low", "CI high", "median R^2"], cons.tables["summary"].rows)
    )
    parts.append(_multimodal(out, pngs))
    captions = {
        "multimodal_neurons": "Multimodal neurons: standardized image / written-word / caption scores of the top "
        "units per shape on zoo:clip_glyph (joint = their minimum).",
        "attnpool_dla": "Attention-pool DLA: each pool head's exact contribution to the zero-shot logit of the shape.",
        "max_activating_text": "Max-activating text: the strings the search found per unit, against brute force.",
        "head_roles": "Head roles: zero-shot accuracy per factor with each pool head ablated or kept alone.",
        "construction": "Construction: how much of each last-stage unit a sparse set of earlier units explains.",
    }

    def caption(p: Path) -> str:
        key = next((k for k in captions if k in p.stem), "")
        return html.escape(captions.get(key, p.stem.replace("_", " ")))

    figs = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="{html.escape(p.name)}"><figcaption>{caption(p)}</figcaption>'
        "</figure>"
        for p in pngs
    )
    return "<section><h2>CLIP: the zoo CLIP's ResNet tower</h2>" + "".join(parts) + figs + "</section>", pngs
