"""The ``visionlens`` command.

::

    visionlens models                         # spec prefixes, adapter families, example names
    visionlens hooks timm:resnet18 --image-size 64
    visionlens plugins                        # analyses (and broken plugins, with the reason)
    visionlens run activation_stats --model timm:resnet18 --images builtin --out report \\
        --set top_k=4 --set hooks='stages.*.blocks.*.hook_resid_post'

Bad input ends with one ``visionlens: error: ...`` line on stderr and exit status 2 (other
failures: 1; ``--traceback`` shows the full stack).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import sys
import warnings
from typing import Any, NoReturn, Optional, Sequence

from .adapters import available_adapters
from .analysis import analysis_config_class, describe_config, parse_set_options
from .apps import dict_cmd
from .commands import add_backend_options, add_model_options, csv_list, load_model, positive_int, print_table
from .data import as_images
from .registry import (
    analysis_origin,
    collect_analyses,
    collect_model_specs,
    get_analysis,
    plugin_errors,
    register_commands,
)
from .runner import run
from .threads import thread_policy
from .validation import VisionLensError
from .version import __version__

__all__ = ["main", "build_parser"]

EXAMPLES = {
    "timm": ["timm:vit_tiny_patch16_224", "timm:deit_small_patch16_224", "timm:resnet50", "timm:convnext_tiny"],
    "torchvision": ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:googlenet"],
    "open_clip": ["open_clip:ViT-B-32", "open_clip:RN50"],
    "diffusers": ["diffusers:/path/to/unet_or_pipeline_dir"],
}
_LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "open_clip": "open_clip", "diffusers": "diffusers"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse's own contract)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation tools)."""
    p = _Parser(prog="visionlens", description="Mechanistic interpretability for image models.")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    p.add_argument("--version", action="version", version=f"visionlens {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    m = sub.add_parser(
        "models",
        help="model spec prefixes, adapter families and example names",
        description="List the model spec prefixes, adapter families and example model names.",
    )
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.set_defaults(handler=_cmd_models)

    h = sub.add_parser(
        "hooks",
        help="every hook name with its shape for a dummy input",
        description="Print every hook of a model with its activation shape for a dummy input.",
    )
    h.add_argument("spec", metavar="SPEC", help="model spec, e.g. timm:resnet18 or torchvision:mobilenet_v2")
    h.add_argument("--image-size", type=positive_int, default=None, metavar="N", help="dummy input size N x N")
    h.add_argument("--filter", default=None, metavar="GLOB", help="only hooks matching this glob")
    add_model_options(h)
    h.add_argument("--json", action="store_true", help="machine-readable output")
    h.set_defaults(handler=_cmd_hooks)

    pl = sub.add_parser(
        "plugins",
        help="available analyses and broken plugins",
        description="List analyses with their summaries (and config options with -v); broken "
        "plugins are reported by name with the reason.",
    )
    pl.add_argument("-v", "--verbose", action="store_true", help="also show each analysis's config options")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    pl.set_defaults(handler=_cmd_plugins)

    r = sub.add_parser(
        "run",
        help="run an analysis and save its result",
        description="Run analysis NAME on a model over images; writes result.json, "
        "tensors.safetensors, PNG figures and index.html into --out.",
    )
    r.add_argument("name", metavar="NAME", help="analysis name (see `visionlens plugins`)")
    r.add_argument("--model", required=True, metavar="SPEC", help="model spec, e.g. timm:resnet18")
    r.add_argument(
        "--images",
        default=None,
        metavar="PATH",
        help="a folder of images, one image file, or the word 'builtin' (bundled real photos); "
        "optional for analyses that need no images (e.g. feature_visualization)",
    )
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="analysis config value (repeatable); lists are comma separated",
    )
    r.add_argument("--image-size", type=positive_int, default=None, metavar="N", help="model input size N x N")
    add_model_options(r)
    add_backend_options(r)
    r.set_defaults(handler=_cmd_run)
    _add_dict_commands(sub)
    register_commands(sub)  # plugin commands (microscope, zoo, bench, third-party), same hook for all
    return p


