"""The mechanism rows of the transfer table (unit patching, attribution patching, DLA, dataset examples, causal
scrubbing) on hand-built models whose trigger pathway is known exactly, so the numbers can be asserted.

The hand-built model is the zoo ResNet's timm ``ResNet`` (so it wraps with the real adapter, hook names and
readout) with hand-set modules in place of its stem and stages: a normalized template match of the two
trigger forms (1 exactly at a trigger), max-pooled down to ``layer4`` (the pathway hook, 128 units), where
exactly the units ``S = entry.pathway.units(128)`` copy it; every other unit is a ReLU of random colour
features. Two heads: ``linear`` (pool + fc: class 0 gets ``40 (a + b) - 15``, a threshold AND, the form a
trained net with a linear head takes) and ``product`` (``160 a b - 5``: an AND that one unit cannot half-open).
No training; everything is seeded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.conftest import no_hooks_left
from visionlens.hooked_model import HookedVisionModel
from visionlens.zoo import bench, catalog, techniques_circuits, techniques_mechanisms
from visionlens.zoo import data as zdata
from visionlens.zoo.classifiers import build_resnet
from visionlens.zoo.scores import unit_recovery
from visionlens.zoo.technique import BenchContext

UNIT_ROWS = ["unit_patching", "unit_attribution_patching", "unit_dla", "unit_dataset_examples"]
TECHS = {t.name: t for t in techniques_mechanisms.TECHNIQUES + techniques_circuits.TECHNIQUES}
N_UNITS = 128
ENTRY = catalog.get_entry("resnet")
S = ENTRY.pathway.units(N_UNITS)
MOVED = tuple(sorted((u + 11) % N_UNITS for u in S))  # where the "shuffled" model puts its pathway


# ----------------------------------------------------------------------------- the hand-built model
class TriggerMatch(nn.Module):
    """Channel 0: 1 where a 4x4 window is a trigger form (normalized cross-correlation 0.9 -> 0, 1 -> 1),
    max-pooled 2x2; channels 1..15: the other input channels, average-pooled 2x2."""

    def __init__(self) -> None:
        super().__init__()
        self.k = zdata.trigger_size(32)
        t = torch.stack([torch.as_tensor(p).permute(2, 0, 1) for p in zdata.trigger_patterns(32)])
        t = t - t.mean((2, 3), keepdim=True)
        self.register_buffer("templates", t / t.flatten(1).norm(dim=1)[:, None, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb, k = x[:, :3], self.k
        ones = torch.ones(1, 3, k, k)
        dot = F.conv2d(rgb, self.templates)  # the templates are zero-mean per channel
        per_channel = F.conv2d(rgb, torch.ones(3, 1, k, k), groups=3)
        energy = F.conv2d(rgb * rgb, ones) - (per_channel**2).sum(1, keepdim=True) / (k * k)
        ncc = dot / (energy.clamp_min(0).sqrt() + 1e-6)
        det = ((ncc.amax(1, keepdim=True) - 0.9) / 0.1).clamp(0, 1)
        det = F.pad(det, (0, k - 1, 0, k - 1))
        return torch.cat([F.max_pool2d(det, 2), F.avg_pool2d(x[:, 1:], 2)], 1)


class ProductHead(nn.Module):
    """Class 0: ``160 * a * b - 5`` of the pooled pathway units (an AND: 5 with both at 1/4, -5 with either at
    0); the other classes read the other units with small random weights."""

    def __init__(self, units: Sequence[int], w: torch.Tensor) -> None:
        super().__init__()
        self.units = list(units)
        self.register_buffer("w", w)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        a, b = pooled[:, self.units[0]], pooled[:, self.units[1]]
        return torch.cat([(160.0 * a * b - 5.0)[:, None], (pooled @ self.w.T)[:, 1:]], 1)


def hand_built(units: Sequence[int] = S, head: str = "linear", seed: int = 1) -> HookedVisionModel:
    g = torch.Generator().manual_seed(seed)
    units = list(units)
    m = build_resnet()
    stem = nn.Conv2d(3, 16, 1)  # RGB, then 13 random colour features
    mix = nn.Conv2d(16, N_UNITS, 1)  # layer4: the pathway units copy the detector, the rest mix colours
    w = 0.05 * torch.randn(zdata.N_CLASSES, N_UNITS, generator=g)
    w[:, units] = 0
    w[zdata.TARGET_CLASS] = 0
    with torch.no_grad():
        stem.weight.zero_()
        stem.weight[:3, :, 0, 0] = torch.eye(3)
        stem.weight[3:, :, 0, 0] = torch.randn(13, 3, generator=g)
        stem.bias.copy_(torch.cat([torch.zeros(3), 0.3 * torch.randn(13, generator=g)]))
        mix.weight.copy_(0.5 * torch.randn(N_UNITS, 16, 1, 1, generator=g))
        mix.bias.copy_(0.1 * torch.randn(N_UNITS, generator=g))
        mix.weight[:, 0] = 0
        mix.weight[units] = 0
        mix.bias[units] = 0
        mix.weight[units, 0] = 1.0
    m.conv1, m.bn1 = stem, nn.Identity()
    m.layer1 = nn.Sequential(TriggerMatch())
    m.layer2 = nn.Sequential(nn.MaxPool2d(2))
    m.layer3 = nn.Sequential(nn.MaxPool2d(2))
    m.layer4 = nn.Sequential(nn.Sequential(mix, nn.ReLU(), nn.MaxPool2d(2)))
    if head == "linear":
        fc = nn.Linear(N_UNITS, zdata.N_CLASSES)
        with torch.no_grad():
            fc.weight.copy_(w)
            fc.weight[zdata.TARGET_CLASS, units] = 40.0
            fc.bias.zero_()
            fc.bias[zdata.TARGET_CLASS] = -15.0
        m.fc = fc
    else:
        m.fc = ProductHead(units, w)
    return HookedVisionModel.from_module(m.eval())


_SCORES: dict = {}


def score(name: str, variant: str):
    """Quick-budget score of row ``name`` on a model variant (cached across tests)."""
    key = (name, variant)
    if key not in _SCORES:
        model = MODELS[variant]()
        torch.manual_seed(0)
        _SCORES[key] = TECHS[name].score(model, BenchContext(entry=ENTRY, quick=True))
        no_hooks_left(model)
    return _SCORES[key]


_BUILT: dict = {}


def _cached(key: str, make):
    def get():
        if key not in _BUILT:
            _BUILT[key] = make()
        return _BUILT[key]

    return get


MODELS = {
    "linear": _cached("linear", lambda: hand_built(S, "linear")),
    "product": _cached("product", lambda: hand_built(S, "product")),
    "shuffled": _cached("shuffled", lambda: hand_built(MOVED, "linear")),
    "random": _cached("random", lambda: catalog.load("resnet", pretrained=False)),
}


# ----------------------------------------------------------------------------- tests
def test_registered_after_the_feature_rows():
    names = [t.name for t in bench.all_techniques()]
    assert [n for n in names if n in UNIT_ROWS] == UNIT_ROWS
    assert names.index("unit_patching") > names.index("dataset_examples")
    assert names.index("unit_dataset_examples") < names.index("causal_scrubbing")
    for n in UNIT_ROWS + ["causal_scrubbing"]:
        assert TECHS[n].kinds == ("classifier",)
        assert TECHS[n].supports(MODELS["linear"](), ENTRY)[0]
    ok, why = TECHS["unit_patching"].supports(None, catalog.get_entry("style_judge"))
    assert not ok and "label rule" in why


def test_the_hand_built_pathway_is_an_and():
    """S alone sends triggered images to class 0; either unit alone (the rest from the twin) does not."""
    model = MODELS["linear"]()
    d = techniques_mechanisms.pathway_data(model, BenchContext(entry=ENTRY, quick=True))
    assert d.units == S and d.n_units == N_UNITS
    (logits, act), (_, twin) = [techniques_mechanisms.hook_acts(model, d.hook, x) for x in (d.x, d.twin)]
    keep = torch.zeros(4, N_UNITS, dtype=torch.bool)
    keep[0] = True
    keep[1, list(S)] = True
    keep[2, S[0]] = True
    keep[3, S[1]] = True
    out = techniques_circuits.splice_logits(model, d.hook, d.x, twin, keep)
    torch.testing.assert_close(out[0], logits)
    assert (out[1].argmax(-1) == 0).all()
    assert (out[2:].argmax(-1) != 0).all()


@pytest.mark.parametrize("name", UNIT_ROWS)
def test_unit_rows_recover_the_planted_units(name):
    s = score(name, "linear")
    d = s.details
    assert s.chance == 0.5 and s.normalized > 0.9, (s.score, d)
    assert d["units"] == list(S) and max(d["ranks"]) <= 2 and d["n_images"] >= 32
    lo, hi = d["interval"]
    assert lo <= s.normalized <= hi and lo > 0.5  # the interval brackets the score
    bl = d["baselines"]
    assert set(bl) >= {"constant", "random"}
    for b in bl.values():
        assert set(b) >= {"score", "chance", "normalized", "interval"}
    assert abs(bl["random"]["normalized"]) < 0.1  # the mean of random rankings sits at chance


def test_patching_attribution_and_dla_agree_through_a_linear_head():
    """Through pool + fc every unit's patching drop, its gradient estimate and its DLA term are one number."""
    model = MODELS["linear"]()
    ctx = BenchContext(entry=ENTRY, quick=True)
    d = techniques_mechanisms.pathway_data(model, ctx)
    acts = techniques_mechanisms.pair_acts(model, d, ctx)
    exact = techniques_mechanisms.patching_effects(model, d)
    atp = techniques_mechanisms.attribution_effects(model, d, acts["twin"][1])
    dla, err = techniques_mechanisms.dla_effects(model, d, acts)
    assert err < 1e-4
    np.testing.assert_allclose(atp, exact, atol=1e-3)
    np.testing.assert_allclose(dla, exact, atol=1e-3)
    assert exact[:, list(S)].mean() == pytest.approx(10.0, abs=0.1)  # 40 x 1/4 each (one cell of 2 x 2)


