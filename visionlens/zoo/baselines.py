"""Baseline maps for the localization cells of the transfer table: what a heatmap must beat.

Every localization technique is scored against maps built on the *same* images and the *same* grid
as its own heatmap (see :func:`visionlens.zoo.techniques_localization.score_heatmap`):

``constant``
    :func:`fit_constant_map`: the best input-independent map, fitted on a separate batch (another seed
    of the same localization batch generator) and then scored on the evaluation images. It is what a
    map that ignores model and image gets from where the truth usually is (e.g. a trigger at a fixed
    corner); a technique that does not beat it has not shown that it looks at the image.
``random``
    :func:`random_map`: seeded uniform noise on the grid (scores chance in expectation).
``edge``
    :func:`edge_map`: Sobel gradient magnitude of the grayscale image, pooled to the grid: an
    input-dependent map that knows nothing about the model (objects and triggers have edges).

All functions are pure (numpy in, numpy out; torch tensors are accepted as input).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["fit_constant_map", "random_map", "sobel_magnitude", "pool_to_grid", "edge_map"]

_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def fit_constant_map(
    trigger_mask: Any,
    object_mask: Any,
    triggered: Any,
    parts: Sequence[str] = ("trigger", "object"),
    tol: float = 1e-9,
    object_within: Any = None,
) -> np.ndarray:
    """The input-independent map ``[h, w]`` that maximizes the planted-localization mass score on a batch.

    ``trigger_mask`` / ``object_mask`` ``[N, h, w]`` (bool, or the fraction of each cell inside the truth,
    already at the heatmap's grid), ``triggered`` ``[N]``; ``parts`` are the parts the evaluation scores
    (``"trigger"`` on triggered images, ``"object"`` on clean ones; only those present in the batch are
    used); ``object_within`` (optional) the region the object part is counted in.

    Why this map: for a constant non-negative map ``c`` with ``p = c / sum(c)``, the mass score of image
    ``i`` is ``<p, m_i>`` (``m_i`` its truth mask), so the score -- the mean over parts of each part's
    mean over images -- is ``<p, q>`` with ``q`` = the mean over parts of that part's mean truth mask
    (per cell: how much the truth covers it). That is linear in ``p`` on the simplex, so it is maximal,
    with value ``max(q)``, for any ``p`` supported on the cells where ``q`` is maximal; the chance
    depends only on the evaluation masks, so the same map maximizes the normalized score. We return the
    indicator of those cells (ties within ``tol`` share the mass). With a counting region the score
    ``<p, m_i> / <p, w_i>`` is not linear in ``p``: then the candidates (the cells where the truth's share
    of the region is highest, the top 1, 2, 4, ... cells of that share, and the share itself) are scored
    on the batch and the best is returned. The map is fitted on a separate batch and scored on the
    evaluation images, so its score is not inflated by choosing the cells on the images it is scored on.
    """
    t = _np(triggered).astype(bool)
    tm, om = _np(trigger_mask).astype(np.float64), _np(object_mask).astype(np.float64)
    groups = []
    if "trigger" in parts and t.any():
        groups.append(tm[t].mean(0))
    if "object" in parts and (~t).any():
        if object_within is not None:
            return _fit_ratio_map(om[~t], np.maximum(_np(object_within).astype(np.float64)[~t], om[~t]))
        groups.append(om[~t].mean(0))
    if not groups:
        raise ValueError("no image of the requested parts to fit on")
    q = np.mean(groups, axis=0)
    return (q >= q.max() - tol).astype(np.float64)


def _fit_ratio_map(m: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The best of a few constant maps for the score ``mean_i <p, m_i> / <p, w_i>`` on masks ``m``, regions ``w``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(w.sum(0) > 0, m.sum(0) / np.where(w.sum(0) > 0, w.sum(0), 1.0), 0.0)
    order = np.argsort(-share.reshape(-1), kind="stable")
    cands = [share.copy(), np.ones_like(share)]
    k = 1
    while k <= order.size:
        c = np.zeros(share.size)
        c[order[:k]] = 1.0
        cands.append(c.reshape(share.shape))
        k *= 2

    def score(c: np.ndarray) -> float:
        inside = (m * c).reshape(len(m), -1).sum(1)
        tot = (w * c).reshape(len(w), -1).sum(1)
        area = m.reshape(len(m), -1).sum(1) / w.reshape(len(w), -1).sum(1)
        return float(np.where(tot > 0, inside / np.where(tot > 0, tot, 1.0), area).mean())

    return max(cands, key=score)


def random_map(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Seeded uniform noise ``[n, h, w]`` in [0, 1): a map that knows nothing (scores chance in expectation)."""
    return np.random.default_rng(seed).random((n, h, w))


def sobel_magnitude(images: Any) -> np.ndarray:
    """Sobel gradient magnitude ``[N, H, W]`` of the grayscale images (``[N, 3, H, W]``, ``[N, 1, H, W]``
    or ``[N, H, W]``; colour is averaged over channels), with edge-replicated borders."""
    x = _np(images).astype(np.float64)
    if x.ndim == 4:
        x = x.mean(1)
    if x.ndim == 2:
        x = x[None]
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    H, W = x.shape[1:]
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            win = p[:, dy : dy + H, dx : dx + W]
            gx += _SOBEL_X[dy, dx] * win
            gy += _SOBEL_X.T[dy, dx] * win
    return np.sqrt(gx * gx + gy * gy)


def pool_to_grid(maps: Any, h: int, w: int) -> np.ndarray:
    """Pixel maps ``[N, H, W]`` -> ``[N, h, w]`` by adaptive average pooling (the mass of each cell, up to a
    constant factor when the cells are equal; torch's adaptive pooling bins when they are not)."""
    m = _np(maps).astype(np.float64)
    if m.shape[-2:] == (h, w):
        return m
    import torch
    from torch.nn import functional as F

    t = torch.as_tensor(m, dtype=torch.float64)[:, None]
    return F.adaptive_avg_pool2d(t, (h, w))[:, 0].numpy()


def edge_map(images: Any, h: int, w: int) -> np.ndarray:
    """The edge-detector baseline ``[N, h, w]``: :func:`sobel_magnitude` pooled to the heatmap's grid."""
    return pool_to_grid(sobel_magnitude(images), h, w)
