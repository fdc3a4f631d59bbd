"""``causal_scrubbing``: test interpretability hypotheses with behaviour-preserving resampling ablations.

The algorithm (treeified, recursive resampling; Chan et al. 2022) lives in
:mod:`visionlens.scrubbing`; this plugin wraps it for ``visionlens.run`` / the CLI and turns the
reports into tables, figures and HTML. Several named hypotheses can be compared in one run
(``hypotheses={"true": ..., "wrong": ...}``); each is a :class:`visionlens.scrubbing.Node`, a dict
or JSON (string or file). Features name factors (``factors``: ``{name: per-input values}``, a dict
or a JSON file), ``"label"`` (``labels``), ``"identity"`` or ``"any"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.data import as_images
from visionlens.hook_select import default_hooks
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.scrubbing import causal_scrub, parse_hypothesis
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["CausalScrubbing", "CausalScrubbingResult"]


def _load_json_maybe(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                return json.load(f)
        return json.loads(text)
    return value


class CausalScrubbing(Analysis):
    """Loss recovered by a hypothesis under causal scrubbing, with bootstrap CI and per-example losses."""

    name = "causal_scrubbing"
    summary = (
        "Causal scrubbing: loss recovered by a hypothesis (hook/channel/head/position nodes with features) "
        "under recursive resampling ablation, with bootstrap CI and per-example distribution."
    )

    @dataclass
    class Config:
        hypothesis: Any = option(None, help="a Node, dict, JSON string or JSON file (root: hook null = output)")
        hypotheses: Any = option(None, help="several named hypotheses {name: hypothesis} (dict or JSON)")
        labels: Any = option(None, help="per-input labels (list/tensor or JSON file); feature 'label', metric ce")
        factors: Any = option(None, help="{factor: per-input values} (dict or JSON file) used as features")
        metric: Any = option("auto", help="auto, ce, bce, mse_to_model, kl_to_model or fn(output, index) -> loss")
        n_resamples: int = option(4, min=1, max=10_000, help="scrubbed samples per reference input")
        n_bootstrap: int = option(1000, min=0, max=1_000_000, help="bootstrap resamples for the CI")
        ci: float = option(0.95, min=0.5, max=0.999, help="confidence level of the interval")
        seed: int = option(0, help="random seed for resampling")
        max_batch: int = option(512, min=1, help="rows per forward")
        max_images: Optional[int] = option(None, min=2, help="use at most this many inputs")
        batch_size: int = option(64, min=1, help="images per preprocessing batch")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run of the simplest hypothesis (the output depends on the deepest default hook),
        one resample, a small bootstrap, four images."""
        hook = default_hooks(model)[-1]
        return {
            "hypothesis": {"hook": None, "parents": [{"hook": hook, "feature": "identity"}]},
            "metric": "kl_to_model",
            "n_resamples": 1,
            "n_bootstrap": 20,
            "max_images": 4,
        }

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        fam = (getattr(model.cfg, "family", "") or "").lower()
        if "diffusion" in fam:
            return False, "diffusion UNets need timestep and conditioning inputs; scrub an image model"
        if not getattr(model, "hook_dict", None):
            return False, "the model has no hook points"
        return True, ""

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "CausalScrubbingResult":
        if isinstance(inputs, Tensor):
            x = inputs if config.max_images is None else inputs[: config.max_images]
        else:
            images = as_images(inputs)
            x = torch.cat([b for _, b in images.batches(model, config.batch_size, limit=config.max_images)])
        hyps: dict[str, Any] = {}
        if config.hypotheses is not None:
            hyps.update(_load_json_maybe(config.hypotheses))
        if config.hypothesis is not None:
            hyps.setdefault("hypothesis", config.hypothesis)
        if not hyps:
            raise VisionLensError("causal_scrubbing: give a hypothesis (hypothesis=... or hypotheses={name: ...}).")
        labels = _load_json_maybe(config.labels) if isinstance(config.labels, (str, os.PathLike)) else config.labels
        factors = _load_json_maybe(config.factors) if config.factors is not None else None
        n = x.shape[0]
        if labels is not None:
            labels = torch.as_tensor(labels)[:n]
        if factors is not None:
            factors = {k: (v[:n] if not callable(v) else v) for k, v in factors.items()}
        reports = {}
        for name, h in hyps.items():
            reports[name] = causal_scrub(
                model,
                x,
                parse_hypothesis(_load_json_maybe(h) if isinstance(h, str) else h),
                labels=labels,
                factors=factors,
                metric=config.metric,
                n_resamples=config.n_resamples,
                n_bootstrap=config.n_bootstrap,
                ci=config.ci,
                seed=config.seed,
                max_batch=config.max_batch,
            )
        return CausalScrubbingResult.from_reports(reports, model, config, n)


