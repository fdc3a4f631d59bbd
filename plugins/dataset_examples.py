"""``dataset_examples``: the top-k and bottom-k dataset examples of every unit of many hooks, in one pass.

For each hook and unit (channels of a conv map, the last axis of token activations; the
:mod:`visionlens.units` convention) the sweep keeps, per image, the unit's **maximum** over
positions with its argmax location (``(y, x)`` for conv maps, the token index for ViTs) and
its **minimum** with the argmin location, and streams them into mergeable
:class:`visionlens.reducers.TopK` summaries (``largest=True`` for the top examples, ``False`` for
the bottom ones). Memory is ``O(k x units)`` whatever the dataset size; ties go to the lower image
index, so results do not depend on batching.

Inputs: an image folder, an image list, a preprocessed tensor batch, ``"builtin"`` (real photos),
a stream of batches, or a map-style ``torch.utils.data.Dataset`` whose items are images or
``(image, label)`` pairs (PIL / arrays go through ``model.preprocess``; tensors ``[C, H, W]`` are
taken as already preprocessed model inputs).

Crops: for conv maps the crop around an example's argmax is the hook's receptive field at that
location, measured from the architecture (:mod:`visionlens.receptive_field`: the support of the
input gradient of one output location, with positive random weights; cached per hook and input
size). Token activations have a global receptive field, so their crop is the token's patch with
one patch of context on each side (prefix tokens such as CLS: the whole image).

Resume: with ``checkpoint=PATH`` the reducer state is written atomically every
``checkpoint_every`` batches (and at the end); a run that is killed (even with SIGKILL) and started
again with the same arguments continues from the last checkpoint and gives exactly the result of an
uninterrupted run.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.data import ImageList, Images, TensorImages, as_images
from visionlens.hook_select import (
    PER_HEAD_HOOKS,
    default_hooks,
    fired_hooks,
    image_batch_support,
    model_description,
    position_kind,
    unit_layout,
    unravel,
)
from visionlens.hookspecs import hookimpl
from visionlens.receptive_field import receptive_field
from visionlens.reducers import TopK, atomic_write_bytes, load_checkpoint, save_checkpoint
from visionlens.results import Result, Table, new_figure, safe_filename
from visionlens.validation import VisionLensError

from .activation_stats import resolve_hooks

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "DatasetExamples",
    "DatasetExamplesResult",
    "DatasetImages",
    "as_example_images",
    "crop_box",
    "unit_extremes",
    "unit_positions",
    "weights_fingerprint",
]


# ----------------------------------------------------------------------------- inputs
class DatasetImages(Images):
    """A map-style dataset (``len`` + ``__getitem__``) of images or ``(image, label)`` items; random access."""

    def __init__(self, dataset: Any, names: Optional[list[str]] = None) -> None:
        self.dataset = dataset
        n = len(dataset)
        self.names = list(names) if names is not None else [f"#{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, i: int) -> Any:
        item = self.dataset[i]
        if isinstance(item, dict):
            for key in ("image", "images", "pixel_values", "x"):
                if key in item:
                    return item[key]
        if isinstance(item, (tuple, list)) and item:
            return item[0]
        return item

    def _tensor(self, model: HookedVisionModel, items: list[Any]) -> Tensor:
        if all(isinstance(t, Tensor) for t in items):
            try:
                return torch.stack([t if t.ndim == 3 else t.squeeze(0) for t in items]).to(model.device)
            except RuntimeError as exc:
                raise VisionLensError(
                    f"dataset_examples: expected dataset tensors of one shape [C, H, W]: {exc}"
                ) from None
        return model.preprocess(items)

    def batches(
        self, model: HookedVisionModel, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        stop = len(self) if limit is None else min(len(self), limit)
        for i in range(start, stop, batch_size):
            yield i, self._tensor(model, [self._item(j) for j in range(i, min(i + batch_size, stop))])

    def display(self, index: int, model: HookedVisionModel) -> np.ndarray:
        item = self._item(index)
        if isinstance(item, Tensor):
            return TensorImages(item.unsqueeze(0) if item.ndim == 3 else item).display(0, model)
        return ImageList([item]).display(0, model)

    def __repr__(self) -> str:
        return f"DatasetImages({type(self.dataset).__name__}, {len(self)} items)"


def as_example_images(inputs: Any) -> Images:
    """:func:`visionlens.data.as_images` plus map-style datasets (``len`` and ``__getitem__``, no ``__iter__``)."""
    if (
        not isinstance(inputs, (str, os.PathLike, Tensor, list, tuple, np.ndarray, Images))
        and hasattr(inputs, "__getitem__")
        and hasattr(inputs, "__len__")
    ):
        return DatasetImages(inputs)
    return as_images(inputs)


# ----------------------------------------------------------------------------- crops
def crop_box(
    model: HookedVisionModel,
    hook: str,
    position_kind: str,
    position_shape: list[int],
    loc: tuple[int, ...],
    H: int,
    W: int,
) -> tuple[tuple[int, int, int, int], Optional[tuple[int, int, int, int]]]:
    """``(crop window, marked cell)`` in an ``H x W`` image for an example at ``loc``; both ``(y0, x0, y1, x1)``.

    Conv maps: the receptive field of ``loc`` (and the stride cell inside it). Tokens: the patch with
    one patch of context. Anything else: the whole image.
    """
    whole = (0, 0, H, W)
    if not loc:
        return whole, None
    if position_kind == "y,x":
        rf = receptive_field(model, hook, (H, W))
        if rf is None:
            return whole, None
        y, x = loc
        box = rf.box(y, x, H, W)
        cy0 = min(max(0, rf.offset[0] + y * rf.stride[0] + (rf.size[0] - rf.stride[0]) // 2), H - 1)
        cx0 = min(max(0, rf.offset[1] + x * rf.stride[1] + (rf.size[1] - rf.stride[1]) // 2), W - 1)
        cell = (cy0, cx0, min(H, cy0 + rf.stride[0]), min(W, cx0 + rf.stride[1]))
        if box[2] <= box[0] or box[3] <= box[1]:
            return whole, None
        return box, cell
    if position_kind in ("token", "token,head"):
        npt = int(getattr(model.cfg, "num_prefix_tokens", 0) or 0)
        t = loc[0] - npt
        n_patch = position_shape[0] - npt
        cfg = model.cfg
        if cfg.patch_size:
            ph, pw = int(cfg.patch_size[0]), int(cfg.patch_size[1])
            gh, gw = H // ph, W // pw
        else:
            gh = gw = int(round(math.sqrt(max(n_patch, 0))))
            ph, pw = (H // gh, W // gw) if gh else (H, W)
        if t < 0 or gh * gw != n_patch or gh == 0:
            return whole, None
        y, x = divmod(t, gw)
        cell = (y * ph, x * pw, (y + 1) * ph, (x + 1) * pw)
        return (max(0, cell[0] - ph), max(0, cell[1] - pw), min(H, cell[2] + ph), min(W, cell[3] + pw)), cell
    return whole, None


def _channel_first(hook: str, act: Tensor) -> bool:
    """Whether ``act`` is a channel-first map ``[B, C, *spatial]`` in the :mod:`visionlens.units` convention."""
    return act.ndim >= 4 and not (act.ndim == 4 and hook.endswith(PER_HEAD_HOOKS))


def unit_positions(hook: str, act: Tensor) -> tuple[int, ...]:
    """The position shape of ``act``'s units (as :func:`~visionlens.hook_select.unit_layout` gives it)."""
    if _channel_first(hook, act):
        return tuple(int(s) for s in act.shape[2:])
    return tuple(int(s) for s in unit_layout(hook, act[:1])[1])


