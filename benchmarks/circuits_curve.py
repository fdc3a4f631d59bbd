"""The circuits plugins on zoo:curve and the planted rotation family: every number of docs/circuits.md.

    OMP_NUM_THREADS=1 python benchmarks/circuits_curve.py --out benchmarks/results/circuits [--only a,b]

Sections (``--only``): ``tuning`` (curve detectors per layer, trained vs the step-0 checkpoint),
``equivariance`` (planted family precision / recall from weights and stimuli; the zoo model's families),
``families`` (planted hue and reflection families, both routes),
``surgery`` (hand-coded curve circuit: designed mode with its spec chosen on a dev set and reported on a
fresh test set over three seeds with controls; template and lines modes for comparison), ``colour`` (the
colour-contrast circuit of conv2d2, designed mode, same protocol), ``scrubbing`` (curve
hypotheses) and ``phase`` (phase changes on mixed3a / mixed3b over the shipped checkpoints, or
``--checkpoints DIR``). Each section writes ``OUT/<section>.json`` and the results' folders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

import visionlens
from visionlens.plugins.circuits import equivariance as eq
from visionlens.plugins.circuits import planted
from visionlens.zoo import curve_model as cm

HOOK, BELOW = "mixed3a.hook_out", "pool2.hook_out"


def tuning(out: Path) -> dict[str, Any]:
    model = visionlens.load("zoo:curve")
    step0 = dict(cm.checkpoints())[0]
    control = cm.load_checkpoint(step0)
    res: dict[str, Any] = {}
    for hook in ("conv2d2.hook_out", "mixed3a.hook_out", "mixed3b.hook_out"):
        for name, m in (("trained", model), ("step0", control)):
            r = m.analyze("tuning_curves", None, hook=hook)
            res[f"{hook}/{name}"] = r.summary
            if name == "trained":
                r.save(out / f"tuning_{hook.split('.')[0]}")
    return res


def equivariance(out: Path) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for seed in range(3):
        model, truth = planted.planted_rotation_model(seed=seed)
        r = model.analyze("equivariance", None, hook=truth["hook"], layer=truth["layer"])
        for route in ("stimuli", "weights"):
            res[f"planted_seed{seed}/{route}"] = eq.family_precision_recall(r.families(route), truth["family"])
    model = visionlens.load("zoo:curve")
    for hook in (HOOK, "mixed3b.hook_out"):
        r = model.analyze("equivariance", None, hook=hook)
        r.save(out / f"equivariance_{hook.split('.')[0]}")
        res[f"zoo/{hook}"] = [f.to_dict() for f in r.families("stimuli")]
    control = cm.load_checkpoint(dict(cm.checkpoints())[0])
    r = control.analyze("equivariance", None, hook=HOOK)
    res["zoo_step0/" + HOOK] = [f.to_dict() for f in r.families("stimuli")]
    return res


UNITS_SEED_DEV, UNITS_SEED_TEST = cm.HELD_OUT_SEED, 7  # dev: spec choices were made on it; test: untouched


def surgery(out: Path) -> dict[str, Any]:
    """Designed curve circuit: the spec's two free choices (kappa, floor) picked on the dev set (seed 1, where
    the design was developed), then reported on a fresh test set (seed 7) for three ensemble / split seeds,
    with every control; the template and lines recipes on the same test set for comparison."""
    model = visionlens.load("zoo:curve")
    dev = cm.curve_batch(2000, seed=UNITS_SEED_DEV)
    test = cm.curve_batch(4000, seed=UNITS_SEED_TEST)
    res: dict[str, Any] = {"dev": {}, "test": {}}
    common = {"below": BELOW, "hook": HOOK}
    for kappa in (3.0, 4.0):
        for floor in (0.1, 0.2):
            r = model.analyze(
                "circuit_surgery",
                dev["images"],
                **common,
                labels=dev["labels"].tolist(),
                kappa=kappa,
                floor=floor,
                fit_fraction=0.05,
                controls=False,
                n_bootstrap=200,
            )
            res["dev"][f"kappa={kappa},floor={floor}"] = r.meta["conditions"]["handcoded"]
    best = max(res["dev"], key=lambda k: res["dev"][k]["recovered"])
    kappa, floor = (float(v.split("=")[1]) for v in best.split(","))
    res["chosen"] = {"kappa": kappa, "floor": floor}
    for seed in (0, 1, 2):
        r = model.analyze(
            "circuit_surgery",
            test["images"],
            **common,
            labels=test["labels"].tolist(),
            kappa=kappa,
            floor=floor,
            fit_fraction=0.25,
            seed=seed,
        )
        if seed == 0:
            r.save(out / "surgery_designed")
        res["test"][f"designed/seed{seed}"] = {
            "summary": r.summary,
            "conditions": r.meta["conditions"],
            "units": r.meta["units"],
            "reach": r.meta["reach"],
        }
    for name, extra in (
        ("designed_plain_stimuli", {"plain_stimuli": True}),
        ("designed_conv_only", {"reach": "conv"}),
        ("template", {"mode": "template"}),
        ("lines", {"mode": "lines"}),
    ):
        opts = {"kappa": kappa, "floor": floor, **extra}
        r = model.analyze(
            "circuit_surgery",
            test["images"],
            **common,
            labels=test["labels"].tolist(),
            fit_fraction=0.25,
            controls=False,
            **opts,
        )
        if name in ("template", "lines"):
            r.save(out / f"surgery_{name}")
        res["test"][name] = {"summary": r.summary, "conditions": r.meta["conditions"]}
    return res


def colour(out: Path) -> dict[str, Any]:
    """The second early circuit: colour-contrast units of conv2d2 (hue-selective, from conv2d1) written as a hue
    tuning (designed mode), on the same test set as the curve circuit, three seeds, every control."""
    model = visionlens.load("zoo:curve")
    test = cm.curve_batch(4000, seed=UNITS_SEED_TEST)
    res: dict[str, Any] = {}
    for seed in (0, 1, 2):
        r = model.analyze(
            "circuit_surgery",
            test["images"],
            below="conv2d1.hook_out",
            hook="conv2d2.hook_out",
            labels=test["labels"].tolist(),
            circuit="colour",
            kappa=2.0,
            floor=0.2,
            sigma_px=3.0,
            fit_fraction=0.25,
            seed=seed,
        )
        if seed == 0:
            r.save(out / "surgery_colour")
        res[f"seed{seed}"] = {
            "summary": r.summary,
            "conditions": r.meta["conditions"],
            "units": r.meta["units"],
            "preferred_hue": r.meta["orientations"],
        }
    return res


def families(out: Path) -> dict[str, Any]:
    """Planted hue (8 members) and reflection (9 members) families: precision / recall per route, seeds 0-2."""
    res: dict[str, Any] = {}
    for name, build, transform, extra in (
        ("hue", planted.planted_hue_model, "hue", {"n_hues": 24}),
        ("reflection", planted.planted_reflection_model, "reflection", {}),
    ):
        for seed in range(3):
            model, truth = build(seed=seed)
            r = model.analyze(
                "equivariance", None, hook=truth["hook"], layer=truth["layer"], transform=transform, **extra
            )
            for route in ("stimuli", "weights"):
                res[f"{name}/seed{seed}/{route}"] = eq.family_precision_recall(r.families(route), truth["family"])
            if seed == 0:
                r.save(out / f"equivariance_planted_{name}")
    return res


def scrubbing(out: Path) -> dict[str, Any]:
    model = visionlens.load("zoo:curve")
    b = cm.curve_batch(1000, seed=cm.HELD_OUT_SEED)
    factors = {k: b[k].tolist() for k in ("orientation", "cx", "cy", "radius")}
    r = model.analyze("curve_scrubbing", b["images"], hook=HOOK, labels=b["labels"].tolist(), factors=factors)
    r.save(out / "scrubbing")
    return {"summary": r.summary, "rows": r.tables["hypotheses"].records()}


def phase(out: Path, checkpoints: str = "") -> dict[str, Any]:
    model = visionlens.load("zoo:curve")
    b = cm.curve_batch(500, seed=cm.HELD_OUT_SEED)
    src = checkpoints or str(Path(cm.__file__).parent / "weights" / cm.CHECKPOINTS_FILE)
    res = {}
    for hook in ("mixed3b.hook_out", HOOK):
        r = model.analyze("phase_changes", b["images"], checkpoints=src, hook=hook, labels=b["labels"].tolist())
        r.save(out / f"phase_{hook.split('.')[0]}")
        res[hook] = {"summary": r.summary, "changes": r.tables["changes"].records()}
    return res


SECTIONS = {
    "tuning": tuning,
    "equivariance": equivariance,
    "families": families,
    "surgery": surgery,
    "colour": colour,
    "scrubbing": scrubbing,
    "phase": phase,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="benchmarks/results/circuits")
    p.add_argument("--only", default=",".join(SECTIONS))
    p.add_argument("--checkpoints", default="", help="phase: a folder of step_*.safetensors instead of the shipped set")
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only.split(","):
        t0 = time.perf_counter()
        res = phase(out, args.checkpoints) if name == "phase" else SECTIONS[name](out)
        res = {"seconds": round(time.perf_counter() - t0, 1), "result": res}
        (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
        print(name, json.dumps(res, default=float)[:3000], flush=True)


if __name__ == "__main__":
    main()
