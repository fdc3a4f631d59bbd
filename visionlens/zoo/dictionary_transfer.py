"""The transfer-table row "dictionary features recover planted factors", and its evaluation helpers.

On every classifier of the zoo and the CLIP image tower, a TopK SAE (``overcomplete``, through
:func:`visionlens.plugins.dictionaries.fit_dictionary`; by the hook's layout, :data:`SIZE` features and k =
:data:`TOP_K`: 64 and 16 on conv maps, 128 and 96 on token maps) is trained at the last block over the model's own
*training* images (:data:`TRAIN_TRIGGER_FRACTION` triggered: 10 % for maps, 50 % for token maps) on per-position
vectors (every position of a conv map, a seeded subset of patch tokens) *and* the
image-level vector the head reads (the spatial mean of a map, the class token), then read on held-out images
(half triggered). Each planted factor value is a binary label per image (``trigger``; ``shape=circle`` ...;
``textured``; ``texture=...`` and ``colour=...``; Fashion-MNIST: ``class=k``); a feature's score of an image is
its mean over positions. Per factor: the feature is *chosen* on one half of the held-out images (best AUROC)
and its AUROC *measured* on the other half, so a dictionary gets no credit for the maximum of many noisy
candidates. The sizes, k and the representation were chosen by a measured sweep (docs/dictionaries.md).

Score: mean measured AUROC over the label-relevant factors (trigger, the label's factors; CLIP: shape, colour,
texture), chance 0.5. ``details``: per-factor AUROCs, ``fraction_above`` (factors with AUROC >= 0.95),
``interval`` (95 % percentile bootstrap of the normalized score over the measuring images), and
``baselines`` scored identically (mean over positions of the projection): ``pca`` (the top principal
directions of the same training vectors, as many as the dictionary has features up to the unit count, each
with both signs) and ``random`` (as many seeded Gaussian directions as the dictionary has features, both
signs). Also the dictionary's reconstruction R^2, L0, dead fraction and the task
accuracy kept with the reconstruction spliced in (no error term).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ..plugins.dictionaries import SparseDictionary, downstream, evaluate, fit_dictionary
from ..plugins.dictionaries.source import to_vectors
from . import data as zdata
from .classifiers import TRAIN_SEED, held_out_batch
from .pathway import pathway_of
from .scores import Score
from .technique import BenchContext, Technique
from .techniques_features import block_hooks, data_kind, prepare

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel

__all__ = [
    "TECHNIQUES",
    "BUDGET",
    "SIZE",
    "TOP_K",
    "image_vector",
    "training_vectors",
    "planted_factors",
    "dictionary_hook",
    "hook_layout",
    "training_images",
    "PlantedRecovery",
    "planted_recovery",
    "weighted_auroc_rows",
]

THRESHOLD = 0.95
LEVEL = 0.95
# (training images, held-out images, optimizer steps, bootstrap resamples)
BUDGET = {"quick": (400, 200, 150, 200), "full": (8000, 2000, 1500, 1000)}
TOKENS_PER_IMAGE = 12  # token maps: a seeded subset per training image (conv maps: every position)
# By the hook's layout, measured (docs/dictionaries.md, held-out seeds 0-3): conv maps 64 features, k = 16 (32 x k8
# missed a factor on seed 0 or 3 by the shuffle order, 0.89-0.93); token maps 128 features, k = 96 (32 x k24 missed
# one at 0.90-0.94 on two of seeds 0-2), trained on a 50 % triggered mix: the trigger touches 4-9 of 64 patch
# tokens (0.6-1.4 % of the patch vectors at the 10 % mix; 1-4 of a 2 x 2 map's positions: 2.5-10 %), and the ViT's
# trigger then measured 0.90-0.95.
SIZE = {"map": 64, "tokens": 128}
TOP_K = {"map": 16, "tokens": 96}
TRAIN_TRIGGER_FRACTION = {"map": 0.1, "tokens": 0.5}  # maps: the classifiers' own training mix
SPLICE_IMAGES = 1000
EVAL_TRIGGER_FRACTION = 0.5


# ----------------------------------------------------------------------------- data
def _dataset(entry: Any) -> str:
    return "fashion" if data_kind(entry) == "fashion" else "shapes"


def training_images(entry: Any, n: int, seed: int = TRAIN_SEED, trigger_fraction: float = 0.1) -> Tensor:
    """``n`` images of the model's own training stream (``trigger_fraction`` triggered, by default the classifiers'
    own 10 %; CLIP's data has no trigger)."""
    frac = 0.0 if entry.kind == "clip" else trigger_fraction
    if _dataset(entry) == "fashion":
        return zdata.fashion_mnist_batch(n, seed=seed, split="train", trigger_fraction=frac).images
    return zdata.make_batch(n, seed=seed, start=0, trigger_fraction=frac).images


