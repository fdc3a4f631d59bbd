"""``timestep_sweep``: how a diffusion UNet's important components change with the noise level.

The timestep range ``[0, num_train_timesteps)`` is cut into ``bands`` (or explicit ``timesteps``
are given, one band each). In every band, ``samples_per_band`` timesteps x ``seeds`` noised latents
(``scheduler.add_noise`` of a random clean latent when the model came from a pipeline) go through
the UNet, conditioned on ``prompts`` (pipeline text encoder) or on a fixed random context, and one
measurement gives a score per unit (channels of conv maps ``[B, C, H, W]``, last axis of token
maps ``[B, pixels, C]``):

* ``activation``: mean absolute activation (``stat="mean"``: signed mean; ``"std"``: spread);
* ``attribution``: ``|sum over positions of a * d m / d a|``, the first-order effect of zero-ablating
  the unit (attribution patching) on ``m = <output, stop_grad(output)> / ||output||``;
* ``ablation``: the exact zero-ablation effect on the same ``m`` (one forward per unit; capped by
  ``max_units`` per hook), i.e. what ``attribution`` approximates to first order.

Result: ``importance`` ``[bands, units]``, band x band similarity matrices of the importance
vectors (cosine, Spearman rank correlation, and the Jaccard overlap of their top-``top_k`` unit
sets), and plots. Cosine is dominated by units that are large at every noise level; the rank
correlation and the top-k overlap show the reordering.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["TimestepSweep", "TimestepSweepResult", "similarity_matrices"]

_DEFAULT = (r"(^|\.)resnets\.\d+\.hook_out$", r"(^|\.)attentions\.\d+\.hook_out$")


def _per_unit(act: Tensor) -> Tensor:
    """``[B, units, positions]`` view (conv maps: channels; token maps: last axis)."""
    if act.ndim == 4:
        return act.flatten(2)
    if act.ndim == 3:
        return act.transpose(1, 2)
    if act.ndim == 2:
        return act.unsqueeze(-1)
    raise VisionLensError(f"timestep_sweep: cannot split an activation of shape {tuple(act.shape)} into units.")


def similarity_matrices(importance: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(cosine, Spearman rank correlation, top-k Jaccard)``, each ``[bands, bands]``, of importance vectors."""
    v = importance.float()
    n = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = n @ n.T
    ranks = v.argsort(dim=1).argsort(dim=1).float()
    ranks = ranks - ranks.mean(1, keepdim=True)
    ranks = ranks / ranks.norm(dim=1, keepdim=True).clamp_min(1e-12)
    spearman = ranks @ ranks.T
    k = min(top_k, v.shape[1])
    sets = [set(torch.topk(row, k).indices.tolist()) for row in v]
    jac = torch.tensor([[len(a & b) / max(1, len(a | b)) for b in sets] for a in sets])
    return cos, spearman, jac


