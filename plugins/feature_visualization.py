"""``feature_visualization``: Lucid-style feature visualizations of units, directions and classes.

Renders one image per objective (``images_per_objective`` with a diversity term) with
:func:`visionlens.featurevis.render`: batched, deterministic per image, the forward pass stopped at
the deepest hook the objectives need. ``inputs`` is optional: when given (anything
:func:`visionlens.data.as_images` accepts), the images are the starting point instead of noise.

CLI::

    visionlens run feature_visualization --model timm:resnet18 --images builtin --out fv \\
        --set objectives=layer3:1,layer3:2 --set steps=128 --set size=64

(the CLI requires ``--images``; they become the start images). Use JSON for specs with commas:
``--set 'objectives=["layer3:12@(3,4)"]'``.

Objective strings: ``"mixed4a:476"`` (channel), ``"layer3:12@(3,4)"`` / ``"neuron:mixed4a:476"``
(neurons), ``"blocks.6.mlp.hook_post:123@5"`` (a token), ``"class:207"``, ``"head:3:2@0"`` and
plugin-registered prefixes (see :mod:`visionlens.featurevis.objectives`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens import featurevis as fv
from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.data import as_images
from visionlens.featurevis.render import to_pil
from visionlens.hook_select import default_hooks
from visionlens.hookspecs import hookimpl
from visionlens.reducers import atomic_write_bytes
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["FeatureVisualization", "FeatureVisualizationResult"]


class FeatureVisualization(Analysis):
    """Render feature visualizations for a list of objective strings."""

    name = "feature_visualization"
    summary = (
        "Lucid-style feature visualization of units, neurons, heads and classes (batched, seeded, FFT/pixel/CPPN)."
    )

    @dataclass
    class Config:
        objectives: list[str] = option(
            list, min_len=1, help="objective strings, e.g. mixed4a:476, layer3:12@(3,4), class:207, head:3:2@0"
        )
        steps: int = option(512, min=1, max=1_000_000, help="optimisation steps (Lucid: 512)")
        size: Optional[int] = option(
            None, min=8, max=4096, help="image size in pixels; default 128, or the model's fixed input size"
        )
        lr: Optional[float] = option(None, min=0.0, max=100.0, help="Adam learning rate; default 0.05 (0.005 for cppn)")
        lr_end: Optional[float] = option(
            None, min=0.0, max=100.0, help="cosine decay of the learning rate to this value at the last step"
        )
        param: Literal["fft", "pixel", "cppn"] = option("fft", help="image parameterization")
        decorrelate: bool = option(True, help="Lucid's colour decorrelation (3-channel models)")
        transforms: Literal["standard", "scaled", "none"] = option(
            "standard", help="Lucid's standard transforms, the same scaled to the image size, or none"
        )
        images_per_objective: int = option(1, min=1, max=64, help="images rendered for each objective")
        diversity: float = option(0.0, min=0.0, help="weight of the Gram diversity penalty on each objective's layer")
        l1: float = option(0.0, min=0.0, help="weight of the L1 penalty (mean |image - 0.5|)")
        tv: float = option(0.0, min=0.0, help="weight of the total-variation penalty")
        blur: float = option(0.0, min=0.0, help="weight of Lucid's blur penalty")
        batch_size: int = option(8, min=1, max=4096, help="objectives optimised together")
        seed: int = option(0, help="image j is seeded seed + j")
        progress: bool = option(False, help="show a progress bar")
        forward_kwargs: Optional[dict] = option(
            None, help="extra model arguments (diffusion UNets: timestep, encoder_hidden_states)"
        )

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: channel 0 of the deepest default hook, two steps, small images."""
        fixed = model.cfg.image_size if not model.cfg.dynamic_img_size else None
        return {"objectives": [f"{default_hooks(model)[-1]}:0"], "steps": 2, "size": None if fixed else 32}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        if not getattr(model, "hook_dict", None):
            return False, "the model has no hook points"
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "FeatureVisualizationResult":
        try:
            objs = fv.as_objectives(list(config.objectives), model)
        except VisionLensError as exc:
            raise ConfigError(f"feature_visualization: {exc}") from None
        if config.diversity and config.images_per_objective < 2:
            raise ConfigError("feature_visualization: diversity needs images_per_objective >= 2.")
        full = []
        for o in objs:
            if config.diversity:
                layers = [h for h in o.hooks if h != fv.OUTPUT]
                if not layers:
                    raise ConfigError(
                        f"feature_visualization: objective {o.name!r} reads no layer for the diversity term."
                    )
                o = o - config.diversity * fv.diversity(layers[-1]).bind(model)
            if config.l1:
                o = o - config.l1 * fv.l1()
            if config.tv:
                o = o - config.tv * fv.total_variation()
            if config.blur:
                o = o - config.blur * fv.blur()
            full.append(o)
        fixed = fv.model_input_size(model)
        size = config.size if config.size is not None else (None if fixed else 128)
        n_img = len(full) * config.images_per_objective
        init = _init_images(model, inputs, size or (fixed[0] if fixed else 128), n_img) if inputs is not None else None
        r = fv.render(
            model,
            full,
            steps=config.steps,
            size=size,
            lr=config.lr,
            lr_end=config.lr_end,
            param=config.param,
            decorrelate=config.decorrelate,
            transforms=config.transforms,
            images_per_objective=config.images_per_objective,
            seed=config.seed,
            batch_size=config.batch_size,
            init=init,
            forward_kwargs=config.forward_kwargs,
            progress=config.progress,
        )
        cfg = config_to_dict(config, jsonable=False)
        if cfg.get("forward_kwargs") is not None:
            cfg["forward_kwargs"] = {
                k: (f"tensor{list(v.shape)}" if isinstance(v, Tensor) else v) for k, v in cfg["forward_kwargs"].items()
            }
        return FeatureVisualizationResult.from_rendering(
            r, model, cfg, [str(s) for s in config.objectives], self.name, self.summary
        )


