"""``direct_logit_attribution``: what each component writes directly into a class logit.

Vision transformers (timm ViT / DeiT)
    Every component of the final residual stream -- the embeddings, each attention head, each
    layer's attention bias, each MLP -- projected onto the class direction through the final
    LayerNorm, whose scale is taken from the cache (``cache.logit_attrs``). The components add
    up to ``logit - folded head bias`` (checked on every run, stored as ``meta["max_sum_error"]``).
    Neurons of chosen layers: ``mlp.hook_post[..., n] * W_out[:, n]`` (``fc2``, layer scale folded
    in) projected the same way; a layer's neurons plus its ``fc2`` bias add up to its MLP.
    Heatmaps: with class-token pooling the heads' contributions are split over the *source*
    patches they attend to (``pattern[cls, k] * v_k W_O``, exact: they add up to the head's
    contribution); with average pooling the logit is split over the positions it is read from.

CLIP (open_clip ViT image towers)
    The same decomposition of the image embedding onto text directions: a zero-shot head built from
    ``class_prompts`` x ``templates`` (or the one attached to the model). Contributions are reported
    in logit units (``logit_scale / |embedding|`` times the embedding-space dot product, so they sum
    to ``logit - bias``). With a ``text_pool`` each chosen head gets a TextSpan basis (Gandelsman et
    al. 2024: greedily pick the pool text that explains most variance of the head's outputs over the
    images, project it out, repeat). ``keep_heads`` gives zero-shot accuracy when only the top-k heads
    (by mean |contribution|) keep their direct effect and all others are mean-ablated (direct-effect
    ablation: the residual stream's LayerNorm scale stays frozen, as in the TextSpan paper).

Conv nets with a linear head (ResNet, InceptionV1/GoogLeNet, ConvNeXt, MobileNetV2)
    *Exact*: per-channel contributions of the pooled features, ``pooled[c] * W[class, c]`` (they add
    up to ``logit - bias``); per-location contributions of the last feature map when the head is a
    plain global average (or, for ConvNeXt, average + LayerNorm with the head LayerNorm's scale
    frozen, labelled as such); InceptionV1 branches of ``mixed5b`` (channel sums per branch).
    *Blocks*: where the final feature map is exactly the last stage's input plus its blocks'
    ``hook_branch_out`` (ConvNeXt: checked numerically on each run) those blocks' contributions are
    exact through the same readout. Everywhere else a nonlinearity follows the block (ResNet's ReLU
    after the sum, MobileNetV2's ReLU6 head conv, the next stage's first block), so blocks get
    **gradient x activation** (``sum(grad * branch_out)``), a first-order approximation, labelled
    ``method = "grad_x_act"`` in every table row.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.cache import VisionActivationCache
from visionlens.clip import attach_head, encode_text, zero_shot_head
from visionlens.data import as_images
from visionlens.hookspecs import hookimpl
from visionlens.patching import activation_gradients
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError
from visionlens.viz import diverging_limits, grid_shape, imshow_overlay, labels_fit, patch_grid, tokens_to_grid

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["DirectLogitAttribution", "DLAResult", "textspan"]

EXACT = "exact"
FROZEN_LN = "exact (frozen LayerNorm scale)"
GRAD_X_ACT = "grad_x_act (approximation)"


# ============================================================================ model kinds
def _kind(model: HookedVisionModel) -> str:
    fam = (getattr(model.cfg, "family", "") or "").lower()
    adapter = getattr(model, "adapter", None)
    if fam == "clip" or getattr(adapter, "name", "") == "open_clip":
        return "clip"
    if fam == "vit":
        return "vit"
    if fam in ("diffusion",) or "unet" in fam:
        return "unet"
    if adapter is None:
        return "none"
    try:
        ro = adapter.readout()
    except Exception:
        return "none"
    return "conv" if hasattr(ro, "fc") and hasattr(ro, "pooled_hook") else ("vit" if hasattr(ro, "pools") else "none")


# ============================================================================ analysis
class DirectLogitAttribution(Analysis):
    """Direct logit attribution for ViTs, CLIP image towers and conv nets with a linear head."""

    name = "direct_logit_attribution"
    summary = (
        "Direct logit attribution: each head / MLP / neuron / channel / block's direct contribution to a "
        "class logit or logit difference, with per-patch heatmaps (ViT, CLIP, conv nets)."
    )

    @dataclass
    class Config:
        classes: list[int] = option(
            list, help="class per image (one for all, or one per image); empty = each image's top class"
        )
        foil: Optional[int] = option(None, min=0, help="attribute logit[class] - logit[foil] instead of logit[class]")
        max_images: int = option(8, min=1, max=100_000, help="images analysed (from the start of the inputs)")
        batch_size: int = option(8, min=1, max=4096, help="images per forward pass")
        neuron_layers: list[int] = option(list, help="ViT/CLIP: layers whose MLP neurons are attributed (-1 = last)")
        top_k: int = option(20, min=1, max=100_000, help="rows per image in the ranked table")
        heatmaps: bool = option(True, help="per-patch / per-location heatmaps (ViT: caches attention patterns)")
        blocks: bool = option(True, help="conv nets: per-block contributions (exact where linear, else grad x act)")
        class_prompts: list[str] = option(list, help="CLIP: class names for a zero-shot head (else the attached head)")
        templates: list[str] = option(list, help="CLIP: prompt templates with {} (default 'a photo of a {}.')")
        text_pool: list[str] = option(list, help="CLIP: candidate descriptions for per-head TextSpan bases")
        textspan_k: int = option(5, min=1, max=100, help="CLIP: texts per head in the TextSpan basis")
        textspan_layers: list[int] = option(list, help="CLIP: layers whose heads get TextSpan bases (default: last 4)")
        labels: list[int] = option(
            list, help="CLIP: true class per image for zero-shot accuracy (default: the full model's predictions)"
        )
        keep_heads: list[int] = option(
            [0, 1, 2, 4, 8, 16, 32, 64], help="CLIP: numbers of top heads kept in the mean-ablation accuracy curve"
        )

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: two images, short tables (CLIP: a three-class zero-shot head)."""
        cfg: dict[str, Any] = {"max_images": 2, "top_k": 5}
        if _kind(model) == "clip":
            cfg.update(class_prompts=["cat", "dog", "car"], text_pool=["a cat", "a dog", "a car", "stripes"])
        return cfg

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        kind = _kind(model)
        if kind == "unet":
            return False, "a diffusion UNet has no class logits to attribute"
        if kind == "none":
            return False, (
                f"the {model.cfg.adapter!r} adapter describes no linear readout (adapter.readout()); "
                "supported: timm ViT/DeiT, open_clip ViT, ResNet, InceptionV1, ConvNeXt, MobileNetV2"
            )
        if kind == "clip":
            if model.cfg.extra.get("visual_type") != "vit":
                return False, "the CLIP ResNet image tower pools with attention (not linear); use a ViT image tower"
            if model.cfg.pool_type not in ("token", "avg"):
                return False, f"the CLIP image tower pools with {model.cfg.pool_type!r}, not a linear token/avg pool"
        if kind in ("vit", "clip") and f"{_prefix(model)}blocks.0.attn.hook_result" not in model.hook_dict:
            return False, (
                "per-head outputs are not a linear split of the attention output in this model (a norm "
                "follows the heads), so heads cannot be attributed separately"
            )
        if kind == "clip":
            return True, ""
        try:
            ro = model.adapter.readout()
            if kind == "vit":
                _ = [p for p in ro.pools]
        except NotImplementedError as exc:
            return False, str(exc)
        except Exception as exc:  # pragma: no cover - defensive
            return False, f"{type(exc).__name__}: {exc}"
        return True, ""

    # ------------------------------------------------------------------ run
    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "DLAResult":
        images = as_images(inputs)
        kind = _kind(model)
        restore = None
        if kind == "clip":
            restore = self._clip_head(model, config)
        try:
            xs, names, disp = [], [], []
            for offset, x in images.batches(model, config.batch_size, limit=config.max_images):
                xs.append(x)
                for j in range(x.shape[0]):
                    names.append(images.name(offset + j) if images.length is not None else f"#{offset + j}")
                    if images.random_access:
                        disp.append(images.display(offset + j, model))
            if not xs:
                raise VisionLensError("direct_logit_attribution: no images to analyse (the input is empty).")
            n = sum(x.shape[0] for x in xs)
            classes = self._classes(config, n)
            parts = []
            done = 0
            for x in xs:
                b = x.shape[0]
                cls = None if classes is None else classes[done : done + b]
                if kind in ("vit", "clip"):
                    parts.append(_transformer_batch(model, x, cls, config, clip=kind == "clip"))
                else:
                    parts.append(_conv_batch(model, x, cls, config))
                done += b
            res = _merge(parts)
            if kind == "clip":
                _clip_extras(model, res, config)
        finally:
            if restore is not None:
                restore()
        return _build_result(self, model, config, kind, res, names, disp)

    def _classes(self, config: Any, n: int) -> Optional[Tensor]:
        if not config.classes:
            return None
        if len(config.classes) == 1:
            return torch.full((n,), int(config.classes[0]), dtype=torch.long)
        if len(config.classes) != n:
            raise ConfigError(
                f"direct_logit_attribution: config field 'classes' expected 1 or {n} classes (one per "
                f"image), got {len(config.classes)}."
            )
        return torch.tensor(config.classes, dtype=torch.long)

    def _clip_head(self, model: HookedVisionModel, config: Any):
        previous = model.adapter.classifier
        if config.class_prompts:
            zero_shot_head(model, list(config.class_prompts), list(config.templates) or None, attach=True)
            return lambda: attach_head(model, previous)
        if previous is None:
            raise ConfigError(
                "direct_logit_attribution: a CLIP model needs classes: set class_prompts (class names "
                "for a zero-shot head) or attach one with visionlens.clip.zero_shot_head(model, ...)."
            )
        return None


