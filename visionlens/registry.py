"""The plugin manager: every plugin, built-in or third-party, registers through the same hookspecs.

Built-in plugin modules are listed once, in :data:`BUILTIN_PLUGINS`; third-party packages are
found through the ``visionlens`` entry-point group. A plugin that fails to import, whose hook
raises, or that provides a malformed analysis is recorded in :func:`plugin_errors` (by name) and
skipped; the other plugins keep working.

This module is in the base layer: it imports plugin modules by name only, so it never depends on
what they contain. Running an analysis (which needs models) is :func:`visionlens.runner.run`.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import logging
import warnings
from typing import Any, Optional

import pluggy

from . import hookspecs
from .validation import VisionLensError, closest_names

log = logging.getLogger(__name__)

# The one list of built-in plugin modules. Each is registered exactly like a third-party plugin
# (same hookspecs); adding a built-in analysis, adapter module or command is one line here.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "visionlens.adapters.builtin",  # model-family adapters
    "visionlens.loading",  # model specs: timm:, torchvision:, open_clip:, diffusers:
    "visionlens.plugins.activation_stats",
    "visionlens.plugins.feature_visualization",
    "visionlens.plugins.dataset_examples",
    "visionlens.plugins.weights",
    "visionlens.plugins.facets",
    "visionlens.plugins.direct_logit_attribution",
    "visionlens.plugins.attention_patterns",
    "visionlens.plugins.activation_patching",
    "visionlens.plugins.causal_scrubbing",
    "visionlens.plugins.style_neuron_search",
    "visionlens.plugins.timestep_sweep",
    "visionlens.plugins.circuits.tuning_curves",
    "visionlens.plugins.circuits.equivariance",
    "visionlens.plugins.circuits.circuit_surgery",
    "visionlens.plugins.circuits.phase_changes",
    "visionlens.plugins.circuits.curve_scrubbing",
    "visionlens.plugins.clip_attnpool_dla",
    "visionlens.plugins.clip_max_activating_text",
    "visionlens.plugins.clip_construction",
    "visionlens.plugins.clip_head_roles",
    "visionlens.plugins.clip_multimodal_neurons",
    "visionlens.microscope",  # the `microscope` command
    "visionlens.zoo.plugin",  # zoo: spec, transfer techniques, `zoo` and `bench` commands
)
_ANALYSIS_PACKAGE = "visionlens.plugins."


def builtin_plugin_name(module_name: str) -> str:
    """The registered name of a built-in plugin module (analysis plugins go by their short name)."""
    return module_name.removeprefix(_ANALYSIS_PACKAGE)


_pm: Optional[pluggy.PluginManager] = None
_errors: dict[str, str] = {}
_analyses: Optional[dict[str, Any]] = None
_analyses_key: frozenset[int] = frozenset()  # which plugins the cached analyses came from
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
    for modname in BUILTIN_PLUGINS:
        name = builtin_plugin_name(modname)
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:  # an optional library of this plugin is not installed
            if exc.name and not exc.name.startswith("visionlens"):
                log.debug("built-in plugin %s skipped: %s", modname, exc)
                continue
            raise
        except Exception as exc:
            record_error(name, f"failed to import {modname}: {type(exc).__name__}: {exc}")
            continue
        if not pm.is_registered(module):
            pm.register(module, name=name)
    for ep in _entry_points():
        if ep.value in BUILTIN_PLUGINS:  # an old install's metadata may still advertise built-ins
            continue
        try:
            plugin = ep.load()
        except (Exception, SystemExit) as exc:  # a broken third-party plugin must not break the others
            record_error(ep.name, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
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
            record_error(name, f"failed to register: {type(exc).__name__}: {exc}")
    _pm = pm
    return pm


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=hookspecs.PROJECT))


def record_error(name: str, message: str) -> None:
    """Record that plugin ``name`` is broken (shown by :func:`plugin_errors` and ``visionlens plugins``)."""
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
            record_error(name, f"{hook_name} raised {type(exc).__name__}: {exc}")
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
        if not dataclasses.is_dataclass(cfg):
            return f"analysis {obj.name!r} has a Config that is not a dataclass"
    return None


def collect_analyses() -> dict[str, Any]:
    """``{name: analysis object}`` from every plugin (classes are instantiated once)."""
    global _analyses, _analyses_key
    pm = plugin_manager()
    key = frozenset(id(p) for p in pm.get_plugins())
    if _analyses is not None and key == _analyses_key:
        return _analyses  # recollected whenever a plugin is registered or unregistered
    builtin = {pm.get_name(p) for p in pm.get_plugins() if getattr(p, "__name__", "").startswith("visionlens.")}
    # built-in analyses claim their names first, whatever the entry-point order
    items = sorted(_collect("visionlens_register_analyses"), key=lambda it: it[0] not in builtin)
    found: dict[str, Any] = {}
    for plugin_name, item in items:
        try:
            obj = item() if isinstance(item, type) else item
        except Exception as exc:
            record_error(plugin_name, f"could not instantiate analysis {item!r}: {type(exc).__name__}: {exc}")
            continue
        problem = _analysis_problem(obj)
        if problem:
            record_error(plugin_name, problem)
            continue
        if obj.name in found:
            record_error(
                plugin_name,
                f"analysis name {obj.name!r} is already provided by plugin {_origins[obj.name]!r}; "
                "this one was skipped",
            )
            continue
        found[obj.name] = obj
        _origins[obj.name] = plugin_name
    _analyses = dict(sorted(found.items()))
    _analyses_key = key
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
    analyses = collect_analyses()
    if name in analyses:
        return analyses[name]
    close = closest_names(name, analyses)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    broken = [n for n in _errors if n == name]
    extra = f" A plugin named {name!r} is installed but broken: {_errors[name]}" if broken else ""
    raise VisionLensError(
        f"Unknown analysis {name!r}.{hint} Available analyses: {', '.join(analyses) or '(none)'}.{extra}"
    )


def collect_transfer_techniques() -> list[tuple[str, Any]]:
    """``(plugin name, technique)`` pairs contributed through ``visionlens_register_transfer_techniques``."""
    out = []
    for plugin_name, item in _collect("visionlens_register_transfer_techniques"):
        try:
            obj = item() if isinstance(item, type) else item
        except Exception as exc:
            record_error(plugin_name, f"could not instantiate technique {item!r}: {type(exc).__name__}: {exc}")
            continue
        missing = [a for a in ("name", "supports", "score") if not hasattr(obj, a)]
        if missing:
            record_error(plugin_name, f"technique {obj!r} lacks {', '.join(missing)}")
            continue
        out.append((plugin_name, obj))
    return out


def register_commands(subparsers: Any) -> None:
    """Let every plugin add its subcommands to the ``visionlens`` CLI (``visionlens_register_commands``).

    A plugin whose hook raises is recorded in :func:`plugin_errors`; the other commands stay.
    """
    pm = plugin_manager()
    for impl in pm.hook.visionlens_register_commands.get_hookimpls():
        name = pm.get_name(impl.plugin) or repr(impl.plugin)
        try:
            impl.function(subparsers=subparsers)
        except Exception as exc:
            record_error(name, f"visionlens_register_commands raised {type(exc).__name__}: {exc}")
