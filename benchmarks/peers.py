"""visionlens against its peers, in one run: the cost of caching activations, as a ratio to the raw forward.

For every case (model, image size, batch) and every variant that applies, one process measures, with
random weights, fp32, eval mode, under ``torch.no_grad()``:

* ``raw``: the source module's own forward (a pristine copy, no wrapper);
* ``vl_no_hooks`` / ``vl_cache_all`` / ``vl_cache_resid``: visionlens (``HookedVisionModel.from_module``
  on a copy of the same module) with no hooks, ``run_with_cache()`` of every hook, and of the residual
  stream only;
* ``torch_hooks`` / ``torch_hooks_clone``: plain ``register_forward_hook`` on every submodule, storing each
  call's output as returned / a clone of it (the correct hand-written baseline);
* ``nnsight``: ``NNsight(module).trace(x)`` saving every submodule's output (first call of each);
* ``torchlens``: ``torchlens.trace(module, x)`` (saves every operation; torch unwrapped after each call so
  the other variants run on plain torch);
* ViT cases only: ``prisma_fwd`` / ``prisma_cache`` (ViT-Prisma's ``HookedViT``, built from the case's
  config and loaded with the *same timm weights* through ViT-Prisma's own ``convert_timm_weights``),
  ``hf_raw`` (transformers' ``ViTForImageClassification`` holding the same weights) and ``tl_bridge_fwd`` /
  ``tl_bridge_cache`` (TransformerLens 4's ``TransformerBridge`` booted on that HF model).

Rounds are interleaved: every round runs every variant once, in an order rotated each round; each
variant's ratio is taken to the same round's ``raw`` time (the bridge's also to ``hf_raw``); the
tables give medians, interquartile ranges and a bootstrap 95% interval of the median ratio.

Values are checked, not only timed: a reference pass clones every submodule's output and records which
outputs a later in-place op (``ReLU(inplace=True)``, ``out += identity``) overwrote. Each variant's
stored values are compared with that reference (module outputs by path; TransformerLens-style hooks such as
``resid_post``, ``attn_out`` and ``mlp.hook_pre`` with the timm modules they equal; ResNet block outputs).
A variant whose stored value of an overwritten output differs is **aliased**: it kept a reference, not
the value, so what it returns is wrong under in-place ops.

    python benchmarks/peers.py                                   # every case -> benchmarks/results/peers_cpu.{json,md}
    python benchmarks/peers.py --quick --cases resnet18_32_b1 vit_tiny_p4_32_b1 --threads 1 --note "busy"
    make bench-peers                                             # creates .venv-peers with the peers, runs this
    make bench-peers PEERS_ARGS='--note "machine idle"'         # the same, with a note in the results

The run also calls ``benchmarks/fv_vs_lucent.compare`` (feature visualization vs Lucent) when that file
exists (``--fv``; on by default in a full run).

A peer that fails to import, to set up or to run a case is recorded with its error text.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESID = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
PEER_DISTS = (
    "torch",
    "torchvision",
    "timm",
    "visionlens",
    "nnsight",
    "vit-prisma",
    "transformer-lens",
    "transformers",
    "torchlens",
    "diffusers",
    "torch-lucent",
    "captum",
)
ALIAS_TOL = 1e-4  # relative max-abs error above which a stored value is not the module's output


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    """One model at one input size and batch."""

    key: str
    label: str
    kind: str  # "conv", "vit" or "unet"
    source: str  # how the module is built (library + name + kwargs)
    size: int
    batch: int


CASES: dict[str, Case] = {
    c.key: c
    for c in (
        Case("resnet50_224_b8", "ResNet-50, 224 px, batch 8", "conv", "timm:resnet50", 224, 8),
        Case("vit_b16_224_b8", "ViT-B/16, 224 px, batch 8", "vit", "timm:vit_base_patch16_224", 224, 8),
        Case("resnet18_32_b1", "ResNet-18, 32 px, batch 1", "conv", "torchvision:resnet18", 32, 1),
        Case("resnet18_32_b16", "ResNet-18, 32 px, batch 16", "conv", "torchvision:resnet18", 32, 16),
        Case(
            "vit_tiny_p4_32_b1",
            "ViT-tiny p4, 32 px, batch 1",
            "vit",
            "timm:vit_tiny_patch16_224(img_size=32, patch_size=4)",
            32,
            1,
        ),
        Case("resnet50_160_b4", "ResNet-50, 160 px, batch 4", "conv", "timm:resnet50", 160, 4),
        Case("vit_s16_224_b4", "ViT-S/16, 224 px, batch 4", "vit", "timm:vit_small_patch16_224", 224, 4),
        Case(
            "unet_small_b2",
            "small UNet (hook_overhead's), 32 px, batch 2",
            "unet",
            "visionlens.diffusion.tiny_unet('conditional', sample_size=32)",
            32,
            2,
        ),
    )
}
QUICK_CASES = ("resnet18_32_b1", "vit_tiny_p4_32_b1")


def build_source(case: Case) -> torch.nn.Module:
    """The case's module with seeded random weights, in eval mode (never wrapped: the ``raw`` baseline)."""
    torch.manual_seed(0)
    if case.key.startswith("unet"):
        from visionlens.diffusion import tiny_unet

        return tiny_unet("conditional", sample_size=case.size).eval()
    lib, name = case.source.split(":", 1)
    if lib == "torchvision":
        import torchvision

        return getattr(torchvision.models, name)().eval()
    import timm

    kw: dict[str, Any] = {"img_size": 32, "patch_size": 4} if "patch_size=4" in name else {}
    return timm.create_model(name.split("(")[0], pretrained=False, **kw).eval()


