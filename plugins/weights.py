"""``weights``: the weight explorer as an analysis (functions in :mod:`visionlens.weights`).

For each conv layer (``nn.Conv2d`` modules of the source model, in execution order; or the
``layers`` chosen) it stores the ``[out, in]`` channel-to-channel strengths (norm of each
kernel), per-output-unit sparsity (top-k mass, Gini), NMF-to-RGB weight pictures, and which
earlier conv each layer reads (adjacent pairs). ``expanded=["a->b", ...]`` adds expanded weights
between two hooks along the model's linear path (``[C_b, C_a]``; input-independent by construction,
refused with the reason when an op on the path is not, see :func:`visionlens.weights.expanded_weights`),
a motif search on each pair (strongest positive / negative connections, per-unit top-k mass, Gini and
number of inputs carrying 90% of the weight) and weight banners (each chosen unit's expanded-weight
kernel per input unit, a PNG figure in the saved HTML). Needs no images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens import weights as vw
from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import closest_names

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["Weights", "WeightsResult"]


class Weights(Analysis):
    """Channel-to-channel weight strengths, top inputs / outputs, sparsity, expanded weights, NMF pictures."""

    name = "weights"
    summary = (
        "Weight explorer: channel-to-channel strengths of conv layers, top inputs/outputs per unit, sparsity "
        "(top-k mass, Gini), expanded weights between non-adjacent layers, NMF weight pictures."
    )

    @dataclass
    class Config:
        layers: list[str] = option(list, help="conv module paths (e.g. layer1.0.conv1); empty = every Conv2d")
        norm: Literal["l2", "l1", "sum", "max"] = option("l2", help="kernel norm used as connection strength")
        top_k: int = option(5, min=1, max=10_000, help="top connections listed per unit and used for top-k mass")
        table_units: int = option(8, min=0, max=100_000, help="units per layer in the top-connections table")
        expanded: list[str] = option(list, help="'from_hook->to_hook' pairs for expanded weights")
        expanded_reduce: Literal["mean", "centre"] = option("mean", help="reduce the later channel by mean or centre")
        image_size: int = option(32, min=4, max=1024, help="input size for execution order and expanded weights")
        nmf: bool = option(True, help="compute NMF-to-RGB weight pictures")
        norms: Literal["refuse", "no_scale"] = option(
            "refuse", help="expanded weights through LRN/LayerNorm/GroupNorm: refuse, or drop their division"
        )
        motifs: int = option(20, min=0, max=100_000, help="strongest positive and negative connections per pair")
        mass: float = option(0.9, min=0.01, max=1.0, help="share of |weight| for the inputs-needed count")
        banner_units: list[int] = option(list, help="units of each expanded pair's later hook to draw banners for")
        banner_top: int = option(4, min=0, max=1024, help="banners for the sparsest units when banner_units is empty")
        banner_inputs: int = option(16, min=1, max=4096, help="input units (kernels) per banner, strongest first")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: two units per layer in the table."""
        return {"table_units": 2}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        src = getattr(model, "source", None)
        if src is None or not any(isinstance(m, torch.nn.Conv2d) for m in src.modules()):
            return False, "the model has no Conv2d layers"
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "WeightsResult":
        layers = vw.conv_layers(model, config.image_size)
        names = [n for n, _ in layers]
        if config.layers:
            unknown = [l for l in config.layers if l not in names]
            if unknown:
                raise ConfigError(
                    f"weights: {', '.join(map(repr, unknown))} is not a Conv2d module; closest conv "
                    f"layers: {', '.join(closest_names(unknown[0], names)) or ', '.join(names[:8])}."
                )
        pairs = vw.adjacent_pairs(layers)
        chosen = [(n, c) for n, c in layers if not config.layers or n in config.layers]
        tensors: dict[str, Tensor] = {}
        reads: dict[str, Optional[str]] = {b: a for a, b in pairs}
        sparsity = Table(
            ["layer", "shape", "mean_topk_mass", "mean_gini", "reads"],
            title=f"Connection sparsity (top-{config.top_k} mass, Gini) per layer",
        )
        for n, conv in chosen:
            s = vw.channel_strengths(conv, config.norm)
            tensors[f"strengths/{n}"] = s
            sp = vw.connection_sparsity(s, config.top_k)
            tensors[f"sparsity/{n}/topk_mass"] = sp["topk_mass"]
            tensors[f"sparsity/{n}/gini"] = sp["gini"]
            sparsity.rows.append(
                [
                    n,
                    list(conv.weight.shape),
                    float(sp["topk_mass"].mean()),
                    float(sp["gini"].mean()),
                    reads.get(n) or "",
                ]
            )
            if config.nmf:
                img, _ = vw.nmf_rgb(conv)
                tensors[f"nmf/{n}"] = torch.from_numpy(img)
        motif_table = Table(
            ["pair", "sign", "rank", "to_unit", "from_unit", "weight"], title="Motifs: strongest connections"
        )
        unit_table = Table(
            ["pair", "unit", "topk_mass", "gini", f"inputs_for_{config.mass:g}"],
            title=f"Per-unit sparsity of expanded weights (top-{config.top_k} mass, Gini, inputs carrying "
            f"{config.mass:.0%})",
        )
        banners: dict[str, list[int]] = {}  # pair -> units drawn
        banner_inputs: dict[str, list[list[float]]] = {}  # "pair/unit" -> [[input unit, summed weight]]
        conventions: dict[str, dict[str, int]] = {}
        for spec in config.expanded:
            if "->" not in spec:
                raise ConfigError(f"weights: expanded entries look like 'from_hook->to_hook', got {spec!r}.")
            a, b = (t.strip() for t in spec.split("->", 1))
            ew = vw.expanded_weights(
                model, a, b, reduce=config.expanded_reduce, image_size=config.image_size, norms=config.norms
            )
            pair = f"{ew.from_hook}->{ew.to_hook}"
            tensors[f"expanded/{pair}"] = ew.matrix
            conventions[pair] = ew.conventions
            mo = vw.motifs(ew.matrix, config.motifs, config.top_k, config.mass)
            for sign, rows in (("+", mo.positive), ("-", mo.negative)):
                motif_table.rows += [[pair, sign, r, t, f, w] for r, (t, f, w) in enumerate(rows)]
            unit_table.rows += [
                [pair, u, float(mo.topk_mass[u]), float(mo.gini[u]), int(mo.n_for_mass[u])]
                for u in range(ew.matrix.shape[0])
            ]
            tensors[f"motifs/{pair}/topk_mass"] = mo.topk_mass
            tensors[f"motifs/{pair}/gini"] = mo.gini
            tensors[f"motifs/{pair}/inputs_for_mass"] = mo.n_for_mass
            units = list(config.banner_units) or mo.sparsest(config.banner_top)
            bad = [u for u in units if not 0 <= u < ew.matrix.shape[0]]
            if bad:
                raise ConfigError(
                    f"weights: banner_units {bad} out of range for {ew.to_hook!r} ({ew.matrix.shape[0]})."
                )
            if units:
                centre = (
                    ew
                    if ew.reduce == "centre"
                    else vw.expanded_weights(
                        model, a, b, reduce="centre", image_size=config.image_size, norms=config.norms
                    )
                )
                size = max(centre.support(), 1)
                for u in units:
                    img, order = vw.banner(centre, u, config.banner_inputs, size)
                    tensors[f"banner/{pair}/{u}"] = torch.from_numpy(img)
                    banners.setdefault(pair, []).append(u)
                    banner_inputs[f"{pair}/{u}"] = [[i, w] for i, w in order]
        meta = {
            "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
            "layers": [n for n, _ in chosen],
            "reads": {n: reads.get(n) for n, _ in chosen},
            "norm": config.norm,
            "conventions": conventions,
            "banners": banners,
            "banner_inputs": banner_inputs,
        }
        res = WeightsResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"sparsity": sparsity},
        )
        if config.expanded:
            res.tables["motifs"] = motif_table
            res.tables["unit_sparsity"] = unit_table
        res.tables["connections"] = res.connections_table(config.top_k, config.table_units)
        return res


