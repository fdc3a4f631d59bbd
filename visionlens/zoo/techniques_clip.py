"""Transfer-table rows for the CLIP-neuron techniques where a truth is known: ``max_activating_text`` (scored
against brute force over the zoo CLIP's caption vocabulary) and ``multimodal_units`` (the planted multimodal
units of ``zoo:clip_glyph``).

``max_activating_text`` (every zoo CLIP: ``zoo:clip``, ``zoo:clip_glyph``, and ``zoo:clip_vit`` when it is
benchmarked): the last-layer units of both towers -- the text tower's last MLP neurons read at the pooled end-of-text
token, and the image tower's last units as the direction each writes into the joint space, scored by cosine with the
text embedding (ModifiedResNet: ``sum_h W_O[h] W_V[h][:, c]`` of the attention pool, exact for a spatially uniform
activation; ViT: the last MLP neuron's centred output weights through ``ln_post``'s weight and ``proj``, exact per
image up to the positive LayerNorm scale; :func:`image_unit_direction`). The truth per unit is the brute-force maximum
over every string of 1..4 caption words (the word-level vocabulary: 16,104 strings). :data:`BUDGET` units per tower
are drawn (seeded) among those whose maximum is positive; the gradient-guided discrete search of
:mod:`visionlens.plugins.clip_max_activating_text` gets a budget of forward passes per unit, and a unit is a *hit*
when the best string found scores at least :data:`REACH` of the maximum.

Score: the fraction of hits. Chance: what one uniformly drawn string gets, per unit the fraction of all strings
that reach :data:`REACH` of the maximum (mean over the units). Interval: a 95 % percentile bootstrap over units
of the normalized score (each unit's chance resampled with it). Baselines, graded the same way: ``random`` =
uniform random strings with the same forward budget per unit; ``constant`` = one string for every unit, the
one with the best mean normalized score ``(s - mean) / (max - mean)`` over as many *other* units (fitted on
them, scored on the evaluated ones).

Randomized copies (sanity check, cascade): the search runs on the randomized model and its strings are graded
against the *trained* model's brute-force truth (the same units, the same chance), as every other row grades a
randomized model's answer against the planted truth: a search that explains the model it is given must lose
the trained model's best strings when the weights are random.

``multimodal_units`` (``zoo:clip_glyph``, the only zoo model with planted multimodal units): per held-out
replicate (a disjoint slice of held-out shape images, its own word renderings) the ``multimodal_neurons``
analysis ranks the 256 units of ``visual.layer4.0.act3.hook_out`` per shape by its joint score. A case
(replicate, shape) is a *success* when the planted multimodal unit (shape OR written word) is in the top
:data:`TOP` and neither decoy (shape-only, word-only) is. Score: the success rate over cases. Chance: the
probability that a uniformly random ranking succeeds. Interval: a 95 % percentile bootstrap over replicates
(the three shapes of a replicate share its images). Baselines: ``constant`` = a weight-only ranking (each unit
by the norm of what it writes into the joint space through the attention pool, the same for every shape: it
never sees an image); ``random`` = seeded random rankings; and the single-score rankings the joint one must
beat, in the details and shown with the baselines: ``image_only`` (image selectivity), ``text_only`` (written-word
selectivity), ``caption`` (caption attribution) and ``magnitude`` (the mean activation on the shape's images and
words: the trivial method).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..plugins.clip_attnpool_dla import is_resnet_clip
from ..plugins.clip_head_roles import is_vit_clip
from ..plugins.clip_max_activating_text import (
    TextObjective,
    discrete_search,
    image_unit_direction,
    random_search,
)
from ..plugins.clip_multimodal_neurons import concept_word_images, unit_activations
from ..runner import run as run_analysis
from . import catalog
from .clip_glyph_model import MODE_NONE, PLANTED_HOOK, ROLES, SHAPES, held_out_glyph_batch, planted_units
from .scores import Score, bootstrap_ratio_interval
from .technique import BenchContext, Technique

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel

__all__ = [
    "TECHNIQUES",
    "BUDGET",
    "REACH",
    "TOP",
    "MM_BUDGET",
    "MaxTextTruth",
    "max_text_truth",
    "score_max_text",
    "score_multimodal_units",
    "random_ranking_chance",
    "image_unit_directions",
]

REACH = 0.95  # a hit: the found string scores >= REACH x the brute-force maximum
MAX_LEN = 4  # words per string (the caption grammar's longest: "a colour texture shape")
# units per tower (evaluated; as many others fit the constant string), forward budget per unit, bootstrap resamples
BUDGET = {"quick": (2, 200, 200), "full": (8, 2000, 1000)}
TOP = 5  # multimodal_units: the planted unit must be in the top TOP, no decoy
# replicates, held-out shape images per replicate, word renderings per shape, random rankings
MM_BUDGET = {"quick": (2, 48, 12, 200), "full": (8, 300, 64, 1000)}
MM_START = 60_000  # replicates' held-out slices start here (benchmarks/clip_multimodal.py uses 10,000-40,000)
LEVEL = 0.95


# ============================================================================ max-activating text
def image_unit_directions(model: HookedVisionModel) -> Tuple[Optional[torch.Tensor], str]:
    """``([units, embed] or None, how)``: the image tower's last units as joint-space directions."""
    ok, _ = is_resnet_clip(model)
    if ok:
        n = model.source.visual.attnpool.v_proj.in_features
        return torch.stack([image_unit_direction(model, c) for c in range(n)]).float(), "resnet_attnpool"
    if is_vit_clip(model):  # the last MLP's neurons through the final LayerNorm (scale frozen) and the projection
        n = model.source.visual.transformer.resblocks[-1].mlp.c_proj.weight.shape[1]
        return torch.stack([image_unit_direction(model, c) for c in range(n)]).float(), "vit_mlp_ln_post"
    return None, "no joint-space direction for this image tower"


