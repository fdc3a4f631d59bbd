"""Causal scrubbing (Chan et al. 2022): test a hypothesis by behaviour-preserving resampling ablations.

A **hypothesis** is a tree of :class:`Node` objects mapping parts of the model's hook graph onto an
interpretation graph. Each node names

* a ``hook`` (``None`` for the root = the model output) and optionally a part of its activation:
  ``channels`` (conv channel axis / last axis of token activations), ``heads`` (per-head hooks
  ``[B, pos, head, d]`` or patterns ``[B, head, q, k]``), ``positions`` (token indices, flat
  ``y * W + x`` of a conv map, or query positions of a pattern) and ``region``
  (``(y0, y1, x0, x1)`` of a conv map);
* a ``feature``: which inputs are equivalent for this node. ``"identity"`` (only the input
  itself), ``"any"`` (all inputs), the name of a factor (``factors={"red": [...]}``; ``"label"``
  means the labels), a sequence with one value per input, or a callable ``f(inputs) -> values``;
* ``parents``: the upstream nodes it is computed from.

Treeified evaluation (what :func:`causal_scrub` computes, for every reference input ``x``):

* the root's activation is the model output on a **random** input in which every parent's
  claimed part is replaced by that parent's treeified value;
* a node ``n`` evaluated on input ``x_n``: each parent ``p`` gets its own input ``x_p`` drawn from
  the inputs with ``feature_p(x_p) == feature_p(x_n)``, and is evaluated recursively on it; ``n``
  itself is then computed by running the model on a fresh random input ``r_n`` and splicing,
  at each parent's hook, the parent's claimed part (everything else at that hook keeps its value
  on ``r_n``, taken from a clean run so earlier splices do not leak into it);
* a leaf (no parents) is computed by running the model on ``x_n`` itself.

So everything a hypothesis does not claim (other channels / heads / positions of a hook, hooks
on the path not in the hypothesis that feed the node around its parents) comes from independent
random inputs. Computation *between* a parent hook and its node through unnamed hooks is treated
as part of that edge; name those hooks in the hypothesis to scrub them too.

Reported: the loss on the model, the scrubbed model and the fully randomized model (the model on
random inputs), the loss recovered ``(L_random - L_scrubbed) / (L_random - L_model)`` with a
bootstrap interval over reference inputs, and the per-example losses, because a good average can
hide examples the hypothesis makes worse cancelling others it makes better (Scheurer et al. 2023).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .validation import VisionLensError

if TYPE_CHECKING:
    from .hooked_model import HookedVisionModel

__all__ = [
    "Node",
    "parse_hypothesis",
    "causal_scrub",
    "ScrubReport",
    "loss_recovered",
    "activation_mask",
    "FeatureSpec",
]

FeatureSpec = Union[str, Sequence[Any], Tensor, Callable[[Tensor], Any], None]
_PER_HEAD = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")
_PATTERN = ("hook_pattern", "hook_attn_scores")


@dataclass
class Node:
    """One node of a causal-scrubbing hypothesis (see the module docstring)."""

    hook: Optional[str] = None
    feature: FeatureSpec = "identity"
    parents: list["Node"] = field(default_factory=list)
    channels: Optional[list[int]] = None
    heads: Optional[list[int]] = None
    positions: Optional[list[int]] = None
    region: Optional[tuple[int, int, int, int]] = None
    name: Optional[str] = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [self.hook or "output"]
        for key in ("channels", "heads", "positions", "region"):
            v = getattr(self, key)
            if v is not None:
                parts.append(f"{key}={list(v)}")
        return " ".join(parts)

    def walk(self) -> list["Node"]:
        out = [self]
        for p in self.parents:
            out.extend(p.walk())
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "hook": self.hook,
            "feature": self.feature if isinstance(self.feature, str) else "<custom>",
        }
        for key in ("channels", "heads", "positions", "region", "name"):
            v = getattr(self, key)
            if v is not None:
                d[key] = list(v) if isinstance(v, (list, tuple)) else v
        if self.parents:
            d["parents"] = [p.to_dict() for p in self.parents]
        return d


_KEYS = {"hook", "feature", "parents", "channels", "heads", "positions", "region", "name"}


def parse_hypothesis(spec: Any) -> Node:
    """A :class:`Node` from a Node, a dict (``{"hook", "feature", "parents", ...}``), a JSON string or a JSON file."""
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VisionLensError(
                f"causal scrubbing: expected a hypothesis as JSON (or a JSON file), got {text[:80]!r}: {exc}"
            ) from None
    if not isinstance(spec, Mapping):
        raise VisionLensError(
            f"causal scrubbing: expected a hypothesis node (dict with 'hook', 'feature', 'parents'), "
            f"got {type(spec).__name__}."
        )
    unknown = set(spec) - _KEYS
    if unknown:
        raise VisionLensError(
            f"causal scrubbing: unknown hypothesis keys {sorted(unknown)}; expected some of {sorted(_KEYS)}."
        )
    region = spec.get("region")
    box: Optional[tuple[int, int, int, int]] = None
    if region is not None:
        r = tuple(int(v) for v in region)
        if len(r) != 4:
            raise VisionLensError(f"causal scrubbing: region must be (y0, y1, x0, x1), got {region!r}.")
        box = (r[0], r[1], r[2], r[3])
    return Node(
        hook=spec.get("hook"),
        feature=spec.get("feature", "identity"),
        parents=[parse_hypothesis(p) for p in spec.get("parents", [])],
        channels=_intlist(spec.get("channels")),
        heads=_intlist(spec.get("heads")),
        positions=_intlist(spec.get("positions")),
        region=box,
        name=spec.get("name"),
    )


def _intlist(v: Any) -> Optional[list[int]]:
    if v is None:
        return None
    if isinstance(v, int):
        return [v]
    return [int(i) for i in v]


# ----------------------------------------------------------------------------- masks
def activation_mask(node: Node, shape: Sequence[int]) -> Optional[Tensor]:
    """Boolean mask of the node's claimed part, shape ``[1, *shape[1:]]`` (``None`` = the whole tensor)."""
    hook = node.hook or ""
    nd = len(shape)
    mask = torch.ones(1, *shape[1:], dtype=torch.bool)
    any_sel = False

    def sel(dim: int, idx: Sequence[int], what: str) -> None:
        nonlocal mask, any_sel
        if dim >= nd:
            raise VisionLensError(
                f"causal scrubbing: node {node.label!r} selects {what}, but {hook} has shape {tuple(shape)}."
            )
        size = shape[dim]
        bad = [i for i in idx if not -size <= i < size]
        if bad:
            raise VisionLensError(
                f"causal scrubbing: node {node.label!r}: {what} {bad} out of range for axis of size "
                f"{size} in {hook} {tuple(shape)}."
            )
        m = torch.zeros(size, dtype=torch.bool)
        m[list(idx)] = True
        view = [1] * nd
        view[dim] = size
        mask = mask & m.view(view)
        any_sel = True

    per_head = hook.endswith(_PER_HEAD) and nd == 4
    pattern = hook.endswith(_PATTERN) and nd == 4
    conv = nd == 4 and not per_head and not pattern
    if node.channels is not None:
        sel(1 if conv else nd - 1, node.channels, "channels")
    if node.heads is not None:
        if not (per_head or pattern):
            raise VisionLensError(
                f"causal scrubbing: node {node.label!r} selects heads, but {hook} is not a per-head "
                f"hook (hook_q/k/v/z/result [B, pos, head, d] or hook_pattern [B, head, q, k])."
            )
        sel(2 if per_head else 1, node.heads, "heads")
    if node.positions is not None:
        if conv:
            h, w = shape[2], shape[3]
            flat = torch.zeros(h * w, dtype=torch.bool)
            bad = [p for p in node.positions if not 0 <= p < h * w]
            if bad:
                raise VisionLensError(
                    f"causal scrubbing: node {node.label!r}: positions {bad} out of range for a "
                    f"{h}x{w} map (flat y * W + x)."
                )
            flat[list(node.positions)] = True
            mask = mask & flat.view(1, 1, h, w)
            any_sel = True
        else:
            sel(2 if pattern else 1, node.positions, "positions")
    if node.region is not None:
        if not conv:
            raise VisionLensError(
                f"causal scrubbing: node {node.label!r} selects a region, which needs a conv map "
                f"[B, C, H, W]; {hook} has shape {tuple(shape)} (use positions for tokens)."
            )
        y0, y1, x0, x1 = node.region
        m = torch.zeros(shape[2], shape[3], dtype=torch.bool)
        m[y0:y1, x0:x1] = True
        if not m.any():
            raise VisionLensError(
                f"causal scrubbing: node {node.label!r}: region {node.region} is empty in a {shape[2]}x{shape[3]} map."
            )
        mask = mask & m.view(1, 1, shape[2], shape[3])
        any_sel = True
    return mask if any_sel else None


