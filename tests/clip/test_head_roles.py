"""``head_roles`` on CLIP ResNet towers: TextSpan on a planted span, ablations on the zoo CLIP."""

from __future__ import annotations

import torch

import visionlens as vl
from visionlens.plugins.clip_attnpool_dla import attnpool_decomposition
from visionlens.plugins.clip_head_roles import ablation_accuracy, textspan_basis
from visionlens.zoo.clip_model import FACTOR_CLASSES, held_out_batch, zero_shot_accuracies


def test_textspan_recovers_a_planted_span():
    g = torch.Generator().manual_seed(0)
    texts = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=-1)
    outputs = torch.randn(200, 1, generator=g) * 3 * texts[4] + torch.randn(200, 1, generator=g) * texts[1]
    idx, shares = textspan_basis(outputs, texts, 2)
    assert idx == [4, 1] and shares[0] > shares[1] and abs(sum(shares) - 1) < 1e-6


def test_zoo_clip_head_roles(zoo_clip):
    b = held_out_batch(300)
    factors = [f"{k}:{','.join(v)}" for k, v in FACTOR_CLASSES.items()]
    labels = [f"{k}:{','.join(str(int(x)) for x in b.factors[k])}" for k in FACTOR_CLASSES]
    r = vl.run("head_roles", zoo_clip, b.images, factors=factors, labels=labels, templates=["a {}"], max_images=300)
    ref = zero_shot_accuracies(zoo_clip, b)
    for name, acc, majority, _ in r.tables["accuracy"].rows:
        assert abs(acc - ref[f"zero_shot_{name}_accuracy"]) < 1e-6 and majority < acc
    only = r.tensors["accuracy_only_head"]  # [factor, head]
    assert only.shape == (3, 4) and (only <= 1).all()
    heads = r.tables["heads"].records()
    assert all(len(h["textspan"]) == 3 for h in heads)
    assert r.meta["max_sum_error_embedding"] < 1e-5


def test_ablating_every_head_destroys_accuracy(zoo_clip):
    """Control: with every head's part at its mean the embedding is constant, so accuracy is one class's rate."""
    b = held_out_batch(300)
    parts = attnpool_decomposition(zoo_clip, b.images)
    parts.values = parts.values.mean(0, keepdim=True).expand_as(parts.values).clone()
    parts.embedding = parts.total()
    from visionlens.clip import zero_shot_head

    head = zero_shot_head(zoo_clip, list(FACTOR_CLASSES["shape"]), ["a {}"], attach=False)
    acc, ablated, only = ablation_accuracy(parts, head.weight, b.factors["shape"].long())
    assert acc == max(ablated) == min(only)
    assert acc < 0.45  # three shapes: one class's share


def test_result_contract_on_a_spatial_resnet_tower(tiny_rn_clip, tmp_path):
    import json

    from visionlens.results import load_result

    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    r = vl.run("head_roles", tiny_rn_clip, x, factors=["animal:cat,dog", "colour:red,blue"], textspan_k=2)
    ent = [h["spatial_entropy"] for h in r.tables["heads"].records()]
    assert all(0 <= e <= 1 + 1e-9 for e in ent)  # normalized by log(4) over the 2 x 2 grid
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert load_result(r.save(tmp_path / "roles")).to_dict() == d
