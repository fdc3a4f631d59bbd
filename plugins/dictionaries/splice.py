"""Dictionaries in the forward pass: replace a hook's activation by its reconstruction (plus, optionally, the
error term) and expose the features as TransformerLens-style hook points.

:func:`splice` adds, under the spliced hook ``H`` (SAELens's naming):

=========================== ===================================================================
``H.hook_sae_input``        the activation entering the dictionary (the hook's layout)
``H.hook_sae_acts_pre``     encoder pre-activations (read-only: edits here do not reach the output)
``H.hook_sae_acts``         the features: ``[B, F, H, W]`` on conv maps, ``[B, T, F]`` on tokens
``H.hook_sae_recons``       the reconstruction (the hook's layout)
``H.hook_sae_error``        ``activation - reconstruction of the unedited features`` (with ``use_error``)
``H.hook_sae_output``       what continues through the model: ``recons (+ error)``
=========================== ===================================================================

They are ordinary hook points, so ``run_with_cache`` caches features, activation / attribution patching
targets them (``kind="channel"`` patches one feature), feature visualization optimizes
``channel("H.hook_sae_acts", f)`` and dataset examples rank images by a feature. With ``use_error=True``
the output equals the activation (up to float rounding) until something edits the features: then the
edit's effect, and only it, goes downstream (the error is computed from the unedited features).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from torch import Tensor

from ...hook_points import InlineHookPoint, fire
from ...validation import VisionLensError
from .dictionary import SparseDictionary
from .source import from_vectors, layout_of, to_vectors

if TYPE_CHECKING:
    from ...hooked_model import HookedVisionModel

__all__ = ["SAE_HOOKS", "Splice", "splice", "unsplice", "spliced", "splices_of", "feature_hook"]

SAE_HOOKS = (
    "hook_sae_input",
    "hook_sae_acts_pre",
    "hook_sae_acts",
    "hook_sae_recons",
    "hook_sae_error",
    "hook_sae_output",
)


def feature_hook(hook: str) -> str:
    """The feature hook of a dictionary spliced at ``hook``: ``f"{hook}.hook_sae_acts"``."""
    return f"{hook}.hook_sae_acts"


def _fit_batch(t: Tensor, batch: int) -> Tensor:
    """``t`` repeated block-wise to ``batch`` rows (patching stacks copies of the batch after a hook)."""
    if t.shape[0] == batch:
        return t
    if batch % t.shape[0]:
        raise VisionLensError(f"A hook changed the batch from {t.shape[0]} to {batch} (not a multiple).")
    return t.repeat(batch // t.shape[0], *([1] * (t.ndim - 1)))


class Splice:
    """One dictionary spliced into one hook of one model (made by :func:`splice`)."""

    def __init__(self, model: HookedVisionModel, hook: str, dictionary: SparseDictionary, use_error: bool) -> None:
        self.model, self.hook, self.dictionary, self.use_error = model, hook, dictionary, use_error
        self.points = {name: InlineHookPoint() for name in SAE_HOOKS}
        parent = model.get_submodule(hook)
        for name, hp in self.points.items():
            if hasattr(parent, name):
                raise VisionLensError(f"{hook} already has a dictionary spliced in (unsplice it first).")
            parent.add_module(name, hp)
        model.setup()
        model.add_hook(hook, self, is_permanent=True)

    @property
    def names(self) -> dict[str, str]:
        return {name: f"{self.hook}.{name}" for name in SAE_HOOKS}

    def __call__(self, act: Tensor, hook: Any) -> Tensor:
        p = self.points
        d = self.dictionary.to(act.device)
        x = fire(p["hook_sae_input"], act)
        b, layout = int(x.shape[0]), layout_of(x)
        vec, pos = to_vectors(self.hook, x)
        shape = lambda v: from_vectors(v, b, pos, layout).to(act.dtype)  # noqa: E731
        pre, codes = d.encode(vec)
        fire(p["hook_sae_acts_pre"], shape(pre))
        acts_in = shape(codes)
        acts = fire(p["hook_sae_acts"], acts_in)
        clean_recons = shape(d.decode(codes))
        if acts is acts_in:
            recons = clean_recons
        else:
            nb = int(acts.shape[0])
            recons = from_vectors(d.decode(to_vectors(self.hook, acts)[0]), nb, pos, layout).to(act.dtype)
        recons = fire(p["hook_sae_recons"], recons)
        out = recons
        if self.use_error:
            err = fire(p["hook_sae_error"], x - clean_recons)
            out = recons + _fit_batch(err, int(recons.shape[0]))
        return fire(p["hook_sae_output"], out)

    def remove(self) -> None:
        """Take the dictionary out: the permanent hook and the ``hook_sae_*`` points."""
        hp = self.model.hook_dict.get(self.hook)
        if hp is not None:
            for handle in [h for h in hp.fwd_hooks if h.user_hook is self]:
                handle.hook.remove()
                hp.fwd_hooks.remove(handle)
            hp.remove_hooks("fwd", level=-1)  # removes nothing (no context has level -1); resyncs a bridge
        parent = self.model.get_submodule(self.hook)
        for name in SAE_HOOKS:
            if name in parent._modules:
                del parent._modules[name]
        self.model.setup()
        _registry(self.model).pop(self.hook, None)


def _registry(model: HookedVisionModel) -> dict:
    reg = model.__dict__.get("_visionlens_splices")
    if reg is None:
        reg = {}
        model.__dict__["_visionlens_splices"] = reg
    return reg


def splices_of(model: HookedVisionModel) -> dict[str, Splice]:
    """``{hook: Splice}`` of the dictionaries spliced into ``model``."""
    return dict(_registry(model))


def splice(
    model: HookedVisionModel, dictionary: SparseDictionary, hook: Optional[str] = None, use_error: bool = False
) -> Splice:
    """Splice ``dictionary`` into ``model`` at ``hook`` (default: the hook in its card) until :func:`unsplice`."""
    hook = model.resolve_hook(hook or dictionary.card.get("hook") or "")
    if hook in _registry(model):
        raise VisionLensError(f"{hook} already has a dictionary spliced in (unsplice it first).")
    with torch.no_grad():
        args, kwargs = _example(model)
        _, cache = model.run_with_cache(*args, names_filter=[hook], return_cache_object=False, **kwargs)
    d = to_vectors(hook, cache[hook])[0].shape[-1]
    if d != dictionary.d_in:
        raise VisionLensError(f"The dictionary reads {dictionary.d_in} units, {hook} has {d}.")
    s = Splice(model, hook, dictionary, use_error)
    _registry(model)[hook] = s
    return s


def _example(model: HookedVisionModel) -> tuple[tuple, dict]:
    ex = model.adapter.example_inputs(batch=1)
    return (tuple(ex[0]), dict(ex[1])) if ex is not None else ((model.dummy_input(batch=1),), {})


def unsplice(model: HookedVisionModel, hook: Optional[str] = None) -> None:
    """Remove the dictionary at ``hook`` (every spliced dictionary when ``hook`` is None)."""
    reg = _registry(model)
    hooks = list(reg) if hook is None else [model.resolve_hook(hook)]
    for h in hooks:
        if h not in reg:
            raise VisionLensError(f"No dictionary is spliced at {h}; spliced: {sorted(reg) or 'none'}.")
        reg[h].remove()


@contextlib.contextmanager
def spliced(
    model: HookedVisionModel, dictionary: SparseDictionary, hook: Optional[str] = None, use_error: bool = False
) -> Iterator[Splice]:
    """``with spliced(model, d): ...`` -- the dictionary is in the forward inside the block, out after it."""
    s = splice(model, dictionary, hook, use_error)
    try:
        yield s
    finally:
        s.remove()
