"""Exact decomposition of a CLIP ResNet tower's attention pool (per head, key, position, channel)."""

from __future__ import annotations

import pytest
import torch

import visionlens as vl
from tests.conftest import no_hooks_left
from visionlens.clip import zero_shot_head
from visionlens.plugins.clip_attnpool_dla import attnpool_decomposition, is_resnet_clip
from visionlens.validation import VisionLensError
from visionlens.zoo.clip_model import held_out_batch

TOL = 1e-5


def _check_views(model, images):
    parts = attnpool_decomposition(model, images)
    with torch.no_grad():
        ref = model.source.encode_image(images).double()
    assert parts.values.shape[:3] == (len(images), parts.n_heads, parts.grid[0] * parts.grid[1] + 1)
    assert (parts.total() - ref).abs().max() < TOL
    pos, const = parts.spatial()
    assert (pos.sum((1, 2)) + const.sum(1) + parts.bias - ref).abs().max() < TOL
    ch, cconst = parts.channels()
    assert (ch.sum(1) + cconst - ref).abs().max() < TOL
    assert parts.max_error() < TOL
    # independent check: each head's part equals the adapter's own per-head output at the read-out query
    _, cache = model.run_with_cache(images, names_filter=["visual.attnpool.hook_result"])
    per_head = cache["visual.attnpool.hook_result"][:, 0].double()
    assert (parts.per_head() - per_head).abs().max() < TOL
    no_hooks_left(model)
    return parts


def test_tiny_resnet_clip_random_weights_sum_exactly(tiny_rn_clip):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    parts = _check_views(tiny_rn_clip, x)
    assert parts.grid == (2, 2) and parts.n_heads == 8
    # the parts are not trivially concentrated: several keys and heads carry weight
    share = parts.values.norm(dim=-1).sum(0)  # [head, key]
    assert (share > 0.05 * share.max()).sum() > parts.n_heads


def test_zoo_clip_sums_exactly(zoo_clip):
    _check_views(zoo_clip, held_out_batch(16).images)


def test_logit_units_sum_to_zero_shot_logits(zoo_clip):
    b = held_out_batch(16)
    r = vl.run(
        "attnpool_dla",
        zoo_clip,
        b.images,
        class_prompts=["circle", "square", "triangle"],
        templates=["a {}"],
        max_images=16,
    )
    assert r.meta["max_sum_error_embedding"] < TOL and r.meta["max_sum_error_logit"] < TOL
    assert r.meta["max_sum_error_logit_spatial"] < TOL
    head = zero_shot_head(zoo_clip, ["circle", "square", "triangle"], ["a {}"], attach=False)
    with torch.no_grad():
        logits = head(zoo_clip.adapter.encode_image(b.images))
    top = logits.max(-1).values
    total = r.tensors["head_logit"].sum(1) + r.tensors["bias_logit"]
    assert torch.allclose(total, top, atol=1e-4)
    assert r.tables["heads"].records()[0]["class"] == ["circle", "square", "triangle"][int(logits[0].argmax())]


def test_vit_tower_is_declined_with_reason(tiny_rn_clip):
    from tests.adapters.test_open_clip import build_variant

    vit = vl.HookedVisionModel.from_module(build_variant("base"))
    ok, why = is_resnet_clip(vit)
    assert not ok and "ModifiedResNet" in why
    with pytest.raises(VisionLensError, match="ModifiedResNet"):
        attnpool_decomposition(vit, torch.rand(1, 3, 32, 32))
    assert is_resnet_clip(tiny_rn_clip) == (True, "")


def test_analysis_contract_on_a_resnet_tower(tiny_rn_clip, tmp_path):
    """The contract suite's CLIP example has a ViT tower, so the result contract is checked here."""
    import json

    from matplotlib.figure import Figure

    from visionlens.results import load_result

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    r = vl.run("attnpool_dla", tiny_rn_clip, x, class_prompts=["cat", "dog"], classes=[1])
    assert r.meta["max_sum_error_logit"] < TOL and r.meta["targets"] == ["dog"]
    assert r.tensors["position_logit"].shape == (1, 8, 2, 2)
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert isinstance(r.plot(), Figure)
    back = load_result(r.save(tmp_path / "dla"))
    assert type(back) is type(r) and back.to_dict() == d
    no_hooks_left(tiny_rn_clip)
    with pytest.raises(VisionLensError, match="classes"):
        vl.run("attnpool_dla", tiny_rn_clip, x, class_prompts=["cat", "dog"], classes=[5])