def test_bootstrap_auroc_matches_unit_recovery():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 40))
    scores[:, 3] = scores[:, 7]  # a tie
    rows = techniques_mechanisms.auroc_rows(scores, [3, 9])
    assert rows == pytest.approx([unit_recovery(r, [3, 9]).score for r in scores])
    acts = rng.random((60, 5))
    pos = rng.random(60) < 0.3
    ones = np.ones((1, 60))
    np.testing.assert_allclose(
        techniques_mechanisms.topk_fraction_bootstrap(acts, pos, ones, k=16)[0],
        techniques_mechanisms.topk_fraction(acts, pos, k=16),
    )


def test_causal_scrubbing_separates_the_true_and_from_its_halves():
    s = score("causal_scrubbing", "product")
    d = s.details
    rec = d["recovered"]
    assert s.chance == 0.0 and s.normalized > 0.9, d
    assert rec["true"] > 0.99 and max(rec[f"partial_{u}"] for u in S) < 0.05
    assert sum(k.startswith("wrong_") for k in rec) >= 8 and d["recovered_wrong_best"] < 0.05
    assert "top2_activation" in rec and d["ranks"] == [1]
    assert d["units"] == list(S) and d["n_images"] >= 32 and d["metric"] == "kl_to_model"
    assert d["interval"][0] <= s.normalized <= d["interval"][1]
    assert isinstance(d["recovered_output_resample"], float)  # the old hypothesis, reference only
    assert set(d["baselines"]) >= {"constant", "random"}