class TimestepSweep(Analysis):
    """Per-unit activation / attribution / ablation importance per timestep band, and its similarity across bands."""

    name = "timestep_sweep"
    summary = (
        "Diffusion UNets: per-unit importance (activation, attribution or ablation) in each timestep band, "
        "with a band x band similarity matrix showing how the important components change with noise level."
    )

    @dataclass
    class Config:
        measure: Literal["activation", "attribution", "ablation"] = option("activation", help="what is measured")
        stat: Literal["mean_abs", "mean", "std"] = option("mean_abs", help="activation measure: statistic")
        hooks: list[str] = option(list, help="hook names / globs / 're:REGEX'; empty = resnet and attention blocks")
        bands: int = option(5, min=1, max=1000, help="timestep bands over the training range")
        timesteps: list[int] = option(list, help="explicit timesteps (one band each; overrides bands)")
        samples_per_band: int = option(2, min=1, max=1000, help="timesteps drawn per band")
        seeds: int = option(2, min=1, max=10_000, help="latent draws per timestep")
        prompts: list[str] = option(lambda: ["a photo"], help="conditioning prompts (conditional UNets)")
        top_k: int = option(10, min=1, help="units per band for the top-k overlap and the table")
        max_units: int = option(64, min=1, help="ablation: units per hook at most (the first ones)")
        num_train_timesteps: Optional[int] = option(None, min=1, help="default: the scheduler's, else 1000")
        seed: int = option(0, help="random seed")
        pipe: Any = option(None, help="pipeline for text encoder / scheduler (default: model.adapter.pipeline)")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: two bands, one timestep and one latent each."""
        return {"bands": 2, "samples_per_band": 1, "seeds": 1}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        if getattr(getattr(model, "adapter", None), "name", "") != "diffusers_unet":
            return False, "needs a diffusers UNet (HookedVisionModel.from_diffusers)"
        return True, ""

    def _hooks(self, model: HookedVisionModel, specs: list[str]) -> list[str]:
        specs = specs or [f"re:{r}" for r in _DEFAULT]
        out: list[str] = []
        for spec in specs:
            if spec.startswith("re:"):
                rx = re.compile(spec[3:])
                out += [n for n in model.hook_dict if rx.search(n) and n not in out]
            elif any(c in spec for c in "*?["):
                out += [n for n in model.hook_dict if fnmatch.fnmatchcase(n, spec) and n not in out]
            else:
                n = model.resolve_hook(spec)
                if n not in out:
                    out.append(n)
        if not out:
            raise VisionLensError(f"timestep_sweep: hooks {specs} matched nothing.")
        return out

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "TimestepSweepResult":
        hooks = self._hooks(model, config.hooks)
        pipe = config.pipe if config.pipe is not None else model.adapter.pipeline
        sched = getattr(pipe, "scheduler", None)
        n_train = config.num_train_timesteps or int(
            getattr(getattr(sched, "config", None), "num_train_timesteps", 1000) or 1000
        )
        g = torch.Generator().manual_seed(config.seed)
        if config.timesteps:
            band_ts = [[int(t)] for t in config.timesteps]
            labels = [str(int(t)) for t in config.timesteps]
        else:
            edges = torch.linspace(0, n_train, config.bands + 1)
            band_ts, labels = [], []
            for b in range(config.bands):
                lo, hi = int(edges[b]), max(int(edges[b]) + 1, int(edges[b + 1]))
                band_ts.append(torch.randint(lo, hi, (config.samples_per_band,), generator=g).tolist())
                labels.append(f"{lo}-{hi - 1}")
        dev = model.device
        c, (h, w) = model.cfg.in_chans, tuple(model.cfg.image_size or (8, 8))
        ctx = None
        if model.cfg.extra.get("conditional"):
            prompts = (
                list(inputs)
                if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, str) for p in inputs)
                else list(config.prompts)
            )
            if pipe is not None and getattr(pipe, "text_encoder", None) is not None:
                tok = pipe.tokenizer
                ids = tok(
                    prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
                ).input_ids
                with torch.no_grad():
                    ctx = pipe.text_encoder(ids)[0].to(dev)
            else:
                ctx = torch.randn(len(prompts), 77, model.adapter.context_dim(), generator=g).to(dev)
        S = config.seeds
        x0 = torch.randn(S, c, h, w, generator=g)
        noise = torch.randn(S, c, h, w, generator=g)
        rows_importance = []
        unit_names: list[str] = []
        for b, ts in enumerate(band_ts):
            lat, tt, ci = [], [], []
            for t in ts:
                tv = torch.full((S,), int(t), dtype=torch.long)
                if sched is not None and hasattr(sched, "add_noise"):
                    xt = sched.add_noise(x0, noise, tv)
                else:
                    a = math.cos(min(int(t), n_train) / n_train * math.pi / 2)
                    xt = a * x0 + math.sqrt(max(0.0, 1 - a * a)) * noise
                n_ctx = 1 if ctx is None else ctx.shape[0]
                for p in range(n_ctx):
                    lat.append(xt)
                    tt.append(tv)
                    ci.append(torch.full((S,), p, dtype=torch.long))
            args = [torch.cat(lat).to(dev), torch.cat(tt).to(dev)]
            if ctx is not None:
                args.append(ctx[torch.cat(ci).to(dev)])
            scores, names = self._measure(model, args, hooks, config)
            if not unit_names:
                unit_names = names
            rows_importance.append(scores)
        imp = torch.stack(rows_importance)
        cos, rho, jac = similarity_matrices(
            imp.abs() if config.measure != "activation" or config.stat != "mean" else imp, config.top_k
        )
        table = Table(["band", "timesteps", "top_units", "top_scores"], title="Most important units per band")
        for b, lab in enumerate(labels):
            top = torch.topk(imp[b].abs(), min(config.top_k, imp.shape[1]))
            table.rows.append(
                [
                    lab,
                    band_ts[b],
                    [unit_names[i] for i in top.indices.tolist()],
                    [float(imp[b, i]) for i in top.indices.tolist()],
                ]
            )
        changes = Table(["unit", "band_of_max", "max", "min", "range"], title="Units whose importance changes most")
        spread = imp.max(0).values - imp.min(0).values
        for i in torch.argsort(spread, descending=True)[: config.top_k].tolist():
            changes.rows.append(
                [
                    unit_names[i],
                    labels[int(imp[:, i].argmax())],
                    float(imp[:, i].max()),
                    float(imp[:, i].min()),
                    float(spread[i]),
                ]
            )
        cfg = config_to_dict(config)
        if not isinstance(cfg.get("pipe"), (str, type(None))):
            cfg["pipe"] = f"<{type(config.pipe).__name__}>"
        meta = {
            "model": f"{model.cfg.architecture} ({model.cfg.adapter})",
            "hooks": hooks,
            "units": unit_names,
            "bands": labels,
            "band_timesteps": band_ts,
            "measure": config.measure,
            "num_train_timesteps": n_train,
        }
        return TimestepSweepResult(
            self.name,
            summary=self.summary,
            config=cfg,
            meta=meta,
            tensors={"importance": imp, "similarity_cosine": cos, "similarity_spearman": rho, "similarity_topk": jac},
            tables={"bands": table, "changes": changes},
        )

    # ------------------------------------------------------------------ measurements
    def _measure(self, model: HookedVisionModel, args: list, hooks: list[str], config: Any) -> tuple[Tensor, list[str]]:
        names: list[str] = []
        if config.measure == "activation":
            with torch.no_grad():
                _, cache = model.run_with_cache(*args, names_filter=hooks, return_cache_object=False)
            vals = []
            for hname in hooks:
                if hname not in cache:
                    continue
                u = _per_unit(cache[hname].float())
                v = {"mean_abs": u.abs().mean((0, 2)), "mean": u.mean((0, 2)), "std": u.std((0, 2))}[config.stat]
                vals.append(v.cpu())
                names += [f"{hname}:{i}" for i in range(v.numel())]
            return torch.cat(vals), names
        if config.measure == "attribution":
            acts: dict[str, Tensor] = {}

            def keep(act: Tensor, hook: Any) -> Tensor:
                act.retain_grad()
                acts[hook.name] = act
                return act

            with torch.enable_grad():
                with model.hooks(fwd_hooks=[(hn, keep) for hn in hooks]):
                    out = _sample(model(*args))
                    m = _metric(out, out.detach())
                    m.sum().backward()
            vals = []
            for hname in hooks:
                if hname not in acts or acts[hname].grad is None:
                    continue
                a, gr = _per_unit(acts[hname].detach()), _per_unit(acts[hname].grad)
                v = ((0 - a) * gr).sum(2).mean(0).abs()
                vals.append(v.float().cpu())
                names += [f"{hname}:{i}" for i in range(v.numel())]
            model.zero_grad(set_to_none=True)
            return torch.cat(vals), names
        # exact ablation
        with torch.no_grad():
            base = _sample(model(*args))
            _, cache = model.run_with_cache(*args, names_filter=hooks, return_cache_object=False)
            vals = []
            for hname in hooks:
                if hname not in cache:
                    continue
                n_units = _per_unit(cache[hname]).shape[1]
                eff = torch.zeros(min(n_units, config.max_units))
                for u in range(len(eff)):

                    def zero(act: Tensor, hook: Any, u: int = u) -> Tensor:
                        out = act.clone()
                        if act.ndim == 4:
                            out[:, u] = 0
                        else:
                            out[..., u] = 0
                        return out

                    out = _sample(model.run_with_hooks(*args, fwd_hooks=[(hname, zero)]))
                    eff[u] = float((_metric(out, base) - _metric(base, base)).mean().abs())
                vals.append(eff)
                names += [f"{hname}:{i}" for i in range(len(eff))]
        return torch.cat(vals), names


def _metric(out: Tensor, ref: Tensor) -> Tensor:
    """Per row: the output's component along the unablated output, ``<out, ref> / ||ref||``."""
    return (out * ref).flatten(1).sum(1) / ref.flatten(1).norm(dim=1).clamp_min(1e-12)