# ============================================================================ transformers (ViT, CLIP)
def _prefix(model: HookedVisionModel) -> str:
    return model.cfg.extra.get("hook_prefix", "") or ""


def _targets(logits: Tensor, classes: Optional[Tensor], foil_class: Optional[int]):
    """``(classes, foil, target)``: the attributed classes (argmax by default), the foil class per example
    (or None) and the per-example logit (difference) the contributions must sum to."""
    cls = logits.argmax(-1) if classes is None else classes.to(logits.device)
    _check_classes(cls, logits.shape[-1])
    foil = None
    if foil_class is not None:
        _check_classes(torch.tensor([foil_class]), logits.shape[-1], "foil")
        foil = torch.full_like(cls, int(foil_class))
    rows = torch.arange(logits.shape[0], device=logits.device)
    target = logits[rows, cls] - (logits[rows, foil] if foil is not None else 0)
    return cls, foil, target


def _check_classes(cls: Tensor, n_classes: int, what: str = "class") -> None:
    if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= n_classes):
        raise ConfigError(
            f"direct_logit_attribution: {what} indices must be in [0, {n_classes}), got "
            f"{sorted(set(cls.tolist()))[:10]}."
        )


def position_readout(
    model: HookedVisionModel, cache: Any, classes: Tensor, foil: Optional[Tensor], n_pos: int
) -> Tensor:
    """``r [batch, pos, d_model]`` with ``logit contribution of x = sum_pos x[pos] . r[pos]`` for any
    residual-stream component ``x`` (final LayerNorm scale from the cache, its weight and the
    pooling folded in); the same numbers ``cache.logit_attrs`` gives, per position."""
    ro = model.adapter.readout()
    dev = cache[_prefix(model) + "blocks.0.hook_resid_pre"].device
    probe = torch.eye(n_pos, device=dev).unsqueeze(-1)  # [pos(as batch), pos, 1]
    dirs = ro.directions(classes.to(dev))
    fdirs = ro.directions(foil.to(dev)) if foil is not None else None
    scale = None
    if ro.ln is not None:
        scale = cache[_prefix(model) + "ln_final.hook_scale"]  # [B, P, 1] (norm first) or [B, 1]
        if scale.ndim == 2:
            scale = scale.unsqueeze(1)
    r = None
    for j, (pool, _, coef) in enumerate(ro.pools):
        w = pool(probe)[:, 0]  # weight of each position in this pool
        d = dirs[j] - (fdirs[j] if fdirs is not None else 0)
        if d.ndim == 1:
            d = d.expand(classes.shape[0], -1)
        if ro.ln is not None:
            d = d - d.mean(-1, keepdim=True)
        term = coef * w[None, :, None] * d[:, None, :]
        if scale is not None:
            term = term / scale
        r = term if r is None else r + term
    return r