class CausalScrubbingResult(Result):
    """Per hypothesis: ``losses`` table row, tensors ``{name}/per_example_{model,scrubbed,random}``."""

    @classmethod
    def from_reports(
        cls, reports: dict[str, Any], model: Optional[HookedVisionModel] = None, config: Any = None, n_inputs: int = 0
    ) -> "CausalScrubbingResult":
        table = Table(
            [
                "hypothesis",
                "loss_model",
                "loss_scrubbed",
                "loss_random",
                "loss_recovered",
                "ci_low",
                "ci_high",
                "per_example_recovered_std",
                "frac_worse_than_random",
                "frac_better_than_model",
                "forwards",
            ],
            title="Loss recovered per hypothesis",
        )
        tensors: dict[str, Tensor] = {}
        hyps = {}
        for name, r in reports.items():
            s = r.summary()
            table.rows.append(
                [
                    name,
                    s["loss_model"],
                    s["loss_scrubbed"],
                    s["loss_random"],
                    s["loss_recovered"],
                    s["ci_low"],
                    s["ci_high"],
                    s["per_example_recovered_std"],
                    s["frac_worse_than_random"],
                    s["frac_better_than_model"],
                    s["forwards"],
                ]
            )
            tensors[f"{name}/per_example_model"] = r.per_example_model
            tensors[f"{name}/per_example_scrubbed"] = r.per_example_scrubbed
            tensors[f"{name}/per_example_random"] = r.per_example_random
            hyps[name] = r.hypothesis.to_dict()
        meta = {
            "hypotheses": hyps,
            "names": list(reports),
            "n_inputs": n_inputs,
            "formula": "(L_random - L_scrubbed) / (L_random - L_model)",
        }
        if model is not None:
            meta["model"] = f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})"
        return cls(
            "causal_scrubbing",
            summary=CausalScrubbing.summary,
            config=config_to_dict(config) if config is not None else {},
            meta=meta,
            tensors=tensors,
            tables={"losses": table},
        )

    @property
    def names(self) -> list[str]:
        return list(self.meta.get("names", []))

    def recovered(self, name: Optional[str] = None) -> float:
        """Loss recovered of hypothesis ``name`` (the first by default)."""
        name = name or self.names[0]
        for row in self.tables["losses"].records():
            if row["hypothesis"] == name:
                return float(row["loss_recovered"]) if row["loss_recovered"] is not None else float("nan")
        raise KeyError(f"no hypothesis {name!r}; have {self.names}")

    def per_example(self, name: str) -> dict[str, Tensor]:
        return {k: self.tensors[f"{name}/per_example_{k}"] for k in ("model", "scrubbed", "random")}

    def plot(self) -> Any:
        """Left: loss recovered with CI per hypothesis. Right: per-example recovered distributions."""
        rows = self.tables["losses"].records()
        fig = new_figure(11, 3.6)
        ax1, ax2 = fig.subplots(1, 2)
        names = [r["hypothesis"] for r in rows]
        vals = [r["loss_recovered"] if r["loss_recovered"] is not None else float("nan") for r in rows]
        lo = [v - (r["ci_low"] if r["ci_low"] is not None else v) for v, r in zip(vals, rows)]
        hi = [(r["ci_high"] if r["ci_high"] is not None else v) - v for v, r in zip(vals, rows)]
        ax1.bar(range(len(names)), vals, yerr=[lo, hi], color="#4c72b0", capsize=4)
        ax1.axhline(1.0, color="k", lw=0.8, ls="--")
        ax1.axhline(0.0, color="k", lw=0.8)
        ax1.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax1.set_ylabel("loss recovered")
        ax1.set_title("(L_random - L_scrubbed) / (L_random - L_model)", fontsize=9)
        data = []
        for r in rows:
            pe = self.per_example(r["hypothesis"])
            den = r["loss_random"] - r["loss_model"]
            data.append((1 - (pe["scrubbed"] - pe["model"]) / (den if abs(den) > 1e-12 else float("nan"))).numpy())
        if data:
            ax2.violinplot(data, showmedians=True)
            ax2.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax2.axhline(1.0, color="k", lw=0.8, ls="--")
        ax2.axhline(0.0, color="k", lw=0.8)
        ax2.set_title("per-example recovered (spread exposes cancellation)", fontsize=9)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [CausalScrubbing]
