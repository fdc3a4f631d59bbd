"""Check the transfer table's acceptance bars on the committed results (and two live checks).

    python scripts/check_transfer_acceptance.py [--results benchmarks/results/transfer] [--no-live]

From ``results.json`` (seed 0) and ``seeds/seed*/results.json``:

* every supported cell carries a two-ended bootstrap interval;
* the best input-independent (fitted constant) map scores <= 0.1 normalized on every localization row;
* every classifier family has scored rows for training seeds 0, 1 and 2;
* causal scrubbing separates the true pathway from the best wrong hypothesis by >= 0.4 (the ``margin``) on
  every classifier and seed;
* where a unit-patching cell's verdict is ``transfers``, it recovers the planted units (``unit_recovery``, the
  cell's score) at >= 0.8.

Live (skipped with ``--no-live``): on a fresh batch from the zoo generator no pixel is inside the trigger in more
than 25% of triggered images, and the randomized copy of every classifier family has a non-zero input
gradient at > 90% of pixels. Prints one line per check; exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from visionlens.zoo import bench_report

Row = Mapping[str, Any]


def _rows(results: Path) -> Dict[str, List[Row]]:
    files = [results / "results.json", *sorted(results.glob("seeds/seed*/results.json"))]
    return {str(f.relative_to(results)): json.loads(f.read_text())["rows"] for f in files if f.exists()}


def _name(r: Row) -> str:
    """The zoo entry a row scores (``zoo:resnet`` -> ``resnet``)."""
    return str(r["model"]).removeprefix("zoo:")


def _supported(rows: Sequence[Row]) -> List[Row]:
    return [r for r in rows if r.get("supported") and r.get("score") is not None]


def check_rows(by_file: Mapping[str, Sequence[Row]], classifiers: Sequence[str]) -> List[Tuple[str, bool, str]]:
    """The results-file checks: ``(name, passed, detail)`` per acceptance bar."""
    rows = [r for rs in by_file.values() for r in _supported(rs)]
    out: List[Tuple[str, bool, str]] = []
    missing = [f"{r['model']} x {r['technique']}" for r in rows if not bench_report.has_interval(r)]
    out.append(("every supported cell has an interval", not missing, f"{len(rows)} cells; missing: {missing[:5]}"))

    loc = [r for r in rows if r.get("claim") == "localization"]
    const = [float(r["baselines"]["constant"]["normalized"]) for r in loc if "constant" in r.get("baselines", {})]
    no_const = len(loc) - len(const)
    worst = max(const) if const else float("nan")
    out.append(
        (
            "best constant map <= 0.1 normalized on every localization row",
            bool(const) and no_const == 0 and worst <= 0.1,
            f"{len(loc)} rows, max {worst:.4f}, min {min(const):.4f}, rows without the baseline {no_const}",
        )
    )

    seeds: Dict[str, set] = {f: set() for f in classifiers}
    for r in rows:
        if _name(r) in seeds:
            seeds[_name(r)].add(int(r.get("model_seed", 0)))
    have = {f: sorted(s) for f, s in seeds.items()}
    short = [f for f, s in seeds.items() if not {0, 1, 2} <= s]
    out.append(("3 training seeds per classifier family", not short, f"seeds {have}; short: {short}"))

    cs = [r for r in rows if r["technique"] == "causal_scrubbing" and _name(r) in seeds]
    margins = {(_name(r), int(r.get("model_seed", 0))): float(r["details"]["margin"]) for r in cs}
    absent = [(f, s) for f in classifiers for s in (0, 1, 2) if (f, s) not in margins]
    low = {k: v for k, v in margins.items() if v < 0.4}
    lo = min(margins.values()) if margins else float("nan")
    hi = max(margins.values()) if margins else float("nan")
    out.append(
        (
            "causal-scrubbing margin >= 0.4 on every classifier and seed",
            not absent and not low,
            f"{len(margins)} family-seeds, margin {lo:.3f}-{hi:.3f}; below: {low}; missing: {absent}",
        )
    )

    up = [r for r in rows if r["technique"] == "unit_patching"]
    transfers = [r for r in up if bench_report.verdict(r) == "transfers"]
    bad = [f"{r['model']} seed {r.get('model_seed', 0)}: {r['score']:.3f}" for r in transfers if r["score"] < 0.8]
    scores = [float(r["score"]) for r in up]
    verdicts = sorted({bench_report.verdict(r) for r in up})
    out.append(
        (
            "unit patching recovers the planted units (>= 0.8) where it transfers",
            not bad,
            f"{len(up)} cells, {len(transfers)} with verdict 'transfers'; unit_recovery "
            f"{min(scores):.3f}-{max(scores):.3f}; verdicts {verdicts}; below: {bad}",
        )
    )
    return out


def check_live(classifiers: Sequence[str]) -> List[Tuple[str, bool, str]]:
    """The generator's trigger spread and the randomized copies' input-gradient coverage, computed now."""
    import torch

    from visionlens.zoo import catalog
    from visionlens.zoo import classifiers as zc
    from visionlens.zoo import data as zdata
    from visionlens.zoo.randomize import input_gradient_coverage

    torch.set_num_threads(1)
    b = zdata.make_batch(3000, seed=12345, trigger_fraction=1.0)
    peak = float(b.masks["trigger"].float().mean(0).max())
    out = [("no pixel inside the trigger in > 25% of triggered images", peak <= 0.25, f"peak {peak:.3f} (3000 images)")]
    cov: Dict[str, float] = {}
    for name in classifiers:
        entry = catalog.get_entry(name)
        if entry.build_reason():
            cov[name] = float("nan")
            continue
        if entry.dataset == "fashion":
            if not zdata.fashion_mnist_available():
                cov[name] = float("nan")
                continue
            images = zc.held_out_batch(8, kind="fashion").images
        else:
            images = zc.held_out_batch(8).images
        cov[name] = input_gradient_coverage(catalog.load(name, pretrained=False), images)
    ok = all(v > 0.9 for v in cov.values())
    detail = str({k: round(v, 3) for k, v in cov.items()})
    out.append(("random copy: non-zero input gradient at > 90% of pixels", ok, detail))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/transfer"))
    ap.add_argument("--no-live", action="store_true", help="only the checks on the results files")
    args = ap.parse_args(argv)
    from visionlens.zoo import catalog

    by_file = _rows(args.results)
    if not by_file:
        print(f"no results.json under {args.results}", file=sys.stderr)
        return 2
    classifiers = [n for n, e in catalog.entries().items() if e.kind == "classifier" and e.benchmark]
    checks = check_rows(by_file, classifiers) + ([] if args.no_live else check_live(classifiers))
    print(f"files: {', '.join(by_file)}; classifier families: {', '.join(classifiers)}")
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
