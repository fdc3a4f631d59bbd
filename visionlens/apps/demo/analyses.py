"""Demo report sections for the built-in analyses (called from :mod:`visionlens.apps.demo.report`).

:func:`demo_sections` runs, on the demo model,

1. ``direct_logit_attribution`` on the clean and corrupted photos: exact per-channel contributions
   of the pooled features to each photo's top class (conv nets; heads / MLPs for transformers),
   with the per-location heatmap over the photo;
2. ``activation_patching`` of the clean photo into the corrupted one, channel by channel at one
   layer (the last stage's output for conv nets; for transformers position by position over every
   layer), denoising with the normalized logit difference (0 = corrupted prediction, 1 = clean),
   plus attribution patching and its correlation with the exact numbers;
3. ``attention_patterns`` (transformers only), with the offline viewer.

It saves each full result under ``out_dir`` (``dla/``, ``patching/``, ``attention/``) plus a few
PNGs, and returns an HTML fragment (inline PNGs, every label escaped) for the demo page.

>>> html_fragment = demo_sections(model, skimage.data.chelsea(), skimage.data.coffee(), Path("report"))
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Union

import torch

from ...data import TensorImages
from ...plugins.activation_patching import default_patching_hooks
from ...results import figure_to_png
from ...runner import run

__all__ = ["demo_sections", "patching_layer"]


def _tensor(model: Any, image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return (image if image.ndim == 4 else image.unsqueeze(0)).to(model.device)
    return model.preprocess([image])


def _img(png: bytes, alt: str, width: int = 0) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _is_transformer(model: Any) -> bool:
    fam = (model.cfg.family or "").lower()
    return fam == "vit" or (fam == "clip" and model.cfg.extra.get("visual_type") == "vit")


def patching_layer(model: Any) -> str:
    """The layer patched channel by channel in the demo: the last stage's output of a conv net."""
    hooks = default_patching_hooks(model, "channel")
    if not hooks:
        raise ValueError("no default patching hooks for this model")
    return hooks[-1]


