"""Activation patching engine: batched exact sweeps and attribution patching (AtP).

Vocabulary
----------
* **clean** and **corrupted** inputs: a pair (or ``N`` pairs) of model inputs. For image models an
  input is an image batch ``[N, C, H, W]``; for any model it may be a tuple of positional
  arguments (a diffusion UNet: ``(sample, timestep, encoder_hidden_states)``) or a dict
  ``{"args": (...), "kwargs": {...}}``. Tensors whose first axis has length ``N`` are treated as
  batched; everything else is passed through unchanged.
* **direction**: ``"denoising"`` runs the *corrupted* input and patches in *clean* activations
  (how much of the clean behaviour does this component restore?); ``"noising"`` runs the
  *clean* input and patches in *corrupted* activations (how much does breaking it hurt?).
* **target**: one hook and a part of its activation: the ``whole`` tensor, one ``position``
  (token / patch, or one ``(y, x)`` location of a conv map, or one query position of an
  attention pattern), one ``head``, one ``channel`` (the last axis of token activations, the
  channel axis of conv maps), or one ``region`` (a grid cell of a conv map or of the ViT patch
  grid). :func:`build_targets` enumerates them as a :class:`TargetSet`.
* **metric**: a function of the model output, one value per batch row. Built in:
  ``logit_diff`` (``logit[label] - logit[foil]``), ``logprob``, ``prob``, ``output_mse`` (mean
  squared difference to the clean output, for UNets and other non-classifiers), and the
  normalized variants ``normalized_logit_diff`` / ``normalized_output_mse``:
  ``(m - m_corrupted) / (m_clean - m_corrupted)``, so 0 means "behaves like the corrupted run"
  and 1 "like the clean run", in both directions. A user callable ``fn(output, pair_index)``
  (``pair_index[r]`` = which clean/corrupted pair batch row ``r`` belongs to) works too.

Batched sweeps
--------------
A sweep over ``K`` targets does not run ``K`` forwards. Copies are stacked into one batch of
``k * N`` rows (``k`` targets per chunk, target-major: row ``r`` is target ``r // N`` of pair
``r % N``), and one hook replaces, in each row, exactly that row's target with the source
activation (``torch.where`` with a per-row mask). Two batching modes:

* ``"stack"``: the *input* is repeated ``k`` times; everything before the hook is recomputed
  per copy (works for any model and hook).
* ``"expand"``: the model runs the ``N`` base inputs once up to the hook, and the hook itself
  returns the ``k * N`` patched copies; only the computation after the hook is batched. This
  is exact as long as the code after the hook only uses the batch size of the tensors it is
  given (true for residual streams and module outputs of ViTs and conv nets).
* ``"auto"`` (default) tries ``expand`` on the first chunk and checks two of its targets against
  a ``stack`` forward; on any error or mismatch it tries ``expand`` one pair at a time (when
  ``N > 1``: hooked tensors that broadcast against earlier ones, such as ``hook_mlp_out``, need a
  batch of 1 before the hook) and then falls back to ``stack``.

Chunks hold at most ``max_batch`` targets and stay under ``memory_budget_mb`` by an estimate of
per-copy activation memory. :func:`patch_loop` is the naive one-forward-per-target reference:
both agree within float tolerance (tested to 1e-5).

Attribution patching
--------------------
:func:`attribution_patching` estimates every target at once from one forward and one backward
pass: ``metric(patched) - metric(base) ~= sum over the target of (source - base) * d metric /
d activation``. It is a first-order approximation (exact for components with a linear path to
the metric); :func:`run_patching` reports its Pearson / Spearman correlation with exact patching
when both are computed.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, Optional, Sequence, Union

import torch
from torch import Tensor

from .validation import VisionLensError
from .viz import patch_grid

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "TargetSet",
    "PatchInputs",
    "PatchingMetric",
    "SweepResult",
    "PatchingOutcome",
    "activation_layout",
    "build_targets",
    "make_metric",
    "patch_sweep",
    "patch_loop",
    "attribution_patching",
    "run_patching",
    "output_tensor",
    "correlation",
    "TARGET_KINDS",
    "METRICS",
]

TARGET_KINDS = ("whole", "position", "head", "channel", "region")
METRICS = ("normalized_logit_diff", "logit_diff", "logprob", "prob", "output_mse", "normalized_output_mse")
_PER_HEAD = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")
_PATTERN = ("hook_attn_scores", "hook_pattern")

Kind = Literal["whole", "position", "head", "channel", "region"]


# ============================================================================ inputs
@dataclass
class PatchInputs:
    """Positional and keyword arguments of one model call whose batched tensors have ``n`` rows."""

    args: tuple
    kwargs: dict
    n: int

    @classmethod
    def of(cls, inputs: Any) -> "PatchInputs":
        if isinstance(inputs, PatchInputs):
            return inputs
        if isinstance(inputs, Tensor):
            args, kwargs = (inputs if inputs.ndim != 3 else inputs.unsqueeze(0),), {}
        elif isinstance(inputs, dict) and ("args" in inputs or "kwargs" in inputs):
            args, kwargs = tuple(inputs.get("args", ())), dict(inputs.get("kwargs", {}))
        elif isinstance(inputs, (tuple, list)):
            args, kwargs = tuple(inputs), {}
        else:
            raise VisionLensError(
                f"Expected patching inputs as a tensor batch, a tuple of model arguments or "
                f"{{'args': ..., 'kwargs': ...}}; got {type(inputs).__name__}."
            )
        first = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor) and a.ndim > 0), None)
        if first is None:
            raise VisionLensError("Expected at least one batched tensor among the patching inputs.")
        return cls(args, kwargs, int(first.shape[0]))

    def repeat(self, k: int) -> "PatchInputs":
        """``k`` copies, target-major (row ``r`` = copy ``r // n`` of row ``r % n``)."""
        if k == 1:
            return self
        return PatchInputs(
            tuple(_repeat(a, k, self.n) for a in self.args),
            {key: _repeat(v, k, self.n) for key, v in self.kwargs.items()},
            self.n * k,
        )

    def select(self, index: int) -> "PatchInputs":
        """Pair ``index`` alone (batch of 1)."""
        return PatchInputs(
            tuple(_select(a, index, self.n) for a in self.args),
            {key: _select(v, index, self.n) for key, v in self.kwargs.items()},
            1,
        )

    def call(self, model: HookedVisionModel) -> Any:
        return model(*self.args, **self.kwargs)


def _repeat(x: Any, k: int, n: int) -> Any:
    if isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == n:
        return x.repeat(k, *([1] * (x.ndim - 1)))
    if isinstance(x, dict):
        return {key: _repeat(v, k, n) for key, v in x.items()}
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, Tensor) for v in x):
        return type(x)(_repeat(v, k, n) for v in x)
    return x