# ----------------------------------------------------------------------------- commands
def _cmd_models(args: argparse.Namespace) -> int:
    specs = collect_model_specs()
    prefixes = sorted(set(specs) | set(EXAMPLES))
    rows: list[dict[str, Any]] = []
    for prefix in prefixes:
        lib = _LIBRARIES.get(prefix)
        installed = prefix in specs and (lib is None or importlib.util.find_spec(lib) is not None)
        rows.append({"prefix": prefix, "available": installed, "examples": EXAMPLES.get(prefix, [f"{prefix}:NAME"])})
    adapters: list[dict[str, Any]] = [
        {"name": a.name, "family": a.family or a.name, "priority": a.priority} for a in available_adapters()
    ]
    if args.json:
        print(json.dumps({"prefixes": rows, "adapters": adapters}, indent=1))
        return 0
    print("Model spec prefixes (visionlens.load / --model):")
    print_table(
        [
            ["  " + r["prefix"] + ":", "available" if r["available"] else "not installed", ", ".join(r["examples"])]
            for r in rows
        ],
        sys.stdout,
    )
    print("\nAdapter families (picked automatically; any other nn.Module gets the generic adapter):")
    print_table([["  " + a["name"], a["family"]] for a in adapters], sys.stdout)
    return 0


def _cmd_hooks(args: argparse.Namespace) -> int:
    model = load_model(args.spec, args.image_size, args.pretrained, args.model_args)
    shapes = model.hook_shapes(image_size=args.image_size)
    names = [n for n in model.hook_dict if args.filter is None or fnmatch.fnmatchcase(n, args.filter)]
    if args.json:
        print(json.dumps({n: list(shapes[n]) if n in shapes else None for n in names}, indent=1))
        return 0
    rows = [["hook", "shape"]] + [
        [n, str(list(shapes[n])) if n in shapes else "(not called for images)"] for n in names
    ]
    print_table(rows, sys.stdout)
    print(f"{len(names)} hooks; {model!r}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    analyses = collect_analyses()
    errors = plugin_errors()
    if args.json:
        print(
            json.dumps(
                {
                    "analyses": [
                        {
                            "name": n,
                            "summary": a.summary,
                            "plugin": analysis_origin(n),
                            "config": describe_config(analysis_config_class(a)),
                        }
                        for n, a in analyses.items()
                    ],
                    "broken": [{"plugin": k, "reason": v} for k, v in errors.items()],
                },
                indent=1,
                default=str,
            )
        )
        return 0
    print("Analyses:" if analyses else "Analyses: none")
    print_table([["  " + n, str(a.summary), f"[{analysis_origin(n)}]"] for n, a in analyses.items()], sys.stdout)
    if args.verbose:
        for n, a in analyses.items():
            print(f"\n{n} options (--set KEY=VALUE):")
            print_table(
                [
                    ["  " + d["name"], d["type"], f"default={d['default']!r}", d["help"]]
                    for d in describe_config(analysis_config_class(a))
                ],
                sys.stdout,
            )
    if errors:
        print("\nBroken plugins (skipped):")
        for name, reason in errors.items():
            print(f"  {name}: {reason}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    analysis = get_analysis(args.name)  # fail fast on a bad name or config before loading a model
    config = parse_set_options(analysis_config_class(analysis), args.sets, owner=args.name)
    images = as_images(args.images) if args.images is not None else None
    with thread_policy():  # the idle cores, or the user's OMP_NUM_THREADS / VISIONLENS_THREADS (visionlens.threads)
        model = load_model(args.model, args.image_size, args.pretrained, args.model_args)
        result = run(args.name, model, images, backend=args.backend, address=args.address, **config)
        out = result.save(args.out)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"{args.name}: wrote {out} ({', '.join(files)})")
    return 0


def _add_dict_commands(sub: Any) -> None:
    """``visionlens dict train|planted|dashboard``: sparse dictionaries (needs the ``dict`` extra)."""
    d = sub.add_parser("dict", help="sparse dictionaries (SAEs, NMF) on any hook", description=_DICT_DOC)
    dsub = d.add_subparsers(dest="dict_command", metavar="COMMAND")
    t = dsub.add_parser("train", help="train a dictionary on one hook and save it with its card")
    t.add_argument("--model", required=True, metavar="SPEC")
    t.add_argument("--hook", required=True, metavar="NAME", help="hook name or layer alias")
    t.add_argument("--kind", default="topk", choices=list(dict_cmd.KINDS))
    t.add_argument("--size", type=positive_int, default=256, metavar="N", help="number of features")
    t.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="active features per vector (TopK)")
    t.add_argument("--images", default=None, metavar="DATA", help=dict_cmd.DATA_HELP)
    t.add_argument("--n-images", type=positive_int, default=2000, metavar="N", help="training images")
    t.add_argument("--positions", type=positive_int, default=None, metavar="P", help="random positions per image")
    t.add_argument("--timesteps", type=csv_list, default=None, metavar="T,..", help="UNet timesteps, e.g. 100,500")
    t.add_argument("--epochs", type=positive_int, default=None)
    t.add_argument("--batch-size", type=positive_int, default=256)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--max-vectors", type=positive_int, default=200_000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", required=True, metavar="PATH", help="where to save (PATH.safetensors + PATH.json)")
    t.add_argument("--image-size", type=positive_int, default=None, metavar="N")
    add_model_options(t)
    t.set_defaults(handler=dict_cmd.cmd_train)
    p = dsub.add_parser("planted", help="score a dictionary at a zoo model's last block against the planted factors")
    p.add_argument("--model", required=True, metavar="zoo:NAME")
    p.add_argument("--size", type=positive_int, default=None, metavar="N")
    p.add_argument(
        "--top-k", type=positive_int, default=None, metavar="K", help="active features (default: the row's, by layout)"
    )
    p.add_argument("--quick", action="store_true", help="the transfer table's quick budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, metavar="DIR", help="save the dictionary and planted.json here")
    p.set_defaults(handler=dict_cmd.cmd_planted)
    b = dsub.add_parser("dashboard", help="a static site of feature dashboards")
    b.add_argument("--dict", dest="dict_path", required=True, metavar="PATH")
    b.add_argument("--model", required=True, metavar="SPEC")
    b.add_argument("--images", default=None, metavar="DATA", help=dict_cmd.DATA_HELP)
    b.add_argument("--n-images", type=positive_int, default=500, metavar="N")
    b.add_argument("--features", type=csv_list, default=None, metavar="F,..", help="feature indices")
    b.add_argument("--n-features", type=positive_int, default=16)
    b.add_argument("--fv-steps", type=int, default=0, help="feature-visualization steps per feature (0: none)")
    b.add_argument("--out", required=True, metavar="DIR")
    add_model_options(b)
    b.set_defaults(handler=dict_cmd.cmd_dashboard)


_DICT_DOC = (
    "Train sparse dictionaries (overcomplete's TopK, BatchTopK, JumpReLU, archetypal SAEs and NMF) on any hook of "
    "any family, score them against the zoo's planted factors, and build feature dashboards."
)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``visionlens`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not args.command or not callable(getattr(args, "handler", None)):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # generic-adapter notices etc. are not errors here
            return int(args.handler(args))
    except (VisionLensError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        if args.traceback:
            raise
        print(f"visionlens: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("visionlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one line unless --traceback
        if args.traceback:
            raise
        print(
            f"visionlens: error: {type(exc).__name__}: {_one_line(exc)} (use --traceback for details)", file=sys.stderr
        )
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
