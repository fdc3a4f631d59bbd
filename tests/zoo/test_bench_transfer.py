"""`visionlens bench transfer`: the table builds, unsupported pairs carry reasons, plugins join, runs resume."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from tests.zoo.conftest import EVERY_TECHNIQUE_FAMILIES, TABLE_GROUPS, cli_quick_table
from visionlens import hookimpl
from visionlens.registry import plugin_manager
from visionlens.zoo import bench, catalog, techniques_captum
from visionlens.zoo import techniques_localization as tl
from visionlens.zoo.bench import run_transfer
from visionlens.zoo.scores import Score
from visionlens.zoo.technique import BenchContext, Technique

pytestmark = pytest.mark.skipif(not catalog.weights_path("resnet").is_file(), reason="zoo:resnet not trained")


def test_quick_table_rows_and_files(resnet_table, tmp_path):
    """The localization rows of the quick table on the ResNet family. Scored once, by the CLI's ResNet table
    (``resnet_table``: the same cells, every technique): this run resumes its ``results.json`` (same settings), so
    it selects by claim, keeps the scored rows and writes the files without scoring anything again (the resume
    itself is tested on its own in test_resume_keeps_rows)."""
    shutil.copytree(resnet_table, tmp_path, dirs_exist_ok=True)  # its figures too: the report embeds them
    table = json.loads((resnet_table / "results.json").read_text())
    table["rows"] = [r for r in table["rows"] if r["claim"] == "localization"]
    (tmp_path / "results.json").write_text(json.dumps(table))
    all_rows = run_transfer(tmp_path, families=["resnet"], techniques=["localization"], quick=True)
    assert {r["model"] for r in all_rows} >= {"zoo:resnet"}  # the family selects every ResNet in the zoo
    rows = [r for r in all_rows if r["model"] == "zoo:resnet"]
    names = {r["technique"] for r in rows}
    assert names == {t.name for t in tl.TECHNIQUES + techniques_captum.TECHNIQUES}
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
    for r in rows:  # every scored cell records its CPU time (the cost on an idle core), split by part
        if r["score"] is not None:
            split = r["cpu_split"]
            assert set(split) == {"trained", "sanity"} and all(v >= 0 for v in split.values()), split
            assert sum(split.values()) <= r["cpu_seconds"] + 0.05
    # exact patching on the trained ResNet finds the trigger and object; on the randomized copy (every
    # init-time zeroing undone, see zoo.randomize) minimal-pair patching still localizes much of the
    # difference, so the row is flagged: the pair, not the model, carries the answer
    ap = by["activation_patching"]
    # (scored as a pixel map: the 8 x 8 patching grid's 4 px cells around the 8 px trigger cap it below 1)
    assert ap["supported"] and ap["normalized"] > 0.3 and ap["interval"][0] > ap["baselines"]["constant"]["normalized"]
    assert ap["sanity_normalized"] > 0.1 and ap["sanity_passed"] is False
    # the trigger moves: no input-independent map finds it (issue 14's acceptance: <= 0.1 normalized)
    for r in rows:
        if r.get("baselines"):
            assert r["baselines"]["constant"]["normalized"] <= 0.1, (r["technique"], r["baselines"]["constant"])
            assert r["details"]["scored_part"] == "trigger"
    # different-image pairs: the corruption no longer gives the answer away, and the trained ResNet still finds
    # it, above chance and the baselines over the whole interval
    sw = by["activation_patching_swap"]
    assert sw["interval"][0] > max(0.0, sw["baselines"]["constant"]["normalized"]) and sw["sanity_passed"] is True
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["rows"]) == len(all_rows)
    md = (tmp_path / "results.md").read_text()
    assert "| activation_patching |" in md and "resnet" in md
    html = (tmp_path / "index.html").read_text()
    assert "data:image/png;base64" in html


def test_resume_keeps_rows(tmp_path, monkeypatch):
    run_transfer(tmp_path, families=["mobilenet"], techniques=["gradient_x_input"], quick=True)
    calls = []
    orig = tl.TECHNIQUES[-1].scorer
    monkeypatch.setattr(tl.TECHNIQUES[-1], "scorer", lambda m, c: calls.append(1) or orig(m, c))
    rows = run_transfer(tmp_path, families=["mobilenet"], techniques=["gradient_x_input"], quick=True)
    assert calls == [] and len(rows) == 1
    run_transfer(tmp_path, families=["mobilenet"], techniques=["gradient_x_input"], quick=True, resume=False)
    assert len(calls) == 2  # trained + randomized copy


def test_a_narrower_rerun_keeps_the_other_cells(tmp_path):
    """Resuming into the same folder with another selection adds cells; it never drops earlier ones."""
    first = run_transfer(tmp_path, families=["mobilenet"], techniques=["gradient_x_input"], quick=True, workers=1)
    run_transfer(tmp_path, families=["mobilenet"], techniques=["grad_cam"], quick=True, workers=1)
    saved = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["model"], r["technique"]) for r in saved] == [
        ("zoo:mobilenet", "gradient_x_input"),
        ("zoo:mobilenet", "grad_cam"),
    ]
    assert saved[0]["score"] == first[0]["score"]
    assert (
        "grad_cam" in (tmp_path / "results.md").read_text()
        and "gradient_x_input" in (tmp_path / "results.md").read_text()
    )


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
        rows = run_transfer(tmp_path, families=["mobilenet"], techniques=["centre_bias"], quick=True)
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


BENCH_FAMILIES = sorted({e.family for e in catalog.entries().values() if e.benchmark})


@pytest.fixture(scope="module")
def resnet_table(quick_table):
    """The CLI's quick table on the ResNet family (every technique, with the randomized copies), run once for
    the tests that read it (same xdist group, so one worker runs it)."""
    return quick_table("resnet")


# the ResNet table's readers: one worker, one run of the table
test_quick_table_rows_and_files = TABLE_GROUPS["resnet"](test_quick_table_rows_and_files)


@pytest.mark.parametrize(
    "family", [pytest.param(f, marks=TABLE_GROUPS[f]) if f in TABLE_GROUPS else f for f in BENCH_FAMILIES]
)
def test_cli_quick_table_every_family(family, tmp_path, request):
    """The quick table, one family per test (xdist spreads them), through the CLI: a row for every
    technique on every trained model of the family, a score for every supported one, a reason for every other.
    (The tables of TABLE_GROUPS are shared with other tests that read them: tests/zoo/conftest.py.)"""
    names = [n for n, e in catalog.entries().items() if e.family == family and e.benchmark]
    names = [n for n in names if catalog.weights_path(n).is_file() and not catalog.get_entry(n).requires()]
    if not names:
        pytest.skip(f"no trained zoo model of family {family} can be benchmarked here")
    if family in TABLE_GROUPS:
        tmp_path = request.getfixturevalue("quick_table")(family)
        techs, stdout = sorted(t.name for t in bench.all_techniques()), (tmp_path / "stdout.txt").read_text()
        assert family in EVERY_TECHNIQUE_FAMILIES  # (else the CLI ran a narrower selection, with --no-sanity)
    else:
        code, techs, stdout = cli_quick_table(family, tmp_path)
        assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {f"zoo:{n}" for n in names} <= {r["model"] for r in rows}
    assert "zoo:style_judge" not in {r["model"] for r in rows}  # a helper model, not a row
    for n in names:
        assert sorted(r["technique"] for r in rows if r["model"] == f"zoo:{n}") == techs
    errors = [(r["technique"], r["reason"]) for r in rows if r["supported"] and r["score"] is None]
    assert not errors, errors
    assert any(r["supported"] for r in rows)
    for r in rows:
        if not r["supported"]:
            assert r["reason"], r
    assert "| technique |" in stdout


def test_worker_processes_give_the_serial_scores(tmp_path):
    """Two worker processes score what one process scores; a technique registered at run time (unknown to
    a fresh worker process) is scored by the parent."""
    pm = plugin_manager()
    plugin = _Plugin()
    pm.register(plugin, name="test-centre-bias")
    try:
        kw = dict(families=["vit", "clip"], techniques=["dla_heatmap", "gradient_x_input", "centre_bias"], quick=True)
        serial = run_transfer(tmp_path / "serial", workers=1, **kw)
        parallel = run_transfer(tmp_path / "parallel", workers=2, **kw)
    finally:
        pm.unregister(plugin)
    key = lambda r: (r["model"], r["technique"])  # noqa: E731
    assert [key(r) for r in serial] == [key(r) for r in parallel]
    n_models = sum(1 for e in catalog.entries().values() if e.benchmark and e.family in ("vit", "clip"))
    assert n_models >= 3  # vit, clip, clip_glyph (a transfer-table column for its planted multimodal units)
    assert len(serial) == 3 * n_models
    for a, b in zip(serial, parallel):
        assert a["supported"] == b["supported"] and a["reason"] == b["reason"], (a, b)
        if a["score"] is not None:
            assert b["score"] == pytest.approx(a["score"], abs=1e-6), key(a)
            assert b["sanity_score"] == pytest.approx(a["sanity_score"], abs=1e-6), key(a)
    assert any(r["technique"] == "centre_bias" and r["score"] is not None for r in parallel)
    saved = json.loads((tmp_path / "parallel" / "results.json").read_text())["rows"]
    assert [key(r) for r in saved] == [key(r) for r in parallel]


def test_cli_zoo_list(capsys):
    from visionlens.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert "zoo:resnet" in out and "held_out_accuracy" in out


def test_weights_folder_scores_another_training_seed(tmp_path):
    """`--weights DIR` scores the models trained into DIR; rows carry the card's training seed."""
    import shutil

    from visionlens.zoo.catalog import card_path, weights_path

    folder = tmp_path / "seed7"
    folder.mkdir()
    shutil.copy(weights_path("mobilenet"), folder / "mobilenet.safetensors")
    card = json.loads(card_path("mobilenet").read_text())
    card["seed"] = 7
    (folder / "mobilenet.json").write_text(json.dumps(card))
    rows = run_transfer(
        tmp_path / "out",
        families=["mobilenet", "resnet"],
        techniques=["gradient_x_input"],
        quick=True,
        sanity=False,
        weights=folder,
    )
    by = {r["model"]: r for r in rows}
    assert by["zoo:mobilenet"]["supported"] and by["zoo:mobilenet"]["model_seed"] == 7
    assert by["zoo:resnet"]["supported"] is False and "no trained weights in" in by["zoo:resnet"]["reason"]
    shipped = run_transfer(
        tmp_path / "out0", families=["mobilenet"], techniques=["gradient_x_input"], quick=True, sanity=False
    )
    assert shipped[0]["model_seed"] == 0 and shipped[0]["score"] == pytest.approx(by["zoo:mobilenet"]["score"])
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["settings"]["weights"] == str(folder) and f"--weights {folder}" in saved["command"]
    assert re.search(r"--out DIR --no-sanity --threads \d+$", saved["command"]), saved["command"]  # its flags
    run = saved["run"]  # what the run cost, for the docs to quote
    assert run["cells_scored"] == len(rows) and run["finished"] and run["cores"] >= 1
    assert 0 < run["wall_seconds"] < 600 and 0 < run["cpu_seconds"]


