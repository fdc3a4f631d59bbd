"""Small models with hand-set weights whose true circuit is known, plus matching synthetic data.

Used as ground truth for causal scrubbing (:mod:`visionlens.scrubbing`: :class:`PlantedAndNet`,
:func:`planted_vit_model`) and the diffusion style-neuron search (:func:`planted_style_pipeline`).

:class:`PlantedAndNet` (conv net, 3x8x8 images)::

    conv1 (3->4, 3x3)  ch0 = "red" detector (R plane), ch1 = vertical-stripe detector (B plane),
                       ch2 = horizontal-stripe detector (B plane), ch3 = "green" detector (G plane)
    relu1
    pool  (global max)          [B, 4]
    fc1   (4->2)  unit0 = A + B - 1 (A = red, B = stripe, each ~0/1);  unit1 = distractors (ch2 + ch3)
    act2  (ReLU)  unit0 = red AND stripe
    head  (2->2)  logits [0, 10 * and - 5]: class 1 = "red AND vertical stripe"

Only ch0 and ch1 of ``relu1`` and unit 0 of ``act2`` matter for the output; ch2/ch3 and unit 1
are distractors that respond to real factors of the data (horizontal stripe, green) but feed
nothing. :func:`planted_and_dataset` draws images with independent factors.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..diffusion import tiny_stable_diffusion_pipeline
from ..hooked_model import HookedVisionModel

__all__ = [
    "PlantedAndNet",
    "planted_and_dataset",
    "PlantedData",
    "planted_hypotheses",
    "planted_style_pipeline",
    "planted_vit",
    "planted_vit_dataset",
    "planted_vit_model",
]


class PlantedAndNet(nn.Module):
    """Hand-set conv net computing ``red AND vertical_stripe`` (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(4, 2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            w = torch.zeros(4, 3, 3, 3)
            b = torch.zeros(4)
            w[0, 0, 1, 1] = 1.0  # red: centre pixel of R
            b[0] = -0.5  # R=1 -> 0.5, R=0 -> 0
            w[1, 2, :, 1] = 1.0  # vertical stripe in B: centre column +1,
            w[1, 2, :, 0] = -0.5  # side columns -0.5
            w[1, 2, :, 2] = -0.5
            b[1] = -1.5  # vertical line -> 1.5, horizontal -> <0, none -> 0
            w[2, 2, 1, :] = 1.0  # horizontal stripe in B
            w[2, 2, 0, :] = -0.5
            w[2, 2, 2, :] = -0.5
            b[2] = -1.5
            w[3, 1, 1, 1] = 1.0  # green: centre pixel of G
            b[3] = -0.5
            self.conv1.weight.copy_(w)
            self.conv1.bias.copy_(b)
            self.fc1.weight.copy_(torch.tensor([[2.0, 1.0 / 1.5, 0.0, 0.0], [0.0, 0.0, 1.0 / 1.5, 2.0]]))
            self.fc1.bias.copy_(torch.tensor([-1.0, 0.0]))
            self.head.weight.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0]]))
            self.head.bias.copy_(torch.tensor([0.0, -5.0]))
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu1(self.conv1(x))
        p = self.flat(self.pool(h))
        return self.head(self.act2(self.fc1(p)))


@dataclass
class PlantedData:
    images: Tensor  # [N, 3, 8, 8]
    factors: dict[str, Tensor]  # name -> [N] integer factor values
    labels: Tensor  # [N] class = red AND stripe


def planted_and_dataset(n: int = 128, seed: int = 0, size: int = 8, p: float = 0.7, noise: float = 0.05) -> PlantedData:
    """Images with independent factors ``red``, ``stripe`` (vertical, blue), ``hstripe``
    (horizontal, blue), ``green``, ``column`` (stripe position) and pixel noise."""
    g = torch.Generator().manual_seed(seed)
    red = (torch.rand(n, generator=g) < p).long()
    stripe = (torch.rand(n, generator=g) < p).long()
    hstripe = (torch.rand(n, generator=g) < 0.5).long()
    green = (torch.rand(n, generator=g) < 0.5).long()
    column = torch.randint(1, size - 1, (n,), generator=g)
    row = torch.randint(1, size - 1, (n,), generator=g)
    x = noise * torch.rand(n, 3, size, size, generator=g)
    x[:, 0] += red.float()[:, None, None]
    x[:, 1] += green.float()[:, None, None]
    for i in range(n):
        if stripe[i]:
            x[i, 2, :, column[i]] += 1.0
        if hstripe[i]:
            x[i, 2, row[i], :] += 1.0
            if stripe[i]:  # keep the crossing from looking like a longer vertical line
                x[i, 2, row[i], column[i]] = 1.0
    factors = {
        "red": red,
        "stripe": stripe,
        "hstripe": hstripe,
        "green": green,
        "column": column,
        "label": red * stripe,
    }
    return PlantedData(x, factors, red * stripe)


