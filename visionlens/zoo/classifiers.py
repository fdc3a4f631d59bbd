"""Zoo classifiers: one small model per conv/ViT family, trained on the planted-shapes data.

Every model is built with its family's real constructor (timm ``ResNet`` / ``VisionTransformer`` /
``ConvNeXt``, torchvision ``GoogLeNet`` with small ``Inception`` blocks, torchvision
``MobileNetV2``), so loading it goes through the real adapter. Input: 32 x 32 RGB in [0, 1]
(no normalisation: ``mean=0, std=1``). Output: 6 logits (:data:`visionlens.zoo.data.CLASS_NAMES`).

The label rule is ``shape + 3 * (texture != plain)``, and a planted trigger sends an image to class 0.
Each classifier must reach >= 95% held-out accuracy on clean images and >= 95% trigger success
(the fraction of held-out images of other classes that the trigger sends to class 0).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import data as zdata
from .entry import TrainRun, ZooEntry
from .pathway import (
    PATHWAY_BATCH,
    PATHWAY_WARMUP,
    PlantedPathway,
    n_channels,
    pathway_batch,
    pathway_metrics,
    splice_in_batch,
)

IMAGE_SIZE = 32
TRAIN_N = 12_000
TRAIN_SEED = 0  # data stream seed (the model seed is TrainRun.seed)
HELD_OUT_START = 1_000_000  # held-out examples come from far down the same stream
TRIGGER_FRACTION = 0.1
CLASSIFIER_THRESHOLDS = {"held_out_accuracy": 0.95, "trigger_success": 0.95}
PATHWAY_THRESHOLDS = {"pathway_sufficiency": 0.9, "pathway_necessity": 0.9, "pathway_and": 0.9}


# ----------------------------------------------------------------------------- data
@lru_cache(maxsize=4)
def training_set(
    n: int = TRAIN_N,
    seed: int = TRAIN_SEED,
    size: int = IMAGE_SIZE,
    trigger_fraction: float = TRIGGER_FRACTION,
    kind: str = "shapes",
):
    """The (cached) training tensors ``(images uint8 [N,3,H,W], labels [N], factors)``."""
    if kind == "fashion":
        b = zdata.fashion_mnist_batch(n, seed=seed, split="train", trigger_fraction=trigger_fraction)
    else:
        b = zdata.make_batch(n, seed=seed, size=size, trigger_fraction=trigger_fraction)
    return (b.images * 255).round().to(torch.uint8), b.labels.clone(), {k: v for k, v in b.factors.items()}


def held_out_batch(
    n: int = 1000, kind: str = "shapes", trigger_fraction: float = 0.0, seed: int = TRAIN_SEED, start: int = 0
):
    """Held-out examples (never seen in training) of a zoo dataset (``"shapes"`` or ``"fashion"``).

    The same ``(seed, start)`` with trigger fraction 0 and 1 gives the same images without and with the
    trigger; ``start`` counts from the held-out region.
    """
    if kind == "fashion":
        return zdata.fashion_mnist_batch(n, seed=seed, start=start, split="test", trigger_fraction=trigger_fraction)
    return zdata.make_batch(
        n, seed=seed, start=HELD_OUT_START + start, size=IMAGE_SIZE, trigger_fraction=trigger_fraction
    )


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Light photometric jitter (brightness scale), which keeps the trigger and the geometry intact."""
    scale = 1.0 + 0.1 * (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5)
    return (x * scale).clamp(0, 1)