def _mlp_out_weight(model: HookedVisionModel, layer: int) -> tuple[Tensor, Optional[Tensor]]:
    """``(W [d_model, d_mlp], b [d_model] or None)`` with ``mlp_out = post @ W.T + b`` (layer scale folded)."""
    src = model.source
    if getattr(model.adapter, "name", "") == "open_clip":
        blk = src.visual.transformer.resblocks[layer]
        fc2, ls = blk.mlp.c_proj, blk.ls_2
        ln = getattr(blk.mlp, "ln", None)
        if ln is not None and not isinstance(ln, torch.nn.Identity):
            raise NotImplementedError("neurons are not linear in the MLP output when the MLP has an inner LayerNorm")
    else:
        blk = src.blocks[layer]
        fc2, ls = blk.mlp.fc2, blk.ls2
        if not isinstance(getattr(blk.mlp, "norm", torch.nn.Identity()), torch.nn.Identity):
            raise NotImplementedError("neurons are not linear in the MLP output when the MLP has an inner norm")
    W, b = fc2.weight, fc2.bias
    gamma = getattr(ls, "gamma", None)
    if gamma is not None:
        W = W * gamma[:, None]
        b = b * gamma if b is not None else None
    return W, b


def _transformer_batch(
    model: HookedVisionModel, x: Tensor, classes: Optional[Tensor], config: Any, clip: bool
) -> dict[str, Any]:
    p = _prefix(model)
    L, H = int(model.cfg.n_layers), int(model.cfg.n_heads)
    neuron_layers = sorted({(l % L) for l in config.neuron_layers})
    for l in config.neuron_layers:
        if not -L <= l < L:
            raise ConfigError(f"direct_logit_attribution: neuron_layers entry {l} is out of range for {L} layers.")
    names = [p + "hook_embed", p + "hook_pos_embed", p + "blocks.0.hook_resid_pre", p + "ln_final.hook_scale"]
    for l in range(L):
        names += [p + f"blocks.{l}.hook_attn_out", p + f"blocks.{l}.hook_mlp_out", p + f"blocks.{l}.attn.hook_z"]
        if config.heatmaps:
            names += [p + f"blocks.{l}.attn.hook_v", p + f"blocks.{l}.attn.hook_pattern"]
    names += [p + f"blocks.{l}.mlp.hook_post" for l in neuron_layers]
    names.append(p + f"blocks.{L - 1}.hook_resid_post")
    if clip:
        names.append(p + "hook_proj")
    names = [n for n in names if n in model.hook_dict]
    with torch.no_grad():
        logits, cache_obj = model.run_with_cache(x, names_filter=names)
        assert isinstance(cache_obj, VisionActivationCache)  # return_cache_object defaults to True
        cache = cache_obj
        B = x.shape[0]
        cls, foil, target = _targets(logits, classes, config.foil)
        bias = cache.folded_head_bias(cls, foil).reshape(-1).expand(B)
        unit = torch.ones(B, device=logits.device)
        if clip:  # embedding-space dot products -> logit units
            unit = cache.embed_scale() * model.adapter.logit_scale
            lb = getattr(model.source, "logit_bias", None)
            lb = float(lb.detach().reshape(-1)[0]) if lb is not None and foil is None else 0.0
            bias = bias * unit + lb
        labels, kinds, attrs = [], [], []

        def add(stack: Tensor, labs: list[str], kind: str) -> Tensor:
            a = cache.logit_attrs(stack, classes=cls, incorrect_classes=foil) * unit  # [C, B]
            attrs.append(a)
            labels.extend(labs)
            kinds.extend([kind] * len(labs))
            return a

        stack, lab = cache.decompose_resid(return_labels=True)
        emb = [i for i, s in enumerate(lab) if s in ("embed", "pos_embed")]
        add(stack[emb], [lab[i] for i in emb], "embedding")
        del stack
        head_attr = torch.zeros(L, H, B, device=logits.device)
        for l in range(L):
            heads = cache.head_results(l).movedim(-2, 0)  # [H, B, P, D]
            head_attr[l] = add(heads, [f"L{l}H{h}" for h in range(heads.shape[0])], "head")
            attn_out = cache[p + f"blocks.{l}.hook_attn_out"]
            add((attn_out - heads.sum(0))[None], [f"L{l} attn bias"], "attn_bias")
            add(cache[p + f"blocks.{l}.hook_mlp_out"][None], [f"L{l} mlp"], "mlp")
        attr = torch.cat(attrs, dim=0)
        out: dict[str, Any] = {
            "attr": attr.cpu(),
            "labels": labels,
            "kinds": kinds,
            "logit": target.cpu(),
            "bias": bias.cpu(),
            "classes": cls.cpu(),
            "head_attr": head_attr.cpu(),
            "foil": foil.cpu() if foil is not None else None,
            "logits": logits.cpu(),
        }
        final = cache[p + f"blocks.{L - 1}.hook_resid_post"]
        P = final.shape[1]
        r = position_readout(model, cache, cls, foil, P) * unit[:, None, None]
        per_pos = (final * r).sum(-1)  # [B, P]
        out["position_attr"] = per_pos.cpu()
        out["readout_positions"] = (r.abs().sum(-1) > 0).any(0).nonzero().flatten().tolist()
        if config.heatmaps:
            q = torch.tensor(out["readout_positions"], device=r.device)
            src = torch.zeros(L, H, B, P, device=logits.device)
            for l in range(L):
                v = cache[p + f"blocks.{l}.attn.hook_v"]  # [B, K, H, dh]
                u = model.adapter.head_results_from_z(l, v)  # v W_O (layer scale folded): [B, K, H, D]
                pat = cache[p + f"blocks.{l}.attn.hook_pattern"][:, :, q, :]  # [B, H, q, K]
                s = torch.einsum("bkhd,bqd->bhqk", u, r[:, q])
                src[l] = (pat * s).sum(2).permute(1, 0, 2)  # [H, B, K]
            out["source_attr"] = src.cpu()
        for l in neuron_layers:
            W, b2 = _mlp_out_weight(model, l)
            post = cache[p + f"blocks.{l}.mlp.hook_post"]  # [B, P, d_mlp]
            rw = r @ W  # [B, P, d_mlp]
            out[f"neurons/{l}"] = (post * rw).sum(1).cpu()
            out[f"neuron_bias/{l}"] = ((r * b2).sum(-1).sum(-1) if b2 is not None else torch.zeros(B)).cpu()
        if clip:
            out["clip_vectors"] = _clip_head_vectors(model, cache, L).cpu()  # [L, H, B, E]
            out["embedding"] = cache[p + "hook_proj"].cpu()
    return out


