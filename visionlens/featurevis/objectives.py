"""Feature-visualization objectives: composable, batch-aware, and buildable from strings.

An :class:`Objective` maps activations to one value per image (higher is better)::

    obj(acts, image=None) -> Tensor[batch]

``acts`` is any mapping from hook names to activations with a batch dimension (the dict the
renderer captures, or a ``run_with_cache`` cache); ``image`` is the ``[batch, C, H, W]`` image in
``[0, 1]`` before transforms (used by the regularizers). Objectives compose like numbers::

    obj = fv.channel("mixed4a", 476) - 1e2 * fv.diversity("mixed4a") - 0.05 * fv.total_variation()

and :func:`objective` parses strings: ``"mixed4a:476"`` (a channel: mean over positions),
``"layer3:12@(3,4)"`` / ``"blocks.6.mlp.hook_post:123@5"`` (a neuron at a position / token),
``"neuron:mixed4a:476"`` (the centre neuron), ``"channel:..."``, ``"class:207"`` (a logit; a class
name works when the model knows its labels), ``"head:3:2@5"`` (ViT layer 3 head 2 at token 5),
``"diversity:mixed4a"``, ``"l1"``, ``"tv"``, ``"blur"``, plus any prefix a plugin registers through
``visionlens_register_objectives`` (``factory(model, spec) -> Objective``, given the whole string).

Sign conventions follow Lucid: :func:`diversity`, :func:`l1`, :func:`total_variation` and
:func:`blur` measure something to *reduce*, so subtract them (``obj - w * fv.l1()``). Unlike
Lucid, the image regularizers are means over pixels (not sums), so weights do not depend on size.

Unit layout follows :mod:`visionlens.units`: channels are axis 1 of conv maps ``[B, C, H, W]`` and
the last axis of token activations ``[B, pos, d]`` and of per-head hooks ``[B, pos, head, d]``.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.registry import collect_objectives
from visionlens.units import Unit, parse_unit
from visionlens.validation import VisionLensError

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
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
    "BUILTIN_PREFIXES",
    "OUTPUT",
]

OUTPUT = "output"  # pseudo-hook: the model's return value (for models without hook_logits)
_PER_HEAD = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")


# ----------------------------------------------------------------------------- helpers
def _lookup(acts: Mapping[str, Tensor], name: str) -> Tensor:
    try:
        return acts[name]
    except KeyError:
        pass
    for alt in (f"{name}.hook_out",):
        try:
            return acts[alt]
        except KeyError:
            continue
    keys = list(acts.keys()) if hasattr(acts, "keys") else []
    raise KeyError(
        f"Objective needs activation {name!r}, which is not among the captured activations "
        f"({', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}). Bind the objective to the model "
        "(objective.bind(model)) or cache that hook."
    )


def _resolve(model: Optional[HookedVisionModel], hook: str) -> str:
    if model is None or hook == OUTPUT:
        return hook
    return model.resolve_hook(hook)


def _is_per_head(hook: str, act: Tensor) -> bool:
    return act.ndim == 4 and hook.endswith(_PER_HEAD)


def _channels_last(hook: str, act: Tensor) -> Tensor:
    """``act`` as ``[B, positions..., units]`` (conv maps move channels last)."""
    if act.ndim == 4 and not _is_per_head(hook, act):
        return act.movedim(1, -1)
    return act


def _centre(hook: str, act: Tensor, model: Optional[HookedVisionModel]) -> tuple[int, ...]:
    """Lucid's centre neuron: ``(H // 2, W // 2)`` for conv maps, the centre patch token for tokens."""
    if act.ndim == 4 and not _is_per_head(hook, act):
        return (act.shape[2] // 2, act.shape[3] // 2)
    if act.ndim >= 3:
        n_pos = act.shape[1]
        npt = int(getattr(getattr(model, "cfg", None), "num_prefix_tokens", 0) or 0) if model is not None else 0
        if npt == 0 and model is None:
            # guess: a square patch grid plus prefix tokens
            for p in (0, 1, 2):
                side = int(round(math.sqrt(n_pos - p))) if n_pos > p else 0
                if side * side == n_pos - p:
                    npt = p
                    break
        side = int(round(math.sqrt(max(n_pos - npt, 0))))
        if side * side != n_pos - npt or side == 0:
            return (n_pos // 2,)
        return (npt + (side // 2) * side + side // 2,)
    return ()


def _as_vector(v: Any) -> Tensor:
    t = torch.as_tensor(v, dtype=torch.float32) if not isinstance(v, Tensor) else v.detach().float()
    if t.ndim != 1:
        t = t.reshape(-1)
    return t


# ----------------------------------------------------------------------------- base
class Objective:
    """Something to maximize: ``obj(acts, image=None) -> Tensor[batch]``.

    Subclasses implement :meth:`value`, list the hooks they read in :attr:`hooks` and say whether
    they need the image (:attr:`needs_image`). ``+``, ``-``, ``*`` / ``/`` by a number and unary
    ``-`` build new objectives; :meth:`bind` resolves layer aliases against a model.
    """

    name: str = "objective"
    hooks: tuple[str, ...] = ()
    needs_image: bool = False
    group_level: bool = False  # the value of an image depends on the other images of its group
    model: Optional[HookedVisionModel] = None

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        raise NotImplementedError

    def __call__(self, acts: Mapping[str, Tensor], image: Optional[Tensor] = None) -> Tensor:
        if self.needs_image and image is None:
            raise VisionLensError(f"Objective {self.name!r} needs the image (pass image=[batch, C, H, W] in [0, 1]).")
        return self.value(acts, image)

    def bind(self, model: Optional[HookedVisionModel]) -> "Objective":
        """A copy whose hook names are resolved on ``model`` (aliases like ``mixed4a`` or ``layer3``)."""
        return self

    # -- algebra
    def _terms(self) -> list[tuple[float, "Objective"]]:
        return [(1.0, self)]

    def __add__(self, other: Any) -> "Objective":
        if isinstance(other, Objective):
            return Sum(self._terms() + other._terms())
        if isinstance(other, numbers.Real):
            return Sum(self._terms(), float(other))
        return NotImplemented

    def __radd__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Real):
            return Sum(self._terms(), float(other))
        return NotImplemented

    def __neg__(self) -> "Objective":
        return self * -1.0

    def __sub__(self, other: Any) -> "Objective":
        if isinstance(other, (Objective, numbers.Real)):
            return self + (-other)
        return NotImplemented

    def __rsub__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Real):
            return (-self) + float(other)
        return NotImplemented

    def __mul__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return Sum([(c * float(other), t) for c, t in self._terms()], self._const() * float(other))
        if isinstance(other, Objective):
            raise TypeError("Objectives multiply by numbers only (a * 2.0); products of objectives are not supported.")
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Objective":
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self * (1.0 / float(other))
        return NotImplemented

    def _const(self) -> float:
        return 0.0

    def __repr__(self) -> str:
        return f"<Objective {self.name}>"

    def __str__(self) -> str:
        return self.name


class Sum(Objective):
    """A linear combination ``const + sum_i coef_i * term_i``."""

    terms: list[tuple[float, Objective]]
    const: float

    def __init__(self, terms: Sequence[tuple[float, Objective]], const: float = 0.0):
        merged: list[tuple[float, Objective]] = []
        for c, t in terms:
            if isinstance(t, Sum):
                merged.extend((c * c2, t2) for c2, t2 in t.terms)
                const += c * t.const
            else:
                merged.append((float(c), t))
        self.terms = merged
        self.const = float(const)
        self.hooks = tuple(dict.fromkeys(h for _, t in merged for h in t.hooks))
        self.needs_image = any(t.needs_image for _, t in merged)
        self.group_level = any(t.group_level for _, t in merged)
        self.name = _sum_name(merged, self.const)

    def _terms(self) -> list[tuple[float, Objective]]:
        return list(self.terms)

    def _const(self) -> float:
        return self.const

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, Objective):
            return Sum(self.terms + other._terms(), self.const + other._const())
        if isinstance(other, numbers.Real):
            return Sum(self.terms, self.const + float(other))
        return NotImplemented

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        total: Optional[Tensor] = None
        for c, t in self.terms:
            v = t(acts, image)
            v = v if c == 1.0 else c * v
            total = v if total is None else total + v
        if total is None:
            raise VisionLensError("An empty objective has no value.")
        return total + self.const if self.const else total

    def bind(self, model: Optional[HookedVisionModel]) -> Objective:
        return Sum([(c, t.bind(model)) for c, t in self.terms], self.const)


def _fmt(c: float) -> str:
    return f"{c:g}"


def _sum_name(terms: Sequence[tuple[float, Objective]], const: float) -> str:
    parts: list[str] = []
    for c, t in terms:
        sign = "-" if c < 0 else "+"
        mag = abs(c)
        body = t.name if mag == 1.0 else f"{_fmt(mag)}*{t.name}"
        parts.append(f"{sign} {body}")
    if const:
        parts.append(f"{'-' if const < 0 else '+'} {_fmt(abs(const))}")
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else ("-" + text[2:] if text.startswith("- ") else text)


# ----------------------------------------------------------------------------- activation objectives
class _HookObjective(Objective):
    hook: str

    def _copy_with(self, **changes: Any) -> "_HookObjective":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    def bind(self, model: Optional[HookedVisionModel]) -> Objective:
        hook = _resolve(model, self.hook)
        new = self._copy_with(hook=hook, hooks=(hook,), model=model)
        new.name = new._make_name()
        return new

    def _make_name(self) -> str:
        return self.name


class Channel(_HookObjective):
    """Mean over positions of one unit (Lucid's ``channel``): conv channel, token feature, vector entry."""

    def __init__(self, hook: str, index: int):
        self.hook, self.index = hook, int(index)
        self.hooks = (hook,)
        self.name = self._make_name()

    def _make_name(self) -> str:
        return f"{self.hook}:{self.index}"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _lookup(acts, self.hook)
        if a.ndim == 4 and not _is_per_head(self.hook, a):
            return a[:, self.index].mean(dim=(1, 2))
        a = a[..., self.index]
        return a.reshape(a.shape[0], -1).mean(dim=1)


class Neuron(_HookObjective):
    """One unit at one position (Lucid's ``neuron``): ``(y, x)`` / a token; the centre when not given."""

    def __init__(self, hook: str, index: int, position: Optional[Sequence[int]] = None):
        self.hook, self.index = hook, int(index)
        self.position = tuple(int(p) for p in position) if position is not None else None
        self.hooks = (hook,)
        self.name = self._make_name()

    def _make_name(self) -> str:
        pos = "centre" if self.position is None else ",".join(map(str, self.position))
        return f"{self.hook}:{self.index}@({pos})"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _lookup(acts, self.hook)
        pos = self.position if self.position is not None else _centre(self.hook, a, self.model)
        if a.ndim == 4 and not _is_per_head(self.hook, a):
            if len(pos) != 2:
                raise VisionLensError(
                    f"{self.hook!r} is a conv map [B, C, H, W]; a neuron needs a (y, x) position, got {pos}."
                )
            return a[:, self.index, pos[0], pos[1]]
        if a.ndim == 2:
            return a[:, self.index]
        sel = a[..., self.index]
        sel = sel[(slice(None),) + tuple(pos)]
        return sel.reshape(sel.shape[0], -1).mean(dim=1)


class Direction(_HookObjective):
    """Projection onto a direction in unit (channel / feature) space, mean over positions.

    ``cosine=True`` uses the cosine similarity instead of the dot product; ``cossim_pow > 0`` uses
    Lucid's ``dot * cos ** cossim_pow`` (``direction_neuron(..., cossim_pow)``) to favour alignment
    over magnitude. ``position`` restricts to one ``(y, x)`` / token.
    """

    def __init__(
        self,
        hook: str,
        vector: Any,
        position: Optional[Sequence[int]] = None,
        cosine: bool = False,
        cossim_pow: float = 0.0,
        label: Optional[str] = None,
    ):
        self.hook = hook
        self.vector = _as_vector(vector)
        self.position = tuple(int(p) for p in position) if position is not None else None
        self.cosine, self.cossim_pow = bool(cosine), float(cossim_pow)
        self.label = label
        self.hooks = (hook,)
        self._cache: dict[tuple, Tensor] = {}
        self.name = self._make_name()

    def _make_name(self) -> str:
        what = self.label or f"direction[{self.vector.numel()}]"
        pos = "" if self.position is None else "@(" + ",".join(map(str, self.position)) + ")"
        return f"{self.hook}:{what}{pos}"

    def _vec(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        v = self._cache.get(key)
        if v is None:
            v = self.vector.to(device=like.device, dtype=like.dtype)
            self._cache[key] = v
        return v

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _channels_last(self.hook, _lookup(acts, self.hook))
        if self.position is not None:
            a = a[(slice(None),) + tuple(self.position)]
        v = self._vec(a)
        if a.shape[-1] != v.numel():
            raise VisionLensError(
                f"Direction for {self.hook!r} has {v.numel()} entries; the hook has {a.shape[-1]} "
                "units along its feature axis."
            )
        dot = a @ v
        if self.cosine or self.cossim_pow:
            cos = dot / (a.norm(dim=-1) * v.norm() + 1e-8)
            if self.cosine:
                dot = cos
            else:
                dot = dot * cos.clamp(min=0.1) ** self.cossim_pow
        return dot.reshape(dot.shape[0], -1).mean(dim=1)


class ClassLogit(_HookObjective):
    """A class logit (``hook_logits``; the model output for models without that hook)."""

    def __init__(self, index: int, hook: str = "hook_logits"):
        self.index, self.hook = int(index), hook
        self.hooks = (hook,)
        self.name = self._make_name()

    def _make_name(self) -> str:
        return f"class:{self.index}"

    def bind(self, model: Optional[HookedVisionModel]) -> Objective:
        if self.hook == "hook_logits" and model is not None and "hook_logits" not in model.hook_dict:
            return self._copy_with(hook=OUTPUT, hooks=(OUTPUT,), model=model)
        return super().bind(model)

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _lookup(acts, self.hook)
        return a.reshape(a.shape[0], -1)[:, self.index]


class AttentionHead(_HookObjective):
    """A ViT attention head's output (``attn.hook_result`` ``[B, pos, head, d_model]`` or ``hook_z``).

    The value is the L2 norm of the head's output vector (or its projection onto ``direction``),
    at ``token`` or averaged over tokens.
    """

    def __init__(
        self,
        layer: Union[int, str],
        head: int,
        token: Optional[int] = None,
        direction: Any = None,
        which: str = "result",
    ):
        if which not in ("result", "z"):
            raise ValueError(f"which must be 'result' or 'z', got {which!r}")
        if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip("-").isdigit()):
            hook = f"blocks.{int(layer)}.attn.hook_{which}"
        elif "hook_" in layer.rsplit(".", 1)[-1]:
            hook = layer
        else:
            hook = f"{layer}.attn.hook_{which}"
        self.hook, self.head = hook, int(head)
        self.token = None if token is None else int(token)
        self.direction = None if direction is None else _as_vector(direction)
        self.hooks = (hook,)
        self.name = self._make_name()

    def _make_name(self) -> str:
        tok = "" if self.token is None else f"@{self.token}"
        return f"{self.hook}:head{self.head}{tok}"

    def bind(self, model: Optional[HookedVisionModel]) -> Objective:
        hook = self.hook
        if model is not None and hook not in model.hook_dict:
            for prefix in ("visual.",):
                if prefix + hook in model.hook_dict:
                    hook = prefix + hook
                    break
        new = self._copy_with(hook=hook)
        return _HookObjective.bind(new, model)

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _lookup(acts, self.hook)
        if a.ndim != 4:
            raise VisionLensError(
                f"{self.hook!r} should be a per-head activation [batch, pos, head, d], got shape {tuple(a.shape)}."
            )
        h = a[:, :, self.head]  # [B, pos, d]
        if self.token is not None:
            h = h[:, self.token]
        if self.direction is not None:
            v = h @ self.direction.to(device=h.device, dtype=h.dtype)
        else:
            v = h.norm(dim=-1)
        return v.reshape(v.shape[0], -1).mean(dim=1)


class Diversity(_HookObjective):
    """Lucid's ``diversity``: mean cosine similarity of Gram matrices across the images of a group.

    Image ``i`` gets ``sum_{j != i} <G_i, G_j> / n`` (normalised Gram matrices), so the values of a
    group sum to Lucid's objective. Subtract it (``obj - 1e2 * diversity(layer)``) to render
    different images for one objective (``images_per_objective > 1``); with one image it is 0.
    """

    group_level = True

    def __init__(self, hook: str):
        self.hook = hook
        self.hooks = (hook,)
        self.name = self._make_name()

    def _make_name(self) -> str:
        return f"diversity({self.hook})"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        a = _channels_last(self.hook, _lookup(acts, self.hook))
        n = a.shape[0]
        flat = a.reshape(n, -1, a.shape[-1])
        grams = flat.transpose(1, 2) @ flat  # [n, C, C]
        grams = grams.reshape(n, -1)
        grams = grams / grams.norm(dim=1, keepdim=True).clamp(min=1e-10)
        sims = grams @ grams.T
        return (sims.sum(dim=1) - sims.diagonal()) / n


class _ImageObjective(Objective):
    needs_image = True

    def _make_name(self) -> str:
        return self.name

    def _image(self, image: Optional[Tensor]) -> Tensor:
        if image is None:
            raise VisionLensError(f"Objective {self.name!r} needs the image (pass image=[batch, C, H, W] in [0, 1]).")
        return image


class L1(_ImageObjective):
    """Mean ``|image - constant|`` over pixels (Lucid's ``L1`` on the input, as a mean)."""

    def __init__(self, constant: float = 0.5):
        self.constant = float(constant)
        self.name = "l1" if self.constant == 0.5 else f"l1({self.constant:g})"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        image = self._image(image)
        return (image - self.constant).abs().reshape(image.shape[0], -1).mean(dim=1)


class TotalVariation(_ImageObjective):
    """Mean absolute difference of neighbouring pixels (Lucid's ``total_variation``, as a mean)."""

    name = "tv"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        image = self._image(image)
        dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).abs().reshape(image.shape[0], -1).mean(dim=1)
        dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().reshape(image.shape[0], -1).mean(dim=1)
        return dx + dy


