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
import importlib.util
import json
import sys
import warnings
from typing import Any, Optional, Sequence

from .microscope import add_microscope_subcommand, run_microscope_command
from .zoo.cli import add_zoo_subcommands, run_bench_command, run_zoo_command
from .validation import VisionLensError

__all__ = ["main", "build_parser"]

EXAMPLES = {
    "timm": ["timm:vit_tiny_patch16_224", "timm:deit_small_patch16_224", "timm:resnet50", "timm:convnext_tiny"],
    "torchvision": ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:googlenet"],
    "open_clip": ["open_clip:ViT-B-32", "open_clip:RN50"],
    "diffusers": ["diffusers:/path/to/unet_or_pipeline_dir"],
}
_LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "open_clip": "open_clip", "diffusers": "diffusers"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's own contract)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation tools)."""
    p = _Parser(prog="visionlens", description="Mechanistic interpretability for image models.")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    m = sub.add_parser("models", help="model spec prefixes, adapter families and example names",
                       description="List the model spec prefixes, adapter families and example model names.")
    m.add_argument("--json", action="store_true", help="machine-readable output")

    h = sub.add_parser("hooks", help="every hook name with its shape for a dummy input",
                       description="Print every hook of a model with its activation shape for a dummy input.")
    h.add_argument("spec", metavar="SPEC", help="model spec, e.g. timm:resnet18 or torchvision:mobilenet_v2")
    h.add_argument("--image-size", type=_positive_int, default=None, metavar="N", help="dummy input size N x N")
    h.add_argument("--filter", default=None, metavar="GLOB", help="only hooks matching this glob")
    _model_options(h)
    h.add_argument("--json", action="store_true", help="machine-readable output")

    pl = sub.add_parser("plugins", help="available analyses and broken plugins",
                        description="List analyses with their summaries (and config options with -v); broken "
                                    "plugins are reported by name with the reason.")
    pl.add_argument("-v", "--verbose", action="store_true", help="also show each analysis's config options")
    pl.add_argument("--json", action="store_true", help="machine-readable output")

    r = sub.add_parser("run", help="run an analysis and save its result",
                       description="Run analysis NAME on a model over images; writes result.json, "
                                   "tensors.safetensors, PNG figures and index.html into --out.")
    r.add_argument("name", metavar="NAME", help="analysis name (see `visionlens plugins`)")
    r.add_argument("--model", required=True, metavar="SPEC", help="model spec, e.g. timm:resnet18")
    r.add_argument("--images", default=None, metavar="PATH",
                   help="a folder of images, one image file, or the word 'builtin' (bundled real photos); "
                        "optional for analyses that need no images (e.g. feature_visualization)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="analysis config value (repeatable); lists are comma separated")
    r.add_argument("--image-size", type=_positive_int, default=None, metavar="N", help="model input size N x N")
    _model_options(r)
    add_microscope_subcommand(sub)
    add_zoo_subcommands(sub)
    return p


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrained", default=None, metavar="WEIGHTS",
                   help="weights for the library's loader (a hub tag, 'true', or a local checkpoint path)")
    p.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword for the model constructor (JSON value or string), e.g. num_classes=10")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _version() -> str:
    from . import __version__

    return f"visionlens {__version__}"


# ----------------------------------------------------------------------------- helpers
def _parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise VisionLensError(f"Expected --model-arg KEY=VALUE, got {item!r}.")
        key, text = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            out[key.strip()] = text
    return out


def _pretrained(value: Optional[str]) -> Any:
    if value is None:
        return False
    return {"true": True, "false": False}.get(value.lower(), value)


def load_model(spec: str, image_size: Optional[int] = None, pretrained: Optional[str] = None,
               model_args: Sequence[str] = ()) -> Any:
    """Load ``spec`` for the CLI; with ``image_size``, build / configure the model for N x N inputs."""
    from .loading import load

    kwargs = _parse_model_args(model_args)
    weights = _pretrained(pretrained)
    model = None
    if image_size and spec.startswith("timm:") and "img_size" not in kwargs:
        try:  # fixed-size timm models (ViTs) take img_size; others reject it
            model = load(spec, pretrained=weights, img_size=image_size, **kwargs)
        except TypeError:
            model = None
    if model is None:
        model = load(spec, pretrained=weights, **kwargs)
    if image_size:
        cur = tuple(model.cfg.image_size) if model.cfg.image_size else None
        if cur != (image_size, image_size):
            if cur is not None and not model.cfg.dynamic_img_size:
                raise VisionLensError(f"Model {spec!r} takes {cur[0]}x{cur[1]} images only; got --image-size "
                                      f"{image_size}.")
            model.cfg.image_size = (image_size, image_size)
    return model


