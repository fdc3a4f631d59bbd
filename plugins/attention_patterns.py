"""``attention_patterns``: attention maps, head statistics and an offline interactive viewer.

For vision transformers (timm ViT / DeiT, the open_clip ViT image tower; the RN50-style CLIP
attention pool as one layer) the analysis reads ``*.attn.hook_pattern`` ``[batch, head, q, k]``:

* **maps** for one image (``image``): class-token-to-patch attention and the attention *from* a
  chosen query patch (``query``, default: the centre patch), per layer and head, as PNG grids
  overlaid on the image;
* **head statistics** averaged over up to ``max_images`` images, over patch queries: mean
  attention distance in pixels (patch-to-patch attention renormalized over patch keys, distance
  between patch centres), entropy (nats, over all keys), class-token share (attention mass on the
  prefix tokens) and a locality ratio (mean distance / the mean distance of uniform attention):
  heads below ``local_ratio`` are labelled ``local``, above ``1 - local_ratio`` ``global``;
* an offline **viewer** (``viewer.html``, written by :meth:`AttentionResult.save`): pick a layer
  and head, hover a patch to see where it attends, toggle the class-token view, see every head of
  the layer at once. Inline JavaScript with the data embedded as JSON (patterns quantized to 8
  bits per row); no network, every label set through ``textContent``. ``index.html`` keeps the
  script-free Content-Security-Policy of every visionlens result and links to the viewer.

For diffusion UNets with cross-attention (``...attn2.hook_pattern`` ``[batch, head, pixels,
tokens]``) it gives **cross-attention maps**: pixel -> each text token, averaged over heads per
attention module and over all modules (each resized to the largest map). Inputs are the UNet's
call arguments: a tuple ``(sample, timestep, encoder_hidden_states)`` or ``{"args": ..., "kwargs":
...}``; ``tokens`` labels the token axis.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.data import as_images
from visionlens.hookspecs import hookimpl
from visionlens.patching import PatchInputs
from visionlens.reducers import atomic_write_bytes
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError
from visionlens.viz import array_to_png, grid_shape, imshow_overlay, patch_grid

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["AttentionPatterns", "AttentionResult", "attention_hooks", "head_statistics", "VIEWER_FILE"]

VIEWER_FILE = "viewer.html"


def attention_hooks(model: HookedVisionModel) -> list[str]:
    """Self-attention pattern hooks on the image path, in layer order (text-tower hooks excluded)."""
    fam = (model.cfg.family or "").lower()
    names = [n for n in model.hook_dict if n.endswith("hook_pattern") and not n.startswith("text.")]
    if fam == "diffusion":
        return [n for n in names if ".attn1." in n or ".attn2." not in n]
    return names


def cross_attention_hooks(model: HookedVisionModel) -> list[str]:
    return [n for n in model.hook_dict if n.endswith("attn2.hook_pattern")]


def head_statistics(
    pattern: Tensor, n_prefix: int, grid: tuple[int, int], patch_px: tuple[float, float]
) -> dict[str, Tensor]:
    """Per head statistics of ``pattern`` ``[batch, head, T, T]`` over patch queries, averaged over the batch.

    Returns ``{"distance", "uniform_distance", "entropy", "cls_share"}`` each ``[head]``.
    """
    gh, gw = grid
    P = gh * gw
    pat = pattern.float()
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float32), torch.arange(gw, dtype=torch.float32), indexing="ij")
    coords = torch.stack([ys.flatten() * patch_px[0], xs.flatten() * patch_px[1]], -1)  # [P, 2] in pixels
    dist = torch.cdist(coords, coords).to(pat.device)  # [P, P]
    pp = pat[:, :, n_prefix : n_prefix + P, n_prefix : n_prefix + P]  # [B, H, P, P]
    mass = pp.sum(-1, keepdim=True).clamp_min(1e-12)
    d = ((pp / mass) * dist).sum(-1).mean(-1).mean(0)  # [H]
    q = pat[:, :, n_prefix : n_prefix + P, :]
    ent = -(q.clamp_min(1e-12).log() * q).sum(-1).mean(-1).mean(0)
    cls = q[..., :n_prefix].sum(-1).mean(-1).mean(0) if n_prefix else torch.zeros_like(d)
    uni = dist.mean().expand_as(d)
    return {"distance": d.cpu(), "uniform_distance": uni.cpu(), "entropy": ent.cpu(), "cls_share": cls.cpu()}


class AttentionPatterns(Analysis):
    """Attention maps, per-head statistics (local vs global heads) and an offline viewer."""

    name = "attention_patterns"
    summary = (
        "Attention patterns per layer and head: class-token and query-patch maps over the image, head "
        "statistics (distance, entropy, CLS share), UNet cross-attention maps, offline HTML viewer."
    )

    @dataclass
    class Config:
        layers: list[int] = option(list, help="layers (attention modules, in order) to show; empty = all; -1 = last")
        heads: list[int] = option(list, help="heads to show in the PNG grids; empty = all")
        image: int = option(0, min=0, help="index of the image whose maps are drawn and put in the viewer")
        query: Optional[int] = option(
            None, min=0, help="query token index for the 'attention from a patch' maps (default: the centre patch)"
        )
        max_images: int = option(16, min=1, max=100_000, help="images averaged in the head statistics")
        batch_size: int = option(8, min=1, max=4096, help="images per forward pass")
        local_ratio: float = option(
            0.5,
            min=0.0,
            max=1.0,
            help="distance / uniform distance below which a head is 'local' (above 1 - this: 'global')",
        )
        viewer: bool = option(True, help="write viewer.html (interactive, offline) when saving")
        viewer_max_tokens: int = option(1025, min=2, help="skip the viewer for longer token sequences (payload size)")
        tokens: list[str] = option(list, help="UNet: labels of the cross-attention tokens (text tokens)")
        max_tokens: int = option(16, min=1, help="UNet: cross-attention tokens drawn in the PNG grid")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: the last layer's first two heads drawn, two images averaged."""
        return {"layers": [-1], "heads": [0, 1], "max_images": 2}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        fam = (model.cfg.family or "").lower()
        if fam == "diffusion":
            if cross_attention_hooks(model) or attention_hooks(model):
                return True, ""
            return False, "this UNet has no hooked attention modules"
        if attention_hooks(model):
            return True, ""
        return False, (
            "no attention pattern hooks (*.hook_pattern) on the image path; attention_patterns needs a "
            "vision transformer, a CLIP image tower or a UNet with attention"
        )

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "AttentionResult":
        if (model.cfg.family or "").lower() == "diffusion":
            return self._run_unet(model, inputs, config)
        return self._run_vit(model, inputs, config)

    # ------------------------------------------------------------------ transformers
    def _run_vit(self, model: HookedVisionModel, inputs: Any, config: Any) -> "AttentionResult":
        hooks_all = attention_hooks(model)
        n_all = len(hooks_all)
        layers = sorted({l % n_all for l in config.layers}) if config.layers else list(range(n_all))
        for l in config.layers:
            if not -n_all <= l < n_all:
                raise ConfigError(f"attention_patterns: layer {l} is out of range ({n_all} attention layers).")
        hooks = [hooks_all[l] for l in layers]
        images = as_images(inputs)
        stats: dict[str, list[Tensor]] = {}
        count = 0
        sel: Optional[Tensor] = None
        sel_img: Optional[np.ndarray] = None
        name = ""
        T = None
        with torch.no_grad():
            for offset, x in images.batches(model, config.batch_size, limit=config.max_images):
                _, cache = model.run_with_cache(x, names_filter=hooks, return_cache_object=False)
                pats = [cache[h] for h in hooks]
                if T is None:
                    T = int(pats[0].shape[-1])
                    n_prefix, grid = patch_grid(model.cfg, T)
                    if grid is None:
                        raise VisionLensError(
                            f"attention_patterns: {T} tokens do not form a patch grid (prefix "
                            f"{model.cfg.num_prefix_tokens}); cannot draw maps."
                        )
                    H = int(pats[0].shape[1])
                    for l, p in zip(layers, pats):
                        if p.shape[-1] != T or p.shape[1] != H:
                            raise VisionLensError("attention_patterns: layers have different token counts or heads.")
                    img_px = model.cfg.image_size or (grid[0] * 16, grid[1] * 16)
                    patch_px = (img_px[0] / grid[0], img_px[1] / grid[1])
                assert grid is not None  # set (and checked) together with T on the first batch
                for p in pats:
                    s = head_statistics(p, n_prefix, grid, patch_px)
                    for k, v in s.items():
                        stats.setdefault(k, []).append(v * x.shape[0])
                if offset <= config.image < offset + x.shape[0]:
                    j = config.image - offset
                    sel = torch.stack([p[j] for p in pats]).cpu()  # [L, H, T, T]
                    sel_img = images.display(config.image, model) if images.random_access else None
                    name = images.name(config.image) if images.length is not None else f"#{config.image}"
                count += x.shape[0]
        if count == 0:
            raise VisionLensError("attention_patterns: no images to analyse (the input is empty).")
        if sel is None:
            raise ConfigError(
                f"attention_patterns: config field 'image' is {config.image}, but only {count} images "
                "were read (max_images)."
            )
        assert grid is not None and T is not None  # set on the first batch (count > 0)
        Ls = len(hooks)
        # stats lists hold one entry per (batch, layer), layer-fastest: regroup by layer
        st = {}
        for k, vs in stats.items():
            per_layer = [vs[i::Ls] for i in range(Ls)]
            st[k] = torch.stack([sum(pl) / count for pl in per_layer])  # [L, H]
        query = config.query
        if query is None:
            query = n_prefix + (grid[0] // 2) * grid[1] + grid[1] // 2
        if not 0 <= query < T:
            raise ConfigError(f"attention_patterns: query {query} is out of range for {T} tokens.")
        tensors: dict[str, Tensor] = {
            "pattern": sel.half() if sel.numel() > 4_000_000 else sel.float(),
            "cls_maps": sel[:, :, 0, n_prefix:].reshape(Ls, sel.shape[1], *grid).float()
            if n_prefix
            else sel.mean(2)[:, :, n_prefix:].reshape(Ls, sel.shape[1], *grid).float(),
            "query_maps": sel[:, :, query, n_prefix:].reshape(Ls, sel.shape[1], *grid).float(),
            "distance": st["distance"],
            "uniform_distance": st["uniform_distance"],
            "entropy": st["entropy"],
            "cls_share": st["cls_share"],
        }
        if sel_img is not None:
            tensors["image"] = torch.from_numpy(sel_img).to(torch.uint8)
        ratio = st["distance"] / st["uniform_distance"].clamp_min(1e-12)
        tensors["locality_ratio"] = ratio
        table = Table(
            ["layer", "hook", "head", "mean_distance_px", "locality_ratio", "entropy", "cls_share", "type"],
            title=f"Head statistics over {count} image(s) (patch queries)",
        )
        for i, l in enumerate(layers):
            for h in range(sel.shape[1]):
                r = float(ratio[i, h])
                kind = "local" if r < config.local_ratio else ("global" if r > 1 - config.local_ratio else "mixed")
                table.rows.append(
                    [
                        l,
                        hooks[i],
                        h,
                        float(st["distance"][i, h]),
                        r,
                        float(st["entropy"][i, h]),
                        float(st["cls_share"][i, h]),
                        kind,
                    ]
                )
        meta = {
            "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
            "family": model.cfg.family,
            "mode": "self_attention",
            "hooks": hooks,
            "layers": layers,
            "n_heads": int(sel.shape[1]),
            "n_tokens": T,
            "n_prefix": n_prefix,
            "grid": list(grid),
            "patch_px": list(patch_px),
            "query": query,
            "image": config.image,
            "image_name": name,
            "n_images": count,
            "cls_maps": "class-token (token 0) attention to each patch"
            if n_prefix
            else "mean attention received by each patch (no class token)",
        }
        return AttentionResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"heads": table},
        )

    # ------------------------------------------------------------------ UNet cross-attention
    def _run_unet(self, model: HookedVisionModel, inputs: Any, config: Any) -> "AttentionResult":
        cross = cross_attention_hooks(model)
        if not cross:
            raise VisionLensError(
                "attention_patterns: this UNet has no cross-attention (attn2) modules; "
                "self-attention maps of UNets are not drawn."
            )
        if isinstance(inputs, (str, os.PathLike)) or inputs is None:
            raise VisionLensError(
                "attention_patterns on a UNet expects its call arguments: (sample, timestep, "
                "encoder_hidden_states) or {'args': (...), 'kwargs': {...}}."
            )
        call = PatchInputs.of(inputs)
        with torch.no_grad():
            _, cache = model.run_with_cache(*call.args, names_filter=cross, return_cache_object=False, **call.kwargs)
        b = config.image
        if b >= call.n:
            raise ConfigError(f"attention_patterns: config field 'image' is {b}, but the batch has {call.n} samples.")
        maps = []
        sizes = []
        for h in cross:
            p = cache[h][b].float().mean(0)  # [pixels, tokens]
            side = int(round(math.sqrt(p.shape[0])))
            if side * side != p.shape[0]:
                continue
            m = p.T.reshape(p.shape[1], side, side)
            maps.append(m)
            sizes.append(side)
        if not maps:
            raise VisionLensError("attention_patterns: cross-attention maps are not square; cannot draw them.")
        big = max(sizes)
        up = [
            torch.nn.functional.interpolate(m[None], size=(big, big), mode="bilinear", align_corners=False)[0]
            for m in maps
        ]
        mean = torch.stack(up).mean(0)  # [tokens, big, big]
        n_tok = mean.shape[0]
        labels = list(config.tokens) + [f"token {i}" for i in range(len(config.tokens), n_tok)]
        table = Table(
            ["token", "label", "mean_attention", "peak_attention"],
            title="Cross-attention per token (mean over heads and modules)",
        )
        for t in range(n_tok):
            table.rows.append([t, labels[t], float(mean[t].mean()), float(mean[t].max())])
        tensors = {"cross_maps": mean, **{f"cross/{h}": maps[i] for i, h in enumerate(cross[: len(maps)])}}
        meta = {
            "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
            "family": "diffusion",
            "mode": "cross_attention",
            "hooks": cross[: len(maps)],
            "token_labels": labels[:n_tok],
            "map_size": big,
            "image": b,
        }
        return AttentionResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"tokens": table},
        )