def _clip_head_vectors(model: HookedVisionModel, cache: Any, L: int) -> Tensor:
    """Each head's direct contribution to the image embedding: ``[L, H, B, embed_dim]``."""
    vis = model.source.visual
    ro = model.adapter.readout()
    pool = ro.pools[0][0]
    w = vis.ln_post.weight if getattr(vis.ln_post, "weight", None) is not None else None
    out = []
    for l in range(L):
        heads = cache.head_results(l).movedim(-2, 0)  # [H, B, P, D]
        normed = cache.apply_ln_to_stack(heads, layer=-1)  # centred / frozen final-LN scale
        if normed.ndim == 4:
            normed = pool(normed)
        if w is not None:
            normed = normed * w
        out.append(normed @ vis.proj)
    return torch.stack(out)


# ============================================================================ CLIP extras
def textspan(vectors: Tensor, texts: Tensor, k: int) -> tuple[list[int], list[float]]:
    """TextSpan (Gandelsman et al. 2024): greedily choose ``k`` rows of ``texts`` ``[M, E]`` that explain the
    most variance of ``vectors`` ``[N, E]``, projecting each choice out of both. Returns (indices,
    fraction of the original variance explained by each pick)."""
    C = vectors.double() - vectors.double().mean(0, keepdim=True) if vectors.shape[0] > 1 else vectors.double()
    T = torch.nn.functional.normalize(texts.double(), dim=-1)
    total = float(C.pow(2).sum()) or 1.0
    picks: list[int] = []
    fracs: list[float] = []
    for _ in range(min(k, T.shape[0])):
        proj = C @ T.T  # [N, M]
        score = proj.pow(2).sum(0)
        if picks:
            score[picks] = -1
        j = int(score.argmax())
        t = T[j] / (T[j].norm() + 1e-12)
        picks.append(j)
        fracs.append(float(score[j]) / total)
        C = C - (C @ t)[:, None] * t
        T = T - (T @ t)[:, None] * t
    return picks, fracs


