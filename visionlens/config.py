"""`model.cfg`: a plain description of the wrapped architecture."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class VisionConfig:
    """Architecture facts that analyses need, filled in by the adapter.

    Transformer fields (``n_layers``, ``d_model``, ``n_heads`` ...) follow TransformerLens
    meanings; conv nets fill ``stage_depths`` and ``n_layers`` = number of residual blocks.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
