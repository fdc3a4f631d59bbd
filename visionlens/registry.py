"""The plugin manager: loads the ``visionlens`` entry-point group and collects what plugins provide.

A plugin that fails to import, whose hook raises, or that provides a malformed analysis is
recorded in :func:`plugin_errors` (by name) and skipped; the other plugins keep working.

Analyses: :func:`list_analyses`, :func:`get_analysis`, :func:`run` (also ``model.analyze``).
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import warnings
from typing import Any, Optional

import pluggy

from . import hookspecs

log = logging.getLogger(__name__)

BUILTIN_PLUGINS = ("visionlens.adapters.builtin",)
# Also advertised as entry points; registered directly only when package metadata is missing.
BUILTIN_ANALYSIS_PLUGINS = {
    "activation_stats": "visionlens.plugins.activation_stats",
    "feature_visualization": "visionlens.plugins.feature_visualization",
    "dataset_examples": "visionlens.plugins.dataset_examples",
    "weights": "visionlens.plugins.weights",
    "direct_logit_attribution": "visionlens.plugins.direct_logit_attribution",
    "attention_patterns": "visionlens.plugins.attention_patterns",
    "activation_patching": "visionlens.plugins.activation_patching",
    "causal_scrubbing": "visionlens.plugins.causal_scrubbing",
    "style_neuron_search": "visionlens.plugins.style_neuron_search",
    "timestep_sweep": "visionlens.plugins.timestep_sweep",
}

_pm: Optional[pluggy.PluginManager] = None
_errors: dict[str, str] = {}
_analyses: Optional[dict[str, Any]] = None
_origins: dict[str, str] = {}


def plugin_manager(reload: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager (entry points loaded once, lazily)."""
    global _pm, _analyses
    if _pm is not None and not reload:
        return _pm
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _errors.clear()
    _analyses = None
    _origins.clear()
    if reload:
        importlib.invalidate_caches()
    for ep in _entry_points():
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a broken third-party plugin must not break the others
            _record(ep.name, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
            continue
        if pm.is_registered(plugin):
            continue
        name = ep.name
        if pm.get_plugin(name) is not None:  # two packages chose the same entry-point name: keep both
            dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value
            name = f"{ep.name} ({dist})"
        try:
            pm.register(plugin, name=name)
        except Exception as exc:
            _record(name, f"failed to register: {type(exc).__name__}: {exc}")
    for modname in BUILTIN_PLUGINS:  # source checkouts without installed metadata
        module = importlib.import_module(modname)
        if not pm.is_registered(module):
            pm.register(module, name=modname)
    for name, modname in BUILTIN_ANALYSIS_PLUGINS.items():
        if pm.get_plugin(name) is not None or name in _errors:
            continue
        try:
            module = importlib.import_module(modname)
        except Exception as exc:
            _record(name, f"failed to import {modname}: {type(exc).__name__}: {exc}")
            continue
        if not pm.is_registered(module):
            pm.register(module, name=name)
    _pm = pm
    return pm


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=hookspecs.PROJECT))


def _record(name: str, message: str) -> None:
    previous = _errors.get(name)
    if previous is not None and message in previous:
        return
    _errors[name] = message if previous is None else f"{previous}; {message}"
    warnings.warn(f"visionlens plugin {name!r} is broken and was skipped: {message}", RuntimeWarning, stacklevel=3)


def plugin_errors() -> dict[str, str]:
    """``{plugin name: what went wrong}`` for plugins that could not be loaded, queried, or that
    provided malformed analyses."""
    plugin_manager()
    collect_analyses()
    return dict(_errors)


def _collect(hook_name: str) -> list[tuple[str, Any]]:
    """Call a registration hook on every plugin separately, so one failure stays contained."""
    pm = plugin_manager()
    items: list[tuple[str, Any]] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            provided = impl.function() or []
        except Exception as exc:
            _record(name, f"{hook_name} raised {type(exc).__name__}: {exc}")
            continue
        items.extend((name, item) for item in provided)
    return items


def collect_adapters() -> list[type]:
    seen: dict[str, type] = {}
    for _, cls in _collect("visionlens_register_adapters"):
        seen.setdefault(cls.name, cls)
    return list(seen.values())


def collect_model_specs() -> dict[str, Any]:
    return {prefix: loader for _, (prefix, loader) in _collect("visionlens_register_model_specs")}


def collect_objectives() -> dict[str, Any]:
    return {prefix: factory for _, (prefix, factory) in _collect("visionlens_register_objectives")}


# ----------------------------------------------------------------------------- analyses
_REQUIRED = ("name", "summary", "run", "supports")


