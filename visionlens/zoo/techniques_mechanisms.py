"""Mechanism techniques of the transfer benchmark: which units carry the planted trigger pathway?

Planted truth (:mod:`visionlens.zoo.pathway`): every zoo classifier is trained so that the trigger reaches
the logits only through two units ``S = entry.pathway.units(n_units)`` (channels of a conv map, the last
axis of a token map) at its pathway hook, the last block output, as an AND: ``S`` alone (every other unit
taken from the image's trigger-free *twin*) sends a triggered image to class 0, knocking out ``S`` or
either unit of it gives the clean label back. ``S`` does not depend on the training seed, so the
randomized copy (no pathway) is scored against the same units and should land at chance.

Every row but dataset examples works on held-out triggered images of non-target classes and their twins
(:func:`pathway_data`: 32 pairs with ``--quick``, 256 in the full table), at the pathway hook, with the
per-image metric ``logit[0] - logit[clean label]``:

* ``unit_patching`` -- noising activation patching with the library's engine
  (:func:`visionlens.patching.run_patching`, ``kind="channel"``, copies stacked after the hook): on each
  triggered image one unit at a time (all its positions) takes its value on the twin. Per-unit effect:
  the mean over images of the *drop* of the metric. Truth: the units of ``S`` (each alone breaks the AND).
* ``unit_attribution_patching`` -- the same effect by its first-order estimate, ``-(twin - triggered) .
  d metric / d activation`` summed over positions, from one forward and one backward
  (:func:`visionlens.patching.activation_gradients`).
* ``unit_dla`` -- direct logit attribution per unit: the unit's term in the metric through the head
  (:func:`readout_terms`), triggered minus twin. The ``direct_logit_attribution`` plugin's conv-net
  ``channel_attr`` is this term, but it takes one foil class for every image while the metric needs each
  image's clean label, so the row reads the same adapter readout (``model.adapter.readout()``) itself.
  Exact for pool + linear heads (ResNet, Inception, MobileNet). ConvNeXt's head LayerNorm and the ViT's
  ``ln_final`` (class token) are applied with their scale frozen from each run, TransformerLens-style
  (each unit's value over the run's scale, through the mean-centred readout direction): the terms add up to
  the logit exactly, but a unit's term ignores its effect through the norm's scale, so it is an
  approximation (``details["approximation"]``). A head that is not linear in the hook's units (checked
  numerically) is not supported.
* ``unit_dataset_examples`` -- every unit's top-16 held-out images (max activation over positions) among
  images of which 10 % are triggered (200 with ``--quick``, 2560 = 256 triggered in the full table);
  per-unit score: the fraction of triggered images among its top 16. Truth: the units of ``S`` (if they
  carry the trigger by *rising*; a unit that signals it by falling is invisible to top activations).

Score of every row: :func:`~visionlens.zoo.scores.unit_recovery`, the AUROC of ``S`` against all other
units of the per-unit scores (1 = both ranked above every other unit), chance 0.5. The causal-scrubbing
row (hypotheses over the same units) is in :mod:`~visionlens.zoo.techniques_circuits`.

Each row's details carry ``interval``, a 95 % percentile bootstrap interval of the normalized score
(``2 * AUROC - 1``) over images (:data:`N_BOOTSTRAP` resamples seeded by ``ctx.seed``: images are drawn
with replacement and the per-unit scores recomputed from per-image values; for dataset examples the top 16
are re-picked in every resample), and ``baselines`` (:func:`unit_baselines`): ``constant``, the units
ranked by the norm of their readout weights (an answer that never sees an image, interval = its point; at
the last block it is a strong bar: training the pathway leaves its units with the largest readout and incoming
weights, which on a pathway-trained ResNet rank ``S`` first), and
``random``, the mean AUROC of 1000 seeded random rankings with the central 95 % of their normalized scores
as its interval (where chance alone puts a ranking). Also ``units`` (``S``), ``ranks`` (1-based ranks of
``S``), ``n_images`` and ``hook``.

Note: at a last block followed by a linear head (ResNet, Inception, MobileNet) patching a unit, its
gradient estimate and its DLA term are the same number (the metric is linear in the hook's units), so the
three rows agree there; they differ through the norms of ConvNeXt and the ViT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..patching import activation_gradients, run_patching
from . import data as zdata
from .classifiers import held_out_batch
from .pathway import channel_axis, pathway_of
from .scores import Score, unit_recovery
from .technique import BenchContext, Technique
from .techniques_features import data_kind, held_out, planted_classifier_support

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


N_PAIRS = {"quick": 32, "full": 256}  # triggered images (and twins) per row
N_EXAMPLES = {"quick": 200, "full": 2560}  # dataset-examples pool (10 % triggered)
EXAMPLES_TRIGGER_FRACTION = 0.1
TOP_K = 16
N_BOOTSTRAP = 1000
N_RANDOM_RANKINGS = 1000
LEVEL = 0.95
EXPAND_MEMORY_MB = 1024.0  # the patching engine's budget per stacked forward (its estimate: 8 x the copies)
PATCH_GROUP = 32  # images per patching sweep: the trunk reruns once per chunk of units, on this many images


# ----------------------------------------------------------------------------- inputs
@dataclass
class PathwayData:
    """Triggered held-out images of non-target classes, their twins, and the pathway's units."""

    hook: str
    units: Tuple[int, ...]
    n_units: int
    x: Tensor
    twin: Tensor
    clean_label: Tensor

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def _dataset(entry: Any) -> str:
    return "fashion" if data_kind(entry) == "fashion" else "shapes"


