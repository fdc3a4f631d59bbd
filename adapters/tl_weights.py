"""TransformerLens weight matrices (``model.W_Q``, ``model.W_U``, ...) for transformer families; public API.

``HookedVisionModel`` mixes in :class:`TLWeightsMixin`: ``model.W_E``, ``W_pos``, ``W_Q``, ``W_K``, ``W_V``,
``W_O``, ``W_in``, ``W_out``, ``W_U`` and the biases ``b_Q``, ``b_K``, ``b_V``, ``b_O``, ``b_in``, ``b_out``,
``b_U`` with TransformerLens's shapes::

    W_E   [d_vocab_in, d_model]            b_Q/b_K/b_V [n_layers, n_heads, d_head]
    W_pos [n_pos, d_model]                 b_O         [n_layers, d_model]
    W_Q/W_K/W_V [n_layers, n_heads, d_model, d_head]
    W_O   [n_layers, n_heads, d_head, d_model]
    W_in  [n_layers, d_model, d_mlp]       b_in        [n_layers, d_mlp]
    W_out [n_layers, d_mlp, d_model]       b_out       [n_layers, d_model]
    W_U   [d_model, d_vocab]               b_U         [d_vocab]

plus ``QK`` / ``OV`` (``FactoredMatrix``) and ``accumulated_bias(layer, mlp_input, include_mlp_biases)``.

What is folded (``docs/tl_habits.md``): visionlens runs the source model's weights unchanged, so the
matrices are those weights, rearranged, with exactly two kinds of folding:

* **LayerNorm affine weights and biases into the matrices that read the normalized stream**, as
  TransformerLens's ``fold_ln``: ``ln1`` into ``W_Q/W_K/W_V`` and ``b_Q/b_K/b_V``, ``ln2`` into
  ``W_in`` / ``b_in``, the final norm into ``W_U`` / ``b_U``. So they read the *unaffine*
  normalized stream ``(x - mean(x)) / hook_scale`` -- what ``cache.apply_ln_to_stack`` returns -- e.g.
  ``apply_ln_to_stack(resid_pre[None], l)[0] @ W_Q[l, h] + b_Q[l, h] == hook_q[..., h, :]``.
  ``ln*.hook_normalized`` includes the affine part, so it pairs with the unfolded matrices:
  ``model.tl_weight("W_Q", fold_ln=False)``.
* **Layer scale** (``gamma``) into the writing matrices ``W_O`` / ``b_O`` and ``W_out`` / ``b_out``, since
  ``hook_attn_out`` / ``hook_mlp_out`` include it.

Not done (unlike TransformerLens's defaults, because the cached activations are the source's own):
writing weights are not centred (``center_writing_weights``), value biases stay in ``b_V`` (no
``fold_value_biases``), ``W_U`` is not centred.

``W_U`` maps the pooled, normalized final stream to the classifier's logits (timm ViT), or to the
joint embedding (CLIP towers: ``hook_proj``). ``W_E`` of an image tower is the patch embedding as a
matrix: flattened patch pixels in ``(channel, y, x)`` order ``[in_chans * ph * pw, d_model]``; the
patch-embedding bias and the class token are in ``hook_embed``, not in ``W_E``. A text tower's ``W_E``
is its token embedding ``[vocab, d_model]``.

Adapters provide the weights through ``adapter.tl_weights(tower=None) -> TLWeightSource`` built from
:class:`TLBlock` s; a model whose adapter has none (conv nets) raises ``AttributeError`` saying so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn
from transformer_lens.FactoredMatrix import FactoredMatrix

from visionlens.config import VisionConfig

__all__ = ["TLBlock", "TLWeightSource", "TLWeightsMixin", "TL_WEIGHT_NAMES", "layer_norm_parts"]

TL_WEIGHT_NAMES = (
    "W_E",
    "W_pos",
    "W_Q",
    "W_K",
    "W_V",
    "W_O",
    "W_in",
    "W_out",
    "W_U",
    "b_Q",
    "b_K",
    "b_V",
    "b_O",
    "b_in",
    "b_out",
    "b_U",
)
_TL_NAMES = frozenset(TL_WEIGHT_NAMES + ("QK", "OV"))


def layer_norm_parts(norm: Optional[nn.Module]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """``(weight, bias)`` of a LayerNorm (either may be None); raises for a norm that does not centre."""
    if norm is None or isinstance(norm, nn.Identity):
        return None, None
    if not isinstance(norm, nn.LayerNorm):
        raise NotImplementedError(
            f"cannot fold a {type(norm).__name__} into the weights TransformerLens-style (only LayerNorm centres "
            "and scales the way cache.apply_ln_to_stack does); use model.tl_weight(name, fold_ln=False)."
        )
    return norm.weight, norm.bias


def fold_layer_norm(W: Tensor, b: Tensor, norm: Optional[nn.Module]) -> tuple[Tensor, Tensor]:
    """TransformerLens's fold of the norm a linear map ``W [out, D]``, ``b [out]`` reads after: the norm's
    bias into ``b`` (``b + W @ b_ln``), its scale into ``W``'s input columns."""
    w_ln, b_ln = layer_norm_parts(norm)
    if b_ln is not None:
        b = b + W @ b_ln
    if w_ln is not None:
        W = W * w_ln[None, :]
    return W, b


