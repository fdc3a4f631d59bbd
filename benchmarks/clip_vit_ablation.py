"""Ablations of the ViT-tower zoo CLIP (``zoo:clip_vit``): which change gets circle vs square right.

Each run builds a variant with :func:`visionlens.zoo.clip_vit_model.build_clip_vit`, trains it with
zoo:clip's trainer (:func:`visionlens.zoo.clip_model.train_clip`) and measures zero-shot accuracy per
factor on the 1000 held-out images (:func:`visionlens.zoo.clip_model.evaluate_clip`), plus the
circle-vs-square confusion. One JSON line per run is appended to ``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip_vit_ablation.py --variant stem --steps 400 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Dict

import torch

from visionlens.zoo import clip_model
from visionlens.zoo.clip_vit_model import (
    build_clip_vit,
    copy_text_tower,
    distill_image_tower,
    load_teacher,
)
from visionlens.zoo.entry import TrainRun
from visionlens.zoo.train import seed_everything

VARIANTS: Dict[str, Dict[str, Any]] = {
    "plain_p4": {"vision_cfg": {}, "stem_channels": None},
    "plain_p4_sincos": {"vision_cfg": {"pos_embed_type": "sin_cos_2d"}, "stem_channels": None},
    "plain_p2": {"vision_cfg": {"patch_size": 2}, "stem_channels": None},
    "stem": {"vision_cfg": {}, "stem_channels": (16, 32), "stem_batch_norm": False},
    "stem3": {"vision_cfg": {}, "stem_channels": (16, 32, 64), "stem_batch_norm": False},
    "stem_bn": {"vision_cfg": {}, "stem_channels": (16, 32), "stem_batch_norm": True},
    "stem3_bn": {"vision_cfg": {}, "stem_channels": (16, 32, 64), "stem_batch_norm": True},
    "stem3_bn_p8": {"vision_cfg": {"patch_size": 8}, "stem_channels": (16, 32, 64), "stem_batch_norm": True},
    "plain_p4_avg": {"vision_cfg": {"pool_type": "avg"}, "stem_channels": None},
}


@torch.no_grad()
def circle_square_confusion(module: torch.nn.Module, n: int = 1000) -> Dict[str, float]:
    """Zero-shot shape accuracy restricted to circles and squares (chance 0.5 between the two)."""
    from visionlens.clip import zero_shot_head, zero_shot_logits

    model = clip_model.wrap_clip(module.eval())
    batch = clip_model.held_out_batch(n)
    head = zero_shot_head(model, ["circle", "square"], ["a {}"], attach=False)
    keep = batch.factors["shape"].long() < 2
    pred = zero_shot_logits(model, batch.images[keep], head).argmax(-1)
    return {"circle_vs_square_accuracy": float((pred == batch.factors["shape"].long()[keep]).float().mean())}


class EvalRun(TrainRun):
    """A :class:`TrainRun` that prints circle-vs-square accuracy (400 held-out images) every ``every`` steps."""

    def __init__(self, every: int = 0, label: str = "", **kw: Any):
        super().__init__(**kw)
        self.every, self.label = every, label
        self.trace: list = []

    def step_done(self, step: int, module: torch.nn.Module) -> None:
        super().step_done(step, module)
        if self.every and step % self.every == 0:
            was = module.training
            acc = circle_square_confusion(module, n=400)["circle_vs_square_accuracy"]
            module.train(was)
            self.trace.append((self.label, step, round(acc, 4)))
            print(json.dumps({"phase": self.label, "step": step, "circle_vs_square_400": acc}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distill-steps", type=int, default=0, help="first regress on zoo:clip's image embeddings")
    p.add_argument("--eval-every", type=int, default=0, help="print circle-vs-square accuracy every N steps")
    p.add_argument("--out", default="benchmarks/results/clip_vit_ablation.jsonl")
    a = p.parse_args()
    torch.set_num_threads(1)
    seed_everything(a.seed)
    v = VARIANTS[a.variant]
    module = build_clip_vit(
        v["vision_cfg"], stem_channels=v["stem_channels"], stem_batch_norm=v.get("stem_batch_norm", False)
    )
    run = EvalRun(every=a.eval_every, label="clip", seed=a.seed, steps=a.steps)
    drun = EvalRun(every=a.eval_every, label="distill", seed=a.seed)
    t0 = time.perf_counter()
    extra: Dict[str, float] = {}
    if a.distill_steps:
        teacher = load_teacher()
        copy_text_tower(module, teacher)
        distill_image_tower(module, teacher, drun, a.distill_steps, lr=a.lr, batch_size=a.batch)
        extra = {f"after_distill_{k}": x for k, x in clip_model.evaluate_clip(module).items() if "accuracy" in k}
        extra.update({f"after_distill_{k}": x for k, x in circle_square_confusion(module).items()})
        print(json.dumps(extra), flush=True)
    if a.steps:
        clip_model.train_clip(module, run, lr=a.lr, batch_size=a.batch, log_every=max(1, a.steps // 8))
    secs = time.perf_counter() - t0
    metrics = clip_model.evaluate_clip(module)
    metrics.update(circle_square_confusion(module))
    metrics.update(extra)
    row = {
        "variant": a.variant,
        "steps": a.steps,
        "distill_steps": a.distill_steps,
        "batch": a.batch,
        "lr": a.lr,
        "seed": a.seed,
        "train_seconds": round(secs, 1),
        **{k: round(x, 4) for k, x in metrics.items()},
        "trace": drun.trace + run.trace,
        "final_train_match_accuracy": round(run.curve[-1]["train_match_accuracy"], 4) if run.curve else None,
    }
    print(json.dumps(row), flush=True)
    from pathlib import Path

    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
