"""``zoo:curve``: a small InceptionV1-style net trained to tell which way a curve bends, for circuit studies.

The task (:func:`curve_batch`): each 32 px image holds one arc (a circular arc whose convex side points to
one of 8 orientations, ``45 k +- 8`` degrees; radius 3.5-8 px, span 80-140 degrees, random bright colour)
among distractors -- two straight lines of random orientation and a colour blob -- on a dark random
background. The label is ``k``: the bend direction. Lines carry no label information, so the model must
tell a curve from a line and read its orientation: the setting in which curve detectors (Cammarata et al.
2020) are expected to form.

The model (:func:`build_curve_net`) stacks torchvision ``BasicConv2d`` and ``Inception`` blocks with the
Lucid layer names: ``conv2d0`` (5 x 5, stride 2) -> ``conv2d1`` (1 x 1) -> ``conv2d2`` (3 x 3) -> max-pool ->
``mixed3a`` -> ``mixed3b`` -> max-pool -> average -> ``fc`` (8 logits). Inputs in [0, 1], no normalisation.

Training is seeded and single-threaded on CPU; ``visionlens zoo train curve --checkpoint-every N`` keeps
checkpoints. The shipped ``curve_checkpoints.safetensors`` holds a thinned set (every
:data:`SHIPPED_EVERY` steps) for phase-change studies, read by :func:`checkpoints`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.nn import functional as F

from ..hooked_model import HookedVisionModel
from ..plugins.circuits.phase_changes import iter_checkpoints
from ..plugins.circuits.stimuli import blobs, curves, lines
from ..validation import VisionLensError
from .catalog import WEIGHTS_DIR
from .entry import TrainRun, ZooEntry

__all__ = [
    "IMAGE_SIZE",
    "N_ORIENTATIONS",
    "CurveNet",
    "build_curve_net",
    "curve_batch",
    "train_curve",
    "evaluate_curve",
    "wrap_curve",
    "checkpoints",
    "ship_checkpoints",
    "ENTRIES",
]

IMAGE_SIZE = 32
N_ORIENTATIONS = 8
TRAIN_N = 16_000
TRAIN_SEED = 0
HELD_OUT_SEED = 1
DEFAULT_STEPS = 1500
SHIPPED_EVERY = 50  # the thinned checkpoint set that ships with the weights
CHECKPOINTS_FILE = "curve_checkpoints.safetensors"
JITTER = 8.0  # degrees of orientation jitter around 45 k


# ----------------------------------------------------------------------------- data
def curve_batch(n: int, seed: int = TRAIN_SEED, size: int = IMAGE_SIZE) -> Dict[str, Tensor]:
    """``n`` images of the curve task: ``images [n, 3, S, S]``, ``labels [n]`` and the arc's parameters.

    Deterministic in ``(n, seed)``; the held-out set is ``seed=HELD_OUT_SEED``.
    """
    g = torch.Generator().manual_seed(int(seed))

    def u(lo: float, hi: float, *shape: int) -> Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    def bright(m: int) -> Tensor:
        c = torch.rand(m, 3, generator=g)
        return 0.35 + 0.65 * c / c.max(dim=1, keepdim=True).values  # max channel 1: always visible

    labels = torch.randint(0, N_ORIENTATIONS, (n,), generator=g)
    orient = labels.float() * (360.0 / N_ORIENTATIONS) + u(-JITTER, JITTER)
    background = u(0.0, 0.25, n, 1).expand(n, 3) + u(-0.04, 0.04, n, 3)
    params = {
        "orientation": orient,
        "radius": u(3.5, 8.0),
        "span": u(80.0, 140.0),
        "width": u(1.2, 2.2),
        "cx": u(8.0, size - 8.0),
        "cy": u(8.0, size - 8.0),
    }
    colour = bright(n)
    img = curves(size, colour=colour, background=background.clamp(0, 1), **params)
    zero = torch.zeros(n, 3)
    for _ in range(2):  # distractor lines: no label information
        cov = lines(
            size,
            orientation=u(0.0, 180.0),
            length=u(5.0, 14.0),
            width=u(1.2, 2.2),
            cx=u(3.0, size - 3.0),
            cy=u(3.0, size - 3.0),
            colour=torch.ones(n, 3),
            background=zero,
        )[:, :1]
        img = img * (1 - cov) + bright(n)[:, :, None, None] * cov
    cov = blobs(size, sigma=u(1.5, 3.5), cx=u(0.0, size), cy=u(0.0, size), colour=torch.ones(n, 3), background=zero)
    img = img * (1 - cov[:, :1]) + bright(n)[:, :, None, None] * cov[:, :1]
    img = img + 0.02 * torch.randn(img.shape, generator=g)
    img = (img.clamp(0, 1) * 255).round() / 255
    return {"images": img.contiguous(), "labels": labels, **params}


@lru_cache(maxsize=2)
def _cached(n: int, seed: int) -> Tuple[Tensor, Tensor]:
    chunks = [curve_batch(min(2000, n - i), seed=10_000 * (seed + 1) + i // 2000) for i in range(0, n, 2000)]
    images = torch.cat([(c["images"] * 255).round().to(torch.uint8) for c in chunks])
    return images, torch.cat([c["labels"] for c in chunks])


# ----------------------------------------------------------------------------- model
class CurveNet(nn.Module):
    """InceptionV1-style stem and two mixed blocks (torchvision ``BasicConv2d`` / ``Inception``), Lucid names."""

    def __init__(self, num_classes: int = N_ORIENTATIONS) -> None:
        super().__init__()
        from torchvision.models.googlenet import BasicConv2d, Inception

        self.conv2d0 = BasicConv2d(3, 16, kernel_size=5, stride=2, padding=2)
        self.conv2d1 = BasicConv2d(16, 16, kernel_size=1)
        self.conv2d2 = BasicConv2d(16, 24, kernel_size=3, padding=1)
        self.pool2 = nn.MaxPool2d(2)
        self.mixed3a = Inception(24, 12, 12, 16, 6, 12, 8)  # 48 channels
        self.mixed3b = Inception(48, 16, 16, 24, 6, 12, 12)  # 64 channels
        self.pool3 = nn.MaxPool2d(2)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool2(self.conv2d2(self.conv2d1(self.conv2d0(x))))
        x = self.pool3(self.mixed3b(self.mixed3a(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build_curve_net() -> nn.Module:
    """The untrained :class:`CurveNet` (Kaiming-normal convs)."""
    m = CurveNet()
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    return m


def wrap_curve(module: nn.Module) -> HookedVisionModel:
    """The generic adapter (a hook on every submodule), with the model's own input conventions."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No visionlens adapter recognises")
        model = HookedVisionModel.from_module(module)
    model.cfg = dataclasses.replace(
        model.cfg,
        family="inception",
        image_size=(IMAGE_SIZE, IMAGE_SIZE),
        n_classes=N_ORIENTATIONS,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    return model


# ----------------------------------------------------------------------------- training
def train_curve(module: nn.Module, run: TrainRun, lr: float = 3e-3, batch_size: int = 64, log_every: int = 50) -> None:
    """AdamW + warm-up/cosine schedule on the cached training set, seeded by ``run.seed``; checkpoint at step 0 too."""
    images, labels = _cached(TRAIN_N, TRAIN_SEED)
    g = torch.Generator().manual_seed(run.seed)
    steps = run.step_budget()
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    run.step_done(0, module)
    module.to(memory_format=torch.channels_last)  # ~25% faster on CPU; the same model
    perm, pos = torch.randperm(len(labels), generator=g), 0
    run_loss = run_acc = 0.0
    for step in range(1, steps + 1):
        if pos + batch_size > len(perm):
            perm, pos = torch.randperm(len(labels), generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x, y = images[idx].float() / 255, labels[idx]
        logits = module(x.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        run_loss += loss.item()
        run_acc += float((logits.argmax(-1) == y).float().mean())
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            run.log(step, loss=run_loss / k, train_accuracy=run_acc / k, lr=sched.get_last_lr()[0])
            run_loss = run_acc = 0.0
        run.step_done(step, module)
    module.to(memory_format=torch.contiguous_format)


@torch.no_grad()
def evaluate_curve(module: nn.Module, n: int = 2000) -> Dict[str, float]:
    """Held-out accuracy and cross-entropy of the bend direction (``seed=HELD_OUT_SEED``)."""
    b = curve_batch(n, seed=HELD_OUT_SEED)
    was = module.training
    module.eval()
    logits = torch.cat([module(b["images"][i : i + 500]) for i in range(0, n, 500)])
    module.train(was)
    return {
        "held_out_accuracy": float((logits.argmax(-1) == b["labels"]).float().mean()),
        "held_out_loss": float(F.cross_entropy(logits, b["labels"])),
        "held_out_n": float(n),
    }


# ----------------------------------------------------------------------------- checkpoints
_STEP = re.compile(r"step_(\d+)")


def ship_checkpoints(checkpoint_dir: Union[str, Path], out: Union[str, Path], every: int = SHIPPED_EVERY) -> Path:
    """Pack the ``step_*.safetensors`` of ``checkpoint_dir`` whose step is a multiple of ``every`` into one file."""
    packed: Dict[str, Tensor] = {}
    for path in sorted(Path(checkpoint_dir).glob("step_*.safetensors")):
        m = _STEP.search(path.name)
        if m and int(m.group(1)) % every == 0:
            for k, v in load_file(str(path)).items():
                packed[f"step_{int(m.group(1)):06d}/{k}"] = v
    if not packed:
        raise VisionLensError(f"no step_*.safetensors with a step multiple of {every} in {checkpoint_dir}")
    out = Path(out)
    save_file(packed, str(out), metadata={"every": str(every)})
    out.chmod(0o644)
    return out


def checkpoints(source: Union[str, Path, None] = None) -> Iterator[Tuple[int, Dict[str, Tensor]]]:
    """``(step, state_dict)`` in step order: from the shipped packed file (default), a packed file, or a folder of
    ``step_*.safetensors`` written by ``visionlens zoo train curve --checkpoint-every N``."""
    path = Path(source) if source is not None else WEIGHTS_DIR / CHECKPOINTS_FILE
    if not path.exists():
        raise VisionLensError(
            f"no curve checkpoints at {path}: run `visionlens zoo train curve --checkpoint-every 50 --out DIR` "
            "and pass DIR/checkpoints/curve"
        )
    yield from iter_checkpoints(path)


def checkpoint_steps(source: Union[str, Path, None] = None) -> List[int]:
    """The steps available in :func:`checkpoints` ``(source)``."""
    return [s for s, _ in checkpoints(source)]


def load_checkpoint(state: Dict[str, Tensor]) -> HookedVisionModel:
    """A hooked :class:`CurveNet` with the given state dict (eval mode)."""
    m = build_curve_net()
    m.load_state_dict(state)
    return wrap_curve(m.eval())


def _entry() -> ZooEntry:
    return ZooEntry(
        name="curve",
        family="inception",
        kind="classifier",
        description=(__doc__ or "").split("\n\n")[0],
        build=build_curve_net,
        train=lambda m, run: train_curve(m, run),
        evaluate=evaluate_curve,
        thresholds={"held_out_accuracy": 0.9},
        default_steps=DEFAULT_STEPS,
        config={
            "lr": 3e-3,
            "batch_size": 64,
            "optimizer": "AdamW(wd=0.01), warm-up + cosine",
            "constructor": "CurveNet: torchvision BasicConv2d x3 + Inception x2 (Lucid layer names)",
            "shipped_checkpoints": f"{CHECKPOINTS_FILE}: every {SHIPPED_EVERY} steps",
        },
        data={
            "generator": "visionlens.zoo.curve_model.curve_batch",
            "train": {"n": TRAIN_N, "seed": TRAIN_SEED},
            "held_out": {"n": 2000, "seed": HELD_OUT_SEED},
            "image_size": IMAGE_SIZE,
            "label_rule": "the arc's bend direction: round(orientation / 45) mod 8",
            "normalization": "none (inputs in [0, 1])",
        },
        wrap=wrap_curve,
        benchmark=False,  # not a row of the planted-trigger transfer table: its truth is the curve family
        dataset="curve",
        randomize=False,
    )


ENTRIES = [_entry()]
