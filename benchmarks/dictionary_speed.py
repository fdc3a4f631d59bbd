"""Sparse-dictionary speed: training throughput (activation vectors per second) and the cost of a forward with
a dictionary spliced in (reconstruction only, and with the error term), side by side with a plain forward in
one run. Zoo models (trained, tiny), held-out planted images, one thread by default.

    python benchmarks/dictionary_speed.py                         # zoo:resnet and zoo:vit, TopK 512 / 256
    python benchmarks/dictionary_speed.py --models resnet --kinds topk,batchtopk,nmf --rounds 20

Forward times: interleaved rounds (plain, spliced, spliced + error in rotating order), medians and the median
per-round ratio to the plain forward. Training: ``fit_dictionary`` on the hook's vectors for a fixed number of
steps (``overcomplete.sae.train_sae``; NMF: ``fit`` iterations), vectors processed per second.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import visionlens
from visionlens.plugins.dictionaries import ActivationSource, fit_dictionary, spliced
from visionlens.zoo.catalog import get_entry
from visionlens.zoo.classifiers import held_out_batch
from visionlens.zoo.dictionary_transfer import training_images

OUT = Path(__file__).parent / "results"


def bench(name: str, kinds: list[str], rounds: int, batch: int, steps: int, n_images: int) -> dict:
    model = visionlens.load(f"zoo:{name}")
    entry = get_entry(name)
    hook = model.resolve_hook(entry.pathway.hook)
    x = ActivationSource(model, hook, training_images(entry, n_images), positions=16).collect()
    size = min(4 * x.shape[1], 512)
    images = held_out_batch(batch).images
    rows = []
    for kind in kinds:
        epochs = max(1, round(steps * 256 / len(x))) if kind != "nmf" else 100
        d, log = fit_dictionary(x, kind, size, 8, epochs=epochs, batch_size=256)
        times: dict[str, list[float]] = {"plain": [], "spliced": [], "spliced+error": []}
        ratios: dict[str, list[float]] = {"spliced": [], "spliced+error": []}
        variants = list(times)
        with torch.no_grad():
            for r in range(rounds + 2):
                t_round = {}
                for v in variants[r % 3 :] + variants[: r % 3]:
                    if v == "plain":
                        t0 = time.perf_counter()
                        model(images)
                        t_round[v] = time.perf_counter() - t0
                    else:
                        with spliced(model, d, hook, use_error=v == "spliced+error"):
                            t0 = time.perf_counter()
                            model(images)
                            t_round[v] = time.perf_counter() - t0
                if r < 2:  # warm-up
                    continue
                for v, t in t_round.items():
                    times[v].append(t)
                for v in ratios:
                    ratios[v].append(t_round[v] / t_round["plain"])
        rows.append(
            {
                "model": f"zoo:{name}",
                "hook": hook,
                "kind": kind,
                "n_features": size,
                "d_in": int(x.shape[1]),
                "train_vectors": int(len(x)),
                "train_vectors_per_second": log["vectors_per_second"],
                "train_seconds": log["seconds"],
                "forward_ms": {v: round(1e3 * statistics.median(t), 3) for v, t in times.items()},
                "ratio_to_plain": {v: round(statistics.median(t), 3) for v, t in ratios.items()},
                "batch": batch,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet,vit")
    p.add_argument("--kinds", default="topk")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for m in a.models.split(","):
        rows += bench(m, a.kinds.split(","), a.rounds, a.batch, a.steps, a.n_images)["rows"]
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"threads": a.threads, "machine": platform.machine(), "torch": torch.__version__}
    path = OUT / f"dictionary_speed_{a.threads}thread.json"
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
