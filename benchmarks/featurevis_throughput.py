"""Feature-visualization speed: neuron-steps/s (batched vs one at a time) and time per neuron to a target.

Model: the literature's InceptionV1 (``visionlens.adapters.lucid_inception.LucidInceptionV1``, random
weights unless ``--weights inception5h.pth``, redirected ReLUs as in Lucent's model zoo) or, when that
module is missing, torchvision's ``googlenet``. Units: ``mixed4a`` channels, a batch of 8, 128 px,
Lucid's defaults (FFT + decorrelated colour, standard transforms, Adam lr 0.05).

1. **Throughput.** Interleaved rounds of: the 8 units rendered in one batch; the 8 units one at a
   time; one at a time with the forward pass run to the end (``+ 0 * logit``), which shows what
   stopping at the target layer saves. Neuron-steps/s = units x steps / optimisation time.
2. **Time per neuron to reach a target.** The target of each unit is the value a one-at-a-time
   Lucid-default render reaches after ``--ref-steps`` steps (smoothed end of its curve: the objective
   Lucent would report). Candidate settings are rendered batched; a unit has reached its target at
   the first step where its smoothed curve (moving mean over ``--smooth`` steps, the same smoothing as
   the reference) is >= the target. Time per neuron = time until every unit reached it / units.
3. **Lucent** (``--lucent-steps 512``): ``torch-lucent`` itself on its own InceptionV1, through
   ``benchmarks/fv_vs_lucent.py`` (throughput for 1 and ``--units`` units, time to Lucent's objective).

    python benchmarks/featurevis_throughput.py                       # full: 512 reference steps
    python benchmarks/featurevis_throughput.py --steps 8 --ref-steps 32 --threads 1   # a quick check

Writes ``benchmarks/results/featurevis_throughput_<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch

import visionlens
import visionlens.featurevis as fv

RESULTS = Path(__file__).resolve().parent / "results"


def load_model(kind: str, weights: Optional[str]) -> tuple[Any, str]:
    if kind in ("auto", "lucid"):
        try:
            from visionlens.adapters.lucid_inception import LucidInceptionV1, load_lucid_inceptionv1
        except ImportError:
            if kind == "lucid":
                raise
        else:
            torch.manual_seed(0)
            src = (
                load_lucid_inceptionv1(weights, redirected_relu=True)
                if weights
                else LucidInceptionV1(redirected_relu=True)
            )
            what = f" (weights: {os.path.basename(weights)})" if weights else " (random weights)"
            return visionlens.HookedVisionModel.from_module(src.eval()), "lucid_inceptionv1" + what
    torch.manual_seed(0)
    return visionlens.load("torchvision:googlenet"), "torchvision googlenet (random weights)"


def smooth(curve: torch.Tensor, w: int) -> torch.Tensor:
    """Trailing moving mean (the first w-1 values average what exists so far)."""
    c = curve.double().cumsum(-1)
    out = c.clone()
    out[..., w:] = c[..., w:] - c[..., :-w]
    n = torch.arange(1, curve.shape[-1] + 1, dtype=torch.float64).clamp(max=w)
    return (out / n).float()


def opt_time(r: fv.Rendering) -> float:
    return float(r.step_times[:, -1].max())


def throughput(model: Any, units: list[str], steps: int, size: int, rounds: int) -> dict[str, Any]:
    n = len(units)
    full_fwd = [fv.objective(u, model) + 0.0 * fv.class_logit(0).bind(model) for u in units]
    kw = dict(steps=steps, size=size, progress=False, evaluate_start_end=False)
    fv.render(model, units[:2], **{**kw, "steps": 2})  # warm-up
    times: dict[str, list[float]] = {"batched": [], "one_at_a_time": [], "one_at_a_time_full_forward": []}
    for rnd in range(rounds):
        order = list(times)
        order = order[rnd % 3 :] + order[: rnd % 3]
        for variant in order:
            if variant == "batched":
                t = opt_time(fv.render(model, units, **kw))
            elif variant == "one_at_a_time":
                t = sum(opt_time(fv.render(model, [u], seed=j, **kw)) for j, u in enumerate(units))
            else:
                t = sum(opt_time(fv.render(model, [o], seed=j, **kw)) for j, o in enumerate(full_fwd))
            times[variant].append(t)
    out = {}
    for variant, ts in times.items():
        med = statistics.median(ts)
        out[variant] = {"seconds": med, "neuron_steps_per_s": n * steps / med, "rounds": ts}
    return out


def _first_reach(smoothed: torch.Tensor, targets: torch.Tensor) -> list[Optional[int]]:
    """Per unit, the first step (1-based) whose smoothed value is >= its target (None: never)."""
    out: list[Optional[int]] = []
    for i in range(smoothed.shape[0]):
        idx = torch.nonzero(smoothed[i] >= targets[i]).flatten()
        out.append(int(idx[0]) + 1 if idx.numel() else None)
    return out


def time_to_target(
    model: Any,
    units: list[str],
    size: int,
    ref_steps: int,
    max_steps: int,
    w: int,
    frac: float,
    candidates: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    n = len(units)
    # reference: Lucid defaults, one unit at a time (same seeds as the batched renders)
    refs = [
        fv.render(model, [u], steps=ref_steps, size=size, seed=j, progress=False, evaluate_start_end=False)
        for j, u in enumerate(units)
    ]
    ref_curves = torch.stack([r.curves[0] for r in refs])
    ref_sm = smooth(ref_curves, w)
    targets = frac * ref_sm[:, -1]
    ref_steps_needed = _first_reach(ref_sm, targets)
    ref_time = sum(float(r.step_times[0, s - 1]) for r, s in zip(refs, ref_steps_needed) if s is not None)
    all_steps = sum(float(r.step_times[0, -1]) for r in refs) / n
    out: dict[str, Any] = {
        "reference": {
            "settings": "lucid defaults, one at a time",
            "steps": ref_steps,
            "steps_to_target": ref_steps_needed,
            "seconds_per_neuron": ref_time / n,
            "seconds_per_neuron_all_steps": all_steps,
            "targets": targets.tolist(),
        }
    }
    for name, cfg in candidates.items():
        r = fv.render(model, units, steps=max_steps, size=size, progress=False, evaluate_start_end=False, **cfg)
        sm = smooth(r.curves, w)
        steps_needed = _first_reach(sm, targets)
        ok = all(s is not None for s in steps_needed)
        t_all = float(r.step_times[0, max(steps_needed) - 1]) if ok else None
        out[name] = {
            "settings": {k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in cfg.items()},
            "max_steps": max_steps,
            "steps_to_target": steps_needed,
            "seconds_per_neuron": (t_all / n) if ok else None,
            "speedup_vs_reference": (ref_time / n) / (t_all / n) if ok else None,
            "best_fraction_of_target": (sm.max(dim=1).values / targets).tolist(),
        }
    return out


def lucent_section(n_units: int, steps: int, rounds: int, lucent_steps: int) -> dict[str, Any]:
    """Lucent itself, on its own InceptionV1 (``benchmarks/fv_vs_lucent.py``): throughput for 1 and
    ``n_units`` units and the time to the objective Lucent reaches in ``lucent_steps`` steps (1 unit)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fv_vs_lucent

    return fv_vs_lucent.compare(
        sorted({1, n_units}),
        lucent_steps,
        throughput_steps=steps,
        throughput_rounds=rounds,
        target_units=(1,) if lucent_steps else (),
    )


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="auto", choices=["auto", "lucid", "googlenet"])
    ap.add_argument("--weights", default=None, help="local inception5h.pth (Lucent's state dict)")
    ap.add_argument("--layer", default="mixed4a")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--first-unit", type=int, default=0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32, help="steps per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ref-steps", type=int, default=512, help="reference steps (Lucid default 512)")
    ap.add_argument("--max-steps", type=int, default=None, help="step budget of candidates (default ref-steps)")
    ap.add_argument("--smooth", type=int, default=None, help="moving-mean window (default ref-steps // 16)")
    ap.add_argument(
        "--target-frac", type=float, default=1.0, help="target = this fraction of the reference's final smoothed value"
    )
    ap.add_argument("--fast-lrs", default="0.1,0.2", help="extra batched Adam learning rates to try")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--lucent-steps",
        type=int,
        default=None,
        help="also run Lucent (torch-lucent) on its own InceptionV1: throughput, and time to its objective "
        "after this many steps (512 = Lucid's default; 0 = throughput only)",
    )
    ap.add_argument("--skip-target", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, desc = load_model(args.model, args.weights)
    units = [f"{args.layer}:{args.first_unit + i}" for i in range(args.units)]
    print(
        f"model: {desc}; units: {units[0]} .. {units[-1]}; {args.size} px; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    result: dict[str, Any] = {
        "model": desc,
        "layer": args.layer,
        "units": units,
        "size": args.size,
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    }
    t0 = time.perf_counter()
    result["throughput"] = throughput(model, units, args.steps, args.size, args.rounds)
    result["throughput_steps"] = args.steps
    for k, v in result["throughput"].items():
        print(f"  {k:28s} {v['neuron_steps_per_s']:7.1f} neuron-steps/s", flush=True)
    if not args.skip_target:
        ref_steps = args.ref_steps
        w = args.smooth or max(1, ref_steps // 16)
        cands: dict[str, dict[str, Any]] = {"batched lr 0.05 (lucid defaults)": {"lr": 0.05}}
        for lr in [float(x) for x in args.fast_lrs.split(",") if x.strip()]:
            cands[f"batched lr {lr:g}"] = {"lr": lr}
            cands[f"batched lr {lr:g} -> 0.01 (cosine)"] = {"lr": lr, "lr_end": 0.01}
        result["time_to_target"] = time_to_target(
            model, units, args.size, ref_steps, args.max_steps or ref_steps, w, args.target_frac, cands
        )
        result["smooth_window"] = w
        result["target_frac"] = args.target_frac
        for k, v in result["time_to_target"].items():
            print(
                f"  {k:34s} {v['seconds_per_neuron'] if v['seconds_per_neuron'] is not None else float('nan'):7.2f} "
                f"s/neuron",
                flush=True,
            )
    if args.lucent_steps is not None:
        result["lucent"] = lucent_section(args.units, args.steps, args.rounds, args.lucent_steps)
    result["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result["wall_s"] = time.perf_counter() - t0
    write(result, Path(args.out), args.tag or f"{args.layer}_{args.size}px")
    return result


def write(result: dict[str, Any], out: Path, tag: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"featurevis_throughput_{tag}.json").write_text(json.dumps(result, indent=1))
    m = result["machine"]
    lines = [
        f"# Feature visualization speed ({result['model']}, {result['layer']} x {len(result['units'])} units, "
        f"{result['size']} px)",
        "",
        f"`{result['command']}` on {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} "
        f"({m['threads']} threads); load average {m['loadavg_start']} -> {m['loadavg_end']}.",
        "",
        f"## Throughput ({result['throughput_steps']} steps, median of rounds)",
        "",
        "| variant | seconds | neuron-steps/s |",
        "|---|---|---|",
    ]
    for k, v in result["throughput"].items():
        lines.append(f"| {k} | {v['seconds']:.2f} | {v['neuron_steps_per_s']:.1f} |")
    if "time_to_target" in result:
        tt = result["time_to_target"]
        ref = tt["reference"]
        lines += [
            "",
            f"## Time per neuron to {result['target_frac']:g} x the objective a one-at-a-time Lucid-default "
            f"render reaches in {ref['steps']} steps",
            "",
            f"Objective = smoothed curve (moving mean over {result['smooth_window']} steps); a unit counts when "
            "its smoothed curve first reaches its target. The reference is timed the same way.",
            "",
            "| setting | steps to target (per unit) | s / neuron | speed-up | best fraction of target |",
            "|---|---|---|---|---|",
        ]
        for k, v in tt.items():
            spn = f"{v['seconds_per_neuron']:.2f}" if v["seconds_per_neuron"] is not None else "not reached"
            sp = (
                f"{v['speedup_vs_reference']:.1f}x"
                if v.get("speedup_vs_reference") is not None
                else ("1.0x" if k == "reference" else "-")
            )
            best = ", ".join(f"{x:.3f}" for x in v["best_fraction_of_target"]) if "best_fraction_of_target" in v else ""
            lines.append(f"| {k} | {v['steps_to_target']} | {spn} | {sp} | {best} |")
    if "lucent" in result:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import fv_vs_lucent

        lines += ["", "#" + fv_vs_lucent.markdown(result["lucent"])]
    (out / f"featurevis_throughput_{tag}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