def test_seed_table_shows_each_seeds_verdict_and_the_range():
    from visionlens.zoo.bench_report import seed_table

    def row(model, norm, lo, hi):
        return {
            "model": model,
            "technique": "occlusion",
            "supported": True,
            "score": norm,
            "normalized": norm,
            "interval": [lo, hi],
            "baselines": {"constant": {"normalized": 0.02}, "random": {"normalized": 0.0}},
        }

    runs = {0: [row("zoo:resnet", 0.5, 0.4, 0.6)], 1: [row("zoo:resnet", 0.1, -0.05, 0.2)], 2: []}
    t = seed_table(runs)
    assert "| occlusion | Tp· 0.10–0.50 |" in t, t


def test_batched_patching_maps_are_the_one_pair_runs():
    """Pairs of one target class share an activation_patching run; the maps are those of one run per pair."""
    entry = catalog.get_entry("resnet")
    model = catalog.load("resnet")
    b = tl.localization_batch(BenchContext(entry=entry, quick=True))
    assert len(set(b["targets"].tolist())) >= 2  # triggered (class 0) and clean images of other classes
    hook = tl._earliest_resid(model, b["images"], tl.MAX_PATCH_POSITIONS)
    for method, key in (("exact", "scores/"), ("attribution", "atp/")):
        maps = tl.patching_maps(model, b, hook, method)
        assert maps.shape[0] == len(b["images"])
        for i in range(len(b["images"])):
            r = tl.run(
                "activation_patching",
                model,
                torch.stack([b["images"][i], b["corrupted"][i]]),
                hooks=[hook],
                target="position",
                method=method,
                label=int(b["targets"][i]),
                metric="logit_diff",
                top_k=1,
            )
            one = r.tensors[key + hook].float().reshape(-1) - float(r.meta["metric"]["corrupted_value"][0])
            assert torch.allclose(maps[i].reshape(-1), one, atol=1e-4), (method, i)
        assert float(maps.abs().max()) > 0.1  # not all zero