# ============================================================================ result
class AttentionResult(Result):
    """Result of ``attention_patterns``.

    Self-attention: ``pattern`` ``[layers, heads, T, T]`` of the chosen image, ``cls_maps`` /
    ``query_maps`` ``[layers, heads, grid_h, grid_w]``, per-head ``distance`` (pixels),
    ``uniform_distance``, ``locality_ratio``, ``entropy``, ``cls_share`` ``[layers, heads]``, the
    ``image``; table ``heads``. Cross-attention (UNet): ``cross_maps`` ``[tokens, h, w]`` and
    ``cross/{hook}``; table ``tokens``. ``save()`` also writes ``viewer.html`` (self-attention).
    """

    @property
    def mode(self) -> str:
        return str(self.meta.get("mode", "self_attention"))

    def figures(self) -> dict[str, Any]:
        if self.mode == "cross_attention":
            return {"cross_attention": self.plot()}
        return {
            "overview": self.plot(),
            "cls_attention": self.plot_maps("cls_maps"),
            "query_attention": self.plot_maps("query_maps"),
        }

    def plot(self) -> Any:
        if self.mode == "cross_attention":
            return self.plot_cross()
        return self.plot_stats()

    def plot_stats(self) -> Any:
        """Mean attention distance vs entropy of every head (local vs global), and distance per layer."""
        d = self.tensors["distance"].numpy()
        e = self.tensors["entropy"].numpy()
        c = self.tensors["cls_share"].numpy()
        layers = self.meta.get("layers", list(range(d.shape[0])))
        fig = new_figure(12, 4)
        ax1, ax2, ax3 = fig.subplots(1, 3)
        for i, l in enumerate(layers):
            ax1.scatter(
                np.full(d.shape[1], l),
                d[i],
                s=12,
                c=e[i],
                cmap="viridis",
                vmin=float(e.min()),
                vmax=float(e.max()) + 1e-9,
            )
        ax1.plot(layers, self.tensors["uniform_distance"][:, 0].numpy(), "k--", lw=0.8, label="uniform attention")
        ax1.set_xlabel("layer")
        ax1.set_ylabel("mean attention distance (px)")
        ax1.legend(fontsize=7)
        ax1.set_title("mean attention distance per head (colour: entropy)", fontsize=8)
        im = ax2.imshow(c, aspect="auto", cmap="magma", vmin=0, vmax=max(1e-9, float(c.max())))
        ax2.set_xlabel("head")
        ax2.set_ylabel("layer index")
        ax2.set_title("class-token share of attention", fontsize=8)
        fig.colorbar(im, ax=ax2, shrink=0.8)
        im = ax3.imshow(e, aspect="auto", cmap="viridis")
        ax3.set_xlabel("head")
        if d.shape[1] <= 16:
            ax2.set_xticks(range(d.shape[1]))
            ax3.set_xticks(range(d.shape[1]))
        ax3.set_title("attention entropy (nats)", fontsize=8)
        fig.colorbar(im, ax=ax3, shrink=0.8)
        fig.suptitle(f"{self.meta.get('model', '')}: {self.meta.get('n_images', '?')} image(s)", fontsize=9)
        return fig

    def plot_maps(self, key: str = "cls_maps", max_layers: int = 12, max_heads: int = 12) -> Any:
        """A layers x heads grid of maps (``cls_maps`` or ``query_maps``) over the image."""
        maps = self.tensors[key]
        L, H = min(max_layers, maps.shape[0]), min(max_heads, maps.shape[1])
        heads = self.config.get("heads") or list(range(H))
        heads = [h % maps.shape[1] for h in heads][:max_heads]
        img = self.tensors["image"].numpy() if "image" in self.tensors else None
        fig = new_figure(1.5 * len(heads) + 0.8, 1.5 * L + 0.6)
        axes = fig.subplots(L, len(heads), squeeze=False)
        layers = self.meta.get("layers", list(range(L)))
        for i in range(L):
            for j, h in enumerate(heads):
                imshow_overlay(axes[i][j], img, maps[i, h].numpy(), alpha=0.65)
                if i == 0:
                    axes[i][j].set_title(f"head {h}", fontsize=7)
            axes[i][0].set_ylabel(f"layer {layers[i]}", fontsize=7)
        if key == "query_maps":
            q = int(self.meta.get("query", 0))
            n_prefix, gw = int(self.meta.get("n_prefix", 0)), int(self.meta["grid"][1])
            where = f"patch ({(q - n_prefix) // gw}, {(q - n_prefix) % gw})" if q >= n_prefix else f"token {q}"
            title = f"attention from query {where}"
        else:
            title = self.meta.get("cls_maps", "class-token attention")
        fig.suptitle(f"{title}: {self.meta.get('image_name', '')}", fontsize=9)
        return fig

    def plot_cross(self) -> Any:
        maps = self.tensors["cross_maps"]
        n = min(int(self.config.get("max_tokens", 16)), maps.shape[0])
        labels = self.meta.get("token_labels", [])
        rows, cols = grid_shape(n, 8)
        fig = new_figure(1.8 * cols, 1.9 * rows)
        axes = fig.subplots(rows, cols, squeeze=False).flatten()
        for i, ax in enumerate(axes):
            ax.set_axis_off()
            if i < n:
                ax.imshow(maps[i].numpy(), cmap="inferno")
                ax.set_title(str(labels[i])[:18] if i < len(labels) else f"token {i}", fontsize=7)
        fig.suptitle("cross-attention: pixels -> text token (mean over heads and modules)", fontsize=9)
        return fig

    # ------------------------------------------------------------------ viewer
    def viewer_html(self) -> str:
        """The self-contained interactive viewer (inline script, embedded data, no network)."""
        if self.mode != "self_attention" or "pattern" not in self.tensors:
            raise VisionLensError("The attention viewer needs self-attention patterns (a transformer result).")
        pat = self.tensors["pattern"].float()  # [L, H, T, T]
        L, H, T, _ = pat.shape
        rowmax = pat.amax(-1).clamp_min(1e-12)
        q8 = (pat / rowmax[..., None] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        img_b64 = ""
        if "image" in self.tensors:
            img_b64 = base64.b64encode(array_to_png(self.tensors["image"].numpy())).decode("ascii")
        stats = [
            [
                {
                    "d": round(float(self.tensors["distance"][l, h]), 3),
                    "r": round(float(self.tensors["locality_ratio"][l, h]), 3),
                    "e": round(float(self.tensors["entropy"][l, h]), 3),
                    "c": round(float(self.tensors["cls_share"][l, h]), 4),
                }
                for h in range(H)
            ]
            for l in range(L)
        ]
        data = {
            "title": self.title(),
            "model": self.meta.get("model", ""),
            "image_name": self.meta.get("image_name", ""),
            "hooks": self.meta.get("hooks", []),
            "layers": self.meta.get("layers", list(range(L))),
            "L": L,
            "H": H,
            "T": T,
            "n_prefix": int(self.meta.get("n_prefix", 0)),
            "grid": self.meta.get("grid"),
            "query": int(self.meta.get("query", 0)),
            "rowmax": [round(float(v), 6) for v in rowmax.flatten()],
            "patterns": base64.b64encode(q8.tobytes()).decode("ascii"),
            "image": img_b64,
            "stats": stats,
        }
        payload = (
            json.dumps(data, separators=(",", ":"))
            .replace("<", "\\u003c")
            .replace(">", "\\u003e")
            .replace("&", "\\u0026")
            .replace("\u2028", "\\u2028")
            .replace("\u2029", "\\u2029")
        )
        csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
        return (
            _VIEWER_TEMPLATE.replace("%CSP%", csp)
            .replace("%TITLE%", html.escape(self.title()))
            .replace("%DATA%", payload)
            .replace("%SCRIPT%", _VIEWER_JS)
        )

    def _html_body(self, pngs: Any, max_rows: int = 500) -> str:
        body = super()._html_body(pngs, max_rows)
        if self.mode == "self_attention" and self.config.get("viewer", True) and self._viewer_ok():
            link = (
                f'<p class="summary"><a href="{VIEWER_FILE}">Open the interactive attention viewer</a> '
                "(offline; pick a layer and head, hover a patch).</p>"
            )
            body = body.replace("</h1>", "</h1>" + link, 1)
        return body

    def _viewer_ok(self) -> bool:
        return "pattern" in self.tensors and int(self.tensors["pattern"].shape[-1]) <= int(
            self.config.get("viewer_max_tokens", 1025)
        )

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """Everything :meth:`Result.save` writes, plus ``viewer.html`` for self-attention results."""
        out = super().save(directory)
        if self.mode == "self_attention" and self.config.get("viewer", True) and self._viewer_ok():
            atomic_write_bytes(out / VIEWER_FILE, self.viewer_html().encode("utf-8"))
        return out


_VIEWER_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%CSP%">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE% - attention viewer</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2em;color:#222;background:#fff}
h1{font-size:1.25em;margin:0 0 .3em} .sub{color:#555;font-size:.85em;margin-bottom:.6em}
#controls{display:flex;gap:1em;align-items:center;flex-wrap:wrap;margin-bottom:.8em;font-size:.9em}
#main{display:flex;gap:1.5em;align-items:flex-start;flex-wrap:wrap}
#stage{position:relative;width:384px;height:384px;border:1px solid #ccc;background:#eee}
#stage img,#stage canvas{position:absolute;left:0;top:0;width:384px;height:384px;image-rendering:pixelated}
#side{max-width:560px} #heads{display:flex;flex-wrap:wrap;gap:6px;margin:.5em 0}
.hd{display:flex;flex-direction:column;align-items:center;font-size:.72em;cursor:pointer;border:2px solid transparent}
.hd.sel{border-color:#c44e52} .hd canvas{width:84px;height:84px;image-rendering:pixelated}
table{border-collapse:collapse;font-size:.8em} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3} tr.sel td{background:#fde8e8} #info{font-size:.9em;min-height:1.4em}
#errors{color:#b00;font-weight:bold;white-space:pre-wrap}
</style></head>
<body>
<h1 id="title"></h1><div class="sub" id="subtitle"></div>
<div id="controls">
<label>Layer <select id="layer"></select></label>
<label>Head <select id="head"></select></label>
<label><input type="checkbox" id="cls"> class-token attention</label>
<label>Opacity <input type="range" id="alpha" min="0" max="100" value="65"></label>
<span>Hover a patch to see its attention; click to pin.</span>
</div>
<div id="main">
<div id="stage"><img id="img" alt="input image"><canvas id="ov" width="384" height="384"></canvas></div>
<div id="side"><div id="info"></div><div id="heads"></div><table id="stats"></table></div>
</div>
<div id="errors"></div>
<script type="application/json" id="vl-data">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

_VIEWER_JS = r"""
(function () {
  'use strict';
  var errBox = document.getElementById('errors');
  window.addEventListener('error', function (e) {
    errBox.textContent += 'Error: ' + e.message + '\n';
    document.body.setAttribute('data-error', '1');
  });
  var D = JSON.parse(document.getElementById('vl-data').textContent);
  var L = D.L, H = D.H, T = D.T, NP = D.n_prefix, GH = D.grid[0], GW = D.grid[1];
  var raw = atob(D.patterns);
  var P = new Uint8Array(raw.length);
  for (var i = 0; i < raw.length; i++) { P[i] = raw.charCodeAt(i); }
  var state = {layer: 0, head: 0, query: D.query, pinned: false, cls: false, alpha: 0.65};
  var $ = function (id) { return document.getElementById(id); };
  $('title').textContent = D.title;
  $('subtitle').textContent = D.model + (D.image_name ? ' \u2014 image ' + D.image_name : '') + ' \u2014 ' + T +
      ' tokens (' + NP + ' prefix, ' + GH + 'x' + GW + ' patches)';
  if (D.image) { $('img').src = 'data:image/png;base64,' + D.image; } else { $('img').style.display = 'none'; }
  var layerSel = $('layer'), headSel = $('head');
  for (var l = 0; l < L; l++) {
    var o = document.createElement('option'); o.value = String(l);
    o.textContent = 'layer ' + D.layers[l] + ' (' + D.hooks[l] + ')'; layerSel.appendChild(o);
  }
  for (var h = 0; h < H; h++) {
    var oh = document.createElement('option'); oh.value = String(h); oh.textContent = 'head ' + h;
    headSel.appendChild(oh);
  }
  function row(l, h, q) {  // attention of query q over all keys, as floats
    var base = ((l * H + h) * T + q) * T, m = D.rowmax[(l * H + h) * T + q] / 255, out = new Float32Array(T);
    for (var k = 0; k < T; k++) { out[k] = P[base + k] * m; }
    return out;
  }
  function colour(v) {  // v in [0, 1] -> inferno-like rgb
    var stops = [[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]];
    var x = Math.max(0, Math.min(1, v)) * (stops.length - 1), i = Math.min(stops.length - 2, Math.floor(x)), f = x - i;
    var a = stops[i], b = stops[i + 1];
    return [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f, a[2] + (b[2] - a[2]) * f];
  }
  function drawMap(ctx, w, hgt, att, alpha, outline) {
    ctx.clearRect(0, 0, w, hgt);
    var mx = 1e-12;
    for (var k = NP; k < T; k++) { if (att[k] > mx) { mx = att[k]; } }
    var cw = w / GW, ch = hgt / GH;
    for (var k2 = NP; k2 < T; k2++) {
      var p = k2 - NP, r = Math.floor(p / GW), c = p % GW, rgb = colour(att[k2] / mx);
      ctx.fillStyle = 'rgba(' + Math.round(rgb[0]) + ',' + Math.round(rgb[1]) + ',' + Math.round(rgb[2]) + ','
        + alpha + ')';
      ctx.fillRect(c * cw, r * ch, Math.ceil(cw), Math.ceil(ch));
    }
    if (outline !== null && outline >= NP) {
      var q = outline - NP; ctx.strokeStyle = '#00e5ff'; ctx.lineWidth = 2;
      ctx.strokeRect((q % GW) * cw + 1, Math.floor(q / GW) * ch + 1, cw - 2, ch - 2);
    }
  }
  function query() { return state.cls ? 0 : state.query; }
  function describe(q) {
    if (q < NP) { return q === 0 ? 'class token' : 'prefix token ' + q; }
    return 'patch (' + Math.floor((q - NP) / GW) + ', ' + ((q - NP) % GW) + ')';
  }
  var headCanvases = [];
  function buildHeads() {
    var box = $('heads');
    while (box.firstChild) { box.removeChild(box.firstChild); }
    headCanvases = [];
    for (var h = 0; h < H; h++) {
      var d = document.createElement('div'); d.className = 'hd'; d.setAttribute('data-head', String(h));
      var c = document.createElement('canvas'); c.width = 84; c.height = 84;
      var s = document.createElement('span'); s.textContent = 'head ' + h;
      d.appendChild(c); d.appendChild(s); box.appendChild(d); headCanvases.push(c);
      d.addEventListener('click', function (ev) {
        state.head = parseInt(this.getAttribute('data-head'), 10); headSel.value = String(state.head); render();
      });
    }
  }
  function buildStats() {
    var t = $('stats');
    while (t.firstChild) { t.removeChild(t.firstChild); }
    var hr = document.createElement('tr');
    ['head', 'distance (px)', 'locality', 'entropy', 'CLS share'].forEach(function (x) {
      var th = document.createElement('th'); th.textContent = x; hr.appendChild(th);
    });
    t.appendChild(hr);
    for (var h = 0; h < H; h++) {
      var s = D.stats[state.layer][h], tr = document.createElement('tr');
      if (h === state.head) { tr.className = 'sel'; }
      [String(h), s.d.toFixed(1), s.r.toFixed(2), s.e.toFixed(2), s.c.toFixed(3)].forEach(function (x) {
        var td = document.createElement('td'); td.textContent = x; tr.appendChild(td);
      });
      t.appendChild(tr);
    }
  }
  function render() {
    var q = query();
    var att = row(state.layer, state.head, q);
    drawMap($('ov').getContext('2d'), 384, 384, att, state.alpha, q);
    for (var h = 0; h < H; h++) {
      drawMap(headCanvases[h].getContext('2d'), 84, 84, row(state.layer, h, q), 1.0, q);
      headCanvases[h].parentNode.className = h === state.head ? 'hd sel' : 'hd';
    }
    var clsPart = 0;
    for (var k = 0; k < NP; k++) { clsPart += att[k]; }
    $('info').textContent = 'Layer ' + D.layers[state.layer] + ', head ' + state.head + ': attention from ' +
      describe(q) +
        (NP ? ' \u2014 ' + (100 * clsPart).toFixed(1) + '% on prefix tokens' : '') + (state.pinned ? ' (pinned)' : '');
    buildStats();
  }
  layerSel.addEventListener('change', function () { state.layer = parseInt(layerSel.value, 10); render(); });
  headSel.addEventListener('change', function () { state.head = parseInt(headSel.value, 10); render(); });
  $('cls').addEventListener('change', function () { state.cls = $('cls').checked; render(); });
  $('alpha').addEventListener('input', function () { state.alpha = parseInt($('alpha').value, 10) / 100; render(); });
  var ov = $('ov');
  function patchAt(ev) {
    var rect = ov.getBoundingClientRect();
    var c = Math.floor((ev.clientX - rect.left) / rect.width * GW);
    var r = Math.floor((ev.clientY - rect.top) / rect.height * GH);
    if (c < 0 || r < 0 || c >= GW || r >= GH) { return null; }
    return NP + r * GW + c;
  }
  ov.addEventListener('mousemove', function (ev) {
    if (state.pinned || state.cls) { return; }
    var q = patchAt(ev); if (q !== null && q !== state.query) { state.query = q; render(); }
  });
  ov.addEventListener('click', function (ev) {
    var q = patchAt(ev); if (q !== null) { state.query = q; state.pinned = !state.pinned; render(); }
  });
  buildHeads();
  render();
  document.body.setAttribute('data-ready', '1');
})();
"""


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [AttentionPatterns]
