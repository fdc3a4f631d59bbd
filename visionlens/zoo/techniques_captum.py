"""Attribution baselines of the transfer benchmark, through Captum: Integrated Gradients, Grad-CAM, Occlusion.

The methods people compare new interpretability techniques against, run by Captum itself (not
re-implemented) on the :class:`~visionlens.hooked_model.HookedVisionModel` (an ``nn.Module`` whose
forward returns logits; CLIP models get the zero-shot shape head first, as for ``gradient_x_input``).
They are localization rows: the same held-out batch
(:func:`~visionlens.zoo.techniques_localization.localization_batch`), the same target (class 0 on
triggered images, the clean label otherwise, the shape class for CLIP) and the same score
(:func:`~visionlens.zoo.techniques_localization.score_heatmap`: positive heat mass inside the planted
truth, at the map's own resolution).

* ``integrated_gradients`` -- ``captum.attr.IntegratedGradients`` from a **background baseline**: each
  image's per-channel median (the plain background colour: the object and the trigger cover a minority
  of the pixels), not black. The planted truth asks "which pixels differ from an empty scene and
  matter", and the zoo's background is a dark grey, so a black baseline would spread attribution over
  every background pixel. 8 steps in quick mode (the quick row must cost < 1 s per model, randomized
  copy included), 64 in full (Gauss-Legendre); the heat is the
  attribution summed over colour channels, positive part, at pixel resolution. The completeness gap
  (``sum |delta| / sum |f(x) - f(baseline)|`` over the batch, delta being Captum's convergence delta)
  is in the details: 8 steps leave a gap of ~5-35% on the zoo models, which moves mass between pixels
  but not the localization score by much (measured: within ~0.06 of 16 steps).
* ``grad_cam`` -- ``captum.attr.LayerGradCam`` (ReLU on) on the last of the patching plugin's default
  residual / stage hooks that still has a spatial grid (at least 2 x 2): a conv net's last stage output
  (the zoo ResNet's 2 x 2 map at 32 px), CLIP's last spatial stage. For ViTs, the common adaptation
  (as in ``pytorch-grad-cam``'s ``reshape_transform``): the patch tokens of the residual stream
  entering the **last** block (``blocks.{L-1}.hook_resid_pre``), laid out on the patch grid as
  ``[B, D, h, w]``, class / register tokens dropped. Not the last block's output: a class-token readout
  never reads the last block's patch tokens, so their gradient is zero. The layer is reached through
  a visionlens hook on that hook point that passes the activation through an identity module Captum
  hooks (the hook point may be bridged onto a source module or called inline; both work alike).
* ``occlusion`` -- ``captum.attr.Occlusion`` with square windows of 1/8 of the image side (4 x 4 px on
  32 px images; 1/4 in quick mode, 8 x 8 px, for 4x fewer forward passes), stride = window, all
  channels at once, replaced by the same background baseline; the heat is the drop of the target
  logit when a window is occluded, on the window grid (8 x 8; quick: 4 x 4).

Captum is the ``bench`` extra (``pip install visionlens[bench]``); without it the rows say so.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..hook_select import default_patching_hooks
from .scores import Score
from .technique import BenchContext, Technique
from .techniques_features import prepare
from .techniques_localization import localization_batch, score_heatmap, token_grid

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel
    from .entry import ZooEntry


CAPTUM_MISSING = "captum is not installed (pip install visionlens[bench])"
IG_STEPS = {"quick": 8, "full": 32}
IG_INTERNAL_BATCH = 512  # images per forward pass inside IntegratedGradients (steps x images)
OCCLUSION_WINDOWS = {"quick": 4, "full": 8}  # windows per image side (8 / 4 px windows on 32 px images)


def captum_attr() -> Any:
    """``captum.attr`` (imported lazily: captum is an optional dependency, the ``bench`` extra)."""
    return importlib.import_module("captum.attr")


def captum_available() -> Tuple[bool, str]:
    """``(True, "")`` when ``captum.attr`` imports, else ``(False, reason)``."""
    try:
        captum_attr()
    except ImportError:
        return False, CAPTUM_MISSING
    return True, ""


def _captum_supports(model: HookedVisionModel, entry: ZooEntry) -> Tuple[bool, str]:
    return captum_available()


def background(images: torch.Tensor) -> torch.Tensor:
    """Each image's per-channel median, broadcast to the image: ``[N, C, H, W]`` (the plain background)."""
    med = images.flatten(2).median(dim=2).values  # [N, C]
    return med[:, :, None, None].expand_as(images).contiguous()


