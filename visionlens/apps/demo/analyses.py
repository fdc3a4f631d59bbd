"""Demo report sections for the built-in analyses (called from :mod:`visionlens.apps.demo.report`).

:func:`demo_sections` runs, on the demo model, with a clean photo (the cat) and a corrupted one
(the coffee cup):

1. **Why this class?** ``direct_logit_attribution`` splits the clean photo's top logit into exact
   per-channel terms of the pooled features. The top channels are then shown with what they respond
   to: a short batched feature visualization of each (:func:`visionlens.featurevis.render`) and
   their top ``dataset_examples`` over tiles of the bundled photos, with the receptive field and
   the peak cell drawn in (conv nets; transformers get the DLA table only);
2. **Where and in which channels?** ``activation_patching`` (denoising: run the corrupted photo,
   patch in the clean photo's activations): a 4 x 4 grid of image regions at several stages, and
   channels at the last block, ranked by attribution patching and then restored jointly (top 1, 2,
   5, ...). The text states, from the numbers, which region / how many channels restore how much;
3. ``attention_patterns`` (transformers only), with the offline viewer.

It saves each full result under ``out_dir`` (``dla/``, ``patching/``, ``examples/``, ...) plus the
PNGs, and returns an HTML fragment (inline PNGs, every label escaped, every figure captioned).

>>> html_fragment = demo_sections(model, skimage.data.chelsea(), skimage.data.coffee(), Path("report"))
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from ...data import TensorImages
from ...featurevis import channel, class_logit, render
from ...plugins.activation_patching import default_patching_hooks
from ...plugins.dataset_examples import crop_box
from ...results import figure_to_png, new_figure
from ...runner import run
from .progress import Steps

__all__ = ["demo_sections", "patching_layer", "photo_tiles", "FV_SETTINGS"]

# the feature visualizations of the demo: short and batched (one render for all channels)
FV_SETTINGS: dict[str, Any] = {"steps": 48, "size": 80, "lr": 0.1, "transforms": "scaled"}
N_CHANNELS = 4  # top DLA channels shown with pictures
N_EXAMPLES = 3  # dataset examples per channel


def _tensor(model: Any, image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return (image if image.ndim == 4 else image.unsqueeze(0)).to(model.device)
    return model.preprocess([image])


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, width: int = 0) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{_b64(png)}">'


def figure(png: bytes, alt: str, caption: str, width: int = 0) -> str:
    """``<figure>`` with an inline PNG and a caption (``caption`` is HTML, already escaped)."""
    return f"<figure>{_img(png, alt, width)}<figcaption>{caption}</figcaption></figure>"


def _is_transformer(model: Any) -> bool:
    fam = (model.cfg.family or "").lower()
    return fam == "vit" or (fam == "clip" and model.cfg.extra.get("visual_type") == "vit")


def patching_layer(model: Any) -> str:
    """The layer patched channel by channel in the demo: the last stage's output of a conv net."""
    hooks = default_patching_hooks(model, "channel")
    if not hooks:
        raise ValueError("no default patching hooks for this model")
    return hooks[-1]


def _pct(v: float) -> str:
    return f"{100 * v:.0f}%" if abs(v) >= 0.095 else f"{100 * v:.1f}%"


# ----------------------------------------------------------------------------- photo tiles
def photo_tiles(model: Any, photos: Sequence[tuple[str, Any]]) -> tuple[torch.Tensor, list[str]]:
    """Each photo as 6 model inputs: the whole photo and five half-size crops (4 corners + centre).

    A dozen photos make a tiny dataset; the crops let the top examples say *which part* of a photo a
    unit prefers. Returns the preprocessed batch and names like ``chelsea [top left]``.
    """
    from PIL import Image

    items, names = [], []
    for name, arr in photos:
        img = Image.fromarray(np.asarray(arr)).convert("RGB")
        s = min(img.size)
        left, top = (img.size[0] - s) // 2, (img.size[1] - s) // 2
        sq = img.crop((left, top, left + s, top + s)).resize((448, 448), Image.BILINEAR)
        items.append(sq.resize((224, 224), Image.BILINEAR))
        names.append(f"{name} [whole]")
        for label, (x0, y0) in {
            "top left": (0, 0),
            "top right": (224, 0),
            "bottom left": (0, 224),
            "bottom right": (224, 224),
            "centre": (112, 112),
        }.items():
            items.append(sq.crop((x0, y0, x0 + 224, y0 + 224)))
            names.append(f"{name} [{label}]")
    return model.preprocess(items), names


