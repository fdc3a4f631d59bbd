"""Planted multimodal units of ``zoo:clip_glyph``: are they found by ``multimodal_neurons``, and how much of the
typographic attack goes through them?

For every training seed (seed 0: the shipped weights; others: ``--extra SEED=PATH`` weights trained with
``visionlens zoo train clip_glyph --seed SEED --out DIR``) and every evaluation replicate (a disjoint slice of
held-out shape images and its own word placements), the analysis ranks the 256 units of
``visual.layer4.0.act3.hook_out`` per shape. Ground truth: the planted units (``planted_units(seed)``):
per shape one multimodal unit (shape OR word), one shape-only decoy and one word-only decoy.

Rankings compared (rank 1 = best, of 256): ``joint`` (the analysis: min of standardized image, text and
caption scores, image / text on one pooled scale per unit), ``joint_dprime`` (the same with Cohen's d' per
modality, ``selectivity="dprime"``), ``joint_median_centred`` (the first version: each component centred
on the median unit before scaling), ``image`` / ``text`` (one modality only; ``_dprime``: as d'),
``caption`` (attribution only), ``magnitude`` (mean activation on the concept's images and words: the
trivial method) and ``random`` (a seeded permutation).

Attack: zero-shot shape accuracy clean / wrong word / right word / random strokes / a non-shape word, for
``zoo:clip_glyph``, for ``zoo:clip`` (never saw text: the control) and, per planted unit, the drop in
attack success when that unit alone is restored to its clean value.

    visionlens zoo train clip_glyph --seed 1 --out /tmp/cg/s1   # (and --seed 2 --out /tmp/cg/s2)
    OMP_NUM_THREADS=1 python benchmarks/clip_multimodal.py --extra 1=/tmp/cg/s1/clip_glyph.safetensors \
        --extra 2=/tmp/cg/s2/clip_glyph.safetensors --out benchmarks/results/clip_multimodal.json

Seeds 0 and 1 were used while choosing the joint score's scaling (``joint_median_centred`` and
``joint_dprime`` were the earlier versions); seed 2 was trained after that choice and is the held-out check.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List

import torch

import visionlens as vl
from visionlens.clip import zero_shot_head
from visionlens.plugins.clip_multimodal_neurons import (
    attack_images,
    concept_word_images,
    hook_activations,
    restore_predictions,
    standardize,
    unit_activations,
)
from visionlens.zoo import catalog
from visionlens.zoo.clip_glyph_model import (
    MODE_NONE,
    PLANTED_HOOK,
    ROLES,
    SHAPES,
    held_out_glyph_batch,
    planted_units,
)

METHODS = (
    "joint",
    "joint_dprime",
    "joint_median_centred",
    "image",
    "text",
    "image_dprime",
    "text_dprime",
    "caption",
    "magnitude",
    "random",
)


def centred(s: torch.Tensor) -> torch.Tensor:
    """The first version of the joint score's scaling: ``(s - median) / std`` over units."""
    return (s - s.median()) / s.std()


def ranks(score: torch.Tensor) -> torch.Tensor:
    """1-based rank of every unit under ``score [U]`` (higher is better)."""
    order = score.argsort(descending=True)
    r = torch.empty_like(order)
    r[order] = torch.arange(1, len(order) + 1)
    return r


def interval(xs: List[float]) -> Dict[str, float]:
    """Mean, a normal-approximation 95% interval of the mean, min and max."""
    t = torch.tensor(xs, dtype=torch.float64)
    sd = float(t.std()) if len(t) > 1 else 0.0
    half = 1.96 * sd / math.sqrt(len(t))
    return {
        "mean": float(t.mean()),
        "lo": float(t.mean()) - half,
        "hi": float(t.mean()) + half,
        "min": float(t.min()),
        "max": float(t.max()),
        "n": len(t),
    }


