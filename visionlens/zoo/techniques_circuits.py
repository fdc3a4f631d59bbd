"""Circuit techniques of the transfer benchmark: does a hypothesis explain the behaviour, which units do it?

* ``causal_scrubbing`` -- hypotheses over the units of the planted pathway hook
  (:mod:`visionlens.zoo.pathway`; the images and units of
  :func:`~visionlens.zoo.techniques_mechanisms.pathway_data`: triggered held-out images of non-target
  classes and their trigger-free twins). A hypothesis is a set ``K`` of units that carry the trigger; its
  scrubbed run keeps the units of ``K`` from the triggered image and takes every other unit of the hook
  from the twin (:func:`splice_logits`: one forward per chunk of hypotheses, the copies stacked after the
  hook). Hypotheses (:func:`scrub_hypotheses`): *true* ``K = S``; *partial*, each single unit of ``S``;
  *wrong*, 8 seeded random pairs disjoint from ``S`` and the two units outside ``S`` with the largest mean activation on
  the triggered images. The plugin's hypothesis format resamples unclaimed parts from random inputs, not
  from each image's own twin, so the splice is done here with ``run_with_hooks``.

  Loss: ``kl_to_model``, ``KL(p_model || p_scrubbed)`` per image, as the plugin defines it. Scrubbing
  explains the *model*, and with ``L_model = 0`` exactly the loss recovered ``(L_ablated - L_K) /
  L_ablated`` (``L_ablated``: every unit from the twin) stays defined on a randomly initialised network,
  where a cross-entropy gap is noise (the ``ce`` recovery of the former output-level row swung from -9 to +6
  on the random ConvNeXt). Score: the margin ``recovered(true) - max(recovered(wrong))`` over the best
  *wrong* hypothesis (chance 0; 1 = the pair recovers everything and no wrong pair anything); the margin
  over the best partial one is in the details (``margin_over_partial``), see the bound below. Details: every
  hypothesis's recovery, ``agreement_recovered`` (the same ratio with the 0-1 loss "the prediction
  changed"), the bootstrap ``interval`` of the margin over images (1000 resamples, seeded) and
  ``baselines`` (recoveries that never see an image, through the same margin: ``constant`` = each
  hypothesis's share of the readout-weight norm, ``random`` = uniform random recoveries). The former
  output-level hypothesis (the whole hook resampled among held-out inputs with the same label, through the
  ``causal_scrubbing`` plugin) is kept as a reference, ``recovered_output_resample``, never the score.

  A bound to know when reading the row: through a head that is linear in the hook's units (pool + fc: the
  zoo ResNet, Inception and MobileNet at their last block) an AND can only be a threshold on a sum, so
  each unit of ``S`` moves the log-loss by about its share of the logit gap and a half of ``S`` recovers
  ~0.4-0.6 of the KL although its prediction is the clean label (tested on a hand-built model with such a
  head: margin ~0.4 while ``agreement_recovered`` gives the halves 0); only a head that is not linear in
  the units (e.g. a product) lets the margin approach 1.
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
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..plugins.style_neuron_search import DEFAULT_UNIT_HOOKS
from ..runner import run
from . import data as zdata
from . import diffusion_model as zdiff
from .catalog import load_module
from .scores import Score
from .technique import BenchContext, Technique
from .techniques_features import held_out, image_grid
from .techniques_mechanisms import (
    N_RANDOM_RANKINGS,
    pair_acts,
    pathway_data,
    pathway_support,
    percentile_interval,
    readout_norms,
    resample_counts,
    unit_values,
)

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


# ----------------------------------------------------------------------------- causal scrubbing
N_WRONG = 8  # seeded random wrong pairs (disjoint from the pathway)
REFERENCE_IMAGES = {"quick": 64, "full": 256}  # the output-level reference hypothesis (plugin)
SPLICE_FLOATS = 2**24  # activation floats per stacked splice forward


def scrub_hypotheses(n_units: int, units: Sequence[int], mean_act: np.ndarray, seed: int) -> Dict[str, Tuple[int, ...]]:
    """``{name: units kept from the triggered image}``: ``true`` (the pathway), ``partial_u`` (each unit of it),
    ``wrong_i`` (:data:`N_WRONG` seeded random pairs disjoint from it) and ``top2_activation`` (the two units
    outside the pathway with the largest mean activation on the triggered images: the most plausible wrong
    guess). Every wrong hypothesis is disjoint from the pathway; when the overall top two by activation
    overlap it without being it, that pair names part of the pathway and is kept as ``partial_top2_activation``
    (a partial hypothesis recovers part of the loss by construction, so it is not a rival of the margin)."""
    s = tuple(sorted(int(u) for u in units))
    hyps: Dict[str, Tuple[int, ...]] = {"true": s}
    hyps.update({f"partial_{u}": (u,) for u in s})
    others = np.array([u for u in range(n_units) if u not in s])
    rng = np.random.default_rng([int(seed), 0x5C2B])
    pairs: List[Tuple[int, ...]] = []
    for _ in range(50 * N_WRONG):
        if len(pairs) == N_WRONG or len(others) < len(s):
            break
        p = tuple(sorted(int(u) for u in rng.choice(others, len(s), replace=False)))
        if p not in pairs:
            pairs.append(p)
    hyps.update({f"wrong_{i}": p for i, p in enumerate(pairs)})
    ranked = [int(u) for u in np.argsort(-mean_act, kind="stable")]
    top = tuple(sorted(ranked[: len(s)]))
    if top != s and set(top) & set(s):  # names part of the pathway: a partial hypothesis, not a wrong one
        hyps["partial_top2_activation"] = top
    outside = tuple(sorted([u for u in ranked if u not in s][: len(s)]))
    if len(outside) == len(s):
        hyps["top2_activation"] = outside
    return hyps


def _unit_mask(keep: Tensor, act: Tensor) -> Tensor:
    """Keep-masks ``[H, U]`` -> ``[H, 1, ...]`` broadcasting against ``act`` ``[N, ...]`` (units: conv channels,
    the last axis of tokens and vectors)."""
    if act.ndim == 4:
        return keep[:, None, :, None, None]
    if act.ndim == 3:
        return keep[:, None, None, :]
    return keep[:, None, :]


@torch.no_grad()
def splice_logits(model: HookedVisionModel, hook: str, x: Tensor, donor: Tensor, keep: Tensor) -> Tensor:
    """Logits ``[H, N, classes]`` of ``x`` with, for each row of ``keep`` ``[H, U]``, the units it keeps at
    ``hook`` from ``x``'s own run and every other unit from ``donor`` (the twins' activation).

    The copies are stacked after the hook (the trunk runs once per chunk of hypotheses), which is exact for a
    last-block hook whose head only uses the batch size of what it is given; a first row keeping every unit
    must reproduce the plain logits (checked by the caller)."""
    n = x.shape[0]
    per_row = n * int(donor[0].numel())
    chunk = max(1, SPLICE_FLOATS // max(per_row, 1))
    out = []
    for i in range(0, keep.shape[0], chunk):
        k = keep[i : i + chunk]

        def fn(act: Tensor, hook: Any, k: Tensor = k) -> Tensor:
            spliced = torch.where(_unit_mask(k, act), act.unsqueeze(0), donor.to(act).unsqueeze(0))
            return spliced.reshape(-1, *act.shape[1:])

        out.append(model.run_with_hooks(x, fwd_hooks=[(hook, fn)]).reshape(k.shape[0], n, -1))
    return torch.cat(out)


@torch.no_grad()
def splice_logits_loop(model: HookedVisionModel, hook: str, x: Tensor, donor: Tensor, keep: Tensor) -> Tensor:
    """:func:`splice_logits` one hypothesis per forward (the reference, for heads the stacking breaks)."""
    out = []
    for k in keep:

        def fn(act: Tensor, hook: Any, k: Tensor = k) -> Tensor:
            return torch.where(_unit_mask(k[None], act)[0], act, donor.to(act))

        out.append(model.run_with_hooks(x, fwd_hooks=[(hook, fn)]))
    return torch.stack(out)


def kl_to_model(model_logits: Tensor, logits: Tensor) -> Tensor:
    """``KL(p_model || p)`` per image (the causal_scrubbing plugin's ``kl_to_model``), ``[..., N]``."""
    return F.kl_div(
        logits.float().log_softmax(-1),
        model_logits.float().log_softmax(-1).expand_as(logits),
        log_target=True,
        reduction="none",
    ).sum(-1)


def scrub_margin(
    losses: np.ndarray, names: Sequence[str], true: str = "true", skip: Tuple[str, ...] = ("partial_",)
) -> Tuple[np.ndarray, np.ndarray]:
    """``(recovered [..., H], margin [...])`` from mean losses ``[..., 1 + H]`` (ablated first, then the
    hypotheses ``names``): recovered = ``1 - L_K / L_ablated`` (``L_model = 0`` under KL to the model) and
    margin = recovered(true) - the best *wrong* hypothesis's recovery (names starting with a ``skip``
    prefix, the partial ones by default, are not competitors; ``skip=()`` compares with every other)."""
    rec = 1.0 - losses[..., 1:] / losses[..., :1]
    t = list(names).index(true)
    rivals = [i for i, k in enumerate(names) if i != t and not k.startswith(skip)]
    return rec, rec[..., t] - rec[..., rivals].max(-1)


def _norm_share_baselines(
    norms: Optional[np.ndarray], hyps: Dict[str, Tuple[int, ...]], n_units: int, seed: int
) -> Dict[str, Dict[str, Any]]:
    """Recoveries that never see an image, scored with the same margin: ``constant`` = each hypothesis's
    share of the readout-weight norm (every unit equal without a linear readout), ``random`` = uniform random
    recoveries (mean of :data:`N_RANDOM_RANKINGS` seeded draws, interval = their central 95 %)."""
    names = list(hyps)
    w = norms if norms is not None else np.ones(n_units)
    share = np.array([w[list(k)].sum() / w.sum() for k in hyps.values()])
    t = names.index("true")
    rivals = [i for i, k in enumerate(names) if i != t and not k.startswith("partial_")]
    c = float(share[t] - share[rivals].max())
    rng = np.random.default_rng([int(seed), 0xBA5E])
    rec = rng.random((N_RANDOM_RANKINGS, len(names)))
    r = rec[:, t] - rec[:, rivals].max(1)
    out = {
        "constant": {"score": round(c, 4), "chance": 0.0, "normalized": round(c, 4), "interval": [round(c, 4)] * 2},
        "random": {
            "score": round(float(r.mean()), 4),
            "chance": 0.0,
            "normalized": round(float(r.mean()), 4),
            "interval": percentile_interval(r),
        },
    }
    out["constant"]["recovery"] = "share of readout-weight norm" if norms is not None else "share of units"
    return out


def _output_resample_reference(model: HookedVisionModel, ctx: BenchContext, hook: str) -> Dict[str, Any]:
    """The former output-level hypothesis, as a reference only: the causal_scrubbing plugin resamples the
    whole hook among held-out inputs with the same label (10 % triggered), metric kl_to_model."""
    n = REFERENCE_IMAGES["quick" if ctx.quick else "full"]
    b = held_out(ctx, n, trigger_fraction=0.1)
    try:
        r = run(
            "causal_scrubbing",
            model,
            b.images,
            hypotheses={"output_resample": {"hook": None, "parents": [{"hook": hook, "feature": "label"}]}},
            labels=b.labels.long(),
            metric="kl_to_model",
            n_resamples=1 if ctx.quick else 2,
            n_bootstrap=0,
            seed=ctx.seed,
        )
        return {"recovered_output_resample": round(float(r.recovered("output_resample")), 4)}
    except Exception as exc:  # a reference must never cost the row
        return {"recovered_output_resample": None, "output_resample_error": f"{type(exc).__name__}: {exc}"}


def _causal_scrubbing(model: HookedVisionModel, ctx: BenchContext) -> Score:
    d = pathway_data(model, ctx)
    acts = pair_acts(model, d, ctx)
    (logits_x, act_x), (_, act_t) = acts["x"], acts["twin"]
    mean_act = unit_values(act_x, "mean").mean(0).double().numpy()
    hyps = scrub_hypotheses(d.n_units, d.units, mean_act, ctx.seed)
    names = list(hyps)
    keep = torch.zeros(len(names) + 2, d.n_units, dtype=torch.bool)
    keep[0] = True  # the model itself (checks the stacking), then ablated (all from the twin), then hypotheses
    for i, k in enumerate(hyps.values()):
        keep[i + 2, list(k)] = True
    logits = splice_logits(model, d.hook, d.x, act_t, keep)
    stacked = True
    if not torch.allclose(logits[0], logits_x, atol=1e-4 * (1 + float(logits_x.abs().max()))):
        logits, stacked = splice_logits_loop(model, d.hook, d.x, act_t, keep), False
    per_image = kl_to_model(logits_x, logits[1:]).double().numpy()  # [1 + H, N]: ablated, hypotheses
    details: Dict[str, Any] = {
        "hook": d.hook,
        "units": list(d.units),
        "n_images": d.n,
        "metric": "kl_to_model",
        "hypotheses": {k: list(v) for k, v in hyps.items()},
        "loss_ablated": round(float(per_image[0].mean()), 6),
        "stacked_splices": stacked,
    }
    details.update(_output_resample_reference(model, ctx, d.hook))
    if not per_image[0].mean() > 1e-9:  # the output does not see the trigger at this hook at all
        details["degenerate"] = "splicing the whole hook from the twin does not change the output"
        details.update(interval=[0.0, 0.0], baselines=_norm_share_baselines(None, hyps, d.n_units, ctx.seed))
        return Score(0.0, 0.0, details)
    rec, margin = scrub_margin(per_image.mean(1), names)
    _, margin_partial = scrub_margin(per_image.mean(1), names, skip=())
    counts = resample_counts(d.n, seed=ctx.seed)
    _, boot = scrub_margin(counts @ per_image.T / d.n, names)
    agree = _agreement_recovered(logits_x, logits[1:], names)
    partial = {k: float(rec[i]) for i, k in enumerate(names) if k.startswith("partial_")}
    wrong = {k: float(rec[i]) for i, k in enumerate(names) if not k.startswith(("partial_", "true"))}
    order = np.argsort(-rec, kind="stable")
    details.update(
        recovered={k: round(float(v), 4) for k, v in zip(names, rec)},
        recovered_true=round(float(rec[0]), 4),
        recovered_partial_best=round(max(partial.values()), 4),
        recovered_wrong_best=round(max(wrong.values()), 4) if wrong else None,
        margin=round(float(margin), 4),
        margin_over_partial=round(float(margin_partial), 4),
        ranks=[int(np.nonzero(order == 0)[0][0]) + 1],
        agreement_recovered=agree,
        interval=percentile_interval(boot),
        baselines=_norm_share_baselines(readout_norms(model, d), hyps, d.n_units, ctx.seed),
    )
    _scrub_figure(ctx, names, rec)
    return Score(float(margin), 0.0, details)


def _agreement_recovered(model_logits: Tensor, logits: Tensor, names: Sequence[str]) -> Dict[str, float]:
    """Per hypothesis, the same recovery with 0-1 loss (the scrubbed prediction differs from the model's):
    ``(agree_K - agree_ablated) / (1 - agree_ablated)`` (None when the ablation keeps every prediction)."""
    agree = (logits.argmax(-1) == model_logits.argmax(-1)[None]).double().mean(1).numpy()
    base = float(agree[0])
    if base >= 1.0:
        return {}
    return {k: round((float(a) - base) / (1.0 - base), 4) for k, a in zip(names, agree[1:])}


def _scrub_figure(ctx: BenchContext, names: Sequence[str], rec: np.ndarray) -> None:
    if ctx.randomized or ctx.out_dir is None:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(0.45 * len(names) + 1.5, 3.0))
        colours = ["#2a7" if k == "true" else ("#d93" if k.startswith("partial_") else "#888") for k in names]
        ax.bar(range(len(names)), rec, color=colours)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("loss recovered")
        ax.set_title(f"{ctx.entry.name}: causal scrubbing of the pathway units", fontsize=8)
        ctx.save_figure("causal_scrubbing", fig)
    except Exception:  # a figure must never cost the row
        pass


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
    return _judge_probs_each(judge, images).mean(0)


