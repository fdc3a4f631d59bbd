"""``multimodal_neurons``: image-tower units of a CLIP model that respond to a concept's images, its written
name and its caption, and how much each moves a typographic attack.

For each concept ``c`` (a word such as ``"circle"``) and each unit ``u`` of one image-tower hook
(channels of a conv map, averaged over positions; neurons of a token map, averaged over tokens):

* **image**: the difference of the unit's mean activation between the images of ``c`` and the images of
  the other concepts (``labels``, or the model's own zero-shot predictions);
* **text**: the same difference between images of the *written word* ``c`` and images of the other
  concepts' words, drawn offline in the built-in bitmap font (:mod:`visionlens.plugins.glyphs`) on a flat
  canvas of the inputs' median grey at seeded positions and grey levels;

  both divided by the unit's standard deviation over all the probe images (pictures and words pooled), so
  the two modalities are measured on one scale: a unit that swings widely on words and barely on pictures
  has a small image score even when that small difference is consistent (``selectivity="dprime"``
  divides each by its own modality's pooled within-class spread instead, Cohen's ``d'``, which rates such
  a consistent small difference highly);
* **caption**: how much the unit pushes the image embedding towards the caption ``template.format(c)``:
  activation x gradient of the caption's zero-shot margin (cosine to ``c``'s text direction minus the mean
  cosine to the other concepts'), averaged over ``c``'s images and its word images (a first-order estimate
  of what removing the unit costs the caption).

Each component is divided by its standard deviation across units (not centred: 0 means no response, and
centring on the median unit would lift a unit with no response above the many units with a negative one)
and the **joint** score is their minimum, so a unit ranks high only when it is high on all three: a unit
that responds only to the shape, or only to the written word, scores low. The single-component scores
are in the result too (the baselines a joint ranking has to beat).

**Typographic attack.** Every image of concept ``y`` gets a wrong concept's name written on it (one drawn
per image, seeded); zero-shot accuracy over the concepts is measured clean, attacked, and with controls:
the right name, random glyph-like strokes of the same length (:func:`~visionlens.plugins.glyphs.stroke_mask`)
and a word that names no concept (``control_word``). For each of the ``attack_units`` top-ranked units of
each concept ``c``, the attacked images that carry the word ``c`` are run again with that unit restored to
its value on the clean image (activation patching): the drop in the share predicted as ``c`` is how much of
the attack goes through the unit; restoring the whole hook gives the total, and restoring as many random
units gives the chance level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.clip import both_towers_hooked, zero_shot_head
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hookspecs import hookimpl
from visionlens.plugins import glyphs
from visionlens.results import Result, Table, new_figure

if TYPE_CHECKING:
    from visionlens.clip import ZeroShotHead
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "MultimodalNeurons",
    "MultimodalNeuronsResult",
    "default_hook",
    "unit_activations",
    "dprime",
    "selectivity",
    "caption_attribution",
    "concept_word_images",
    "standardize",
    "attack_images",
    "hook_activations",
    "restore_predictions",
]


# ============================================================================ units and scores
def default_hook(model: HookedVisionModel) -> str:
    """The last block output of the image tower: ``visual.layerN.B.act3.hook_out`` for a ModifiedResNet,
    ``visual.blocks.{L-1}.mlp.hook_post`` (MLP neurons) for a ViT."""
    names = [n for n in model.hook_dict if n.startswith("visual.")]
    mlp = sorted((n for n in names if n.startswith("visual.blocks.") and n.endswith(".mlp.hook_post")), key=_index)
    if mlp:
        return mlp[-1]
    act = [n for n in names if n.startswith("visual.layer") and n.endswith(".act3.hook_out")]
    if act:
        return max(act, key=lambda n: (int(n.split(".")[1][5:]), int(n.split(".")[2])))
    raise ConfigError("multimodal_neurons: no default image-tower hook (give hook=...).")


def _index(name: str) -> int:
    return int(name.split(".")[2])


def _reduce(t: Tensor) -> Tensor:
    """``[B, C, H, W]`` -> mean over positions; ``[B, T, D]`` -> mean over tokens; ``[B, D]`` unchanged."""
    if t.ndim == 4:
        return t.mean((2, 3))
    if t.ndim == 3:
        return t.mean(1)
    return t


def _unit_axis(t: Tensor) -> int:
    return 1 if t.ndim == 4 else t.ndim - 1


def unit_activations(model: HookedVisionModel, images: Tensor, hook: str, batch: int = 256) -> Tensor:
    """``[N, units]``: every unit's spatial (token) mean activation at ``hook``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            _, cache = model.run_with_cache(images[i : i + batch], names_filter=lambda n: n == hook)
            out.append(_reduce(cache[hook]).float())
    return torch.cat(out)