class Blur(_ImageObjective):
    """Lucid's ``blur_input_each_step``: ``0.5 * mean((image - stopgrad(blur3x3(image)))^2)``."""

    name = "blur"

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        image = self._image(image)
        with torch.no_grad():
            c = image.shape[1]
            k = torch.ones(c, 1, 3, 3, device=image.device, dtype=image.dtype) / 9.0
            blurred = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), k, groups=c)
        return 0.5 * ((image - blurred) ** 2).reshape(image.shape[0], -1).mean(dim=1)


class Custom(Objective):
    """Wrap ``fn(acts, image) -> Tensor[batch]`` reading ``hooks`` (names or aliases)."""

    def __init__(
        self,
        fn: Callable[[Mapping[str, Tensor], Optional[Tensor]], Tensor],
        hooks: Iterable[str] = (),
        name: str = "custom",
        needs_image: bool = False,
        group_level: bool = False,
    ):
        self.fn = fn
        self.hooks = tuple(hooks)
        self.name = name
        self.needs_image = needs_image
        self.group_level = group_level

    def bind(self, model: Optional[HookedVisionModel]) -> Objective:
        if model is None:
            return self
        mapping = {h: _resolve(model, h) for h in self.hooks}
        if all(k == v for k, v in mapping.items()):
            return self
        fn = self.fn

        def mapped(acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
            view = _AliasView(acts, mapping)
            return fn(view, image)

        return Custom(mapped, mapping.values(), self.name, self.needs_image, self.group_level)

    def value(self, acts: Mapping[str, Tensor], image: Optional[Tensor]) -> Tensor:
        return self.fn(acts, image)


class _AliasView(Mapping):
    def __init__(self, acts: Mapping[str, Tensor], mapping: Mapping[str, str]):
        self._acts, self._map = acts, mapping

    def __getitem__(self, k: str) -> Tensor:
        return self._acts[self._map.get(k, k)]

    def __iter__(self):
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)


