"""``style_neuron_search``: find and causally verify "style units" in text-conditioned diffusion UNets.

1. **Contrast.** For every base prompt ``p`` the pair ``("{p} {style}", "{p}")`` is encoded with the
   pipeline's text encoder (or a user ``encode(prompts) -> [B, tokens, d]``). For each seed a
   clean latent and a noise draw are made; for each timestep the noised latent goes through the UNet
   with both prompts. Each unit's activation is reduced to one number per run (spatial / pixel
   mean), and units are ranked by the standardized paired difference
   ``mean(a_style - a_plain) / sqrt((var(a_style) + var(a_plain)) / 2 + var_layer)`` over
   (prompt, seed, timestep), where ``var_layer`` (the variance of all of the hook's unit values)
   moderates the per-unit variance so that near-constant units cannot win by a tiny denominator.
   Units: channels of resnet outputs, of attention-block outputs and of
   cross-attention (``attn2``) outputs, and per head of cross-attention the attention mass on the
   style-phrase tokens (``attn2.hook_pattern``; needs a tokenizer to locate the tokens).
2. **Per-timestep profiles**: the same statistic per timestep, ``[timesteps, units]``, plotted as a
   timestep x unit heat map for the top units.
3. **Causal verification.** A style score of the UNet output on the style prompt; the default,
   ``"output_direction"``, projects the noise prediction's change onto the mean style-minus-plain
   output direction of the unmodified model (1 = the full style effect, 0 = none). A user callable
   ``score(output, info) -> [B]`` is the alternative (``info`` holds ``plain_output``, ``timesteps``,
   ``latents``, ``prompts``), e.g. a CLIP-space direction on decoded predictions. Each top unit
   (and the top ``verify_top`` together) is *ablated* (its activation replaced by the paired
   plain-prompt activation) and *amplified* (``plain + amplify * (style - plain)``); a style unit
   lowers the score when ablated and raises it when amplified.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.clip import encode_image, encode_text
from visionlens.hook_select import DEFAULT_UNIT_HOOKS
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["StyleNeuronSearch", "StyleNeuronResult", "DEFAULT_UNIT_HOOKS", "unit_summary", "clip_style_score"]


def unit_summary(name: str, act: Tensor, style_pos: Optional[Tensor] = None) -> Optional[Tensor]:
    """One value per (row, unit): conv maps ``[B, C, H, W]`` -> channel means; token maps ``[B, pixels, C]``
    -> pixel means; vectors ``[B, C]`` (e.g. the pooled-text / time embeddings) as they are; cross-attention
    patterns ``[B, head, pixels, tokens]`` -> mass on the style tokens."""
    if name.endswith("hook_pattern"):
        if style_pos is None:
            return None
        return (act.float() * style_pos[:, None, None, :].to(act.device)).sum(-1).mean(-1)
    if act.ndim == 4:
        return act.float().mean((2, 3))
    if act.ndim == 3:
        return act.float().mean(1)
    if act.ndim == 2:
        return act.float()
    return None


def clip_style_score(clip_model: Any, pipe: Any, style_text: str, base_text: str) -> Callable[[Tensor, dict], Tensor]:
    """A style score in CLIP space: ``score(unet_output, info) -> [B]``.

    The UNet's noise prediction is turned into the predicted clean latent
    ``x0 = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)`` (``a_t`` = the scheduler's ``alphas_cumprod``),
    decoded with the pipeline's VAE, resized / normalized for ``clip_model`` (an open_clip
    :class:`~visionlens.HookedVisionModel`), embedded, and projected on the unit-norm text direction
    ``text(style_text) - text(base_text)``.
    """
    import torch.nn.functional as F

    with torch.no_grad():
        t_emb = encode_text(clip_model, [style_text, base_text], normalize=True)
    direction = t_emb[0] - t_emb[1]
    direction = direction / direction.norm().clamp_min(1e-12)
    acp = pipe.scheduler.alphas_cumprod
    scaling = float(getattr(pipe.vae.config, "scaling_factor", 0.18215))
    size = tuple(clip_model.cfg.image_size or (224, 224))
    mean = torch.tensor(clip_model.cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(clip_model.cfg.std).view(1, -1, 1, 1)

    def score(output: Tensor, info: dict) -> Tensor:
        t = info["timesteps"].long().cpu()
        a = acp[t].float().view(-1, 1, 1, 1).to(output.device)
        x0 = (info["latents"] - (1 - a).sqrt() * output) / a.sqrt()
        img = pipe.vae.decode(x0 / scaling).sample
        img = (img.float().clamp(-1, 1) + 1) / 2
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False)
        img = (img - mean.to(img.device)) / std.to(img.device)
        emb = encode_image(clip_model, img, normalize=True)
        return emb @ direction.to(emb.device)

    return score


class StyleNeuronSearch(Analysis):
    """Rank UNet units by style-vs-plain prompt difference over seeds and timesteps; verify by ablation."""

    name = "style_neuron_search"
    summary = (
        "Diffusion style units: rank resnet channels, attention outputs and cross-attention to style tokens "
        "by standardized style-vs-plain prompt difference; per-timestep profiles; ablate/amplify to verify."
    )

    @dataclass
    class Config:
        style: str = option("in the style of van gogh", help="style phrase appended to each prompt")
        prompts: list[str] = option(lambda: ["a cat", "a house", "a tree"], min_len=1, help="base prompts")
        template: str = option("{prompt} {style}", help="how the styled prompt is formed")
        seeds: int = option(2, min=1, max=10_000, help="latent / noise draws per prompt")
        timesteps: list[int] = option(lambda: [900, 600, 300, 50], min_len=1, help="UNet timesteps probed")
        hooks: list[str] = option(
            list, help="hook names or globs; empty = resnets, attention blocks, attn2 outputs and attn2 patterns"
        )
        top_k: int = option(20, min=1, max=100_000, help="units in the ranked table")
        verify_units: int = option(5, min=0, max=1000, help="top units verified one by one (ablate / amplify)")
        verify_top: int = option(3, min=1, max=1000, help="top units also verified together")
        amplify: float = option(3.0, min=0.0, help="amplification factor of the style difference")
        score: Any = option("output_direction", help="'output_direction' or fn(output, info) -> [B] style score")
        encode: Any = option(None, help="fn(prompts) -> encoder states [B, tokens, d] (default: the pipeline's)")
        pipe: Any = option(None, help="pipeline with tokenizer/text_encoder (default: model.adapter.pipeline)")
        max_batch: int = option(64, min=1, help="rows per UNet forward")
        seed: int = option(0, help="base random seed")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: one prompt, seed and timestep, one unit verified. Without a pipeline's text
        encoder, seeded random states (fixed per prompt string) stand in for the encoded prompts."""
        cfg: dict[str, Any] = {
            "prompts": ["a cat"],
            "seeds": 1,
            "timesteps": [500],
            "top_k": 5,
            "verify_units": 1,
            "verify_top": 1,
        }
        if getattr(model.adapter.pipeline, "text_encoder", None) is None:
            dim, dev = model.adapter.context_dim(), model.device

            def encode(prompts: list[str]) -> Tensor:
                gens = [torch.Generator().manual_seed(sum(p.encode()) * 1009 + len(p)) for p in prompts]
                return torch.stack([torch.randn(8, dim, generator=g) for g in gens]).to(dev)

            cfg["encode"] = encode
        return cfg

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        if getattr(getattr(model, "adapter", None), "name", "") != "diffusers_unet":
            return False, "needs a diffusers UNet (HookedVisionModel.from_diffusers)"
        if not model.cfg.extra.get("conditional"):
            return False, "needs a text-conditioned UNet (UNet2DConditionModel)"
        return True, ""

    # ------------------------------------------------------------------ inputs
    def _encode(self, model: HookedVisionModel, config: Any, prompts: list[str]) -> tuple[Tensor, Optional[Tensor]]:
        if config.encode is not None:
            return config.encode(prompts), None
        pipe = config.pipe if config.pipe is not None else model.adapter.pipeline
        if pipe is None or getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
            raise VisionLensError(
                "style_neuron_search: needs a text encoder: build the model from a pipeline "
                "(HookedVisionModel.from_diffusers(pipe)), or pass pipe=... or encode=fn(prompts)."
            )
        tok = pipe.tokenizer
        ids = tok(
            prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        with torch.no_grad():
            states = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]
        return states.to(model.device), ids

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "StyleNeuronResult":
        prompts = (
            list(inputs)
            if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(p, str) for p in inputs)
            else list(config.prompts)
        )
        styled = [config.template.format(prompt=p, style=config.style) for p in prompts]
        ctx_s, ids_s = self._encode(model, config, styled)
        ctx_p, ids_p = self._encode(model, config, prompts)
        n_tok = ctx_s.shape[1]
        style_pos = None
        if ids_s is not None:  # style-phrase tokens: where the styled prompt's tokens differ from the plain one
            assert ids_p is not None  # _encode returns token ids for both prompt lists or for neither
            style_pos = torch.zeros(len(prompts), n_tok)
            for i in range(len(prompts)):
                diff = (ids_s[i] != ids_p[i]).nonzero().flatten()
                eos = (ids_s[i] == ids_s[i, -1]).nonzero().flatten()
                end = int(eos[0]) if len(eos) else n_tok
                pos = [int(j) for j in diff if j < end]
                style_pos[i, pos] = 1.0
        hooks = _resolve_hooks(model, config.hooks or list(DEFAULT_UNIT_HOOKS), explicit=bool(config.hooks))
        dev = model.device
        pipe = config.pipe if config.pipe is not None else model.adapter.pipeline
        sched = getattr(pipe, "scheduler", None)
        c, (h, w) = model.cfg.in_chans, tuple(model.cfg.image_size or (8, 8))
        g = torch.Generator().manual_seed(config.seed)
        P, S, T = len(prompts), config.seeds, len(config.timesteps)
        x0 = torch.randn(S, c, h, w, generator=g)
        noise = torch.randn(S, c, h, w, generator=g)
        # rows: (timestep, prompt, seed)
        lat, tt, pi = [], [], []
        for t in config.timesteps:
            tv = torch.full((S,), int(t), dtype=torch.long)
            if sched is not None and hasattr(sched, "add_noise"):
                xt = sched.add_noise(x0, noise, tv)
            else:
                a = math.cos(min(int(t), 1000) / 1000 * math.pi / 2)
                xt = a * x0 + math.sqrt(1 - a * a) * noise
            for p in range(P):
                lat.append(xt)
                tt.append(tv)
                pi.append(torch.full((S,), p, dtype=torch.long))
        lat_t, t_t, p_t = torch.cat(lat).to(dev), torch.cat(tt).to(dev), torch.cat(pi)
        rows = lat_t.shape[0]

        def forward(
            ctx: Tensor, fwd_hooks: Sequence[tuple[str, Callable]] = (), cache_names: Optional[list[str]] = None
        ):
            outs: list[Tensor] = []
            caches: dict[str, list[Tensor]] = {}
            for s in range(0, rows, config.max_batch):
                sl = slice(s, s + config.max_batch)
                args = (lat_t[sl], t_t[sl], ctx[p_t[sl]])
                hk = [(n, _sliced(fn, sl)) for n, fn in fwd_hooks]
                if cache_names:
                    with model.hooks(fwd_hooks=hk):
                        out, cache = model.run_with_cache(*args, names_filter=cache_names, return_cache_object=False)
                    for n in cache_names:
                        if n in cache:
                            caches.setdefault(n, []).append(cache[n])
                else:
                    out = model.run_with_hooks(*args, fwd_hooks=hk)
                outs.append(_sample(out))
            return torch.cat(outs), {n: torch.cat(v) for n, v in caches.items()}

        with torch.no_grad():
            out_s, cache_s = forward(ctx_s, cache_names=hooks)
            out_p, cache_p = forward(ctx_p, cache_names=hooks)
        sp_rows = style_pos[p_t] if style_pos is not None else None
        names, stat, prof, mdiff = [], [], [], []
        unit_hook, unit_idx = [], []
        for hname in hooks:
            if hname not in cache_s:
                continue
            a_s = unit_summary(hname, cache_s[hname], sp_rows)
            a_p = unit_summary(hname, cache_p[hname], sp_rows)
            if a_s is None:
                continue
            assert a_p is not None  # same hook and activation shape as a_s, so summarised too
            d, prof_h, md = _standardized(a_s.cpu(), a_p.cpu(), T)
            for u in range(d.shape[0]):
                names.append(f"{hname}:{u}")
                unit_hook.append(hname)
                unit_idx.append(u)
            stat.append(d)
            prof.append(prof_h)
            mdiff.append(md)
        if not stat:
            raise VisionLensError("style_neuron_search: no unit hooks fired; check `hooks`.")
        stat_t, prof_t, md_t = torch.cat(stat), torch.cat(prof, dim=1), torch.cat(mdiff)
        order = torch.argsort(stat_t.abs().nan_to_num(0.0), descending=True, stable=True)

        # ---------------------------------------------------------- causal verification
        info = {"plain_output": out_p, "timesteps": t_t, "latents": lat_t, "prompts": prompts, "styled": styled}
        if callable(config.score):
            score_fn: Callable[[Tensor], Tensor] = lambda out: config.score(out, info).reshape(-1).float()
        elif config.score == "output_direction":
            direc = (out_s - out_p).flatten(1).mean(0)
            norm2 = float((direc * direc).sum())
            if norm2 <= 1e-20:
                raise VisionLensError("style_neuron_search: the style phrase does not change the UNet output at all.")
            score_fn = lambda out: ((out - out_p).flatten(1) @ direc) / norm2
        else:
            raise VisionLensError(
                f"style_neuron_search: score must be 'output_direction' or a callable, got {config.score!r}."
            )
        with torch.no_grad():
            base = float(score_fn(out_s).mean())
            plain = float(score_fn(out_p).mean())
        verify = Table(
            [
                "units",
                "ablated_score",
                "amplified_score",
                "base_score",
                "plain_score",
                "ablation_drop",
                "amplification_gain",
            ],
            title="Causal verification (style prompt)",
        )
        groups = [[int(order[i])] for i in range(min(config.verify_units, len(order)))]
        if config.verify_top > 1 and len(order) > 1:
            groups.append([int(i) for i in order[: config.verify_top]])
        for grp in groups:
            res = []
            for factor in (0.0, config.amplify):
                hk = _edit_hooks(grp, unit_hook, unit_idx, cache_s, cache_p, factor)
                with torch.no_grad():
                    out, _ = forward(ctx_s, fwd_hooks=hk)
                res.append(float(score_fn(out).mean()))
            verify.rows.append(
                [" + ".join(names[i] for i in grp), res[0], res[1], base, plain, base - res[0], res[1] - base]
            )

        ranked = Table(
            ["rank", "unit", "hook", "index", "standardized_diff", "mean_diff"],
            title=f"Units ranked by |standardized difference| ({config.style!r})",
        )
        for r, i in enumerate(order[: config.top_k].tolist()):
            ranked.rows.append([r + 1, names[i], unit_hook[i], unit_idx[i], float(stat_t[i]), float(md_t[i])])
        top = order[: min(config.top_k, 30)]
        meta = {
            "model": f"{model.cfg.architecture} ({model.cfg.adapter})",
            "prompts": prompts,
            "styled": styled,
            "style": config.style,
            "timesteps": list(config.timesteps),
            "seeds": S,
            "hooks": hooks,
            "units": names,
            "top_units": [names[i] for i in top.tolist()],
            "n_units": len(names),
            "style_token_positions": style_pos.nonzero().tolist() if style_pos is not None else None,
        }
        tensors = {"standardized_diff": stat_t, "mean_diff": md_t, "profile": prof_t, "order": order}
        return StyleNeuronResult(
            self.name,
            summary=self.summary,
            config=_cfg_dict(config),
            meta=meta,
            tensors=tensors,
            tables={"ranked": ranked, "verification": verify},
        )


