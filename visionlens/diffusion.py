"""Hooked UNets inside diffusers pipelines: per-denoising-step caches and step-aware hooks.

A UNet wrapped with ``HookedVisionModel.from_diffusers`` keeps running as the pipeline's own
``pipe.unet``: its hooks are bridged onto the source modules, so ``pipe(...)`` fires them. The
helpers here add what a pipeline run needs on top:

* :func:`run_pipeline_with_cache` runs the pipeline and returns ``(output, StepCache)``: one
  :class:`~visionlens.cache.VisionActivationCache` per UNet call ("step"), with the timestep of
  each. ``cache[3]`` is step 3's cache, ``cache["mid_block.hook_out"]`` stacks that hook over
  steps ``[n_steps, batch, ...]``. ``on_step(step, timestep, step_cache)`` streams each step
  (pass ``keep=False`` to hold nothing).
* :func:`run_pipeline_with_hooks` runs the pipeline with TransformerLens hooks; inside a hook,
  ``model.adapter.current_step`` / ``current_timestep`` say which denoising step is running.

Steps are UNet calls. ``StableDiffusionPipeline`` makes one call per denoising step; with
classifier-free guidance that call holds the unconditional and the text-conditioned batch
concatenated (``[2 * batch, ...]``, unconditional first).

:func:`tiny_stable_diffusion_pipeline` assembles a complete ``StableDiffusionPipeline`` from small
random configs and local files only (UNet, VAE, CLIP text encoder, a CLIP tokenizer written from
open_clip's bundled BPE vocabulary), for tests and offline demos.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor

from .adapters.diffusers_unet import UNetAdapter
from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = [
    "StepCache",
    "run_pipeline_with_cache",
    "run_pipeline_with_hooks",
    "tiny_stable_diffusion_pipeline",
    "write_clip_tokenizer",
    "tiny_unet",
]


@dataclass
class StepCache:
    """Activations of a pipeline run, one cache per UNet call (denoising step)."""

    steps: list[Any] = field(default_factory=list)
    timesteps: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.steps)

    def __getitem__(self, key: Union[int, str]) -> Any:
        if isinstance(key, str):
            return self.stack(key)
        return self.steps[key]

    def keys(self) -> list[str]:
        return list(self.steps[0].keys()) if self.steps else []

    def stack(self, name: str) -> Tensor:
        """``name`` over steps: ``[n_steps, ...]``."""
        if not self.steps:
            raise KeyError("The step cache is empty (was keep=False?).")
        missing = [i for i, s in enumerate(self.steps) if name not in s.cache_dict]
        if missing:
            raise KeyError(f"{name!r} is not cached (steps {missing[:5]}); cached names: {self.keys()[:8]}...")
        return torch.stack([s.cache_dict[name] for s in self.steps])

    def to(self, device: Any) -> "StepCache":
        for s in self.steps:
            s.to(device)
        return self

    def __repr__(self) -> str:
        return f"StepCache({len(self.steps)} steps, {len(self.keys())} hooks per step)"


def _unet_adapter(model: HookedVisionModel) -> UNetAdapter:
    adapter = getattr(model, "adapter", None)
    if not isinstance(adapter, UNetAdapter):
        raise VisionLensError(
            "Expected a HookedVisionModel wrapping a diffusers UNet (HookedVisionModel.from_diffusers)."
        )
    return adapter


def _check(model: HookedVisionModel, pipe: Any) -> Any:
    adapter = _unet_adapter(model)
    pipe = pipe if pipe is not None else adapter.pipeline
    if pipe is None:
        raise VisionLensError(
            "No pipeline: pass pipe=..., or build the model with HookedVisionModel.from_diffusers(pipe)."
        )
    if getattr(pipe, "unet", None) is not model.source:
        raise VisionLensError(
            "The pipeline's UNet is not the wrapped model's source module; build the model from this "
            "pipeline (HookedVisionModel.from_diffusers(pipe)) or set pipe.unet = model.source."
        )
    return pipe


def _step_tracking(model: HookedVisionModel, on_start: Callable[[Any], None], on_end: Callable[[], None]) -> list[Any]:
    unet = model.source

    def pre(module: Any, args: tuple, kwargs: dict) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        on_start(t)

    def post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        on_end()

    return [unet.register_forward_pre_hook(pre, with_kwargs=True), unet.register_forward_hook(post, with_kwargs=True)]


def _timestep_value(t: Any) -> Any:
    if isinstance(t, Tensor):
        t = t.detach().cpu()
        return t.item() if t.numel() == 1 else t
    return t


def run_pipeline_with_cache(
    model: HookedVisionModel,
    *pipe_args: Any,
    pipe: Any = None,
    names_filter: Any = None,
    device: Any = None,
    on_step: Optional[Callable[[int, Any, Any], None]] = None,
    keep: bool = True,
    **pipe_kwargs: Any,
) -> tuple[Any, StepCache]:
    """Run ``pipe(*pipe_args, **pipe_kwargs)`` caching the selected hooks at every UNet call.

    ``names_filter``: ``None`` (every hook), a name, a list of names, or a predicate, as in
    ``run_with_cache``. ``device``: where cached tensors go (e.g. ``"cpu"``). Returns the
    pipeline output and a :class:`StepCache`. All hooks are removed afterwards, also on error.
    """
    pipe = _check(model, pipe)
    nf = model._check_names_filter(names_filter)
    if nf is None:
        names = list(model.hook_dict)
    elif isinstance(nf, str):
        names = [nf]
    elif isinstance(nf, (list, tuple)):
        names = list(nf)
    elif callable(nf):
        names = [n for n in model.hook_dict if nf(n)]
    else:
        raise VisionLensError(
            f"names_filter: expected None, a hook name, a list of names or a predicate, got {type(nf).__name__}."
        )
    adapter = _unet_adapter(model)
    cache_cls = adapter.cache_class()
    result = StepCache()
    state: dict[str, Any] = {"step": -1, "current": None, "t": None}

    def save(tensor: Tensor, hook: Any) -> None:
        if state["current"] is not None:
            state["current"][hook.name] = tensor.detach().to(device) if device is not None else tensor.detach()

    def start(t: Any) -> None:
        state["step"] += 1
        state["t"] = _timestep_value(t)
        state["current"] = {}
        adapter.current_step, adapter.current_timestep = state["step"], state["t"]

    def end() -> None:
        raw = state["current"] or {}
        ordered = {n: raw[n] for n in model.hook_dict if n in raw}
        step_cache = cache_cls(ordered, model, has_batch_dim=True)
        if keep:
            result.steps.append(step_cache)
            result.timesteps.append(state["t"])
        if on_step is not None:
            on_step(state["step"], state["t"], step_cache)
        state["current"] = None

    handles = _step_tracking(model, start, end)
    try:
        with model.hooks(fwd_hooks=[(n, save) for n in names]):
            out = pipe(*pipe_args, **pipe_kwargs)
    finally:
        for h in handles:
            h.remove()
        adapter.current_step, adapter.current_timestep = None, None
    return out, result


def run_pipeline_with_hooks(
    model: HookedVisionModel,
    *pipe_args: Any,
    pipe: Any = None,
    fwd_hooks: Sequence[tuple] = (),
    bwd_hooks: Sequence[tuple] = (),
    **pipe_kwargs: Any,
) -> Any:
    """Run the pipeline with TransformerLens hooks ``(name_or_filter, fn)``; hooks are removed afterwards.

    Hook functions read ``model.adapter.current_step`` / ``current_timestep`` to act on some steps only.
    """
    pipe = _check(model, pipe)
    adapter = _unet_adapter(model)
    state = {"step": -1}

    def start(t: Any) -> None:
        state["step"] += 1
        adapter.current_step, adapter.current_timestep = state["step"], _timestep_value(t)

    handles = _step_tracking(model, start, lambda: None)
    try:
        with model.hooks(fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks)):
            return pipe(*pipe_args, **pipe_kwargs)
    finally:
        for h in handles:
            h.remove()
        adapter.current_step, adapter.current_timestep = None, None


# ---------------------------------------------------------------------------- offline tiny pipeline
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level BPE table: byte value -> printable unicode character."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _open_clip_bpe() -> Optional[str]:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
    return path if os.path.isfile(path) else None


def write_clip_tokenizer(directory: Union[str, os.PathLike], model_max_length: int = 77, tiny: bool = False) -> int:
    """Write ``vocab.json`` / ``merges.txt`` / ``tokenizer_config.json`` for ``transformers.CLIPTokenizer``.

    Uses open_clip's bundled BPE file (the real CLIP vocabulary, 49408 tokens) when open_clip is
    installed and ``tiny`` is false; otherwise a byte-level vocabulary without merges (514 tokens).
    Returns the vocabulary size.
    """
    os.makedirs(directory, exist_ok=True)
    bpe = None if tiny else _open_clip_bpe()
    merges: list[str] = []
    if bpe is not None:
        merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f)
    with open(os.path.join(directory, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + ("\n" if merges else ""))
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_max_length": model_max_length, "tokenizer_class": "CLIPTokenizer"}, f)
    return len(vocab)


def tiny_unet(kind: str = "conditional", sample_size: int = 8, cross_attention_dim: int = 32, seed: int = 0):
    """A small random diffusers UNet: ``"conditional"`` (SD-style), ``"conditional_mid"`` (cross-attention
    in every block, upcast) or ``"unconditional"`` (``UNet2DModel`` with attention blocks)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    if kind == "conditional":
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
            norm_num_groups=32,
        ).eval()
    if kind == "conditional_mid":
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 32),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=(4, 8),
            norm_num_groups=16,
            upcast_attention=True,
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
        ).eval()
    if kind == "unconditional":
        return UNet2DModel(
            sample_size=sample_size,
            in_channels=3,
            out_channels=3,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=32,
        ).eval()
    raise VisionLensError(f"kind must be 'conditional', 'conditional_mid' or 'unconditional', got {kind!r}.")


def tiny_stable_diffusion_pipeline(
    seed: int = 0,
    tokenizer_dir: Optional[Union[str, os.PathLike]] = None,
    sample_size: int = 8,
    tiny_vocab: bool = False,
):
    """A complete ``StableDiffusionPipeline`` from small random configs and local files only.

    UNet (``tiny_unet("conditional")``), a 2-level ``AutoencoderKL`` (images are
    ``2 * sample_size`` pixels), a 2-layer ``CLIPTextModel`` and a ``CLIPTokenizer`` written to
    ``tokenizer_dir`` (a temporary directory by default) by :func:`write_clip_tokenizer`;
    ``DDIMScheduler``; no safety checker.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok_dir = str(tokenizer_dir) if tokenizer_dir is not None else tempfile.mkdtemp(prefix="visionlens_tok_")
    vocab_size = write_clip_tokenizer(tok_dir, tiny=tiny_vocab)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    unet = tiny_unet("conditional", sample_size=sample_size, cross_attention_dim=32, seed=seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=2 * sample_size,
    ).eval()
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            layer_norm_eps=1e-5,
        )
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
