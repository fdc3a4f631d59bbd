"""Inputs for analyses: tensors, PIL images, paths, folders, streams and the built-in photos.

:func:`as_images` turns whatever a user passes as ``inputs`` into an :class:`Images` source
that analyses iterate in batches through the model's own ``model.preprocess``:

* a preprocessed tensor batch ``[N, C, H, W]`` (or one image ``[C, H, W]``),
* a PIL image, an ``HxWxC`` array, a file path, or a list of those,
* a folder path (images found recursively, sorted by path),
* the word ``"builtin"``: :func:`builtin_photos`, real photographs shipped with scikit-image and
  scikit-learn (plus Debian ``opencv-doc``'s examples when installed),
* any iterable of batches (a ``DataLoader``, a generator) yielding tensors, ``(tensor, ...)``
  tuples or dicts with an ``"image"`` / ``"pixel_values"`` entry. Streams are read once, so
  memory does not depend on the dataset size; they have no random access (no example crops).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .preprocess import to_pil
from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = [
    "Images",
    "ImageList",
    "TensorImages",
    "BatchStream",
    "as_images",
    "builtin_photos",
    "image_folder",
    "denormalize",
    "IMAGE_EXTENSIONS",
    "OPENCV_DATA",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pnm")
OPENCV_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
_SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
    "camera",
    "coins",
    "moon",
)


def denormalize(x: Tensor, cfg: Any) -> np.ndarray:
    """A normalized image ``[C, H, W]`` (or batch) back to ``uint8`` ``HxWx3`` pixels using ``cfg.mean/std``."""
    x = x.detach().float().cpu()
    c = x.shape[-3]
    mean = torch.tensor(list(cfg.mean)[:c] or [0.0] * c).view(c, 1, 1)
    std = torch.tensor(list(cfg.std)[:c] or [1.0] * c).view(c, 1, 1)
    img = (x * std + mean).clamp(0, 1)
    img = img.movedim(-3, -1)
    if c == 1:
        img = img.repeat_interleave(3, dim=-1)
    return (img[..., :3] * 255).round().to(torch.uint8).numpy()


class Images:
    """A source of images for an analysis.

    ``batches(model, batch_size)`` yields ``(start_index, batch)`` with batches already on the
    model's device; ``names`` labels each image (empty for streams); ``display(i, model)`` returns
    image ``i`` as the model saw it (``uint8 HxWx3``) when ``random_access`` is true.
    """

    random_access: bool = True
    names: list[str]

    def __len__(self) -> int:
        raise TypeError(f"{type(self).__name__} has no known length")

    @property
    def length(self) -> Optional[int]:
        """Number of images, or ``None`` for a stream."""
        try:
            return len(self)
        except TypeError:
            return None

    def batches(
        self, model: HookedVisionModel, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        raise NotImplementedError

    def display(self, index: int, model: HookedVisionModel) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no random access to its images")

    def name(self, index: int) -> str:
        return self.names[index] if 0 <= index < len(self.names) else f"#{index}"


class ImageList(Images):
    """Images held as PIL images, arrays or file paths (read lazily), preprocessed per batch."""

    def __init__(self, items: Sequence[Any], names: Optional[Sequence[str]] = None, description: str = "") -> None:
        self.items = list(items)
        if names is None:
            names = [_default_name(it, i) for i, it in enumerate(self.items)]
        if len(names) != len(self.items):
            raise VisionLensError(f"Expected one name per image ({len(self.items)}), got {len(names)}.")
        self.names = [str(n) for n in names]
        self.description = description

    def __len__(self) -> int:
        return len(self.items)

    def _pil(self, i: int) -> Any:
        item = self.items[i]
        try:
            return to_pil(item)
        except VisionLensError:
            raise
        except FileNotFoundError:
            raise VisionLensError(f"Image file not found: {os.fspath(item)!r}.") from None
        except Exception as exc:  # PIL.UnidentifiedImageError, truncated files, ...
            raise VisionLensError(
                f"Could not read image {self.name(i)!r}: {type(exc).__name__}: {exc}. "
                f"Expected a readable image file ({', '.join(IMAGE_EXTENSIONS)})."
            ) from exc

    def batches(
        self, model: HookedVisionModel, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        stop = len(self) if limit is None else min(len(self), limit)
        for i in range(start, stop, batch_size):
            imgs = [self._pil(j) for j in range(i, min(i + batch_size, stop))]
            yield i, model.preprocess(imgs)

    def display(self, index: int, model: HookedVisionModel) -> np.ndarray:
        return denormalize(model.preprocess([self._pil(index)])[0], model.cfg)

    def __repr__(self) -> str:
        return f"ImageList({len(self)} images{', ' + self.description if self.description else ''})"


class TensorImages(Images):
    """An already preprocessed (normalized) tensor batch ``[N, C, H, W]``."""

    def __init__(self, x: Tensor, names: Optional[Sequence[str]] = None) -> None:
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4:
            raise VisionLensError(
                f"Expected an image tensor [N, C, H, W] (or one image [C, H, W]), got shape {tuple(x.shape)}."
            )
        self.x = x
        self.names = [str(n) for n in names] if names is not None else [f"#{i}" for i in range(x.shape[0])]

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(
        self, model: HookedVisionModel, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        stop = len(self) if limit is None else min(len(self), limit)
        for i in range(start, stop, batch_size):
            yield i, self.x[i : min(i + batch_size, stop)].to(model.device)

    def display(self, index: int, model: HookedVisionModel) -> np.ndarray:
        return denormalize(self.x[index], model.cfg)

    def __repr__(self) -> str:
        return f"TensorImages({tuple(self.x.shape)})"


class BatchStream(Images):
    """An iterable of batches read once (a ``DataLoader``, a generator); no random access."""

    random_access = False

    def __init__(self, iterable: Iterable[Any]) -> None:
        self.iterable = iterable
        self.names = []

    def batches(
        self, model: HookedVisionModel, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        seen = 0
        for item in self.iterable:
            x = _batch_tensor(item)
            if x.ndim == 3:
                x = x.unsqueeze(0)
            n = int(x.shape[0])
            lo = max(0, start - seen)
            hi = n if limit is None else max(0, min(n, limit - seen))
            if hi > lo:
                for j in range(lo, hi, batch_size):
                    yield seen + j, x[j : min(j + batch_size, hi)].to(model.device)
            seen += n
            if limit is not None and seen >= limit:
                break

    def __repr__(self) -> str:
        return f"BatchStream({type(self.iterable).__name__})"


def _batch_tensor(item: Any) -> Tensor:
    if isinstance(item, Tensor):
        return item
    if isinstance(item, dict):
        for key in ("image", "images", "pixel_values", "x"):
            if key in item and isinstance(item[key], Tensor):
                return item[key]
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], Tensor):
        return item[0]
    raise VisionLensError(
        f"Expected batches of image tensors [B, C, H, W] (or (tensor, label) tuples, or dicts with "
        f"an 'image' entry) from the input stream, got {type(item).__name__}."
    )


def _default_name(item: Any, i: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name
    fn = getattr(item, "filename", None)
    if isinstance(fn, str) and fn:
        return Path(fn).name
    return f"#{i}"


def image_folder(path: Union[str, os.PathLike], recursive: bool = True) -> ImageList:
    """All images under ``path`` (sorted by relative path), read lazily."""
    root = Path(path)
    if not root.is_dir():
        raise VisionLensError(f"Expected a folder of images, but {str(root)!r} is not a directory.")
    pattern = "**/*" if recursive else "*"
    files = sorted(
        p
        for p in root.glob(pattern)
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise VisionLensError(
            f"No images found in folder {str(root)!r}; expected files ending in {', '.join(IMAGE_EXTENSIONS)}."
        )
    return ImageList(
        [str(p) for p in files], names=[str(p.relative_to(root)) for p in files], description=f"folder {root}"
    )


@functools.lru_cache(maxsize=1)
def _builtin_items(include_opencv: bool) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    items: list[Any] = []
    names: list[str] = []
    try:
        import skimage.data as skd

        for name in _SKIMAGE_PHOTOS:
            try:
                arr = getattr(skd, name)()
            except Exception:  # a photo this scikit-image version does not ship offline
                continue
            items.append(np.ascontiguousarray(arr))
            names.append(f"skimage:{name}")
    except ImportError:
        pass
    try:
        from sklearn.datasets import load_sample_images

        sample = load_sample_images()
        for fname, arr in zip(sample.filenames, sample.images):
            items.append(arr)
            names.append(f"sklearn:{Path(fname).name}")
    except ImportError:
        pass
    if include_opencv and OPENCV_DATA.is_dir():
        for p in sorted(OPENCV_DATA.glob("*.jpg")):
            items.append(str(p))
            names.append(f"opencv:{p.name}")
    return tuple(items), tuple(names)


def builtin_photos(include_opencv: bool = True, limit: Optional[int] = None) -> ImageList:
    """Real photographs available offline: scikit-image's (astronaut, chelsea, coffee, rocket, ...),
    scikit-learn's sample images (china, flower) and, when installed, Debian ``opencv-doc``'s
    ``examples/data/*.jpg``. Names are ``"skimage:astronaut"``, ``"sklearn:china.jpg"``, ...
    """
    items, names = _builtin_items(include_opencv)
    if not items:
        raise VisionLensError(
            "No built-in photos available: install scikit-image or scikit-learn (pip install 'visionlens[data]')."
        )
    items_l, names_l = list(items), list(names)
    if limit is not None:
        items_l, names_l = items_l[:limit], names_l[:limit]
    return ImageList(items_l, names_l, description="built-in photos")


def as_images(inputs: Any) -> Images:
    """Turn an analysis ``inputs`` argument into an :class:`Images` source (see the module docstring)."""
    from PIL import Image

    if isinstance(inputs, Images):
        return inputs
    if inputs is None:
        raise VisionLensError("Expected images: a tensor batch, PIL images, paths, a folder, or 'builtin'; got None.")
    if isinstance(inputs, Tensor):
        return TensorImages(inputs)
    if isinstance(inputs, (str, os.PathLike)):
        text = os.fspath(inputs)
        if text == "builtin":
            return builtin_photos()
        p = Path(text).expanduser()
        if p.is_dir():
            return image_folder(p)
        if p.is_file():
            return ImageList([str(p)])
        raise VisionLensError(
            f"No such image file or folder: {text!r}. Expected a folder of images, an image file, or 'builtin'."
        )
    if isinstance(inputs, Image.Image):
        return ImageList([inputs])
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 4:
            return ImageList(list(inputs))
        return ImageList([inputs])
    if isinstance(inputs, (list, tuple)):
        if not inputs:
            raise VisionLensError("Expected at least one image, got an empty list.")
        if all(isinstance(t, Tensor) for t in inputs):
            try:
                return TensorImages(torch.stack([t if t.ndim == 3 else t.squeeze(0) for t in inputs]))
            except RuntimeError as exc:
                raise VisionLensError(f"Expected image tensors of one shape [C, H, W] in the list: {exc}") from None
        for i, t in enumerate(inputs):
            if not isinstance(t, (str, os.PathLike, Image.Image, np.ndarray)):
                raise VisionLensError(
                    f"Expected PIL images, arrays or paths in the image list; item {i} is {type(t).__name__}."
                )
        return ImageList(list(inputs))
    if hasattr(inputs, "__iter__"):
        return BatchStream(inputs)
    raise VisionLensError(
        f"Expected images: a tensor batch, PIL images, paths, a folder, an iterable of batches or "
        f"'builtin'; got {type(inputs).__name__}."
    )
