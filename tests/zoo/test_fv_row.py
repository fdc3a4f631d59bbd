"""The feature-visualization row of the transfer bench: its scorer (``checker_score``) and its settings.

The scorer must reward the trigger's checkerboard *pattern* and nothing else: colour-only and
pattern-free images score ~0 (normalized), the trigger scores ~1 in any colours.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionlens.zoo import data as zdata
from visionlens.zoo import techniques_features as tf
from visionlens.zoo.catalog import get_entry, load, weights_path
from visionlens.zoo.technique import BenchContext
from visionlens.zoo.techniques_features import (
    FV_BUDGET,
    FV_SETTINGS,
    TECHNIQUES,
    checker_polarity,
    checker_score,
)

S = 32
PAT = zdata.trigger_pattern(S)
PATS = zdata.trigger_patterns(S)
K = PAT.shape[0]
MAGENTA, WHITE = (1.0, 0.0, 1.0), (1.0, 1.0, 1.0)


def _paste(patch: np.ndarray, rng: np.random.Generator, n: int = 4) -> np.ndarray:
    out = np.full((n, 3, S, S), zdata.BACKGROUND, dtype=np.float64)
    for im in out:
        y, x = rng.integers(0, S - patch.shape[0], 2)
        im[:, y : y + patch.shape[0], x : x + patch.shape[1]] = patch.transpose(2, 0, 1)
    return out


def _checker(a, b, k: int = K) -> np.ndarray:
    yy, xx = np.mgrid[0:k, 0:k]
    return np.where(((yy + xx) % 2 == 0)[..., None], np.asarray(a, float), np.asarray(b, float))


def test_polarity_is_the_checkerboard():
    pol = checker_polarity(PAT)
    yy, xx = np.mgrid[0:K, 0:K]
    chk = np.where((yy + xx) % 2 == 0, 1.0, -1.0)
    assert np.allclose(np.abs(pol), 1.0) and abs(float((pol * chk).sum())) == pytest.approx(K * K)


def test_magenta_square_without_checkerboard_fails():
    rng = np.random.default_rng(0)
    for side in (K, 2 * K):
        s = checker_score(_paste(_checker(MAGENTA, MAGENTA, side), rng), PATS)
        assert s.normalized <= 0.05, (side, s.score, s.chance)


def test_uniform_and_noise_score_about_zero():
    rng = np.random.default_rng(1)
    u = checker_score(np.full((3, 3, S, S), 0.4), PAT)
    assert u.score < 1e-9 and abs(u.normalized) < 1e-6
    noise = checker_score(rng.random((6, 3, S, S)), PAT, seed=1)
    assert abs(noise.normalized) < 0.1, (noise.score, noise.chance)
    blobs = checker_score(np.kron(rng.random((4, 3, 8, 8)), np.ones((1, 1, 4, 4))), PAT, seed=2)
    assert abs(blobs.normalized) < 0.1, (blobs.score, blobs.chance)


def test_trigger_anywhere_scores_one():
    s = checker_score(_paste(PAT, np.random.default_rng(2)), PAT)
    assert s.score > 0.999 and s.normalized >= 0.9 and s.chance < 0.7, (s.score, s.chance)
    b = zdata.make_batch(6, seed=3, trigger_fraction=1.0)  # on real planted images (objects, curves)
    assert set(b.factors["trigger_form"].tolist()) == {0, 1}  # both forms among them
    assert checker_score(b.images, PATS).normalized >= 0.9
    clean = zdata.make_batch(6, seed=3, trigger_fraction=0.0)
    assert checker_score(clean.images, PATS).normalized <= 0.05


@pytest.mark.parametrize(
    "a,b", [((0, 0, 1), (1, 1, 0)), ((0.2, 0.2, 0.2), (0.6, 0.6, 0.6)), ((1, 0, 0), (0, 1, 0)), ("B", "A")]
)
def test_pattern_not_colour(a, b):
    a = MAGENTA if a == "B" else a  # last case: magenta / white
    b = WHITE if b == "A" else b
    s = checker_score(_paste(_checker(a, b), np.random.default_rng(4)), PAT)
    assert s.normalized >= 0.9, (a, b, s.score, s.chance)


def test_explicit_controls():
    rng = np.random.default_rng(5)
    s = checker_score(_paste(PAT, rng), PAT, controls=rng.random((4, 3, S, S)))
    assert s.details["n_controls"] == 4 and s.normalized > 0.9


def test_settings_are_the_fields():
    assert FV_SETTINGS["param"] == "fft" and FV_SETTINGS["decorrelate"] and FV_SETTINGS["transforms"] == "scaled"
    assert FV_BUDGET["quick"][0] * FV_BUDGET["quick"][1] <= 64 * 4  # no dearer than the pixel row was


@pytest.mark.skipif(not weights_path("resnet").is_file(), reason="zoo:resnet is not trained")
def test_resnet_quick_row_trained_beats_random():
    tech = {t.name: t for t in TECHNIQUES}["feature_visualization"]
    entry = get_entry("resnet")
    torch.manual_seed(0)
    s = tech.score(load("resnet"), BenchContext(entry=entry, quick=True))
    torch.manual_seed(0)
    r = tech.score(load("resnet", pretrained=False), BenchContext(entry=entry, quick=True, randomized=True))
    assert s.details["param"] == "fft" and s.details["final_logit"] > 20 * max(r.details["final_logit"], 1.0)
    assert s.normalized > r.normalized, (s.normalized, r.normalized)


@pytest.mark.skipif(not weights_path("resnet").is_file(), reason="zoo:resnet is not trained")
def test_randomized_copies_render_at_the_control_budget(monkeypatch):
    """Full table: the trained model gets FV_BUDGET["full"], the sanity / cascade copies FV_BUDGET["control"]."""
    monkeypatch.setitem(tf.FV_BUDGET, "full", (3, 3))
    monkeypatch.setitem(tf.FV_BUDGET, "control", (2, 1))
    tech = {t.name: t for t in TECHNIQUES}["feature_visualization"]
    entry = get_entry("resnet")
    s = tech.score(load("resnet"), BenchContext(entry=entry))
    r = tech.score(load("resnet", pretrained=False), BenchContext(entry=entry, randomized=True))
    assert (s.details["steps"], s.details["images"], len(s.details["per_image"])) == (3, 3, 3)
    assert (r.details["steps"], r.details["images"], len(r.details["per_image"])) == (2, 1, 1)
    assert "interval" in s.details and "interval" not in r.details
