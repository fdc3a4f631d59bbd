"""Registers the built-in adapters through the same plugin hook a third-party package uses.

Adding a family: its own module plus one line in :data:`BUILTIN_ADAPTERS`.
"""

from __future__ import annotations

import importlib

from visionlens.hookspecs import hookimpl

# module -> adapter class names; each family lives in its own module.
BUILTIN_ADAPTERS = {
    "visionlens.adapters.timm_vit": ["TimmViTAdapter"],
    "visionlens.adapters.resnet": ["ResNetAdapter"],
    "visionlens.adapters.convnext": ["ConvNeXtAdapter"],
    "visionlens.adapters.mobilenet": ["MobileNetV2Adapter"],
    "visionlens.adapters.inception": ["GoogLeNetAdapter", "LucidInceptionV1Adapter"],
    "visionlens.adapters.open_clip": ["OpenCLIPAdapter"],
    "visionlens.adapters.diffusers_unet": ["UNetAdapter"],
    "visionlens.adapters.generic": ["GenericAdapter"],
}


@hookimpl
def visionlens_register_adapters() -> list[type]:
    classes: list[type] = []
    for module_name, names in BUILTIN_ADAPTERS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:  # families whose optional library is not installed
            if exc.name == module_name or (exc.name and not exc.name.startswith("visionlens")):
                continue
            raise
        classes.extend(getattr(module, n) for n in names)
    return classes