def planted_hypotheses() -> dict[str, dict]:
    """True, partial and wrong hypotheses for :class:`PlantedAndNet` as JSON-style dicts."""
    true = {
        "hook": None,
        "feature": "identity",
        "parents": [
            {
                "hook": "act2.hook_out",
                "channels": [0],
                "feature": "label",
                "parents": [
                    {"hook": "relu1.hook_out", "channels": [0], "feature": "red"},
                    {"hook": "relu1.hook_out", "channels": [1], "feature": "stripe"},
                ],
            }
        ],
    }
    partial = {
        "hook": None,
        "feature": "identity",
        "parents": [
            {
                "hook": "act2.hook_out",
                "channels": [0],
                "feature": "label",
                "parents": [
                    {"hook": "relu1.hook_out", "channels": [0], "feature": "red"},
                    {"hook": "relu1.hook_out", "channels": [1], "feature": "hstripe"},
                ],
            }
        ],
    }
    wrong = {
        "hook": None,
        "feature": "identity",
        "parents": [
            {
                "hook": "act2.hook_out",
                "channels": [0],
                "feature": "label",
                "parents": [
                    {"hook": "relu1.hook_out", "channels": [2], "feature": "hstripe"},
                    {"hook": "relu1.hook_out", "channels": [3], "feature": "green"},
                ],
            }
        ],
    }
    return {"true": true, "partial": partial, "wrong": wrong}


# ----------------------------------------------------------------------------- diffusion
def _encode(pipe, prompts):
    tok = pipe.tokenizer
    ids = tok(
        list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0], ids


def planted_style_pipeline(
    style: str = "in the style of vangogh",
    prompts=("a cat", "a house", "a tree"),
    channel: int = 5,
    strength: float = 4.0,
    seed: int = 0,
):
    """A tiny ``StableDiffusionPipeline`` whose UNet has one planted style unit.

    Every cross-attention's value projection is zeroed (text cannot reach the image) except in
    ``down_blocks.0.attentions.0.transformer_blocks.0.attn2``, where head 0 attends uniformly
    (zero keys) and its first value dimension reads the text-state direction that separates
    ``"{prompt} {style}"`` from ``"{prompt}"`` (computed from the pipeline's own text encoder),
    and writes it to output channel ``channel`` only. So ``...attn2.hook_out`` unit ``channel`` is
    the one unit through which the style phrase changes the noise prediction.
    Returns ``(pipe, info)`` with ``info = {"hook", "channel", "unit", "style", "prompts"}``.
    """
    from diffusers.models.attention_processor import Attention

    pipe = tiny_stable_diffusion_pipeline(seed=seed)
    unet = pipe.unet
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    plain, _ = _encode(pipe, prompts)
    styled, _ = _encode(pipe, [f"{p} {style}" for p in prompts])
    # mean over tokens (the planted head attends uniformly) of the styled minus plain states
    direction = (styled.mean(1) - plain.mean(1)).mean(0)
    direction = direction / direction.norm()
    with torch.no_grad():
        for name, mod in unet.named_modules():
            if isinstance(mod, Attention) and getattr(mod, "is_cross_attention", False):
                mod.to_v.weight.zero_()
                if mod.to_v.bias is not None:
                    mod.to_v.bias.zero_()
        attn = unet.get_submodule(path)
        attn.to_k.weight.zero_()
        diff = float(((styled.mean(1) - plain.mean(1)) @ direction).mean())
        attn.to_v.weight[0] = direction * (strength / max(diff, 1e-6))
        attn.to_out[0].weight[:, 0] = 0.0
        attn.to_out[0].weight[channel, 0] = 1.0
    info = {
        "hook": f"{path}.hook_out",
        "channel": channel,
        "unit": f"{path}.hook_out:{channel}",
        "style": style,
        "prompts": list(prompts),
    }
    return pipe, info


