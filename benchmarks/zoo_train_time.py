"""Estimate `visionlens zoo train all` wall time: seconds per optimizer step of every zoo entry (1 thread).

    python benchmarks/zoo_train_time.py [--steps 30]

Times N steps after a 5-step warm-up (data generation excluded) and multiplies by each entry's
default step count. Evaluation (held-out accuracy, diffusion sampling) is timed separately.
"""

from __future__ import annotations

import argparse
import time

import torch

from visionlens.zoo.catalog import entries
from visionlens.zoo.train import train_module


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    total = 0.0
    print(f"{'entry':<16}{'s/step':>8}{'steps':>7}{'train s':>9}{'eval s':>8}")
    for name, e in entries().items():
        if e.requires():
            continue
        train_module(name, steps=5)  # warm-up and cached data
        t0 = time.perf_counter()
        module, _ = train_module(name, steps=args.steps)
        per = (time.perf_counter() - t0) / args.steps
        t1 = time.perf_counter()
        if name != "diffusion":  # sampling-based evaluation needs the trained judge; timed in the card
            with torch.no_grad():
                e.evaluate(module)
        ev = time.perf_counter() - t1
        est = per * e.default_steps + ev
        total += est
        print(f"{name:<16}{per:>8.3f}{e.default_steps:>7}{per * e.default_steps:>9.1f}{ev:>8.1f}")
    print(f"estimated total (1 thread, excluding diffusion evaluation): {total / 60:.1f} min")


if __name__ == "__main__":
    main()
