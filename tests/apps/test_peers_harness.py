"""benchmarks/peers.py's bookkeeping on fake timings (no peers needed), and scripts/gen_perf_docs.py's block."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


peers = _load("bench_peers", ROOT / "benchmarks" / "peers.py")
gen = _load("gen_perf_docs", ROOT / "scripts" / "gen_perf_docs.py")


def test_ratios_are_per_round_medians_with_intervals():
    times = {"raw": [1.0, 2.0, 1.0, 1.0, 1.0], "a": [1.5, 3.0, 1.5, 1.6, 1.4], "b": [1.0, 2.0, 1.0, 1.0, 1.0]}
    s = peers.summarize(times, "raw")
    assert s["raw"]["median_ms"] == pytest.approx(1000.0)
    assert s["a"]["ratio"] == pytest.approx(1.5)  # the slow round 2 cancels: ratios are per round
    assert s["a"]["ratio_iqr"][0] <= 1.5 <= s["a"]["ratio_iqr"][1]
    assert s["a"]["ratio_ci95"][0] <= 1.5 <= s["a"]["ratio_ci95"][1]
    assert s["b"]["ratio"] == 1.0 and "ratio" not in s["raw"]
    assert peers.percentile([1, 2, 3, 4], 0.5) == pytest.approx(2.5)


def test_reference_finds_outputs_overwritten_in_place_and_the_check_flags_aliasing():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(inplace=True)).eval()
    x = torch.randn(2, 3, 5, 5)
    ref = peers.reference(net, (x,), {})
    assert ref.mutated == ["1"] and ref.order == ["0", "1", "2"]
    kept: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, n=n: kept.__setitem__(n, o)) for n, m in net.named_children()]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    aliased = peers.check_values(kept, ref)
    assert aliased["aliased"] is True and aliased["aliased_examples"] == ["1"]
    copies = peers.check_values({n: v[0].clone() for n, v in ref.values.items()}, ref)
    assert copies["aliased"] is False and copies["max_rel_err"] == 0.0
    assert peers.count_stored({"a": torch.zeros(4), "b": [torch.zeros(2)]}) == (2, 24)


def _payload(quick: bool) -> dict:
    row = {
        "peer": "x",
        "hooks": 3,
        "notes": [],
        "median_ms": 2.0,
        "ratio": 1.25,
        "ratio_iqr": [1.2, 1.3],
        "ratio_ci95": [1.1, 1.4],
        "stored_tensors": 3,
        "stored_mb": 0.5,
        "values": {
            "n_compared": 3,
            "n_overwritten_compared": 1,
            "max_rel_err": 0.0,
            "aliased": False,
            "aliased_examples": [],
            "wrong_values": [],
        },
    }
    alias = {**row, "ratio": 1.1, "values": {**row["values"], "aliased": True, "max_rel_err": 2.0}}
    case = {
        "case": "c",
        "label": "Net, 32 px, batch 1",
        "source": "s",
        "kind": "conv",
        "n_modules_called": 3,
        "n_module_calls": 3,
        "n_outputs_overwritten_in_place": 1,
        "overwritten_examples": ["1"],
        "peers": {"prisma": "n/a: no"},
        "variants": {
            "raw": {"peer": "raw", "median_ms": 1.6},
            "vl_no_hooks": {**row, "ratio": 1.01},
            "vl_cache_all": row,
            "nnsight": alias,
        },
    }
    meta = {
        "command": "python benchmarks/peers.py",
        "quick": quick,
        "rounds": 3,
        "warmup": 1,
        "threads": 1,
        "cpu_count": 2,
        "platform": "p",
        "versions": {"torch": "2", "nnsight": "0.8"},
        "git": {"commit": "abc"},
        "note": "busy",
        "loadavg_before": [5.0, 5.0, 5.0],
        "loadavg_after": [6.0, 6.0, 6.0],
        "utc_start": "t0",
        "utc_end": "t1",
    }
    return {"meta": meta, "cases": [case, {"case": "d", "label": "Broken", "error": "boom"}], "featurevis": None}


def test_markdown_marks_aliased_peers_and_quick_runs():
    md = peers.to_markdown(_payload(quick=True))
    assert "QUICK SMOKE RUN, not a measurement" in md
    assert "| Net, 32 px, batch 1 | 1.6 | 1.01x | 1.25x | - | 1.10x (aliased) |" in md
    assert "**aliased**" in md and "error: boom" in md and "prisma: n/a: no" in md
    assert "QUICK" not in peers.to_markdown(_payload(quick=False))


def test_perf_block_comes_from_the_results(tmp_path):
    block = gen.block(_payload(quick=False), peers)
    assert "no hook attached 1.01x, caching every hook (`run_with_cache()`) 1.25x" in block
    assert "1.10x (aliased)" in block and "Quick smoke run" not in block
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{gen.BEGIN}\nold\n{gen.END}\nb\n")
    new = gen.replace(readme.read_text(), block, readme)
    assert new.startswith(f"a\n{gen.BEGIN}\n") and new.endswith(f"{gen.END}\nb\n") and "old" not in new
    with pytest.raises(SystemExit):
        gen.replace("no markers", block, readme)


def test_fast_cases_are_timed_over_several_calls_in_a_row_the_same_for_every_variant():
    import time

    calls = {"raw": 0, "slow": 0}

    def raw():
        calls["raw"] += 1
        time.sleep(0.002)

    def slow():
        calls["slow"] += 1
        time.sleep(0.004)

    times, errors, number = peers.interleaved({"raw": raw, "slow": slow}, rounds=3, warmup=1, min_time=0.02)
    assert errors == {} and 4 <= number <= 10  # ~0.02 s / ~0.002 s per call
    assert calls["raw"] == calls["slow"] == 1 + 3 * number
    assert all(0.002 <= t < 0.02 for t in times["raw"])  # seconds per call, not per timing
    assert peers.summarize(times, "raw")["slow"]["ratio"] == pytest.approx(2.0, rel=0.5)
    assert peers.calls_per_timing(1.0) == 1 and peers.calls_per_timing(0.001, 0.1) == 100