def test_planted_batches_are_shared_between_the_contexts_of_one_model():
    entry = catalog.get_entry("resnet")
    inputs: dict = {}
    trained = BenchContext(entry=entry, quick=True, inputs=inputs)
    control = BenchContext(entry=entry, quick=True, randomized=True, inputs=inputs)
    a, b = tl.localization_batch(trained), tl.localization_batch(control)
    assert a is b and len(inputs) == 1
    other = BenchContext(entry=entry, quick=True)  # its own dict: generated again, equal
    c = tl.localization_batch(other)
    assert c is not a and torch.equal(c["images"], a["images"])


def test_workers_get_the_costliest_models_first(tmp_path):
    """Job order for worker processes: a previous run's CPU seconds per cell, no cost for a technique whose kinds
    exclude the model (the diffusion UNet's 20-odd classifier rows are reasons, not work)."""
    ents = catalog.entries()
    techs = {t.name: t for t in bench.all_techniques()}
    rows = [
        {"model": "zoo:vit", "technique": "activation_patching", "score": 0.5, "seconds": 90.0, "cpu_seconds": 40.0},
        {"model": "zoo:vit", "technique": "dla_heatmap", "score": 0.1, "seconds": 9.0, "cpu_seconds": None},
        {"model": "zoo:resnet", "technique": "dla_heatmap", "score": None, "seconds": 1.0},  # not scored: no timing
    ]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"settings": {"quick": False}, "rows": rows}))
    timings = bench._previous_timings(path, quick=False)
    assert timings == {("zoo:vit", "activation_patching"): 40.0, ("zoo:vit", "dla_heatmap"): 9.0}
    assert bench._previous_timings(path, quick=True) == {}  # another budget's timings do not count
    assert bench._previous_timings(tmp_path / "missing.json", quick=False) == {}
    vit = bench._job_cost(ents["vit"], [techs["activation_patching"], techs["dla_heatmap"]], timings)
    assert vit == pytest.approx(49.0)
    # unknown cells: bench_cost x the median known cell; techniques of other kinds cost nothing
    unit = 24.5
    diff = ents["diffusion"]
    classifier_only = [t for t in techs.values() if diff.kind not in getattr(t, "kinds", ())]
    assert len(classifier_only) > 10 and bench._job_cost(diff, classifier_only, timings) == 0.0
    own = [t for t in techs.values() if diff.kind in getattr(t, "kinds", ())]
    assert bench._job_cost(diff, own, timings) == pytest.approx(diff.bench_cost * unit * len(own))


def test_headline_names_the_model_a_row_really_scores():
    from visionlens.zoo.bench_report import headline

    base = dict(technique="t", claim="c", supported=True, score=1.0, chance=0.0, normalized=0.9, interval=[0.8, 1.0])
    base.update(baselines={"constant": {"normalized": 0.0, "interval": [0.0, 0.0]}}, sanity_passed=True)
    rows = [
        dict(base, model="zoo:inception", details={"scored_model": "zoo:curve"}),
        dict(base, model="zoo:resnet", details={"scored_model": "zoo:resnet"}),
        dict(base, model="zoo:vit", details={}),
    ]
    names = [n for ns in headline(rows)["t"].values() for n in ns]
    assert names == ["inception (scored on zoo:curve)", "resnet", "vit"]
