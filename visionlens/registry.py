"""The plugin manager: loads the ``visionlens`` entry-point group and collects what plugins provide.

A plugin that fails to import or whose hook raises is recorded in :func:`plugin_errors` (by
name) and skipped; the other plugins keep working.
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

_pm: Optional[pluggy.PluginManager] = None
_errors: dict[str, str] = {}


def plugin_manager(reload: bool = False) -> pluggy.PluginManager:
    """The process-wide plugin manager (entry points loaded once, lazily)."""
    global _pm
    if _pm is not None and not reload:
        return _pm
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    _errors.clear()
    for ep in _entry_points():
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the others
            _record(ep.name, f"failed to import {ep.value}: {type(exc).__name__}: {exc}")
            continue
        if pm.is_registered(plugin) or pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(plugin, name=ep.name)
        except Exception as exc:
            _record(ep.name, f"failed to register: {type(exc).__name__}: {exc}")
    for modname in BUILTIN_PLUGINS:  # source checkouts without installed metadata
        module = importlib.import_module(modname)
        if not pm.is_registered(module):
            pm.register(module, name=modname)
    _pm = pm
    return pm


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=hookspecs.PROJECT))


def _record(name: str, message: str) -> None:
    _errors[name] = message
    warnings.warn(f"visionlens plugin {name!r} is broken and was skipped: {message}", RuntimeWarning, stacklevel=3)


def plugin_errors() -> dict[str, str]:
    """``{plugin name: what went wrong}`` for plugins that could not be loaded or queried."""
    plugin_manager()
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
