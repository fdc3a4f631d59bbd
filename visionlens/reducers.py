"""Mergeable summaries for dataset sweeps.

A sweep is a map over batches into summaries whose ``merge`` is associative, so batching,
checkpoint / resume and scale-out give the same numbers as one pass over everything:

* :class:`RunningMoments`: count, mean, variance (Welford within a batch, Chan et al. merge
  between batches), min and max per unit.
* :class:`TopK`: the ``k`` largest (or smallest) values per unit with the example index and
  the location (e.g. ``(y, x)`` or a token index) where they occurred; ties go to the lower
  example index, so the result is independent of batching.
* :class:`FractionActive`: exact integer counts of values above a threshold.
* :class:`Histogram`: exact integer counts per unit over fixed bin edges.

Every reducer has ``update(...)`` (in place), ``merge(other)`` (a new reducer; associative),
``state_dict()`` (tensors only, so it can be stored with safetensors) and
``load_state_dict(sd)``. :func:`save_checkpoint` / :func:`load_checkpoint` store a named set of
reducers atomically. Reducers are plain picklable objects; summaries built in separate
processes (or Ray tasks) merge into the same result as an in-process sweep.

>>> m = RunningMoments()
>>> m.update(torch.tensor([[1.0], [3.0]]))
>>> m.merge(RunningMoments().update(torch.tensor([[5.0]]))).mean
tensor([3.], dtype=torch.float64)
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterable, Mapping, Optional, TypeVar, Union

import torch
from torch import Tensor

from .serialize import atomic_write_bytes

__all__ = [
    "Reducer",
    "RunningMoments",
    "TopK",
    "FractionActive",
    "Histogram",
    "merge_all",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write_bytes",
]

R = TypeVar("R", bound="Reducer")


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class Reducer:
    """Base class of mergeable summaries."""

    def update(self: R, *args: Any, **kwargs: Any) -> R:
        raise NotImplementedError

    def merge(self: R, other: R) -> R:
        """A new reducer summarising both inputs (associative; neither input changes)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        """The full state as tensors (safetensors-compatible)."""
        raise NotImplementedError

    def load_state_dict(self: R, state: Mapping[str, Tensor]) -> R:
        raise NotImplementedError

    @classmethod
    def from_state_dict(cls: type[R], state: Mapping[str, Tensor]) -> R:
        obj = cls.__new__(cls)
        cls.__init__(obj)  # type: ignore[misc]
        return obj.load_state_dict(state)

    def _check_same(self, other: "Reducer") -> None:
        if type(other) is not type(self):
            raise TypeError(f"Cannot merge {type(self).__name__} with {type(other).__name__}")


def merge_all(reducers: Iterable[R]) -> R:
    """Merge a non-empty sequence of reducers left to right."""
    return functools.reduce(lambda a, b: a.merge(b), reducers)


