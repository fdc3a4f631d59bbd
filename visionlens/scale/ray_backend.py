"""The ``ray`` backend: a checkpointable sweep as a Ray Data pipeline, and independent tasks on Ray.

:func:`run_sweep_on_ray` runs ``activation_stats`` / ``dataset_examples`` (any checkpointable sweep,
see :mod:`visionlens.scale.shards`) as::

    shards (batch-aligned [start, stop) ranges not yet committed)
      -> map_batches(read)             Ray Data tasks: read + preprocess one shard's images (CPU)
      -> map_batches(ShardWorker)      actors, one model copy each (CPU or GPU): the analysis's own
                                       ``run`` over the shard -> the shard's reducer checkpoint
      -> driver: commit each shard file atomically, merge all shards in order, assemble the result
         (figures and crops) with the analysis's own resume path.

Fault tolerance: worker actors restart and Ray Data retries the shard that was in flight on a dead
actor; the driver commits a shard once (a duplicate delivery is dropped) and checks that the
committed shards tile the dataset exactly, so nothing is lost or counted twice. With
``checkpoint=PATH`` the committed shards live in ``PATH.shards/``; a driver killed at any point
resumes from them.
"""

from __future__ import annotations

import copy
import os
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from visionlens.analysis import analysis_config_class, config_to_dict, make_config
from visionlens.data import Images
from visionlens.hooked_model import HookedVisionModel
from visionlens.loading import load
from visionlens.plugins.dataset_examples import as_example_images
from visionlens.registry import get_analysis
from visionlens.runner import register_backend, run
from visionlens.validation import VisionLensError

from .cluster import ensure_ray
from .shards import (
    CPUPreprocessor,
    Shard,
    ShardImages,
    ShardStore,
    check_sweep_config,
    merge_shards,
    plan_shards,
    read_shard,
    write_merged,
)

__all__ = ["RayOptions", "run_sweep_on_ray", "ShardWorker", "shard_pipeline", "actor_model", "worker_rows"]


@dataclass
class RayOptions:
    """How a sweep runs on Ray.

    ``num_workers`` model actors (default: the cluster's GPUs / ``gpus_per_worker`` for GPU actors, else
    one per CPU); ``cpus_per_worker`` (default: the CPUs shared equally, at most 1; the actor's torch
    threads); ``gpus_per_worker`` (0 = CPU actors); ``shard_batches`` batches per shard (the unit of
    commit and retry); ``read_cpus`` per read task (default: for CPU actors the actors' own share, so Ray
    Data fuses reading into the model actors and they never wait for each other's CPUs; for GPU actors
    1, reads run as separate CPU tasks beside the GPU).
    """

    address: Optional[str] = None
    num_workers: Optional[int] = None
    cpus_per_worker: Optional[float] = None
    gpus_per_worker: float = 0.0
    shard_batches: int = 4
    read_cpus: Optional[float] = None


# ----------------------------------------------------------------------------- Ray Data stages
def _read_stage(batch: dict[str, np.ndarray], images_ref: Any, pre_ref: Any, batch_size: int) -> dict[str, Any]:
    """Read + preprocess the shards of a Ray Data batch (one shard per row)."""
    import ray

    images, pre = ray.get(images_ref), ray.get(pre_ref)
    pixels, seconds = [], []
    for s, e in zip(batch["start"], batch["stop"]):
        t = time.perf_counter()
        pixels.append(read_shard(images, pre, (int(s), int(e)), batch_size))
        seconds.append(time.perf_counter() - t)
    return {"start": batch["start"], "stop": batch["stop"], "pixels": pixels, "seconds": np.array(seconds)}


def worker_rows(batch: dict[str, Any], shard_fn: Any) -> dict[str, Any]:
    """A worker's output for a Ray Data batch of shards: each shard's payload ``shard_fn(start, stop, pixels)``
    and its ``seconds`` (read + payload, measured where they ran: free of Ray Data's delivery timing)."""
    payloads, seconds = [], []
    for s, e, px, read_s in zip(batch["start"], batch["stop"], batch["pixels"], batch["seconds"]):
        t = time.perf_counter()
        payloads.append(shard_fn(int(s), int(e), np.array(px, copy=True)))
        seconds.append(float(read_s) + time.perf_counter() - t)
    return {
        "start": batch["start"],
        "stop": batch["stop"],
        "state": np.array(payloads, dtype=object),
        "seconds": np.array(seconds),
    }