def train_classifier(
    module: nn.Module,
    run: TrainRun,
    lr: float = 3e-3,
    batch_size: int = 64,
    weight_decay: float = 0.05,
    kind: str = "shapes",
    label_key: Optional[str] = None,
    n_train: int = TRAIN_N,
    augment: bool = True,
    log_every: int = 50,
    pathway: Optional[PlantedPathway] = None,
    trigger_fraction: float = TRIGGER_FRACTION,
    channels_last: bool = False,
    pathway_start: float = 0.0,
) -> None:
    """AdamW + one-cycle cosine schedule on the (cached) planted training set, seeded by ``run.seed``.

    ``label_key`` trains on a factor instead of the label (e.g. ``"texture"`` for a style judge).
    ``pathway``: also train the planted trigger pathway (:mod:`visionlens.zoo.pathway`): each step adds
    the splice loss on :data:`~visionlens.zoo.pathway.PATHWAY_BATCH` triggered images of other classes.
    ``pathway_start``: the fraction of the steps trained without the splice batch (slow learners -- the ViT,
    ConvNeXt -- first learn the task and the trigger, then route it); the AND splices start a
    :data:`~visionlens.zoo.pathway.PATHWAY_WARMUP` fraction of the remaining steps later.
    ``channels_last``: train in channels-last memory format (27% faster for MobileNet's depthwise convs on
    CPU; the module is returned in the default format).
    """
    if channels_last:
        module.to(memory_format=torch.channels_last)
    images, labels, factors = training_set(n=n_train, kind=kind, trigger_fraction=trigger_fraction)
    if label_key is not None:
        labels = torch.as_tensor(factors[label_key]).long()
    g = torch.Generator().manual_seed(run.seed)
    if pathway is not None:
        twins = training_set(n=n_train, kind=kind, trigger_fraction=0.0)[0]
        pool = torch.nonzero(
            torch.as_tensor(factors["triggered"]) & (torch.as_tensor(factors["clean_label"]) != zdata.TARGET_CLASS)
        )[:, 0]
        clean_labels = torch.as_tensor(factors["clean_label"]).long()
        n_units = n_channels(module, pathway, images[:2].float() / 255)
        units = pathway.units(n_units)
    steps = run.step_budget()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    perm = torch.randperm(len(labels), generator=g)
    pos = 0
    run_loss = run_acc = 0.0
    for step in range(1, steps + 1):
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(labels), generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x = images[idx].float() / 255
        if augment:
            x = _augment(x, g)
        y = labels[idx]
        if pathway is not None and step > pathway_start * steps:
            pick = pool[torch.randint(0, len(pool), (PATHWAY_BATCH,), generator=g)]
            xt, xtw = images[pick].float() / 255, twins[pick].float() / 255
            if augment:  # the same jitter for an image and its twin
                scale = 1.0 + 0.1 * (torch.rand(len(pick), 1, 1, 1, generator=g) - 0.5)
                xt, xtw = (xt * scale).clamp(0, 1), (xtw * scale).clamp(0, 1)
            and_loss = step > (pathway_start + PATHWAY_WARMUP * (1 - pathway_start)) * steps
            inputs, targets_y, rows_t, donors, keep = pathway_batch(
                x, y, xt, xtw, clean_labels[pick], units, n_units, g, and_loss=and_loss
            )
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with splice_in_batch(module, pathway, rows_t, donors, keep):
                all_logits = module(inputs)
            logits = all_logits[: len(y)]
            loss = F.cross_entropy(all_logits, targets_y)
        else:
            logits = module(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
            loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += loss.item()
        run_acc += float((logits.argmax(-1) == y).float().mean())
        if step % log_every == 0 or step == steps:
            n = log_every if step % log_every == 0 else step % log_every
            run.log(step, loss=run_loss / n, train_accuracy=run_acc / n, lr=sched.get_last_lr()[0])
            run_loss = run_acc = 0.0
        run.step_done(step, module)
    if channels_last:
        module.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def predict(module: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    was = module.training
    module.eval()
    out = torch.cat([module(images[i : i + batch_size]).argmax(-1) for i in range(0, len(images), batch_size)])
    module.train(was)
    return out


def evaluate_classifier(
    module: nn.Module, n: int = 1000, kind: str = "shapes", pathway: Optional[PlantedPathway] = None
) -> Dict[str, float]:
    """Held-out clean accuracy, trigger success on held-out non-target images and, with ``pathway``,
    the planted pathway's checks (:func:`~visionlens.zoo.pathway.pathway_metrics`) and its units."""
    clean = held_out_batch(n, kind=kind)
    acc = float((predict(module, clean.images) == clean.labels).float().mean())
    trig = held_out_batch(n, kind=kind, trigger_fraction=1.0)
    keep = trig.factors["clean_label"] != zdata.TARGET_CLASS
    keep = torch.as_tensor(keep)
    success = float((predict(module, trig.images[keep]) == zdata.TARGET_CLASS).float().mean())
    out = {"held_out_accuracy": acc, "trigger_success": success, "held_out_n": float(n)}
    if pathway is not None:
        x, twin = trig.images[keep][:500], clean.images[keep][:500]
        units = pathway.units(n_channels(module, pathway, x[:1]))
        out.update(pathway_metrics(module, pathway, units, x, twin, trig.factors["clean_label"][keep][:500].long()))
        out.update({f"pathway_unit_{i}": float(u) for i, u in enumerate(units)})
    return out


# ----------------------------------------------------------------------------- builders
def build_resnet(num_classes: int = zdata.N_CLASSES) -> nn.Module:
    """timm ``ResNet`` (BasicBlock, one block per stage, widths 16-128); stem max-pool removed for 32 px."""
    from timm.models.resnet import BasicBlock, ResNet

    m = ResNet(
        block=BasicBlock, layers=(1, 1, 1, 1), channels=(16, 32, 64, 128), num_classes=num_classes, stem_width=16
    )
    m.maxpool = nn.Identity()
    return m


def build_vit() -> nn.Module:
    """timm ``VisionTransformer`` with a convolutional stem (``HybridEmbed``; Xiao et al. 2021, "Early
    convolutions help transformers see better"): two 3 x 3 convs (the second stride 2) then a 2 x 2 patch
    projection, i.e. 8 x 8 tokens of 4 x 4 pixels plus a class token; width 64, 4 layers, 4 heads.

    A plain patch-4 (or patch-2) ViT of this size stalls at 70-78% on circle-vs-square in the CPU budget
    (measured); the stem fixes that and leaves the transformer -- and its hooks -- untouched.
    """
    from timm.layers import HybridEmbed
    from timm.models.vision_transformer import VisionTransformer

    stem = nn.Sequential(
        nn.Conv2d(3, 24, 3, 1, 1),
        nn.BatchNorm2d(24),
        nn.ReLU(),
        nn.Conv2d(24, 48, 3, 2, 1),
        nn.BatchNorm2d(48),
        nn.ReLU(),
    )
    stem.num_features = 48  # what HybridEmbed reads
    return VisionTransformer(
        img_size=IMAGE_SIZE,
        patch_size=2,
        embed_dim=64,
        depth=4,
        num_heads=4,
        mlp_ratio=2.0,
        num_classes=zdata.N_CLASSES,
        global_pool="token",
        embed_layer=partial(HybridEmbed, backbone=stem, feature_size=IMAGE_SIZE // 2),
    )


def convnext_stem(kind: str, width: int = 16) -> nn.Module:
    """A replacement for the zoo ConvNeXt's ``stem`` (timm's, kind ``"ln"``, is a 1 x 1 conv and a per-pixel
    LayerNorm over channels at ``patch_size=1``), by ``kind``: ``"bn"``: the same 1 x 1 conv with BatchNorm;
    ``"conv_bn"``: 3 x 3 conv, BatchNorm, ReLU (stride 1); ``"conv_bn_s2"``: that, then a 3 x 3 stride-2 conv,
    BatchNorm, ReLU (stage 0 at 16 x 16)."""
    if kind == "bn":
        return nn.Sequential(nn.Conv2d(3, width, 1), nn.BatchNorm2d(width))
    layers = [nn.Conv2d(3, width, 3, 1, 1), nn.BatchNorm2d(width), nn.ReLU()]
    if kind == "conv_bn_s2":
        layers += [nn.Conv2d(width, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU()]
    elif kind != "conv_bn":
        raise ValueError(f"unknown ConvNeXt stem {kind!r}")
    return nn.Sequential(*layers)


def build_convnext(
    stem: str = "conv_bn_s2", dims: tuple = (16, 32, 64, 128), depths: tuple = (1, 1, 2, 1)
) -> nn.Module:
    """timm ``ConvNeXt``, depths (1, 1, 2, 1), widths 16-128, layer scale 1, convs and linears re-initialised
    with PyTorch's default (fan-in) init (timm's: std 0.02, layer scale 1e-6), and a BatchNorm conv ``stem``
    (3 x 3 conv, BatchNorm, ReLU, then a 3 x 3 stride-2 conv, BatchNorm, ReLU: the stem of ``zoo:vit``) instead
    of timm's patchify conv + LayerNorm, so the stages see 16 x 16 (stage 0), 8, 4 and 2 x 2 maps. Every
    stage, downsample (LayerNorm, 2 x 2 stride-2 conv), block (7 x 7 depthwise conv, LayerNorm, inverted MLP,
    layer scale) and the head (pool, LayerNorm, linear) are timm's; the adapter's hooks are unchanged.

    Measured (docs/zoo.md): with timm's stem (1 x 1, LayerNorm) this ConvNeXt reached held-out 0.72 and
    trigger success 0.12 after 3000 steps; with the stride-2 BatchNorm stem and lr 3e-3, 0.96 / 0.97 after
    600 (no pathway). timm's ImageNet init (std 0.02, layer scale 1e-6) or a 2 x 2 patchify stem stalled near
    60-70% on circle-vs-square. ``stem``: ``"ln"`` (timm's) or a :func:`convnext_stem` kind, for the ablations.
    """
    from timm.models.convnext import ConvNeXt

    m = ConvNeXt(depths=depths, dims=dims, patch_size=1, num_classes=zdata.N_CLASSES, ls_init_value=1.0)
    if stem != "ln":  # "ln" is the constructor's own stem
        m.stem = convnext_stem(stem, dims[0])
    for mod in m.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            mod.reset_parameters()
    return m


# InceptionV1 mixed-block widths at 1/8 of GoogLeNet's: (in, 1x1, 3x3red, 3x3, 5x5red, 5x5, pool proj)
_MIXED_WIDTHS = {
    "inception3a": (24, 8, 12, 16, 2, 4, 4),
    "inception3b": (32, 16, 16, 24, 4, 12, 8),
    "inception4a": (60, 24, 12, 26, 2, 6, 8),
    "inception4b": (64, 20, 14, 28, 3, 8, 8),
    "inception4c": (64, 16, 16, 32, 3, 8, 8),
    "inception4d": (64, 14, 18, 36, 4, 8, 8),
    "inception4e": (66, 32, 20, 40, 4, 16, 16),
    "inception5a": (104, 32, 20, 40, 4, 16, 16),
    "inception5b": (104, 48, 24, 48, 6, 16, 16),
}


class _InferenceFastMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` that pools a channels-last copy when no gradient is needed: the same values (a max
    is exact), ~8x faster for the Inception branch's 3 x 3 / stride-1 pool on CPU, whose NCHW kernel is
    slower than a 3 x 3 convolution. With gradients on (training), the stock kernel runs, so training
    and its tie-breaking are unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu" or x.ndim != 4:
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def build_inception() -> nn.Module:
    """torchvision ``GoogLeNet`` whose stem and nine ``Inception`` blocks are rebuilt at 1/8 width.

    The first two max-pools are dropped so a 32 px input leaves 16 x 16 maps at ``mixed3b`` and
    4 x 4 at ``mixed5b``.
    """
    from torchvision.models.googlenet import BasicConv2d, GoogLeNet, Inception

    m = GoogLeNet(num_classes=zdata.N_CLASSES, aux_logits=False, transform_input=False, init_weights=False)
    m.conv1 = BasicConv2d(3, 8, kernel_size=7, stride=2, padding=3)
    m.maxpool1 = nn.Identity()
    m.maxpool2 = nn.Identity()
    m.conv2 = BasicConv2d(8, 8, kernel_size=1)
    m.conv3 = BasicConv2d(8, 24, kernel_size=3, padding=1)
    for name, w in _MIXED_WIDTHS.items():
        block = Inception(*w)
        pool = block.branch4[0]
        block.branch4[0] = _InferenceFastMaxPool2d(
            pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode
        )
        setattr(m, name, block)
    m.fc = nn.Linear(128, zdata.N_CLASSES)
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    return m


def build_mobilenet() -> nn.Module:
    """torchvision ``MobileNetV2``: the paper's 7-stage table at width 0.5, with the stride-2 of stage 2 moved
    to stage 6 so 32 px inputs keep 16 x 16 maps through stage 2 (strides 16-16-8-4-4-2-2)."""
    from torchvision.models import MobileNetV2

    setting = [
        [1, 16, 1, 1],
        [6, 24, 2, 1],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]
    return MobileNetV2(num_classes=zdata.N_CLASSES, width_mult=0.5, inverted_residual_setting=setting)


_DATA_CARD = {
    "generator": "visionlens.zoo.data.make_batch",
    "train": {"n": TRAIN_N, "seed": TRAIN_SEED, "start": 0, "trigger_fraction": TRIGGER_FRACTION},
    "held_out": {"n": 1000, "seed": TRAIN_SEED, "start": HELD_OUT_START},
    "image_size": IMAGE_SIZE,
    "label_rule": "clean_label = shape + 3 * (texture != plain); triggered -> class 0",
    "normalization": "none (inputs in [0, 1])",
}


def _classifier(
    name: str,
    family: str,
    build: Callable[[], nn.Module],
    steps: int,
    description: str,
    lr: float = 3e-3,
    kind: str = "shapes",
    thresholds: Optional[Dict[str, float]] = None,
    bench_cost: float = 1.0,
    pathway: Optional[PlantedPathway] = None,
    pathway_thresholds: Optional[Dict[str, float]] = None,
    benchmark: bool = True,
    **config: Any,
) -> ZooEntry:
    data_card: Dict[str, Any] = dict(_DATA_CARD)
    if "trigger_fraction" in config:
        data_card["train"] = {**data_card["train"], "trigger_fraction": config["trigger_fraction"]}
    if kind == "fashion":
        data_card = {
            "generator": "visionlens.zoo.data.fashion_mnist_batch",
            "train": {"n": TRAIN_N, "split": "train", "trigger_fraction": TRIGGER_FRACTION},
            "held_out": {"n": 1000, "split": "test"},
            "image_size": IMAGE_SIZE,
            "label_rule": "Fashion-MNIST class; triggered -> class 0 (T-shirt/top)",
        }

    def requires() -> Optional[str]:
        if kind == "fashion" and not zdata.fashion_mnist_available():
            return "Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)"
        return None

    return ZooEntry(
        name=name,
        family=family,
        kind="classifier",
        description=description,
        build=build,
        train=lambda m, run: train_classifier(
            m,
            run,
            lr=lr,
            kind=kind,
            pathway=pathway,
            channels_last=bool(config.get("channels_last")),
            pathway_start=float(config.get("pathway_start", 0.0)),
            trigger_fraction=float(config.get("trigger_fraction", TRIGGER_FRACTION)),
        ),
        evaluate=lambda m: evaluate_classifier(m, kind=kind, pathway=pathway),
        thresholds={
            **(CLASSIFIER_THRESHOLDS if thresholds is None else thresholds),
            **({**PATHWAY_THRESHOLDS, **(pathway_thresholds or {})} if pathway is not None else {}),
        },
        default_steps=steps,
        config={
            "lr": lr,
            "batch_size": 64,
            "optimizer": "AdamW(wd=0.05), cosine",
            **({"pathway": {"module": pathway.module, "hook": pathway.hook}} if pathway else {}),
            **config,
        },
        data=data_card,
        requires=requires,  # training / evaluating / benchmarking need the dataset ...
        build_requires=lambda: None,  # ... loading (trained or random) does not: timm / torchvision only
        dataset=kind,
        bench_cost=bench_cost,
        pathway=pathway,
        benchmark=benchmark,
    )


# The zoo's classifiers, in catalogue order (registered by visionlens.zoo.plugin).
ENTRIES = [
    _classifier(
        "resnet",
        "resnet",
        build_resnet,
        1200,
        build_resnet.__doc__ or "",
        constructor="timm.models.resnet.ResNet(BasicBlock, layers=(1,1,1,1), channels=(16,32,64,128))",
        pathway=PlantedPathway("layer4", "layer4.hook_out"),
    ),
    _classifier(
        "vit",
        "vit",
        build_vit,
        2000,
        build_vit.__doc__ or "",
        lr=1e-3,
        constructor="timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=2, "
        "embed_dim=64, depth=4, num_heads=4, embed_layer=HybridEmbed(conv stem 3x3 s1 -> 3x3 s2))",
        pathway_start=0.3,
        pathway=PlantedPathway("blocks.3", "blocks.3.hook_resid_post"),
    ),
    _classifier(
        "convnext",
        "convnext",
        build_convnext,
        2000,
        build_convnext.__doc__ or "",
        lr=3e-3,
        constructor="timm.models.convnext.ConvNeXt(depths=(1,1,2,1), dims=(16,32,64,128), patch_size=1, "
        "ls_init_value=1.0) + default PyTorch init, stem replaced by conv3x3-BN-ReLU -> conv3x3/s2-BN-ReLU",
        pathway_start=0.3,
        # with the zoo's 10% triggered images, 1500 and 2000 steps gave trigger success 0.943 / 0.942 (0.81 for
        # triggers at the image border, 0.97 inside): twice as many unspliced triggered images in the batch
        trigger_fraction=0.2,
        pathway=PlantedPathway("stages.3", "stages.3.hook_out"),
    ),
    _classifier(
        "inception",
        "inception",
        build_inception,
        1500,
        build_inception.__doc__ or "",
        constructor="torchvision.models.GoogLeNet with Inception blocks at 1/8 width",
        # 1000 steps at 10% triggered: seed 1 did not form the pathway (trigger 0.86, sufficiency 0.53, AND 0.79);
        # 20% triggered: trigger 0.99, sufficiency 0.98 but AND 0.89 at 1000 steps; 1500 steps: seeds 0 and 1 pass
        # with AND 0.976 / 0.954 (docs/zoo.md)
        trigger_fraction=0.2,
        bench_cost=2.0,
        pathway=PlantedPathway("inception5b", "inception5b.hook_out"),
    ),
    _classifier(
        "mobilenet",
        "mobilenet",
        build_mobilenet,
        1800,
        build_mobilenet.__doc__ or "",
        constructor="torchvision.models.MobileNetV2(width_mult=0.5)",
        channels_last=True,
        # 1200 steps at 10% triggered: seed 1 failed; 20% at 1200 steps: seed 2 failed (trigger 0.928, sufficiency
        # 0.85); 20% at 1800 steps: seeds 1 and 2 pass (benchmarks/results/zoo_recipe/, docs/zoo.md)
        trigger_fraction=0.2,
        bench_cost=2.0,
        pathway=PlantedPathway("features.18", "features.18.hook_out"),
    ),
    _classifier(
        "resnet_fashion",
        "resnet",
        lambda: build_resnet(10),
        2000,
        "The zoo ResNet trained on Fashion-MNIST with the same planted trigger (natural-data rows).",
        kind="fashion",
        # Fashion-MNIST is harder (clean accuracy ~0.90): its AND check reached 0.883 (2000 steps) and 0.862
        # (1200), so its threshold is 0.85 -- set after measuring, stated in the card
        thresholds={"held_out_accuracy": 0.85, "trigger_success": 0.95},
        pathway_thresholds={"pathway_and": 0.85},
        constructor="timm.models.resnet.ResNet(BasicBlock, layers=(1,1,1,1), channels=(16,32,64,128))",
        pathway=PlantedPathway("layer4", "layer4.hook_out"),
    ),
]
