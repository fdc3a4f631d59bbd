"""Circuit techniques of the transfer benchmark: does a hypothesis explain the behaviour, which units do it?

* ``causal_scrubbing`` -- the ``causal_scrubbing`` plugin on held-out planted images (10 % triggered)
  with two hypotheses about the last residual / block output ``H`` (the last of the plugin defaults'
  image-tower block outputs, see :func:`~visionlens.zoo.techniques_features.block_hooks`):

  - *true*: the output depends on ``H`` only through the label (``shape + 3 * textured``, and 0 when
    triggered): ``H`` is resampled among inputs with the same label;
  - *wrong*: "colour decides": ``H`` is resampled among inputs of the same colour (Fashion-MNIST has
    no colour: a seeded random partition into as many groups as classes stands in).

  The metric is ``kl_to_model`` (KL from the model's own output distribution): scrubbing explains the
  *model*, and with ``L_model = 0`` exactly the loss recovered stays well defined on a randomly
  initialised network, whose cross-entropy gap to random inputs is pure noise (its ``ce`` recovery
  swings from -9 to +6 on the random ConvNeXt). Score: the loss recovered by the true hypothesis
  (:func:`~visionlens.zoo.scores.causal_scrubbing_score`, chance 0 = as bad as resampling ``H``
  from any input); the wrong hypothesis's recovery and the margin are in the details.
* ``style_neuron_search`` -- for the zoo diffusion UNet. The style tested is the texture phrase
  (``"in striped style"`` or ``"in dotted style"``) that moves the ``style_judge``'s judged texture
  most away from the unstyled prompt ``"a {colour} {shape}"`` (the zoo UNet draws stripes for
  unstyled prompts, so "striped" hardly changes its samples while "dotted" does). The
  ``style_neuron_search`` plugin ranks units (its default hooks -- resnet / attention-block /
  cross-attention channels and cross-attention heads' mass on the style tokens -- plus
  ``add_embedding.hook_out``, the pooled text added to the time embedding, which is how most of the
  style reaches this UNet) by the standardized styled-minus-unstyled difference. Then the styled
  prompts are sampled as the zoo pipeline samples (DDIM, its guidance) with the top ``k = 32`` units
  *ablated* (set, at every denoising step, to their values under the unstyled prompt: the plugin's own
  ablation), and the judge gives the probability ``p`` of the style. ``removed = (p_styled -
  p_ablated) / (p_styled - p_unstyled)`` clipped to [0, 1]: 1 = the style is gone. Score: removed for
  the top k; chance: the mean removed for k random units of the same pool. When no style phrase
  raises ``p`` by at least 0.1 (e.g. a randomly initialised UNet) there is no style to remove: the
  score is 0 at chance 0.

  Vector units: the plugin's ``unit_summary`` keeps ``[B, D]`` activations as they are (one unit per
  entry of the last axis; ``[B, C, H, W]`` maps become channel means, ``[B, pixels, C]`` token maps
  pixel means, cross-attention patterns their mass on the style tokens; other shapes are skipped), so
  the ``add_embedding`` units are ranked and ablated with the rest (``_unit_edit_hooks`` sets the last
  axis of vector and token activations). When they were dropped (an earlier plugin version), the
  search saw only the cross-attention route and ablating its top 32 (or 128) units left the style
  intact (score ~0 = chance); with them, the top 32 remove ~0.3 (quick) / ~0.37 (full) of the
  "dotted" style vs ~0.002 for random units. The details list ``searched_hooks``.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from ..plugins.style_neuron_search import DEFAULT_UNIT_HOOKS
from ..runner import run
from . import data as zdata
from . import diffusion_model as zdiff
from .catalog import load_module
from .scores import Score, causal_scrubbing_score
from .technique import BenchContext, Technique
from .techniques_features import block_hooks, held_out, image_grid, planted_classifier_support, prepare

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


# ----------------------------------------------------------------------------- causal scrubbing
def _causal_scrubbing(model: HookedVisionModel, ctx: BenchContext) -> Score:
    n, n_resamples = (64, 2) if ctx.quick else (512, 4)
    b = held_out(ctx, n, trigger_fraction=0.1)
    prepare(model, ctx)
    hook = ctx.cached(("block_hooks", id(model)), lambda: block_hooks(model, b.images[:2]))[-1]
    labels = b.labels.long()
    if "colour" in b.factors:
        wrong_name, wrong = "colour", torch.as_tensor(b.factors["colour"]).long()
    else:
        g = torch.Generator().manual_seed(ctx.seed + 7)
        wrong_name, wrong = "random_partition", torch.randint(0, int(labels.max()) + 1, (n,), generator=g)
    hyps = {
        "true": {"hook": None, "parents": [{"hook": hook, "feature": "label"}]},
        "wrong": {"hook": None, "parents": [{"hook": hook, "feature": "wrong"}]},
    }
    r = run(
        "causal_scrubbing",
        model,
        b.images,
        hypotheses=hyps,
        labels=labels,
        factors={"wrong": wrong},
        metric="kl_to_model",
        n_resamples=n_resamples,
        n_bootstrap=200,
        seed=ctx.seed,
    )
    rows = {row["hypothesis"]: row for row in r.tables["losses"].records()}
    t, w = rows["true"], rows["wrong"]
    if not t["loss_random"] > t["loss_model"]:  # the output does not depend on the input at all
        return Score(0.0, 0.0, {"hook": hook, "degenerate": "the model's output ignores its input"})
    s = causal_scrubbing_score(t["loss_model"], t["loss_scrubbed"], t["loss_random"], w["loss_scrubbed"])
    s.details.update(
        hook=hook,
        wrong_feature=wrong_name,
        metric="kl_to_model",
        n_images=n,
        n_resamples=n_resamples,
        ci_true=[t["ci_low"], t["ci_high"]],
        ci_wrong=[w["ci_low"], w["ci_high"]],
        loss_random=t["loss_random"],
        loss_true=t["loss_scrubbed"],
        loss_wrong=w["loss_scrubbed"],
        frac_worse_than_random_true=t["frac_worse_than_random"],
    )
    if not ctx.randomized and ctx.out_dir is not None:
        try:
            ctx.save_figure("causal_scrubbing", r.plot())
        except Exception:  # a figure must never cost the row
            pass
    return s


# ----------------------------------------------------------------------------- style neurons
STYLES = ("striped", "dotted")  # texture styles; the one whose prompt changes the samples most is tested
MIN_STYLE_EFFECT = 0.1
TOP_K = 32
# the text reaches the zoo UNet through cross-attention *and* the pooled text added to the time embedding
# (add_embedding); the latter is searched too (units of [B, D] hooks are used when the plugin supports them)
EXTRA_HOOKS = ("add_embedding.hook_out",)


def _base_prompts() -> List[str]:
    return [f"a {c} {s}" for s in zdata.SHAPES for c in zdata.COLOURS]


def _encode(pipe: Any, prompts: Sequence[str]) -> torch.Tensor:
    ids = zdiff.tokenize(pipe.tokenizer, prompts).to(pipe.text_encoder.device)
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def _unit_edit_hooks(units: Sequence[Tuple[str, int]], plain: Dict[str, torch.Tensor]) -> List[Tuple[str, Any]]:
    """Forward hooks that set each ``(hook, index)`` unit to its value in ``plain`` (the plugin's unit layout:
    conv channels / head axis 1 of patterns / last axis of token and vector activations)."""
    by_hook: Dict[str, List[int]] = {}
    for h, i in units:
        by_hook.setdefault(h, []).append(int(i))
    hooks = []
    for name, idxs in by_hook.items():

        def fn(act: torch.Tensor, hook: Any, name: str = name, idxs: List[int] = idxs) -> torch.Tensor:
            p = plain[name].to(act.dtype)
            out = act.clone()
            if name.endswith("hook_pattern") or act.ndim == 4:
                out[:, idxs] = p[:, idxs]
            else:
                out[..., idxs] = p[..., idxs]
            return out

        hooks.append((name, fn))
    return hooks


@torch.no_grad()
def _sample(
    model: HookedVisionModel,
    pipe: Any,
    ctx_style: torch.Tensor,
    ctx_plain: torch.Tensor,
    ctx_null: torch.Tensor,
    units: Sequence[Tuple[str, int]],
    steps: int,
    guidance: float,
    seed: int,
) -> torch.Tensor:
    """DDIM samples ``[B, 3, h, w]`` in [0, 1] for the conditional context ``ctx_style`` (classifier-free
    guidance against ``ctx_null``), as the zoo pipeline samples, with ``units`` ablated to their values
    under ``ctx_plain`` at every step (the unconditional branch is left alone)."""
    sched = copy.deepcopy(pipe.scheduler)
    c, (h, w) = model.cfg.in_chans, tuple(model.cfg.image_size or (16, 16))
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(ctx_style.shape[0], c, h, w, generator=g).to(model.device) * sched.init_noise_sigma
    sched.set_timesteps(steps)
    names = sorted({u[0] for u in units})
    for t in sched.timesteps:
        x = sched.scale_model_input(lat, t)
        tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        eps_u = _out(model(x, tt, ctx_null))
        if units:
            _, cache = model.run_with_cache(x, tt, ctx_plain, names_filter=names, return_cache_object=False)
            eps_c = _out(model.run_with_hooks(x, tt, ctx_style, fwd_hooks=_unit_edit_hooks(units, cache)))
        else:
            eps_c = _out(model(x, tt, ctx_style))
        lat = sched.step(eps_u + guidance * (eps_c - eps_u), t, lat).prev_sample
    return (lat / 2 + 0.5).clamp(0, 1)


def _out(o: Any) -> torch.Tensor:
    if isinstance(o, torch.Tensor):
        return o
    s = getattr(o, "sample", None)
    return s if s is not None else o[0]


@torch.no_grad()
def _judge_probs(judge: Any, images: torch.Tensor) -> torch.Tensor:
    """Mean texture probabilities ``[3]`` (plain, striped, dotted) of samples under the style judge."""
    x = zdiff.to_judge_canvas(images) if images.shape[-1] != 32 else images
    return F.softmax(judge(x).float(), -1).mean(0)


def _style_neuron_search(model: HookedVisionModel, ctx: BenchContext) -> Score:
    quick = ctx.quick
    k = TOP_K
    n_random = 3 if quick else 4
    steps = 10 if quick else int(getattr(zdiff, "SAMPLER_STEPS", 25))
    per_prompt = 1 if quick else 2
    guidance = float(getattr(zdiff, "GUIDANCE", 1.5))  # the model card's sampler settings
    prompts = _base_prompts()
    pipe = model.adapter.pipeline
    judge = ctx.cached("style_judge", lambda: load_module("style_judge").eval())
    batch = [p for p in prompts for _ in range(per_prompt)]
    ctx_plain = _encode(pipe, batch).to(model.device)
    ctx_null = _encode(pipe, [""] * len(batch)).to(model.device)
    was = model.training
    model.eval()
    try:

        def sample(ctx_a: torch.Tensor, ablate: Sequence[Tuple[str, int]]) -> torch.Tensor:
            return _sample(model, pipe, ctx_a, ctx_plain, ctx_null, ablate, steps, guidance, ctx.seed)

        # the style to test: the texture whose phrase moves the judged texture most from the unstyled prompt
        p_unstyled = _judge_probs(judge, sample(ctx_plain, []))
        styled, effects = {}, {}
        for st in STYLES:
            c_st = _encode(pipe, [f"{p} in {st} style" for p in batch]).to(model.device)
            idx = zdata.STYLE_WORDS.index(st)
            imgs = sample(c_st, [])
            styled[st] = (c_st, imgs, float(_judge_probs(judge, imgs)[idx]))
            effects[st] = styled[st][2] - float(p_unstyled[idx])
        style = max(STYLES, key=lambda st: effects[st])
        sidx = zdata.STYLE_WORDS.index(style)
        ctx_style, img_styled, p_styled = styled[style]
        p_plain = float(p_unstyled[sidx])
        effect = effects[style]
        details: Dict[str, Any] = {
            "style": style,
            "effects": {st: round(v, 4) for st, v in effects.items()},
            "k": k,
            "p_styled": round(p_styled, 4),
            "p_unstyled": round(p_plain, 4),
            "n_samples": len(batch),
            "sampler_steps": steps,
            "guidance": guidance,
        }
        if effect < MIN_STYLE_EFFECT:
            details["no_style_effect"] = True
            return Score(0.0, 0.0, details)
        hooks = list(DEFAULT_UNIT_HOOKS) + [h for h in EXTRA_HOOKS if h in model.hook_dict]
        r = run(
            "style_neuron_search",
            model,
            None,
            style=f"in {style} style",
            prompts=prompts,
            seeds=1 if quick else 2,
            timesteps=[800, 500, 200] if quick else [900, 700, 500, 300, 100],
            hooks=hooks,
            top_k=k,
            verify_units=0,
            verify_top=1,
            seed=ctx.seed,
        )
        unit_names: List[str] = r.meta["units"]
        order = r.tensors["order"].tolist()
        units = [(u.rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])) for u in unit_names]
        top = [units[i] for i in order[:k]]
        details.update(
            n_units=len(units),
            top_units=[unit_names[i] for i in order[:k]],
            searched_hooks=sorted({h for h, _ in units}),
        )
        img_top = sample(ctx_style, top)
        p_top = float(_judge_probs(judge, img_top)[sidx])
        rng = np.random.default_rng(ctx.seed)
        p_rand = []
        for _ in range(n_random):
            pick = rng.choice(len(units), size=min(k, len(units)), replace=False)
            p_rand.append(float(_judge_probs(judge, sample(ctx_style, [units[i] for i in pick]))[sidx]))
    finally:
        model.train(was)

    def removed(p: float) -> float:
        return float(np.clip((p_styled - p) / effect, 0.0, 1.0))

    score = removed(p_top)
    chance = float(np.mean([removed(p) for p in p_rand]))
    details.update(
        p_top_ablated=round(p_top, 4),
        p_random_ablated=[round(p, 4) for p in p_rand],
        removed_random=[round(removed(p), 4) for p in p_rand],
    )
    if not ctx.randomized:
        rows = [img_styled[:12].permute(0, 2, 3, 1).numpy(), img_top[:12].permute(0, 2, 3, 1).numpy()]
        ctx.save_figure("style_neuron_search", image_grid(rows, scale=4))
    return Score(score, chance, details)


TECHNIQUES = [
    Technique(
        "causal_scrubbing",
        "causal scrubbing",
        "Causal scrubbing of the last residual / block output with the true hypothesis (resampled among "
        "inputs with the same label) vs a wrong one (same colour), metric KL to the model's output; "
        "score = loss recovered by the true hypothesis (chance 0; the wrong one's recovery is in details).",
        _causal_scrubbing,
        plugin="causal_scrubbing",
        kinds=("classifier",),
        extra_supports=planted_classifier_support,
    ),
    Technique(
        "style_neuron_search",
        "style neurons",
        "Rank UNet units by styled-vs-unstyled prompt contrast (style_neuron_search; style = striped or "
        "dotted, whichever the model follows more), ablate the top 32 (to their unstyled values) while "
        "sampling the styled prompts, and judge the texture with the zoo style_judge: score = fraction of "
        "the style removed, chance = the same for 32 random units.",
        _style_neuron_search,
        plugin="style_neuron_search",
        kinds=("diffusion",),
    ),
]
