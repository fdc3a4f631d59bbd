"""`make demo` end to end on the real MobileNetV2 (random weights if the weights package is absent)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage")


def test_demo_writes_report(tmp_path):
    from visionlens.apps.demo.report import run_demo

    summary = run_demo(tmp_path)
    assert (tmp_path / "index.html").is_file() and (tmp_path / "residual_norms.png").is_file()
    assert (tmp_path / "activation_stats" / "result.json").is_file()
    assert summary["hooked_vs_raw_max_abs_diff"] <= 1e-5
    assert json.loads((tmp_path / "summary.json").read_text())["n_cached"] == summary["n_hooks"]
    html = (tmp_path / "index.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    if summary["real_weights"]:
        chelsea = next(p for p in summary["predictions"] if p["image"] == "chelsea")
        assert "cat" in chelsea["top"][0][0]
