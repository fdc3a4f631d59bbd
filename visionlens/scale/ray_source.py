"""The dictionary activation source on Ray: actors compute activation vectors shard by shard, in order.

An :class:`~visionlens.plugins.dictionaries.source.ActivationSource` streams vectors rather than merging
reducers, so :class:`RayActivationSource` (the same source, same arguments plus ``ray_options`` and
``shard_dir``) keeps its order instead::

    shards ([start, stop) ranges of whole batches of the pass)
      -> read tasks + VectorWorker actors (one model copy each): the source's own ``read_batch`` over each
         batch of the shard -> the shard's chunks (vectors, indices, chunk boundaries) as one safetensors file
      -> driver: commits each shard file atomically (a duplicate delivery is dropped) and yields the
         committed shards' chunks strictly in shard order, whatever order they finish in.

The chunks are the in-process chunks: same vectors (within float tolerance: another process's forward),
same ``[image, position, timestep]`` indices, same boundaries (so the buffered shuffle of ``batches()``
is the same). The position subsets are seeded by ``(seed, batch start, timestep)``, as in-process.

Resume: with ``shard_dir`` the shard files stay; a restarted driver (or a later pass, or another source
with the same settings) computes only the shards not yet there. Without it they live in a temporary
folder and each file is deleted once served. A shard folder of a different walk is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from visionlens.hook_select import model_description
from visionlens.plugins.dataset_examples import weights_fingerprint
from visionlens.plugins.dictionaries.source import ActivationBatch, ActivationSource
from visionlens.validation import VisionLensError

from .ray_backend import RayOptions, ShardActor, shard_pipeline
from .shards import ShardImages, ShardStore, plan_shards

__all__ = ["RayActivationSource", "VectorWorker", "ray_chunks", "walk_settings"]


class RayActivationSource(ActivationSource):
    """:class:`~visionlens.plugins.dictionaries.source.ActivationSource` with the forwards on Ray actors.

    ``ray_options``: a :class:`~visionlens.scale.ray_backend.RayOptions` (default: one actor per CPU);
    ``shard_dir``: keep committed shards there (resume, later passes; default: a temporary folder, each
    shard deleted once served). ``last_run`` records the shards planned and computed by the last pass.
    Everything else (``batches``, ``collect``, ``loader``, ``state_dict``) is the in-process source's.
    """

    def __init__(
        self,
        model: Any,
        hook: str,
        images: Any,
        *,
        ray_options: Optional[RayOptions] = None,
        shard_dir: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, hook, images, **kwargs)
        self.ray_options = ray_options
        self.shard_dir = shard_dir
        self.last_run: dict[str, Any] = {}

    def iter_chunks(self, crash_at: Optional[tuple[int, str]] = None) -> Iterator[ActivationBatch]:
        """Unshuffled vectors from the resume point to the end of one pass, computed on Ray (``crash_at``: tests)."""
        for chunk, batch_done in ray_chunks(self, self.images_done, crash_at=crash_at):
            yield chunk
            if batch_done is not None:
                self.images_done = batch_done
        self.images_done = 0
        self.passes += 1


def walk_settings(source: ActivationSource) -> dict[str, Any]:
    """The constructor arguments that decide a source's vectors (what a worker's copy needs)."""
    return {
        "hook": source.hook,
        "batch_size": source.batch_size,
        "positions": source.positions,
        "timesteps": source.timesteps,
        "forward": source.forward,
        "seed": source.seed,
    }


class VectorWorker(ShardActor):
    """The activation chunks of each shard (``crash_at``: fault injection, as :class:`ShardActor`)."""

    def __init__(
        self, model_ref: Any, settings: dict[str, Any], n_images: int, crash_at: Optional[tuple[int, str]] = None
    ) -> None:
        super().__init__(model_ref, n_images, crash_at)
        self.settings = settings

    def work(self, start: int, stop: int, images: ShardImages) -> bytes:
        src = ActivationSource(self.model, images=images, **self.settings)
        xs, idx, starts, sizes, lengths = [], [], [], [], []
        for i, x in images.batches(self.model, src.batch_size, start=start, limit=stop):
            for chunk in src.read_batch(x, i):
                xs.append(chunk.x)
                idx.append(chunk.index)
                starts.append(i)
                sizes.append(int(x.shape[0]))
                lengths.append(len(chunk))
        meta = {"layout": src.layout, "pos_shape": list(src.pos_shape or ()), "d_in": src.d_in}
        tensors = {
            "x": torch.cat(xs).contiguous(),
            "index": torch.cat(idx).contiguous(),
            "starts": torch.tensor(starts, dtype=torch.int64),
            "sizes": torch.tensor(sizes, dtype=torch.int64),
            "lengths": torch.tensor(lengths, dtype=torch.int64),
        }
        return save_tensors(tensors, metadata={"meta": json.dumps(meta)})


def _plan(source: ActivationSource, n_images: int, total: int, shard_batches: int) -> dict[str, Any]:
    return {
        "walk": "activation_source",
        "model": model_description(source.model),
        "weights": weights_fingerprint(source.model),
        "hook": source.hook,
        "batch_size": source.batch_size,
        "positions": source.positions,
        "timesteps": source.timesteps,
        "seed": source.seed,
        "n_images": n_images,
        "total": total,
        "shard_batches": shard_batches,
    }


def _serve(source: ActivationSource, path: Path, start: int) -> Iterator[tuple[ActivationBatch, Optional[int]]]:
    """The committed shard's chunks from image ``start`` on, each with the batch end once its last chunk is out."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["meta"])
        t = {k: f.get_tensor(k) for k in ("x", "index", "starts", "sizes", "lengths")}
    source.layout, source.pos_shape, source.d_in = meta["layout"], tuple(meta["pos_shape"]), meta["d_in"]
    starts, sizes = t["starts"].tolist(), t["sizes"].tolist()
    bounds = np.cumsum([0, *t["lengths"].tolist()])
    for j, b in enumerate(starts):
        if b < start:
            continue
        last = j + 1 == len(starts) or starts[j + 1] != b
        chunk = ActivationBatch(t["x"][bounds[j] : bounds[j + 1]], t["index"][bounds[j] : bounds[j + 1]])
        yield chunk, (b + sizes[j] if last else None)


