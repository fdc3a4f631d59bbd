"""zoo:curve: loads through the catalogue, its data are deterministic, its shipped checkpoints are readable."""

from __future__ import annotations

import torch

import visionlens
from visionlens.zoo import curve_model as cm


def test_curve_batch_deterministic_and_labelled():
    a, b = cm.curve_batch(16, seed=3), cm.curve_batch(16, seed=3)
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    assert a["images"].shape == (16, 3, 32, 32) and 0 <= float(a["images"].min()) and float(a["images"].max()) <= 1
    err = torch.remainder(a["orientation"] - a["labels"] * 45.0 + 180.0, 360.0) - 180.0
    assert float(err.abs().max()) <= cm.JITTER + 1e-4


def test_zoo_curve_loads_and_checkpoints_ship():
    model = visionlens.load("zoo:curve")
    assert "mixed3a.hook_out" in model.hook_dict and model.cfg.n_classes == 8
    b = cm.curve_batch(64, seed=cm.HELD_OUT_SEED)
    with torch.no_grad():
        acc = float((model(b["images"]).argmax(-1) == b["labels"]).float().mean())
    assert acc > 0.8  # the card says 0.94 on 2000 held-out images
    steps = cm.checkpoint_steps()
    assert steps[0] == 0 and steps[-1] == cm.DEFAULT_STEPS and all(s % cm.SHIPPED_EVERY == 0 for s in steps)
    last = dict(cm.checkpoints())[cm.DEFAULT_STEPS]
    for k, v in model.source.state_dict().items():
        assert torch.equal(last[k], v), k  # the last checkpoint is the shipped model