def _cfg_dict(config: Any) -> dict:
    d = config_to_dict(config)
    for k in ("score", "encode", "pipe"):
        if not isinstance(d.get(k), (str, type(None))):
            d[k] = f"<{type(getattr(config, k)).__name__}>"
    return d


def _resolve_hooks(model: HookedVisionModel, specs: list[str], explicit: bool) -> list[str]:
    out: list[str] = []
    for spec in specs:
        if spec.startswith("re:"):
            rx = re.compile(spec[3:])
            out.extend(n for n in model.hook_dict if rx.search(n) and n not in out)
        elif any(ch in spec for ch in "*?["):
            out.extend(n for n in model.hook_dict if fnmatch.fnmatchcase(n, spec) and n not in out)
        else:
            n = model.resolve_hook(spec)
            if n not in out:
                out.append(n)
    if not out:
        raise VisionLensError(f"style_neuron_search: hooks {specs} matched nothing.")
    order = {n: i for i, n in enumerate(model.hook_dict)}
    return sorted(out, key=order.__getitem__)


def _sample(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    s = getattr(out, "sample", None)
    if s is None and isinstance(out, (tuple, list)):
        s = out[0]
    return s


def _sliced(fn: Callable, sl: slice) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        return fn(act, hook, sl)

    return hook


def _standardized(a_s: Tensor, a_p: Tensor, n_t: int, eps: float = 1e-6) -> tuple[Tensor, Tensor, Tensor]:
    """``(d [units], per-timestep d [T, units], mean diff [units])`` from ``[rows, units]`` (rows timestep-major)."""
    # per-unit pooled variance, moderated by the layer's total variance (values of all its units), so
    # near-constant units of a layer cannot dominate the ranking by a vanishing denominator
    layer_var = float(torch.cat([a_s, a_p]).var(unbiased=False))

    def d(x: Tensor, y: Tensor) -> Tensor:
        pooled = (x.var(0, unbiased=False) + y.var(0, unbiased=False)) / 2
        return (x - y).mean(0) / (pooled + layer_var + eps).sqrt()

    rows = a_s.shape[0]
    per = rows // n_t
    prof = torch.stack([d(a_s[k * per : (k + 1) * per], a_p[k * per : (k + 1) * per]) for k in range(n_t)])
    return d(a_s, a_p), prof, (a_s - a_p).mean(0)


def _edit_hooks(
    group: list[int], unit_hook: list[str], unit_idx: list[int], cache_s: dict, cache_p: dict, factor: float
) -> list:
    """Forward hooks that set each unit in ``group`` to ``plain + factor * (style - plain)``."""
    by_hook: dict[str, list[int]] = {}
    for i in group:
        by_hook.setdefault(unit_hook[i], []).append(unit_idx[i])
    hooks = []
    for name, idxs in by_hook.items():

        def fn(act: Tensor, hook: Any, sl: slice, name: str = name, idxs: list[int] = idxs) -> Tensor:
            p = cache_p[name][sl].to(act.dtype)
            s = cache_s[name][sl].to(act.dtype)
            new = p + factor * (s - p)
            out = act.clone()
            if name.endswith("hook_pattern"):  # whole head pattern (keeps rows normalized)
                out[:, idxs] = new[:, idxs]
            elif act.ndim == 4:
                out[:, idxs] = new[:, idxs]
            else:
                out[..., idxs] = new[..., idxs]
            return out

        hooks.append((name, fn))
    return hooks


class StyleNeuronResult(Result):
    """Tensors ``standardized_diff`` / ``mean_diff`` ``[units]``, ``profile`` ``[timesteps, units]``, ``order``;
    tables ``ranked`` and ``verification``; ``meta["units"]`` names each unit ``"hook:index"``."""

    @property
    def top_units(self) -> list[str]:
        return list(self.meta.get("top_units", []))

    def figures(self) -> dict[str, Any]:
        return {"overview": self.plot(), "timestep_profile": self.plot_profile()}

    def plot(self) -> Any:
        fig = new_figure(11, 3.8)
        ax1, ax2 = fig.subplots(1, 2)
        rows = self.tables["ranked"].records()[:15]
        ax1.barh(range(len(rows))[::-1], [r["standardized_diff"] for r in rows], color="#4c72b0")
        ax1.set_yticks(range(len(rows))[::-1], [_short(r["unit"]) for r in rows], fontsize=6)
        ax1.set_title("standardized style - plain difference", fontsize=9)
        ver = self.tables["verification"].records()
        if ver:
            xs = range(len(ver))
            ax2.plot(xs, [v["ablated_score"] for v in ver], "v", label="ablated")
            ax2.plot(xs, [v["amplified_score"] for v in ver], "^", label="amplified")
            ax2.axhline(ver[0]["base_score"], color="k", ls="--", lw=0.8, label="style prompt")
            ax2.axhline(ver[0]["plain_score"], color="gray", ls=":", lw=0.8, label="plain prompt")
            ax2.set_xticks(list(xs), [_short(v["units"])[:28] for v in ver], rotation=40, ha="right", fontsize=6)
            ax2.legend(fontsize=7)
        ax2.set_title("style score under ablation / amplification", fontsize=9)
        return fig

    def plot_profile(self, n_units: int = 20) -> Any:
        """Timestep x unit heat map of the standardized difference for the top units."""
        prof = self.tensors["profile"]
        order = self.tensors["order"][:n_units]
        names = self.meta.get("units", [])
        fig = new_figure(max(6, 0.35 * len(order) + 2), 3.5)
        ax = fig.subplots(1, 1)
        data = prof[:, order].numpy()
        vmax = float(abs(data).max()) or 1.0
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_yticks(range(prof.shape[0]), [str(t) for t in self.meta.get("timesteps", [])], fontsize=7)
        ax.set_ylabel("timestep")
        ax.set_xticks(
            range(len(order)), [_short(names[i]) for i in order.tolist()], rotation=70, ha="right", fontsize=5
        )
        fig.colorbar(im, ax=ax, label="standardized diff")
        ax.set_title("which units respond to the style at which noise level", fontsize=9)
        return fig


def _short(name: str) -> str:
    return (
        name.replace("transformer_blocks.", "tb")
        .replace("attentions.", "attn")
        .replace("down_blocks.", "d")
        .replace("up_blocks.", "u")
        .replace("mid_block.", "mid.")
        .replace(".hook_out", "")
        .replace("hook_", "")
    )


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [StyleNeuronSearch]