def ray_chunks(
    source: RayActivationSource, start: int = 0, crash_at: Optional[tuple[int, str]] = None
) -> Iterator[tuple[ActivationBatch, Optional[int]]]:
    """One pass of ``source`` from image ``start`` (a batch boundary) computed on Ray, in reading order.

    Yields ``(chunk, images done)``: the second item is set after the last chunk of each image batch
    (what ``source.images_done`` becomes), else None. ``source.last_run`` records the shards planned and
    computed. ``crash_at`` kills the actor that starts that shard once (tests).
    """
    opts: RayOptions = source.ray_options or RayOptions()
    n = source.images.length
    if n is None:
        raise VisionLensError(
            f"The ray backend needs images of known length (a folder, a list, a tensor); got {source.images!r}."
        )
    total = n if source.max_images is None else min(n, source.max_images)
    if total < 1:
        raise VisionLensError(f"No activations read from {source.hook}: the image source is empty.")
    shards = [s for s in plan_shards(total, source.batch_size, opts.shard_batches) if s[1] > start]
    temporary = source.shard_dir is None
    folder = tempfile.mkdtemp(prefix="vl_vectors_") if temporary else str(source.shard_dir)
    try:
        store = ShardStore(folder, _plan(source, n, total, opts.shard_batches))
        on_disk = set(store.committed())
        todo = [s for s in shards if s not in on_disk]
        source.last_run = {"backend": "ray", "shards": len(shards), "shards_run": len(todo)}
        served = 0

        def ready() -> Iterator[tuple[ActivationBatch, Optional[int]]]:
            nonlocal served
            while served < len(shards) and store.path(shards[served]).exists():
                path = store.path(shards[served])
                yield from _serve(source, path, start)
                if temporary:
                    os.remove(path)
                served += 1

        yield from ready()
        if todo:
            worker_kwargs = {"settings": walk_settings(source), "n_images": n, "crash_at": crash_at}
            rows = shard_pipeline(
                source.model, source.images, todo, source.batch_size, opts, VectorWorker, worker_kwargs
            )
            for shard, payload, _ in rows:
                if shard in shards[:served]:
                    continue  # a second delivery of a shard already served (a retried task)
                store.commit(shard, payload)
                yield from ready()
        if served != len(shards):
            missing = shards[served:]
            raise VisionLensError(f"The ray walk ended with {len(missing)} shards missing (first: {missing[:3]}).")
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