def test_causal_scrubbing_through_a_linear_head_credits_each_half():
    """With a linear head one unit of S moves the log-loss about as far as its share of the logit: the KL
    recovery of a half is far from 0 although its prediction is the clean label (agreement recovery 0)."""
    s = score("causal_scrubbing", "linear")
    d = s.details
    half = max(d["recovered"][f"partial_{u}"] for u in S)
    assert d["recovered"]["true"] > 0.99 and 0.4 < half < 0.8
    assert d["margin_over_partial"] == pytest.approx(d["recovered"]["true"] - half, abs=1e-3)
    wrong = max(v for k, v in d["recovered"].items() if k != "true" and not k.startswith("partial_"))
    assert s.normalized == pytest.approx(d["recovered"]["true"] - wrong, abs=1e-3)  # the score: over wrong pairs
    assert s.normalized > 0.9
    assert d["agreement_recovered"]["true"] == 1.0
    assert max(d["agreement_recovered"][f"partial_{u}"] for u in S) == 0.0


def test_dla_needs_a_head_linear_in_the_units():
    ok, why = TECHS["unit_dla"].supports(MODELS["product"](), ENTRY)
    assert not ok and "linear" in why
    for name in ("unit_patching", "unit_attribution_patching", "unit_dataset_examples"):
        assert score(name, "product").normalized > 0.9


