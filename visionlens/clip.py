"""CLIP helpers: encode images and texts through the hooks, similarity logits, zero-shot heads.

Every function takes a :class:`~visionlens.HookedVisionModel` built on an open_clip model
(``HookedVisionModel.from_open_clip`` / ``visionlens.load("open_clip:...")``). Text goes through
open_clip's own tokenizer (its BPE vocabulary ships with open_clip), and every tower runs
through the hooked code, so hooks attached with ``model.hooks(...)`` see these calls.

A :class:`ZeroShotHead` turns class names x prompt templates into one unit-norm text direction
per class. Attached to the model (the default), it is the model's set of "classes": ``model(images)``
then returns zero-shot logits ``[batch, n_classes]`` (``hook_logits``), ``model.cfg.n_classes`` /
``model.cfg.extra["class_names"]`` describe it, and ``cache.logit_attrs(stack, classes)`` projects
visual-tower components onto those class directions.

>>> head = zero_shot_head(model, ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."])
>>> logits, cache = model.run_with_cache(images)          # [batch, 2] zero-shot logits
>>> stack = cache.decompose_resid()                       # visual tower by default
>>> attrs = cache.logit_attrs(stack, classes=logits.argmax(-1))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .adapters.open_clip import OpenCLIPAdapter
from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

Template = Union[str, Callable[[str], str]]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

__all__ = [
    "ZeroShotHead",
    "zero_shot_head",
    "encode_image",
    "encode_text",
    "similarity",
    "tokenize",
    "zero_shot_logits",
    "DEFAULT_TEMPLATES",
    "both_towers_hooked",
]


def _adapter(model: HookedVisionModel) -> OpenCLIPAdapter:
    adapter = getattr(model, "adapter", None)
    if not isinstance(adapter, OpenCLIPAdapter):
        raise VisionLensError(
            f"Expected a HookedVisionModel wrapping an open_clip CLIP model, got "
            f"{type(model).__name__} with adapter {getattr(adapter, 'name', None)!r}."
        )
    return adapter


def both_towers_hooked(model: HookedVisionModel) -> tuple[bool, str]:
    """Whether ``model`` is an open_clip CLIP model with its text tower hooked too (an analysis ``supports``)."""
    adapter = getattr(model, "adapter", None)
    if getattr(adapter, "name", "") != "open_clip":
        return False, f"needs an open_clip CLIP model (both towers), got the {model.cfg.adapter!r} adapter"
    if getattr(adapter, "text", None) is None:
        return False, "this CLIP model's text tower is not hooked (no text.* hooks)"
    return True, ""


def tokenize(model: HookedVisionModel, texts: Union[str, Sequence[str]]) -> Tensor:
    """Token ids ``[batch, context_length]`` from the model's own open_clip tokenizer."""
    return _adapter(model).tokenize(texts)


def encode_image(model: HookedVisionModel, images: Tensor, normalize: bool = False) -> Tensor:
    """Image embeddings ``[batch, embed_dim]`` (``visual.*`` hooks fire)."""
    return _adapter(model).encode_image(images, normalize=normalize)


def encode_text(model: HookedVisionModel, texts: Any, normalize: bool = False) -> Tensor:
    """Text embeddings ``[batch, embed_dim]`` from strings or tokens (``text.*`` hooks fire)."""
    return _adapter(model).encode_text(texts, normalize=normalize)


def similarity(model: HookedVisionModel, images: Tensor, texts: Any) -> Tensor:
    """CLIP logits ``[n_images, n_texts]`` = logit scale x cosine similarity (+ logit bias)."""
    return model(images, texts)


