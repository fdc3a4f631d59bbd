"""The trained ViT-tower zoo CLIP (``zoo:clip_vit``) against its baselines, and the CLIP techniques on it.

* zero-shot accuracy per factor on the 1000 held-out images with a 95% bootstrap interval, next to the
  input-independent answer (the majority class's rate), a uniform random guess (1 / classes), the
  same architecture with random weights (``pretrained="random"``) and the ResNet-tower ``zoo:clip``;
* exactness of the ViT decompositions: :func:`~visionlens.plugins.clip_head_roles.vit_head_parts` and
  ``direct_logit_attribution`` (their parts sum to the embedding / the logit);
* ``head_roles`` on 300 held-out images: per head the role, the largest drops and the attention
  statistics (against the uniform pattern's local share).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip_vit_techniques.py
"""

from __future__ import annotations

import json

import torch

import visionlens as vl
from visionlens.clip import zero_shot_head, zero_shot_logits
from visionlens.plugins.clip_head_roles import vit_head_parts
from visionlens.zoo import catalog
from visionlens.zoo.clip_model import FACTOR_CLASSES, held_out_batch


@torch.no_grad()
def correct(model: vl.HookedVisionModel, batch, factor: str) -> torch.Tensor:
    head = zero_shot_head(model, list(FACTOR_CLASSES[factor]), ["a {}"], attach=False)
    pred = torch.cat(
        [zero_shot_logits(model, batch.images[i : i + 500], head).argmax(-1) for i in range(0, len(batch), 500)]
    )
    return (pred == batch.factors[factor].long()).double()


def bootstrap(c: torch.Tensor, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(c), (n, len(c)), generator=g)
    means = c[idx].mean(1)
    return float(means.quantile(0.025)), float(means.quantile(0.975))


def main() -> None:
    torch.set_num_threads(1)
    batch = held_out_batch(1000)
    models = {
        "zoo:clip_vit": catalog.load("clip_vit"),
        "zoo:clip_vit random weights": catalog.load("clip_vit", pretrained=False),
        "zoo:clip (ResNet tower)": catalog.load("clip"),
    }
    print("| factor | model | accuracy | 95% CI | majority-class rate | uniform guess |")
    print("|---|---|---|---|---|---|")
    for factor, names in FACTOR_CLASSES.items():
        majority = float(torch.bincount(batch.factors[factor].long()).max()) / len(batch)
        for label, model in models.items():
            c = correct(model, batch, factor)
            lo, hi = bootstrap(c)
            print(
                f"| {factor} | {label} | {float(c.mean()):.3f} | [{lo:.3f}, {hi:.3f}] "
                f"| {majority:.3f} | {1 / len(names):.3f} |"
            )

    model = models["zoo:clip_vit"]
    small = held_out_batch(300)
    parts = vit_head_parts(model, small.images)
    dla = vl.run(
        "direct_logit_attribution",
        model,
        small.images[:64],
        class_prompts=list(FACTOR_CLASSES["shape"]),
        templates=["a {}"],
        text_pool=[f"a {w}" for names in FACTOR_CLASSES.values() for w in names],
        textspan_k=2,
        textspan_layers=[2, 3],
    )
    print(
        json.dumps(
            {"vit_head_parts_max_error": parts.max_error(), "dla_max_sum_error": dla.meta["max_sum_error"]}, indent=None
        )
    )
    factors = [f"{k}:{','.join(v)}" for k, v in FACTOR_CLASSES.items()]
    labels = [f"{k}:{','.join(str(int(x)) for x in small.factors[k])}" for k in FACTOR_CLASSES]
    roles = vl.run(
        "head_roles", model, small.images, factors=factors, labels=labels, templates=["a {}"], max_images=300
    )
    print(f"local_attention_uniform = {roles.meta['local_attention_uniform']:.3f}")
    cols = [
        "head",
        "role",
        "drop_shape",
        "drop_colour",
        "drop_texture",
        "total_drop_shape",
        "total_drop_colour",
        "total_drop_texture",
        "mean_token_attention",
        "patch_cls_attention",
        "local_attention",
        "mean_attention_distance",
        "textspan",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in roles.tables["heads"].records():
        cells = [
            ", ".join(r[c]) if isinstance(r[c], list) else (f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]))
            for c in cols
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
