"""scripts/check_transfer_acceptance.py: the committed table passes its bars, and each bar can fail."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "check_transfer_acceptance", ROOT / "scripts" / "check_transfer_acceptance.py"
)
acc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acc)  # type: ignore[union-attr]

CLASSIFIERS = ["resnet", "vit", "convnext", "inception", "mobilenet", "resnet_fashion"]


def _committed():
    return acc._rows(ROOT / "benchmarks" / "results" / "transfer")


def _failed(by_file):
    return {name for name, ok, _ in acc.check_rows(by_file, CLASSIFIERS) if not ok}


def test_committed_results_pass_every_bar():
    assert acc.main(["--no-live"]) == 0
    assert not _failed(_committed())


def test_each_bar_fails_when_its_numbers_do():
    base = _committed()
    seed0 = "results.json"

    def mutated(pred, edit):
        by_file = copy.deepcopy(base)
        hit = [r for r in by_file[seed0] if r.get("supported") and pred(r)]
        assert hit
        edit(hit[0])
        return _failed(by_file)

    loc = lambda r: r["claim"] == "localization"  # noqa: E731
    assert mutated(loc, lambda r: r["baselines"]["constant"].update(normalized=0.2)) == {
        "best constant map <= 0.1 normalized on every localization row"
    }
    assert mutated(loc, lambda r: r.pop("interval")) == {"every supported cell has an interval"}
    cs = lambda r: r["technique"] == "causal_scrubbing"  # noqa: E731
    assert mutated(cs, lambda r: r["details"].update(margin=0.3)) == {
        "causal-scrubbing margin >= 0.4 on every classifier and seed"
    }
    unit = lambda r: r["technique"] == "unit_patching"  # noqa: E731

    # a transferring unit-patching cell that finds the planted units only at 0.7
    def weak_unit_cell(r):
        r.update(score=0.7, normalized=0.7, interval=[0.65, 0.75], sanity_passed=True)
        for b in r["baselines"].values():  # baselines below its interval, so its verdict is "transfers"
            b.update(score=0.5, normalized=0.5)

    failed = mutated(unit, weak_unit_cell)
    assert failed == {"unit patching recovers the planted units (>= 0.8) where it transfers"}
    # a family without its seed-2 rows
    by_file = copy.deepcopy(base)
    key = next(k for k in by_file if "seed2" in k)
    by_file[key] = [r for r in by_file[key] if r["model"] != "zoo:vit"]
    assert "3 training seeds per classifier family" in _failed(by_file)
    assert json.dumps(_committed()) == json.dumps(base)  # the checks do not edit their input
