"""The Circuits rows of the transfer table (visionlens.zoo.techniques_curve): planted truth, support reasons, scores."""

from __future__ import annotations

import pytest
import torch

from visionlens.plugins.circuits.equivariance import conv_weight, family_precision_recall, weight_families
from visionlens.zoo import catalog
from visionlens.zoo import techniques_curve as tc
from visionlens.zoo.bench import all_techniques
from visionlens.zoo.technique import BenchContext

pytestmark = pytest.mark.skipif(
    not all(catalog.weights_path(n).is_file() for n in ("resnet", "inception", "vit")),
    reason="zoo models not trained",
)


@pytest.fixture(scope="module")
def resnet():
    return catalog.load("resnet")


def test_rows_are_registered_in_table_order():
    names = [t.name for t in all_techniques()]
    rows = ["planted_curve_family", "handcoded_curve_circuit", "planted_facets"]
    assert [n for n in names if n in rows] == rows
    claims = {t.name: t.claim for t in all_techniques()}
    assert claims["planted_curve_family"] == "finds the planted curve family"
    assert claims["handcoded_curve_circuit"] == "hand-coded replacement recovery"
    assert claims["planted_facets"] == "facets recovered"


def test_support_reasons():
    by = {t.name: t for t in tc.TECHNIQUES}
    got = {}
    for name in ("resnet", "inception", "vit"):
        m, e = catalog.load(name), catalog.get_entry(name)
        got[name] = {t: by[t].supports(m, e) for t in by}
    assert got["resnet"]["planted_curve_family"] == (True, "")
    assert "8 units" in got["inception"]["planted_curve_family"][1]  # no distractors left
    assert "3 x 3" in got["vit"]["planted_curve_family"][1]
    assert got["inception"]["handcoded_curve_circuit"] == (True, "")
    assert "zoo:curve" in got["resnet"]["handcoded_curve_circuit"][1]
    assert got["inception"]["planted_facets"] == (True, "") and not got["vit"]["planted_facets"][0]


def test_planted_family_is_the_truth_of_the_weights(resnet):
    """The plant writes 8 rotated curve kernels at seeded indices: the weight route finds exactly them, with the
    planted offsets; the unplanted model has no family on those units; the model passed in is not modified."""
    before = resnet.source.conv1.weight.detach().clone()
    m, truth = tc.plant_curve_family(resnet, seed=0)
    assert torch.equal(resnet.source.conv1.weight, before)
    assert len(set(truth["family"])) == 8 and truth["layer"] == "conv1"
    fams, _, _ = weight_families(conv_weight(m, "conv1"))
    assert family_precision_recall(fams, truth["family"]) == (1.0, 1.0)
    best = max(fams, key=lambda f: len(set(f.members) & set(truth["family"])))
    seed_off = truth["offsets"][truth["family"].index(best.members[0])]
    for u, off in zip(best.members, best.offsets):  # offsets relative to the family's seed member
        assert (seed_off + off) % 360 == pytest.approx(truth["offsets"][truth["family"].index(u)])
    plain, _, _ = weight_families(conv_weight(resnet, "conv1"))
    assert family_precision_recall(plain, truth["family"])[1] <= 0.25


def test_factors_recovered_statistic():
    labels = ["red"] * 10 + ["stripes"] * 10
    assert tc._factors_recovered([0] * 10 + [1] * 10, labels) == 1.0
    assert tc._factors_recovered([0] * 20, labels) == 0.0  # one facet: 50% pure, below 80%
    assert tc._factors_recovered([0] * 9 + [1] * 11, labels) == 1.0  # 10/11 = 0.91 pure
    assert tc._factors_recovered([0] * 5 + [1] * 15, labels) == 0.5  # the mixed facet is 67% stripes


def test_planted_facets_quick_on_inception():
    e = catalog.get_entry("inception")
    m = catalog.load("inception")
    s = tc.facets_score(m, BenchContext(entry=e, quick=True))
    (seed,) = s.details["per_seed"]
    assert s.score == 1.0 and seed["n_facets"] == 2 and seed["purity"] == 1.0
    assert seed["top_kinds"] == {"red": 32, "stripes": 32, "green": 0, "horizontal": 0}
    assert s.details["interval"] == [1.0, 1.0] and s.details["baselines"]["random"]["score"] <= 0.1
    # the planted unit's drive: the two factors equal, the distractors far below
    d = s.details["drive"]
    assert d["red"] == pytest.approx(d["stripes"], rel=0.05) and max(d["green"], d["horizontal"]) < 0.5 * d["red"]
