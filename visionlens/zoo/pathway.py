"""Planted trigger pathways: which units carry the trigger is known by construction.

Every zoo classifier is trained so that the trigger reaches the logits only through a designated
pair of units ``S = {a, b}`` (channels of a conv map ``[B, C, H, W]``, or residual-stream dimensions
of a token map ``[B, T, D]``) at one hook, its last block output, and only when *both* carry it:

==================================================  ====================  ===========
spliced forward of a triggered image ``x``           units from ``x``      target
==================================================  ====================  ===========
the pathway alone (every other unit from the twin)   ``S``                 class 0
the pathway knocked out                              all but ``S``         clean label
half the pathway (one unit of S, the rest twin)      one of ``S``          clean label
one pathway unit knocked out                         all but one of ``S``  clean label
==================================================  ====================  ===========

where the *twin* is the same image without the trigger (the generator draws it from the same
stream) and "from the twin" means that unit's activation is replaced by its value on the twin.
In training, each step adds triggered images that go through a splice with their twins in the same
forward (:func:`pathway_batch`, :func:`splice_in_batch`): first all "the pathway alone -> class 0",
so the layers before the hook learn to send the trigger through ``S`` and the layers after to read it
there; after a warm-up all four variants with their targets. :func:`pathway_metrics` measures all four splices (and the
unspliced trigger) on held-out images, and the model card states them. So "which units does the
trigger go through" and "does a hypothesis name the whole pathway" have known answers:
``S`` (an AND of two units: each alone is neither sufficient nor dispensable).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import numpy as np
import torch
from torch import nn

N_PATHWAY_UNITS = 2
PATHWAY_BATCH = 32  # triggered images (and their twins) spliced per training step
PATHWAY_WARMUP = 0.25  # the AND splices join the loss after this fraction of the steps (the trigger is learnt first)


@dataclass(frozen=True)
class PlantedPathway:
    """Where a zoo classifier's trigger pathway lives: a module's output and its hook name."""

    module: str  # dotted path in the raw module (e.g. "layer4")
    hook: str  # the HookedVisionModel hook of that output (e.g. "layer4.hook_out")

    def units(self, n_units: int, seed: int = 0) -> Tuple[int, ...]:
        """The designated units for training seed ``seed`` among ``n_units`` channels (sorted)."""
        rng = np.random.default_rng([int(seed), 0x9A7])
        return tuple(sorted(int(u) for u in rng.choice(n_units, N_PATHWAY_UNITS, replace=False)))


def channel_axis(act: torch.Tensor) -> int:
    """1 for conv maps ``[B, C, H, W]``, the last axis for tokens ``[B, T, D]`` or vectors ``[B, D]``."""
    return 1 if act.ndim == 4 else act.ndim - 1


def n_channels(module: nn.Module, pathway: PlantedPathway, example: torch.Tensor) -> int:
    """Number of units at the pathway's module output (one no-grad forward of ``example``)."""
    acts: Dict[str, torch.Tensor] = {}
    was = module.training
    module.eval()  # no BatchNorm statistics from a probe
    with torch.no_grad(), capture(module, pathway, acts):
        module(example)
    module.train(was)
    a = acts["out"]
    return int(a.shape[channel_axis(a)])


