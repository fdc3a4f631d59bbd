"""The zoo's built-in plugin: the zoo's models, the ``zoo:`` model spec, the transfer techniques, and the
``zoo`` / ``bench`` commands.

Registered like a third-party plugin (listed in :data:`visionlens.registry.BUILTIN_PLUGINS`). Importing
it registers the built-in entries in the catalogue (:mod:`visionlens.zoo.catalog`), in catalogue order:
the classifiers, the CLIP, the style judge, the diffusion model.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from ..hookspecs import hookimpl
from . import (
    classifiers,
    clip_glyph_model,
    clip_model,
    clip_vit_model,
    curve_model,
    dictionary_transfer,
    diffusion_model,
    techniques_captum,
    techniques_circuits,
    techniques_clip,
    techniques_curve,
    techniques_features,
    techniques_localization,
    techniques_mechanisms,
    techniques_unit_fv,
)
from .catalog import load_spec, register
from .cli import add_zoo_subcommands

__all__ = ["visionlens_register_model_specs", "visionlens_register_transfer_techniques", "visionlens_register_commands"]

BUILTIN_ENTRIES = (
    *classifiers.ENTRIES,
    *clip_model.ENTRIES,
    *diffusion_model.ENTRIES,
    *curve_model.ENTRIES,
    *clip_glyph_model.ENTRIES,
    *clip_vit_model.ENTRIES,
)
for _entry in BUILTIN_ENTRIES:
    register(_entry)


@hookimpl
def visionlens_register_model_specs() -> List[Tuple[str, Any]]:
    """``visionlens.load("zoo:NAME")``: the trained zoo model (``pretrained="random"``: untrained)."""
    return [("zoo", load_spec)]


@hookimpl
def visionlens_register_transfer_techniques() -> List[Any]:
    """The built-in techniques of ``visionlens bench transfer``, in table order."""
    return [
        *techniques_localization.TECHNIQUES,
        *techniques_captum.TECHNIQUES,
        *techniques_features.TECHNIQUES,
        *techniques_mechanisms.TECHNIQUES,
        *techniques_unit_fv.TECHNIQUES,
        *techniques_circuits.TECHNIQUES,
        *dictionary_transfer.TECHNIQUES,
        *techniques_clip.TECHNIQUES,
        *techniques_curve.TECHNIQUES,
    ]


@hookimpl
def visionlens_register_commands(subparsers: Any) -> None:
    """``visionlens zoo list|train`` and ``visionlens bench transfer``."""
    add_zoo_subcommands(subparsers)
