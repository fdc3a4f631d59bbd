"""``zoo:clip_vit``: the ViT-tower zoo CLIP loads through the open_clip adapter, reaches its zero-shot figures,
and the ViT-tower CLIP techniques (DLA / TextSpan, head_roles, max_activating_text) run on it with exact sums."""

from __future__ import annotations

import pytest
import torch

import visionlens as vl
from visionlens.plugins.clip_head_roles import vit_attention_stats, vit_head_parts
from visionlens.zoo import catalog
from visionlens.zoo.clip_model import FACTOR_CLASSES, held_out_batch, zero_shot_accuracies
from visionlens.zoo.clip_vit_model import StemPatchEmbed, build_clip_vit
from visionlens.zoo.train import sha256_file


@pytest.fixture(scope="module")
def clip_vit() -> vl.HookedVisionModel:
    if not catalog.weights_path("clip_vit").is_file():
        pytest.skip("zoo:clip_vit weights are not trained")
    return catalog.load("clip_vit")


@pytest.fixture(scope="module")
def batch():
    return held_out_batch(200)


def test_stem_patch_embed_keeps_the_token_grid():
    stem = StemPatchEmbed(width=8, patch_size=4, channels=(4, 6))
    assert isinstance(stem, torch.nn.Conv2d) and stem.weight.shape == (8, 6, 2, 2)
    assert stem(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8, 8)  # 8 x 8 tokens, as a plain patch-4 embedding
    with pytest.raises(ValueError):
        StemPatchEmbed(width=8, patch_size=2, channels=(4, 6, 8))  # stride 4 > patch 2


def test_card_and_weights(clip_vit):
    card = catalog.model_card("clip_vit")
    assert card["passed"] and card["metrics"]["zero_shot_shape_accuracy"] >= 0.95
    assert card["sha256"] == sha256_file(catalog.weights_path("clip_vit"))
    assert catalog.weights_path("clip_vit").stat().st_size < 2e6


def test_loads_through_the_open_clip_adapter(clip_vit):
    assert clip_vit.cfg.extra["visual_type"] == "vit" and clip_vit.cfg.n_layers == 4 and clip_vit.cfg.n_heads == 4
    assert (
        "visual.blocks.3.attn.hook_pattern" in clip_vit.hook_dict
        and "text.blocks.2.mlp.hook_post" in clip_vit.hook_dict
    )
    x = held_out_batch(8).images
    raw = catalog.load_module("clip_vit")
    with torch.no_grad():
        ref = raw.encode_image(x)
        _, cache = clip_vit.run_with_cache(x)
    assert torch.allclose(cache["visual.hook_proj"], ref, atol=1e-5)
    assert cache["visual.blocks.0.attn.hook_pattern"].shape == (8, 4, 65, 65)  # CLS + 8 x 8 tokens


def test_zero_shot_accuracy_and_random_control(clip_vit, batch):
    acc = zero_shot_accuracies(clip_vit, batch)
    assert acc["zero_shot_shape_accuracy"] >= 0.9
    assert acc["zero_shot_colour_accuracy"] >= 0.9 and acc["zero_shot_texture_accuracy"] >= 0.85
    rnd = zero_shot_accuracies(catalog.load("clip_vit", pretrained=False), batch)
    assert rnd["zero_shot_shape_accuracy"] < 0.5  # three shapes: chance is ~1/3


def test_head_parts_sum_exactly_and_match_dla(clip_vit, batch):
    parts = vit_head_parts(clip_vit, batch.images)
    assert parts.values.shape == (200, 16, 64) and parts.labels[5] == "L1H1"
    assert parts.max_error() < 1e-5
    r = vl.run(
        "direct_logit_attribution",
        clip_vit,
        batch.images[:32],
        class_prompts=list(FACTOR_CLASSES["shape"]),
        templates=["a {}"],
        text_pool=["a circle", "a square", "a triangle", "a red", "a striped"],
        textspan_k=2,
        textspan_layers=[3],
    )
    assert r.meta["max_sum_error"] < 1e-5
    assert len(r.tables["textspan"].rows) == 4 * 2  # 4 heads of the last layer x 2 texts


def test_head_roles_on_the_vit_tower(clip_vit):
    b = held_out_batch(100)
    factors = [f"{k}:{','.join(v)}" for k, v in FACTOR_CLASSES.items()]
    labels = [f"{k}:{','.join(str(int(x)) for x in b.factors[k])}" for k in FACTOR_CLASSES]
    r = vl.run("head_roles", clip_vit, b.images, factors=factors, labels=labels, templates=["a {}"], max_images=100)
    ref = zero_shot_accuracies(clip_vit, b)
    for name, acc, majority, _ in r.tables["accuracy"].rows:
        assert abs(acc - ref[f"zero_shot_{name}_accuracy"]) < 1e-6 and majority < acc
    assert r.meta["tower"] == "vit" and r.meta["max_sum_error_embedding"] < 1e-5
    heads = r.tables["heads"].records()
    assert [h["head"] for h in heads][:2] == ["L0H0", "L0H1"] and len(heads) == 16
    assert all(0 <= h["local_attention"] <= 1 and 0 <= h["spatial_entropy"] <= 1 + 1e-9 for h in heads)
    total = r.tensors["total_accuracy_drop"]
    assert total.shape == (3, 16) and float(total.abs().max()) <= 1
    # a planted factor has a head: one last-layer head carries shape (seed-0 weights)
    shape_head = max(heads, key=lambda h: h["drop_shape"])
    assert shape_head["role"] == "shape" and shape_head["drop_shape"] >= 0.1 and shape_head["head"].startswith("L3")


def test_attention_stats_on_planted_patterns():
    grid = (4, 4)
    n = 17
    uniform = torch.full((1, 2, 1, n, n), 1.0 / n)
    eye = torch.eye(n).view(1, 1, 1, n, n).expand(1, 2, 1, n, n)
    st = vit_attention_stats(torch.cat([uniform, eye], dim=2), grid)  # [layer=1, batch=2, head=2, q, k]
    assert st["spatial_entropy"][0, 0] == pytest.approx(1.0) and st["mean_token_attention"][0, 1] == pytest.approx(1.0)
    assert st["local_attention"][0, 0] == pytest.approx(float(st["local_attention_uniform"]))
    assert st["local_attention"][0, 1] == pytest.approx(1.0) and st["mean_attention_distance"][0, 1] == 0


def test_max_activating_text_runs_on_the_vit_clip(clip_vit):
    r = vl.run(
        "max_activating_text",
        clip_vit,
        None,
        targets=["text.blocks.2.mlp.hook_post:0"],
        methods=["discrete"],
        budget=200,
        top=1,
    )
    row = r.tables["strings"].records()[0]
    assert row["forwards"] <= 200 and row["text"]


def test_random_vit_clip_builds_with_and_without_stem():
    plain = build_clip_vit(stem_channels=None)
    assert type(plain.visual.conv1) is torch.nn.Conv2d and plain.visual.conv1.weight.shape == (64, 3, 4, 4)
    stem = build_clip_vit()
    assert isinstance(stem.visual.conv1, StemPatchEmbed)


def test_retraining_is_bit_for_bit_reproducible():
    from visionlens.zoo.train import train_module

    a, run_a = train_module("clip_vit", seed=3, steps=3)
    b, run_b = train_module("clip_vit", seed=3, steps=3)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert run_a.curve == run_b.curve and run_a.curve[-1]["step"] == 3
    c, _ = train_module("clip_vit", seed=4, steps=3)
    assert not torch.equal(c.state_dict()["visual.conv1.weight"], sa["visual.conv1.weight"])
