"""Handlers of ``visionlens dict train|planted|dashboard`` (the parser is in :mod:`visionlens.cli`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Tuple

import torch
from torch.nn import functional as F

from ..commands import load_model
from ..plugins.dictionaries import KINDS, load_dictionary, train_dictionary
from ..plugins.dictionaries.dashboard import build_dashboard
from ..validation import VisionLensError
from ..zoo import data as zdata
from ..zoo.catalog import get_entry
from ..zoo.classifiers import held_out_batch
from ..zoo.dictionary_transfer import planted_recovery
from ..zoo.technique import BenchContext
from ..zoo.techniques_features import prepare

__all__ = ["KINDS", "DATA_HELP", "cmd_train", "cmd_planted", "cmd_dashboard", "resolve_data"]

DATA_HELP = (
    "a folder, an image file, 'builtin' (bundled photos), 'zoo:shapes' / 'zoo:fashion' (the zoo's training stream; "
    "held-out images and labels measure the card), or 'noise' (seeded Gaussian samples of the model's input shape, "
    "e.g. for UNets); default: the zoo dataset of a zoo: model, else 'builtin'"
)


def _fit(model: Any, x: torch.Tensor) -> torch.Tensor:
    """Zoo images resized / channel-matched to a model with another input (e.g. a 16 px UNet)."""
    size = tuple(model.cfg.image_size or x.shape[-2:])
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    c = int(model.cfg.in_chans or 3)
    if x.shape[1] != c:
        x = x.mean(1, keepdim=True).expand(-1, c, -1, -1).contiguous()
    return x


def resolve_data(
    model: Any, spec: Optional[str], n: int, model_spec: str, seed: int = 0
) -> Tuple[Any, Any, Optional[torch.Tensor], dict]:
    """``(train images, eval images or None, eval labels or None, data card)`` for ``--images``."""
    if spec is None:
        if model_spec.startswith("zoo:"):
            entry = get_entry(model_spec[4:])
            spec = "zoo:fashion" if getattr(entry, "dataset", "") == "fashion" else "zoo:shapes"
        else:
            spec = "builtin"
    if spec in ("zoo:shapes", "zoo:fashion"):
        kind = spec[4:]
        if kind == "fashion":
            tr = zdata.fashion_mnist_batch(n, seed=seed, split="train", trigger_fraction=0.1)
        else:
            tr = zdata.make_batch(n, seed=seed, start=0, trigger_fraction=0.1)
        ev = held_out_batch(max(n // 4, 64), kind=kind, trigger_fraction=0.1, seed=seed)
        card = {
            "images": spec,
            "train": {"n": n, "seed": seed, "trigger_fraction": 0.1},
            "eval": {"n": len(ev), "held_out": True},
        }
        return _fit(model, tr.images), _fit(model, ev.images), ev.labels, card
    if spec == "noise":
        size = tuple(model.cfg.image_size or (32, 32))
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, int(model.cfg.in_chans or 3), *size, generator=g)
        return x, None, None, {"images": "noise", "n": n, "seed": seed}
    return spec, None, None, {"images": spec}


def cmd_train(args: argparse.Namespace) -> int:
    model = load_model(args.model, args.image_size, args.pretrained, args.model_args)
    images, ev, labels, card = resolve_data(model, args.images, args.n_images, args.model, args.seed)
    ts = [int(t) for t in args.timesteps] if args.timesteps else None
    d = train_dictionary(
        model,
        args.hook,
        images,
        args.kind,
        args.size,
        top_k=args.top_k,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_vectors=args.max_vectors,
        positions=args.positions,
        timesteps=ts,
        eval_images=ev,
        eval_labels=labels,
        seed=args.seed,
        model_spec=args.model,
        data_card=card,
        out=args.out,
    )
    path = d.save(args.out)
    print(d.summary())
    print(f"saved {path} and {path.with_suffix('.json')}")
    return 0


def cmd_planted(args: argparse.Namespace) -> int:
    if not args.model.startswith("zoo:"):
        raise VisionLensError(f"dict planted needs a zoo model (zoo:resnet, zoo:vit, ...), got {args.model!r}.")
    entry = get_entry(args.model[4:])
    if entry.kind not in ("classifier", "clip"):
        raise VisionLensError(f"{args.model} is a {entry.kind} model; planted factors exist for classifiers and CLIP.")
    model = load_model(args.model)
    if entry.kind == "clip":
        prepare(model, BenchContext(entry))
    # the parser's --top-k default (8) predates the measured per-layout default: an unset flag means that default
    r = planted_recovery(model, entry, quick=args.quick, seed=args.seed, size=args.size, top_k=args.top_k)
    det = r.score.details
    out = sys.stdout
    out.write(f"{args.model} {r.hook}: {det['kind']} x {det['n_features']} (k={det['top_k']}), {r.seconds:.1f} s\n")
    out.write(f"{'factor':<18}{'dict':>8}{'firing':>8}{'pca':>8}{'random':>8}  relevant\n")
    for k, v in det["per_factor"].items():
        fmt = lambda a: f"{a:8.3f}" if a is not None else "       -"  # noqa: E731
        out.write(
            f"{k:<18}{fmt(v['dictionary'])}{fmt(v['dictionary_firing_only'])}{fmt(v['pca'])}{fmt(v['random'])}"
            f"  {'yes' if v['label_relevant'] else 'no'}\n"
        )
    b = det["baselines"]
    out.write(
        f"mean AUROC (relevant): dict {r.score.score:.3f} {det['interval']}  pca {b['pca']['score']:.3f}  "
        f"random {b['random']['score']:.3f}\n"
        f"fraction >= {det['threshold']}: dict {det['fraction_above']:.2f} (firing only "
        f"{det['firing_only']['fraction_above']:.2f})  pca {b['pca']['fraction_above']:.2f}  "
        f"random {b['random']['fraction_above']:.2f}\n"
        f"reconstruction {det['reconstruction']}  splice {det['splice']}\n"
    )
    if args.out:
        root = Path(args.out)
        root.mkdir(parents=True, exist_ok=True)
        r.dictionary.save(root / "dictionary.safetensors")
        (root / "planted.json").write_text(json.dumps(r.score.to_dict(), indent=1))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    model = load_model(args.model, None, args.pretrained, args.model_args)
    d = load_dictionary(args.dict_path)
    images, ev, _, _ = resolve_data(model, args.images, args.n_images, args.model)
    feats = [int(f) for f in args.features] if args.features else None
    dash = build_dashboard(
        model,
        d,
        ev if ev is not None else images,
        features=feats,
        n_features=args.n_features,
        fv_steps=args.fv_steps,
        max_images=args.n_images,
    )
    root = dash.save(args.out)
    print(f"{len(dash.cards)} features -> {root / 'index.html'}")
    return 0