@dataclass
class TLBlock:
    """One pre-LN transformer block, as the pieces TransformerLens's matrices are made of.

    ``qkv_weight`` ``[3 * n_heads * d_head, d_model]`` (q, k, v rows, each ``(head, d_head)``), ``out``
    the attention output projection, ``fc1`` / ``fc2`` the MLP's linear layers, ``gamma1`` / ``gamma2``
    the layer scales (None without). ``*_why`` say why a matrix is not a linear map between the hooks
    (e.g. a q/k norm), or are empty.
    """

    ln1: Optional[nn.Module]
    qkv_weight: Tensor
    qkv_bias: Optional[Tensor]
    n_heads: int
    d_head: int
    out: nn.Module
    ln2: Optional[nn.Module]
    fc1: nn.Module
    fc2: nn.Module
    gamma1: Optional[Tensor] = None
    gamma2: Optional[Tensor] = None
    qk_why: str = ""
    out_why: str = ""
    mlp_out_why: str = ""

    def _qkv(self, i: int, fold_ln: bool) -> tuple[Tensor, Tensor]:
        H, dh = self.n_heads, self.d_head
        n = H * dh
        W = self.qkv_weight[i * n : (i + 1) * n]  # [H*dh, D]
        b = self.qkv_bias[i * n : (i + 1) * n] if self.qkv_bias is not None else W.new_zeros(n)
        if fold_ln:
            W, b = fold_layer_norm(W, b, self.ln1)
        return W.view(H, dh, -1).transpose(1, 2), b.view(H, dh)  # [H, D, dh], [H, dh]

    def get(self, name: str, fold_ln: bool) -> Tensor:
        if name in ("W_Q", "W_K", "b_Q", "b_K") and self.qk_why:
            raise NotImplementedError(f"{name} is not a linear map onto hook_q / hook_k here: {self.qk_why}")
        if name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V"):
            W, b = self._qkv("QKV".index(name[-1]), fold_ln)
            return W if name[0] == "W" else b
        if name in ("W_O", "b_O"):
            if self.out_why:
                raise NotImplementedError(f"{name} is not a linear map from hook_z here: {self.out_why}")
            Wo = self.out.weight  # [D, H*dh]
            if name == "W_O":
                W = Wo.view(Wo.shape[0], self.n_heads, self.d_head).permute(1, 2, 0)
                return W * self.gamma1 if self.gamma1 is not None else W
            b = self.out.bias if self.out.bias is not None else Wo.new_zeros(Wo.shape[0])
            return b * self.gamma1 if self.gamma1 is not None else b
        if name in ("W_in", "b_in"):
            W = _linear_weight(self.fc1)  # [d_mlp, D]
            b = self.fc1.bias if self.fc1.bias is not None else W.new_zeros(W.shape[0])
            if fold_ln:
                W, b = fold_layer_norm(W, b, self.ln2)
            return W.T if name == "W_in" else b
        if name in ("W_out", "b_out"):
            if self.mlp_out_why:
                raise NotImplementedError(f"{name} is not a linear map from mlp.hook_post here: {self.mlp_out_why}")
            W = _linear_weight(self.fc2)  # [D, d_mlp]
            if name == "W_out":
                W = W.T
                return W * self.gamma2 if self.gamma2 is not None else W
            b = self.fc2.bias if self.fc2.bias is not None else W.new_zeros(W.shape[0])
            return b * self.gamma2 if self.gamma2 is not None else b
        raise KeyError(name)


def _linear_weight(m: nn.Module) -> Tensor:
    w = m.weight
    return w.reshape(w.shape[0], -1) if w.ndim > 2 else w


@dataclass
class TLWeightSource:
    """Everything behind one tower's TransformerLens matrices.

    ``W_E`` / ``W_pos`` as stored (None when the model has none, with ``embed_why`` saying why);
    ``unembed_norm`` + ``unembed_weight`` ``[d_vocab, d_model]`` + ``unembed_bias`` for ``W_U`` / ``b_U``
    (``unembed_why`` when there is no linear readout).
    """

    blocks: list[TLBlock]
    W_E: Optional[Tensor] = None
    W_pos: Optional[Tensor] = None
    unembed_norm: Optional[nn.Module] = None
    unembed_weight: Optional[Tensor] = None
    unembed_bias: Optional[Tensor] = None
    embed_why: str = ""
    unembed_why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, fold_ln: bool = True) -> Tensor:
        if name == "W_E":
            if self.W_E is None:
                raise NotImplementedError(f"W_E is not available: {self.embed_why or 'no linear embedding'}")
            return self.W_E
        if name == "W_pos":
            if self.W_pos is None:
                raise NotImplementedError("W_pos is not available: this model has no learned position embedding")
            return self.W_pos
        if name in ("W_U", "b_U"):
            if self.unembed_weight is None:
                raise NotImplementedError(f"{name} is not available: {self.unembed_why or 'no linear readout'}")
            W = self.unembed_weight  # [V, D]
            b = self.unembed_bias if self.unembed_bias is not None else W.new_zeros(W.shape[0])
            if fold_ln:
                W, b = fold_layer_norm(W, b, self.unembed_norm)
            return W.T if name == "W_U" else b
        if name in TL_WEIGHT_NAMES:
            return torch.stack([blk.get(name, fold_ln) for blk in self.blocks])
        raise KeyError(f"{name!r} is not a TransformerLens weight name ({', '.join(TL_WEIGHT_NAMES)})")