def planted_factors(entry: Any, b: zdata.PlantedBatch) -> Dict[str, Tuple[np.ndarray, bool]]:
    """``{factor value: (positives [N] bool, label-relevant)}`` of a held-out batch."""
    f = {k: np.asarray(v) for k, v in b.factors.items()}
    out: Dict[str, Tuple[np.ndarray, bool]] = {}
    if entry.kind != "clip":
        out["trigger"] = (f["triggered"].astype(bool), True)
    if _dataset(entry) == "fashion":
        for k in range(len(zdata.FASHION_CLASSES)):
            out[f"class={zdata.FASHION_CLASSES[k]}"] = (f["fashion_class"] == k, True)
        return out
    clip = entry.kind == "clip"
    for i, s in enumerate(zdata.SHAPES):
        out[f"shape={s}"] = (f["shape"] == i, True)
    if not clip:
        out["textured"] = (f["texture"] != 0, True)
    for i, t in enumerate(zdata.TEXTURES):
        out[f"texture={t}"] = (f["texture"] == i, clip)
    for i, c in enumerate(zdata.COLOURS):
        out[f"colour={c}"] = (f["colour"] == i, clip)
    return {k: v for k, v in out.items() if 0 < v[0].sum() < len(v[0])}


def dictionary_hook(model: HookedVisionModel, entry: Any) -> str:
    """The last block: the planted pathway's hook for classifiers, the image tower's last block for CLIP."""
    pw = pathway_of(entry)
    if pw is not None:
        return model.resolve_hook(pw.hook)
    return block_hooks(model, model.dummy_input(batch=2))[-1]


