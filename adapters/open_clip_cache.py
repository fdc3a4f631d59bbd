"""The CLIP activation cache: per-tower views (``cache.tower("visual" | "text")``) and their readouts."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from visionlens.cache import VisionActivationCache
from visionlens.config import VisionConfig
from visionlens.validation import VisionLensError

from .transformer_blocks import LinearReadout

__all__ = ["ClipActivationCache", "ClipTowerCache", "TowerAdapterView"]


class _DirectionHead:
    """A linear head ``weight [n_classes, width]`` / ``bias [n_classes]`` in a tower's residual space."""

    def __init__(self, weight: Tensor, bias: Optional[Tensor]):
        self.weight, self.bias = weight, bias


def _as_directions(head: Any) -> Tensor:
    """Class directions in the joint embedding space ``[n_classes, embed_dim]``."""
    w = getattr(head, "weight", head)
    if not isinstance(w, Tensor) or w.ndim != 2:
        raise VisionLensError(
            "Expected class directions: a ZeroShotHead (visionlens.clip.zero_shot_head) or a tensor "
            f"[n_classes, embed_dim]; got {type(head).__name__}."
        )
    return w


class TowerAdapterView:
    """What the cache needs from an adapter, for one tower.

    ``adapter`` is the model's :class:`~visionlens.adapters.open_clip.OpenCLIPAdapter` (its ``visual`` /
    ``text`` towers, ``classifier`` and ``aliases()`` are read); ``head`` holds class directions in the
    joint embedding space; ``text_tokens`` are the tokens of the cached run (text-tower readouts).
    """

    def __init__(self, adapter: Any, tower: str, head: Any = None, text_tokens: Optional[Tensor] = None):
        self.adapter, self.tower, self.head, self.text_tokens = adapter, tower, head, text_tokens
        t = adapter.text if tower == "text" else adapter.visual
        self.impl = t
        if tower == "text":
            self.final_ln = t.holder.ln_final
        else:
            self.final_ln = getattr(t.m, "ln_post", None)

    def head_results_from_z(self, layer: int, z: Tensor) -> Tensor:
        return self.impl.blocks.head_results_from_z(layer, z)

    def aliases(self) -> dict[str, str]:
        return self.adapter.aliases()

    def readout(self) -> LinearReadout:
        head = self.head
        if head is None and self.tower == "visual":
            head = self.adapter.classifier
        if head is not None:
            return self._readout(_as_directions(head))
        what = (
            "a zero-shot head (visionlens.clip.zero_shot_head(model, classnames, templates)) or text embeddings"
            if self.tower == "visual"
            else "image embeddings or any [n, embed_dim] directions"
        )
        # Normalizing / pooling (apply_ln_to_stack) works without classes; logits name what is missing.
        return self._readout(
            None,
            missing=f"CLIP {self.tower}-tower logit attribution needs class directions: "
            f"pass cache.tower({self.tower!r}, head=...) with {what}.",
        )

    def _readout(self, dirs: Optional[Tensor], missing: str = "") -> LinearReadout:
        if self.tower == "visual":
            if self.impl.kind != "vit":
                raise NotImplementedError(
                    "Residual-stream logit attribution needs the ViT visual tower; the ResNet "
                    "tower pools with attention (use visual.attnpool.hook_result)."
                )
            P = self.impl.proj_matrix()
            pool = self.impl.pool_fn()
            norm_first = self.impl.norm_first
            bias = None
        else:
            P, b = self.impl.proj_matrix()
            if self.text_tokens is None:
                raise VisionLensError(
                    "Text-tower readouts need the text tokens of the cached run (run_with_cache with texts)."
                )
            idx = self.impl.pool_index(self.text_tokens)
            ar = torch.arange(idx.shape[0], device=idx.device)
            norm_first = self.impl.cls_emb is None

            def pool(x: Tensor) -> Tensor:
                return x[..., ar.to(x.device), idx.to(x.device), :]

            bias = dirs.to(b.dtype) @ b if (b is not None and dirs is not None) else None
        if dirs is None:
            head: Any = _MissingHead(missing)
        else:
            head = _DirectionHead(dirs.to(P.dtype) @ P.T if P is not None else dirs, bias)
        return LinearReadout(ln=self.final_ln, norm_first=norm_first, pools=[(pool, head, 1.0)])


