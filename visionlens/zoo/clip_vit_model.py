"""The ViT-tower zoo CLIP: :mod:`~visionlens.zoo.clip_model`'s CLIP with an open_clip ``VisionTransformer`` image tower.

Same text tower, word tokenizer, data, loss and evaluation as ``zoo:clip`` (this module calls
:func:`~visionlens.zoo.clip_model.train_clip` and :func:`~visionlens.zoo.clip_model.evaluate_clip`);
only the image tower differs, so every ViT-tower CLIP technique (TextSpan, text-direction DLA,
``cls_attention``, head roles) has a trained, planted-truth model to run on. Built with open_clip's
own ``CLIP`` class from a ViT vision config, so ``visionlens.load("zoo:clip_vit")`` goes through the
real open_clip adapter and every hook name (``visual.blocks.{i}.attn.hook_pattern`` ...) is the
adapter's.

The patch embedding ``visual.conv1`` can be preceded by a small convolutional stem (Xiao et al.
2021, "Early convolutions help transformers see better"): :class:`StemPatchEmbed` is an
``nn.Conv2d`` (the patch projection, so ``visual.conv1.weight`` is still the token embedding of the
stem's features) whose ``forward`` runs ``visual.conv1.stem`` first. It lives inside the open_clip
module tree, so the adapter's ViT tower, which calls ``visual.conv1(x)``, needs no change.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from . import clip_model
from .catalog import load_module
from .clip_model import IMAGE_SIZE, TOKENIZER, evaluate_clip, requires, train_clip, wrap_clip
from .entry import TrainRun, ZooEntry

VISION_CFG: Dict[str, Any] = {
    "image_size": IMAGE_SIZE,
    "layers": 4,
    "width": 64,
    "head_width": 16,  # 4 heads
    "mlp_ratio": 2.0,
    "patch_size": 4,
}
STEM_CHANNELS: Optional[Sequence[int]] = (24, 48)  # None: open_clip's plain patch embedding
LR = 1e-3
BATCH_SIZE = 64
DISTILL_FRACTION = 0.0  # of the steps: regression on zoo:clip's image embeddings; the rest: CLIP loss
DEFAULT_STEPS = 2000
MONITOR_EVERY = 250  # log zero-shot shape accuracy on MONITOR_N held-out images into the curve
MONITOR_N = 300
CLIP_VIT_THRESHOLDS = {"zero_shot_shape_accuracy": 0.95}
PREPROCESS_CFG = {  # zoo:clip's: inputs in [0, 1], no normalisation
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": (0.0, 0.0, 0.0),
    "std": (1.0, 1.0, 1.0),
    "interpolation": "bilinear",
    "resize_mode": "shortest",
    "fill_color": 0,
}

CONFIG: Dict[str, Any] = {
    "embed_dim": clip_model.CONFIG["embed_dim"],
    "vision_cfg": VISION_CFG,
    "text_cfg": clip_model.CONFIG["text_cfg"],
}


class StemPatchEmbed(nn.Conv2d):
    """A patch projection (``nn.Conv2d``, kernel = stride = ``patch``) behind a conv stem ``self.stem``.

    ``stem``: 3 x 3 convs, each followed by BatchNorm (``batch_norm``) and ReLU, the first at stride 1 and each
    later one at stride 2, so an image of
    ``n`` px reaches the projection at ``n / 2 ** (len(channels) - 1)`` px; the projection's ``patch`` is
    the rest of the model's patch size, giving the same token grid as a plain patch embedding.
    """

    def __init__(self, width: int, patch_size: int, channels: Sequence[int], batch_norm: bool = True):
        down = 2 ** (len(channels) - 1)
        if patch_size % down:
            raise ValueError(f"patch_size {patch_size} is not a multiple of the stem's stride {down}")
        super().__init__(channels[-1], width, kernel_size=patch_size // down, stride=patch_size // down, bias=False)
        layers: list = []
        c_in = 3
        for i, c in enumerate(channels):
            conv = nn.Conv2d(c_in, c, 3, stride=1 if i == 0 else 2, padding=1, bias=not batch_norm)
            layers += [conv, nn.BatchNorm2d(c), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]
            c_in = c
        self.stem = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(self.stem(x))


def build_clip_vit(
    vision_cfg: Optional[Dict[str, Any]] = None,
    stem_channels: Optional[Sequence[int]] = STEM_CHANNELS,
    stem_batch_norm: bool = True,
) -> nn.Module:
    """open_clip ``CLIP``: ``VisionTransformer`` image tower (32 px, patch 4 -> 8 x 8 tokens + CLS, width 64,
    4 layers, 4 heads, MLP 128, CLS-token pool) whose patch embedding sits behind a 2-conv stem (3 x 3 conv,
    BatchNorm, ReLU; 24 then 48 channels, the second at stride 2), and zoo:clip's text tower (context 12,
    width 64, 3 layers, 4 heads) over its word vocabulary; joint embedding 64."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg

    vcfg = {**VISION_CFG, **(vision_cfg or {})}
    model = open_clip.CLIP(
        embed_dim=CONFIG["embed_dim"],
        vision_cfg=CLIPVisionCfg(**vcfg),
        text_cfg=CLIPTextCfg(**CONFIG["text_cfg"]),
    )
    if stem_channels:
        model.visual.conv1 = StemPatchEmbed(vcfg["width"], vcfg["patch_size"], stem_channels, stem_batch_norm)
    set_model_preprocess_cfg(model, dict(PREPROCESS_CFG))
    model.visionlens_tokenizer = TOKENIZER  # plain attribute: not in the state dict
    return model


