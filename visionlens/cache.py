"""VisionActivationCache: TransformerLens's ActivationCache with image-model semantics.

Residual-stream helpers (``accumulated_resid``, ``decompose_resid``, ``stack_head_results``,
``apply_ln_to_stack``, ``logit_attrs``) work on ViT-style towers. Class directions replace
token unembeddings: ``logit_attrs(stack, classes)`` pools each component the way the model's
head does, divides by the cached final-LayerNorm scale and projects onto the class direction
(final-LN weight folded in). Summed over a full decomposition it equals
``logit - model.folded_head_bias(classes)`` (head bias plus the head applied to the LN bias).

Conv nets (docs/tl_habits.md): ``cache["resid_post", i]`` reads the flat block index (all blocks in
order); ``logit_attrs(decompose_resid(stage=-1), classes)`` is exact on ConvNeXt (frozen head-LN
scale) and MobileNetV2 (frozen head ReLU6 gates); ResNet refuses the decomposition and
``decompose_final_features`` splits the logit exactly over the final feature map. A key that is not
cached raises a KeyError naming the closest cached names.
"""

from __future__ import annotations

from typing import Any, Iterator, Literal, Optional, Sequence, Union

import torch
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice, get_act_name

from .hook_points import DeferredActivation
from .validation import UnknownCacheKeyError, unknown_cache_key

ClassSpec = Union[int, Sequence[int], Tensor]


_FINAL_FEATURES_HINT = (
    "Exact alternative for the logit: cache.decompose_final_features(classes, mode='channel' | 'location' | "
    "'full', return_bias=True) splits it over the channels / locations of the final feature map; the parts "
    "plus the returned bias sum to the logit."
)


class LazyCacheDict(dict):
    """A cache dict whose :class:`~visionlens.hook_points.DeferredActivation` entries are computed on first read.

    Every way of reading a value (``d[k]``, ``get``, ``items``, ``values``, ``pop``, iteration-based
    copies such as ``dict(d)``) returns tensors; a computed entry replaces its deferred one.
    """

    def __getitem__(self, key: Any) -> Any:
        v = dict.__getitem__(self, key)
        if isinstance(v, DeferredActivation):
            v = v.materialize()
            dict.__setitem__(self, key, v)
        return v

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self else default

    def __iter__(self) -> Iterator[Any]:  # overriding it makes dict(d) / {**d} go through __getitem__
        return dict.__iter__(self)

    def items(self) -> Any:  # type: ignore[override]
        return [(k, self[k]) for k in list(dict.keys(self))]

    def values(self) -> Any:  # type: ignore[override]
        return [self[k] for k in list(dict.keys(self))]

    def pop(self, key: Any, *default: Any) -> Any:
        if key in self:
            v = self[key]
            dict.__delitem__(self, key)
            return v
        return dict.pop(self, key, *default)

    def copy(self) -> "LazyCacheDict":
        return LazyCacheDict(dict.items(self))

    def __reduce__(self) -> Any:  # pickling stores tensors, never closures
        return (dict, (list(self.items()),))


def _slice(pos_slice: Any) -> Slice:
    return pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)


