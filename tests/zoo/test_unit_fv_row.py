"""The ``unit_feature_visualization`` row: renders of the planted pathway units, scored for the trigger's pattern,
against input-independent answers and the same renders of other units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import no_hooks_left
from visionlens.zoo import bench, bench_report, catalog
from visionlens.zoo import data as zdata
from visionlens.zoo import techniques_unit_fv as ufv
from visionlens.zoo.technique import BenchContext
from visionlens.zoo.techniques_mechanisms import pathway_data

ENTRY = catalog.get_entry("resnet")
TECH = ufv.TECHNIQUES[0]


def _row(s):
    return {
        "supported": True,
        "score": s.score,
        "normalized": s.normalized,
        "interval": s.details["interval"],
        "baselines": s.details["baselines"],
    }


def _fake_renders(planted, trigger_units):
    """Stand-in for the plugin: units in ``trigger_units`` render the trigger (a random form at a random place
    on noise), the others plain noise."""

    def render(model, hook, units, steps, n_img, seed):
        g = np.random.default_rng(seed)
        out = g.random((len(units) * n_img, 3, 32, 32)).astype(np.float32) * 0.2 + 0.4
        k = zdata.trigger_size(32)
        pats = zdata.trigger_patterns(32)
        for i, u in enumerate(units):
            if u in trigger_units:
                for j in range(n_img):
                    y, x = g.integers(0, 32 - k + 1, 2)
                    out[i * n_img + j, :, y : y + k, x : x + k] = np.transpose(pats[j % len(pats)], (2, 0, 1))
        return torch.from_numpy(out)

    return render


def test_registered_as_a_classifier_row_after_the_unit_rows():
    names = [t.name for t in bench.all_techniques()]
    assert names.index("unit_feature_visualization") > names.index("unit_dataset_examples")
    assert TECH.kinds == ("classifier",) and TECH.claim == "feature visualization"
    ok, why = TECH.supports(None, catalog.get_entry("style_judge"))
    assert not ok and why


def test_other_units_are_seeded_and_never_planted():
    planted = (3, 7)
    a = ufv.other_units(64, planted, seed=0)
    assert a == ufv.other_units(64, planted, seed=0) and len(a) == 2 and not set(a) & set(planted)
    assert ufv.other_units(3, (0, 1), seed=5) == [2]


@pytest.mark.parametrize(
    "who_draws, verdict",
    [("planted", "transfers"), ("everyone", "not transfers"), ("nobody", "not transfers")],
)
def test_verdict_needs_the_pattern_on_the_planted_units_only(monkeypatch, who_draws, verdict):
    model = catalog.load("resnet")
    d = pathway_data(model, BenchContext(entry=ENTRY, quick=True), n=8)
    d_units = d.units
    drawing = {"planted": set(d_units), "everyone": set(range(d.n_units)), "nobody": set()}[who_draws]
    monkeypatch.setattr(ufv, "render_units", _fake_renders(d_units, drawing))
    s = TECH.score(model, BenchContext(entry=ENTRY, quick=True))
    assert s.details["units"] == list(d_units) and len(d_units) == 2
    bl = s.details["baselines"]
    assert set(bl) == {"constant", "random", "other_units"} and not set(bl["other_units"]["units"]) & set(d_units)
    if who_draws == "planted":
        assert s.normalized > 0.8 and s.details["interval"][0] > 0.6 and bl["other_units"]["normalized"] < 0.1
    if who_draws == "everyone":  # the pattern is real but not specific: the other units' renders show it too
        assert s.normalized > 0.8 and bl["other_units"]["normalized"] > 0.8
    if who_draws == "nobody":
        assert abs(s.normalized) < 0.1
    assert (bench_report.verdict(_row(s)) == "transfers") == (verdict == "transfers")


def test_real_renders_on_the_trained_and_random_resnet(tmp_path):
    model = catalog.load("resnet")
    s = TECH.score(model, BenchContext(entry=ENTRY, quick=True, out_dir=tmp_path))
    no_hooks_left(model)
    steps, n_img = ufv.FV_BUDGET["quick"]
    assert s.details["steps"] == steps and s.details["images_per_unit"] == n_img
    assert len(s.details["per_image"]) == 2 * n_img and len(s.details["per_unit"]) == 2
    lo, hi = s.details["interval"]
    assert -1.0 <= lo <= hi <= 1.0
    assert (tmp_path / "figures" / "resnet__unit_feature_visualization.png").is_file()
    r = TECH.score(catalog.load("resnet", pretrained=False), BenchContext(entry=ENTRY, quick=True, randomized=True))
    assert "baselines" not in r.details and "interval" not in r.details  # the control is scored, not compared
