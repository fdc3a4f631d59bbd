"""``weights``: the weight explorer as an analysis (functions in :mod:`visionlens.weights`).

For each conv layer (``nn.Conv2d`` modules of the source model, in execution order; or the
``layers`` chosen) it stores the ``[out, in]`` channel-to-channel strengths (norm of each
kernel), per-output-unit sparsity (top-k mass, Gini), NMF-to-RGB weight pictures, and which
earlier conv each layer reads (adjacent pairs). ``expanded=["a->b", ...]`` adds expanded weights
between non-adjacent hooks through the linearized model (``[C_b, C_a]``). Needs no images.
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
        for spec in config.expanded:
            if "->" not in spec:
                raise ConfigError(f"weights: expanded entries look like 'from_hook->to_hook', got {spec!r}.")
            a, b = (t.strip() for t in spec.split("->", 1))
            ew = vw.expanded_weights(model, a, b, reduce=config.expanded_reduce, image_size=config.image_size)
            tensors[f"expanded/{ew.from_hook}->{ew.to_hook}"] = ew.matrix
        meta = {
            "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
            "layers": [n for n, _ in chosen],
            "reads": {n: reads.get(n) for n, _ in chosen},
            "norm": config.norm,
        }
        res = WeightsResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"sparsity": sparsity},
        )
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
