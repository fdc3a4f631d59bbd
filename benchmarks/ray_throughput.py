"""Benchmark: images/s of ``dataset_examples`` over every channel of a ResNet-50, in-process vs Ray vs raw.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_throughput.py --images 32 --size 224 --batch-size 8

Rows (all over the same PNG files, each read, preprocessed and run through the same random-weight
``timm:resnet50`` at ``--size`` px with one torch thread per process):

* ``raw read+forward``: a plain loop, PIL read + ``model.preprocess`` + ``model.source(x)``, no hooks;
* ``raw forward``: the forward alone over already preprocessed tensors (the floor);
* ``in-process``: ``visionlens.run("dataset_examples", ...)`` over every channel of every residual block
  output (the default hooks), top-k and bottom-k with argmax locations;
* ``ray, W workers``: the same call with ``backend="ray"`` on a local Ray instance (``num_cpus`` =
  the machine's cores), W model actors with one CPU (and one torch thread) each. ``ray.init`` is
  reported separately, and so is a first (warm-up) Ray run: a driver's first Ray Data execution pays
  one-time set-up. Each Ray run starts its own actors (a Python process importing torch and visionlens, a
  model copy), so a row gives the full ``seconds`` (start-up and the driver's merge included), ``start-up s``
  (the first shard's delivery time less its own work time) and ``steady images/s``: ``W x images /
  (the shards' read + forward + reducer seconds, timed inside the workers)``, i.e. the rate once the
  actors are up (the driver's delivery times are bursty: Ray Data hands over outputs in groups). Each worker count
  is preceded by a paired in-process run (the load from other jobs drifts over minutes, so rows far apart
  in time are not comparable);

and the reducer state (bytes of the top / bottom values, indices and locations) after half of the
images and after all of them: ``O(k x channels)``, independent of the number of images. The Ray and
in-process top-k indices are checked to be identical. Writes ``results/ray_throughput.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _load_avg() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _state_bytes(res) -> int:
    return sum(
        t.numel() * t.element_size()
        for k, t in res.tensors.items()
        if k.rsplit("/", 1)[-1].split("_")[0] in ("top", "bottom")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="timm:resnet50")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="Ray worker counts, comma separated ('' = no Ray rows)")
    ap.add_argument("--shard-batches", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="alternating raw / in-process rounds (medians)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    from PIL import Image

    import visionlens
    from visionlens.hook_select import default_hooks

    load_start = _load_avg()
    model = visionlens.load(args.model).eval()
    hooks = default_hooks(model)
    tmp = Path(tempfile.mkdtemp(prefix="vl_ray_bench_"))
    rng = np.random.default_rng(0)
    assert args.rounds >= 1, "--rounds must be >= 1"
    for i in range(args.images):  # smooth random images (PNG-compressible like photos), 1.25x the model size
        side = int(args.size * 1.25)
        small = rng.integers(0, 255, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(tmp / f"img{i:05d}.png")
    files = sorted(str(p) for p in tmp.glob("*.png"))
    n, bs = len(files), args.batch_size
    rows = []

    def row(name: str, seconds: float, note: str = "", steady: Any = None, startup: Any = None) -> None:
        r = {"run": name, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 2), "note": note}
        r.update(steady_images_per_s=steady, startup_seconds=startup)
        rows.append(r)
        print(f"{name:28s} {seconds:8.2f} s  {n / seconds:7.2f} img/s  steady {steady} start-up {startup}  {note}")

    cfg = dict(top_k=args.k, bottom_k=args.k, batch_size=bs, crop_units=0)

    def raw_loop(keep: list) -> None:
        with torch.no_grad():
            for i in range(0, n, bs):
                x = model.preprocess([Image.open(f) for f in files[i : i + bs]])
                model.source(x)
                keep.append(x)

    with torch.no_grad():
        model.source(model.preprocess([Image.open(files[0])]))  # warm-up
    # raw and in-process alternate (--rounds times; medians), so a change in the machine's load hits both
    t_raw, t_local, xs = [], [], []
    local: Any = None
    for r in range(args.rounds):
        xs.clear()
        t = time.perf_counter()
        raw_loop(xs)
        t_raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        local = visionlens.run("dataset_examples", model, str(tmp), **cfg)
        t_local.append(time.perf_counter() - t)
        print(f"round {r}: raw {t_raw[-1]:.2f} s, in-process {t_local[-1]:.2f} s", flush=True)
    row("raw read+forward", statistics.median(t_raw), "PIL read + preprocess + forward, no hooks")
    with torch.no_grad():
        t = time.perf_counter()
        for x in xs:
            model.source(x)
        row("raw forward", time.perf_counter() - t, "forward over preprocessed tensors (one round)")
    row("in-process", statistics.median(t_local), f"{len(hooks)} hooks, all channels; incl. result tables")
    channels = sum(local.n_units(h) for h in local.hooks)
    n_half = min(n, max(args.k, n // 2))  # at least k images, so every top-k list is full
    half = visionlens.run("dataset_examples", model, str(tmp), max_images=n_half, **cfg)
    memory = {
        "channels": channels,
        "k": args.k,
        "state_bytes_half": _state_bytes(half),
        "state_bytes_all": _state_bytes(local),
        "images_half": n_half,
        "images_all": n,
    }
    print(f"reducer state: {memory}")

    ray_info: dict = {}
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if workers:
        import ray

        from visionlens.scale.ray_backend import RayOptions, run_sweep_on_ray

        t = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_info["init_seconds"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()  # the driver's first Ray Data run pays one-time set-up: not in any row
        run_sweep_on_ray("dataset_examples", model, str(tmp), RayOptions(num_workers=1), max_images=bs, **cfg)
        ray_info["warm_up_seconds"] = round(time.perf_counter() - t, 2)
        for w in workers:
            opts = RayOptions(num_workers=w, cpus_per_worker=1.0, shard_batches=args.shard_batches)
            load = _load_avg()
            t = time.perf_counter()  # a paired in-process run just before, under the same load
            visionlens.run("dataset_examples", model, str(tmp), **cfg)
            t_pair = time.perf_counter() - t
            t = time.perf_counter()
            res = run_sweep_on_ray("dataset_examples", model, str(tmp), opts, **cfg)
            seconds = time.perf_counter() - t
            same = all(
                torch.equal(res.tensors[k], local.tensors[k])
                for k in local.tensors
                if k.endswith(("_index", "_location"))
            )
            commits = res.meta["backend"]["commits"]  # [start, stop, delivered at s, worker's own s] in commit order
            busy = sum(c[3] for c in commits)  # read + forward + reducers, timed inside the workers
            steady = round(w * n / busy, 2)  # the w workers busy side by side
            startup = round(commits[0][2] - commits[0][3], 1)  # before the first shard's own work began
            note = (
                f"top/bottom-k indices identical: {same}; paired in-process run {t_pair:.1f} s "
                f"({n / t_pair:.2f} img/s); load {load}"
            )
            row(f"ray, {w} worker{'s' if w > 1 else ''}", seconds, note, steady, startup)
            ray_info[f"commits_{w}"] = commits
        ray.shutdown()

    raw = next(r for r in rows if r["run"] == "raw read+forward")["seconds"]
    inproc = next(r for r in rows if r["run"] == "in-process")["seconds"]
    summary = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_throughput.py "
        f"--model {args.model} --images {n} --size {args.size} --batch-size {bs} --k {args.k} --workers {args.workers} "
        f"--shard-batches {args.shard_batches} --rounds {args.rounds}",
        "model": args.model,
        "size": args.size,
        "cores": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": _load_avg(),
        "rows": rows,
        "in_process_vs_raw": round(raw / inproc, 3),
        "in_process_vs_raw_per_round": [round(a / b, 3) for a, b in zip(t_raw, t_local)],
        "memory": memory,
        "ray": ray_info,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ray_throughput.json").write_text(json.dumps(summary, indent=1) + "\n")
    lines = [
        f"# dataset_examples throughput: {args.model} at {args.size} px, {n} images, batch {bs}, k={args.k}",
        "",
        f"`{summary['command']}`",
        "",
        f"{os.cpu_count()} cores, load average {load_start} at the start and {summary['load_average_end']} at the "
        "end (other jobs were running: absolute figures are low and noisy).",
        "",
        "| run | seconds | images/s | steady images/s | start-up s | note |",
        "|---|---:|---:|---:|---:|---|",
        *[
            f"| {r['run']} | {r['seconds']} | {r['images_per_s']} | {r['steady_images_per_s'] or ''} | "
            f"{r['startup_seconds'] or ''} | {r['note']} |"
            for r in rows
        ],
        "",
        f"in-process / raw read+forward throughput: {summary['in_process_vs_raw']} (medians of {args.rounds} "
        f"alternating rounds; per round: {summary['in_process_vs_raw_per_round']}).",
        f"ray.init: {ray_info.get('init_seconds', 'n/a')} s and a warm-up Ray run "
        f"({ray_info.get('warm_up_seconds', 'n/a')} s) are in no row. Ray rows: `seconds` includes starting "
        "the actors (a process importing torch + visionlens, a model copy each) and the driver's merge; "
        "`start-up s` is the first shard's delivery time less its own work time; `steady images/s` is "
        "workers x images / the shards' read + forward + reducer seconds timed inside the workers (the rate "
        "once the actors are up). Each worker count is paired with an "
        "in-process run made just before it (in the note), as the load from other jobs changes over minutes.",
        "",
        f"Reducer state over {channels} channels, k={args.k} top + {args.k} bottom: "
        f"{memory['state_bytes_half']} bytes after {memory['images_half']} images, "
        f"{memory['state_bytes_all']} bytes after {memory['images_all']} images.",
        "",
    ]
    (out / "ray_throughput.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
