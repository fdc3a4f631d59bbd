"""Models shared by the CLIP analysis tests: a tiny random ModifiedResNet CLIP and the zoo CLIP."""

from __future__ import annotations

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from visionlens import HookedVisionModel  # noqa: E402
from visionlens.zoo import catalog  # noqa: E402

RN_VISION = dict(image_size=64, layers=(1, 1, 1, 1), width=8, head_width=32)  # 2 x 2 grid, 8 heads
TEXT = dict(context_length=8, vocab_size=49408, width=32, heads=4, layers=2)  # open_clip BPE ids


@pytest.fixture(scope="session")
def tiny_rn_clip() -> HookedVisionModel:
    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=RN_VISION, text_cfg=TEXT).eval()
    with torch.no_grad():  # move the pool's attention off uniform so every key matters
        clip.visual.attnpool.positional_embedding.mul_(8.0)
    return HookedVisionModel.from_module(clip)


@pytest.fixture(scope="session")
def zoo_clip() -> HookedVisionModel:
    if not catalog.weights_path("clip").is_file():
        pytest.skip("zoo CLIP weights are not trained")
    return catalog.load("clip")
