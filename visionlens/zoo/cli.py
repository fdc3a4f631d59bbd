"""CLI commands ``visionlens zoo list|train`` and ``visionlens bench transfer``.

Added to the ``visionlens`` command line by the built-in plugin :mod:`visionlens.zoo.plugin`
(``visionlens_register_commands``); each command's parser carries its handler (``args.handler(args)``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict

import torch

from ..commands import add_backend_options, csv_list
from ..threads import thread_policy
from ..validation import VisionLensError
from .bench import run_transfer
from .bench_report import markdown_table
from .catalog import describe, entries
from .train import evaluate_card, train_entry
from .train_parallel import dependency_order, train_in_workers


def _add_names_and_out(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The ``NAME ... | all`` positional and ``--out DIR`` shared by ``zoo train`` and ``zoo evaluate``."""
    parser.add_argument("names", nargs="+", metavar="NAME", help="zoo model names, or 'all'")
    parser.add_argument("--out", default=None, metavar="DIR", help=out_help)


def add_zoo_subcommands(subparsers: Any) -> None:
    """Add ``zoo`` (handler :func:`run_zoo_command`) and ``bench`` (:func:`run_bench_command`) to the
    ``visionlens`` CLI's subparsers."""
    z = subparsers.add_parser(
        "zoo",
        help="the planted-truth model zoo: list or train models",
        description="List the zoo's models (with their model-card figures) or train them.",
    )
    z.set_defaults(handler=run_zoo_command)
    zsub = z.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND")
    zl = zsub.add_parser("list", help="zoo models, families and card figures")
    zl.add_argument("--json", action="store_true", help="machine-readable output")
    zt = zsub.add_parser(
        "train",
        help="train zoo models (seeded, reproducible on CPU)",
        description="Train zoo model NAME (or 'all'); writes NAME.safetensors and the model card "
        "NAME.json into --out (default: the package's weights folder).",
    )
    _add_names_and_out(zt, out_help="output folder (default: visionlens/zoo/weights)")
    zt.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    zt.add_argument("--steps", type=int, default=None, metavar="N", help="optimizer steps (default: the entry's)")
    zt.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        metavar="N",
        help="also keep a checkpoint every N steps (OUT/checkpoints/NAME/step_*.safetensors)",
    )
    zt.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="torch CPU threads (default 1: the shipped weights were trained with 1; bit-for-bit "
        "reproducibility holds for the same thread count)",
    )
    zt.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="models trained at once, one process each with --threads threads (default 1: one after the "
        "other in this process); the weights are the same either way",
    )
    zt.add_argument("-q", "--quiet", action="store_true", help="no training curve on stdout")
    ze = zsub.add_parser(
        "evaluate",
        help="re-measure trained models' card metrics",
        description="Re-measure the metrics of trained zoo model NAME (or 'all') with the current evaluation code "
        "and rewrite them, the threshold checks and 'passed' in its card; the weights are untouched.",
    )
    _add_names_and_out(ze, out_help="weights folder (default: visionlens/zoo/weights)")
    ze.add_argument("--threads", type=int, default=1, metavar="N", help="torch CPU threads (default 1)")

    b = subparsers.add_parser(
        "bench", help="benchmarks over the zoo (bench transfer)", description="Benchmarks over the planted-truth zoo."
    )
    b.set_defaults(handler=run_bench_command)
    bsub = b.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")
    bt = bsub.add_parser(
        "transfer",
        help="every technique on every family, scored against planted truth",
        description="Run every technique on every zoo family that supports it; writes "
        "results.json, results.md and index.html into --out (resumes by default).",
    )
    bt.add_argument("--families", type=csv_list, default=None, metavar="F1,F2", help="zoo families or model names")
    bt.add_argument("--techniques", type=csv_list, default=None, metavar="T1,T2", help="technique names or claims")
    bt.add_argument("--quick", action="store_true", help="small inputs and budgets (CI / demo)")
    bt.add_argument("--seed", type=int, default=0, help="seed of inputs and optimisations")
    bt.add_argument("--no-sanity", action="store_true", help="skip the randomized-weights sanity check")
    bt.add_argument("--fresh", action="store_true", help="ignore rows already in OUT/results.json")
    bt.add_argument("--out", required=True, metavar="DIR", help="output folder")
    bt.add_argument(
        "--weights",
        default=None,
        metavar="DIR",
        help="score the zoo models trained into DIR (`visionlens zoo train NAME --seed S --out DIR`: another "
        "training seed) instead of the shipped ones",
    )
    bt.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads (default: VISIONLENS_THREADS / OMP_NUM_THREADS if set, else the idle cores: "
        "cores minus the load of other jobs, at least 1, re-checked between cells)",
    )
    bt.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="zoo models scored at once, one process each (default: the thread count; 1 = in this process)",
    )
    bt.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also score every technique along a cascading randomization of the weights (default: on for the "
        "full table, off with --quick)",
    )
    bt.add_argument("-q", "--quiet", action="store_true", help="no per-cell progress on stderr")
    add_backend_options(bt)


