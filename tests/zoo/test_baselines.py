"""Baselines, bootstrap intervals and interval verdicts of the localization cells (visionlens.zoo.baselines)."""

from __future__ import annotations

import numpy as np
import pytest

from visionlens.zoo import catalog
from visionlens.zoo.baselines import edge_map, fit_constant_map, random_map, sobel_magnitude
from visionlens.zoo.bench_report import edge_as_good, verdict
from visionlens.zoo.scores import Score, bootstrap_normalized, planted_localization


def _squares(n: int, side: int, size: int, rng: np.random.Generator, p_home: float = 1.0) -> np.ndarray:
    """Masks ``[n, side, side]``: a ``size`` square at the bottom-right corner with probability ``p_home``,
    else at a random place."""
    m = np.zeros((n, side, side), bool)
    for i in range(n):
        if rng.random() < p_home:
            y = x = side - size
        else:
            y, x = rng.integers(0, side - size + 1, size=2)
        m[i, y : y + size, x : x + size] = True
    return m


def _score(heat: np.ndarray, tmask: np.ndarray, omask: np.ndarray, trig: np.ndarray):
    res = planted_localization(heat, tmask, omask, trig, method="mass")
    s = Score(float(np.mean([v.score for v in res.values()])), float(np.mean([v.chance for v in res.values()])))
    return s, res


def test_constant_map_fitted_elsewhere_scores_one_when_the_truth_never_moves():
    rng = np.random.default_rng(0)
    n, side = 40, 8
    trig = np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]
    # the truth is always the corner 2 x 2 (trigger on triggered images, "object" on clean ones)
    fit_t, fit_o = _squares(n, side, 2, rng), _squares(n, side, 2, rng)
    const = fit_constant_map(fit_t, fit_o, trig)
    assert const.sum() == 4 and const[-2:, -2:].all()
    ev_t, ev_o = _squares(n, side, 2, rng), _squares(n, side, 2, rng)
    s, res = _score(np.broadcast_to(const, (n, side, side)), ev_t, ev_o, trig)
    assert s.normalized == pytest.approx(1.0)
    lo, hi = bootstrap_normalized(res, n_resamples=1000, seed=0)
    assert lo <= s.normalized <= hi and hi - lo < 1e-9


def test_constant_map_is_the_argmax_not_the_mean_and_its_interval_narrows():
    side = 8
    widths = []
    for n in (20, 400):
        rng = np.random.default_rng(1)
        trig = np.ones(n, bool)  # trigger part only (as for the swap pairs)
        fit = _squares(n, side, 2, rng, p_home=0.7)
        const = fit_constant_map(fit, np.zeros_like(fit), trig, parts=("trigger",))
        assert const[-2:, -2:].sum() == const.sum() >= 1  # on the cells the truth covers most often (the corner)
        ev = _squares(n, side, 2, rng, p_home=0.7)
        s, res = _score(np.broadcast_to(const, ev.shape), ev, np.zeros_like(ev), trig)
        # the mean mask scores less than the argmax map (sum q^2 / sum q < max q)
        mean_map = np.broadcast_to(fit.mean(0), ev.shape)
        assert _score(mean_map, ev, np.zeros_like(ev), trig)[0].normalized < s.normalized
        lo, hi = bootstrap_normalized(res, n_resamples=1000, seed=0)
        assert lo <= s.normalized <= hi
        widths.append(hi - lo)
        if n == 400:
            assert s.normalized == pytest.approx(0.7, abs=0.07)  # the truth is home 70% of the time
    assert widths[1] < 0.5 * widths[0]  # ~ 1 / sqrt(n): 20x the images, ~4.5x narrower


def test_random_map_scores_chance():
    rng = np.random.default_rng(2)
    n, side = 300, 16
    trig = np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)]
    tm, om = _squares(n, side, 3, rng, p_home=0.0), _squares(n, side, 6, rng, p_home=0.0)
    s, res = _score(random_map(n, side, side, seed=0), tm, om, trig)
    assert abs(s.normalized) < 0.03
    lo, hi = bootstrap_normalized(res, n_resamples=1000, seed=0)
    assert lo < 0 < hi and hi - lo < 0.1
    assert np.array_equal(random_map(3, 4, 4, seed=5), random_map(3, 4, 4, seed=5))