def _analysis_problem(obj: Any) -> Optional[str]:
    missing = [a for a in _REQUIRED if not hasattr(obj, a)]
    if missing:
        return f"provided {obj!r} without {', '.join(missing)} (an analysis needs name, summary, Config, supports, run)"
    if not isinstance(obj.name, str) or not obj.name.strip():
        return f"provided an analysis with an invalid name {obj.name!r}"
    cfg = getattr(obj, "Config", None)
    if cfg is not None:
        import dataclasses

        if not dataclasses.is_dataclass(cfg):
            return f"analysis {obj.name!r} has a Config that is not a dataclass"
    return None


def collect_analyses() -> dict[str, Any]:
    """``{name: analysis object}`` from every plugin (classes are instantiated once)."""
    global _analyses
    plugin_manager()
    if _analyses is not None:
        return _analyses
    pm = plugin_manager()
    builtin = {pm.get_name(p) for p in pm.get_plugins() if getattr(p, "__name__", "").startswith("visionlens.")}
    # built-in analyses claim their names first, whatever the entry-point order
    items = sorted(_collect("visionlens_register_analyses"), key=lambda it: it[0] not in builtin)
    found: dict[str, Any] = {}
    for plugin_name, item in items:
        try:
            obj = item() if isinstance(item, type) else item
        except Exception as exc:
            _record(plugin_name, f"could not instantiate analysis {item!r}: {type(exc).__name__}: {exc}")
            continue
        problem = _analysis_problem(obj)
        if problem:
            _record(plugin_name, problem)
            continue
        if obj.name in found:
            _record(plugin_name, f"analysis name {obj.name!r} is already provided by plugin {_origins[obj.name]!r}; "
                                 "this one was skipped")
            continue
        found[obj.name] = obj
        _origins[obj.name] = plugin_name
    _analyses = dict(sorted(found.items()))
    return _analyses


def list_analyses() -> dict[str, str]:
    """``{name: one-line summary}`` of every available analysis, sorted by name."""
    return {name: str(a.summary) for name, a in collect_analyses().items()}


def analysis_origin(name: str) -> str:
    """The plugin (entry-point name) that provides analysis ``name``."""
    collect_analyses()
    return _origins.get(name, "")


def get_analysis(name: str) -> Any:
    """The analysis object called ``name``; unknown names raise with the closest available names."""
    from .validation import VisionLensError, closest_names

    analyses = collect_analyses()
    if name in analyses:
        return analyses[name]
    close = closest_names(name, analyses)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    broken = [n for n in _errors if n == name]
    extra = f" A plugin named {name!r} is installed but broken: {_errors[name]}" if broken else ""
    raise VisionLensError(f"Unknown analysis {name!r}.{hint} Available analyses: "
                          f"{', '.join(analyses) or '(none)'}.{extra}")


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
    attaches never outlive the call, also after an exception.
    """
    from torch import nn

    from .analysis import analysis_config_class, make_config
    from .hooked_model import HookedVisionModel
    from .validation import VisionLensError

    analysis = get_analysis(name)
    cfg = make_config(analysis_config_class(analysis), config, owner=name)
    if isinstance(model, str):
        from .loading import load

        model = load(model)
    elif isinstance(model, nn.Module) and not isinstance(model, HookedVisionModel):
        model = HookedVisionModel.from_module(model)
    if not isinstance(model, HookedVisionModel):
        raise VisionLensError(f"Expected a HookedVisionModel, an nn.Module or a model spec string for analysis "
                              f"{name!r}, got {type(model).__name__}.")
    ok, reason = _supports(analysis, model)
    if not ok:
        arch = model.cfg.architecture or model.cfg.family
        raise VisionLensError(f"Analysis {name!r} does not support {arch} (adapter {model.cfg.adapter!r}): "
                              f"{reason or 'unsupported model'}.")
    snapshot = _hook_snapshot(model)
    try:
        return analysis.run(model, inputs, cfg)
    finally:
        _remove_new_hooks(model, snapshot)


def collect_transfer_techniques() -> list[tuple[str, Any]]:
    """``(plugin name, technique)`` pairs contributed through ``visionlens_register_transfer_techniques``."""
    out = []
    for plugin_name, item in _collect("visionlens_register_transfer_techniques"):
        try:
            obj = item() if isinstance(item, type) else item
        except Exception as exc:
            _record(plugin_name, f"could not instantiate technique {item!r}: {type(exc).__name__}: {exc}")
            continue
        missing = [a for a in ("name", "supports", "score") if not hasattr(obj, a)]
        if missing:
            _record(plugin_name, f"technique {obj!r} lacks {', '.join(missing)}")
            continue
        out.append((plugin_name, obj))
    return out
