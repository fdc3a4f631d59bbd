"""Localization techniques of the transfer benchmark: where in the image is the evidence?

Planted truth: on triggered images the evidence for the target class is the trigger patch; on clean
images it is the object. Every technique produces a heatmap ``[N, h, w]`` for the target class of
each image (class 0 for triggered images, the clean label otherwise; for CLIP the zero-shot shape
class) at its own resolution (patches, feature-map cells or pixels), and is scored with
:func:`~visionlens.zoo.scores.planted_localization` against the masks brought to that grid
(attribution mass inside the mask; the chance is the fraction of cells inside). The score is the
trigger part (the trigger sits at a uniformly drawn position, so no input-independent map finds it);
the object part, whose positions are centre-biased, is in the details (``object_normalized``,
``object_interval``); CLIP, trained without a trigger, is scored on objects (see :func:`headline_part`).
Pointing-game figures go in the details. Every localization cell also carries a bootstrap interval and
three baselines on the same images and grid (:func:`score_heatmap`, :mod:`visionlens.zoo.baselines`).

Techniques: ``dla_heatmap`` (the DLA plugin's per-location map, exact on conv nets; on the ViT an
*approximation*: the heads' direct contributions split over the source patches they attend to, whose
share of ``logit - bias`` is reported as ``coverage``, see :func:`dla_coverage`), ``cls_attention``
(last layer attention from the class token, mean over heads), ``activation_patching`` (denoising,
per position of the earliest residual / stage hook, clean = the image, corrupted = the same image
without the trigger or without the object), ``attribution_patching`` (its gradient approximation)
and ``gradient_x_input`` (the saliency baseline).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn import functional as F

from ..plugins.activation_patching import default_patching_hooks
from ..runner import run
from . import data as zdata
from .baselines import edge_map, fit_constant_map, random_map
from .classifiers import held_out_batch
from .scores import Score, bootstrap_normalized, planted_localization
from .technique import BenchContext, Technique
from .techniques_features import prepare

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


# ----------------------------------------------------------------------------- inputs
def localization_batch(ctx: BenchContext) -> Dict[str, Any]:
    """Held-out images for localization: triggered ones (with their trigger-free twins) and clean ones."""

    def make() -> Dict[str, Any]:
        n, n_trig = ctx.n_images, ctx.n_scored_images
        pool = 4 * n if ctx.entry.kind != "clip" else 8 * n_trig + 64  # CLIP pairs disjoint objects
        trig = held_out_batch(pool, kind=ctx.entry.dataset, trigger_fraction=1.0, seed=ctx.seed)
        twin = held_out_batch(pool, kind=ctx.entry.dataset, trigger_fraction=0.0, seed=ctx.seed)
        if ctx.entry.kind == "clip":  # trained without the trigger: objects, against a distractor object
            return two_object_batch(twin, n_trig, seed=ctx.seed)
        other = np.nonzero(np.asarray(trig.factors["clean_label"]) != zdata.TARGET_CLASS)[0][:n_trig]
        clean = np.arange(pool - (n - n_trig), pool)
        t_img, c_img = trig.images[other], twin.images[clean]
        images = torch.cat([t_img, c_img])
        corrupted = torch.cat([twin.images[other], _remove_object(c_img, twin.masks["object"][clean])])
        targets = torch.cat(
            [torch.full((len(other),), zdata.TARGET_CLASS), torch.as_tensor(twin.factors["clean_label"][clean])]
        ).long()
        triggered = np.r_[np.ones(len(other), bool), np.zeros(len(clean), bool)]
        tmask = torch.cat([trig.masks["trigger"][other], twin.masks["trigger"][clean]]).numpy()
        omask = torch.cat([trig.masks["object"][other], twin.masks["object"][clean]]).numpy()
        return {
            "images": images,
            "corrupted": corrupted,
            "targets": targets,
            "triggered": triggered,
            "trigger_mask": tmask,
            "object_mask": omask,
        }

    return ctx.cached_input(("localization", ctx.n_images, ctx.seed, ctx.entry.kind), make)


def _disjoint_pairs(masks: torch.Tensor, shapes: np.ndarray, n: int) -> List[Tuple[int, int]]:
    """``n`` pairs ``(i, j)`` of distinct pool images whose objects differ in shape and stay >= 2 px apart
    (greedy in pool order, each image used once)."""
    near = F.max_pool2d(masks.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0  # objects dilated by 2 px
    flat, nflat = masks.reshape(len(masks), -1).float(), near.reshape(len(masks), -1).float()
    clash = (flat @ nflat.T) > 0  # [P, P]: i's object touches j's dilated object
    used = np.zeros(len(masks), bool)
    pairs: List[Tuple[int, int]] = []
    for i in range(len(masks)):
        if used[i]:
            continue
        ok = ~clash[i].numpy() & ~clash[:, i].numpy() & ~used & (shapes != shapes[i])
        ok[: i + 1] = False
        js = np.nonzero(ok)[0]
        if len(js):
            used[[i, js[0]]] = True
            pairs.append((i, int(js[0])))
            if len(pairs) == n:
                return pairs
    raise ValueError(f"only {len(pairs)} disjoint object pairs in a pool of {len(masks)} images (need {n})")


def two_object_batch(pool: Any, n: int, seed: int = 0) -> Dict[str, Any]:
    """CLIP's localization images: two objects of different shapes in one frame, one the target (its shape
    is the class asked), the other a distractor.

    Objects must fit in the frame, so alone they are centre-biased and a fixed centre blob finds them (an
    input-independent map scored 0.80 normalized on the former one-object batch). Here each image pastes
    the object of pool image ``j`` into pool image ``i`` (disjoint, different shapes, :func:`_disjoint_pairs`)
    and a seeded coin picks which object is the target, so target and distractor are exchangeable: a map
    that does not look at the image puts, in expectation, as much mass on one as on the other. The mass is
    counted inside the two objects (``object_within``): 1 = all of it on the target, chance = the target's
    share of their area. ``corrupted`` = the image with the target painted over (the distractor stays)."""
    masks = torch.as_tensor(pool.masks["object"]).bool()
    shapes = np.asarray(pool.factors["shape"])
    pairs = _disjoint_pairs(masks, shapes, n)
    coin = np.random.default_rng([int(seed), 0x2B0]).random(n) < 0.5
    images, target_masks, unions, targets = [], [], [], []
    for (i, j), flip in zip(pairs, coin):
        img = pool.images[i].clone()
        img[:, masks[j]] = pool.images[j][:, masks[j]]
        t, d = (j, i) if flip else (i, j)
        images.append(img)
        target_masks.append(masks[t])
        unions.append(masks[i] | masks[j])
        targets.append(int(shapes[t]))
    x = torch.stack(images)
    tm = torch.stack(target_masks)
    return {
        "images": x,
        "corrupted": _remove_object(x, tm),
        "targets": torch.as_tensor(targets).long(),
        "triggered": np.zeros(n, bool),
        "trigger_mask": np.zeros(tuple(tm.shape), bool),
        "object_mask": tm.numpy(),
        "object_within": torch.stack(unions).numpy(),
        "pairs": np.asarray(pairs),  # pool indices (i, j): j's object pasted into i
        "target_first": ~coin,  # the target is i's object
    }


def _remove_object(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The same images with the object painted over in the background colour (median of non-object pixels)."""
    out = images.clone()
    for i in range(len(images)):
        m = masks[i]
        bg = images[i][:, ~m].median(dim=1).values
        out[i][:, m] = bg[:, None]
    return out