# ----------------------------------------------------------------------------- constructors
def channel(layer: str, index: int) -> Channel:
    """Mean activation of unit ``index`` of ``layer`` over all positions."""
    return Channel(layer, index)


def neuron(layer: str, index: int, position: Optional[Sequence[int]] = None) -> Neuron:
    """Unit ``index`` of ``layer`` at ``position`` (``(y, x)`` or a token); the centre when ``None``."""
    if isinstance(position, int):
        position = (position,)
    return Neuron(layer, index, position)


def direction(
    layer: str,
    vector: Any,
    position: Optional[Sequence[int]] = None,
    cosine: bool = False,
    cossim_pow: float = 0.0,
    label: Optional[str] = None,
) -> Direction:
    """Projection of ``layer``'s unit vector onto ``vector`` (mean over positions, or at ``position``)."""
    if isinstance(position, int):
        position = (position,)
    return Direction(layer, vector, position, cosine, cossim_pow, label)


def text_direction(
    vector: Any,
    hook: Optional[str] = None,
    model: Optional[HookedVisionModel] = None,
    cosine: bool = True,
    label: str = "text",
) -> Objective:
    """A CLIP text direction: cosine similarity of the image embedding with ``vector``.

    ``hook`` defaults to ``visual.hook_proj`` (the joint embedding space), else ``visual.hook_pooled``
    / ``hook_pooled`` on ``model``. Any hook + vector works (this is :func:`direction` with
    ``cosine=True``).
    """
    if hook is None:
        hook = "visual.hook_proj"
        if model is not None:
            for cand in ("visual.hook_proj", "visual.hook_pooled", "hook_proj", "hook_pooled"):
                if cand in model.hook_dict:
                    hook = cand
                    break
    obj = Direction(hook, vector, None, cosine=cosine, label=label)
    return obj.bind(model) if model is not None else obj