def _features_hooks(model: Any) -> tuple[Optional[str], Optional[str]]:
    """``(features hook the readout pools, its pre-activation hook)`` for a conv net, else ``(None, None)``.

    The pre-activation is the input of the features block's final nonlinearity (MobileNetV2's ReLU6
    saturates at 6, so its output is a poor objective and ties the top examples)."""
    readout = getattr(model.adapter, "readout", None)
    if callable(readout):
        try:
            readout = readout()
        except Exception:  # no linear readout (no classifier head)
            readout = None
    feats = getattr(readout, "features_hook", None)
    if not feats or feats not in model.hook_dict:
        return None, None
    path = feats[: -len(".hook_out")] if feats.endswith(".hook_out") else feats
    try:
        module = model.source.get_submodule(path)
    except AttributeError:
        return feats, feats
    children = list(module.named_children())
    acts = (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.GELU, torch.nn.SiLU, torch.nn.Hardswish)
    if len(children) >= 2 and isinstance(children[-1][1], acts):
        pre = f"{path}.{children[-2][0]}.hook_out"
        if pre in model.hook_dict:
            return feats, pre
    return feats, feats


def gradient_support(model: Any, hook: str, pos: tuple[int, int], size: int = 224, seed: int = 0) -> tuple:
    """``(y0, x0, y1, x1)``: the input pixels whose gradient on ``hook`` at position ``pos`` (all channels) is
    nonzero, for one random input: the part of the image that can influence that position."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, size, size, generator=gen).to(model.device).requires_grad_(True)
    acts: dict[str, torch.Tensor] = {}

    def keep(a: torch.Tensor, hook: Any) -> torch.Tensor:
        acts["a"] = a
        return a

    with torch.enable_grad():
        model.run_with_hooks(x, fwd_hooks=[(hook, keep)])
        (g,) = torch.autograd.grad(acts["a"][0, :, pos[0], pos[1]].sum(), x)
    nz = (g.abs().sum(1)[0] > 0).nonzero()
    if not len(nz):
        return (0, 0, 0, 0)
    return (int(nz[:, 0].min()), int(nz[:, 1].min()), int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1)


def _example_tile(img: np.ndarray, box: tuple[int, int, int, int], cell: Any, size: int = 96) -> bytes:
    """The example with its receptive field (cyan, when smaller than the image) and peak cell (yellow)."""
    from PIL import Image, ImageDraw

    H, W = img.shape[:2]
    pil = Image.fromarray(img).convert("RGB")
    d = ImageDraw.Draw(pil)
    y0, x0, y1, x1 = box
    if (y0, x0, y1, x1) != (0, 0, H, W):
        d.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 220, 255), width=3)
    if cell is not None:
        cy0, cx0, cy1, cx1 = cell
        d.rectangle([cx0, cy0, cx1 - 1, cy1 - 1], outline=(255, 230, 0), width=6)
    return _png_bytes(pil.resize((size, size), Image.BILINEAR))


def _png_bytes(pil: Any) -> bytes:
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _fv_png(image: torch.Tensor, size: int = 96) -> bytes:
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1)[:3].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return _png_bytes(Image.fromarray(arr).resize((size, size), Image.BILINEAR))


# ----------------------------------------------------------------------------- 1. DLA + channels
def _dla_section(
    model: Any,
    x_clean: torch.Tensor,
    x_corrupt: torch.Tensor,
    out: Path,
    photos: Sequence[tuple[str, Any]],
    clean_name: str,
    steps: Steps,
    progress: bool,
) -> str:
    e = html.escape
    with steps("direct logit attribution"):
        pair = TensorImages(torch.cat([x_clean, x_corrupt]), names=["clean", "corrupted"])
        dla = run("direct_logit_attribution", model, pair, top_k=10)
        dla.save(out / "dla")
        png = figure_to_png(dla.plot(0, top=12))
        (out / "dla_clean.png").write_bytes(png)
    label = [str(c) for c in dla.meta.get("class_names", ["?", "?"])]
    cls = [int(c) for c in dla.tensors["classes"]]
    if dla.meta["kind"] != "conv":  # transformers: the component table
        rows = "".join(
            f"<tr><td>{r[1]}</td><td>{e(str(r[2]))}</td><td>{r[4]:+.3f}</td></tr>"
            for r in dla.tables["components"].rows
            if r[0] == "clean"
        )
        return (
            f"<h2>Why <i>{e(label[0])}</i>? Direct logit attribution</h2><p>Contributions of heads, MLPs and "
            f"embeddings (exact, final LayerNorm scale from the cache) to the clean photo's top class "
            f"<b>{e(label[0])}</b> (largest sum error {dla.meta['max_sum_error']:.1e}).</p>"
            + figure(png, "DLA", "Top components and the per-patch map of the contribution.", 900)
            + f"<table><tr><th>rank</th><th>component</th><th>contribution</th></tr>{rows}</table>"
        )

    attr = dla.tensors["attr"][:, 0].double()
    total = float(dla.tensors["logit"][0] - dla.tensors["bias"][0])
    order = torch.argsort(attr, descending=True)
    top = [int(c) for c in order[:N_CHANNELS]]
    cum = torch.cumsum(attr[order], 0)
    half = int((cum >= 0.5 * total).nonzero()[0]) + 1 if total > 0 and bool((cum >= 0.5 * total).any()) else None
    n_pos = int((attr > 0).sum())
    n_units = int(attr.numel())
    top_share = float(attr[order[:N_CHANNELS]].sum()) / total if total else float("nan")

    feats, pre = _features_hooks(model)
    cards = ""
    if feats is not None and pre is not None:
        with steps(f"feature visualization of the top {N_CHANNELS} channels + the class logit"):
            objs = [channel(pre, c) for c in top] + [class_logit(cls[0])]
            fv = render(model, objs, progress=progress, **FV_SETTINGS)
            fv_pngs = [_fv_png(fv.images[i]) for i in range(len(objs))]
            for i, p in enumerate(fv_pngs):
                (out / f"fv_{i}.png").write_bytes(p)
        with steps(f"dataset examples over {len(photos)} photos x 6 tiles"):
            x_tiles, tile_names = photo_tiles(model, photos)
            tiles = TensorImages(x_tiles, names=tile_names)
            ex = run(
                "dataset_examples", model, tiles, hooks=[pre], top_k=N_EXAMPLES, bottom_k=0, crop_units=0, batch_size=16
            )
            ex.save(out / "examples")
            kind_pos = ex.meta["position_kind"][pre]
            pshape = ex.meta["position_shapes"][pre]
            H, W = int(x_tiles.shape[-2]), int(x_tiles.shape[-1])
            ph, pw = (int(pshape[0]), int(pshape[1])) if len(pshape) == 2 else (1, 1)
            # what one position sees: crop_box's receptive field, else the gradient support measured here
            corner = gradient_support(model, pre, (0, 0), H) if len(pshape) == 2 else (0, 0, H, W)
            centre = gradient_support(model, pre, (ph // 2, pw // 2), H) if len(pshape) == 2 else (0, 0, H, W)
        clean_photo = clean_name.split(".")[0]
        card_rows: list[str] = []
        for i, c in enumerate(top):
            exs = ex.examples(pre, c, "top")
            cells = []
            from_clean = 0
            for j, exm in enumerate(exs):
                img = tiles.display(exm["index"], model)
                box, cell = crop_box(model, pre, kind_pos, pshape, exm["location"], H, W)
                if cell is None and len(exm["location"]) == 2:  # no measured receptive field: the stride cell
                    y, x = exm["location"]
                    cell = (y * H // ph, x * W // pw, (y + 1) * H // ph, (x + 1) * W // pw)
                tile_png = _example_tile(img, box, cell)
                (out / f"example_{i}_{j}.png").write_bytes(tile_png)
                from_clean += exm["name"].startswith(clean_photo)
                cells.append(
                    f"<td>{_img(tile_png, exm['name'], 96)}<br><small>{e(exm['name'])}<br>max {exm['value']:.1f}"
                    "</small></td>"
                )
            if from_clean == len(exs):
                article = "an" if label[0][:1].lower() in "aeiou" else "a"
                reading = (
                    f"fires most on the {e(clean_photo)} photo itself: {article} {e(label[0])}-like feature among "
                    "these photos"
                )
            elif from_clean:
                reading = (
                    f"{from_clean} of its top {len(exs)} tiles {'is' if from_clean == 1 else 'are'} from the "
                    f"{e(clean_photo)} photo; it also responds to other content (the other tiles)"
                )
            else:
                reading = (
                    f"none of its top {len(exs)} tiles is from the {e(clean_photo)} photo: a generic feature "
                    f"that the {e(label[0])} readout happens to weight positively"
                )
            share = float(attr[c]) / total if total else float("nan")
            card_rows.append(
                f"<tr><td><b>channel {c}</b><br>{float(attr[c]):+.2f}<br><small>{_pct(share)} of the logit"
                f"</small></td><td>{_img(fv_pngs[i], f'feature visualization of channel {c}', 96)}</td>"
                + "".join(cells)
                + f"<td class='reading'>{reading}</td></tr>"
            )
        card_rows.append(
            f"<tr><td><b>class logit</b><br>{e(label[0])}</td><td>{_img(fv_pngs[-1], 'class logit render', 96)}"
            f"</td><td colspan='{N_EXAMPLES + 1}' class='reading'>the whole readout for {e(label[0])} "
            "maximised at once, for comparison</td></tr>"
        )
        whole = corner == (0, 0, H, W) and centre == (0, 0, H, W)
        rf_text = (
            f"At this depth every position sees the whole tile (the input gradient of the corner and the centre "
            f"position is nonzero on all {H} &times; {W} px), so the example is the whole tile; the yellow square "
            f"is the peak position's cell of the {ph} &times; {pw} map ({H // ph} px, the stride)."
            if whole
            else (
                f"One position sees about {centre[2] - centre[0]} &times; {centre[3] - centre[1]} px (the support of "
                f"the centre position's input gradient); cyan: the receptive field of the peak position, yellow: "
                "its stride cell."
            )
        )
        cards = (
            "<table class='cards'><tr><th>channel, DLA term</th><th>feature visualization</th>"
            f"<th colspan='{N_EXAMPLES}'>top dataset examples (photo tiles)</th><th>reading</th></tr>"
            + "".join(card_rows)
            + "</table>"
            + f"<p class='caption'>Each row: a top DLA channel of <code>{e(feats)}</code>. Feature visualization: an "
            f"{FV_SETTINGS['size']}-px image optimised for {FV_SETTINGS['steps']} steps (Adam lr {FV_SETTINGS['lr']}, "
            f"FFT parameterization, decorrelated colour, jitter / scale / rotation scaled to the size) to maximise "
            f"the channel's mean pre-activation (<code>{e(pre)}</code>, before the ReLU6 that would saturate at 6); "
            f"all {len(objs)} images in one batched render ({fv.elapsed:.1f} s). Short renders are rough: textures "
            f"and parts, not clean objects. Dataset examples: the {N_EXAMPLES} tiles (of {len(tile_names)}: each of "
            f"the {len(photos)} bundled photos whole and as five half-size crops) with the highest maximum of the "
            f"same pre-activation. {rf_text} With {len(photos)} photos this says which of <i>these</i> photos a "
            "channel prefers, not what it detects in general; a real sweep uses thousands of images "
            "(<code>visionlens run dataset_examples</code>).</p>"
        )

    half_txt = (
        f"the top <b>{half}</b> of {n_units} channels are needed to reach half of it"
        if half is not None
        else "no prefix of the channels reaches half of it"
    )
    return (
        f"<h2>Why <i>{e(label[0])}</i>? Direct logit attribution, and what the top channels respond to</h2>"
        f"<p>The classifier reads the {n_units} globally pooled channels of <code>{e(feats or 'the last stage')}"
        f"</code> linearly, so the {e(label[0])} logit of the cat photo is exactly a sum of one term per channel "
        f"(pooled[c] &times; W[class, c]) plus the bias: largest sum error {dla.meta['max_sum_error']:.1e}. The "
        f"terms add up to <b>{total:.2f}</b>; {n_pos} channels push towards {e(label[0])}, the others against. "
        f"The top {N_CHANNELS} together give only {_pct(top_share)}, and {half_txt}: the evidence is spread over "
        f"hundreds of channels, so a single channel's story explains little of this decision. (The coffee photo's "
        f"top class is <i>{e(label[1])}</i>; its attribution is in <a href='analyses/dla/index.html'>the full "
        f"result</a>.)</p>"
        + figure(
            png,
            "DLA of the cat photo",
            f"Left: the 12 largest channel terms of the {e(label[0])} logit for the cat photo (blue pushes towards "
            f"it, red against). Right: the same logit split over the 7 &times; 7 positions of the last feature map "
            f"(exact, since pooling is an average), over the photo: the evidence sits where the cat is.",
            900,
        )
        + cards
    )


# ----------------------------------------------------------------------------- 2. patching
_ROWS = ("top", "upper middle", "lower middle", "bottom")
_COLS = ("left", "centre-left", "centre-right", "right")


def region_name(cell: int, grid: int = 4) -> str:
    """Cell ``cell`` of a ``grid x grid`` split of the image, in words: ``"top row, centre-right"``."""
    r, c = divmod(cell, grid)
    if grid == 4:
        return f"{_ROWS[r]} row, {_COLS[c]}"
    return f"row {r + 1}, column {c + 1} of {grid}"


def _region_words(scores: dict[str, np.ndarray]) -> tuple[str, list[str]]:
    items = []
    for h, s in scores.items():
        b = int(np.argmax(s))
        items.append((h, float(s[b]), region_name(b), float(s.sum())))
    best = max(items, key=lambda t: t[1])
    first, last = items[0], items[-1]
    per_stage = [
        f"{e_short(h)}: best region {e_html(lab)} restores {_pct(v)}; the 16 regions one at a time sum to {_pct(tot)}"
        for h, v, lab, tot in items
    ]
    trend = (
        "falls with depth"
        if last[1] < first[1] - 0.05
        else ("rises with depth" if last[1] > first[1] + 0.05 else "stays about level")
    )
    sums = [t[3] for t in items]
    lo, hi = min(sums), max(sums)
    if hi < 0.8:
        additivity = (
            "always well under 100%: restoring one region at a time misses what the regions do together (the "
            "classifier needs several parts of the cat at once)"
        )
    elif lo > 1.2:
        additivity = "always over 100%: the regions overlap in what they carry"
    elif lo < 0.8:
        additivity = (
            "so at some depths the regions' effects add up and at others (under 80%) the regions only work together"
        )
    else:
        additivity = "close to 100%: here the regions' effects roughly add up"
    text = (
        f"No single region carries the decision: the most useful one ({e_html(best[2])} of the feature map at "
        f"{e_short(best[0])}) restores <b>{_pct(best[1])}</b> of the logit difference on its own. The best region's "
        f"share {trend} (from {_pct(first[1])} at {e_short(first[0])} to {_pct(last[1])} at {e_short(last[0])}), "
        f"and the 16 regions' separate effects sum to "
        f"{_pct(lo)}&ndash;{_pct(hi)} depending on depth, {additivity}."
    )
    return text, per_stage


def e_html(text: str) -> str:
    return html.escape(text)


def e_short(hook: str) -> str:
    """``stages.3.blocks.3.hook_resid_post`` -> ``stage 3``."""
    parts = hook.split(".")
    if len(parts) > 1 and parts[0] == "stages":
        return html.escape(f"stage {parts[1]}")
    return html.escape(hook)


def _patching_section(model: Any, x_clean: torch.Tensor, x_corrupt: torch.Tensor, out: Path, steps: Steps) -> str:
    e = html.escape
    if _is_transformer(model):
        with steps("activation patching (positions x layers)"):
            pat = run("activation_patching", model, {"clean": x_clean, "corrupted": x_corrupt}, method="both")
            pat.save(out / "patching")
            pngs = {k: figure_to_png(f) for k, f in pat.figures().items()}
        m = pat.meta["metric"]
        return (
            f"<h2>Activation patching</h2><p>Denoising, position by position in the residual stream of every "
            f"layer; score = normalized logit difference (0 = corrupted run, 1 = clean; clean "
            f"{m['clean_value'][0]:.2f}, corrupted {m['corrupted_value'][0]:.2f}).</p>"
            + "".join(figure(p, f"patching {k}", e(k), 800) for k, p in pngs.items())
        )

    stage_hooks = default_patching_hooks(model, "region")
    region_hooks = stage_hooks[1::2] if len(stage_hooks) > 4 else stage_hooks
    if stage_hooks and stage_hooks[-1] not in region_hooks:
        region_hooks.append(stage_hooks[-1])
    with steps(f"activation patching: 4 x 4 regions at {len(region_hooks)} stages"):
        pat = run(
            "activation_patching",
            model,
            {"clean": x_clean, "corrupted": x_corrupt},
            hooks=region_hooks,
            target="region",
            grid=4,
            method="exact",
            top_k=20,
        )
        pat.save(out / "patching")
    m = pat.meta["metric"]
    lab = pat.meta.get("label_names", ["?"])[0]
    foil = pat.meta.get("foil_names", ["?"])[0]
    label_idx, foil_idx = int(m["label"][0]), int(m["foil"][0])
    scores = {h: pat.tensors[f"scores/{h}"][:, 0].double().numpy() for h in region_hooks}
    words, per_stage = _region_words(scores)

    clean_img = pat.tensors["clean_image"].numpy()
    fig = new_figure(2.3 * len(region_hooks), 2.7)
    axes = np.atleast_1d(fig.subplots(1, len(region_hooks)))
    vmax = max(float(max(np.abs(s).max() for s in scores.values())), 1e-6)
    H, W = clean_img.shape[:2]
    im = None
    for ax, h in zip(axes, region_hooks):
        ax.imshow(clean_img)
        side = max(1, round(len(scores[h]) ** 0.5))  # the region grid is square
        grid = scores[h].reshape(side, side)
        im = ax.imshow(grid, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=0.6, extent=(0, W, H, 0))
        shape = pat.meta["targets"][h].get("shape") if isinstance(pat.meta["targets"][h], dict) else None
        ax.set_title(f"{e_short(h)}" + (f" ({shape})" if shape else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        b = int(np.argmax(scores[h]))
        ax.text(
            (b % 4 + 0.5) * W / 4, (b // 4 + 0.5) * H / 4, f"{scores[h][b]:.2f}", ha="center", va="center", fontsize=7
        )
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="fraction restored")
    region_png = figure_to_png(fig)
    (out / "patching_regions.png").write_bytes(region_png)

    # channels at the last block: rank by attribution patching (one backward), then restore the top k jointly
    layer = patching_layer(model)
    with steps(f"activation patching: channels of {layer} (attribution ranking + joint exact patching)"):
        atp = run(
            "activation_patching",
            model,
            {"clean": x_clean, "corrupted": x_corrupt},
            hooks=[layer],
            target="channel",
            method="attribution",
            label=label_idx,
            foil=foil_idx,
            top_k=20,
        )
        est = atp.tensors[f"atp/{layer}"][:, 0].double()
        order = torch.argsort(est, descending=True)
        n_ch = int(est.numel())
        ks = sorted({k for k in (1, 2, 5, 10, 20, 50, 100, 200, n_ch) if k <= n_ch})
        joint = _joint_patch(model, x_clean, x_corrupt, layer, [order[:k] for k in ks], label_idx, foil_idx)
        single = _joint_patch(
            model, x_clean, x_corrupt, layer, [order[i : i + 1] for i in range(5)], label_idx, foil_idx
        )
    best_i = int(np.argmax(single))
    best_c = int(order[best_i])
    need = {frac: next((k for k, v in zip(ks, joint) if v >= frac), None) for frac in (0.5, 0.9)}

    fig = new_figure(6.5, 3.0)
    ax = fig.subplots(1, 1)
    ax.plot(ks, joint, marker="o", color="#4c72b0")
    ax.set_xscale("log")
    ax.axhline(1.0, color="#555", lw=0.6, ls="--")
    ax.axhline(0.5, color="#aaa", lw=0.6, ls=":")
    ax.set_xlabel(f"top-k channels of {layer} patched together (ranked by attribution patching)", fontsize=8)
    ax.set_ylabel("fraction of logit diff restored", fontsize=8)
    ax.set_ylim(min(-0.05, min(joint) - 0.05), max(1.05, max(joint) + 0.05))
    for k, v in zip(ks, joint):
        ax.annotate(f"{v:.2f}", (k, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    channel_png = figure_to_png(fig)
    (out / "patching_channels.png").write_bytes(channel_png)

    def k_text(frac: float) -> str:
        k = need[frac]
        return f"the top <b>{k}</b>" if k is not None else "no tested top-k set"

    chan_words = (
        f"Channel by channel at {e_short(layer)} (<code>{e(layer)}</code>, {n_ch} channels): the best single channel "
        f"among attribution patching's top 5 is channel {best_c}, restoring <b>{_pct(single[best_i])}</b> (its "
        f"estimate was {_pct(float(est[best_c]))}). Patched together, {k_text(0.5)} channels restore half of the "
        f"logit difference and {k_text(0.9)} restore 90%; all {n_ch} restore {_pct(joint[-1])}, as they must "
        f"(the whole activation carries everything the rest of the network sees). So no small set of channels "
        f"<i>is</i> the cat-vs-coffee decision at this depth: it is distributed, and single-channel patching "
        f"scores (a few percent each) understate what channels do jointly."
    )
    rows = "".join(f"<li>{s}</li>" for s in per_stage)
    return (
        "<h2>Where, and in which channels? Activation patching</h2>"
        f"<p>Denoising: the coffee photo runs, and part of the cat photo's activations is patched in. Score = "
        f"normalized logit difference <i>logit[{e(lab)}] &minus; logit[{e(foil)}]</i>: 0 = the coffee run "
        f"({m['corrupted_value'][0]:.1f}), 1 = the cat run ({m['clean_value'][0]:.1f}). A region or channel that "
        "restores a large fraction carries evidence the network uses for the difference.</p>"
        f"<p><b>Regions.</b> {words}</p><ul>{rows}</ul>"
        + figure(
            region_png,
            "region patching",
            f"Fraction of the {e(lab)} &minus; {e(foil)} logit difference restored by patching one of 4 &times; 4 "
            "regions of the feature map (shown over the cat photo) from the cat run into the coffee run, at "
            "several depths. Red: restores evidence; blue: patching it moves the output away from the cat. The "
            "number marks each depth's best region.",
            900,
        )
        + f"<p><b>Channels.</b> {chan_words}</p>"
        + figure(
            channel_png,
            "channel patching",
            f"Fraction restored when the top k channels of {e(layer)} (ranked by attribution patching, a "
            "one-backward gradient estimate) are patched together from the cat run (exact forwards). Dotted: half; "
            "dashed: the clean run.",
            640,
        )
        + '<p class="caption">Full results: <a href="analyses/patching/index.html">region patching</a>.</p>'
    )


def _joint_patch(
    model: Any,
    x_clean: torch.Tensor,
    x_corrupt: torch.Tensor,
    hook: str,
    sets: Sequence[torch.Tensor],
    label: int,
    foil: int,
) -> list[float]:
    """Normalized logit difference after patching each channel set of ``hook`` from the clean run (one batch)."""
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(x_clean, names_filter=[hook])
        clean_act = cache[hook]
        corrupt_logits = model(x_corrupt)
        mask = torch.zeros(len(sets), clean_act.shape[1], dtype=torch.bool)
        for i, s in enumerate(sets):
            mask[i, s] = True
        mask = mask.to(clean_act.device)[:, :, None, None]

        def patch(act: torch.Tensor, hook: Any) -> torch.Tensor:
            return torch.where(mask, clean_act.expand_as(act), act)

        logits = model.run_with_hooks(x_corrupt.expand(len(sets), -1, -1, -1), fwd_hooks=[(hook, patch)])

    def ld(lg: torch.Tensor) -> torch.Tensor:
        return lg[:, label] - lg[:, foil]

    lo, hi = float(ld(corrupt_logits)[0]), float(ld(clean_logits)[0])
    return [float(v) for v in (ld(logits) - lo) / (hi - lo)]


# ----------------------------------------------------------------------------- entry point
def demo_sections(
    model: Any,
    clean_image: Any,
    corrupted_image: Any,
    out_dir: Union[str, Path],
    photos: Optional[Sequence[tuple[str, Any]]] = None,
    clean_name: str = "chelsea",
    steps: Optional[Steps] = None,
    progress: bool = False,
) -> str:
    """Run the analysis demos and return an HTML fragment; results and PNGs go under ``out_dir``.

    ``clean_image`` / ``corrupted_image``: anything ``model.preprocess`` takes (an ``HxWx3`` array,
    a PIL image, a path) or a preprocessed tensor. ``photos``: ``(name, HxWx3 array)`` pairs whose tiles
    are the dataset for the top channels' examples (default: the two photos). ``steps`` prints one line
    per step; ``progress`` also shows the feature-visualization progress bar.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = steps or Steps(enabled=False)
    x_clean, x_corrupt = _tensor(model, clean_image), _tensor(model, corrupted_image)
    if photos is None:
        pair = TensorImages(torch.cat([x_clean, x_corrupt]))
        photos = [(clean_name, pair.display(0, model)), ("corrupted", pair.display(1, model))]
    parts = [
        _dla_section(model, x_clean, x_corrupt, out, photos, clean_name, steps, progress),
        _patching_section(model, x_clean, x_corrupt, out, steps),
    ]
    if _is_transformer(model):
        with steps("attention patterns"):
            pair = TensorImages(torch.cat([x_clean, x_corrupt]), names=["clean", "corrupted"])
            att = run("attention_patterns", model, pair)
            att.save(out / "attention")
            png = figure_to_png(att.plot_maps("cls_maps"))
            (out / "attention_cls.png").write_bytes(png)
        n_local = sum(1 for r in att.tables["heads"].rows if r[-1] == "local")
        parts.append(
            f"<h2>Attention patterns</h2><p>{len(att.tables['heads'])} heads, {n_local} local. "
            f'<a href="analyses/attention/viewer.html">Interactive viewer</a> (offline).</p>'
            + figure(png, "class-token attention", "Attention from the class token, per head.", 800)
        )
    return "\n".join(parts)
