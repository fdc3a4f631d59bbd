"""Registers the built-in adapters through the same plugin hook a third-party package uses."""

from __future__ import annotations

import importlib

from visionlens.hookspecs import hookimpl

# module -> adapter class names; each family lives in its own module.
BUILTIN_ADAPTERS = {
    "visionlens.adapters.timm_vit": ["TimmViTAdapter"],
    "visionlens.adapters.generic": ["GenericAdapter"],
}


@hookimpl
def visionlens_register_adapters() -> list[type]:
    classes = []
    for module_name, names in BUILTIN_ADAPTERS.items():
        module = importlib.import_module(module_name)
        classes.extend(getattr(module, n) for n in names)
    return classes


@hookimpl
def visionlens_register_model_specs() -> list[tuple[str, object]]:
    from visionlens import loading

    return [("timm", loading.load_timm), ("torchvision", loading.load_torchvision)]
