"""Max-activating text on the zoo CLIP, graded against brute force.

For every last-layer unit of the zoo CLIP -- the text tower's last MLP neurons (read at the pooled
end-of-text token) and the image tower's last feature-map channels (as the direction each writes into
the joint space, scored by cosine with the text embedding) -- every string of 1..``--max-len`` words
over the caption vocabulary is scored (16,104 strings at length 4), and the grammatical captions
(``"a [colour] [texture] [shape]"``, any non-empty subset of the three attributes, 79 strings) are
marked. Each search then gets ``--budget`` forwards per unit; we report, per method:

* ``frac_all``: best found / exhaustive maximum (every string up to ``--max-len`` words);
* ``frac_grammar``: best found / maximum over the grammatical captions (can exceed 1: ungrammatical
  strings often score higher);
* ``norm_all``: ``(found - mean) / (max - mean)`` over the exhaustive set (a unit where every string
  scores about the same cannot inflate it);
* ``rank``: 1-based rank of the found string among all strings; the share of units with
  ``frac_all >= 0.95`` with a bootstrap 95% interval over units; the same at smaller budgets
  (``--curve``) so the searches can be told apart from random sampling.

Baselines: ``random`` (uniform random strings, same budget) and ``input_independent`` (the one string
with the best mean rank over the units, the same answer for every unit). ``soft`` (the Multimodal
Neurons recipe) is slow, so it runs on ``--soft-units`` randomly chosen units per tower.

``python benchmarks/clip_max_text.py`` writes ``benchmarks/results/clip_max_text.json`` / ``.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parent / "results"


def bootstrap(x: np.ndarray, n: int = 2000, seed: int = 0) -> list[float]:
    g = np.random.default_rng(seed)
    means = [x[g.integers(0, len(x), len(x))].mean() for _ in range(n)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--curve", type=int, nargs="*", default=[50, 100, 200, 500])
    ap.add_argument("--max-len", type=int, default=4)
    ap.add_argument("--text-units", type=int, default=-1, help="-1 = all")
    ap.add_argument("--image-units", type=int, default=-1, help="-1 = all")
    ap.add_argument("--soft-units", type=int, default=16, help="units per tower for the slow soft search")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from visionlens.plugins.clip_max_activating_text import (
        brute_force,
        discrete_search,
        random_search,
        soft_prompt_search,
        text_objective,
    )
    from visionlens.zoo import catalog
    from visionlens.zoo import data as zdata

    model = catalog.load("clip")
    n_text = model.source.transformer.resblocks[-1].mlp.c_fc.out_features
    n_img = model.source.visual.attnpool.v_proj.in_features
    last = len(model.source.transformer.resblocks) - 1
    g = torch.Generator().manual_seed(args.seed)
    t_units = (
        list(range(n_text)) if args.text_units < 0 else torch.randperm(n_text, generator=g)[: args.text_units].tolist()
    )
    i_units = (
        list(range(n_img)) if args.image_units < 0 else torch.randperm(n_img, generator=g)[: args.image_units].tolist()
    )
    targets = [f"text.blocks.{last}.mlp.hook_post:{u}" for u in sorted(t_units)]
    targets += [f"image_unit:{u}" for u in sorted(i_units)]
    soft_pick = set(torch.randperm(len(t_units), generator=g)[: args.soft_units].tolist())
    soft_targets = {targets[i] for i in soft_pick}
    soft_targets |= {
        targets[len(t_units) + i] for i in torch.randperm(len(i_units), generator=g)[: args.soft_units].tolist()
    }

    tok = model.adapter.tokenizer
    enc = tok.encoder
    grammar = set()
    for c, t, s in itertools.product([None, *zdata.COLOURS], [None, *zdata.TEXTURE_WORDS], [None, *zdata.SHAPES]):
        words = [w for w in (c, t, s) if w is not None]
        if words:
            grammar.add(tuple(enc[w] for w in ["a", *words]))
    memo: dict = {}
    rows = []
    all_scores = []
    t0 = time.time()
    for k, target in enumerate(targets):
        obj = text_objective(model, target, max_len=args.max_len, memo=memo)
        bf = brute_force(obj, top=10**6)
        scores = np.array(bf.scores)
        lookup = dict(zip(bf.seqs, bf.scores))
        all_scores.append(lookup)
        best, mean = scores[0], scores.mean()
        gmax = max(lookup[s] for s in grammar)
        row = {
            "target": target,
            "max_all": float(best),
            "best_all": bf.texts[0],
            "max_grammar": float(gmax),
            "best_grammar_in_all_rank": int((scores > gmax).sum()) + 1,
            "mean_all": float(mean),
        }

        def grade(res, name: str) -> None:
            f = res.scores[0]
            row[name] = {
                "text": res.texts[0],
                "score": float(f),
                "forwards": res.forwards,
                "frac_all": float(f / best) if best > 0 else None,
                "frac_grammar": float(f / gmax) if gmax > 0 else None,
                "norm_all": float((f - mean) / (best - mean)),
                "rank": int((scores > f).sum()) + 1,
                "grammatical": res.seqs[0] in grammar,
            }

        grade(discrete_search(obj, budget=args.budget, seed=args.seed), "discrete")
        grade(random_search(obj, budget=args.budget, seed=args.seed), "random")
        for b in args.curve:
            grade(discrete_search(obj, budget=b, seed=args.seed), f"discrete@{b}")
            grade(random_search(obj, budget=b, seed=args.seed), f"random@{b}")
        if target in soft_targets:
            grade(soft_prompt_search(obj, budget=args.budget, seed=args.seed), "soft")
        rows.append(row)
        if k % 16 == 0:
            print(f"{k}/{len(targets)} {target} {time.time() - t0:.0f}s", flush=True)

    # input-independent baseline: one string for every unit (best mean normalized score), scored in-sample
    seqs = list(all_scores[0])
    norm = np.array(
        [[(lk[s] - r["mean_all"]) / (r["max_all"] - r["mean_all"]) for s in seqs] for lk, r in zip(all_scores, rows)]
    )
    j = int(norm.mean(0).argmax())
    for r, lk in zip(rows, all_scores):
        f = lk[seqs[j]]
        r["input_independent"] = {
            "text": tok.decode(list(seqs[j])),
            "score": float(f),
            "forwards": 0,
            "frac_all": float(f / r["max_all"]) if r["max_all"] > 0 else None,
            "norm_all": float((f - r["mean_all"]) / (r["max_all"] - r["mean_all"])),
            "rank": int(sum(v > f for v in lk.values())) + 1,
        }

    methods = ["discrete", "random", "soft", "input_independent"] + [
        f"{m}@{b}" for b in args.curve for m in ("discrete", "random")
    ]
    summary = {}
    for tower in ("text", "image", "all"):
        sel = [r for r in rows if tower == "all" or r["target"].startswith(tower)]
        for m in methods:
            got = [r[m] for r in sel if m in r]
            if not got:
                continue
            frac = np.array([g["frac_all"] if g["frac_all"] is not None else -np.inf for g in got])
            hit = (frac >= 0.95).astype(float)
            fg = np.array([g.get("frac_grammar") or -np.inf for g in got])
            summary[f"{tower}/{m}"] = {
                "units": len(got),
                "share_frac_all_ge_0.95": float(hit.mean()),
                "share_ci95": bootstrap(hit),
                "share_frac_grammar_ge_0.95": float((fg >= 0.95).mean()),
                "median_frac_all": float(np.median(frac)),
                "mean_norm_all": float(np.mean([g["norm_all"] for g in got])),
                "share_rank1": float(np.mean([g["rank"] == 1 for g in got])),
                "median_rank": float(np.median([g["rank"] for g in got])),
                "mean_forwards": float(np.mean([g["forwards"] for g in got])),
            }
    out = {
        "command": "python benchmarks/clip_max_text.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
            if v != ""
        ),
        "model": "zoo:clip",
        "strings_exhaustive": len(seqs),
        "grammar_captions": len(grammar),
        "positive_max_units": int(sum(r["max_all"] > 0 for r in rows)),
        "seconds": time.time() - t0,
        "summary": summary,
        "units": rows,
    }
    OUT.mkdir(exist_ok=True)
    name = f"clip_max_text{'_' + args.tag if args.tag else ''}"
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# Max-activating text vs brute force (zoo CLIP)\n",
        f"`{out['command']}`\n",
        f"{len(seqs)} strings of 1..{args.max_len} words; {len(grammar)} grammatical captions; {len(rows)} units.\n",
        "| tower/method | units | share frac>=0.95 (95% CI) | share vs grammar max | median frac | mean norm "
        "| share rank 1 | median rank | forwards |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, s in summary.items():
        lo, hi = s["share_ci95"]
        lines.append(
            f"| {k} | {s['units']} | {s['share_frac_all_ge_0.95']:.3f} ({lo:.3f}-{hi:.3f}) | "
            f"{s['share_frac_grammar_ge_0.95']:.3f} | {s['median_frac_all']:.3f} | {s['mean_norm_all']:.3f} | "
            f"{s['share_rank1']:.3f} | {s['median_rank']:.0f} | {s['mean_forwards']:.0f} |"
        )
    (OUT / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