def _select(x: Any, i: int, n: int) -> Any:
    if isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == n:
        return x[i : i + 1]
    if isinstance(x, dict):
        return {key: _select(v, i, n) for key, v in x.items()}
    return x


def output_tensor(out: Any) -> Tensor:
    """The main tensor of a model output (a tensor, ``.sample`` of a diffusers output, or item 0)."""
    if isinstance(out, Tensor):
        return out
    sample = getattr(out, "sample", None)
    if isinstance(sample, Tensor):
        return sample
    if isinstance(out, dict):
        for key in ("sample", "logits"):
            if isinstance(out.get(key), Tensor):
                return out[key]
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise VisionLensError(f"Cannot find the output tensor of a {type(out).__name__} model output.")


# ============================================================================ targets
def activation_layout(name: str, shape: Sequence[int]) -> str:
    """How to read an activation of shape ``shape`` (without batch) at hook ``name``.

    ``"token"`` ``[pos, d]``, ``"token_head"`` ``[pos, head, d]``, ``"head_qk"`` ``[head, q, k]``,
    ``"conv"`` ``[C, H, W]``, ``"vector"`` ``[d]``, else ``"other"``.
    """
    nd = len(shape)
    if nd == 3 and name.endswith(_PER_HEAD):
        return "token_head"
    if nd == 3 and name.endswith(_PATTERN):
        return "head_qk"
    if nd == 2:
        return "token"
    if nd == 3:
        return "conv"
    if nd == 1:
        return "vector"
    return "other"


_KINDS_BY_LAYOUT = {
    "token": ("whole", "position", "channel", "region"),
    "token_head": ("whole", "position", "head", "channel", "region"),
    "head_qk": ("whole", "position", "head", "region"),
    "conv": ("whole", "position", "channel", "region"),
    "vector": ("whole", "channel"),
    "other": ("whole",),
}


