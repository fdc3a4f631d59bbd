"""Exactness of the CLIP attention-pool decomposition on open_clip's RN50 config with random weights.

``python benchmarks/clip_rn50_attnpool_exactness.py [--images N] [--seed S]`` builds
``open_clip.create_model("RN50")`` (random weights, no download), decomposes the image embeddings of
``N`` random 224 px images with :func:`visionlens.plugins.clip_attnpool_dla.attnpool_decomposition`
and prints the largest absolute error of each view (per head x key, per head x position folded,
per channel) against the tower output and the source model's ``encode_image``.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    import open_clip

    from visionlens import HookedVisionModel
    from visionlens.plugins.clip_attnpool_dla import attnpool_decomposition

    src = open_clip.create_model("RN50", pretrained=None).eval()
    model = HookedVisionModel(src, adapter="open_clip")
    x = torch.rand(args.images, 3, 224, 224)
    parts = attnpool_decomposition(model, x)
    with torch.no_grad():
        ref = src.encode_image(x).double()
    pos, const = parts.spatial()
    ch, cconst = parts.channels()
    out = {
        "config": "open_clip RN50, random weights (seed %d), %d images 224 px" % (args.seed, args.images),
        "grid": list(parts.grid),
        "heads": parts.n_heads,
        "embedding_abs_max": float(parts.embedding.abs().max()),
        "err_head_key_vs_tower": float((parts.total() - parts.embedding).abs().max()),
        "err_head_position_vs_tower": float(
            (pos.sum((1, 2)) + const.sum(1) + parts.bias - parts.embedding).abs().max()
        ),
        "err_channel_vs_tower": float((ch.sum(1) + cconst - parts.embedding).abs().max()),
        "err_head_key_vs_source_encode_image": float((parts.total() - ref).abs().max()),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