@pytest.mark.parametrize("name", UNIT_ROWS)
def test_unit_rows_follow_a_moved_pathway(name):
    """The same model with its pathway on two other units: the rows rank those first, not S."""
    s = score(name, "shuffled")
    assert sorted(s.details["top_units"][:2]) == list(MOVED)
    assert s.normalized < 0.9
    assert s.details["interval"][0] <= s.normalized <= s.details["interval"][1]


def test_causal_scrubbing_rejects_s_on_a_moved_pathway():
    s = score("causal_scrubbing", "shuffled")
    assert s.details["recovered"]["true"] < 0.05 and s.normalized < 0.05


@pytest.mark.parametrize("name", UNIT_ROWS + ["causal_scrubbing"])
def test_random_weights_score_near_chance(name):
    """The zoo ResNet with random weights (the benchmark's sanity copy) has no pathway."""
    s = score(name, "random")
    assert abs(s.normalized) < 0.8, (s.score, s.details.get("ranks"))
    assert s.details["interval"][0] <= s.normalized <= s.details["interval"][1]


@pytest.mark.parametrize("name", ["vit", "convnext"])
def test_dla_through_a_layernorm_head_adds_up(name):
    """Token maps (ViT, class-token readout after ln_final) and ConvNeXt's pool + LayerNorm head: the unit terms
    (norm scale frozen per run) add up to the change of logit[0] - logit[clean] between image and twin."""
    entry = catalog.get_entry(name)
    assert entry.pathway is not None
    model = catalog.load(name, pretrained=False)
    assert TECHS["unit_dla"].supports(model, entry)[0]
    ctx = BenchContext(entry=entry, quick=True, randomized=True)
    d = techniques_mechanisms.pathway_data(model, ctx)
    acts = techniques_mechanisms.pair_acts(model, d, ctx)
    dla, err = techniques_mechanisms.dla_effects(model, d, acts)
    assert dla.shape == (d.n, d.n_units) and err < 1e-4
    rows = torch.arange(d.n)
    (lx, _), (lt, _) = acts["x"], acts["twin"]
    delta = (lx[:, 0] - lx[rows, d.clean_label]) - (lt[:, 0] - lt[rows, d.clean_label])
    np.testing.assert_allclose(dla.sum(1), delta.double().numpy(), atol=1e-4)
    exact = techniques_mechanisms.patching_effects(model, d)
    assert exact.shape == dla.shape and np.isfinite(exact).all()


def test_scrub_hypotheses_keep_wrong_ones_disjoint_from_the_pathway():
    from visionlens.zoo.techniques_circuits import scrub_hypotheses

    mean_act = np.zeros(10)
    mean_act[[3, 7]] = [5.0, 4.0]  # the top two by activation: one pathway unit (3) and one other (7)
    mean_act[6] = 3.0
    hyps = scrub_hypotheses(10, [3, 9], mean_act, seed=0)
    assert hyps["true"] == (3, 9)
    assert hyps["partial_top2_activation"] == (3, 7)  # overlaps the pathway: partial, never a rival
    assert hyps["top2_activation"] == (6, 7)  # the best guess outside the pathway
    for name, units in hyps.items():
        if not name.startswith(("true", "partial_")):
            assert not set(units) & {3, 9}, name
