"""Bridging that is safe around in-place ops and shared modules, shared by the bridged adapters.

``ConvBridge`` hands on a copy only where the source overwrites a tensor in place later (found
once per model by :func:`find_inplace_targets`, a dry forward pass watching tensor version
counters); ``ConvNetAdapter`` is the base of every adapter whose source forward runs untouched
(conv nets and the generic adapter).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, ClassVar, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

from visionlens.hook_points import BridgedHookPoint, HookPoint, fire, is_active
from visionlens.validation import VisionLensError

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
    # One torch hook per point costs ~20 us to add and remove, and a hooked module leaves torch's fast path;
    # the session (forward wrappers) costs no more from 8 points on (ResNet-18, 32 px, batch 1, 1 thread, idle
    # cores, ratio to the raw forward, per point / session: 8 points 1.06x / 1.04-1.07x, 24 points 1.13-1.14x /
    # 1.06-1.09x, all 112 points 1.35-1.40x / 1.12-1.15x). Sessions start at this share of the source's modules
    # (and at least 8 points).
    session_min_fraction: ClassVar[float] = 0.0

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
        """Capture the bridges among ``points`` into ``store`` for one forward, without a torch hook per point.

        A full cache would otherwise register and remove one torch hook per point around every forward
        (~20 us each: a third of a ResNet-18 forward at 32 px). Yields the points it leaves to the caller
        (other kinds, or bridges that are already active). Two ways, chosen per forward:

        * **forward wrappers** (the usual case): each target module's ``forward`` is shadowed by an instance
          attribute for the session, so the modules keep torch's hook-free fast path; a plain tensor output
          is stored directly (a copy is handed on where the source overwrites it later), anything else
          goes through the bridge's own code. Inputs are seen after the module's own pre-hooks and outputs
          before any forward hook, as torch hooks added per point would see them;
        * **two global torch hooks**, where another bridge on one of the same tensors is already active
          (global hooks run before a module's own, so the captured bridges fire first and one copy by the
          last of them keeps every stored value intact), or where a module's forward is not a plain Python
          method (a scripted module).

        Where a target module has forward hooks of its own (which may edit its output), every point is
        left to the caller (torch hooks per point, registered after the module's own).
        """
        session = [p for p in points if isinstance(p, ConvBridge) and p._bridge is None]
        if not hasattr(self, "_n_modules"):
            self._n_modules = sum(1 for _ in self.source.modules())
        if len(session) < max(8, self.session_min_fraction * self._n_modules):
            yield points
            return
        if getattr(self, "_capturing", False):
            raise VisionLensError(
                "run_with_cache was called on this model while a full cache of it is being taken (from a hook or "
                "a forward inside run_with_cache, or from another thread): the two would share the same hook points. "
                "Take the second cache after the first returns, or from a copy of the model (copy.deepcopy)."
            )
        plan = self._capture_plan(points, session)
        if any(p._group for p in session) or not plan.plain_forwards:
            # another bridge on one of these tensors is active (copies coordinated), or a module's forward is
            # not a plain Python method (a scripted module): global torch hooks
            capture = plan.global_hooks
        elif any(m._forward_hooks for m in plan.out_modules):
            yield points  # a module's own forward hook may edit its output: torch hooks per point keep the order
            return
        else:
            capture = plan.wrapped
        token = object()
        if self.out_of_place.modules:
            self.out_of_place.hold(id(token))
        self._capturing = True
        try:
            with capture(store):
                yield plan.rest
        finally:
            self._capturing = False
            self.out_of_place.release(id(token))

    def _capture_plan(self, points: list[HookPoint], session: list["ConvBridge"]) -> "_CapturePlan":
        key = tuple(map(id, points)), tuple(map(id, session))
        plan = getattr(self, "_session_plan", None)
        if plan is None or plan.key != key:  # repeated caches of the same points reuse the dispatch tables
            plan = _CapturePlan(key, points, session)
            self._session_plan = plan
        return plan

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


class _CapturePlan:
    """Dispatch tables of one capture session's bridges, by target module (built once per set of points)."""

    def __init__(self, key: tuple, points: list[HookPoint], session: list[ConvBridge]):
        self.key = key
        chosen = {id(p) for p in session}
        self.rest = [p for p in points if id(p) not in chosen]
        self.session = session
        self.outs: dict[int, list[ConvBridge]] = {}
        self.ins: dict[int, list[ConvBridge]] = {}
        self.scoped: dict[int, list[ConvBridge]] = {}
        modules: dict[int, nn.Module] = {}
        for p in session:
            (self.outs if p._where == "output" else self.ins).setdefault(id(p._target), []).append(p)
            modules[id(p._target)] = p._target
            if p._call is not None:
                self.scoped.setdefault(id(p._scope), []).append(p)
                modules[id(p._scope)] = p._scope
        self.modules = modules
        self.out_modules = [modules[i] for i in self.outs]
        self.plain_forwards = all(inspect.isfunction(getattr(type(m), "forward", None)) for m in modules.values())
        # modules whose output bridges all take a plain tensor as it is: stored without the bridge's code
        self.direct: dict[int, tuple[list[str], bool]] = {}
        for mid, bridges in self.outs.items():
            if all(b._index is None and b._call is None and not b._channels_last for b in bridges):
                self.direct[mid] = ([b.name for b in bridges], any(b._copy for b in bridges))
        # bridges the wrappers run through their own code (they store through ``_capture``)
        self.slow = [b for mid, bs in self.outs.items() if mid not in self.direct for b in bs]
        self.slow += [b for bs in self.ins.values() for b in bs]
        self.store: Optional[dict] = None  # the dict being filled while the wrappers are installed
        self.wrappers: Optional[dict[int, Any]] = None

    @contextmanager
    def wrapped(self, store: dict) -> Iterator[None]:
        """Shadow each target module's ``forward`` for the session (restored afterwards, whatever happens)."""
        if self.wrappers is None:
            # the class's forward, bound: an instance forward present now may be gone next time
            self.wrappers = {mid: self._wrapper(m, type(m).forward.__get__(m)) for mid, m in self.modules.items()}
        saved: list[tuple[nn.Module, Any]] = []
        try:
            self.store = store
            for mid, module in self.modules.items():
                attrs = module.__dict__
                previous = attrs.get("forward", _MISSING)
                saved.append((module, previous))
                # a forward set on the instance (by the user, or another tool) is wrapped as it is now
                attrs["forward"] = self.wrappers[mid] if previous is _MISSING else self._wrapper(module, previous)
            with _enlisted(self.slow, store):
                yield
        finally:
            for module, previous in saved:
                if previous is _MISSING:
                    module.__dict__.pop("forward", None)
                else:
                    module.__dict__["forward"] = previous
            self.store = None

    def _wrapper(self, module: nn.Module, forward: Any) -> Any:
        plan = self
        mid = id(module)
        resets = self.scoped.get(mid, ())
        ins = self.ins.get(mid, ())
        direct = self.direct.get(mid)
        outs = () if direct is not None else self.outs.get(mid, ())
        if direct is not None and not resets and not ins:
            names, copy = direct

            def plain(*args: Any, **kwargs: Any) -> Any:
                return _keep(forward(*args, **kwargs), names, copy, plan.store)

            return plain

        def general(*args: Any, **kwargs: Any) -> Any:
            for b in resets:
                object.__setattr__(b, "_count", 0)
            for b in ins:
                r = b._on_input(module, args)
                if r is not None:
                    args = r
            out = forward(*args, **kwargs)
            if direct is not None:
                return _keep(out, direct[0], direct[1], plan.store)
            for b in outs:
                r = b._on_output(module, args, out)
                if r is not None:
                    out = r
            return out

        return general

    @contextmanager
    def global_hooks(self, store: dict) -> Iterator[None]:
        """Fire the bridges from two global torch hooks (they run before any module's own hooks)."""
        outs, ins, scoped = self.outs, self.ins, self.scoped

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

        handles = []
        try:
            with _enlisted(self.session, store):
                handles.append(torch.nn.modules.module.register_module_forward_pre_hook(on_input))
                handles.append(torch.nn.modules.module.register_module_forward_hook(on_output))
                yield
        finally:
            for h in handles:
                h.remove()


@contextmanager
def _enlisted(bridges: list[ConvBridge], store: dict) -> Iterator[None]:
    """Let ``bridges`` store into ``store`` through their own code, firing first (in this order) on each tensor,
    ahead of already active bridges, so that one copy by the last of them keeps every stored value intact."""
    try:
        for b in reversed(bridges):
            b._group.insert(0, b)
            object.__setattr__(b, "_capture", store)
        yield
    finally:
        for b in bridges:
            object.__setattr__(b, "_capture", None)
            if b in b._group:
                b._group.remove(b)


def _keep(out: Any, names: list[str], copy: bool, store: Optional[dict]) -> Any:
    """Store a module's tensor output under ``names``; hand on a copy where the source overwrites it later."""
    if store is None or not isinstance(out, Tensor):
        return out
    value = out.detach() if out.requires_grad else out
    for name in names:
        store[name] = value
    return out.clone() if copy else out


_MISSING = object()