class VisionActivationCache(ActivationCache):
    """Activation cache returned by :meth:`HookedVisionModel.run_with_cache`."""

    cache_dict: dict[str, Tensor]  # set by ActivationCache.__init__; declared so mypy knows its type

    def _prefix(self) -> str:
        return getattr(self.model.cfg, "extra", {}).get("hook_prefix", "")

    def _name(self, name: str) -> str:
        return self._prefix() + name

    def _need(self, name: str) -> Tensor:
        full = self._name(name)
        if full not in self.cache_dict:
            raise self._missing(full)
        return self.cache_dict[full]

    # ----------------------------------------------------------- key lookup
    def __getitem__(self, key: Any) -> Tensor:
        """``cache[name]``, TransformerLens shorthand (``cache["resid_post", 3]``, ``cache["pattern", 0]``),
        and the model's aliases (conv nets: ``blocks.{i}.hook_resid_post`` numbers all blocks in order).

        A name that is not cached raises ``KeyError`` naming the closest cached names."""
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        if isinstance(key, str):
            try:
                tries = [key, get_act_name(key)]
            except Exception:  # not TL shorthand either
                tries = [key]
        elif isinstance(key, tuple) and key and isinstance(key[0], str):
            if len(key) > 1 and key[1] is not None and key[1] < 0:
                key = (key[0], self._n_layers() + key[1], *key[2:])
            tries = [get_act_name(*key)]
        else:
            return self.cache_dict[key]
        found = self._resolve_key(tries)
        if found is None:
            raise self._missing(key if isinstance(key, str) else tries[-1])
        return self.cache_dict[found]

    def _resolve_key(self, tries: list[str]) -> Optional[str]:
        """The cached name for the first of ``tries`` found directly, under the tower prefix, or via an alias."""
        prefix = self._prefix()
        cands: list[str] = []
        for t in tries:
            cands += [t, prefix + t] if prefix and not t.startswith(prefix) else [t]
        for c in cands:
            if c in self.cache_dict:
                return c
        aliases_fn = getattr(getattr(self.model, "adapter", None), "aliases", None)
        aliases = aliases_fn() if callable(aliases_fn) else {}
        for c in cands:
            for target in (aliases.get(c), f"{c}.hook_out"):
                if target is not None and target in self.cache_dict:
                    return target
        return None

    def _missing(self, name: str) -> UnknownCacheKeyError:
        """The KeyError for ``name``: the closest cached names, and whether ``names_filter`` left out a real hook."""
        prefix = self._prefix()
        hooks = set(getattr(self.model, "hook_dict", None) or ())
        hooks |= {h[len(prefix) :] for h in hooks if prefix and h.startswith(prefix)}
        aliases_fn = getattr(getattr(self.model, "adapter", None), "aliases", None)
        if callable(aliases_fn):
            hooks |= set(aliases_fn())
        return unknown_cache_key(name, self.cache_dict, hook_names=hooks)

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
        if self.model.cfg.extra.get("additive_resid", True) is False:
            raise ValueError(
                f"A {self.model.cfg.family} block is not a linear residual block: resid_post = "
                f"{self.model.cfg.extra.get('resid_post', 'a nonlinear function of resid_pre + branch_out')} (a ReLU "
                "after the residual sum), so a stage has no additive decomposition into blocks. "
                f"{_FINAL_FEATURES_HINT}"
            )
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
                    "so the stage has no additive decomposition; use accumulated_resid(stage=...) instead. "
                    f"{_FINAL_FEATURES_HINT}"
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

    # ----------------------------------------------------------- neurons and the full decomposition
    def _tl(self, name: str) -> Tensor:
        """A TransformerLens matrix of the cached tower (``model.W_out`` ...)."""
        tower = getattr(self.model.adapter, "tower", None)
        return self.model.tl_weight(name, tower=tower)

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Any = None,
        pos_slice: Any = None,
        project_output_onto: Optional[Tensor] = None,
    ) -> Tensor:
        """Each MLP neuron's write into the residual stream, ``mlp.hook_post[..., n] * W_out[layer, n]``
        (layer scale folded into ``W_out``; ``b_out`` not included): ``[batch, pos, d_mlp, d_model]``."""
        ns, ps = _slice(neuron_slice), _slice(pos_slice)
        acts = ps.apply(self._need(f"blocks.{layer}.mlp.hook_post"), dim=-2)
        W_out = self._tl("W_out")[layer]
        acts, W_out = ns.apply(acts, dim=-1), ns.apply(W_out, dim=0)
        if project_output_onto is None:
            return acts[..., None] * W_out
        proj = W_out @ project_output_onto
        return acts * proj if project_output_onto.ndim == 1 else acts[..., None] * proj

    def _stack_neuron_results_apply_ln_projected(
        self, layer: int, pos_slice: Any, neuron_slice: Any, project_2d: Tensor, mlp_input: bool = False
    ) -> Tensor:
        stack = self.stack_neuron_results(
            layer, pos_slice=pos_slice, neuron_slice=neuron_slice, apply_ln=True, mlp_input=mlp_input
        )
        return stack @ project_2d

    def get_full_resid_decomposition(
        self,
        layer: Optional[int] = None,
        mlp_input: bool = False,
        expand_neurons: Optional[bool] = None,
        apply_ln: bool = False,
        pos_slice: Any = None,
        return_labels: bool = False,
        project_output_onto: Optional[Tensor] = None,
        stage: Optional[int] = None,
    ):
        """TransformerLens's full decomposition of the residual stream entering ``layer``.

        Transformers: every head's result (``L{l}H{h}``), every neuron's (``L{l}N{n}``; or each MLP's
        output with ``expand_neurons=False``), ``embed`` and ``pos_embed`` (or one ``embed`` row, the
        stream after ``ln_pre`` / ``norm_pre`` when the model normalizes the embeddings), and ``bias`` (the
        accumulated ``b_O`` / ``b_out``, :meth:`HookedVisionModel.accumulated_bias`), stacked
        ``[components, batch, pos, d_model]``; they sum to the stream. Conv nets with an additive stream
        (ConvNeXt, MobileNetV2): ``stage=s`` gives the block-level split of :meth:`decompose_resid`
        (biases stay inside each branch; ``expand_neurons`` is not available)."""
        if stage is not None or self._is_staged():
            if expand_neurons:
                raise ValueError("conv nets decompose into blocks (decompose_resid(stage=...)); expand_neurons=False")
            if project_output_onto is not None or apply_ln or pos_slice is not None:
                raise ValueError("conv-net decompositions are [components, batch, C, H, W]; use logit_attrs on them")
            return self._staged_decomposition(self._stage(stage), return_labels)
        expand = True if expand_neurons is None else expand_neurons
        layer = self._layer(layer)
        ps = _slice(pos_slice)
        heads, labels = self.stack_head_results(layer + (1 if mlp_input else 0), pos_slice=ps, return_labels=True)
        comps = [heads]
        if not self.model.cfg.attn_only and layer > 0:
            if expand:
                neurons, nl = self.stack_neuron_results(layer, pos_slice=ps, return_labels=True)
            else:
                neurons, nl = self.decompose_resid(
                    layer, mode="mlp", incl_embeds=False, pos_slice=ps, return_labels=True
                )
            comps.append(neurons)
            labels = labels + list(nl)
        embeds, el = self.decompose_resid(0, pos_slice=ps, return_labels=True)
        comps.append(embeds)
        labels = labels + list(el)
        bias = self.model.accumulated_bias(
            layer, mlp_input, include_mlp_biases=expand, tower=getattr(self.model.adapter, "tower", None)
        )
        comps.append(bias.to(heads.dtype).expand((1,) + tuple(embeds.shape[1:])))
        labels.append("bias")
        stack = torch.cat(comps, dim=0)
        if apply_ln:
            stack = self.apply_ln_to_stack(stack, layer, pos_slice=ps, mlp_input=mlp_input)
        if project_output_onto is not None:
            stack = stack @ project_output_onto
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
        if hasattr(readout, "stream_attrs"):  # conv nets: the last stage's map through the head
            lookup = self._batch_lookup(batch_slice if has_batch_dim else None)
            return readout.stream_attrs(stack, classes, incorrect_classes, lookup, per_example=has_batch_dim)
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

    def _batch_lookup(self, batch_slice: Any = None):
        def lookup(name: str) -> Tensor:
            t = self[name]
            return _slice(batch_slice).apply(t, dim=0) if batch_slice is not None else t

        return lookup

    def decompose_final_features(
        self,
        classes: ClassSpec,
        incorrect_classes: ClassSpec = None,
        mode: Literal["full", "channel", "location"] = "channel",
        return_bias: bool = False,
    ):
        """Conv nets: the class logit (or logit difference) split over the final feature map.

        Exact where the stream is not additive (ResNet's ReLU after each sum): the head is a global
        average pool + linear classifier (ConvNeXt: + a LayerNorm whose scale is frozen at this
        forward), so ``contribution[b, c, y, x] = W[class, c] * features[b, c, y, x] / (H * W)``.
        ``mode``: ``"channel"`` -> ``[batch, C]``, ``"location"`` -> ``[batch, H, W]``, ``"full"`` ->
        ``[batch, C, H, W]``. With ``return_bias`` also the per-example bias ``[batch]``; the parts
        summed plus the bias equal the logit (difference)."""
        readout = self.model.adapter.readout()
        if not hasattr(readout, "final_feature_attrs"):
            raise NotImplementedError(
                "decompose_final_features is for conv nets; on transformers use decompose_resid / "
                "stack_head_results / get_full_resid_decomposition with logit_attrs."
            )
        attrs, bias = readout.final_feature_attrs(classes, incorrect_classes, self._batch_lookup())
        if mode == "channel":
            attrs = attrs.sum((-2, -1))
        elif mode == "location":
            attrs = attrs.sum(-3)
        elif mode != "full":
            raise ValueError(f"mode must be 'full', 'channel' or 'location', got {mode!r}")
        return (attrs, bias) if return_bias else attrs

    def folded_head_bias(self, classes: ClassSpec, incorrect_classes: ClassSpec = None) -> Tensor:
        """The logit part no component explains (head bias + head applied to final-LN bias).

        Conv nets: what :meth:`logit_attrs` of a full last-stage decomposition leaves out (classifier
        bias, head-norm bias; MobileNetV2: also the head conv's shift and saturated ReLU6 units through
        the frozen gates, so it is per image)."""
        readout = self.model.adapter.readout()
        if hasattr(readout, "stream_bias"):
            return readout.stream_bias(classes, incorrect_classes, self._batch_lookup())
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
