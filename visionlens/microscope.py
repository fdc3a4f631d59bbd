"""A local, offline "Microscope": a static site of model -> layer -> unit pages.

:func:`build_microscope` writes, under ``out``:

* ``index.html``: the model and its chosen layers;
* ``layers/<layer>/index.html``: every documented unit with its feature visualization;
* ``layers/<layer>/unit_<u>.html``: the unit's feature visualization, its top and bottom dataset
  examples (receptive-field crops; ``dataset_examples``), its strongest inputs from the previous
  chosen layer and outputs to the next one (expanded weights through the linearized model,
  :func:`visionlens.weights.expanded_weights`; links go to the connected units' pages when they
  exist), and, for hooks on a ``Conv2d`` output, the NMF picture of its kernel;
* ``style.css``, ``site.json`` (what was built with which settings), PNGs under ``layers/*/img``.

Pages are plain HTML + CSS: no scripts, no network, every label escaped, links relative (the
folder can be copied anywhere and opened from disk).

CLI: ``visionlens microscope --model SPEC --layers L1,L2 --images PATH --out DIR``.
"""

from __future__ import annotations

import argparse
import html
import json
import os
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from . import weights as vw
from .analysis import config_to_dict
from .commands import add_backend_options, add_model_options, load_model
from .data import as_images
from .featurevis import render
from .hookspecs import hookimpl
from .plugins.dataset_examples import DatasetExamples
from .reducers import atomic_write_bytes
from .runner import run
from .validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["build_microscope", "add_microscope_subcommand", "run_microscope_command"]

