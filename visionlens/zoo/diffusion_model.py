"""The zoo's text-to-image diffusion model and the style judge that measures it.

``diffusion`` (family ``diffusion``): a pixel-space diffusers ``UNet2DConditionModel`` (3 channels,
16 x 16 samples) and a tiny ``transformers.CLIPTextModel``, held in one :class:`ZooDiffusion`
container (one state dict, one safetensors file). It is trained on planted-shapes prompts
``"a red circle in striped style"`` (:func:`visionlens.zoo.data.style_phrase`), so the *style word*
(``plain`` / ``striped`` / ``dotted``) decides the texture of what it draws.

* Training images emphasise texture: 16 x 16 windows cut at native resolution from the 32 px
  planted images around the object (the object fills the window; the texture keeps its 4 px
  period), with small random shifts and horizontal flips.
* Prompts: the full style phrase; 10 % without the style phrase (``"a red circle"``: any texture)
  and 10 % empty (classifier-free guidance).
* v-prediction on a cosine schedule (1000 steps), EMA weights; sampling with DDIM (25 "trailing"
  steps) and classifier-free guidance 1.5 (guidance >= 2.5 over-drives the texture and the style
  accuracy drops).
* The text reaches the UNet two ways: cross-attention (``attn2`` at 4 x 4 and in the mid block) and
  the pooled text added to the time embedding (``addition_embed_type="text"``: hook
  ``add_embedding.hook_out``, which feeds every resnet through ``time_emb_proj``). Most of the style
  effect goes the second way: patching ``add_embedding`` to the unstyled prompt's value removes
  ~80 % of the style-vs-plain output difference at t = 500, patching all ``attn2`` outputs ~15 %.
* ``wrap`` gives ``HookedVisionModel.from_diffusers(pipe)`` around :func:`build_pipeline`'s
  :class:`ZooDiffusionPipeline` (tokenizer, text encoder, UNet, DDIM scheduler), so
  ``model.adapter.pipeline(prompts)`` samples and ``style_neuron_search`` finds its text encoder.

The tokenizer is a real ``CLIPTokenizer`` built offline (no files, no downloads): CLIP's byte-level
alphabet plus BPE merges learned on the prompt words, so each prompt word is one token; any other
text still tokenizes (byte-level fallback).

``style_judge`` (family ``resnet``, kind ``classifier``): the zoo ResNet architecture with 3 outputs,
trained on the standard 32 px planted images to predict the *texture* factor. A 16 px sample is
judged by pasting it in the middle of a 32 px background canvas (:func:`to_judge_canvas`), which
keeps the texture at the scale the judge was trained on.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import tempfile
from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..diffusion import bytes_to_unicode
from ..hooked_model import HookedVisionModel
from . import data as zdata
from .catalog import load_module
from .classifiers import held_out_batch, predict, train_classifier
from .entry import TrainRun, ZooEntry
from .scores import style_accuracy

__all__ = [
    "ZooDiffusion",
    "build_diffusion",
    "build_pipeline",
    "build_tokenizer",
    "pipeline_class",
    "build_style_judge",
    "train_diffusion",
    "evaluate_diffusion",
    "evaluate_style_judge",
    "judge_textures",
    "to_judge_canvas",
    "eval_prompts",
    "SAMPLE_SIZE",
    "MAX_TOKENS",
    "WORDS",
]

# ----------------------------------------------------------------------------- constants
SAMPLE_SIZE = 16  # diffusion samples are 16 x 16 RGB
SOURCE_SIZE = 32  # cut from 32 px planted images (texture period 4 px)
MAX_TOKENS = 16  # tokenizer.model_max_length == text encoder positions
TEXT_WIDTH = 32  # text encoder width == UNet cross_attention_dim
DATA_SEED = 0  # data stream seed (the model seed is TrainRun.seed)
TRAIN_N = 8_000
EVAL_START = 2_000_000  # judge crops for the card come from far down the stream
DIFFUSION_STEPS = 600  # default optimizer steps (~5-6 min on one busy CPU core)
BATCH = 64
LR = 2e-3
P_DROP_ALL = 0.1  # empty prompt (classifier-free guidance)
P_DROP_STYLE = 0.1  # prompt without its style phrase
EMA_DECAY = 0.995
SAMPLER_STEPS = 25
GUIDANCE = 1.5  # classifier-free guidance of the card; >= 2.5 over-drives the texture
EVAL_N = 108  # 36 prompts (4 colours x 3 shapes x 3 styles) x 3 samples
EVAL_SEED = 1234
JUDGE_STEPS = 300
STYLE_THRESHOLDS = {"style_accuracy": 0.80}
JUDGE_THRESHOLDS = {"held_out_accuracy": 0.95}
WORDS = ("a", "in", "style") + tuple(zdata.STYLE_WORDS) + tuple(zdata.COLOURS) + tuple(zdata.SHAPES)

SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "prediction_type": "v_prediction",
    "clip_sample": True,
    "clip_sample_range": 1.0,
}


def requires() -> Optional[str]:
    for pkg in ("diffusers", "transformers"):
        if importlib.util.find_spec(pkg) is None:
            return f"the {pkg} package is not installed"
    return None


# ----------------------------------------------------------------------------- tokenizer
def _learn_merges(words: Sequence[str]) -> List[Tuple[str, str]]:
    """Plain BPE on the word list (most frequent pair first, ties by the pair) until every word is one symbol."""
    segs = {w: list(w[:-1]) + [w[-1] + "</w>"] for w in words}
    merges: List[Tuple[str, str]] = []
    while True:
        counts: Dict[Tuple[str, str], int] = {}
        for s in segs.values():
            for pair in zip(s, s[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            return merges
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(best)
        for w, s in segs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            segs[w] = out


@lru_cache(maxsize=1)
def _vocab_and_merges() -> Tuple[Dict[str, int], Tuple[Tuple[str, str], ...]]:
    base = list(bytes_to_unicode().values())
    vocab = base + [v + "</w>" for v in base]
    merges = _learn_merges(WORDS)
    known = set(vocab)
    for a, b in merges:
        if a + b not in known:
            vocab.append(a + b)
            known.add(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {v: i for i, v in enumerate(vocab)}, tuple(merges)


def vocab_size() -> int:
    return len(_vocab_and_merges()[0])


def build_tokenizer() -> Any:
    """A ``transformers.CLIPTokenizer`` over CLIP's byte alphabet + merges for :data:`WORDS` (offline)."""
    from transformers import CLIPTokenizer

    vocab, merges = _vocab_and_merges()
    try:
        return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_TOKENS)
    except (TypeError, ValueError):  # older transformers: the slow tokenizer wants files
        d = tempfile.mkdtemp(prefix="visionlens_zoo_tok_")
        with open(os.path.join(d, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(vocab, f)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
        return CLIPTokenizer(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt"), model_max_length=MAX_TOKENS)


def tokenize(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


# ----------------------------------------------------------------------------- the model
class ZooDiffusion(nn.Module):
    """Container of the zoo diffusion model: ``unet`` (diffusers ``UNet2DConditionModel``) and
    ``text_encoder`` (``transformers.CLIPTextModel``); ``tokenizer`` is an attribute (no weights).

    ``forward(sample, timestep, prompts)`` runs the UNet on ``prompts`` (a list of str, token ids
    ``[B, tokens]`` or encoder states ``[B, tokens, 32]``) and returns the predicted noise.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer

    def encode(self, prompts: Any) -> torch.Tensor:
        if isinstance(prompts, torch.Tensor) and prompts.is_floating_point():
            return prompts
        ids = prompts if isinstance(prompts, torch.Tensor) else tokenize(self.tokenizer, prompts)
        return self.text_encoder(ids.to(next(self.text_encoder.parameters()).device))[0]

    def forward(self, sample: torch.Tensor, timestep: Any, prompts: Any) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states=self.encode(prompts)).sample


def build_unet() -> nn.Module:
    """diffusers ``UNet2DConditionModel``: 16 px, widths (32, 32, 64), cross-attention at the two coarse
    levels, and the pooled text added to the time embedding (``addition_embed_type="text"``)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=16,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def build_text_encoder() -> nn.Module:
    """A 2-layer, 32-wide ``transformers.CLIPTextModel`` over :func:`build_tokenizer`'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    v = vocab_size()
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=v,
            hidden_size=TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=v - 2,
            eos_token_id=v - 1,
            pad_token_id=v - 1,
            layer_norm_eps=1e-5,
        )
    )


def build_diffusion() -> ZooDiffusion:
    return ZooDiffusion(build_unet(), build_text_encoder(), build_tokenizer())


def _scheduler(kind: str = "ddim") -> Any:
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind == "ddpm":
        return DDPMScheduler(**SCHEDULER_CONFIG)
    return DDIMScheduler(**SCHEDULER_CONFIG, timestep_spacing="trailing", set_alpha_to_one=True)


@lru_cache(maxsize=1)
def pipeline_class() -> type:
    """:class:`ZooDiffusionPipeline`, a ``diffusers.DiffusionPipeline`` for pixel-space text-to-image
    (defined lazily so that importing this module does not need diffusers)."""
    from diffusers import DiffusionPipeline, ImagePipelineOutput
    from diffusers.utils.torch_utils import randn_tensor

    class ZooDiffusionPipeline(DiffusionPipeline):
        """Pixel-space text-to-image: ``pipe(prompts, num_inference_steps=25, guidance_scale=3.0,
        generator=g, output_type="pt")`` -> ``.images`` (``[B, 3, 16, 16]`` in [0, 1] for ``"pt"``;
        ``"np"``: ``[B, 16, 16, 3]``; ``"pil"``: PIL images). Classifier-free guidance batches the
        unconditional half first, as Stable Diffusion does."""

        model_cpu_offload_seq = "text_encoder->unet"

        def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer: Any, scheduler: Any):
            super().__init__()
            self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

        @torch.no_grad()
        def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
            ids = tokenize(self.tokenizer, prompts).to(self.text_encoder.device)
            return self.text_encoder(ids)[0]

        @torch.no_grad()
        def __call__(
            self,
            prompt: Any,
            num_inference_steps: int = SAMPLER_STEPS,
            guidance_scale: float = GUIDANCE,
            negative_prompt: Any = None,
            num_images_per_prompt: int = 1,
            generator: Any = None,
            latents: Optional[torch.Tensor] = None,
            eta: float = 0.0,
            output_type: str = "pt",
            return_dict: bool = True,
        ) -> Any:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
            b = len(prompts)
            ctx = self.encode_prompt(prompts)
            guided = guidance_scale is not None and guidance_scale != 1.0
            if guided:
                neg = "" if negative_prompt is None else negative_prompt
                negs = [neg] * b if isinstance(neg, str) else [n for n in neg for _ in range(num_images_per_prompt)]
                ctx = torch.cat([self.encode_prompt(negs), ctx])
            size = self.unet.config.sample_size
            shape = (b, self.unet.config.in_channels, size, size)
            if latents is None:
                latents = randn_tensor(shape, generator=generator, device=self.unet.device, dtype=ctx.dtype)
            latents = latents.to(self.unet.device) * self.scheduler.init_noise_sigma
            self.scheduler.set_timesteps(num_inference_steps, device=self.unet.device)
            accepts = set(inspect.signature(self.scheduler.step).parameters)
            extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in accepts}
            for t in self.progress_bar(self.scheduler.timesteps):
                x = torch.cat([latents, latents]) if guided else latents
                x = self.scheduler.scale_model_input(x, t)
                out = self.unet(x, t, encoder_hidden_states=ctx).sample
                if guided:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(out, t, latents, **extra).prev_sample
            images = (latents / 2 + 0.5).clamp(0, 1)
            if output_type == "np":
                images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            elif output_type == "pil":
                images = self.numpy_to_pil(images.permute(0, 2, 3, 1).float().cpu().numpy())
            if not return_dict:
                return (images,)
            return ImagePipelineOutput(images=images)

    return ZooDiffusionPipeline


def build_pipeline(module: ZooDiffusion, scheduler: str = "ddim") -> Any:
    """The diffusers pipeline around the zoo model's own ``unet`` / ``text_encoder`` (shared, not copied)."""
    tok = getattr(module, "tokenizer", None) or build_tokenizer()
    pipe = pipeline_class()(
        unet=module.unet, text_encoder=module.text_encoder, tokenizer=tok, scheduler=_scheduler(scheduler)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wrap_diffusion(module: ZooDiffusion) -> HookedVisionModel:
    return HookedVisionModel.from_diffusers(build_pipeline(module))


# ----------------------------------------------------------------------------- data
@lru_cache(maxsize=2)
def training_set(n: int = TRAIN_N, seed: int = DATA_SEED, start: int = 0):
    """``(images uint8 [N,3,32,32], centre (cy, cx) long [N,2], factors, prompts, unstyled prompts)``."""
    b = zdata.make_batch(n, seed=seed, start=start, size=SOURCE_SIZE, trigger_fraction=0.0)
    f = {k: v.clone() for k, v in b.factors.items()}
    centre = torch.stack([f["cy"].round(), f["cx"].round()], 1).long()
    plain = [f"a {zdata.COLOURS[int(c)]} {zdata.SHAPES[int(s)]}" for c, s in zip(f["colour"], f["shape"])]
    return (b.images * 255).round().to(torch.uint8), centre, f, list(b.style_phrases), plain


def crop_windows(images: torch.Tensor, centre: torch.Tensor, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``SAMPLE_SIZE`` windows around each centre (plus ``shift`` ``[N, 2]``), clamped inside the image."""
    h = SAMPLE_SIZE // 2
    lim = images.shape[-1] - SAMPLE_SIZE
    tl = centre - h + (shift if shift is not None else 0)
    tl = tl.clamp(0, lim)
    return torch.stack([images[i, :, y : y + SAMPLE_SIZE, x : x + SAMPLE_SIZE] for i, (y, x) in enumerate(tl.tolist())])


def to_judge_canvas(images: torch.Tensor) -> torch.Tensor:
    """Paste ``[N, 3, 16, 16]`` samples in the middle of a 32 px canvas of the planted background grey."""
    n, c, h, w = images.shape
    canvas = torch.full((n, c, SOURCE_SIZE, SOURCE_SIZE), zdata.BACKGROUND, dtype=images.dtype)
    y0, x0 = (SOURCE_SIZE - h) // 2, (SOURCE_SIZE - w) // 2
    canvas[:, :, y0 : y0 + h, x0 : x0 + w] = images
    return canvas


# ----------------------------------------------------------------------------- training
def train_diffusion(
    module: ZooDiffusion,
    run: TrainRun,
    lr: float = LR,
    batch_size: int = BATCH,
    n_train: int = TRAIN_N,
    log_every: int = 50,
    callback: Optional[Callable[[int, ZooDiffusion], None]] = None,
    callback_every: int = 0,
) -> None:
    """v-prediction DDPM training (cosine schedule), AdamW + warmup/cosine LR, EMA weights kept at the
    end. Every random draw comes from one generator seeded by ``run.seed``; ``callback(step, ema_model)``
    runs every ``callback_every`` steps (for experiments)."""
    images, centre, f, styled, plain = training_set(n=n_train)
    n = len(styled)
    sched = _scheduler("ddpm")
    acp = sched.alphas_cumprod.float()
    g = torch.Generator().manual_seed(run.seed)
    steps = run.step_budget()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warm = max(1, min(50, steps // 10))
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    ema = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    live = {k: v for k, v in module.state_dict().items() if k in ema}
    tok = module.tokenizer
    # the distinct prompts, tokenized once: a batch encodes only the prompts it uses
    vocab = sorted(set(styled) | set(plain) | {""})
    index = {p: i for i, p in enumerate(vocab)}
    ids_all = tokenize(tok, vocab)
    styled_i = torch.tensor([index[p] for p in styled])
    plain_i = torch.tensor([index[p] for p in plain])
    empty_i = index[""]
    run_loss = 0.0
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=g)
        shift = torch.randint(-2, 3, (batch_size, 2), generator=g)
        flip = torch.rand(batch_size, generator=g) < 0.5
        u = torch.rand(batch_size, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=g)
        noise = torch.randn(batch_size, 3, SAMPLE_SIZE, SAMPLE_SIZE, generator=g)
        x0 = crop_windows(images[idx], centre[idx], shift).float() / 255
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0) * 2 - 1
        pid = torch.where(
            u < P_DROP_ALL,
            torch.full_like(idx, empty_i),
            torch.where(u < P_DROP_ALL + P_DROP_STYLE, plain_i[idx], styled_i[idx]),
        )
        uniq, inv = torch.unique(pid, return_inverse=True)
        ctx = module.text_encoder(ids_all[uniq])[0][inv]
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = module.unet(xt, t, encoder_hidden_states=ctx).sample
        if sched.config.prediction_type == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        elif sched.config.prediction_type == "sample":
            target = x0
        else:
            target = noise
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in live.items():
                ema[k].lerp_(v.detach(), 1 - decay)
        run_loss += float(loss.detach())
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            run.log(step, loss=run_loss / k, lr=lr_sched.get_last_lr()[0])
            run_loss = 0.0
        run.step_done(step, module)
        if callback is not None and callback_every and (step % callback_every == 0 or step == steps):
            snap = build_diffusion()
            snap.load_state_dict({**module.state_dict(), **ema})
            callback(step, snap.eval())
    with torch.no_grad():
        module.load_state_dict({**module.state_dict(), **ema})


# ----------------------------------------------------------------------------- evaluation
def eval_prompts(n: int = EVAL_N) -> Tuple[List[str], torch.Tensor]:
    """``n`` prompts cycling style fastest, then colour, then shape; returns ``(prompts, asked texture [n])``."""
    prompts, asked = [], []
    for i in range(n):
        s, c, sh = i % 3, (i // 3) % len(zdata.COLOURS), (i // (3 * len(zdata.COLOURS))) % len(zdata.SHAPES)
        prompts.append(f"a {zdata.COLOURS[c]} {zdata.SHAPES[sh]} in {zdata.STYLE_WORDS[s]} style")
        asked.append(s)
    return prompts, torch.tensor(asked)


@torch.no_grad()
def judge_textures(judge: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The judge's texture for ``[N, 3, 16, 16]`` samples (pasted on a 32 px canvas) or 32 px images."""
    if images.shape[-1] != SOURCE_SIZE:
        images = to_judge_canvas(images)
    was = judge.training
    judge.eval()
    out = torch.cat([judge(images[i : i + 256]).argmax(-1) for i in range(0, len(images), 256)])
    judge.train(was)
    return out


def _load_judge() -> nn.Module:
    return load_module("style_judge")


@torch.no_grad()
def sample_styles(
    model: Union[ZooDiffusion, HookedVisionModel, Any],
    n: int = EVAL_N,
    steps: int = SAMPLER_STEPS,
    guidance_scale: float = GUIDANCE,
    seed: int = EVAL_SEED,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n`` images over :func:`eval_prompts` with a :class:`ZooDiffusion`, its hooked model
    (``zoo.load("diffusion")``) or a pipeline; returns ``(images [n,3,16,16], asked texture [n])``."""
    prompts, asked = eval_prompts(n)
    if isinstance(model, ZooDiffusion):
        pipe = build_pipeline(model)
    else:
        pipe = getattr(getattr(model, "adapter", None), "pipeline", None) or model
    unet, enc = pipe.unet, pipe.text_encoder
    was = unet.training, enc.training
    unet.eval()
    enc.eval()
    g = torch.Generator().manual_seed(seed)
    try:
        imgs = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=g).images
    finally:
        unet.train(was[0])
        enc.train(was[1])
    return imgs, asked


def style_scores(
    model: Union[ZooDiffusion, HookedVisionModel, Any],
    judge: nn.Module,
    n: int = EVAL_N,
    steps: int = SAMPLER_STEPS,
    guidance_scale: float = GUIDANCE,
    seed: int = EVAL_SEED,
) -> Dict[str, float]:
    """``style_accuracy`` (and per style) of ``n`` samples judged by ``judge`` (see :func:`evaluate_diffusion`)."""
    imgs, asked = sample_styles(model, n=n, steps=steps, guidance_scale=guidance_scale, seed=seed)
    pred = judge_textures(judge, imgs)
    out = {"style_accuracy": style_accuracy(pred, asked, n_styles=3).score}
    for s, word in enumerate(zdata.STYLE_WORDS):
        m = asked == s
        out[f"style_accuracy_{word}"] = float((pred[m] == s).float().mean())
        out[f"judged_fraction_{word}"] = float((pred == s).float().mean())
    return out


def evaluate_diffusion(
    module: ZooDiffusion,
    n: int = EVAL_N,
    steps: int = SAMPLER_STEPS,
    guidance_scale: float = GUIDANCE,
    seed: int = EVAL_SEED,
    judge: Optional[nn.Module] = None,
) -> Dict[str, float]:
    """Style success: sample ``n`` images (DDIM, ``steps`` steps, CFG ``guidance_scale``) over prompts
    ``"a {colour} {shape} in {style} style"`` and judge their texture with the shipped ``style_judge``.

    ``style_accuracy`` = fraction whose judged texture is the asked style (chance 1/3); also per style,
    the fraction judged as each style, the same at 10 DDIM steps (``style_accuracy_10_steps``), and
    ``judge_accuracy_on_real_windows``: the judge on real training-distribution windows treated the
    same way (pasted on a canvas), the ceiling of what the judge can confirm."""
    judge = judge if judge is not None else _load_judge()
    out = style_scores(module, judge, n=n, steps=steps, guidance_scale=guidance_scale, seed=seed)
    out["style_accuracy_10_steps"] = style_scores(
        module, judge, n=n, steps=10, guidance_scale=guidance_scale, seed=seed
    )["style_accuracy"]
    images, centre, f, _, _ = training_set(n=600, start=EVAL_START)
    real = crop_windows(images, centre).float() / 255
    out["judge_accuracy_on_real_windows"] = float((judge_textures(judge, real) == f["texture"]).float().mean())
    out.update({"eval_n": float(n), "sampler_steps": float(steps), "guidance_scale": float(guidance_scale)})
    return out


# ----------------------------------------------------------------------------- the style judge
def build_style_judge() -> nn.Module:
    """timm ``ResNet`` as the zoo ``resnet`` (BasicBlock, widths 16-128, no stem max-pool), 3 texture logits."""
    from timm.models.resnet import BasicBlock, ResNet

    m = ResNet(
        block=BasicBlock,
        layers=(1, 1, 1, 1),
        channels=(16, 32, 64, 128),
        num_classes=len(zdata.TEXTURES),
        stem_width=16,
    )
    m.maxpool = nn.Identity()
    return m


def train_style_judge(module: nn.Module, run: TrainRun) -> None:
    train_classifier(module, run, label_key="texture")


def evaluate_style_judge(module: nn.Module, n: int = 1000) -> Dict[str, float]:
    """Held-out texture accuracy on clean 32 px planted images, per texture, and on triggered images."""
    clean = held_out_batch(n)
    y = clean.factors["texture"]
    pred = predict(module, clean.images)
    out = {"held_out_accuracy": float((pred == y).float().mean()), "held_out_n": float(n)}
    for s, word in enumerate(zdata.TEXTURES):
        out[f"accuracy_{word}"] = float((pred[y == s] == s).float().mean())
    trig = held_out_batch(n, trigger_fraction=1.0)
    out["triggered_accuracy"] = float((predict(module, trig.images) == trig.factors["texture"]).float().mean())
    images, centre, f, _, _ = training_set(n=600, start=EVAL_START)
    real = crop_windows(images, centre).float() / 255
    out["window_accuracy"] = float((judge_textures(module, real) == f["texture"]).float().mean())
    return out


# ----------------------------------------------------------------------------- catalogue entries
STYLE_JUDGE = ZooEntry(
    name="style_judge",
    family="resnet",
    kind="classifier",
    description="Texture judge for the diffusion model: the zoo ResNet architecture with 3 outputs (plain, striped, "
    "dotted) trained on the 32 px planted images' texture factor. 16 px diffusion samples are judged "
    "pasted in the middle of a 32 px background canvas.",
    build=build_style_judge,
    train=train_style_judge,
    evaluate=evaluate_style_judge,
    thresholds=dict(JUDGE_THRESHOLDS),
    default_steps=JUDGE_STEPS,
    config={
        "lr": 3e-3,
        "batch_size": 64,
        "optimizer": "AdamW(wd=0.05), cosine",
        "label_key": "texture",
        "constructor": "timm.models.resnet.ResNet(BasicBlock, layers=(1,1,1,1), channels=(16,32,64,128), "
        "num_classes=3)",
    },
    data={
        "generator": "visionlens.zoo.data.make_batch",
        "train": {"n": 12_000, "seed": 0, "start": 0, "trigger_fraction": 0.1},
        "held_out": {"n": 1000, "seed": 0, "start": 1_000_000},
        "image_size": 32,
        "label_rule": "texture factor: 0 plain, 1 striped, 2 dotted",
        "normalization": "none (inputs in [0, 1])",
    },
    benchmark=False,
)

DIFFUSION = ZooEntry(
    name="diffusion",
    family="diffusion",
    kind="diffusion",
    description="Pixel-space text-to-image diffusion (diffusers UNet2DConditionModel, 16 px, + a tiny CLIP text "
    "encoder) trained on planted-shapes style prompts: the style word (plain / striped / dotted) "
    "controls the texture. Wrapped from a DiffusionPipeline, so model.adapter.pipeline samples.",
    build=build_diffusion,
    train=train_diffusion,
    evaluate=evaluate_diffusion,
    thresholds=dict(STYLE_THRESHOLDS),
    default_steps=DIFFUSION_STEPS,
    wrap=wrap_diffusion,
    requires=requires,
    # the random control keeps diffusers' / transformers' own init: it zeroes nothing (checked: no weight of
    # the built UNet or text encoder is 0 or a 1e-6 layer scale), unlike timm's ResNet
    randomize=False,
    config={
        "unet": "diffusers.UNet2DConditionModel(sample_size=16, in/out_channels=3, block_out_channels=(32,32,64), "
        "layers_per_block=1, down=(Down,Down,CrossAttnDown), up=(CrossAttnUp,Up,Up), "
        "cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16, addition_embed_type='text')",
        "text_encoder": f"transformers.CLIPTextModel(hidden=32, layers=2, heads=4, mlp=64, positions={MAX_TOKENS})",
        "tokenizer": "transformers.CLIPTokenizer: CLIP byte alphabet + BPE merges of the prompt words (offline)",
        "scheduler": {
            "train": "DDPMScheduler",
            "sample": "DDIMScheduler(timestep_spacing='trailing')",
            **SCHEDULER_CONFIG,
        },
        "pixel_range": "[-1, 1] (image * 2 - 1)",
        "loss": "MSE on v (v-prediction)",
        "lr": LR,
        "batch_size": BATCH,
        "optimizer": "AdamW(wd=0.01), warmup + cosine to 0.1, grad clip 1.0",
        "ema_decay": EMA_DECAY,
        "p_drop_prompt": P_DROP_ALL,
        "p_drop_style": P_DROP_STYLE,
        "sampler_steps": SAMPLER_STEPS,
        "guidance_scale": GUIDANCE,
        "judge": "zoo:style_judge (sample pasted on a 32 px background canvas)",
    },
    data={
        "generator": "visionlens.zoo.data.make_batch",
        "train": {"n": TRAIN_N, "seed": DATA_SEED, "start": 0, "trigger_fraction": 0.0, "size": SOURCE_SIZE},
        "windows": "16 x 16 around the object centre, random shift in [-2, 2] px, random horizontal flip",
        "prompts": "visionlens.zoo.data.style_phrase ('a red circle in striped style'); 10% 'a red circle', 10% ''",
        "eval": {"prompts": "a {colour} {shape} in {style} style, style fastest", "n": EVAL_N, "seed": EVAL_SEED},
    },
    bench_cost=2.5,
)

# The judge first: the diffusion model's evaluation uses it (registered by visionlens.zoo.plugin).
ENTRIES = [STYLE_JUDGE, DIFFUSION]
