"""`make demo` end to end on the real MobileNetV2 (random weights if the weights package is absent).

The transfer table is tested here on one family and one technique (the whole quick table runs in
``tests/zoo/test_bench_transfer.py``); the rest of the report runs in full.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("skimage")


def test_demo_writes_report(tmp_path, capsys, monkeypatch):
    from visionlens.apps.demo import analyses
    from visionlens.apps.demo.report import run_demo

    # the demo's own renders (size, transforms, learning rate), 12 of its 48 steps: nothing here reads how far
    # they got (a render's objective rising is tested in tests/featurevis), and the steps were 8 of its 42 s
    monkeypatch.setitem(analyses.FV_SETTINGS, "steps", 12)
    summary = run_demo(tmp_path, progress=False, transfer=False)
    assert (tmp_path / "index.html").is_file() and (tmp_path / "residual_norms.png").is_file()
    assert (tmp_path / "analyses" / "dla" / "result.json").is_file()
    assert (tmp_path / "analyses" / "patching_regions.png").is_file()
    assert summary["hooked_vs_raw_max_abs_diff"] <= 1e-5
    assert json.loads((tmp_path / "summary.json").read_text())["n_cached"] == summary["n_hooks"]
    html = (tmp_path / "index.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    # every figure is captioned, and the sections say what they show
    assert html.count("<figure>") == html.count("<figcaption") >= 5
    for words in ("Takeaway.", "feature visualization", "top dataset examples", "restores", "Reading."):
        assert words in html, words
    assert capsys.readouterr().err == ""  # progress=False: no progress lines
    if summary["real_weights"]:
        chelsea = next(p for p in summary["predictions"] if p["image"] == "chelsea")
        assert "cat" in chelsea["top"][0][0]
        assert html.count("feature visualization of channel") == 4


def test_demo_transfer_section_states_caveats(tmp_path):
    from visionlens.apps.demo.transfer import demo_transfer_section

    html = demo_transfer_section(tmp_path, families=["resnet"], techniques=["dla_heatmap"])
    if "No trained zoo models" in html:
        pytest.skip("no trained zoo models")
    assert (tmp_path / "transfer" / "results.json").is_file()
    for words in ("Caveats", "trigger moves", "random", "Quick budgets", "Headline"):
        assert words in html, words


def test_demo_main_thread_policy(tmp_path, monkeypatch):
    """`python -m visionlens.apps.demo` applies the thread policy for its run and restores the count after."""
    from visionlens.apps.demo import report
    from visionlens.threads import configure_threads, thread_policy

    seen = {}

    def fake_run_demo(out, progress=None, threads=""):
        seen["threads"], seen["n"] = threads, torch.get_num_threads()
        return {"predictions": [], "seconds": 0.0, "threads": threads}

    monkeypatch.setattr(report, "run_demo", fake_run_demo)
    before = torch.get_num_threads()
    assert report.main(["--out", str(tmp_path), "--threads", "1", "-q"]) == 0
    assert seen["n"] == 1 and "argument" in seen["threads"]
    assert torch.get_num_threads() == before
    monkeypatch.setenv("VISIONLENS_THREADS", "1")
    assert configure_threads().source == "env VISIONLENS_THREADS"
    monkeypatch.delenv("VISIONLENS_THREADS")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    with thread_policy() as choice:
        assert 1 <= choice.threads <= choice.cores
    torch.set_num_threads(before)