def _text_hook(model: HookedVisionModel) -> Tuple[str, int]:
    blocks = model.source.transformer.resblocks
    return f"text.blocks.{len(blocks) - 1}.mlp.hook_post", int(blocks[-1].mlp.c_fc.out_features)


def _objectives(model: HookedVisionModel, memo: Dict[Any, Any]) -> Dict[str, TextObjective]:
    """Every last-layer unit of both towers as a :class:`TextObjective` (keys ``text:u`` / ``image:u``)."""
    hook, n_text = _text_hook(model)
    out = {f"text:{u}": TextObjective(model, f"{hook}:{u}", hook=hook, unit=u, max_len=MAX_LEN, memo=memo)
           for u in range(n_text)}  # fmt: skip
    dirs, _ = image_unit_directions(model)
    if dirs is not None:
        for u in range(len(dirs)):
            out[f"image:{u}"] = TextObjective(model, f"image_unit:{u}", direction=dirs[u], max_len=MAX_LEN, memo=memo)
    return out


@dataclass
class MaxTextTruth:
    """The trained model's brute force: per unit, every string's score (``strings`` order)."""

    strings: List[Tuple[int, ...]]
    index: Dict[Tuple[int, ...], int]
    scores: Dict[str, np.ndarray]  # unit key -> [n strings]
    units: List[str]  # evaluated units (positive maximum), text first
    fit_units: List[str]  # the constant string's fitting units (disjoint)
    constant: Tuple[int, ...]  # the constant baseline's string
    image_directions: str

    def grade(self, unit: str, seq: Tuple[int, ...]) -> float:
        """``score(seq) / max`` under the trained model."""
        s = self.scores[unit]
        return float(s[self.index[seq]] / s.max())

    def chance(self, unit: str) -> float:
        """The fraction of all strings reaching :data:`REACH` of the maximum (one uniformly drawn string)."""
        s = self.scores[unit]
        return float((s >= REACH * s.max()).mean())


_TRUTHS: Dict[Tuple[str, int, bool], MaxTextTruth] = {}  # the last trained model's truth per (zoo name, seed, quick)


def _all_string_rows(model: HookedVisionModel, obj: TextObjective, strings: List[Tuple[int, ...]], hook: str):
    """One pass of every string through the text tower: the ``hook`` row at the pooled token ``[N, hidden]`` and
    the unit-norm text embedding ``[N, embed]``."""
    rows, embs = [], []
    got: Dict[str, torch.Tensor] = {}

    def keep(t: torch.Tensor, hook: Any) -> None:
        got["act"] = t

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, keep)]):
        for i in range(0, len(strings), 4096):
            tokens = obj.tokens(strings[i : i + 4096])
            embs.append(F.normalize(model.adapter.encode_text(tokens).float(), dim=-1))
            pos = model.adapter.text.pool_index(tokens)
            rows.append(got.pop("act")[torch.arange(len(tokens)), pos].float())
    return torch.cat(rows), torch.cat(embs)