def unit_extremes(
    hook: str, act: Tensor, bottom: bool = True
) -> tuple[tuple[Tensor, Tensor], Optional[tuple[Tensor, Tensor]]]:
    """Per image and unit, ``(max, flat argmax)`` and (``bottom``) ``(min, flat argmin)`` over positions.

    Equal to ``amax`` / ``argmax`` over :func:`~visionlens.hook_select.unit_layout`'s samples (the first
    extremal position wins), without its channels-last copy: channel-first maps are reduced in place
    over their flattened spatial axes, one pass per extreme.
    """
    if _channel_first(hook, act):
        x, dim = act.flatten(2), 2  # [B, C, P], a view
    else:
        x, dim = unit_layout(hook, act)[0], 1  # [B, P, U]
    hi = torch.max(x, dim=dim)
    lo = torch.min(x, dim=dim) if bottom else None
    return (hi.values, hi.indices), (None if lo is None else (lo.values, lo.indices))


def weights_fingerprint(model: HookedVisionModel) -> str:
    """SHA-1 of every parameter's name and float32 values: what checkpoints and shard plans are tied to."""
    h = hashlib.sha1()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).to(torch.float32).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- analysis
class DatasetExamples(Analysis):
    """Top-k / bottom-k dataset examples (with argmax locations and receptive-field crops) per unit."""

    name = "dataset_examples"
    summary = (
        "Top-k and bottom-k dataset examples per unit (max / min over positions with their location) for "
        "many hooks in one pass, with receptive-field crops; resumable."
    )

    @dataclass
    class Config:
        hooks: list[str] = option(list, help="hook names, layer aliases or globs; empty = residual/block outputs")
        top_k: int = option(8, min=1, max=100_000, help="top examples kept per unit (largest per-image max)")
        bottom_k: int = option(
            4, min=0, max=100_000, help="bottom examples per unit (smallest per-image min); 0 = none"
        )
        batch_size: int = option(16, min=1, max=65_536, help="images per forward pass")
        max_images: Optional[int] = option(None, min=1, help="stop after this many images")
        checkpoint: Optional[str] = option(None, help="checkpoint file: saved every checkpoint_every batches, resumed")
        checkpoint_every: int = option(10, min=1, help="batches between checkpoints")
        crop_units: Optional[int] = option(16, min=0, help="units per hook that get crop grids (None = all units)")
        crop_size: int = option(48, min=8, max=512, help="side of each saved crop in pixels")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        """A quick run: two top and one bottom example, crops for two units."""
        return {"top_k": 2, "bottom_k": 1, "crop_units": 2, "crop_size": 16}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_batch_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "DatasetExamplesResult":
        images = as_example_images(inputs)
        explicit = bool(config.hooks)
        hooks = resolve_hooks(model, config.hooks) if explicit else default_hooks(model)
        tops: dict[str, TopK] = {}
        bots: dict[str, TopK] = {}
        pos_shapes: dict[str, tuple[int, ...]] = {}
        act_shapes: dict[str, tuple[int, ...]] = {}
        fingerprint = {
            "analysis": self.name,
            "model": model_description(model),
            "weights": weights_fingerprint(model) if config.checkpoint else None,  # only checkpoints use it
            "hooks": hooks,
            "top_k": config.top_k,
            "bottom_k": config.bottom_k,
            "batch_size": config.batch_size,
            "max_images": config.max_images,
            "n_images": images.length,
        }
        start = 0
        if config.checkpoint and os.path.exists(config.checkpoint):
            start, hooks = self._resume(config.checkpoint, fingerprint, tops, bots, pos_shapes, act_shapes)
        resumed_from = start

        def save(next_index: int) -> None:
            reducers: dict[str, Any] = {}
            for h in tops:
                reducers[f"{h}/top"] = tops[h]
                if h in bots:
                    reducers[f"{h}/bottom"] = bots[h]
            meta = dict(
                fingerprint,
                hooks=hooks,
                next_index=next_index,
                pos_shapes={h: list(s) for h, s in pos_shapes.items()},
                act_shapes={h: list(s) for h, s in act_shapes.items()},
            )
            save_checkpoint(config.checkpoint, reducers, meta)

        seen, n_batches = start, 0
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for offset, x in images.batches(model, config.batch_size, start=start, limit=config.max_images):
                    _, cache = model.run_with_cache(x, names_filter=hooks, return_cache_object=False)
                    if not act_shapes:
                        hooks = fired_hooks(cache, hooks, explicit, "dataset_examples")
                    b = x.shape[0]
                    index = torch.arange(offset, offset + b)
                    for h in hooks:
                        act = cache[h]
                        pos_shapes.setdefault(h, unit_positions(h, act))
                        act_shapes.setdefault(h, tuple(act.shape[1:]))
                        pos_shape = pos_shapes[h]
                        hi, lo = unit_extremes(h, act, bottom=bool(config.bottom_k))
                        loc = unravel(hi[1], pos_shape) if pos_shape else None
                        tops.setdefault(h, TopK(config.top_k, largest=True)).update(hi[0], index, loc)
                        if lo is not None:
                            loc = unravel(lo[1], pos_shape) if pos_shape else None
                            bots.setdefault(h, TopK(config.bottom_k, largest=False)).update(lo[0], index, loc)
                    del cache
                    seen = offset + b
                    n_batches += 1
                    if config.checkpoint and n_batches % config.checkpoint_every == 0:
                        save(seen)
        finally:
            model.train(was_training)
        if not tops:
            raise VisionLensError(
                "dataset_examples: no images to analyse (the input is empty"
                + (f" or was fully processed by checkpoint {config.checkpoint!r}" if start else "")
                + ")."
            )
        if config.checkpoint:
            save(seen)
        return self._result(model, images, config, hooks, tops, bots, pos_shapes, act_shapes, seen, resumed_from)

    def _resume(
        self, path: str, fingerprint: dict[str, Any], tops: dict, bots: dict, pos_shapes: dict, act_shapes: dict
    ) -> tuple[int, list[str]]:
        try:
            reducers, meta = load_checkpoint(path)
        except Exception as exc:
            raise VisionLensError(
                f"dataset_examples: checkpoint {path!r} is unreadable ({type(exc).__name__}: {exc}); "
                "delete it to start over."
            ) from exc
        for key in ("analysis", "model", "weights", "top_k", "bottom_k", "batch_size", "max_images", "n_images"):
            if meta.get(key) != fingerprint[key]:
                raise VisionLensError(
                    f"dataset_examples: checkpoint {path!r} belongs to a different run ({key} is "
                    f"{meta.get(key)!r} there, {fingerprint[key]!r} now). Delete it or pick "
                    "another checkpoint path."
                )
        if not set(meta["hooks"]) <= set(fingerprint["hooks"]):
            raise VisionLensError(
                f"dataset_examples: checkpoint {path!r} was written for hooks {meta['hooks']}, "
                f"not {fingerprint['hooks']}."
            )
        hooks = list(meta["hooks"])
        for h in hooks:
            if f"{h}/top" in reducers:
                tops[h] = reducers[f"{h}/top"]
                if f"{h}/bottom" in reducers:
                    bots[h] = reducers[f"{h}/bottom"]
                pos_shapes[h] = tuple(meta["pos_shapes"][h])
                act_shapes[h] = tuple(meta["act_shapes"][h])
        return int(meta["next_index"]), hooks

    def _result(
        self,
        model: HookedVisionModel,
        images: Images,
        config: Any,
        hooks: list[str],
        tops: dict,
        bots: dict,
        pos_shapes: dict,
        act_shapes: dict,
        n_images: int,
        resumed_from: int,
    ) -> "DatasetExamplesResult":
        tensors: dict[str, Tensor] = {}
        for h in hooks:
            for kind, red in (("top", tops.get(h)), ("bottom", bots.get(h))):
                if red is None:
                    continue
                tensors[f"{h}/{kind}_values"] = red.values.T.contiguous()  # [units, k] float64
                tensors[f"{h}/{kind}_index"] = red.index.T.contiguous()
                if red.location is not None:
                    tensors[f"{h}/{kind}_location"] = red.location.transpose(0, 1).contiguous()
        names = images.names if images.length is not None else []
        meta: dict[str, Any] = {
            "model": model_description(model),
            "family": model.cfg.family,
            "n_images": n_images,
            "inputs": repr(images),
            "hooks": hooks,
            "activation_shapes": {h: list(act_shapes[h]) for h in hooks},
            "position_shapes": {h: list(pos_shapes[h]) for h in hooks},
            "position_kind": {h: position_kind(h, act_shapes[h]) for h in hooks},
            "num_prefix_tokens": int(getattr(model.cfg, "num_prefix_tokens", 0) or 0),
            "resumed_from": resumed_from,
            "ranking": "top: largest per-image max over positions; bottom: smallest per-image min over positions",
        }
        if names and len(names) <= 100_000:
            meta["image_names"] = list(names[:n_images])
        res = DatasetExamplesResult(
            self.name, summary=self.summary, config=config_to_dict(config), meta=meta, tensors=tensors
        )
        res.tables = res.build_tables()
        if images.random_access and config.crop_units != 0:
            res.add_crops(model, images, config.crop_units, config.crop_size)
        return res


