"""The model zoo's catalogue: one :class:`~visionlens.zoo.entry.ZooEntry` per trained model, and
``load("zoo:NAME")``.

The catalogue is filled by registration (:func:`register`): the built-in plugin :mod:`visionlens.zoo.plugin`
registers the ``ENTRIES`` of :mod:`~visionlens.zoo.classifiers`, :mod:`~visionlens.zoo.clip_model` and
:mod:`~visionlens.zoo.diffusion_model` when it is imported, a third-party plugin module its own, and
:func:`entries` loads the plugins first. The catalogue never imports its members.

An entry says how to build its untrained module (with the family's real constructor, so the real
adapter is what gets tested), how to train it on :mod:`visionlens.zoo.data`, how to measure it and
which figures it must reach. Trained weights ship in ``visionlens/zoo/weights/NAME.safetensors``
next to a JSON model card ``NAME.json`` (written by :mod:`visionlens.zoo.train`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Union

import torch
from torch import nn

from ..checkpoints import load_state_dict_file
from ..registry import plugin_manager
from ..validation import VisionLensError
from .entry import ZooEntry
from .randomize import randomize_module

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
RANDOM_SEED = 0  # the seed of the random control, load(name, pretrained=False)

_ENTRIES: Dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    """Add an entry to the catalogue (names are unique)."""
    _ENTRIES[entry.name] = entry
    return entry


def entries() -> Dict[str, ZooEntry]:
    """All catalogue entries by name, in registration order (the order of the transfer table's rows)."""
    plugin_manager()  # loading the plugins registers their entries (the built-in ones: visionlens.zoo.plugin)
    return dict(_ENTRIES)


def get_entry(name: str) -> ZooEntry:
    """The catalogue entry called ``name``; unknown names raise with the known ones."""
    plugin_manager()
    if name not in _ENTRIES:
        raise VisionLensError(f"Unknown zoo model {name!r}. Known: {', '.join(sorted(_ENTRIES))}.")
    return _ENTRIES[name]


def card_path(name: str, directory: Union[str, Path, None] = None) -> Path:
    return Path(directory or WEIGHTS_DIR) / f"{name}.json"


def weights_path(name: str, directory: Union[str, Path, None] = None) -> Path:
    return Path(directory or WEIGHTS_DIR) / f"{name}.safetensors"


def model_card(name: str, directory: Union[str, Path, None] = None) -> Dict[str, Any]:
    """The JSON model card of a trained zoo model."""
    p = card_path(name, directory)
    if not p.is_file():
        raise VisionLensError(
            f"Zoo model {name!r} has no trained weights at {p.parent} (train it with `visionlens zoo train {name}`)."
        )
    return json.loads(p.read_text())


def load_module(
    name: str, directory: Union[str, Path, None] = None, weights: Union[str, Path, None] = None, strict: bool = True
) -> nn.Module:
    """Build zoo model ``name`` and load its trained weights (or a checkpoint file ``weights``)."""
    entry = get_entry(name)
    reason = entry.build_reason()  # a missing library; the dataset is not needed to load
    if reason:
        raise VisionLensError(f"Zoo model {name!r} cannot be built here: {reason}")
    path = Path(weights) if weights is not None else weights_path(name, directory)
    if not path.is_file():
        raise VisionLensError(
            f"Zoo model {name!r} has no trained weights at {path} (train it with `visionlens zoo train {name}`)."
        )
    torch.manual_seed(0)
    module = entry.build()
    module.load_state_dict(load_state_dict_file(path), strict=strict)
    return module.eval()


def load(
    name: str,
    pretrained: Any = True,
    directory: Union[str, Path, None] = None,
    weights: Union[str, Path, None] = None,
    **kwargs: Any,
) -> HookedVisionModel:
    """``visionlens.load("zoo:NAME")``: the trained zoo model as a :class:`HookedVisionModel`.

    ``pretrained=False`` gives the untrained model, the model-randomization control of sanity checks:
    built with seed 0, then (where ``entry.randomize``: the classifiers, CLIP) re-initialised by
    :func:`~visionlens.zoo.randomize.randomize_module` with seed 0, so no init-time zeroing (timm's
    ``zero_init_last`` ResNet blocks, open_clip's zeroed ``bn3``, ...) leaves residual branches off.
    Neither needs the entry's dataset.
    """
    entry = get_entry(name)
    if pretrained is False:
        reason = entry.build_reason()
        if reason:
            raise VisionLensError(f"Zoo model {name!r} cannot be built here: {reason}")
        torch.manual_seed(0)
        module = entry.build()
        if entry.randomize:
            randomize_module(module, seed=RANDOM_SEED)
        module = module.eval()
    else:
        if isinstance(pretrained, (str, Path)) and weights is None:  # a checkpoint path, as load_spec takes it
            weights = pretrained
        elif pretrained is not True:
            raise VisionLensError(
                f"pretrained must be True, False or a checkpoint path for zoo model {name!r}, got {pretrained!r}"
            )
        module = load_module(name, directory=directory, weights=weights)
    model = entry.hooked(module)
    model.zoo_name = name
    return model


def load_spec(name: str, pretrained: Any = None, **kwargs: Any) -> HookedVisionModel:
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
    rows: List[Mapping[str, Any]] = []
    for name, e in sorted(entries().items()):
        row: Dict[str, Any] = {
            "name": name,
            "family": e.family,
            "kind": e.kind,
            "trained": weights_path(name).is_file(),
        }
        if row["trained"]:
            row["metrics"] = model_card(name).get("metrics", {})
        rows.append(row)
    return rows
