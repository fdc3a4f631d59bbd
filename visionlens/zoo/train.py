"""Train zoo models reproducibly and write their weights and model cards.

``visionlens zoo train NAME|all [--steps N] [--checkpoint-every N] [--out DIR]`` calls
:func:`train_entry`. Training is seeded and single-process on CPU; the model card records the
config, data, seed, steps, the measured figures against their thresholds, the training curve, the
sha256 of the weights file, the torch version and the wall time.
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..validation import VisionLensError
from .catalog import WEIGHTS_DIR, card_path, get_entry, weights_path
from .entry import TrainRun, state_dict_for_saving


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_weights(module: torch.nn.Module, path: Union[str, Path], name: str, seed: int) -> None:
    """Write ``module``'s weights as safetensors whose bytes depend only on the weights, ``name`` and ``seed``.

    The metadata is one key (``visionlens_zoo``: sorted JSON): safetensors writes its metadata map in hash
    order, which changes from process to process, so two keys made the same weights' sha256 differ between runs.
    """
    meta = {"visionlens_zoo": json.dumps({"name": name, "seed": int(seed)}, sort_keys=True)}
    save_file(state_dict_for_saving(module), str(path), metadata=meta)


def train_module(
    name: str,
    seed: int = 0,
    steps: Optional[int] = None,
    checkpoint_every: int = 0,
    checkpoint_dir: Optional[Path] = None,
    verbose: bool = False,
):
    """Build and train entry ``name``; returns ``(module, run)`` without writing anything but checkpoints."""
    entry = get_entry(name)
    reason = entry.requires()
    if reason:
        raise VisionLensError(f"Zoo model {name!r} cannot be trained here: {reason}")
    seed_everything(seed)
    module = entry.build()
    run = TrainRun(
        seed=seed,
        steps=steps if steps is not None else entry.default_steps,
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        verbose=verbose,
    )
    module.train()
    entry.train(module, run)
    module.eval()
    return module, run


def train_entry(
    name: str,
    out_dir: Union[str, Path, None] = None,
    seed: int = 0,
    steps: Optional[int] = None,
    checkpoint_every: int = 0,
    verbose: bool = False,
) -> Dict[str, Any]:
    """Train, measure and save zoo model ``name``; returns its model card."""
    out = Path(out_dir or WEIGHTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    entry = get_entry(name)
    ckpt_dir = out / "checkpoints" / name if checkpoint_every else None
    t0 = time.perf_counter()
    module, run = train_module(
        name, seed=seed, steps=steps, checkpoint_every=checkpoint_every, checkpoint_dir=ckpt_dir, verbose=verbose
    )
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        metrics = {k: float(v) for k, v in entry.evaluate(module).items()}
    wpath = weights_path(name, out)
    save_weights(module, wpath, name, seed)
    wpath.chmod(0o644)  # safetensors writes 0600; shipped package data must be world-readable
    checks = {
        k: {"threshold": t, "value": metrics.get(k), "passed": metrics.get(k) is not None and metrics[k] >= t}
        for k, t in entry.thresholds.items()
    }
    card = {
        "name": name,
        "family": entry.family,
        "kind": entry.kind,
        "description": entry.description,
        "config": entry.config,
        "data": entry.data,
        "seed": seed,
        "steps": run.steps,
        "metrics": metrics,
        "thresholds": checks,
        "passed": all(c["passed"] for c in checks.values()),
        "curve": run.curve,
        "weights": wpath.name,
        "sha256": sha256_file(wpath),
        "n_parameters": int(sum(p.numel() for p in module.parameters())),
        "size_bytes": wpath.stat().st_size,
        "train_seconds": round(train_s, 1),
        "checkpoint_every": checkpoint_every,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        # float kernels (and so the weights' last bits) depend on the thread count and the CPU's vector ISA
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "command": f"visionlens zoo train {name} --seed {seed}"
        + (f" --steps {steps}" if steps is not None else "")
        + (f" --threads {torch.get_num_threads()}" if torch.get_num_threads() != 1 else ""),
    }
    card_path(name, out).write_text(json.dumps(card, indent=1) + "\n")
    return card


def evaluate_card(name: str, out_dir: Union[str, Path, None] = None) -> Dict[str, Any]:
    """Re-measure the metrics of trained model ``name`` (weights and card in ``out_dir``) with the current
    evaluation code and rewrite them, the threshold checks and ``passed`` in its card; the weights, their
    sha256 and the training record are untouched (the card notes ``metrics_remeasured``)."""
    out = Path(out_dir or WEIGHTS_DIR)
    entry = get_entry(name)
    cpath, wpath = card_path(name, out), weights_path(name, out)
    if not cpath.is_file() or not wpath.is_file():
        raise VisionLensError(f"zoo:{name} has no trained weights and card in {out} (train it first)")
    card = json.loads(cpath.read_text())
    if card.get("sha256") != sha256_file(wpath):
        raise VisionLensError(f"zoo:{name}: {wpath.name} does not match its card's sha256 (retrain it)")
    module = entry.build()
    module.load_state_dict(load_file(str(wpath)))
    module.eval()
    with torch.no_grad():
        metrics = {k: float(v) for k, v in entry.evaluate(module).items()}
    checks = {
        k: {"threshold": t, "value": metrics.get(k), "passed": metrics.get(k) is not None and metrics[k] >= t}
        for k, t in entry.thresholds.items()
    }
    card.update(
        metrics=metrics,
        thresholds=checks,
        passed=all(c["passed"] for c in checks.values()),
        metrics_remeasured=f"visionlens zoo evaluate {name} (torch {torch.__version__})",
    )
    cpath.write_text(json.dumps(card, indent=1) + "\n")
    return card
