"""``construction``: expanded-weight sparsity and sparse explanations, on planted data and the zoo CLIP."""

from __future__ import annotations

import numpy as np
import torch

import visionlens as vl
from visionlens.plugins.clip_construction import explain_units
from visionlens.zoo.clip_model import held_out_batch


def test_planted_sparse_unit_is_explained_and_controls_fail():
    g = torch.Generator().manual_seed(0)
    a_from = torch.randn(400, 20, generator=g)
    y = 2 * a_from[:, 3] - a_from[:, 7] + 0.05 * torch.randn(400, generator=g)
    a_to = torch.stack([y, torch.randn(400, generator=g)], 1)
    W = 0.01 * torch.randn(2, 20, generator=g)
    W[0, 3], W[0, 7] = 1.5, -0.8
    r2 = explain_units(W, a_from, a_to, [0, 1], k=2)
    assert r2["sparse_weights"][0] > 0.99 and r2["weights_all"][0] > 0.9
    assert r2["sparse_random"][0] < 0.5  # two random inputs of twenty rarely hold both
    assert abs(r2["shuffled"][0]) < 0.1  # mismatched images destroy the relation
    assert r2["dense_ridge"][1] < 0.1  # a pure-noise unit is not explained by anything


def test_zoo_clip_last_stage(zoo_clip):
    r = vl.run("construction", zoo_clip, held_out_batch(300).images, max_images=300, units=list(range(32)))
    assert r.meta["from_hook"] == "visual.stages.2.blocks.0.hook_resid_post"
    assert r.tensors["expanded_weights"].shape == (256, 128)
    W = r.tensors["expanded_weights"].double()
    row = W[5].abs().sort(descending=True).values
    assert abs(float(row[:5].sum() / row.sum()) - float(r.tensors["topk_mass"][5])) < 1e-6
    assert 1 <= int(r.tensors["n_for_mass"][5]) <= 128
    mean = {row[0]: row[1] for row in r.tables["summary"].rows}
    assert abs(mean["shuffled"]) < 0.1
    assert mean["dense_ridge"] > mean["sparse_weights"] > mean["sparse_random"] + 0.05
    assert np.isfinite(r.tensors["r2/sparse_weights"].numpy()).all()