def class_logit(index: int, hook: str = "hook_logits") -> ClassLogit:
    """The logit of class ``index``."""
    return ClassLogit(index, hook)


def attention_head(
    layer: Union[int, str], head: int, token: Optional[int] = None, direction: Any = None, which: str = "result"
) -> AttentionHead:
    """A ViT head's output (``blocks.{layer}.attn.hook_result``, or ``hook_z`` with ``which="z"``)."""
    return AttentionHead(layer, head, token, direction, which)


def diversity(layer: str) -> Diversity:
    """Gram-matrix similarity across the images of one objective (subtract it)."""
    return Diversity(layer)


def l1(constant: float = 0.5) -> L1:
    return L1(constant)


def total_variation() -> TotalVariation:
    return TotalVariation()


def blur() -> Blur:
    return Blur()


def custom(fn: Callable, hooks: Iterable[str] = (), name: str = "custom", needs_image: bool = False) -> Custom:
    return Custom(fn, hooks, name, needs_image)


# ----------------------------------------------------------------------------- parsing
def _unit_objective(spec: str, model: Optional[HookedVisionModel], force: Optional[str] = None) -> Objective:
    unit: Unit = model.parse_unit(spec) if model is not None else parse_unit(spec)
    if force == "neuron" or (force is None and unit.position is not None):
        return Neuron(unit.hook, unit.index, unit.position)
    if unit.position is not None:
        raise VisionLensError(f"'channel:' takes no position; got {spec!r}. Use 'neuron:{spec}'.")
    return Channel(unit.hook, unit.index)


