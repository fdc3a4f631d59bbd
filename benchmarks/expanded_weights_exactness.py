"""Are expanded weights independent of the input? Zero image vs random image, per model and layer pair.

For each pair: ``rel = ||J(zero) - J(random)|| / max(||J(zero)||, ||J(random)||)`` of
:func:`visionlens.weights.expanded_weights` (``reduce='centre'``), or the refusal message
(:class:`~visionlens.weights.InputDependentError`) when an operation on the path makes the map
input-dependent. ``--old PATH`` also runs an older ``weights.py`` (e.g. ``git show
c47d7a5:visionlens/weights.py``) for the before/after comparison.

    OMP_NUM_THREADS=1 python benchmarks/expanded_weights_exactness.py [--old /tmp/old_weights.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from typing import Any, Optional

import torch

import visionlens
from visionlens import weights as vw
from visionlens.adapters.lucid_inception import LucidInceptionV1
from visionlens.validation import VisionLensError

CASES: list[tuple[str, int, list[tuple[str, str, str]]]] = [
    # (spec, image size, [(from, to, norms)])
    (
        "lucid:inceptionv1",
        96,
        [
            ("mixed3a", "mixed3b", "refuse"),
            ("mixed3b", "mixed4a", "refuse"),
            ("conv2d0", "conv2d2", "refuse"),
            ("conv2d0", "conv2d2", "no_scale"),
        ],
    ),
    ("torchvision:googlenet", 96, [("conv2d0", "conv2d2", "refuse"), ("mixed3a", "mixed4a", "refuse")]),
    ("timm:resnet18", 64, [("conv1", "layer1", "refuse"), ("layer1", "layer3", "refuse")]),
    ("zoo:resnet", 32, [("conv1", "layer2", "refuse"), ("layer1", "layer3", "refuse")]),
    ("zoo:inception", 64, [("conv2d0", "mixed3a", "refuse"), ("mixed3a", "mixed4a", "refuse")]),
    ("zoo:mobilenet", 32, [("features.1", "features.5", "refuse")]),
    ("zoo:convnext", 32, [("stem", "stages.1", "refuse"), ("stem", "stages.1", "no_scale")]),
    ("zoo:vit", 32, [("hook_embed", "blocks.0.hook_resid_post", "refuse")]),
]


def load(spec: str) -> Any:
    if spec == "lucid:inceptionv1":
        torch.manual_seed(0)
        return visionlens.HookedVisionModel.from_module(LucidInceptionV1()).eval()
    return visionlens.load(spec, pretrained=False) if not spec.startswith("zoo:") else visionlens.load(spec)


def rel_diff(module: Any, model: Any, a: str, b: str, size: int, norms: str) -> tuple[Optional[float], str]:
    kw = {"norms": norms} if module is vw else {}
    x0 = torch.zeros(1, 3, size, size)
    x1 = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    try:
        j0 = module.expanded_weights(model, a, b, reduce="centre", x=x0, **kw).jacobian
        j1 = module.expanded_weights(model, a, b, reduce="centre", x=x1, **kw).jacobian
    except VisionLensError as e:  # InputDependentError (a refusal) or a wrong pair for the old code
        return None, f"{type(e).__name__}: {e}"
    return float((j0 - j1).norm() / max(j0.norm(), j1.norm())), ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--old", help="path of an older weights.py to compare with")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    old = None
    if args.old:
        spec = importlib.util.spec_from_file_location("old_weights", args.old)
        assert spec and spec.loader
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_weights"] = old
        spec.loader.exec_module(old)
    print("| model | from -> to | norms | rel. diff (this) | rel. diff (old) | refusal |")
    print("|---|---|---|---|---|---|")
    for spec, size, pairs in CASES:
        model = load(spec)
        for a, b, norms in pairs:
            new, why = rel_diff(vw, model, a, b, size, norms)
            was = rel_diff(old, model, a, b, size, norms)[0] if old is not None and norms == "refuse" else None
            fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
            print(f"| {spec} | {a} -> {b} | {norms} | {fmt(new)} | {fmt(was)} | {why[:220]} |", flush=True)


if __name__ == "__main__":
    main()
