"""timm models through ``timm.create_model`` (timm's own pretrained loader) or a local checkpoint.

``pretrained=True`` reads the weights from timm's caches (the Hugging Face hub cache, or torch hub's
checkpoints dir for url weights) and hands the cached file to timm, so nothing is downloaded unless
asked (``download=True`` or ``VISIONLENS_DOWNLOAD=1``); weights that are not cached raise one
:class:`VisionLensError` naming ``checkpoint_path=`` as the offline route.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

from ..checkpoints import DOWNLOAD_ENV, download_allowed, is_checkpoint_path, load_checked, load_state_dict_file
from ..validation import VisionLensError

__all__ = ["load_timm", "cached_timm_weights"]


def _hf_cached(repo: str, filenames: list[str]) -> Optional[Path]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, _, revision = repo.partition("@")
    for fn in filenames:
        found = try_to_load_from_cache(repo, fn, revision=revision or None)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def cached_timm_weights(pretrained_cfg: Any) -> tuple[Optional[Path], bool]:
    """``(file, from_hf)``: where timm's pretrained weights for ``pretrained_cfg`` are cached locally, or None."""
    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg)
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return Path(cfg["file"]), False
    hub = cfg.get("hf_hub_id")
    if hub:
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        found = _hf_cached(hub, names)
        if found is not None:
            return found, True
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            return path, False
    return None, False


def _unknown_name(name: str) -> VisionLensError:
    import timm

    arch = name.split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=8, cutoff=0.6)
    return VisionLensError(f"Unknown timm model {name!r}. Similar timm names: {', '.join(close) or 'none'}.")


def _pretrained_cfg(name: str) -> Any:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        arch, _, tag = name.partition(".")
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        if tag:
            raise VisionLensError(
                f"Unknown pretrained tag {tag!r} for timm {arch}. Tags: {', '.join(tags) or 'none'}."
            ) from None
        raise VisionLensError(f"timm has no pretrained weights for {name!r}; pass checkpoint_path=... instead.")
    return cfg


def _offline_overlay(name: str, download: Optional[bool]) -> dict[str, Any]:
    """``pretrained_cfg_overlay`` that points timm at the cached weights file (no network), or {} to let timm
    download; raises when the weights are not cached and downloading is not allowed."""
    cfg = _pretrained_cfg(name)
    path, from_hf = cached_timm_weights(cfg)
    if path is not None:
        overlay: dict[str, Any] = {"file": str(path)}
        if from_hf and cfg.custom_load is True:  # the hub holds a converted state dict, not the original npz
            overlay["custom_load"] = False
        return overlay
    if download_allowed(download):
        return {}
    where = f"the Hugging Face cache ({cfg.hf_hub_id})" if cfg.hf_hub_id else f"torch hub's cache ({cfg.url})"
    raise VisionLensError(
        f"timm {cfg.architecture}.{cfg.tag} pretrained weights are not available offline (not in {where}). "
        f"Pass checkpoint_path='/path/to/weights.safetensors' (a local file), or download=True "
        f"(or set {DOWNLOAD_ENV}=1) to fetch them."
    )


def _imagenet_names(model: nn.Module) -> Optional[list[str]]:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if not subset:
            return None
        return [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]
    except Exception:  # older timm, or not an ImageNet head
        return None


def load_timm(
    name: str,
    pretrained: Union[bool, str] = False,
    checkpoint_path: Optional[str] = None,
    eval: bool = True,
    download: Optional[bool] = None,
    strict: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with timm's own pretrained loader, or a local checkpoint.

    ``pretrained``: ``False`` (random init), ``True`` (timm's default weights for ``name``, which may carry a
    tag: ``"resnet50.a1_in1k"``), a tag string (``"a1_in1k"``) or a local checkpoint path.
    ``checkpoint_path``: a local safetensors / torch file (``strict=False`` loads a partial one).
    Pretrained weights come from the local cache; they are downloaded only with ``download=True``.
    """
    import timm

    if isinstance(pretrained, (str, os.PathLike)) and is_checkpoint_path(pretrained):
        checkpoint_path, pretrained = str(pretrained), False
    elif isinstance(pretrained, str):
        if pretrained.lower() in ("true", "default"):
            pretrained = True
        else:  # a pretrained tag
            name, pretrained = f"{name.split('.')[0]}.{pretrained}", True
    if not timm.is_model(name):
        raise _unknown_name(name)
    if pretrained:
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.update(_offline_overlay(name, download))
        if overlay:
            kwargs["pretrained_cfg_overlay"] = overlay
    try:
        model = timm.create_model(name, pretrained=bool(pretrained), **kwargs)
    except OSError as exc:  # a download that failed
        if not pretrained:
            raise
        raise VisionLensError(
            f"Could not download timm {name} weights ({exc}); no network? Pass checkpoint_path=... (a local file)."
        ) from None
    if pretrained:
        model.visionlens_weights = f"timm {name}"
        names = _imagenet_names(model)
        if names is not None and getattr(model, "num_classes", None) == len(names):
            model.visionlens_class_names = names
    if checkpoint_path:
        load_checked(model, load_state_dict_file(checkpoint_path), repr(str(checkpoint_path)), strict=strict)
        model.visionlens_weights = str(checkpoint_path)
    return model.eval() if eval else model