def max_text_truth(model: HookedVisionModel, quick: bool, seed: int) -> MaxTextTruth:
    """Brute force every string of 1..:data:`MAX_LEN` vocabulary words for every last-layer unit of ``model``;
    draw the evaluated and the constant-fitting units (seeded, positive maximum only) and fit the constant."""
    k, _, _ = BUDGET["quick" if quick else "full"]
    objs = _objectives(model, {})
    first = next(iter(objs.values()))
    vocab = first.vocab
    strings = [s for n in range(1, MAX_LEN + 1) for s in itertools.product(vocab, repeat=n)]
    index = {s: i for i, s in enumerate(strings)}
    hook, _ = _text_hook(model)
    rows, embs = _all_string_rows(model, first, strings, hook)
    dirs, how = image_unit_directions(model)
    g = np.random.default_rng(seed)
    scores: Dict[str, np.ndarray] = {}
    units: List[str] = []
    fit: List[str] = []
    for tower in ("text", "image"):
        keys = [key for key in objs if key.startswith(tower + ":")]
        picked: List[str] = []
        for j in g.permutation(len(keys)):
            if len(picked) == 2 * k:
                break
            key = keys[int(j)]
            u = int(key.split(":")[1])
            if tower == "text":
                arr = rows[:, u].double().numpy()
            else:
                assert dirs is not None
                arr = (embs @ F.normalize(dirs[u], dim=0)).double().numpy()
            if arr.max() > 0:
                scores[key] = arr
                picked.append(key)
        units += picked[:k]
        fit += picked[k:]
    # the constant: best mean normalized score over the fitting units (input-independent, fitted elsewhere)
    norm = np.stack([(scores[u] - scores[u].mean()) / (scores[u].max() - scores[u].mean()) for u in fit])
    constant = strings[int(norm.mean(0).argmax())]
    return MaxTextTruth(strings, index, scores, units, fit, constant, how)


def score_max_text(model: HookedVisionModel, ctx: BenchContext, truth: Optional[MaxTextTruth] = None) -> Score:
    """The ``max_activating_text`` cell (see the module docstring)."""
    quick = ctx.quick
    k, budget, n_boot = BUDGET["quick" if quick else "full"]
    key = (ctx.entry.name, ctx.seed, quick)
    if truth is None:
        if not ctx.randomized:
            truth = _TRUTHS[key] = max_text_truth(model, quick, ctx.seed)
        else:
            truth = _TRUTHS.get(key) or max_text_truth(catalog.load(ctx.entry.name), quick, ctx.seed)
    objs = _objectives(model, {})
    found: Dict[str, Dict[str, float]] = {}
    texts: Dict[str, str] = {}
    for u in truth.units:
        obj = objs[u]
        d = discrete_search(obj, budget=budget, seed=ctx.seed)
        r = random_search(obj, budget=budget, seed=ctx.seed)
        found[u] = {
            "discrete": truth.grade(u, d.seqs[0]),
            "random": truth.grade(u, r.seqs[0]),
            "constant": truth.grade(u, truth.constant),
            "forwards": float(d.forwards),
        }
        texts[u] = d.texts[0]
    chance_u = np.array([truth.chance(u) for u in truth.units])
    chance = float(chance_u.mean())

    def hits(m: str) -> np.ndarray:
        return np.array([found[u][m] >= REACH for u in truth.units], dtype=float)

    def entry(m: str) -> Dict[str, Any]:
        h = hits(m)
        lo, hi = bootstrap_ratio_interval(h, chance_per_item=chance_u, n_resamples=n_boot, seed=ctx.seed, level=LEVEL)
        return {
            "score": round(float(h.mean()), 4),
            "chance": round(chance, 6),
            "normalized": round(Score(float(h.mean()), chance).normalized, 4),
            "interval": [round(lo, 4), round(hi, 4)],
        }

    main = entry("discrete")
    tower = {
        t: round(float(hits("discrete")[[u.startswith(t) for u in truth.units]].mean()), 4) for t in ("text", "image")
    }
    details = {
        "interval": main["interval"],
        "baselines": {m: entry(m) for m in ("constant", "random")},
        "method": "discrete (gradient-guided beam search, visionlens.plugins.clip_max_activating_text)",
        "reach": REACH,
        "budget_forwards_per_unit": budget,
        "n_units": len(truth.units),
        "units": truth.units,
        "hit_rate_by_tower": tower,
        "fraction_of_max": {u: round(v["discrete"], 4) for u, v in found.items()},
        "fraction_of_max_random": {u: round(v["random"], 4) for u, v in found.items()},
        "best_text": texts,
        "constant_text": objs[truth.units[0]].decode(truth.constant),
        "n_strings_brute_force": len(truth.strings),
        "image_unit_directions": truth.image_directions,
        "graded_against": "the trained model's brute force" if ctx.randomized else "this model's brute force",
    }
    return Score(float(hits("discrete").mean()), chance, details)


