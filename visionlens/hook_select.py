"""Choosing hooks by name, layer alias or glob, with clear errors (shared by the analyses)."""

from __future__ import annotations

import fnmatch
from typing import Any, Iterable

from .validation import VisionLensError, closest_names


def resolve_hooks(model: Any, specs: Iterable[str], owner: str = "") -> list[str]:
    """Expand hook names, layer aliases and globs (``blocks.*.hook_resid_post``) to hook names, in order."""
    from .analysis import ConfigError

    out: list[str] = []
    for spec in specs:
        if any(c in spec for c in "*?["):
            matched = [n for n in model.hook_dict if fnmatch.fnmatchcase(n, spec)]
            if not matched:
                close = closest_names(spec.replace("*", "0"), model.hook_dict)
                prefix = f"{owner}: " if owner else ""
                raise ConfigError(f"{prefix}hooks pattern {spec!r} matched no hook. Closest real names: "
                                  f"{', '.join(close) or 'none'}.")
        else:
            matched = [model.resolve_hook(spec)]
        out.extend(m for m in matched if m not in out)
    return out


def image_batch_support(model: Any) -> tuple[bool, str]:
    """``supports()`` for analyses that feed plain image batches through the model."""
    fam = (getattr(model.cfg, "family", "") or "").lower()
    if "unet" in fam or "diffusion" in fam:
        return False, "diffusion UNets need timestep and conditioning inputs, not an image batch alone"
    if not getattr(model, "hook_dict", None):
        return False, "the model has no hook points"
    return True, ""


__all__ = ["resolve_hooks", "image_batch_support", "fired_hooks", "VisionLensError"]


def fired_hooks(cache: Any, hooks: list[str], explicit: bool, owner: str) -> list[str]:
    """The requested hooks that a forward on an image batch reached (errors name the ones that did not)."""
    missing = [h for h in hooks if h not in cache]
    if missing and explicit:
        raise VisionLensError(f"{owner}: hook(s) {', '.join(missing)} did not fire on an image batch; choose hooks "
                              "on the image path (see `visionlens hooks SPEC`).")
    fired = [h for h in hooks if h in cache]
    if not fired:
        raise VisionLensError(f"{owner}: none of the hooks fired on an image batch.")
    return fired