def demo_sections(model: Any, clean_image: Any, corrupted_image: Any, out_dir: Union[str, Path]) -> str:
    """Run the analysis demos and return an HTML fragment; results and PNGs go under ``out_dir``.

    ``clean_image`` / ``corrupted_image``: anything ``model.preprocess`` takes (an ``HxWx3`` array,
    a PIL image, a path) or a preprocessed tensor.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    e = html.escape
    x_clean, x_corrupt = _tensor(model, clean_image), _tensor(model, corrupted_image)
    names = model.cfg.extra.get("class_names") or []
    parts: list[str] = []

    # 1. direct logit attribution ------------------------------------------------------------
    t0 = time.perf_counter()
    pair = TensorImages(torch.cat([x_clean, x_corrupt]), names=["clean", "corrupted"])
    dla = run("direct_logit_attribution", model, pair, top_k=10)
    dla.save(out / "dla")
    png = figure_to_png(dla.plot(0))
    (out / "dla_clean.png").write_bytes(png)
    png2 = figure_to_png(dla.plot(1))
    (out / "dla_corrupted.png").write_bytes(png2)
    rows = []
    for r in dla.tables["components"].rows:
        if r[0] == "clean":
            rows.append(f"<tr><td>{r[1]}</td><td>{e(str(r[2]))}</td><td>{r[4]:+.4f}</td></tr>")
    cls = [int(c) for c in dla.tensors["classes"]]
    label = [str(names[c]) if c < len(names) else f"class {c}" for c in cls]
    what = (
        "channels of the pooled features (exact: pooled[c] x W[class, c])"
        if dla.meta["kind"] == "conv"
        else "heads, MLPs and embeddings (exact, final LayerNorm scale from the cache)"
    )
    parts.append(
        f"<h2>Direct logit attribution</h2><p>Each photo's top class: clean <b>{e(label[0])}</b>, corrupted "
        f"<b>{e(label[1])}</b>. Contributions of the {e(what)} add up to the logit minus the head bias (largest "
        f"error {dla.meta['max_sum_error']:.1e}). Heatmap: {e(str(dla.meta.get('heatmap', '')))}. "
        f'(<a href="dla/index.html">full result</a>, {time.perf_counter() - t0:.1f} s)</p>'
        f"{_img(png, 'DLA clean', 900)}{_img(png2, 'DLA corrupted', 900)}"
        f"<table><tr><th>rank</th><th>component</th><th>contribution to {e(label[0])}</th></tr>{''.join(rows)}</table>"
    )

    # 2. activation patching -------------------------------------------------------------------
    t0 = time.perf_counter()
    if _is_transformer(model):
        pat = run("activation_patching", model, {"clean": x_clean, "corrupted": x_corrupt}, method="both")
        how = "position by position in the residual stream of every layer"
    else:
        layer = patching_layer(model)
        pat = run(
            "activation_patching",
            model,
            {"clean": x_clean, "corrupted": x_corrupt},
            hooks=[layer],
            target="channel",
            method="both",
            top_k=15,
        )
        how = f"channel by channel at {layer}"
    pat.save(out / "patching")
    figs = pat.figures()
    pngs = {k: figure_to_png(f) for k, f in figs.items()}
    for k, p in pngs.items():
        (out / f"patching_{k}.png").write_bytes(p)
    corr = pat.meta.get("atp_correlation", {})
    m = pat.meta["metric"]
    lab = pat.meta.get("label_names", ["?"])[0]
    foil = pat.meta.get("foil_names", ["?"])[0]
    top_rows = "".join(
        f"<tr><td>{e(str(r[1]))}</td><td>{r[2]:+.3f}</td><td>{'' if r[3] is None else f'{r[3]:+.3f}'}</td></tr>"
        for r in pat.tables["top"].rows[:10]
    )
    info = next(iter(pat.meta["batching"].values()), {})
    parts.append(
        f"<h2>Activation patching</h2><p>Denoising: the corrupted photo runs, and the clean photo's activations are "
        f"patched in {e(how)}. Score = normalized logit difference <i>logit[{e(lab)}] - logit[{e(foil)}]</i>: 0 = the "
        f"corrupted run, 1 = the clean run (clean {m['clean_value'][0]:.2f}, corrupted {m['corrupted_value'][0]:.2f}). "
        f"{pat.meta['targets'][pat.hooks[0]]['n_targets'] * len(pat.hooks)} targets in {info.get('forwards', '?')} "
        f"batched forwards per hook ({e(str(info.get('mode', '')))}); attribution patching vs exact: Pearson "
        f"{corr.get('pearson', float('nan')):.3f}, Spearman {corr.get('spearman', float('nan')):.3f}. "
        f'(<a href="patching/index.html">full result</a>, {time.perf_counter() - t0:.1f} s)</p>'
        + "".join(_img(p, f"patching {k}", 800 if k != "atp_vs_exact" else 420) for k, p in pngs.items())
        + f"<table><tr><th>target</th><th>exact</th><th>AtP estimate</th></tr>{top_rows}</table>"
    )

    # 3. attention (transformers only) --------------------------------------------------------------
    if _is_transformer(model):
        t0 = time.perf_counter()
        att = run("attention_patterns", model, pair)
        att.save(out / "attention")
        png = figure_to_png(att.plot_maps("cls_maps"))
        (out / "attention_cls.png").write_bytes(png)
        n_local = sum(1 for r in att.tables["heads"].rows if r[-1] == "local")
        parts.append(
            f"<h2>Attention patterns</h2><p>{len(att.tables['heads'])} heads, {n_local} local. "
            f'<a href="attention/viewer.html">Interactive viewer</a> (offline) \u00b7 '
            f'<a href="attention/index.html">full result</a> ({time.perf_counter() - t0:.1f} s)</p>'
            f"{_img(png, 'class-token attention', 800)}"
        )
    return "\n".join(parts)