def _max_text_support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    tok = getattr(getattr(model, "adapter", None), "tokenizer", None)
    words = len(getattr(tok, "encoder", {}) or {})
    if not words or words > 64:
        return False, "needs a known small vocabulary for the brute-force truth (the zoo CLIP's word tokenizer)"
    return True, ""


# ============================================================================ multimodal units
def random_ranking_chance(n_units: int, top: int = TOP, n_decoys: int = 2) -> float:
    """P(a uniformly random ranking puts the planted unit in the top ``top`` and none of ``n_decoys`` decoys)."""
    p_in = top / n_units
    rest = n_units - 1
    p_no_decoy = math.comb(rest - n_decoys, top - 1) / math.comb(rest, top - 1)
    return p_in * p_no_decoy


def _success(score: torch.Tensor, units: Dict[str, int]) -> bool:
    top = set(score.argsort(descending=True)[:TOP].tolist())
    return units["multimodal"] in top and units["shape"] not in top and units["word"] not in top


def _weight_only(model: HookedVisionModel) -> torch.Tensor:
    """``[units]``: the norm of what each last-block channel writes into the joint space (attention pool)."""
    ok, _ = is_resnet_clip(model)
    if ok:
        n = model.source.visual.attnpool.v_proj.in_features
        return torch.stack([image_unit_direction(model, c).norm() for c in range(n)]).float()
    return torch.zeros(0)