def _table(rows: Sequence[Sequence[str]], out: Any) -> None:
    if not rows:
        return
    widths = [max(len(str(r[j])) for r in rows) for j in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


# ----------------------------------------------------------------------------- commands
def _cmd_models(args: argparse.Namespace) -> int:
    from .adapters import available_adapters
    from .registry import collect_model_specs

    specs = collect_model_specs()
    prefixes = sorted(set(specs) | set(EXAMPLES))
    rows = []
    for prefix in prefixes:
        lib = _LIBRARIES.get(prefix)
        installed = prefix in specs and (lib is None or importlib.util.find_spec(lib) is not None)
        rows.append({"prefix": prefix, "available": installed, "examples": EXAMPLES.get(prefix, [f"{prefix}:NAME"])})
    adapters = [{"name": a.name, "family": a.family or a.name, "priority": a.priority} for a in available_adapters()]
    if args.json:
        print(json.dumps({"prefixes": rows, "adapters": adapters}, indent=1))
        return 0
    print("Model spec prefixes (visionlens.load / --model):")
    _table([["  " + r["prefix"] + ":", "available" if r["available"] else "not installed",
             ", ".join(r["examples"])] for r in rows], sys.stdout)
    print("\nAdapter families (picked automatically; any other nn.Module gets the generic adapter):")
    _table([["  " + a["name"], a["family"]] for a in adapters], sys.stdout)
    return 0


def _cmd_hooks(args: argparse.Namespace) -> int:
    import fnmatch

    model = load_model(args.spec, args.image_size, args.pretrained, args.model_args)
    shapes = model.hook_shapes(image_size=args.image_size)
    names = [n for n in model.hook_dict if args.filter is None or fnmatch.fnmatchcase(n, args.filter)]
    if args.json:
        print(json.dumps({n: list(shapes[n]) if n in shapes else None for n in names}, indent=1))
        return 0
    rows = [["hook", "shape"]] + [[n, str(list(shapes[n])) if n in shapes else "(not called for images)"]
                                  for n in names]
    _table(rows, sys.stdout)
    print(f"{len(names)} hooks; {model!r}")
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .analysis import analysis_config_class, describe_config
    from .registry import analysis_origin, collect_analyses, plugin_errors

    analyses = collect_analyses()
    errors = plugin_errors()
    if args.json:
        print(json.dumps({
            "analyses": [{"name": n, "summary": a.summary, "plugin": analysis_origin(n),
                          "config": describe_config(analysis_config_class(a))} for n, a in analyses.items()],
            "broken": [{"plugin": k, "reason": v} for k, v in errors.items()]}, indent=1, default=str))
        return 0
    print("Analyses:" if analyses else "Analyses: none")
    _table([["  " + n, str(a.summary), f"[{analysis_origin(n)}]"] for n, a in analyses.items()], sys.stdout)
    if args.verbose:
        for n, a in analyses.items():
            print(f"\n{n} options (--set KEY=VALUE):")
            _table([["  " + d["name"], d["type"], f"default={d['default']!r}", d["help"]]
                    for d in describe_config(analysis_config_class(a))], sys.stdout)
    if errors:
        print("\nBroken plugins (skipped):")
        for name, reason in errors.items():
            print(f"  {name}: {reason}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .analysis import analysis_config_class, parse_set_options
    from .data import as_images
    from .registry import get_analysis, run

    analysis = get_analysis(args.name)  # fail fast on a bad name or config before loading a model
    config = parse_set_options(analysis_config_class(analysis), args.sets, owner=args.name)
    images = as_images(args.images) if args.images is not None else None
    model = load_model(args.model, args.image_size, args.pretrained, args.model_args)
    result = run(args.name, model, images, **config)
    out = result.save(args.out)
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"{args.name}: wrote {out} ({', '.join(files)})")
    return 0


COMMANDS = {"models": _cmd_models, "hooks": _cmd_hooks, "plugins": _cmd_plugins, "run": _cmd_run,
            "microscope": run_microscope_command, "zoo": run_zoo_command, "bench": run_bench_command}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``visionlens`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # generic-adapter notices etc. are not errors here
            return COMMANDS[args.command](args)
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
        print(f"visionlens: error: {type(exc).__name__}: {_one_line(exc)} (use --traceback for details)",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
