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


def test_vit_tower_virtual_weights_and_sparse_explanations():
    """ViT towers: the MLP neurons of the last two blocks, virtual weights on the direct path; the sparse
    weight-chosen explanation beats random inputs and the shuffled control fails (zoo:clip_vit, trained)."""
    import pytest

    from visionlens.plugins.clip_construction import default_pair, vit_virtual_weights
    from visionlens.zoo import catalog

    if not catalog.weights_path("clip_vit").is_file():
        pytest.skip("zoo:clip_vit weights are not trained")
    model = catalog.load("clip_vit")
    assert default_pair(model) == ("visual.blocks.2.mlp.hook_post", "visual.blocks.3.mlp.hook_post")
    blocks = model.source.visual.transformer.resblocks
    W = vit_virtual_weights(model, 2, 3)
    # column i: neuron i's output direction, centred, through ln_2's gain into the next MLP's input weights
    i = 7
    d = blocks[2].mlp.c_proj.weight[:, i].double()
    expected = blocks[3].mlp.c_fc.weight.double() @ (blocks[3].ln_2.weight.double() * (d - d.mean()))
    torch.testing.assert_close(W[:, i], expected)
    r = vl.run("construction", model, held_out_batch(240).images, k=5)
    s = {row["method"]: row for row in r.tables["summary"].records()}
    assert r.meta["in_units"] == r.meta["out_units"] == W.shape[0]
    assert s["sparse_weights"]["ci_low"] > s["sparse_random"]["mean_r2"]
    assert s["shuffled"]["mean_r2"] < 0.05 < s["sparse_weights"]["mean_r2"] < s["dense_ridge"]["mean_r2"]