@dataclass
class TargetSet:
    """The targets of one hook: what each batch row patches.

    ``index[i]`` are the coordinates of target ``i`` along ``axes`` of the activation (without
    batch): one int per axis, or for ``region`` targets ``(a0, a1, b0, b1)`` boxes over the two
    spatial axes of a conv map / a tuple of token positions for the ViT patch grid.
    ``mask_shape`` broadcasts against the activation; ``grid`` / ``grid_pos`` place spatial targets
    on a 2-D grid for heatmaps (``None`` for targets off the grid, e.g. the class token).
    """

    hook: str
    kind: str
    layout: str
    act_shape: tuple[int, ...]
    labels: list[str]
    index: list[tuple[int, ...]]
    mask_shape: tuple[int, ...]
    axes: tuple[int, ...] = ()
    grid: Optional[tuple[int, int]] = None
    grid_pos: list[Optional[tuple[int, int]]] = field(default_factory=list)
    n_prefix: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def masks(self, start: int = 0, stop: Optional[int] = None, device: Any = None) -> Tensor:
        """Boolean masks ``[k, *mask_shape]`` of targets ``start:stop``."""
        stop = len(self) if stop is None else stop
        k = stop - start
        m = torch.zeros((k,) + self.mask_shape, dtype=torch.bool, device=device)
        if self.kind == "whole":
            m[:] = True
            return m
        for j, idx in enumerate(self.index[start:stop]):
            sl: list[Any] = [slice(None)] * len(self.mask_shape)
            if self.kind == "region" and self.layout == "conv":
                a0, a1, b0, b1 = idx
                sl[self.axes[0]], sl[self.axes[1]] = slice(a0, a1), slice(b0, b1)
            elif self.kind == "region":
                sl[self.axes[0]] = list(idx)
            else:
                for ax, v in zip(self.axes, idx):
                    sl[ax] = v
            m[j][tuple(sl)] = True
        return m

    def dense_mask(self, i: int, device: Any = None) -> Tensor:
        """Target ``i``'s mask broadcast to the full activation shape (without batch)."""
        return self.masks(i, i + 1, device)[0].expand(self.act_shape)

    def to_grid(self, values: Tensor) -> Optional[Tensor]:
        """``[..., K]`` per-target values -> ``[..., grid_h, grid_w]`` (NaN where no target), or None."""
        if self.grid is None:
            return None
        values = torch.as_tensor(values)
        shape = tuple(values.shape[:-1]) + tuple(self.grid)
        out = torch.full(shape, float("nan"), dtype=torch.float32, device=values.device)
        for i, pos in enumerate(self.grid_pos):
            if pos is not None:
                out[..., pos[0], pos[1]] = values[..., i].float()
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "kind": self.kind,
            "layout": self.layout,
            "act_shape": list(self.act_shape),
            "n_targets": len(self),
            "grid": list(self.grid) if self.grid else None,
            "n_prefix": self.n_prefix,
        }


def _splits(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    edges = [round(i * n / parts) for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts) if edges[i + 1] > edges[i]]


def build_targets(
    model: HookedVisionModel,
    hook: str,
    act_shape: Sequence[int],
    kind: str,
    grid: int = 4,
    positions: Optional[Sequence[int]] = None,
) -> TargetSet:
    """Enumerate the targets of ``kind`` for an activation of ``act_shape`` (without batch) at ``hook``.

    ``positions`` restricts ``position`` targets (token indices, or flat ``y * W + x`` for conv
    maps); ``grid`` is the number of cells per side for ``region`` targets.
    """
    shape = tuple(int(s) for s in act_shape)
    layout = activation_layout(hook, shape)
    allowed = _KINDS_BY_LAYOUT[layout]
    if kind not in allowed:
        raise VisionLensError(
            f"Target kind {kind!r} does not apply to hook {hook!r} (activation {list(shape)}, "
            f"read as {layout!r}); choose one of {', '.join(allowed)}."
        )
    cfg = getattr(model, "cfg", None)
    nd = len(shape)

    def ts(
        labels: list[str],
        index: list[tuple[int, ...]],
        axes: tuple[int, ...],
        grid_: Any = None,
        grid_pos: Optional[list] = None,
        n_prefix: int = 0,
    ) -> TargetSet:
        mshape = tuple(shape[i] if i in axes else 1 for i in range(nd))
        return TargetSet(hook, kind, layout, shape, labels, index, mshape, axes, grid_, grid_pos or [], n_prefix)

    if kind == "whole":
        return ts(["whole"], [()], ())
    if kind == "channel":
        ax = 0 if layout in ("conv", "vector") else nd - 1
        word = {"conv": "channel", "vector": "unit", "token": "dim"}.get(layout, "d")
        return ts([f"{word} {c}" for c in range(shape[ax])], [(c,) for c in range(shape[ax])], (ax,))
    if kind == "head":
        ax = 1 if layout == "token_head" else 0
        return ts([f"head {h}" for h in range(shape[ax])], [(h,) for h in range(shape[ax])], (ax,))
    if layout == "conv":
        C, H, W = shape
        labels: list[str] = []
        index: list[tuple[int, ...]] = []
        gpos: list[Optional[tuple[int, int]]] = []
        if kind == "position":
            flat = list(range(H * W)) if positions is None else [int(p) for p in positions]
            for f in flat:
                if not 0 <= f < H * W:
                    raise VisionLensError(f"position {f} is out of range for hook {hook!r} ({H}x{W} map).")
                y, x = divmod(f, W)
                labels.append(f"(y={y}, x={x})")
                index.append((y, x))
                gpos.append((y, x))
            return ts(labels, index, (1, 2), (H, W), gpos)
        for r, (a0, a1) in enumerate(_splits(H, grid)):
            for c, (b0, b1) in enumerate(_splits(W, grid)):
                labels.append(f"y[{a0}:{a1}] x[{b0}:{b1}]")
                index.append((a0, a1, b0, b1))
                gpos.append((r, c))
        return ts(labels, index, (1, 2), _grid_dims(gpos), gpos)
    # token sequences: token / token_head (positions on axis 0), head_qk (queries on axis 1)
    ax = 1 if layout == "head_qk" else 0
    P = shape[ax]
    n_prefix, tgrid = patch_grid(cfg, P) if cfg is not None else (0, None)
    labels = []
    index = []
    gpos = []
    if kind == "position":
        for p in range(P) if positions is None else [int(p) for p in positions]:
            if not 0 <= p < P:
                raise VisionLensError(f"position {p} is out of range for hook {hook!r} with {P} tokens.")
            labels.append(("query " if layout == "head_qk" else "") + _token_label(p, n_prefix, tgrid))
            index.append((p,))
            gpos.append(divmod(p - n_prefix, tgrid[1]) if tgrid and p >= n_prefix else None)
        return ts(labels, index, (ax,), tgrid, gpos, n_prefix)
    if tgrid is None:  # region
        raise VisionLensError(
            f"region targets need tokens on a patch grid; hook {hook!r} has {P} tokens that do not form one."
        )
    for r, (a0, a1) in enumerate(_splits(tgrid[0], grid)):
        for c, (b0, b1) in enumerate(_splits(tgrid[1], grid)):
            labels.append(f"patches[{a0}:{a1}, {b0}:{b1}]")
            index.append(tuple(n_prefix + y * tgrid[1] + x for y in range(a0, a1) for x in range(b0, b1)))
            gpos.append((r, c))
    return ts(labels, index, (ax,), _grid_dims(gpos), gpos, n_prefix)


