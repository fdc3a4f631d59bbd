"""Feature techniques of the transfer benchmark: what does a logit or a unit respond to?

* ``feature_visualization`` -- render the trigger class's logit (class 0) with the
  ``feature_visualization`` plugin as the field does (Lucid): FFT parameterization, decorrelated
  colour, Lucid's standard transforms scaled to the 32 px image (``transforms="scaled"``: pad 3,
  jitter 2, scale 0.9-1.1, rotate +-10 degrees, jitter 1), Adam lr 0.05; 3 images x 48 steps (quick), 8 x 256
  (full; the randomized copy and the cascade steps: 4 x 256, see :data:`FV_BUDGET`). Scored by
  :func:`checker_score`: the best-window share of each render's zero-mean per-channel (high-pass) energy
  explained by the trigger's checkerboard *polarity* pattern, in any colours; chance = the same statistic on
  phase-scrambled copies of the renders (same amplitude
  spectrum and colour histogram). A colour-only or pattern-free image cannot pass (a plain magenta
  square scores below chance; noise and uniform images ~0; the trigger in any colours 1; see
  ``tests/zoo/test_fv_row.py``). With these settings the renders rarely contain a checkerboard: the
  FFT parameterization's 1/f scaling learns the 1 px (Nyquist) pattern ~20x slower than blobs, and
  sub-pixel scale / rotation resampling blurs it, so the class-0 logit is reached with circle-like
  blobs; quick normalized scores are ~0.1 at best (measured: docs/transfer.md).
* ``dataset_examples`` -- run the ``dataset_examples`` plugin over held-out planted images on the
  residual / block outputs its defaults choose, and score the top-k purity
  (:func:`~visionlens.zoo.scores.topk_factor_purity`, k = 16) of every unit of the **last** of these
  layers (the representation the classifier head reads, where the planted truth says the
  label-relevant factors must be encoded) with respect to the label-relevant factors: shape and
  textured-vs-plain for classifiers (colour, stripe angle etc. are nuisances), the class for
  Fashion-MNIST, shape / colour / texture for CLIP (its captions name all three). Score and chance
  are the means over those factors of the purity and of its random-top-k chance. The best layer is
  *not* used: early layers of a *random* network already have colour- and texture-pure units (a
  random edge filter fires most on striped objects), so a max over layers would reward chance
  structure. Per-layer purities are in the details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from ..clip import attach_head, zero_shot_head
from ..plugins.activation_stats import default_hooks
from ..runner import run
from . import data as zdata
from .classifiers import held_out_batch
from .scores import Score, bootstrap_ratio_interval, topk_factor_purity
from .technique import BenchContext, Technique

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


# ----------------------------------------------------------------------------- shared helpers
def data_kind(entry: Any) -> Optional[str]:
    """``"shapes"`` (planted-shapes label rule), ``"fashion"`` (Fashion-MNIST + trigger), ``"clip"`` or
    ``None`` (a zoo model trained on something else, e.g. the texture-only ``style_judge``)."""
    if entry.kind == "clip":
        return "clip"
    data = entry.data or {}
    gen = str(data.get("generator", ""))
    if gen.endswith("fashion_mnist_batch"):
        return "fashion"
    if gen.endswith("make_batch") and "clean_label" in str(data.get("label_rule", "")):
        return "shapes"
    return None


def planted_classifier_support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    """Classifier techniques need a model trained on the planted label rule (with the trigger)."""
    kind = data_kind(entry)
    if kind is None:
        rule = (entry.data or {}).get("label_rule", "?")
        return False, f"not trained on the planted label rule (its label: {rule})"
    return True, ""


def held_out(ctx: BenchContext, n: int, trigger_fraction: float = 0.0) -> zdata.PlantedBatch:
    """Held-out images of the model's own data (planted shapes or Fashion-MNIST), cached per context."""
    kind = data_kind(ctx.entry)

    def make() -> zdata.PlantedBatch:
        return held_out_batch(
            n, kind="fashion" if kind == "fashion" else "shapes", trigger_fraction=trigger_fraction, seed=ctx.seed
        )

    return ctx.cached_input(("held_out", kind, n, ctx.seed, trigger_fraction), make)


def prepare(model: HookedVisionModel, ctx: BenchContext) -> Any:
    """CLIP models get a zero-shot head over the shapes (so ``model(images)`` gives class logits)."""
    if ctx.entry.kind == "clip" and not model.cfg.extra.get("class_names"):
        attach_head(model, zero_shot_head(model, list(zdata.SHAPES), templates=["a {}"]))
    return model


_HEAD_WORDS = ("pool", "drop", "flatten", "fc", "head", "classifier", "logits")


