"""Hook points that cost nothing until something is attached.

Two kinds of :class:`transformer_lens.hook_points.HookPoint` live in a visionlens model:

* **Inline** points are called by an adapter's own forward code. The adapter calls
  :func:`fire` which skips the ``nn.Module.__call__`` entirely when the point is empty.
* **Bridged** points (:class:`BridgedHookPoint`) stand for a tensor the *source* model
  computes (a module's output or input). A torch hook on the source module is installed only
  while the point has hooks, so an unhooked model runs exactly the source model's code.

Both are real ``HookPoint`` subclasses: TransformerLens hook functions ``fn(tensor, hook)``,
``add_hook``, ``run_with_hooks``, ``run_with_cache`` and backward hooks work unchanged.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint, LensHandle

from .validation import hook_output_error

__all__ = [
    "HookPoint",
    "InlineHookPoint",
    "BridgedHookPoint",
    "DeferredActivation",
    "fire",
    "is_active",
    "is_hooked",
    "capture_deferred",
]


def is_active(hp: HookPoint) -> bool:
    """True when a forward or backward hook is attached to ``hp`` or it is being cached."""
    return bool(hp._forward_hooks or hp._backward_hooks or getattr(hp, "_capture", None) is not None)


def is_hooked(hp: HookPoint) -> bool:
    """True when a forward or backward hook function is attached to ``hp`` (capturing alone does not count)."""
    return bool(hp._forward_hooks or hp._backward_hooks)


class DeferredActivation:
    """A cached activation computed when it is first read, not during the forward.

    Adapters use it for values that are cheap to derive from other cached tensors but large to
    store, such as per-head attention results (``hook_z`` times ``W_O``). ``then`` appends a
    transform (device move, batch-dim removal) applied after computing.
    """

    __slots__ = ("_fn", "_then")

    def __init__(self, fn: Callable[[], Tensor], then: tuple[Callable[[Tensor], Tensor], ...] = ()):
        self._fn = fn
        self._then = then

    def then(self, f: Callable[[Tensor], Tensor]) -> "DeferredActivation":
        return DeferredActivation(self._fn, self._then + (f,))

    def materialize(self) -> Tensor:
        with torch.no_grad():
            t = self._fn()
        for f in self._then:
            t = f(t)
        return t


def capture_deferred(hp: HookPoint, fn: Callable[[], Tensor]) -> None:
    """Record ``fn`` (called on first read) as ``hp``'s cached value while ``hp`` is being captured.

    Only for points that are captured without hook functions (see :func:`is_hooked`): a hook
    function needs the real tensor during the forward.
    """
    cap = hp._capture
    if cap is not None:
        cap[hp.name] = DeferredActivation(fn)


def fire(hp: HookPoint, x: Tensor) -> Tensor:
    """Pass ``x`` through ``hp`` when something is attached, else return it untouched.

    A hook that returns anything but a tensor of ``x``'s shape (the batch size may change) raises a
    :class:`~visionlens.validation.VisionLensError` naming the point and both shapes.
    A point in fast-capture mode (see :meth:`HookedVisionModel.run_with_cache`) stores the final
    value (after any user hooks) straight into the cache dict, without torch hook dispatch.
    """
    if hp._forward_hooks or hp._backward_hooks:
        y = hp(x)
        # the batch dimension may change (batched patching expands it on purpose); nothing else may
        if y is not x and (not isinstance(y, Tensor) or y.shape[1:] != x.shape[1:] or y.ndim != x.ndim):
            raise hook_output_error(hp.name, x, y)
        x = y
    cap = hp._capture
    if cap is not None:
        cap[hp.name] = x.detach() if x.requires_grad else x
    return x


class _NotifyingHookPoint(HookPoint):
    """A HookPoint that tells an owner when it gains its first or loses its last hook."""

    def __init__(self) -> None:
        super().__init__()
        self._listeners: list[Callable[[], None]] = []
        self._capture: Optional[dict] = None

    def set_capture(self, cache: Optional[dict]) -> None:
        """Store this point's value into ``cache[name]`` on every forward (``None`` stops)."""
        object.__setattr__(self, "_capture", cache)  # skip nn.Module.__setattr__ (hot path)
        if self._listeners:
            self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()

    def add_hook(self, hook: Any, dir: Literal["fwd", "bwd"] = "fwd", *args: Any, **kwargs: Any) -> LensHandle:
        handle = super().add_hook(hook, dir, *args, **kwargs)
        try:
            self._notify()
        except BaseException:  # keep add_hook atomic: a failed listener leaves nothing attached
            handle.hook.remove()
            for handles in (self.fwd_hooks, self.bwd_hooks):
                if handle in handles:
                    handles.remove(handle)
            raise
        return handle

    def remove_hooks(
        self, dir: Literal["fwd", "bwd", "both"] = "fwd", including_permanent: bool = False, level: Optional[int] = None
    ) -> None:
        super().remove_hooks(dir, including_permanent=including_permanent, level=level)
        self._notify()


class InlineHookPoint(_NotifyingHookPoint):
    """A hook point called from adapter code (see :func:`fire`)."""


class BridgedHookPoint(_NotifyingHookPoint):
    """A hook point on a tensor produced inside the source model.

    ``where`` is ``"output"`` (the module's return value, optionally one item of a tuple via
    ``index``) or ``"input"`` (positional argument ``index`` of the module call).
    The bridge torch hook exists only while this point has hooks.
    """

    def __init__(self, module: nn.Module, where: Literal["output", "input"] = "output", index: Optional[int] = None):
        super().__init__()
        # Keep the source module out of the nn.Module tree (it is registered once, under `source`).
        object.__setattr__(self, "_target", module)
        self._where = where
        self._index = index
        self._bridge: Optional[torch.utils.hooks.RemovableHandle] = None
        self._listeners.append(self._sync_bridge)

    @property
    def target(self) -> nn.Module:
        return self._target

    def _sync_bridge(self) -> None:
        want = is_active(self)
        # object.__setattr__: nn.Module.__setattr__ costs microseconds, and a full cache toggles every point twice
        if want and self._bridge is None:
            if self._where == "output":
                object.__setattr__(self, "_bridge", self._target.register_forward_hook(self._on_output))
            else:
                object.__setattr__(self, "_bridge", self._target.register_forward_pre_hook(self._on_input))
        elif not want and self._bridge is not None:
            self._bridge.remove()
            object.__setattr__(self, "_bridge", None)

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self._index is None:
            if not isinstance(output, Tensor):
                return None
            return fire(self, output)
        items = list(output)
        items[self._index] = fire(self, items[self._index])
        return type(output)(items) if isinstance(output, tuple) else items

    def _on_input(self, module: nn.Module, args: tuple) -> Optional[tuple]:
        i = self._index or 0
        return args[:i] + (fire(self, args[i]),) + args[i + 1 :]
