"""open_clip CLIP models: both towers with TransformerLens hook names.

The adapter wraps a whole open_clip ``CLIP`` / ``CustomTextCLIP`` model. Hook names are
prefixed by tower:

* ``visual.*`` - the image tower. A ``VisionTransformer`` gets TransformerLens names
  (``visual.hook_embed``, ``visual.hook_pos_embed``, ``visual.ln_pre.hook_scale``,
  ``visual.blocks.{l}.attn.hook_pattern`` ..., ``visual.ln_final.hook_scale|hook_normalized``
  for ``ln_post``, ``visual.hook_pooled``, ``visual.hook_proj``). A ``ModifiedResNet`` (RN50
  style) gets the module tree (``visual.layer1.0.conv1.hook_out`` ...), residual-stream names
  (``visual.stages.{s}.blocks.{b}.hook_resid_pre|hook_branch_out|hook_resid_post``) and the
  attention-pool hooks (``visual.attnpool.hook_tokens|hook_q|hook_k|hook_v|hook_attn_scores|
  hook_pattern|hook_z|hook_result|hook_out``).
* ``text.*`` - the text transformer (``text.hook_embed``, ``text.blocks.{l}...``,
  ``text.ln_final.*``, ``text.hook_pooled``, ``text.hook_proj``).
* ``hook_logits`` - image-text similarity logits (or zero-shot class logits).

What ``model(...)`` returns (``HookedVisionModel.forward`` passes its arguments here):

* ``model(images)`` - image embeddings ``[batch, embed_dim]`` (``clip.encode_image``), or
  zero-shot class logits ``[batch, n_classes]`` when a zero-shot head is attached
  (:func:`visionlens.clip.zero_shot_head`).
* ``model(None, texts)`` - text embeddings (``clip.encode_text``); ``texts`` is a list of
  strings (tokenized with open_clip's own tokenizer) or a token tensor ``[batch, context]``.
* ``model(images, texts)`` - similarity logits ``[n_images, n_texts]``
  (``clip.get_logits(images, texts)[0]``: logit scale times cosine similarity, plus the logit bias).
* ``return_type="embeds"`` always returns the embeddings (a tuple when both towers run).

A tower with no hook attached runs the source module itself (exact, no overhead). A hooked
transformer block runs visionlens code over the source's modules with fused SDPA attention
unless an attention-internal hook (q, k, v, scores, pattern, z, result) of that block is active.
Layer scale is folded into ``hook_attn_out`` / ``hook_mlp_out`` (and per-head ``hook_result``) so
``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out`` hold exactly.

The tower code lives in :mod:`visionlens.adapters.open_clip_towers`, the CLIP activation cache
(``run_with_cache``'s result, with ``cache.tower("visual" | "text")``) in
:mod:`visionlens.adapters.open_clip_cache`; loading is :func:`visionlens.loading.load_open_clip`.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionlens.config import VisionConfig
from visionlens.hook_points import HookPoint, InlineHookPoint, fire
from visionlens.validation import VisionLensError, check_image_batch

from . import Adapter
from .open_clip_cache import ClipActivationCache, TowerAdapterView
from .open_clip_towers import ResNetTower, TextTower, ViTTower, block_supported
from .tl_weights import TLBlock, TLWeightSource
from .transformer_blocks import LinearReadout, is_identity

__all__ = ["OpenCLIPAdapter", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _is_open_clip(module: nn.Module) -> bool:
    return type(module).__module__.startswith("open_clip")


# ---------------------------------------------------------------------------- the adapter
class OpenCLIPAdapter(Adapter):
    """open_clip ``CLIP`` / ``CustomTextCLIP``: visual (ViT or ModifiedResNet) and text towers."""

    name = "open_clip"
    family = "clip"
    priority = 20
    input_name = "image"
    image_methods = ("encode_image",)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        if not _is_open_clip(module) or type(module).__name__ not in ("CLIP", "CustomTextCLIP"):
            return False
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import VisionTransformer

        visual = getattr(module, "visual", None)
        if visual is not None and type(visual) is VisionTransformer:
            if not all(block_supported(b) for b in visual.transformer.resblocks):
                return False
        elif type(visual) is not ModifiedResNet:
            return False
        return True

    @classmethod
    def example_source(cls) -> nn.Module:
        """A tiny open_clip ``CLIP``: 2-layer ViT image tower on 32 px, 2-layer text tower (the docs/hooks.md
        config; random weights, seeded)."""
        import open_clip

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return open_clip.CLIP(
                embed_dim=16,
                vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8),
                text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=4, layers=2),
            ).eval()

    def __init__(self, source: nn.Module):
        super().__init__(source)
        from open_clip.modified_resnet import ModifiedResNet
        from open_clip.transformer import TextTransformer

        self.visual = (
            ResNetTower(source.visual) if isinstance(source.visual, ModifiedResNet) else ViTTower(source.visual)
        )
        text_mod = getattr(source, "text", None)
        text_ok = (
            isinstance(text_mod, TextTransformer)
            if type(source).__name__ == "CustomTextCLIP"
            else hasattr(source, "transformer")
        )
        if text_ok:
            blocks = (text_mod if text_mod is not None else source).transformer.resblocks
            text_ok = all(block_supported(b) for b in blocks)
        self.text: Optional[TextTower] = TextTower(source) if text_ok else None
        if self.text is None:
            warnings.warn(
                "open_clip text tower is not a supported TextTransformer; text hooks are not available and "
                "encode_text runs the source tower unhooked.",
                UserWarning,
                stacklevel=3,
            )
        self.hook_logits = InlineHookPoint()
        self.classifier: Any = None  # a ZeroShotHead attached by visionlens.clip.zero_shot_head
        self.model_name: Optional[str] = getattr(source, "_visionlens_name", None)
        self._tokenizer: Any = None
        self.last_text_tokens: Optional[Tensor] = None

    # --------------------------------------------------------------- description
    def config(self) -> VisionConfig:
        s = self.source
        v = self.visual
        pp = getattr(s.visual, "preprocess_cfg", None) or {}
        vc = v.config()
        extra: dict[str, Any] = {
            "hook_prefix": "visual.",
            "towers": ("visual", "text") if self.text is not None else ("visual",),
            "embed_dim": self.embed_dim,
            "model_name": self.model_name,
        }
        extra.update(vc.pop("extra"))
        if self.text is not None:
            extra["text"] = self.text.cfg().to_dict()
            extra["context_length"] = self.text.context_length
            extra["vocab_size"] = self.text.vocab_size
        mean = tuple(pp.get("mean", getattr(s.visual, "image_mean", None) or OPENAI_MEAN))
        std = tuple(pp.get("std", getattr(s.visual, "image_std", None) or OPENAI_STD))
        arch = self.model_name or f"{type(s).__name__}({type(s.visual).__name__})"
        return VisionConfig(
            family="clip",
            architecture=arch,
            adapter=self.name,
            mean=mean,
            std=std,
            crop_pct=1.0,
            interpolation=pp.get("interpolation", "bicubic"),
            n_classes=0,
            extra=extra,
            **vc,
        )

    @property
    def embed_dim(self) -> int:
        s = self.source
        v = s.visual
        if self.visual.kind == "vit":
            return int(v.proj.shape[1]) if v.proj is not None else int(v.transformer.width)
        return int(v.attnpool.c_proj.out_features)

    def tower_cfg(self, name: str) -> VisionConfig:
        if name == "text":
            if self.text is None:
                raise ValueError("this open_clip model has no hooked text tower")
            return self.text.cfg()
        vc = self.visual.config()
        extra = vc.pop("extra")
        extra["hook_prefix"] = "visual."
        return VisionConfig(
            family="clip_visual", architecture=self.cfg.architecture, adapter=self.name, extra=extra, **vc
        )

    def hook_points(self) -> dict[str, HookPoint]:
        points = dict(self.visual.points())
        if self.text is not None:
            points.update(self.text.points())
        points["hook_logits"] = self.hook_logits
        return points

    def aliases(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if isinstance(self.visual, ResNetTower):
            out.update(self.visual.aliases())
        else:
            for l in range(len(self.visual.blocks.layers)):
                out[f"visual.blocks.{l}"] = f"visual.blocks.{l}.hook_resid_post"
                out[f"visual.blocks.{l}.mlp"] = f"visual.blocks.{l}.mlp.hook_post"
            out["visual.ln_post"] = "visual.ln_final.hook_normalized"
        if self.text is not None:
            for l in range(len(self.text.blocks.layers)):
                out[f"text.blocks.{l}"] = f"text.blocks.{l}.hook_resid_post"
                out[f"text.blocks.{l}.mlp"] = f"text.blocks.{l}.mlp.hook_post"
        return out

    def cache_class(self) -> type:
        return ClipActivationCache

    def readout(self) -> LinearReadout:
        """The visual tower's readout onto the attached zero-shot head (for ``logit_attrs``)."""
        return TowerAdapterView(self, "visual").readout()

    @property
    def final_ln(self) -> Optional[nn.Module]:
        return getattr(self.visual.m, "ln_post", None) if self.visual.kind == "vit" else None

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        if isinstance(self.visual, ResNetTower):  # kind != "vit"
            return self.visual.head_results_from_z(layer, z)
        return self.visual.blocks.head_results_from_z(layer, z)

    def tl_weights(self, tower: Optional[str] = None) -> TLWeightSource:
        """TransformerLens's matrices of a tower (``model.W_Q`` ... read the visual tower; the text tower via
        ``model.tl_weight(name, tower="text")``). ``W_U`` / ``b_U`` map the pooled, normalized stream to the
        joint embedding (``hook_proj``), with ``ln_post`` / ``ln_final`` folded in. Visual ``W_E`` is ``conv1``
        as ``[3 * ph * pw, width]`` (the class embedding is in ``hook_embed``); text ``W_E`` is the token
        embedding. A ResNet visual tower has none (``model.W_Q`` raises AttributeError saying so)."""
        tower = tower or "visual"
        if tower == "visual":
            if self.visual.kind != "vit":
                raise NotImplementedError("the ResNet visual tower has no attention heads or token matrices")
            v = self.source.visual
            blocks = _tl_blocks(v.transformer.resblocks)
            why = "" if v.proj is not None else "the tower has no projection"
            if getattr(v, "attn_pool", None) is not None or v.pool_type not in ("tok", "avg"):
                pool = "attention" if getattr(v, "attn_pool", None) is not None else v.pool_type
                why = f"the pool ({pool}) is not linear"
            return TLWeightSource(
                blocks=blocks,
                W_E=v.conv1.weight.reshape(v.conv1.weight.shape[0], -1).T,
                W_pos=v.positional_embedding,
                unembed_norm=v.ln_post,
                unembed_weight=v.proj.T if not why else None,
                unembed_why=why,
            )
        if tower != "text" or self.text is None:
            raise ValueError(f"Expected tower 'visual' or 'text' (a hooked text tower), got {tower!r}.")
        t = self.text.holder
        proj = t.text_projection
        if isinstance(proj, nn.Linear):
            W_U, b_U = proj.weight, proj.bias
        else:
            W_U, b_U = (proj.T if proj is not None else None), None
        return TLWeightSource(
            blocks=_tl_blocks(t.transformer.resblocks),
            W_E=t.token_embedding.weight,
            W_pos=t.positional_embedding,
            unembed_norm=t.ln_final,
            unembed_weight=W_U,
            unembed_bias=b_U,
            unembed_why="" if W_U is not None else "the text tower has no projection",
        )

    @property
    def logit_scale(self) -> Tensor:
        return self.source.logit_scale.exp()

    # --------------------------------------------------------------- inputs
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer: ``source.visionlens_tokenizer`` when the model carries its own (e.g. the zoo
        CLIP's word-level one), else open_clip's for this model (built lazily; the BPE vocabulary ships with
        open_clip)."""
        if self._tokenizer is None:
            own = getattr(self.source, "visionlens_tokenizer", None)
            if own is not None:
                self._tokenizer = own
                return own
            import open_clip

            ctx = self.text.context_length if self.text is not None else getattr(self.source, "context_length", 77)
            if self.model_name:
                try:
                    self._tokenizer = open_clip.get_tokenizer(self.model_name, context_length=ctx)
                except Exception:  # unknown names fall back to CLIP's BPE tokenizer
                    self._tokenizer = None
            if self._tokenizer is None:
                self._tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
        return self._tokenizer

    def tokenize(self, texts: Union[str, Sequence[str]]) -> Tensor:
        """Strings -> token ids ``[batch, context_length]`` on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
            raise VisionLensError(
                f"Expected text as a list of strings or a token tensor [batch, context_length], got {_describe(texts)}."
            )
        if len(texts) == 0:
            raise VisionLensError("Expected at least one text string, got an empty list.")
        tokens = self.tokenizer(list(texts))
        return tokens.to(self._device())

    def _device(self) -> torch.device:
        for p in self.source.parameters():
            return p.device
        return torch.device("cpu")

    def validate(self, x: Any) -> None:
        if x is None:
            return
        if isinstance(x, str) or (isinstance(x, (list, tuple)) and x and all(isinstance(t, str) for t in x)):
            raise VisionLensError(
                "Expected an image batch first; texts go second: model(None, texts) for text "
                "embeddings, model(images, texts) for similarity logits."
            )
        check_image_batch(x, self.cfg)

    def validate_text(self, text: Any) -> Tensor:
        """A token tensor for ``text`` (strings are tokenized); raises VisionLensError for anything else."""
        if isinstance(text, Tensor):
            ctx = self.text.context_length if self.text is not None else None
            vocab = self.text.vocab_size if self.text is not None else None
            if text.ndim != 2 or text.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise VisionLensError(
                    f"Expected text tokens as an integer tensor [batch, {ctx or 'context_length'}], "
                    f"got {text.dtype} tensor of shape {tuple(text.shape)}. Pass a list of strings "
                    "to tokenize with the model's tokenizer."
                )
            if ctx is not None and text.shape[1] != ctx:
                raise VisionLensError(
                    f"Expected text tokens of length {ctx} (the model's context length), got shape "
                    f"{tuple(text.shape)}. Use model.adapter.tokenize(strings)."
                )
            if vocab is not None and text.numel() and (int(text.min()) < 0 or int(text.max()) >= vocab):
                raise VisionLensError(
                    f"Token ids must be in [0, {vocab}) for this model's vocabulary, got range "
                    f"[{int(text.min())}, {int(text.max())}]."
                )
            return text.long()
        return self.tokenize(text)

    def example_inputs(self, image_size: Optional[int] = None, batch: int = 1) -> tuple[tuple, dict]:
        """Arguments for a dummy call that reaches every hook (images and two short texts)."""
        size = (image_size, image_size) if image_size else tuple(self.cfg.image_size or (224, 224))
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch, self.cfg.in_chans, *size, generator=g).to(self._device())
        if self.text is None:
            return (images,), {}
        texts = ["a photo of a cat", "a diagram"][: max(1, batch)]
        return (images, texts), {}

    # --------------------------------------------------------------- computation
    def public_methods(self) -> dict[str, Any]:
        """open_clip's ``encode_image`` (``visual.*`` hooks) and ``encode_text`` (``text.*`` hooks)."""
        return {
            "encode_image": functools.partial(self.encode_image, validate=False),  # the wrapper validates
            "encode_text": self.encode_text,
        }

    def encode_image(self, image: Tensor, normalize: bool = False, validate: bool = True) -> Tensor:
        """``clip.encode_image``, with the ``visual.*`` hooks."""
        if validate:
            check_image_batch(image, self.cfg)
        feats = self.visual.forward(image)
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: Any, normalize: bool = False) -> Tensor:
        """``clip.encode_text`` on strings (tokenized here) or tokens, with the ``text.*`` hooks."""
        tokens = self.validate_text(text)
        self.last_text_tokens = tokens
        if self.text is None:
            feats = self.source.encode_text(tokens)
        else:
            feats = self.text.forward(tokens)
        return F.normalize(feats, dim=-1) if normalize else feats

    def similarity(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """``logit_scale * cos(image, text)`` (+ logit bias): ``[n_images, n_texts]`` (inputs normalized here)."""
        img = F.normalize(image_features, dim=-1)
        txt = F.normalize(text_features, dim=-1)
        logits = self.source.logit_scale.exp() * img @ txt.T
        if getattr(self.source, "logit_bias", None) is not None:
            logits += self.source.logit_bias
        return logits

    def forward(self, image: Optional[Tensor] = None, text: Any = None, return_type: str = "auto") -> Any:
        if return_type not in ("auto", "embeds", "logits"):
            raise VisionLensError(f"return_type must be 'auto', 'embeds' or 'logits', got {return_type!r}.")
        if image is None and text is None:
            raise VisionLensError(
                "Expected images and/or texts: model(images), model(images, texts) or model(None, texts)."
            )
        if text is None:
            self.last_text_tokens = None
        img = self.encode_image(image, validate=False) if image is not None else None
        txt = self.encode_text(text) if text is not None else None
        if return_type == "embeds":
            return img if txt is None else txt if img is None else (img, txt)
        if img is not None and txt is not None:
            return fire(self.hook_logits, self.similarity(img, txt))
        if img is not None and self.classifier is not None:
            return fire(self.hook_logits, self.classifier(img))
        if return_type == "logits":
            raise VisionLensError("return_type='logits' needs both images and texts, or an attached zero-shot head.")
        return img if img is not None else txt


def _tl_blocks(resblocks: nn.ModuleList) -> list[TLBlock]:
    out = []
    for blk in resblocks:
        a, mlp = blk.attn, blk.mlp
        ln_q, ln_k = getattr(a, "ln_q", None), getattr(a, "ln_k", None)
        inner, post = getattr(a, "ln_inner", None), getattr(blk, "ln_attn", None)
        out.append(
            TLBlock(
                ln1=blk.ln_1,
                qkv_weight=a.in_proj_weight,
                qkv_bias=a.in_proj_bias,
                n_heads=a.num_heads,
                d_head=a.head_dim,
                out=a.out_proj,
                ln2=blk.ln_2,
                fc1=mlp.c_fc,
                fc2=mlp.c_proj,
                gamma1=getattr(blk.ls_1, "gamma", None),
                gamma2=getattr(blk.ls_2, "gamma", None),
                qk_why="" if is_identity(ln_q) and is_identity(ln_k) else "q/k are normalized (ln_q / ln_k)",
                out_why="" if is_identity(inner) and is_identity(post) else "the heads' output is normalized",
                mlp_out_why="" if is_identity(getattr(mlp, "ln", None)) else "the MLP normalizes its hidden layer",
            )
        )
    return out


def _describe(x: Any) -> str:
    if isinstance(x, (list, tuple)):
        kinds = sorted({type(i).__name__ for i in x})
        return f"{type(x).__name__} of {', '.join(kinds) or 'nothing'}"
    return type(x).__name__
