"""Transfer-benchmark techniques (features and circuits): a trained zoo model must beat its randomized copy.

Each technique is scored (quick budget) on the trained zoo model and on the same architecture with
random weights (the benchmark's Adebayo sanity check); the trained score must be clearly above
chance and above the random one. Skipped when the zoo weights are not trained.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.zoo.conftest import TABLE_GROUPS
from visionlens.zoo import techniques_circuits, techniques_features
from visionlens.zoo.catalog import card_path, get_entry, load, weights_path
from visionlens.zoo.classifiers import PATHWAY_THRESHOLDS
from visionlens.zoo.technique import BenchContext

TECHS = {t.name: t for t in techniques_features.TECHNIQUES + techniques_circuits.TECHNIQUES}


def _needs(name: str):
    return pytest.mark.skipif(
        not weights_path(name).is_file(), reason=f"zoo:{name} is not trained (visionlens zoo train {name})"
    )


@pytest.fixture(scope="module")
def resnet_pair():
    return load("resnet"), load("resnet", pretrained=False)


_CACHE: dict = {}


def _scores(tech_name: str, trained, random, entry_name: str):
    key = (tech_name, entry_name)
    if key not in _CACHE:
        _CACHE[key] = _compute(tech_name, trained, random, entry_name)
    return _CACHE[key]


def _compute(tech_name: str, trained, random, entry_name: str):
    tech = TECHS[tech_name]
    entry = get_entry(entry_name)
    assert tech.supports(trained, entry)[0]
    torch.manual_seed(0)
    s = tech.score(trained, BenchContext(entry=entry, quick=True))
    return s, _compute_random(tech_name, random, entry_name)


def _compute_random(tech_name: str, random, entry_name: str):
    """The benchmark's sanity score: ``tech_name`` on the randomized copy (seed 0, quick budget)."""
    torch.manual_seed(0)
    return TECHS[tech_name].score(random, BenchContext(entry=get_entry(entry_name), quick=True, randomized=True))


def test_techniques_are_registered():
    names = [t.name for t in techniques_features.TECHNIQUES + techniques_circuits.TECHNIQUES]
    assert names == ["feature_visualization", "dataset_examples", "causal_scrubbing", "style_neuron_search"]
    assert TECHS["style_neuron_search"].kinds == ("diffusion",)
    assert TECHS["causal_scrubbing"].plugin == "causal_scrubbing"


def _pathway_trained(name: str) -> bool:
    """Whether the shipped weights' card states a working planted pathway (weights trained before it do not)."""
    path = card_path(name)
    metrics = json.loads(path.read_text()).get("metrics", {}) if path.is_file() else {}
    return all(float(metrics.get(k, 0.0)) >= t for k, t in PATHWAY_THRESHOLDS.items())


@_needs("resnet")
@pytest.mark.parametrize("tech", ["dataset_examples"])
def test_resnet_trained_beats_random(tech, resnet_pair):
    s, r = _scores(tech, *resnet_pair, "resnet")
    assert s.normalized > 0.3, (tech, s.score, s.chance)
    assert s.normalized > r.normalized + 0.25, (tech, s.normalized, r.normalized)
    assert r.normalized < 0.5 * s.normalized  # the benchmark's sanity check passes
    lo, hi = s.details["interval"]  # a bootstrap over units; baselines that never run the model
    assert lo <= s.normalized <= hi and lo > 0.0
    assert set(s.details["baselines"]) == {"constant", "random"}
    assert abs(s.details["baselines"]["random"]["normalized"]) < 0.1 and "interval" not in r.details


