"""Running an analysis: :func:`run` (also ``visionlens.run`` and ``model.analyze``).

The analysis comes from the plugin registry; its config is validated; the model may be a
:class:`HookedVisionModel`, a plain ``nn.Module`` or a spec string. Hooks an analysis attaches never
outlive the call, also after an exception.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from torch import nn

from . import hooked_model
from .analysis import analysis_config_class, make_config
from .hooked_model import HookedVisionModel
from .loading import load
from .registry import get_analysis
from .validation import VisionLensError

__all__ = ["run", "register_backend", "backends"]

# name -> fn(name, model, inputs, address=..., **config); "local" is this module's own loop
_BACKENDS: dict[str, Callable[..., Any]] = {}
# built-in backends, imported by name on first use (like the registry's plugins) so `import visionlens` stays light
_BACKEND_MODULES = {"ray": "visionlens.scale.ray_backend"}


def register_backend(name: str, fn: Callable[..., Any]) -> None:
    """Make ``run(..., backend=name)`` call ``fn(analysis_name, model, inputs, address=..., **config)``."""
    if name == "local":
        raise ValueError("'local' is the built-in backend")
    _BACKENDS[name] = fn


def backends() -> list[str]:
    """Backend names ``run`` accepts."""
    return ["local", *sorted(set(_BACKENDS) | set(_BACKEND_MODULES))]


def _supports(analysis: Any, model: Any) -> tuple[bool, str]:
    res = analysis.supports(model)
    if isinstance(res, tuple):
        ok, reason = bool(res[0]), str(res[1]) if len(res) > 1 else ""
    else:
        ok, reason = bool(res), ""
    return ok, reason


def _hook_snapshot(model: Any) -> dict[str, set[int]]:
    snap: dict[str, set[int]] = {}
    for name, hp in getattr(model, "hook_dict", {}).items():
        snap[name] = {id(h) for h in list(hp.fwd_hooks) + list(hp.bwd_hooks)}
    return snap


def _remove_new_hooks(model: Any, snapshot: dict[str, set[int]]) -> None:
    """Remove non-permanent hooks an analysis attached and left behind (the user's own stay)."""
    for name, hp in getattr(model, "hook_dict", {}).items():
        before = snapshot.get(name, set())
        changed = False
        for attr in ("fwd_hooks", "bwd_hooks"):
            keep = []
            for h in getattr(hp, attr):
                if id(h) in before or h.is_permanent:
                    keep.append(h)
                else:
                    h.hook.remove()
                    changed = True
            setattr(hp, attr, keep)
        if changed:
            notify = getattr(hp, "_notify", None)  # bridged points drop their source-module hook
            if callable(notify):
                notify()


def run(name: str, model: Any, inputs: Any = None, **config: Any) -> Any:
    """Run analysis ``name`` on ``model`` over ``inputs`` with config values ``**config``.

    ``model`` is a :class:`HookedVisionModel`, a plain ``nn.Module`` (wrapped with
    ``from_module``) or a spec string (``"timm:resnet18"``). ``inputs`` is anything
    :func:`visionlens.data.as_images` accepts (tensor batch, images, paths, folder, ``"builtin"``).
    Config values are validated against the analysis's ``Config`` (unknown keys, wrong types and
    out-of-range values raise :class:`visionlens.analysis.ConfigError`). Hooks the analysis
    attaches never outlive the call, also after an exception. ``backend``: ``"local"`` (this process) or
    a registered one such as ``"ray"``; ``address``: the cluster of a distributed backend (both are
    keywords of ``run`` itself, never passed to the analysis config).
    """
    backend: str = config.pop("backend", "local")
    address: Optional[str] = config.pop("address", None)
    if backend != "local":
        if backend not in _BACKENDS and backend in _BACKEND_MODULES:
            importlib.import_module(_BACKEND_MODULES[backend])  # registers itself
        if backend not in _BACKENDS:
            raise VisionLensError(
                f"Unknown backend {backend!r}; expected one of {', '.join(backends())} "
                "('ray' needs pip install 'visionlens[ray]')."
            )
        return _BACKENDS[backend](name, model, inputs, address=address, **config)
    if address is not None:
        raise VisionLensError(f"address={address!r} needs a distributed backend (backend='ray').")
    analysis = get_analysis(name)
    cfg = make_config(analysis_config_class(analysis), config, owner=name)
    if isinstance(model, str):
        model = load(model)
    elif isinstance(model, nn.Module) and not isinstance(model, HookedVisionModel):
        model = HookedVisionModel.from_module(model)
    if not isinstance(model, HookedVisionModel):
        raise VisionLensError(
            f"Expected a HookedVisionModel, an nn.Module or a model spec string for analysis "
            f"{name!r}, got {type(model).__name__}."
        )
    ok, reason = _supports(analysis, model)
    if not ok:
        arch = model.cfg.architecture or model.cfg.family
        raise VisionLensError(
            f"Analysis {name!r} does not support {arch} (adapter {model.cfg.adapter!r}): "
            f"{reason or 'unsupported model'}."
        )
    snapshot = _hook_snapshot(model)
    try:
        return analysis.run(model, inputs, cfg)
    finally:
        _remove_new_hooks(model, snapshot)


hooked_model.set_analysis_runner(run)
