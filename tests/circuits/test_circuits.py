"""The circuits plugins on models whose truth is known: the planted rotation family, exact splices, synthetic
trajectories. Tiny and fast (one module-scoped planted model)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import visionlens
from tests.conftest import no_hooks_left
from visionlens.plugins.circuits import circuit_surgery as cs
from visionlens.plugins.circuits import curve_scrubbing as sc
from visionlens.plugins.circuits import equivariance as eq
from visionlens.plugins.circuits import phase_changes as pc
from visionlens.plugins.circuits import planted, stimuli
from visionlens.plugins.circuits import tuning_curves as tc


@pytest.fixture(scope="module")
def planted_model():
    return planted.planted_rotation_model()


@pytest.fixture(scope="module")
def planted_tuning(planted_model):
    model, truth = planted_model
    return tc.measure_tuning(model, truth["hook"], radii=(3.0, 4.5, 6.0), jitter=0, n_hues=3)


def _circ_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_stimuli_orientation_convention():
    """A curve at 90 degrees (convex side up) is the 0-degree curve turned a quarter counter-clockwise."""
    c0 = stimuli.curves(32, orientation=0.0)
    c90 = stimuli.curves(32, orientation=90.0)
    # torch.rot90 over (H, W) with k=1 turns the picture counter-clockwise as seen (y down)
    assert torch.allclose(torch.rot90(c0, 1, dims=(-2, -1)), c90, atol=1e-5)
    # the convex side points right: the arc's pixels lie left of its midpoint's column, at most one stroke right
    ys, xs = torch.nonzero(c0[0, 0] > 0.5, as_tuple=True)
    assert xs.float().max() <= 16 + 1.5 and xs.float().min() < 16 - 2
    lines = stimuli.sweep("line", "orientation", [0.0, 90.0])
    assert torch.allclose(torch.rot90(lines[0], 1, dims=(-2, -1)), lines[1], atol=1e-5)


def test_tuning_recovers_planted_orientations(planted_tuning, planted_model):
    _, truth = planted_model
    det = tc.curve_detectors(planted_tuning)
    pref = det["preferred_orientation"]
    for unit, off in zip(truth["family"], truth["offsets"]):
        assert _circ_diff(float(pref[unit]), off) <= 11.25, (unit, float(pref[unit]), off)
    fam_sel = det["selectivity"][truth["family"]]
    others = [u for u in range(16) if u not in truth["family"]]
    assert float(fam_sel.min()) > 0.5
    # line units (the four planted ones are not in the family) never pass the curve-detector test
    assert not det["is_curve_detector"][others].any()


def test_curve_detector_test_rejects_random_units():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1)
    )
    model = visionlens.HookedVisionModel.from_module(net.eval())
    t = tc.measure_tuning(model, "2.hook_out", n_orientations=16, radii=(3.0, 6.0), n_hues=3)
    assert int(tc.curve_detectors(t)["is_curve_detector"].sum()) <= 1


def test_equivariance_planted_family_both_routes(planted_model, planted_tuning):
    model, truth = planted_model
    fams, _, _ = eq.stimulus_families(eq.rotation_signature(planted_tuning))
    p, r = eq.family_precision_recall(fams, truth["family"])
    assert p >= 0.9 and r >= 0.9
    w = eq.conv_weight(model, truth["layer"])
    wfams, _, _ = eq.weight_families(w)
    p, r = eq.family_precision_recall(wfams, truth["family"])
    assert p >= 0.9 and r >= 0.9
    # offsets: relative to the seed, as planted
    best = max(wfams, key=lambda f: len(set(f.members) & set(truth["family"])))
    planted_off = dict(zip(truth["family"], truth["offsets"]))
    seed_off = planted_off[best.members[0]]
    for m, off in zip(best.members, best.offsets):
        assert _circ_diff((planted_off[m] - seed_off) % 360, off) < 1e-6


def test_equivariance_control_scrambled_weights(planted_model):
    """Scrambling each kernel's pixels destroys the family: the weight route must not find it."""
    model, truth = planted_model
    w = eq.conv_weight(model, truth["layer"])
    g = torch.Generator().manual_seed(1)
    flat = w.reshape(16, 3, -1)
    scrambled = torch.stack([flat[u][:, torch.randperm(flat.shape[-1], generator=g)] for u in range(16)]).reshape(
        w.shape
    )
    fams, _, _ = eq.weight_families(scrambled)
    _, r = eq.family_precision_recall(fams, truth["family"])
    assert r < 0.5


def test_rotate_kernels_exact_quarter_turns():
    k = torch.randn(2, 3, 5, 5)
    assert torch.equal(eq.rotate_kernels(k, 90.0), torch.rot90(k, 1, dims=(-2, -1)))
    smooth = planted.curve_kernel(0.0, radius=3.0, size=9, width=2.5)
    twice = eq.rotate_kernels(eq.rotate_kernels(smooth, 45.0), 45.0)
    quarter = torch.rot90(smooth, 1, dims=(-2, -1))
    assert float((twice * quarter).sum() / (twice.norm() * quarter.norm())) > 0.9  # bilinear: close, not exact


