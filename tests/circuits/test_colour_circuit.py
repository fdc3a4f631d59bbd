"""The colour-contrast circuit: the strict colour test, and circuit_surgery on the zoo CLIP's zero-shot colour task."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import visionlens
from visionlens.plugins.circuits import circuit_surgery as cs
from visionlens.validation import VisionLensError


def test_colour_units_strict_test_needs_colour_dominance():
    # unit 0: hue-tuned and colour-dominant; unit 1: hue-tuned edge unit (strokes 4x its best blob);
    # unit 2: flat over hue; unit 3: hue-tuned but weak
    hue = torch.zeros(4, 12)
    hue[0, 3], hue[1, 3], hue[2], hue[3, 5] = 2.0, 1.0, 1.0, 0.2
    line = torch.tensor([[0.5], [4.0], [0.1], [0.0]])
    curve = torch.zeros(4, 2, 2)
    curve[0, 0, 0] = 1.5
    t = SimpleNamespace(blob_hue=hue, line=line, curve=curve)
    assert cs.colour_units(t).tolist() == [True, True, False, False]
    assert cs.colour_units(t, min_dominance=1.0).tolist() == [True, False, False, False]
    assert cs.colour_units(t, min_dominance=1.5).tolist() == [False, False, False, False]


@pytest.fixture(scope="module")
def clip():
    pytest.importorskip("open_clip")
    from visionlens.zoo import classifiers

    model = visionlens.load("zoo:clip")
    b = classifiers.held_out_batch(240, trigger_fraction=0.0, start=50_000)
    return model, b.images, b.factors["colour"].long().tolist()


def test_surgery_on_clip_zero_shot_colour(clip):
    model, images, labels = clip
    analysis = visionlens.get_analysis("circuit_surgery")
    assert analysis.supports(model)[0]  # a CLIP ResNet tower: conv maps, classes from class_prompts
    with pytest.raises(VisionLensError, match="class_prompts"):
        model.analyze(
            "circuit_surgery", images, below="visual.act2.hook_out", hook="visual.act3.hook_out", labels=labels
        )
    torch.manual_seed(0)
    r = model.analyze(
        "circuit_surgery",
        images,
        below="visual.act2.hook_out",
        hook="visual.act3.hook_out",
        units=[1, 4],
        labels=labels,
        class_prompts=["red", "green", "blue", "yellow"],
        circuit="colour",
        kappa=2.0,
        floor=0.2,
        sigma_px=5.0,
        n_stimuli=300,
        fit_fraction=0.25,
        controls=False,
        n_bootstrap=50,
    )
    c = r.meta["conditions"]
    assert c["intact"]["accuracy"] >= 0.97  # zero-shot colour of the zoo CLIP
    assert c["ablated"]["accuracy"] <= c["intact"]["accuracy"] - 0.1
    assert torch.isfinite(torch.tensor(c["handcoded"]["recovered"]))
    assert c["handcoded"]["recovered"] > 0.0
    # the preferred hues come from the units' blob tuning (unit 1 ~ cyan 183 deg, unit 4 ~ yellow 56 deg)
    hues = r.meta["orientations"]
    assert abs((hues[0] - 183 + 180) % 360 - 180) < 30 and abs((hues[1] - 56 + 180) % 360 - 180) < 30
    assert model.cfg.n_classes == 0  # the zero-shot head was put back (none was attached)