def load_teacher() -> nn.Module:
    """The trained ResNet-tower zoo CLIP (``zoo:clip``), frozen, in eval mode."""
    teacher = load_module("clip").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def copy_text_tower(student: nn.Module, teacher: nn.Module) -> None:
    """Copy the teacher's text tower and logit scale into the student (same text config, same keys)."""
    keys = [k for k in teacher.state_dict() if not k.startswith("visual.")]
    student.load_state_dict({k: teacher.state_dict()[k] for k in keys}, strict=False)


def distill_image_tower(
    module: nn.Module,
    teacher: nn.Module,
    run: TrainRun,
    steps: int,
    lr: float = LR,
    batch_size: int = 64,
    weight_decay: float = clip_model.WEIGHT_DECAY,
    log_every: int = 50,
) -> None:
    """Regress the student's unit image embeddings on the teacher's (loss ``1 - cos``) on the training images.

    AdamW on the image tower only, warm-up + cosine, the same augmentation (brightness jitter) and data
    order generator as :func:`~visionlens.zoo.clip_model.train_clip`, seeded by ``run.seed``.
    """
    images, _ = clip_model.training_set()
    n = len(images)
    g = torch.Generator().manual_seed(run.seed + 1)
    params = list(module.visual.parameters())
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    perm, pos, run_loss = torch.randperm(n, generator=g), 0, 0.0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x = images[idx].float() / 255
        x = (x * (1.0 + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=g) - 0.5))).clamp(0, 1)
        with torch.no_grad():
            target = F.normalize(teacher.encode_image(x), dim=-1)
        loss = (1 - (F.normalize(module.encode_image(x), dim=-1) * target).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += float(loss.detach())
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            run.log(step, distill_loss=run_loss / k, lr=sched.get_last_lr()[0])
            run_loss = 0.0
        run.step_done(step, module)


@dataclass
class _PhaseRun(TrainRun):
    """A phase of a longer :class:`TrainRun`: logs and checkpoints into ``parent`` at ``step + offset``."""

    parent: Optional[TrainRun] = None
    offset: int = 0

    def log(self, step: int, **metrics: float) -> None:
        assert self.parent is not None
        self.parent.log(step + self.offset, **metrics)

    def step_done(self, step: int, module: nn.Module) -> None:
        assert self.parent is not None
        self.parent.step_done(step + self.offset, module)
        if MONITOR_EVERY and (step + self.offset) % MONITOR_EVERY == 0:
            was = module.training
            module.eval()
            with torch.no_grad():
                acc = clip_model.zero_shot_accuracies(wrap_clip(module), clip_model.held_out_batch(MONITOR_N))
            module.train(was)
            self.parent.log(step + self.offset, **{f"held_out_{k}": v for k, v in acc.items()})


def train_clip_vit(module: nn.Module, run: TrainRun) -> None:
    """Distil, then train contrastively: ``DISTILL_FRACTION`` of the steps regress the image tower on
    zoo:clip's image embeddings (its text tower and logit scale copied in first,
    :func:`distill_image_tower`), the rest run zoo:clip's trainer
    (:func:`~visionlens.zoo.clip_model.train_clip`) on both towers."""
    steps = run.step_budget()
    n_distill = int(round(DISTILL_FRACTION * steps))
    if n_distill:
        teacher = load_teacher()
        copy_text_tower(module, teacher)
        distill_image_tower(module, teacher, _PhaseRun(seed=run.seed, parent=run), n_distill, lr=LR)
    if steps - n_distill:
        phase = _PhaseRun(seed=run.seed, steps=steps - n_distill, parent=run, offset=n_distill)
        train_clip(module, phase, lr=LR, batch_size=BATCH_SIZE)


ENTRY = ZooEntry(
    name="clip_vit",
    family="clip",
    kind="clip",
    description=build_clip_vit.__doc__ or "",
    build=build_clip_vit,
    train=train_clip_vit,
    evaluate=evaluate_clip,
    thresholds=dict(CLIP_VIT_THRESHOLDS),
    default_steps=DEFAULT_STEPS,
    config={
        "constructor": "open_clip.CLIP(embed_dim, CLIPVisionCfg(**vision_cfg), CLIPTextCfg(**text_cfg)) "
        "(vision layers an int -> open_clip VisionTransformer); visual.conv1 replaced by "
        "visionlens.zoo.clip_vit_model.StemPatchEmbed(width, patch_size, stem_channels, batch_norm=True)",
        **copy.deepcopy(CONFIG),
        "stem_channels": list(STEM_CHANNELS) if STEM_CHANNELS else None,
        "tokenizer": clip_model.ENTRY.config["tokenizer"],
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "distill_fraction": DISTILL_FRACTION,
        "trainer": "visionlens.zoo.clip_model.train_clip",
    },
    data=clip_model.ENTRY.data,
    wrap=wrap_clip,
    requires=requires,
    benchmark=False,
    bench_cost=0.3,
)

ENTRIES = [ENTRY]