def actor_model(model_ref: Any) -> HookedVisionModel:
    """The actor's own model copy (from the object store, or loaded from a spec), on its GPU if it has one.

    Torch threads: the actor's CPU share (``OMP_NUM_THREADS``, which Ray sets from ``num_cpus``), at least 1.
    """
    import ray

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model = ray.get(model_ref)
    model = load(model) if isinstance(model, str) else model
    if ray.get_gpu_ids() and torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def maybe_crash(crash_at: Optional[tuple[int, str]], start: int) -> None:
    """Fault injection for tests: SIGKILL this process at shard ``crash_at[0]`` once (while the marker file exists)."""
    if crash_at is not None and start == crash_at[0]:
        try:
            os.remove(crash_at[1])
        except FileNotFoundError:
            pass
        else:
            os.kill(os.getpid(), signal.SIGKILL)


class ShardActor:
    """A Ray actor with one model copy that turns each shard it is given into bytes (:meth:`work`).

    ``crash_at`` is a fault-injection hook for tests: ``(shard start, marker file)``; the first actor
    to reach that shard while the marker exists removes it and kills its own process (SIGKILL).
    """

    def __init__(self, model_ref: Any, n_images: int, crash_at: Optional[tuple[int, str]] = None) -> None:
        self.model = actor_model(model_ref)
        self.n_images = n_images
        self.crash_at = crash_at

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return worker_rows(batch, self._shard)

    def _shard(self, start: int, stop: int, pixels: np.ndarray) -> bytes:
        maybe_crash(self.crash_at, start)
        if len(pixels) != stop - start:
            raise VisionLensError(f"Shard [{start}, {stop}) arrived with {len(pixels)} images.")
        return self.work(start, stop, ShardImages(torch.from_numpy(pixels), start, self.n_images))

    def work(self, start: int, stop: int, images: ShardImages) -> bytes:
        raise NotImplementedError


class ShardWorker(ShardActor):
    """Runs the analysis ``name`` over each shard; returns its checkpoint (the reducers' state) as bytes."""

    def __init__(
        self,
        model_ref: Any,
        name: str,
        config: dict[str, Any],
        n_images: int,
        crash_at: Optional[tuple[int, str]] = None,
    ) -> None:
        super().__init__(model_ref, n_images, crash_at)
        self.name = name
        self.config = config

    def work(self, start: int, stop: int, images: ShardImages) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "shard.safetensors")
            run(self.name, self.model, images, **dict(self.config, checkpoint=ckpt))
            return Path(ckpt).read_bytes()


# ----------------------------------------------------------------------------- the sweep
def _cpu_model(model: HookedVisionModel) -> HookedVisionModel:
    return model if model.device.type == "cpu" else copy.deepcopy(model).cpu()


def _worker_plan(ray: Any, opts: RayOptions) -> tuple[int, float, float]:
    """``(workers, CPUs per worker, CPUs per read task)``."""
    res = ray.cluster_resources()
    cpus = float(res.get("CPU", 1.0))
    if opts.num_workers is not None:
        n = int(opts.num_workers)
    elif opts.gpus_per_worker > 0:
        n = int(float(res.get("GPU", 0.0)) / opts.gpus_per_worker)
    else:
        n = max(1, int(cpus))
    if n < 1:
        raise VisionLensError(
            f"Expected at least one Ray worker, got {n} (cluster resources: {dict(res)}, options: {opts})."
        )
    per = opts.cpus_per_worker if opts.cpus_per_worker is not None else max(0.05, min(1.0, cpus / n))
    read = opts.read_cpus if opts.read_cpus is not None else (1.0 if opts.gpus_per_worker > 0 else per)
    return n, float(per), float(read)


def run_sweep_on_ray(
    name: str,
    model: Any,
    inputs: Any,
    options: Optional[RayOptions] = None,
    crash_at: Optional[tuple[int, str]] = None,
    stop_after: Optional[int] = None,
    **config: Any,
) -> Any:
    """Run sweep analysis ``name`` on Ray; returns the same result as ``visionlens.run(name, model, inputs, **config)``.

    ``options``: a :class:`RayOptions`. ``crash_at`` / ``stop_after`` inject faults for tests: kill
    the worker actor that starts shard ``crash_at[0]`` once; SIGKILL the driver after ``stop_after``
    newly committed shards.
    """
    opts = options or RayOptions()
    analysis = get_analysis(name)
    cfg_cls = analysis_config_class(analysis)
    cfg = make_config(cfg_cls, config, owner=name)
    check_sweep_config(name, cfg)
    if isinstance(model, str):
        model = load(model)
    elif isinstance(model, torch.nn.Module) and not isinstance(model, HookedVisionModel):
        model = HookedVisionModel.from_module(model)
    images: Images = as_example_images(inputs)
    n = images.length
    if n is None:
        raise VisionLensError(
            f"The ray backend needs a dataset of known length (a folder, a list, a tensor or a map-style dataset); "
            f"got {images!r}. Stream it in-process instead."
        )
    total = n if cfg.max_images is None else min(n, cfg.max_images)
    shards = plan_shards(total, cfg.batch_size, opts.shard_batches)
    values = config_to_dict(cfg, jsonable=False)
    with tempfile.TemporaryDirectory() as tmp:
        final = cfg.checkpoint or os.path.join(tmp, "merged.safetensors")
        store = ShardStore(
            f"{final}.shards",
            {
                "analysis": name,
                "n_images": n,
                "total": total,
                "shards": len(shards),
                "config": {k: v for k, v in config_to_dict(cfg).items() if k not in ("checkpoint", "checkpoint_every")},
            },
        )
        before = set(store.committed())
        todo = [s for s in shards if s not in before]
        commits: list[list[float]] = []
        if todo:
            commits = _execute(name, model, images, values, n, todo, store, opts, crash_at, stop_after)
        committed = store.committed()
        if committed != shards:
            missing = sorted(set(shards) - set(committed))
            raise VisionLensError(f"The ray sweep ended with {len(missing)} shards missing (first: {missing[:3]}).")
        reducers, meta = merge_shards([store.path(s) for s in committed], committed)
        write_merged(final, reducers, meta)
        result = run(name, model, images, **dict(values, checkpoint=final))
    if "resumed_from" in result.meta:
        result.meta["resumed_from"] = sum(e - s for s, e in before)
    result.meta["backend"] = {
        "name": "ray",
        "shards": len(shards),
        "shards_run": len(todo),
        "shard_images": cfg.batch_size * opts.shard_batches,
        "commits": commits,
    }
    return result


