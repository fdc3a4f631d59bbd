"""Helpers for ``visionlens`` subcommands, built-in or from plugins (``visionlens_register_commands``).

A command plugin adds a parser in its hook, calls :func:`add_model_options` for the usual model
flags, and in its handler loads the model with :func:`load_model`.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Optional, Sequence

from .hooked_model import HookedVisionModel
from .loading import load
from .validation import RandomWeightsWarning, VisionLensError

__all__ = [
    "add_model_options",
    "add_backend_options",
    "load_model",
    "parse_model_args",
    "positive_int",
    "csv_list",
    "print_table",
]


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Add ``--pretrained`` and ``--model-arg KEY=VALUE`` (read by :func:`load_model`)."""
    p.add_argument(
        "--pretrained",
        default=None,
        metavar="WEIGHTS",
        help="weights: a torchvision tag (IMAGENET1K_V1, DEFAULT), 'true' (the library's default), a timm tag, "
        "or a local checkpoint path; without it the model has random weights",
    )
    p.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the model constructor (JSON value or string), e.g. num_classes=10",
    )


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """Add ``--backend local|ray`` and ``--address`` (an existing Ray cluster; default: a local instance)."""
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="where the sweep runs: this process (default) or Ray (pip install 'visionlens[ray]'; same results)",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to join with --backend ray ('auto', 'HOST:6379' or 'ray://HOST:10001'); "
        "default: start a local instance",
    )


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a clear message otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def csv_list(text: str) -> list[str]:
    """argparse type: a comma-separated list (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["num_classes=10", "name=x"]`` -> ``{"num_classes": 10, "name": "x"}`` (JSON values, else strings)."""
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
        return None
    return {"true": True, "false": False}.get(value.lower(), value)


def load_model(
    spec: str, image_size: Optional[int] = None, pretrained: Optional[str] = None, model_args: Sequence[str] = ()
) -> HookedVisionModel:
    """Load ``spec`` for the CLI; with ``image_size``, build / configure the model for N x N inputs."""
    kwargs = parse_model_args(model_args)
    weights = _pretrained(pretrained)
    model = None
    if image_size and spec.startswith("timm:") and "img_size" not in kwargs:
        try:  # fixed-size timm models (ViTs) take img_size; others reject it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RandomWeightsWarning)
                model = load(spec, pretrained=weights, img_size=image_size, **kwargs)
        except TypeError:
            model = None
    if model is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # said on stderr below, in one line
            model = load(spec, pretrained=weights, **kwargs)
    if image_size:
        cur = tuple(model.cfg.image_size) if model.cfg.image_size else None
        if cur != (image_size, image_size):
            if cur is not None and not model.cfg.dynamic_img_size:
                raise VisionLensError(
                    f"Model {spec!r} takes {cur[0]}x{cur[1]} images only; got --image-size {image_size}."
                )
            model.cfg.image_size = (image_size, image_size)
    if weights is None and model.cfg.extra.get("weights") == "random":  # not `--pretrained false`
        sys.stderr.write(
            f"visionlens: WARNING: {spec} has RANDOM weights (no --pretrained); its outputs mean nothing. "
            "Pass --pretrained true / a tag (e.g. IMAGENET1K_V1) / a checkpoint path.\n"
        )
    return model


def print_table(rows: Sequence[Sequence[str]], out: Any) -> None:
    """Print rows as left-aligned columns."""
    if not rows:
        return
    widths = [max(len(str(r[j])) for r in rows) for j in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")