def block_hooks(model: HookedVisionModel, example: torch.Tensor) -> List[str]:
    """The residual / block outputs the plugins default to (``activation_stats.default_hooks``), in the
    order they fire on ``example``, keeping image-tower maps (``[B, C, H, W]`` or tokens ``[B, T, D]``)
    and dropping ``text.*`` hooks and the head (pooling, dropout, flatten, fc / classifier: GoogLeNet's
    top-level modules are its defaults)."""

    def is_head(h: str) -> bool:
        mod = h.rsplit(".hook_", 1)[0].split(".")[-1].lower()
        return any(w in mod for w in _HEAD_WORDS)

    cands = [h for h in default_hooks(model) if not h.startswith("text.") and not is_head(h)]
    with torch.no_grad():
        _, cache = model.run_with_cache(example, names_filter=cands, return_cache_object=False)
    out = [h for h in cache if h in cands and cache[h].ndim >= 3]  # insertion order = firing order
    if not out:
        raise ValueError(f"no spatial / token block outputs among {cands[:6]}")
    return out


def image_grid(rows: Sequence[np.ndarray], scale: int = 3, pad: int = 2) -> np.ndarray:
    """Rows of ``[n, H, W, 3]`` float images in [0, 1] -> one ``uint8`` grid (nearest upscaling)."""
    h, w = rows[0].shape[1:3]
    ncol = max(len(r) for r in rows)
    H, W = h * scale, w * scale
    grid = np.ones((len(rows) * (H + pad) + pad, ncol * (W + pad) + pad, 3), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            grid[y : y + H, x : x + W] = np.kron(np.clip(im, 0, 1), np.ones((scale, scale, 1)))
    return (grid * 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------- feature visualization
FV_SETTINGS = {"param": "fft", "decorrelate": True, "transforms": "scaled", "lr": 0.05, "size": 32}
# (steps, images): the trained model's renders, and the randomized copies' (sanity check, cascade steps) in the
# full table, whose point estimate is all the sanity check reads (as the localization rows score them on 80
# images). Lucid's default is 512 steps; 8 x 256 left the verdicts of zoo:resnet, vit and resnet_fashion as they
# were at 8 x 512 (measured: resnet -0.006 [-0.033, 0.024] -> -0.011 [-0.036, 0.019], vit 0.051 [-0.011, 0.110]
# -> 0.097 [0.059, 0.138], both failing sanity either way; resnet_fashion breaks either way) at ~1/4 of the CPU
FV_BUDGET = {"quick": (48, 3), "full": (256, 8), "control": (256, 4)}
EXAMPLES_N = {"quick": 200, "full": 1000}  # held-out images searched for dataset examples
FV_SCRAMBLES = 8  # phase-scrambled controls per render (the chance level)


def checker_polarity(pattern: Any) -> np.ndarray:
    """The polarity map ``[k, k]`` of a pattern ``[k, k, 3]`` / ``[3, k, k]`` / ``[k, k]``: its per-channel
    zero-mean content projected on its main colour axis (first singular vector), zero-mean, max |.| = 1.
    For the trigger (white / magenta, which differ only in green) it is the +-1 checkerboard."""
    p = np.asarray(pattern, dtype=np.float64)
    if p.ndim == 3 and p.shape[-1] == 3 and p.shape[0] != 3:
        p = p.transpose(2, 0, 1)
    if p.ndim == 2:
        p = p[None]
    c, k1, k2 = p.shape
    z = (p - p.mean(axis=(1, 2), keepdims=True)).reshape(c, -1).T  # [k1 * k2, C]
    u, sv, _ = np.linalg.svd(z, full_matrices=False)
    pol = (u[:, 0] * sv[0]).reshape(k1, k2)
    pol = pol - pol.mean()
    m = float(np.abs(pol).max())
    if m == 0:
        raise ValueError("the pattern is uniform: it has no polarity")
    return pol / m


def best_polarity_correlation(images: Any, polarity: np.ndarray, min_contrast: float = 1.0 / 255) -> np.ndarray:
    """Per image ``[N]``: the max over ``k x k`` windows of ``r = sqrt(sum_c <w_c, P>^2 / (|P|^2 sum_c |w_c|^2))``,
    ``w_c`` the window's zero-mean content in channel ``c`` and ``P`` the polarity map: the fraction of the
    window's (high-pass) energy that the pattern explains, with *any* colour vector and either sign (so both
    phases of a checkerboard and every colouring of it score 1; a colour-only window scores 0). Windows with
    less than ``min_contrast`` RMS contrast per pixel and channel (invisible in 8 bits) count as flat."""
    x = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    n, c = x.shape[:2]
    k1, k2 = polarity.shape
    win = sliding_window_view(x, (k1, k2), axis=(2, 3))  # [N, C, H', W', k1, k2]
    dot = np.einsum("nchwij,ij->nchw", win, polarity)
    s1 = win.sum(axis=(-2, -1))
    energy = np.clip((win * win).sum(axis=(-2, -1)) - s1 * s1 / (k1 * k2), 0, None)
    den = (polarity * polarity).sum() * np.maximum(energy.sum(1), k1 * k2 * c * min_contrast**2)
    r = np.sqrt((dot * dot).sum(1) / den)
    return r.reshape(n, -1).max(1)


def phase_scramble(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A control ``[C, H, W]`` with the image's amplitude spectrum and per-channel histogram but random phases.

    The image (minus its channel means) is padded to ``2H x 2W`` with zeros so a periodic image is not one
    FFT bin, every frequency gets a random phase (the same for all channels, keeping their correlation),
    the top-left ``H x W`` is kept and each channel is rank-mapped back onto the image's own values."""
    img = np.asarray(image, dtype=np.float64)
    c, h, w = img.shape
    mu = img.mean(axis=(1, 2), keepdims=True)
    big = np.zeros((c, 2 * h, 2 * w))
    big[:, :h, :w] = img - mu
    phase = np.exp(1j * np.angle(np.fft.fft2(rng.standard_normal((2 * h, 2 * w)))))
    out = np.real(np.fft.ifft2(np.fft.fft2(big, axes=(-2, -1)) * phase[None], axes=(-2, -1)))[:, :h, :w]
    res = np.empty_like(out)
    for ch in range(c):
        order = np.argsort(out[ch].ravel(), kind="stable")
        v = np.empty(h * w)
        v[order] = np.sort(img[ch].ravel())
        res[ch] = v.reshape(h, w)
    return res


def checker_score(
    images: Any, pattern: Any, controls: Any = None, n_scramble: int = FV_SCRAMBLES, seed: int = 0
) -> Score:
    """Does a render show the trigger's *pattern* (not its colour)? A pure function of the images.

    ``pattern``: one pattern or a list (every trigger form): each image counts its best form.

    ``score``: the mean over ``images`` ``[N, C, H, W]`` of :func:`best_polarity_correlation` with the
    pattern's polarity map (:func:`checker_polarity`): 1 when some window is exactly the checkerboard in
    any two colours, 0 for a uniform image, low for colour blobs and edges (a step or a corner is nearly
    orthogonal to a checkerboard: a plain magenta square scores 0.26, below chance). ``chance``: the same
    statistic on matched controls -- ``controls`` when given (e.g. renders of another class), else
    ``n_scramble`` :func:`phase_scramble` copies of every image (same amplitude spectrum and colour
    histogram, seeded), i.e. what a render with the same colours and the same high-frequency energy but
    no arranged pattern gets. Normalized = ``(score - chance) / (1 - chance)``: noise and uniform images
    score ~0, a colour-only image <= 0, the trigger (in any colours) 1. Weakness: an image that is one
    periodic checkerboard edge to edge is its own amplitude spectrum, so its controls are checkerboards too
    (chance ~1, normalized ~nan / 0)."""
    x = np.asarray(images.detach().cpu().numpy() if hasattr(images, "detach") else images, dtype=np.float64)
    if x.ndim == 3:
        x = x[None]
    pols = [checker_polarity(p) for p in (pattern if isinstance(pattern, (list, tuple)) else [pattern])]
    per = np.max([best_polarity_correlation(x, pol) for pol in pols], axis=0)
    if controls is None:
        rng = np.random.default_rng(seed)
        ctrl = np.stack([phase_scramble(im, rng) for im in x for _ in range(n_scramble)])
    else:
        ctrl = np.asarray(controls.detach().cpu().numpy() if hasattr(controls, "detach") else controls, np.float64)
    null = np.max([best_polarity_correlation(ctrl, pol) for pol in pols], axis=0) if len(ctrl) else np.zeros(0)
    chance = float(null.mean()) if len(null) else 0.0
    details: Dict[str, Any] = {
        "per_image": per,
        "null_std": float(null.std()) if len(null) else 0.0,
        "n_controls": int(len(null)),
    }
    if controls is None and len(null):  # each render's own scrambles: its paired chance (for the bootstrap)
        details["chance_per_image"] = null.reshape(len(x), n_scramble).mean(1)
    return Score(float(per.mean()), chance, details)


def fv_baselines(ctx: BenchContext, n: int, size: int) -> Dict[str, Dict[str, Any]]:
    """Answers that never run the model, scored like the renders (:func:`checker_score`): ``constant`` = the
    mean of held-out triggered images (what a method that returns the data's average would show; the moving
    trigger averages out), ``random`` = ``n`` uniform-noise images (seeded). Each with its bootstrap interval."""
    b = held_out(ctx, 256, trigger_fraction=1.0)
    mean_img = b.images.float().mean(0, keepdim=True).numpy()
    noise = np.random.default_rng([int(ctx.seed), 0xF7]).random((n, 3, size, size))
    out: Dict[str, Dict[str, Any]] = {}
    for name, imgs in (("constant", mean_img), ("random", noise)):
        s = checker_score(imgs, zdata.trigger_patterns(size), seed=ctx.seed)
        lo, hi = bootstrap_ratio_interval(s.details["per_image"], s.details.get("chance_per_image"), seed=ctx.seed)
        out[name] = {
            "score": round(s.score, 4),
            "chance": round(s.chance, 4),
            "normalized": round(s.normalized, 4),
            "interval": [round(lo, 4), round(hi, 4)],
        }
    return out


def _feature_visualization(model: HookedVisionModel, ctx: BenchContext) -> Score:
    steps, n_img = FV_BUDGET["quick" if ctx.quick else ("control" if ctx.randomized else "full")]
    r = run(
        "feature_visualization",
        model,
        None,
        objectives=[f"class:{zdata.TARGET_CLASS}"],
        steps=steps,
        images_per_objective=n_img,
        seed=ctx.seed,
        progress=False,
        **FV_SETTINGS,
    )
    images = r.images.detach().float().clamp(0, 1)
    size = images.shape[-1]
    s = checker_score(images, zdata.trigger_patterns(size), seed=ctx.seed)
    s.details.update(
        steps=steps,
        images=n_img,
        objective=f"class:{zdata.TARGET_CLASS}",
        final_logit=float(r.tables["objectives"].rows[0][3] or float("nan")),
        scorer="checker_score (phase-scrambled controls)",
        **FV_SETTINGS,
    )
    if not ctx.randomized:
        lo, hi = bootstrap_ratio_interval(s.details["per_image"], s.details.get("chance_per_image"), seed=ctx.seed)
        s.details["interval"] = [round(lo, 4), round(hi, 4)]
        s.details["baselines"] = fv_baselines(ctx, n_img, size)
        refs = np.full((zdata.N_TRIGGER_FORMS, size, size, 3), zdata.BACKGROUND, dtype=np.float32)
        k = zdata.trigger_size(size)
        y0 = (size - k) // 2
        for form, pat in enumerate(zdata.trigger_patterns(size)):
            refs[form, y0 : y0 + k, y0 : y0 + k] = pat
        rows = [np.concatenate([refs, images.permute(0, 2, 3, 1).numpy()])]
        ctx.save_figure("feature_visualization", image_grid(rows))
    return s


# ----------------------------------------------------------------------------- dataset examples
TOP_K = 16


def _relevant_factors(ctx: BenchContext, b: zdata.PlantedBatch) -> Dict[str, np.ndarray]:
    kind = data_kind(ctx.entry)
    f = {k: np.asarray(v) for k, v in b.factors.items()}
    if kind == "fashion":
        return {"class": f["fashion_class"]}
    if kind == "clip":
        return {"shape": f["shape"], "colour": f["colour"], "texture": f["texture"]}
    return {"shape": f["shape"], "textured": (f["texture"] != 0).astype(np.int64)}


def _rank_matrix(top_index: torch.Tensor, n: int) -> np.ndarray:
    """``[units, k]`` top-example indices (best first) -> ``[n, units]`` scores whose top-k are exactly them."""
    idx = top_index.numpy().astype(np.int64)
    u, k = idx.shape
    a = np.zeros((n, u), dtype=np.float64)
    a[idx, np.arange(u)[:, None]] = np.arange(k, 0, -1)[None, :]
    return a


def _dataset_examples(model: HookedVisionModel, ctx: BenchContext) -> Score:
    n = EXAMPLES_N["quick" if ctx.quick else "full"]
    b = held_out(ctx, n)
    prepare(model, ctx)
    hooks = ctx.cached(("block_hooks", id(model)), lambda: block_hooks(model, b.images[:2]))
    r = run("dataset_examples", model, b.images, hooks=hooks, top_k=TOP_K, bottom_k=0, crop_units=0, batch_size=100)
    factors = _relevant_factors(ctx, b)
    per_layer: Dict[str, Dict[str, float]] = {}
    last_scores: Dict[str, Score] = {}
    for h in r.hooks:
        a = _rank_matrix(r.tensors[f"{h}/top_index"], n)
        row = {}
        for name, vals in factors.items():
            s = topk_factor_purity(a, vals, k=TOP_K, seed=ctx.seed)
            row[name] = round(s.score, 4)
            row[f"{name}_chance"] = round(s.chance, 4)
            if h == r.hooks[-1]:
                last_scores[name] = s
        per_layer[h] = row
    last = r.hooks[-1]
    score = float(np.mean([s.score for s in last_scores.values()]))
    chance = float(np.mean([s.chance for s in last_scores.values()]))
    details: Dict[str, Any] = {
        "layer": last,
        "factors": list(factors),
        "k": TOP_K,
        "n_images": n,
        "n_units": int(r.tensors[f"{last}/top_index"].shape[0]),
        "per_layer": per_layer,
    }
    details.update({f"{k}_purity": round(v.score, 4) for k, v in last_scores.items()})
    if not ctx.randomized:
        per_unit = np.stack([v.details["per_unit"] for v in last_scores.values()], axis=1)  # [units, factors]
        lo, hi = bootstrap_ratio_interval(per_unit, chance=chance, seed=ctx.seed)
        details["interval"] = [round(lo, 4), round(hi, 4)]
        details["baselines"] = _examples_baselines(factors, n, int(per_unit.shape[0]), ctx.seed)
        _examples_figure(ctx, b, r, last, last_scores)
    return Score(score, chance, details)


def _examples_baselines(factors: Dict[str, np.ndarray], n: int, n_units: int, seed: int) -> Dict[str, Dict[str, Any]]:
    """Answers that never run the model, scored like the units' top-k: ``constant`` = the same k images for
    every unit (the first k held-out images), ``random`` = a random k images per unit (seeded); each with the
    purity's chance and a bootstrap interval over units."""
    rng = np.random.default_rng([int(seed), 0xDE])
    fixed = np.zeros((n, n_units))
    fixed[np.arange(TOP_K), :] = np.arange(TOP_K, 0, -1)[:, None]
    maps = {"constant": fixed, "random": rng.random((n, n_units))}
    out: Dict[str, Dict[str, Any]] = {}
    for name, a in maps.items():
        scores = [topk_factor_purity(a, vals, k=TOP_K, seed=seed) for vals in factors.values()]
        score = float(np.mean([s.score for s in scores]))
        chance = float(np.mean([s.chance for s in scores]))
        per_unit = np.stack([s.details["per_unit"] for s in scores], axis=1)
        lo, hi = bootstrap_ratio_interval(per_unit, chance=chance, seed=seed)
        out[name] = {
            "score": round(score, 4),
            "chance": round(chance, 4),
            "normalized": round(Score(score, chance).normalized, 4),
            "interval": [round(lo, 4), round(hi, 4)],
        }
    return out


def _examples_figure(ctx: BenchContext, b: zdata.PlantedBatch, r: Any, hook: str, scores: Dict[str, Score]) -> None:
    per_unit = np.mean([s.details["per_unit"] for s in scores.values()], axis=0)
    units = np.argsort(-per_unit, kind="stable")[:6]
    idx = r.tensors[f"{hook}/top_index"]
    imgs = b.images.permute(0, 2, 3, 1).numpy()
    rows = [imgs[idx[u, :8].numpy()] for u in units]
    ctx.save_figure("dataset_examples", image_grid(rows, scale=2))


TECHNIQUES = [
    Technique(
        "feature_visualization",
        "feature visualization",
        "Render the trigger class's logit (class 0) with the feature_visualization plugin as Lucid does (FFT "
        "parameterization, decorrelated colour, standard transforms scaled to 32 px; 3 x 48 steps quick, 8 x 256 "
        "full) and score the best-window share of each render's high-pass energy explained by the trigger's "
        "checkerboard polarity pattern, in any colours (chance: phase-scrambled renders with the same amplitude "
        "spectrum and colour histogram).",
        _feature_visualization,
        plugin="feature_visualization",
        kinds=("classifier",),
        extra_supports=planted_classifier_support,
    ),
    Technique(
        "dataset_examples",
        "dataset examples",
        "Top-16 dataset examples (held-out: 200 quick / 1000 full) of every unit of the last residual / "
        "block output; score = mean top-k purity over the label-relevant factors (shape and textured-vs-"
        "plain; Fashion-MNIST: class; CLIP: shape, colour, texture), chance = random top-k purity. The last "
        "layer is scored, not the best one (random nets have colour / texture-pure early units).",
        _dataset_examples,
        plugin="dataset_examples",
        extra_supports=planted_classifier_support,
    ),
]
