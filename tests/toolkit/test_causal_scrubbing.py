"""Causal scrubbing on hand-set ground-truth models (visionlens.zoo.planted) and running on a ViT."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import visionlens
from tests.conftest import require_analysis  # noqa: E402
from visionlens import HookedVisionModel
from visionlens.scrubbing import Node, activation_mask, causal_scrub, parse_hypothesis
from visionlens.validation import VisionLensError
from visionlens.zoo.planted import (
    PlantedAndNet,
    planted_and_dataset,
    planted_hypotheses,
    planted_vit_dataset,
    planted_vit_model,
)


@pytest.fixture(scope="module")
def planted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedVisionModel.from_module(PlantedAndNet())
    data = planted_and_dataset(128, seed=0)
    return model, data


def _scrub(planted, hyp, **kw):
    model, data = planted
    return causal_scrub(model, data.images, hyp, labels=data.labels, factors=data.factors, n_resamples=4, **kw)


def test_planted_model_is_correct(planted):
    model, data = planted
    assert (model(data.images).argmax(1) == data.labels).all()


def test_true_partial_wrong(planted):
    h = planted_hypotheses()
    true, partial, wrong = (_scrub(planted, h[k]) for k in ("true", "partial", "wrong"))
    assert true.recovered >= 0.95
    assert wrong.recovered <= 0.5
    assert wrong.recovered + 0.15 < partial.recovered < true.recovered - 0.15
    assert true.ci_low <= true.recovered <= true.ci_high
    assert true.per_example_scrubbed.shape == (128,)
    # the per-example distribution averages exactly to the reported number; the wrong hypothesis has
    # a mean near 0 but a wide spread (damaged and undamaged examples average out)
    assert float(partial.per_example_recovered.mean()) == pytest.approx(partial.recovered, abs=1e-6)
    assert float(wrong.per_example_recovered.std()) > 0.3 and wrong.frac_worse_than_random > 0.2
    # the three losses are reported on the same reference inputs
    assert true.loss_model == wrong.loss_model and true.loss_model < true.loss_random


def test_recursion_is_relative_to_node_input(planted):
    """Parents are resampled to agree with the *node's* input, not the reference: if the AND node
    claims nothing about its input (feature "any"), its parents follow a random input and the
    hypothesis must fail, although one-level patching with the same parents would succeed."""
    h = planted_hypotheses()["true"]
    bad = json.loads(json.dumps(h))
    bad["parents"][0]["feature"] = "any"
    assert _scrub(planted, bad).recovered < 0.3
    one_level = {
        "hook": None,
        "parents": [
            {"hook": "relu1.hook_out", "channels": [0], "feature": "red"},
            {"hook": "relu1.hook_out", "channels": [1], "feature": "stripe"},
        ],
    }
    assert _scrub(planted, one_level).recovered >= 0.95


def test_unclaimed_channels_are_resampled(planted):
    # claiming only the red channel leaves the stripe channel random: clearly less than the truth
    h = {"hook": None, "parents": [{"hook": "relu1.hook_out", "channels": [0], "feature": "red"}]}
    r = _scrub(planted, h).recovered
    assert 0.05 < r < 0.8
    # claiming the whole relu1 map with the label feature is a true (coarse) hypothesis
    assert _scrub(planted, {"hook": None, "parents": [{"hook": "relu1", "feature": "label"}]}).recovered >= 0.95


def test_spatial_region_and_masks(planted):
    mask = activation_mask(Node("relu1.hook_out", channels=[1], region=(0, 4, 0, 8)), (2, 4, 8, 8))
    assert mask.shape == (1, 4, 8, 8) and int(mask.sum()) == 32
    mask = activation_mask(Node("blocks.0.attn.hook_z", heads=[1], positions=[0]), (2, 5, 3, 4))
    assert mask.shape == (1, 5, 3, 4) and int(mask.sum()) == 4
    # the stripe can be anywhere: a region claim keeps only part of its evidence
    h = planted_hypotheses()["true"]
    half = json.loads(json.dumps(h))
    half["parents"][0]["parents"][1]["region"] = [0, 8, 0, 3]
    r = _scrub(planted, half).recovered
    assert r < 0.95


def test_errors(planted):
    model, data = planted
    with pytest.raises(VisionLensError, match="unknown feature"):
        _scrub(planted, {"hook": None, "parents": [{"hook": "relu1", "feature": "nope"}]})
    with pytest.raises(VisionLensError, match="out of range"):
        _scrub(planted, {"hook": None, "parents": [{"hook": "relu1", "channels": [9], "feature": "red"}]})
    with pytest.raises(VisionLensError, match="upstream"):
        _scrub(
            planted,
            {
                "hook": None,
                "parents": [{"hook": "relu1", "feature": "red", "parents": [{"hook": "act2", "feature": "red"}]}],
            },
        )
    with pytest.raises(VisionLensError, match="unknown hypothesis keys"):
        parse_hypothesis({"hook": None, "chanels": [1]})
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_plugin_result_save(planted, tmp_path):
    require_analysis("causal_scrubbing")
    model, data = planted
    res = visionlens.run(
        "causal_scrubbing",
        model,
        data.images,
        hypotheses=planted_hypotheses(),
        labels=data.labels.tolist(),
        factors={k: v.tolist() for k, v in data.factors.items()},
        n_bootstrap=200,
    )
    assert res.recovered("true") >= 0.95 and res.recovered("wrong") <= 0.5
    res.save(tmp_path)
    assert (tmp_path / "index.html").exists() and (tmp_path / "overview.png").exists()
    d = json.loads((tmp_path / "result.json").read_text())
    assert d["tables"]["losses"]["rows"][0][0] == "true"


def test_vit_heads_and_tokens_run():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=4, depth=2).eval()
    model = HookedVisionModel.from_module(src)
    x = torch.randn(16, 3, 32, 32)
    labels = model(x).argmax(1)
    hyp = {
        "hook": None,
        "parents": [
            {
                "hook": "blocks.1.hook_resid_post",
                "positions": [0],
                "feature": "label",
                "parents": [{"hook": "blocks.1.attn.hook_z", "heads": [0, 1], "feature": "label"}],
            }
        ],
    }
    r = causal_scrub(model, x, hyp, labels=labels, n_resamples=2, n_bootstrap=50)
    assert r.per_example_scrubbed.shape == (16,)
    # the whole output-relevant state (CLS token of the last residual stream) with identity is exact
    full = causal_scrub(
        model,
        x,
        {"hook": None, "parents": [{"hook": "blocks.1.hook_resid_post", "positions": [0], "feature": "identity"}]},
        labels=labels,
        n_resamples=1,
        n_bootstrap=0,
    )
    assert abs(full.loss_scrubbed - full.loss_model) < 1e-4


def test_cli_run(tmp_path):
    pytest.importorskip("timm")
    require_analysis("causal_scrubbing")
    from visionlens.cli import main

    hyp = tmp_path / "hyp.json"
    hyp.write_text(json.dumps({"hook": None, "parents": [{"hook": "layer4", "feature": "identity"}]}))
    out = tmp_path / "out"
    rc = main(
        [
            "run",
            "causal_scrubbing",
            "--model",
            "timm:resnet18",
            "--images",
            "builtin",
            "--image-size",
            "32",
            "--out",
            str(out),
            "--set",
            f"hypothesis={hyp}",
            "--set",
            "metric=kl_to_model",
            "--set",
            "max_images=6",
            "--set",
            "n_resamples=1",
            "--set",
            "n_bootstrap=50",
        ]
    )
    assert rc == 0
    row = json.loads((out / "result.json").read_text())["tables"]["losses"]["rows"][0]
    assert row[4] == pytest.approx(1.0, abs=1e-3)  # the whole last stage with identity: exact


@pytest.fixture(scope="module")
def planted_vit():
    pytest.importorskip("timm")
    return planted_vit_model(), planted_vit_dataset(128, seed=0)


def _z(head, feature, parents=None):
    node = {"hook": "blocks.0.attn.hook_z", "heads": [head], "positions": [0], "feature": feature}
    if parents:
        node["parents"] = parents
    return {"hook": None, "parents": [node]}


def test_vit_planted_heads_and_tokens(planted_vit):
    """Hand-set ViT: head 0 copies 'patch 0 is red' from token 1 into CLS; head 1 reads patch 3 and
    writes nothing. Heads and token positions are scrubbed separately."""
    model, data = planted_vit
    assert (model(data.images).argmax(1) == data.labels).all()

    def rec(h):
        return causal_scrub(model, data.images, h, labels=data.labels, factors=data.factors, n_resamples=4).recovered

    true, partial, wrong = rec(_z(0, "red0")), rec(_z(0, "red_any")), rec(_z(1, "label"))
    assert true >= 0.95 and wrong <= 0.5 and wrong + 0.15 < partial < true - 0.15
    # recursion through tokens: head 0's CLS output is computed from the patch-0 token (position 1)
    tok = {"hook": "blocks.0.hook_resid_pre", "positions": [1], "feature": "red0"}
    assert rec(_z(0, "red0", [tok])) >= 0.95
    assert rec(_z(0, "red0", [dict(tok, positions=[2])])) <= 0.3


def test_string_and_callable_features(planted):
    model, data = planted
    names = ["red" if int(r) else "plain" for r in data.factors["red"]]

    def stripe_fn(x):  # a feature computed from the inputs themselves: max blue column sum
        return (x[:, 2].sum(1).amax(1) > 4).long()

    hyp = {
        "hook": None,
        "parents": [
            {
                "hook": "act2",
                "channels": [0],
                "feature": "label",
                "parents": [
                    {"hook": "relu1", "channels": [0], "feature": "colour"},
                    {"hook": "relu1", "channels": [1], "feature": stripe_fn},
                ],
            }
        ],
    }
    node = parse_hypothesis(hyp)
    node.parents[0].parents[1].feature = stripe_fn
    r = causal_scrub(model, data.images, node, labels=data.labels, factors={"colour": names}, n_resamples=2)
    assert r.recovered >= 0.95
