"""Adebayo et al.'s cascading randomization as a curve: a technique's score as the trained weights are
replaced by random ones, one unit at a time from the top (head first, then the last block, ...).

A technique that explains what the model *learned* should lose its score as the layers it relies on are
randomized; a curve that stays flat down to the input means the technique's output is explained by the
architecture and the input (an edge detector), not by the weights. :func:`cascade_curve` scores a
technique on each step of :func:`visionlens.zoo.randomize.cascading_randomization` of a zoo model's
trained module (the same random values as the table's fully randomized copy at the last step), and
:func:`cascade_figure` draws the curves of a model's techniques.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .catalog import load_module
from .entry import ZooEntry
from .randomize import cascading_randomization, parameter_groups
from .technique import CONTROL_IMAGES, BenchContext

if TYPE_CHECKING:
    from ..hooked_model import HookedVisionModel


def _pick(n: int, max_steps: Optional[int]) -> List[int]:
    """Indices of the steps to score: all, or ``max_steps`` evenly spaced ones that include the first and last."""
    if max_steps is None or max_steps >= n:
        return list(range(n))
    if max_steps < 2:
        return [n - 1]
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_steps)})


def cascade_curve(
    technique: Any,
    entry: ZooEntry,
    *,
    quick: bool = False,
    seed: int = 0,
    max_steps: Optional[int] = None,
    trained_score: Optional[float] = None,
    random_control: Optional[Tuple[nn.Module, float]] = None,
    directory: Optional[str] = None,
    inputs: Optional[Dict[Any, Any]] = None,
) -> List[Dict[str, Any]]:
    """``[{"step", "randomized_from", "units", "score", "normalized"}, ...]``: the technique on the trained
    model (step 0, ``randomized_from`` ``None``; pass ``trained_score`` (normalized) to reuse a known one),
    then with the top 1, 2, ... units randomized (``max_steps`` evenly spaced steps; None: every unit).

    ``random_control``: ``(module, normalized score)`` of an already scored fully random copy (the sanity
    check's); a step whose weights equal it exactly (the last step, when the seeds agree) reuses its score
    instead of scoring the same network again (``reused: True``).

    A technique with ``score_reads`` (the one hook whose activations alone decide its score) gets the trained
    score at a step that leaves that hook's activations bit for bit unchanged on a probe batch (randomizing only
    layers after it, e.g. the head under a last-block dictionary): ``reused: "unchanged at HOOK"``.

    A step whose scoring raises is recorded with ``error`` and no score; the curve goes on. ``directory``: the
    folder of the trained weights (default: the shipped ones). ``inputs``: a dict of planted batches shared with
    other contexts of this zoo model (:attr:`~visionlens.zoo.technique.BenchContext.inputs`): every step reuses
    them instead of generating them again.
    """
    inputs = {} if inputs is None else inputs
    module = load_module(entry.name, directory=directory)
    chosen = set(_pick(len(parameter_groups(module)), max_steps))
    points: List[Dict[str, Any]] = []
    if trained_score is None:
        torch.manual_seed(seed)
        s = technique.score(
            entry.hooked(module.eval()), BenchContext(entry=entry, quick=quick, seed=seed, inputs=inputs)
        )
        trained_score = s.normalized
    points.append({"step": 0, "randomized_from": None, "units": 0, "normalized": trained_score})
    reads = _read_point(technique, entry, module)
    for i, (name, copy) in zip(sorted(chosen), cascading_randomization(module, seed=seed, steps=chosen)):
        point: Dict[str, Any] = {"step": i + 1, "randomized_from": name, "units": i + 1}
        if random_control is not None and same_weights(copy, random_control[0]):
            point.update(normalized=random_control[1], reused=True)
            points.append(point)
            continue
        hooked = entry.hooked(copy.eval())
        if reads is not None and torch.equal(_activation(hooked, reads[0], reads[1]), reads[2]):
            point.update(normalized=trained_score, reused=f"unchanged at {reads[0]}")
            points.append(point)
            continue
        try:
            torch.manual_seed(seed)
            ctx = BenchContext(
                entry=entry,
                quick=quick,
                seed=seed,
                randomized=True,
                localization_images=None if quick else CONTROL_IMAGES,
                inputs=inputs,
            )
            s = technique.score(hooked, ctx)
            point.update(score=float(s.score), normalized=s.normalized)
        except Exception as exc:  # one failing step must not cost the curve
            point.update(normalized=None, error=f"{type(exc).__name__}: {exc}")
        points.append(point)
    return points


def _activation(model: HookedVisionModel, hook: str, probe: torch.Tensor) -> torch.Tensor:
    """``model``'s activation at ``hook`` on ``probe`` (no gradient)."""
    with torch.no_grad():
        _, cache = model.run_with_cache(probe, names_filter=[hook], return_cache_object=False)
    return cache[hook]


def _read_point(technique: Any, entry: ZooEntry, module: nn.Module) -> Optional[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``(hook, probe batch, trained activation)`` for a technique that declares ``score_reads``, else None."""
    reads = getattr(technique, "score_reads", None)
    if reads is None:
        return None
    model = entry.hooked(module.eval())
    hook = reads(model, entry)
    g = torch.Generator().manual_seed(0)
    probe = torch.rand(model.dummy_input(batch=4).shape, generator=g)  # any input: only bitwise identity matters
    return hook, probe, _activation(model, hook, probe)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules have the same state-dict keys and bit-identical tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa
    )


def cascade_figure(curves: Dict[str, Sequence[Dict[str, Any]]], title: str) -> Any:
    """A matplotlib figure: one line per technique, normalized score against units randomized from the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ticks: Dict[int, str] = {0: "trained"}
    for tech, pts in curves.items():
        xs = [p["units"] for p in pts if p.get("normalized") is not None]
        ys = [p["normalized"] for p in pts if p.get("normalized") is not None]
        ax.plot(xs, ys, marker="o", label=tech)
        for p in pts:
            if p.get("randomized_from"):
                ticks[p["units"]] = str(p["randomized_from"])
    ax.axhline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(sorted(ticks), [ticks[k] for k in sorted(ticks)], rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("randomized from the top down to (cascading randomization)")
    ax.set_ylabel("normalized score")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig
