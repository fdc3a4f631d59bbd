"""open_clip adapter: both towers, parity, hooks, caches, zero-shot heads, loading.

Everything runs on random weights: tiny configs for the fast tests, full-size ViT-B-32 / RN50
(batch 1) in the ``slow`` tests.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

import visionlens  # noqa: E402
from tests.conftest import TINY_CLIP_TEXT, TINY_CLIP_VISION, no_hooks_left, perturb  # noqa: E402
from visionlens import HookedVisionModel, VisionLensError  # noqa: E402
from visionlens.clip import attach_head, encode_text, zero_shot_head  # noqa: E402

TOL = 1e-5
VISION, TEXT = TINY_CLIP_VISION, TINY_CLIP_TEXT
CTX = TEXT["context_length"]
TINY_CFG = dict(embed_dim=16, vision_cfg=VISION, text_cfg=TEXT)
TEXTS = ["a photo of a cat", "two dogs on a mat"]

VARIANTS = {
    "base": {},
    "layerscale_quickgelu": dict(vision=dict(ls_init_value=0.5), text=dict(ls_init_value=0.3), quick_gelu=True),
    "custom_blocks": dict(
        vision=dict(qk_norm=True, scale_heads=True, scale_fc=True),
        text=dict(scale_attn_inner=True, scale_attn=True),
        custom_text=True,
    ),
    "avg_pool_ln_after_no_ln_pre": dict(vision=dict(pool_type="avg", final_ln_after_pool=True, no_ln_pre=True)),
    "attentional_pool": dict(vision=dict(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=4)),
    "text_cls_padmask_projbias": dict(
        text=dict(embed_cls=True, pool_type="last", no_causal_mask=True, proj_bias=True),
        custom_text=True,
        pad_mask=True,
    ),
    "text_eos_noproj": dict(text=dict(pool_type="eos", eos_id=49407, proj_type="none"), custom_text=True),
    "resnet": dict(vision_replace=dict(image_size=64, layers=(1, 2, 1, 1), width=16, head_width=8)),
}


def build_variant(name: str) -> torch.nn.Module:
    v = VARIANTS[name]
    vc = dict(v["vision_replace"]) if "vision_replace" in v else {**VISION, **v.get("vision", {})}
    tc = {**TEXT, **v.get("text", {})}
    cls = open_clip.CustomTextCLIP if v.get("custom_text") else open_clip.CLIP
    torch.manual_seed(0)
    clip = cls(embed_dim=16, vision_cfg=vc, text_cfg=tc, quick_gelu=v.get("quick_gelu", False)).eval()
    if v.get("pad_mask"):
        clip.text.use_pad_mask = True
    perturb(clip)
    return clip


@pytest.fixture(scope="module")
def tiny():
    clip = build_variant("base")
    return HookedVisionModel.from_module(clip)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_tiny_variants_both_towers(variant):
    clip = build_variant(variant)
    model = HookedVisionModel.from_module(clip)
    assert model.cfg.adapter == "open_clip" and model.cfg.family == "clip"
    size = model.cfg.image_size[0]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    tok = model.adapter.tokenize(TEXTS)
    with torch.no_grad():
        ref_img, ref_txt = clip.encode_image(x), clip.encode_text(tok)
        img, txt = model(x, tok, return_type="embeds")
        (c_img, c_txt), cache = model.run_with_cache(x, tok, return_type="embeds")
        (f_img, f_txt) = model(x, tok, return_type="embeds")
    # no hooks: the source towers run themselves -> bit-identical
    assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
    # every hook cached: visionlens code over the source modules
    assert (c_img - ref_img).abs().max() < TOL
    assert (c_txt - ref_txt).abs().max() < TOL
    assert torch.equal(f_img, ref_img), "hooks left behind after run_with_cache"
    assert set(model.hook_dict) - set(cache.cache_dict) == {"hook_logits"}  # no logits in 'embeds' mode
    no_hooks_left(model)


def test_logits_match_get_logits(tiny, images):
    clip = tiny.source
    tok = tiny.adapter.tokenize(TEXTS)
    with torch.no_grad():
        ref = clip.get_logits(images, tok)[0]
        logits = tiny(images, TEXTS)
        cached, cache = tiny.run_with_cache(images, TEXTS)
    assert logits.shape == (2, 2)
    assert torch.equal(logits, ref)
    assert (cached - ref).abs().max() < TOL
    assert torch.equal(cache["hook_logits"], cached)
    img = tiny(images)
    txt = tiny(None, TEXTS)
    assert torch.equal(img, clip.encode_image(images).detach())
    assert torch.equal(txt, clip.encode_text(tok).detach())


def test_default_outputs_and_run_with_cache_text_only(tiny):
    with torch.no_grad():
        emb, cache = tiny.run_with_cache(None, TEXTS)
    assert emb.shape == (2, 16)
    assert all(k.startswith("text.") for k in cache.cache_dict)
    assert "text.blocks.1.hook_resid_post" in cache.cache_dict


# ----------------------------------------------------------------------------- names and shapes
def test_hook_names_and_shapes(tiny, images):
    with torch.no_grad():
        _, cache = tiny.run_with_cache(images, TEXTS)
    B, P, D, H, dh = 2, 17, 32, 4, 8
    expect = {
        "visual.hook_embed": (B, P, D),
        "visual.hook_pos_embed": (B, P, D),
        "visual.ln_pre.hook_scale": (B, P, 1),
        "visual.blocks.1.attn.hook_q": (B, P, H, dh),
        "visual.blocks.1.attn.hook_pattern": (B, H, P, P),
        "visual.blocks.1.attn.hook_result": (B, P, H, D),
        "visual.blocks.0.mlp.hook_post": (B, P, 4 * D),
        "visual.ln_final.hook_normalized": (B, P, D),
        "visual.hook_pooled": (B, D),
        "visual.hook_proj": (B, 16),
        "text.hook_embed": (B, CTX, D),
        "text.blocks.0.hook_resid_post": (B, CTX, D),
        "text.blocks.0.attn.hook_pattern": (B, H, CTX, CTX),
        "text.ln_final.hook_scale": (B, CTX, 1),
        "text.hook_pooled": (B, D),
        "text.hook_proj": (B, 16),
        "hook_logits": (B, B),
    }
    for name, shape in expect.items():
        assert tuple(cache[name].shape) == shape, name
    # causal text attention: nothing above the diagonal, rows are distributions
    pat = cache["text.blocks.0.attn.hook_pattern"]
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)
    assert pat.triu(1).abs().max() == 0
    assert torch.isinf(cache["text.blocks.0.attn.hook_attn_scores"].triu(1)[..., 0, 1:]).all()
    # visual attention is bidirectional
    assert cache["visual.blocks.0.attn.hook_pattern"].triu(1).abs().max() > 0
    # aliases
    assert tiny.resolve_hook("visual.blocks.1") == "visual.blocks.1.hook_resid_post"
    assert tiny.resolve_hook("visual.ln_post") == "visual.ln_final.hook_normalized"
    with pytest.raises(KeyError, match="visual.blocks.0.attn.hook_pattern"):
        tiny.resolve_hook("visual.blocks.0.attn.hook_patern")


def test_residual_identities_exact_with_layer_scale():
    model = HookedVisionModel.from_module(build_variant("layerscale_quickgelu"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, cache = model.run_with_cache(x, TEXTS[:1])
    for tower, n in (("visual", 2), ("text", 2)):
        for l in range(n):
            c = lambda k: cache[f"{tower}.blocks.{l}.{k}"]  # noqa: E731
            assert torch.equal(c("hook_resid_mid"), c("hook_resid_pre") + c("hook_attn_out"))
            assert torch.equal(c("hook_resid_post"), c("hook_resid_mid") + c("hook_mlp_out"))
            # layer scale is folded into the per-head results too
            heads = c("attn.hook_result").sum(-2)
            bias = (
                model.source.visual.transformer.resblocks[l].attn.out_proj.bias
                if tower == "visual"
                else model.source.transformer.resblocks[l].attn.out_proj.bias
            )
            gamma = (
                model.source.visual.transformer.resblocks[l]
                if tower == "visual"
                else model.source.transformer.resblocks[l]
            ).ls_1.gamma
            assert torch.allclose(heads + bias * gamma, c("hook_attn_out"), atol=1e-6)


# ----------------------------------------------------------------------------- caches per tower
def test_text_tower_decomposition_sums_to_final_residual(tiny):
    with torch.no_grad():
        _, cache = tiny.run_with_cache(None, TEXTS)
    text = cache.tower("text")
    assert text.model.cfg.n_layers == 2 and text.model.cfg.extra["hook_prefix"] == "text."
    stack, labels = text.decompose_resid(return_labels=True)
    assert labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    final = cache["text.blocks.1.hook_resid_post"]
    assert torch.allclose(stack.sum(0), final, atol=1e-6)
    heads = text.stack_head_results(incl_remainder=True)
    assert heads.shape == (2 * 4 + 1, 2, CTX, 32)
    assert torch.allclose(heads.sum(0), final, atol=1e-5)
    acc = text.accumulated_resid()
    assert acc.shape == (3, 2, CTX, 32) and torch.equal(acc[-1], final)
    assert torch.equal(text["blocks.0.hook_resid_pre"], cache["text.blocks.0.hook_resid_pre"])  # prefix lookup


def test_visual_tower_views_and_defaults(tiny, images):
    with torch.no_grad():
        _, cache = tiny.run_with_cache(images)
    vis = cache.tower("visual")
    s1, s2 = cache.decompose_resid(), vis.decompose_resid()
    assert torch.equal(s1, s2)
    assert torch.allclose(s1.sum(0), cache["visual.blocks.1.hook_resid_post"], atol=1e-6)
    normed = vis.accumulated_resid(apply_ln=True)
    assert normed.shape == (3, 2, 17, 32)
    with pytest.raises(VisionLensError, match="class directions"):
        vis.logit_attrs(s1, classes=0)
    with pytest.raises(VisionLensError, match="tower"):
        cache.tower("audio")


# ----------------------------------------------------------------------------- zero-shot heads
def test_zero_shot_head_logits_and_logit_attribution(images):
    model = HookedVisionModel.from_module(build_variant("base"))
    clip = model.source
    names, templates = ["cat", "dog", "car"], ["a photo of a {}.", lambda c: f"a drawing of a {c}"]
    head = zero_shot_head(model, names, templates)
    # open_clip's recipe: mean of normalized prompt embeddings, renormalized
    with torch.no_grad():
        manual = []
        for c in names:
            tok = model.adapter.tokenize([templates[0].format(c), templates[1](c)])
            e = F.normalize(clip.encode_text(tok), dim=-1).mean(0)
            manual.append(e / e.norm())
    assert torch.allclose(head.weight, torch.stack(manual), atol=1e-6)
    assert model.cfg.n_classes == 3 and model.cfg.extra["class_names"] == names
    with torch.no_grad():
        logits, cache = model.run_with_cache(images)
        ref = clip.logit_scale.exp() * F.normalize(clip.encode_image(images), dim=-1) @ head.weight.T
    assert logits.shape == (2, 3)
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(cache["hook_logits"], logits)
    # direct logit attribution onto the class directions sums to the (unnormalized) class score
    classes = torch.tensor([0, 2])
    stack = cache.decompose_resid()
    attrs = cache.logit_attrs(stack, classes=classes)
    target = (cache["visual.hook_proj"] * head.weight[classes]).sum(-1)
    assert torch.allclose(attrs.sum(0) + cache.folded_head_bias(classes), target, atol=1e-5)
    heads = cache.stack_head_results(incl_remainder=True)
    a2 = cache.logit_attrs(heads, classes=1)
    assert torch.allclose(a2.sum(0) + cache.folded_head_bias(1), cache["visual.hook_proj"] @ head.weight[1], atol=1e-5)
    # times embed_scale * logit_scale gives the logit itself
    scaled = (attrs.sum(0) + cache.folded_head_bias(classes)) * cache.embed_scale() * clip.logit_scale.exp()
    assert torch.allclose(scaled, logits[torch.arange(2), classes], atol=1e-4)
    attach_head(model, None)
    assert model(images).shape == (2, 16) and model.cfg.n_classes == 0


def test_text_tower_logit_attribution_onto_image_directions(images):
    for variant in ("base", "text_cls_padmask_projbias"):
        model = HookedVisionModel.from_module(build_variant(variant))
        with torch.no_grad():
            img = model.source.encode_image(images)
            txt, cache = model.run_with_cache(None, TEXTS)
        text = cache.tower("text", head=img)
        stack = text.decompose_resid()
        classes = torch.tensor([1, 0])
        attrs = text.logit_attrs(stack, classes=classes)
        target = (txt * img[classes]).sum(-1)
        assert torch.allclose(attrs.sum(0) + text.folded_head_bias(classes), target, atol=1e-5), variant


# ----------------------------------------------------------------------------- hooks behave
def test_zero_ablation_changes_outputs(tiny, images):
    zero = lambda t, hook: torch.zeros_like(t)  # noqa: E731
    with torch.no_grad():
        base_img, base_txt = tiny(images, TEXTS, return_type="embeds")
        img = tiny.run_with_hooks(images, fwd_hooks=[("visual.blocks.0.hook_attn_out", zero)])
        txt = tiny.run_with_hooks(None, TEXTS, fwd_hooks=[("text.blocks.1.mlp.hook_post", zero)])
        uniform = lambda p, hook: torch.ones_like(p) / p.shape[-1]  # noqa: E731
        img2 = tiny.run_with_hooks(images, fwd_hooks=[("visual.blocks.1.attn.hook_pattern", uniform)])
    assert (img - base_img).abs().max() > 1e-3
    assert (txt - base_txt).abs().max() > 1e-3
    assert (img2 - base_img).abs().max() > 1e-4
    no_hooks_left(tiny)


def test_exception_inside_hook_leaves_nothing_attached(tiny, images):
    def boom(t, hook):
        raise RuntimeError("boom")

    for name in ("visual.blocks.1.attn.hook_pattern", "text.blocks.0.hook_resid_mid", "hook_logits"):
        with pytest.raises(RuntimeError, match="boom"):
            tiny.run_with_hooks(images, TEXTS, fwd_hooks=[(name, boom), ("visual.hook_pooled", lambda t, hook: t)])
        no_hooks_left(tiny)
    with pytest.raises(RuntimeError, match="boom"):
        with tiny.hooks(fwd_hooks=[("text.hook_embed", boom)]):
            tiny.run_with_cache(None, TEXTS)
    no_hooks_left(tiny)
    with torch.no_grad():
        assert torch.equal(tiny(images), tiny.source.encode_image(images))


def test_fused_attention_unless_attention_internals_are_hooked(tiny, images, monkeypatch):
    calls = {"sdpa": 0, "block": 0}
    real_sdpa = F.scaled_dot_product_attention
    from visionlens.adapters import open_clip_towers as oc

    real_block = oc._Blocks._block

    def sdpa(*a, **k):
        calls["sdpa"] += 1
        return real_sdpa(*a, **k)

    def block(self, *a, **k):
        calls["block"] += 1
        return real_block(self, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", sdpa)
    monkeypatch.setattr(oc._Blocks, "_block", block)
    with torch.no_grad():
        tiny(images)  # no hooks: the source tower runs, no visionlens block code
        assert calls["block"] == 0
        calls["sdpa"] = 0
        tiny.run_with_hooks(images, fwd_hooks=[("visual.blocks.0.hook_resid_post", lambda t, hook: t)])
        assert calls["block"] == 1  # only the hooked block runs visionlens code ...
        own_sdpa = calls["sdpa"]
        calls["sdpa"] = 0
        tiny.run_with_hooks(images, fwd_hooks=[("visual.blocks.0.attn.hook_pattern", lambda t, hook: t)])
        assert calls["sdpa"] == own_sdpa - 1  # ... with fused attention unless its pattern is hooked


# ----------------------------------------------------------------------------- inputs
def test_tokenizer_is_open_clips(tiny):
    tok = tiny.adapter.tokenize(TEXTS)
    ref = open_clip.SimpleTokenizer(context_length=CTX)(TEXTS)
    assert torch.equal(tok, ref)
    assert tok.shape == (2, CTX)
    with torch.no_grad():
        assert torch.equal(encode_text(tiny, TEXTS), tiny.source.encode_text(ref))
        assert torch.equal(tiny(None, "a single string"), tiny(None, ["a single string"]))


def test_validation_errors(tiny, images):
    with pytest.raises(VisionLensError, match="batch dimension"):
        tiny(images[0])
    with pytest.raises(VisionLensError, match="channels-last"):
        tiny(images.permute(0, 2, 3, 1))
    with pytest.raises(VisionLensError, match=r"\(32, 32\)"):
        tiny(torch.randn(1, 3, 48, 48))
    with pytest.raises(VisionLensError, match="floating-point"):
        tiny((images * 50).to(torch.uint8))
    with pytest.raises(VisionLensError, match="list of strings"):
        tiny(None, [1, 2])
    with pytest.raises(VisionLensError, match="list of strings"):
        tiny(None, {"text": "a cat"})
    with pytest.raises(VisionLensError, match=f"length {CTX}"):
        tiny(None, torch.zeros(2, 77, dtype=torch.long))
    with pytest.raises(VisionLensError, match="integer tensor"):
        tiny(None, torch.zeros(2, CTX))
    with pytest.raises(VisionLensError, match="Token ids"):
        tiny(None, torch.full((1, CTX), 60000))
    with pytest.raises(VisionLensError, match=r"model\(None, texts\)"):
        tiny(TEXTS)
    with pytest.raises(VisionLensError, match="images and/or texts"):
        tiny(None)
    with pytest.raises(VisionLensError, match="empty"):
        tiny(None, [])


def test_example_inputs_reach_every_hook(tiny):
    args, kwargs = tiny.adapter.example_inputs()
    with torch.no_grad():
        _, cache = tiny.run_with_cache(*args, return_cache_object=False, **kwargs)
    assert set(cache) == set(tiny.hook_dict)
    shapes = tiny.hook_shapes()  # the image path of `visionlens hooks`
    assert shapes["visual.blocks.0.attn.hook_pattern"] == (1, 4, 17, 17)


# ----------------------------------------------------------------------------- ResNet tower
def test_resnet_tower_names_attnpool_and_residuals():
    model = HookedVisionModel.from_module(build_variant("resnet"))
    assert model.cfg.stage_depths == (1, 2, 1, 1) and model.cfg.extra["visual_type"] == "resnet"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out, cache = model.run_with_cache(x)
    for name in (
        "visual.conv1.hook_out",
        "visual.act3.hook_out",
        "visual.avgpool.hook_out",
        "visual.layer1.0.conv1.hook_out",
        "visual.layer2.0.downsample.hook_out",
        "visual.layer2.0.avgpool.hook_out",
        "visual.stages.1.blocks.1.hook_resid_pre",
    ):
        assert name in cache.cache_dict, name
    b = lambda k: cache[f"visual.stages.1.blocks.0.{k}"]  # noqa: E731
    assert torch.allclose(
        b("hook_resid_post"), torch.relu(b("hook_branch_out") + cache["visual.layer2.0.downsample.hook_out"])
    )
    assert torch.equal(b("hook_resid_post"), cache["visual.layer2.0.act3.hook_out"])
    assert model.resolve_hook("visual.layer2.0") == "visual.stages.1.blocks.0.hook_resid_post"
    # attention pool: 1 + 2x2 tokens, 16 heads of width 32 on 512 channels
    heads, d = model.cfg.n_heads, model.cfg.d_model
    assert cache["visual.attnpool.hook_tokens"].shape == (2, 5, d)
    pat = cache["visual.attnpool.hook_pattern"]
    assert pat.shape == (2, heads, 5, 5)
    assert torch.allclose(pat.sum(-1), torch.ones_like(pat.sum(-1)), atol=1e-5)
    ap = model.source.visual.attnpool
    res = cache["visual.attnpool.hook_result"]
    assert res.shape == (2, 5, heads, 16)
    assert torch.allclose(res[:, 0].sum(-2) + ap.c_proj.bias, cache["visual.attnpool.hook_out"], atol=1e-5)
    assert torch.equal(cache["visual.hook_proj"], out)
    # ablating a stage changes the embedding
    with torch.no_grad():
        abl = model.run_with_hooks(
            x, fwd_hooks=[("visual.stages.2.blocks.0.hook_branch_out", lambda t, hook: torch.zeros_like(t))]
        )
    assert (abl - out).abs().max() > 1e-4
    no_hooks_left(model)


# ----------------------------------------------------------------------------- loading
def _register_tiny(tmp_path, name="vl-tiny-test"):
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(str(cfg_file))
    return name


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_load_local_checkpoint_files(tmp_path, images, suffix):
    name = _register_tiny(tmp_path)
    src = open_clip.create_model(name).eval()
    perturb(src, seed=5)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pt":
        torch.save(src.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    tok = open_clip.get_tokenizer(name)(TEXTS)
    with torch.no_grad():
        ref = src.get_logits(images, tok)[0]
        for model in (
            HookedVisionModel.from_open_clip(name, pretrained=str(path)),
            visionlens.load(f"open_clip:{name}", pretrained=str(path)),
            HookedVisionModel.from_open_clip(TINY_CFG, pretrained=str(path)),
        ):
            assert model.cfg.adapter == "open_clip"
            assert torch.allclose(model(images, TEXTS), ref, atol=TOL)


def test_load_local_dir_schema(tmp_path, images):
    src = open_clip.CLIP(**TINY_CFG).eval()
    perturb(src, seed=6)
    d = tmp_path / "clipdir"
    d.mkdir()
    (d / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    with torch.no_grad():
        ref = src.encode_image(images)
        for model in (
            HookedVisionModel.from_open_clip(f"local-dir:{d}"),
            HookedVisionModel.from_open_clip("ignored", pretrained=str(d)),
        ):
            assert torch.allclose(model(images), ref, atol=TOL)
            assert model.cfg.mean == (0.5, 0.5, 0.5)


def test_load_errors(tmp_path):
    with pytest.raises(VisionLensError, match="ViT-B-32"):
        visionlens.load("open_clip:ViT-B-32x")
    with pytest.raises(FileNotFoundError):
        HookedVisionModel.from_open_clip("RN50", pretrained=str(tmp_path / "missing.pt"))


# ----------------------------------------------------------------------------- full size (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_full_size_parity_both_towers(name):
    model = visionlens.load(f"open_clip:{name}")
    clip = model.source
    perturb(clip, seed=3, scale=0.01)
    assert model.cfg.image_size == (224, 224)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    tok = model.adapter.tokenize(["a photo of a cat"])
    with torch.no_grad():
        ref_img, ref_txt = clip.encode_image(x), clip.encode_text(tok)
        ref_logits = clip.get_logits(x, tok)[0]
        img, txt = model(x, tok, return_type="embeds")
        logits, cache = model.run_with_cache(x, tok)
    assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
    assert set(cache.cache_dict) == set(model.hook_dict)
    assert (cache["visual.hook_proj"] - ref_img).abs().max() < TOL
    assert (cache["text.hook_proj"] - ref_txt).abs().max() < TOL
    assert (logits - ref_logits).abs().max() < TOL
    if name == "ViT-B-32":
        assert cache["visual.blocks.3.attn.hook_pattern"].shape == (1, 12, 50, 50)
    else:
        assert cache["visual.attnpool.hook_pattern"].shape == (1, 32, 50, 50)
    assert cache["text.blocks.0.hook_resid_post"].shape == (1, 77, 512)