def case_inputs(case: Case, hooked: Any) -> tuple[tuple, dict]:
    """Seeded inputs: an image batch, or the UNet adapter's own example call."""
    if case.kind == "unet":
        return hooked.adapter.example_inputs(image_size=case.size, batch=case.batch)
    g = torch.Generator().manual_seed(1)
    return (torch.randn(case.batch, 3, case.size, case.size, generator=g),), {}


def resid_filter(case: Case) -> Callable[[str], bool]:
    """The residual stream's hooks (for the UNet: each resnet block's output)."""
    if case.kind == "unet":  # every resnet of every block (hook_overhead.py's filter keeps only the mid block's)
        return lambda n: ".resnets." in n and n.endswith(".hook_out") and n.split(".resnets.")[1].count(".") == 1
    return lambda n: n.endswith(RESID)


# ----------------------------------------------------------------------------- reference values
@dataclass
class Reference:
    """Every submodule's outputs (cloned, one per call), the first-call order, and the outputs later overwritten."""

    values: dict[str, list[torch.Tensor]]
    order: list[str]
    mutated: list[str]
    n_calls: int


def reference(src: torch.nn.Module, args: tuple, kwargs: dict) -> Reference:
    """Clone each submodule output; an output whose version counter moved after its hook was overwritten in place."""
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor, int]]] = {}
    calls = [0]

    def hook(name: str) -> Callable:
        def fn(_mod: torch.nn.Module, _inp: Any, out: Any) -> None:
            calls[0] += 1
            if isinstance(out, torch.Tensor):
                seen.setdefault(name, []).append((out, out.detach().clone(), out._version))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in src.named_modules() if n]
    try:
        with torch.no_grad():
            src(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    mutated = [n for n, outs in seen.items() if any(t._version != v for t, _, v in outs)]
    return Reference({n: [c for _, c, _ in outs] for n, outs in seen.items()}, list(seen), mutated, calls[0])


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref| (inf on a shape mismatch)."""
    if tuple(a.shape) != tuple(ref.shape):
        return float("inf")
    return float((a.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def check_values(values: dict[str, torch.Tensor], ref: Reference) -> dict[str, Any]:
    """Compare a variant's stored values (by source-module path) with the reference.

    A module called more than once (a shared ``ReLU``) matches when the value equals any of its calls' outputs.
    """
    common = [n for n in values if n in ref.values]
    errs = {n: min(rel_err(values[n], r) for r in ref.values[n]) for n in common}
    mut = [n for n in common if n in ref.mutated]
    bad_mut = [n for n in mut if errs[n] > ALIAS_TOL]
    wrong = [n for n in common if errs[n] > ALIAS_TOL and n not in ref.mutated]
    return {
        "n_compared": len(common),
        "n_overwritten_compared": len(mut),
        "max_rel_err": max(errs.values(), default=None),
        "aliased": (len(bad_mut) > 0) if mut else None,
        "aliased_examples": bad_mut[:3],
        "wrong_values": wrong[:5],
    }


def count_stored(stored: Any) -> tuple[int, int]:
    """(number of tensors, bytes) in a mapping / list of stored tensors (aliases counted once for bytes)."""
    tensors: list[torch.Tensor] = []
    items = stored.values() if hasattr(stored, "values") else stored
    for v in items:
        if isinstance(v, torch.Tensor):
            tensors.append(v)
        elif isinstance(v, (list, tuple)):
            tensors.extend(t for t in v if isinstance(t, torch.Tensor))
    ptrs = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
    return len(tensors), sum(b for _, b in ptrs)


# ----------------------------------------------------------------------------- variants
@dataclass
class Variant:
    """One timed callable and how to read what it stored."""

    name: str
    peer: str
    run: Callable[[], Any]
    stored: Callable[[Any], Any] = lambda r: {}
    values: Callable[[Any], dict[str, torch.Tensor]] = lambda r: {}
    hooks: Optional[int] = None  # hook points / hooked modules the variant installs or exposes
    notes: list[str] = field(default_factory=list)


# TransformerLens-style hook (suffix) -> the timm ViT submodule (suffix) whose output it equals
TL_TO_TIMM = {
    "hook_resid_post": "",
    "hook_attn_out": ".attn.proj",
    "mlp.hook_pre": ".mlp.fc1",
    "mlp.hook_post": ".mlp.act",
    "hook_mlp_out": ".mlp.fc2",
}


def tl_values(cache: Any) -> dict[str, torch.Tensor]:
    """TL-style ``blocks.l.<hook>`` -> timm's ``blocks.l<module>`` output (see :data:`TL_TO_TIMM`)."""
    out = {}
    for k, v in cache.items():
        parts = k.split(".")
        if len(parts) >= 3 and parts[0] == "blocks" and ".".join(parts[2:]) in TL_TO_TIMM:
            out[f"blocks.{parts[1]}{TL_TO_TIMM['.'.join(parts[2:])]}"] = v
    return out


def _vl_values(cache: Any, case: Case) -> dict[str, torch.Tensor]:
    """visionlens cache -> source-module paths (``path.hook_out``; ViT: :func:`tl_values`; ResNet blocks)."""
    out = {k[: -len(".hook_out")]: v for k, v in cache.items() if k.endswith(".hook_out")}
    if case.kind == "vit":
        out.update(tl_values(cache))
    if case.kind == "conv":  # stages.s.blocks.b.hook_resid_post is the output of ResNet's layer{s+1}.{b}
        for k, v in cache.items():
            p = k.split(".")
            if len(p) == 5 and p[0] == "stages" and p[2] == "blocks" and p[4] == "hook_resid_post":
                out[f"layer{int(p[1]) + 1}.{p[3]}"] = v
    return out


def visionlens_variants(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, hooked: Any) -> list[Variant]:
    """visionlens with no hooks, every hook cached, the residual stream cached."""
    keep = resid_filter(case)
    n_resid = sum(1 for n in hooked.hook_dict if keep(n))

    def cache_all() -> Any:
        return hooked.run_with_cache(*args, **kwargs)[1]

    def cache_resid() -> Any:
        return hooked.run_with_cache(*args, names_filter=keep, **kwargs)[1]

    notes = [f"adapter {hooked.cfg.adapter}"]
    return [
        Variant("vl_no_hooks", "visionlens", lambda: hooked(*args, **kwargs), hooks=len(hooked.hook_dict), notes=notes),
        Variant(
            "vl_cache_all",
            "visionlens",
            cache_all,
            lambda c: dict(c.items()),
            lambda c: _vl_values(c, case),
            hooks=len(hooked.hook_dict),
        ),
        Variant(
            "vl_cache_resid",
            "visionlens",
            cache_resid,
            lambda c: dict(c.items()),
            lambda c: _vl_values(c, case),
            hooks=n_resid,
        ),
    ]


def torch_hooks_variants(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, ref: Reference) -> list[Variant]:
    """``register_forward_hook`` on every submodule appending each call's output: as returned, and cloned."""
    return [_torch_hooks(src, args, kwargs, clone=False), _torch_hooks(src, args, kwargs, clone=True)]


def _torch_hooks(src: torch.nn.Module, args: tuple, kwargs: dict, clone: bool) -> Variant:
    mod = copy.deepcopy(src)
    store: dict[str, list] = {}

    def keep(name: str) -> Callable:
        def fn(_m: torch.nn.Module, _i: Any, o: Any) -> None:
            store.setdefault(name, []).append(o.clone() if clone and isinstance(o, torch.Tensor) else o)

        return fn

    for name, m in mod.named_modules():
        if name:
            m.register_forward_hook(keep(name))

    def run() -> dict[str, list]:
        store.clear()
        mod(*args, **kwargs)
        return store

    def firsts(s: dict[str, list]) -> dict[str, torch.Tensor]:
        return {n: v[0] for n, v in s.items() if isinstance(v[0], torch.Tensor)}

    n_mods = sum(1 for n, _ in mod.named_modules() if n)
    how = "a clone of every call's output" if clone else "every call's output as returned (no clone)"
    name = "torch_hooks_clone" if clone else "torch_hooks"
    return Variant(name, "torch hooks", run, lambda s: dict(s), firsts, hooks=n_mods, notes=["stores " + how])


def _get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def nnsight_variant(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, ref: Reference) -> Variant:
    """nnsight: trace and ``.save()`` every submodule's output, in execution order (nnsight requires it)."""
    from nnsight import NNsight

    model = NNsight(copy.deepcopy(src))
    order = list(ref.order)

    def run() -> dict[str, Any]:
        saved: dict[str, Any] = {}
        with model.trace(*args, **kwargs):
            for name in order:
                saved[name] = _get(model, name).output.save()
        return saved

    def values(s: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {n: v for n, v in s.items() if isinstance(v, torch.Tensor)}

    return Variant(
        "nnsight",
        "nnsight",
        run,
        values,
        values,
        hooks=len(order),
        notes=[f"first call of each of {len(order)} modules ({ref.n_calls} module calls)"],
    )


def torchlens_variant(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, ref: Reference) -> Variant:
    """torchlens: ``trace`` saving every layer (every tensor operation), torch unwrapped when done."""
    import torchlens as tl
    from torchlens.options import CaptureOptions

    mod = copy.deepcopy(src)

    def run() -> Any:
        return tl.trace(mod, list(args), input_kwargs=kwargs or None, capture=CaptureOptions(unwrap_when_done=True))

    def stored(log: Any) -> list[torch.Tensor]:
        return [op.out for op in log.saved_ops if isinstance(op.out, torch.Tensor)]

    def values(log: Any) -> dict[str, torch.Tensor]:
        out = {}
        for name in ref.order:
            with contextlib.suppress(Exception):
                t = log[name].out
                if isinstance(t, torch.Tensor):
                    out[name] = t
        return out

    return Variant(
        "torchlens",
        "torchlens",
        run,
        stored,
        values,
        notes=["logs every tensor op; wraps torch per call (unwrap_when_done=True)"],
    )


def _vit_dims(src: torch.nn.Module) -> dict[str, int]:
    blk = src.blocks[0]
    d = src.embed_dim
    heads = blk.attn.num_heads
    ps = src.patch_embed.patch_size
    return {
        "d_model": d,
        "n_heads": heads,
        "d_head": d // heads,
        "n_layers": len(src.blocks),
        "d_mlp": blk.mlp.fc1.out_features,
        "patch_size": ps[0] if isinstance(ps, tuple) else ps,
        "n_classes": src.num_classes,
    }


def prisma_variants(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, ref: Reference) -> list[Variant]:
    """ViT-Prisma's HookedViT with the case's timm weights (its own ``convert_timm_weights``), checked for parity."""
    from vit_prisma.configs.HookedViTConfig import HookedViTConfig
    from vit_prisma.models.base_vit import HookedViT
    from vit_prisma.prisma_tools.loading_from_pretrained import convert_timm_weights

    d = _vit_dims(src)
    cfg = HookedViTConfig(
        n_layers=d["n_layers"],
        d_model=d["d_model"],
        d_head=d["d_head"],
        n_heads=d["n_heads"],
        d_mlp=d["d_mlp"],
        activation_name="gelu",
        eps=1e-6,
        patch_size=d["patch_size"],
        image_size=case.size,
        n_classes=d["n_classes"],
        return_type="class_logits",
        use_wandb=False,
    )
    model = HookedViT(cfg).eval()
    model.load_state_dict(convert_timm_weights(src.state_dict(), cfg), strict=True)
    with torch.no_grad():
        parity = rel_err(model(*args), src(*args))
    note = f"same timm weights (convert_timm_weights, strict load); logits rel. err {parity:.1e}"

    def cache() -> Any:
        return model.run_with_cache(*args)[1]

    return [
        Variant("prisma_fwd", "ViT-Prisma", lambda: model(*args), hooks=len(model.hook_dict), notes=[note]),
        Variant(
            "prisma_cache",
            "ViT-Prisma",
            cache,
            lambda c: dict(c.items()),
            tl_values,
            hooks=len(model.hook_dict),
            notes=[note],
        ),
    ]


def hf_vit_from_timm(src: torch.nn.Module, size: int) -> torch.nn.Module:
    """transformers' ViTForImageClassification holding a timm ViT's weights (q/k/v split from timm's qkv)."""
    from transformers import ViTConfig, ViTForImageClassification

    d = _vit_dims(src)
    cfg = ViTConfig(
        hidden_size=d["d_model"],
        num_hidden_layers=d["n_layers"],
        num_attention_heads=d["n_heads"],
        intermediate_size=d["d_mlp"],
        image_size=size,
        patch_size=d["patch_size"],
        num_labels=d["n_classes"],
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        architectures=["ViTForImageClassification"],
    )
    hf = ViTForImageClassification(cfg).eval()
    t = src.state_dict()
    sd = {
        "vit.embeddings.cls_token": t["cls_token"],
        "vit.embeddings.position_embeddings": t["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": t["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": t["patch_embed.proj.bias"],
        "vit.layernorm.weight": t["norm.weight"],
        "vit.layernorm.bias": t["norm.bias"],
        "classifier.weight": t["head.weight"],
        "classifier.bias": t["head.bias"],
    }
    for i in range(d["n_layers"]):
        a, b = f"blocks.{i}.", f"vit.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = t[a + f"attn.qkv.{kind}"].chunk(3, dim=0)
            sd.update(
                {
                    b + f"attention.q_proj.{kind}": q,
                    b + f"attention.k_proj.{kind}": k,
                    b + f"attention.v_proj.{kind}": v,
                    b + f"attention.o_proj.{kind}": t[a + f"attn.proj.{kind}"],
                    b + f"layernorm_before.{kind}": t[a + f"norm1.{kind}"],
                    b + f"layernorm_after.{kind}": t[a + f"norm2.{kind}"],
                    b + f"mlp.fc1.{kind}": t[a + f"mlp.fc1.{kind}"],
                    b + f"mlp.fc2.{kind}": t[a + f"mlp.fc2.{kind}"],
                }
            )
    hf.load_state_dict(sd, strict=True)
    return hf


def hf_bridge_variants(case: Case, src: torch.nn.Module, args: tuple, kwargs: dict, ref: Reference) -> list[Variant]:
    """transformers' own ViT forward, and TransformerLens 4's TransformerBridge booted on a copy of it."""
    hf = hf_vit_from_timm(src, case.size)
    x = args[0]
    with torch.no_grad():
        parity = rel_err(hf(pixel_values=x).logits, src(x))
    hf_note = f"HF ViTForImageClassification, same timm weights, its default attention; logits rel. err {parity:.1e}"
    out = [Variant("hf_raw", "transformers", lambda: hf(pixel_values=x).logits, notes=[hf_note])]
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = TransformerBridge.boot_transformers("local/vit-from-timm", hf_model=copy.deepcopy(hf))
    bridge.eval()
    with torch.no_grad():
        b_parity = rel_err(bridge(x), src(x))
    note = f"boot_transformers(hf_model=...) on the HF copy (forces eager attention); logits rel. err {b_parity:.1e}"

    def cache() -> Any:
        return bridge.run_with_cache(x)[1]

    out += [
        Variant("tl_bridge_fwd", "TL4 bridge", lambda: bridge(x), hooks=len(bridge.hook_dict), notes=[note]),
        Variant(
            "tl_bridge_cache",
            "TL4 bridge",
            cache,
            lambda c: dict(c.items()),
            tl_values,
            hooks=len(bridge.hook_dict),
            notes=[note],
        ),
    ]
    return out


PEERS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    # name -> (setup(case, src, args, kwargs, ref) -> Variant | [Variant], case kinds it applies to)
    "torch_hooks": (torch_hooks_variants, ("conv", "vit", "unet")),
    "nnsight": (nnsight_variant, ("conv", "vit", "unet")),
    "torchlens": (torchlens_variant, ("conv", "vit", "unet")),
    "prisma": (prisma_variants, ("vit",)),
    "tl_bridge": (hf_bridge_variants, ("vit",)),
}
NOT_APPLICABLE = {
    "prisma": "ViT-Prisma's HookedViT is a ViT/CLIP reimplementation: no conv nets or UNets",
    "tl_bridge": "TransformerBridge adapts transformers models (ViT/DeiT among vision): no timm/torchvision "
    "conv nets or diffusers UNets",
}


def _err(e: BaseException) -> str:
    tb = traceback.format_exception_only(type(e), e)
    return "".join(tb).strip()[-800:]


# ----------------------------------------------------------------------------- timing
MIN_TIMING_S = 0.1  # a timing is at least this long: a fast forward is timed over several calls in a row


def timeit(fn: Callable[[], Any], number: int = 1) -> float:
    """Seconds per call over ``number`` calls in a row (each result dropped before the next call)."""
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calls_per_timing(seconds_per_call: float, min_time: float = MIN_TIMING_S) -> int:
    """How many calls in a row make one timing of at least ``min_time`` (1 for a forward that long already)."""
    return max(1, int(min_time / max(seconds_per_call, 1e-9)))


def interleaved(
    variants: dict[str, Callable[[], Any]], rounds: int, warmup: int, min_time: float = MIN_TIMING_S
) -> tuple[dict, dict, int]:
    """``(times, errors, number)``: per-variant seconds per call over ``rounds`` rotated rounds, each timing
    ``number`` calls in a row (the same for every variant, from the first variant's warm-up time, so that one
    timing of a fast case is not a single call's noise); a variant that raises is dropped."""
    names = list(variants)
    errors: dict[str, str] = {}
    first: list[float] = []
    with torch.no_grad():
        for _ in range(warmup):
            for n in list(names):
                try:
                    t = timeit(variants[n])
                    if n == names[0]:
                        first.append(t)
                except Exception as e:  # a peer failing on this case: record and drop it
                    errors[n] = _err(e)
                    names.remove(n)
        number = calls_per_timing(min(first), min_time) if first else 1
        times: dict[str, list[float]] = {n: [] for n in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                if n in errors:
                    continue
                try:
                    times[n].append(timeit(variants[n], number))
                except Exception as e:
                    errors[n] = _err(e)
            gc.collect()
    return {n: t for n, t in times.items() if n not in errors}, errors, number


def percentile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 1])."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def bootstrap_median(xs: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median."""
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(n))
    return meds[int(0.025 * n)], meds[min(int(0.975 * n), n - 1)]


def summarize(times: dict[str, list[float]], baseline: str) -> dict[str, dict[str, Any]]:
    """Per variant: median ms, and per-round ratios to ``baseline`` (median, IQR, bootstrap 95% CI)."""
    out: dict[str, dict[str, Any]] = {}
    base = times.get(baseline)
    for name, ts in times.items():
        row: dict[str, Any] = {"median_ms": 1000 * statistics.median(ts), "n": len(ts)}
        if base and name != baseline:
            ratios = [t / b for t, b in zip(ts, base)]
            lo, hi = bootstrap_median(ratios)
            row.update(
                ratio=statistics.median(ratios),
                ratio_iqr=[percentile(ratios, 0.25), percentile(ratios, 0.75)],
                ratio_ci95=[lo, hi],
            )
        out[name] = row
    return out


# ----------------------------------------------------------------------------- one case
def setup_variants(case: Case, peers: Sequence[str]) -> tuple[list[Variant], dict[str, str], dict[str, Any]]:
    """Build every variant of a case: ``(variants, peer errors / not-applicable reasons, case info)``."""
    from visionlens import HookedVisionModel

    src = build_source(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hooked = HookedVisionModel.from_module(copy.deepcopy(src))
    args, kwargs = case_inputs(case, hooked)
    ref = reference(copy.deepcopy(src), args, kwargs)
    info = {
        "n_modules_called": len(ref.order),
        "n_module_calls": ref.n_calls,
        "n_outputs_overwritten_in_place": len(ref.mutated),
        "overwritten_examples": ref.mutated[:4],
    }
    raw_src = copy.deepcopy(src)
    variants = [Variant("raw", "raw", lambda: raw_src(*args, **kwargs))]
    variants += visionlens_variants(case, src, args, kwargs, hooked)
    status: dict[str, str] = {}
    for peer in peers:
        setup, kinds = PEERS[peer]
        if case.kind not in kinds:
            status[peer] = "n/a: " + NOT_APPLICABLE[peer]
            continue
        try:
            made = setup(case, src, args, kwargs, ref)
            variants += made if isinstance(made, list) else [made]
            status[peer] = "ok"
        except Exception as e:
            status[peer] = "setup failed: " + _err(e)
    return variants, status, {**info, "_ref": ref}


def check_variant(v: Variant, ref: Reference) -> dict[str, Any]:
    """One untimed call: counts and the value check."""
    with torch.no_grad():
        res = v.run()
    stored = v.stored(res)
    n, nbytes = count_stored(stored)
    out = {"stored_tensors": n, "stored_mb": nbytes / 2**20, "values": check_values(v.values(res), ref)}
    if isinstance(stored, dict) and n:
        out["largest_stored_mb"] = largest(stored)
    return out


def _lists(stored: dict[str, Any]) -> bool:
    return any(isinstance(v, list) for v in stored.values())


def largest(stored: dict[str, Any], k: int = 3) -> dict[str, float]:
    """The ``k`` biggest stored tensors (MB), to see where a cache's memory goes."""
    flat = {f"{n}#{i}": t for n, v in stored.items() for i, t in enumerate(v)} if _lists(stored) else stored
    sizes = {n: t.numel() * t.element_size() / 2**20 for n, t in flat.items() if isinstance(t, torch.Tensor)}
    return {n: round(mb, 2) for n, mb in sorted(sizes.items(), key=lambda kv: -kv[1])[:k]}


def run_case(case: Case, peers: Sequence[str], rounds: int, warmup: int, log: Callable[[str], Any]) -> dict:
    """Set up, check and time every variant of one case."""
    t0 = time.perf_counter()
    variants, status, info = setup_variants(case, peers)
    ref: Reference = info.pop("_ref")
    checks: dict[str, Any] = {}
    for v in variants[1:]:
        try:
            checks[v.name] = check_variant(v, ref)
        except Exception as e:
            checks[v.name] = {"error": _err(e)}
    runnable = {v.name: v.run for v in variants if "error" not in checks.get(v.name, {})}
    log(f"[{case.key}] {len(runnable)} variants, {rounds} rounds: {', '.join(runnable)}")
    times, errors, number = interleaved(runnable, rounds, warmup)
    stats = summarize(times, "raw")
    if "hf_raw" in times:
        for name, row in summarize(times, "hf_raw").items():
            if name.startswith("tl_bridge"):
                stats[name]["vs_hf_raw"] = {k: row[k] for k in ("ratio", "ratio_iqr", "ratio_ci95")}
    rows = {}
    for v in variants:
        row = {"peer": v.peer, "hooks": v.hooks, "notes": v.notes, **checks.get(v.name, {}), **stats.get(v.name, {})}
        if v.name in errors:
            row["error"] = errors[v.name]
        rows[v.name] = row
    return {
        "case": case.key,
        "label": case.label,
        "source": case.source,
        "kind": case.kind,
        "image_size": case.size,
        "batch": case.batch,
        **info,
        "peers": status,
        "variants": rows,
        "calls_per_timing": number,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------- metadata and output
def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {}
    for d in PEER_DISTS:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out


def git_state() -> dict[str, Any]:
    """The visionlens commit measured, and whether its core had uncommitted changes."""

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", "visionlens", "adapters", "plugins")
        return {"commit": git("rev-parse", "HEAD"), "core_dirty": bool(dirty)}
    except Exception as e:  # no git here
        return {"error": _err(e)}


VARIANT_ORDER = (
    "vl_no_hooks",
    "vl_cache_all",
    "vl_cache_resid",
    "nnsight",
    "torch_hooks",
    "torch_hooks_clone",
    "torchlens",
    "prisma_fwd",
    "prisma_cache",
    "hf_raw",
    "tl_bridge_fwd",
    "tl_bridge_cache",
)
SUMMARY_COLS = (
    ("vl_no_hooks", "vl no hooks"),
    ("vl_cache_all", "vl cache all"),
    ("vl_cache_resid", "vl resid"),
    ("nnsight", "nnsight"),
    ("torch_hooks", "torch hooks"),
    ("torch_hooks_clone", "torch hooks + clone"),
    ("torchlens", "torchlens"),
    ("prisma_cache", "ViT-Prisma cache"),
    ("tl_bridge_cache", "TL4 bridge cache"),
)


def fmt_ratio(row: Optional[dict]) -> str:
    """``1.23x`` (with ``aliased`` / ``wrong`` marks), ``error`` or ``-``."""
    if not row:
        return "-"
    if "ratio" not in row:
        return "error" if row.get("error") else "-"
    s = f"{row['ratio']:.2f}x"
    vals = row.get("values") or {}
    if vals.get("aliased"):
        s += " (aliased)"
    if vals.get("wrong_values"):
        s += " (wrong values)"
    return s


def _values_cell(row: dict) -> str:
    v = row.get("values")
    if not v or not v.get("n_compared"):
        return "-"
    alias = {True: "**aliased**", False: "copies", None: "n/a (no overwritten output)"}[v["aliased"]]
    return f"{alias}; {v['n_compared']} compared, max rel. err {v['max_rel_err']:.1e}"


def to_markdown(res: dict) -> str:
    """Summary table (ratios to raw), then per-case details with intervals, counts and value checks."""
    m = res["meta"]
    head = "QUICK SMOKE RUN, not a measurement: " if m["quick"] else ""
    lines = [
        f"# visionlens vs peers: cost of caching activations ({head}{m['rounds']} interleaved rounds, "
        f"{m['warmup']} warm-up)",
        "",
        f"`{m['command']}`; torch {m['versions'].get('torch')}, {m['threads']} threads, {m['platform']}, "
        f"{m['cpu_count']} CPUs; load average {fmt_load(m['loadavg_before'])} before, "
        f"{fmt_load(m['loadavg_after'])} after; note: {m['note'] or '-'}; visionlens {m['git'].get('commit', '?')[:10]}"
        f"{' + uncommitted core changes' if m['git'].get('core_dirty') else ''}; {m['utc_start']} to {m['utc_end']}.",
        "",
        "Random weights, fp32, eval, `torch.no_grad()`. Each cell: median over rounds of (variant time / the same "
        "round's raw forward); a timing is one call, or the mean of several calls in a row where one raw forward "
        f"takes under {MIN_TIMING_S:g} s (the same count for every variant of a case). "
        "*aliased*: the peer stored a reference that a later in-place op overwrote "
        "(its cached value is wrong). Peer versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v and k not in ("torch",))
        + ".",
        "",
        "| case | raw ms | " + " | ".join(c for _, c in SUMMARY_COLS) + " |",
        "|---|---|" + "---|" * len(SUMMARY_COLS),
    ]
    for c in res["cases"]:
        if "error" in c:
            lines.append(f"| {c['label']} | error: {c['error'][:120]} |" + " |" * len(SUMMARY_COLS))
            continue
        v = c["variants"]
        raw = v.get("raw", {}).get("median_ms")
        cells = [fmt_ratio(v.get(k)) for k, _ in SUMMARY_COLS]
        lines.append(f"| {c['label']} | {raw:.1f} | " + " | ".join(cells) + " |" if raw else f"| {c['label']} | - |")
    for c in res["cases"]:
        lines += case_details(c)
    if res.get("featurevis"):
        lines += ["", featurevis_markdown(res["featurevis"])]
    return "\n".join(lines) + "\n"


def fmt_load(x: Sequence[float]) -> str:
    return "/".join(f"{v:.1f}" for v in x)


def case_details(c: dict) -> list[str]:
    """One case's table: every variant with intervals, hooks, stored tensors and the value check."""
    if "error" in c:
        return ["", f"## {c['label']}", "", f"error: {c['error']}"]
    lines = [
        "",
        f"## {c['label']} (`{c['source']}`)",
        "",
        f"{c['n_modules_called']} submodules called ({c['n_module_calls']} calls); "
        f"{c['n_outputs_overwritten_in_place']} of their outputs overwritten in place later in the forward"
        + (f" (e.g. {', '.join(c['overwritten_examples'])})" if c["overwritten_examples"] else "")
        + f". Each timing: {c.get('calls_per_timing', 1)} call(s) in a row, per call.",
        "",
        "| variant | peer | median ms | ratio to raw | IQR | 95% CI | hooks | stored tensors | MB | values | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("raw", *VARIANT_ORDER):
        r = c["variants"].get(name)
        if r is None:
            continue
        if "median_ms" not in r:
            lines.append(f"| {name} | {r['peer']} | error: {str(r.get('error', '?'))[:200]} |" + " |" * 8)
            continue
        ratio = f"{r['ratio']:.3f}x" if "ratio" in r else "1"
        iqr = "{:.2f}-{:.2f}".format(*r["ratio_iqr"]) if "ratio_iqr" in r else ""
        ci = "{:.2f}-{:.2f}".format(*r["ratio_ci95"]) if "ratio_ci95" in r else ""
        if "vs_hf_raw" in r:
            ratio += f" ({r['vs_hf_raw']['ratio']:.2f}x HF's forward)"
        notes = "; ".join(r.get("notes") or [])
        stored = r.get("stored_tensors", "")
        mb = f"{r['stored_mb']:.1f}" if r.get("stored_tensors") else ""
        lines.append(
            f"| {name} | {r['peer']} | {r['median_ms']:.1f} | {ratio} | {iqr} | {ci} | {r.get('hooks') or ''} | "
            f"{stored} | {mb} | {_values_cell(r)} | {notes} |"
        )
    for peer, st in c["peers"].items():
        if st != "ok":
            lines.append(f"\n- {peer}: {st}")
    return lines


# ----------------------------------------------------------------------------- feature visualization (optional)
def featurevis(quick: bool, log: Callable[[str], Any]) -> dict[str, Any]:
    """``benchmarks/fv_vs_lucent.compare`` when that module exists (its result dict), else why not."""
    path = ROOT / "benchmarks" / "fv_vs_lucent.py"
    if not path.exists():
        return {"available": False, "reason": "benchmarks/fv_vs_lucent.py not present"}
    try:
        sys.path.insert(0, str(path.parent))
        import fv_vs_lucent

        wanted: dict[str, Any] = {"log": log}
        if quick:  # a smoke call with tiny step counts, not a measurement
            wanted.update(
                n_units=(1,), target_units=(1,), lucent_steps=8, draws=1, throughput_steps=2, throughput_rounds=1
            )
        accepted = inspect.signature(fv_vs_lucent.compare).parameters
        kwargs = {k: v for k, v in wanted.items() if k in accepted}
        return {"quick": quick, "compare_kwargs": sorted(kwargs), **fv_vs_lucent.compare(**kwargs)}
    except Exception as e:
        return {"available": False, "reason": "fv_vs_lucent.compare failed: " + _err(e)}


def featurevis_markdown(fv_res: dict[str, Any]) -> str:
    """fv_vs_lucent's own markdown section when it has one."""
    try:
        import fv_vs_lucent

        md = fv_vs_lucent.markdown(fv_res)
    except Exception:
        md = f"## Feature visualization vs Lucent\n\nnot run: {fv_res.get('reason')}\n"
    return ("(quick smoke call, not a measurement)\n\n" if fv_res.get("quick") else "") + md


# ----------------------------------------------------------------------------- main
def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="cases: " + ", ".join(CASES))
    ap.add_argument("--cases", nargs="+", choices=list(CASES), help="default: every case (--quick: the two smallest)")
    ap.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 20; --quick 3)")
    ap.add_argument("--warmup", type=int, help="warm-up rounds (default 2; --quick 1)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    ap.add_argument("--quick", action="store_true", help="smoke run: few rounds, small cases, marked as such")
    ap.add_argument(
        "--fv",
        choices=("auto", "on", "off"),
        default="auto",
        help="call benchmarks/fv_vs_lucent.compare (auto: on unless --quick or --cases)",
    )
    ap.add_argument("--note", default="", help="recorded in the results, e.g. what else ran on the machine")
    ap.add_argument("--out", help="output stem (default benchmarks/results/peers_cpu[_quick])")
    return ap.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: the TL bridge must not try the hub
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.cases or (list(QUICK_CASES) if args.quick else list(CASES))
    rounds = args.rounds or (3 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    load0, start = list(os.getloadavg()), dt.datetime.now(dt.timezone.utc)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    results = []
    for key in cases:
        try:
            res = run_case(CASES[key], args.peers, rounds, warmup, log)
        except Exception as e:  # the case itself (raw / visionlens) failed
            res = {"case": key, "label": CASES[key].label, "error": _err(e)}
        log(json.dumps({k: v for k, v in res.items() if k != "variants"})[:400])
        results.append(res)
        gc.collect()
    fv_on = args.fv == "on" or (args.fv == "auto" and not args.quick and not args.cases)
    fv_res = featurevis(args.quick, log) if fv_on else None
    meta = {
        "command": shlex.join(["python", "benchmarks/peers.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "rounds": rounds,
        "warmup": warmup,
        "peers": list(args.peers),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "git": git_state(),
        "note": args.note,
        "loadavg_before": load0,
        "loadavg_after": list(os.getloadavg()),
        "utc_start": start.strftime("%Y-%m-%d %H:%M"),
        "utc_end": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "alias_tolerance": ALIAS_TOL,
    }
    payload = {"meta": meta, "cases": results, "featurevis": fv_res}
    stem = Path(args.out) if args.out else RESULTS / ("peers_cpu_quick" if args.quick else "peers_cpu")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    md = to_markdown(payload)
    stem.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
