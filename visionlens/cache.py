"""VisionActivationCache: TransformerLens's ActivationCache with image-model semantics.

Residual-stream helpers (``accumulated_resid``, ``decompose_resid``, ``stack_head_results``,
``apply_ln_to_stack``, ``logit_attrs``) work on ViT-style towers. Class directions replace
token unembeddings: ``logit_attrs(stack, classes)`` pools each component the way the model's
head does, divides by the cached final-LayerNorm scale and projects onto the class direction
(final-LN weight folded in). Summed over a full decomposition it equals
``logit - model.folded_head_bias(classes)`` (head bias plus the head applied to the LN bias).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Sequence, Union

import torch
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice

ClassSpec = Union[int, Sequence[int], Tensor]


def _slice(pos_slice: Any) -> Slice:
    return pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)


class VisionActivationCache(ActivationCache):
    """Activation cache returned by :meth:`HookedVisionModel.run_with_cache`."""

    def _prefix(self) -> str:
        return getattr(self.model.cfg, "extra", {}).get("hook_prefix", "")

    def _name(self, name: str) -> str:
        return self._prefix() + name

    def _need(self, name: str) -> Tensor:
        full = self._name(name)
        if full not in self.cache_dict:
            raise KeyError(
                f"{full!r} is not in the cache; run_with_cache with a names_filter that includes it "
                f"(cached: {len(self.cache_dict)} hooks)."
            )
        return self.cache_dict[full]

    def _n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    def _layer(self, layer: Optional[int]) -> int:
        n = self._n_layers()
        if layer is None or layer == -1:
            return n
        if layer < 0:
            layer = n + layer
        if not 0 <= layer <= n:
            raise ValueError(f"layer must be in [0, {n}] (or -1/None for the final layer), got {layer}")
        return layer

    # ----------------------------------------------------------- conv nets (per stage)
    def _is_staged(self) -> bool:
        cfg = self.model.cfg
        return bool(cfg.stage_depths) and self._name("blocks.0.hook_resid_pre") not in self.cache_dict

    def _stage(self, stage: Optional[int]) -> int:
        n = len(self.model.cfg.stage_depths)
        if stage is None:
            raise ValueError(
                f"This {self.model.cfg.family} model's residual stream lives in stages; pass stage=0..{n - 1}."
            )
        if stage < 0:
            stage += n
        if not 0 <= stage < n:
            raise ValueError(f"stage must be in [0, {n - 1}], got {stage}")
        return stage

    def _staged_accumulated(self, stage: int, return_labels: bool):
        """The stage input (when it has the stage's shape) and every block's ``resid_post``."""
        depth = self.model.cfg.stage_depths[stage]
        first_pre = self._need(f"stages.{stage}.blocks.0.hook_resid_pre")
        posts = [self._need(f"stages.{stage}.blocks.{b}.hook_resid_post") for b in range(depth)]
        comps, labels = [], []
        if first_pre.shape == posts[0].shape:
            comps.append(first_pre)
            labels.append(f"s{stage}_input")
        comps += posts
        labels += [f"s{stage}b{b}_post" for b in range(depth)]
        stack = torch.stack(comps, dim=0)
        return (stack, labels) if return_labels else stack

    def _staged_decomposition(self, stage: int, return_labels: bool):
        """Stage input + every block's branch output; exact where every block is a plain sum (ConvNeXt,
        MobileNetV2 residual runs; a stage-entry block that changes shape starts the sum at its output).
        Raises where a later block's output is not ``resid_pre + branch_out`` (ResNet's ReLU)."""
        depth = self.model.cfg.stage_depths[stage]
        comps = [self._need(f"stages.{stage}.blocks.0.hook_resid_pre")]
        labels = [f"s{stage}_input"]
        for b in range(depth):
            pre = self._need(f"stages.{stage}.blocks.{b}.hook_resid_pre")
            branch = self._need(f"stages.{stage}.blocks.{b}.hook_branch_out")
            post = self._need(f"stages.{stage}.blocks.{b}.hook_resid_post")
            if pre.shape == post.shape and torch.allclose(pre + branch, post, atol=1e-5, rtol=1e-5):
                comps.append(branch)
                labels.append(f"s{stage}b{b}_branch")
            elif b == 0:  # a stage-entry block (stride / width change, e.g. MobileNetV2): start after it
                comps, labels = [post], [f"s{stage}b0_out"]
            else:
                raise ValueError(
                    f"stage {stage} block {b} is not a linear residual block (resid_post != resid_pre + branch_out), "
                    "so the stage has no additive decomposition; use accumulated_resid(stage=...) instead."
                )
        stack = torch.stack(comps, dim=0)
        return (stack, labels) if return_labels else stack

    # ----------------------------------------------------------- residual stream
    def accumulated_resid(
        self,
        layer: Optional[int] = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice: Any = None,
        mlp_input: bool = False,
        return_labels: bool = False,
        stage: Optional[int] = None,
    ):
        """Residual stream at the input of each layer up to ``layer`` (``final_post`` for the last).

        Conv nets: ``stage=s`` gives each block's ``resid_pre`` in stage ``s`` and the stage output.
        """
        if stage is not None or self._is_staged():
            return self._staged_accumulated(self._stage(stage), return_labels)
        layer = self._layer(layer)
        n = self._n_layers()
        comps, labels = [], []
        for l in range(layer + 1):
            if l == n:
                comps.append(self._need(f"blocks.{n - 1}.hook_resid_post"))
                labels.append("final_post")
                continue
            comps.append(self._need(f"blocks.{l}.hook_resid_pre"))
            labels.append(f"{l}_pre")
            if (incl_mid and l < layer) or (mlp_input and l == layer):
                comps.append(self._need(f"blocks.{l}.hook_resid_mid"))
                labels.append(f"{l}_mid")
        ps = _slice(pos_slice)
        stack = torch.stack([ps.apply(c, dim=-2) for c in comps], dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps, mlp_input=mlp_input, recompute_ln=layer == n)
        return (stack, labels) if return_labels else stack

    def decompose_resid(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        mode: Literal["all", "mlp", "attn"] = "all",
        apply_ln: bool = False,
        pos_slice: Any = None,
        incl_embeds: bool = True,
        return_labels: bool = False,
        stage: Optional[int] = None,
    ):
        """The residual stream at ``layer`` as a stack of additive components (they sum to it).

        Conv nets with a linear residual stream (ConvNeXt, MobileNetV2): ``stage=s`` gives the stage
        input plus each block's ``branch_out``; they sum to the stage output.
        """
        if stage is not None or self._is_staged():
            return self._staged_decomposition(self._stage(stage), return_labels)
        layer = self._layer(layer)
        comps, labels = [], []
        if incl_embeds:
            if (
                self.model.cfg.extra.get("embed_sum_is_resid_pre", False)
                and self._name("hook_embed") in self.cache_dict
            ):
                comps += [self._need("hook_embed"), self._need("hook_pos_embed")]
                labels += ["embed", "pos_embed"]
            else:
                comps.append(self._need("blocks.0.hook_resid_pre"))
                labels.append("embed")
        for l in range(layer):
            if mode != "mlp":
                comps.append(self._need(f"blocks.{l}.hook_attn_out"))
                labels.append(f"{l}_attn_out")
            if mode != "attn":
                comps.append(self._need(f"blocks.{l}.hook_mlp_out"))
                labels.append(f"{l}_mlp_out")
        if mlp_input and mode != "mlp" and layer < self._n_layers():
            comps.append(self._need(f"blocks.{layer}.hook_attn_out"))
            labels.append(f"{layer}_attn_out")
        ps = _slice(pos_slice)
        stack = torch.stack([ps.apply(c, dim=-2) for c in comps], dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps, mlp_input=mlp_input)
        return (stack, labels) if return_labels else stack

    def head_results(self, layer: int) -> Tensor:
        """Per-head outputs ``[batch, pos, head, d_model]`` of ``layer``.

        From ``hook_result`` when cached, else computed from ``hook_z``.
        """
        name = self._name(f"blocks.{layer}.attn.hook_result")
        if name in self.cache_dict:
            return self.cache_dict[name]
        z = self._need(f"blocks.{layer}.attn.hook_z")
        return self.model.adapter.head_results_from_z(layer, z)

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice: Any = None,
        apply_ln: bool = False,
    ):
        """Every head's output for layers ``< layer``, stacked ``[layer*head, batch, pos, d_model]``."""
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        comps, labels = [], []
        for l in range(layer):
            r = ps.apply(self.head_results(l), dim=-3)
            comps.append(r.movedim(-2, 0))
            labels += [f"L{l}H{h}" for h in range(r.shape[-2])]
        if comps:
            stack = torch.cat(comps, dim=0)
        else:
            ref = ps.apply(self._need("blocks.0.hook_resid_pre"), dim=-2)
            stack = ref.new_zeros((0,) + tuple(ref.shape))
        if incl_remainder:
            total = ps.apply(
                self._need(f"blocks.{layer - 1}.hook_resid_post")
                if layer > 0
                else self._need("blocks.0.hook_resid_pre"),
                dim=-2,
            )
            stack = torch.cat([stack, (total - stack.sum(0))[None]], dim=0)
            labels.append("remainder")
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps)
        return (stack, labels) if return_labels else stack

    # ----------------------------------------------------------- layer norm
    def _ln_scale(self, layer: int, mlp_input: bool) -> Tensor:
        if layer == self._n_layers():
            return self._need("ln_final.hook_scale")
        return self._need(f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale")

    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        """Centre each component and divide by the cached LayerNorm scale of that layer's input.

        No affine weight or bias is applied (fold them into the direction you project on, as
        :meth:`logit_attrs` does). With ``recompute_ln`` every component is normalized by its own
        statistics (logit-lens style). For a model whose head pools *before* its final norm
        (timm ``fc_norm``), the final-layer version pools the stack first and returns
        ``[components, batch, d_model]``.
        """
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        if batch_slice is not None and has_batch_dim:
            residual_stack = _slice(batch_slice).apply(residual_stack, dim=1)
        if self.model.cfg.normalization_type is None:
            return residual_stack
        final = layer == self._n_layers()
        readout = self.model.adapter.readout() if final else None
        if (
            final
            and readout is not None
            and not readout.norm_first
            and residual_stack.ndim >= 3
            and residual_stack.shape[-2] > 1
        ):
            residual_stack = readout.pools[0][0](residual_stack)
            ps = Slice(None)
        centred = residual_stack - residual_stack.mean(dim=-1, keepdim=True)
        if recompute_ln:
            eps = getattr(self.model.adapter.final_ln, "eps", 1e-6) if final else 1e-6
            return centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        scale = self._ln_scale(layer, mlp_input)
        if scale.ndim >= 3:
            scale = ps.apply(scale, dim=-2)
        if batch_slice is not None and has_batch_dim:
            scale = _slice(batch_slice).apply(scale, dim=0)
        return centred / scale

    # ----------------------------------------------------------- logit attribution
    def logit_attrs(
        self,
        residual_stack: Tensor,
        classes: ClassSpec = None,
        incorrect_classes: ClassSpec = None,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        tokens: ClassSpec = None,
        incorrect_tokens: ClassSpec = None,
    ) -> Tensor:
        """Each component's direct contribution to the class logit (or logit difference).

        ``residual_stack``: ``[components, batch, pos, d_model]`` residual-stream components
        (e.g. from :meth:`decompose_resid` or :meth:`stack_head_results`, without ``apply_ln``).
        ``classes``: an int, or one class per example. Returns ``[components, batch]``.
        """
        classes = tokens if classes is None else classes
        incorrect_classes = incorrect_tokens if incorrect_classes is None else incorrect_classes
        if classes is None:
            raise ValueError("logit_attrs needs `classes` (an int or one class index per example).")
        readout = self.model.adapter.readout()
        if pos_slice is not None:
            raise ValueError("logit_attrs pools over positions the way the model's head does; pass the full stack.")
        stack = residual_stack
        if batch_slice is not None and has_batch_dim:
            stack = _slice(batch_slice).apply(stack, dim=1)
        dev = stack.device
        cls = torch.as_tensor(classes, device=dev)
        bad = None if incorrect_classes is None else torch.as_tensor(incorrect_classes, device=dev)
        scale = self._need("ln_final.hook_scale") if readout.ln is not None else None
        if scale is not None and batch_slice is not None and has_batch_dim:
            scale = _slice(batch_slice).apply(scale, dim=0)
        total = None
        for pool, head, coef in readout.pools:
            d = readout._dir(head, cls)
            if bad is not None:
                d = d - readout._dir(head, bad)
            if readout.ln is None:
                x = pool(stack)
            elif readout.norm_first:
                x = pool((stack - stack.mean(-1, keepdim=True)) / scale)
            else:
                x = pool(stack)
                x = (x - x.mean(-1, keepdim=True)) / scale
            if d.ndim == 2 and has_batch_dim:  # one direction per example: [batch, d] against [comp, batch, d]
                attr = (x * d).sum(-1)
            else:
                attr = x @ d.T if d.ndim == 2 else x @ d
            total = coef * attr if total is None else total + coef * attr
        return total

    def folded_head_bias(self, classes: ClassSpec, incorrect_classes: ClassSpec = None) -> Tensor:
        """The logit part no component explains (head bias + head applied to final-LN bias)."""
        readout = self.model.adapter.readout()
        b = readout.folded_bias(torch.as_tensor(classes))
        if incorrect_classes is not None:
            b = b - readout.folded_bias(torch.as_tensor(incorrect_classes))
        return b

    def to(self, device: Union[str, torch.device], move_model: bool = False) -> "VisionActivationCache":
        """Move every cached tensor (offload to CPU, or back to an accelerator)."""
        self.cache_dict = {k: v.to(device) for k, v in self.cache_dict.items()}
        if move_model:
            self.model.to(device)
        return self

    def to_dtype(self, dtype: torch.dtype) -> "VisionActivationCache":
        """Cast floating-point entries (e.g. to ``torch.float16`` to save memory)."""
        self.cache_dict = {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in self.cache_dict.items()}
        return self

    def filter(self, names_filter: Any) -> "VisionActivationCache":
        """A new cache holding only the entries ``names_filter`` selects (str, list or predicate)."""
        if isinstance(names_filter, str):
            keep = lambda n: n == names_filter  # noqa: E731
        elif callable(names_filter):
            keep = names_filter
        else:
            allowed = set(names_filter)
            keep = lambda n: n in allowed  # noqa: E731
        return VisionActivationCache(
            {k: v for k, v in self.cache_dict.items() if keep(k)}, self.model, has_batch_dim=self.has_batch_dim
        )
