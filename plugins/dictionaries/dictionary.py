"""A sparse dictionary over one hook's unit vectors: an ``overcomplete`` model plus its input scaling and card.

:class:`SparseDictionary` wraps one of ``overcomplete``'s models (``TopKSAE``, ``BatchTopKSAE``, ``JumpSAE``,
``RATopKSAE`` -- the relaxed archetypal SAE -- or ``NMF`` / ``SemiNMF``) and adds only what a hook needs: a
per-unit input mean and one scale (activations are standardized before encoding and restored after
decoding), :meth:`~SparseDictionary.features` (``x [N, D]`` -> codes ``[N, F]``) and
:meth:`~SparseDictionary.reconstruct`, and a safetensors file with a JSON card beside it
(:meth:`~SparseDictionary.save` / :func:`load_dictionary`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ...validation import VisionLensError

__all__ = ["KINDS", "SparseDictionary", "build_module", "load_dictionary", "card_path", "import_overcomplete"]

KINDS = ("topk", "batchtopk", "jumprelu", "archetypal", "nmf")
CARD_VERSION = 1
NMF_ENCODE_ITERS = 200  # solver iterations per encode (NMF codes are an optimisation, not a formula)


def import_overcomplete() -> Any:
    """``import overcomplete``, working around its 0.3.0 import-time use of ``matplotlib.cm.get_cmap``
    (removed in matplotlib 3.9): when missing, that one name is restored as ``matplotlib.colormaps[name]``."""
    try:
        import matplotlib.cm as cm

        if not hasattr(cm, "get_cmap"):
            import matplotlib

            def get_cmap(name: Any = None, lut: Optional[int] = None) -> Any:
                cmap = matplotlib.colormaps[name or matplotlib.rcParams["image.cmap"]]
                return cmap.resampled(lut) if lut else cmap

            setattr(cm, "get_cmap", get_cmap)  # noqa: B010 (a module attribute mypy does not know)
        import overcomplete
    except ImportError as exc:  # pragma: no cover - the extra is part of make test
        raise VisionLensError("Sparse dictionaries need overcomplete: pip install 'visionlens[dict]'.") from exc
    return overcomplete


def build_module(
    kind: str,
    d_in: int,
    n_features: int,
    top_k: int,
    points: Optional[Tensor] = None,
    signed: bool = True,
    batch_size: int = 256,
) -> nn.Module:
    """The ``overcomplete`` model for ``kind`` (imported here: ``overcomplete`` is the optional ``dict`` extra)."""
    oc = import_overcomplete()
    from overcomplete.sae import RATopKSAE

    if kind == "topk":
        return oc.TopKSAE(d_in, n_features, top_k=top_k)
    if kind == "batchtopk":  # overcomplete's top_k is per batch (flattened): k per vector times the batch
        return oc.BatchTopKSAE(d_in, n_features, top_k=top_k * batch_size)
    if kind == "jumprelu":
        return oc.JumpSAE(d_in, n_features, bandwidth=1e-3)
    if kind == "archetypal":
        if points is None:
            points = torch.zeros(max(n_features, 1), d_in)
        return RATopKSAE(d_in, n_features, points=points, top_k=top_k, delta=1.0)
    if kind == "nmf":
        return oc.SemiNMF(n_features) if signed else oc.NMF(n_features, solver="hals")
    raise VisionLensError(f"Unknown dictionary kind {kind!r}; expected one of {', '.join(KINDS)}.")


class SparseDictionary(nn.Module):
    """``features(x)`` / ``reconstruct(x)`` on raw activation vectors ``[N, D]``; ``card`` says what it is."""

    def __init__(
        self,
        module: nn.Module,
        kind: str,
        d_in: int,
        n_features: int,
        top_k: int,
        card: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise VisionLensError(f"Unknown dictionary kind {kind!r}; expected one of {', '.join(KINDS)}.")
        self.module = module
        self.kind, self.d_in, self.n_features, self.top_k = kind, int(d_in), int(n_features), int(top_k)
        self.register_buffer("input_mean", torch.zeros(d_in))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("threshold", torch.zeros(()))  # BatchTopK's running threshold (eval mode)
        self.card: Dict[str, Any] = dict(card or {})

    # ------------------------------------------------------------------ maths
    @property
    def is_sae(self) -> bool:
        return self.kind != "nmf"

    def standardize(self, x: Tensor) -> Tensor:
        return (x - self.input_mean) / self.input_scale

    def unstandardize(self, z: Tensor) -> Tensor:
        return z * self.input_scale + self.input_mean

    def encode(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """``(pre-activations, features)`` ``[N, F]`` of raw activation vectors ``x [N, D]``."""
        if x.ndim != 2 or x.shape[-1] != self.d_in:
            raise VisionLensError(f"Expected activation vectors [N, {self.d_in}], got {tuple(x.shape)}.")
        z = self.standardize(x.to(self.input_mean.dtype))
        if self.is_sae:
            pre, codes = self.module.encode(z)
            return pre, codes
        if isinstance(self.module, _nmf_types()[0]):  # plain NMF needs non-negative inputs
            z = z.clamp_min(0)
        with torch.no_grad(), torch.random.fork_rng():  # the solver starts from random codes: seed them
            torch.manual_seed(0)
            codes = self.module.encode(z, max_iter=NMF_ENCODE_ITERS)
        return codes, codes

    def decode(self, codes: Tensor) -> Tensor:
        """Raw-activation reconstruction ``[N, D]`` of features ``[N, F]``."""
        return self.unstandardize(self.module.decode(codes))

    def features(self, x: Tensor) -> Tensor:
        return self.encode(x)[1]

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.features(x))

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        pre, codes = self.encode(x)
        return pre, codes, self.decode(codes)

    def directions(self) -> Tensor:
        """Decoder directions in raw activation space ``[F, D]`` (each row times a feature's value is its
        contribution to the reconstruction, on top of ``input_mean``)."""
        return self.module.get_dictionary().detach() * self.input_scale

    # ------------------------------------------------------------------ modes
    def freeze(self) -> "SparseDictionary":
        """Eval mode with the decoder fused and detached (safe under repeated backward passes), no grads."""
        if self.is_sae:
            self.module.train()
            self.module.eval()
            layer = self.module.dictionary
            if getattr(layer, "_fused_dictionary", None) is not None:
                layer._fused_dictionary = layer._fused_dictionary.detach()
            if self.kind == "batchtopk":
                self.module.running_threshold = self.threshold.clone()
        self.eval()
        self.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write ``path`` (``.safetensors``; the card also in its metadata) and the card as ``.json`` beside it."""
        p = Path(path)
        if p.suffix != ".safetensors":
            p = p.with_suffix(".safetensors") if p.suffix else p / "dictionary.safetensors"
        p.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "batchtopk" and self.module.running_threshold is not None:
            self.threshold.copy_(torch.as_tensor(self.module.running_threshold).detach())
        card = self.full_card()
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if v is not None}
        if not self.is_sae:
            tensors["module.D"] = self.module.get_dictionary().detach().contiguous().cpu()
        tmp = p.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"visionlens_dictionary": json.dumps(card)})
        tmp.replace(p)
        card_path(p).write_text(json.dumps(card, indent=2))
        return p

    def full_card(self) -> Dict[str, Any]:
        out = dict(self.card)
        out.update(format=CARD_VERSION, kind=self.kind, d_in=self.d_in, n_features=self.n_features, top_k=self.top_k)
        out.setdefault("nmf_variant", type(self.module).__name__ if not self.is_sae else None)
        return out

    def summary(self) -> str:
        c = self.full_card()
        m = c.get("metrics", {})
        bits = [f"{c['kind']} dictionary, {c['n_features']} features over {c['d_in']} units"]
        if c.get("hook"):
            bits.append(f"at {c.get('model', '?')} / {c['hook']}")
        if m:
            bits.append(", ".join(f"{k} {v:.3g}" for k, v in m.items() if isinstance(v, (int, float))))
        return "; ".join(bits)

    def __repr__(self) -> str:
        return f"SparseDictionary({self.summary()})"

    def _repr_html_(self) -> str:
        import html

        c = self.full_card()
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}"
            "</td></tr>"
            for k, v in c.items()
        )
        return f"<div><b>SparseDictionary</b><table>{rows}</table></div>"