def test_sobel_concentrates_on_the_border_of_a_bright_square():
    img = np.zeros((1, 3, 32, 32))
    img[0, :, 10:20, 10:20] = 1.0
    mag = sobel_magnitude(img)[0]
    border = np.zeros((32, 32), bool)
    border[9:21, 9:21] = True
    border[11:19, 11:19] = False  # the two-pixel ring across the square's edge
    assert mag[border].sum() / mag.sum() == pytest.approx(1.0)
    assert mag[11:19, 11:19].max() == 0 and mag[:8].max() == 0
    assert mag[15, 9] == pytest.approx(4.0) and mag[15, 10] == pytest.approx(4.0)  # a straight edge: |gx| = 4
    # pooled to 4 x 4 (8 px cells): the mass lies in the cells the border crosses, none in the corners
    grid = edge_map(img, 4, 4)[0]
    assert grid.shape == (4, 4) and grid[0, 0] == 0 and grid[3, 3] == 0 and grid[1, 1] > 0


def _row(interval, const, rnd=0.0, edge=0.0, normalized=None, sanity=True):
    lo, hi = interval
    return {
        "supported": True,
        "score": 0.5,
        "normalized": (lo + hi) / 2 if normalized is None else normalized,
        "sanity_passed": sanity,
        "interval": [lo, hi],
        "baselines": {
            "constant": {"normalized": const, "interval": [const, const]},
            "random": {"normalized": rnd, "interval": [rnd, rnd]},
            "edge": {"normalized": edge, "interval": [edge, edge]},
        },
    }


def test_interval_verdicts():
    assert verdict(_row((0.6, 0.9), const=0.4)) == "transfers"
    assert verdict(_row((0.6, 0.9), const=0.4, sanity=False)) == "fails sanity"
    # above chance, but not reliably above the constant map: partial (no 0.5 cut-off either way)
    assert verdict(_row((0.3, 0.9), const=0.4)) == "partial"
    assert verdict(_row((0.3, 0.45), const=0.1)) == "transfers"  # a point of 0.375 < 0.5 still transfers
    # a high point estimate under a perfect constant map breaks
    assert verdict(_row((0.7, 0.95), const=1.0)) == "breaks"
    assert verdict(_row((0.7, 0.95), const=1.0, sanity=False)) == "breaks"
    # the lower end must beat chance even when the baselines are below it
    assert verdict(_row((-0.1, 0.3), const=-0.2, rnd=-0.05)) == "partial"
    assert verdict(_row((-0.3, -0.01), const=-0.2, rnd=-0.05)) == "breaks"
    # the random map's point counts as well
    assert verdict(_row((0.2, 0.5), const=0.0, rnd=0.25)) == "partial"
    # the edge detector is reported, not part of the verdict
    r = _row((0.6, 0.9), const=0.4, edge=0.7)
    assert verdict(r) == "transfers" and edge_as_good(r)
    assert not edge_as_good(_row((0.6, 0.9), const=0.4, edge=0.5))
    # rows without an interval keep the fixed cut-offs
    plain = {"supported": True, "score": 0.9, "normalized": 0.55, "sanity_passed": True}
    assert verdict(plain) == "transfers" and verdict({**plain, "normalized": 0.3}) == "partial"
    assert verdict({"supported": False}) == "n/a"


@pytest.mark.skipif(not catalog.weights_path("resnet").is_file(), reason="zoo:resnet not trained")
def test_quick_run_rows_have_interval_and_baselines(tmp_path):
    from visionlens.zoo.bench import run_transfer

    rows = run_transfer(tmp_path, families=["resnet"], techniques=["gradient_x_input"], quick=True)
    r = next(r for r in rows if r["model"] == "zoo:resnet")
    assert r["supported"] and r["score"] is not None
    lo, hi = r["interval"]
    assert lo <= r["normalized"] <= hi
    assert set(r["baselines"]) == {"constant", "random", "edge"}
    for b in r["baselines"].values():
        assert b["interval"][0] <= b["normalized"] <= b["interval"][1]
        assert b["chance"] == pytest.approx(r["chance"], abs=1e-3)  # the same images and grid
    assert r["baselines"]["constant"]["normalized"] <= 0.1  # the trigger moves: no fixed map finds it
    assert abs(r["baselines"]["random"]["normalized"]) < 0.1
    assert "interval" not in r["details"] and r["details"]["grid"] == "32x32"
    md = (tmp_path / "results.md").read_text()
    assert "95% interval" in md and "const " in md