def _clip_extras(model: HookedVisionModel, res: dict[str, Any], config: Any) -> None:
    head = model.adapter.classifier
    vec = res["clip_vectors"]  # [L, H, B, E]
    L, H, B, _ = vec.shape
    dirs = head.weight.detach().cpu().to(vec.dtype)  # [n_classes, E]
    emb = res["embedding"].to(vec.dtype)
    scale = float(model.adapter.logit_scale.detach())
    lb = getattr(model.source, "logit_bias", None)
    lb = float(lb.detach().reshape(-1)[0]) if lb is not None else 0.0
    full_logits = scale * torch.nn.functional.normalize(emb, dim=-1) @ dirs.T + lb
    labels = torch.tensor(config.labels, dtype=torch.long) if config.labels else full_logits.argmax(-1)
    if labels.numel() != B:
        raise ConfigError(
            f"direct_logit_attribution: config field 'labels' expected one class per image ({B}), got {labels.numel()}."
        )
    _check_classes(labels, dirs.shape[0], "label")
    # rank heads by mean |direct contribution| to each image's label class (logit units)
    contrib = torch.einsum("lhbe,be->lhb", vec, dirs[labels]) * (scale / emb.norm(dim=-1))
    order = contrib.abs().mean(-1).flatten().argsort(descending=True)
    flat = vec.reshape(L * H, B, -1)
    mean = flat.mean(1, keepdim=True)
    curve = []
    ks = sorted({min(int(k), L * H) for k in config.keep_heads} | {L * H})
    for k in ks:
        kept = torch.zeros(L * H, dtype=torch.bool)
        kept[order[:k]] = True
        ablated = emb - (flat[~kept] - mean[~kept]).sum(0)
        logits = scale * torch.nn.functional.normalize(ablated, dim=-1) @ dirs.T + lb
        curve.append((k, float((logits.argmax(-1) == labels).float().mean())))
    res["zero_shot_curve"] = curve
    res["zero_shot_full_accuracy"] = float((full_logits.argmax(-1) == labels).float().mean())
    res["head_rank"] = [(int(i) // H, int(i) % H) for i in order.tolist()]
    res["zero_shot_labels"] = labels.tolist()
    if config.text_pool:
        layers = (
            sorted({l % L for l in config.textspan_layers}) if config.textspan_layers else list(range(max(0, L - 4), L))
        )
        with torch.no_grad():
            T = encode_text(model, list(config.text_pool)).detach().cpu().double()
            T = torch.nn.functional.normalize(T, dim=-1)
        spans = {}
        for l in layers:
            for h in range(H):
                idx, fr = textspan(vec[l, h], T, config.textspan_k)
                spans[f"L{l}H{h}"] = [(config.text_pool[i], f) for i, f in zip(idx, fr)]
        res["textspan"] = spans


# ============================================================================ conv nets
def _conv_batch(model: HookedVisionModel, x: Tensor, classes: Optional[Tensor], config: Any) -> dict[str, Any]:
    ro = model.adapter.readout()
    names = [ro.pooled_hook]
    if ro.features_hook and ro.features_hook in model.hook_dict:
        names.append(ro.features_hook)
    blocks = _block_hooks(model) if config.blocks else []
    stream = _final_stage_stream(model, ro, blocks)
    if stream:
        names += [h for h in stream if h not in names]
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, names_filter=names, return_cache_object=False)
    cls, foil, target = _targets(logits, classes, config.foil)
    pooled = cache[ro.pooled_hook]
    chan = ro.channel_contributions(pooled, cls) - (ro.channel_contributions(pooled, foil) if foil is not None else 0)
    bias = ro.bias(cls) - (ro.bias(foil) if foil is not None else 0)
    out: dict[str, Any] = {
        "channel_attr": chan.detach().cpu(),
        "logit": target.detach().cpu(),
        "bias": bias.detach().cpu(),
        "classes": cls.cpu(),
        "logits": logits.detach().cpu(),
        "foil": foil.cpu() if foil is not None else None,
    }
    feats = cache.get(ro.features_hook) if ro.features_hook else None
    wdir = ro.W[cls] - (ro.W[foil] if foil is not None else 0)  # [B, C]
    lin = _linear_readout(ro, feats, wdir)
    if lin is not None:
        assert feats is not None  # _linear_readout returns None without features
        fn, method = lin
        out["spatial_attr"] = fn(feats).sum(1).detach().cpu()
        out["spatial_method"] = method
        out["spatial_bias"] = (target - out["spatial_attr"].to(target).sum((1, 2))).detach().cpu()
        comps = [cache[h] for h in stream if h in cache]
        if stream and len(comps) == len(stream) and all(c.shape == feats.shape for c in comps):
            total = sum(comps)
            if torch.allclose(total, feats, atol=1e-4 * (1 + float(feats.abs().max()))):
                vals = torch.stack([fn(c).sum((1, 2, 3)) for c in comps])
                out["stream_attr"] = vals.detach().cpu()
                out["stream_labels"] = stream
                out["stream_method"] = method
    branches = model.cfg.extra.get("branch_offsets", {}).get(_layer_of(ro.features_hook)) if ro.features_hook else None
    if branches:
        out["branch_attr"] = torch.stack([chan[:, a:b].sum(-1) for a, b in branches.values()]).detach().cpu()
        out["branch_labels"] = [f"{_layer_of(ro.features_hook)}.{br}" for br in branches]
    if blocks:
        exact = set(out.get("stream_labels", []))
        approx = [h for h in blocks if h not in exact]
        if approx:
            out["block_attr"], out["block_labels"] = _grad_x_act(model, x, approx, cls, foil)
    return out


def _layer_of(hook: Optional[str]) -> str:
    return (hook or "").removesuffix(".hook_out")


def _block_hooks(model: HookedVisionModel) -> list[str]:
    """Residual-branch outputs (``hook_branch_out``) in forward order, else Inception's mixed layers."""
    names = [n for n in model.hook_dict if n.startswith("stages.") and n.endswith(".hook_branch_out")]
    if names:
        return names
    layers = model.cfg.extra.get("layers")
    if layers:
        return [f"{n}.hook_out" for n in layers if n.startswith("mixed") and f"{n}.hook_out" in model.hook_dict]
    return []


def _final_stage_stream(model: HookedVisionModel, ro: Any, blocks: list[str]) -> list[str]:
    """Candidate exact decomposition of the final feature map: last stage input + its branch outputs."""
    if not blocks or not ro.features_hook or not blocks[-1].startswith("stages."):
        return []
    stage = blocks[-1].split(".")[1]
    last = [h for h in blocks if h.split(".")[1] == stage]
    first = f"stages.{stage}.blocks.0.hook_resid_pre"
    if first not in model.hook_dict:
        return []
    return [first] + last


def _linear_readout(ro: Any, feats: Optional[Tensor], wdir: Tensor):
    """A function mapping a feature-map component ``[B, C, H, W]`` to its per-channel, per-location
    contribution ``[B, C, H, W]`` through pool (+ head norm) + fc, and the method label; None if
    the head is not linear in the features."""
    if feats is None or feats.ndim != 4:
        return None
    hw = feats.shape[-2] * feats.shape[-1]
    if ro.global_avg and ro.norm is None:
        return (lambda c: c * wdir[:, :, None, None] / hw), EXACT
    norm = ro.norm
    if norm is not None and getattr(ro, "extra", {}).get("pre_logits") is None:
        pre = feats.mean((2, 3))
        eps = float(getattr(norm, "eps", 1e-6))
        sigma = (pre.var(-1, unbiased=False, keepdim=True) + eps).sqrt()  # [B, 1]
        w = norm.weight if getattr(norm, "weight", None) is not None else torch.ones_like(pre[0])
        eff = wdir * w / sigma  # [B, C]

        def fn(c: Tensor) -> Tensor:
            centred = c - c.mean(1, keepdim=True)
            return centred * eff[:, :, None, None] / hw

        return fn, FROZEN_LN
    return None


def _grad_x_act(
    model: HookedVisionModel, x: Tensor, hooks: list[str], cls: Tensor, foil: Optional[Tensor]
) -> tuple[Tensor, list[str]]:
    def objective(logits: Tensor) -> Tensor:
        rows = torch.arange(x.shape[0], device=logits.device)
        return (logits[rows, cls] - (logits[rows, foil] if foil is not None else 0)).sum()

    probes = activation_gradients(model, hooks, lambda: model(x), objective)
    fired = [h for h in hooks if h in probes]
    vals = []
    for h in fired:
        act, g = probes[h]
        vals.append((act * g).reshape(act.shape[0], -1).sum(-1))
    return torch.stack(vals).detach().cpu(), fired


# ============================================================================ merge + result
def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    common = set.intersection(*(set(p) for p in parts))
    for key, v in parts[0].items():
        if key not in common:
            continue
        vals = [p[key] for p in parts]
        if isinstance(v, Tensor):
            dim = (
                1
                if key in ("attr", "stream_attr", "branch_attr", "block_attr")
                else (2 if key in ("head_attr", "clip_vectors", "source_attr") else 0)
            )
            out[key] = torch.cat(vals, dim=dim)
        elif v is None:
            out[key] = None
        else:
            out[key] = v
    return out


def _short(label: str) -> str:
    return (
        label.replace(".hook_branch_out", "")
        .replace(".hook_resid_pre", " (stage input)")
        .replace(".hook_out", "")
        .replace("stages.", "s")
        .replace(".blocks.", ".b")
    )


def _build_result(
    analysis: Any,
    model: HookedVisionModel,
    config: Any,
    kind: str,
    res: dict[str, Any],
    names: list[str],
    disp: list[np.ndarray],
) -> "DLAResult":
    class_names = model.cfg.extra.get("class_names") or []
    B = int(res["logit"].shape[0])

    def cname(c: int) -> str:
        return str(class_names[c]) if 0 <= c < len(class_names) else f"class {c}"

    tensors: dict[str, Tensor] = {
        "logit": res["logit"].float(),
        "bias": res["bias"].float(),
        "classes": res["classes"].long(),
    }
    meta: dict[str, Any] = {
        "model": f"{model.cfg.architecture or model.cfg.family} ({model.cfg.adapter})",
        "family": model.cfg.family,
        "kind": kind,
        "n_images": B,
        "image_names": names,
        "class_names": [cname(int(c)) for c in res["classes"]],
        "foil": int(config.foil) if config.foil is not None else None,
        "foil_name": cname(int(config.foil)) if config.foil is not None else None,
    }
    rows_comp: list[list[Any]] = []
    summary = Table(
        ["image", "class", "class_name", "target", "sum_of_exact_contributions", "bias", "sum_error"],
        title="Per image: target = logit[class]"
        + (" - logit[foil]" if config.foil is not None else "")
        + "; exact contributions + bias should equal it",
    )
    if kind in ("vit", "clip"):
        attr = res["attr"].float()
        tensors["attr"] = attr
        tensors["head_attr"] = res["head_attr"].float()
        meta["components"] = res["labels"]
        meta["component_kinds"] = res["kinds"]
        err = (attr.sum(0) + res["bias"] - res["logit"]).abs()
        meta["max_sum_error"] = float(err.max())
        meta["units"] = (
            "CLIP logit units (logit_scale / |image embedding| x embedding . class direction)"
            if kind == "clip"
            else "logits"
        )
        for b in range(B):
            summary.rows.append(
                [
                    names[b],
                    int(res["classes"][b]),
                    cname(int(res["classes"][b])),
                    float(res["logit"][b]),
                    float(attr[:, b].sum()),
                    float(res["bias"][b]),
                    float(err[b]),
                ]
            )
            order = attr[:, b].abs().argsort(descending=True)[: config.top_k]
            for rank, i in enumerate(order.tolist()):
                rows_comp.append([names[b], rank + 1, res["labels"][i], res["kinds"][i], float(attr[i, b]), EXACT])
        P = int(res["position_attr"].shape[1])
        n_prefix, grid = patch_grid(model.cfg, P)
        tensors["position_attr"] = res["position_attr"].float()
        read = res["readout_positions"]
        cls_pool = bool(read) and all(p < max(n_prefix, 1) for p in read)  # only class / distillation tokens read
        meta["pooling"] = "token" if cls_pool else "average"
        if "source_attr" in res:
            tensors["source_attr"] = res["source_attr"].float()  # [L, H, B, P]
        if grid is not None:
            if cls_pool and "source_attr" in res:
                heat = tokens_to_grid(res["source_attr"].sum((0, 1)).float(), n_prefix, grid)
                meta["heatmap"] = (
                    "attention heads' direct contributions split over the source patches they attend "
                    "to from the pooled token(s) (exact; prefix tokens excluded)"
                )
            else:
                heat = tokens_to_grid(res["position_attr"].float(), n_prefix, grid)
                meta["heatmap"] = "direct contribution of each patch position to the pooled readout (exact)"
            tensors["heatmap"] = heat
        neurons = {}
        for key in [k for k in res if k.startswith("neurons/")]:
            l = int(key.split("/")[1])
            tensors[key] = res[key].float()
            tensors[f"neuron_bias/{l}"] = res[f"neuron_bias/{l}"].float()
            neurons[l] = res[key]
        meta["neuron_layers"] = sorted(neurons)
        tables = {"summary": summary}
        if neurons:
            nt = Table(
                ["image", "layer", "neuron", "contribution"], title="Top MLP neurons (exact direct contributions)"
            )
            for b in range(B):
                for l, v in sorted(neurons.items()):
                    for n in v[b].abs().argsort(descending=True)[: config.top_k].tolist():
                        nt.rows.append([names[b], l, int(n), float(v[b, n])])
            tables["neurons"] = nt
        if kind == "clip":
            meta["labels_given"] = bool(config.labels)
            _clip_tables(res, meta, tables)
    else:
        chan = res["channel_attr"].float()  # [B, C]
        tensors["attr"] = chan.T.contiguous()
        meta["components"] = [f"channel {c}" for c in range(chan.shape[1])]
        meta["component_kinds"] = ["channel"] * chan.shape[1]
        err = (chan.sum(-1) + res["bias"] - res["logit"]).abs()
        meta["max_sum_error"] = float(err.max())
        meta["units"] = "logits"
        meta["pooled_hook"] = model.adapter.readout().pooled_hook
        for b in range(B):
            summary.rows.append(
                [
                    names[b],
                    int(res["classes"][b]),
                    cname(int(res["classes"][b])),
                    float(res["logit"][b]),
                    float(chan[b].sum()),
                    float(res["bias"][b]),
                    float(err[b]),
                ]
            )
            for rank, c in enumerate(chan[b].abs().argsort(descending=True)[: config.top_k].tolist()):
                rows_comp.append([names[b], rank + 1, f"channel {c}", "channel", float(chan[b, c]), EXACT])
        tables = {"summary": summary}
        if "spatial_attr" in res:
            tensors["heatmap"] = res["spatial_attr"].float()
            tensors["spatial_bias"] = res["spatial_bias"].float()
            meta["heatmap"] = (
                f"per-location contribution of the last feature map, summed over channels ({res['spatial_method']})"
            )
            meta["spatial_method"] = res["spatial_method"]
        bt = Table(
            ["image", "component", "kind", "contribution", "method"],
            title="Blocks and branches (exact where the path to the logit is linear, else grad x act)",
        )
        for key, kind_, method in (
            ("stream_attr", "block", res.get("stream_method", EXACT)),
            ("branch_attr", "branch", EXACT),
            ("block_attr", "block", GRAD_X_ACT),
        ):
            if key not in res:
                continue
            labs = res[key.replace("_attr", "_labels")]
            tensors[key] = res[key].float()
            meta[key.replace("_attr", "_labels")] = labs
            meta[key.replace("_attr", "_method")] = method
            for b in range(B):
                for i, lab in enumerate(labs):
                    bt.rows.append([names[b], _short(lab), kind_, float(res[key][i, b]), method])
        if bt.rows:
            tables["blocks"] = bt
    comp = Table(
        ["image", "rank", "component", "kind", "contribution", "method"],
        title=f"Top {config.top_k} components per image by |direct contribution|",
    )
    comp.rows = rows_comp
    tables = {"components": comp, **tables}
    if disp:
        tensors["images"] = torch.from_numpy(np.stack(disp)).to(torch.uint8)
    return DLAResult(
        analysis.name,
        summary=analysis.summary,
        config=config_to_dict(config),
        meta=meta,
        tensors=tensors,
        tables=tables,
    )


def _clip_tables(res: dict[str, Any], meta: dict[str, Any], tables: dict[str, Table]) -> None:
    meta["zero_shot_full_accuracy"] = res["zero_shot_full_accuracy"]
    meta["zero_shot_labels"] = res["zero_shot_labels"]
    meta["head_rank"] = res["head_rank"]
    zs = Table(
        ["heads_kept", "accuracy"],
        title="Zero-shot accuracy with only the top-k heads' direct effects kept "
        "(others mean-ablated; labels: " + ("given" if meta.get("labels_given") else "config or full model") + ")",
    )
    zs.rows = [[k, acc] for k, acc in res["zero_shot_curve"]]
    tables["zero_shot"] = zs
    if "textspan" in res:
        ts = Table(["head", "rank", "text", "variance_explained"], title="TextSpan bases per head")
        for head, items in res["textspan"].items():
            for i, (text, frac) in enumerate(items):
                ts.rows.append([head, i + 1, text, frac])
        tables["textspan"] = ts
        meta["textspan"] = {h: [t for t, _ in items] for h, items in res["textspan"].items()}


class DLAResult(Result):
    """Result of ``direct_logit_attribution``.

    Tensors: ``attr`` ``[components, images]`` (names in ``meta["components"]``), ``logit``,
    ``bias`` (what no component explains), ``classes``, ``heatmap`` ``[images, h, w]`` (see
    ``meta["heatmap"]``), ``head_attr`` ``[layers, heads, images]`` and ``source_attr``
    ``[layers, heads, images, tokens]`` (transformers), ``neurons/{layer}`` ``[images, d_mlp]``,
    ``stream_attr`` / ``branch_attr`` / ``block_attr`` ``[blocks, images]`` (conv nets, methods in
    meta), ``images`` (``uint8`` as the model saw them).
    """

    def contributions(self, image: int = 0) -> list[tuple[str, float]]:
        """``[(component, contribution)]`` of one image, largest magnitude first."""
        a = self.tensors["attr"][:, image]
        return [(self.meta["components"][i], float(a[i])) for i in a.abs().argsort(descending=True).tolist()]

    def figures(self) -> dict[str, Any]:
        figs = {"overview": self.plot()}
        if "heatmap" in self.tensors and self.tensors["heatmap"].shape[0] > 1:
            figs["heatmaps"] = self.plot_heatmaps()
        if "head_attr" in self.tensors:
            figs["heads"] = self.plot_heads()
        if self.meta.get("kind") == "clip" and "zero_shot" in self.tables:
            figs["zero_shot"] = self.plot_zero_shot()
        return figs

    def plot(self, image: int = 0, top: int = 15) -> Any:
        """Bar chart of the top components of one image and its heatmap over the image."""
        has_heat = "heatmap" in self.tensors
        fig = new_figure(12 if has_heat else 8, 4.5)
        axes = fig.subplots(1, 2, width_ratios=[1.6, 1]) if has_heat else [fig.subplots(1, 1)]
        items = self.contributions(image)[:top][::-1]
        ax = axes[0]
        vals = [v for _, v in items]
        ax.barh(range(len(items)), vals, color=["#c44e52" if v < 0 else "#4c72b0" for v in vals])
        ax.set_yticks(range(len(items)), labels_fit([k for k, _ in items], 28), fontsize=7)
        ax.axvline(0, color="#333", lw=0.6)
        name = (self.meta.get("image_names") or ["#0"])[image]
        target = self.meta.get("class_names", ["?"])[image]
        if self.meta.get("foil_name"):
            target = f"{target} - {self.meta['foil_name']}"
        ax.set_title(f"{name}: direct contributions to {target} ({self.meta.get('units', '')})", fontsize=8)
        if has_heat:
            img = self.tensors["images"][image].numpy() if "images" in self.tensors else None
            imshow_overlay(
                axes[1],
                img,
                self.tensors["heatmap"][image].numpy(),
                signed=True,
                title="per-location contribution",
                fontsize=8,
            )
        return fig

    def plot_heatmaps(self, max_images: int = 8) -> Any:
        n = min(max_images, int(self.tensors["heatmap"].shape[0]))
        rows, cols = grid_shape(n, 4)
        fig = new_figure(3 * cols, 3 * rows)
        axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).flatten()
        for i, ax in enumerate(axes):
            if i >= n:
                ax.set_axis_off()
                continue
            img = self.tensors["images"][i].numpy() if "images" in self.tensors else None
            imshow_overlay(
                ax,
                img,
                self.tensors["heatmap"][i].numpy(),
                signed=True,
                fontsize=7,
                title=f"{self.meta['image_names'][i]}: {self.meta['class_names'][i]}"[:40],
            )
        fig.suptitle(self.meta.get("heatmap", ""), fontsize=8)
        return fig

    def plot_heads(self) -> Any:
        """Layer x head map of head contributions (mean over images) and attention vs MLP per layer."""
        ha = self.tensors["head_attr"].mean(-1).numpy()
        fig = new_figure(11, 4)
        ax1, ax2 = fig.subplots(1, 2)
        lo, hi = diverging_limits(ha)
        im = ax1.imshow(ha, cmap="RdBu_r", vmin=lo, vmax=hi, aspect="auto")
        ax1.set_xlabel("head")
        ax1.set_ylabel("layer")
        ax1.set_title("head direct contributions (mean over images)", fontsize=8)
        fig.colorbar(im, ax=ax1, shrink=0.8)
        comps, kinds = self.meta["components"], self.meta["component_kinds"]
        attr = self.tensors["attr"].mean(-1)
        L = ha.shape[0]
        attn = np.zeros(L)
        mlp = np.zeros(L)
        for i, (c, k) in enumerate(zip(comps, kinds)):
            if k in ("head", "attn_bias"):
                attn[int(c[1:].split("H")[0].split(" ")[0])] += float(attr[i])
            elif k == "mlp":
                mlp[int(c[1:].split(" ")[0])] += float(attr[i])
        xs = np.arange(L)
        ax2.bar(xs - 0.2, attn, 0.4, label="attention")
        ax2.bar(xs + 0.2, mlp, 0.4, label="MLP")
        ax2.axhline(0, color="#333", lw=0.6)
        ax2.set_xlabel("layer")
        ax2.legend(fontsize=7)
        ax2.set_title("per-layer direct contributions (mean over images)", fontsize=8)
        return fig

    def plot_zero_shot(self) -> Any:
        t = self.tables["zero_shot"]
        fig = new_figure(5, 3.5)
        ax = fig.subplots(1, 1)
        ax.plot(t.column("heads_kept"), t.column("accuracy"), "o-")
        ax.axhline(self.meta.get("zero_shot_full_accuracy", float("nan")), color="#999", ls="--", label="full model")
        ax.set_xscale("symlog")
        ax.set_xlabel("top heads kept (others mean-ablated)")
        ax.set_ylabel("zero-shot accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        return fig

    def _html_body(self, pngs: Any, max_rows: int = 500) -> str:
        body = super()._html_body(pngs, max_rows)
        note = self.meta.get("heatmap")
        if note:
            body = body.replace("</h1>", f'</h1><p class="summary">Heatmap: {html.escape(str(note))}</p>', 1)
        return body


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [DirectLogitAttribution]
