"""Adapters map one model family onto canonical visionlens hook names.

An adapter is declared once per family and registered through the ``visionlens_register_adapters``
plugin hook, exactly like a third-party one. ``resolve_adapter`` picks the adapter for a module.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from visionlens.cache import VisionActivationCache
from visionlens.config import VisionConfig
from visionlens.hook_points import BridgedHookPoint
from visionlens.registry import collect_adapters
from visionlens.validation import check_image_batch

__all__ = ["Adapter", "BridgedAdapter", "available_adapters", "resolve_adapter", "module_tree_hooks", "warn_generic"]


class Adapter:
    """Base class: one instance per wrapped model.

    Subclasses set ``name`` / ``family``, implement ``matches`` (does this source module belong
    to the family?), ``config`` and ``hook_points`` (ordered ``{canonical name: HookPoint}``),
    and ``forward`` when they run their own code (otherwise the source runs as is and hooks are
    bridged onto its modules).
    """

    name: ClassVar[str] = "base"
    family: ClassVar[str] = ""
    priority: ClassVar[int] = 0  # higher wins when several adapters match
    # the source's keyword for its main input (``unet(sample=...)``): ``model(sample=...)`` takes it too
    input_name: ClassVar[Optional[str]] = None
    # public methods (see ``public_methods``) whose first argument is an image batch, validated like forward
    image_methods: ClassVar[tuple[str, ...]] = ()

    cfg: VisionConfig  # set by HookedVisionModel from config()

    def __init__(self, source: nn.Module):
        self.source = source

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        return False

    def config(self) -> VisionConfig:
        raise NotImplementedError

    def hook_points(self) -> dict[str, HookPoint]:
        raise NotImplementedError

    def aliases(self) -> dict[str, str]:
        """Extra names (layer aliases) accepted wherever a hook or unit is named."""
        return {}

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        return self.source(x, *args, **kwargs)

    def public_methods(self) -> dict[str, Callable[..., Any]]:
        """The source model's public methods that the wrapped model offers as its own, ``{name: callable}``.

        ``HookedVisionModel`` exposes exactly these (``model.encode_image(x)``, ``model.forward_features(x)``),
        each running the source's computation with this adapter's hooks active, so hooks fire for the part
        of the model the method runs. A source method that would bypass the hooks is not listed: the wrapped
        model raises an AttributeError that points to ``model.source.NAME`` (unhooked) instead.
        """
        return {}

    def validate(self, x: Any) -> None:
        """Check the model input; raise :class:`visionlens.VisionLensError` naming what was expected."""
        check_image_batch(x, self.cfg)

    def example_inputs(self, image_size: Optional[int] = None, batch: int = 1) -> Optional[tuple[tuple, dict]]:
        """``(args, kwargs)`` for a forward that reaches every hook, or None for a plain image batch."""
        return None

    def cache_class(self) -> type:
        """The ActivationCache subclass ``run_with_cache`` returns for this family."""
        return VisionActivationCache

    @classmethod
    def example_source(cls) -> Optional[nn.Module]:
        """A tiny source model of this family with random weights, in eval mode, or None.

        The contract suite (parity with the source within 1e-5, hooks released after an exception,
        hook shapes as documented) runs on it for every registered adapter, so a family that
        provides one is tested without new test code.
        """
        return None

    def readout(self) -> Any:
        """The final linear readout used for direct logit attribution (see ``transformer_blocks.LinearReadout``)."""
        raise NotImplementedError(f"{type(self).__name__} does not describe a linear readout")


def module_tree_hooks(root: nn.Module, skip: tuple[type, ...] = (), prefix: str = "") -> dict[str, HookPoint]:
    """A bridged ``<path>.hook_out`` point on every submodule output (module-tree hooks)."""
    out: dict[str, HookPoint] = {}
    for path, module in root.named_modules():
        if not path or isinstance(module, skip) or path.split(".")[0] in ("source", "adapter", "cfg"):
            continue
        out[f"{prefix}{path}.hook_out"] = BridgedHookPoint(module, "output")
    return out


class BridgedAdapter(Adapter):
    """An adapter whose hooks are all bridged onto source modules: the source forward runs untouched.

    Its hooks sit on the source's modules, so the source's own methods fire them: timm's
    ``forward_features`` / ``forward_head`` are offered as public methods where the source has them.
    """

    source_methods: ClassVar[tuple[str, ...]] = ("forward_features", "forward_head")
    image_methods: ClassVar[tuple[str, ...]] = ("forward_features",)

    def public_methods(self) -> dict[str, Callable[..., Any]]:
        return {n: getattr(self.source, n) for n in self.source_methods if callable(getattr(self.source, n, None))}

    def canonical_hooks(self) -> dict[str, HookPoint]:
        return {}

    def hook_points(self) -> dict[str, HookPoint]:
        points = dict(self.canonical_hooks())
        points.update(module_tree_hooks(self.source))
        return points


def available_adapters() -> list[type[Adapter]]:
    """All registered adapter classes (built-in and from plugins), highest priority first."""
    return sorted(collect_adapters(), key=lambda a: -a.priority)


def warn_generic(module: nn.Module, available: Sequence[str]) -> None:
    """Tell the user that no family adapter recognised ``module`` and the generic one is used."""
    warnings.warn(
        f"No visionlens adapter recognises {type(module).__name__}; using the generic adapter "
        f"(a hook on every submodule output, named '<module path>.hook_out'). Adapters: {', '.join(available)}.",
        UserWarning,
        stacklevel=4,
    )


def resolve_adapter(source: nn.Module, adapter: Union[str, Adapter, type, None] = "auto") -> Adapter:
    """The adapter instance for ``source``: ``"auto"`` picks the highest-priority matching family
    (the generic adapter when none matches), a name picks that adapter, a class or instance is used as is."""
    if isinstance(adapter, Adapter):
        return adapter
    if isinstance(adapter, type) and issubclass(adapter, Adapter):
        return adapter(source)
    adapters = available_adapters()
    if adapter in (None, "auto"):
        for cls in adapters:
            if cls.name != "generic" and cls.matches(source):
                return cls(source)
        generic = next((cls for cls in adapters if cls.name == "generic"), None)
        if generic is None:
            raise ValueError(f"No adapter matches {type(source).__name__} and the generic adapter is not registered.")
        warn_generic(source, [a.name for a in adapters])
        return generic(source)
    for cls in adapters:
        if cls.name == adapter:
            return cls(source)
    raise ValueError(f"Unknown adapter {adapter!r}. Available adapters: {', '.join(a.name for a in adapters)}.")
