"""TransformerLens habits on every family (docs/tl_habits.md): TL weight matrices, the flat block index on
conv nets, the full residual decomposition, TL's patching helpers, exact conv-net logit attribution."""

from __future__ import annotations

import copy

import pytest
import torch
import transformer_lens.patching as tlp
from transformer_lens.utilities import get_act_name

import visionlens
from tests.conftest import image_batch, no_hooks_left, perturb, tiny_clip, tiny_vit

ATOL = 1e-5


def _randomize_norms(module: torch.nn.Module, seed: int = 0) -> None:
    """LayerNorm weights / biases away from (1, 0), so that folding them is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm) or type(m).__name__ == "LayerNorm2d":
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.3, generator=g)


def _vit(**kw) -> visionlens.HookedVisionModel:
    model = tiny_vit(patch_size=8, depth=2, num_classes=10, **kw).eval()
    perturb(model.source, scale=0.05)
    _randomize_norms(model.source)
    return model


def _conv(kind: str) -> visionlens.HookedVisionModel:
    import timm
    import torchvision

    torch.manual_seed(0)
    src = {
        "resnet": lambda: torchvision.models.resnet18(num_classes=10),
        "mobilenet": lambda: torchvision.models.mobilenet_v2(width_mult=0.25, num_classes=10),
        "convnext": lambda: timm.create_model("convnext_atto", num_classes=10),
        "convnext_cl": lambda: timm.create_model(
            "convnext_tiny", depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=10
        ),
    }[kind]()
    if kind != "resnet":  # (a perturbed ResNet-18's logits reach 1e4: float32 sums then drift past 1e-4)
        perturb(src, scale=0.05)
    _randomize_norms(src)
    return visionlens.HookedVisionModel(src.eval())


@pytest.fixture(scope="module")
def vit_run():
    model = _vit(init_values=0.3)  # layer scale on: folded into W_O / W_out
    x = image_batch(2, 32)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    return model, x, logits, cache


# ----------------------------------------------------------------------------- TL weight matrices
def test_vit_weight_shapes(vit_run):
    model, _, _, _ = vit_run
    c = model.cfg
    L, H, D, dh, M = c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_mlp
    shapes = {
        "W_E": (3 * 8 * 8, D),
        "W_pos": (17, D),
        "W_Q": (L, H, D, dh),
        "W_K": (L, H, D, dh),
        "W_V": (L, H, D, dh),
        "W_O": (L, H, dh, D),
        "W_in": (L, D, M),
        "W_out": (L, M, D),
        "W_U": (D, 10),
        "b_Q": (L, H, dh),
        "b_K": (L, H, dh),
        "b_V": (L, H, dh),
        "b_O": (L, D),
        "b_in": (L, M),
        "b_out": (L, D),
        "b_U": (10,),
    }
    for name, shape in shapes.items():
        assert tuple(getattr(model, name).shape) == shape, name
    assert model.QK.AB.shape == (L, H, D, D) and model.OV.AB.shape == (L, H, D, D)


def test_vit_weights_reproduce_the_hooks(vit_run):
    model, x, logits, cache = vit_run
    with torch.no_grad():
        for l in range(model.cfg.n_layers):
            # folded (TL fold_ln): the matrices read the unaffine normalized stream apply_ln_to_stack returns
            normed = cache.apply_ln_to_stack(cache["resid_pre", l][None], l)[0]
            for h in range(model.cfg.n_heads):
                for X in "QKV":
                    got = normed @ getattr(model, f"W_{X}")[l, h] + getattr(model, f"b_{X}")[l, h]
                    assert torch.allclose(got, cache[f"blocks.{l}.attn.hook_{X.lower()}"][:, :, h], atol=ATOL)
                # unfolded: the matrices read ln1.hook_normalized (affine included)
                got = cache[f"blocks.{l}.ln1.hook_normalized"] @ model.tl_weight("W_Q", fold_ln=False)[l, h]
                got = got + model.tl_weight("b_Q", fold_ln=False)[l, h]
                assert torch.allclose(got, cache["q", l][:, :, h], atol=ATOL)
            z = cache["z", l]
            attn_out = sum(z[:, :, h] @ model.W_O[l, h] for h in range(model.cfg.n_heads)) + model.b_O[l]
            assert torch.allclose(attn_out, cache["attn_out", l], atol=ATOL)  # layer scale folded in
            normed2 = cache.apply_ln_to_stack(cache["resid_mid", l][None], l, mlp_input=True)[0]
            assert torch.allclose(normed2 @ model.W_in[l] + model.b_in[l], cache["pre", l], atol=ATOL)
            assert torch.allclose(cache["post", l] @ model.W_out[l] + model.b_out[l], cache["mlp_out", l], atol=ATOL)
        final = cache.apply_ln_to_stack(cache["resid_post", -1][None], model.cfg.n_layers)[0]
        assert torch.allclose(final[:, 0] @ model.W_U + model.b_U, logits, atol=ATOL)
        # the TL idiom: logit_attrs == apply_ln_to_stack(...) @ W_U[:, class]
        stack = cache.decompose_resid()
        assert torch.allclose(
            cache.logit_attrs(stack, 4), cache.apply_ln_to_stack(stack)[:, :, 0] @ model.W_U[:, 4], atol=ATOL
        )
        assert torch.allclose(cache.folded_head_bias(4), model.b_U[4], atol=ATOL)
        # embeddings: flattened patches @ W_E + patch bias, position embedding as stored
        patches = torch.nn.functional.unfold(x, 8, stride=8).transpose(1, 2)  # [B, 16, 3*8*8]
        emb = patches @ model.W_E + model.source.patch_embed.proj.bias
        assert torch.allclose(emb, cache["hook_embed"][:, 1:], atol=ATOL)
        assert torch.allclose(cache["hook_pos_embed"][0], model.W_pos, atol=ATOL)


def test_vit_avg_pool_fc_norm_unembed():
    model = _vit(global_pool="avg", fc_norm=True)
    with torch.no_grad():
        logits, cache = model.run_with_cache(image_batch(2, 32))
        pooled = cache["resid_post", -1][:, 1:].mean(1)
        normed = (pooled - pooled.mean(-1, keepdim=True)) / cache["ln_final.hook_scale"]
        assert torch.allclose(normed @ model.W_U + model.b_U, logits, atol=ATOL)


def test_unavailable_matrices_raise_attribute_error_with_reason():
    distilled = visionlens.HookedVisionModel(
        __import__("timm").create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1).eval()
    )
    assert not hasattr(distilled, "W_U") and hasattr(distilled, "W_Q")
    with pytest.raises(AttributeError, match="two heads"):
        distilled.W_U
    resnet = _conv("resnet")
    for name in ("W_Q", "W_U", "b_O", "QK"):
        with pytest.raises(AttributeError, match="exists on transformer models only"):
            getattr(resnet, name)
        assert not hasattr(resnet, name)
    with pytest.raises(AttributeError, match="has no attribute"):  # other names keep the model's message
        resnet.not_a_thing


def test_clip_tower_weights():
    model = visionlens.HookedVisionModel(tiny_clip())
    perturb(model.source, scale=0.05)
    _randomize_norms(model.source)
    with torch.no_grad():
        _, cache = model.run_with_cache(image_batch(2, 32), ["a cat", "a dog"])
        for tower in ("visual", "text"):
            t = cache.tower(tower)
            W = {n: model.tl_weight(n, tower=tower) for n in ("W_Q", "b_Q", "W_O", "b_O", "W_U", "b_U")}
            for l in range(2):
                normed = t.apply_ln_to_stack(t["resid_pre", l][None], l)[0]
                q = torch.einsum("bpd,hde->bphe", normed, W["W_Q"][l]) + W["b_Q"][l]
                assert torch.allclose(q, t["q", l], atol=ATOL)
                out = torch.einsum("bphd,hdm->bpm", t["z", l], W["W_O"][l]) + W["b_O"][l]
                assert torch.allclose(out, t["attn_out", l], atol=ATOL)
            full = t.get_full_resid_decomposition()
            assert torch.allclose(full.sum(0), t["resid_post", -1], atol=1e-4)
        # visual W_U: the pooled, normalized stream -> the joint embedding (hook_proj); W_Q etc. default to it
        t = cache.tower("visual")
        final = t.apply_ln_to_stack(t["resid_post", -1][None], 2)[0][:, 0]
        assert torch.allclose(final @ model.W_U + model.b_U, cache["visual.hook_proj"], atol=ATOL)
        assert torch.equal(model.W_Q, model.tl_weight("W_Q", tower="visual"))
        tokens = model.adapter.last_text_tokens
        assert torch.allclose(cache["text.hook_embed"], model.tl_weight("W_E", tower="text")[tokens], atol=ATOL)


def test_cfg_device_and_tl_config_fields():
    model = _vit()
    assert model.cfg.device == model.device == torch.device("cpu")
    assert model.cfg.n_key_value_heads is None and model.cfg.d_vocab == 10 and model.cfg.n_ctx == 17
    twin = copy.deepcopy(model)
    twin.to("meta")
    assert twin.cfg.device.type == "meta" and model.cfg.device.type == "cpu"
    with pytest.raises(ValueError, match="model.to"):
        model.cfg.device = "meta"
    assert "device" not in model.cfg.to_dict()


# ----------------------------------------------------------------------------- flat block index on conv nets
@pytest.mark.parametrize("kind", ["resnet", "mobilenet", "convnext"])
def test_flat_block_index_on_conv_nets(kind):
    model = _conv(kind)
    blocks = [(s, b) for s, d in enumerate(model.cfg.stage_depths) for b in range(d)]
    assert model.cfg.n_layers == len(blocks)
    x = image_batch(1, 64)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
    from transformer_lens import utils  # the TL 3 spelling

    for i, (s, b) in enumerate(blocks):
        for what in ("resid_pre", "resid_post"):
            real = cache[f"stages.{s}.blocks.{b}.hook_{what}"]
            assert torch.equal(cache[what, i], real)
            assert torch.equal(cache[get_act_name(what, i)], real)
            assert torch.equal(cache[utils.get_act_name(what, i)], real)
    s, b = blocks[-1]
    assert torch.equal(cache["resid_post", -1], cache[f"stages.{s}.blocks.{b}.hook_resid_post"])
    s2, b2 = blocks[2]
    assert torch.equal(cache["blocks.2.hook_branch_out"], cache[f"stages.{s2}.blocks.{b2}.hook_branch_out"])
    # aliases work for hooks too: run_with_hooks / names_filter with the flat name
    seen = {}

    def record(t, hook):
        seen["n"] = hook.name

    model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_post", record)])
    s1, b1 = blocks[1]
    assert seen["n"] == model.resolve_hook("blocks.1.hook_resid_post") == f"stages.{s1}.blocks.{b1}.hook_resid_post"
    _, small = model.run_with_cache(x, names_filter=["blocks.1.hook_resid_post"])
    assert torch.equal(small["resid_post", 1], cache["resid_post", 1])
    no_hooks_left(model)
    with pytest.raises(KeyError, match="Closest cached names: .*hook_resid_post"):
        cache["resid_postt", 3]
    with pytest.raises(KeyError, match="names_filter"):
        small["resid_post", 2]


def test_convnext_channels_last_units():
    model = _conv("convnext_cl")
    assert not model.source.stages[0].blocks[0].use_conv_mlp
    hook = "stages.0.blocks.0.mlp.fc1.hook_out"
    assert hook in model.adapter.channels_last_hooks()
    shape = model.hook_shapes(64)[hook]  # [B, H, W, 4C] = [1, 16, 16, 32]
    assert shape[-1] == 32 and shape[1] == 16
    assert model.parse_unit(f"{hook}:31").index == 31
    with pytest.raises(visionlens.VisionLensError, match="32 units"):
        model.parse_unit(f"{hook}:32")
    assert model.parse_unit("stages.0.blocks.0.mlp.hook_post:31").index == 31  # canonical: channels-first


# ----------------------------------------------------------------------------- full residual decomposition
def test_full_resid_decomposition_vit(vit_run):
    model, _, logits, cache = vit_run
    n, H, M = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp
    with torch.no_grad():
        for layer, mlp_input in [(0, False), (1, False), (1, True), (None, False)]:
            l = n if layer is None else layer
            target = (
                cache["resid_mid", l] if mlp_input else (cache["resid_pre", l] if l < n else cache["resid_post", -1])
            )
            for expand in (True, False):
                stack, labels = cache.get_full_resid_decomposition(
                    layer, mlp_input=mlp_input, expand_neurons=expand, return_labels=True
                )
                assert stack.shape[0] == len(labels) and stack.shape[1:] == target.shape
                assert torch.allclose(stack.sum(0), target, atol=1e-4)
                n_heads = (l + (1 if mlp_input else 0)) * H
                n_mlp = l * (M if expand else 1)
                assert len(labels) == n_heads + n_mlp + 3  # embed, pos_embed, bias
                assert labels[-3:] == ["embed", "pos_embed", "bias"] and (n_heads == 0 or labels[0] == "L0H0")
        stack = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=False)
        attrs = stack[:, :, 0] @ model.W_U[:, 2]
        assert torch.allclose(attrs.sum(0) + model.b_U[2], logits[:, 2], atol=1e-4)
        projected = cache.get_full_resid_decomposition(project_output_onto=model.W_U[:, 2], expand_neurons=False)
        assert projected.shape == stack.shape[:-1]


def test_full_resid_decomposition_conv():
    model = _conv("convnext")
    with torch.no_grad():
        _, cache = model.run_with_cache(image_batch(1, 64))
    stack, labels = cache.get_full_resid_decomposition(stage=2, return_labels=True)
    ref, ref_labels = cache.decompose_resid(stage=2, return_labels=True)
    assert torch.equal(stack, ref) and labels == ref_labels
    with pytest.raises(ValueError, match="expand_neurons"):
        cache.get_full_resid_decomposition(stage=2, expand_neurons=True)


# ----------------------------------------------------------------------------- TL's patching helpers
def _hand_patched(model, corrupted, clean_cache, metric, name_of, n_pos):
    out = torch.zeros(model.cfg.n_layers, n_pos)
    for l in range(model.cfg.n_layers):
        for p in range(n_pos):

            def hook(act, hook, l=l, p=p):
                act = act.clone()
                act[:, p] = clean_cache[name_of(l)][:, p]
                return act

            out[l, p] = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name_of(l), hook)]))
    return out


def test_tl_patching_helpers_on_a_vit():
    # TL sizes the `pos` axis from corrupted.shape[-1]: here the image width (16) equals the token count
    model = tiny_vit(img_size=16, patch_size=4, depth=2, num_classes=10, class_token=False, global_pool="avg").eval()
    perturb(model.source, scale=0.1)
    clean, corrupted = image_batch(2, 16, seed=1), image_batch(2, 16, seed=2)

    def metric(logits):
        return logits[:, 3].mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        got = tlp.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
        ref = _hand_patched(model, corrupted, clean_cache, metric, lambda l: f"blocks.{l}.hook_resid_pre", 16)
        assert got.shape == (2, 16) and torch.allclose(got.cpu(), ref, atol=1e-5)
        heads = tlp.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, metric)
        assert heads.shape == (2, model.cfg.n_heads)
    no_hooks_left(model)


def test_tl_patching_with_index_df_when_width_is_not_the_token_count():
    import pandas as pd

    model = tiny_vit(patch_size=8, depth=2, num_classes=10).eval()
    clean, corrupted = image_batch(2, 32, seed=1), image_batch(2, 32, seed=2)

    def metric(logits):
        return logits[:, 3].mean()

    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        df = pd.DataFrame([(l, p) for l in range(2) for p in range(17)], columns=["layer", "pos"])
        got = tlp.get_act_patch_resid_mid(model, corrupted, clean_cache, metric, index_axis_names=None, index_df=df)
        ref = _hand_patched(model, corrupted, clean_cache, metric, lambda l: f"blocks.{l}.hook_resid_mid", 17)
    assert torch.allclose(got.view(2, 17).cpu(), ref, atol=1e-5)


# ----------------------------------------------------------------------------- exact conv-net logit attribution
@pytest.mark.parametrize("kind", ["mobilenet", "convnext", "convnext_cl"])
def test_conv_stage_decomposition_logit_attrs_sum_exactly(kind):
    model = _conv(kind)
    with torch.no_grad():
        logits, cache = model.run_with_cache(image_batch(3, 64))
    cls = torch.tensor([1, 4, 7])
    target = logits[torch.arange(3), cls]
    stack, labels = cache.decompose_resid(stage=-1, return_labels=True)
    attrs = cache.logit_attrs(stack, cls)
    assert attrs.shape == (len(labels), 3)
    assert (attrs.sum(0) + cache.folded_head_bias(cls) - target).abs().max() < 1e-4
    diff = cache.logit_attrs(stack, cls, incorrect_classes=0)
    assert (diff.sum(0) + cache.folded_head_bias(cls, 0) - (target - logits[:, 0])).abs().max() < 1e-4
    one = cache.logit_attrs(stack, 5)  # one class for all images
    assert (one.sum(0) + cache.folded_head_bias(5) - logits[:, 5]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="stage=last"):
        cache.logit_attrs(cache.decompose_resid(stage=1), cls)
    feats, bias = cache.decompose_final_features(cls, mode="full", return_bias=True)
    assert (feats.sum((1, 2, 3)) + bias - target).abs().max() < 1e-4


def test_resnet_refuses_and_points_to_the_exact_split():
    model = _conv("resnet")
    with torch.no_grad():
        logits, cache = model.run_with_cache(image_batch(2, 64))
    with pytest.raises(ValueError, match=r"relu\(resid_sum\)[\s\S]*decompose_final_features"):
        cache.decompose_resid(stage=3)
    with pytest.raises(ValueError, match="decompose_final_features"):
        cache.get_full_resid_decomposition(stage=3)
    cls = torch.tensor([2, 6])
    target = logits[torch.arange(2), cls]
    for mode, dims in (("channel", (1,)), ("location", (1, 2)), ("full", (1, 2, 3))):
        parts, bias = cache.decompose_final_features(cls, mode=mode, return_bias=True)
        assert (parts.sum(dims) + bias - target).abs().max() < 1e-4
    assert cache.decompose_final_features(cls, mode="channel").shape == (2, 512)
    # logit_attrs still reads maps shaped like the final feature map (a logit lens over the last stage)
    acc = cache.accumulated_resid(stage=3)
    lens = cache.logit_attrs(acc, cls)
    assert (lens[-1] + cache.folded_head_bias(cls) - target).abs().max() < 1e-4


def test_real_mobilenet_v2_stage_logit_attrs():
    from visionlens.offline_weights import ensure_mobilenet_v2

    if ensure_mobilenet_v2() is None:
        pytest.skip("ImageNet MobileNetV2 weights are not installed")
    model = visionlens.load("torchvision:mobilenet_v2", pretrained="IMAGENET1K_V1")
    try:
        import skimage.data as skd

        x = model.preprocess([skd.chelsea(), skd.astronaut()])
    except ImportError:
        x = image_batch(2, 224)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    cls = logits.argmax(-1)
    target = logits[torch.arange(len(cls)), cls]
    attrs = cache.logit_attrs(cache.decompose_resid(stage=-1), cls)
    assert (attrs.sum(0) + cache.folded_head_bias(cls) - target).abs().max() < 1e-4
    parts, bias = cache.decompose_final_features(cls, mode="location", return_bias=True)
    assert (parts.sum((1, 2)) + bias - target).abs().max() < 1e-4


# ----------------------------------------------------------------------------- the TL idiom catalogue
def test_tl_idiom_catalogue_vit():
    """What a TransformerLens tutorial does, line by line, on a ViT."""
    from transformer_lens import utils

    model = _vit()
    x = image_batch(2, 32)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        assert torch.equal(cache["resid_post", 1], cache[utils.get_act_name("resid_post", 1)])
        assert torch.equal(cache["pattern", 0], cache["blocks.0.attn.hook_pattern"])
        # logit lens: accumulated_resid with apply_ln, projected on W_U
        acc, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
        assert labels[-1] == "final_post"
        assert torch.allclose(acc[-1][:, 0] @ model.W_U + model.b_U, logits, atol=ATOL)
        # direct logit attribution: decompose_resid / stack_head_results + logit_attrs
        cls = logits.argmax(-1)
        target = logits[torch.arange(2), cls]
        for stack in (cache.decompose_resid(), cache.stack_head_results(incl_remainder=True)):
            attrs = cache.logit_attrs(stack, cls)
            assert torch.allclose(attrs.sum(0) + cache.folded_head_bias(cls), target, atol=1e-4)
        full = cache.get_full_resid_decomposition(expand_neurons=False)
        assert torch.allclose(cache.logit_attrs(full, cls).sum(0) + cache.folded_head_bias(cls), target, atol=1e-4)
        # circuits from weights
        assert model.OV.AB.shape[-2:] == (model.cfg.d_model, model.cfg.d_model)
    # hooks: context manager, run_with_hooks, names_filter predicates
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: t * 0)]):
        ablated = model(x)
    assert not torch.allclose(ablated, logits)
    assert torch.allclose(model(x), logits, atol=ATOL)
    _, some = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    assert set(some.keys()) == {f"blocks.{l}.attn.hook_pattern" for l in range(2)}
    no_hooks_left(model)
    # TL's patching helper, its eval-mode check and cfg.device included
    with torch.no_grad():
        out = tlp.get_act_patch_attn_head_out_all_pos(
            model, image_batch(2, 32, seed=3), cache, lambda lg: lg[:, 0].mean()
        )
    assert out.shape == (2, model.cfg.n_heads)


def test_tl_idiom_catalogue_resnet():
    """The same tutorial lines on a ResNet: what carries over, and what says why not."""
    from transformer_lens import utils

    model = _conv("resnet")
    x = image_batch(2, 64)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    assert torch.equal(cache["resid_post", 3], cache[utils.get_act_name("resid_post", 3)])
    assert torch.equal(cache["resid_post", 3], cache["stages.1.blocks.1.hook_resid_post"])
    acc, labels = cache.accumulated_resid(stage=3, return_labels=True)
    assert torch.equal(acc[-1], cache["resid_post", -1])
    with pytest.raises(ValueError, match="decompose_final_features"):
        cache.decompose_resid(stage=3)
    cls = logits.argmax(-1)
    parts, bias = cache.decompose_final_features(cls, return_bias=True)
    assert torch.allclose(parts.sum(-1) + bias, logits[torch.arange(2), cls], atol=1e-4)
    with pytest.raises(AttributeError, match="transformer models only"):
        model.W_U
    with model.hooks(fwd_hooks=[("blocks.7.hook_resid_post", lambda t, hook: t * 0)]):
        ablated = model(x)
    assert torch.allclose(ablated, model.source.fc.bias.expand_as(ablated), atol=ATOL)
    _, some = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_branch_out"))
    assert len(some.keys()) == model.cfg.n_layers
    no_hooks_left(model)
