"""The CPU thread policy: a busy machine is measured now (not by a lagging load average), and the count follows."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from visionlens import threads


def test_proc_stat_parse(tmp_path):
    f = tmp_path / "stat"
    f.write_text("cpu  100 5 20 800 10 0 1 4 0 0\ncpu0 50 2 10 400 5 0 0 2 0 0\n")
    assert threads._read_proc_stat(str(f)) == (940, 810)
    f.write_text("garbage\n")
    assert threads._read_proc_stat(str(f)) is None
    assert threads._read_proc_stat(str(tmp_path / "missing")) is None


@pytest.mark.skipif(threads._read_proc_stat() is None, reason="no /proc/stat")
def test_a_spinning_process_is_seen_at_once():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.busy_cores_now(0.5) >= 0.6  # one core of it (more when other tests run alongside)
    finally:
        spin.kill()
        spin.wait()


def test_auto_count_follows_the_other_jobs(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    for var in threads.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(threads, "user_threads", lambda: None)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "other_load", lambda own_cpu=0.0: 1.2)
        choice = threads.configure_threads()
        assert (choice.threads, choice.source, choice.load) == (3, "auto", 1.2)
        assert torch.get_num_threads() == 3
        assert "load of other jobs 1.2" in choice.describe()
        monkeypatch.setattr(threads, "other_load", lambda own_cpu=0.0: 9.0)
        changed = threads.rebalance_threads(min_interval=0.0)
        assert changed is not None and changed.threads == 1 and torch.get_num_threads() == 1
        assert threads.rebalance_threads(min_interval=0.0) is None  # no change: nothing to report
    finally:
        threads._State.auto = False
        torch.set_num_threads(before)


def test_explicit_count_wins_and_is_not_rebalanced(monkeypatch):
    before = torch.get_num_threads()
    try:
        choice = threads.configure_threads(1)
        assert choice.source == "argument" and torch.get_num_threads() == 1
        monkeypatch.setattr(threads, "other_load", lambda own_cpu=0.0: 0.0)
        assert threads.rebalance_threads(min_interval=0.0) is None and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads must be >= 1"):
            threads.configure_threads(0)
    finally:
        torch.set_num_threads(before)