def test_a_coarse_map_scores_as_the_same_map_spread_over_its_pixels():
    """Fractional cell masks: the mass of a 4 x 4 map inside a pixel mask equals the mass of its upsampled
    pixel map inside the mask; the chance is the mask's pixel area; ``best`` is the best cell's share."""
    import torch

    from visionlens.zoo.scores import localization_mass
    from visionlens.zoo.techniques_localization import to_grid_fraction

    rng = np.random.default_rng(0)
    pix = _squares(20, 32, 8, rng, p_home=0.0)
    heat = rng.random((20, 4, 4))
    coarse = localization_mass(heat, to_grid_fraction(pix, 4, 4))
    up = torch.nn.functional.interpolate(torch.as_tensor(heat)[:, None], size=(32, 32), mode="nearest")[:, 0].numpy()
    fine = localization_mass(up, pix)
    assert coarse.score == pytest.approx(fine.score, abs=1e-12)
    assert coarse.chance == pytest.approx(fine.chance, abs=1e-12) == pytest.approx(64 / 1024)
    best = coarse.details["best"]
    assert np.all(best <= 1.0) and np.all(best >= 64 / 1024 / 4)  # an 8 px square covers >= 1/4 of some 8 px cell
    assert np.mean(best) < 1.0  # a moving 8 px square usually straddles 8 px cells


def test_within_counts_the_mass_inside_a_region():
    """Target against distractor: a map uniform over both scores the target's share of their area (chance)."""
    from visionlens.zoo.scores import localization_mass

    t = np.zeros((2, 8, 8), bool)
    d = np.zeros((2, 8, 8), bool)
    t[:, 0:2, 0:2] = True
    d[:, 5:8, 5:8] = True
    u = t | d
    uniform = localization_mass(np.ones((2, 8, 8)), t, within=u)
    assert uniform.score == pytest.approx(4 / 13) and uniform.chance == pytest.approx(4 / 13)
    on_target = localization_mass(t.astype(float) + 0.0, t, within=u)
    assert on_target.score == pytest.approx(1.0) and on_target.normalized == pytest.approx(1.0)
    off_region = np.zeros((2, 8, 8))
    off_region[:, 3, 3] = 1.0  # mass only outside both objects: counts as uniform
    assert localization_mass(off_region, t, within=u).score == pytest.approx(4 / 13)


@pytest.mark.parametrize("name", ["resnet", "clip"])
def test_no_input_independent_map_localizes_on_the_full_batch(name):
    """Issue 14's acceptance, on the benchmark's own batch (full size, seed 0): no pixel is inside the trigger
    in more than 25% of triggered images, and the fitted constant map scores <= 0.1 normalized on every grid
    (CLIP: the target object against a distractor)."""
    from visionlens.zoo.technique import BenchContext
    from visionlens.zoo.techniques_localization import localization_baselines, localization_batch

    ctx = BenchContext(entry=catalog.get_entry(name), quick=False, seed=0)
    b = localization_batch(ctx)
    trig = np.asarray(b["triggered"], bool)
    if name == "clip":
        assert not trig.any() and len(b["images"]) >= 256
        assert not np.any(b["object_mask"] & (b["object_within"] & ~b["object_mask"]))
    else:
        assert trig.sum() >= 256
        assert b["trigger_mask"][trig].mean(0).max() <= 0.25
    for g in (2, 4, 8, 16, 32):
        bl = localization_baselines(b, ctx, g, g)
        assert bl["constant"]["normalized"] <= 0.1, (g, bl)
        assert abs(bl["random"]["normalized"]) <= 0.05, (g, bl)


def test_two_object_images_pair_different_disjoint_shapes_and_flip_a_fair_coin():
    from visionlens.zoo.classifiers import held_out_batch
    from visionlens.zoo.techniques_localization import two_object_batch

    pool = held_out_batch(400, trigger_fraction=0.0, seed=3)
    b = two_object_batch(pool, 100, seed=3)
    t, u = b["object_mask"], b["object_within"]
    d = u & ~t
    assert t.any((1, 2)).all() and d.any((1, 2)).all()
    shapes = np.asarray(pool.factors["shape"])
    assert set(np.unique(b["targets"].numpy())) <= set(np.unique(shapes))
    # the target is the first image's object of its pair about half of the time, and the masks say which
    pairs, first = b["pairs"], b["target_first"]
    assert 35 <= first.sum() <= 65
    for k in range(100):
        src = pairs[k, 0] if first[k] else pairs[k, 1]
        assert np.array_equal(t[k], pool.masks["object"][src].numpy())
        assert shapes[pairs[k, 0]] != shapes[pairs[k, 1]] and b["targets"][k] == shapes[src]
    share = t.sum((1, 2)) / u.sum((1, 2))
    assert 0.3 < share.mean() < 0.7
    # the corrupted image differs from the image only inside the target
    diff = (b["images"] - b["corrupted"]).abs().sum(1).numpy() > 0
    assert not (diff & ~t).any() and diff.any()