@dataclass
class ZeroShotHead:
    """Class directions in CLIP's joint embedding space.

    ``weight``: ``[n_classes, embed_dim]``, each row the renormalized mean of the normalized text
    embeddings of that class's prompts. ``head(image_embeds)`` gives zero-shot logits
    ``logit_scale * cos(image, class) + logit_bias``.
    """

    weight: Tensor
    class_names: list[str]
    templates: list[str]
    logit_scale: float = 100.0
    logit_bias: Optional[float] = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, image_features: Tensor) -> Tensor:
        logits = self.logit_scale * F.normalize(image_features, dim=-1) @ self.weight.to(image_features).T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    def to(self, device: Any) -> "ZeroShotHead":
        self.weight = self.weight.to(device)
        return self

    def directions(self, classes: Any = None) -> Tensor:
        """Rows of ``weight`` (all, or the given class indices / names)."""
        if classes is None:
            return self.weight
        if isinstance(classes, str):
            classes = [classes]
        if isinstance(classes, (list, tuple)) and classes and isinstance(classes[0], str):
            missing = [c for c in classes if c not in self.class_names]
            if missing:
                raise VisionLensError(f"Unknown class names {missing}; this head has {self.class_names[:10]}...")
            classes = [self.class_names.index(c) for c in classes]
        return self.weight[torch.as_tensor(classes, device=self.weight.device)]


def _render(template: Template, name: str) -> str:
    if callable(template):
        return template(name)
    for slot in ("{}", "{c}"):
        if slot in template:
            return template.replace(slot, name)
    raise VisionLensError(f"Prompt template {template!r} has no '{{}}' placeholder for the class name.")


def zero_shot_head(
    model: HookedVisionModel,
    class_names: Sequence[str],
    templates: Optional[Sequence[Template]] = None,
    attach: bool = True,
    batch_size: int = 256,
) -> ZeroShotHead:
    """Build the zero-shot classifier for ``class_names`` x ``templates`` (open_clip's recipe).

    ``templates``: strings with ``{}`` for the class name, or callables ``name -> prompt`` (the
    form of ``open_clip.IMAGENET_CLASSNAMES``-style template lists); default ``"a photo of a {}."``.
    With ``attach`` (default) the head becomes the model's classes (see the module docstring).
    """
    adapter = _adapter(model)
    names = list(class_names)
    if not names or not all(isinstance(n, str) for n in names):
        raise VisionLensError("Expected class_names as a non-empty list of strings.")
    tmpl = list(templates) if templates is not None else list(DEFAULT_TEMPLATES)
    if not tmpl:
        raise VisionLensError("Expected at least one prompt template.")
    prompts = [_render(t, n) for n in names for t in tmpl]
    chunks = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunks.append(adapter.encode_text(prompts[i : i + batch_size], normalize=True))
    emb = torch.cat(chunks).view(len(names), len(tmpl), -1)
    weight = F.normalize(emb.mean(dim=1), dim=-1)
    src = model.source
    bias = getattr(src, "logit_bias", None)
    head = ZeroShotHead(
        weight=weight,
        class_names=names,
        templates=[t if isinstance(t, str) else getattr(t, "__name__", repr(t)) for t in tmpl],
        logit_scale=float(src.logit_scale.exp().detach()),
        logit_bias=float(bias.detach().reshape(-1)[0]) if bias is not None else None,
    )
    if attach:
        attach_head(model, head)
    return head


def attach_head(model: HookedVisionModel, head: Optional[ZeroShotHead]) -> None:
    """Make ``head`` the model's classes (``None`` detaches: ``model(images)`` returns embeddings again)."""
    adapter = _adapter(model)
    adapter.classifier = head
    model.cfg.n_classes = head.n_classes if head is not None else 0
    if head is not None:
        model.cfg.extra["class_names"] = list(head.class_names)
    else:
        model.cfg.extra.pop("class_names", None)


def zero_shot_logits(model: HookedVisionModel, images: Tensor, head: Optional[ZeroShotHead] = None) -> Tensor:
    """Zero-shot logits ``[batch, n_classes]`` of ``images`` under ``head`` (default: the attached one)."""
    adapter = _adapter(model)
    head = head if head is not None else adapter.classifier
    if head is None:
        raise VisionLensError("No zero-shot head: build one with zero_shot_head(model, class_names, templates).")
    return head(adapter.encode_image(images))


__all__ += ["attach_head"]
