"""Train several zoo models at once: ``visionlens zoo train all --workers N``.

Each model trains in its own spawned process with the thread count of a serial run, so its weights are bit
for bit the ones a serial ``visionlens zoo train NAME`` gives (training is seeded and single-process; the
processes share nothing). The costliest models start first (their cards' ``train_seconds`` where a card
exists, else their step budget), and a model whose evaluation reads another zoo model's weights starts only
after that one is written (:data:`NEEDS`).
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch

from ..validation import VisionLensError
from .catalog import card_path, get_entry
from .train import train_entry

__all__ = ["NEEDS", "dependency_order", "expected_seconds", "train_in_workers"]

# model -> the zoo models that must be trained before it (its evaluation loads their weights)
NEEDS: Dict[str, Sequence[str]] = {"diffusion": ("style_judge",)}


def expected_seconds(name: str, out_dir: Union[str, Path, None]) -> float:
    """A model's training time for scheduling: its card's ``train_seconds`` in ``out_dir`` or the package,
    else its default step budget (as seconds, a rough stand-in)."""
    for folder in (out_dir, None):
        try:
            return float(json.loads(card_path(name, folder).read_text())["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return float(get_entry(name).default_steps or 0)


def dependency_order(names: Sequence[str]) -> list:
    """``names`` with every model after the ones it :data:`NEEDS` (a stable order otherwise): the serial order."""
    out: list = []

    def visit(n: str, path: tuple) -> None:
        if n in out:
            return
        if n in path:
            raise VisionLensError(f"zoo models {list(path)} wait on each other ({NEEDS})")
        for dep in NEEDS.get(n, ()):
            if dep in names:
                visit(dep, path + (n,))
        out.append(n)

    for n in names:
        visit(n, ())
    return out


def _train_one(name: str, kwargs: Dict[str, Any], threads: int) -> Dict[str, Any]:
    torch.set_num_threads(threads)
    return train_entry(name, **kwargs)


def train_in_workers(
    names: Sequence[str],
    workers: int,
    threads: int = 1,
    report: Optional[Callable[[str, Dict[str, Any]], None]] = None,
    **kwargs: Any,
) -> Dict[str, Dict[str, Any]]:
    """Train ``names`` in ``workers`` processes (``threads`` torch threads each); ``kwargs`` go to
    :func:`visionlens.zoo.train.train_entry` (``out_dir``, ``seed``, ``steps``, ``checkpoint_every``; its
    curve printing is off). ``report(name, card)`` runs as each model finishes. Returns the cards by name;
    the first model that raises stops the run (the others already running finish) and its error propagates.
    """
    kwargs = {**kwargs, "verbose": False}
    pending = sorted(names, key=lambda n: -expected_seconds(n, kwargs.get("out_dir")))
    done: Dict[str, Dict[str, Any]] = {}
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, int(workers)), mp_context=ctx) as pool:
        running: Dict[Future, str] = {}

        def ready(n: str) -> bool:
            return all(dep in done or dep not in names for dep in NEEDS.get(n, ()))

        def submit() -> None:
            for n in [n for n in pending if ready(n)]:
                pending.remove(n)
                running[pool.submit(_train_one, n, kwargs, threads)] = n

        submit()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                done[name] = fut.result()  # an error propagates (the pool waits for the running ones)
                if report is not None:
                    report(name, done[name])
            submit()
        if pending:
            raise VisionLensError(f"zoo models {pending} wait on each other ({NEEDS}); nothing left to start them")
    return done