class TLWeightsMixin:
    """TransformerLens's weight properties and ``cfg.device`` binding for :class:`HookedVisionModel`.

    The adapter supplies the weights (``adapter.tl_weights(tower)``); on families without one (conv
    nets) every property raises ``AttributeError`` naming the transformer families that have them.
    """

    adapter: Any
    cfg: VisionConfig

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "cfg" and isinstance(value, VisionConfig):
            value.bind_device(self)

    def __getattr__(self, name: str) -> Any:
        # reached when a property below raised AttributeError (Python then retries __getattr__):
        # say why instead of torch's generic "has no attribute"
        if name in _TL_NAMES:
            raise AttributeError(self._tl_why(name))
        return super().__getattr__(name)  # type: ignore[misc]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass with its own __getattr__ (HookedVisionModel's, which turns a miss into a message about
        # the source model) would shadow the one above and lose the reason a TL matrix is missing; answer the
        # TL names first, and hand everything else to the subclass's own __getattr__ unchanged.
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__getattr__")
        if own is None or getattr(own, "_tl_names_first", False):
            return

        def __getattr__(self: Any, name: str) -> Any:
            if name in _TL_NAMES:
                raise AttributeError(self._tl_why(name))
            return own(self, name)

        __getattr__._tl_names_first = True  # type: ignore[attr-defined]
        __getattr__.__doc__ = own.__doc__
        cls.__getattr__ = __getattr__  # type: ignore[method-assign]

    def _tl_why(self, name: str) -> str:
        if getattr(self.__dict__.get("adapter"), "tl_weights", None) is None:
            return self._tl_missing(name)
        try:
            self.tl_weight("W_Q" if name in ("QK", "OV") else name)
        except (NotImplementedError, ValueError) as e:
            return f"{name} is not available on this {self.cfg.family} model: {e}"
        return f"{name} could not be computed"

    def _tl_missing(self, name: str) -> str:
        adapter = self.__dict__.get("adapter")
        cfg = self.__dict__.get("cfg")
        fam = getattr(cfg, "family", "") or type(adapter).__name__
        return (
            f"{name} exists on transformer models only (timm ViT / DeiT, CLIP ViT and text towers); this "
            f"{fam} model has no attention heads or token unembedding. Conv nets read their classifier through "
            "model.adapter.readout(); cache.logit_attrs, cache.folded_head_bias and cache.decompose_final_features "
            "decompose the logits (docs/tl_habits.md)"  # no final period: Python may append ". Did you mean ..."
        )

    def tl_weights(self, tower: Optional[str] = None) -> TLWeightSource:
        """The :class:`TLWeightSource` of ``tower`` (None: the model's main / visual tower)."""
        adapter = self.__dict__.get("adapter")
        fn = getattr(adapter, "tl_weights", None)
        if fn is None:
            raise AttributeError(self._tl_missing("tl_weights"))
        return fn(tower)

    def tl_weight(self, name: str, fold_ln: bool = True, tower: Optional[str] = None) -> Tensor:
        """One TransformerLens matrix; ``fold_ln=False`` leaves the LayerNorm affine parts out (then the
        matrices read ``ln*.hook_normalized``); ``tower="text"`` for a CLIP text tower."""
        src = self.tl_weights(tower)
        try:
            return src.get(name, fold_ln)
        except AttributeError as e:  # never let a bug read as "no such attribute"
            raise RuntimeError(f"computing {name} failed: {e}") from e

    def _tl_property(self, name: str) -> Tensor:
        try:
            return self.tl_weight(name)
        except NotImplementedError as e:  # unavailable here: hasattr(model, name) is False
            raise AttributeError(str(e)) from e

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True, tower: Optional[str] = None
    ) -> Tensor:
        """TransformerLens's ``accumulated_bias``: the sum of ``b_O`` (and ``b_out``) of the layers before
        ``layer`` (plus ``b_O`` of ``layer`` when ``mlp_input``), ``[d_model]``."""
        b_O = self.tl_weight("b_O", tower=tower)
        b_out = self.tl_weight("b_out", tower=tower) if include_mlp_biases else None
        total = b_O.new_zeros(b_O.shape[-1])
        for l in range(layer):
            total = total + b_O[l]
            if b_out is not None:
                total = total + b_out[l]
        if mlp_input and layer < b_O.shape[0]:
            total = total + b_O[layer]
        return total

    @property
    def W_E(self) -> Tensor:
        return self._tl_property("W_E")

    @property
    def W_pos(self) -> Tensor:
        return self._tl_property("W_pos")

    @property
    def W_Q(self) -> Tensor:
        return self._tl_property("W_Q")

    @property
    def W_K(self) -> Tensor:
        return self._tl_property("W_K")

    @property
    def W_V(self) -> Tensor:
        return self._tl_property("W_V")

    @property
    def W_O(self) -> Tensor:
        return self._tl_property("W_O")

    @property
    def W_in(self) -> Tensor:
        return self._tl_property("W_in")

    @property
    def W_out(self) -> Tensor:
        return self._tl_property("W_out")

    @property
    def W_U(self) -> Tensor:
        return self._tl_property("W_U")

    @property
    def b_Q(self) -> Tensor:
        return self._tl_property("b_Q")

    @property
    def b_K(self) -> Tensor:
        return self._tl_property("b_K")

    @property
    def b_V(self) -> Tensor:
        return self._tl_property("b_V")

    @property
    def b_O(self) -> Tensor:
        return self._tl_property("b_O")

    @property
    def b_in(self) -> Tensor:
        return self._tl_property("b_in")

    @property
    def b_out(self) -> Tensor:
        return self._tl_property("b_out")

    @property
    def b_U(self) -> Tensor:
        return self._tl_property("b_U")

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per layer and head, as TransformerLens's ``FactoredMatrix``."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per layer and head, as TransformerLens's ``FactoredMatrix``."""
        return FactoredMatrix(self.W_V, self.W_O)
