"""Activation vectors from any hook: a streamed, shuffled, memory-bounded and resumable source.

Every activation becomes a set of vectors over its *units* (:func:`visionlens.hook_select.unit_layout`):
ViT tokens ``[B, T, D]`` give ``B * T`` vectors of ``D``; conv maps ``[B, C, H, W]`` give ``B * H * W``
vectors of ``C`` (one per position, the position kept); pooled ``[B, D]`` gives ``B``. UNet hooks are read
at chosen timesteps: :func:`unet_inputs` noises the images to each timestep and calls the UNet.

:class:`ActivationSource` walks an image source once per pass (:func:`visionlens.data.as_images`), holds at
most ``buffer_size`` vectors, shuffles inside that buffer and yields batches; ``state_dict()`` records how far
it got, so an interrupted walk resumes where it stopped (``load_state_dict``).

:class:`visionlens.scale.ray_source.RayActivationSource` is the same source with the forwards on Ray actors,
shard by shard; it yields the same chunks in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ...data import Images, as_images
from ...hook_select import unit_layout
from ...validation import VisionLensError

if TYPE_CHECKING:
    from ...hooked_model import HookedVisionModel

__all__ = [
    "ActivationSource",
    "ActivationBatch",
    "Forward",
    "image_forward",
    "unet_inputs",
    "unet_forward",
    "to_vectors",
    "from_vectors",
    "layout_of",
]

# forward(model, images, timestep) -> (args, kwargs) of the model call
Forward = Callable[["HookedVisionModel", Tensor, Optional[int]], Tuple[tuple, dict]]


def layout_of(act: Tensor) -> str:
    """``"map"`` (``[B, C, *spatial]``), ``"tokens"`` (``[B, T, D]``) or ``"vector"`` (``[B, D]``)."""
    return {2: "vector", 3: "tokens"}.get(act.ndim, "map")


def to_vectors(hook: str, act: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
    """``act`` -> ``(vectors [B * positions, units], position shape)`` (channels last for maps)."""
    samples, pos_shape = unit_layout(hook, act)
    return samples.reshape(-1, samples.shape[-1]), tuple(int(s) for s in pos_shape)


def from_vectors(vectors: Tensor, batch: int, pos_shape: Sequence[int], layout: str) -> Tensor:
    """Inverse of :func:`to_vectors` for ``vectors [B * positions, F]``: maps come back ``[B, F, *spatial]``,
    tokens ``[B, T, F]``, vectors ``[B, F]`` (so feature activations look like the hook's own layout)."""
    f = vectors.shape[-1]
    x = vectors.reshape(batch, *pos_shape, f)
    return x.movedim(-1, 1) if layout == "map" else x


def image_forward(model: HookedVisionModel, images: Tensor, timestep: Optional[int] = None) -> Tuple[tuple, dict]:
    """The plain call ``model(images)`` (classifiers, ViTs, CLIP image towers)."""
    return (images,), {}


def _alpha_bar(t: int, n_steps: int = 1000) -> float:
    """Cosine schedule (Nichol & Dhariwal 2021): the signal fraction at timestep ``t``."""
    f = lambda s: math.cos((s / n_steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return f(t) / f(0)


def unet_inputs(
    model: HookedVisionModel, images: Tensor, timestep: Optional[int], seed: int = 0, context: Optional[Tensor] = None
) -> Tuple[tuple, dict]:
    """``(sample, t[, encoder_hidden_states]), kwargs`` for a diffusion UNet: ``images`` (already in the UNet's
    sample space, ``[B, in_chans, H, W]``) noised to ``timestep`` on a cosine schedule with seeded noise;
    the other arguments (text context, class labels) from the adapter's example inputs unless ``context`` is
    given (a fixed context: the features are those of one conditioning)."""
    if timestep is None:
        raise VisionLensError("A diffusion UNet needs timesteps: pass timesteps=[...] (e.g. [100, 500, 900]).")
    example = model.adapter.example_inputs(batch=int(images.shape[0]))
    if example is None:
        raise VisionLensError(f"{model.cfg.architecture} gives no example inputs to build a UNet call from.")
    args, kwargs = example
    g = torch.Generator().manual_seed(seed * 1000 + int(timestep))
    noise = torch.randn(images.shape, generator=g).to(images)
    ab = _alpha_bar(int(timestep))
    sample = math.sqrt(ab) * images + math.sqrt(1.0 - ab) * noise
    t = torch.tensor(int(timestep), device=images.device)
    rest = list(args[2:])
    if context is not None and rest:
        rest[0] = context.expand(images.shape[0], *context.shape[1:]).to(images)
    return (sample, t, *rest), kwargs


def unet_forward(seed: int = 0, context: Optional[Tensor] = None) -> Forward:
    """A :data:`Forward` for UNets (see :func:`unet_inputs`)."""
    return lambda model, images, t: unet_inputs(model, images, t, seed=seed, context=context)


def default_forward(model: HookedVisionModel) -> Forward:
    """:func:`unet_forward` for diffusion UNets, :func:`image_forward` otherwise."""
    return unet_forward() if model.cfg.family == "diffusion" else image_forward


@dataclass
class ActivationBatch:
    """One batch of activation vectors: ``x [N, D]`` and where each came from, ``index [N, 3]``:
    (image index, flat position, timestep or -1)."""

    x: Tensor
    index: Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


class ActivationSource:
    """Stream activation vectors of ``hook`` over ``images`` (anything :func:`~visionlens.data.as_images` takes).

    ``positions``: keep every position (``None``) or a seeded random subset of that many per image (tokens
    and maps; cuts the memory per image). ``timesteps``: for UNets, each image batch is run once per timestep.
    ``buffer_size`` bounds the vectors held at once (the shuffle window). ``max_images`` stops a pass early.
    """

    def __init__(
        self,
        model: HookedVisionModel,
        hook: str,
        images: Any,
        *,
        batch_size: int = 64,
        positions: Optional[int] = None,
        timesteps: Optional[Sequence[int]] = None,
        forward: Optional[Forward] = None,
        buffer_size: int = 65_536,
        max_images: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        if buffer_size < 1 or batch_size < 1:
            raise VisionLensError(f"buffer_size and batch_size must be >= 1, got {buffer_size}, {batch_size}.")
        if positions is not None and positions < 1:
            raise VisionLensError(f"positions must be None (all) or >= 1, got {positions}.")
        self.model = model
        self.hook = model.resolve_hook(hook)
        self.images: Images = images if isinstance(images, Images) else as_images(images)
        self.batch_size = batch_size
        self.positions = positions
        self.timesteps = list(timesteps) if timesteps else [None]
        if model.cfg.family == "diffusion" and self.timesteps == [None]:
            raise VisionLensError(f"{hook} is a UNet hook: pass timesteps=[...] to read it at chosen timesteps.")
        self.forward = forward or default_forward(model)
        self.buffer_size = buffer_size
        self.max_images = max_images
        self.seed = seed
        self.images_done = 0  # images fully read in the current pass (the resume point)
        self.passes = 0
        self.layout: Optional[str] = None
        self.pos_shape: Optional[Tuple[int, ...]] = None
        self.d_in: Optional[int] = None

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Where the walk is: images read in this pass, passes done, the settings that must match on resume."""
        return {"images_done": self.images_done, "passes": self.passes, "hook": self.hook, "seed": self.seed}

    def load_state_dict(self, state: dict) -> "ActivationSource":
        if state.get("hook") != self.hook or state.get("seed") != self.seed:
            raise VisionLensError(
                f"Resume state is for hook {state.get('hook')!r} seed {state.get('seed')}, "
                f"this source reads {self.hook!r} seed {self.seed}."
            )
        self.images_done = int(state["images_done"])
        self.passes = int(state["passes"])
        return self

    # ------------------------------------------------------------------ reading
    @torch.no_grad()
    def read_batch(self, x: Tensor, start: int) -> Iterator[ActivationBatch]:
        """The chunks (one per timestep) of the image batch ``x`` whose first image has index ``start``."""
        for t in self.timesteps:
            args, kwargs = self.forward(self.model, x, t)
            _, cache = self.model.run_with_cache(*args, names_filter=[self.hook], return_cache_object=False, **kwargs)
            act = cache[self.hook].detach()
            vec, pos_shape = to_vectors(self.hook, act)
            self.layout, self.pos_shape, self.d_in = layout_of(act), pos_shape, int(vec.shape[-1])
            n_img = int(act.shape[0])
            n_pos = max(1, int(vec.shape[0]) // n_img)
            img = torch.arange(start, start + n_img).repeat_interleave(n_pos)
            pos = torch.arange(n_pos).repeat(n_img)
            keep: Optional[Tensor] = None
            if self.positions is not None and self.positions < n_pos:
                g = torch.Generator().manual_seed(self.seed * 7919 + start * 31 + (t or 0))
                rank = torch.rand(n_img, n_pos, generator=g).argsort(1)[:, : self.positions]
                keep = (rank + torch.arange(n_img)[:, None] * n_pos).reshape(-1)
            idx = torch.stack([img, pos, torch.full_like(img, -1 if t is None else int(t))], 1)
            if keep is not None:
                vec, idx = vec[keep], idx[keep]
            yield ActivationBatch(vec.float().cpu(), idx)

    def iter_chunks(self) -> Iterator[ActivationBatch]:
        """Unshuffled vectors batch by batch from the resume point to the end of one pass."""
        start = self.images_done
        for i, x in self.images.batches(self.model, self.batch_size, start=start, limit=self.max_images):
            yield from self.read_batch(x, i)
            self.images_done = i + int(x.shape[0])
        self.images_done = 0
        self.passes += 1

    def batches(self, batch_size: int = 256, shuffle: bool = True) -> Iterator[Tensor]:
        """One pass as shuffled batches ``[batch_size, D]`` through a buffer of at most ``buffer_size`` vectors:
        the buffer fills, is shuffled, and its first half is served before it refills (the SAELens scheme)."""
        g = torch.Generator().manual_seed(self.seed + 7 * self.passes)
        buf: list[Tensor] = []
        held = 0

        def serve(final: bool) -> Iterator[Tensor]:
            nonlocal buf, held
            x = torch.cat(buf) if buf else torch.zeros(0)
            if shuffle and len(x):
                x = x[torch.randperm(len(x), generator=g)]
            keep = 0 if final else len(x) // 2
            out, rest = x[: len(x) - keep], x[len(x) - keep :]
            n_full = len(out) // batch_size * batch_size
            for i in range(0, n_full, batch_size):
                yield out[i : i + batch_size]
            tail = out[n_full:]
            buf = [t for t in (tail, rest) if len(t)]
            held = sum(len(t) for t in buf)
            if final and len(tail):
                yield tail

        for chunk in self.iter_chunks():
            buf.append(chunk.x)
            held += len(chunk)
            if held >= self.buffer_size:
                yield from serve(final=False)
        yield from serve(final=True)

    def collect(self, n: Optional[int] = None, with_index: bool = False) -> Any:
        """Up to ``n`` vectors of one pass in reading order (``[n, D]``; with ``with_index``, also ``[n, 3]``)."""
        xs, idx, got = [], [], 0
        for chunk in self.iter_chunks():
            xs.append(chunk.x)
            idx.append(chunk.index)
            got += len(chunk)
            if n is not None and got >= n:
                break
        if not xs:
            raise VisionLensError(f"No activations read from {self.hook}: the image source is empty.")
        x, i = torch.cat(xs)[:n], torch.cat(idx)[:n]
        self.images_done = 0
        return (x, i) if with_index else x

    def loader(self, batch_size: int = 256) -> "SourceLoader":
        """A re-iterable of shuffled batches (one pass per iteration), what a training loop takes as its data."""
        return SourceLoader(self, batch_size)


class SourceLoader:
    """``for x in loader``: one shuffled pass of an :class:`ActivationSource` per iteration."""

    def __init__(self, source: ActivationSource, batch_size: int) -> None:
        self.source, self.batch_size = source, batch_size

    def __iter__(self) -> Iterator[Tensor]:
        return self.source.batches(self.batch_size)
