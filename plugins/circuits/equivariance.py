"""``equivariance``: families of units related by a transformation, found from stimuli and from weights.

Two independent routes (Olah et al. 2020, "Naturally occurring equivariance in neural networks"):

* **from stimuli** (:func:`stimulus_families`): a unit ``v`` is the transform of unit ``u`` by offset ``d``
  when its tuning is ``u``'s shifted by ``d``: ``f_v(theta) = f_u(theta - d)`` (rotation: the
  :func:`rotation_signature` -- curve responses by orientation x radius and line responses by orientation
  from :mod:`.tuning_curves`, shifted together; hue: the hue tuning of colour blobs; reflection:
  ``f_v(theta) = f_u(d - theta)``). The pair score is the best Pearson correlation over the shifts;
* **from weights** (:func:`weight_families`): ``v`` is ``u`` rotated by ``d`` when ``u``'s kernels to the
  layer below, rotated by ``d`` (bilinear resampling; reflection: mirrored then rotated, ``d = 0`` included;
  hue: the RGB colour of each kernel rotated about the grey axis, for layers reading the image), match ``v``'s:
  cosine similarity over the flattened kernels. When the layer below is not the image, its channels
  transform too, so ``channel_map="assign"`` lets each of ``u``'s rotated input kernels match one of
  ``v``'s (Hungarian assignment) instead of the same channel.

Families are grown greedily (:func:`grow_families`): the most selective unassigned unit seeds a family;
every unassigned unit whose score with the seed is at least ``min_score`` joins with its offset. Families
of at least ``min_members`` units are reported with their offsets and mean score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from visionlens.analysis import Analysis, config_to_dict, option
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .common import circular_selectivity, image_support
from .tuning_curves import Tuning, default_unit_hook, measure_tuning

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "Family",
    "shift_scores",
    "rotation_signature",
    "stimulus_families",
    "rotate_kernels",
    "hue_rotation",
    "hue_rotate_kernels",
    "weight_scores",
    "weight_families",
    "grow_families",
    "family_precision_recall",
    "conv_weight",
    "Equivariance",
    "EquivarianceResult",
]


@dataclass
class Family:
    """Units related by a transformation: ``members[i]`` is the seed transformed by ``offsets[i]`` degrees."""

    members: list[int]
    offsets: list[float]
    scores: list[float]  # each member's score with the seed (the seed's is 1)

    @property
    def score(self) -> float:
        return float(np.mean(self.scores[1:])) if len(self.scores) > 1 else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"members": self.members, "offsets": self.offsets, "scores": self.scores, "score": self.score}


# ----------------------------------------------------------------------------- from stimuli
def _standardize(x: Tensor) -> Tensor:
    x = x - x.mean(dim=-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def shift_scores(curves: Tensor, reflection: bool = False) -> tuple[Tensor, Tensor]:
    """Pairwise best correlations ``[U, U]`` and best shifts ``[U, U]`` (in samples) of circular tuning signatures
    ``[U, K]`` or ``[U, K, F]`` (``F`` features per angle, rolled together along ``K``):
    ``scores[u, v] = max_s corr(roll(f_u, s), f_v)`` (reflection: ``roll(flip(f_u), s)``)."""
    sig = curves.float()
    if sig.ndim == 2:
        sig = sig[:, :, None]
    k = sig.shape[1]
    z = _standardize(sig.reshape(sig.shape[0], -1))
    src = torch.flip(sig, dims=[1]) if reflection else sig
    rolled = torch.stack([_standardize(torch.roll(src, s, dims=1).reshape(sig.shape[0], -1)) for s in range(k)])
    corr = torch.einsum("suk,vk->suv", rolled, z)  # [K, U, U]
    best, shift = corr.max(dim=0)
    return best, shift


def rotation_signature(t: Tuning) -> Tensor:
    """``[U, K, R + 1]``: per orientation, the curve responses at every radius and the line response at that
    orientation (mod 180), so a rotation shifts all of it together and curve units do not match line units."""
    k = t.curve.shape[1]
    line = t.line[:, torch.arange(k) % t.line.shape[1]]  # [U, K], period K / 2
    return torch.cat([t.curve, line[:, :, None]], dim=2)


def grow_families(
    scores: Tensor, offsets: Tensor, eligible: Tensor, priority: Tensor, min_score: float, min_members: int
) -> list[Family]:
    """Greedy families over a pairwise ``scores`` matrix (see the module docstring); ``offsets[u, v]`` in degrees."""
    left = eligible.clone()
    fams: list[Family] = []
    order = torch.argsort(priority, descending=True).tolist()
    for seed in order:
        if not left[seed]:
            continue
        members = [seed] + [
            v for v in range(scores.shape[0]) if v != seed and left[v] and float(scores[seed, v]) >= min_score
        ]
        if len(members) < min_members:
            continue
        for v in members:
            left[v] = False
        fams.append(
            Family(
                members=members,
                offsets=[0.0] + [float(offsets[seed, v]) for v in members[1:]],
                scores=[1.0] + [float(scores[seed, v]) for v in members[1:]],
            )
        )
    return fams


def stimulus_families(
    signature: Tensor,
    period: float = 360.0,
    transform: str = "rotation",
    min_score: float = 0.8,
    min_selectivity: float = 0.3,
    min_members: int = 3,
    units: Optional[Sequence[int]] = None,
) -> tuple[list[Family], Tensor, Tensor]:
    """Families from circular tuning signatures ``[U, K]`` or ``[U, K, F]`` over ``period`` degrees (eligibility:
    the selectivity of the per-angle maximum); returns families (unit ids from ``units``), the score matrix and
    the offsets in degrees."""
    reflection = transform == "reflection"
    scores, shift = shift_scores(signature, reflection=reflection)
    offsets = shift.float() * (period / signature.shape[1])
    per_angle = signature if signature.ndim == 2 else signature.amax(dim=2)
    sel = circular_selectivity(per_angle)
    eligible = (per_angle.clamp_min(0).amax(dim=1) > 0) & (sel >= min_selectivity)
    fams = grow_families(scores, offsets, eligible, sel, min_score, min_members)
    ids = list(units) if units is not None else list(range(signature.shape[0]))
    for f in fams:
        f.members = [ids[m] for m in f.members]
    return fams, scores, offsets


# ----------------------------------------------------------------------------- from weights
def rotate_kernels(w: Tensor, degrees: float, reflect: bool = False) -> Tensor:
    """Kernels ``[..., k, k]`` rotated counter-clockwise (as seen, ``y`` down) by ``degrees`` about their centre
    (bilinear; exact for multiples of 90); ``reflect`` mirrors left-right first."""
    shape = w.shape
    x = w.reshape(-1, 1, shape[-2], shape[-1]).float()
    if reflect:
        x = torch.flip(x, dims=[-1])
    q = degrees / 90.0
    if abs(q - round(q)) < 1e-9:
        return torch.rot90(x, int(round(q)) % 4, dims=(-2, -1)).reshape(shape)
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # output pixel p samples the input at R(-a) p (grid coordinates: x right, y down; CCW as seen)
    theta = torch.tensor([[c, -s, 0.0], [s, c, 0.0]], dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).reshape(shape)


def hue_rotation(degrees: float) -> Tensor:
    """``[3, 3]`` rotation of RGB colours about the grey axis by ``degrees`` (red -> yellow -> green for positive)."""
    a = math.radians(degrees)
    k = torch.ones(3) / 3**0.5
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return torch.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * (kx @ kx)


def hue_rotate_kernels(w: Tensor, degrees: float) -> Tensor:
    """Kernels ``[..., 3, k, k]`` on RGB with their colour rotated about the grey axis by ``degrees``."""
    m = hue_rotation(degrees).to(w.device, torch.float32)
    return torch.einsum("ij,...jhw->...ihw", m, w.float())


def _assign_cos(a: Tensor, b: Tensor) -> float:
    """Best one-to-one matching of ``a``'s input kernels ``[C, k*k]`` to ``b``'s: cosine of the matched whole."""
    from scipy.optimize import linear_sum_assignment

    sim = (a @ b.T).detach().cpu().numpy()
    r, c = linear_sum_assignment(-sim)
    denom = float(a.norm() * b.norm())
    return float(sim[r, c].sum()) / denom if denom > 0 else 0.0


def weight_scores(
    weight: Tensor,
    angles: Sequence[float],
    reflection: bool = False,
    channel_map: str = "identity",
    hue: bool = False,
) -> tuple[Tensor, Tensor]:
    """Pairwise ``[U, U]`` best cosine between unit ``u``'s kernels transformed by an angle and unit ``v``'s, and that
    angle; ``weight`` is ``[U, C, k, k]``; ``channel_map`` ``"identity"`` or ``"assign"``; ``hue``: the transform
    rotates the colour of RGB input kernels (``C == 3``) instead of their layout."""
    u_n = weight.shape[0]
    if hue and weight.shape[1] != 3:
        raise VisionLensError(
            f"equivariance: hue families from weights need a layer reading RGB (3 channels), got {weight.shape[1]}"
        )
    flat = weight.reshape(u_n, -1).float()
    best = torch.full((u_n, u_n), -1.0, device=weight.device)
    arg = torch.zeros(u_n, u_n, device=weight.device)
    for a in angles:
        rw = hue_rotate_kernels(weight, a) if hue else rotate_kernels(weight, a, reflect=reflection)
        if channel_map == "identity":
            rf = rw.reshape(u_n, -1)
            cos = (rf @ flat.T) / (rf.norm(dim=1)[:, None] * flat.norm(dim=1)[None]).clamp_min(1e-12)
        elif channel_map == "assign":
            c = weight.shape[1]
            ra, wb = rw.reshape(u_n, c, -1), weight.reshape(u_n, c, -1).float()
            cos = torch.tensor(
                [[_assign_cos(ra[i], wb[j]) for j in range(u_n)] for i in range(u_n)], device=weight.device
            )
        else:
            raise VisionLensError(f"channel_map must be 'identity' or 'assign', got {channel_map!r}")
        better = cos > best
        best = torch.where(better, cos, best)
        arg = torch.where(better, torch.full_like(arg, float(a)), arg)
    return best, arg


def weight_families(
    weight: Tensor,
    angles: Sequence[float] = tuple(range(45, 360, 45)),
    transform: str = "rotation",
    channel_map: str = "identity",
    min_score: float = 0.8,
    min_members: int = 3,
    units: Optional[Sequence[int]] = None,
) -> tuple[list[Family], Tensor, Tensor]:
    """Families from conv weights ``[U, C, k, k]`` (see the module docstring); the seeds are the largest-norm units."""
    if transform == "reflection" and not any(abs(float(a) % 360.0) < 1e-9 for a in angles):
        angles = [0.0, *angles]  # the plain mirror image
    scores, offsets = weight_scores(
        weight, angles, reflection=transform == "reflection", channel_map=channel_map, hue=transform == "hue"
    )
    norm = weight.reshape(weight.shape[0], -1).norm(dim=1)
    eligible = norm > 1e-6 * float(norm.max().clamp_min(1e-30))
    fams = grow_families(scores, offsets, eligible, norm, min_score, min_members)
    ids = list(units) if units is not None else list(range(weight.shape[0]))
    for f in fams:
        f.members = [ids[m] for m in f.members]
    return fams, scores, offsets


def family_precision_recall(found: Sequence[Family], truth: Sequence[int]) -> tuple[float, float]:
    """Precision and recall of the found family that overlaps ``truth`` most (0, 0 when none does)."""
    t = set(truth)
    best = max(found, key=lambda f: len(t & set(f.members)), default=None)
    if best is None or not t & set(best.members):
        return 0.0, 0.0
    hit = len(t & set(best.members))
    return hit / len(best.members), hit / len(t)


def conv_weight(model: HookedVisionModel, layer: str) -> Tensor:
    """The weight ``[out, in, k, k]`` of conv module ``layer`` (a module path of ``model.source``)."""
    mods = dict(model.source.named_modules())
    if layer not in mods or not isinstance(mods[layer], nn.Conv2d):
        convs = [n for n, m in mods.items() if isinstance(m, nn.Conv2d)]
        raise VisionLensError(f"equivariance: {layer!r} is not a Conv2d of the model; conv layers: {', '.join(convs)}")
    conv = mods[layer]
    if conv.groups != 1:
        raise VisionLensError(f"equivariance: {layer!r} is a grouped conv (groups={conv.groups}); pick a dense conv")
    return conv.weight.detach().float().cpu()


# ----------------------------------------------------------------------------- analysis
class Equivariance(Analysis):
    """Rotation / reflection / hue families of units, from stimuli and from weights."""

    name = "equivariance"
    summary = (
        "Equivariant unit families (rotation, reflection, hue) found from stimuli (shifted tuning curves) and "
        "from weights (transformed kernels match), with offsets and scores."
    )

    @dataclass
    class Config:
        hook: str = option("", help="hook of the units for the stimulus route (default: mixed3b, else middle)")
        layer: str = option("", help="Conv2d module path for the weight route ('' = skip the weight route)")
        transform: str = option("rotation", choices=("rotation", "reflection", "hue"), help="the transformation")
        n_orientations: int = option(16, min=8, max=360, help="orientation samples over 360 (stimulus route)")
        radii: list[float] = option([3.0, 4.5, 6.0, 8.0, 11.0], min_len=1, help="curve radii (stimulus route)")
        jitter: int = option(3, min=0, max=16, help="stimulus position grid +-jitter px")
        n_hues: int = option(12, min=4, max=64, help="hue samples (transform=hue)")
        image_size: int = option(0, min=0, max=1024, help="stimulus size (0: the model's, else 32)")
        min_score: float = option(0.8, min=-1.0, max=1.0, help="score with the seed needed to join a family")
        min_selectivity: float = option(0.3, min=0.0, max=1.0, help="stimulus route: selectivity to be eligible")
        min_members: int = option(3, min=2, help="smallest family reported")
        angle_step: float = option(45.0, min=1.0, max=180.0, help="weight route: rotation angles tried")
        channel_map: str = option("auto", choices=("auto", "identity", "assign"), help="weight route input channels")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"n_orientations": 8, "radii": [4.0], "jitter": 0, "n_hues": 4}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return image_support(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> "EquivarianceResult":
        hook = config.hook or default_unit_hook(model)
        if hook not in model.hook_dict:
            raise VisionLensError(f"equivariance: unknown hook {hook!r}")
        t = measure_tuning(
            model,
            hook,
            n_orientations=config.n_orientations,
            radii=tuple(config.radii),
            jitter=config.jitter,
            n_hues=config.n_hues,
            size=config.image_size or None,
        )
        if config.transform == "hue":
            curves, period = t.blob_hue, 360.0
        else:
            curves, period = rotation_signature(t), 360.0
        fams, scores, offsets = stimulus_families(
            curves,
            period,
            config.transform,
            config.min_score,
            config.min_selectivity,
            config.min_members,
            units=t.units,
        )
        tensors: dict[str, Tensor] = {"stimulus_scores": scores, "stimulus_offsets": offsets, "curves": curves}
        wfams: list[Family] = []
        if config.layer:
            w = conv_weight(model, config.layer)
            cmap = config.channel_map
            if cmap == "auto":
                cmap = "identity" if w.shape[1] == 3 or config.transform == "hue" else "assign"
            angles = [float(a) for a in np.arange(config.angle_step, 360.0 - 1e-9, config.angle_step)]
            wfams, ws, wo = weight_families(w, angles, config.transform, cmap, config.min_score, config.min_members)
            tensors.update(weight_scores=ws, weight_offsets=wo)
        return EquivarianceResult.build(t, fams, wfams, tensors, config, model, hook)


class EquivarianceResult(Result):
    """Table ``families`` (route, family, members, offsets, score) and the pairwise score matrices."""

    @classmethod
    def build(
        cls,
        t: Tuning,
        fams: list[Family],
        wfams: list[Family],
        tensors: dict[str, Tensor],
        config: Any,
        model: Optional[HookedVisionModel],
        hook: str,
    ) -> "EquivarianceResult":
        table = Table(["route", "family", "size", "members", "offsets", "score"], title="Families found")
        for route, fs in (("stimuli", fams), ("weights", wfams)):
            for i, f in enumerate(fs):
                table.rows.append([route, i, len(f.members), f.members, [round(o, 1) for o in f.offsets], f.score])
        biggest = max((len(f.members) for f in fams), default=0)
        return cls(
            "equivariance",
            summary=f"{len(fams)} {config.transform} families from stimuli on {hook} (largest {biggest} units)"
            + (f"; {len(wfams)} from the weights of {config.layer}" if config.layer else ""),
            config=config_to_dict(config),
            meta={
                "model": getattr(model.cfg, "architecture", "") if model else "",
                "hook": hook,
                "units": t.units,
                "families_stimuli": [f.to_dict() for f in fams],
                "families_weights": [f.to_dict() for f in wfams],
            },
            tensors=tensors,
            tables={"families": table},
        )

    def families(self, route: str = "stimuli") -> list[Family]:
        return [Family(d["members"], d["offsets"], d["scores"]) for d in self.meta.get(f"families_{route}", [])]

    def plot(self) -> Any:
        """The largest stimulus family: each member's tuning curve, and the same curves aligned by their offsets."""
        fams = self.families("stimuli")
        fig = new_figure(10, 3.5)
        ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        if not fams:
            ax1.text(0.5, 0.5, "no family found", ha="center")
            return fig
        f = max(fams, key=lambda x: len(x.members))
        units = list(self.meta["units"])
        curves = self.tensors["curves"]
        curves = curves.amax(dim=2) if curves.ndim == 3 else curves
        k = curves.shape[1]
        deg = np.arange(k) * 360.0 / k
        for m, off in zip(f.members, f.offsets):
            c = curves[units.index(m)].numpy()
            ax1.plot(deg, c, label=f"unit {m} ({off:.0f} deg)")
            s = int(round(off / (360.0 / k)))
            ax2.plot(deg, np.roll(c, -s))
        ax1.set_title(f"family of {len(f.members)} (score {f.score:.2f}): tuning curves", fontsize=9)
        ax2.set_title("the same curves shifted back by their offsets", fontsize=9)
        for ax in (ax1, ax2):
            ax.set_xlabel("stimulus angle (deg)", fontsize=8)
        ax1.legend(fontsize=6, ncol=2)
        return fig


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [Equivariance]