_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}a{color:#1a5fb4}
nav{margin-bottom:1em;font-size:13px}.units{display:flex;flex-wrap:wrap;gap:10px}
.unit{width:140px;text-align:center;font-size:12px}.unit img{width:128px;height:128px;image-rendering:pixelated}
img.fv{width:224px;height:224px;image-rendering:pixelated}img.ex{max-width:100%;image-rendering:pixelated}
img.w{width:96px;height:96px;image-rendering:pixelated}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}.cols{display:flex;gap:2em;flex-wrap:wrap}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _slug(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep or "layer"


def _png(arr: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _page(title: str, body: str, depth: int) -> bytes:
    css = "../" * depth + "style.css"
    doc = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self'; "
        "style-src 'self'\">"
        f'<title>{_e(title)}</title><link rel="stylesheet" href="{css}"></head><body>\n{body}\n</body></html>\n'
    )
    return doc.encode("utf-8")


def _conv_module(model: HookedVisionModel, hook: str) -> Optional[torch.nn.Conv2d]:
    if not hook.endswith(".hook_out"):
        return None
    path = hook[: -len(".hook_out")]
    mod = dict(model.source.named_modules()).get(path)
    return mod if isinstance(mod, torch.nn.Conv2d) else None


def build_microscope(
    model: HookedVisionModel,
    layers: Sequence[str],
    images: Any,
    out: Union[str, os.PathLike],
    units_per_layer: int = 8,
    fv_steps: int = 32,
    fv_size: Optional[int] = None,
    top_k: int = 6,
    bottom_k: int = 3,
    batch_size: int = 16,
    max_images: Optional[int] = None,
    connections: int = 5,
    checkpoint: Optional[str] = None,
    crop_size: int = 48,
    title: Optional[str] = None,
    progress: bool = False,
    backend: str = "local",
    address: Optional[str] = None,
) -> Path:
    """Build the static site for ``layers`` of ``model`` over ``images``; returns the ``out`` folder.

    ``units_per_layer`` units (channels ``0..n-1``) get a page per layer; ``fv_steps`` feature
    visualization steps per unit (0 = no feature visualization) at ``fv_size`` pixels (default: the
    model's input size, else 64); ``top_k`` / ``bottom_k`` dataset examples; ``connections`` top
    inputs / outputs listed per unit; ``checkpoint`` makes the dataset sweep resumable; ``backend="ray"``
    runs the dataset sweep on Ray (``address``: an existing cluster) with the same result.
    """
    if units_per_layer < 1:
        raise VisionLensError(f"microscope: units_per_layer must be >= 1, got {units_per_layer}.")
    if fv_steps < 0:
        raise VisionLensError(f"microscope: fv_steps must be >= 0, got {fv_steps}.")
    if not layers:
        raise VisionLensError("microscope: expected at least one layer (hook name or alias).")
    hooks: list[str] = []
    for l in layers:
        h = model.resolve_hook(l)
        if h not in hooks:
            hooks.append(h)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        # 1. dataset examples: one pass over the images for every layer
        analysis = DatasetExamples()
        cfg = analysis.make_config(
            hooks=hooks,
            top_k=top_k,
            bottom_k=bottom_k,
            batch_size=batch_size,
            max_images=max_images,
            checkpoint=checkpoint,
            crop_units=units_per_layer,
            crop_size=crop_size,
        )
        if backend == "local":
            ex = analysis.run(model, images, cfg)
        else:
            ex = run(analysis.name, model, images, backend=backend, address=address, **config_to_dict(cfg, False))
        units = {h: list(range(min(units_per_layer, ex.n_units(h)))) for h in hooks}
        # 2. connections between consecutive chosen layers (expanded weights of the linearized model)
        links: dict[int, Optional[torch.Tensor]] = {}
        size = fv_size or (int(model.cfg.image_size[0]) if model.cfg.image_size else 64)
        for i in range(len(hooks) - 1):
            try:
                links[i] = vw.expanded_weights(
                    model, hooks[i], hooks[i + 1], reduce="mean", image_size=size
                ).matrix  # [C_next, C_this]
            except VisionLensError:
                links[i] = None
        # 3. feature visualization
        fv: dict[str, np.ndarray] = {}
        if fv_steps:
            for h in hooks:
                objs = [f"{h}:{u}" for u in units[h]]
                r = render(model, objs, steps=fv_steps, size=size, progress=progress)
                imgs = (r.images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                if imgs.shape[-1] == 1:
                    imgs = imgs.repeat(3, axis=-1)
                fv[h] = imgs[:, :, :, :3]
    finally:
        model.train(was_training)

    model_name = title or f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})"
    atomic_write_bytes(out / "style.css", _CSS.encode("utf-8"))
    # model page
    rows = "".join(
        f'<li><a href="layers/{_e(_slug(h))}/index.html">{_e(h)}</a> '
        f"{_e(list(ex.meta['activation_shapes'][h]))}, {len(units[h])} units</li>"
        for h in hooks
    )
    body = (
        f"<h1>{_e(model_name)}</h1><p>Images: {_e(ex.meta.get('inputs', ''))} "
        f"({int(ex.meta['n_images'])} images). Feature visualization: {fv_steps} steps.</p><h2>Layers</h2>"
        f"<ul>{rows}</ul>"
    )
    atomic_write_bytes(out / "index.html", _page(model_name, body, 0))

    def unit_link(layer_i: int, unit: int, from_layer_i: int) -> str:
        h = hooks[layer_i]
        label = f"{h}:{unit}"
        if unit in units[h]:
            rel = f"unit_{unit}.html" if layer_i == from_layer_i else f"../{_slug(h)}/unit_{unit}.html"
            return f'<a href="{_e(rel)}">{_e(label)}</a>'
        return _e(label)

    for li, h in enumerate(hooks):
        d = out / "layers" / _slug(h)
        conv = _conv_module(model, h)
        wpics = None
        if conv is not None:
            try:
                wpics, _ = vw.nmf_rgb(conv)
            except Exception:
                wpics = None
        cards = []
        for u in units[h]:
            thumb = ""
            if h in fv:
                atomic_write_bytes(d / "img" / f"fv_{u}.png", _png(fv[h][units[h].index(u)]))
                thumb = f'<img src="img/fv_{u}.png" alt="feature visualization of unit {u}">'
            else:
                grid = ex.unit_grid(h, u)
                if grid is not None:
                    atomic_write_bytes(d / "img" / f"ex_{u}.png", _png(grid))
                    thumb = f'<img src="img/ex_{u}.png" alt="dataset examples of unit {u}">'
            cards.append(f'<div class="unit"><a href="unit_{u}.html">{thumb}<br>unit {u}</a></div>')
            # unit page
            parts = [
                f'<nav><a href="../../index.html">{_e(model_name)}</a> / '
                f'<a href="index.html">{_e(h)}</a> / unit {u}'
                + (f' | <a href="unit_{u - 1}.html">previous</a>' if u - 1 in units[h] else "")
                + (f' | <a href="unit_{u + 1}.html">next</a>' if u + 1 in units[h] else "")
                + "</nav>",
                f"<h1>{_e(h)} : unit {u}</h1>",
                '<div class="cols">',
            ]
            if h in fv:
                parts.append(
                    f'<div><h2>Feature visualization</h2><img class="fv" src="img/fv_{u}.png" '
                    f'alt="feature visualization"><p>{fv_steps} steps, {size} px</p></div>'
                )
            if wpics is not None and u < len(wpics):
                wimg = (wpics[u] * 255).round().astype(np.uint8)
                atomic_write_bytes(d / "img" / f"w_{u}.png", _png(wimg))
                parts.append(
                    '<div><h2>Weights</h2><img class="w" src="img/w_' + str(u) + '.png" alt="kernel picture">'
                    "<p>NMF of |W| over input channels as RGB</p></div>"
                )
            parts.append("</div>")
            grid = ex.unit_grid(h, u)
            if grid is not None:
                atomic_write_bytes(d / "img" / f"ex_{u}.png", _png(grid))
                parts.append(
                    '<h2>Dataset examples</h2><img class="ex" src="img/ex_' + str(u) + '.png" '
                    'alt="top and bottom dataset examples"><p>Top row: top examples; bottom row: bottom '
                    "examples (receptive-field crops around the argmax / argmin).</p>"
                )
            for kind in ("top", "bottom"):
                rows_ex = ex.examples(h, u, kind)
                if rows_ex:
                    parts.append(
                        f"<h3>{kind.title()} examples</h3><table><tr><th>image</th><th>value</th>"
                        "<th>location</th></tr>"
                        + "".join(
                            f"<tr><td>{_e(r['name'])}</td><td>{r['value']:.4g}</td><td>{_e(r['location'])}</td></tr>"
                            for r in rows_ex
                        )
                        + "</table>"
                    )
            parts.append('<div class="cols">')
            if li > 0 and (m := links.get(li - 1)) is not None:
                conns = vw.top_connections(m, u, connections, "in") if u < m.shape[0] else []
                parts.append(
                    f"<div><h2>Top inputs from {_e(hooks[li - 1])}</h2><table><tr><th>unit</th><th>weight"
                    "</th></tr>"
                    + "".join(f"<tr><td>{unit_link(li - 1, c, li)}</td><td>{v:.4g}</td></tr>" for c, v in conns)
                    + "</table></div>"
                )
            if li + 1 < len(hooks) and (m := links.get(li)) is not None:
                conns = vw.top_connections(m, u, connections, "out") if u < m.shape[1] else []
                parts.append(
                    f"<div><h2>Top outputs to {_e(hooks[li + 1])}</h2><table><tr><th>unit</th><th>weight"
                    "</th></tr>"
                    + "".join(f"<tr><td>{unit_link(li + 1, c, li)}</td><td>{v:.4g}</td></tr>" for c, v in conns)
                    + "</table></div>"
                )
            parts.append(
                "</div><p>Weights between chosen layers are expanded weights: the Jacobian of the later "
                "channel's spatial mean with respect to the earlier layer's channels in the linearized model "
                "(nonlinearities replaced by identity), summed over space.</p>"
            )
            atomic_write_bytes(d / f"unit_{u}.html", _page(f"{h}:{u}", "\n".join(parts), 2))
        body = (
            f'<nav><a href="../../index.html">{_e(model_name)}</a> / {_e(h)}</nav><h1>{_e(h)}</h1>'
            f"<p>Activation shape {_e(list(ex.meta['activation_shapes'][h]))}.</p>"
            f'<div class="units">{"".join(cards)}</div>'
        )
        atomic_write_bytes(d / "index.html", _page(h, body, 2))
    site = {
        "model": model_name,
        "layers": hooks,
        "units": units,
        "fv_steps": fv_steps,
        "fv_size": size,
        "top_k": top_k,
        "bottom_k": bottom_k,
        "n_images": int(ex.meta["n_images"]),
    }
    atomic_write_bytes(out / "site.json", json.dumps(site, indent=1).encode("utf-8"))
    return out


