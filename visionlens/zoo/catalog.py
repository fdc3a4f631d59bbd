"""The model zoo's catalogue: one :class:`ZooEntry` per trained model, and ``load("zoo:NAME")``.

An entry says how to build its untrained module (with the family's real constructor, so the real
adapter is what gets tested), how to train it on :mod:`visionlens.zoo.data`, how to measure it and
which figures it must reach. Trained weights ship in ``visionlens/zoo/weights/NAME.safetensors``
next to a JSON model card ``NAME.json`` (written by :mod:`visionlens.zoo.train`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
from torch import nn

from ..validation import VisionLensError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


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
            print("  " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)

    def step_done(self, step: int, module: nn.Module) -> None:
        """Write ``step_{step:06d}.safetensors`` when checkpointing is on and ``step`` is a multiple of N."""
        if self.checkpoint_every and self.checkpoint_dir is not None and step % self.checkpoint_every == 0:
            from safetensors.torch import save_file

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
    wrap: Optional[Callable[[nn.Module], Any]] = None  # module -> HookedVisionModel (default: from_module)
    benchmark: bool = True  # a row of the transfer table (False for helpers such as the style judge)
    dataset: str = "shapes"  # "shapes" (visionlens.zoo.data.make_batch) or "fashion" (fashion_mnist_batch)
    requires: Callable[[], Optional[str]] = lambda: None  # a reason this entry cannot be built here, or None

    def hooked(self, module: nn.Module) -> Any:
        from ..hooked_model import HookedVisionModel

        return self.wrap(module) if self.wrap is not None else HookedVisionModel.from_module(module)


_ENTRIES: Dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    """Add an entry to the catalogue (names are unique)."""
    _ENTRIES[entry.name] = entry
    return entry


_POPULATED = False


def _populate() -> None:
    global _POPULATED
    if _POPULATED:
        return
    _POPULATED = True
    from . import classifiers  # noqa: F401  (registers on import)

    for mod in ("clip_model", "diffusion_model"):
        try:
            __import__(f"{__package__}.{mod}")
        except ImportError:  # optional families (open_clip / diffusers not installed)
            pass


def entries() -> Dict[str, ZooEntry]:
    """All catalogue entries by name."""
    _populate()
    return dict(_ENTRIES)


def get_entry(name: str) -> ZooEntry:
    _populate()
    if name not in _ENTRIES:
        raise VisionLensError(f"Unknown zoo model {name!r}. Known: {', '.join(sorted(_ENTRIES))}.")
    return _ENTRIES[name]


def state_dict_for_saving(module: nn.Module) -> Dict[str, torch.Tensor]:
    """A contiguous copy of the module's state dict, one tensor per key (safetensors refuses shared storage)."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def card_path(name: str, directory: Union[str, Path, None] = None) -> Path:
    return Path(directory or WEIGHTS_DIR) / f"{name}.json"


def weights_path(name: str, directory: Union[str, Path, None] = None) -> Path:
    return Path(directory or WEIGHTS_DIR) / f"{name}.safetensors"


def model_card(name: str, directory: Union[str, Path, None] = None) -> Dict[str, Any]:
    """The JSON model card of a trained zoo model."""
    p = card_path(name, directory)
    if not p.is_file():
        raise VisionLensError(f"Zoo model {name!r} has no trained weights at {p.parent} "
                              f"(train it with `visionlens zoo train {name}`).")
    return json.loads(p.read_text())


def load_module(name: str, directory: Union[str, Path, None] = None, weights: Union[str, Path, None] = None,
                strict: bool = True) -> nn.Module:
    """Build zoo model ``name`` and load its trained weights (or a checkpoint file ``weights``)."""
    from ..loading import load_state_dict_file

    entry = get_entry(name)
    reason = entry.requires()
    if reason:
        raise VisionLensError(f"Zoo model {name!r} cannot be built here: {reason}")
    path = Path(weights) if weights is not None else weights_path(name, directory)
    if not path.is_file():
        raise VisionLensError(f"Zoo model {name!r} has no trained weights at {path} "
                              f"(train it with `visionlens zoo train {name}`).")
    torch.manual_seed(0)
    module = entry.build()
    module.load_state_dict(load_state_dict_file(path), strict=strict)
    return module.eval()


def load(name: str, pretrained: Any = True, directory: Union[str, Path, None] = None,
         weights: Union[str, Path, None] = None, **kwargs: Any) -> Any:
    """``visionlens.load("zoo:NAME")``: the trained zoo model as a :class:`HookedVisionModel`.

    ``pretrained=False`` gives the untrained (seeded, randomly initialised) model, e.g. for sanity checks.
    """
    entry = get_entry(name)
    if pretrained is False:
        reason = entry.requires()
        if reason:
            raise VisionLensError(f"Zoo model {name!r} cannot be built here: {reason}")
        torch.manual_seed(0)
        module = entry.build().eval()
    else:
        module = load_module(name, directory=directory, weights=weights)
    model = entry.hooked(module)
    model.zoo_name = name  # type: ignore[attr-defined]
    return model


def load_spec(name: str, pretrained: Any = None, **kwargs: Any) -> Any:
    """The ``zoo:`` spec loader: trained weights by default; ``pretrained="random"`` for the untrained
    (seeded) model, a checkpoint path for an intermediate checkpoint."""
    if pretrained in ("random", "none", "untrained"):
        return load(name, pretrained=False, **kwargs)
    if isinstance(pretrained, (str, Path)) and str(pretrained) not in ("", "true", "True", "default"):
        return load(name, weights=pretrained, **kwargs)
    return load(name, **kwargs)


def available() -> List[str]:
    """Names of zoo models whose weights are present."""
    return sorted(n for n in entries() if weights_path(n).is_file())


def describe() -> List[Mapping[str, Any]]:
    """One row per entry: name, family, kind, trained?, headline figures from the card."""
    rows = []
    for name, e in sorted(entries().items()):
        row: Dict[str, Any] = {"name": name, "family": e.family, "kind": e.kind, "trained": weights_path(name).is_file()}
        if row["trained"]:
            row["metrics"] = model_card(name).get("metrics", {})
        rows.append(row)
    return rows
