"""Why a ViT-tower zoo CLIP can miss circle vs square: how big the image content is next to the position
embedding at initialization.

For each patch-embedding variant of :func:`visionlens.zoo.clip_vit_model.build_clip_vit` (random init, seed 0,
the train-mode BatchNorm statistics of the batch where there is BatchNorm), on 256 held-out planted images:
the per-dimension standard deviation of the patch tokens across images (the content the transformer can
use) against the norm of the learned position embedding that is added to them before ``ln_pre``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/clip_vit_init_scale.py
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from visionlens.zoo import clip_model
from visionlens.zoo.clip_vit_model import build_clip_vit

VARIANTS: Dict[str, Dict[str, Any]] = {
    "plain patch 4": dict(stem_channels=None),
    "stem 16-32, no BatchNorm": dict(stem_channels=(16, 32), stem_batch_norm=False),
    "stem 16-32-64, no BatchNorm": dict(stem_channels=(16, 32, 64), stem_batch_norm=False),
    "stem 16-32 + BatchNorm": dict(stem_channels=(16, 32), stem_batch_norm=True),
}


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    x = clip_model.held_out_batch(256).images
    print("| patch embedding | content norm (std across images x sqrt(width)) | position-embedding norm | ratio |")
    print("|---|---|---|---|")
    for name, kw in VARIANTS.items():
        torch.manual_seed(0)
        m = build_clip_vit(**kw)  # train mode: BatchNorm normalizes with the batch's statistics
        tokens = m.visual.conv1(x).flatten(2).transpose(1, 2)  # [images, positions, width]
        content = float(tokens.std(0).mean()) * tokens.shape[-1] ** 0.5
        pos = float(m.visual.positional_embedding[1:].norm(dim=-1).mean())
        print(f"| {name} | {content:.3f} | {pos:.3f} | {content / pos:.3f} |")


if __name__ == "__main__":
    main()
