"""scripts/gen_transfer_docs.py: the README / docs headline comes from results rows; --check catches drift."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gen_transfer_docs", ROOT / "scripts" / "gen_transfer_docs.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def _row(model, tech, normalized, interval=None, sanity=True, baselines=None):
    return {
        "family": model,
        "model": f"zoo:{model}",
        "technique": tech,
        "claim": "localization" if interval else "dataset examples",
        "score": normalized,
        "chance": 0.0,
        "normalized": normalized,
        "sanity_passed": sanity,
        "sanity_normalized": 0.0,
        "supported": True,
        "reason": "",
        "seconds": 1.5,
        "interval": interval,
        "baselines": baselines,
    }


def test_blocks_follow_the_rows_and_check_detects_drift(tmp_path, monkeypatch):
    base = {"constant": {"normalized": 0.3}, "random": {"normalized": 0.0}}
    rows = [
        _row("resnet", "occlusion", 0.8, [0.6, 0.9], baselines=base),
        _row("vit", "occlusion", 0.4, [0.2, 0.5], baselines=base),
        _row("vit", "dataset_examples", 0.7),
    ]
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"command": "visionlens bench transfer --out DIR", "settings": {}, "rows": rows}))
    readme, doc = tmp_path / "README.md", tmp_path / "transfer.md"
    for p in (readme, doc):
        p.write_text(f"intro\n{gen.BEGIN}\nold typed text\n{gen.END}\noutro\n")
    monkeypatch.setattr(gen, "RESULTS", results)
    monkeypatch.setattr(gen, "README", readme)
    monkeypatch.setattr(gen, "DOC", doc)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old typed text" not in text
    assert "- `occlusion`: **transfers**: resnet; **partial**: vit" in text
    assert "- `dataset_examples`: **transfers**: vit" in text
    assert "| occlusion |" in doc.read_text()
    rows[1]["interval"] = [0.35, 0.5]  # now above the constant map: the headline must change
    results.write_text(json.dumps({"command": "x", "settings": {}, "rows": rows}))
    assert gen.main(["--check"]) == 1


def test_a_target_without_markers_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "r.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "README.md").write_text("no markers\n")
    monkeypatch.setattr(gen, "RESULTS", tmp_path / "r.json")
    monkeypatch.setattr(gen, "README", tmp_path / "README.md")
    with pytest.raises(SystemExit, match="no <!-- transfer-headline"):
        gen.main([])


def test_the_headline_quotes_the_run_record_not_a_typed_figure():
    run = {"cells_scored": 12, "wall_seconds": 1474.3, "cpu_seconds": 2817.0, "cores": 2, "load_average_at_start": 0.4}
    line = gen.run_line({**run, "finished": "2026-11-30T14:15:00Z"})
    assert "12 cells in 24 min 34 s wall, 2817 CPU-s, 2 cores, load 0.4 at the start" in line
    assert "interrupted" not in line and "interrupted" in gen.run_line({**run, "finished": None})
    assert gen.run_line(None) == "" and gen.run_line({}) == ""


def test_a_table_assembled_from_several_runs_quotes_each_with_the_rows_it_scored():
    full = {"command": "visionlens bench transfer --fresh", "run_id": "A", "cells_scored": 3, "wall_seconds": 90.0}
    redo = {"command": "visionlens bench transfer --families vit", "run_id": "B", "cells_scored": 1}
    rows = [{"run_id": "A"}, {"run_id": "A"}, {"run_id": "B"}]
    line = gen.runs_line({"runs": [full, {**redo, "wall_seconds": 61.0}], "rows": rows})
    assert line.startswith("assembled from 2 runs: `visionlens bench transfer --fresh` (2 of these rows; 3 cells in")
    assert "`visionlens bench transfer --families vit` (1 of these rows; 1 cells in 1 min 1 s wall" in line
    # a file written before the history existed: its one command and run record
    old = gen.runs_line({"command": "cmd", "run": {"cells_scored": 2, "wall_seconds": 5.0}, "rows": []})
    assert old == "its run: `cmd` (2 cells in 0 min 5 s wall, 0 CPU-s, ? cores, finished -, interrupted)"
