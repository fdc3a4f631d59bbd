"""``facets`` on the planted two-factor unit over fresh data seeds: facets found, purity, monosemantic control.

    OMP_NUM_THREADS=1 python benchmarks/facets_planted_seeds.py [--seeds 10]

The planted model and images are those of ``tests/toolkit/test_facets.py`` (the model is calibrated on
seed 0; every seed here draws new images).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.toolkit import test_facets as planted  # noqa: E402
from visionlens.featurevis import to_model_input  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seeds", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    model, _, _ = planted.planted_model()
    print("| data seed | facets (poly unit) | purity | one facet per factor | facets (red-only control) |")
    print("|---|---|---|---|---|")
    for seed in range(1, args.seeds + 1):
        raw, kinds = planted._images(seed)
        x = to_model_input(model, raw)
        res = planted._run(model, x, 0)
        pur = res.purity(kinds)
        ctrl = planted._run(model, x, 1, n_examples=planted.N_PER // 2)
        print(f"| {seed} | {res.n_facets} | {pur['purity']:.3f} | {pur['separate']} | {ctrl.n_facets} |", flush=True)


if __name__ == "__main__":
    main()