# ----------------------------------------------------------------------------- features
class _Features:
    """Feature values of every input, grouped into equivalence classes for sampling."""

    def __init__(self, inputs: Tensor, factors: Mapping[str, Any], labels: Optional[Tensor]):
        self.inputs = inputs
        self.n = inputs.shape[0]
        self.factors = dict(factors or {})
        if labels is not None and "label" not in self.factors:
            self.factors["label"] = labels
        self._groups: dict[int, Optional[tuple[Tensor, list[Tensor]]]] = {}
        self._keep: list[Any] = []

    def _values(self, spec: FeatureSpec) -> Optional[list[Any]]:
        if spec is None or spec == "any":
            return None
        if isinstance(spec, str):
            if spec == "identity":
                return list(range(self.n))
            if spec not in self.factors:
                raise VisionLensError(
                    f"causal scrubbing: unknown feature {spec!r}; known: identity, any, "
                    f"{', '.join(sorted(self.factors)) or '(no factors or labels given)'}."
                )
            spec = self.factors[spec]
        values: Any = spec
        if callable(values):
            with torch.no_grad():
                values = values(self.inputs)
        vals = values.tolist() if isinstance(values, Tensor) else list(values)
        if len(vals) != self.n:
            raise VisionLensError(f"causal scrubbing: a feature has {len(vals)} values for {self.n} inputs.")
        return [tuple(v) if isinstance(v, list) else v for v in vals]

    def groups(self, spec: FeatureSpec) -> Optional[tuple[Tensor, list[Tensor]]]:
        key = id(spec)
        if key not in self._groups:
            vals = self._values(spec)
            if vals is None:
                self._groups[key] = None
            else:
                ids: dict[Any, int] = {}
                cls = torch.tensor([ids.setdefault(v, len(ids)) for v in vals])
                members = [torch.nonzero(cls == c).flatten() for c in range(len(ids))]
                self._groups[key] = (cls, members)
            self._keep.append(spec)
        return self._groups[key]

    def sample_agreeing(self, spec: FeatureSpec, idx: Tensor, g: torch.Generator) -> Tensor:
        """For each input index in ``idx``, a random index with the same feature value."""
        grp = self.groups(spec)
        if grp is None:
            return torch.randint(0, self.n, idx.shape, generator=g)
        cls, members = grp
        out = torch.empty_like(idx)
        c = cls[idx]
        for k in c.unique().tolist():
            rows = torch.nonzero(c == k).flatten()
            pool = members[k]
            out[rows] = pool[torch.randint(0, len(pool), (len(rows),), generator=g)]
        return out


