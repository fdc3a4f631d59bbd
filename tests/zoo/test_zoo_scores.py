"""Ground-truth scorers (visionlens.zoo.scores): perfect = 1, uniform / random = chance, monotone."""

import numpy as np
import pytest
import torch

from visionlens.zoo import data as D
from visionlens.zoo import scores as S


def _masks(n=20, size=16, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, size, size), bool)
    for i in range(n):
        y, x = rng.integers(0, size - 5, 2)
        h, w = rng.integers(2, 6, 2)
        m[i, y : y + h, x : x + w] = True
    return m


def test_localization_mass():
    m = _masks()
    perfect = S.localization_mass(m.astype(float), m)
    assert perfect.score == pytest.approx(1.0) and perfect.normalized == pytest.approx(1.0)
    uni = S.localization_mass(np.ones(m.shape), m)
    assert uni.score == pytest.approx(uni.chance) and uni.normalized == pytest.approx(0.0)
    rand = [S.localization_mass(np.random.default_rng(s).random(m.shape), m) for s in range(5)]
    assert np.mean([r.score for r in rand]) == pytest.approx(uni.chance, abs=0.02)
    vals = [S.localization_mass((1 - a) * np.ones(m.shape) + a * m, m).score for a in (0, 0.3, 0.6, 0.9, 1.0)]
    assert all(b > a for a, b in zip(vals, vals[1:]))
    # torch input, [N, C, H, W] heatmaps and signed maps
    t = torch.from_numpy(np.stack([m, m, m], 1).astype(np.float32) * -1.0)
    assert S.localization_mass(t, torch.from_numpy(m)).score == pytest.approx(1.0)
    assert S.localization_mass(-m.astype(float), m, mode="positive").score == pytest.approx(uni.chance)
    with pytest.raises(ValueError):
        S.localization_mass(np.ones((2, 4, 4)), np.ones((2, 5, 5), bool))


def test_pointing_game():
    m = _masks()
    assert S.pointing_game(m.astype(float) + 0.1 * np.random.default_rng(0).random(m.shape) * m, m).score == 1.0
    uni = S.pointing_game(np.zeros(m.shape), m)
    assert uni.score == pytest.approx(uni.chance)
    rand = np.mean([S.pointing_game(np.random.default_rng(s).random(m.shape), m).score for s in range(40)])
    assert rand == pytest.approx(uni.chance, abs=0.05)
    anti = S.pointing_game((~m).astype(float), m)
    assert anti.score == 0.0
    # a max one pixel off the mask hits with tolerance 1
    h = np.zeros((1, 8, 8))
    h[0, 2, 5] = 1
    mk = np.zeros((1, 8, 8), bool)
    mk[0, 2, 2:5] = True
    assert S.pointing_game(h, mk).score == 0 and S.pointing_game(h, mk, tolerance=1).score == 1


def test_planted_localization_on_real_masks():
    b = D.make_batch(200, seed=1, trigger_fraction=0.3)
    trig, obj, t = b.masks["trigger"], b.masks["object"], b.factors["triggered"]
    perfect = torch.where(t[:, None, None], trig, obj).float()
    out = S.planted_localization(perfect, trig, obj, t)
    assert out["trigger"].score == pytest.approx(1.0) and out["object"].score == pytest.approx(1.0)
    uni = S.planted_localization(torch.ones(200, 32, 32), trig, obj, t, method="pointing")
    assert uni["trigger"].score == pytest.approx(uni["trigger"].chance)
    assert uni["object"].score == pytest.approx(uni["object"].chance)
    assert uni["trigger"].chance == pytest.approx(D.trigger_size(32) ** 2 / 32**2)


def test_pattern_correlation():
    pat = D.trigger_pattern(32)
    b = D.make_batch(24, seed=0, trigger_fraction=1.0)
    perfect = S.pattern_correlation(b.images[b.factors["trigger_form"] == 0][:6], pat)
    assert perfect.score == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(123)
    noise = S.pattern_correlation(rng.random((8, 3, 32, 32)), pat, seed=1)
    assert noise.score == pytest.approx(noise.chance, abs=4 * noise.details["null_std"] / np.sqrt(8) + 0.02)
    assert noise.chance < 0.9
    # monotone in how much of the pattern is blended into noise
    base = rng.random((3, 32, 32))
    img = base.copy()
    scores = []
    for a in (0.0, 0.3, 0.6, 1.0):
        img = base.copy()
        k = pat.shape[0]
        img[:, 10 : 10 + k, 10 : 10 + k] = (1 - a) * base[:, 10 : 10 + k, 10 : 10 + k] + a * pat.transpose(2, 0, 1)
        scores.append(S.pattern_correlation(img, pat).score)
    assert all(y >= x for x, y in zip(scores, scores[1:])) and scores[-1] == pytest.approx(1.0)


