"""VisionActivationCache residual helpers on conv nets (per stage)."""

from __future__ import annotations

import pytest
import torch

import visionlens


@pytest.mark.parametrize("spec", ["timm:convnext_atto", "torchvision:mobilenet_v2"])
def test_stage_decomposition_sums_to_stage_output(spec):
    torch.manual_seed(0)
    model = visionlens.load(spec)
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randn(2, 3, 64, 64))
    s = len(model.cfg.stage_depths) - 2 if spec.endswith("mobilenet_v2") else 1
    depth = model.cfg.stage_depths[s]
    stack, labels = cache.decompose_resid(stage=s, return_labels=True)
    assert len(labels) == depth + (0 if spec.endswith("mobilenet_v2") else 1)
    final = cache[f"stages.{s}.blocks.{depth - 1}.hook_resid_post"]
    assert (stack.sum(0) - final).abs().max().item() <= 1e-4
    acc = cache.accumulated_resid(stage=s)
    assert acc.shape[0] == depth + (0 if spec.endswith("mobilenet_v2") else 1) and torch.equal(acc[-1], final)


def test_resnet_stage_has_no_additive_decomposition():
    torch.manual_seed(0)
    model = visionlens.load("torchvision:resnet18")  # timm zero-inits the last BN, making branches 0
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="not a linear residual block"):
        cache.decompose_resid(stage=1)
    with pytest.raises(ValueError, match="stage="):
        cache.decompose_resid()
    assert cache.accumulated_resid(stage=0).shape[0] == model.cfg.stage_depths[0] + 1