def _init_images(model: HookedVisionModel, inputs: Any, size: int, n_img: int) -> Tensor:
    """Start images ``[n_img, C, size, size]`` in [0, 1] from ``inputs`` (cycled when fewer)."""
    import torch.nn.functional as F

    images = as_images(inputs)
    n = images.length
    if not n or not images.random_access:
        raise VisionLensError("feature_visualization: start images (inputs) need random access and a length.")
    out = []
    for j in range(n_img):
        a = torch.from_numpy(np.ascontiguousarray(images.display(j % n, model))).permute(2, 0, 1).float() / 255
        out.append(F.interpolate(a[None], size=(size, size), mode="bilinear", align_corners=False)[0])
    x = torch.stack(out).clamp(0, 1)
    c = int(getattr(model.cfg, "in_chans", 3) or 3)
    if c != 3:
        x = x.mean(dim=1, keepdim=True).expand(-1, c, -1, -1).contiguous()
    return x


# ----------------------------------------------------------------------------- result
class FeatureVisualizationResult(Result):
    """Images ``[N * k, C, H, W]`` in ``[0, 1]``, per-objective ``curves`` ``[N, steps]`` and a summary table.

    ``save(dir)`` also writes every image as ``images/{i:03d}_{objective}.png``.
    """

    @classmethod
    def from_rendering(
        cls,
        r: Any,
        model: HookedVisionModel,
        config: dict,
        specs: list[str],
        analysis: str = "feature_visualization",
        summary: str = "",
    ) -> "FeatureVisualizationResult":
        cfgm = model.cfg
        k = r.images_per_objective
        tensors = {"images": r.images.float(), "curves": r.curves.float(), "step_times": r.step_times.float()}
        if r.initial_values is not None:
            tensors["initial_values"] = r.initial_values.float()
            tensors["final_values"] = r.final_values.float()
        table = Table(
            ["objective", "spec", "start", "final", "curve_first", "curve_last", "curve_max"],
            title="Objectives (start / final: untransformed images; curve: during optimisation)",
        )
        for i, o in enumerate(r.objectives):
            c = r.curves[i]
            start = float(r.initial_values[i]) if r.initial_values is not None else None
            final = float(r.final_values[i]) if r.final_values is not None else None
            table.rows.append(
                [
                    o.name,
                    specs[i] if i < len(specs) else o.name,
                    start,
                    final,
                    float(c[0]),
                    float(c[-1]),
                    float(c.max()),
                ]
            )
        meta = {
            "model": f"{cfgm.architecture or cfgm.family} ({cfgm.adapter})",
            "family": cfgm.family,
            "objectives": r.names,
            "specs": specs,
            "images_per_objective": k,
            "seeds": r.seeds,
            "steps": r.steps,
            "image_size": list(r.images.shape[-2:]),
            "settings": r.settings,
            "elapsed_s": r.elapsed,
            "neuron_steps_per_s": r.neuron_steps_per_second(),
        }
        return cls(analysis, summary=summary, config=config, meta=meta, tensors=tensors, tables={"objectives": table})

    # -------------------------------------------------------------- accessors
    @property
    def images(self) -> Tensor:
        return self.tensors["images"]

    @property
    def curves(self) -> Tensor:
        return self.tensors["curves"]

    @property
    def objectives(self) -> list[str]:
        return list(self.meta.get("objectives", []))

    def pil(self) -> list[Any]:
        return to_pil(self.images)

    # -------------------------------------------------------------- figures
    def figures(self) -> dict[str, Any]:
        return {"images": self.plot(), "curves": self.plot_curves()}

    def plot(self) -> Any:
        """The rendered images, one row per objective."""
        k = int(self.meta.get("images_per_objective", 1))
        names = self.objectives
        n = max(1, len(names))
        if k == 1:
            cols = min(4, n)
            rows = math.ceil(n / cols)
        else:
            cols, rows = k, n
        fig = new_figure(2.4 * cols, 2.6 * rows)
        axes = fig.subplots(rows, cols, squeeze=False)
        pils = self.pil()
        for ax in axes.flat:
            ax.set_axis_off()
        for j, im in enumerate(pils):
            r, c = divmod(j, cols)
            if r >= rows:
                break
            ax = axes[r][c]
            ax.imshow(np.asarray(im))
            obj = j // k
            if k == 1 or c == 0:
                ax.set_title(_short(names[obj]) if obj < len(names) else f"#{obj}", fontsize=7)
        fig.suptitle(f"feature visualization: {self.meta.get('model', '')}", fontsize=9)
        return fig

    def plot_curves(self) -> Any:
        """Objective value per step for every objective."""
        fig = new_figure(6, 3.5)
        ax = fig.add_subplot(1, 1, 1)
        curves = self.curves
        for i in range(curves.shape[0]):
            name = self.objectives[i] if i < len(self.objectives) else f"#{i}"
            ax.plot(curves[i].numpy(), label=_short(name), linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("objective")
        if curves.shape[0] <= 12:
            ax.legend(fontsize=6)
        ax.set_title("objective during optimisation (transformed images)", fontsize=9)
        return fig

    def save(self, directory: Any) -> Any:
        """Result files (JSON, safetensors, figure PNGs, index.html) plus ``images/NNN_objective.png``."""
        from pathlib import Path

        out = super().save(directory)
        img_dir = Path(out) / "images"
        img_dir.mkdir(exist_ok=True)
        k = int(self.meta.get("images_per_objective", 1))
        for j, im in enumerate(self.pil()):
            obj = j // k
            name = self.objectives[obj] if obj < len(self.objectives) else f"{obj}"
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            suffix = f"_{j % k}" if k > 1 else ""
            atomic_write_bytes(img_dir / f"{obj:03d}_{_safe(name)}{suffix}.png", buf.getvalue())
        return out


def _short(name: str) -> str:
    return name.replace(".hook_out", "").replace("hook_", "")


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in _short(name)).strip("._")
    return keep[:80] or "objective"


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [FeatureVisualization]
