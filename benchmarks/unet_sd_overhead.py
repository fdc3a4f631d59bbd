"""Cache cost on a Stable-Diffusion-sized UNet (SD 1.x block config, random weights): raw vs no hooks vs full cache.

Interleaved rounds, each variant's time divided by the same round's raw forward, medians.

    python benchmarks/unet_sd_overhead.py > benchmarks/results/unet_sd_overhead.txt
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Callable

import torch
from diffusers import UNet2DConditionModel

from visionlens import HookedVisionModel


def sd_sized_unet() -> UNet2DConditionModel:
    """SD 1.x blocks: widths 320/640/1280/1280, cross-attention width 768, 2 layers per block (random weights)."""
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(320, 640, 1280, 1280),
        cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
    ).eval()


def main(rounds: int = 5, threads: int = 2) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    t0 = time.time()
    unet = sd_sized_unet()
    m = HookedVisionModel.from_diffusers(unet)
    n_params = sum(p.numel() for p in unet.parameters()) / 1e6
    print("built", round(time.time() - t0, 1), "s", n_params, "M params", len(m.hook_dict), "hooks", flush=True)
    x, t, ctx = torch.randn(1, 4, 32, 32), torch.tensor([500]), torch.randn(1, 77, 768)
    variants: dict[str, Callable[[], object]] = {
        "raw": lambda: unet(x, t, encoder_hidden_states=ctx),
        "nohook": lambda: m(x, t, encoder_hidden_states=ctx),
        "cache": lambda: m.run_with_cache(x, t, encoder_hidden_states=ctx),
    }
    ratios: dict[str, list[float]] = {k: [] for k in variants}

    def timed(f: Callable[[], object]) -> float:
        start = time.perf_counter()
        f()
        return time.perf_counter() - start

    with torch.inference_mode():
        for f in variants.values():
            f()
        for r in range(rounds):
            times = {k: timed(f) for k, f in variants.items()}
            for k in variants:
                ratios[k].append(times[k] / times["raw"])
            print(r, {k: round(v, 3) for k, v in times.items()}, flush=True)
    medians = {k: round(statistics.median(v), 3) for k, v in ratios.items()}
    label = f"SD-sized UNet (320/640/1280/1280, cross-attn 768, 32x32 latent, batch 1, {threads} threads)"
    print(label, "medians", medians)


if __name__ == "__main__":
    main()