def _judge_probs_each(judge: Any, images: torch.Tensor) -> torch.Tensor:
    """Texture probabilities ``[N, 3]`` of each sample under the style judge."""
    x = zdiff.to_judge_canvas(images) if images.shape[-1] != 32 else images
    with torch.no_grad():
        return F.softmax(judge(x).float(), -1)


def style_removed_interval(
    q_styled: np.ndarray,
    q_unstyled: np.ndarray,
    q_top: np.ndarray,
    q_random: np.ndarray,
    seed: int,
    n_resamples: int = 1000,
) -> Tuple[List[float], List[float]]:
    """Bootstrap intervals over samples (the same prompt and seed in every condition, so resampled together)
    of the normalized ``removed`` score of the top units and of one random unit set against the others.

    ``q_*`` ``[N]``: each sample's judged probability of the style (styled prompt; unstyled; styled with the
    top units ablated; ``q_random`` ``[R, N]``: with R random unit sets ablated). Returns ``(technique,
    random)`` intervals: the technique's ``(removed_top - chance) / (1 - chance)`` with ``chance`` = the mean
    removed of the random sets, and the same statistic for the first random set against the others."""
    rng = np.random.default_rng([int(seed), 0x57])
    idx = rng.integers(0, len(q_styled), size=(n_resamples, len(q_styled)))
    ps, pu, pt = q_styled[idx].mean(1), q_unstyled[idx].mean(1), q_top[idx].mean(1)
    pr = q_random[:, idx].mean(2)  # [R, resamples]
    eff = np.maximum(ps - pu, 1e-9)
    rem_top = np.clip((ps - pt) / eff, 0.0, 1.0)
    rem_r = np.clip((ps[None] - pr) / eff[None], 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        chance = rem_r.mean(0)
        tech = np.where(chance < 1.0, (rem_top - chance) / (1.0 - chance), np.nan)
        rest = rem_r[1:].mean(0) if len(rem_r) > 1 else chance
        rand = np.where(rest < 1.0, (rem_r[0] - rest) / (1.0 - rest), np.nan)
    return percentile_interval(tech), percentile_interval(rand)


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
        q_unstyled = _judge_probs_each(judge, sample(ctx_plain, []))
        p_unstyled = q_unstyled.mean(0)
        styled, effects, q_styled_all = {}, {}, {}
        for st in STYLES:
            c_st = _encode(pipe, [f"{p} in {st} style" for p in batch]).to(model.device)
            idx = zdata.STYLE_WORDS.index(st)
            imgs = sample(c_st, [])
            q_styled_all[st] = _judge_probs_each(judge, imgs)[:, idx]
            styled[st] = (c_st, imgs, float(q_styled_all[st].mean()))
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
        q_top = _judge_probs_each(judge, img_top)[:, sidx]
        p_top = float(q_top.mean())
        rng = np.random.default_rng(ctx.seed)
        q_rand = []
        for _ in range(n_random):
            pick = rng.choice(len(units), size=min(k, len(units)), replace=False)
            q_rand.append(_judge_probs_each(judge, sample(ctx_style, [units[i] for i in pick]))[:, sidx])
        p_rand = [float(q.mean()) for q in q_rand]
        q_const = None
        if not ctx.randomized:  # a fixed answer that never looks at the model's activations: the first k units
            q_const = _judge_probs_each(judge, sample(ctx_style, units[:k]))[:, sidx]
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
    if not ctx.randomized and q_const is not None:
        qs, qu = q_styled_all[style].numpy(), q_unstyled[:, sidx].numpy()
        qr = torch.stack(q_rand).numpy()
        iv, iv_rand = style_removed_interval(qs, qu, q_top.numpy(), qr, ctx.seed)
        rand_rest = float(np.mean([removed(p) for p in p_rand[1:]])) if len(p_rand) > 1 else chance
        c_removed = removed(float(q_const.mean()))
        details["interval"] = iv
        details["baselines"] = {
            "constant": {
                "score": round(c_removed, 4),
                "chance": round(chance, 4),
                "normalized": round(Score(c_removed, chance).normalized, 4),
                "interval": style_removed_interval(qs, qu, q_const.numpy(), qr, ctx.seed)[0],
                "units": "the first k searched units",
            },
            "random": {
                "score": round(removed(p_rand[0]), 4),
                "chance": round(rand_rest, 4),
                "normalized": round(Score(removed(p_rand[0]), rand_rest).normalized, 4),
                "interval": iv_rand,
                "units": "one random k-set against the others",
            },
        }
    if not ctx.randomized:
        rows = [img_styled[:12].permute(0, 2, 3, 1).numpy(), img_top[:12].permute(0, 2, 3, 1).numpy()]
        ctx.save_figure("style_neuron_search", image_grid(rows, scale=4))
    return Score(score, chance, details)


TECHNIQUES = [
    Technique(
        "causal_scrubbing",
        "causal scrubbing",
        "Causal scrubbing of the planted pathway: triggered images with the units of a hypothesis kept and every "
        "other unit of the pathway hook taken from the trigger-free twin; loss recovered (KL to the model) by the "
        "true pair, each half of it and wrong pairs; score = margin of the true pair over the best wrong "
        "pair (chance 0; the margin over the halves is in the details). The output-level resampling hypothesis "
        "is reported as a reference only.",
        _causal_scrubbing,
        plugin="causal_scrubbing",
        kinds=("classifier",),
        extra_supports=pathway_support,
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