def run_zoo_command(args: argparse.Namespace) -> int:
    """Run ``visionlens zoo list|train``; returns the exit status (1 when a trained model misses its thresholds)."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.zoo_command == "list":
        rows = describe()
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        for r in rows:
            m = r.get("metrics") or {}
            figs = ", ".join(f"{k}={v:.3f}" for k, v in m.items() if not k.endswith("_n"))
            print(
                f"zoo:{r['name']:<16s} {r['family']:<10s} {r['kind']:<10s} "
                f"{'trained' if r['trained'] else 'not trained':<12s} {figs}"
            )
        return 0
    if args.zoo_command == "evaluate":
        names = [n for n, e in entries().items() if not e.requires()] if args.names == ["all"] else args.names
        bad = []
        for name in names:
            card = evaluate_card(name, out_dir=args.out)
            figs = ", ".join(f"{k}={v['value']:.3f} (>= {v['threshold']})" for k, v in card["thresholds"].items())
            print(f"zoo:{name}: {'PASSED' if card['passed'] else 'BELOW THRESHOLD'} {figs}")
            bad += [] if card["passed"] else [name]
        return 1 if bad else 0
    if args.zoo_command == "train":
        names = list(entries()) if args.names == ["all"] else args.names
        names = dependency_order(names)  # e.g. the diffusion model's evaluation reads the style judge
        failed = []

        def report(name: str, card: Dict[str, Any]) -> None:
            figs = ", ".join(f"{k}={v['value']:.3f} (>= {v['threshold']})" for k, v in card["thresholds"].items())
            print(
                f"zoo:{name}: {'PASSED' if card['passed'] else 'BELOW THRESHOLD'} {figs}; "
                f"{card['train_seconds']} s, {card['size_bytes'] / 1e6:.2f} MB, sha256 {card['sha256'][:12]}",
                flush=True,
            )
            if not card["passed"]:
                failed.append(name)

        todo = []
        for name in names:
            reason = entries()[name].requires() if name in entries() else None
            if reason:
                print(f"zoo:{name}: skipped ({reason})")
            else:
                todo.append(name)
        kwargs = dict(out_dir=args.out, seed=args.seed, steps=args.steps, checkpoint_every=args.checkpoint_every)
        workers = int(getattr(args, "workers", 1) or 1)
        if workers > 1 and len(todo) > 1:
            print(f"training {len(todo)} zoo models in {workers} processes ({torch.get_num_threads()} thread(s) each)")
            train_in_workers(todo, workers, threads=torch.get_num_threads(), report=report, **kwargs)
        else:
            for name in todo:
                print(f"zoo:{name}: training", flush=True)
                report(name, train_entry(name, verbose=not args.quiet, **kwargs))
        return 1 if failed else 0
    raise VisionLensError("usage: visionlens zoo {list,train} ...")


def run_bench_command(args: argparse.Namespace) -> int:
    """Run ``visionlens bench transfer``: the table to stdout, the files into ``--out``; returns the exit status."""
    if args.bench_command != "transfer":
        raise VisionLensError(
            "usage: visionlens bench transfer --out DIR [--families ...] [--techniques ...] [--quick]"
        )
    with thread_policy(args.threads) as threads:
        if not args.quiet:
            print(f"bench transfer: {threads.describe()}", file=sys.stderr, flush=True)
        rows = run_transfer(
            args.out,
            families=args.families,
            techniques=args.techniques,
            quick=args.quick,
            seed=args.seed,
            resume=not args.fresh,
            sanity=not args.no_sanity,
            verbose=not args.quiet,
            workers=args.workers,
            cascade=args.cascade,
            weights=args.weights,
            backend=args.backend,
            address=args.address,
        )
    print(markdown_table(rows))
    print(f"wrote {args.out}/results.json, results.md, index.html")
    return 0