def hook_layout(model: HookedVisionModel, hook: str) -> str:
    """``"tokens"`` for a token map ``[B, T, D]`` at ``hook``, else ``"map"`` (one forward on two dummy images)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(model.dummy_input(batch=2), names_filter=[hook], return_cache_object=False)
    return "tokens" if cache[hook].ndim == 3 else "map"


# ----------------------------------------------------------------------------- scoring
def weighted_auroc_rows(scores: np.ndarray, positives: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC of ``scores [n]`` for ``positives [n]`` with image multiplicities ``counts [R, n]`` (bootstrap
    resamples), one per row; ties count 1/2."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    ss, pos = s[order], np.asarray(positives, bool)[order]
    c = np.asarray(counts, dtype=np.float64)[:, order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    pg = np.add.reduceat(c * pos, starts, axis=1)
    ng = np.add.reduceat(c * ~pos, starts, axis=1)
    below = np.cumsum(ng, axis=1) - ng
    num = (pg * (below + 0.5 * ng)).sum(1)
    den = pg.sum(1) * ng.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _auroc_matrix(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """AUROC of every column of ``scores [n, K]`` (ties 1/2), vectorized through average ranks."""
    from scipy.stats import rankdata

    r = rankdata(scores, axis=0)
    npos = positives.sum()
    nneg = len(positives) - npos
    return (r[positives].sum(0) - npos * (npos + 1) / 2) / (npos * nneg)


@dataclass
class Candidates:
    """Per-image scores ``[N, K]`` of ``K`` candidate features (or signed directions)."""

    name: str
    scores: np.ndarray


def principal_directions(centred: Tensor) -> Tensor:
    """The principal directions of centred rows ``[M, D]``, largest variance first, as rows ``[D, D]``.

    The eigenvectors of the ``D x D`` scatter matrix (float32 product, float64 eigensolver): the right
    singular vectors of ``centred`` up to sign, about 2-3x cheaper than an SVD of the rows for ``M >> D``.
    """
    x = centred.float()
    _, vecs = torch.linalg.eigh((x.T @ x).double())
    return vecs.flip(-1).T.to(centred.dtype).contiguous()


def _directions_scores(vectors: Tensor, n_img: int, dirs: Tensor, centre: Tensor) -> np.ndarray:
    """Mean over positions of ``+-(x - centre) . dir`` per image: ``[N, 2K]`` (both signs)."""
    p = ((vectors - centre) @ dirs.T).reshape(n_img, -1, dirs.shape[0]).mean(1)
    return torch.cat([p, -p], 1).double().numpy()


def _feature_scores(d: SparseDictionary, vectors: Tensor, n_img: int) -> np.ndarray:
    """Mean over positions of each feature per image: ``[N, F]``."""
    codes = torch.cat([d.features(vectors[i : i + 8192]) for i in range(0, len(vectors), 8192)])
    return codes.reshape(n_img, -1, d.n_features).mean(1).double().numpy()


def image_vector(act: Tensor) -> Tensor:
    """What a head reads: the spatial mean of a map ``[B, C, *spatial]``, the class token of tokens ``[B, T, D]``."""
    if act.ndim == 3:
        return act[:, 0]
    return act.flatten(2).mean(-1) if act.ndim > 2 else act


def training_vectors(model: HookedVisionModel, hook: str, images: Tensor, seed: int = 0) -> Tuple[Tensor, str]:
    """Per-position vectors (every position of a map, :data:`TOKENS_PER_IMAGE` seeded patch tokens of a token map)
    and one image-level vector per image (:func:`image_vector`), ``[M, units]``; and the hook's layout."""
    vecs, layout = [], "map"
    with torch.no_grad():
        for i in range(0, len(images), 250):
            _, cache = model.run_with_cache(images[i : i + 250], names_filter=[hook], return_cache_object=False)
            act = cache[hook]
            layout = "tokens" if act.ndim == 3 else "map"
            v, _ = to_vectors(hook, act)
            n = act.shape[0]
            v = v.reshape(n, -1, v.shape[-1])
            if act.ndim == 3 and v.shape[1] - 1 > TOKENS_PER_IMAGE:
                g = torch.Generator().manual_seed(seed + i)
                idx = torch.rand(n, v.shape[1] - 1, generator=g).argsort(1)[:, :TOKENS_PER_IMAGE] + 1
                v = torch.gather(v, 1, idx[..., None].expand(-1, -1, v.shape[-1]))
            vecs += [v.reshape(-1, v.shape[-1]).float(), image_vector(act).reshape(n, -1).float()]
    return torch.cat(vecs), layout


def _pick_and_measure(
    cand: np.ndarray, factors: Dict[str, Tuple[np.ndarray, bool]], pick: np.ndarray, counts: np.ndarray
) -> Dict[str, Dict[str, Any]]:
    """Per factor: the candidate with the best AUROC on images ``pick``, its AUROC on the others (and per
    bootstrap resample ``counts`` of the others), and the in-sample best over all images."""
    meas = ~pick
    out = {}
    for name, (y, relevant) in factors.items():
        if not (0 < y[pick].sum() < pick.sum() and 0 < y[meas].sum() < meas.sum()):
            continue
        a = _auroc_matrix(cand[pick], y[pick])
        best = int(np.argmax(a))
        auc = float(_auroc_matrix(cand[meas][:, best : best + 1], y[meas])[0])
        out[name] = {
            "auroc": round(auc, 4),
            "candidate": best,
            "relevant": relevant,
            "auroc_in_sample": round(float(_auroc_matrix(cand, y).max()), 4),
            "boot": weighted_auroc_rows(cand[meas][:, best], y[meas], counts),
        }
    return out


