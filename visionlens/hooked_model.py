"""HookedVisionModel: a TransformerLens ``HookedRootModule`` around any image model."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from .adapters import Adapter, resolve_adapter
from .adapters.tl_weights import TLWeightsMixin
from .cache import LazyCacheDict
from .config import VisionConfig
from .hook_points import DeferredActivation
from .memory import ensure_memory_retention, heap_allocations
from .preprocess import preprocess as _preprocess_images
from .sources.diffusers import load_diffusers_module
from .sources.open_clip import load_open_clip_module
from .sources.timm import load_timm
from .sources.torchvision import load_torchvision
from .units import Unit, parse_unit
from .validation import VisionLensError, unknown_hook, warn_random_weights

if TYPE_CHECKING:
    from .cache import VisionActivationCache

NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
_RESERVED = {"source", "adapter", "cfg"}

# ``model.analyze`` runs analyses, which live in a higher layer: visionlens.runner registers its
# ``run`` here when it is imported (the package ``__init__`` imports it), so this module never
# imports upward.
_analysis_runner: Optional[Callable[..., Any]] = None


def _move(t: Tensor, device: Any) -> Tensor:
    return t.to(device)


def _drop_batch_dim(t: Tensor) -> Tensor:
    return t[0] if t.ndim > 0 and t.shape[0] == 1 else t


def set_analysis_runner(runner: Callable[..., Any]) -> None:
    """Install the function behind :meth:`HookedVisionModel.analyze` (``visionlens.runner.run``)."""
    global _analysis_runner
    _analysis_runner = runner


class HookedVisionModel(TLWeightsMixin, HookedRootModule):
    """An image model with TransformerLens hook points on canonical activation names.

    Build one with :meth:`from_timm`, :meth:`from_torchvision`, :meth:`from_module` or
    :func:`visionlens.load`. ``model(x)`` computes exactly what ``model.source(x)`` computes;
    hooks attached through the TransformerLens API (``run_with_hooks``, ``run_with_cache``,
    ``hooks()``, ``add_hook``) observe or edit the canonical activations.
    """

    cfg: VisionConfig

    def __init__(self, source: nn.Module, adapter: Union[str, Adapter, type, None] = "auto"):
        super().__init__()
        self.source = source
        self.adapter = resolve_adapter(source, adapter)
        self.cfg = self.adapter.config()
        self.adapter.cfg = self.cfg
        names = getattr(source, "visionlens_class_names", None)
        if names is None:
            names = (getattr(source, "pretrained_cfg", None) or {}).get("label_names")
        if names is not None:
            self.cfg.extra["class_names"] = list(names)
        weights = getattr(source, "visionlens_weights", None)
        if weights is not None:
            self.cfg.extra["weights"] = weights
        if source.training:
            warnings.warn(
                f"{type(source).__name__} is in train mode (dropout active, batch-norm statistics updating); "
                "visionlens's parity with the source and its analyses assume eval mode: call .eval() on the "
                "source before wrapping it, or on the wrapped model.",
                UserWarning,
                stacklevel=3,
            )
        self.validate_inputs = True
        for name, hp in self.adapter.hook_points().items():
            self._attach(name, hp)
        self.setup()
        self.train(source.training)

    # ------------------------------------------------------------------ hook tree
    def _attach(self, name: str, hp: HookPoint) -> None:
        parts = name.split(".")
        if parts[0] in _RESERVED:
            raise ValueError(f"Hook name {name!r} collides with a reserved attribute")
        node: nn.Module = self
        for part in parts[:-1]:
            child = node._modules.get(part)
            if child is None:
                child = nn.Module()
                node.add_module(part, child)
            node = child
        node.add_module(parts[-1], hp)

    def setup(self) -> None:
        """Index hook points by name; the source model's own modules are left untouched."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "" or name == "source" or name.startswith("source."):
                continue
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    # ------------------------------------------------------------------ forward
    def forward(self, x: Optional[Tensor] = None, *args: Any, **kwargs: Any) -> Any:
        """Run the model on an image batch ``[batch, channels, H, W]`` (normalized floats).

        Families with other inputs take them as extra arguments (CLIP ``text=``, UNet ``timestep``...).
        """
        key = self.adapter.input_name
        if x is None and key and key in kwargs:  # the source's own keyword, e.g. unet(sample=..., timestep=...)
            x = kwargs.pop(key)
        if self.validate_inputs:
            self.adapter.validate(x)
        return self.adapter.forward(x, *args, **kwargs)

    # ------------------------------------------------------------------ the source's public methods
    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        adapter = self.__dict__.get("adapter")
        if adapter is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        methods = adapter.public_methods()
        if name in methods:
            return self._public_method(name, methods[name])
        source = self._modules.get("source")
        lib = type(source).__module__.split(".")[0]
        what = f"{type(self).__name__!r} wrapping {lib} {type(source).__name__}"
        offered = f" Methods run through the hooks: {', '.join(sorted(methods))}." if methods else ""
        if source is not None and hasattr(source, name):
            raise AttributeError(
                f"{what} does not offer {name!r}: it is the source module's, and the adapter does not declare it "
                f"as running through the hooks (calling it here could bypass them). Use model.source.{name} "
                f"(unhooked).{offered}"
            )
        raise AttributeError(f"{what} has no attribute {name!r} (neither has the source module).{offered}")

    def _public_method(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` (an adapter's public method), validating an image first argument like :meth:`forward`."""
        if name not in self.adapter.image_methods:
            return fn

        @functools.wraps(fn)
        def call(x: Any, *args: Any, **kwargs: Any) -> Any:
            if self.validate_inputs:
                self.adapter.validate(x)
            return fn(x, *args, **kwargs)

        return call

    @property
    def class_names(self) -> Optional[list[str]]:
        """The output classes' names (from the weights: torchvision's categories, timm's ImageNet labels,
        a zoo model's classes), or None when the weights carry none (random weights, a custom head)."""
        names = self.cfg.extra.get("class_names")
        return list(names) if names is not None else None

    @property
    def device(self) -> torch.device:
        for p in self.source.parameters():
            return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ names
    def resolve_hook(self, name: str) -> str:
        """Map a hook name or layer alias (``mixed4a``, ``layer1.0.conv1``) to a hook name."""
        if name in self.hook_dict:
            return name
        alias = self.adapter.aliases().get(name)
        if alias is not None:
            return alias
        if f"{name}.hook_out" in self.hook_dict:
            return f"{name}.hook_out"
        raise unknown_hook(name, self.hook_dict)

    def _check_name(self, name: Any) -> Any:
        if isinstance(name, str) and name not in self.hook_dict:
            return self.resolve_hook(name)
        return name

    def _check_names_filter(self, names_filter: NamesFilter) -> NamesFilter:
        if isinstance(names_filter, str):
            return self._check_name(names_filter)
        if isinstance(names_filter, (list, tuple, set)):
            return [self._check_name(n) for n in names_filter]
        return names_filter

    def add_hook(
        self,
        name: Any,
        hook: Callable,
        dir: str = "fwd",
        is_permanent: bool = False,
        level: Optional[int] = None,
        prepend: bool = False,
    ) -> None:
        super().add_hook(self._check_name(name), hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def _enable_hook(self, name: Any, hook: Callable, dir: Any) -> None:
        super()._enable_hook(self._check_name(name), hook, dir)

    def get_caching_hooks(self, names_filter: NamesFilter = None, *args: Any, **kwargs: Any):
        return super().get_caching_hooks(self._check_names_filter(names_filter), *args, **kwargs)

    def add_caching_hooks(self, names_filter: NamesFilter = None, *args: Any, **kwargs: Any):
        return super().add_caching_hooks(self._check_names_filter(names_filter), *args, **kwargs)

    def run_with_cache(
        self, *model_args: Any, return_cache_object: bool = True, names_filter: NamesFilter = None, **kwargs: Any
    ) -> tuple[Any, Union["VisionActivationCache", dict[str, Tensor]]]:
        """Run and cache activations; returns ``(output, VisionActivationCache)``.

        Same arguments as TransformerLens (``names_filter``, ``device``, ``remove_batch_dim``,
        ``incl_bwd``, ``pos_slice``, ...). Plain forward caching takes a fast path that stores each
        activation (after any attached hooks) without torch hook dispatch; anything else goes
        through TransformerLens's caching hooks.
        """
        names_filter = self._check_names_filter(names_filter)
        ensure_memory_retention()  # reuse freed activation memory across calls (see visionlens.memory)
        remove_batch_dim = kwargs.get("remove_batch_dim", False)
        tl_keys = {"device", "remove_batch_dim", "incl_bwd", "reset_hooks_end", "clear_contexts", "pos_slice"}
        model_kwargs = {k: v for k, v in kwargs.items() if k not in tl_keys}
        fast = not kwargs.get("incl_bwd") and kwargs.get("pos_slice") is None and kwargs.get("reset_hooks_end", True)
        if fast and all(getattr(hp, "set_capture", None) for hp in self.hook_dict.values()):
            out, cache_dict = self._run_with_fast_cache(
                model_args, names_filter, kwargs.get("device"), remove_batch_dim, model_kwargs
            )
        else:
            with heap_allocations():
                out, cache_dict = super().run_with_cache(*model_args, names_filter=names_filter, **kwargs)
        if not return_cache_object:
            return out, dict(cache_dict.items())  # a plain dict: deferred entries computed now
        return out, self.adapter.cache_class()(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def _run_with_fast_cache(
        self, model_args: tuple, names_filter: NamesFilter, device: Any, remove_batch_dim: bool, model_kwargs: dict
    ) -> tuple[Any, dict[str, Tensor]]:
        if names_filter is None:
            selected = list(self.hook_dict.values())
        elif isinstance(names_filter, str):
            selected = [self.hook_dict[names_filter]]
        elif isinstance(names_filter, (list, tuple, set)):
            selected = [self.hook_dict[n] for n in names_filter]
        else:
            if not callable(names_filter):
                raise TypeError(
                    f"names_filter must be a hook name, names or a predicate, not {type(names_filter).__name__}"
                )
            selected = [hp for n, hp in self.hook_dict.items() if names_filter(n)]
        if remove_batch_dim and model_args and isinstance(model_args[0], Tensor) and model_args[0].shape[0] != 1:
            raise ValueError(f"Cannot remove batch dimension from cache with batch size {model_args[0].shape[0]}")
        raw: dict[str, Tensor] = {}
        session = getattr(self.adapter, "capture_session", None)
        self.is_caching = True
        try:
            # an adapter may capture its points in one session (conv nets: two global torch hooks instead of
            # one per point); it hands back the points left to capture one by one
            with session(selected, raw) if session is not None else contextlib.nullcontext(selected) as rest:
                try:
                    for hp in rest:
                        hp.set_capture(raw)
                    with heap_allocations():
                        out = self(*model_args, **model_kwargs)
                finally:
                    for hp in rest:
                        hp.set_capture(None)
        finally:
            self.is_caching = False
        cache_dict: dict[str, Any] = {}
        deferred = False
        for name in self.hook_dict:  # forward order, like TransformerLens
            if name not in raw:
                continue
            t = raw[name]
            if isinstance(t, DeferredActivation):  # computed on first read (e.g. per-head results from z)
                deferred = True
                if device is not None:
                    t = t.then(functools.partial(_move, device=device))
                cache_dict[name] = t.then(_drop_batch_dim) if remove_batch_dim else t
                continue
            if device is not None:
                t = t.to(device)
            cache_dict[name] = _drop_batch_dim(t) if remove_batch_dim else t
        return out, (LazyCacheDict(cache_dict) if deferred else cache_dict)

    def hook_shapes(self, image_size: Optional[int] = None, batch: int = 1) -> dict[str, tuple[int, ...]]:
        """Shape of every hook for a dummy input (what ``visionlens hooks`` prints)."""
        example = self.adapter.example_inputs(image_size, batch)
        args, kwargs = example if example is not None else ((self.dummy_input(image_size, batch),), {})
        with torch.no_grad():
            _, cache = self.run_with_cache(*args, return_cache_object=False, **kwargs)
        return {name: tuple(cache[name].shape) for name in self.hook_dict if name in cache}

    def dummy_input(self, image_size: Optional[int] = None, batch: int = 1) -> Tensor:
        if image_size is None:
            size = tuple(self.cfg.image_size) if self.cfg.image_size else (224, 224)
        else:
            size = (image_size, image_size)
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, self.cfg.in_chans, *size, generator=g).to(self.device)

    # ------------------------------------------------------------------ helpers
    def preprocess(self, images: Any) -> Tensor:
        """The model's own input transform: PIL image(s) / HWC arrays / file paths -> batch tensor."""
        return _preprocess_images(images, self.cfg).to(self.device)

    def analyze(self, name: str, inputs: Any, **config: Any) -> Any:
        """Run the analysis plugin ``name`` on this model (see :func:`visionlens.run`)."""
        if _analysis_runner is None:
            raise VisionLensError("No analysis runner is installed; import visionlens (or visionlens.runner) first.")
        return _analysis_runner(name, self, inputs, **config)

    def parse_unit(self, spec: str) -> Unit:
        """Parse ``"mixed4a:476"`` / ``"blocks.6.mlp.hook_post:123"`` into a :class:`visionlens.units.Unit`."""
        return parse_unit(spec, self)

    def __repr__(self) -> str:
        return (
            f"HookedVisionModel({self.cfg.architecture or self.cfg.family}, adapter={self.cfg.adapter!r}, "
            f"{len(self.hook_dict)} hooks)"
        )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_module(cls, module: nn.Module, adapter: Any = "auto") -> "HookedVisionModel":
        """Wrap an existing ``nn.Module``; ``adapter="auto"`` picks the family adapter or the generic one."""
        return cls(module, adapter)

    @classmethod
    def from_timm(
        cls,
        name: str,
        pretrained: Union[bool, str, None] = None,
        checkpoint_path: Optional[str] = None,
        **kwargs: Any,
    ) -> "HookedVisionModel":
        """Build with ``timm.create_model`` (its own pretrained loader, reading the local caches).

        ``pretrained``: ``True`` (timm's default weights; ``"resnet50.a1_in1k"`` picks a tag), a tag, or a local
        checkpoint path; ``checkpoint_path``: a local file. ``download=True`` allows fetching weights that are
        not cached; ``strict=False`` loads a partial checkpoint. See :func:`visionlens.sources.timm.load_timm`.
        """
        model = cls(load_timm(name, pretrained=pretrained or False, checkpoint_path=checkpoint_path, **kwargs))
        if pretrained is None and not checkpoint_path:  # pretrained=False: random weights asked for explicitly
            warn_random_weights(f"timm:{name}", model.cfg)
        return model

    @classmethod
    def from_torchvision(cls, name: str, weights: Any = None, **kwargs: Any) -> "HookedVisionModel":
        """Build with ``torchvision.models.get_model``: ``weights`` a weights enum member, its name
        (``"IMAGENET1K_V1"``), ``"DEFAULT"`` / ``True``, or a local checkpoint path (read from torch hub's cache;
        ``download=True`` allows fetching; ``strict=False`` loads a partial checkpoint)."""
        model = cls(load_torchvision(name, weights=weights, **kwargs))
        if weights is None:  # weights=False: random weights asked for explicitly
            warn_random_weights(f"torchvision:{name}", model.cfg)
        return model

    @classmethod
    def from_open_clip(
        cls, name: Union[str, dict], pretrained: Optional[str] = None, **kwargs: Any
    ) -> "HookedVisionModel":
        """Build with open_clip's own factory (hub tag or local ``.pt`` / ``.safetensors``); both towers hooked."""
        return cls(load_open_clip_module(name, pretrained=pretrained, **kwargs), adapter="open_clip")

    @classmethod
    def from_diffusers(cls, unet_or_path: Any, **kwargs: Any) -> "HookedVisionModel":
        """Wrap a diffusers UNet (a module, a local ``from_pretrained`` directory, or a pipeline)."""
        if isinstance(unet_or_path, HookedVisionModel):
            return unet_or_path
        adapter = kwargs.pop("adapter", "auto")
        module, pipeline = load_diffusers_module(unet_or_path, **kwargs)
        model = cls(module, adapter=adapter)
        if pipeline is not None and hasattr(model.adapter, "pipeline"):
            model.adapter.pipeline = pipeline
        return model


__all__ = ["HookedVisionModel", "VisionLensError"]
