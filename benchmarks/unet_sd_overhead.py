"""Cache cost on a Stable-Diffusion-sized UNet (SD 1.x block config, random weights): raw vs no hooks vs full cache.

Interleaved rounds, ratio to the same round's raw forward, medians.

    python benchmarks/unet_sd_overhead.py > benchmarks/results/unet_sd_overhead.txt
"""

import torch
import time
import statistics
import warnings

warnings.filterwarnings("ignore")
torch.set_num_threads(2)
from diffusers import UNet2DConditionModel

from visionlens import HookedVisionModel

t0 = time.time()
unet = UNet2DConditionModel(
    sample_size=16,
    block_out_channels=(320, 640, 1280, 1280),
    cross_attention_dim=768,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=2,
    attention_head_dim=8,
).eval()
m = HookedVisionModel.from_diffusers(unet)
print(
    "built",
    round(time.time() - t0, 1),
    "s",
    sum(p.numel() for p in unet.parameters()) / 1e6,
    "M params",
    len(m.hook_dict),
    "hooks",
    flush=True,
)
x = torch.randn(1, 4, 32, 32)
t = torch.tensor([500])
ctx = torch.randn(1, 77, 768)
clk = time.perf_counter


def tm(f):
    a = clk()
    f()
    return clk() - a


V = {
    "raw": lambda: unet(x, t, encoder_hidden_states=ctx),
    "nohook": lambda: m(x, t, encoder_hidden_states=ctx),
    "cache": lambda: m.run_with_cache(x, t, encoder_hidden_states=ctx),
}
R = {k: [] for k in V}
with torch.inference_mode():
    for f in V.values():
        f()
    for r in range(5):
        ts = {k: tm(f) for k, f in V.items()}
        for k in V:
            R[k].append(ts[k] / ts["raw"])
        print(r, {k: round(v, 3) for k, v in ts.items()}, flush=True)
print(
    "SD-sized UNet (320/640/1280/1280, cross-attn 768, 32x32 latent, batch 1, 2 threads): medians",
    {k: round(statistics.median(v), 3) for k, v in R.items()},
)
