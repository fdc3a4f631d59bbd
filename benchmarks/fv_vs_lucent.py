"""Feature visualization against Lucent: time to reach the objective Lucent reaches in 512 steps.

Same model: Lucent's own ``lucent.modelzoo.inceptionv1.InceptionV1`` (redirected ReLUs, its default),
with **random weights** (visionlens's He init, seed 0, loaded into Lucent's module with
``strict=True``; the ``inception5h.pth`` state dict is not available offline). visionlens wraps a
separate copy of the same module with ``HookedVisionModel.from_module`` (the Lucid adapter); Lucent gets
a fresh copy for every run because ``render_vis`` leaves its hooks on every module.

Same objectives (channel objectives at ``mixed4a``), same image size (128 px).

* **Lucent**: ``render_vis`` with its defaults (FFT + decorrelated colour, standard transforms,
  ``x * 255 - 117``, upsampled to 224 px, Adam lr 0.05, 512 steps); ``--lucent-fixed-size 128`` uses
  Lucent's own ``fixed_image_size=128`` (no upsampling; its forward then fails after ``mixed5b``,
  which Lucent catches). N units are one batch of N images (``objectives.channel(layer, n, batch=i)``
  summed), the way Lucent batches.
* **visionlens**: ``fv.render`` at native size with the forward stopped at ``mixed4a`` and frozen
  parameters; the settings under test are :data:`CANDIDATES` (learning-rate schedule, transforms).

**The target** of a unit is the value Lucent's 512-step image reaches under two scorers, both applied
to both libraries' images: ``native`` (the channel mean at ``mixed4a`` of the 128 px image, no
transforms) and ``lucent_tf`` (the channel mean Lucent's objective computes: its transforms, its
preprocessing, its 224 px upsampling; averaged over the same ``draws`` seeded random draws for every
image scored). A grey image's scores are reported as the input-independent baseline. visionlens
reaches a target at the first checkpoint (every 8 steps) where every unit's score is at least
Lucent's (per scorer, and ``both``); its time is the optimisation time up to that step (scoring is
not counted). Lucent's time is its 512 steps.

The cores are shared with other jobs, so throughput is measured in alternating short Lucent /
visionlens runs in one process (median of the per-round ratios); the "interleaved" speed-up is that
ratio times ``512 / steps to target``. ``--lucent-cache FILE`` reuses Lucent's final images of an
identical earlier run (Lucent is deterministic for a seed on CPU); then only the interleaved speed-up
is reported.

    python benchmarks/fv_vs_lucent.py --units 1,8 --target-units 1 --throughput-steps 4 \
        --throughput-rounds 2 --throughput-candidates '1:native,lucent_view;8:native'
    python benchmarks/fv_vs_lucent.py --units "" --target-units 1 --candidates native,native_jitter \
        --lucent-fixed-size 128 --tag fv_vs_lucent_fixed128

:func:`compare` returns the result dict (``benchmarks/peers.py`` imports it).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

import visionlens.featurevis as fv
from visionlens import HookedVisionModel
from visionlens.adapters.lucid_inception import LucidInceptionV1

RESULTS = Path(__file__).resolve().parent / "results"
LAYER = "mixed4a"
DEFAULT_CHANNELS = (476, 460, 454, 465, 97, 11, 200, 300)  # mixed4a:476 and others
CHECK_EVERY = 8

# visionlens settings under test: Adam with a high learning rate decayed to a low one (cosine), fewer
# steps, Lucid's parameterization (FFT, decorrelated colour). "native": the standard transforms at
# the native 128 px; "lucent_view": Lucent's own transform pipeline (pad, kornia jitter / scale /
# rotate, upsampling to 224 px), i.e. exactly the quantity Lucent optimises; "native_jitter": native
# size with Lucid's pad and jitters only (no random scale / rotation).
CANDIDATES: dict[str, dict[str, Any]] = {
    "native": {"lr": 0.2, "lr_end": 0.01, "steps": 128},
    "lucent_view": {"lr": 0.3, "lr_end": 0.01, "steps": 256, "lucent_transforms": True},
    "native_jitter": {"lr": 0.2, "lr_end": 0.01, "steps": 96, "jitter_only": True},
}


def lucent_available() -> Optional[str]:
    """Import Lucent (None when it imports, else the reason). Lucent imports IPython only to display
    images: where IPython is missing, a stub ``IPython.display`` is present during the import only."""
    stubbed = importlib.util.find_spec("IPython") is None
    if stubbed:
        ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        disp.display = disp.HTML = disp.Image = lambda *a, **k: None  # type: ignore[attr-defined]
        ip.display = disp  # type: ignore[attr-defined]
        sys.modules["IPython"], sys.modules["IPython.display"] = ip, disp
    try:
        for mod in ("lucent.modelzoo.inceptionv1", "lucent.optvis.render", "lucent.optvis.transform"):
            importlib.import_module(mod)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc} (pip install torch-lucent==0.1.8 kornia==0.4.1 decorator)"
    finally:
        if stubbed:  # matplotlib and others read sys.modules["IPython"]; the stub must not outlive the import
            sys.modules.pop("IPython", None)
            sys.modules.pop("IPython.display", None)
    return None


def lucent_module(seed: int = 0) -> torch.nn.Module:
    """Lucent's InceptionV1 with visionlens's seeded random weights (redirected ReLUs, Lucent's default)."""
    from lucent.modelzoo.inceptionv1 import InceptionV1

    torch.manual_seed(seed)
    sd = LucidInceptionV1().state_dict()
    m = InceptionV1(pretrained=False, redirected_ReLU=True)
    m.load_state_dict(sd, strict=True)
    return m.eval()


# ----------------------------------------------------------------------------- scorers
def lucent_transform(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Lucent's render_vis pipeline on [0, 1] images, without the model preprocessing (visionlens adds it)."""
    from lucent.optvis import transform

    tfs = list(transform.standard_transforms)
    if size < 224:
        tfs.append(torch.nn.Upsample(size=224, mode="bilinear", align_corners=True))
    return transform.compose(tfs)


def score(model: HookedVisionModel, units: Sequence[str], images: torch.Tensor, draws: int) -> dict[str, list[float]]:
    """Per unit: ``native`` (no transforms) and ``lucent_tf`` (mean over ``draws`` seeded Lucent transforms)."""
    with torch.no_grad():
        native = fv.evaluate(model, list(units), images)
        tf = lucent_transform(images.shape[-1])
        vals = []
        for d in range(draws):
            np.random.seed(10_000 + d)
            torch.manual_seed(10_000 + d)
            vals.append(fv.evaluate(model, list(units), tf(images).clamp(0, 1)))
    return {"native": native.tolist(), "lucent_tf": torch.stack(vals).mean(0).tolist()}


# ----------------------------------------------------------------------------- the two renderers
def run_lucent(
    module: torch.nn.Module, units: Sequence[str], steps: int, seed: int, fixed_image_size: Optional[int] = None
) -> dict[str, Any]:
    """Lucent's render_vis with its defaults (``fixed_image_size=128``: no upsampling to 224 px, Lucent's
    own native-size option); returns the final images and per-step times."""
    from lucent.optvis import objectives, param, render

    channels = [int(u.split(":")[1]) for u in units]
    layer = units[0].split(":")[0]
    obj = objectives.channel(layer, channels[0], batch=0) if len(units) > 1 else objectives.channel(layer, channels[0])
    for i, c in enumerate(channels[1:], start=1):
        obj = obj + objectives.channel(layer, c, batch=i)
    stamps: list[float] = []
    holder: dict[str, Any] = {}

    def param_f() -> Any:
        torch.manual_seed(seed)
        params, image_f = param.image(128, batch=len(units))
        holder["image_f"] = image_f
        return params, image_f

    def optimizer(params: Any) -> torch.optim.Optimizer:
        opt = torch.optim.Adam(params, lr=5e-2)
        step = opt.step

        def timed_step(closure: Any = None) -> Any:
            out = step(closure)
            stamps.append(time.perf_counter())
            return out

        opt.step = timed_step  # type: ignore[method-assign]
        return opt

    np.random.seed(seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():  # at 128 px Lucent's forward fails after mixed4a (7x7 pool); it warns
        warnings.simplefilter("ignore")
        render.render_vis(
            module,
            obj,
            param_f,
            optimizer,
            thresholds=(steps,),
            show_image=False,
            progress=False,
            preprocess=True,
            fixed_image_size=fixed_image_size,
        )
    with torch.no_grad():
        images = holder["image_f"]().detach().float().cpu()
    return {
        "images": images,
        "step_times": [s - t0 for s in stamps],
        "seconds": stamps[-1] - t0,
        "hooks_left": _hook_count(module),  # render_vis never removes its hooks
    }


def run_visionlens(model: HookedVisionModel, units: Sequence[str], settings: dict[str, Any], seed: int) -> fv.Rendering:
    """visionlens's render with ``settings``; a snapshot every :data:`CHECK_EVERY` steps."""
    s = dict(settings)
    steps = int(s.pop("steps"))
    up, mag, crop = s.pop("upsample", None), s.pop("magnify", None), s.pop("crop", None)
    if s.pop("jitter_only", False):  # Lucid's pad and jitters without scale / rotation
        s["transforms"] = [fv.Pad(12, "constant", 0.5), fv.Jitter(8), fv.Jitter(4)]
    elif s.pop("lucent_transforms", False):  # Lucent's own pipeline (its draws: numpy's global RNG)
        np.random.seed(seed)
        s["transforms"] = [lucent_transform(128)]
    elif up:  # Lucent's view: the standard transforms, then the image bilinearly resized to `up` px
        s["transforms"] = list(fv.standard_transforms().transforms) + [fv.Resize(int(up))]
    elif mag:  # Lucent's scale at native cost: magnify by `mag`, then a random `crop` px window
        std = fv.standard_transforms()
        big = int(round((128 + 12 * 2 - 8 - 4) * float(mag)))
        s["transforms"] = list(std.transforms) + [fv.Resize(big), fv.Jitter(big - int(crop))]
    checks = list(range(CHECK_EVERY, steps + 1, CHECK_EVERY))
    return fv.render(
        model,
        list(units),
        steps=steps,
        size=128,
        seed=seed,
        thresholds=checks,
        progress=False,
        evaluate_start_end=False,
        **s,
    )


def first_reach(
    model: HookedVisionModel, units: Sequence[str], r: fv.Rendering, target: dict[str, list[float]], draws: int
) -> dict[str, Any]:
    """Per scorer (and for both together): the first snapshot where every unit reaches Lucent's value,
    its optimisation time, and the scores at the last snapshot scored."""
    reach: dict[str, Any] = {k: None for k in (*target, "both")}
    sc: dict[str, list[float]] = {}
    for step in sorted(r.snapshots):
        sc = score(model, units, r.snapshots[step], draws)
        for k in target:
            if reach[k] is None and all(a >= b for a, b in zip(sc[k], target[k])):
                reach[k] = step
        if reach["both"] is None and all(reach[k] is not None for k in target):
            reach["both"] = step
            break
    t = r.step_times.max(dim=0).values
    return {
        "steps": reach,
        "seconds": {k: (float(t[s - 1]) if s is not None else None) for k, s in reach.items()},
        "scores_last_checked": sc,
        "fraction_of_target_last_checked": {
            k: [a / b if b else float("nan") for a, b in zip(sc[k], target[k])] for k in target
        },
    }


def throughput(
    clean: torch.nn.Module,
    model: HookedVisionModel,
    units: Sequence[str],
    settings: dict[str, Any],
    steps: int,
    rounds: int,
) -> dict[str, Any]:
    """Neuron-steps/s of Lucent and of visionlens (``settings``), ``steps`` steps each, alternating."""
    luc, ours = [], []
    for rep in range(rounds):
        a = run_lucent(copy.deepcopy(clean), units, steps, rep)
        luc.append(len(units) * steps / a["seconds"])
        r = run_visionlens(model, units, {**settings, "steps": steps}, rep)
        ours.append(len(units) * steps / float(r.step_times[:, -1].max()))
    ratios = [o / lu for o, lu in zip(ours, luc)]
    return {
        "steps": steps,
        "lucent_neuron_steps_per_s": luc,
        "visionlens_neuron_steps_per_s": ours,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
    }


# ----------------------------------------------------------------------------- the comparison
def compare(
    n_units: Sequence[int] = (1, 8),
    lucent_steps: int = 512,
    draws: int = 8,
    candidates: Optional[dict[str, dict[str, Any]]] = None,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    seed: int = 0,
    throughput_steps: int = 8,
    throughput_rounds: int = 3,
    target_units: Sequence[int] = (1,),
    throughput_candidates: Optional[dict[int, Sequence[str]]] = None,
    lucent_cache: Optional[Path] = None,
    lucent_fixed_image_size: Optional[int] = None,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Lucent vs visionlens on Lucent's InceptionV1 (random weights): the dict described in the module docstring.

    Throughput for every ``n_units`` (the candidates named in ``throughput_candidates[n]``, default all);
    time to Lucent's ``lucent_steps``-step objective for ``target_units``. ``lucent_cache``: a file
    holding Lucent's final images from an earlier run with the same model, units, steps and seed
    (Lucent is deterministic on CPU for a seed); when given and present, Lucent's long run is not
    repeated and the time-to-target speed-up comes from the interleaved throughput ratio only.
    """
    reason = lucent_available()
    if reason is not None:
        return {"available": False, "reason": reason}
    candidates = dict(candidates or CANDIDATES)
    clean = lucent_module(seed)
    model = HookedVisionModel.from_module(copy.deepcopy(clean))
    src = model.adapter.source
    hooks_before = _hook_count(src)
    out: dict[str, Any] = {
        "available": True,
        "model": "lucent.modelzoo.inceptionv1.InceptionV1, random weights (visionlens He init, seed 0), "
        "redirected ReLUs",
        "size": 128,
        "layer": LAYER,
        "lucent_steps": lucent_steps,
        "lucent_fixed_image_size": lucent_fixed_image_size,
        "candidates": candidates,
        "scorer_draws": draws,
        "check_every": CHECK_EVERY,
        "throughput": {},
        "time_to_target": {},
    }
    fv.render(model, [f"{LAYER}:0"], steps=2, size=128, progress=False, evaluate_start_end=False)  # warm-up
    first = next(iter(candidates.values()))
    for n in n_units:
        units = [f"{LAYER}:{c}" for c in channels[:n]]
        for name, cfg in candidates.items():
            if throughput_candidates and name not in throughput_candidates.get(n, candidates):
                continue
            tp = throughput(clean, model, units, cfg, throughput_steps, throughput_rounds)
            out["throughput"][f"{n} units, {name}"] = tp
            log(f"[throughput {n} units, {name}] ratio {tp['ratio_median']:.2f} {tp}")
    for n in target_units:
        units = [f"{LAYER}:{c}" for c in channels[:n]]
        key = f"{','.join(units)}|{lucent_steps}|{seed}" + (
            f"|fixed{lucent_fixed_image_size}" if lucent_fixed_image_size else ""
        )
        cached = torch.load(lucent_cache, weights_only=False) if lucent_cache and Path(lucent_cache).exists() else {}
        fresh = key not in cached
        if not fresh:
            luc = cached[key]
            log(f"[{n} units] lucent {lucent_steps} steps: final images from {lucent_cache} (run earlier)")
        else:
            log(f"[{n} units] lucent {lucent_steps} steps ...")
            luc = run_lucent(copy.deepcopy(clean), units, lucent_steps, seed, lucent_fixed_image_size)
            if lucent_cache:
                cached[key] = {"images": luc["images"], "seconds": luc["seconds"], "step_times": luc["step_times"]}
                torch.save(cached, lucent_cache)
        target = score(model, units, luc["images"], draws)
        baseline = score(model, units, torch.full_like(luc["images"], 0.5), draws)
        log(f"  lucent {luc['seconds']:.1f} s; target {target}; grey image {baseline}")
        case: dict[str, Any] = {
            "units": units,
            "lucent_seconds": luc["seconds"],
            "lucent_run_in_this_process": fresh,
            "lucent_hooks_left": luc.get("hooks_left"),
            "lucent_neuron_steps_per_s": n * lucent_steps / luc["seconds"],
            "target": target,
            "grey_image_scores": baseline,
            "candidates": {},
        }
        for name, cfg in candidates.items():
            r = run_visionlens(model, units, cfg, seed)
            reach = first_reach(model, units, r, target, draws)
            tp = out["throughput"].get(f"{n} units, {name}", {}).get("ratio_median")
            if lucent_fixed_image_size:  # Lucent's throughput was measured for its default (224 px) setting
                tp = None
            vl_all = float(r.step_times[:, -1].max())
            row = {
                "steps_run": r.curves.shape[1],
                "neuron_steps_per_s": n * r.curves.shape[1] / vl_all,
                **{
                    f"{k}_{m}": v
                    for m, d in (("steps", reach["steps"]), ("seconds", reach["seconds"]))
                    for k, v in d.items()
                },
                "scores_last_checked": reach["scores_last_checked"],
                "fraction_of_target_last_checked": reach["fraction_of_target_last_checked"],
            }
            for k in (*target, "both"):
                st, sec = reach["steps"][k], reach["seconds"][k]
                # measured within this run; and from the interleaved throughput ratio x the step ratio
                row[f"speedup_{k}"] = luc["seconds"] / sec if (sec and fresh) else None
                row[f"speedup_{k}_interleaved"] = tp * lucent_steps / st if (st and tp) else None
                row[f"seconds_per_neuron_{k}"] = sec / n if sec else None
            case["candidates"][name] = row
            log(f"  {name}: {row}")
        out["time_to_target"][str(n)] = case
    out["hooks_left_on_visionlens_model"] = _hook_count(src) - hooks_before
    out["first_candidate"] = next(iter(candidates)) if first else None
    return out


def _hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", default="1,8", help="unit counts for the throughput comparison")
    ap.add_argument("--target-units", default="1", help="unit counts for time to Lucent's objective")
    ap.add_argument("--lucent-steps", type=int, default=512)
    ap.add_argument("--draws", type=int, default=8, help="seeded Lucent-transform draws per score")
    ap.add_argument("--throughput-steps", type=int, default=8)
    ap.add_argument("--throughput-rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default="fv_vs_lucent")
    ap.add_argument("--lucent-cache", default=None, help="file of Lucent's final images (reused when present)")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help="visionlens settings to run (CANDIDATES)")
    ap.add_argument("--lucent-fixed-size", type=int, default=None, help="Lucent's fixed_image_size (e.g. 128)")
    ap.add_argument("--throughput-candidates", default=None, help="e.g. '1:native,lucent_view;8:native'")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = list(os.getloadavg())
    res = compare(
        [int(x) for x in args.units.split(",") if x],
        args.lucent_steps,
        args.draws,
        {k: CANDIDATES[k] for k in args.candidates.split(",")},
        throughput_steps=args.throughput_steps,
        throughput_rounds=args.throughput_rounds,
        target_units=[int(x) for x in args.target_units.split(",") if x],
        throughput_candidates=(
            {int(a): b.split(",") for a, b in (p.split(":") for p in args.throughput_candidates.split(";"))}
            if args.throughput_candidates
            else None
        ),
        lucent_cache=Path(args.lucent_cache) if args.lucent_cache else None,
        lucent_fixed_image_size=args.lucent_fixed_size,
    )
    res["command"] = " ".join(["benchmarks/fv_vs_lucent.py"] + (argv if argv is not None else sys.argv[1:]))
    res["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": load0,
        "loadavg_end": list(os.getloadavg()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.tag}.json").write_text(json.dumps(res, indent=1))
    (out / f"{args.tag}.md").write_text(markdown(res))
    print(markdown(res))
    return res


def _f(v: Any, fmt: str = "{:.1f}", none: str = "not reached") -> str:
    return none if v is None else fmt.format(v)


def markdown(res: dict[str, Any]) -> str:
    """The result as a markdown section (also used by benchmarks/peers.py)."""
    if not res.get("available"):
        return f"## Feature visualization vs Lucent\n\nnot run: {res.get('reason')}\n"
    m = res.get("machine", {})
    tp_steps = next(iter(res["throughput"].values()))["steps"] if res["throughput"] else "-"
    lines = [
        "## Feature visualization vs Lucent",
        "",
        f"{res['model']}; {res['layer']}, {res['size']} px. Lucent: `render_vis` defaults"
        f"{', fixed_image_size=' + str(res['lucent_fixed_image_size']) if res.get('lucent_fixed_image_size') else ''}"
        ". visionlens "
        f"settings: {json.dumps(res['candidates'])}. Lucent and visionlens alternate in one process on "
        f"shared cores (load average {m.get('loadavg_start')} -> {m.get('loadavg_end')}); "
        f"`{res.get('command', '')}`.",
        "",
        f"### Throughput (neuron-steps/s, {tp_steps} steps per run, alternating rounds)",
        "",
        "| case | Lucent | visionlens | ratio (median of rounds) |",
        "|---|---|---|---|",
    ]
    for k, tp in res["throughput"].items():
        lu = statistics.median(tp["lucent_neuron_steps_per_s"])
        vl = statistics.median(tp["visionlens_neuron_steps_per_s"])
        lines.append(f"| {k} | {lu:.2f} | {vl:.2f} | {tp['ratio_median']:.2f}x |")
    for n, case in res["time_to_target"].items():
        tg = case["target"]
        fresh_none = "not reached" if case["lucent_run_in_this_process"] else "-"
        tp_none = "-" if res.get("lucent_fixed_image_size") else "not reached"
        note = (
            ""
            if case["lucent_run_in_this_process"]
            else "; final images from an earlier identical run (--lucent-cache): only the interleaved speed-up applies"
        )
        lines += [
            "",
            f"### Time to the objective Lucent reaches in {res['lucent_steps']} steps ({n} unit(s): "
            f"{', '.join(case['units'])})",
            "",
            f"Lucent: {case['lucent_seconds']:.1f} s ({case['lucent_neuron_steps_per_s']:.2f} neuron-steps/s"
            f"{note}; hooks it left on its module: {case.get('lucent_hooks_left', 'not counted')}). "
            f"Targets (Lucent's final image): native {_f(tg['native'][0])}, with Lucent's transforms "
            f"{_f(tg['lucent_tf'][0])}; a grey image scores {_f(case['grey_image_scores']['native'][0])} / "
            f"{_f(case['grey_image_scores']['lucent_tf'][0])}. Scores every {res['check_every']} steps, "
            f"{res['scorer_draws']} seeded transform draws.",
            "",
            "| visionlens setting | neuron-steps/s | scorer | steps to target | s / neuron | speed-up (this run) | "
            "speed-up (interleaved throughput x steps) | fraction of target at last check |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in case["candidates"].items():
            for k in ("native", "lucent_tf", "both"):
                frac = row["fraction_of_target_last_checked"].get(k)
                lines.append(
                    f"| {name} ({row['steps_run']} steps max) | {row['neuron_steps_per_s']:.2f} | {k} | "
                    f"{_f(row[f'{k}_steps'], '{}')} | {_f(row[f'seconds_per_neuron_{k}'], '{:.2f}')} | "
                    f"{_f(row[f'speedup_{k}'], '{:.1f}x', fresh_none)} | "
                    f"{_f(row[f'speedup_{k}_interleaved'], '{:.1f}x', tp_none)} | "
                    f"{'' if frac is None else ', '.join(f'{x:.2f}' for x in frac)} |"
                )
    lines += ["", f"Hooks left on the visionlens model after all renders: {res['hooks_left_on_visionlens_model']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
