"""The Captum attribution rows of the transfer table: Integrated Gradients, Grad-CAM, Occlusion.

Numbers, not just "it runs": IG's completeness on a zoo model, Grad-CAM's grid and its value against
the Grad-CAM formula computed by hand, occlusion finding the planted trigger, the three rows in a
restricted ``run_transfer`` with no hook left behind, and the reason given when captum is missing.
"""

from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import no_hooks_left
from visionlens.zoo import bench, catalog
from visionlens.zoo import techniques_captum as tc
from visionlens.zoo.technique import BenchContext
from visionlens.zoo.techniques_localization import localization_batch

pytest.importorskip("captum")
pytestmark = pytest.mark.skipif(not catalog.weights_path("resnet").is_file(), reason="zoo:resnet not trained")

NAMES = ["integrated_gradients", "grad_cam", "occlusion"]


@pytest.fixture(scope="module")
def resnet():
    return catalog.load("resnet")


@pytest.fixture(scope="module")
def batch():
    return localization_batch(BenchContext(entry=catalog.get_entry("resnet"), quick=True))


def test_registered_in_table_order():
    names = [t.name for t in bench.all_techniques()]
    assert [n for n in names if n in NAMES] == NAMES
    assert names.index("integrated_gradients") > names.index("gradient_x_input")
    assert all(t.claim == "localization" and t.kinds == ("classifier", "clip") for t in tc.TECHNIQUES)


def test_integrated_gradients_completeness(resnet, batch):
    """Attributions sum to logit(x) - logit(baseline) (Captum's convergence delta agrees with the sum)."""
    x, y = batch["images"][:4], batch["targets"][:4]
    base = tc.background(x)
    attr, delta = tc.integrated_gradients(resnet, x, y, base, n_steps=64)
    with torch.no_grad():
        gap = (resnet(x) - resnet(base)).gather(1, y[:, None])[:, 0]
    total = attr.sum((1, 2, 3))
    assert gap.abs().max() > 5.0  # the logits do move from background to image
    assert torch.allclose(total - gap, delta, atol=1e-3)
    assert (delta.abs() <= 0.02 * gap.abs() + 0.02).all(), (total, gap)  # within 2% at 64 steps
    assert base[:, :, 0, 0].sub(0.12).abs().max() < 0.05  # the zoo background grey, not black
    no_hooks_left(resnet)


def test_grad_cam_grid_and_formula(resnet, batch):
    x, y = batch["images"], batch["targets"]
    layer = tc.gradcam_layer(resnet, x)
    assert layer["hook"] == "stages.3.blocks.0.hook_resid_post" and not layer["tokens"]
    _, cache = resnet.run_with_cache(x[:1], names_filter=[layer["hook"]])
    cam = tc.grad_cam(resnet, x, y, layer)
    assert tuple(cam.shape) == (len(x), *cache[layer["hook"]].shape[-2:]) == (len(x), 2, 2)
    assert (cam >= 0).all() and cam.sum() > 0
    no_hooks_left(resnet)

    # ViT: the patch tokens entering the last block on the 8 x 8 grid, equal to Grad-CAM by hand
    vit = catalog.load("vit")
    layer = tc.gradcam_layer(vit, x)
    assert layer == {"hook": "blocks.3.hook_resid_pre", "prefix": 1, "grid": (8, 8), "tokens": True}
    cam = tc.grad_cam(vit, x, y, layer)
    no_hooks_left(vit)
    kept = {}

    def keep(a, hook):
        a.retain_grad()
        kept["a"] = a
        return a

    with vit.hooks(fwd_hooks=[(layer["hook"], keep)]):
        vit(x).gather(1, y[:, None]).sum().backward()
    a, g = kept["a"][:, 1:].detach(), kept["a"].grad[:, 1:]
    ref = torch.relu((g.mean(1, keepdim=True) * a).sum(-1)).reshape(-1, 8, 8)
    assert cam.shape == ref.shape and torch.allclose(cam, ref, atol=1e-6)
    vit.zero_grad(set_to_none=True)


def test_occlusion_finds_the_trigger(resnet, batch):
    trig = torch.as_tensor(batch["triggered"])
    x, y = batch["images"][trig], batch["targets"][trig]
    assert (y == 0).all() and len(x) >= 2
    heat = tc.occlusion(resnet, x, y, tc.background(x), window=8)  # [N, 32, 32], constant per 8 x 8 window
    assert tuple(heat.shape) == (len(x), 32, 32)
    masks = torch.as_tensor(batch["trigger_mask"])[trig]  # the trigger moves from image to image
    on_trigger = torch.stack([h[m].max() for h, m in zip(heat, masks)])
    off = torch.stack([h[~m].mean() for h, m in zip(heat, masks)])
    assert (on_trigger > off).all(), (on_trigger, off)
    assert float((on_trigger >= heat.amax((1, 2)) - 1e-6).float().mean()) >= 0.5  # usually the top window
    no_hooks_left(resnet)


def test_rows_in_a_restricted_run(tmp_path, monkeypatch):
    loaded = []

    def load(name, *args, **kwargs):
        m = catalog.load(name, *args, **kwargs)
        loaded.append(m)
        return m

    monkeypatch.setattr(bench, "load", load)
    rows = bench.run_transfer(tmp_path, families=["resnet"], techniques=NAMES, quick=True, workers=1)
    by = {r["technique"]: r for r in rows if r["model"] == "zoo:resnet"}
    assert set(by) == set(NAMES)
    for name, r in by.items():
        assert r["supported"] and r["score"] is not None and r["sanity_score"] is not None, r
        assert 0.0 <= r["chance"] < r["score"] <= 1.0, r
    assert by["integrated_gradients"]["normalized"] > 0.5
    # occlusion's 8 px windows (a 4 x 4 grid) are scored as a pixel map: the grid caps it near 0.55
    occ = by["occlusion"]
    assert occ["normalized"] > 0.15 and occ["normalized"] <= occ["details"]["grid_ceiling"] + 1e-9
    assert occ["interval"][0] > occ["baselines"]["constant"]["normalized"]
    assert by["grad_cam"]["details"]["grid"] == "2x2"
    assert by["occlusion"]["details"]["grid"] == "4x4"  # quick: 8 px windows
    assert loaded
    for m in loaded:
        no_hooks_left(m)


def test_unsupported_without_captum(resnet, monkeypatch):
    monkeypatch.setitem(sys.modules, "captum", None)
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    entry = catalog.get_entry("resnet")
    for t in tc.TECHNIQUES:
        assert t.supports(resnet, entry) == (False, "captum is not installed (pip install visionlens[bench])")