def dprime(pos: Tensor, neg: Tensor) -> Tensor:
    """``(mean_pos - mean_neg) / sqrt((var_pos + var_neg) / 2)`` per column (``[N, U]`` inputs); 0 where both
    are constant."""
    num = pos.mean(0) - neg.mean(0)
    den = ((pos.var(0, unbiased=False) + neg.var(0, unbiased=False)) / 2).sqrt()
    return torch.where(den > 1e-8, num / den.clamp_min(1e-8), torch.zeros_like(num))


def selectivity(pos: Tensor, neg: Tensor, scale: Tensor) -> Tensor:
    """``(mean_pos - mean_neg) / scale`` per column; 0 where ``scale`` is 0."""
    num = pos.mean(0) - neg.mean(0)
    return torch.where(scale > 1e-8, num / scale.clamp_min(1e-8), torch.zeros_like(num))


def caption_attribution(
    model: HookedVisionModel, images: Tensor, hook: str, directions: Tensor, concept: int, batch: int = 128
) -> Tensor:
    """``[units]``: mean over ``images`` of activation x gradient of the zero-shot margin of ``concept``
    (cosine to ``directions[concept]`` minus the mean cosine to the other rows), summed over positions."""
    dirs = F.normalize(directions.float(), dim=-1)
    others = [k for k in range(len(dirs)) if k != concept]
    total: Optional[Tensor] = None
    store: dict[str, Tensor] = {}

    def keep(t: Tensor, hook: Any) -> None:
        t.retain_grad()
        store["a"] = t

    for i in range(0, len(images), batch):
        with torch.enable_grad(), model.hooks(fwd_hooks=[(hook, keep)]):
            emb = F.normalize(model.adapter.encode_image(images[i : i + batch]), dim=-1)
            cos = emb @ dirs.T.to(emb)
            margin = cos[:, concept] - cos[:, others].mean(1)
            margin.sum().backward()
        a = store.pop("a")
        attr = (a * a.grad).detach()
        attr = attr.sum((2, 3)) if attr.ndim == 4 else attr.sum(1) if attr.ndim == 3 else attr
        s = attr.sum(0)
        total = s if total is None else total + s
    model.zero_grad(set_to_none=True)
    assert total is not None
    return (total / len(images)).float()


def standardize(s: Tensor) -> Tensor:
    """``s / std`` along the last axis (units): scaled, not centred, since 0 means no response (no effect)."""
    return s / s.std(-1, keepdim=True).clamp_min(1e-12)