def _class_index(arg: str, model: Optional[HookedVisionModel]) -> int:
    arg = arg.strip()
    if arg.lstrip("-").isdigit():
        return int(arg)
    names = (getattr(getattr(model, "cfg", None), "extra", {}) or {}).get("class_names") if model is not None else None
    if names:
        low = [str(n).lower() for n in names]
        if arg.lower() in low:
            return low.index(arg.lower())
    raise VisionLensError(f"Expected a class index (or a class name the model knows) after 'class:', got {arg!r}.")


def _head(arg: str, model: Optional[HookedVisionModel]) -> Objective:
    # "<layer or hook>:<head>[@token]"
    body, _, tok = arg.partition("@")
    layer, sep, head = body.rpartition(":")
    if not sep or not head.strip().isdigit():
        raise VisionLensError(f"Expected 'head:<layer>:<head>[@token]' (e.g. 'head:3:2@0'), got 'head:{arg}'.")
    token = int(tok.strip("() ")) if tok else None
    return AttentionHead(layer.strip(), int(head), token)


def _float_arg(arg: str, default: float) -> float:
    return float(arg) if arg.strip() else default


BUILTIN_PREFIXES: dict[str, Callable[[Optional[HookedVisionModel], str], Objective]] = {
    "channel": lambda model, arg: _unit_objective(arg, model, "channel"),
    "neuron": lambda model, arg: _unit_objective(arg, model, "neuron"),
    "class": lambda model, arg: ClassLogit(_class_index(arg, model)),
    "logit": lambda model, arg: ClassLogit(_class_index(arg, model)),
    "head": lambda model, arg: _head(arg, model),
    "diversity": lambda model, arg: Diversity(arg.strip()),
    "l1": lambda model, arg: L1(_float_arg(arg, 0.5)),
    "tv": lambda model, arg: TotalVariation(),
    "blur": lambda model, arg: Blur(),
}


