"""``torch.compile`` for the unhooked forward, with an eager fallback whenever a hook is attached.

A plain ``torch.compile(model)`` captures the graph with the hook points as they are at the first
call: Dynamo does not guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a
hook attached later is silently skipped by the compiled function (``tests/scale/test_gpu_path.py``
shows it). :func:`compile_forward` returns a callable that runs the compiled forward only while no
hook point is active (no hook, nothing being cached) and the eager hooked model otherwise.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from visionlens.hook_points import is_active
from visionlens.hooked_model import HookedVisionModel

__all__ = ["CompiledForward", "compile_forward"]


class CompiledForward:
    """``model(x)`` through a compiled graph when nothing is hooked, eagerly otherwise (same outputs)."""

    def __init__(self, model: HookedVisionModel, **compile_kwargs: Any) -> None:
        import torch

        self.model = model
        self.compiled = torch.compile(model, **compile_kwargs)
        self.eager_calls = 0
        self.compiled_calls = 0

    def hooked(self) -> bool:
        """Whether any hook point of the model has a hook attached or is being cached."""
        return any(is_active(hp) for hp in self.model.hook_dict.values())

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        if self.hooked():
            self.eager_calls += 1
            return self.model(*args, **kwargs)
        self.compiled_calls += 1
        return self.compiled(*args, **kwargs)


def compile_forward(model: HookedVisionModel, **compile_kwargs: Any) -> CompiledForward:
    """Compile ``model``'s forward (``torch.compile`` keywords pass through); hooked calls run eagerly."""
    return CompiledForward(model, **compile_kwargs)
