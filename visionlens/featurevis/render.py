"""Render feature visualizations: N objectives optimised together, one image (or group) each.

:func:`render` follows Lucid's ``render_vis`` defaults (Adam, lr 0.05, 512 steps, 128 px, FFT
parameterization with decorrelated colour, the standard transforms) and is built for throughput:

* **Batched.** Objective ``i`` owns images ``i*k .. i*k+k-1`` (``k = images_per_objective``) and
  reads only their activations, so the whole batch shares one forward and one backward pass.
* **Deterministic per image.** Image ``j`` has its own ``torch.Generator`` (seed ``seeds[j]``,
  default ``seed + j``) for its initial parameters and every random transform; Adam is elementwise.
  A batched render of N units therefore gives (to float precision) the images of N single renders
  with the same seeds, and chunking with ``batch_size`` does not change any image.
* **No wasted compute.** Hooks capture the activations the objectives need; as soon as the last of
  them has fired, a private exception ends the forward pass, so later layers never run. Model
  parameters are frozen (``requires_grad_(False)``) and the model is in eval mode for the render;
  both are restored afterwards, and every hook is removed in a ``finally`` (also on errors).
* **Any HookedVisionModel whose forward takes an image**: conv nets at any size, ViTs / CLIP visual
  towers at their fixed ``cfg.image_size`` (transformed images are resized to it), diffusion UNets
  with ``forward_kwargs={"timestep": t, "encoder_hidden_states": ctx}`` (tensors with batch 1 are
  expanded to the batch). The ``[0, 1]`` image is mapped to the model's input with ``cfg.mean/std``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.validation import VisionLensError

from .objectives import OUTPUT, Objective, as_objectives
from .param import ImageParam, make_param
from .transforms import Compose, Resize, Transform, make_transforms

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = ["render", "Rendering", "evaluate", "model_input_size", "to_model_input"]

LUCID_DEFAULTS: dict[str, Any] = {"steps": 512, "lr": 0.05, "size": 128, "param": "fft", "transforms": "standard"}


class _StopForward(Exception):
    """Raised from a hook once every needed activation is captured (never escapes this module)."""


# ----------------------------------------------------------------------------- results
@dataclass
class Rendering:
    """What :func:`render` returns.

    ``images``: ``[N * k, C, H, W]`` in ``[0, 1]`` (objective-major; ``group(i)`` gives objective
    ``i``'s ``k`` images). ``curves``: ``[N, steps]`` mean objective value of each objective's images
    at each step (on the transformed images the optimiser saw). ``step_times``: ``[N, steps]``
    seconds since the objective's chunk started, at the end of each step. ``initial_values`` /
    ``final_values``: ``[N]`` objective values of the untransformed start / final images.
    """

    images: Tensor
    objectives: list[Objective]
    curves: Tensor
    step_times: Tensor
    seeds: list[int]
    images_per_objective: int = 1
    initial_values: Optional[Tensor] = None
    final_values: Optional[Tensor] = None
    initial_images: Optional[Tensor] = None
    snapshots: dict[int, Tensor] = field(default_factory=dict)
    elapsed: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def steps(self) -> int:
        return int(self.curves.shape[1])

    def group(self, i: int) -> Tensor:
        """The ``k`` images of objective ``i``: ``[k, C, H, W]``."""
        k = self.images_per_objective
        return self.images[i * k : (i + 1) * k]

    def pil(self) -> list[Any]:
        """The images as PIL RGB images (first three channels)."""
        return to_pil(self.images)

    def grid(self, pad: int = 2) -> Any:
        """All images in one PIL image: one row per objective, ``k`` columns."""
        from PIL import Image

        k = self.images_per_objective
        n = len(self.objectives)
        _, _, h, w = self.images.shape
        canvas = Image.new("RGB", (k * (w + pad) + pad, n * (h + pad) + pad), (255, 255, 255))
        for j, im in enumerate(self.pil()):
            r, c = divmod(j, k)
            canvas.paste(im, (pad + c * (w + pad), pad + r * (h + pad)))
        return canvas

    def neuron_steps_per_second(self) -> float:
        return len(self.objectives) * self.steps / self.elapsed if self.elapsed > 0 else float("nan")

    def __repr__(self) -> str:
        return (
            f"Rendering({len(self.objectives)} objectives x {self.images_per_objective} images, "
            f"{tuple(self.images.shape[-2:])} px, {self.steps} steps, {self.elapsed:.1f}s)"
        )


def to_pil(images: Tensor) -> list[Any]:
    from PIL import Image

    x = images.detach().float().cpu().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = (x[:, :3] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return [Image.fromarray(a) for a in x]


# ----------------------------------------------------------------------------- model plumbing
def model_input_size(model: HookedVisionModel) -> Optional[tuple[int, int]]:
    """The fixed input size ``(H, W)`` a model needs, or ``None`` when any size works."""
    cfg = model.cfg
    if cfg.image_size is not None and not getattr(cfg, "dynamic_img_size", False):
        return (int(cfg.image_size[0]), int(cfg.image_size[1]))
    return None


def _mean_std(model: HookedVisionModel, channels: int, device: Any) -> tuple[Tensor, Tensor]:
    cfg = model.cfg

    def vec(v: Sequence[float], fill: float) -> Tensor:
        v = list(v) if v else [fill]
        if len(v) < channels:
            v = (v * channels)[:channels] if len(v) == 1 else v + [v[-1]] * (channels - len(v))
        return torch.tensor(v[:channels], dtype=torch.float32, device=device).view(1, channels, 1, 1)

    return vec(cfg.mean, 0.0), vec(cfg.std, 1.0)


def to_model_input(model: HookedVisionModel, images: Tensor) -> Tensor:
    """``[0, 1]`` images -> the model's normalised input (``(x - cfg.mean) / cfg.std``)."""
    mean, std = _mean_std(model, images.shape[1], images.device)
    return (images - mean.to(images.dtype)) / std.to(images.dtype)


def _expand_kwargs(obj: Any, batch: int) -> Any:
    if isinstance(obj, Tensor):
        if obj.ndim >= 1 and obj.shape[0] == 1 and batch > 1:
            return obj.expand(batch, *obj.shape[1:])
        return obj
    if isinstance(obj, dict):
        return {k: _expand_kwargs(v, batch) for k, v in obj.items()}
    return obj


def _first_tensor(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for o in out:
            if isinstance(o, Tensor):
                return o
    raise VisionLensError(
        f"Cannot read a tensor from the model output ({type(out).__name__}) for an 'output' objective."
    )


class _Session:
    """Hooks that capture (and stop at) the needed activations; frozen params; eval mode; all undone on exit."""

    def __init__(self, model: HookedVisionModel, hooks: Sequence[str], want_output: bool, stop: bool = True):
        self.model = model
        self.hooks = list(dict.fromkeys(hooks))
        self.want_output = want_output
        self.stop = stop and not want_output and bool(self.hooks)
        self.acts: dict[str, Tensor] = {}
        self._stack = contextlib.ExitStack()

    def _capture(self, t: Tensor, hook: Any) -> None:
        acts = self.acts
        acts[hook.name] = t
        if self.stop and len(acts) == len(self.hooks):
            raise _StopForward

    def __enter__(self) -> "_Session":
        model = self.model
        stack = self._stack
        try:
            flags = [(p, p.requires_grad) for p in model.parameters()]

            def restore_params() -> None:
                for p, f in flags:
                    p.requires_grad_(f)

            stack.callback(restore_params)
            for p, _ in flags:
                p.requires_grad_(False)
            was_training = model.training
            stack.callback(lambda: model.train(was_training))
            model.eval()
            validate = getattr(model, "validate_inputs", None)
            if validate is not None:
                stack.callback(lambda: setattr(model, "validate_inputs", validate))
            stack.enter_context(model.hooks(fwd_hooks=[(h, self._capture) for h in self.hooks]))
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.acts = {}
        self._stack.close()

    def run(self, x: Tensor, forward_kwargs: Mapping[str, Any]) -> dict[str, Tensor]:
        self.acts = {}
        if not self.hooks and not self.want_output:
            return self.acts  # image-only objectives (regularizers): the model need not run
        try:
            out = self.model(x, **forward_kwargs)
            if self.want_output:
                self.acts[OUTPUT] = _first_tensor(out)
        except _StopForward:
            pass
        if getattr(self.model, "validate_inputs", False):
            self.model.validate_inputs = False  # validated once; skip the per-step checks
        missing = [h for h in self.hooks if h not in self.acts]
        if missing:
            raise VisionLensError(
                f"Hook(s) {', '.join(missing)} did not fire on an image forward pass; choose hooks "
                "on the image path (see `visionlens hooks SPEC`)."
            )
        return self.acts


def _needed_hooks(objectives: Sequence[Objective]) -> tuple[list[str], bool]:
    hooks = list(dict.fromkeys(h for o in objectives for h in o.hooks))
    want_output = OUTPUT in hooks
    return [h for h in hooks if h != OUTPUT], want_output


def _values(objectives: Sequence[Objective], acts: Mapping[str, Tensor], image: Tensor, k: int) -> Tensor:
    """``[N, k]``: objective ``i`` evaluated on its own images ``i*k .. i*k+k-1``."""
    vals = []
    for i, obj in enumerate(objectives):
        sl = slice(i * k, (i + 1) * k)
        sub = {h: acts[h][sl] for h in obj.hooks}
        v = obj(sub, image[sl] if obj.needs_image else None)
        if v.ndim != 1 or v.shape[0] != k:
            raise VisionLensError(
                f"Objective {obj.name!r} returned shape {tuple(v.shape)}; expected one value per image ([{k}])."
            )
        vals.append(v)
    return torch.stack(vals)


def evaluate(
    model: HookedVisionModel,
    objectives: Any,
    images: Tensor,
    *,
    images_per_objective: int = 1,
    forward_kwargs: Optional[Mapping[str, Any]] = None,
) -> Tensor:
    """Objective values ``[N]`` (mean over each objective's images) of ``[0, 1]`` images, untransformed
    (resized to the model's fixed input size if it has one)."""
    objs = as_objectives(objectives, model)
    k = images_per_objective
    if images.shape[0] != len(objs) * k:
        raise VisionLensError(f"Expected {len(objs) * k} images ({len(objs)} objectives x {k}), got {images.shape[0]}.")
    dev = model.device
    images = images.to(dev)
    fixed = model_input_size(model)
    x = (
        images
        if fixed is None or tuple(images.shape[-2:]) == fixed
        else F.interpolate(images, size=fixed, mode="bilinear", align_corners=False)
    )
    hooks, want_output = _needed_hooks(objs)
    fkw = _expand_kwargs(dict(forward_kwargs or {}), images.shape[0])
    with torch.no_grad(), _Session(model, hooks, want_output) as sess:
        acts = sess.run(to_model_input(model, x), fkw)
        return _values(objs, acts, images, k).mean(dim=1).float().cpu()


# ----------------------------------------------------------------------------- render
def render(
    model: HookedVisionModel,
    objectives: Any,
    *,
    steps: int = 512,
    size: Union[None, int, Sequence[int]] = None,
    lr: Optional[float] = None,
    lr_end: Optional[float] = None,
    param: Union[str, Callable[..., ImageParam]] = "fft",
    decorrelate: bool = True,
    transforms: Union[None, str, Transform, Sequence[Any]] = "standard",
    images_per_objective: int = 1,
    seed: int = 0,
    seeds: Optional[Sequence[int]] = None,
    batch_size: Optional[int] = None,
    optimizer: Union[str, Callable[[list[Tensor]], torch.optim.Optimizer]] = "adam",
    sd: float = 0.01,
    decay_power: float = 1.0,
    init: Optional[Tensor] = None,
    forward_kwargs: Optional[Mapping[str, Any]] = None,
    thresholds: Sequence[int] = (),
    progress: bool = True,
    evaluate_start_end: bool = True,
    callback: Optional[Callable[[int, Tensor], Any]] = None,
) -> Rendering:
    """Optimise one image (or ``images_per_objective``) per objective; see the module docstring.

    Args:
        model: a :class:`visionlens.HookedVisionModel` (anything with ``hooks()``, ``cfg``, ``resolve_hook``).
        objectives: an objective, a string (``"mixed4a:476"``), or a list of them.
        steps: optimisation steps (Lucid: 512).
        size: image size (int or ``(H, W)``); default 128, or the model's fixed ``cfg.image_size``.
        lr: Adam learning rate (Lucid: 0.05; 0.005 for ``param="cppn"``).
        lr_end: when given, the learning rate falls from ``lr`` to ``lr_end`` on a cosine over the
            steps (a high start and a low end reach Lucid's 512-step objective in far fewer steps;
            see ``docs/feature_visualization.md``, "Speed").
        param: ``"fft"``, ``"pixel"``, ``"cppn"`` or a factory ``f(n, size, channels, generators=...)``.
        decorrelate: Lucid's colour decorrelation (3-channel models; ignored by CPPN).
        transforms: ``"standard"`` (Lucid's set), ``"scaled"`` (its pad / jitter scaled by size / 128),
            ``"none"``, a Transform or a list of them.
        images_per_objective: images per objective (use with ``diversity``).
        seed, seeds: image ``j`` is seeded ``seeds[j]`` (default ``seed + j``).
        batch_size: objectives optimised together (default: all); does not change the images.
        optimizer: ``"adam"`` or ``f(params) -> torch.optim.Optimizer``.
        sd, decay_power: initial spectrum / pixel scale and the FFT frequency decay.
        init: start images ``[N * k or 1, C, H, W]`` in ``[0, 1]`` (pixel / FFT parameterizations).
        forward_kwargs: extra model arguments (UNets: ``timestep``, ``encoder_hidden_states``).
        thresholds: steps at which to keep a copy of the images (``rendering.snapshots[step]``).
        progress: show a tqdm progress bar.
        evaluate_start_end: also compute the untransformed objective values of the start and final images.
        callback: ``callback(step, values [N])`` after every step.
    """
    t_start = time.perf_counter()
    objs = as_objectives(objectives, model)
    n_obj, k = len(objs), int(images_per_objective)
    if k < 1:
        raise VisionLensError(f"images_per_objective must be >= 1, got {k}.")
    if steps < 1:
        raise VisionLensError(f"steps must be >= 1, got {steps}.")
    n_img = n_obj * k
    if seeds is None:
        seeds = [seed + j for j in range(n_img)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n_img:
        raise VisionLensError(f"Expected {n_img} seeds (one per image: {n_obj} objectives x {k}), got {len(seeds)}.")
    fixed = model_input_size(model)
    if size is None:
        size = fixed if fixed is not None else LUCID_DEFAULTS["size"]
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if lr is None:
        lr = 0.005 if param == "cppn" else LUCID_DEFAULTS["lr"]
    tf = make_transforms(transforms, min(hw))
    if fixed is not None:
        tf = Compose(list(tf.transforms) + [Resize(fixed)])
    channels = int(getattr(model.cfg, "in_chans", 3) or 3)
    dev = model.device
    if init is not None:
        init = init.detach().float()
        if init.ndim == 3:
            init = init.unsqueeze(0)
        if init.shape[0] not in (1, n_img):
            raise VisionLensError(f"init must hold 1 or {n_img} images, got {init.shape[0]}.")
        if tuple(init.shape[-2:]) != hw:
            init = F.interpolate(init, size=hw, mode="bilinear", align_corners=False).clamp(0, 1)
    per_chunk = n_obj if not batch_size else max(1, int(batch_size))
    chunks = [list(range(i, min(i + per_chunk, n_obj))) for i in range(0, n_obj, per_chunk)]
    hooks, want_output = _needed_hooks(objs)

    curves = torch.zeros(n_obj, steps)
    times = torch.zeros(n_obj, steps)
    images_out = torch.zeros(n_img, channels, *hw)
    initial = torch.zeros(n_img, channels, *hw)
    snapshots: dict[int, Tensor] = {int(t): torch.zeros(n_img, channels, *hw) for t in thresholds}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps * len(chunks), desc=f"featurevis ({n_obj} objectives)", leave=False)
    try:
        with torch.enable_grad(), _Session(model, hooks, want_output) as sess:
            for chunk in chunks:
                img_idx = [j for i in chunk for j in range(i * k, (i + 1) * k)]
                c_objs = [objs[i] for i in chunk]
                gens = [torch.Generator().manual_seed(seeds[j]) for j in img_idx]
                p = _make(param, len(img_idx), hw, channels, decorrelate, sd, decay_power, gens)
                if init is not None:
                    p.set_image(init if init.shape[0] == 1 else init[img_idx])
                p = p.to(dev)
                opt = _optimizer(optimizer, [q for q in p.parameters() if q.requires_grad], lr)
                sched = _cosine(opt, steps, lr_end) if lr_end is not None else None
                fkw = _expand_kwargs(dict(forward_kwargs or {}), len(img_idx))
                with torch.no_grad():
                    initial[img_idx] = p().float().cpu()
                t0 = time.perf_counter()
                for step in range(steps):
                    img = p()
                    x = to_model_input(model, tf(img, gens))
                    acts = sess.run(x, fkw)
                    vals = _values(c_objs, acts, img, k)
                    loss = -vals.sum()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    sess.acts = {}
                    v = vals.detach().mean(dim=1).float().cpu()
                    curves[chunk, step] = v
                    times[chunk, step] = time.perf_counter() - t0
                    if step + 1 in snapshots:
                        with torch.no_grad():
                            snapshots[step + 1][img_idx] = p().float().cpu()
                    if callback is not None:
                        callback(step, v)
                    if bar is not None:
                        bar.update(1)
                        if step % 16 == 0 or step == steps - 1:
                            bar.set_postfix(objective=f"{float(v.mean()):.4g}", refresh=False)
                with torch.no_grad():
                    images_out[img_idx] = p().float().cpu()
                del p, opt
    finally:
        if bar is not None:
            bar.close()
    init_vals = final_vals = None
    if evaluate_start_end:
        fkw = forward_kwargs or {}

        def values_of(images: Tensor) -> Tensor:
            out = []
            for ch in chunks:
                idx = [j for i in ch for j in range(i * k, (i + 1) * k)]
                out.append(
                    evaluate(model, [objs[i] for i in ch], images[idx], images_per_objective=k, forward_kwargs=fkw)
                )
            return torch.cat(out)

        init_vals, final_vals = values_of(initial), values_of(images_out)
    tf_desc = transforms if isinstance(transforms, (str, type(None))) else repr(tf)
    settings = {
        "steps": steps,
        "size": list(hw),
        "lr": lr,
        "lr_end": lr_end,
        "param": param if isinstance(param, str) else repr(param),
        "decorrelate": decorrelate,
        "transforms": tf_desc,
        "images_per_objective": k,
        "batch_size": per_chunk,
        "model_input_size": list(fixed) if fixed else None,
    }
    return Rendering(
        images=images_out,
        objectives=objs,
        curves=curves,
        step_times=times,
        seeds=seeds,
        images_per_objective=k,
        initial_values=init_vals,
        final_values=final_vals,
        initial_images=initial,
        snapshots=snapshots,
        elapsed=time.perf_counter() - t_start,
        settings=settings,
    )


def _make(
    param: Any,
    n: int,
    hw: tuple[int, int],
    channels: int,
    decorrelate: bool,
    sd: float,
    decay_power: float,
    gens: list[torch.Generator],
) -> ImageParam:
    if isinstance(param, str):
        return make_param(
            param, n, hw, channels, decorrelate=decorrelate, sd=sd, decay_power=decay_power, generators=gens
        )
    if callable(param):
        return param(n, hw, channels, generators=gens)
    raise VisionLensError(f"param must be 'fft', 'pixel', 'cppn' or a factory, got {param!r}.")


def _cosine(opt: torch.optim.Optimizer, steps: int, lr_end: float) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of every group's learning rate to ``lr_end`` at the last step."""
    if lr_end < 0:
        raise VisionLensError(f"lr_end must be >= 0, got {lr_end}.")
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps - 1), eta_min=float(lr_end))


def _optimizer(spec: Any, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    if spec == "adam":
        return torch.optim.Adam(params, lr=lr)
    if callable(spec):
        return spec(params)
    raise VisionLensError(f"optimizer must be 'adam' or a callable params -> torch.optim.Optimizer, got {spec!r}.")
