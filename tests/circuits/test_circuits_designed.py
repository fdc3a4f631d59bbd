"""Designed units (written tuning -> weights), the planted hue and reflection families, device / dtype handling.
Tiny and fast: hand-made tensors and the 16-unit planted models."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from visionlens.plugins.circuits import designed as ds
from visionlens.plugins.circuits import equivariance as eq
from visionlens.plugins.circuits import planted
from visionlens.plugins.circuits import tuning_curves as tc


def _circ_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_solve_weights_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 4, 3, 3, generator=g)
    w = torch.randn(4, 3, 3, generator=g)
    y = (x * w).sum(dim=(1, 2, 3)) + 0.7
    w_hat, c = ds.solve_weights(x, y, ridge=0.0)
    assert torch.allclose(w_hat, w, atol=1e-4) and abs(c - 0.7) < 1e-4
    w_ridge, _ = ds.solve_weights(x, y, ridge=10.0)
    assert w_ridge.norm() < 0.5 * w.norm()  # the ridge shrinks


def test_curve_target_written_tuning():
    n = 5
    ens = ds.Ensemble(
        crops=torch.zeros(n, 1, 3, 3),
        pooled=torch.zeros(n, 1),
        kind=torch.tensor([0, 0, 1, 2, 4]),
        orientation=torch.tensor([90.0, 270.0, 90.0, 90.0, 90.0]),
        dx=torch.tensor([0.0, 0.0, 5.0, 0.0, 0.0]),
        dy=torch.zeros(n),
        radius=torch.full((n,), 6.0),
    )
    t = ds.curve_target(ens, 90.0, kappa=4.0, floor=0.1, sigma_px=5.0)
    assert t[0] == pytest.approx(0.9)  # preferred arc at the centre: 1 - floor
    assert t[1] == pytest.approx(torch.exp(torch.tensor(-8.0)).item() - 0.1)  # opposite bend: inhibited
    assert t[2] == pytest.approx(0.9 * torch.exp(torch.tensor(-0.5)).item())  # one sigma off centre, with clutter
    assert t[3] == 0 and t[4] == 0  # a line, a blank field


def test_designed_unit_reaches():
    g = torch.Generator().manual_seed(1)
    below = torch.randn(2, 3, 6, 6, generator=g)
    w = torch.randn(3, generator=g)
    pool = ds.DesignedUnit("pool", w, 0.2, 2.0)(below)
    manual = torch.relu(2.0 * ((F.max_pool2d(below, 3, 1, 1) * w[None, :, None, None]).sum(1) + 0.2))
    assert torch.allclose(pool, manual, atol=1e-6)
    k = torch.randn(3, 3, 3, generator=g)
    conv = ds.DesignedUnit("conv", k, -0.1, 1.5)(below)
    assert torch.allclose(conv, torch.relu(1.5 * (F.conv2d(below, k[None], padding=1)[:, 0] - 0.1)), atol=1e-6)


def test_unit_kinds_follow_inception_branches():
    from torchvision.models.googlenet import Inception

    from visionlens.hooked_model import HookedVisionModel

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mixed = Inception(8, 4, 2, 3, 2, 5, 6)

        def forward(self, x):
            return self.mixed(x)

    with pytest.warns(UserWarning):
        model = HookedVisionModel.from_module(Net().eval())
    kinds = ds.unit_kinds(model, "mixed.hook_out", 18)
    assert kinds == ["1x1"] * 4 + ["conv"] * 8 + ["pool"] * 6
    assert ds.unit_kinds(model, "mixed.hook_out", 17) == ["conv"] * 17  # widths disagree: no guess


def test_hue_rotation_is_a_rotation_about_grey():
    m = eq.hue_rotation(120.0)
    assert torch.allclose(m @ m.T, torch.eye(3), atol=1e-6)
    assert torch.allclose(m @ torch.ones(3), torch.ones(3), atol=1e-6)
    assert torch.allclose(m @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_hue_family_both_routes(seed):
    model, truth = planted.planted_hue_model(seed=seed)
    r = model.analyze("equivariance", None, hook=truth["hook"], layer=truth["layer"], transform="hue", n_hues=24)
    planted_off = dict(zip(truth["family"], truth["offsets"]))
    for route in ("stimuli", "weights"):
        p, rec = eq.family_precision_recall(r.families(route), truth["family"])
        assert p >= 0.9 and rec >= 0.9, (route, p, rec)
        best = max(r.families(route), key=lambda f: len(set(f.members) & set(truth["family"])))
        tol = 1e-3 if route == "weights" else 15.0  # the stimulus route samples hue every 15 degrees
        for m, off in zip(best.members, best.offsets):
            assert _circ_diff((planted_off[m] - planted_off[best.members[0]]) % 360, off) <= tol


def test_planted_hue_family_control_achromatic():
    """Collapsing every kernel to its grey part removes the hue family from the weight route."""
    model, truth = planted.planted_hue_model(seed=0)
    w = eq.conv_weight(model, truth["layer"])
    grey = w.mean(dim=1, keepdim=True).expand_as(w).contiguous()
    fams, _, _ = eq.weight_families(grey + 1e-3 * torch.randn_like(grey), transform="hue")
    _, rec = eq.family_precision_recall(fams, truth["family"])
    assert rec < 0.5


def test_planted_reflection_family_both_routes():
    model, truth = planted.planted_reflection_model(seed=0)
    r = model.analyze("equivariance", None, hook=truth["hook"], layer=truth["layer"], transform="reflection")
    for route in ("stimuli", "weights"):
        p, rec = eq.family_precision_recall(r.families(route), truth["family"])
        assert p >= 0.9 and rec >= 0.9, (route, p, rec)
    # the template against each planted mirror image: matched (rendered vs resampled at 45) at the planted offset
    w = eq.conv_weight(model, truth["layer"])
    scores, offsets = eq.weight_scores(w, [float(a) for a in range(0, 360, 45)], reflection=True)
    k = truth["family"][0]
    for m, off in zip(truth["family"][1:], truth["offsets"][1:]):
        assert scores[k, m] > 0.9 and _circ_diff(float(offsets[k, m]), off) < 1e-6


def test_tuning_follows_model_dtype():
    """A float64 model gets float64 stimuli (the blank image and every batch)."""
    model, truth = planted.planted_rotation_model()
    model.double()
    t = tc.measure_tuning(model, truth["hook"], units=truth["family"][:2], radii=(4.5,), jitter=0, n_hues=3)
    assert torch.isfinite(t.curve).all() and t.curve.amax() > 0


def test_colour_target_written_tuning():
    n = 4
    ens = ds.Ensemble(
        crops=torch.zeros(n, 1, 3, 3),
        pooled=torch.zeros(n, 1),
        kind=torch.zeros(n, dtype=torch.long),
        orientation=torch.zeros(n),
        dx=torch.tensor([0.0, 0.0, 0.0, 3.0]),
        dy=torch.zeros(n),
        radius=torch.zeros(n),
        hue=torch.tensor([120.0, 300.0, 120.0, 120.0]),
        saturation=torch.tensor([1.0, 1.0, 0.0, 0.5]),
    )
    t = ds.colour_target(ens, 120.0, kappa=2.0, floor=0.2, sigma_px=3.0)
    assert t[0] == pytest.approx(0.8)  # preferred hue, saturated, centred
    assert t[1] < 0  # the opponent hue is inhibited
    assert t[2] == 0  # grey: no colour contrast
    assert t[3] == pytest.approx(0.8 * 0.5 * torch.exp(torch.tensor(-0.5)).item())
    with pytest.raises(ValueError):
        ds.colour_target(ds.Ensemble(*[ens.crops, ens.pooled, ens.kind, ens.dx, ens.dx, ens.dy, ens.radius]), 0.0)