def _pairs(ctx: BenchContext, n: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``n`` triggered images whose clean label is not the target class, their twins and clean labels."""

    def make() -> Tuple[Tensor, Tensor, Tensor]:
        pool = int(math.ceil(n * 1.3)) + 16
        kind = _dataset(ctx.entry)
        trig = held_out_batch(pool, kind=kind, trigger_fraction=1.0, seed=ctx.seed)
        twin = held_out_batch(pool, kind=kind, trigger_fraction=0.0, seed=ctx.seed)
        clean = torch.as_tensor(np.asarray(trig.factors["clean_label"])).long()
        keep = torch.nonzero(clean != zdata.TARGET_CLASS)[:, 0][:n]
        if len(keep) < n:
            raise RuntimeError(f"only {len(keep)} of {pool} held-out images are of non-target classes")
        return trig.images[keep], twin.images[keep], clean[keep]

    return ctx.cached_input(("pathway_pairs", n, ctx.seed, ctx.entry.name), make)


def n_units_at(model: HookedVisionModel, hook: str, example: Tensor) -> int:
    """Units at ``hook`` (channels of a conv map, last axis of tokens) for one no-grad forward of ``example``."""
    with torch.no_grad():
        _, cache = model.run_with_cache(example[:1], names_filter=[hook], return_cache_object=False)
    a = cache[hook]
    return int(a.shape[channel_axis(a)])


def pathway_data(model: HookedVisionModel, ctx: BenchContext, n: Optional[int] = None) -> PathwayData:
    """The pairs of :func:`_pairs` (``N_PAIRS`` by budget) and the pathway hook / units of ``model``."""
    pw = pathway_of(ctx.entry)
    if pw is None:
        raise ValueError(f"zoo:{ctx.entry.name} has no planted pathway")
    n = n or N_PAIRS["quick" if ctx.quick else "full"]
    x, twin, clean = _pairs(ctx, n)
    hook = model.resolve_hook(pw.hook)
    n_units = ctx.cached(("pathway_n_units", id(model), hook), lambda: n_units_at(model, hook, x))
    return PathwayData(hook, tuple(pw.units(n_units)), n_units, x, twin, clean)


@torch.no_grad()
def hook_acts(model: HookedVisionModel, hook: str, x: Tensor, batch: int = 256) -> Tuple[Tensor, Tensor]:
    """``(logits, activation at hook)`` of ``x``, in batches."""
    logits, acts = [], []
    for i in range(0, len(x), batch):
        out, cache = model.run_with_cache(x[i : i + batch], names_filter=[hook], return_cache_object=False)
        logits.append(out.detach())
        acts.append(cache[hook].detach())
    return torch.cat(logits), torch.cat(acts)


def pair_acts(model: HookedVisionModel, d: PathwayData, ctx: BenchContext) -> Dict[str, Tuple[Tensor, Tensor]]:
    """``{"x": (logits, act), "twin": (logits, act)}`` at the pathway hook, cached per model and batch."""
    key = ("pathway_acts", id(model), d.hook, d.n, ctx.seed)
    return ctx.cached(key, lambda: {"x": hook_acts(model, d.hook, d.x), "twin": hook_acts(model, d.hook, d.twin)})


def unit_values(act: Tensor, reduce: str = "sum") -> Tensor:
    """``[B, C, H, W]`` / ``[B, T, D]`` / ``[B, D]`` -> ``[B, units]`` (sum, mean or max over positions)."""
    if act.ndim == 2:
        return act
    dims = (2, 3) if act.ndim == 4 else (1,)
    if reduce == "max":
        return act.amax(dims)
    return act.sum(dims) if reduce == "sum" else act.mean(dims)


def pathway_support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    """A planted classifier with a pathway whose hook the model has."""
    ok, why = planted_classifier_support(model, entry)
    if not ok:
        return ok, why
    pw = pathway_of(entry)
    if pw is None:
        return False, "no planted trigger pathway (entry.pathway is None)"
    try:
        model.resolve_hook(pw.hook)
    except Exception as exc:
        return False, f"the pathway hook {pw.hook!r} is not a hook of this model ({exc})"
    return True, ""


# ----------------------------------------------------------------------------- readout (DLA)
def readout_terms(model: HookedVisionModel, act: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(f [B, units], W [classes, units], b [B or 1, classes])`` with ``logits = f @ W.T + b`` for the
    run whose pathway-hook activation is ``act``, via ``model.adapter.readout()``:

    * pool + linear (ResNet, Inception, MobileNet): ``f`` = the spatial mean, ``W`` = ``fc.weight``;
    * pool + LayerNorm + linear (ConvNeXt) and LayerNorm + token pool + linear (ViT): ``f`` = the unit's
      value over the norm's scale *frozen from this run*, ``W`` = the readout times the norm's gain, centred
      over units (the mean subtraction folded into the direction, as TransformerLens's ``apply_ln_to_stack``).

    Raises ``NotImplementedError`` for other heads. Whether ``act`` really is the head's input is for the
    caller to check (:func:`dla_check`)."""
    ro = model.adapter.readout()
    if hasattr(ro, "pools"):  # transformer LinearReadout
        return _token_readout(ro, act)
    if getattr(ro, "extra", {}).get("pre_logits") is not None:
        raise NotImplementedError("the head has a hidden layer (pre_logits)")
    fc = ro.fc
    p = act.mean((2, 3)) if act.ndim == 4 else act
    W = fc.weight.detach()
    b = fc.bias.detach() if fc.bias is not None else torch.zeros(W.shape[0])
    if ro.norm is None:
        return p, W, b[None]
    eps = float(getattr(ro.norm, "eps", 1e-6))
    sigma = (p.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    gamma = getattr(ro.norm, "weight", None)
    beta = getattr(ro.norm, "bias", None)
    Wg = W * gamma.detach() if gamma is not None else W
    if beta is not None:
        b = b + W @ beta.detach()
    return p / sigma, Wg - Wg.mean(-1, keepdim=True), b[None]


def _token_readout(ro: Any, act: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    if len(ro.pools) != 1:
        raise NotImplementedError("more than one readout (distilled heads)")
    pool, head, coef = ro.pools[0]
    ln = ro.ln
    eps = float(getattr(ln, "eps", 1e-6)) if ln is not None else 0.0

    def scale(t: Tensor) -> Tensor:
        return (t.var(-1, unbiased=False, keepdim=True) + eps).sqrt() if ln is not None else torch.ones_like(t[..., :1])

    f = pool(act / scale(act)) if ro.norm_first else (lambda p: p / scale(p))(pool(act))
    W = head.weight.detach()
    b = head.bias.detach() if head.bias is not None else torch.zeros(W.shape[0])
    if ln is not None and getattr(ln, "weight", None) is not None:
        W = W * ln.weight.detach()
    if ln is not None and getattr(ln, "bias", None) is not None:
        b = b + head.weight.detach() @ ln.bias.detach()
    if ln is not None:
        W = W - W.mean(-1, keepdim=True)
    return f, coef * W, coef * b[None]


def dla_check(model: HookedVisionModel, hook: str, x: Tensor) -> Tuple[bool, str, float]:
    """``(ok, reason, max error)``: does :func:`readout_terms` of the hook's activation give the logits?"""
    try:
        logits, act = hook_acts(model, hook, x)
        f, W, b = readout_terms(model, act)
    except NotImplementedError as exc:
        return False, f"no linear readout from {hook} ({exc})", float("nan")
    except Exception as exc:
        return False, f"no linear readout from {hook} ({type(exc).__name__}: {exc})", float("nan")
    err = float((f @ W.T + b - logits).abs().max())
    tol = 1e-3 * (1.0 + float(logits.abs().max()))
    if not err <= tol:
        return False, f"the head is not linear in the units of {hook} (readout error {err:.3g})", err
    return True, "", err


def _example(model: HookedVisionModel) -> Tensor:
    size = tuple(model.cfg.image_size or (32, 32))
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, int(getattr(model.cfg, "in_chans", 3) or 3), *size, generator=g)


def dla_support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    ok, why = pathway_support(model, entry)
    if not ok:
        return ok, why
    ok, why, _ = dla_check(model, model.resolve_hook(entry.pathway.hook), _example(model))
    return ok, why


def readout_norms(model: HookedVisionModel, d: PathwayData) -> Optional[np.ndarray]:
    """Per-unit norm of the readout weights (over classes), or None without a linear readout."""
    try:
        _, act = hook_acts(model, d.hook, d.x[:2])
        _, W, _ = readout_terms(model, act)
    except Exception:
        return None
    return W.norm(dim=0).double().numpy()


# ----------------------------------------------------------------------------- bootstrap + baselines
def auroc_rows(scores: np.ndarray, true_units: Sequence[int]) -> np.ndarray:
    """AUROC of ``true_units`` against every other unit, per row of ``scores`` ``[R, U]`` (ties count 1/2);
    equals :func:`~visionlens.zoo.scores.unit_recovery` row by row."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.unique(np.asarray(true_units, dtype=np.int64))
    other = np.ones(s.shape[1], bool)
    other[t] = False
    o = s[:, other]
    out = np.zeros(len(s))
    for u in t:
        v = s[:, u : u + 1]
        out += ((v > o).sum(1) + 0.5 * (v == o).sum(1)) / o.shape[1]
    return out / len(t)


def resample_counts(n: int, n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """``[R, n]`` multiplicities of each image in ``n_resamples`` bootstrap resamples (seeded)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> List[float]:
    """The central ``level`` percentile interval of ``values`` (NaNs ignored), rounded."""
    lo, hi = np.nanpercentile(np.asarray(values, dtype=np.float64), [50 * (1 - level), 50 * (1 + level)])
    return [round(float(lo), 4), round(float(hi), 4)]


def effect_interval(per_image: np.ndarray, units: Sequence[int], seed: int) -> List[float]:
    """Bootstrap interval of the normalized unit-recovery score of per-image effects ``[N, U]``."""
    counts = resample_counts(len(per_image), seed=seed)
    means = counts @ per_image / len(per_image)
    return percentile_interval(2.0 * auroc_rows(means, units) - 1.0)


def _baseline_entry(score: float, interval: List[float], chance: float = 0.5) -> Dict[str, Any]:
    s = Score(score, chance)
    return {"score": round(score, 4), "chance": chance, "normalized": round(s.normalized, 4), "interval": interval}


def unit_baselines(model: HookedVisionModel, d: PathwayData, seed: int) -> Dict[str, Dict[str, Any]]:
    """Input-independent unit rankings scored like the rows: ``constant`` (readout-weight norm; all tied,
    i.e. chance, without a linear readout) and ``random`` (mean of :data:`N_RANDOM_RANKINGS` seeded random
    rankings; interval = the central 95 % of their normalized scores)."""
    norms = readout_norms(model, d)
    const = norms if norms is not None else np.zeros(d.n_units)
    c = unit_recovery(const, d.units).score
    rng = np.random.default_rng(seed)
    rand = auroc_rows(rng.random((N_RANDOM_RANKINGS, d.n_units)), d.units)
    out = {
        "constant": _baseline_entry(c, [round(2 * c - 1, 4)] * 2),
        "random": _baseline_entry(float(rand.mean()), percentile_interval(2 * rand - 1)),
    }
    out["constant"]["ranking"] = "readout-weight norm" if norms is not None else "none (no linear readout): all tied"
    return out


def unit_score(
    per_unit: np.ndarray, d: PathwayData, model: HookedVisionModel, ctx: BenchContext, interval: List[float]
) -> Score:
    """:func:`~visionlens.zoo.scores.unit_recovery` of ``per_unit`` ``[U]`` with the shared details."""
    s = unit_recovery(per_unit, d.units)
    s.details.update(
        hook=d.hook,
        units=list(d.units),
        ranks=[int(r) for r in s.details["ranks"]],
        n_units=d.n_units,
        interval=interval,
        baselines=unit_baselines(model, d, ctx.seed),
        top_units=[int(u) for u in np.argsort(-per_unit, kind="stable")[:5]],
        unit_scores_of_S=[round(float(per_unit[u]), 4) for u in d.units],
    )
    return s


def _effects_score(per_image: np.ndarray, d: PathwayData, model: HookedVisionModel, ctx: BenchContext) -> Score:
    """Score per-image effects ``[N, U]`` (mean over images per unit) with their bootstrap interval."""
    s = unit_score(per_image.mean(0), d, model, ctx, effect_interval(per_image, d.units, ctx.seed))
    s.details["n_images"] = int(per_image.shape[0])
    return s


# ----------------------------------------------------------------------------- the rows
def patching_effects(model: HookedVisionModel, d: PathwayData) -> np.ndarray:
    """Per-image drops ``[N, U]`` of ``logit[0] - logit[clean]`` when one unit takes its twin value
    (the engine's sweep per group of :data:`PATCH_GROUP` images)."""
    out = []
    for i in range(0, d.n, PATCH_GROUP):
        sl = slice(i, i + PATCH_GROUP)
        res = run_patching(
            model,
            d.x[sl],
            d.twin[sl],
            [d.hook],
            kind="channel",
            metric="logit_diff",
            direction="noising",
            label=zdata.TARGET_CLASS,
            foil=d.clean_label[sl],
            method="exact",
            batching="expand",
            max_batch=d.n_units,
            memory_budget_mb=EXPAND_MEMORY_MB,
        )
        base = res.metric.clean  # [n]: the triggered run
        patched = res.sweeps[d.hook].scores  # [U, n]
        assert base is not None and patched is not None
        out.append((base[None, :] - patched).T.double().numpy())
    return np.concatenate(out)


def _metric(out: Tensor, clean_label: Tensor) -> Tensor:
    rows = torch.arange(out.shape[0], device=out.device)
    return out[rows, zdata.TARGET_CLASS] - out[rows, clean_label.to(out.device)]


def attribution_effects(model: HookedVisionModel, d: PathwayData, twin_act: Tensor) -> np.ndarray:
    """First-order estimates ``[N, U]`` of the same drops: ``-(twin - triggered) . grad``, summed over positions
    (``twin_act``: the twins' activation at the hook)."""
    probes = activation_gradients(model, [d.hook], lambda: model(d.x), lambda out: _metric(out, d.clean_label).sum())
    act, grad = probes[d.hook]
    return (-unit_values((twin_act.to(act) - act) * grad)).detach().double().numpy()


def dla_effects(
    model: HookedVisionModel, d: PathwayData, acts: Dict[str, Tuple[Tensor, Tensor]]
) -> Tuple[np.ndarray, float]:
    """Per-image direct terms ``[N, U]`` of the metric, triggered minus twin, and the max readout error
    (``acts``: :func:`pair_acts`)."""
    (logits_x, act_x), (logits_t, act_t) = acts["x"], acts["twin"]
    fx, W, bx = readout_terms(model, act_x)
    ft, _, bt = readout_terms(model, act_t)
    err = max(float((fx @ W.T + bx - logits_x).abs().max()), float((ft @ W.T + bt - logits_t).abs().max()))
    direction = W[zdata.TARGET_CLASS][None, :] - W[d.clean_label]  # [N, U]
    return ((fx - ft) * direction).double().numpy(), err


def _unit_patching(model: HookedVisionModel, ctx: BenchContext) -> Score:
    d = pathway_data(model, ctx)
    return _effects_score(patching_effects(model, d), d, model, ctx)


def _unit_attribution_patching(model: HookedVisionModel, ctx: BenchContext) -> Score:
    d = pathway_data(model, ctx)
    return _effects_score(attribution_effects(model, d, pair_acts(model, d, ctx)["twin"][1]), d, model, ctx)


def _unit_dla(model: HookedVisionModel, ctx: BenchContext) -> Score:
    d = pathway_data(model, ctx)
    per_image, err = dla_effects(model, d, pair_acts(model, d, ctx))
    s = _effects_score(per_image, d, model, ctx)
    s.details["readout_error"] = float(f"{err:.3g}")
    ro = model.adapter.readout()
    if getattr(ro, "norm", None) is not None or getattr(ro, "ln", None) is not None:
        s.details["approximation"] = (
            "the head's LayerNorm scale (and mean) frozen from each run: the unit terms add up to the logit, but a "
            "unit's effect through the norm's scale is left out"
        )
    return s


# ----------------------------------------------------------------------------- dataset examples
def topk_fraction(acts: np.ndarray, positive: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Per unit: the fraction of ``positive`` images among its top ``k`` (``acts`` ``[N, U]``, stable order)."""
    top = np.argsort(-acts, axis=0, kind="stable")[:k]
    return positive[top].mean(0)


def topk_fraction_bootstrap(
    acts: np.ndarray, positive: np.ndarray, counts: np.ndarray, k: int = TOP_K, depth: int = 48
) -> np.ndarray:
    """:func:`topk_fraction` of every bootstrap resample (image multiplicities ``counts`` ``[R, N]``): ``[R, U]``.

    A resample's top ``k`` of a unit are its images in the unit's order, each repeated by its multiplicity,
    cut at ``k``; only the unit's first ``depth`` images are walked (a resample needs more only when they hold
    fewer than ``k`` draws: Poisson(48) < 16, about 1e-8)."""
    order = np.argsort(-acts, axis=0, kind="stable")[: min(depth, len(acts))].T  # [U, M]
    pos = positive[order].astype(np.float32)  # [U, M]
    out = np.empty((len(counts), acts.shape[1]))
    cnt = counts.astype(np.float32)
    for s in range(0, len(counts), 100):
        c = cnt[s : s + 100][:, order]  # [r, U, M]
        before = np.cumsum(c, axis=-1) - c
        take = np.minimum(np.maximum(k - before, 0.0), c)
        out[s : s + 100] = (take * pos).sum(-1) / k
    return out


def _unit_dataset_examples(model: HookedVisionModel, ctx: BenchContext) -> Score:
    d = pathway_data(model, ctx)
    n = N_EXAMPLES["quick" if ctx.quick else "full"]
    b = held_out(ctx, n, trigger_fraction=EXAMPLES_TRIGGER_FRACTION)
    _, act = hook_acts(model, d.hook, b.images)
    acts = unit_values(act, "max").double().numpy()
    trig = np.asarray(b.factors["triggered"], bool)
    per_unit = topk_fraction(acts, trig)
    boot = topk_fraction_bootstrap(acts, trig, resample_counts(n, seed=ctx.seed))
    s = unit_score(per_unit, d, model, ctx, percentile_interval(2 * auroc_rows(boot, d.units) - 1))
    s.details.update(n_images=n, n_triggered=int(trig.sum()), k=TOP_K, base_rate=round(float(trig.mean()), 4))
    return s


def _technique(name: str, description: str, scorer: Callable[..., Score], support: Any = pathway_support) -> Technique:
    return Technique(name, "mechanism", description, scorer, kinds=("classifier",), extra_supports=support)


TECHNIQUES = [
    _technique(
        "unit_patching",
        "Noising activation patching of each unit (all positions) of the pathway hook, triggered image -> its "
        "trigger-free twin; per-unit drop of logit[0] - logit[clean], mean over images; unit_recovery of the "
        "planted pathway units (AUROC, chance 0.5).",
        _unit_patching,
    ),
    _technique(
        "unit_attribution_patching",
        "The same per-unit drops by attribution patching ((twin - triggered) x gradient, one backward); "
        "unit_recovery of the pathway units.",
        _unit_attribution_patching,
    ),
    _technique(
        "unit_dla",
        "Direct logit attribution per unit of the pathway hook through the head (ConvNeXt / ViT: norm scale "
        "frozen per run, an approximation), triggered minus twin; unit_recovery of the pathway units.",
        _unit_dla,
        dla_support,
    ),
    _technique(
        "unit_dataset_examples",
        "Top-16 held-out images per unit of the pathway hook (10 % triggered); per-unit fraction of triggered "
        "images among them; unit_recovery of the pathway units.",
        _unit_dataset_examples,
    ),
]