def shard_pipeline(
    model: HookedVisionModel,
    images: Images,
    todo: list[Shard],
    batch_size: int,
    opts: RayOptions,
    worker: type,
    worker_kwargs: dict[str, Any],
) -> Iterator[tuple[Shard, bytes, float]]:
    """Run ``todo`` shards through read tasks and ``worker`` actors; yields ``(shard, payload, seconds)`` as done.

    ``worker(model_ref=..., **worker_kwargs)`` is called with Ray Data batches of one shard (``start``, ``stop``,
    ``pixels``, read ``seconds``) and returns ``start``, ``stop``, ``state`` (the payload) and ``seconds`` (the
    shard's read + work time, see :func:`worker_rows`). Ray Data's actor pools restart dead
    actors and retry their tasks (``max_restarts = max_task_retries = -1``): a shard may arrive twice, never
    zero times.
    """
    ray = ensure_ray(opts.address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    n_workers, cpus, read_cpus = _worker_plan(ray, opts)
    model_ref = ray.put(_cpu_model(model))
    images_ref = ray.put(images)
    pre_ref = ray.put(CPUPreprocessor(model.cfg))
    ds = ray.data.from_items([{"start": s, "stop": e} for s, e in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        _read_stage,
        batch_size=1,
        num_cpus=read_cpus,
        fn_kwargs={"images_ref": images_ref, "pre_ref": pre_ref, "batch_size": batch_size},
    )
    ds = ds.map_batches(
        worker,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=n_workers),
        num_cpus=cpus,
        num_gpus=opts.gpus_per_worker or None,
        fn_constructor_kwargs={"model_ref": model_ref, **worker_kwargs},
    )
    for row in ds.iter_rows():
        yield (int(row["start"]), int(row["stop"])), bytes(row["state"]), float(row["seconds"])


def _execute(
    name: str,
    model: HookedVisionModel,
    images: Images,
    values: dict[str, Any],
    n_images: int,
    todo: list[Shard],
    store: ShardStore,
    opts: RayOptions,
    crash_at: Optional[tuple[int, str]],
    stop_after: Optional[int],
) -> list[list[float]]:
    """Run the shards; per committed shard ``[start, stop, seconds since the pipeline began (delivery), the
    shard's own read + work seconds in its worker]``."""
    t0 = time.perf_counter()
    commits: list[list[float]] = []
    worker_cfg = {k: v for k, v in values.items() if k != "checkpoint"}
    if "checkpoint_every" in worker_cfg:
        worker_cfg["checkpoint_every"] = 1 << 30  # one save, at the end of the shard
    rows = shard_pipeline(
        model,
        images,
        todo,
        values["batch_size"],
        opts,
        ShardWorker,
        {"name": name, "config": worker_cfg, "n_images": n_images, "crash_at": crash_at},
    )
    new = 0
    for shard, payload, seconds in rows:
        if store.commit(shard, payload):
            commits.append([shard[0], shard[1], round(time.perf_counter() - t0, 3), round(seconds, 3)])
            new += 1
            if stop_after is not None and new >= stop_after:
                os.kill(os.getpid(), signal.SIGKILL)
    return commits


def _sweep_backend(name: str, model: Any, inputs: Any, address: Optional[str] = None, **config: Any) -> Any:
    return run_sweep_on_ray(name, model, inputs, RayOptions(address=address), **config)


register_backend("ray", _sweep_backend)