def _nmf_types() -> tuple:
    oc = import_overcomplete()
    return oc.NMF, oc.SemiNMF


def card_path(path: Union[str, os.PathLike]) -> Path:
    """The JSON card beside a dictionary file."""
    return Path(path).with_suffix(".json")


def load_dictionary(path: Union[str, os.PathLike]) -> SparseDictionary:
    """Load a dictionary saved by :meth:`SparseDictionary.save` (the ``.safetensors`` or ``.json`` path, or its
    folder), frozen (eval mode, no grads)."""
    p = Path(path)
    if p.is_dir():
        p = p / "dictionary.safetensors"
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    if not p.exists():
        raise FileNotFoundError(
            f"No dictionary at {p} (expected a .safetensors file written by SparseDictionary.save)."
        )
    from safetensors import safe_open

    with safe_open(str(p), "pt") as f:
        meta = f.metadata() or {}
    if "visionlens_dictionary" not in meta:
        raise VisionLensError(f"{p} is a safetensors file but not a visionlens dictionary (no card in its metadata).")
    card = json.loads(meta["visionlens_dictionary"])
    tensors = load_file(str(p))
    kind, d_in, n_features, top_k = card["kind"], card["d_in"], card["n_features"], card["top_k"]
    points = tensors.get("module.dictionary.C")
    signed = card.get("nmf_variant") != "NMF"
    module = build_module(
        kind,
        d_in,
        n_features,
        top_k,
        points=points,
        signed=signed,
        batch_size=int(card.get("training", {}).get("batch_size", 256)),
    )
    d = SparseDictionary(module, kind, d_in, n_features, top_k, card={k: v for k, v in card.items()})
    if kind == "nmf":
        module.D = tensors.pop("module.D")
        module._set_fitted()
        tensors = {k: v for k, v in tensors.items() if not k.startswith("module.")}
    d.load_state_dict(tensors, strict=kind != "nmf")
    return d.freeze()
