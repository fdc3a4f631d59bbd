"""Benchmark: ``dataset_examples`` over all channels of several layers vs a raw PyTorch loop.

    .venv/bin/python benchmarks/dataset_sweep.py --images 64 --size 64

The raw loop keeps every per-image max / min in memory and takes one top-k at the end (O(images x
units) memory); the plugin streams into TopK reducers (O(k x units)). Both must agree exactly.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="timm:resnet18")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import visionlens
    from visionlens.plugins.dataset_examples import DatasetExamples

    model = visionlens.load(args.model).eval()
    hooks = ["layer1", "layer2", "layer3", "layer4"] if "resnet" in args.model else None
    hooks = [model.resolve_hook(h) for h in hooks] if hooks else list(model.hook_dict)[-6:]
    x = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    t = time.perf_counter()
    a = DatasetExamples()
    res = a.run(
        model, x, a.make_config(hooks=hooks, top_k=args.k, bottom_k=args.k, batch_size=args.batch_size, crop_units=0)
    )
    t_plugin = time.perf_counter() - t

    t = time.perf_counter()
    maxes: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    with torch.no_grad():
        for i in range(0, args.images, args.batch_size):
            _, cache = model.run_with_cache(x[i : i + args.batch_size], names_filter=hooks, return_cache_object=False)
            for h in hooks:
                maxes[h].append(cache[h].flatten(2).amax(-1))
    raw = {h: torch.topk(torch.cat(v).double().T, args.k, dim=1) for h, v in maxes.items()}
    t_raw = time.perf_counter() - t
    # values must match exactly; indices can differ only among tied values (ReLU zeros), where
    # dataset_examples picks the lowest image index and torch.topk an arbitrary one
    same = all(torch.equal(res.tensors[f"{h}/top_values"], raw[h].values) for h in hooks)
    units = sum(res.n_units(h) for h in hooks)
    print(
        f"{args.model}, {args.images} images {args.size}px, {len(hooks)} hooks, {units} units: "
        f"dataset_examples (top+bottom, locations) {t_plugin:.2f}s, raw loop (top only) {t_raw:.2f}s, "
        f"identical top values: {same}"
    )


if __name__ == "__main__":
    main()