class WeightsResult(Result):
    """Result of ``weights``: ``strengths(layer)``, ``top_inputs(layer, unit)``, ``top_outputs(layer, unit)``."""

    @property
    def layers(self) -> list[str]:
        return list(self.meta.get("layers", []))

    def _layer(self, layer: str) -> str:
        if layer in self.layers:
            return layer
        for cand in (layer.removesuffix(".hook_out"),):
            if cand in self.layers:
                return cand
        raise KeyError(f"{layer!r} is not an analysed conv layer; layers: {', '.join(self.layers)}")

    def strengths(self, layer: str) -> Tensor:
        return self.tensors[f"strengths/{self._layer(layer)}"]

    def top_inputs(self, layer: str, unit: int, k: Optional[int] = None) -> list[tuple[int, float]]:
        """Strongest input channels of ``unit`` (channels of the layer that ``layer`` reads); k = config top_k."""
        k = int(k or self.config.get("top_k", 5))
        return vw.top_connections(self.strengths(layer), unit, k, "in")

    def top_outputs(self, layer: str, unit: int, k: Optional[int] = None) -> list[tuple[str, int, float]]:
        """Strongest ``(layer, channel, strength)`` among the layers reading ``layer``'s outputs."""
        k = int(k or self.config.get("top_k", 5))
        layer = self._layer(layer)
        out = []
        for b, a in self.meta.get("reads", {}).items():
            if a == layer:
                out += [(b, c, v) for c, v in vw.top_connections(self.strengths(b), unit, k, "out")]
        out.sort(key=lambda t: -abs(t[2]))
        return out[:k]

    def connections_table(self, k: int = 5, units: int = 8) -> Table:
        t = Table(["layer", "unit", "reads", "top_inputs", "top_outputs"], title="Top connections per unit")
        for n in self.layers:
            for u in range(min(units, self.strengths(n).shape[0])):
                ins = ", ".join(f"{c}:{v:.3g}" for c, v in self.top_inputs(n, u, k))
                outs = ", ".join(f"{b}:{c}:{v:.3g}" for b, c, v in self.top_outputs(n, u, k))
                t.rows.append([n, u, self.meta["reads"].get(n) or "", ins, outs])
        return t

    def figures(self) -> dict[str, Any]:
        figs = {"overview": self.plot()}
        if self.meta.get("banners"):
            figs["banners"] = self.plot_banners()
        return figs

    def banner(self, pair: str, unit: int) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """``(image [s, n * (s + 1) - 1, 3], [(input unit, summed weight)])`` of a saved banner."""
        key = f"banner/{pair}/{unit}"
        if key not in self.tensors:
            have = [k.removeprefix("banner/") for k in self.tensors if k.startswith("banner/")]
            raise KeyError(f"no banner {pair!r} unit {unit}; saved: {', '.join(have) or 'none'}")
        order = [(int(i), float(w)) for i, w in self.meta["banner_inputs"][f"{pair}/{unit}"]]
        return self.tensors[key].numpy(), order

    def plot_banners(self) -> Any:
        """One row per banner: the unit's kernel per input unit (red +, blue -), labelled with the input unit."""
        rows = [(p, u) for p, us in self.meta.get("banners", {}).items() for u in us]
        fig = new_figure(12, 1.4 * len(rows) + 0.4)
        for r, (pair, u) in enumerate(rows):
            img, order = self.banner(pair, u)
            ax = fig.add_subplot(len(rows), 1, r + 1)
            ax.imshow(img, interpolation="nearest")
            s = img.shape[0]
            ax.set_xticks(
                [j * (s + 1) + (s - 1) / 2 for j in range(len(order))], [f"{i}\n{w:+.2g}" for i, w in order], fontsize=6
            )
            ax.set_yticks([])
            ax.set_title(f"{pair} unit {u}: expanded-weight kernel per input unit (strongest first)", fontsize=8)
        return fig

    def plot(self) -> Any:
        layers = self.layers
        fig = new_figure(12, 4)
        ax1, ax2, ax3 = fig.subplots(1, 3)
        xs = range(len(layers))
        ax1.plot(xs, [float(self.tensors[f"sparsity/{n}/gini"].mean()) for n in layers], "o-", label="Gini")
        ax1.plot(
            xs,
            [float(self.tensors[f"sparsity/{n}/topk_mass"].mean()) for n in layers],
            "s--",
            label=f"top-{self.config.get('top_k', '')} mass",
        )
        ax1.set_xticks(list(xs), layers, rotation=70, ha="right", fontsize=6)
        ax1.legend(fontsize=7)
        ax1.set_title("connection sparsity", fontsize=9)
        if layers:
            s = self.strengths(layers[-1]).numpy()
            ax2.imshow(s, aspect="auto", cmap="viridis")
            ax2.set_title(f"strengths {layers[-1]} [out, in]", fontsize=8)
            key = next((f"nmf/{n}" for n in reversed(layers) if f"nmf/{n}" in self.tensors), None)
            if key:
                img = self.tensors[key].numpy()[:16]
                n_img, kh, kw = img.shape[:3]
                cols = int(math.ceil(math.sqrt(n_img)))
                grid = np.ones((cols * (kh + 1), cols * (kw + 1), 3), dtype=np.float32)
                for i in range(n_img):
                    r, c = divmod(i, cols)
                    grid[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = img[i]
                ax3.imshow(grid, interpolation="nearest")
                ax3.set_title(f"NMF weight pictures {key[4:]}", fontsize=8)
        ax3.set_axis_off()
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [Weights]
