"""``zoo:clip_glyph``: the zoo CLIP trained on images that sometimes carry the *written* name of their shape,
with planted multimodal units.

Same open_clip ``CLIP`` as ``zoo:clip`` (:func:`visionlens.zoo.clip_model.build_clip`: ModifiedResNet image
tower at 32 px, word-level text tower) and the same contrastive training on the same 12,000 planted-shapes
images, except that each training image, independently (seeded stream, :func:`glyph_modes`):

* p = 0.5 stays as it is (caption as for ``zoo:clip``);
* p = 0.25 also carries its shape's name, written in the built-in 3 x 5 bitmap font
  (:mod:`visionlens.plugins.glyphs`) at a seeded position in a light grey (caption unchanged);
* p = 0.25 is a *word-only* image: the object is erased (background grey) and only its shape's name is
  written; its caption is ``"a {shape}"`` (colour and texture are not visible, so captions naming them do
  not match it).

So the image tower must read words to match word-only images, and a written word can move the zero-shot
prediction (the typographic attack). 32 px is kept: ``"triangle"`` (31 px wide) fits, and the same
architecture as ``zoo:clip`` keeps every CLIP technique comparable.

Planted units (:data:`PLANTED_HOOK`, the last ResNet block's output, 256 channels at 1 x 1): for each
shape ``c``, three channels drawn by :func:`planted_units` from the training seed are pushed, by an
auxiliary squared loss on their spatial mean, towards ``PLANTED_LEVEL`` when their condition holds and to 0
otherwise:

==============  =====================================================
``multimodal``  shape ``c`` drawn, or the word ``c`` written (OR)
``shape``       shape ``c`` drawn (a decoy: blind to the word)
``word``        the word ``c`` written (a decoy: blind to the shape)
==============  =====================================================

The decoys make "responds to the shape" and "responds to the word" separately checkable: a ranking that
calls a shape-only or word-only unit multimodal is wrong by construction. Nothing routes the embedding
through these units; whether the attention pool reads them is left to training (and measured by the
``multimodal_neurons`` analysis and the typographic attack).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..clip import zero_shot_head, zero_shot_logits
from ..hooked_model import HookedVisionModel
from ..plugins import glyphs
from . import data as zdata
from .classifiers import HELD_OUT_START
from .clip_model import (
    BATCH_SIZE,
    CONFIG,
    IMAGE_SIZE,
    LR,
    TOKENIZER,
    TRAIN_N,
    TRAIN_SEED,
    WEIGHT_DECAY,
    build_clip,
    caption_targets,
    clip_optimizer,
    contrastive_loss,
    jitter_and_caption_subsets,
    requires,
    training_set,
    wrap_clip,
    zero_shot_accuracies,
)
from .entry import TrainRun, ZooEntry

SHAPES = tuple(zdata.SHAPES)
MODE_P = (0.5, 0.25, 0.25)  # none, shape + its written name, written name only
MODE_NONE, MODE_BOTH, MODE_WORD = 0, 1, 2
GLYPH_STREAM = 0x917  # the glyph decisions' seed stream (independent of the image stream)
PLANTED_MODULE = "visual.layer4"  # raw module whose output carries the planted units
PLANTED_HOOK = "visual.layer4.0.act3.hook_out"  # its hook on the HookedVisionModel
PLANTED_LEVEL = 3.0  # target activation of a planted unit when its condition holds
AUX_WEIGHT = 1.0
ROLES = ("multimodal", "shape", "word")
N_CHANNELS = 256
NON_SHAPE_WORD = "window"  # control word for the typographic attack (not in the vocabulary)
GLYPH_THRESHOLDS = {
    "zero_shot_shape_accuracy": 0.90,
    "zero_shot_word_only_accuracy": 0.90,
    "planted_min_auc": 0.95,
}


# ----------------------------------------------------------------------------- planted units
def planted_units(seed: int = 0) -> Dict[str, Dict[str, int]]:
    """``{role: {shape: channel}}``: the 9 planted channels of training seed ``seed`` (distinct, seeded)."""
    rng = np.random.default_rng([int(seed), 0x3A1])
    ch = [int(c) for c in rng.choice(N_CHANNELS, len(ROLES) * len(SHAPES), replace=False)]
    return {r: {s: ch[i * len(SHAPES) + j] for j, s in enumerate(SHAPES)} for i, r in enumerate(ROLES)}


def unit_targets(shape: torch.Tensor, word: torch.Tensor, has_object: torch.Tensor) -> torch.Tensor:
    """``float [B, 9]`` targets (0/1) of the planted units, in :func:`planted_units` order (role-major)."""
    cols = []
    for role in ROLES:
        for c in range(len(SHAPES)):
            s = has_object & (shape == c)
            w = word == c
            cols.append(s | w if role == "multimodal" else s if role == "shape" else w)
    return torch.stack(cols, 1).float()


# ----------------------------------------------------------------------------- data
def glyph_modes(n: int, seed: int = TRAIN_SEED, start: int = 0) -> Dict[str, np.ndarray]:
    """Per example: ``mode`` (0 none, 1 shape + word, 2 word only), placement ``y, x`` and grey ``level``."""
    rng = np.random.default_rng([int(seed), int(start), GLYPH_STREAM])
    mode = rng.choice(3, n, p=MODE_P)
    return {"mode": mode, "u": rng.random((n, 3))}


def compose(images: torch.Tensor, factors: Dict[str, Any], modes: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """Apply the glyph modes to ``images`` ``float [N, 3, H, W]``: erase objects of word-only examples, write
    the shape's name where the mode says. Returns ``images``, ``word`` (shape index or -1), ``has_object``."""
    f = {k: np.asarray(v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in factors.items()}
    size = images.shape[-1]
    mode = modes["mode"]
    out = images.clone()
    word_only = torch.from_numpy(mode == MODE_WORD)
    if word_only.any():
        obj = torch.from_numpy(zdata._object_masks({k: f[k][mode == MODE_WORD] for k in f}, size))
        bg = round(zdata.BACKGROUND * 255) / 255
        sub = out[word_only]
        out[word_only] = torch.where(obj[:, None], torch.tensor(bg, dtype=out.dtype), sub)
    shape = f["shape"].astype(np.int64)
    word = np.where(mode == MODE_NONE, -1, shape)
    for c, name in enumerate(SHAPES):
        idx = np.nonzero(word == c)[0]
        if not len(idx):
            continue
        m = glyphs.word_mask(name)
        u = modes["u"][idx]
        ys = (u[:, 0] * (size - m.shape[0] + 1)).astype(int).tolist()
        xs = (u[:, 1] * (size - m.shape[1] + 1)).astype(int).tolist()
        lv = (glyphs.WORD_LEVELS[0] + (glyphs.WORD_LEVELS[1] - glyphs.WORD_LEVELS[0]) * u[:, 2]).tolist()
        out[torch.from_numpy(idx)] = glyphs.paste(out[torch.from_numpy(idx)], m, ys, xs, lv)
    return {"images": out, "word": torch.from_numpy(word), "has_object": ~word_only}


@lru_cache(maxsize=2)
def glyph_training_set(n: int = TRAIN_N) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """``(images uint8 [N, 3, 32, 32], factors + word + has_object)``: ``zoo:clip``'s training images with glyphs."""
    images, factors = training_set(n)
    d = compose(images.float() / 255, factors, glyph_modes(n, TRAIN_SEED, 0))
    f = {k: torch.as_tensor(v) for k, v in factors.items()}
    f.update(word=d["word"], has_object=d["has_object"])
    return (d["images"] * 255).round().to(torch.uint8), f


def held_out_glyph_batch(
    n: int = 1000, mode: Optional[int] = None, start: int = 0
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Held-out images (``zoo:clip``'s held-out slice, from ``start``) with glyph modes drawn from their own
    stream, or all in ``mode``; returns ``(images float [n, 3, 32, 32], factors + word + has_object)``."""
    b = zdata.make_batch(n, seed=TRAIN_SEED, start=HELD_OUT_START + start, size=IMAGE_SIZE, trigger_fraction=0.0)
    modes = glyph_modes(n, TRAIN_SEED, HELD_OUT_START + start)
    if mode is not None:
        modes["mode"] = np.full(n, mode)
    d = compose(b.images, b.factors, modes)
    f = dict(b.factors)
    f.update(word=d["word"], has_object=d["has_object"])
    return d["images"], f


# ----------------------------------------------------------------------------- training
def train_clip_glyph(
    module: nn.Module,
    run: TrainRun,
    lr: Optional[float] = None,
    batch_size: Optional[int] = None,
    aux_weight: float = AUX_WEIGHT,
    n_train: int = TRAIN_N,
    log_every: int = 50,
) -> None:
    """``zoo:clip``'s schedule and loss on the glyph images, plus the planted-unit loss (see the module docstring)."""
    lr = LR if lr is None else lr
    batch_size = BATCH_SIZE if batch_size is None else batch_size
    images, f = glyph_training_set(n_train)
    colour, texture, shape = f["colour"].long(), f["texture"].long(), f["shape"].long()
    word, has_obj = f["word"].long(), f["has_object"]
    units = planted_units(run.seed)
    module.visionlens_train_seed = run.seed  # plain attribute (not in the state dict): which units are planted
    cols = torch.tensor([units[r][s] for r in ROLES for s in SHAPES])
    n = len(shape)
    g = torch.Generator().manual_seed(run.seed)
    steps = run.step_budget()
    opt, sched = clip_optimizer(module, lr, WEIGHT_DECAY, steps)
    store: Dict[str, torch.Tensor] = {}
    handle = module.get_submodule(PLANTED_MODULE).register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    perm, pos = torch.randperm(n, generator=g), 0
    acc: Dict[str, float] = {"loss": 0.0, "aux": 0.0, "match": 0.0}
    try:
        for step in range(1, steps + 1):
            if pos + batch_size > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            x, keep = jitter_and_caption_subsets(images[idx].float() / 255, g)
            keep = keep.clone()
            obj = has_obj[idx]
            keep[~obj] = torch.tensor([False, False, True])  # word-only images: "a {shape}"
            c, t, s = colour[idx].clone(), texture[idx].clone(), shape[idx]
            c[~obj], t[~obj] = -1, -1  # nothing to match a colour or texture caption
            uniq, match = caption_targets(c, t, s, keep)
            img_emb = module.encode_image(x)
            txt_emb = module.encode_text(TOKENIZER(uniq))
            loss, logits = contrastive_loss(img_emb, txt_emb, match, module.logit_scale)
            a = store.pop("a").mean((2, 3))[:, cols]
            aux = ((a - PLANTED_LEVEL * unit_targets(s, word[idx], obj)) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            (loss + aux_weight * aux).backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                module.logit_scale.clamp_(0, math.log(100))
            acc["loss"] += float(loss.detach())
            acc["aux"] += float(aux.detach())
            acc["match"] += float(match[torch.arange(len(idx)), logits.argmax(1)].float().mean())
            if step % log_every == 0 or step == steps:
                k = log_every if step % log_every == 0 else step % log_every
                run.log(
                    step,
                    loss=acc["loss"] / k,
                    planted_loss=acc["aux"] / k,
                    train_match_accuracy=acc["match"] / k,
                    lr=sched.get_last_lr()[0],
                    logit_scale=float(module.logit_scale.detach().exp()),
                )
                acc = dict.fromkeys(acc, 0.0)
            run.step_done(step, module)
    finally:
        handle.remove()


# ----------------------------------------------------------------------------- evaluation
def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counted half."""
    d = pos[:, None] - neg[None, :]
    return float((d > 0).double().mean() + 0.5 * (d == 0).double().mean())


@torch.no_grad()
def shape_predictions(model: HookedVisionModel, images: torch.Tensor) -> torch.Tensor:
    """Zero-shot shape predictions with the prompt ``"a {}"``."""
    head = zero_shot_head(model, list(SHAPES), ["a {}"], attach=False)
    return torch.cat(
        [zero_shot_logits(model, images[i : i + 500], head).argmax(-1) for i in range(0, len(images), 500)]
    )


@torch.no_grad()
def planted_auc(model: HookedVisionModel, seed: int = 0, n: int = 600) -> Dict[str, float]:
    """Per planted unit, the AUC of its spatial-mean activation separating the held-out images where its
    condition holds from those where it does not (mixed glyph modes)."""
    images, f = held_out_glyph_batch(n)
    _, cache = model.run_with_cache(images, names_filter=lambda h: h == PLANTED_HOOK)
    a = cache[PLANTED_HOOK].mean((2, 3))
    tgt = unit_targets(f["shape"].long(), f["word"].long(), f["has_object"]).bool()
    out = {}
    for j, (role, shape) in enumerate((r, s) for r in ROLES for s in SHAPES):
        u = planted_units(seed)[role][shape]
        out[f"{role}_{shape}"] = _auc(a[tgt[:, j], u], a[~tgt[:, j], u])
    return out


@torch.no_grad()
def typographic_attack(model: HookedVisionModel, n: int = 600, seed: int = 1) -> Dict[str, float]:
    """Zero-shot shape accuracy on held-out shape images, clean and with text written on them: a wrong shape
    name (the attack), the right name, random strokes and a non-shape word (controls); attack success is the
    share of attacked images predicted as the written word."""
    images, f = held_out_glyph_batch(n, mode=MODE_NONE)
    shape = f["shape"].long()
    wrong = (shape + 1 + torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))) % 3
    out = {"clean": float((shape_predictions(model, images) == shape).float().mean())}
    attacked = images.clone()
    right = images.clone()
    for c, name in enumerate(SHAPES):
        i = wrong == c
        attacked[i] = glyphs.write_on(images[i], name, seed=seed + c)
        i = shape == c
        right[i] = glyphs.write_on(images[i], name, seed=seed + c)
    pred = shape_predictions(model, attacked)
    out["wrong_word"] = float((pred == shape).float().mean())
    out["attack_success"] = float((pred == wrong).float().mean())
    out["right_word"] = float((shape_predictions(model, right) == shape).float().mean())
    strokes = glyphs.write_on(images, 6, seed=seed)
    out["strokes"] = float((shape_predictions(model, strokes) == shape).float().mean())
    other = glyphs.write_on(images, NON_SHAPE_WORD, seed=seed)
    out["non_shape_word"] = float((shape_predictions(model, other) == shape).float().mean())
    return out


def evaluate_clip_glyph(module: nn.Module, n: int = 1000) -> Dict[str, float]:
    """Zero-shot accuracies on clean held-out images, word-only accuracy, the typographic attack, planted AUCs."""
    was = module.training
    module.eval()
    try:
        model = wrap_clip(module)
        images, f = held_out_glyph_batch(n, mode=MODE_NONE)
        b = zdata.PlantedBatch(images, f["shape"].long(), {k: f[k] for k in ("shape", "colour", "texture")}, {})
        metrics = zero_shot_accuracies(model, b)
        words, fw = held_out_glyph_batch(n, mode=MODE_WORD)
        metrics["zero_shot_word_only_accuracy"] = float((shape_predictions(model, words) == fw["shape"]).float().mean())
        for k, v in typographic_attack(model).items():
            metrics[f"attack_{k}_accuracy" if k != "attack_success" else k] = v
        aucs = planted_auc(model, seed=getattr(module, "visionlens_train_seed", 0))
        metrics.update({f"planted_auc_{k}": v for k, v in aucs.items()})
        metrics["planted_min_auc"] = min(aucs.values())
    finally:
        module.train(was)
    metrics["logit_scale"] = float(module.logit_scale.exp())
    metrics["held_out_n"] = float(n)
    return metrics


ENTRY = ZooEntry(
    name="clip_glyph",
    family="clip",
    kind="clip",
    description=(
        "zoo:clip's open_clip CLIP (ModifiedResNet tower, word-level text tower) trained on planted shapes of which "
        "half carry their shape's written name (a quarter with the object erased: word only), with nine planted "
        "units at visual.layer4 (per shape: multimodal shape-or-word, shape-only and word-only)."
    ),
    build=build_clip,
    train=train_clip_glyph,
    evaluate=evaluate_clip_glyph,
    thresholds=dict(GLYPH_THRESHOLDS),
    default_steps=1000,
    config={
        "constructor": "visionlens.zoo.clip_model.build_clip (as zoo:clip)",
        **CONFIG,
        "tokenizer": "visionlens.zoo.clip_model.WordTokenizer (as zoo:clip)",
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "glyph_modes": {"none": MODE_P[0], "shape_and_word": MODE_P[1], "word_only": MODE_P[2]},
        "font": "visionlens.plugins.glyphs: built-in 3x5 bitmap font, 1 px gaps, grey U(0.85, 1.0), seeded place",
        "planted_hook": PLANTED_HOOK,
        "planted_units_seed0": planted_units(0),
        "planted_level": PLANTED_LEVEL,
        "planted_loss": f"{AUX_WEIGHT} x mean squared error of the units' spatial mean to {PLANTED_LEVEL} x condition",
        "zero_shot_templates": ["a {}"],
    },
    data={
        "generator": "visionlens.zoo.data.make_batch + visionlens.zoo.clip_glyph_model.compose",
        "train": {"n": TRAIN_N, "seed": TRAIN_SEED, "start": 0, "trigger_fraction": 0.0, "glyph_stream": GLYPH_STREAM},
        "held_out": {"n": 1000, "seed": TRAIN_SEED, "start": HELD_OUT_START},
        "image_size": IMAGE_SIZE,
        "normalization": "none (inputs in [0, 1])",
    },
    wrap=wrap_clip,
    requires=requires,
    # a column of the transfer table (every CLIP technique runs on it; its planted units are the multimodal_units
    # row's truth); benchmarks/clip_multimodal.py scores them in more depth
    benchmark=True,
)

ENTRIES = [ENTRY]
