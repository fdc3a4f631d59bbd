"""`model.cfg`: a plain description of the wrapped architecture."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisionConfig:
    """Architecture facts that analyses need, filled in by the adapter.

    Transformer fields (``n_layers``, ``d_model``, ``n_heads`` ...) follow TransformerLens
    meanings; conv nets fill ``stage_depths`` and ``n_layers`` = number of residual blocks.

    What TransformerLens's own helpers read from ``model.cfg`` (``transformer_lens.patching``,
    ``ActivationCache``) is here too: ``device`` (the wrapped model's device, kept in sync when the
    model moves), ``n_key_value_heads`` (None: no grouped-query attention), ``d_vocab`` (the class
    count), ``n_ctx`` (tokens per image for token models, else None).
    """

    family: str
    architecture: str = ""
    adapter: str = ""
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    d_head: int = 0
    d_mlp: Optional[int] = None
    image_size: Optional[tuple[int, int]] = None
    patch_size: Optional[tuple[int, int]] = None
    in_chans: int = 3
    n_classes: int = 0
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    num_prefix_tokens: int = 0
    pool_type: str = ""
    stage_depths: tuple[int, ...] = ()
    stage_widths: tuple[int, ...] = ()
    normalization_type: Optional[str] = None
    attn_only: bool = False
    dynamic_img_size: bool = False
    min_image_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_patches(self) -> Optional[int]:
        if self.image_size is None or self.patch_size is None:
            return None
        return (self.image_size[0] // self.patch_size[0]) * (self.image_size[1] // self.patch_size[1])

    @property
    def device(self) -> torch.device:
        """The wrapped model's device (TransformerLens's ``cfg.device``); follows ``model.to(...)``."""
        owner = self.__dict__.get("_device_owner")
        if owner is not None:
            return owner.device
        return torch.device(self.__dict__.get("_device", "cpu"))

    @device.setter
    def device(self, value: Any) -> None:
        owner = self.__dict__.get("_device_owner")
        if owner is not None and torch.device(value) != owner.device:
            raise ValueError(f"cfg.device follows the model ({owner.device}); move the model with model.to({value!r}).")
        self.__dict__["_device"] = str(value)

    def bind_device(self, owner: Any) -> None:
        """Make ``device`` read ``owner.device`` (``HookedVisionModel`` binds its own config)."""
        self.__dict__["_device_owner"] = owner

    def __deepcopy__(self, memo: dict) -> "VisionConfig":
        # a copy of the config alone keeps following the same model; a copy made while deep-copying
        # the model follows the new model
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = memo.get(id(v), v) if k == "_device_owner" else copy.deepcopy(v, memo)
        return new

    @property
    def n_key_value_heads(self) -> Optional[int]:
        """TransformerLens's grouped-query-attention field: None (every head has its own keys / values)."""
        return None

    @property
    def d_vocab(self) -> int:
        """TransformerLens's vocabulary size: here the number of classes (the width of ``W_U``)."""
        return self.n_classes

    @property
    def d_vocab_out(self) -> int:
        return self.n_classes

    @property
    def n_ctx(self) -> Optional[int]:
        """Tokens per image at the configured size (patches plus prefix tokens); None for conv nets."""
        n = self.n_patches
        if n is None or not self.n_heads:
            return None
        return n + int(self.num_prefix_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