def one_run(model: Any, seed: int, rep: int, n: int) -> Dict[str, Any]:
    images, f = held_out_glyph_batch(n, mode=MODE_NONE, start=10_000 * (rep + 1))
    labels = f["shape"].long()
    r = vl.run(
        "multimodal_neurons",
        model,
        images,
        concepts=list(SHAPES),
        labels=labels.tolist(),
        hook=PLANTED_HOOK,
        seed=rep,
        attack_units=5,
        n_text_images=64,
        max_images=n,
    )
    units = planted_units(seed)
    words = concept_word_images(list(SHAPES), 64, 32, r.meta["text_background"], seed=rep, scale=1)
    acts, wacts = unit_activations(model, images, PLANTED_HOOK), unit_activations(model, words, PLANTED_HOOK)
    g = torch.Generator().manual_seed(1000 * seed + rep)
    out: Dict[str, Any] = {"ranks": {}, "attack": {row[0]: row[1] for row in r.tables["attack"].rows}}
    out["attack_success"] = r.meta["attack_success"]
    for c, shape in enumerate(SHAPES):
        scores = {
            "joint": r.tensors["joint"][c],
            "joint_dprime": torch.stack(
                [standardize(r.tensors[k][c]) for k in ("dprime_image", "dprime_text", "caption_attribution")]
            )
            .min(0)
            .values,
            "joint_median_centred": torch.stack(
                [centred(r.tensors[k][c]) for k in ("selectivity_image", "selectivity_text", "caption_attribution")]
            )
            .min(0)
            .values,
            "image": r.tensors["selectivity_image"][c],
            "text": r.tensors["selectivity_text"][c],
            "image_dprime": r.tensors["dprime_image"][c],
            "text_dprime": r.tensors["dprime_text"][c],
            "caption": r.tensors["caption_attribution"][c],
            "magnitude": torch.cat([acts[labels == c], wacts[c * 64 : (c + 1) * 64]]).mean(0),
            "random": torch.rand(acts.shape[1], generator=g),
        }
        for m, s in scores.items():
            rk = ranks(s)
            out["ranks"].setdefault(m, {})[shape] = {role: int(rk[units[role][shape]]) for role in ROLES}
    # per planted unit: how much of the attack writing word c goes through it (restored to its clean value)
    head = zero_shot_head(model, list(SHAPES), ["a {}"], attach=False)
    attacked, written = attack_images(images, labels, list(SHAPES), seed=rep)
    clean_acts = hook_activations(model, images, PLANTED_HOOK)
    restore: Dict[str, Dict[str, float]] = {}
    for c, shape in enumerate(SHAPES):
        sel = written == c
        att, cl = attacked[sel], clean_acts[sel]

        def success(us: List[int]) -> float:
            return float((restore_predictions(model, att, cl, PLANTED_HOOK, us, head) == c).float().mean())

        base = success([])
        row = {"base": base, "every_unit": success(list(range(acts.shape[1])))}
        for role in ROLES:
            row[role] = base - success([units[role][shape]])
        row["all_three"] = base - success([units[role][shape] for role in ROLES])
        planted = {units[role][shape] for role in ROLES}
        others = [u for u in range(acts.shape[1]) if u not in planted]
        pick = torch.randperm(len(others), generator=g)[:8]
        row["random_unit_mean"] = sum(base - success([others[int(i)]]) for i in pick) / len(pick)
        restore[shape] = row
    out["restore"] = restore
    return out


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    summ: Dict[str, Any] = {"ranking": {}, "attack": {}, "restore": {}}
    for m in METHODS:
        mm = [run["ranks"][m][s]["multimodal"] for run in runs for s in SHAPES]
        top5 = [float(x <= 5) for x in mm]
        top1 = [float(x == 1) for x in mm]
        decoy_above = [
            float(min(run["ranks"][m][s]["shape"], run["ranks"][m][s]["word"]) < run["ranks"][m][s]["multimodal"])
            for run in runs
            for s in SHAPES
        ]
        decoy_top5 = [
            float(min(run["ranks"][m][s]["shape"], run["ranks"][m][s]["word"]) <= 5) for run in runs for s in SHAPES
        ]
        summ["ranking"][m] = {
            "multimodal_rank": interval([float(x) for x in mm]),
            "multimodal_top5_rate": interval(top5),
            "multimodal_top1_rate": interval(top1),
            "decoy_above_multimodal_rate": interval(decoy_above),
            "decoy_in_top5_rate": interval(decoy_top5),
            "worst_multimodal_rank": max(mm),
        }
    for k in runs[0]["attack"]:
        summ["attack"][k] = interval([run["attack"][k] for run in runs])
    summ["attack"]["attack_success"] = interval([run["attack_success"] for run in runs])
    for k in ("base", "every_unit", *ROLES, "all_three", "random_unit_mean"):
        summ["restore"][k] = interval([run["restore"][s][k] for run in runs for s in SHAPES])
    return summ


def control_attack(model: Any, n: int) -> Dict[str, float]:
    images, f = held_out_glyph_batch(n, mode=MODE_NONE, start=10_000)
    r = vl.run(
        "multimodal_neurons",
        model,
        images,
        concepts=list(SHAPES),
        labels=f["shape"].long().tolist(),
        attack_units=0,
        n_text_images=16,
        max_images=n,
    )
    return {row[0]: row[1] for row in r.tables["attack"].rows} | {"attack_success": r.meta["attack_success"]}


def _ci(x: Dict[str, float], digits: int = 2) -> str:
    return f"{x['mean']:.{digits}f} ({x['lo']:.{digits}f}-{x['hi']:.{digits}f})"