# ----------------------------------------------------------------------------- Integrated Gradients
def integrated_gradients(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor, n_steps: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Captum's Integrated Gradients of ``model(x)[i, targets[i]]``: ``(attributions [N, C, H, W], delta [N])``
    (the convergence delta: attribution sum minus ``f(x) - f(baseline)``)."""
    ig = captum_attr().IntegratedGradients(model)
    attr, delta = ig.attribute(
        x,
        baselines=baseline,
        target=targets,
        n_steps=n_steps,
        internal_batch_size=min(IG_INTERNAL_BATCH, len(x) * n_steps),
        return_convergence_delta=True,
    )
    return attr.detach(), delta.detach()


def _ig(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    x, targets = b["images"], b["targets"]
    base = background(x)
    n_steps = IG_STEPS["quick" if ctx.quick else "full"]
    attr, delta = integrated_gradients(model, x, targets, base, n_steps)
    with torch.no_grad():
        gap = (model(x) - model(base)).gather(1, targets[:, None])[:, 0]
    s = score_heatmap(attr.sum(1), b, ctx, "integrated_gradients")
    s.details.update(
        baseline="background (per-image channel median)",
        n_steps=n_steps,
        completeness_gap=round(float(delta.abs().sum() / gap.abs().sum().clamp_min(1e-6)), 4),
    )
    return s


# ----------------------------------------------------------------------------- Grad-CAM
class _Probe(nn.Module):
    """An identity module Captum can hook (the Grad-CAM layer), called from a visionlens hook."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def gradcam_layer(model: HookedVisionModel, example: torch.Tensor) -> Dict[str, Any]:
    """The Grad-CAM layer: the last default patching hook (image tower) with a spatial grid of at least 2 x 2.

    Returns ``{"hook", "prefix", "grid": (h, w), "tokens": bool}``; ``prefix`` is the number of
    class / register tokens dropped from a token map. Raises ``ValueError`` when there is none.
    """
    hooks = [h for h in default_patching_hooks(model, "position") if not h.startswith("text.")]
    if not hooks:
        raise ValueError("no residual / stage hooks to take Grad-CAM on")
    with torch.no_grad():
        _, cache = model.run_with_cache(example[:1], names_filter=hooks, return_cache_object=False)
    for h in reversed(hooks):
        a = cache[h]
        if a.ndim == 4 and min(a.shape[-2:]) >= 2:
            return {"hook": h, "prefix": 0, "grid": tuple(a.shape[-2:]), "tokens": False}
        if a.ndim == 3:
            try:
                prefix, side = token_grid(int(a.shape[1]))
            except ValueError:
                continue
            if side >= 2:
                return {"hook": h, "prefix": prefix, "grid": (side, side), "tokens": True}
    shapes = ", ".join(f"{h} {tuple(cache[h].shape[1:])}" for h in hooks[-3:])
    raise ValueError(f"no default residual / stage hook has a spatial grid of at least 2 x 2 ({shapes})")


def grad_cam(model: HookedVisionModel, x: torch.Tensor, targets: torch.Tensor, layer: Dict[str, Any]) -> torch.Tensor:
    """Captum's ``LayerGradCam`` (ReLU on) of ``model(x)[i, targets[i]]`` at ``layer`` (from
    :func:`gradcam_layer`): ``[N, h, w]`` on the layer's grid. Hooks are removed on return."""
    probe = _Probe()
    prefix, (h, w) = layer["prefix"], layer["grid"]

    def through_probe(act: torch.Tensor, hook: Any) -> torch.Tensor:
        if not layer["tokens"]:
            return probe(act)
        n, _, d = act.shape
        grid = act[:, prefix:].transpose(1, 2).reshape(n, d, h, w)
        out = probe(grid).flatten(2).transpose(1, 2)
        return torch.cat([act[:, :prefix], out], dim=1)

    gc = captum_attr().LayerGradCam(model, probe)
    with model.hooks(fwd_hooks=[(layer["hook"], through_probe)]):
        cam = gc.attribute(x, target=targets, relu_attributions=True)
    return cam.detach()[:, 0]


def _grad_cam(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    layer = ctx.cached(("gradcam_layer", id(model)), lambda: gradcam_layer(model, b["images"]))
    cam = grad_cam(model, b["images"], b["targets"], layer)
    s = score_heatmap(cam, b, ctx, "grad_cam")
    s.details["hook"] = layer["hook"]
    if layer["tokens"]:
        s.details["layout"] = f"patch tokens on the {layer['grid'][0]}x{layer['grid'][1]} grid"
    return s


def _grad_cam_supports(model: HookedVisionModel, entry: ZooEntry) -> Tuple[bool, str]:
    ok, why = captum_available()
    if not ok:
        return ok, why
    try:
        h, w = model.cfg.image_size or (32, 32)
        gradcam_layer(model, torch.rand(1, 3, h, w))
    except ValueError as exc:
        return False, str(exc)
    return True, ""


# ----------------------------------------------------------------------------- Occlusion
def occlusion(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor, window: int
) -> torch.Tensor:
    """Captum's ``Occlusion``: the drop of ``model(x)[i, targets[i]]`` when a ``window`` x ``window`` square
    (all channels, stride = window) is replaced by ``baseline``; ``[N, H, W]`` (each pixel: its window's drop)."""
    occ = captum_attr().Occlusion(model)
    c = x.shape[1]
    n_windows = (x.shape[-2] // window) * (x.shape[-1] // window)
    with torch.no_grad():
        attr = occ.attribute(
            x,
            sliding_window_shapes=(c, window, window),
            strides=(c, window, window),
            baselines=baseline,
            target=targets,
            perturbations_per_eval=max(1, min(n_windows, 512 // max(1, len(x)))),
        )
    return attr.detach().mean(1)  # the same drop on every channel of a window


def _occlusion(model: HookedVisionModel, ctx: BenchContext) -> Score:
    b = localization_batch(ctx)
    prepare(model, ctx)
    x = b["images"]
    window = max(1, x.shape[-1] // OCCLUSION_WINDOWS["quick" if ctx.quick else "full"])
    heat = occlusion(model, x, b["targets"], background(x), window)
    if heat.shape[-2] % window == 0 and heat.shape[-1] % window == 0:
        heat = F.avg_pool2d(heat[:, None], window)[:, 0]  # one cell per window
    s = score_heatmap(heat, b, ctx, "occlusion")
    s.details.update(window=f"{window}x{window} px, stride {window}", baseline="background (per-image channel median)")
    return s


TECHNIQUES: List[Technique] = [
    Technique(
        "integrated_gradients",
        "localization",
        "Captum IntegratedGradients from the image's background colour (8 steps quick, 64 full), "
        "summed over colour channels, positive part.",
        _ig,
        extra_supports=_captum_supports,
    ),
    Technique(
        "grad_cam",
        "localization",
        "Captum LayerGradCam on the last spatial residual / stage output (ViT: the patch tokens entering "
        "the last block, on the patch grid).",
        _grad_cam,
        extra_supports=_grad_cam_supports,
    ),
    Technique(
        "occlusion",
        "localization",
        "Captum Occlusion: drop of the target logit when a window (1/8 of the side; quick: 1/4) is replaced "
        "by the background colour.",
        _occlusion,
        extra_supports=_captum_supports,
    ),
]

__all__ = [
    "CAPTUM_MISSING",
    "TECHNIQUES",
    "background",
    "captum_available",
    "grad_cam",
    "gradcam_layer",
    "integrated_gradients",
    "occlusion",
]
