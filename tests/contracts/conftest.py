"""The tiny example models the contract suites run on: one per registered adapter family.

Each adapter class offers ``example_source()`` (a tiny random source model in eval mode, or None);
a family registered by a plugin is picked up with no new test code.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor

from visionlens import HookedVisionModel
from visionlens.adapters import Adapter, available_adapters
from visionlens.adapters.builtin import BUILTIN_ADAPTERS

ATOL = 1e-5  # the hook contract: the wrapped model computes what the source computes, within this
MAX_SIZE = 32  # dummy images of models that take any size are this large at most (fast)


def adapters() -> list[type[Adapter]]:
    """Every registered adapter class, highest priority first (what ``resolve_adapter`` tries)."""
    return available_adapters()


def builtin_adapters() -> list[type[Adapter]]:
    """The built-in adapter classes (``BUILTIN_ADAPTERS``) whose optional library is installed."""
    names = {(module, n) for module, ns in BUILTIN_ADAPTERS.items() for n in ns}
    return [a for a in adapters() if (a.__module__, a.__name__) in names]


def adapter_id(cls: type[Adapter]) -> str:
    return cls.name


def example_model(cls: type[Adapter]) -> Optional[HookedVisionModel]:
    """``cls.example_source()`` wrapped with ``cls`` itself (not auto-resolved), or None."""
    src = cls.example_source()
    if src is None:
        return None
    return HookedVisionModel(src, adapter=cls)


def example_size(model: HookedVisionModel) -> Optional[int]:
    """Image size of the dummy inputs: the model's fixed size, else at most :data:`MAX_SIZE`."""
    size = model.cfg.image_size
    if size and not model.cfg.dynamic_img_size:
        return None  # the model's own size
    return min(size[0], MAX_SIZE) if size else MAX_SIZE


def example_call(model: HookedVisionModel, batch: int = 2) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for a forward that reaches every hook: the adapter's ``example_inputs``
    (UNet: sample, timestep, encoder states; CLIP: images and texts), else a plain image batch."""
    size = example_size(model)
    example = model.adapter.example_inputs(size, batch)
    if example is not None:
        return example
    return (model.dummy_input(size, batch),), {}


def tensors_of(out: Any) -> list[Tensor]:
    """The tensors in a model output (a tensor, tuple / list / dict of them, or a diffusers output)."""
    if isinstance(out, Tensor):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in tensors_of(o)]
    return []


def assert_same_output(got: Any, expected: Any, atol: float = ATOL, what: str = "output") -> None:
    a, b = tensors_of(got), tensors_of(expected)
    assert a and len(a) == len(b), f"{what}: {len(a)} tensors, expected {len(b)}"
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, f"{what}[{i}]: shape {tuple(x.shape)}, expected {tuple(y.shape)}"
        err = (x.float() - y.float()).abs().max().item() if x.numel() else 0.0
        assert err <= atol, f"{what}[{i}] differs from the source by {err:.3g} (> {atol})"


def example_images(model: HookedVisionModel, n: int = 4) -> Tensor:
    """``n`` seeded images at the model's example size."""
    return model.dummy_input(example_size(model), n)