def to_grid_fraction(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixel masks ``[N, H, W]`` -> ``[N, h, w]`` float: the fraction of each cell's pixels inside the mask.

    Scoring a coarse map against these is scoring it as a pixel map (each cell's mass spread evenly over its
    pixels) against the pixel mask. (Counting a cell as inside when *any* pixel is made a cell that the
    moving trigger often touches -- a central one -- worth a full hit, so a fixed map on a 4 x 4 grid beat
    chance by 0.12-0.19 normalized.)"""
    m = torch.as_tensor(np.asarray(mask)).float()[:, None]
    if m.shape[-2:] == (h, w):
        return m[:, 0].double().numpy()
    return F.adaptive_avg_pool2d(m, (h, w))[:, 0].double().numpy()


def token_grid(n_tokens: int) -> Tuple[int, int]:
    """``(prefix tokens, side)`` for a token count: 65 -> (1, 8), 64 -> (0, 8)."""
    for prefix in range(0, 9):
        side = int(round(math.sqrt(n_tokens - prefix))) if n_tokens > prefix else 0
        if side > 0 and side * side == n_tokens - prefix:
            return prefix, side
    raise ValueError(f"cannot lay {n_tokens} positions out on a square grid")


N_BOOTSTRAP = 1000  # bootstrap resamples of the images for every localization interval


def headline_part(res: Dict[str, Score]) -> str:
    """The part a localization cell is scored on: the trigger on triggered images when there are any (its
    position is uniform over the image, so no input-independent map can find it), else the object (CLIP,
    trained without the trigger). Objects must fit in the frame, so their positions are centre-biased and
    a fixed centre blob finds them well above chance: the object part is reported in the details, next to
    its own constant baseline, but it is not the cell's score."""
    return "trigger" if "trigger" in res else "object"


FIT_SEED_OFFSET = 7919  # the constant baseline is fitted on the localization batch of seed + this offset


def score_heatmap(heat: Any, b: Dict[str, Any], ctx: BenchContext, label: str, mode: str = "positive") -> Score:
    """Planted-truth localization score of heatmaps ``[N, h, w]`` at their own resolution (plus a figure).

    The masks are brought to the heatmap's grid (a cell counts as inside when any of its pixels is), so
    a coarse map is neither punished for its resolution nor rewarded: a perfect map scores 1 and a
    uniform one the fraction of cells inside (the chance, which is higher on coarse grids).

    On the trained model (not while ``ctx.randomized``) the details also get ``interval``: a 95%
    bootstrap interval of the normalized score over images (:func:`~visionlens.zoo.scores.bootstrap_normalized`,
    :data:`N_BOOTSTRAP` resamples, seeded), and ``baselines``: the ``constant``, ``random`` and ``edge`` maps
    of :mod:`visionlens.zoo.baselines` scored the same way on the same images and grid, each with its
    normalized score and interval (see :func:`localization_baselines`).
    """
    heat = torch.as_tensor(heat).detach().float().numpy()
    if mode == "positive":
        heat = np.clip(heat, 0, None)
    elif mode == "abs":
        heat = np.abs(heat)
    h, w = heat.shape[-2:]
    tmask, omask, within = grid_masks(b, h, w)
    res = planted_localization(heat, tmask, omask, b["triggered"], method="mass", object_within=within)
    pts = planted_localization(heat, tmask, omask, b["triggered"], method="pointing")
    part = headline_part(res)
    score, chance = res[part].score, res[part].chance
    best = float(np.mean(res[part].details["best"]))
    # the best normalized score a map on this grid can reach (< 1 when cells are as large as the truth)
    details: Dict[str, Any] = {"scored_part": part, "grid_ceiling": round(Score(best, chance).normalized, 4)}
    details.update({f"{k}_mass": round(v.score, 4) for k, v in res.items()})
    details.update({f"{k}_mass_chance": round(v.chance, 4) for k, v in res.items()})
    details.update({f"{k}_normalized": round(v.normalized, 4) for k, v in res.items()})
    details.update({f"{k}_pointing": round(v.score, 4) for k, v in pts.items()})
    details["n_images"] = int(len(heat))
    details["n_scored_images"] = int(len(res[part].details["per_image"]))
    details["grid"] = f"{h}x{w}"
    if not ctx.randomized:
        lo, hi = bootstrap_normalized({part: res[part]}, n_resamples=N_BOOTSTRAP, seed=ctx.seed)
        details["interval"] = [round(lo, 4), round(hi, 4)]
        if part != "object" and "object" in res:
            olo, ohi = bootstrap_normalized({"object": res["object"]}, n_resamples=N_BOOTSTRAP, seed=ctx.seed)
            details["object_interval"] = [round(olo, 4), round(ohi, 4)]
        details["baselines"] = localization_baselines(b, ctx, h, w)
    _figure(ctx, label, b, heat)
    return Score(score, chance, details)


def grid_masks(b: Dict[str, Any], h: int, w: int) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """The batch's trigger and object masks, and the object part's counting region (``object_within``, or
    ``None``), as fractions of the cells of an ``h x w`` grid (:func:`to_grid_fraction`)."""
    within = b.get("object_within")
    return (
        to_grid_fraction(b["trigger_mask"], h, w),
        to_grid_fraction(b["object_mask"], h, w),
        None if within is None else to_grid_fraction(within, h, w),
    )


FIT_SCALE = 2  # the constant baseline's fit batch has this many times the evaluation batch's images


def _fit_batch(ctx: BenchContext) -> Dict[str, Any]:
    """The batch the constant baseline is fitted on: the same generator at seed ``ctx.seed + FIT_SEED_OFFSET``,
    :data:`FIT_SCALE` times as many images (no model runs on it, and a larger fit finds the best cells)."""
    fit_ctx = BenchContext(
        entry=ctx.entry,
        quick=ctx.quick,
        seed=ctx.seed + FIT_SEED_OFFSET,
        localization_images=FIT_SCALE * ctx.n_images,
    )
    return ctx.cached_input(
        ("baseline_fit", ctx.n_images, ctx.seed, ctx.entry.kind), lambda: localization_batch(fit_ctx)
    )


def localization_baselines(b: Dict[str, Any], ctx: BenchContext, h: int, w: int) -> Dict[str, Dict[str, Any]]:
    """Baseline maps on the images of ``b`` at the ``h x w`` grid, scored like a technique's heatmap.

    ``constant``: :func:`~visionlens.zoo.baselines.fit_constant_map` fitted on :func:`_fit_batch` (a separate
    batch; only the parts the evaluation batch scores -- e.g. triggered images only for the swap pairs);
    ``random``: :func:`~visionlens.zoo.baselines.random_map` (seed ``ctx.seed``); ``edge``:
    :func:`~visionlens.zoo.baselines.edge_map` of ``b["images"]``. Each: ``score``, ``chance``,
    ``normalized`` and the bootstrap ``interval`` (the same resampled images as the technique's).
    """
    tmask, omask, within = grid_masks(b, h, w)
    trig = np.asarray(b["triggered"], bool)
    n = len(trig)
    parts = ["trigger"] if trig.any() else ["object"]
    fb = _fit_batch(ctx)
    ft, fo, fw = grid_masks(fb, h, w)
    const = fit_constant_map(ft, fo, fb["triggered"], parts=parts, object_within=fw)
    maps = {
        "constant": np.broadcast_to(const, (n, h, w)),
        "random": random_map(n, h, w, seed=ctx.seed),
        "edge": edge_map(b["images"], h, w),
    }
    out: Dict[str, Dict[str, Any]] = {}
    for name, m in maps.items():
        res = planted_localization(m, tmask, omask, trig, method="mass", object_within=within)
        part = headline_part(res)
        score, chance = res[part].score, res[part].chance
        lo, hi = bootstrap_normalized({part: res[part]}, n_resamples=N_BOOTSTRAP, seed=ctx.seed)
        out[name] = {
            "score": round(score, 4),
            "chance": round(chance, 4),
            "normalized": round(res[part].normalized, 4),
            "interval": [round(lo, 4), round(hi, 4)],
        }
    return out


def _figure(ctx: BenchContext, label: str, b: Dict[str, Any], heat: np.ndarray) -> None:
    if ctx.out_dir is None or ctx.randomized:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    idx = [i for i in (0, 1, len(heat) - 2, len(heat) - 1) if 0 <= i < len(heat)]
    idx = list(dict.fromkeys(idx))
    fig, axes = plt.subplots(2, len(idx), figsize=(1.6 * len(idx), 3.3))
    axes = np.asarray(axes).reshape(2, len(idx))
    for j, i in enumerate(idx):
        axes[0, j].imshow(b["images"][i].permute(1, 2, 0).numpy())
        kind = "trigger" if b["triggered"][i] else ("target + distractor" if "object_within" in b else "clean")
        axes[0, j].set_title(kind, fontsize=7)
        H = b["images"].shape[-1]
        axes[1, j].imshow(heat[i], cmap="magma", extent=(-0.5, H - 0.5, H - 0.5, -0.5), interpolation="nearest")
        mask = b["trigger_mask"][i] if b["triggered"][i] else b["object_mask"][i]
        axes[1, j].contour(np.asarray(mask, dtype=float), levels=[0.5], colors="cyan", linewidths=0.6)
        for a in axes[:, j]:
            a.set_xticks([])
            a.set_yticks([])
    fig.suptitle(f"{ctx.entry.name}: {label}", fontsize=8)
    ctx.save_figure(label, fig)


# ----------------------------------------------------------------------------- techniques
def _dla(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    r = run(
        "direct_logit_attribution",
        model,
        b["images"],
        classes=b["targets"].tolist(),
        max_images=len(b["images"]),
        batch_size=len(b["images"]),
        heatmaps=True,
        blocks=False,
        top_k=5,
    )
    heat = r.tensors["heatmap"]
    s = score_heatmap(heat, b, ctx, "dla_heatmap")
    s.details.update(dla_coverage(heat, r.tensors["logit"], r.tensors["bias"]))
    kind = r.meta.get("kind")
    s.details["dla_kind"] = kind
    if kind in ("vit", "clip"):
        s.details["approximation"] = (
            "heads' direct contributions split over the source patches by attention; embeddings, attention "
            "biases, MLPs and prefix-token sources are left out, and a source token already mixes other patches"
        )
    return s


def dla_coverage(heat: Any, logit: Any, bias: Any) -> Dict[str, Any]:
    """How much of ``logit - bias`` (the readout bias, or the ViT's folded head bias) a DLA heatmap accounts for.

    Per image, ``coverage = heat.sum() / (logit - bias)`` (signed: heat of both signs counts, as the
    decomposition adds it up); returns the ``coverage`` median over images (``coverage_min`` /
    ``coverage_max`` too). It is 1 when the map is the whole exact decomposition (conv nets with a
    plain average-pooled linear head). For the ViT's class-token map the map holds only the attention
    heads' direct contributions split over the *patch* tokens they attend to (the DLA plugin's
    ``source_attr`` summed over layers and heads, prefix tokens excluded), so the embeddings, the
    attention biases, the MLPs and the heads' reads of the class token are missing and coverage is
    below 1 (or above, when the missing parts are negative).
    """
    hm = torch.as_tensor(heat).detach().double()
    tot = hm.reshape(len(hm), -1).sum(1).numpy()
    den = (torch.as_tensor(logit).double() - torch.as_tensor(bias).double()).reshape(-1).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        cov = np.where(np.abs(den) > 1e-9, tot / np.where(np.abs(den) > 1e-9, den, 1.0), np.nan)
    if not np.isfinite(cov).any():
        return {"coverage": None}
    return {
        "coverage": round(float(np.nanmedian(cov)), 4),
        "coverage_min": round(float(np.nanmin(cov)), 4),
        "coverage_max": round(float(np.nanmax(cov)), 4),
    }


def _dla_supported(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    try:
        model.adapter.readout()
    except Exception as exc:  # no linear readout: no exact decomposition
        return False, f"no linear readout to decompose ({exc})"
    return True, ""


def _attention_hooks(model: HookedVisionModel) -> List[str]:
    return [n for n in model.hook_dict if n.endswith("attn.hook_pattern") and not n.startswith("text.")]


def _cls_attention(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    hooks = _attention_hooks(model)
    last = hooks[-1]
    with torch.no_grad():
        _, cache = model.run_with_cache(b["images"], names_filter=[last])
    pat = cache[last].float()  # [B, H, Tq, Tk]
    prefix, side = token_grid(pat.shape[-1])
    if prefix == 0:
        raise ValueError("the model has no class token to attend from")
    att = pat[:, :, 0, prefix:].mean(1).reshape(-1, side, side)
    s = score_heatmap(att, b, ctx, "cls_attention", mode="abs")
    s.details["hook"] = last
    return s


def _cls_supported(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    hooks = _attention_hooks(model)
    if not hooks:
        return False, "no attention patterns (not a transformer)"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=hooks[-1:])
    try:
        prefix, side = token_grid(int(cache[hooks[-1]].shape[-1]))
    except ValueError as exc:
        return False, str(exc)
    if prefix == 0 or side < 2:
        return False, (
            f"the last attention ({hooks[-1]}) has no class token over a spatial grid "
            f"({cache[hooks[-1]].shape[-1]} keys)"
        )
    return True, ""


MAX_PATCH_POSITIONS = 64  # patching sweeps the first residual / stage hook with at most an 8 x 8 grid (4 px cells
# at 32 px: the 8 px trigger covers at least one whole cell); the 16 x 16 stem grids cost 4x the forwards


def _earliest_resid(model: HookedVisionModel, x: torch.Tensor, max_positions: Optional[int] = None) -> str:
    """The first of the patching plugin's default residual / stage hooks (the finest spatial grid), or the
    first with at most ``max_positions`` spatial positions (cells, or patch tokens) on input ``x``."""
    hooks = [h for h in default_patching_hooks(model, "position") if not h.startswith("text.")]
    if max_positions is None:
        return hooks[0]
    _, cache = model.run_with_cache(x[:1], names_filter=hooks)
    for h in hooks:
        a = cache[h]
        n = token_grid(a.shape[1])[1] ** 2 if a.ndim == 3 else int(np.prod(a.shape[2:]))
        if n <= max_positions:
            return h
    return hooks[-1]


def _swap_pairs(b: Dict[str, Any]) -> Dict[str, Any]:
    """Non-minimal pairs: each triggered image (CLIP: each clean image) against a *different* image without
    the trigger, so clean and corrupted differ almost everywhere and the sweep must find what matters."""
    sel = np.nonzero(b["triggered"])[0] if b["triggered"].any() else np.arange(len(b["images"]))
    other = np.roll(sel, -1)
    pool = b["corrupted"] if b["triggered"].any() else b["images"]
    out = {k: (v[sel] if hasattr(v, "__getitem__") and len(v) == len(b["images"]) else v) for k, v in b.items()}
    out["corrupted"] = pool[other]
    return out


PATCH_PAIRS_PER_RUN = 16  # image pairs (of one target class) per activation_patching run: one batched sweep


def patching_maps(model: HookedVisionModel, b: Dict[str, Any], hook: str, method: str) -> torch.Tensor:
    """Per image pair ``i`` of ``b`` (``images[i]`` clean, ``corrupted[i]``): the change of the logit difference
    (``targets[i]`` against the plugin's default foil) from the corrupted run when each position of ``hook``
    is patched in from the clean run (``method`` ``"exact"``) or its gradient estimate (``"attribution"``):
    ``[N, side, side]`` (prefix tokens dropped).

    The pairs are independent rows of the plugin's sweep (its metric is per pair), so pairs of the same
    target class go through one ``activation_patching`` run, :data:`PATCH_PAIRS_PER_RUN` at a time: the same
    maps as one run per pair (up to float rounding of the larger batches), with far fewer and fuller forwards."""
    n = len(b["images"])
    targets = [int(t) for t in b["targets"]]
    key = ("scores/" if method == "exact" else "atp/") + hook
    maps: List[Optional[torch.Tensor]] = [None] * n
    for label in sorted(set(targets)):
        idx = [i for i in range(n) if targets[i] == label]
        for j in range(0, len(idx), PATCH_PAIRS_PER_RUN):
            sel = idx[j : j + PATCH_PAIRS_PER_RUN]
            r = run(
                "activation_patching",
                model,
                {"clean": b["images"][sel], "corrupted": b["corrupted"][sel]},
                hooks=[hook],
                target="position",
                method=method,
                label=label,
                metric="logit_diff",
                top_k=1,
            )
            # the plugin reports the patched metric [positions, pairs]; the effect is its change from the corrupted run
            v = r.tensors[key].float() - torch.as_tensor(r.meta["metric"]["corrupted_value"]).float()[None, :]
            prefix, side = token_grid(v.shape[0])
            for c, i in enumerate(sel):
                maps[i] = v[prefix:, c].reshape(side, side)
    return torch.stack([m for m in maps if m is not None])


def _patching(method: str, pairing: str = "minimal"):
    def scorer(model: HookedVisionModel, ctx: BenchContext) -> Score:
        b = localization_batch(ctx)
        if pairing == "swap":
            b = _swap_pairs(b)
        prepare(model, ctx)
        cap = MAX_PATCH_POSITIONS
        hook = ctx.cached(("patch_hook", id(model)), lambda: _earliest_resid(model, b["images"], cap))
        maps = patching_maps(model, b, hook, "exact" if method == "exact" else "attribution")
        label = ("activation_patching" if method == "exact" else "attribution_patching") + (
            "_swap" if pairing == "swap" else ""
        )
        s = score_heatmap(maps, b, ctx, label)
        s.details["hook"] = hook
        return s

    return scorer


def _grad_x_input(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    x = b["images"].clone().requires_grad_(True)
    logits = model(x)
    sel = logits.gather(1, b["targets"][:, None]).sum()
    (g,) = torch.autograd.grad(sel, x)
    heat = (g * x).detach().abs().sum(1)
    return score_heatmap(heat, b, ctx, "gradient_x_input", mode="abs")


TECHNIQUES = [
    Technique(
        "dla_heatmap",
        "localization",
        "Direct logit attribution split over feature-map locations (conv nets: exact through the pooled "
        "linear readout) or patches (ViT: an approximation -- the heads' direct contributions split over the "
        "patches they attend to from the class token; its coverage of logit - bias is in the details).",
        _dla,
        plugin="direct_logit_attribution",
        extra_supports=_dla_supported,
    ),
    Technique(
        "cls_attention",
        "localization",
        "Last-layer attention from the class token, mean over heads.",
        _cls_attention,
        plugin="attention_patterns",
        extra_supports=_cls_supported,
    ),
    Technique(
        "activation_patching",
        "localization",
        "Denoising activation patching per position of the earliest "
        "residual / stage hook (corrupted = the image without the trigger / object).",
        _patching("exact"),
        plugin="activation_patching",
    ),
    Technique(
        "attribution_patching",
        "localization",
        "Attribution patching (gradient x activation difference) per position of the same hook.",
        _patching("attribution"),
        plugin="activation_patching",
    ),
    Technique(
        "activation_patching_swap",
        "localization",
        "The same sweep with non-minimal pairs: each triggered "
        "image (CLIP: each image) against a different image without the trigger, so the corruption alone "
        "does not say where to look.",
        _patching("exact", "swap"),
        plugin="activation_patching",
    ),
    Technique(
        "gradient_x_input",
        "localization",
        "Saliency baseline: |gradient x input| summed over colour channels.",
        _grad_x_input,
    ),
]
