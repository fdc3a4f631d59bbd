"""Feature visualization (Lucid-style) for any :class:`visionlens.HookedVisionModel`.

>>> import visionlens, visionlens.featurevis as fv
>>> model = visionlens.load("timm:resnet18")
>>> r = fv.render(model, ["layer3:1", "layer3:2"], steps=64, size=64, progress=False)
>>> r.images.shape, r.curves.shape           # (2, 3, 64, 64), (2, 64)
>>> obj = fv.channel("layer3", 1) - 1e2 * fv.diversity("layer3")
>>> r = fv.render(model, obj, images_per_objective=4, steps=64, size=64)

See ``docs/feature_visualization.md``.
"""

from __future__ import annotations

from .objectives import (
    L1,
    OUTPUT,
    AttentionHead,
    Blur,
    Channel,
    ClassLogit,
    Custom,
    Direction,
    Diversity,
    Neuron,
    Objective,
    TotalVariation,
    as_objectives,
    attention_head,
    blur,
    channel,
    class_logit,
    custom,
    direction,
    diversity,
    l1,
    neuron,
    objective,
    text_direction,
    total_variation,
)
from .param import (
    COLOR_CORRELATION_NORMALIZED,
    COLOR_CORRELATION_SVD_SQRT,
    CPPNImage,
    FFTImage,
    ImageParam,
    PixelImage,
    make_param,
)
from .render import Rendering, evaluate, model_input_size, render, to_model_input
from .transforms import (
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    Resize,
    Transform,
    make_transforms,
    scaled_transforms,
    standard_transforms,
)

__all__ = [
    "render",
    "Rendering",
    "evaluate",
    "model_input_size",
    "to_model_input",
    "Objective",
    "Channel",
    "Neuron",
    "Direction",
    "ClassLogit",
    "AttentionHead",
    "Diversity",
    "L1",
    "TotalVariation",
    "Blur",
    "Custom",
    "OUTPUT",
    "channel",
    "neuron",
    "direction",
    "class_logit",
    "attention_head",
    "text_direction",
    "diversity",
    "l1",
    "total_variation",
    "blur",
    "custom",
    "objective",
    "as_objectives",
    "ImageParam",
    "PixelImage",
    "FFTImage",
    "CPPNImage",
    "make_param",
    "COLOR_CORRELATION_SVD_SQRT",
    "COLOR_CORRELATION_NORMALIZED",
    "Transform",
    "Pad",
    "Jitter",
    "RandomScale",
    "RandomRotate",
    "Resize",
    "Compose",
    "standard_transforms",
    "scaled_transforms",
    "make_transforms",
]
