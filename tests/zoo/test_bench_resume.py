"""Resuming the transfer table never loses rows: other weights folders and other settings."""

from __future__ import annotations

import json
import shutil

import pytest

from visionlens import VisionLensError
from visionlens.zoo.bench import run_transfer
from visionlens.zoo.catalog import card_path, weights_path


def _seed_folder(tmp_path, name: str, seed: int):
    folder = tmp_path / f"seed{seed}_{name}"
    folder.mkdir()
    shutil.copy(weights_path(name), folder / f"{name}.safetensors")
    card = json.loads(card_path(name).read_text())
    card["seed"] = seed
    (folder / f"{name}.json").write_text(json.dumps(card))
    return folder


def test_scoring_another_weights_folder_into_the_same_out_keeps_the_earlier_rows(tmp_path):
    """Seed runs of two models trained into two folders share one results.json (the bug: the second dropped all)."""
    out = tmp_path / "seed3"
    a, b = _seed_folder(tmp_path, "mobilenet", 3), _seed_folder(tmp_path, "convnext", 3)
    kw = dict(techniques=["unit_dla"], quick=True, sanity=False)
    first = run_transfer(out, families=["mobilenet"], weights=a, **kw)
    run_transfer(out, families=["convnext"], weights=b, **kw)
    saved = json.loads((out / "results.json").read_text())
    by = {r["model"]: r for r in saved["rows"]}
    assert set(by) == {"zoo:mobilenet", "zoo:convnext"}
    assert by["zoo:mobilenet"]["score"] == first[0]["score"] and by["zoo:mobilenet"]["weights"] == str(a)
    assert by["zoo:convnext"]["weights"] == str(b) and by["zoo:convnext"]["model_seed"] == 3
    assert saved["settings"]["weights"] == "per row"
    # resuming the first folder scores nothing again
    again = run_transfer(out, families=["mobilenet"], weights=a, **kw)
    assert again[0]["seconds"] == first[0]["seconds"]
    assert json.loads((out / "results.json").read_text())["run"]["cells_scored"] == 0
    assert first[0]["weights_sha256"] == json.loads((a / "mobilenet.json").read_text())["sha256"]
    # ... unless the model was retrained in that folder since (its card's sha256 changed): scored again
    card = json.loads((a / "mobilenet.json").read_text())
    (a / "mobilenet.json").write_text(json.dumps({**card, "sha256": "0" * 64}))
    retrained = run_transfer(out, families=["mobilenet"], weights=a, **kw)
    assert retrained[0]["weights_sha256"] == "0" * 64
    assert json.loads((out / "results.json").read_text())["run"]["cells_scored"] == 1
    # the same cell from other weights (the shipped ones) is scored anew and replaces it
    shipped = run_transfer(out, families=["mobilenet"], **kw)
    assert shipped[0]["weights"] is None and shipped[0]["model_seed"] == 0
    # the file's run history keeps the runs whose rows it still holds: the convnext run and the last one (the
    # first mobilenet run's row was replaced twice; the resume that scored nothing owns no row)
    saved = json.loads((out / "results.json").read_text())
    runs = {r["run_id"]: r for r in saved["runs"]}
    by_model = {r["model"]: runs[r["run_id"]]["command"] for r in saved["rows"]}
    assert "--families convnext" in by_model["zoo:convnext"] and f"--weights {b}" in by_model["zoo:convnext"]
    assert "--families mobilenet" in by_model["zoo:mobilenet"] and "--weights" not in by_model["zoo:mobilenet"]
    assert len(runs) == 2 and saved["runs"][-1]["run_id"] == saved["run"]["run_id"] == shipped[0]["run_id"]


def test_other_settings_are_refused_not_overwritten(tmp_path):
    run_transfer(tmp_path, families=["mobilenet"], techniques=["unit_dla"], quick=True, sanity=False)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(VisionLensError, match="other settings.*--fresh"):
        run_transfer(tmp_path, families=["convnext"], techniques=["unit_dla"], quick=True, sanity=True)
    assert (tmp_path / "results.json").read_text() == before
    rows = run_transfer(tmp_path, families=["convnext"], techniques=["unit_dla"], quick=True, sanity=True, resume=False)
    assert [r["model"] for r in rows] == ["zoo:convnext"]


def test_a_model_skipped_for_missing_weights_is_scored_once_they_exist(tmp_path):
    """A folder still training (weights not yet written) gives skipped rows; resuming after the weights land
    scores them (the bug: the skipped rows counted as done, so the resume kept "no trained weights")."""
    out = tmp_path / "seed3"
    folder = tmp_path / "seed3_weights"
    folder.mkdir()
    kw = dict(families=["mobilenet"], techniques=["unit_dla"], quick=True, sanity=False, weights=folder)
    first = run_transfer(out, **kw)
    assert first[0]["supported"] is False and "no trained weights" in first[0]["reason"] and first[0]["skipped"]
    filled = _seed_folder(tmp_path, "mobilenet", 3)
    for f in filled.iterdir():
        shutil.move(str(f), folder / f.name)
    second = run_transfer(out, **kw)
    assert second[0]["supported"] is True and second[0]["score"] is not None and not second[0].get("skipped")
    assert json.loads((out / "results.json").read_text())["run"]["cells_scored"] == 1