def _plugin_prefixes() -> dict[str, Callable]:
    try:
        return dict(collect_objectives())
    except Exception:  # a broken registry must not break built-in parsing
        return {}


def objective(spec: Union[str, Unit, Objective], model: Optional[HookedVisionModel] = None) -> Objective:
    """Build an :class:`Objective` from a string, a :class:`visionlens.units.Unit` or an objective.

    With ``model``, hook aliases are resolved and unit indices checked (``objective.bind(model)``).
    """
    if isinstance(spec, Objective):
        return spec.bind(model) if model is not None else spec
    if isinstance(spec, Unit):
        obj: Objective = (
            Neuron(spec.hook, spec.index, spec.position)
            if spec.position is not None
            else Channel(spec.hook, spec.index)
        )
        return obj.bind(model) if model is not None else obj
    if not isinstance(spec, str):
        raise VisionLensError(
            f"Expected an objective, a unit or a string like 'mixed4a:476', got {type(spec).__name__}."
        )
    text = spec.strip()
    prefix, sep, rest = text.partition(":")
    prefix = prefix.strip()
    if not sep and prefix in ("l1", "tv", "blur"):
        obj = BUILTIN_PREFIXES[prefix](model, "")
        return obj
    is_hook = model is not None and _is_hook_name(model, prefix)
    if sep and not is_hook:
        if prefix in BUILTIN_PREFIXES:
            obj = BUILTIN_PREFIXES[prefix](model, rest)
            return obj.bind(model) if model is not None else obj
        plugins = _plugin_prefixes()
        if prefix in plugins:
            made = plugins[prefix](model, text)
            if not isinstance(made, Objective):
                raise VisionLensError(
                    f"Objective factory for prefix {prefix!r} returned {type(made).__name__}, "
                    "not a visionlens.featurevis.Objective."
                )
            return made.bind(model) if model is not None else made
    try:
        obj = _unit_objective(text, model)
    except VisionLensError as exc:
        known = sorted(set(BUILTIN_PREFIXES) | set(_plugin_prefixes()))
        raise VisionLensError(f"{exc} Objective prefixes: {', '.join(known)}.") from None
    return obj.bind(model) if model is not None else obj


def _is_hook_name(model: HookedVisionModel, name: str) -> bool:
    try:
        model.resolve_hook(name)
        return True
    except Exception:
        return False


def as_objectives(
    specs: Union[str, Unit, Objective, Sequence[Any]], model: Optional[HookedVisionModel] = None
) -> list[Objective]:
    """One objective or a list of them, each parsed with :func:`objective` and bound to ``model``."""
    if isinstance(specs, (str, Unit, Objective)):
        specs = [specs]
    out = [objective(s, model) for s in specs]
    if not out:
        raise VisionLensError("Expected at least one objective.")
    return out