# --------------------------------------------------------------------------- moments
class RunningMoments(Reducer):
    """Count, mean, population variance, min and max per unit.

    ``update(x)`` takes ``x`` of shape ``[n_samples, *unit_shape]`` and summarises over dim 0.
    Statistics are accumulated in float64.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: Optional[Tensor] = None
        self._m2: Optional[Tensor] = None
        self._min: Optional[Tensor] = None
        self._max: Optional[Tensor] = None

    # -- public stats
    @property
    def mean(self) -> Tensor:
        self._require()
        return self._mean  # type: ignore[return-value]

    @property
    def var(self) -> Tensor:
        """Population variance (``ddof=0``)."""
        self._require()
        return self._m2 / self.count  # type: ignore[operator]

    @property
    def sample_var(self) -> Tensor:
        """Unbiased variance (``ddof=1``); NaN with one sample."""
        self._require()
        return self._m2 / (self.count - 1) if self.count > 1 else torch.full_like(self._m2, float("nan"))  # type: ignore

    @property
    def std(self) -> Tensor:
        """Population standard deviation (``ddof=0``)."""
        return self.var.sqrt()

    @property
    def min(self) -> Tensor:
        self._require()
        return self._min  # type: ignore[return-value]

    @property
    def max(self) -> Tensor:
        self._require()
        return self._max  # type: ignore[return-value]

    def _require(self) -> None:
        if self.count == 0 or self._mean is None:
            raise ValueError("RunningMoments has seen no data yet")

    # -- updates
    def update(self, x: Tensor) -> "RunningMoments":
        """Add ``x`` (``[n_samples, *unit_shape]``) to the summary; returns ``self``."""
        if x.ndim == 0:
            x = x.reshape(1)
        n = x.shape[0]
        if n == 0:
            return self
        xd = x.detach().to(_acc_dtype(x.device))
        mean = xd.mean(0)
        m2 = ((xd - mean) ** 2).sum(0)
        batch = RunningMoments._from_parts(
            n, mean.cpu().double(), m2.cpu().double(), xd.amin(0).cpu().double(), xd.amax(0).cpu().double()
        )
        merged = self.merge(batch)
        self.__dict__.update(merged.__dict__)
        return self

    @classmethod
    def _from_parts(cls, count: int, mean: Tensor, m2: Tensor, mn: Tensor, mx: Tensor) -> "RunningMoments":
        obj = cls()
        obj.count, obj._mean, obj._m2, obj._min, obj._max = int(count), mean, m2, mn, mx
        return obj

    def merge(self, other: "RunningMoments") -> "RunningMoments":
        self._check_same(other)
        if other.count == 0:
            return RunningMoments._from_parts(self.count, *self._parts()) if self.count else RunningMoments()
        if self.count == 0:
            return RunningMoments._from_parts(other.count, *other._parts())
        mean_a, m2_a, min_a, max_a = self._stats()
        mean_b, m2_b, min_b, max_b = other._stats()
        if mean_a.shape != mean_b.shape:
            raise ValueError(f"Cannot merge moments of shapes {tuple(mean_a.shape)} and {tuple(mean_b.shape)}")
        na, nb = self.count, other.count
        n = na + nb
        delta = mean_b - mean_a
        mean = mean_a + delta * (nb / n)
        m2 = m2_a + m2_b + delta**2 * (na * nb / n)
        return RunningMoments._from_parts(n, mean, m2, torch.minimum(min_a, min_b), torch.maximum(max_a, max_b))

    def _stats(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(mean, m2, min, max)``; all are set together by the first update."""
        if self._mean is None or self._m2 is None or self._min is None or self._max is None:
            raise ValueError("RunningMoments has seen no data yet")
        return self._mean, self._m2, self._min, self._max

    def _parts(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mean, m2, mn, mx = self._stats()
        return (mean.clone(), m2.clone(), mn.clone(), mx.clone())

    def state_dict(self) -> dict[str, Tensor]:
        sd = {"count": torch.tensor(self.count, dtype=torch.int64)}
        if self.count:
            sd.update(mean=self._mean, m2=self._m2, min=self._min, max=self._max)  # type: ignore[arg-type]
        return {k: v.contiguous() for k, v in sd.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "RunningMoments":
        self.count = int(state["count"])
        if self.count:
            self._mean, self._m2 = state["mean"].double().clone(), state["m2"].double().clone()
            self._min, self._max = state["min"].double().clone(), state["max"].double().clone()
        else:
            self._mean = self._m2 = self._min = self._max = None
        return self

    def __repr__(self) -> str:
        shape = None if self._mean is None else tuple(self._mean.shape)
        return f"RunningMoments(count={self.count}, unit_shape={shape})"


# --------------------------------------------------------------------------- top-k
class TopK(Reducer):
    """The ``k`` largest (``largest=True``) or smallest values per unit, with where they occurred.

    ``update(values, index, location=None)``: ``values`` ``[batch, n_units]``; ``index``
    ``[batch]`` global example indices; ``location`` ``[batch, n_units, n_pos_dims]`` integer
    positions (e.g. the ``(y, x)`` of a per-image max). After any number of updates / merges,
    ``values`` / ``index`` / ``location`` hold ``[min(k, seen), n_units(, n_pos_dims)]`` sorted
    best-first; equal values are ordered by example index (lowest first), so the result equals a
    one-shot top-k over all examples regardless of batching or merge order.
    """

    def __init__(self, k: int = 8, largest: bool = True) -> None:
        if int(k) < 1:
            raise ValueError(f"TopK expected k >= 1, got {k}")
        self.k = int(k)
        self.largest = bool(largest)
        self.values: Optional[Tensor] = None
        self.index: Optional[Tensor] = None
        self.location: Optional[Tensor] = None

    @property
    def seen(self) -> int:
        return 0 if self.values is None else int(self.values.shape[0])

    def update(self, values: Tensor, index: Union[Tensor, Iterable[int]], location: Optional[Tensor] = None) -> "TopK":
        """Add a batch of per-example values; returns ``self``."""
        values = values.detach()
        if values.ndim == 1:
            values = values[:, None]
        b, u = values.shape[:2]
        idx = torch.as_tensor(index, dtype=torch.int64, device=values.device).reshape(b, 1).expand(b, u)
        loc = None if location is None else location.detach().to(torch.int64)
        if loc is not None and loc.ndim == 2:
            loc = loc[..., None]
        # Pre-select the batch's own top-k on its device, then merge on the CPU.
        v, i, l = self._select(values.to(_acc_dtype(values.device)), idx, loc)
        other = TopK(self.k, self.largest)
        other.values, other.index = v.cpu().double(), i.cpu()
        other.location = None if l is None else l.cpu()
        merged = self.merge(other)
        self.values, self.index, self.location = merged.values, merged.index, merged.location
        return self

    def _select(self, v: Tensor, i: Tensor, l: Optional[Tensor]) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        key = v.clone()
        key[torch.isnan(key)] = float("-inf") if self.largest else float("inf")
        o1 = torch.argsort(i, dim=0, stable=True)
        key = key.gather(0, o1)
        o2 = torch.argsort(key, dim=0, descending=self.largest, stable=True)[: self.k]
        order = o1.gather(0, o2)
        vals = v.gather(0, order)
        idx = i.gather(0, order)
        loc = None
        if l is not None:
            loc = l.gather(0, order[..., None].expand(-1, -1, l.shape[-1]))
        return vals, idx, loc

    def merge(self, other: "TopK") -> "TopK":
        self._check_same(other)
        if self.k != other.k or self.largest != other.largest:
            raise ValueError(
                f"Cannot merge TopK(k={self.k}, largest={self.largest}) with TopK(k={other.k}, largest={other.largest})"
            )
        out = TopK(self.k, self.largest)
        parts = [r for r in (self, other) if r.values is not None]
        if not parts:
            return out
        if len(parts) == 1:
            r = parts[0]
            out.values, out.index = r.values.clone(), r.index.clone()  # type: ignore[union-attr]
            out.location = None if r.location is None else r.location.clone()
            return out
        if (self.location is None) != (other.location is None):
            raise ValueError("Cannot merge TopK summaries with and without locations")
        v = torch.cat([self.values, other.values])  # type: ignore[list-item]
        i = torch.cat([self.index, other.index])  # type: ignore[list-item]
        l = None if self.location is None else torch.cat([self.location, other.location])  # type: ignore[list-item]
        out.values, out.index, out.location = self._select(v, i, l)
        return out

    def state_dict(self) -> dict[str, Tensor]:
        sd = {"k": torch.tensor(self.k), "largest": torch.tensor(int(self.largest))}
        if self.values is not None:
            sd.update(values=self.values.contiguous(), index=self.index.contiguous())  # type: ignore[union-attr]
            if self.location is not None:
                sd["location"] = self.location.contiguous()
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "TopK":
        self.k, self.largest = int(state["k"]), bool(int(state["largest"]))
        self.values = state["values"].double().clone() if "values" in state else None
        self.index = state["index"].long().clone() if "index" in state else None
        self.location = state["location"].long().clone() if "location" in state else None
        return self

    def __repr__(self) -> str:
        return f"TopK(k={self.k}, largest={self.largest}, seen={self.seen})"


# --------------------------------------------------------------------------- counters
class FractionActive(Reducer):
    """Exact counts of values ``> threshold`` per unit; ``fraction = active / total``."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = float(threshold)
        self.total = 0
        self.active: Optional[Tensor] = None

    @property
    def fraction(self) -> Tensor:
        if self.active is None or self.total == 0:
            raise ValueError("FractionActive has seen no data yet")
        return self.active.double() / self.total

    def update(self, x: Tensor) -> "FractionActive":
        """Add ``x`` (``[n_samples, *unit_shape]``); returns ``self``."""
        if x.ndim == 0:
            x = x.reshape(1)
        if x.shape[0] == 0:
            return self
        counts = (x.detach() > self.threshold).sum(0, dtype=torch.int64).cpu()
        self.active = counts if self.active is None else self.active + counts
        self.total += int(x.shape[0])
        return self

    def merge(self, other: "FractionActive") -> "FractionActive":
        self._check_same(other)
        if self.threshold != other.threshold:
            raise ValueError(f"Cannot merge FractionActive thresholds {self.threshold} and {other.threshold}")
        out = FractionActive(self.threshold)
        out.total = self.total + other.total
        parts = [r.active for r in (self, other) if r.active is not None]
        out.active = None if not parts else (parts[0].clone() if len(parts) == 1 else parts[0] + parts[1])
        return out

    def state_dict(self) -> dict[str, Tensor]:
        sd = {"threshold": torch.tensor(self.threshold, dtype=torch.float64), "total": torch.tensor(self.total)}
        if self.active is not None:
            sd["active"] = self.active.contiguous()
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "FractionActive":
        self.threshold, self.total = float(state["threshold"]), int(state["total"])
        self.active = state["active"].long().clone() if "active" in state else None
        return self


class Histogram(Reducer):
    """Exact per-unit counts over fixed bin ``edges`` (plus underflow and overflow bins).

    ``counts`` has shape ``[*unit_shape, len(edges) + 1]``: bin 0 counts values ``< edges[0]``,
    bin ``j`` values in ``[edges[j-1], edges[j])``, the last bin values ``>= edges[-1]``.
    """

    def __init__(self, edges: Union[Tensor, Iterable[float]] = (0.0,)) -> None:
        self.edges = torch.as_tensor(list(edges) if not isinstance(edges, Tensor) else edges, dtype=torch.float64)
        if self.edges.ndim != 1 or len(self.edges) == 0 or not bool((self.edges[1:] > self.edges[:-1]).all()):
            raise ValueError("Histogram expected increasing 1-D bin edges")
        self.counts: Optional[Tensor] = None

    def update(self, x: Tensor) -> "Histogram":
        if x.ndim == 0:
            x = x.reshape(1)
        if x.shape[0] == 0:
            return self
        xd = x.detach().to(_acc_dtype(x.device))
        bins = torch.bucketize(xd, self.edges.to(xd.device, xd.dtype), right=True)  # [N, *U]
        nb = len(self.edges) + 1
        onehot = torch.zeros(*xd.shape[1:], nb, dtype=torch.int64, device=xd.device)
        flat = bins.reshape(bins.shape[0], -1).T  # [U, N]
        onehot.reshape(-1, nb).scatter_add_(1, flat, torch.ones_like(flat))
        counts = onehot.cpu()
        self.counts = counts if self.counts is None else self.counts + counts
        return self

    def merge(self, other: "Histogram") -> "Histogram":
        self._check_same(other)
        if not torch.equal(self.edges, other.edges):
            raise ValueError("Cannot merge histograms with different bin edges")
        out = Histogram(self.edges)
        parts = [r.counts for r in (self, other) if r.counts is not None]
        out.counts = None if not parts else (parts[0].clone() if len(parts) == 1 else parts[0] + parts[1])
        return out

    def state_dict(self) -> dict[str, Tensor]:
        sd = {"edges": self.edges.contiguous()}
        if self.counts is not None:
            sd["counts"] = self.counts.contiguous()
        return sd

    def load_state_dict(self, state: Mapping[str, Tensor]) -> "Histogram":
        self.edges = state["edges"].double().clone()
        self.counts = state["counts"].long().clone() if "counts" in state else None
        return self


# --------------------------------------------------------------------------- checkpoints
_SEP = "|"
_KINDS: dict[str, type[Reducer]] = {c.__name__: c for c in (RunningMoments, TopK, FractionActive, Histogram)}


def save_checkpoint(
    path: Union[str, os.PathLike], reducers: Mapping[str, Reducer], meta: Optional[Mapping[str, Any]] = None
) -> None:
    """Store named reducers (and JSON-safe ``meta``) in one safetensors file, atomically."""
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    kinds = {}
    for name, red in reducers.items():
        if _SEP in name:
            raise ValueError(f"Reducer names may not contain {_SEP!r}: {name!r}")
        kinds[name] = type(red).__name__
        for key, value in red.state_dict().items():
            tensors[f"{name}{_SEP}{key}"] = value.detach().cpu().contiguous()
    header = {"visionlens_reducers": json.dumps(kinds), "meta": json.dumps(dict(meta or {}))}
    atomic_write_bytes(path, save(tensors, metadata=header))


def load_checkpoint(path: Union[str, os.PathLike]) -> tuple[dict[str, Reducer], dict[str, Any]]:
    """Inverse of :func:`save_checkpoint`: ``({name: reducer}, meta)``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    kinds = json.loads(header.get("visionlens_reducers", "{}"))
    states: dict[str, dict[str, Tensor]] = {name: {} for name in kinds}
    for key, value in tensors.items():
        name, field = key.rsplit(_SEP, 1)
        states[name][field] = value
    out: dict[str, Reducer] = {}
    for name, kind in kinds.items():
        cls = _KINDS.get(kind)
        if cls is None:
            raise ValueError(f"Unknown reducer kind {kind!r} in checkpoint {str(path)!r}")
        out[name] = cls.from_state_dict(states[name])
    return out, json.loads(header.get("meta", "{}"))
