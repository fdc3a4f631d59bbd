"""CPU thread policy for long jobs: use the idle cores, never oversubscribe a busy machine.

torch's default intra-op thread count is the number of cores. On a machine where other jobs already
run, that oversubscribes the cores and OpenMP's spin-waiting threads stall each other: on two busy
cores a job can run 10x slower than with one thread, far beyond what sharing the cores explains.

:func:`configure_threads` picks the count for a long command (``visionlens run``, ``bench
transfer``, the demo) and applies it with ``torch.set_num_threads``:

1. ``n`` when given (a ``--threads`` option);
2. else the user's own choice: ``VISIONLENS_THREADS``, ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``
   in the environment, or a ``torch.set_num_threads`` call (a count that is neither torch's default
   nor the last one this module set) -- left as it is;
3. else ``auto``: ``max(1, cores - round(load))``, where ``cores`` are the CPUs this process may run
   on and ``load`` the cores the other jobs keep busy now (a 0.2 s sample of ``/proc/stat``; the
   1-minute load average where there is none, which lags a job that just ended or started by up to a
   minute). :func:`rebalance_threads` re-applies
   the rule during a job (between cells of a table), subtracting the job's own CPU use from the load,
   so a job started on an idle machine backs off when another one starts, and takes the cores back
   when it ends.

:func:`thread_policy` is the same as a context manager that restores the previous count on exit
(a command called in-process, e.g. from a test, leaves the caller's setting alone).

>>> choice = configure_threads()          # e.g. ThreadChoice(threads=1, source='auto', cores=2, load=1.2)
>>> print(choice.describe())              # "1 torch thread (auto: 2 cores, load of other jobs 1.2)"
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch

__all__ = [
    "ENV_VARS",
    "ThreadChoice",
    "available_cores",
    "auto_threads",
    "busy_cores_now",
    "configure_threads",
    "other_load",
    "rebalance_threads",
    "thread_policy",
    "user_threads",
]

ENV_VARS = ("VISIONLENS_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class ThreadChoice:
    """What :func:`configure_threads` applied: ``threads``, where it came from (``source``: ``"argument"``,
    ``"env NAME"``, ``"torch.set_num_threads"`` or ``"auto"``), the usable ``cores`` and the other jobs' ``load``."""

    threads: int
    source: str
    cores: int
    load: float

    def describe(self) -> str:
        s = "" if self.threads == 1 else "s"
        if self.source == "auto":
            return f"{self.threads} torch thread{s} (auto: {self.cores} cores, load of other jobs {self.load:.1f})"
        return f"{self.threads} torch thread{s} ({self.source})"


class _State:
    auto = False  # the last configure_threads call chose automatically (rebalance_threads may adjust)
    ours: Optional[int] = None  # the count this module last set
    cpu = 0.0  # process CPU seconds at the last (re)balance
    wall = 0.0


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


SAMPLE_SECONDS = 0.2


def _read_proc_stat(path: str = "/proc/stat") -> Optional[Tuple[int, int]]:
    """``(total, idle)`` jiffies of all CPUs from ``/proc/stat``, or ``None`` where it cannot be read."""
    try:
        with open(path) as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    vals = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)


def busy_cores_now(seconds: float = SAMPLE_SECONDS) -> Optional[float]:
    """Cores kept busy by *other* processes over the next ``seconds`` (machine-wide ``/proc/stat`` sample
    minus this process's own CPU time), or ``None`` where ``/proc/stat`` is unavailable."""
    a, cpu0, w0 = _read_proc_stat(), _cpu_seconds(), time.monotonic()
    if a is None:
        return None
    time.sleep(seconds)
    b, cpu1, w1 = _read_proc_stat(), _cpu_seconds(), time.monotonic()
    if b is None or b[0] <= a[0]:
        return None
    busy = (1.0 - (b[1] - a[1]) / (b[0] - a[0])) * max(1, os.cpu_count() or 1)
    return max(0.0, busy - (cpu1 - cpu0) / max(w1 - w0, 1e-9))


def other_load(own_cpu: float = 0.0) -> float:
    """The cores other jobs keep busy on this process's cores: a short ``/proc/stat`` sample
    (:func:`busy_cores_now`), else the 1-minute load average minus ``own_cpu`` (this job's share, in cores).

    Where the process is pinned to a subset of the machine, the machine-wide load is scaled to that subset.
    """
    load = busy_cores_now()
    if load is None:
        try:
            load = max(0.0, os.getloadavg()[0] - own_cpu)
        except (AttributeError, OSError):
            return 0.0
    cores, total = available_cores(), max(1, os.cpu_count() or 1)
    if cores < total:
        load *= cores / total
    return max(0.0, load)


def auto_threads(own_cpu: float = 0.0, load: Optional[float] = None) -> int:
    """``max(1, cores - round(other jobs' load))`` (never more than the cores); ``load``: a measured
    :func:`other_load`, else one is taken."""
    cores = available_cores()
    load = other_load(own_cpu) if load is None else load
    return max(1, min(cores, cores - round(load)))


def _auto_choice(own_cpu: float = 0.0) -> ThreadChoice:
    load = other_load(own_cpu)
    return ThreadChoice(auto_threads(load=load), "auto", available_cores(), load)


def user_threads() -> Optional[ThreadChoice]:
    """The thread count the user chose (environment, or a ``torch.set_num_threads`` call), or ``None``."""
    for var in ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) >= 1:
            return ThreadChoice(int(value), f"env {var}", available_cores(), 0.0)
    current = torch.get_num_threads()
    # torch starts intra-op and inter-op pools at the same default size; a different intra-op count
    # that this module did not set is the user's
    if current != torch.get_num_interop_threads() and current != _State.ours:
        return ThreadChoice(current, "torch.set_num_threads", available_cores(), 0.0)
    return None


def _apply(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _State.ours = n
    _State.cpu, _State.wall = _cpu_seconds(), time.monotonic()


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def configure_threads(n: Optional[int] = None) -> ThreadChoice:
    """Apply the policy (see the module docstring) and return what was chosen."""
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        choice = ThreadChoice(int(n), "argument", available_cores(), 0.0)
    else:
        choice = user_threads() or _auto_choice()
    _apply(choice.threads)
    _State.auto = choice.source == "auto"
    return choice


def rebalance_threads(min_interval: float = 10.0) -> Optional[ThreadChoice]:
    """Re-apply the ``auto`` rule mid-job; returns the new choice when the count changed, else ``None``.

    Does nothing unless the last :func:`configure_threads` chose automatically (and the count was not
    changed by hand since), or when called within ``min_interval`` seconds of the last (re)balance.
    This job's own load (subtracted from the load average where there is no ``/proc/stat``) is its CPU use
    since then (CPU seconds / wall seconds).
    """
    if not _State.auto or torch.get_num_threads() != _State.ours:
        return None
    wall = time.monotonic()
    if wall - _State.wall < min_interval:
        return None
    own = (_cpu_seconds() - _State.cpu) / max(wall - _State.wall, 1e-9)
    choice = _auto_choice(own)
    changed = choice.threads != _State.ours
    _apply(choice.threads)
    return choice if changed else None


@contextlib.contextmanager
def thread_policy(n: Optional[int] = None) -> Iterator[ThreadChoice]:
    """:func:`configure_threads` for the duration of a ``with`` block; the previous count is restored after."""
    before, before_ours = torch.get_num_threads(), _State.ours
    try:
        yield configure_threads(n)
    finally:
        _State.auto = False
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
        _State.ours = before_ours
