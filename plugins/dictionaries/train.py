"""``train_dictionary``: activations of a hook -> an ``overcomplete`` dictionary, measured and carded.

The glue only: :class:`~.source.ActivationSource` reads the vectors; ``overcomplete`` builds the model and
trains it (``overcomplete.sae.train_sae`` with its ``top_k_auxiliary_loss`` / ``mse_l1`` losses and
``CosineScheduler``; ``NMF.fit`` / ``SemiNMF.fit`` for NMF) and measures it (``overcomplete.metrics``).
What visionlens adds: input standardization, a held-out split, the metrics a card needs (:func:`evaluate`)
and the downstream loss with the reconstruction spliced into the model (:func:`downstream`).
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from ...data import as_images
from ...validation import VisionLensError
from .dictionary import KINDS, SparseDictionary, build_module, import_overcomplete
from .source import ActivationSource, Forward, default_forward
from .splice import spliced

if TYPE_CHECKING:
    from ...hooked_model import HookedVisionModel

__all__ = ["train_dictionary", "fit_dictionary", "evaluate", "downstream", "default_epochs"]

AUX_PENALTY = 1.0 / 32  # TopK auxiliary loss weight (Gao et al. 2024 use 1/32)
JUMP_L1 = 1e-3  # JumpReLU: L1 weight per feature value (overcomplete has no L0 loss for it)


def default_epochs(n_vectors: int, batch_size: int, steps: int = 1500) -> int:
    """Epochs for about ``steps`` optimizer steps (at least 2, at most 50)."""
    return int(min(50, max(2, math.ceil(steps * batch_size / max(n_vectors, 1)))))


def _standardization(x: Tensor, centre: bool) -> tuple[Tensor, Tensor]:
    mean = x.mean(0) if centre else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    scale = ((x - mean).pow(2).sum(1).mean() / x.shape[1]).sqrt().clamp_min(1e-8)
    return mean, scale


def fit_dictionary(
    x: Tensor,
    kind: str = "topk",
    size: int = 256,
    top_k: Optional[int] = None,
    *,
    epochs: Optional[int] = None,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    centre: bool = True,
    verbose: bool = False,
) -> tuple[SparseDictionary, Dict[str, Any]]:
    """Train a dictionary on vectors ``x [N, D]`` held in memory; returns it (frozen) and the training log.

    Inputs are divided by one scale (mean squared norm per unit = 1); ``centre`` also subtracts the per-unit
    mean (a fixed decoder bias: ``overcomplete``'s decoders have none). Measured on the zoo ResNet's post-ReLU
    map, centring gave better planted-factor features (mean AUROC 0.958 vs 0.924), so it is on by default."""
    if kind not in KINDS:
        raise VisionLensError(f"Unknown dictionary kind {kind!r}; expected one of {', '.join(KINDS)}.")
    if x.ndim != 2 or len(x) < 2:
        raise VisionLensError(f"Expected activation vectors [N >= 2, D], got {tuple(x.shape)}.")
    if size < 1:
        raise VisionLensError(f"size must be >= 1, got {size}.")
    import_overcomplete()
    from overcomplete.sae import CosineScheduler, train_sae
    from overcomplete.sae.losses import mse_l1, top_k_auxiliary_loss

    torch.manual_seed(seed)
    d_in = int(x.shape[1])
    k = int(top_k or max(1, min(size // 16, 32)))
    signed = bool((x < 0).any())
    mean, scale = _standardization(x, centre=centre and kind != "nmf")
    z = (x - mean) / scale
    points = z[torch.randperm(len(z))[: max(size, min(len(z), 2048))]] if kind == "archetypal" else None
    module = build_module(kind, d_in, size, k, points=points, signed=signed, batch_size=batch_size)
    d = SparseDictionary(module, kind, d_in, size, k)
    d.input_mean.copy_(mean)
    d.input_scale.copy_(scale)
    log: Dict[str, Any] = {
        "kind": kind,
        "n_vectors": int(len(x)),
        "batch_size": batch_size,
        "seed": seed,
        "centred": bool(centre and kind != "nmf"),
    }
    t0 = time.perf_counter()
    if kind == "nmf":
        iters = int(epochs or 200)
        module.fit(z, max_iter=iters)
        log.update(solver=type(module).__name__, max_iter=iters, signed_inputs=signed)
        seen = len(z) * iters
    else:
        n_epochs = int(epochs or default_epochs(len(z), batch_size))
        g = torch.Generator().manual_seed(seed)
        # whole batches by one index per step (a per-item DataLoader spends most of a CPU step collating rows)
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(range(len(z)), generator=g), batch_size, drop_last=len(z) > batch_size
        )
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(z), batch_size=None, sampler=sampler)
        steps = n_epochs * len(loader)
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        sched = CosineScheduler(
            opt, base_value=lr, final_value=lr / 10, total_iters=steps, warmup_iters=min(50, steps // 10)
        )
        if kind == "jumprelu":
            criterion = partial(mse_l1, penalty=JUMP_L1 / batch_size)  # overcomplete's l1 sums over the batch
        else:
            criterion = partial(top_k_auxiliary_loss, penalty=AUX_PENALTY)
        out = io.StringIO()
        with contextlib.redirect_stdout(out) if not verbose else contextlib.nullcontext():
            logs = train_sae(module, loader, criterion, opt, scheduler=sched, nb_epochs=n_epochs, monitoring=1)
        log.update(
            epochs=n_epochs,
            steps=steps,
            lr=lr,
            final_loss=float(logs["avg_loss"][-1]),
            train_r2_overcomplete=float(logs["r2"][-1]),
            train_dead=float(logs["dead_features"][-1]),
        )
        seen = steps * batch_size
    secs = time.perf_counter() - t0
    log.update(seconds=round(secs, 3), vectors_per_second=round(seen / max(secs, 1e-9), 1))
    if kind == "batchtopk":
        d.threshold.copy_(torch.as_tensor(module.running_threshold).detach())
    return d.freeze(), log


@torch.no_grad()
def evaluate(d: SparseDictionary, x: Tensor, batch: int = 4096) -> Dict[str, float]:
    """Reconstruction and sparsity on vectors ``x``: ``r2`` (variance explained, per-unit centred), ``r2_overcomplete``
    (``overcomplete.metrics.r2_score``: variance around the global mean), ``l0`` (active features per vector),
    ``dead_fraction`` (features never active on ``x``), ``rel_mse``."""
    import_overcomplete()
    from overcomplete.metrics import dead_codes, r2_score

    xs, hats, active = [], [], torch.zeros(d.n_features, dtype=torch.bool)
    l0 = 0.0
    for i in range(0, len(x), batch):
        v = x[i : i + batch]
        codes = d.features(v)
        hats.append(d.decode(codes))
        xs.append(v)
        l0 += float((codes != 0).float().sum())
        active |= codes.abs().sum(0) > 0
    xx, hh = torch.cat(xs), torch.cat(hats)
    res = (xx - hh).pow(2).sum()
    tot = (xx - xx.mean(0)).pow(2).sum().clamp_min(1e-12)
    dead = float(dead_codes(active.float()[None]).mean())
    return {
        "r2": round(float(1 - res / tot), 5),
        "r2_overcomplete": round(float(r2_score(xx, hh)), 5),
        "l0": round(l0 / len(xx), 3),
        "dead_fraction": round(dead, 4),
        "rel_mse": round(float(res / xx.pow(2).sum().clamp_min(1e-12)), 5),
    }


def _outputs(model: HookedVisionModel, x: Tensor, forward: Forward, t: Optional[int]) -> Tensor:
    args, kwargs = forward(model, x, t)
    out = model(*args, **kwargs)
    out = out.sample if hasattr(out, "sample") else out
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def downstream(
    model: HookedVisionModel,
    d: SparseDictionary,
    hook: str,
    images: Any,
    labels: Optional[Tensor] = None,
    *,
    forward: Optional[Forward] = None,
    timesteps: Optional[Sequence[int]] = None,
    batch_size: int = 128,
    max_images: int = 512,
) -> Dict[str, float]:
    """The model's loss with the reconstruction spliced in (no error term) against without it.

    Logit outputs: ``kl`` (clean || spliced, mean per image), with ``labels`` also ``loss_clean`` /
    ``loss_spliced`` (cross-entropy) and ``accuracy_clean`` / ``accuracy_spliced`` / ``accuracy_kept``.
    Other outputs (UNet noise predictions): ``rel_mse_output`` = ``|out_spliced - out|^2 / |out|^2``."""
    forward = forward or default_forward(model)
    src = as_images(images)
    clean, spl, ys = [], [], []
    ts = list(timesteps) if timesteps else [None]
    for i, x in src.batches(model, batch_size, limit=max_images):
        for t in ts:
            clean.append(_outputs(model, x, forward, t).float().cpu())
            if labels is not None:
                ys.append(labels[i : i + x.shape[0]])
    with spliced(model, d, hook, use_error=False):
        for _, x in src.batches(model, batch_size, limit=max_images):
            for t in ts:
                spl.append(_outputs(model, x, forward, t).float().cpu())
    a, b = torch.cat(clean), torch.cat(spl)
    if a.ndim != 2:
        return {"rel_mse_output": round(float((b - a).pow(2).sum() / a.pow(2).sum().clamp_min(1e-12)), 5)}
    out = {
        "kl": round(float(F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="batchmean")), 5)
    }
    if ys:
        y = torch.cat(ys).long()
        acc_c = float((a.argmax(-1) == y).float().mean())
        acc_s = float((b.argmax(-1) == y).float().mean())
        out.update(
            loss_clean=round(float(F.cross_entropy(a, y)), 5),
            loss_spliced=round(float(F.cross_entropy(b, y)), 5),
            accuracy_clean=round(acc_c, 4),
            accuracy_spliced=round(acc_s, 4),
            accuracy_kept=round(acc_s / max(acc_c, 1e-9), 4),
        )
    return out


def train_dictionary(
    model: HookedVisionModel,
    hook: str,
    images: Any,
    kind: str = "topk",
    size: int = 256,
    *,
    top_k: Optional[int] = None,
    epochs: Optional[int] = None,
    batch_size: int = 256,
    lr: float = 3e-3,
    max_vectors: int = 200_000,
    positions: Optional[int] = None,
    timesteps: Optional[Sequence[int]] = None,
    forward: Optional[Forward] = None,
    eval_images: Any = None,
    eval_labels: Optional[Tensor] = None,
    image_batch_size: int = 64,
    seed: int = 0,
    model_spec: Optional[str] = None,
    data_card: Optional[Dict[str, Any]] = None,
    out: Union[str, None] = None,
    verbose: bool = False,
) -> SparseDictionary:
    """Train a ``kind`` dictionary of ``size`` features on ``hook``'s activations over ``images``.

    Reads at most ``max_vectors`` vectors (``positions`` per image, all by default; UNets at each of
    ``timesteps``), trains on 90 % and measures on the rest (or on ``eval_images``), then measures the model
    with the reconstruction spliced in (on ``eval_images`` and ``eval_labels`` when given, else on the first
    training images). The card holds model, hook, data, kind, sizes, metrics and the training log; with
    ``out`` the dictionary is saved there (``.safetensors`` + ``.json``)."""
    hook = model.resolve_hook(hook)
    forward = forward or default_forward(model)
    src = ActivationSource(
        model,
        hook,
        images,
        batch_size=image_batch_size,
        positions=positions,
        timesteps=timesteps,
        forward=forward,
        seed=seed,
    )
    t0 = time.perf_counter()
    x = src.collect(max_vectors)
    read_s = time.perf_counter() - t0
    if eval_images is not None:
        ev = ActivationSource(
            model,
            hook,
            eval_images,
            batch_size=image_batch_size,
            positions=positions,
            timesteps=timesteps,
            forward=forward,
            seed=seed + 1,
        ).collect(max(len(x) // 9, 256))
        train_x = x
    else:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_ev = max(1, len(x) // 10)
        ev, train_x = x[perm[:n_ev]], x[perm[n_ev:]]
    d, log = fit_dictionary(
        train_x, kind, size, top_k, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, verbose=verbose
    )
    log.update(read_seconds=round(read_s, 3), read_vectors_per_second=round(len(x) / max(read_s, 1e-9), 1))
    metrics = evaluate(d, ev)
    ds_images = eval_images if eval_images is not None else images
    ds_labels = eval_labels if eval_images is not None else None
    metrics.update(downstream(model, d, hook, ds_images, ds_labels, forward=forward, timesteps=timesteps))
    d.card.update(
        model=model_spec or f"{model.cfg.architecture} ({model.cfg.adapter})",
        hook=hook,
        feature_hook=f"{hook}.hook_sae_acts",
        layout=src.layout,
        position_shape=list(src.pos_shape or ()),
        timesteps=list(timesteps) if timesteps else None,
        data=data_card or {"images": repr(src.images)[:200], "positions_per_image": positions},
        metrics=metrics,
        training={**log, "overcomplete": import_overcomplete().__version__, "n_eval_vectors": int(len(ev))},
    )
    if out:
        d.save(out)
    return d