def score_multimodal_units(model: HookedVisionModel, ctx: BenchContext, training_seed: int = 0) -> Score:
    """The ``multimodal_units`` cell (see the module docstring)."""
    n_rep, n_img, n_words, n_random = MM_BUDGET["quick" if ctx.quick else "full"]
    units = planted_units(training_seed)
    g = torch.Generator().manual_seed(ctx.seed)
    weight = _weight_only(model)
    methods = ("joint", "image_only", "text_only", "caption", "magnitude", "constant", "random")
    success: Dict[str, List[List[float]]] = {m: [] for m in methods}
    ranks: List[Dict[str, Dict[str, int]]] = []
    for rep in range(n_rep):
        images, f = held_out_glyph_batch(n_img, mode=MODE_NONE, start=MM_START + 10_000 * rep)
        labels = f["shape"].long()
        seed = ctx.seed + rep
        r = run_analysis(
            "multimodal_neurons",
            model,
            images,
            concepts=list(SHAPES),
            labels=labels.tolist(),
            hook=PLANTED_HOOK,
            seed=seed,
            attack=False,
            n_text_images=n_words,
            max_images=n_img,
        )
        bg = float(r.meta["text_background"])
        words = concept_word_images(list(SHAPES), n_words, int(images.shape[-1]), bg, seed=seed, scale=1)
        acts, wacts = unit_activations(model, images, PLANTED_HOOK), unit_activations(model, words, PLANTED_HOOK)
        row: Dict[str, List[float]] = {m: [] for m in methods}
        rk: Dict[str, Dict[str, int]] = {}
        for c, shape in enumerate(SHAPES):
            u = {role: units[role][shape] for role in ROLES}
            scores = {
                "joint": r.tensors["joint"][c],
                "image_only": r.tensors["selectivity_image"][c],
                "text_only": r.tensors["selectivity_text"][c],
                "caption": r.tensors["caption_attribution"][c],
                "magnitude": torch.cat([acts[labels == c], wacts[c * n_words : (c + 1) * n_words]]).mean(0),
                "constant": weight,
            }
            for m, s in scores.items():
                row[m].append(float(_success(s, u)))
            n_units = int(r.tensors["joint"].shape[-1])
            rand = [float(_success(torch.rand(n_units, generator=g), u)) for _ in range(n_random)]
            row["random"].append(float(np.mean(rand)))
            order = r.tensors["joint"][c].argsort(descending=True)
            pos = torch.empty_like(order)
            pos[order] = torch.arange(1, len(order) + 1)
            rk[shape] = {role: int(pos[u[role]]) for role in ROLES}
        for m in methods:
            success[m].append(row[m])
        ranks.append(rk)
    n_units = int(r.tensors["joint"].shape[-1])
    chance = random_ranking_chance(n_units)
    boot = np.random.default_rng(ctx.seed).integers(0, n_rep, (1000, n_rep))

    def entry(m: str) -> Dict[str, Any]:
        per_rep = np.asarray(success[m]).mean(1)  # [replicates]
        s = float(per_rep.mean())
        res = (per_rep[boot].mean(1) - chance) / (1 - chance)
        lo, hi = np.percentile(res, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        return {
            "score": round(s, 4),
            "chance": round(chance, 6),
            "normalized": round(Score(s, chance).normalized, 4),
            "interval": [round(float(lo), 4), round(float(hi), 4)],
        }

    main = entry("joint")
    details = {
        "interval": main["interval"],
        "baselines": {m: entry(m) for m in ("constant", "random", "image_only", "text_only", "caption", "magnitude")},
        "hook": PLANTED_HOOK,
        "top": TOP,
        "n_units": n_units,
        "replicates": n_rep,
        "images_per_replicate": n_img,
        "word_images_per_shape": n_words,
        "planted_units": units,
        "training_seed": training_seed,
        "joint_ranks": ranks,  # per replicate and shape: the planted units' ranks under the joint score
        "interval_over": "replicates (percentile bootstrap, 1000 resamples)",
    }
    return Score(main["score"], chance, details)


def _multimodal_support(model: HookedVisionModel, entry: Any) -> Tuple[bool, str]:
    if "planted_units_seed0" not in (entry.config or {}):
        return False, "no planted multimodal units (only zoo:clip_glyph has them)"
    ok, why = is_resnet_clip(model)
    if not ok:
        return False, f"the planted units live in a ModifiedResNet tower: {why}"
    return True, ""


def _mm_score(model: HookedVisionModel, ctx: BenchContext) -> Score:
    seed = int(catalog.model_card(ctx.entry.name).get("seed", 0)) if catalog.card_path(ctx.entry.name).is_file() else 0
    return score_multimodal_units(model, ctx, training_seed=seed)


TECHNIQUES: List[Technique] = [
    Technique(
        "max_activating_text",
        "max-activating text reaches the brute-force best",
        "Gradient-guided discrete search over caption-word strings (1-4 words) for the last-layer units of both "
        "towers (text: last MLP neurons at the pooled token; image: each unit's joint-space direction, cosine); "
        "score = fraction of sampled units (2 + 2 quick, 8 + 8 full) whose best string reaches 0.95 of the "
        "brute-force maximum over all 16,104 strings within the forward budget (200 quick, 2,000 full); chance = "
        "one uniformly drawn string; baselines: random strings with the same budget, one constant string fitted "
        "on other units; randomized copies graded against the trained model's brute force.",
        score_max_text,
        plugin="max_activating_text",
        kinds=("clip",),
        extra_supports=_max_text_support,
    ),
    Technique(
        "multimodal_units",
        "multimodal units found",
        "multimodal_neurons' joint ranking (min of standardized image, written-word and caption scores) of the "
        "256 last-block channels per shape on held-out replicates of zoo:clip_glyph; success = the planted "
        "multimodal unit in the top 5 and neither decoy (shape-only, word-only); chance = a random ranking; "
        "baselines: a weight-only ranking (constant), random rankings, and the single-score rankings (image "
        "only, text only, caption, mean activation) in the details.",
        _mm_score,
        plugin="multimodal_neurons",
        kinds=("clip",),
        extra_supports=_multimodal_support,
    ),
]