@_needs("resnet")
def test_resnet_feature_visualization_optimises_but_does_not_draw_the_trigger(resnet_pair):
    """FFT + decorrelated colour + Lucid's transforms (the field's setup) reach a far higher trigger-class logit
    on the trained ResNet than on the random copy, yet the renders do not carry the 1-px checkerboard: the
    pattern scorer (which no colour-only image passes) stays near chance. A finding of the table, kept honest."""
    s, r = _scores("feature_visualization", *resnet_pair, "resnet")
    assert s.details["final_logit"] > 10 * max(r.details["final_logit"], 1.0)
    assert abs(s.normalized) < 0.3 and abs(r.normalized) < 0.3, (s.normalized, r.normalized)
    lo, hi = s.details["interval"]  # a bootstrap over the renders with their own scrambled controls
    assert lo <= s.normalized <= hi
    bl = s.details["baselines"]  # the data's mean image and noise: no pattern, so about chance
    assert set(bl) == {"constant", "random"} and all(abs(v["normalized"]) < 0.15 for v in bl.values()), bl


@_needs("resnet")
def test_causal_scrubbing_separates_the_planted_pathway(resnet_pair):
    """The true pair of pathway units beats its halves and wrong pairs on the trained ResNet, not on random weights
    (a linear head bounds the KL margin near 0.5: see techniques_circuits; exact numbers on hand-built models are
    in test_mechanism_rows)."""
    if not _pathway_trained("resnet"):
        pytest.skip("the shipped zoo:resnet weights predate the planted pathway (their card has no pathway metrics)")
    s, r = _scores("causal_scrubbing", *resnet_pair, "resnet")
    d = s.details
    assert d["hook"] == "layer4.hook_out" and d["units"] == list(get_entry("resnet").pathway.units(128))
    assert d["recovered_true"] > 0.8 and d["ranks"] == [1], d["recovered"]
    assert s.normalized > 0.2 and s.normalized > r.normalized + 0.2, (s.normalized, r.normalized)
    assert "recovered_output_resample" in d  # the former output-level hypothesis, reference only


def test_block_hooks_skip_the_head():
    model = load("inception", pretrained=False)
    hooks = techniques_features.block_hooks(model, torch.rand(2, 3, 32, 32))
    assert hooks[-1] == "inception5b.hook_out"
    assert not any(h.split(".")[0] in ("avgpool", "dropout", "fc") for h in hooks)


def test_style_judge_is_not_a_planted_classifier():
    entry = get_entry("style_judge")
    ok, why = techniques_features.planted_classifier_support(None, entry)
    assert not ok and "texture" in why


@_needs("diffusion")
@_needs("style_judge")
@TABLE_GROUPS["diffusion"]
def test_style_neurons_trained_beats_random(quick_table):
    """The trained UNet's row is the CLI's quick diffusion table's (tests/zoo/conftest.py: the same cell, scored once
    on this worker, xdist group "diffusion_table"); the random UNet is scored here, and must equal the table's
    sanity score."""
    pytest.importorskip("diffusers")
    rows = json.loads((quick_table("diffusion") / "results.json").read_text())["rows"]
    (row,) = [x for x in rows if x["model"] == "zoo:diffusion" and x["technique"] == "style_neuron_search"]
    assert row["supported"] and row["score"] is not None, row
    d = row["details"]
    r = _compute_random("style_neuron_search", load("diffusion", pretrained=False), "diffusion")
    assert r.normalized == 0.0 and r.details.get("no_style_effect")  # a random UNet has no style to remove
    assert row["sanity_normalized"] == pytest.approx(r.normalized)  # the table's control is this one
    assert d["effects"][d["style"]] > 0.5, d  # the zoo UNet follows the style phrase
    if "add_embedding.hook_out" not in d["searched_hooks"]:
        pytest.xfail("style_neuron_search skips [B, D] hooks (add_embedding), where the zoo UNet's style lives")
    norm = row["normalized"]
    assert norm > 0.2, (row["score"], row["chance"], d)
    assert norm > r.normalized + 0.2 and row["sanity_passed"] is True
    lo, hi = row["interval"]  # a bootstrap over the samples, paired across conditions
    assert lo <= norm + 1e-9 and hi >= norm - 1e-9 and lo > 0.0
    assert set(row["baselines"]) == {"constant", "random"}
    assert row["baselines"]["constant"]["normalized"] < norm
