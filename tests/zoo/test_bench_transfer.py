"""`visionlens bench transfer`: the table builds, unsupported pairs carry reasons, plugins join, runs resume."""

from __future__ import annotations

import json

import pytest
import torch

from visionlens import hookimpl
from visionlens.registry import plugin_manager
from visionlens.zoo import bench, catalog
from visionlens.zoo import techniques_localization as tl
from visionlens.zoo.bench import run_transfer
from visionlens.zoo.scores import Score
from visionlens.zoo.technique import BenchContext, Technique

pytestmark = pytest.mark.skipif(not catalog.weights_path("resnet").is_file(), reason="zoo:resnet not trained")


def test_quick_table_rows_and_files(tmp_path):
    all_rows = run_transfer(tmp_path, families=["resnet"], techniques=["localization"], quick=True)
    assert {r["model"] for r in all_rows} >= {"zoo:resnet"}  # the family selects every ResNet in the zoo
    rows = [r for r in all_rows if r["model"] == "zoo:resnet"]
    names = {r["technique"] for r in rows}
    assert names == {t.name for t in tl.TECHNIQUES}
    for r in rows:
        for key in (
            "family",
            "model",
            "technique",
            "score",
            "chance",
            "sanity_score",
            "seconds",
            "supported",
            "reason",
        ):
            assert key in r
    by = {r["technique"]: r for r in rows}
    assert by["cls_attention"]["supported"] is False and "attention" in by["cls_attention"]["reason"]
    # exact patching on the trained ResNet finds the trigger and object, and fails on random weights
    ap = by["activation_patching"]
    assert ap["supported"] and ap["normalized"] > 0.6 and ap["sanity_passed"] is True
    assert ap["sanity_normalized"] < 0.5 * ap["normalized"]
    # different-image pairs: the corruption no longer gives the answer away, and the trained ResNet still finds it
    sw = by["activation_patching_swap"]
    assert sw["normalized"] > 0.3 and sw["sanity_passed"] is True, sw
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(all_rows)
    md = (tmp_path / "results.md").read_text()
    assert "| activation_patching |" in md and "resnet" in md
    html = (tmp_path / "index.html").read_text()
    assert "data:image/png;base64" in html


def test_resume_keeps_rows(tmp_path, monkeypatch):
    run_transfer(tmp_path, families=["convnext"], techniques=["gradient_x_input"], quick=True)
    calls = []
    orig = tl.TECHNIQUES[-1].scorer
    monkeypatch.setattr(tl.TECHNIQUES[-1], "scorer", lambda m, c: calls.append(1) or orig(m, c))
    rows = run_transfer(tmp_path, families=["convnext"], techniques=["gradient_x_input"], quick=True)
    assert calls == [] and len(rows) == 1
    run_transfer(tmp_path, families=["convnext"], techniques=["gradient_x_input"], quick=True, resume=False)
    assert len(calls) == 2  # trained + randomized copy


def test_unknown_family_or_technique_is_a_clear_error(tmp_path):
    from visionlens import VisionLensError

    with pytest.raises(VisionLensError, match="Unknown family 'resnett'"):
        run_transfer(tmp_path, families=["resnett"])
    with pytest.raises(VisionLensError, match="Unknown technique"):
        run_transfer(tmp_path, families=["resnet"], techniques=["telepathy"])


class _CentreBias:
    """A third-party technique: a heatmap that always points at the image centre."""

    name = "centre_bias"
    claim = "localization"

    def supports(self, model, entry):
        return (entry.kind == "classifier", "classifiers only")

    def score(self, model, ctx):
        b = tl.localization_batch(ctx)
        heat = torch.zeros(len(b["images"]), 32, 32)
        heat[:, 12:20, 12:20] = 1
        return tl.score_heatmap(heat, b, ctx, self.name)


class _Plugin:
    @hookimpl
    def visionlens_register_transfer_techniques(self):
        return [_CentreBias()]


def test_third_party_technique_joins_the_table(tmp_path):
    pm = plugin_manager()
    plugin = _Plugin()
    pm.register(plugin, name="test-centre-bias")
    try:
        assert "centre_bias" in [t.name for t in bench.all_techniques()]
        rows = run_transfer(tmp_path, families=["convnext"], techniques=["centre_bias"], quick=True)
    finally:
        pm.unregister(plugin)
    (r,) = rows
    assert r["supported"] and r["score"] is not None
    # the same heatmap on random weights: the sanity check flags it
    assert r["sanity_passed"] is False
    assert "⚠" in (tmp_path / "results.md").read_text()


def test_technique_supports_respects_kinds():
    t = Technique("x", "localization", "", lambda m, c: Score(1, 0), kinds=("diffusion",))
    ok, why = t.supports(None, catalog.get_entry("resnet"))
    assert not ok and "diffusion" in why


def test_score_heatmap_perfect_and_uniform():
    ctx = BenchContext(entry=catalog.get_entry("resnet"), quick=True)
    b = tl.localization_batch(ctx)
    perfect = torch.as_tensor(b["object_mask"]).float()
    perfect[b["triggered"]] = torch.as_tensor(b["trigger_mask"][b["triggered"]]).float()
    s = tl.score_heatmap(perfect, b, ctx, "perfect")
    assert s.score == pytest.approx(1.0)
    u = tl.score_heatmap(torch.ones(len(perfect), 4, 4), b, ctx, "uniform")
    assert u.score == pytest.approx(u.chance)
    assert u.details["grid"] == "4x4"


def test_cli_quick_table_every_family(tmp_path, capsys):
    """The whole quick table (every shipped family x every technique), through the CLI."""
    from visionlens.cli import main

    assert main(["bench", "transfer", "--quick", "--out", str(tmp_path), "-q"]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    models = {r["model"] for r in rows}
    assert {f"zoo:{n}" for n in catalog.available() if catalog.get_entry(n).benchmark} <= models
    assert "zoo:style_judge" not in models  # a helper model, not a row
    techs = {r["technique"] for r in rows}
    assert len(rows) == len(models) * len(techs)
    errors = [(r["model"], r["technique"], r["reason"]) for r in rows if r["supported"] and r["score"] is None]
    assert not errors, errors
    for r in rows:
        if not r["supported"]:
            assert r["reason"], r
    assert "| technique |" in capsys.readouterr().out


def test_cli_zoo_list(capsys):
    from visionlens.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "zoo:resnet" in out and "held_out_accuracy" in out
