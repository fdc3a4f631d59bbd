"""A model's own input transform: resize, centre-crop, normalize."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .config import VisionConfig
from .validation import VisionLensError


def to_pil(image: Any) -> Image.Image:
    """PIL image from a PIL image, a file path, or an HxW / HxWxC array (uint8 0-255 or float 0-1)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            what = "is a folder, not an image file" if os.path.isdir(image) else "does not exist"
            raise VisionLensError(f"Image file {str(image)!r} {what}.")
        try:
            with Image.open(image) as img:
                return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise VisionLensError(
                f"Could not read image file {str(image)!r} (not an image, or corrupt?): {exc}"
            ) from None
    if isinstance(image, Tensor):
        image = image.detach().cpu().numpy()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = image.transpose(1, 2, 0)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise VisionLensError(f"Expected an HxW or HxWxC image array, got shape {arr.shape}.")
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        if np.issubdtype(arr.dtype, np.floating):
            if arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
                raise VisionLensError("Expected float image arrays in [0, 1] (or uint8 0-255).")
            arr = (arr * 255).round()
        return Image.fromarray(arr.astype(np.uint8)[..., :3])
    raise VisionLensError(f"Expected a PIL image, a path or an array, got {type(image).__name__}.")


def preprocess(images: Any, cfg: VisionConfig) -> Tensor:
    """One image or a sequence of images -> normalized batch ``[batch, C, H, W]``."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    if isinstance(images, (list, tuple)):
        items: Sequence[Any] = images
    elif isinstance(images, np.ndarray) and images.ndim == 4:
        items = list(images)
    else:
        items = [images]
    size = tuple(cfg.image_size) if cfg.image_size else (224, 224)
    interp = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}.get(
        cfg.interpolation, InterpolationMode.BILINEAR
    )
    resize = [int(round(s / cfg.crop_pct)) for s in size]
    out = []
    for item in items:
        img = to_pil(item)
        img = TF.resize(img, min(resize), interpolation=interp)
        img = TF.center_crop(img, list(size))
        t = TF.to_tensor(img)
        if cfg.in_chans == 1:
            t = t.mean(0, keepdim=True)
        out.append(TF.normalize(t, list(cfg.mean)[: cfg.in_chans], list(cfg.std)[: cfg.in_chans]))
    return torch.stack(out)