def test_auroc_and_factor_selectivity():
    assert S.auroc([0, 1, 2, 3], [0, 0, 1, 1]) == 1.0
    assert S.auroc([3, 2, 1, 0], [0, 0, 1, 1]) == 0.0
    assert S.auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    f = np.repeat(np.arange(4), 50)
    perfect = S.factor_selectivity((f == 2).astype(float), f, value=2)
    assert perfect.score == 1.0 and perfect.chance == 0.5
    assert S.factor_selectivity((f == 2).astype(float), f).details["value"] == 2
    rand = np.mean([S.factor_selectivity(np.random.default_rng(s).random(200), f, value=2).score for s in range(20)])
    assert rand == pytest.approx(0.5, abs=0.03)
    noise = np.random.default_rng(0).standard_normal(200)
    vals = [S.factor_selectivity(a * (f == 2) + noise, f, value=2).score for a in (0, 0.5, 1, 2, 4)]
    assert all(y > x for x, y in zip(vals, vals[1:]))
    with pytest.raises(ValueError):
        S.factor_selectivity(noise, f, value=7)


def test_topk_factor_purity():
    f = np.repeat(np.arange(4), 50)
    acts = np.stack([(f == v).astype(float) + 0.01 * np.random.default_rng(v).random(200) for v in range(4)], 1)
    perfect = S.topk_factor_purity(acts, f, k=16)
    assert perfect.score == 1.0 and (perfect.details["per_unit"] == 1).all()
    rand = S.topk_factor_purity(np.random.default_rng(1).random((200, 64)), f, k=16)
    assert rand.score == pytest.approx(rand.chance, abs=0.04)
    assert 0.25 < rand.chance < 0.6
    vals = []
    for a in (0.0, 0.5, 1.0, 3.0):
        x = a * (f == 1)[:, None] + np.random.default_rng(2).standard_normal((200, 32))
        vals.append(S.topk_factor_purity(x, f, k=16).score)
    assert all(y > x for x, y in zip(vals, vals[1:]))
    layers = S.purity_by_layer({"a": acts, "conv": acts[:, :, None, None] * np.ones((1, 1, 2, 2))}, f, k=8)
    assert layers["a"].score == 1.0 and layers["conv"].score == 1.0


def test_unit_recovery():
    s = np.zeros(50)
    s[[3, 7]] = [5, 4]
    r = S.trigger_unit_recovery(s, [3, 7])
    assert r.score == 1.0 and r.details["recall_at_k"] == 1.0 and list(r.details["ranks"]) == [1, 2]
    assert S.style_neuron_recovery(np.ones(50), [3, 7]).score == pytest.approx(0.5)
    rand = np.mean([S.unit_recovery(np.random.default_rng(i).random(50), [3, 7, 9]).score for i in range(200)])
    assert rand == pytest.approx(0.5, abs=0.03)
    worse = s.copy()
    worse[7] = 0.0
    worse[10:20] = 1.0
    assert S.unit_recovery(worse, [3, 7]).score < 1.0
    with pytest.raises(ValueError):
        S.unit_recovery(s, [50])


def test_edge_recovery():
    universe = [(a, b) for a in range(10) for b in range(10)]
    true = {(0, 1), (1, 2), (2, 3), (3, 4)}
    perfect = S.edge_recovery(true, true, universe)
    assert perfect.score == 1.0 and perfect.details["precision"] == 1.0
    rng = np.random.default_rng(0)
    rand = [
        S.edge_recovery([universe[i] for i in rng.choice(100, 8, replace=False)], true, universe) for _ in range(400)
    ]
    assert np.mean([r.score for r in rand]) == pytest.approx(rand[0].chance, abs=0.02)
    half = S.edge_recovery({(0, 1), (1, 2)}, true, universe)
    assert 0 < half.score < 1 and half.details["precision"] == 1 and half.details["recall"] == 0.5
    es = {e: float(e in true) for e in universe}
    assert S.edge_auroc(es, true).score == 1.0
    assert S.edge_auroc({e: 0.0 for e in universe}, true).score == 0.5
    with pytest.raises(ValueError):
        S.edge_recovery({(0, 1)}, {(99, 99)}, universe)


def test_causal_scrubbing_and_misc():
    perfect = S.causal_scrubbing_score(loss_clean=0.1, loss_true=0.1, loss_ablated=1.8, loss_wrong=1.5)
    assert perfect.score == pytest.approx(1.0) and perfect.chance == 0.0 and perfect.details["separates"]
    null = S.causal_scrubbing_score(0.1, 1.8, 1.8)
    assert null.score == pytest.approx(0.0)
    vals = [S.causal_scrubbing_score(0.1, l, 1.8).score for l in (1.8, 1.2, 0.6, 0.1)]
    assert all(y > x for x, y in zip(vals, vals[1:]))
    with pytest.raises(ValueError):
        S.loss_recovered(1.0, 0.5, 1.0)
    asked = np.repeat(np.arange(3), 30)
    assert S.style_accuracy(asked, asked).score == 1.0
    rand = np.mean([S.style_accuracy(np.random.default_rng(s).integers(0, 3, 90), asked).score for s in range(50)])
    assert rand == pytest.approx(1 / 3, abs=0.03)
    good = S.sanity_check(S.Score(0.9, 0.5), S.Score(0.52, 0.5))
    bad = S.sanity_check(S.Score(0.9, 0.5), S.Score(0.88, 0.5))
    assert good["passed"] and not bad["passed"]
    d = perfect.to_dict()
    import json

    json.dumps(d)