def _summary(per: Dict[str, Dict[str, Any]], seed_interval: bool = True) -> Dict[str, Any]:
    rel = [k for k, v in per.items() if v["relevant"]]
    mean = float(np.mean([per[k]["auroc"] for k in rel]))
    boot = np.nanmean(np.stack([per[k]["boot"] for k in rel]), 0)
    lo, hi = np.nanpercentile(2 * boot - 1, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    s = Score(mean, 0.5)
    return {
        "score": round(mean, 4),
        "chance": 0.5,
        "normalized": round(s.normalized, 4),
        "interval": [round(float(lo), 4), round(float(hi), 4)],
        "fraction_above": round(float(np.mean([per[k]["auroc"] >= THRESHOLD for k in rel])), 4),
        "per_factor": {k: v["auroc"] for k, v in per.items()},
    }


@dataclass
class PlantedRecovery:
    """What :func:`planted_recovery` measured (``score`` is the transfer-table :class:`Score`)."""

    score: Score
    dictionary: SparseDictionary
    hook: str
    seconds: float


def planted_recovery(
    model: HookedVisionModel,
    entry: Any,
    quick: bool = False,
    seed: int = 0,
    size: Optional[int] = None,
    top_k: Optional[int] = None,
    kind: str = "topk",
) -> PlantedRecovery:
    """Train a dictionary at the last block of a zoo model and score its features against the planted factors
    (see the module docstring); ``size``, ``top_k`` and the training mix default to :data:`SIZE`, :data:`TOP_K`
    and :data:`TRAIN_TRIGGER_FRACTION` of the hook's layout."""
    t0 = time.perf_counter()
    n_train, n_eval, steps, n_boot = BUDGET["quick" if quick else "full"]
    hook = dictionary_hook(model, entry)
    layout = hook_layout(model, hook)
    torch.manual_seed(seed)
    frac = TRAIN_TRIGGER_FRACTION[layout]
    x, _ = training_vectors(model, hook, training_images(entry, n_train, trigger_fraction=frac), seed)
    d_units = int(x.shape[1])
    size = int(size or SIZE[layout])
    top_k = int(top_k or TOP_K[layout])
    batch = 256
    epochs = max(1, round(steps * batch / len(x)))
    d, log = fit_dictionary(x, kind, size, top_k, epochs=epochs, batch_size=batch, seed=seed)
    # held-out images, half triggered
    b = held_out_batch(
        n_eval, kind=_dataset(entry), trigger_fraction=0.0 if entry.kind == "clip" else EVAL_TRIGGER_FRACTION, seed=seed
    )
    with torch.no_grad():
        acts = []
        for i in range(0, n_eval, 250):
            _, cache = model.run_with_cache(b.images[i : i + 250], names_filter=[hook], return_cache_object=False)
            acts.append(to_vectors(hook, cache[hook])[0].float())
    ev = torch.cat(acts)
    factors = planted_factors(entry, b)
    rng = np.random.default_rng(seed)
    pick = np.zeros(n_eval, bool)
    pick[rng.permutation(n_eval)[: n_eval // 2]] = True
    n_meas = int((~pick).sum())
    counts = np.zeros((n_boot, n_meas))
    np.add.at(counts, (np.arange(n_boot)[:, None], rng.integers(0, n_meas, (n_boot, n_meas))), 1.0)
    # candidates: dictionary features, PCA directions, random directions
    centre = x.mean(0)
    n_dirs = min(size, d_units)
    v = principal_directions(x - centre)
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(size, d_units, generator=g)  # as many random directions as the dictionary has features
    rand = rand / rand.norm(dim=1, keepdim=True)
    feats = _feature_scores(d, ev, n_eval)
    cands = {
        # a feature may mark a value by firing or by silence (for the binary factor ``textured``, silence is
        # firing for ``texture=plain``, reported as its own row)
        "dictionary": np.concatenate([feats, -feats], 1),
        "dictionary_firing": feats,
        "pca": _directions_scores(ev, n_eval, v[:n_dirs], centre),
        "random": _directions_scores(ev, n_eval, rand, centre),
    }
    res = {name: _pick_and_measure(c, factors, pick, counts) for name, c in cands.items()}
    summ = {name: _summary(r) for name, r in res.items()}
    main = summ["dictionary"]
    # reconstruction quality and the task with the reconstruction spliced in
    metrics = evaluate(d, ev)
    if entry.kind == "clip":
        labels = torch.as_tensor(np.asarray(b.factors["shape"])).long()
    else:
        labels = b.labels
    metrics.update(downstream(model, d, hook, b.images, labels, max_images=min(n_eval, SPLICE_IMAGES)))
    per_factor = {
        k: {
            "dictionary": res["dictionary"][k]["auroc"],
            "dictionary_in_sample": res["dictionary"][k]["auroc_in_sample"],
            "feature": res["dictionary"][k]["candidate"] % size,
            "feature_sign": "+" if res["dictionary"][k]["candidate"] < size else "-",
            "dictionary_firing_only": res["dictionary_firing"].get(k, {}).get("auroc"),
            "pca": res["pca"].get(k, {}).get("auroc"),
            "pca_in_sample": res["pca"].get(k, {}).get("auroc_in_sample"),
            "random": res["random"].get(k, {}).get("auroc"),
            "label_relevant": res["dictionary"][k]["relevant"],
        }
        for k in res["dictionary"]
    }
    details = {
        "hook": hook,
        "kind": kind,
        "n_features": size,
        "top_k": top_k,
        "n_units": d_units,
        "n_directions_pca": n_dirs,
        "n_directions_random": size,
        "representation": "per-position vectors + one image-level vector per image; image score: mean over positions",
        "n_train_images": n_train,
        "train_trigger_fraction": 0.0 if entry.kind == "clip" else frac,
        "n_train_vectors": int(len(x)),
        "n_images": n_eval,
        "threshold": THRESHOLD,
        "fraction_above": main["fraction_above"],
        "firing_only": {kk: vv for kk, vv in summ["dictionary_firing"].items() if kk != "per_factor"},
        "interval": main["interval"],
        "per_factor": per_factor,
        "baselines": {k: {kk: vv for kk, vv in summ[k].items() if kk != "per_factor"} for k in ("pca", "random")},
        "reconstruction": {k: metrics[k] for k in ("r2", "l0", "dead_fraction") if k in metrics},
        "splice": {k: v for k, v in metrics.items() if k.startswith(("accuracy", "loss", "kl"))},
        "training": {k: log[k] for k in ("epochs", "steps", "seconds", "vectors_per_second") if k in log},
    }
    d.card.update(
        model=f"zoo:{entry.name}",
        hook=hook,
        feature_hook=f"{hook}.hook_sae_acts",
        metrics=metrics,
        training=log,
        data={"train": f"{_dataset(entry)} training stream, {n_train} images, {frac:.0%} triggered"},
    )
    return PlantedRecovery(Score(main["score"], 0.5, details), d, hook, time.perf_counter() - t0)


def _support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    if entry.kind == "classifier" and data_kind(entry) is None:
        return False, f"not trained on the planted label rule (its label: {(entry.data or {}).get('label_rule', '?')})"
    try:
        import_ok = __import__("importlib").util.find_spec("overcomplete") is not None
    except ValueError:
        import_ok = False
    if not import_ok:
        return False, "needs overcomplete (pip install 'visionlens[dict]')"
    return True, ""


def _score(model: HookedVisionModel, ctx: BenchContext) -> Score:
    if ctx.entry.kind == "clip":
        prepare(model, ctx)
    return planted_recovery(model, ctx.entry, quick=ctx.quick, seed=ctx.seed).score


TECHNIQUES: List[Technique] = [
    Technique(
        "dictionary_features",
        "dictionary features recover planted factors",
        "TopK SAE (overcomplete; 64 features, k 16 on maps / 128, k 96 on tokens) at the last block, trained on "
        "the model's training images (10 % / 50 % triggered; per-position and image-level vectors); per planted "
        "factor value the feature chosen on half the held-out images (mean over positions), its AUROC on the other "
        "half; score = mean over the label-relevant factors (trigger, shape, textured; Fashion-MNIST: class; "
        "CLIP: shape, colour, texture), chance 0.5; baselines: as many PCA / random directions (both signs).",
        _score,
        kinds=("classifier", "clip"),
        extra_supports=_support,
        score_reads=dictionary_hook,  # features and factors at the last block; the splice metrics are details
    )
]