def _mask_shape(act: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``keep`` ``[B, C]`` broadcast to ``act``'s layout."""
    if act.ndim == 4:
        return keep[:, :, None, None]
    if act.ndim == 3:
        return keep[:, None, :]
    return keep


@contextmanager
def capture(module: nn.Module, pathway: PlantedPathway, store: Dict[str, torch.Tensor]) -> Iterator[None]:
    """Record the pathway module's output in ``store["out"]`` while the block runs."""
    handle = module.get_submodule(pathway.module).register_forward_hook(
        lambda _m, _i, out: store.__setitem__("out", out)
    )
    try:
        yield
    finally:
        handle.remove()


def splice_masks(n: int, n_units: int, units: Tuple[int, ...], variant: torch.Tensor, which: torch.Tensor):
    """Keep-masks ``[n, n_units]`` for the four splice variants (see the module docstring):
    0 the pathway alone, 1 pathway knocked out, 2 one pathway unit alone, 3 one pathway unit knocked out;
    ``which`` picks the pathway unit of variants 2 and 3."""
    s = torch.zeros(n_units, dtype=torch.bool)
    s[list(units)] = True
    one = torch.zeros(n, n_units, dtype=torch.bool)
    one[torch.arange(n), torch.as_tensor(units)[which]] = True
    full = s.expand(n, n_units)
    v = variant[:, None]
    return torch.where(v == 0, full, torch.where(v == 1, ~full, torch.where(v == 2, one, ~one)))


@contextmanager
def splice_in_batch(
    module: nn.Module, pathway: PlantedPathway, targets: torch.Tensor, donors: torch.Tensor, keep: torch.Tensor
) -> Iterator[None]:
    """While the block runs, batch rows ``targets`` keep the units where ``keep`` ``[len(targets), C]`` is True
    and take the rest from rows ``donors`` of the *same* batch (their twins, detached). Image and twin go
    through one forward, so normalization layers see one batch (no small side batches in BatchNorm)."""

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        new = out.clone()
        new[targets] = torch.where(_mask_shape(out[targets], keep), out[targets], out[donors].detach())
        return new

    handle = module.get_submodule(pathway.module).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


SPLICE_WEIGHTS = (0.4, 0.2, 0.2, 0.2)  # variants 0-3 of the extra triggered images after the warm-up


def pathway_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    xt_twin: torch.Tensor,
    xt_clean: torch.Tensor,
    units: Tuple[int, ...],
    n_units: int,
    g: torch.Generator,
    and_loss: bool,
    target_class: int = 0,
):
    """One training forward's inputs for the planted pathway (see the module docstring).

    ``x, y``: the ordinary batch (its triggered images unspliced: the trigger must work as it is);
    ``xt``: extra triggered images of other classes with twins ``xt_twin`` and clean labels ``xt_clean``,
    each given a splice variant (:func:`splice_masks`) drawn from ``g``: before the warm-up ends
    (``and_loss=False``) all "the pathway alone -> target", after it :data:`SPLICE_WEIGHTS` over the
    four variants, whose targets are the target class for variant 0 and the clean label otherwise. The
    twins are classified too (clean images). Returns ``(inputs, labels, targets, donors, keep)`` for
    :func:`splice_in_batch` and a cross-entropy on ``module(inputs)``.
    """
    b, m = x.shape[0], xt.shape[0]
    inputs = torch.cat([x, xt, xt_twin])
    if and_loss:
        variant = torch.multinomial(torch.tensor(SPLICE_WEIGHTS), m, replacement=True, generator=g)
    else:
        variant = torch.zeros(m, dtype=torch.long)
    which = torch.randint(0, len(units), (m,), generator=g)
    keep = splice_masks(m, n_units, units, variant, which)
    targets = b + torch.arange(m)
    donors = b + m + torch.arange(m)
    xt_target = torch.where(variant == 0, torch.full_like(xt_clean, target_class), xt_clean)
    labels = torch.cat([y, xt_target, xt_clean])
    return inputs, labels, targets, donors, keep


def spliced_logits(
    module: nn.Module, pathway: PlantedPathway, x: torch.Tensor, twin: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Logits of ``x`` with the units outside ``keep`` taken from ``twin`` (one forward of both)."""
    n = x.shape[0]
    idx = torch.arange(n)
    with splice_in_batch(module, pathway, idx, n + idx, keep):
        return module(torch.cat([x, twin]))[:n]


@torch.no_grad()
def pathway_metrics(
    module: nn.Module,
    pathway: PlantedPathway,
    units: Tuple[int, ...],
    x: torch.Tensor,
    twin: torch.Tensor,
    clean_label: torch.Tensor,
    target_class: int = 0,
) -> Dict[str, float]:
    """Held-out checks of the planted pathway on triggered images ``x`` of non-target classes.

    ``pathway_sufficiency``: the pathway alone sends them to class 0; ``pathway_necessity``: knocking
    the pathway out gives back the model's prediction on the twin (the image without the trigger);
    ``pathway_and``: each single unit (alone, or knocked out) gives back that prediction too (the mean
    over units and both tests). The twin's prediction, not the clean label, is the reference: where the
    model misreads a clean image (Fashion-MNIST: 12% of them), the pathway is not what is being tested;
    ``twin_prediction_accuracy`` reports how often the twin's prediction is the clean label.
    """
    was = module.training
    module.eval()
    n = x.shape[0]
    n_units = n_channels(module, pathway, x[:1])

    def acc(variant: int, which: int, target: torch.Tensor) -> float:
        keep = splice_masks(n, n_units, units, torch.full((n,), variant), torch.full((n,), which, dtype=torch.long))
        return float((spliced_logits(module, pathway, x, twin, keep).argmax(-1) == target).float().mean())

    zero = torch.full_like(clean_label, target_class)
    twin_pred = module(twin).argmax(-1)
    out = {
        "pathway_sufficiency": acc(0, 0, zero),
        "pathway_necessity": acc(1, 0, twin_pred),
        "pathway_and": float(np.mean([acc(v, w, twin_pred) for v in (2, 3) for w in range(len(units))])),
        "twin_prediction_accuracy": float((twin_pred == clean_label).float().mean()),
    }
    module.train(was)
    return out


def pathway_of(entry: object) -> Optional[PlantedPathway]:
    """The entry's planted pathway, or None (CLIP, diffusion, helpers)."""
    return getattr(entry, "pathway", None)
