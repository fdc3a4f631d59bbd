"""Activation patching: batched sweeps equal the one-forward-per-target loop, metric semantics,
attribution patching, the plugin end to end (ViT, conv nets, CLIP, UNet) and the CLI."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

import visionlens
from tests.conftest import image_folder, no_hooks_left, run_args, tiny_clip, tiny_resnet, tiny_vit
from visionlens import VisionLensError
from visionlens.analysis import ConfigError
from visionlens.patching import (
    PatchInputs,
    attribution_patching,
    build_targets,
    make_metric,
    patch_loop,
    patch_sweep,
    run_patching,
)
from visionlens.results import load_result

TOL = 1e-5


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_classes=10)


@pytest.fixture(scope="module")
def resnet():
    m = tiny_resnet(num_classes=10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # timm zero-inits each block's last BN: give every branch some weight
        for mod in m.source.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.normal_(1.0, 0.3, generator=g)
    m.cfg.image_size = (64, 64)  # what `--image-size 64` does: images are preprocessed to 64 px
    return m


@pytest.fixture(scope="module")
def pair32():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)


def _sweep_vs_loop(model, clean, corrupt, hook, kind, grid=2, metric="logit_diff", every=1):
    """The batched sweep (both modes) against one forward per target; ``every``: only every ``every``-th target
    (hundreds of channels: the loop's forwards are the cost, and the chunks of 7 still end mid-chunk)."""
    with torch.no_grad():
        clean_out, cache = model.run_with_cache(clean, names_filter=[hook], return_cache_object=False)
        corrupt_out = model(corrupt)
    m = make_metric(metric, clean_out, corrupt_out)
    ts = build_targets(model, hook, tuple(cache[hook].shape[1:]), kind, grid=grid)
    if every > 1:
        n = len(ts)
        ts = dataclasses.replace(ts, labels=ts.labels[::every], index=ts.index[::every], grid_pos=ts.grid_pos[::every])
        assert len(ts) == -(-n // every) and len(ts) % 7  # a partial last chunk
    ref = patch_loop(model, corrupt, cache[hook], ts, m)
    out = {}
    for mode in ("auto", "stack"):
        info: dict = {}
        out[mode] = patch_sweep(model, corrupt, cache[hook], ts, m, mode=mode, max_batch=7, info=info)
        assert (out[mode] - ref).abs().max() <= TOL, (hook, kind, mode, info)
    no_hooks_left(model)
    return ts, ref, out


# ----------------------------------------------------------------------------- engine: exactness
@pytest.mark.parametrize(
    "hook,kind",
    [
        ("blocks.3.hook_resid_pre", "position"),
        ("blocks.2.hook_resid_post", "region"),
        ("blocks.5.hook_mlp_out", "position"),  # broadcasts against the residual: expand per pair
        ("blocks.1.attn.hook_z", "head"),  # the attention code reshapes by batch: stack fallback
        ("blocks.4.attn.hook_pattern", "head"),
        ("blocks.4.attn.hook_pattern", "position"),
        ("blocks.6.attn.hook_v", "channel"),
        ("blocks.7.hook_attn_out", "whole"),
    ],
)
def test_batched_sweep_equals_loop_vit(vit, pair32, hook, kind):
    clean, corrupt = pair32
    ts, ref, _ = _sweep_vs_loop(vit, clean, corrupt, hook, kind)
    assert ref.shape == (len(ts), 2) and torch.isfinite(ref).all()
    assert ref.std() > 0 or kind == "whole"


@pytest.mark.parametrize(
    "hook,kind",
    [
        ("layer3", "channel"),
        ("layer2", "region"),
        ("layer3", "position"),
        ("stages.1.blocks.0.hook_branch_out", "region"),
        ("layer4.0.conv1", "channel"),
    ],
)
def test_batched_sweep_equals_loop_conv(resnet, hook, kind):
    g = torch.Generator().manual_seed(2)
    size = 32 if kind == "channel" else 64  # one forward per channel: the smallest input ResNet takes
    clean, corrupt = torch.randn(1, 3, size, size, generator=g), torch.randn(1, 3, size, size, generator=g)
    every = 8 if kind == "channel" else 1  # 256 / 512 channels: 32 / 64 of them
    ts, ref, _ = _sweep_vs_loop(resnet, clean, corrupt, resnet.resolve_hook(hook), kind, grid=3, every=every)
    assert torch.isfinite(ref).all()
    if kind == "region":
        assert ts.grid == (3, 3) and len(ts) == 9


def test_expand_mode_skips_the_prefix_and_falls_back(vit, pair32):
    clean, corrupt = pair32
    out = run_patching(
        vit,
        clean[:1],
        corrupt[:1],
        ["blocks.3.hook_resid_pre", "blocks.3.attn.hook_z"],
        kind="position",
        batching="auto",
    )
    assert out.sweeps["blocks.3.hook_resid_pre"].info["mode"] == "expand"
    assert out.sweeps["blocks.3.attn.hook_z"].info["mode"] == "stack"
    with pytest.raises(VisionLensError, match="expand"):
        run_patching(vit, clean[:1], corrupt[:1], ["blocks.3.attn.hook_z"], kind="head", batching="expand")
    no_hooks_left(vit)


def test_chunking_memory_budget_gives_identical_results(vit, pair32):
    clean, corrupt = pair32
    a = run_patching(vit, clean, corrupt, ["blocks.2.hook_resid_pre"], batching="stack", max_batch=64)
    b = run_patching(
        vit, clean, corrupt, ["blocks.2.hook_resid_pre"], batching="stack", max_batch=2, memory_budget_mb=0.001
    )
    assert b.sweeps["blocks.2.hook_resid_pre"].info["chunk"] == 1
    assert torch.allclose(
        a.sweeps["blocks.2.hook_resid_pre"].scores, b.sweeps["blocks.2.hook_resid_pre"].scores, atol=TOL
    )


# ----------------------------------------------------------------------------- metric semantics
def test_normalized_metric_endpoints(vit, pair32):
    clean, corrupt = pair32
    hooks = ["blocks.0.hook_resid_pre", "blocks.11.hook_resid_post"]
    den = run_patching(vit, clean, corrupt, hooks, kind="whole", direction="denoising")
    noi = run_patching(vit, clean, corrupt, hooks, kind="whole", direction="noising")
    for h in hooks:  # patching the whole residual stream restores (or destroys) everything
        assert torch.allclose(den.sweeps[h].scores, torch.ones(1, 2), atol=1e-4)
        assert torch.allclose(noi.sweeps[h].scores, torch.zeros(1, 2), atol=1e-4)
    m = den.metric
    assert m.label.tolist() == vit(clean).argmax(-1).tolist()
    assert (m.foil != m.label).all()


def test_logprob_and_custom_metric(vit, pair32):
    clean, corrupt = pair32
    out = run_patching(
        vit, clean[:1], corrupt[:1], ["blocks.11.hook_resid_post"], kind="whole", metric="logprob", label=3
    )
    with torch.no_grad():
        lp = vit(clean[:1]).log_softmax(-1)[0, 3]
    assert abs(float(out.sweeps["blocks.11.hook_resid_post"].scores[0, 0]) - float(lp)) < 1e-4

    def top_logit(output, pair):
        return output.max(-1).values

    out = run_patching(vit, clean[:1], corrupt[:1], ["blocks.11.hook_resid_post"], kind="whole", metric=top_logit)
    with torch.no_grad():
        top = float(vit(clean[:1]).max())
    assert abs(float(out.sweeps["blocks.11.hook_resid_post"].scores[0, 0]) - top) < 1e-4
    with pytest.raises(VisionLensError, match="metric"):
        run_patching(vit, clean[:1], corrupt[:1], ["blocks.0.hook_resid_pre"], metric="accuracy")


def test_bad_target_kind_names_the_choices(vit, pair32):
    clean, corrupt = pair32
    with pytest.raises(VisionLensError, match="choose one of"):
        run_patching(vit, clean, corrupt, ["blocks.0.hook_resid_pre"], kind="head")
    with pytest.raises(VisionLensError, match="hook_resid_pre"):
        run_patching(vit, clean, corrupt, ["blocks.0.hook_resid_pr"])
    no_hooks_left(vit)


# ----------------------------------------------------------------------------- attribution patching
def test_attribution_patching_is_exact_on_a_linear_path(resnet):
    """Logits are linear in the pooled features, so AtP equals exact patching there."""
    g = torch.Generator().manual_seed(3)
    clean, corrupt = torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 3, 64, 64, generator=g)
    out = run_patching(resnet, clean, corrupt, ["hook_pooled"], kind="channel", metric="logit_diff", method="both")
    sw = out.sweeps["hook_pooled"]
    assert (sw.scores - sw.atp).abs().max() < 1e-4
    corr = out.correlation()
    assert corr["pearson"] > 0.9999 and corr["n"] == 512


def test_attribution_patching_correlates_on_vit(vit, pair32):
    clean, corrupt = pair32
    out = run_patching(vit, clean, corrupt, [f"blocks.{l}.hook_resid_pre" for l in (0, 4, 8)], method="both")
    corr = out.correlation()
    assert -1 <= corr["pearson"] <= 1 and corr["n"] == 3 * 5 * 2
    assert corr["pearson"] > 0.5  # on this toy model AtP tracks exact patching
    est = attribution_patching(
        vit,
        corrupt,
        {"blocks.4.hook_resid_pre": torch.zeros(2, 5, 192)},
        {"blocks.4.hook_resid_pre": out.sweeps["blocks.4.hook_resid_pre"].targets},
        out.metric,
    )
    assert est["blocks.4.hook_resid_pre"].shape == (5, 2)
    no_hooks_left(vit)


# ----------------------------------------------------------------------------- the plugin
def test_plugin_vit_layer_by_position(vit, pair32, tmp_path):
    clean, corrupt = pair32
    res = visionlens.run("activation_patching", vit, {"clean": clean, "corrupted": corrupt})
    assert res.hooks == [f"blocks.{l}.hook_resid_pre" for l in range(12)]
    mat, labels = res.matrix()
    assert mat.shape == (12, 5) and labels[0].startswith("token 0")
    assert res.grid("blocks.3.hook_resid_pre").shape == (2, 2)
    assert "pearson" in res.meta["atp_correlation"]
    json.dumps(res.to_dict())
    assert "<img" in res._repr_html_()
    out = res.save(tmp_path / "p")
    names = {p.name for p in out.iterdir()}
    assert {
        "result.json",
        "tensors.safetensors",
        "index.html",
        "overview.png",
        "heatmaps.png",
        "atp_vs_exact.png",
    } <= names
    back = load_result(out)
    assert type(back).__name__ == "PatchingResult"
    assert torch.equal(back.tensors["scores/blocks.3.hook_resid_pre"], res.tensors["scores/blocks.3.hook_resid_pre"])
    no_hooks_left(vit)


def test_plugin_heads_and_config_validation(vit, pair32):
    clean, corrupt = pair32
    res = visionlens.run(
        "activation_patching",
        vit,
        {"clean": clean[:1], "corrupted": corrupt[:1]},
        target="head",
        method="exact",
        hooks=["blocks.*.attn.hook_z"],
    )
    assert res.matrix()[0].shape == (12, 3)
    with pytest.raises(ConfigError, match="target"):
        visionlens.run("activation_patching", vit, clean, target="neuron")
    with pytest.raises(ConfigError, match="grid"):
        visionlens.run("activation_patching", vit, clean, grid=0)
    with pytest.raises(VisionLensError, match="clean and a corrupted"):
        visionlens.run("activation_patching", vit, clean[:1])


def test_plugin_conv_regions_named_images(resnet, tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for n in ("cat", "coffee", "other"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{n}.png")
    res = visionlens.run("activation_patching", resnet, str(folder), clean="cat", corrupted="2", grid=2, method="both")
    assert res.meta["inputs"] == ["cat.png", "other.png"]
    assert res.hooks == [f"stages.{s}.blocks.1.hook_resid_post" for s in range(4)]
    assert res.grid(res.hooks[0]).shape == (2, 2)
    with pytest.raises(ConfigError, match="no clean image"):
        visionlens.run("activation_patching", resnet, str(folder), clean="dog")
    no_hooks_left(resnet)


def test_cli_run(tmp_path):
    from visionlens.cli import main

    folder = image_folder(tmp_path / "imgs", seed=1)
    out = tmp_path / "out"
    hooks = "hooks=blocks.0.hook_resid_pre,blocks.5.hook_resid_pre"
    code = main(
        run_args("activation_patching", folder, out, hooks, "method=exact", "corrupted=img0.png", "clean=img1.png")
    )
    assert code == 0
    d = json.loads((out / "result.json").read_text())
    assert d["meta"]["inputs"] == ["img1.png", "img0.png"] and len(d["meta"]["hooks"]) == 2


def test_clip_image_tower_with_text_classes():
    from visionlens import HookedVisionModel

    clip = tiny_clip()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    model = HookedVisionModel.from_module(clip)
    x = torch.randn(2, 3, 32, 32, generator=g)
    res = visionlens.run("activation_patching", model, x, class_prompts=["cat", "dog", "car"], method="both")
    assert res.hooks == ["visual.blocks.0.hook_resid_pre", "visual.blocks.1.hook_resid_pre"]
    assert res.matrix()[0].shape == (2, 17)
    assert model.adapter.classifier is None  # the temporary zero-shot head is detached again
    no_hooks_left(model)


def test_unet_noise_prediction_mse():
    pytest.importorskip("diffusers")
    from visionlens import HookedVisionModel
    from visionlens.diffusion import tiny_unet

    model = HookedVisionModel.from_diffusers(tiny_unet("conditional"))
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor(10)
    e1, e2 = torch.randn(1, 5, 32, generator=g), torch.randn(1, 5, 32, generator=g)
    inputs = {"clean": (sample, t, e1), "corrupted": (sample, t, e2)}
    res = visionlens.run(
        "activation_patching",
        model,
        inputs,
        target="whole",
        method="exact",
        hooks=["up_blocks.1.hook_out", "mid_block.hook_out"],
    )
    assert res.meta["metric"]["metric"] == "normalized_output_mse"
    # the last block's output determines the noise prediction: patching it restores the clean run
    assert abs(float(res.scores("up_blocks.1.hook_out")) - 1.0) < 1e-4
    res = visionlens.run("activation_patching", model, inputs, grid=2, method="both", hooks=["mid_block.hook_out"])
    ex = run_patching(
        model,
        PatchInputs.of(inputs["clean"]),
        PatchInputs.of(inputs["corrupted"]),
        ["mid_block.hook_out"],
        kind="region",
        grid=2,
        metric="normalized_output_mse",
        batching="loop",
    )
    assert torch.allclose(res.tensors["scores/mid_block.hook_out"], ex.sweeps["mid_block.hook_out"].scores, atol=TOL)
    no_hooks_left(model)