# ----------------------------------------------------------------------------- engine
class _Scrubber:
    def __init__(self, model: HookedVisionModel, inputs: Tensor, feats: _Features, g: torch.Generator):
        self.model = model
        self.inputs = inputs
        self.feats = feats
        self.g = g
        self.forwards = 0

    def _rand(self, m: int) -> Tensor:
        return torch.randint(0, self.feats.n, (m,), generator=self.g)

    def run_plain(self, idx: Tensor, capture: Optional[str]) -> Tensor:
        self.forwards += 1
        x = self.inputs[idx]
        if capture is None:
            return self.model(x)
        _, cache = self.model.run_with_cache(x, names_filter=[capture], return_cache_object=False)
        return cache[capture]

    def evaluate(self, node: Node, idx: Tensor) -> Tensor:
        """The node's treeified activation (full hook tensor; only its mask is meaningful) for inputs ``idx``."""
        if not node.parents:
            return self.run_plain(idx, node.hook)
        splices: dict[str, list[tuple[Optional[Tensor], Tensor]]] = {}
        for p in node.parents:
            if p.hook is None:
                raise VisionLensError("causal scrubbing: only the root node may have hook=None (the model output).")
            x_p = self.feats.sample_agreeing(p.feature, idx, self.g)
            val = self.evaluate(p, x_p)
            splices.setdefault(p.hook, []).append((activation_mask(p, val.shape), val))
        r = self._rand(len(idx))
        x_r = self.inputs[r]
        hooks = list(splices)
        self.forwards += 1
        _, base = self.model.run_with_cache(x_r, names_filter=hooks, return_cache_object=False)

        def make(h: str) -> Callable:
            def fn(act: Tensor, hook: Any) -> Tensor:
                out = base[h].to(act.dtype)
                for mask, val in splices[h]:
                    out = (
                        val.to(act.dtype) if mask is None else torch.where(mask.to(act.device), val.to(act.dtype), out)
                    )
                return out

            return fn

        self.forwards += 1
        fwd = [(h, make(h)) for h in hooks]
        if node.hook is None:
            return self.model.run_with_hooks(x_r, fwd_hooks=fwd)
        captured: dict[str, Tensor] = {}

        def grab(act: Tensor, hook: Any) -> None:
            captured["v"] = act.detach()

        with self.model.hooks(fwd_hooks=fwd + [(node.hook, grab)]):
            self.model(x_r)
        if "v" not in captured:
            raise VisionLensError(f"causal scrubbing: hook {node.hook!r} did not fire.")
        return captured["v"]