def _grid_dims(grid_pos: list[Optional[tuple[int, int]]]) -> tuple[int, int]:
    rows = max(p[0] for p in grid_pos if p is not None) + 1
    cols = max(p[1] for p in grid_pos if p is not None) + 1
    return rows, cols


def _token_label(p: int, n_prefix: int, grid: Optional[tuple[int, int]]) -> str:
    if p < n_prefix:
        return f"token {p} ({'CLS' if p == 0 else 'prefix'})"
    if grid is not None:
        r, c = divmod(p - n_prefix, grid[1])
        return f"patch ({r}, {c})"
    return f"token {p}"


# ============================================================================ metrics
class PatchingMetric:
    """A metric of the model output: ``metric(output, pair_index) -> [rows]`` (raw, unnormalized).

    ``normalize``: report ``(m - m_corrupted) / (m_clean - m_corrupted)`` per pair.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, Tensor], Tensor],
        name: str,
        normalize: bool = False,
        label: Optional[Tensor] = None,
        foil: Optional[Tensor] = None,
    ):
        self.fn, self.name, self.normalize = fn, name, normalize
        self.label, self.foil = label, foil
        self.clean: Optional[Tensor] = None  # [N] raw metric of the clean run
        self.corrupted: Optional[Tensor] = None

    def raw(self, output: Any, pair_index: Tensor) -> Tensor:
        return self.fn(output_tensor(output), pair_index)

    def finish(self, raw: Tensor) -> Tensor:
        """Raw values ``[..., N]`` -> reported values (normalized when asked)."""
        if not self.normalize:
            return raw
        if self.clean is None or self.corrupted is None:
            raise RuntimeError("normalized metric: the clean and corrupted runs must be measured first")
        denom = self.clean - self.corrupted
        tiny = denom.abs() < 1e-12
        if bool(tiny.any()):
            warnings.warn(
                "normalized metric: the clean and corrupted runs give the same metric value for some pair; "
                "its normalized scores are NaN.",
                RuntimeWarning,
                stacklevel=3,
            )
        return (raw - self.corrupted) / torch.where(tiny, torch.full_like(denom, float("nan")), denom)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": self.name, "normalized": self.normalize}
        if self.label is not None:
            d["label"] = self.label.tolist()
        if self.foil is not None:
            d["foil"] = self.foil.tolist()
        if self.clean is not None:
            d["clean_value"] = self.clean.tolist()
        if self.corrupted is not None:
            d["corrupted_value"] = self.corrupted.tolist()
        return d


def make_metric(
    metric: Union[str, Callable, PatchingMetric],
    clean_out: Any,
    corrupt_out: Any,
    label: Union[None, int, Sequence[int], Tensor] = None,
    foil: Union[None, int, Sequence[int], Tensor] = None,
) -> PatchingMetric:
    """Build a :class:`PatchingMetric` from a name or a callable and the two unpatched outputs.

    Default ``label`` = the clean run's top class per pair; default ``foil`` = the corrupted
    run's top class (or the clean run's second choice where the two agree).
    """
    clean_t, corrupt_t = output_tensor(clean_out).detach(), output_tensor(corrupt_out).detach()
    n = clean_t.shape[0]
    if isinstance(metric, PatchingMetric):
        m = metric
    elif callable(metric):
        m = PatchingMetric(metric, getattr(metric, "__name__", "custom"))
    else:
        if metric not in METRICS:
            raise VisionLensError(
                f"Unknown patching metric {metric!r}; expected one of {', '.join(METRICS)} or a "
                "callable fn(output, pair_index) -> one value per row."
            )
        normalize = metric.startswith("normalized_")
        base = metric.removeprefix("normalized_")
        if base == "output_mse":
            ref = clean_t

            def mse(out: Tensor, pair: Tensor) -> Tensor:
                d = (out - ref[pair].to(out)) ** 2
                return d.reshape(d.shape[0], -1).mean(-1)

            m = PatchingMetric(mse, metric, normalize)
        else:
            if clean_t.ndim != 2:
                raise VisionLensError(
                    f"Metric {metric!r} needs class logits [batch, classes]; the model returns shape "
                    f"{tuple(clean_t.shape)}. Use 'output_mse' / 'normalized_output_mse' or a "
                    "callable metric."
                )
            lab = _per_pair(label, n, clean_t.device) if label is not None else clean_t.argmax(-1)
            if foil is not None:
                fo = _per_pair(foil, n, clean_t.device)
            else:
                fo = corrupt_t.argmax(-1)
                top2 = clean_t.topk(min(2, clean_t.shape[1]), dim=-1).indices
                alt = torch.where(top2[:, 0] == lab, top2[:, -1], top2[:, 0])  # best clean class that is not the label
                fo = torch.where(fo == lab, alt, fo)
            n_cls = clean_t.shape[1]
            for name, t in (("label", lab), ("foil", fo)):
                if int(t.min()) < 0 or int(t.max()) >= n_cls:
                    raise VisionLensError(f"patching {name} must be a class index in [0, {n_cls}), got {t.tolist()}.")
            if base == "logit_diff":

                def fn(out: Tensor, pair: Tensor) -> Tensor:
                    rows = torch.arange(out.shape[0], device=out.device)
                    return out[rows, lab[pair]] - out[rows, fo[pair]]
            elif base == "logprob":

                def fn(out: Tensor, pair: Tensor) -> Tensor:
                    rows = torch.arange(out.shape[0], device=out.device)
                    return out.log_softmax(-1)[rows, lab[pair]]
            else:

                def fn(out: Tensor, pair: Tensor) -> Tensor:
                    rows = torch.arange(out.shape[0], device=out.device)
                    return out.softmax(-1)[rows, lab[pair]]

            m = PatchingMetric(fn, metric, normalize, lab, fo if base == "logit_diff" else None)
    pair = torch.arange(n, device=clean_t.device)
    with torch.no_grad():
        m.clean = m.fn(clean_t, pair).detach().float().cpu()
        m.corrupted = m.fn(corrupt_t, pair).detach().float().cpu()
    return m


def _per_pair(v: Any, n: int, device: Any) -> Tensor:
    t = torch.as_tensor(v, device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise VisionLensError(f"Expected one class (or one per pair, {n}), got {t.numel()}.")
    return t.contiguous()


# ============================================================================ exact sweeps
class _ExpandError(RuntimeError):
    pass


def _patch_hook(src: Tensor, masks: Tensor, n: int, expand: bool) -> Callable[[Tensor, Any], Tensor]:
    k = masks.shape[0]
    state = {"calls": 0}

    def hook(act: Tensor, hook: Any) -> Tensor:
        state["calls"] += 1
        S = tuple(act.shape[1:])
        if expand:
            if act.shape[0] != n or state["calls"] > 1:
                raise _ExpandError(f"hook fired with batch {act.shape[0]} (call {state['calls']})")
            base = act.unsqueeze(0)
        else:
            if act.shape[0] != k * n:
                raise VisionLensError(
                    f"patching hook {getattr(hook, 'name', '')!r} saw batch {act.shape[0]}, expected {k * n}."
                )
            base = act.reshape((k, n) + S)
        m = masks.reshape((k, 1) + tuple(masks.shape[1:]))
        out = torch.where(m, src.to(act.dtype).unsqueeze(0), base)
        return out.reshape((k * n,) + S)

    return hook


def _run_chunk(
    model: HookedVisionModel,
    hook: str,
    base: PatchInputs,
    src: Tensor,
    masks: Tensor,
    metric: PatchingMetric,
    expand: bool,
    pair_offset: int = 0,
) -> Tensor:
    k, n = masks.shape[0], base.n
    inputs = base if expand else base.repeat(k)
    fn = _patch_hook(src, masks, n, expand)
    with model.hooks(fwd_hooks=[(hook, fn)]):
        out = inputs.call(model)
    t = output_tensor(out)
    if t.shape[0] != k * n:
        raise _ExpandError(f"output batch {t.shape[0]} != {k * n}")
    pair = torch.arange(k * n, device=t.device) % n + pair_offset
    return metric.fn(t, pair).detach().float().reshape(k, n)  # on the output's device


def _run_mode(
    model: HookedVisionModel,
    hook: str,
    base: PatchInputs,
    src: Tensor,
    masks: Tensor,
    metric: PatchingMetric,
    mode: str,
) -> tuple[Tensor, int]:
    """One chunk in ``mode`` (``expand``, ``expand_pairs`` or ``stack``): ``([k, N] values, forwards)``."""
    if mode == "expand_pairs":
        cols = [
            _run_chunk(model, hook, base.select(i), src[i : i + 1], masks, metric, True, pair_offset=i)
            for i in range(base.n)
        ]
        return torch.cat(cols, dim=1), base.n
    return _run_chunk(model, hook, base, src, masks, metric, expand=mode == "expand"), 1


def _estimate_chunk(
    model: HookedVisionModel, base: PatchInputs, src: Tensor, max_batch: int, memory_budget_mb: float
) -> int:
    per_row = 0
    for a in list(base.args) + list(base.kwargs.values()):
        if isinstance(a, Tensor) and a.ndim > 0 and a.shape[0] == base.n:
            per_row += a[0].numel()
    per_row = max(per_row, src[0].numel())
    cfg = getattr(model, "cfg", None)
    heads = int(getattr(cfg, "n_heads", 0) or 0)
    if heads and src.ndim >= 3:
        T = int(src.shape[1])
        per_row = max(per_row, heads * T * T)
    bytes_per_copy = 8 * 4 * per_row * base.n
    k = int(memory_budget_mb * 2**20 // max(bytes_per_copy, 1))
    return max(1, min(max_batch, k))


def patch_sweep(
    model: HookedVisionModel,
    base: Any,
    source_act: Tensor,
    targets: TargetSet,
    metric: PatchingMetric,
    mode: Literal["auto", "expand", "stack"] = "auto",
    max_batch: int = 64,
    memory_budget_mb: float = 2048.0,
    info: Optional[dict] = None,
) -> Tensor:
    """Exact patching of every target of ``targets``: raw metric values ``[K, N]`` (float32, on the CPU).

    ``base``: the inputs that run (corrupted for denoising); ``source_act``: the hook's activation
    from the other run, ``[N, *act_shape]``. See the module docstring for the batching modes.
    ``info`` (a dict) receives ``mode`` (the mode used), ``chunk`` and ``forwards``.
    """
    base = PatchInputs.of(base)
    if mode not in ("auto", "expand", "stack"):
        raise VisionLensError(f"batching mode must be 'auto', 'expand' or 'stack', got {mode!r}.")
    hook = targets.hook
    src = source_act.detach()
    if tuple(src.shape[1:]) != targets.act_shape or src.shape[0] != base.n:
        raise VisionLensError(
            f"source activation for {hook!r} has shape {tuple(src.shape)}, expected "
            f"[{base.n}, {', '.join(map(str, targets.act_shape))}]."
        )
    K = len(targets)
    chunk = _estimate_chunk(model, base, src, max_batch, memory_budget_mb)
    out: Optional[Tensor] = None  # [K, N] on the device of the metric values (the model's), moved once at the end
    if mode == "stack":
        candidates = ["stack"]
    else:
        candidates = ["expand"] + (["expand_pairs"] if base.n > 1 else []) + (["stack"] if mode == "auto" else [])
    current = candidates.pop(0)
    verified = mode == "expand"
    forwards = 0
    with torch.no_grad():
        start = 0
        while start < K:
            stop = min(K, start + chunk)
            masks = targets.masks(start, stop, device=src.device)
            try:
                vals, f = _run_mode(model, hook, base, src, masks, metric, current)
                forwards += f
                if current != "stack" and not verified:
                    probe = sorted({0, stop - start - 1})
                    ref = _run_chunk(model, hook, base, src, masks[probe], metric, expand=False)
                    forwards += 1
                    if not torch.allclose(vals[probe], ref, atol=1e-4, rtol=1e-4, equal_nan=True):
                        raise _ExpandError("expanded copies disagree with stacked inputs")
                    verified = True
            except (_ExpandError, RuntimeError, VisionLensError) as exc:
                if not candidates:
                    raise VisionLensError(
                        f"batching={mode!r} does not work at hook {hook!r}: {exc}. Use batching='stack' (or 'auto')."
                    ) from exc
                current = candidates.pop(0)
                continue
            if out is None:
                out = torch.empty(K, base.n, dtype=vals.dtype, device=vals.device)
            out[start:stop] = vals
            start = stop
    if info is not None:
        info.update(mode=current, chunk=chunk, forwards=forwards)
    return torch.empty(0, base.n) if out is None else out.cpu()


def patch_loop(
    model: HookedVisionModel, base: Any, source_act: Tensor, targets: TargetSet, metric: PatchingMetric
) -> Tensor:
    """The naive reference: one forward per target, each patching one target in a plain batch of ``N``.

    Raw metric values ``[K, N]`` (float32, on the CPU), as :func:`patch_sweep`.
    """
    base = PatchInputs.of(base)
    src = source_act.detach()
    out = torch.empty(len(targets), base.n, device=src.device)
    with torch.no_grad():
        for i in range(len(targets)):
            mask = targets.dense_mask(i, device=src.device)

            def hook(act: Tensor, hook: Any, mask: Tensor = mask) -> Tensor:
                return torch.where(mask, src.to(act.dtype), act)

            with model.hooks(fwd_hooks=[(targets.hook, hook)]):
                o = output_tensor(base.call(model))
            pair = torch.arange(base.n, device=o.device)
            out[i] = metric.fn(o, pair).detach().float()
    return out.cpu()


# ============================================================================ attribution patching
def activation_gradients(
    model: HookedVisionModel, hooks: Iterable[str], forward: Callable[[], Any], objective: Callable[[Any], Tensor]
) -> dict[str, tuple[Tensor, Tensor]]:
    """``{hook: (activation, d objective / d activation)}`` from one forward and one backward.

    A zero "probe" tensor is added at each hook so gradients reach exactly the hooked values;
    hooks that did not fire are absent, and an unused hook gets a zero gradient.
    """
    probes: dict[str, tuple[Tensor, Tensor]] = {}

    def make(name: str) -> Callable[[Tensor, Any], Tensor]:
        def hook(act: Tensor, hook: Any) -> Tensor:
            z = torch.zeros_like(act, requires_grad=True)
            probes[name] = (act.detach(), z)
            return act + z

        return hook

    with torch.enable_grad():
        with model.hooks(fwd_hooks=[(h, make(h)) for h in hooks]):
            total = objective(forward())
        fired = list(probes)
        grads = torch.autograd.grad(total, [probes[h][1] for h in fired], allow_unused=True)
    return {h: (probes[h][0], torch.zeros_like(probes[h][0]) if g is None else g) for h, g in zip(fired, grads)}


def attribution_patching(
    model: HookedVisionModel,
    base: Any,
    source_acts: dict[str, Tensor],
    targets: dict[str, TargetSet],
    metric: PatchingMetric,
) -> dict[str, Tensor]:
    """First-order estimates of patching every target: ``{hook: [K, N]}`` raw metric *changes* (on the CPU).

    One forward on ``base`` with a zero "probe" added at each hook, one backward of the summed
    metric; the estimate for a target is ``sum_{target} (source - base) * grad``.
    """
    base = PatchInputs.of(base)

    def objective(output: Any) -> Tensor:
        out = output_tensor(output)
        return metric.fn(out, torch.arange(base.n, device=out.device)).sum()

    probes = activation_gradients(model, targets, lambda: base.call(model), objective)
    missing = [h for h in targets if h not in probes]
    if missing:
        raise VisionLensError(f"attribution patching: hook(s) {', '.join(missing)} did not fire.")
    result: dict[str, Tensor] = {}
    for h in targets:
        act, g = probes[h]
        contrib = (source_acts[h].detach().to(act) - act) * g  # [N, *S]
        ts = targets[h]
        K = len(ts)
        est = torch.empty(K, base.n, device=contrib.device)  # moved to the CPU once, below
        step = max(1, int(2**26 // max(contrib.numel(), 1)))
        for s in range(0, K, step):
            e = min(K, s + step)
            m = ts.masks(s, e, device=contrib.device).to(contrib.dtype)  # [k, *mshape]
            prod = contrib.unsqueeze(0) * m.unsqueeze(1)  # [k, N, *S]
            est[s:e] = prod.reshape(e - s, base.n, -1).sum(-1).detach().float()
        result[h] = est.cpu()
    return result


# ============================================================================ high level
@dataclass
class SweepResult:
    """One hook's sweep: ``scores`` ``[K, N]`` (reported metric: normalized when asked), ``atp`` the
    attribution-patching estimate of the same quantity (or None)."""

    targets: TargetSet
    scores: Optional[Tensor] = None
    atp: Optional[Tensor] = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class PatchingOutcome:
    """Everything :func:`run_patching` computed."""

    sweeps: dict[str, SweepResult]
    metric: PatchingMetric
    direction: str
    clean_output: Tensor
    corrupted_output: Tensor
    seconds: dict[str, float] = field(default_factory=dict)

    def correlation(self) -> dict[str, float]:
        """Pearson and Spearman correlation of AtP estimates with exact patching over all targets."""
        ex = [s.scores.flatten() for s in self.sweeps.values() if s.scores is not None and s.atp is not None]
        ap = [s.atp.flatten() for s in self.sweeps.values() if s.scores is not None and s.atp is not None]
        if not ex:
            return {}
        return correlation(torch.cat(ex), torch.cat(ap))


def correlation(a: Tensor, b: Tensor) -> dict[str, float]:
    """``{"pearson", "spearman", "n"}`` over finite pairs."""
    a, b = a.double().flatten(), b.double().flatten()
    ok = torch.isfinite(a) & torch.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.numel())
    if n < 2:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": n}

    def pearson(x: Tensor, y: Tensor) -> float:
        x, y = x - x.mean(), y - y.mean()
        d = float(x.norm() * y.norm())
        return float((x * y).sum()) / d if d > 0 else float("nan")

    def ranks(x: Tensor) -> Tensor:
        order = x.argsort()
        r = torch.empty_like(x)
        r[order] = torch.arange(n, dtype=x.dtype)
        return r

    return {"pearson": pearson(a, b), "spearman": pearson(ranks(a), ranks(b)), "n": n}


def run_patching(
    model: HookedVisionModel,
    clean: Any,
    corrupted: Any,
    hooks: Sequence[str],
    kind: str = "position",
    metric: Union[str, Callable, PatchingMetric] = "normalized_logit_diff",
    direction: Literal["denoising", "noising"] = "denoising",
    label: Any = None,
    foil: Any = None,
    method: Literal["exact", "attribution", "both"] = "exact",
    batching: Literal["auto", "expand", "stack", "loop"] = "auto",
    grid: int = 4,
    positions: Optional[Sequence[int]] = None,
    max_batch: int = 64,
    memory_budget_mb: float = 2048.0,
) -> PatchingOutcome:
    """Patch ``kind`` targets of every hook in ``hooks`` between ``clean`` and ``corrupted``.

    Returns a :class:`PatchingOutcome` whose sweeps hold reported metric values ``[K, N]``
    (normalized metrics: 0 = corrupted behaviour, 1 = clean behaviour) for exact patching and/or
    attribution patching (AtP estimates ``m_base + sum (source - base) * grad``, normalized the same way).
    """
    import time

    if direction not in ("denoising", "noising"):
        raise VisionLensError(f"direction must be 'denoising' or 'noising', got {direction!r}.")
    if method not in ("exact", "attribution", "both"):
        raise VisionLensError(f"method must be 'exact', 'attribution' or 'both', got {method!r}.")
    clean_in, corrupt_in = PatchInputs.of(clean), PatchInputs.of(corrupted)
    if clean_in.n != corrupt_in.n:
        raise VisionLensError(f"Expected as many clean as corrupted inputs, got {clean_in.n} and {corrupt_in.n}.")
    hooks = [model.resolve_hook(h) for h in hooks]
    if not hooks:
        raise VisionLensError("activation patching needs at least one hook.")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        clean_out, clean_cache = model.run_with_cache(
            *clean_in.args, names_filter=hooks, return_cache_object=False, **clean_in.kwargs
        )
        corrupt_out, corrupt_cache = model.run_with_cache(
            *corrupt_in.args, names_filter=hooks, return_cache_object=False, **corrupt_in.kwargs
        )
    missing = [h for h in hooks if h not in clean_cache or h not in corrupt_cache]
    if missing:
        raise VisionLensError(f"activation patching: hook(s) {', '.join(missing)} did not fire for these inputs.")
    m = make_metric(metric, clean_out, corrupt_out, label=label, foil=foil)
    base, base_cache, src_cache = (
        (corrupt_in, corrupt_cache, clean_cache) if direction == "denoising" else (clean_in, clean_cache, corrupt_cache)
    )
    base_value = m.corrupted if direction == "denoising" else m.clean
    assert base_value is not None  # measured just above
    seconds["baseline"] = time.perf_counter() - t0
    sweeps: dict[str, SweepResult] = {}
    for h in hooks:
        ts = build_targets(model, h, tuple(src_cache[h].shape[1:]), kind, grid=grid, positions=positions)
        sweeps[h] = SweepResult(ts)
    if method in ("exact", "both"):
        t0 = time.perf_counter()
        for h, sw in sweeps.items():
            if batching == "loop":
                raw = patch_loop(model, base, src_cache[h], sw.targets, m)
                sw.info = {"mode": "loop", "forwards": len(sw.targets)}
            else:
                info: dict[str, Any] = {}
                raw = patch_sweep(
                    model,
                    base,
                    src_cache[h],
                    sw.targets,
                    m,
                    mode=batching,
                    max_batch=max_batch,
                    memory_budget_mb=memory_budget_mb,
                    info=info,
                )
                sw.info = info
            sw.scores = m.finish(raw)
        seconds["exact"] = time.perf_counter() - t0
    if method in ("attribution", "both"):
        t0 = time.perf_counter()
        est = attribution_patching(
            model, base, {h: src_cache[h] for h in hooks}, {h: sw.targets for h, sw in sweeps.items()}, m
        )
        for h, sw in sweeps.items():
            sw.atp = m.finish(base_value.unsqueeze(0) + est[h])
        seconds["attribution"] = time.perf_counter() - t0
    return PatchingOutcome(
        sweeps,
        m,
        direction,
        output_tensor(clean_out).detach().cpu(),
        output_tensor(corrupt_out).detach().cpu(),
        seconds,
    )
