"""visionlens: mechanistic interpretability for image models, as a TransformerLens companion.

>>> import visionlens
>>> model = visionlens.load("timm:vit_tiny_patch16_224")
>>> logits, cache = model.run_with_cache(model.dummy_input())
>>> cache["blocks.0.attn.hook_pattern"].shape
torch.Size([1, 3, 197, 197])
"""

from __future__ import annotations

from . import tl_compat as _tl_compat

_tl_compat.install()

from .cache import VisionActivationCache  # noqa: E402
from .config import VisionConfig  # noqa: E402
from .hooked_model import HookedVisionModel  # noqa: E402
from .hookspecs import hookimpl, hookspec  # noqa: E402
from .loading import load  # noqa: E402
from .registry import get_analysis, list_analyses, plugin_errors  # noqa: E402
from .runner import run  # noqa: E402
from .units import Unit, parse_unit  # noqa: E402
from .validation import RandomWeightsWarning, UnknownHookError, VisionLensError  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "HookedVisionModel",
    "VisionActivationCache",
    "VisionConfig",
    "VisionLensError",
    "RandomWeightsWarning",
    "UnknownHookError",
    "Unit",
    "parse_unit",
    "load",
    "hookimpl",
    "hookspec",
    "list_analyses",
    "get_analysis",
    "plugin_errors",
    "run",
    "__version__",
]