def _sample(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    s = getattr(out, "sample", None)
    return s if s is not None else out[0]


class TimestepSweepResult(Result):
    """Tensors ``importance`` ``[bands, units]``, ``similarity_cosine`` / ``similarity_topk`` ``[bands, bands]``."""

    def figures(self) -> dict[str, Any]:
        return {"overview": self.plot(), "importance": self.plot_importance()}

    def plot(self) -> Any:
        """Band x band similarity of unit importance (cosine and top-k overlap)."""
        labels = self.meta.get("bands", [])
        keys = [k for k in ("similarity_cosine", "similarity_spearman", "similarity_topk") if k in self.tensors]
        titles = {
            "similarity_cosine": "cosine of unit importance",
            "similarity_spearman": "rank correlation (Spearman)",
            "similarity_topk": "top-k unit overlap (Jaccard)",
        }
        fig = new_figure(5 * len(keys), 4.2)
        axes = fig.subplots(1, len(keys), squeeze=False)[0]
        for ax, key in zip(axes, keys):
            title = titles[key]
            m = self.tensors[key].numpy()
            im = ax.imshow(m, vmin=0 if key == "similarity_topk" else min(0.0, float(m.min())), vmax=1, cmap="viridis")
            ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=7)
            ax.set_yticks(range(len(labels)), labels, fontsize=7)
            ax.set_xlabel("timestep band")
            ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"timestep_sweep ({self.meta.get('measure', '')}): {self.meta.get('model', '')}", fontsize=10)
        return fig

    def plot_importance(self, n_units: int = 25) -> Any:
        """Timestep band x unit importance for the units whose importance is largest anywhere."""
        imp = self.tensors["importance"]
        names = self.meta.get("units", [])
        top = torch.argsort(imp.abs().max(0).values, descending=True)[:n_units]
        fig = new_figure(max(6, 0.35 * len(top) + 2), 3.6)
        ax = fig.subplots(1, 1)
        data = imp[:, top].numpy()
        im = ax.imshow(data, aspect="auto", cmap="magma")
        ax.set_yticks(range(imp.shape[0]), self.meta.get("bands", []), fontsize=7)
        ax.set_ylabel("timestep band")
        ax.set_xticks(
            range(len(top)),
            [names[i].replace(".hook_out", "") for i in top.tolist()],
            rotation=70,
            ha="right",
            fontsize=5,
        )
        fig.colorbar(im, ax=ax, label=self.meta.get("measure", ""))
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [TimestepSweep]