def glyph_scale(size: int, words: Sequence[str]) -> int:
    """The largest integer glyph scale (at most ``size // 32``) at which the longest word fits."""
    longest = max(glyphs.word_width(len(w)) for w in words)
    return max(1, min(size // 32, size // max(longest, 1)))


def concept_word_images(
    words: Sequence[str], n: int, size: int, background: float, seed: int = 0, scale: int = 1
) -> Tensor:
    """``[len(words) * n, 3, size, size]``: ``n`` renderings of each word (word-major), seeded per word."""
    return torch.cat(
        [
            glyphs.word_images(w, n, size=size, background=background, seed=seed + 101 * j, scale=scale)
            for j, w in enumerate(words)
        ]
    )


# ============================================================================ typographic attack
def attack_images(
    images: Tensor, labels: Tensor, words: Sequence[str], seed: int = 0, scale: int = 1
) -> tuple[Tensor, Tensor]:
    """Each image with one wrong word (drawn per image, seeded) written on it: ``(attacked, written index)``."""
    g = torch.Generator().manual_seed(seed)
    k = len(words)
    written = (labels + 1 + torch.randint(0, k - 1, (len(labels),), generator=g)) % k
    out = images.clone()
    for c, w in enumerate(words):
        i = written == c
        if i.any():
            out[i] = glyphs.write_on(images[i], w, seed=seed + 7 * c, scale=scale)
    return out, written


def _predict(model: HookedVisionModel, images: Tensor, head: ZeroShotHead, fwd_hooks: Optional[list] = None) -> Tensor:
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks or []):
        return head(model.adapter.encode_image(images)).argmax(-1)


def restore_predictions(
    model: HookedVisionModel, attacked: Tensor, clean_acts: Tensor, hook: str, units: Sequence[int], head: ZeroShotHead
) -> Tensor:
    """Zero-shot predictions of ``attacked`` with ``units`` at ``hook`` restored to ``clean_acts`` (the hook's
    full activations on the clean images, same order)."""
    idx = torch.as_tensor(list(units), dtype=torch.long)

    def patch(t: Tensor, hook: Any) -> Tensor:
        out = t.clone()
        ax = _unit_axis(t)
        src = clean_acts.to(t)
        out.index_copy_(ax, idx, src.index_select(ax, idx))
        return out

    return _predict(model, attacked, head, [(hook, patch)])


def hook_activations(model: HookedVisionModel, images: Tensor, hook: str) -> Tensor:
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=lambda n: n == hook)
    return cache[hook].detach()


# ============================================================================ analysis
class MultimodalNeuronsResult(Result):
    """Per-concept unit rankings (joint and per component) and the typographic attack."""

    def plot(self) -> Any:
        concepts = self.meta["concepts"]
        comps = ["z_image", "z_text", "z_caption"]
        fig = new_figure(4 * len(concepts), 3.2)
        for i, c in enumerate(concepts):
            ax = fig.add_subplot(1, len(concepts), i + 1)
            top = [int(u) for u in self.tensors["ranking"][i, :8]]
            data = np.stack([self.tensors[k][i, top].numpy() for k in comps])
            im = ax.imshow(data, cmap="RdBu_r", vmin=-abs(data).max(), vmax=abs(data).max(), aspect="auto")
            ax.set_yticks(range(3), ["image", "text", "caption"])
            ax.set_xticks(range(len(top)), [str(u) for u in top], fontsize=7)
            ax.set_title(f"{c}: top units (joint)", fontsize=9)
            fig.colorbar(im, ax=ax, shrink=0.8)
        return fig


