"""Bridging that is safe around in-place ops and shared modules, shared by the bridged adapters.

``ConvBridge`` hands on a copy only where the source overwrites a tensor in place later (found
once per model by :func:`find_inplace_targets`, a dry forward pass watching tensor version
counters); ``ConvNetAdapter`` is the base of every adapter whose source forward runs untouched
(conv nets and the generic adapter).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from visionlens.hook_points import BridgedHookPoint, HookPoint, fire, is_active

from . import BridgedAdapter

__all__ = ["ConvBridge", "ConvNetAdapter", "OutOfPlace", "find_inplace_targets", "inplace_activations"]

_RESERVED_ROOTS = ("source", "adapter", "cfg")


class ConvBridge(BridgedHookPoint):
    """A :class:`BridgedHookPoint` that is safe around in-place ops and shared modules.

    ``copy``: hand the code after the hook a copy of the (possibly edited) tensor, so an in-place
    op there (``ReLU(inplace=True)``, ``out += shortcut``) cannot overwrite what the hook / cache
    saw, and so a backward hook's output is never modified in place.

    ``call`` / ``scope``: fire only on the ``call``-th call (0-based) of the target module during
    one call of ``scope`` (torchvision ResNet blocks call one ``relu`` module several times).

    ``channels_last``: the target produces / takes ``[B, H, W, C]``; hooks see ``[B, C, H, W]``
    (a permuted view) and whatever they return is permuted back.

    Torch hooks (on the target, and on ``scope`` for counting) exist only while the point has hooks.
    """

    def __init__(
        self,
        module: nn.Module,
        where: Literal["output", "input"] = "output",
        index: Optional[int] = None,
        *,
        copy: bool = False,
        call: Optional[int] = None,
        scope: Optional[nn.Module] = None,
        channels_last: bool = False,
        group: Optional[list] = None,
    ):
        if call is not None and scope is None:
            raise ValueError("ConvBridge(call=...) needs the scope module whose call resets the count")
        super().__init__(module, where, index)
        self._copy = copy
        self._call = call
        object.__setattr__(self, "_scope", scope)  # not a submodule: source modules live under `source`
        self._channels_last = channels_last
        self._count = 0
        self._scope_handle: Optional[torch.utils.hooks.RemovableHandle] = None
        # the active bridges on the same tensor, in firing order: only the last one needs to copy
        self._group: list = group if group is not None else []

    def _sync_bridge(self) -> None:
        super()._sync_bridge()
        if self._bridge is not None and self not in self._group:
            self._group.append(self)
        elif self._bridge is None and self in self._group:
            self._group.remove(self)
        if self._call is None:
            return
        if self._bridge is not None and self._scope_handle is None:
            object.__setattr__(self, "_scope_handle", self._scope.register_forward_pre_hook(self._reset_count))
        elif self._bridge is None and self._scope_handle is not None:
            self._scope_handle.remove()
            object.__setattr__(self, "_scope_handle", None)

    def _reset_count(self, module: nn.Module, args: Any) -> None:
        object.__setattr__(self, "_count", 0)

    def _selected(self) -> bool:
        if self._call is None:
            return True
        k = self._count
        object.__setattr__(self, "_count", k + 1)
        return k == self._call

    def _pass(self, t: Tensor) -> Tensor:
        if self._channels_last:
            y = fire(self, t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        else:
            y = fire(self, t)
        # bridges on one tensor fire in registration order and each stores what it passes on, so one copy
        # by the last of them keeps every stored value intact
        if not self._copy or next(b for b in reversed(self._group) if b._copy) is not self:
            return y
        return y.clone()

    def _on_output(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self._selected():
            return None
        if self._index is not None or not isinstance(output, Tensor):
            return super()._on_output(module, args, output)
        return self._pass(output)

    def _on_input(self, module: nn.Module, args: tuple) -> Optional[tuple]:
        if not self._selected():
            return None
        i = self._index or 0
        return args[:i] + (self._pass(args[i]),) + args[i + 1 :]


def inplace_activations(source: nn.Module) -> list[nn.Module]:
    """Modules that overwrite their input when ``inplace`` is set (``nn.ReLU(inplace=True)``, ReLU6, SiLU, ...)."""
    return [m for m in source.modules() if getattr(m, "inplace", None) is True]


class OutOfPlace:
    """Runs the source's in-place activation modules out of place while any bridge of a model is active.

    An ``nn.ReLU(inplace=True)`` overwrites the BatchNorm output it reads, so a hook or cache on that
    output would need a copy; computed out of place, the output stays intact and no copy is made (the
    values are identical). Bridges report their state through :meth:`update`; the modules' ``inplace``
    flags are restored as soon as the last bridge goes quiet, so an unhooked model runs the source as is.
    """

    def __init__(self, modules: list[nn.Module]):
        self.modules = modules
        self._active: set[int] = set()

    def update(self, bridge: "ConvBridge") -> None:
        """Record whether ``bridge`` is active now (called by the bridge on every change)."""
        self.hold(id(bridge)) if is_active(bridge) else self.release(id(bridge))

    def hold(self, token: int) -> None:
        """Run out of place until ``release(token)`` (and every other holder has released)."""
        if not self._active:
            for m in self.modules:
                object.__setattr__(m, "inplace", False)  # a plain attribute: skip nn.Module.__setattr__
        self._active.add(token)

    def release(self, token: int) -> None:
        self._active.discard(token)
        if not self._active:
            for m in self.modules:
                object.__setattr__(m, "inplace", True)

    def __enter__(self) -> "OutOfPlace":
        self.hold(id(self))
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release(id(self))


def find_inplace_targets(source: nn.Module, x: Tensor) -> Optional[tuple[set[int], set[int]]]:
    """Which modules' outputs (and first inputs) the source overwrites in place after producing them.

    Runs one forward pass on ``x`` (no grad, eval mode, training flags restored) with a temporary
    hook on every module that records the tensor's version counter; a tensor whose counter moved
    by the end was modified in place later (``ReLU(inplace=True)``, ``out += shortcut``).
    Returns ``(output module ids, input module ids)``, or None when the dry run fails.
    """
    records: list[tuple[int, Tensor, int, bool]] = []

    def on_out(mod: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor):
            records.append((id(mod), out, out._version, True))

    def on_in(mod: nn.Module, args: Any) -> None:
        if args and isinstance(args[0], Tensor):
            records.append((id(mod), args[0], args[0]._version, False))

    modules = list(source.modules())
    training = [m.training for m in modules]
    handles = []
    try:
        for m in modules:
            handles.append(m.register_forward_hook(on_out))
            handles.append(m.register_forward_pre_hook(on_in))
        source.eval()
        with torch.no_grad():
            source(x)
    except Exception:
        return None
    finally:
        for h in handles:
            h.remove()
        for m, t in zip(modules, training):
            m.training = t
    outs: set[int] = set()
    ins: set[int] = set()
    for mid, t, version, is_out in records:
        if t._version != version:
            (outs if is_out else ins).add(mid)
    seen = {mid for mid, _, _, _ in records}
    # modules the dry run never reached (e.g. auxiliary heads that run only in training): copy to be safe
    unseen = {id(m) for m in modules} - seen
    return outs | unseen, ins | unseen


class ConvNetAdapter(BridgedAdapter):
    """Base for the conv-net adapters: canonical hooks first, then the module tree.

    A bridge copies the tensor it hands on only where the source overwrites that module's output
    (or input) in place later (see :func:`find_inplace_targets`, run once when the model is wrapped);
    elsewhere hooks see and pass on the source's own tensors.
    """

    dry_run_size: ClassVar[int] = 64
    # A global torch hook pair sends every module call down torch's slow path (~0.1x of a small forward);
    # one torch hook per point costs ~20 us to add and remove. The session pays from this share of the
    # source's modules on (measured on ResNet-18 / -50 at 32 px: 16 points per-point 1.07x vs session 1.13x,
    # every point 1.37x vs 1.23x).
    session_min_fraction: ClassVar[float] = 0.4

    @property
    def out_of_place(self) -> OutOfPlace:
        """The switch that runs in-place activation modules out of place while bridges are active."""
        if not hasattr(self, "_out_of_place"):
            self._out_of_place = OutOfPlace(inplace_activations(self.source))
        return self._out_of_place

    def _inplace(self) -> Optional[tuple[set[int], set[int]]]:
        """What the source overwrites in place with its activation modules run out of place (as while hooked)."""
        if not hasattr(self, "_inplace_targets"):
            cfg = getattr(self, "cfg", None)
            in_chans = cfg.in_chans if cfg is not None else 3
            size = max(self.dry_run_size, cfg.min_image_size if cfg is not None else 1)
            dev = next((p.device for p in self.source.parameters()), torch.device("cpu"))
            dtype = next((p.dtype for p in self.source.parameters() if p.is_floating_point()), torch.float32)
            x = torch.zeros(1, in_chans, size, size, device=dev, dtype=dtype)
            with self.out_of_place:
                self._inplace_targets = find_inplace_targets(self.source, x)
        return self._inplace_targets

    @contextmanager
    def capture_session(self, points: list[HookPoint], store: dict) -> Iterator[list[HookPoint]]:
        """Capture the bridges among ``points`` into ``store`` for one forward through two global torch hooks.

        A full cache would otherwise register and remove one torch hook per point around every forward
        (~20 us each: a third of a ResNet-18 forward at 32 px). The bridges fire exactly as their own hooks
        would (global hooks run before a module's own, so bridges that already have hooks fire after the
        captured ones, and one copy by the last of them on an overwritten tensor keeps every stored value
        intact). Yields the points it leaves to the caller (other kinds, or bridges that are already active).
        """
        session = [p for p in points if isinstance(p, ConvBridge) and p._bridge is None]
        if not hasattr(self, "_n_modules"):
            self._n_modules = sum(1 for _ in self.source.modules())
        if len(session) < max(8, self.session_min_fraction * self._n_modules):
            yield points
            return
        key = tuple(map(id, points)), tuple(map(id, session))
        plan = getattr(self, "_session_plan", None)
        if plan is None or plan[0] != key:  # repeated caches of the same points reuse the dispatch tables
            rest = [p for p in points if not (isinstance(p, ConvBridge) and p._bridge is None)]
            outs: dict[int, list[ConvBridge]] = {}
            ins: dict[int, list[ConvBridge]] = {}
            scoped: dict[int, list[ConvBridge]] = {}
            for p in session:
                (outs if p._where == "output" else ins).setdefault(id(p._target), []).append(p)
                if p._call is not None:
                    scoped.setdefault(id(p._scope), []).append(p)
            plan = (key, rest, outs, ins, scoped)
            self._session_plan = plan
        _, rest, outs, ins, scoped = plan

        def on_output(module: nn.Module, args: Any, output: Any) -> Any:
            bridges = outs.get(id(module))
            if bridges is None:
                return None
            for b in bridges:
                r = b._on_output(module, args, output)
                if r is not None:
                    output = r
            return output

        def on_input(module: nn.Module, args: tuple) -> Any:
            resets = scoped.get(id(module))
            if resets is not None:
                for b in resets:
                    object.__setattr__(b, "_count", 0)
            bridges = ins.get(id(module))
            if bridges is None:
                return None
            for b in bridges:
                r = b._on_input(module, args)
                if r is not None:
                    args = r
            return args

        token = object()
        handles = []
        try:
            for p in reversed(session):  # they fire first, in this order, ahead of already registered bridges
                p._group.insert(0, p)
                object.__setattr__(p, "_capture", store)
            if self.out_of_place.modules:
                self.out_of_place.hold(id(token))
            handles.append(torch.nn.modules.module.register_module_forward_pre_hook(on_input))
            handles.append(torch.nn.modules.module.register_module_forward_hook(on_output))
            yield rest
        finally:
            for h in handles:
                h.remove()
            for p in session:
                object.__setattr__(p, "_capture", None)
                if p in p._group:
                    p._group.remove(p)
            self.out_of_place.release(id(token))

    def needs_copy(self, module: nn.Module, where: str = "output") -> bool:
        targets = self._inplace()
        if targets is None:
            return True
        return id(module) in (targets[0] if where == "output" else targets[1])

    def hook_points(self) -> dict[str, HookPoint]:
        points = dict(self.canonical_hooks())
        for path, module in self.source.named_modules():
            if not path or path.split(".")[0] in _RESERVED_ROOTS:
                continue
            points.setdefault(f"{path}.hook_out", self.bridge(module))
        return points

    def head_hooks(self, fc: Optional[nn.Module]) -> dict[str, HookPoint]:
        """``hook_pooled`` (what the classifier reads) and ``hook_logits`` (a linear classifier's output)."""
        if not isinstance(fc, nn.Module):
            return {}
        pts: dict[str, HookPoint] = {"hook_pooled": self.bridge(fc, "input", 0)}
        if isinstance(fc, nn.Linear):
            pts["hook_logits"] = self.bridge(fc)
        return pts

    def bridge(
        self, module: nn.Module, where: Literal["output", "input"] = "output", index: Optional[int] = None, **kw: Any
    ) -> ConvBridge:
        if not kw.get("copy"):
            kw["copy"] = self.needs_copy(module, where)
        if not hasattr(self, "_bridge_groups"):
            self._bridge_groups: dict[tuple, list] = {}
        key = (id(module), where, index, kw.get("call"), kw.get("channels_last", False))
        kw["group"] = self._bridge_groups.setdefault(key, [])
        bridge = ConvBridge(module, where, index, **kw)
        switch = self.out_of_place
        if switch.modules:
            bridge._listeners.insert(0, lambda: switch.update(bridge))
        return bridge