# ----------------------------------------------------------------------------- result
class DatasetExamplesResult(Result):
    """Result of ``dataset_examples``.

    Tensors ``"{hook}/{top|bottom}_{values|index|location}"``: ``[units, k]`` (location
    ``[units, k, position dims]``), best first; ``"crops/{hook}/{top|bottom}"``: ``[n, k, S, S, 3]``
    uint8 crops for the units ``meta["crop_units"][hook]``. ``examples(hook, unit)`` lists them;
    ``unit_grid(hook, unit)`` is the unit's picture (top row, bottom row); ``save`` also writes
    ``units/<hook>/unit_<u>.png`` grids and ``examples.html``.
    """

    @property
    def hooks(self) -> list[str]:
        return list(self.meta.get("hooks", []))

    def image_name(self, index: int) -> str:
        names = self.meta.get("image_names") or []
        return names[index] if 0 <= index < len(names) else f"#{index}"

    def n_units(self, hook: str) -> int:
        return int(self.tensors[f"{hook}/top_values"].shape[0])

    def examples(self, hook: str, unit: int, kind: str = "top") -> list[dict[str, Any]]:
        """``[{index, name, value, location}]`` best first (``kind`` ``"top"`` or ``"bottom"``)."""
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not analysed; hooks: {', '.join(self.hooks)}")
        if f"{hook}/{kind}_values" not in self.tensors:
            return []
        vals, idx = self.tensors[f"{hook}/{kind}_values"], self.tensors[f"{hook}/{kind}_index"]
        locs = self.tensors.get(f"{hook}/{kind}_location")
        out = []
        for j in range(vals.shape[1]):
            i = int(idx[unit, j])
            out.append(
                {
                    "index": i,
                    "name": self.image_name(i),
                    "value": float(vals[unit, j]),
                    "location": tuple(int(v) for v in locs[unit, j]) if locs is not None else (),
                }
            )
        return out

    def build_tables(self) -> dict[str, Table]:
        """The ``units`` table: each unit's best top and bottom example (first 50 units per hook).

        One tensor slice and ``tolist`` per hook and kind (the rows equal :meth:`examples`' first entries).
        """
        t = Table(
            ["hook", "unit", "top_value", "top_image", "top_location", "bottom_value", "bottom_image"],
            title="Best and worst example per unit (first 50 units per hook)",
        )
        for h in self.hooks:
            n = min(50, self.n_units(h))
            top_v, top_i, top_l = self._first_examples(h, "top", n)
            bot = self._first_examples(h, "bottom", n) if f"{h}/bottom_values" in self.tensors else None
            for u in range(n):
                t.rows.append(
                    [
                        h,
                        u,
                        top_v[u],
                        self.image_name(top_i[u]),
                        top_l[u],
                        bot[0][u] if bot else None,
                        self.image_name(bot[1][u]) if bot else "",
                    ]
                )
        return {"units": t}

    def _first_examples(self, hook: str, kind: str, n: int) -> tuple[list[float], list[int], list[list[int]]]:
        """``(values, image indices, locations)`` of the best example of units ``0..n-1`` as Python lists."""
        vals = self.tensors[f"{hook}/{kind}_values"][:n, 0].tolist()
        idx = self.tensors[f"{hook}/{kind}_index"][:n, 0].tolist()
        locs = self.tensors.get(f"{hook}/{kind}_location")
        loc = locs[:n, 0].tolist() if locs is not None else [[] for _ in range(n)]
        return [float(v) for v in vals], [int(i) for i in idx], loc

    # ------------------------------------------------------------------ crops
    def add_crops(self, model: HookedVisionModel, images: Images, n_units: Optional[int] = 16, size: int = 48) -> None:
        """Receptive-field crops of the top / bottom examples of the first ``n_units`` units of every hook."""
        from PIL import Image

        shown: dict[str, list[int]] = {}
        boxes_meta: dict[str, Any] = {}
        cache: dict[int, np.ndarray] = {}
        for h in self.hooks:
            units = list(range(self.n_units(h) if n_units is None else min(n_units, self.n_units(h))))
            shown[h] = units
            kind_pos = self.meta["position_kind"][h]
            pshape = self.meta["position_shapes"][h]
            for kind in ("top", "bottom"):
                if f"{h}/{kind}_values" not in self.tensors or not units:
                    continue
                k = self.tensors[f"{h}/{kind}_values"].shape[1]
                crops = torch.zeros(len(units), k, size, size, 3, dtype=torch.uint8)
                boxes = torch.full((len(units), k, 4), -1, dtype=torch.int64)
                for r, u in enumerate(units):
                    for j, ex in enumerate(self.examples(h, u, kind)):
                        if ex["index"] not in cache:
                            cache[ex["index"]] = images.display(ex["index"], model)
                        img = cache[ex["index"]]
                        (y0, x0, y1, x1), _ = crop_box(
                            model, h, kind_pos, pshape, ex["location"], img.shape[0], img.shape[1]
                        )
                        piece = Image.fromarray(img[y0:y1, x0:x1]).resize((size, size), Image.BILINEAR)
                        crops[r, j] = torch.from_numpy(np.array(piece))
                        boxes[r, j] = torch.tensor([y0, x0, y1, x1])
                self.tensors[f"crops/{h}/{kind}"] = crops
                self.tensors[f"crops/{h}/{kind}_box"] = boxes
            if kind_pos == "y,x":
                if cache:
                    H, W = next(iter(cache.values())).shape[:2]
                    rf = receptive_field(model, h, (H, W))
                    boxes_meta[h] = rf.to_dict() if rf is not None else None
        self.meta["crop_units"] = shown
        self.meta["receptive_fields"] = boxes_meta

    def unit_grid(self, hook: str, unit: int, pad: int = 2) -> Optional[np.ndarray]:
        """``uint8 HxWx3``: the unit's top crops in the first row, bottom crops in the second (None without crops)."""
        units = self.meta.get("crop_units", {}).get(hook, [])
        if unit not in units or f"crops/{hook}/top" not in self.tensors:
            return None
        r = units.index(unit)
        rows = [self.tensors[f"crops/{hook}/top"][r]]
        if f"crops/{hook}/bottom" in self.tensors:
            rows.append(self.tensors[f"crops/{hook}/bottom"][r])
        s = rows[0].shape[1]
        ncol = max(row.shape[0] for row in rows)
        grid = np.full((len(rows) * (s + pad) + pad, ncol * (s + pad) + pad, 3), 255, dtype=np.uint8)
        for i, row in enumerate(rows):
            for j in range(row.shape[0]):
                y, x = pad + i * (s + pad), pad + j * (s + pad)
                grid[y : y + s, x : x + s] = row[j].numpy()
        return grid

    def unit_grid_path(self, hook: str, unit: int) -> str:
        return f"units/{safe_filename(hook)}/unit_{unit}.png"

    def figures(self) -> dict[str, Any]:
        return {"overview": self.plot()}

    def plot(self) -> Any:
        hooks = self.hooks
        fig = new_figure(10, 3.5)
        ax1, ax2 = fig.subplots(1, 2)
        for h in hooks:
            v = self.tensors[f"{h}/top_values"][:, 0].float().numpy()
            ax1.hist(v, bins=30, alpha=0.5, label=h)
            if f"{h}/bottom_values" in self.tensors:
                ax2.hist(self.tensors[f"{h}/bottom_values"][:, 0].float().numpy(), bins=30, alpha=0.5, label=h)
        ax1.set_title("best top value per unit", fontsize=9)
        ax2.set_title("best bottom value per unit", fontsize=9)
        if 0 < len(hooks) <= 8:
            ax1.legend(fontsize=6)
        fig.suptitle(
            f"dataset_examples: {self.meta.get('model', '')}, {self.meta.get('n_images', '?')} images", fontsize=10
        )
        return fig

    def save(self, directory: Union[str, os.PathLike]) -> Path:
        """:meth:`Result.save` plus one PNG grid per unit with crops and ``examples.html`` linking them."""
        from io import BytesIO

        from PIL import Image

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        parts = [
            f"<h1>{html.escape(self.title())}: dataset examples</h1>",
            "<p>Each picture: top examples (first row), bottom examples (second row), cropped to the receptive "
            "field of the argmax / argmin location.</p>",
        ]
        for h in self.hooks:
            parts.append(f"<h2>{html.escape(h)}</h2>")
            for u in self.meta.get("crop_units", {}).get(h, []):
                grid = self.unit_grid(h, u)
                if grid is None:
                    continue
                rel = self.unit_grid_path(h, u)
                buf = BytesIO()
                Image.fromarray(grid).save(buf, format="PNG")
                atomic_write_bytes(directory / rel, buf.getvalue())
                names = ", ".join(e["name"] for e in self.examples(h, u, "top")[:3])
                parts.append(
                    f'<figure><img src="{html.escape(rel)}" alt="unit {u}">'
                    f"<figcaption>unit {u}: {html.escape(names)}</figcaption></figure>"
                )
        doc = (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>dataset examples</title>'
            "<style>figure{display:inline-block;margin:4px}figcaption{font:11px sans-serif}</style></head><body>"
            + "\n".join(parts)
            + "</body></html>\n"
        )
        atomic_write_bytes(directory / "examples.html", doc.encode("utf-8"))
        return super().save(directory)


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [DatasetExamples]