class MultimodalNeurons(Analysis):
    """Rank image-tower units by joint response to a concept's images, written name and caption; typographic attack."""

    name = "multimodal_neurons"
    summary = (
        "CLIP: rank image-tower units by joint response to a concept's images, its written name (rendered "
        "glyphs) and its caption; a typographic attack (a wrong word written on the image) and how much of it "
        "goes through each found unit."
    )

    @dataclass
    class Config:
        concepts: list[str] = option(list, help="concept words (at least two); default: the attached head's classes")
        labels: list[int] = option(list, help="concept index per image (default: the model's zero-shot predictions)")
        templates: list[str] = option(["a {}"], help="caption templates with {}")
        hook: str = option("", help="image-tower hook (default: last block output / last MLP neurons)")
        n_text_images: int = option(64, min=2, max=100_000, help="renderings of each written word")
        text_background: float = option(-1.0, help="canvas grey of the word images (-1: the inputs' median)")
        glyph_scale: int = option(0, min=0, max=64, help="glyph pixel size (0: largest that fits, <= size // 32)")
        top: int = option(10, min=1, max=100_000, help="units listed per concept")
        attack: bool = option(True, help="run the typographic attack")
        attack_units: int = option(5, min=0, max=1000, help="top units per concept restored in the attack")
        control_word: str = option("window", help="a word naming no concept (attack control)")
        max_images: int = option(512, min=2, max=1_000_000, help="images analysed")
        selectivity: str = option("pooled", help="image / text scores: 'pooled' (one scale per unit) or 'dprime'")
        seed: int = option(0, help="seed of word placements and random units")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"concepts": ["cat", "dog"], "max_images": 4, "n_text_images": 2, "attack_units": 1, "top": 3}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return both_towers_hooked(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> MultimodalNeuronsResult:
        concepts = list(config.concepts)
        if not concepts:
            head0 = getattr(model.adapter, "classifier", None)
            concepts = list(head0.class_names) if head0 is not None else []
        if len(concepts) < 2:
            raise ConfigError("multimodal_neurons: give at least two concepts (concepts=circle,square,...).")
        hook = config.hook or default_hook(model)
        if hook not in model.hook_dict:
            raise ConfigError(f"multimodal_neurons: unknown hook {hook!r} (see `visionlens hooks`).")
        images = torch.cat([x for _, x in as_images(inputs).batches(model, 128, limit=config.max_images)])
        head = zero_shot_head(model, concepts, list(config.templates), attach=False)
        pred = _predict(model, images, head)
        if config.labels:
            if len(config.labels) != len(images):
                raise ConfigError(f"multimodal_neurons: {len(config.labels)} labels for {len(images)} images.")
            labels = torch.tensor([int(v) for v in config.labels])
            if labels.min() < 0 or labels.max() >= len(concepts):
                raise ConfigError(f"multimodal_neurons: labels must be in [0, {len(concepts) - 1}].")
            label_source = "given"
        else:
            labels, label_source = pred.clone(), "zero-shot predictions"
        size = int(images.shape[-1])
        background = float(images.median()) if config.text_background < 0 else float(config.text_background)
        scale = config.glyph_scale or glyph_scale(size, concepts)
        n_t = config.n_text_images
        words = concept_word_images(concepts, n_t, size, background, seed=config.seed, scale=scale)
        word_labels = torch.arange(len(concepts)).repeat_interleave(n_t)

        if config.selectivity not in ("pooled", "dprime"):
            raise ConfigError(
                f"multimodal_neurons: selectivity must be 'pooled' or 'dprime', got {config.selectivity!r}."
            )
        acts = unit_activations(model, images, hook)
        wacts = unit_activations(model, words, hook)
        n_units = acts.shape[1]
        spread = torch.cat([acts, wacts]).std(0, unbiased=False)
        d_img, d_txt, s_img, s_txt, cap = [], [], [], [], []
        for c in range(len(concepts)):
            pos, neg = labels == c, labels != c
            wpos, wneg = word_labels == c, word_labels != c
            ok = bool(pos.any() and neg.any())
            d_img.append(dprime(acts[pos], acts[neg]) if ok else torch.zeros(n_units))
            d_txt.append(dprime(wacts[wpos], wacts[wneg]))
            s_img.append(selectivity(acts[pos], acts[neg], spread) if ok else torch.zeros(n_units))
            s_txt.append(selectivity(wacts[wpos], wacts[wneg], spread))
            probe = torch.cat([images[pos], words[wpos]])
            cap.append(caption_attribution(model, probe, hook, head.weight, c))
        dprime_image, dprime_text, caption = torch.stack(d_img), torch.stack(d_txt), torch.stack(cap)
        sel_image, sel_text = torch.stack(s_img), torch.stack(s_txt)
        if config.selectivity == "dprime":
            sel_image, sel_text = dprime_image, dprime_text
        z = {"z_image": standardize(sel_image), "z_text": standardize(sel_text), "z_caption": standardize(caption)}
        joint = torch.stack(list(z.values())).min(0).values
        ranking = joint.argsort(-1, descending=True)
        rows = []
        for c, name in enumerate(concepts):
            for r in range(min(config.top, n_units)):
                u = int(ranking[c, r])
                rows.append(
                    [
                        name,
                        r + 1,
                        u,
                        float(joint[c, u]),
                        *(float(z[k][c, u]) for k in z),
                        float(sel_image[c, u]),
                        float(sel_text[c, u]),
                        float(caption[c, u]),
                    ]
                )
        tables = {
            "ranking": Table(
                [
                    "concept",
                    "rank",
                    "unit",
                    "joint",
                    "z_image",
                    "z_text",
                    "z_caption",
                    "image",
                    "text",
                    "caption_attribution",
                ],
                rows,
                title=f"Top units per concept at {hook} (joint: min of the components, each over its std across units)",
            )
        }
        clean_acc = float((pred == labels).float().mean())
        meta: dict[str, Any] = {
            "model": model_description(model),
            "hook": hook,
            "concepts": concepts,
            "n_images": len(images),
            "n_units": n_units,
            "labels": label_source,
            "text_background": background,
            "glyph_scale": scale,
            "clean_accuracy": clean_acc,
        }
        if config.attack:
            tables.update(self._attack(model, images, labels, concepts, head, hook, ranking, config, scale, meta))
        tensors = {
            "joint": joint,
            "ranking": ranking,
            "selectivity_image": sel_image,
            "selectivity_text": sel_text,
            "dprime_image": dprime_image,
            "dprime_text": dprime_text,
            "caption_attribution": caption,
            **z,
        }
        return MultimodalNeuronsResult(
            self.name, summary=self.summary, config=config_to_dict(config), meta=meta, tensors=tensors, tables=tables
        )

    def _attack(
        self,
        model: HookedVisionModel,
        images: Tensor,
        labels: Tensor,
        concepts: list[str],
        head: ZeroShotHead,
        hook: str,
        ranking: Tensor,
        config: Any,
        scale: int,
        meta: dict[str, Any],
    ) -> dict[str, Table]:
        seed = config.seed
        attacked, written = attack_images(images, labels, concepts, seed=seed, scale=scale)
        right = images.clone()
        for c, w in enumerate(concepts):
            i = labels == c
            if i.any():
                right[i] = glyphs.write_on(images[i], w, seed=seed + 7 * c, scale=scale)
        n_chars = [len(concepts[int(w)]) for w in written]
        strokes = images.clone()
        for k in sorted(set(n_chars)):
            i = torch.tensor([n == k for n in n_chars])
            strokes[i] = glyphs.write_on(images[i], k, seed=seed + k, scale=scale)
        other = glyphs.write_on(images, config.control_word, seed=seed, scale=scale)
        acc: Callable[[Tensor], float] = lambda p: float((p == labels).float().mean())
        hit: Callable[[Tensor], float] = lambda p: float((p == written).float().mean())
        preds = {
            "clean": _predict(model, images, head),
            "wrong concept word (attack)": _predict(model, attacked, head),
            "right concept word": _predict(model, right, head),
            "random strokes (same length)": _predict(model, strokes, head),
            f"non-concept word {config.control_word!r}": _predict(model, other, head),
        }
        p_att = preds["wrong concept word (attack)"]
        rows = [[k, acc(p), hit(p)] for k, p in preds.items()]
        meta["attack_accuracy"] = rows[1][1]
        meta["attack_success"] = rows[1][2]
        unit_rows = []
        if config.attack_units:
            clean_acts = hook_activations(model, images, hook)
            n_units = int(ranking.shape[1])
            g = torch.Generator().manual_seed(seed + 1)
            for c, name in enumerate(concepts):
                sel = written == c
                if not sel.any():
                    continue
                att_c, clean_c = attacked[sel], clean_acts[sel]
                base = float((p_att[sel] == c).float().mean())

                def success(units: Sequence[int]) -> float:
                    return float((restore_predictions(model, att_c, clean_c, hook, units, head) == c).float().mean())

                everything = success(range(n_units))
                top = [int(u) for u in ranking[c, : config.attack_units]]
                rest = [u for u in range(n_units) if u not in top]
                rand = [rest[int(i)] for i in torch.randperm(len(rest), generator=g)[: len(top)]]
                cases: list[tuple[str, Optional[list[int]]]] = [
                    (f"unit {u} (rank {r + 1})", [u]) for r, u in enumerate(top)
                ]
                cases += [(f"top {len(top)} together", top), (f"{len(top)} random units", rand), ("every unit", None)]
                for label, units in cases:
                    after = everything if units is None else success(units)
                    mediated = (base - after) / (base - everything) if base - everything > 1e-9 else None
                    unit_rows.append([name, label, int(sel.sum()), base, after, base - after, mediated])
        return {
            "attack": Table(
                ["condition", "accuracy", "attack_success"],
                rows,
                title="Zero-shot accuracy with text written on the images; attack_success: share predicted as the "
                "wrong concept the attack writes on that image (for every condition: the chance-level reference)",
            ),
            "attack_units": Table(
                ["word", "restored", "n_images", "success", "success_restored", "drop", "fraction_of_attack"],
                unit_rows,
                title="Attack success for each written word with units restored to their clean values",
            ),
        }


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [MultimodalNeurons]