def _resolve(model: HookedVisionModel, node: Node) -> None:
    for n in node.walk():
        if n.hook is not None:
            n.hook = model.resolve_hook(n.hook)


def _check_order(model: HookedVisionModel, node: Node) -> None:
    order = {h: i for i, h in enumerate(model.hook_dict)}
    for n in node.walk():
        for p in n.parents:
            if n.hook is not None and p.hook is not None and order.get(p.hook, -1) >= order.get(n.hook, -1):
                raise VisionLensError(
                    f"causal scrubbing: parent {p.label!r} must be upstream of its node "
                    f"{n.label!r} in the model's hook order."
                )


# ----------------------------------------------------------------------------- metrics
def _metric_fn(metric: Any, labels: Optional[Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``fn(output, ref_idx, model_output_on_ref) -> per-example loss``."""
    if callable(metric):
        return lambda out, idx, ref: metric(out, idx).reshape(-1).float()
    if metric in ("auto", None):
        metric = "ce" if labels is not None else "mse_to_model"
    if metric in ("ce", "bce"):
        if labels is None:
            raise VisionLensError(f"causal scrubbing: metric {metric!r} needs labels (one per input).")
        y = labels
        if metric == "ce":
            return lambda out, idx, ref: F.cross_entropy(out.float(), y[idx].long(), reduction="none")
        return lambda out, idx, ref: F.binary_cross_entropy_with_logits(
            out.float().reshape(len(idx), -1)[:, 0], y[idx].float(), reduction="none"
        )
    if metric == "mse_to_model":
        return lambda out, idx, ref: ((out.float() - ref.float()) ** 2).reshape(len(idx), -1).mean(1)
    if metric == "kl_to_model":
        return lambda out, idx, ref: F.kl_div(
            out.float().log_softmax(-1), ref.float().log_softmax(-1), log_target=True, reduction="none"
        ).sum(-1)
    raise VisionLensError(
        f"causal scrubbing: unknown metric {metric!r}; expected ce, bce, mse_to_model, kl_to_model "
        "or a callable fn(output, input_index) -> per-example loss."
    )


def loss_recovered(l_model: float, l_scrubbed: float, l_random: float) -> float:
    """``(L_random - L_scrubbed) / (L_random - L_model)`` (NaN when the denominator vanishes)."""
    den = l_random - l_model
    return (l_random - l_scrubbed) / den if abs(den) > 1e-12 else float("nan")


@dataclass
class ScrubReport:
    """Outcome of :func:`causal_scrub` for one hypothesis.

    ``per_example_*``: loss per reference input averaged over its resamples ``[N]``.
    """

    hypothesis: Node
    loss_model: float
    loss_scrubbed: float
    loss_random: float
    recovered: float
    ci_low: float
    ci_high: float
    per_example_model: Tensor
    per_example_scrubbed: Tensor
    per_example_random: Tensor
    n_resamples: int
    forwards: int

    @property
    def per_example_recovered(self) -> Tensor:
        """Per input: ``1 - (L_scrubbed,i - L_model,i) / (L_random - L_model)``, the example's own scrubbing
        damage normalized by the mean gap (its mean is the loss recovered). Per-example random losses are
        not used: they are noisy on their own and would blur the spread."""
        den = self.loss_random - self.loss_model
        den = den if abs(den) > 1e-12 else float("nan")
        return 1 - (self.per_example_scrubbed - self.per_example_model) / den

    @property
    def frac_worse_than_random(self) -> float:
        """Fraction of inputs whose scrubbing damage exceeds the mean randomization damage.

        That is, per-example loss recovered < 0.
        """
        return float((self.per_example_recovered < 0).float().mean())

    @property
    def frac_better_than_model(self) -> float:
        """Fraction of inputs the scrubbed model fits *better* than the model itself (per-example recovered > 1.05).
        Many such inputs next to many damaged ones is the cancellation pattern of Scheurer et al. (2023)."""
        return float((self.per_example_recovered > 1.05).float().mean())

    def summary(self) -> dict[str, Any]:
        pe = self.per_example_recovered
        return {
            "loss_model": self.loss_model,
            "loss_scrubbed": self.loss_scrubbed,
            "loss_random": self.loss_random,
            "loss_recovered": self.recovered,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "per_example_recovered_std": float(pe.std()) if pe.numel() > 1 else 0.0,
            "frac_worse_than_random": self.frac_worse_than_random,
            "frac_better_than_model": self.frac_better_than_model,
            "n_resamples": self.n_resamples,
            "forwards": self.forwards,
        }


def causal_scrub(
    model: HookedVisionModel,
    inputs: Tensor,
    hypothesis: Any,
    *,
    labels: Any = None,
    factors: Optional[Mapping[str, Any]] = None,
    metric: Any = "auto",
    n_resamples: int = 4,
    n_bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    max_batch: int = 512,
) -> ScrubReport:
    """Run causal scrubbing of ``hypothesis`` on ``model`` over the input batch ``inputs`` (see module docstring).

    ``inputs``: ``[N, ...]`` model inputs (the reference inputs *and* the pool that resampled inputs are
    drawn from). ``labels``: ``[N]`` targets for ``ce`` / ``bce`` (also the ``"label"`` feature).
    ``factors``: named per-input feature values. ``metric``: ``"auto"`` (``ce`` with labels else
    ``mse_to_model``), ``"ce"``, ``"bce"``, ``"mse_to_model"``, ``"kl_to_model"`` or
    ``fn(output, input_index) -> per-example loss`` (lower is better). Each reference input is
    scrubbed ``n_resamples`` times with independent samples.
    """
    if not isinstance(inputs, Tensor) or inputs.ndim < 2:
        raise VisionLensError("causal scrubbing: expected an input batch tensor [N, ...] with N >= 2.")
    n = inputs.shape[0]
    if n < 2:
        raise VisionLensError("causal scrubbing: need at least 2 inputs to resample from.")
    root = parse_hypothesis(hypothesis)
    _resolve(model, root)
    _check_order(model, root)
    dev = model.device
    inputs = inputs.to(dev)
    lab = None
    if labels is not None:
        lab = labels.to(dev) if isinstance(labels, Tensor) else torch.as_tensor(labels, device=dev)
        if lab.shape[0] != n:
            raise VisionLensError(f"causal scrubbing: got {lab.shape[0]} labels for {n} inputs.")
    fac = {k: (v.cpu() if isinstance(v, Tensor) else v if callable(v) else list(v)) for k, v in (factors or {}).items()}
    feats = _Features(inputs, fac, lab.cpu() if lab is not None else None)
    loss = _metric_fn(metric, lab)
    g = torch.Generator().manual_seed(seed)
    scr = _Scrubber(model, inputs, feats, g)
    ref_all = torch.arange(n).repeat(n_resamples)
    lm, ls, lr = [], [], []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for s in range(0, len(ref_all), max_batch):
                ref = ref_all[s : s + max_batch]
                out_model = scr.run_plain(ref, None)
                out_scrub = scr.evaluate(root, ref) if root.hook is None else None
                if out_scrub is None:  # root on a hook: splice into the model output path
                    raise VisionLensError(
                        "causal scrubbing: the root node must have hook=None (the model output); "
                        "put the hook you want to explain as its parent."
                    )
                out_rand = scr.run_plain(scr._rand(len(ref)), None)
                ref_dev = ref.to(dev)
                lm.append(loss(out_model, ref_dev, out_model).cpu())
                ls.append(loss(out_scrub, ref_dev, out_model).cpu())
                lr.append(loss(out_rand, ref_dev, out_model).cpu())
    finally:
        model.reset_hooks(including_permanent=False)
        model.train(was_training)
    pm = torch.cat(lm).view(n_resamples, n).mean(0).double()
    ps = torch.cat(ls).view(n_resamples, n).mean(0).double()
    pr = torch.cat(lr).view(n_resamples, n).mean(0).double()
    rec = loss_recovered(float(pm.mean()), float(ps.mean()), float(pr.mean()))
    lo, hi = _bootstrap(pm, ps, pr, n_bootstrap, ci, seed)
    return ScrubReport(
        root,
        float(pm.mean()),
        float(ps.mean()),
        float(pr.mean()),
        rec,
        lo,
        hi,
        pm.float(),
        ps.float(),
        pr.float(),
        n_resamples,
        scr.forwards,
    )


def _bootstrap(pm: Tensor, ps: Tensor, pr: Tensor, b: int, ci: float, seed: int) -> tuple[float, float]:
    if b <= 0:
        return float("nan"), float("nan")
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, len(pm), (b, len(pm)), generator=g)
    m, s, r = pm[idx].mean(1), ps[idx].mean(1), pr[idx].mean(1)
    den = r - m
    vals = ((r - s) / den)[den.abs() > 1e-12]
    if vals.numel() == 0:
        return float("nan"), float("nan")
    a = (1 - ci) / 2
    q = torch.quantile(vals, torch.tensor([a, 1 - a], dtype=vals.dtype))
    return float(q[0]), float(q[1])