def test_splice_exact_and_hooks_removed(planted_model):
    """Replacing a unit by a function recomputing it exactly leaves the output unchanged (1e-6)."""
    model, truth = planted_model
    x = stimuli.curves(32, torch.arange(8) * 45.0)
    ref = model(x)
    relu = torch.nn.functional.relu
    fns = {u: (lambda below, u=u: relu(below[:, u])) for u in truth["family"]}
    with cs.replaced(model, "conv.hook_out", "act.hook_out", fns):
        out = model(x)
    assert torch.allclose(out, ref, atol=1e-6)
    with cs.replaced(model, "conv.hook_out", "act.hook_out", {truth["family"][0]: lambda b: b[:, 0] * 0 + 5.0}):
        changed = model(x)
    assert not torch.allclose(changed, ref)
    with pytest.raises(RuntimeError):
        with cs.replaced(
            model, "conv.hook_out", "act.hook_out", {0: lambda b: (_ for _ in ()).throw(RuntimeError("x"))}
        ):
            model(x)
    no_hooks_left(model)


def test_recovery_arithmetic_and_interval():
    n = 400
    intact = torch.ones(n)
    ablated = torch.zeros(n)
    half = torch.zeros(n)
    half[: n // 2] = 1
    out = cs.summarize({"intact": intact, "ablated": ablated, "handcoded": half}, n_bootstrap=200)
    hc = out["conditions"]["handcoded"]
    assert hc["recovered"] == pytest.approx(0.5)
    lo, hi = hc["recovered_ci"]
    assert lo < 0.5 < hi and hi - lo < 0.2


def test_fit_gain_bias_recovers_relu_line():
    z = torch.linspace(-2, 2, 200)
    g, b = cs.fit_gain_bias(z, torch.relu(1.7 * z - 0.3))
    assert g == pytest.approx(1.7, abs=1e-3) and b == pytest.approx(-0.3, abs=1e-3)


def test_logistic_fit_phase_and_gradual():
    steps = np.arange(0, 1501, 50, dtype=np.float64)
    rng = np.random.default_rng(0)
    sharp = 2 + 10 / (1 + np.exp(-(steps - 600) / 15)) + rng.normal(0, 0.2, len(steps))
    f = pc.logistic_fit(steps, sharp, n_boot=20)
    assert abs(f["step"] - 600) < 30 and f["width"] < 0.1 * 1500 and f["r2"] > 0.95
    linear = steps / 100 + rng.normal(0, 0.2, len(steps))
    g = pc.logistic_fit(steps, linear, n_boot=0)
    assert not (g["width"] <= 0.1 * 1500 and g["r2"] > g["r2_linear"] + 0.01)


def test_curve_features_and_scrubbing_bounds(planted_model):
    model, truth = planted_model
    n = 48
    g = torch.Generator().manual_seed(0)
    o = (torch.randint(0, 8, (n,), generator=g) * 45).float()
    factors = {
        "orientation": o,
        "cx": torch.full((n,), 16.0),
        "cy": torch.full((n,), 16.0),
        "radius": torch.full((n,), 4.5),
    }
    feats = sc.curve_features(factors, 32)
    assert feats["orientation"] == (o / 45).long().tolist()
    x = stimuli.curves(32, o, 4.5, width=2.5)
    labels = model(x).argmax(-1)
    hyps = sc.curve_hypotheses(truth["hook"], truth["family"], 16, feats)
    from visionlens.scrubbing import causal_scrub

    ident = causal_scrub(model, x, hyps["identity"], labels=labels, metric="ce", n_resamples=1, n_bootstrap=0)
    assert ident.recovered == pytest.approx(1.0, abs=1e-5)
    # stimuli vary only in orientation here, so the orientation hypothesis is exact too
    orient = causal_scrub(model, x, hyps["orientation"], labels=labels, metric="ce", n_resamples=1, n_bootstrap=0)
    assert orient.recovered == pytest.approx(1.0, abs=1e-5)
    no_hooks_left(model)


def test_iter_checkpoints_packed_and_folder(tmp_path):
    from safetensors.torch import save_file

    a = {"w": torch.ones(2)}
    save_file({"step_000010/w": a["w"], "step_000000/w": torch.zeros(2)}, str(tmp_path / "packed.safetensors"))
    assert [s for s, _ in pc.iter_checkpoints(tmp_path / "packed.safetensors")] == [0, 10]
    d = tmp_path / "ck"
    d.mkdir()
    save_file(a, str(d / "step_000100.safetensors"))
    save_file(a, str(d / "step_000020.safetensors"))
    assert [s for s, _ in pc.iter_checkpoints(d)] == [20, 100]
    assert math.isfinite(pc.logistic_fit(np.arange(6.0), np.array([0, 0, 0, 1, 1, 1.0]), n_boot=0)["step"])