class _MissingHead:
    def __init__(self, message: str):
        self.message = message

    @property
    def weight(self) -> Tensor:
        raise VisionLensError(self.message)

    bias = weight


class _TowerModelView:
    """A stand-in for the model inside a tower view: its own ``cfg`` and ``adapter``, the rest delegated."""

    def __init__(self, model: Any, cfg: VisionConfig, adapter: TowerAdapterView):
        self.__dict__.update(_model=model, cfg=cfg, adapter=adapter)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_model"], name)


class ClipActivationCache(VisionActivationCache):
    """Activation cache of a CLIP model; ``cache.tower("visual" | "text")`` gives per-tower views.

    Without a view, the residual-stream helpers (``accumulated_resid``, ``decompose_resid``,
    ``stack_head_results``, ``logit_attrs``) read the visual tower. In a tower view, plain names
    (``"blocks.0.hook_resid_pre"``) are looked up under that tower's prefix.
    """

    def __init__(
        self,
        cache_dict: dict[str, Tensor],
        model: Any,
        has_batch_dim: bool = True,
        text_tokens: Optional[Tensor] = None,
    ):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        if text_tokens is None:
            adapter = getattr(model, "adapter", None)
            text_tokens = getattr(adapter, "last_text_tokens", None)
        self.text_tokens = text_tokens

    def tower(self, name: str, head: Any = None) -> "ClipTowerCache":
        """A view of one tower (``"visual"`` or ``"text"``).

        ``head``: class directions in the joint embedding space used by ``logit_attrs`` -- a
        :class:`visionlens.clip.ZeroShotHead`, text embeddings (visual tower) or image
        embeddings (text tower), ``[n_classes, embed_dim]``. The visual tower defaults to the
        zero-shot head attached to the model.
        """
        root = self.model
        adapter = root.adapter
        if name not in ("visual", "text"):
            raise VisionLensError(f"Expected tower 'visual' or 'text', got {name!r}.")
        if name == "text" and adapter.text is None:
            raise VisionLensError("This CLIP model's text tower is not hooked (unsupported text encoder).")
        cfg = adapter.tower_cfg(name)
        cfg.bind_device(root)  # cfg.device follows the model, as on the root config
        view = _TowerModelView(root, cfg, TowerAdapterView(adapter, name, head, self.text_tokens))
        return ClipTowerCache(self.cache_dict, view, has_batch_dim=self.has_batch_dim, text_tokens=self.text_tokens)

    def embed_scale(self, tower: str = "visual") -> Tensor:
        """``1 / |embedding|`` per example: multiplies ``logit_attrs`` into cosine-similarity units.

        (Times ``model.adapter.logit_scale`` gives contributions to the CLIP logits.)
        """
        return 1.0 / self._need_full(f"{tower}.hook_proj").norm(dim=-1)

    def _need_full(self, name: str) -> Tensor:
        if name not in self.cache_dict:
            raise KeyError(f"{name!r} is not in the cache; include it in names_filter.")
        return self.cache_dict[name]


class ClipTowerCache(ClipActivationCache):
    """One tower of a :class:`ClipActivationCache` (shares its tensors)."""

    def __getitem__(self, key: Any) -> Tensor:
        if isinstance(key, str) and key not in self.cache_dict:
            full = self._name(key)
            if full in self.cache_dict:
                return self.cache_dict[full]
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        return key in self.cache_dict or (isinstance(key, str) and self._name(key) in self.cache_dict)
