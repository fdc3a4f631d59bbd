"""Shards of a checkpointable sweep: planning, a view of one shard, committed shard files, merging.

A *checkpointable sweep* is an analysis whose config has ``batch_size``, ``max_images`` and
``checkpoint`` and whose ``run`` streams ``images.batches(model, batch_size, start=...)`` into
mergeable reducers saved with :func:`visionlens.reducers.save_checkpoint` (meta ``next_index``):
``activation_stats`` and ``dataset_examples`` (and so the Microscope build). Any backend runs the
analysis's own ``run`` on a :class:`ShardImages` view of each shard, keeps the shard's reducer
checkpoint, and :func:`merge_shards` combines them (``merge`` is associative; top-k ties go to the
lower image index) into the checkpoint an uninterrupted in-process sweep would have written.
Shards are aligned on ``batch_size`` so every forward sees exactly the batch it sees in-process.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from visionlens.data import Images
from visionlens.preprocess import preprocess
from visionlens.reducers import Reducer, load_checkpoint, merge_all, save_checkpoint
from visionlens.serialize import atomic_write_bytes
from visionlens.validation import VisionLensError

__all__ = ["SWEEP_FIELDS", "Shard", "ShardImages", "ShardStore", "plan_shards", "merge_shards", "check_sweep_config"]

SWEEP_FIELDS = ("batch_size", "max_images", "checkpoint")
Shard = tuple[int, int]  # [start, stop) image indices


def check_sweep_config(name: str, config: Any) -> None:
    """Raise unless ``config`` belongs to a checkpointable sweep (see the module docstring)."""
    missing = [f for f in SWEEP_FIELDS if not hasattr(config, f)]
    if missing:
        raise VisionLensError(
            f"Analysis {name!r} is not a checkpointable dataset sweep (its config lacks {', '.join(missing)}); "
            "the ray backend runs sweeps such as 'activation_stats' and 'dataset_examples'."
        )


def plan_shards(n_images: int, batch_size: int, shard_batches: int) -> list[Shard]:
    """``[start, stop)`` ranges of ``shard_batches`` whole batches covering ``n_images`` images."""
    if n_images < 1 or batch_size < 1 or shard_batches < 1:
        raise VisionLensError(
            f"Expected n_images, batch_size and shard_batches >= 1, got {n_images}, {batch_size}, {shard_batches}."
        )
    step = batch_size * shard_batches
    return [(s, min(s + step, n_images)) for s in range(0, n_images, step)]


class ShardImages(Images):
    """Images ``[start, stop)`` of a dataset of ``total`` images, already preprocessed, with global offsets.

    ``len()`` is the whole dataset's length (analyses fingerprint their checkpoints with it);
    ``batches`` yields only this shard's batches, indexed as in the whole dataset. No random access:
    figures and crops are made once, by the driver, from the original images.
    """

    random_access = False

    def __init__(self, pixels: Tensor, start: int, total: int) -> None:
        self.pixels = pixels
        self.start = int(start)
        self.total = int(total)
        self.names: list[str] = []

    def __len__(self) -> int:
        return self.total

    def batches(
        self, model: Any, batch_size: int = 16, start: int = 0, limit: Optional[int] = None
    ) -> Iterator[tuple[int, Tensor]]:
        stop = self.start + len(self.pixels)
        if limit is not None:
            stop = min(stop, limit)
        device = model.device
        for i in range(max(self.start, start), stop, batch_size):
            j = i - self.start
            yield i, self.pixels[j : j + min(batch_size, stop - i)].to(device)

    def __repr__(self) -> str:
        return f"ShardImages([{self.start}, {self.start + len(self.pixels)}) of {self.total})"


def read_shard(images: Images, preprocessor: Any, shard: Shard, batch_size: int) -> np.ndarray:
    """The preprocessed pixels of ``shard`` as one float array ``[n, C, H, W]`` (read in ``batch_size`` batches)."""
    parts = [x.cpu() for _, x in images.batches(preprocessor, batch_size, start=shard[0], limit=shard[1])]
    return torch.cat(parts).numpy()


class CPUPreprocessor:
    """The part of a model that :meth:`Images.batches` uses (``preprocess``, ``device``, ``cfg``), on the CPU.

    Read tasks carry this instead of the model.
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")

    def preprocess(self, images: Any) -> Tensor:
        return preprocess(images, self.cfg)


class ShardStore:
    """Committed shard checkpoints in a folder: ``shard-<start>-<stop>.safetensors``, written atomically.

    A shard is committed once its whole reducer state is on disk; a driver that dies loses only the
    shards in flight, and a restart schedules just the missing ones. ``plan.json`` records the shard
    plan so that a restart with other settings is refused instead of mixing shards.
    """

    _NAME = re.compile(r"^shard-(\d+)-(\d+)\.safetensors$")

    def __init__(self, folder: Union[str, os.PathLike], plan: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        plan_file = self.folder / "plan.json"
        text = json.dumps(dict(plan), sort_keys=True)
        if plan_file.exists():
            old = plan_file.read_text()
            if old != text:
                raise VisionLensError(
                    f"Shard folder {str(self.folder)!r} belongs to a different sweep (plan {old} there, {text} now). "
                    "Delete it or pick another checkpoint path."
                )
        else:
            atomic_write_bytes(plan_file, text.encode())

    def path(self, shard: Shard) -> Path:
        return self.folder / f"shard-{shard[0]:010d}-{shard[1]:010d}.safetensors"

    def committed(self) -> list[Shard]:
        """Shards on disk, sorted by start."""
        out = []
        for p in self.folder.iterdir():
            m = self._NAME.match(p.name)
            if m:
                out.append((int(m.group(1)), int(m.group(2))))
        return sorted(out)

    def commit(self, shard: Shard, payload: bytes) -> bool:
        """Write a shard's checkpoint bytes; ``False`` (and nothing written) when it was already committed."""
        p = self.path(shard)
        if p.exists():
            return False
        atomic_write_bytes(p, payload)
        return True


def merge_shards(paths: list[Path], shards: list[Shard]) -> tuple[dict[str, Reducer], dict[str, Any]]:
    """Merge shard checkpoints (in shard order) into one ``(reducers, meta)`` with ``next_index`` at the end.

    Raises unless ``shards`` tile ``[0, stop)`` exactly once: nothing lost, nothing counted twice.
    """
    order = sorted(range(len(shards)), key=lambda i: shards[i])
    expect = 0
    for i in order:
        s, e = shards[i]
        if s != expect:
            raise VisionLensError(f"Shards do not tile the dataset: expected a shard at {expect}, got [{s}, {e}).")
        expect = e
    loaded = [load_checkpoint(paths[i]) for i in order]
    meta = dict(loaded[0][1])
    names = list(loaded[0][0])
    for red, m in loaded[1:]:
        if list(red) != names or m.get("hooks") != meta.get("hooks"):
            raise VisionLensError("Shard checkpoints disagree on their reducers or hooks; the sweep is inconsistent.")
    merged = {n: merge_all(red[n] for red, _ in loaded) for n in names}
    meta["next_index"] = expect
    return merged, meta


def write_merged(path: Union[str, os.PathLike], reducers: Mapping[str, Reducer], meta: Mapping[str, Any]) -> None:
    """Save the merged state as an ordinary (in-process resumable) sweep checkpoint."""
    save_checkpoint(path, reducers, meta)
