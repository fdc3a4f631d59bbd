"""One short GPU check (< 6 min on an H200): feature-vis speed, hook overhead, precision, compile, a Ray sweep.

    python benchmarks/gpu_check.py --out DIR          # on a CUDA machine
    OMP_NUM_THREADS=1 python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check   # tiny, runs on a CPU

Sections (each timed with ``torch.cuda.synchronize``; random weights, eval mode):

1. **feature visualization**: neuron-steps/s rendering ``--fv-units`` ``mixed4a`` channels of the
   Lucid-architecture InceptionV1 in one batch at 128 px (Lucid defaults; goal >= 1,000);
2. **hook overhead** on ViT-B/16 and ResNet-50 at batch 64, 224 px: hooked model with no hooks, with
   every hook cached, with the residual stream cached, each / the raw source forward (medians of
   interleaved rounds);
3. **precision**: fp16 and bf16 (``torch.autocast``) logits vs fp32 on both models (max |diff| relative
   to the fp32 logit range) and whether the top-1 classes agree;
4. **torch.compile** of the unhooked forward (:func:`visionlens.scale.compile.compile_forward`: time to
   compile, speed-up) and a hooked call through it (must fall back to eager and equal ``run_with_hooks``);
5. **Ray sweep on one GPU**: ``dataset_examples`` over every ResNet-50 block output, in-process on the GPU
   vs ``backend="ray"`` with one GPU actor: images/s and whether the top-k indices are identical.

Writes ``gpu_check.json`` (and prints every figure) into ``--out``. A section that fails is recorded
with its error and the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

import visionlens


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def featurevis(device: torch.device, smoke: bool, n_units: int, steps: int) -> dict[str, Any]:
    import visionlens.featurevis as fv
    from visionlens.adapters.lucid_inception import LucidInceptionV1

    torch.manual_seed(0)
    model = visionlens.HookedVisionModel.from_module(LucidInceptionV1(redirected_relu=True).eval()).to(device)
    size = 64 if smoke else 128
    units = [f"mixed4a:{i}" for i in range(n_units)]
    kw = dict(size=size, progress=False, evaluate_start_end=False)
    fv.render(model, units[:2], steps=2, **kw)  # warm-up (cuDNN autotuning, allocator)
    seconds = _time(lambda: fv.render(model, units, steps=steps, **kw), device)
    return {
        "model": "lucid_inceptionv1 (random weights)",
        "size": size,
        "units": n_units,
        "steps": steps,
        "seconds": round(seconds, 3),
        "neuron_steps_per_s": round(n_units * steps / seconds, 1),
    }


def _models(smoke: bool) -> dict[str, tuple[str, dict[str, Any]]]:
    if smoke:
        return {"vit_b16": ("timm:vit_base_patch16_224", {"img_size": 32}), "resnet50": ("timm:resnet50", {})}
    return {"vit_b16": ("timm:vit_base_patch16_224", {}), "resnet50": ("timm:resnet50", {})}


def hook_overhead(device: torch.device, smoke: bool, batch: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (spec, kw) in _models(smoke).items():
        torch.manual_seed(0)
        model = visionlens.load(spec, **kw).eval().to(device)
        size = 32 if smoke else 224
        x = torch.randn(batch, 3, size, size, device=device)
        resid = [n for n in model.hook_dict if n.endswith(("hook_resid_post", "hook_resid_pre"))]
        variants: dict[str, Callable[[], object]] = {
            "raw": lambda: model.source(x),
            "hooked_no_hooks": lambda: model(x),
            "cache_all": lambda: model.run_with_cache(x),
            "cache_resid": lambda: model.run_with_cache(x, names_filter=resid),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        names = list(variants)
        with torch.inference_mode():
            for fn in variants.values():
                fn()
            for r in range(rounds):
                for k in names[r % len(names) :] + names[: r % len(names)]:
                    times[k].append(_time(variants[k], device))
        raw = statistics.median(times["raw"])
        out[key] = {
            "batch": batch,
            "size": size,
            "raw_ms": round(1000 * raw, 2),
            "ratio": {k: round(statistics.median(v) / raw, 3) for k, v in times.items() if k != "raw"},
        }
    return out


def precision(device: torch.device, smoke: bool, batch: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    dtypes = {"bf16": torch.bfloat16} if device.type == "cpu" else {"fp16": torch.float16, "bf16": torch.bfloat16}
    for key, (spec, kw) in _models(smoke).items():
        torch.manual_seed(0)
        model = visionlens.load(spec, **kw).eval().to(device)
        size = 32 if smoke else 224
        x = torch.randn(batch, 3, size, size, device=device)
        with torch.inference_mode():
            ref = model(x).float()
            scale = float(ref.max() - ref.min())
            row = {}
            for name, dt in dtypes.items():
                with torch.autocast(device.type, dtype=dt):
                    y = model(x).float()
                row[name] = {
                    "max_abs_diff_over_range": float((y - ref).abs().max()) / scale,
                    "top1_agree": float((y.argmax(-1) == ref.argmax(-1)).float().mean()),
                }
        out[key] = row
    return out


def compiled(device: torch.device, smoke: bool, batch: int, rounds: int) -> dict[str, Any]:
    from visionlens.scale.compile import compile_forward

    torch.manual_seed(0)
    model = visionlens.load("timm:resnet50").eval().to(device)
    size = 32 if smoke else 224
    x = torch.randn(batch, 3, size, size, device=device)
    hook = model.resolve_hook("layer3")
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    with torch.inference_mode():
        eager = model(x)
        hooked_ref = model.run_with_hooks(x, fwd_hooks=[(hook, zero)])
        t_eager = statistics.median(_time(lambda: model(x), device) for _ in range(rounds))
        fast = compile_forward(model, backend="eager" if smoke else "inductor")  # smoke: graph capture only
        t0 = time.perf_counter()
        y = fast(x)
        _sync(device)
        t_compile = time.perf_counter() - t0
        t_fast = statistics.median(_time(lambda: fast(x), device) for _ in range(rounds))
        with model.hooks(fwd_hooks=[(hook, zero)]):
            hooked = fast(x)
    tol = 1e-3 if device.type == "cuda" else 1e-4
    return {
        "compile_seconds": round(t_compile, 2),
        "eager_ms": round(1000 * t_eager, 2),
        "compiled_ms": round(1000 * t_fast, 2),
        "compiled_matches_eager": bool(torch.allclose(y, eager, atol=tol, rtol=tol)),
        "hooked_call_fell_back_and_matches": bool(fast.eager_calls == 1 and torch.equal(hooked, hooked_ref)),
    }


def ray_sweep(device: torch.device, smoke: bool, n_images: int, batch: int) -> dict[str, Any]:
    import ray

    from visionlens.scale.ray_backend import RayOptions, run_sweep_on_ray

    torch.manual_seed(0)
    model = visionlens.load("timm:resnet50").eval().to(device)
    size = 32 if smoke else 224
    x = torch.randn(n_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    cfg = dict(top_k=8, bottom_k=8, batch_size=batch, crop_units=0)
    t = time.perf_counter()
    local = visionlens.run("dataset_examples", model, x, **cfg)
    _sync(device)
    t_local = time.perf_counter() - t
    gpus = 1 if device.type == "cuda" else 0
    t = time.perf_counter()
    ray.init(num_gpus=gpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - t
    opts = RayOptions(num_workers=1, gpus_per_worker=float(gpus), shard_batches=4)
    t = time.perf_counter()
    remote = run_sweep_on_ray("dataset_examples", model, x, opts, **cfg)
    t_ray = time.perf_counter() - t
    ray.shutdown()
    same = all(torch.equal(remote.tensors[k], local.tensors[k]) for k in local.tensors if k.endswith("_index"))
    vals = max(
        float((remote.tensors[k] - local.tensors[k]).abs().max()) for k in local.tensors if k.endswith("_values")
    )
    return {
        "images": n_images,
        "size": size,
        "hooks": len(local.hooks),
        "in_process_images_per_s": round(n_images / t_local, 1),
        "ray_images_per_s": round(n_images / t_ray, 1),
        "ray_init_seconds": round(t_init, 2),
        "topk_indices_identical": same,
        "max_value_diff": vals,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; runs on a CPU in about a minute")
    ap.add_argument("--out", default="benchmarks/results/gpu_check")
    ap.add_argument("--skip", default="", help="sections to skip, comma separated (fv,hooks,precision,compile,ray)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    s = args.smoke
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "fv": lambda: featurevis(device, s, n_units=4 if s else 64, steps=4 if s else 64),
        "hooks": lambda: hook_overhead(device, s, batch=2 if s else 64, rounds=3 if s else 15),
        "precision": lambda: precision(device, s, batch=2 if s else 64),
        "ray": lambda: ray_sweep(device, s, n_images=16 if s else 2048, batch=4 if s else 128),
        # compile last: its C++ build (inductor) is the slowest part and least needed by the others
        "compile": lambda: compiled(device, s, batch=2 if s else 64, rounds=3 if s else 10),
    }
    skip = {k.strip() for k in args.skip.split(",") if k.strip()}
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__,
        "smoke": s,
        "command": "python benchmarks/gpu_check.py" + (" --smoke" if s else ""),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in sections.items():
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as exc:  # one broken section must not cost the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        report[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {json.dumps(report[name], default=str)}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
