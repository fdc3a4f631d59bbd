"""Cascading randomization curves: the last step is the table's randomized copy, the trained point the trained score."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from visionlens.zoo import catalog
from visionlens.zoo import techniques_localization as tl
from visionlens.zoo.cascade import _pick, cascade_curve, cascade_figure
from visionlens.zoo.randomize import cascading_randomization, parameter_groups
from visionlens.zoo.technique import BenchContext

pytestmark = pytest.mark.skipif(not catalog.weights_path("resnet").is_file(), reason="zoo:resnet not trained")


def _tech(name):
    (t,) = [t for t in tl.TECHNIQUES if t.name == name]
    return t


def test_pick_keeps_the_ends():
    assert _pick(10, None) == list(range(10))
    assert _pick(10, 3) == [0, 4, 9] or _pick(10, 3) == [0, 5, 9]
    assert _pick(10, 1) == [9]
    assert _pick(3, 8) == [0, 1, 2]


def test_last_step_is_the_tables_random_copy():
    module = catalog.load_module("resnet")
    *_, (name, last) = cascading_randomization(module, seed=0)
    rand = catalog.load("resnet", pretrained=False).source
    a, b = last.state_dict(), rand.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the last cascade step differs from load(pretrained=False)"
    n = len(parameter_groups(module))
    ((only_name, only_last),) = list(cascading_randomization(module, seed=0, steps={n - 1}))  # no other copies
    assert only_name == name and all(torch.equal(v, a[k]) for k, v in only_last.state_dict().items())


def test_curve_of_dla_falls_as_the_weights_go():
    from visionlens.zoo import techniques_mechanisms as tm

    entry = catalog.get_entry("resnet")
    (tech,) = [t for t in tm.TECHNIQUES if t.name == "unit_dla"]  # DLA of the planted units
    pts = cascade_curve(tech, entry, quick=True, max_steps=3)
    assert [p["step"] for p in pts][0] == 0 and len(pts) == 4
    assert pts[1]["randomized_from"] == "fc" and pts[1]["units"] == 1
    trained = tech.score(catalog.load("resnet"), BenchContext(entry=entry, quick=True)).normalized
    assert pts[0]["normalized"] == pytest.approx(trained, abs=1e-6)
    random_copy = tech.score(catalog.load("resnet", pretrained=False), BenchContext(entry=entry, quick=True))
    assert pts[-1]["normalized"] == pytest.approx(random_copy.normalized, abs=1e-6)
    assert pts[-1]["normalized"] < pts[0]["normalized"] - 0.3  # DLA reads the learned readout
    fig = cascade_figure({"dla_heatmap": pts}, "zoo:resnet")
    assert len(fig.axes[0].lines) >= 1


def test_bench_rows_carry_the_curve_and_its_figure(tmp_path):
    from visionlens.zoo.bench import CASCADE_STEPS, run_transfer

    rows = run_transfer(tmp_path, families=["resnet"], techniques=["dla_heatmap"], quick=True, cascade=True, workers=1)
    (row,) = [r for r in rows if r["model"] == "zoo:resnet"]
    pts = row["cascade"]
    assert len(pts) == CASCADE_STEPS + 1 and pts[0]["normalized"] == row["normalized"]
    assert pts[-1]["normalized"] == pytest.approx(row["sanity_normalized"], abs=1e-6)  # fully random = the control
    assert pts[-1].get("reused") is True and not pts[1].get("reused")  # ... so its score is not recomputed
    assert (tmp_path / row["figures"]["cascade_dla_heatmap"]).is_file()
    assert "Cascading randomization" in (tmp_path / "index.html").read_text()
    quick_default = run_transfer(tmp_path / "q", families=["resnet"], techniques=["dla_heatmap"], quick=True)
    assert all(r.get("cascade") is None for r in quick_default)


def test_a_technique_sets_its_own_cascade_steps(tmp_path):
    """``cascade_steps`` on a technique: 2 = the head and everything; 0 = no curve (handcoded_curve_circuit)."""
    from dataclasses import replace

    from visionlens.zoo import bench
    from visionlens.zoo import techniques_curve as tcv
    from visionlens.zoo import techniques_mechanisms as tm

    (dla,) = [t for t in tm.TECHNIQUES if t.name == "unit_dla"]
    techs = [replace(dla, name="dla_two", cascade_steps=2), replace(dla, name="dla_none", cascade_steps=0)]
    job = bench._EntryJob("resnet", tuple(t.name for t in techs), True, 0, str(tmp_path), True, cascade=True)
    rows = []
    entry = catalog.get_entry("resnet")
    bench._score_entry(entry, techs, job, lambda kind, p: rows.append(p) if kind == "row" else None)
    by = {r["technique"]: r for r in rows}
    n = len(parameter_groups(catalog.load_module("resnet")))
    assert [p["units"] for p in by["dla_two"]["cascade"]] == [0, 1, n]
    assert by["dla_none"].get("cascade") is None and "cascade" not in by["dla_none"]["cpu_split"]
    assert by["dla_none"]["normalized"] == by["dla_two"]["normalized"]
    (hc,) = [t for t in tcv.TECHNIQUES if t.name == "handcoded_curve_circuit"]
    assert hc.cascade_steps == 0  # it scores zoo:curve, never the column's zoo:inception


def test_a_step_below_what_the_score_reads_reuses_the_trained_score_and_it_is_the_same():
    if importlib.util.find_spec("overcomplete") is None:
        pytest.skip("needs overcomplete (the dict extra)")
    from visionlens.zoo import dictionary_transfer as dt
    from visionlens.zoo.cascade import _activation, _read_point

    entry = catalog.get_entry("resnet")
    (tech,) = dt.TECHNIQUES
    torch.manual_seed(0)
    trained = tech.score(catalog.load("resnet"), BenchContext(entry=entry, quick=True)).normalized
    rand = catalog.load("resnet", pretrained=False).source
    pts = cascade_curve(tech, entry, quick=True, max_steps=2, trained_score=trained, random_control=(rand, -1.0))
    assert pts[1]["randomized_from"] == "fc" and pts[1]["reused"] == "unchanged at layer4.hook_out"
    assert pts[1]["normalized"] == trained and pts[2]["normalized"] == -1.0  # nothing scored afresh
    # the reused value is what scoring the head-randomized copy gives ...
    module = catalog.load_module("resnet")
    ((_, head_random),) = list(cascading_randomization(module, seed=0, steps={0}))
    torch.manual_seed(0)
    fresh = tech.score(entry.hooked(head_random.eval()), BenchContext(entry=entry, quick=True, randomized=True))
    assert fresh.normalized == pytest.approx(trained, abs=1e-9)
    # ... and a step that randomizes the last block changes what the score reads, so it is scored
    hook, probe, act = _read_point(tech, entry, module)
    ((_, block_random),) = list(cascading_randomization(module, seed=0, steps={1}))
    assert not torch.equal(_activation(entry.hooked(block_random.eval()), hook, probe), act)
