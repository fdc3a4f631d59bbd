"""Write the transfer table's headline into README.md and docs/transfer.md from the committed results
(``benchmarks/results/transfer/results.json``), never typed by hand.

Each target holds a block between ``<!-- transfer-headline: begin -->`` and ``<!-- transfer-headline: end -->``
(README: the per-technique verdicts; docs/transfer.md: the table of normalized scores and the verdicts).

    python scripts/gen_transfer_docs.py            # rewrites both blocks
    python scripts/gen_transfer_docs.py --check    # exit 1 if a block no longer matches the results
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from visionlens.zoo.bench_report import cascade_table, headline, markdown_table, run_history, seed_table, verdict

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "transfer" / "results.json"
SEEDS = ROOT / "benchmarks" / "results" / "transfer" / "seeds"  # seedN/results.json: other training seeds
README = ROOT / "README.md"
DOC = ROOT / "docs" / "transfer.md"
BEGIN, END = "<!-- transfer-headline: begin -->", "<!-- transfer-headline: end -->"
ORDER = ("transfers", "ties baseline", "partial", "fails sanity", "breaks")


def _load() -> Dict[str, Any]:
    return json.loads(RESULTS.read_text())


def _seed_payloads() -> Dict[int, Mapping[str, Any]]:
    """``{model seed: results.json payload}`` of every committed ``seeds/seedN`` run."""
    out: Dict[int, Mapping[str, Any]] = {}
    for p in sorted(SEEDS.glob("seed*/results.json")) if SEEDS.is_dir() else []:
        payload = json.loads(p.read_text())
        seeds = {int(r["model_seed"]) for r in payload["rows"] if r.get("model_seed") is not None}
        if len(seeds) == 1:
            out[seeds.pop()] = payload
    return out


def _seed_runs(payload: Mapping[str, Any]) -> Dict[int, List[Mapping[str, Any]]]:
    """``{model seed: rows}``: the shipped models' table (seed 0) and every committed ``seeds/seedN`` run."""
    runs: Dict[int, List[Mapping[str, Any]]] = {0: list(payload["rows"])}
    runs.update({seed: list(p["rows"]) for seed, p in _seed_payloads().items()})
    return runs


def _seed_lines(payload: Mapping[str, Any]) -> List[str]:
    runs = _seed_runs(payload)
    if len(runs) < 2:
        return ["Training seeds: only the shipped models (seed 0) are scored in the committed results."]
    return [
        f"Across training seeds {', '.join(str(s) for s in sorted(runs))} (each seed's verdict: T transfers, = ties "
        "baseline, p partial, B breaks, S fails sanity, · not scored; then the normalized scores' range):",
        "",
        seed_table(runs),
        "",
        "The other seeds' runs (`benchmarks/results/transfer/seeds/`): "
        + "; ".join(
            f"seed {s}: " + "; ".join(f"`{r.get('command') or '?'}`" for r in run_history(p))
            for s, p in sorted(_seed_payloads().items())
        )
        + ".",
    ]


def _verdict_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    lines = []
    for tech, verdicts in headline(rows).items():
        parts = [f"**{v}**: {', '.join(verdicts[v])}" for v in ORDER if v in verdicts]
        lines.append(f"- `{tech}`: " + "; ".join(parts))
    return lines


def run_line(run: Optional[Mapping[str, Any]]) -> str:
    """The cost of one run that wrote a results file, from its run record (empty for older files)."""
    if not run or run.get("wall_seconds") is None:
        return ""
    wall = float(run["wall_seconds"])
    load = run.get("load_average_at_start")
    state = "" if run.get("finished") else ", interrupted"
    return (
        f"{run.get('cells_scored', '?')} cells in {int(wall // 60)} min {wall % 60:.0f} s wall, "
        f"{float(run.get('cpu_seconds') or 0):.0f} CPU-s, {run.get('cores', '?')} cores"
        + (f", load {load} at the start" if load is not None else "")
        + f", finished {run.get('finished') or '-'}{state}"
        + (f"; {run['source']}" if run.get("source") else "")
    )


def runs_line(payload: Mapping[str, Any]) -> str:
    """Every run whose rows the file holds: its command, how many of the rows are its, and what it cost."""
    rows = payload.get("rows") or []
    parts = []
    for run in run_history(payload):
        owned = sum(1 for r in rows if run.get("run_id") and r.get("run_id") == run.get("run_id"))
        cost = run_line(run)
        parts.append(
            f"`{run.get('command') or '?'}`"
            + (f" ({owned} of these rows; {cost})" if owned and cost else f" ({cost})" if cost else "")
        )
    if not parts:
        return ""
    return f"{'its run' if len(parts) == 1 else f'assembled from {len(parts)} runs'}: " + "; ".join(parts)


def _provenance(payload: Mapping[str, Any]) -> str:
    rows = payload["rows"]
    secs = sum(float(r.get("seconds") or 0) for r in rows)
    n = sum(1 for r in rows if verdict(r) != "n/a")
    runs = runs_line(payload)
    settings = json.dumps(payload.get("settings", {}), sort_keys=True)
    return (
        f"Generated by `scripts/gen_transfer_docs.py` from [benchmarks/results/transfer/results.json]"
        f"(benchmarks/results/transfer/results.md) (settings {settings}; "
        f"{n} scored cells, {secs:.0f} s of technique time{'; ' + runs if runs else ''})."
    )


def readme_block(payload: Mapping[str, Any]) -> str:
    rows = payload["rows"]
    return "\n".join(
        [
            _provenance(payload),
            "Every verdict comes from a 95% bootstrap interval against input-independent baselines (e.g. a fitted "
            "constant map, a weight-only unit ranking, the data's mean image, the same examples for every unit) and "
            "a random answer (see docs/transfer.md).",
            "",
            *_verdict_lines(rows),
        ]
    )


def doc_block(payload: Mapping[str, Any]) -> str:
    rows = payload["rows"]
    return "\n".join(
        [
            _provenance(payload),
            "",
            markdown_table(rows),
            "",
            "Verdicts:",
            "",
            *_verdict_lines(rows),
            "",
            *_seed_lines(payload),
            *_cascade_lines(rows),
        ]
    )


def _cascade_lines(rows: Sequence[Mapping[str, Any]]) -> List[str]:
    table = cascade_table(rows)
    if not table:
        return ["", "Cascading randomization: no curve in the committed results (run without `--no-cascade`)."]
    return [
        "",
        "Cascading randomization (Adebayo et al. 2018): each cell's normalized score on the trained model, then with "
        "the weights randomized from the head down to the named unit (steps on 80 images):",
        "",
        table,
    ]


def _replace(text: str, block: str, path: Path) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when README.md / docs/transfer.md are stale")
    args = ap.parse_args(list(argv))
    payload = _load()
    stale = []
    for path, block in ((README, readme_block(payload)), (DOC, doc_block(payload))):
        text = path.read_text()
        new = _replace(text, block, path)
        if new != text:
            if args.check:
                stale.append(path.name)
            else:
                path.write_text(new)
    if stale:
        print(f"stale transfer headline in {', '.join(stale)}: run python scripts/gen_transfer_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
