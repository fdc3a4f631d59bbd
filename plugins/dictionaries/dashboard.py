"""Feature dashboards: per feature its top dataset examples with heatmaps, activation histogram, logit effect
and (optionally) a feature visualization; shown in notebooks (``_repr_html_``) or saved as a static site
(``index.html`` + one page per feature, images as PNG files, no scripts, no CDN, every label escaped).
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from ...data import as_images
from ...viz import array_to_png, overlay, patch_grid, tokens_to_grid
from .dictionary import SparseDictionary
from .features import ablation_effects, readout_weights, sweep_features, visualize_features
from .splice import spliced

if TYPE_CHECKING:
    from ...hooked_model import HookedVisionModel

__all__ = ["FeatureCard", "Dashboard", "build_dashboard"]

SCALE = 3  # example images are upscaled (nearest) for display


@dataclass
class FeatureCard:
    """Everything a dashboard shows about one feature."""

    index: int
    density: float
    top_values: List[float]
    top_images: List[int]
    examples_png: bytes  # a row of top examples with the feature's heatmap
    hist_counts: List[float]
    hist_edges: List[float]
    logit_effect: Dict[str, float] = field(default_factory=dict)  # class -> mean logit change when ablated
    readout: Dict[str, float] = field(default_factory=dict)  # class -> decoder direction through the head
    fv_png: Optional[bytes] = None

    def to_dict(self) -> Dict[str, Any]:
        return {
            "index": self.index,
            "density": self.density,
            "top_values": self.top_values,
            "top_images": self.top_images,
            "hist_counts": self.hist_counts,
            "hist_edges": self.hist_edges,
            "logit_effect": self.logit_effect,
            "readout": self.readout,
        }


def _svg_hist(counts: Sequence[float], edges: Sequence[float], w: int = 220, h: int = 60) -> str:
    m = max(max(counts, default=0), 1)
    bw = w / max(len(counts), 1)
    bars = "".join(
        f'<rect x="{i * bw:.1f}" y="{h - h * c / m:.1f}" width="{bw - 1:.1f}" height="{h * c / m:.1f}" fill="#4a7"/>'
        for i, c in enumerate(counts)
    )
    hi = edges[-1] if edges else 0
    return (
        f'<svg width="{w}" height="{h + 14}" xmlns="http://www.w3.org/2000/svg">{bars}'
        f'<text x="0" y="{h + 12}" font-size="10">0</text>'
        f'<text x="{w - 40}" y="{h + 12}" font-size="10">{hi:.3g}</text></svg>'
    )


def _effects_html(effects: Dict[str, float], title: str) -> str:
    if not effects:
        return ""
    items = sorted(effects.items(), key=lambda kv: -abs(kv[1]))[:6]
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:+.3f}</td></tr>" for k, v in items)
    return f"<div><b>{html.escape(title)}</b><table>{rows}</table></div>"


class Dashboard:
    """Feature cards of one dictionary; ``save(dir)`` writes the static site."""

    def __init__(self, dictionary: SparseDictionary, cards: List[FeatureCard], meta: Dict[str, Any]) -> None:
        self.dictionary, self.cards, self.meta = dictionary, cards, meta

    def _card_html(self, c: FeatureCard, img: Any) -> str:
        tops = ", ".join(f"{v:.3g}" for v in c.top_values[:8])
        fv = f'<div><b>visualization</b><br><img src="{img(c.fv_png, f"fv_{c.index}")}"></div>' if c.fv_png else ""
        return (
            f'<div class="feat"><h3>feature {c.index}</h3><p>fires on {100 * c.density:.1f}% of images; '
            f"top values {html.escape(tops)}</p>"
            f'<div><b>top examples</b><br><img src="{img(c.examples_png, f"examples_{c.index}")}"></div>'
            f'<div class="row"><div><b>activation histogram</b> (per-image max, non-zero)<br>'
            f"{_svg_hist(c.hist_counts, c.hist_edges)}</div>"
            f"{_effects_html(c.logit_effect, 'logit effect (ablation)')}"
            f"{_effects_html(c.readout, 'direct logit attribution (decoder direction)')}{fv}</div></div>"
        )

    def _header(self) -> str:
        return f"<h2>{html.escape(self.dictionary.summary())}</h2>"

    _STYLE = (
        "<style>body{font-family:sans-serif} .feat{border-top:1px solid #ccc;margin:8px 0} "
        ".row{display:flex;gap:24px;flex-wrap:wrap} img{image-rendering:pixelated} td{padding:0 6px}</style>"
    )

    def _repr_html_(self) -> str:
        inline = lambda png, _name: "data:image/png;base64," + base64.b64encode(png).decode()  # noqa: E731
        return "<div>" + self._header() + "".join(self._card_html(c, inline) for c in self.cards) + "</div>"

    def save(self, out_dir: Union[str, os.PathLike]) -> Path:
        """Write ``index.html``, ``feature_<i>.html``, ``img/*.png`` and ``dashboard.json`` into ``out_dir``."""
        root = Path(out_dir)
        (root / "img").mkdir(parents=True, exist_ok=True)

        def to_file(png: bytes, name: str) -> str:
            _write(root / "img" / f"{name}.png", png)
            return f"img/{name}.png"

        links = []
        for c in self.cards:
            page = f"feature_{c.index}.html"
            body = self._card_html(c, to_file)
            _write(
                root / page,
                _page(f"feature {c.index}", self._STYLE + '<p><a href="index.html">all features</a></p>' + body),
            )
            top = max(c.logit_effect, key=lambda k: c.logit_effect[k]) if c.logit_effect else ""
            links.append(
                f'<tr><td><a href="{page}">feature {c.index}</a></td><td>{100 * c.density:.1f}%</td>'
                f"<td>{html.escape(top)}</td>"
                f'<td><img src="img/examples_{c.index}.png" height="40"></td></tr>'
            )
        table = "<table><tr><th>feature</th><th>density</th><th>top class</th><th>examples</th></tr>" + "".join(links)
        _write(root / "index.html", _page("dictionary features", self._STYLE + self._header() + table + "</table>"))
        meta = {"card": self.dictionary.full_card(), **self.meta, "features": [c.to_dict() for c in self.cards]}
        _write(root / "dashboard.json", json.dumps(meta, indent=1).encode())
        return root


def _page(title: str, body: str) -> str:
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title>'
    return f"<!doctype html><html><head>{head}</head><body>{body}</body></html>"


def _write(path: Path, data: Union[str, bytes]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def _heat(model: HookedVisionModel, fmap: torch.Tensor, layout_tokens: bool) -> Optional[np.ndarray]:
    """A feature's map over positions -> ``[h, w]`` (tokens laid on the patch grid), or None."""
    if fmap.ndim == 2:
        return fmap.numpy()
    if layout_tokens:
        n_prefix, grid = patch_grid(model.cfg, int(fmap.shape[-1]))
        return tokens_to_grid(fmap, n_prefix, grid).numpy() if grid else None
    return None


def _examples_png(
    model: HookedVisionModel, src: Any, maps: Dict[int, torch.Tensor], images: Sequence[int], f: int, tokens: bool
) -> bytes:
    tiles = []
    for j in images:
        img = src.display(j, model) if src.random_access else None
        if img is None:
            continue
        fm = maps.get(j)
        heat = _heat(model, fm[f], tokens) if fm is not None else None
        t = overlay(img, heat, alpha=0.5) if heat is not None else img
        tiles.append(np.kron(t, np.ones((SCALE, SCALE, 1), dtype=np.uint8)))
    if not tiles:
        return array_to_png(np.zeros((8, 8, 3), np.uint8))
    pad = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
    row = np.concatenate([x for t in tiles for x in (t, pad)][:-1], 1)
    return array_to_png(row)


def build_dashboard(
    model: HookedVisionModel,
    dictionary: SparseDictionary,
    images: Any,
    *,
    hook: Optional[str] = None,
    features: Optional[Sequence[int]] = None,
    n_features: int = 16,
    k: int = 8,
    effect_images: int = 64,
    fv_steps: int = 0,
    batch_size: int = 64,
    max_images: Optional[int] = None,
) -> Dashboard:
    """Sweep ``images`` with ``dictionary`` spliced in (error term on) and build the cards of ``features``
    (default: the ``n_features`` most often active). ``fv_steps > 0`` adds a feature visualization each."""
    src = as_images(images)
    with spliced(model, dictionary, hook, use_error=True) as s:
        sw = sweep_features(model, s, src, k=k, batch_size=batch_size, max_images=max_images)
        if features is None:
            order = torch.argsort(sw.density, descending=True, stable=True)
            features = [int(f) for f in order[:n_features] if sw.density[f] > 0]
        feats = [int(f) for f in features]
        xs = [x for _, x in src.batches(model, effect_images, limit=effect_images)] if src.random_access else []
        classes = model.class_names or []
        eff = ablation_effects(model, s, xs[0], feats) if xs and feats else None
        ro = readout_weights(model, s)
        fv = visualize_features(model, s, feats, steps=fv_steps) if fv_steps > 0 and feats else None
    name = lambda c: classes[c] if c < len(classes) else f"class {c}"  # noqa: E731
    cards = []
    tokens = len(sw.pos_shape) == 1
    for n, f in enumerate(feats):
        assert sw.top.values is not None and sw.top.index is not None
        vals = sw.top.values[:, f]
        idx = sw.top.index[:, f]
        keep = [i for i in range(len(vals)) if vals[i] > 0]
        top_imgs = [int(idx[i]) for i in keep]
        card = FeatureCard(
            index=f,
            density=round(float(sw.density[f]), 4),
            top_values=[round(float(vals[i]), 4) for i in keep],
            top_images=top_imgs,
            examples_png=_examples_png(model, src, sw.maps, top_imgs, f, tokens),
            hist_counts=[float(c) for c in sw.hist_counts[f]],
            hist_edges=[float(e) for e in sw.hist_edges[f]],
        )
        if eff is not None and eff.ndim == 2:
            card.logit_effect = {name(c): round(float(v), 4) for c, v in enumerate(eff[n])}
        if ro is not None:
            card.readout = {name(c): round(float(v), 4) for c, v in enumerate(ro[f])}
        if fv is not None:
            img = (fv[n].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            card.fv_png = array_to_png(np.kron(img, np.ones((SCALE, SCALE, 1), dtype=np.uint8)))
        cards.append(card)
    meta = {"n_images": sw.n_images, "k": k, "hook": sw.hook, "feature_hook": f"{sw.hook}.hook_sae_acts"}
    return Dashboard(dictionary, cards, meta)
