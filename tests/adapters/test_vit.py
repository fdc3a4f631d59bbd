"""timm ViT adapter: exact parity, residual identities, attention paths, cache decompositions."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from tests.conftest import no_hooks_left
from visionlens import HookedVisionModel
from visionlens.adapters.timm_vit import TimmViTAdapter

ATOL = 1e-5


def _custom(**kw):
    base = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=10)
    base.update(kw)
    return VisionTransformer(**base)


CONFIGS = {
    "vit_tiny_p16": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10),
    "vit_small_p32": lambda: timm.create_model("vit_small_patch32_224", img_size=64, num_classes=10, depth=4),
    "deit_distilled": lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=10),
    "avgpool_fcnorm": lambda: _custom(global_pool="avg", fc_norm=True),
    "registers_layerscale": lambda: _custom(reg_tokens=4, init_values=0.1, no_embed_class=True),
    "no_cls_avg": lambda: _custom(class_token=False, global_pool="avg"),
}


def _build(name):
    torch.manual_seed(0)
    src = CONFIGS[name]().eval()
    # random non-trivial biases / layer-norm params so every term matters
    with torch.no_grad():
        for n, p in src.named_parameters():
            if n.endswith("bias") or "norm" in n or "gamma" in n:
                p.add_(torch.randn_like(p) * 0.1)
    ref = copy.deepcopy(src)
    return HookedVisionModel.from_module(src), ref


@pytest.fixture(scope="module", params=list(CONFIGS))
def vit(request):
    model, ref = _build(request.param)
    x = torch.randn(2, 3, *model.cfg.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
    return request.param, model, x, expected


def test_adapter_is_vit(vit):
    _, model, _, _ = vit
    assert isinstance(model.adapter, TimmViTAdapter)
    assert model.cfg.family == "vit"


def test_parity_no_hooks(vit):
    _, model, x, expected = vit
    with torch.no_grad():
        out = model(x)
    assert (out - expected).abs().max().item() <= ATOL


def test_parity_cache_all(vit):
    _, model, x, expected = vit
    with torch.no_grad():
        out, cache = model.run_with_cache(x)
    assert (out - expected).abs().max().item() <= ATOL
    assert set(cache.keys()) == set(model.hook_dict)
    no_hooks_left(model)


def test_parity_identity_hooks_everywhere(vit):
    _, model, x, expected = vit
    calls = []

    def ident(t, hook):
        calls.append(hook.name)
        return t

    with torch.no_grad():
        out = model.run_with_hooks(x, fwd_hooks=[(lambda n: True, ident)])
    assert (out - expected).abs().max().item() <= ATOL
    assert set(calls) == set(model.hook_dict)
    no_hooks_left(model)


def test_residual_identities_exact(vit):
    _, model, x, _ = vit
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    for l in range(model.cfg.n_layers):
        pre, mid, post = (cache[f"blocks.{l}.hook_resid_{k}"] for k in ("pre", "mid", "post"))
        assert torch.equal(mid, pre + cache[f"blocks.{l}.hook_attn_out"])
        assert torch.equal(post, mid + cache[f"blocks.{l}.hook_mlp_out"])
        if l + 1 < model.cfg.n_layers:
            assert torch.equal(post, cache[f"blocks.{l + 1}.hook_resid_pre"])
    if model.cfg.extra["embed_sum_is_resid_pre"]:
        assert torch.allclose(
            cache["hook_embed"] + cache["hook_pos_embed"], cache["blocks.0.hook_resid_pre"], atol=1e-6
        )


def test_head_results_sum_to_attn_out(vit):
    _, model, x, _ = vit
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    for l in range(model.cfg.n_layers):
        attn = model.source.blocks[l].attn
        bias = attn.proj.bias
        gamma = getattr(model.source.blocks[l].ls1, "gamma", None)
        if gamma is not None:
            bias = bias * gamma
        total = cache[f"blocks.{l}.attn.hook_result"].sum(-2) + bias
        assert (total - cache[f"blocks.{l}.hook_attn_out"]).abs().max().item() <= 1e-5
        # computing per-head results from z gives the same thing
        from_z = model.adapter.head_results_from_z(l, cache[f"blocks.{l}.attn.hook_z"])
        assert (from_z - cache[f"blocks.{l}.attn.hook_result"]).abs().max().item() <= 1e-5


def test_pattern_is_softmax_of_scores(vit):
    _, model, x, _ = vit
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: "attn.hook_" in n)
    p = cache["blocks.0.attn.hook_pattern"]
    n_tok = x.shape[0], model.cfg.n_heads
    assert p.shape[:2] == n_tok and p.shape[-1] == p.shape[-2]
    assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)), atol=1e-5)
    assert torch.allclose(p, cache["blocks.0.attn.hook_attn_scores"].softmax(-1))
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / model.cfg.d_head**0.5
    assert torch.allclose(scores, cache["blocks.0.attn.hook_attn_scores"], atol=1e-5)


def test_explicit_attention_equals_fused(vit):
    _, model, x, expected = vit
    with torch.no_grad():
        fused = model(x)
        explicit = model.run_with_hooks(x, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda t, hook: t)])
    assert (fused - explicit).abs().max().item() <= ATOL


def test_fused_path_used_without_attention_hooks(vit, monkeypatch):
    """No hook inside attention => SDPA runs; a cached pattern is computed from q and k when read (SDPA
    still runs); a pattern hook function => the explicit softmax runs."""
    _, model, x, _ = vit
    import torch.nn.functional as F

    calls = {"n": 0}
    real = F.scaled_dot_product_attention

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    with torch.no_grad():
        model(x)
        assert calls["n"] == model.cfg.n_layers
        model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post") or n.endswith("hook_z"))
        assert calls["n"] == 2 * model.cfg.n_layers
        _, cache = model.run_with_cache(x, names_filter=["blocks.0.attn.hook_pattern", "blocks.0.attn.hook_v"])
        assert calls["n"] == 3 * model.cfg.n_layers
        model.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda t, hook: t)])
        assert calls["n"] == 4 * model.cfg.n_layers - 1
    pattern, v = cache["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_v"]
    seen = {}
    model.run_with_hooks(
        x,
        fwd_hooks=[
            ("blocks.0.attn.hook_pattern", lambda t, hook: seen.setdefault("p", t.clone())),
            ("blocks.0.attn.hook_z", lambda t, hook: seen.setdefault("z", t.clone())),
        ],
    )
    torch.testing.assert_close(pattern, seen["p"], atol=0, rtol=0)  # the explicit path's own value
    z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
    torch.testing.assert_close(z, seen["z"], atol=1e-5, rtol=0)


def test_zero_ablation_and_perturbation_guard(vit):
    _, model, x, expected = vit
    with torch.no_grad():
        ablated = model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_attn_out", lambda t, hook: torch.zeros_like(t))])
        perturbed = model.run_with_hooks(x, fwd_hooks=[("blocks.1.mlp.hook_post", lambda t, hook: t + 1.0)])
        head_ablated = model.run_with_hooks(
            x, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, hook: t.index_fill(2, torch.tensor([0]), 0.0))]
        )
    assert (ablated - expected).abs().max().item() > 1e-3
    assert (perturbed - expected).abs().max().item() > 1e-3
    assert (head_ablated - expected).abs().max().item() > 1e-4
    no_hooks_left(model)


def test_backward_hooks_and_input_gradients(vit):
    _, model, x, _ = vit
    grads = {}

    def save_grad(g, hook):
        grads[hook.name] = g.detach().clone()

    xg = x.clone().requires_grad_(True)
    model.add_hook("blocks.0.hook_resid_post", save_grad, dir="bwd")
    model.add_hook("blocks.0.attn.hook_pattern", save_grad, dir="bwd")
    try:
        out = model(xg)
        out[:, 0].sum().backward()
    finally:
        model.reset_hooks()
    assert grads["blocks.0.hook_resid_post"].abs().sum() > 0
    assert grads["blocks.0.attn.hook_pattern"].shape[1] == model.cfg.n_heads
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    no_hooks_left(model)


def test_cache_decomposition_and_logit_attrs(vit):
    name, model, x, expected = vit
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    stack, labels = cache.decompose_resid(return_labels=True)
    assert stack.shape[0] == len(labels)
    assert (stack.sum(0) - final).abs().max().item() <= 1e-5
    acc = cache.accumulated_resid()
    assert torch.equal(acc[-1], final) and acc.shape[0] == model.cfg.n_layers + 1
    classes = torch.tensor([3, 7])
    attrs = cache.logit_attrs(stack, classes)
    assert attrs.shape == (len(labels), 2)
    target = logits[torch.arange(2), classes] - cache.folded_head_bias(classes)
    assert (attrs.sum(0) - target).abs().max().item() <= 1e-4
    # logit difference
    diff = cache.logit_attrs(stack, 3, incorrect_classes=5)
    t2 = logits[:, 3] - logits[:, 5] - cache.folded_head_bias(3, 5)
    assert (diff.sum(0) - t2).abs().max().item() <= 1e-4
    # per-head decomposition + remainder sums too
    heads, hl = cache.stack_head_results(return_labels=True, incl_remainder=True)
    assert heads.shape[0] == model.cfg.n_layers * model.cfg.n_heads + 1 and hl[-1] == "remainder"
    assert (cache.logit_attrs(heads, classes).sum(0) - target).abs().max().item() <= 1e-4


def test_apply_ln_to_stack_matches_final_norm(vit):
    name, model, x, _ = vit
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    stack = cache.decompose_resid()
    normed = cache.apply_ln_to_stack(stack).sum(0)
    ln = model.adapter.final_ln
    if model.adapter.norm_first:
        want = (cache["ln_final.hook_normalized"] - ln.bias) / ln.weight
    else:
        want = (cache["hook_pooled"] - ln.bias) / ln.weight
    assert (normed - want).abs().max().item() <= 1e-4
    # block-level: ln1 input scale reproduces ln1 output
    s = cache.apply_ln_to_stack(cache.decompose_resid(layer=1), layer=1).sum(0)
    ln1 = model.source.blocks[1].norm1
    assert (s * ln1.weight + ln1.bias - cache["blocks.1.ln1.hook_normalized"]).abs().max().item() <= 1e-4


def test_remove_batch_dim_and_offload(vit):
    _, model, x, _ = vit
    with torch.no_grad():
        _, cache = model.run_with_cache(x[:1], remove_batch_dim=True)
    assert cache["blocks.0.hook_resid_pre"].ndim == 2
    stack = cache.decompose_resid()
    assert (stack.sum(0) - cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]).abs().max() <= 1e-5
    attrs = cache.logit_attrs(stack, 2, has_batch_dim=False)
    assert attrs.shape == (stack.shape[0],)
    half = cache.to_dtype(torch.float16)
    assert half["blocks.0.hook_resid_pre"].dtype == torch.float16
    assert len(cache.filter(lambda n: n.endswith("resid_post"))) == model.cfg.n_layers


def test_tl_shorthand_indexing():
    model, _ = _build("vit_tiny_p16")
    with torch.no_grad():
        _, cache = model.run_with_cache(torch.randn(1, 3, 32, 32))
    assert torch.equal(cache["resid_pre", 2], cache["blocks.2.hook_resid_pre"])
    assert torch.equal(cache["pattern", 1], cache["blocks.1.attn.hook_pattern"])
    assert torch.equal(cache["resid_post", -1], cache["blocks.11.hook_resid_post"])
