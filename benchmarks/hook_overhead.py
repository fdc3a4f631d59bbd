"""Hook overhead: raw source forward vs the hooked model with no hooks, caching everything,
and caching only the residual stream.

Interleaved repeats (each round runs every variant once, in rotating order), ratios taken per
round against that round's raw time, medians reported. Random weights, eval mode, no grad.

    python benchmarks/hook_overhead.py                      # ViT-B/16 + ResNet-50, batch 8
    python benchmarks/hook_overhead.py --models vit_tiny32 --batch 1 --rounds 50
    python benchmarks/hook_overhead.py --models clip_vit_b32 unet_small --batch 2   # CLIP (both towers), a UNet
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import visionlens

# name -> (spec, load kwargs, image size); "clip:" / "unet:" entries are built by _special()
MODELS: dict[str, tuple[str, dict, int]] = {
    "clip_vit_b32": ("open_clip:ViT-B-32", {}, 224),
    "unet_small": ("diffusers:tiny", {}, 32),
    "vit_base_patch16_224": ("timm:vit_base_patch16_224", {}, 224),
    "resnet50": ("timm:resnet50", {}, 224),
    "vit_tiny32": ("timm:vit_tiny_patch16_224", {"img_size": 32}, 32),
    "resnet18": ("torchvision:resnet18", {}, 224),
    "convnext_tiny": ("timm:convnext_tiny", {}, 224),
    "mobilenet_v2": ("torchvision:mobilenet_v2", {}, 224),
    "googlenet": ("torchvision:googlenet", {}, 224),
}

RESID = ("hook_resid_pre", "hook_resid_post", "hook_resid_mid")


def _calls(key: str, model, batch: int, size: int):
    """(raw callable, hooked args, hooked kwargs, residual-stream filter) for one model."""
    resid_filter = lambda n: n.endswith(RESID)  # noqa: E731
    if key.startswith("clip"):
        x = torch.randn(batch, 3, size, size)
        prompts = [f"a photo of a number {i}" for i in range(batch)]
        tokens = model.adapter.tokenize(prompts)
        src = model.source

        def raw():  # both towers, as open_clip's own encode_image / encode_text + scaled cosine logits
            img = torch.nn.functional.normalize(src.encode_image(x), dim=-1)
            txt = torch.nn.functional.normalize(src.encode_text(tokens), dim=-1)
            return src.logit_scale.exp() * img @ txt.T

        return raw, (x, tokens), {}, resid_filter
    if key.startswith("unet"):
        args, kwargs = model.adapter.example_inputs(image_size=size, batch=batch)
        raw = lambda: model.source(*args, **kwargs)  # noqa: E731
        return raw, args, kwargs, (lambda n: ".resnets." in n and n.count(".") == 3 and n.endswith("hook_out"))
    x = torch.randn(batch, 3, size, size)
    return (lambda: model.source(x)), (x,), {}, resid_filter


def _load(key: str):
    spec, kw, _ = MODELS[key]
    if spec == "diffusers:tiny":  # a small SD-style UNet2DConditionModel (random weights)
        from visionlens import HookedVisionModel
        from visionlens.diffusion import tiny_unet

        return HookedVisionModel.from_diffusers(tiny_unet("conditional", sample_size=32))
    return visionlens.load(spec, **kw)


def _timeit(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(key: str, batch: int, rounds: int, warmup: int) -> dict:
    spec, _, size = MODELS[key]
    torch.manual_seed(0)
    model = _load(key)
    model.validate_inputs = True
    raw, args, kwargs, resid_filter = _calls(key, model, batch, size)
    variants: dict[str, Callable[[], object]] = {
        "raw": raw,
        "hooked_no_hooks": lambda: model(*args, **kwargs),
        "cache_all": lambda: model.run_with_cache(*args, **kwargs),
        "cache_resid": lambda: model.run_with_cache(*args, names_filter=resid_filter, **kwargs),
    }
    n_resid = sum(1 for n in model.hook_dict if resid_filter(n))
    times: dict[str, list[float]] = {k: [] for k in variants}
    ratios: dict[str, list[float]] = {k: [] for k in variants if k != "raw"}
    names = list(variants)
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in variants.values():
                fn()
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            this = {k: _timeit(variants[k]) for k in order}
            for k, t in this.items():
                times[k].append(t)
            for k in ratios:
                ratios[k].append(this[k] / this["raw"])
    return {
        "model": key,
        "spec": spec,
        "adapter": model.cfg.adapter,
        "batch": batch,
        "image_size": size,
        "n_hooks": len(model.hook_dict),
        "n_resid_hooks": n_resid,
        "median_ms": {k: 1000 * statistics.median(v) for k, v in times.items()},
        "median_ratio": {k: statistics.median(v) for k, v in ratios.items()},
    }


def to_markdown(results: list[dict], meta: dict) -> str:
    lines = [
        f"# Hook overhead ({meta['device']}, torch {meta['torch']}, {meta['threads']} threads, "
        f"{meta['rounds']} interleaved rounds)",
        "",
        "| model | adapter | batch | px | hooks | raw ms | no hooks | cache all | cache resid |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q = r["median_ratio"]
        lines.append(
            f"| {r['model']} | {r['adapter']} | {r['batch']} | {r['image_size']} | {r['n_hooks']} | "
            f"{r['median_ms']['raw']:.1f} | {q['hooked_no_hooks']:.3f}x | {q['cache_all']:.3f}x | "
            f"{q['cache_resid']:.3f}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vit_base_patch16_224", "resnet50"], choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    results = []
    for key in args.models:
        res = bench_model(key, args.batch, args.rounds, args.warmup)
        print(json.dumps(res), flush=True)
        results.append(res)
    meta = {
        "device": args.device if args.device != "cpu" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "python": sys.version.split()[0],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"hook_overhead_b{args.batch}_" + "_".join(args.models)
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = to_markdown(results, meta)
    (out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