# ----------------------------------------------------------------------------- CLI
def add_microscope_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``microscope`` to the ``visionlens`` CLI's subparsers; returns the new parser."""
    p = subparsers.add_parser(
        "microscope",
        help="build a static offline Microscope site (model/layer/unit pages)",
        description="Build a static site: model -> layer -> unit pages with feature "
        "visualization, dataset examples and top weights in and out.",
    )
    p.add_argument("--model", required=True, metavar="SPEC", help="model spec, e.g. timm:resnet18")
    p.add_argument(
        "--layers",
        required=True,
        action="append",
        metavar="L1,L2",
        help="hook names or layer aliases, comma separated (repeatable)",
    )
    p.add_argument(
        "--images",
        default="builtin",
        metavar="PATH",
        help="a folder of images, one image file, or 'builtin' (bundled real photos; default)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--units-per-layer", type=int, default=8, metavar="N", help="units with pages per layer")
    p.add_argument("--fv-steps", type=int, default=32, metavar="N", help="feature visualization steps (0 = none)")
    p.add_argument("--fv-size", type=int, default=None, metavar="N", help="feature visualization size in pixels")
    p.add_argument("--top-k", type=int, default=6, metavar="K", help="top dataset examples per unit")
    p.add_argument("--bottom-k", type=int, default=3, metavar="K", help="bottom dataset examples per unit")
    p.add_argument("--batch-size", type=int, default=16, metavar="N", help="images per forward pass")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="stop after N images")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="resumable dataset sweep checkpoint")
    p.add_argument("--image-size", type=int, default=None, metavar="N", help="model input size N x N")
    add_model_options(p)
    add_backend_options(p)
    p.set_defaults(handler=run_microscope_command)
    return p


@hookimpl
def visionlens_register_commands(subparsers: Any) -> None:
    """The ``microscope`` command (registered like a third-party plugin's)."""
    add_microscope_subcommand(subparsers)


def run_microscope_command(args: argparse.Namespace) -> int:
    """Run ``visionlens microscope``; returns the exit status."""
    for name in ("units_per_layer", "batch_size", "top_k"):
        if getattr(args, name) < 1:
            raise VisionLensError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}.")
    layers = [l.strip() for item in args.layers for l in item.split(",") if l.strip()]
    images = as_images(args.images)
    model = load_model(args.model, args.image_size, args.pretrained, args.model_args)
    out = build_microscope(
        model,
        layers,
        images,
        args.out,
        units_per_layer=args.units_per_layer,
        fv_steps=args.fv_steps,
        fv_size=args.fv_size,
        top_k=args.top_k,
        bottom_k=args.bottom_k,
        batch_size=args.batch_size,
        max_images=args.max_images,
        checkpoint=args.checkpoint,
        backend=args.backend,
        address=args.address,
    )
    n = sum(1 for _ in out.rglob("*.html"))
    print(f"microscope: wrote {n} pages to {out} (open {out / 'index.html'})")
    return 0
