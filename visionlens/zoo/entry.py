"""What a zoo model is: :class:`ZooEntry` (how to build, train, measure and wrap it) and :class:`TrainRun`.

Shared by the catalogue (:mod:`visionlens.zoo.catalog`, which holds the registered entries) and by
the modules that define entries (:mod:`~visionlens.zoo.classifiers`, :mod:`~visionlens.zoo.clip_model`,
:mod:`~visionlens.zoo.diffusion_model`), so neither side imports the other to know the shape of an entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from safetensors.torch import save_file
from torch import nn

from ..hooked_model import HookedVisionModel
from ..validation import VisionLensError


def state_dict_for_saving(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A contiguous copy of the module's state dict, one tensor per key (safetensors refuses shared storage)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


@dataclass
class TrainRun:
    """What a trainer gets: the seed, its step budget, a curve to log into, and checkpointing.

    Trainers must be deterministic given ``seed`` (seed every generator from it) and call
    :meth:`log` every few steps and :meth:`step_done` after every optimizer step.
    """

    seed: int = 0
    steps: Optional[int] = None  # None: the entry's default
    checkpoint_every: int = 0
    checkpoint_dir: Optional[Path] = None
    curve: List[Dict[str, float]] = field(default_factory=list)
    verbose: bool = False

    def log(self, step: int, **metrics: float) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self.curve.append(row)
        if self.verbose:
            print(
                "  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                flush=True,
            )

    def step_budget(self) -> int:
        """``steps`` as an int (``zoo.train`` fills it in from the entry's default before training)."""
        if self.steps is None:
            raise VisionLensError("TrainRun.steps is not set; pass steps=... (zoo.train uses the entry's default).")
        return int(self.steps)

    def step_done(self, step: int, module: nn.Module) -> None:
        """Write ``step_{step:06d}.safetensors`` when checkpointing is on and ``step`` is a multiple of N."""
        if self.checkpoint_every and self.checkpoint_dir is not None and step % self.checkpoint_every == 0:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            save_file(state_dict_for_saving(module), str(self.checkpoint_dir / f"step_{step:06d}.safetensors"))


@dataclass
class ZooEntry:
    """One zoo model: how to build, train, measure and wrap it."""

    name: str
    family: str  # resnet, vit, convnext, inception, mobilenet, clip, diffusion, ...
    kind: str  # "classifier", "clip" or "diffusion"
    description: str
    build: Callable[[], nn.Module]
    train: Callable[[nn.Module, TrainRun], None]
    evaluate: Callable[[nn.Module], Dict[str, float]]
    thresholds: Dict[str, float]
    default_steps: int
    config: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    wrap: Optional[Callable[[nn.Module], HookedVisionModel]] = None  # default: HookedVisionModel.from_module
    benchmark: bool = True  # a row of the transfer table (False for helpers such as the style judge)
    dataset: str = "shapes"  # "shapes" (visionlens.zoo.data.make_batch) or "fashion" (fashion_mnist_batch)
    # a reason this entry cannot be trained, evaluated or benchmarked here (a library or its dataset is
    # missing), or None
    requires: Callable[[], Optional[str]] = lambda: None
    # a reason its module cannot be built here (a missing library: loading needs no dataset), or None;
    # None (the default): the same as ``requires``
    build_requires: Optional[Callable[[], Optional[str]]] = None
    # whether the random control (``catalog.load(name, pretrained=False)``) re-initialises the built module
    # with zoo.randomize.randomize_module (False: keep the family's own init, which has no zeroing to undo)
    randomize: bool = True
    # the relative time of its row of the transfer table: a scheduling hint (parallel workers start the
    # costliest models first, so none is left running alone at the end); it changes no result
    bench_cost: float = 1.0
    # the planted trigger pathway this classifier is trained with (visionlens.zoo.pathway), or None
    pathway: Optional[Any] = None

    def hooked(self, module: nn.Module) -> HookedVisionModel:
        return self.wrap(module) if self.wrap is not None else HookedVisionModel.from_module(module)

    def build_reason(self) -> Optional[str]:
        """A reason this entry's module cannot be built (so loaded) here, or None; needs no dataset."""
        return (self.build_requires or self.requires)()
