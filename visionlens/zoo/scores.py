"""Ground-truth scores: one documented function per kind of interpretability claim.

Every scorer returns a :class:`Score` with the raw ``score`` (1 for a perfect answer), the
``chance`` level (what a uniform or random answer gets on the same inputs) and ``details``.
``Score.normalized`` rescales to 0 = chance, 1 = perfect, which is what a cross-family table
compares. Inputs may be numpy arrays or torch tensors.

=============================== ================================================ ===================
claim                           scorer                                           chance
=============================== ================================================ ===================
"the evidence is here"          :func:`localization_mass`, :func:`pointing_game`  mask area fraction
  (DLA per patch, attention,    :func:`planted_localization` (trigger mask on
  patching, grad x input)       triggered images, object mask on clean ones)
"this image shows the trigger"  :func:`pattern_correlation` (feature vis)         max-corr of noise
"this unit is about value v"    :func:`factor_selectivity` (AUC)                  0.5
"units in this layer are pure"  :func:`topk_factor_purity`,                       random top-k purity
                                :func:`purity_by_layer`
"these units do it"             :func:`unit_recovery` (trigger units, style       0.5
                                neurons; AUROC of the true units' scores)
"this is the circuit"           :func:`edge_recovery` (F1), :func:`edge_auroc`    random set / 0.5
"this hypothesis explains it"   :func:`causal_scrubbing_score`                   0 (= ablation)
"the output has style s"        :func:`style_accuracy`                            1 / n_styles
sanity check (Adebayo 2018)     :func:`sanity_check`                              --
=============================== ================================================ ===================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterable, Mapping, Optional, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "Score",
    "localization_mass",
    "pointing_game",
    "planted_localization",
    "bootstrap_normalized",
    "bootstrap_ratio_interval",
    "pattern_correlation",
    "factor_selectivity",
    "topk_factor_purity",
    "purity_by_layer",
    "unit_recovery",
    "trigger_unit_recovery",
    "style_neuron_recovery",
    "edge_recovery",
    "edge_auroc",
    "causal_scrubbing_score",
    "loss_recovered",
    "style_accuracy",
    "sanity_check",
    "auroc",
]


@dataclass
class Score:
    """A ground-truth score: ``score`` (1 = perfect), ``chance`` (uniform / random answer), ``details``."""

    score: float
    chance: float
    details: Dict[str, Any] = field(default_factory=dict)

    @property
    def normalized(self) -> float:
        """``(score - chance) / (1 - chance)``: 0 at chance, 1 when perfect (nan if chance == 1)."""
        if self.chance >= 1.0:
            return float("nan")
        return (self.score - self.chance) / (1.0 - self.chance)

    def __float__(self) -> float:
        return float(self.score)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "score": float(self.score),
            "chance": float(self.chance),
            "normalized": float(self.normalized),
            "details": {k: _jsonable(v) for k, v in self.details.items()},
        }


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _maps(heatmap, mask):
    """``(heat [N, H, W] float64, mask [N, H, W])``: the mask stays fractional (cells partly inside, in
    [0, 1]) when given as floats, else bool."""
    h = _np(heatmap).astype(np.float64)
    m = _np(mask)
    m = np.clip(m.astype(np.float64), 0.0, 1.0) if np.issubdtype(m.dtype, np.floating) else m.astype(bool)
    if h.ndim == 2:
        h = h[None]
    if m.ndim == 2:
        m = m[None]
    if h.ndim == 4:  # [N, C, H, W] -> sum |.| over channels
        h = np.abs(h).sum(1)
    if h.shape != m.shape:
        raise ValueError(
            f"heatmap {h.shape} and mask {m.shape} must have the same [N, H, W] shape "
            "(upsample patch-level maps to pixels first)"
        )
    if not (m.reshape(len(m), -1) > 0).any(1).all():
        raise ValueError("every mask must contain at least one pixel")
    return h, m


# ----------------------------------------------------------------------------------------------- localization


def localization_mass(heatmap, mask, mode: str = "abs", within=None) -> Score:
    """Fraction of attribution mass inside the mask, averaged over images.

    ``heatmap`` ``[N, H, W]`` (or ``[H, W]``, or ``[N, C, H, W]`` summed in absolute value over C),
    ``mask`` of the same spatial shape: bool, or float in [0, 1] = the fraction of each cell inside the
    truth (a coarse map against a pixel mask; then the mass inside is the mass of the map spread evenly
    over its cells' pixels). ``mode="abs"`` uses ``|heatmap|``, ``"positive"`` its positive part.

    A uniform heatmap scores exactly the mean mask area fraction, the ``chance``; perfect is 1. A coarse
    map cannot reach 1 when the truth is smaller than its cells: the best map on its grid puts all its
    mass on the cell most inside the truth, which scores ``max(mask)`` per image (``details["best"]``; 1
    for pixel maps and bool masks). The score is not rescaled by that ceiling: a fixed map's edge from a
    centre-biased truth would grow with the rescaling (on a 4 x 4 grid, cells the size of the trigger,
    0.08 normalized instead of 0.04). ``within`` (same shape, optional; must contain ``mask``) restricts the
    count to a region: the score is the mass inside ``mask`` over the mass inside ``within`` (e.g. a
    target object against the union with a distractor object: a map that points at both equally scores
    the chance). Images whose heatmap has no mass (inside ``within``) count as uniform.
    """
    h, m = _maps(heatmap, mask)
    if mode == "abs":
        h = np.abs(h)
    elif mode == "positive":
        h = np.clip(h, 0, None)
    else:
        raise ValueError(f"mode must be 'abs' or 'positive', got {mode!r}")
    n = len(h)
    m = m.astype(np.float64)
    if within is None:
        w = np.ones_like(m)
    else:
        _, w = _maps(heatmap, within)
        w = np.maximum(w.astype(np.float64), m)
    tot = (h * w).reshape(n, -1).sum(1)
    area = m.reshape(n, -1).sum(1) / w.reshape(n, -1).sum(1)
    inside = (h * m).reshape(n, -1).sum(1)
    frac = np.where(tot > 0, inside / np.where(tot > 0, tot, 1.0), area)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(w > 0, m / np.where(w > 0, w, 1.0), 0.0)
    best = ratio.reshape(n, -1).max(1)
    return Score(float(frac.mean()), float(area.mean()), {"per_image": frac, "area": area, "best": best})


def pointing_game(heatmap, mask, tolerance: int = 0) -> Score:
    """Pointing game: does the heatmap's maximum fall inside the mask (dilated by ``tolerance`` px)?

    Ties are split evenly (the hit is the fraction of tied maxima inside), which is the expected
    hit rate under random tie-breaking, so a uniform heatmap scores the mask's area fraction
    (``chance``, computed on the dilated mask) and a random one does so in expectation.
    """
    h, m = _maps(heatmap, mask)
    m = m > 0  # a cell partly inside the truth counts as inside
    if tolerance > 0:
        m = _dilate(m, int(tolerance))
    n = len(h)
    flat = h.reshape(n, -1)
    mflat = m.reshape(n, -1)
    is_max = flat >= flat.max(1, keepdims=True)
    hits = (is_max & mflat).sum(1) / is_max.sum(1)
    area = mflat.mean(1)
    return Score(float(hits.mean()), float(area.mean()), {"per_image": hits, "area": area})


def _dilate(m: np.ndarray, r: int) -> np.ndarray:
    out = m.copy()
    H, W = m.shape[1:]
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            sh = np.zeros_like(m)
            ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
            xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
            sh[:, yd, xd] = m[:, ys, xs]
            out |= sh
    return out


def planted_localization(
    heatmap, trigger_mask, object_mask, triggered, method: str = "mass", object_within=None
) -> Dict[str, Score]:
    """The benchmark's localization claim: mass (or pointing) inside the trigger mask on triggered
    images and inside the object mask on clean ones. Returns ``{"trigger": Score, "object": Score}``
    (a key is missing when no image of that kind is given). ``object_within`` (optional, mass only): the
    region the object part is counted in (see :func:`localization_mass`)."""
    h = _np(heatmap)
    t = _np(triggered).astype(bool)
    out = {}
    if method == "mass":
        if t.any():
            out["trigger"] = localization_mass(h[t], _np(trigger_mask)[t])
        if (~t).any():
            within = None if object_within is None else _np(object_within)[~t]
            out["object"] = localization_mass(h[~t], _np(object_mask)[~t], within=within)
        return out
    if method != "pointing":
        raise ValueError(f"method must be 'mass' or 'pointing', got {method!r}")
    if t.any():
        out["trigger"] = pointing_game(h[t], _np(trigger_mask)[t])
    if (~t).any():
        out["object"] = pointing_game(h[~t], _np(object_mask)[~t])
    return out


def bootstrap_normalized(
    parts: Mapping[str, Score], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Tuple[float, float]:
    """Percentile bootstrap interval over images of the normalized score of :func:`planted_localization`.

    ``parts`` is its output (``{"trigger": Score, "object": Score}``, each with ``details["per_image"]``
    and ``details["area"]``, as :func:`localization_mass` and :func:`pointing_game` give). The score is
    the mean over the parts of each part's mean per-image score, the chance the same mean of the
    per-image mask areas, so each resample draws images with replacement *within* each part (the
    triggered / clean split stays as in the data) and recomputes both, then
    ``(score - chance) / (1 - chance)``. Returns the ``(1 - level) / 2`` and ``(1 + level) / 2``
    percentiles. The per-image values are computed once, so 1000 resamples cost milliseconds. The same
    ``seed`` and part sizes give the same resampled images, so intervals of different maps on the same
    images are paired.
    """
    if not parts:
        raise ValueError("no parts to resample")
    rng = np.random.default_rng(seed)
    score = np.zeros(n_resamples)
    chance = np.zeros(n_resamples)
    for _, s in sorted(parts.items()):
        per = np.asarray(s.details["per_image"], dtype=np.float64)
        area = np.asarray(s.details["area"], dtype=np.float64)
        idx = rng.integers(0, len(per), size=(n_resamples, len(per)))
        score += per[idx].mean(1)
        chance += area[idx].mean(1)
    score /= len(parts)
    chance /= len(parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(chance < 1.0, (score - chance) / (1.0 - chance), np.nan)
    lo, hi = np.nanpercentile(norm, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_ratio_interval(
    per_item: Any,
    chance_per_item: Any = None,
    chance: Optional[float] = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Tuple[float, float]:
    """Percentile bootstrap interval of ``(mean(score) - mean(chance)) / (1 - mean(chance))`` over items.

    ``per_item`` ``[N]`` (or ``[N, F]``: F factors averaged per item) are the scored items (renders, units);
    ``chance_per_item`` the paired chance of each item (resampled with it), or ``chance`` one fixed value."""
    per = np.asarray(per_item, dtype=np.float64)
    per = per.mean(1) if per.ndim == 2 else per
    if chance_per_item is not None:
        ch = np.asarray(chance_per_item, dtype=np.float64)
        ch = ch.mean(1) if ch.ndim == 2 else ch
    else:
        ch = np.full_like(per, float(chance if chance is not None else 0.0))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per), size=(n_resamples, len(per)))
    s, c = per[idx].mean(1), ch[idx].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(c < 1.0, (s - c) / (1.0 - c), np.nan)
    lo, hi = np.nanpercentile(norm, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------- feature vis


def _best_corr(img: np.ndarray, pat: np.ndarray) -> float:
    """Max over positions of the Pearson correlation between a pattern-sized window and the pattern."""
    C, H, W = img.shape
    k1, k2 = pat.shape[1:]
    win = sliding_window_view(img, (k1, k2), axis=(1, 2))  # [C, H-k1+1, W-k2+1, k1, k2]
    win = win.transpose(1, 2, 0, 3, 4).reshape(H - k1 + 1, W - k2 + 1, -1)
    p = pat.reshape(-1) - pat.mean()
    w = win - win.mean(-1, keepdims=True)
    num = (w * p).sum(-1)
    den = np.sqrt((w * w).sum(-1) * (p * p).sum()) + 1e-12
    return float((num / den).max())


def pattern_correlation(images, pattern, n_null: int = 16, seed: int = 0) -> Score:
    """Feature visualization of the trigger-class logit: best-position correlation with the trigger.

    ``images`` ``[N, 3, H, W]`` or ``[3, H, W]`` (rendered visualizations), ``pattern``
    ``[k, k, 3]`` (as :func:`visionlens.zoo.data.trigger_pattern` gives) or ``[3, k, k]``. For each
    image, the Pearson correlation between the pattern and every ``k x k`` window (all channels)
    is computed; the score is the mean over images of the best window. An image containing the
    pattern scores 1. ``chance`` is the same statistic on ``n_null`` uniform-noise images of the
    same size (seeded), i.e. what a visualization unrelated to the trigger gets.
    """
    x = _np(images).astype(np.float64)
    if x.ndim == 3:
        x = x[None]
    p = _np(pattern).astype(np.float64)
    if p.ndim == 3 and p.shape[-1] == 3 and p.shape[0] != 3:
        p = p.transpose(2, 0, 1)
    if x.shape[1] != p.shape[0]:
        raise ValueError(f"images have {x.shape[1]} channels but the pattern has {p.shape[0]}")
    per = np.array([_best_corr(im, p) for im in x])
    rng = np.random.default_rng(seed)
    null = np.array([_best_corr(rng.random(x.shape[1:]), p) for _ in range(n_null)])
    return Score(float(per.mean()), float(null.mean()), {"per_image": per, "null_std": float(null.std())})


# ----------------------------------------------------------------------------------------------- units / factors


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives`` (ties count 1/2)."""
    s = _np(scores).astype(np.float64).ravel()
    y = _np(positives).astype(bool).ravel()
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        raise ValueError("auroc needs at least one positive and one negative")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = s[order]
    # average ranks for ties
    i = 0
    r = np.arange(1, len(s) + 1, dtype=np.float64)
    while i < len(ss):
        j = i
        while j + 1 < len(ss) and ss[j + 1] == ss[i]:
            j += 1
        r[i : j + 1] = (i + j + 2) / 2.0
        i = j + 1
    ranks[order] = r
    return float((ranks[y].sum() - npos * (npos + 1) / 2.0) / (npos * nneg))


def factor_selectivity(activations, factor_values, value=None) -> Score:
    """How well one unit's activation picks out one factor value: one-vs-rest AUROC.

    ``activations`` ``[N]`` (one unit over N examples), ``factor_values`` ``[N]`` (discrete).
    With ``value`` given, scores the claim "this unit detects ``value``"; with ``value=None`` the
    best value is chosen (reported in ``details['value']``; note that choosing the best of V
    values lifts a random unit slightly above 0.5). Perfect separation = 1, random = 0.5.
    ``details['auc_per_value']`` has every value's AUROC.
    """
    a = _np(activations).astype(np.float64).ravel()
    f = _np(factor_values).ravel()
    if len(a) != len(f):
        raise ValueError(f"{len(a)} activations but {len(f)} factor values")
    vals = np.unique(f)
    aucs = {v.item() if hasattr(v, "item") else v: auroc(a, f == v) for v in vals}
    if value is None:
        value = max(aucs, key=lambda v: aucs[v])
    if value not in aucs:
        raise ValueError(f"value {value!r} does not occur in factor_values (values: {list(aucs)})")
    return Score(aucs[value], 0.5, {"value": value, "auc_per_value": aucs})


def _purity(top: np.ndarray) -> float:
    _, counts = np.unique(top, return_counts=True)
    return counts.max() / len(top)


def topk_factor_purity(activations, factor_values, k: int = 16, n_null: int = 64, seed: int = 0) -> Score:
    """Dataset-examples claim: the fraction of each unit's top-``k`` examples that share one factor value.

    ``activations`` ``[N, U]`` (N examples, U units; ``[N]`` for one unit), ``factor_values``
    ``[N]``. Per unit, purity = (count of the most common value among its top-k) / k; the score
    is the mean over units (``details['per_unit']`` has each). A unit firing only on one value
    (occurring >= k times) scores 1. ``chance`` is the mean purity of ``n_null`` random k-subsets
    (seeded), i.e. a unit unrelated to the factor -- it is above the largest value's frequency
    because the most common value of a small sample is over-represented.
    """
    a = _np(activations).astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    f = _np(factor_values).ravel()
    if a.shape[0] != len(f):
        raise ValueError(f"{a.shape[0]} examples of activations but {len(f)} factor values")
    if not 1 <= k <= len(f):
        raise ValueError(f"k must be in [1, {len(f)}], got {k}")
    top = np.argsort(-a, axis=0, kind="stable")[:k]  # [k, U]
    per = np.array([_purity(f[top[:, u]]) for u in range(a.shape[1])])
    rng = np.random.default_rng(seed)
    null = np.array([_purity(f[rng.choice(len(f), k, replace=False)]) for _ in range(n_null)])
    return Score(float(per.mean()), float(null.mean()), {"per_unit": per, "k": k})


def purity_by_layer(layer_activations: Mapping[str, Any], factor_values, k: int = 16, **kw) -> Dict[str, Score]:
    """:func:`topk_factor_purity` for each layer (``{name: [N, U]}``); activations with spatial dims
    ``[N, C, H, W]`` are reduced to their spatial max per channel first."""
    out = {}
    for name, acts in layer_activations.items():
        a = _np(acts)
        if a.ndim > 2:
            a = a.reshape(a.shape[0], a.shape[1], -1).max(-1)
        out[name] = topk_factor_purity(a, factor_values, k=k, **kw)
    return out


def unit_recovery(unit_scores, true_units: Iterable) -> Score:
    """Rank of the true units among candidates (trigger units, style neurons, ablation searches).

    ``unit_scores`` ``[U]``: the technique's importance per candidate unit (higher = more
    important); ``true_units``: indices of the planted units. Score = AUROC of the true units vs
    the rest (1 = all true units ranked above all others, 0.5 = random order; ties count 1/2).
    ``details``: 1-based ``ranks`` of the true units, ``mrr`` (mean reciprocal rank) and
    ``recall_at_k`` with k = number of true units.
    """
    s = _np(unit_scores).astype(np.float64).ravel()
    t = np.unique(np.asarray(list(true_units), dtype=np.int64))
    if len(t) == 0 or t.min() < 0 or t.max() >= len(s):
        raise ValueError(f"true_units must be non-empty indices into {len(s)} candidates")
    y = np.zeros(len(s), bool)
    y[t] = True
    # rank 1 = highest score; pessimistic for ties (count every strictly-higher and tied other unit)
    ranks = np.array([1 + int((s > s[u]).sum()) + int(((s == s[u]) & ~y).sum()) for u in t])
    topk = np.argsort(-s, kind="stable")[: len(t)]
    return Score(
        auroc(s, y),
        0.5,
        {
            "ranks": ranks,
            "mrr": float((1.0 / ranks).mean()),
            "recall_at_k": float(np.isin(topk, t).mean()),
            "n_candidates": len(s),
        },
    )


trigger_unit_recovery = unit_recovery
style_neuron_recovery = unit_recovery


# ----------------------------------------------------------------------------------------------- circuits


def edge_recovery(
    predicted: Iterable[Hashable], true: Iterable[Hashable], universe: Optional[Iterable] = None
) -> Score:
    """Circuit claim as a set: F1 of the predicted edges (or nodes) against the true ones.

    ``details`` has precision, recall, tp. ``chance`` is the expected F1 of a random set of the
    same size drawn from ``universe`` (all candidate edges): ``2 m t / (|U| (m + t))`` with m
    predicted and t true; without ``universe`` it is reported as 0.
    """
    p, t = set(predicted), set(true)
    if not t:
        raise ValueError("the true set must not be empty")
    tp = len(p & t)
    prec = tp / len(p) if p else 0.0
    rec = tp / len(t)
    f1 = 2 * tp / (len(p) + len(t))
    chance = 0.0
    if universe is not None:
        U = set(universe)
        if not (p | t) <= U:
            raise ValueError("predicted and true edges must be inside the universe")
        chance = 2 * len(p) * len(t) / (len(U) * (len(p) + len(t))) if p else 0.0
    return Score(f1, chance, {"precision": prec, "recall": rec, "tp": tp, "n_predicted": len(p), "n_true": len(t)})


def edge_auroc(edge_scores: Mapping[Hashable, float], true: Iterable[Hashable]) -> Score:
    """Circuit claim as scores: AUROC of per-edge importance for the true edges (chance 0.5).

    ``edge_scores`` maps every candidate edge to the technique's score (e.g. |attribution patching|).
    """
    keys = list(edge_scores)
    t = set(true)
    missing = t - set(keys)
    if missing:
        raise ValueError(f"true edges without a score: {sorted(map(str, missing))[:5]}")
    s = np.array([float(edge_scores[e]) for e in keys])
    y = np.array([e in t for e in keys])
    return Score(auroc(s, y), 0.5, {"n_edges": len(keys), "n_true": len(t)})


# ----------------------------------------------------------------------------------------------- causal scrubbing


def loss_recovered(loss_clean: float, loss_scrubbed: float, loss_ablated: float) -> float:
    """``(L_ablated - L_scrubbed) / (L_ablated - L_clean)``: 1 when scrubbing keeps the clean loss,
    0 when it is as bad as ablating everything the hypothesis covers."""
    den = float(loss_ablated) - float(loss_clean)
    if abs(den) < 1e-12:
        raise ValueError("loss_ablated equals loss_clean: the ablation baseline does not hurt, nothing to recover")
    return (float(loss_ablated) - float(loss_scrubbed)) / den


def causal_scrubbing_score(
    loss_clean: float, loss_true: float, loss_ablated: float, loss_wrong: Optional[float] = None
) -> Score:
    """Causal scrubbing: loss recovered by the true hypothesis (score, perfect = 1) against the
    ablation baseline (chance = 0). With ``loss_wrong`` (a wrong hypothesis, e.g. "colour
    decides"), ``details`` gives its recovery, the ``margin`` true - wrong and ``separates``
    (true recovers more)."""
    r_true = loss_recovered(loss_clean, loss_true, loss_ablated)
    d: Dict[str, Any] = {"recovered_true": r_true}
    if loss_wrong is not None:
        r_wrong = loss_recovered(loss_clean, loss_wrong, loss_ablated)
        d.update(recovered_wrong=r_wrong, margin=r_true - r_wrong, separates=bool(r_true > r_wrong))
    return Score(r_true, 0.0, d)


# ----------------------------------------------------------------------------------------------- misc


def style_accuracy(predicted_styles, asked_styles, n_styles: Optional[int] = None) -> Score:
    """Fraction of generated images whose judged style equals the asked one (chance = 1 / n_styles)."""
    p = _np(predicted_styles).ravel()
    a = _np(asked_styles).ravel()
    if len(p) != len(a) or len(p) == 0:
        raise ValueError("predicted and asked styles must be non-empty and of equal length")
    n = n_styles or len(np.unique(a))
    return Score(float((p == a).mean()), 1.0 / n, {"n": len(p)})


def sanity_check(trained: Score, randomized: Score, min_drop: float = 0.5) -> Dict[str, Any]:
    """Adebayo et al. (2018) model randomization: a score recomputed on randomized weights must drop.

    Compares normalized scores; ``passed`` is ``True`` when the randomized model's normalized
    score is below ``(1 - min_drop)`` times the trained one's (and the trained one is above chance).
    A technique that fails is flagged in the transfer table.
    """
    a, b = trained.normalized, randomized.normalized
    passed = bool(a > 0 and b < (1.0 - min_drop) * a)
    return {"trained": a, "randomized": b, "drop": a - b, "passed": passed}