# ----------------------------------------------------------------------------- ViT
def planted_vit(alpha: float = 60.0):
    """A 1-block timm ViT (16x16 images, 8x8 patches, 2 heads, d_model 8) with hand-set weights.

    Tokens: CLS, patches 0..3. The embedding writes a patch's mean red (dim 0) and green (dim 1),
    position markers (dim 2: patch 0, dim 3: patch 3, dim 4: CLS) and a constant (dim 7 = 10, which
    keeps the LayerNorms nearly linear). Head 0 attends from CLS to patch 0 and copies its red
    value into dim 6; head 1 attends from CLS to patch 3 and reads its green value but writes
    nothing (a distractor); the MLP is zero. The classifier reads dim 6 of the final CLS state:
    class 1 = "patch 0 is red". :func:`planted_vit_model` calibrates the classifier's scale and bias.
    """
    import timm

    m = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=16,
        patch_size=8,
        embed_dim=8,
        num_heads=2,
        depth=1,
        num_classes=2,
        mlp_ratio=1.0,
    )
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.patch_embed.proj.weight[0, 0] = 1 / 64
        m.patch_embed.proj.weight[1, 1] = 1 / 64
        m.pos_embed[0, 1, 2] = 1.0
        m.pos_embed[0, 4, 3] = 1.0
        m.pos_embed[0, 0, 4] = 1.0
        m.pos_embed[0, :, 7] = 10.0
        blk = m.blocks[0]
        for ln in (blk.norm1, blk.norm2, m.norm):
            ln.weight.fill_(1.0)
        w = blk.attn.qkv.weight  # rows: q (0..7), k (8..15), v (16..23); head h uses 4h..4h+3 of each
        d = 8
        # head 0: q = CLS marker, k = patch-0 marker, v = red
        w[0, 4], w[0, 5] = alpha, -alpha
        w[d + 0, 2], w[d + 0, 5] = alpha, -alpha
        w[2 * d + 0, 0], w[2 * d + 0, 5] = 1.0, -1.0
        # head 1: q = CLS marker, k = patch-3 marker, v = green (written nowhere)
        w[4, 4], w[4, 5] = alpha, -alpha
        w[d + 4, 3], w[d + 4, 5] = alpha, -alpha
        w[2 * d + 4, 1], w[2 * d + 4, 5] = 1.0, -1.0
        blk.attn.proj.weight[6, 0] = 10.0
        m.head.weight[1, 6] = 1.0
        m.head.weight[1, 5] = -1.0
    return m.eval()


def planted_vit_dataset(n: int = 128, seed: int = 0, noise: float = 0.05) -> PlantedData:
    """16x16 images with independent factors: ``red0`` / ``green0`` (patch 0), ``red_other`` (some other
    patch red), ``green3`` (patch 3 green); label = ``red0``."""
    g = torch.Generator().manual_seed(seed)
    f = {k: (torch.rand(n, generator=g) < 0.5).long() for k in ("red0", "green0", "red_other", "green3")}
    other = torch.randint(1, 4, (n,), generator=g)
    x = noise * torch.rand(n, 3, 16, 16, generator=g)
    for i in range(n):
        if f["red0"][i]:
            x[i, 0, :8, :8] += 1
        if f["green0"][i]:
            x[i, 1, :8, :8] += 1
        if f["green3"][i]:
            x[i, 1, 8:, 8:] += 1
        if f["red_other"][i]:
            py, px = divmod(int(other[i]), 2)
            x[i, 0, 8 * py : 8 * py + 8, 8 * px : 8 * px + 8] += 1
    f["red_any"] = ((f["red0"] + f["red_other"]) > 0).long()
    f["label"] = f["red0"]
    return PlantedData(x, f, f["red0"])


def planted_vit_model(margin: float = 5.0) -> HookedVisionModel:
    """:func:`planted_vit` with its classifier bias and scale calibrated on :func:`planted_vit_dataset`
    so that the logit margin is about ``margin`` on both classes; wrapped as a HookedVisionModel."""
    m = planted_vit()
    data = planted_vit_dataset(64, seed=123)
    with torch.no_grad():
        s = m(data.images)[:, 1]
        hi, lo = s[data.labels == 1].min(), s[data.labels == 0].max()
        scale = 2 * margin / float(hi - lo)
        m.head.weight[1] *= scale
        m.head.bias[1] = -scale * float(hi + lo) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedVisionModel.from_module(m)