def markdown(result: Dict[str, Any]) -> str:
    """The result as Markdown tables (all runs pooled, then per training seed)."""
    lines = [
        "# Planted multimodal units of zoo:clip_glyph (benchmarks/clip_multimodal.py)",
        "",
        f"`{result['command']}` ({result['seconds']} s). Hook `{result['hook']}`, {result['n_units']} units; "
        f"{result['replicates']} replicates x {result['n']} held-out shape images per training seed. Rank 1 = best.",
        "Intervals: mean and normal 95% interval over (seed, replicate, shape) cases.",
        "",
    ]
    scopes = [("all seeds", result["summary"])] + [
        (k.replace("_", " "), v["summary"]) for k, v in result.items() if k.startswith("seed_")
    ]
    for name, summ in scopes:
        lines += [
            f"## Rankings, {name}",
            "",
            "| method | multimodal unit rank | worst | in top 5 | top 1 | a decoy above it | a decoy in top 5 |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, x in summ["ranking"].items():
            lines.append(
                f"| {m} | {_ci(x['multimodal_rank'], 1)} | {x['worst_multimodal_rank']} | "
                f"{_ci(x['multimodal_top5_rate'])} | {_ci(x['multimodal_top1_rate'])} | "
                f"{_ci(x['decoy_above_multimodal_rate'])} | {_ci(x['decoy_in_top5_rate'])} |"
            )
        lines.append("")
    s = result["summary"]
    lines += ["## Typographic attack (all seeds)", "", "| condition | zero-shot shape accuracy |", "|---|---|"]
    lines += [f"| {k} | {_ci(v, 3)} |" for k, v in s["attack"].items()]
    c = result["control_zoo_clip_attack"]
    lines += ["", "zoo:clip (never saw text), same images: " + ", ".join(f"{k} {v:.3f}" for k, v in c.items()), ""]
    lines += ["## Attack success carried by each planted unit (restored to its clean value)", ""]
    names = {
        "base": "nothing (attack success itself)",
        "every_unit": "every unit (attack success left)",
        "multimodal": "the multimodal unit of the written word (drop)",
        "shape": "the shape-only decoy of the written word (drop)",
        "word": "the word-only decoy of the written word (drop)",
        "all_three": "all three planted units of the written word (drop)",
        "random_unit_mean": "one random unit (drop, mean of 8)",
    }
    lines += ["| restored | value |", "|---|---|"]
    lines += [f"| {names[k]} | {_ci(v, 3)} |" for k, v in s["restore"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extra", action="append", default=[], help="SEED=PATH weights of another training seed")
    ap.add_argument("--replicates", type=int, default=4)
    ap.add_argument("--n", type=int, default=300, help="held-out shape images per replicate")
    ap.add_argument("--out", default="benchmarks/results/clip_multimodal.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    weights: Dict[int, Any] = {0: None}
    for e in args.extra:
        s, _, p = e.partition("=")
        weights[int(s)] = p
    result: Dict[str, Any] = {"hook": PLANTED_HOOK, "n_units": 256, "replicates": args.replicates, "n": args.n}
    all_runs: List[Dict[str, Any]] = []
    for seed, w in weights.items():
        model = catalog.load("clip_glyph", weights=w)
        runs = [one_run(model, seed, rep, args.n) for rep in range(args.replicates)]
        result[f"seed_{seed}"] = {
            "weights": w or "visionlens/zoo/weights/clip_glyph.safetensors",
            "planted_units": planted_units(seed),
            "runs": runs,
            "summary": summarize(runs),
        }
        all_runs += runs
        print(f"seed {seed}: {time.time() - t0:.0f} s", flush=True)
    result["summary"] = summarize(all_runs)
    # controls: the zoo CLIP that never saw words, and the untrained clip_glyph (planted units at chance)
    result["control_zoo_clip_attack"] = control_attack(catalog.load("clip"), args.n)
    rnd = catalog.load("clip_glyph", pretrained=False)
    result["control_random_weights"] = summarize([one_run(rnd, 0, 0, args.n)])["ranking"]["joint"]
    result["seconds"] = round(time.time() - t0, 1)
    result["command"] = "OMP_NUM_THREADS=1 python benchmarks/clip_multimodal.py " + " ".join(
        [f"--extra {e}" for e in args.extra] + [f"--replicates {args.replicates}", f"--n {args.n}"]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(result))
    s = result["summary"]
    for m in METHODS:
        x = s["ranking"][m]
        print(
            f"{m:>9}: multimodal rank {x['multimodal_rank']['mean']:.1f} (worst {x['worst_multimodal_rank']}), "
            f"top-5 {x['multimodal_top5_rate']['mean']:.2f}, top-1 {x['multimodal_top1_rate']['mean']:.2f}, "
            f"decoy above {x['decoy_above_multimodal_rate']['mean']:.2f}, decoy in top-5 "
            f"{x['decoy_in_top5_rate']['mean']:.2f}"
        )
    print("attack:", {k: round(v["mean"], 3) for k, v in s["attack"].items()})
    print("restore (success drop):", {k: round(v["mean"], 3) for k, v in s["restore"].items()})
    print("zoo:clip control attack:", result["control_zoo_clip_attack"])
    print("random weights joint:", result["control_random_weights"]["multimodal_rank"])


if __name__ == "__main__":
    main()
