"""Feature visualization: objectives, parameterizations, transforms, batched rendering, the plugin.

Random weights, tiny inputs, few steps. Torch runs single-threaded in this module: on a shared
2-core machine OpenMP spinning makes small multi-threaded convolutions 10-50x slower.
"""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

import visionlens
import visionlens.featurevis as fv
from tests.conftest import hook_count, tiny_clip
from visionlens import registry
from visionlens.featurevis.objectives import Channel, ClassLogit, Neuron
from visionlens.hookspecs import hookimpl
from visionlens.validation import VisionLensError

# resnet, vit: tests/conftest.py


def _alive_channels(model, hook: str, n: int, size: int) -> list[int]:
    """Channels of ``hook`` with the largest mean response to a grey image (dead ReLUs get no gradient)."""
    x = fv.to_model_input(model, torch.full((1, 3, size, size), 0.5))
    _, cache = model.run_with_cache(x, names_filter=[hook])
    a = cache[hook][0]
    mean = a.mean(dim=(1, 2)) if a.ndim == 3 else a.reshape(-1, a.shape[-1]).mean(0)
    return mean.argsort(descending=True)[:n].tolist()


# ----------------------------------------------------------------------------- objectives rise
def test_objective_rises_on_resnet18(resnet):
    units = _alive_channels(resnet, "layer3.hook_out", 2, 64)
    r = fv.render(resnet, [f"layer3:{u}" for u in units], steps=30, size=64, progress=False)
    assert r.images.shape == (2, 3, 64, 64) and r.curves.shape == (2, 30)
    assert float(r.images.min()) >= 0.0 and float(r.images.max()) <= 1.0
    start, final = r.initial_values, r.final_values
    assert bool((final > 2 * start + 0.05).all()), (start, final)
    assert bool((r.curves[:, -5:].mean(1) > r.curves[:, 0]).all())
    assert len(r.pil()) == 2 and r.pil()[0].size == (64, 64)
    assert hook_count(resnet) == 0


def test_objective_rises_on_vit_neuron_head_and_logit(vit):
    objs = ["blocks.1.mlp.hook_post:3", "blocks.2.hook_resid_post:5@1", fv.attention_head(2, 1, token=0), "class:7"]
    r = fv.render(vit, objs, steps=25, transforms="scaled", progress=False)
    assert r.images.shape == (4, 3, 32, 32)  # the ViT's fixed input size
    assert r.names[2] == "blocks.2.attn.hook_result:head1@0"
    assert bool((r.final_values > r.initial_values + 0.1).all()), (r.initial_values, r.final_values)
    assert hook_count(vit) == 0


def test_vit_renders_larger_images_resized_to_model_size(vit):
    r = fv.render(vit, "blocks.0.mlp.hook_post:1", steps=2, size=48, progress=False)
    assert r.images.shape == (1, 3, 48, 48)


# ----------------------------------------------------------------------------- batching
@pytest.mark.parametrize("which", ["resnet", "vit"])
def test_batched_render_matches_single_renders(which, resnet, vit):
    model = resnet if which == "resnet" else vit
    units = (
        ["layer2:1", "layer2:5", "layer2:9"]
        if which == "resnet"
        else ["blocks.1.mlp.hook_post:3", "blocks.1.mlp.hook_post:40", "blocks.0.hook_resid_post:2@4"]
    )
    size = 40 if which == "resnet" else None
    kw = dict(steps=6, size=size, progress=False, evaluate_start_end=False, seed=11)
    batched = fv.render(model, units, **kw)
    for j, u in enumerate(units):
        single = fv.render(model, [u], **{**kw, "seed": 11 + j})
        assert (single.images[0] - batched.images[j]).abs().max() < 1e-4
        assert torch.allclose(single.curves[0], batched.curves[j], atol=1e-4, rtol=1e-3)
    chunked = fv.render(model, units, batch_size=2, **kw)
    assert (chunked.images - batched.images).abs().max() < 1e-4
    again = fv.render(model, units, **kw)
    assert torch.equal(again.images, batched.images)


def test_stops_forward_at_deepest_hook(resnet):
    resnet.parse_unit("layer2:1")  # counting a hook's units runs one dummy forward (once per model); not the loop's
    called = []
    handle = resnet.source.layer4.register_forward_hook(lambda *a: called.append(1))
    try:
        fv.render(resnet, "layer2:1", steps=2, size=32, progress=False, evaluate_start_end=False)
        assert not called
        fv.render(resnet, "class:3", steps=1, size=32, progress=False, evaluate_start_end=False)
        assert called
    finally:
        handle.remove()


def test_lr_end_decays_the_learning_rate_on_a_cosine(resnet):
    lrs: list[float] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def adam(params):
        return RecordingAdam(params, lr=0.3)

    kw = dict(steps=5, size=32, progress=False, evaluate_start_end=False)
    r = fv.render(resnet, "layer2:1", lr=0.3, lr_end=0.01, optimizer=adam, **kw)
    expected = [0.01 + 0.29 * (1 + math.cos(math.pi * i / 4)) / 2 for i in range(5)]
    assert lrs == pytest.approx(expected, rel=1e-6) and r.settings["lr_end"] == 0.01
    # lr_end == lr is Adam at a constant rate: the same images as no schedule
    same = fv.render(resnet, "layer2:1", lr=0.1, lr_end=0.1, **kw)
    const = fv.render(resnet, "layer2:1", lr=0.1, **kw)
    decayed = fv.render(resnet, "layer2:1", lr=0.1, lr_end=0.0, **kw)
    assert torch.allclose(same.images, const.images, atol=1e-6)
    assert float((decayed.images - const.images).abs().max()) > 1e-4
    with pytest.raises(VisionLensError, match="lr_end"):
        fv.render(resnet, "layer2:1", lr_end=-1.0, **kw)
    assert hook_count(resnet) == 0


def test_no_hook_leak_and_state_restored_after_exception(resnet):
    resnet.train()
    resnet.source.fc.weight.requires_grad_(True)
    frozen = resnet.source.conv1.weight
    frozen.requires_grad_(False)
    calls = []

    def boom(acts, image):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("objective failed")
        return acts["layer2.hook_out"][:, 0].mean(dim=(1, 2))

    try:
        with pytest.raises(RuntimeError, match="objective failed"):
            fv.render(resnet, fv.custom(boom, ["layer2"]), steps=5, size=32, progress=False)
        assert hook_count(resnet) == 0
        assert resnet.training and resnet.validate_inputs
        assert resnet.source.fc.weight.requires_grad and not frozen.requires_grad
        with pytest.raises(VisionLensError, match="Unknown hook"):
            fv.render(resnet, "layer9:1", steps=1, size=32, progress=False)
        assert hook_count(resnet) == 0
        fv.render(resnet, "layer2:1", steps=1, size=32, progress=False)
        assert hook_count(resnet) == 0 and resnet.training
    finally:
        resnet.eval()
        frozen.requires_grad_(True)


def test_diversity_group_and_regularizers(vit):
    layer = "blocks.1.mlp.hook_post"
    obj = fv.channel(layer, 3) - 10 * fv.diversity(layer) - 0.1 * fv.total_variation()
    r = fv.render(vit, obj, images_per_objective=3, steps=4, transforms="none", progress=False)
    assert r.images.shape == (3, 3, 32, 32) and r.curves.shape == (1, 4) and r.group(0).shape == (3, 3, 32, 32)
    assert not torch.allclose(r.images[0], r.images[1])


# ----------------------------------------------------------------------------- parsing and algebra
def test_string_parsing(resnet, vit):
    o = fv.objective("layer3:12", resnet)
    assert isinstance(o, Channel) and o.hook == "layer3.hook_out" and o.index == 12
    o = fv.objective("layer3:12@(1,2)", resnet)
    assert isinstance(o, Neuron) and o.position == (1, 2)
    o = fv.objective("neuron:layer3:12", resnet)
    assert isinstance(o, Neuron) and o.position is None and o.name == "layer3.hook_out:12@(centre)"
    o = fv.objective("channel:layer1.0.conv1:4", resnet)
    assert isinstance(o, Channel) and o.hook == "layer1.0.conv1.hook_out"
    assert isinstance(fv.objective("class:5", resnet), ClassLogit)
    o = fv.objective("blocks.1.mlp.hook_post:123@5", vit)
    assert isinstance(o, Neuron) and o.hook == "blocks.1.mlp.hook_post" and o.position == (5,)
    o = fv.objective("head:2:1@0", vit)
    assert o.hook == "blocks.2.attn.hook_result" and o.head == 1 and o.token == 0
    assert fv.objective("diversity:layer3", resnet).hooks == ("layer3.hook_out",)
    assert fv.objective("tv").needs_image
    with pytest.raises(VisionLensError, match="out of range"):
        fv.objective("layer3:9999", resnet)
    with pytest.raises(VisionLensError, match="Objective prefixes"):
        fv.objective("nonsense", resnet)
    with pytest.raises(VisionLensError, match="Unknown hook"):
        fv.objective("layer9:1", resnet)


def test_plugin_objective_prefix(vit):
    plugin = types.ModuleType("fv_test_objectives")

    def factory(model, spec):
        _, arg = spec.split(":", 1)
        return fv.channel("blocks.0.mlp.hook_post", int(arg)) * 2

    plugin.visionlens_register_objectives = hookimpl(lambda: [("double", factory)])
    pm = registry.plugin_manager()
    pm.register(plugin, name="fv_test_objectives")
    try:
        o = fv.objective("double:3", vit)
        assert o.name == "2*blocks.0.mlp.hook_post:3"
        r = fv.render(
            vit, ["double:3", "blocks.0.mlp.hook_post:3"], steps=1, transforms="none", progress=False, seeds=[0, 0]
        )
        assert torch.allclose(r.curves[0], 2 * r.curves[1], atol=1e-5)
    finally:
        pm.unregister(name="fv_test_objectives")


def test_objective_algebra_on_cached_activations(vit):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, cache = vit.run_with_cache(x)
    a = fv.channel("blocks.1.mlp.hook_post", 3)
    b = fv.neuron("blocks.2.hook_resid_post", 5, position=1)
    c = fv.direction("blocks.0.hook_resid_post", torch.arange(192.0), position=0)
    va, vb, vc = a(cache), b(cache), c(cache)
    assert va.shape == (2,)
    assert torch.allclose(va, cache["blocks.1.mlp.hook_post"][..., 3].mean(1))
    assert torch.allclose(vb, cache["blocks.2.hook_resid_post"][:, 1, 5])
    assert torch.allclose(vc, cache["blocks.0.hook_resid_post"][:, 0] @ torch.arange(192.0))
    combo = a + 2 * b
    assert torch.allclose(combo(cache), va + 2 * vb, atol=1e-5)
    assert set(combo.hooks) == {"blocks.1.mlp.hook_post", "blocks.2.hook_resid_post"}
    assert torch.allclose((a - b / 2 + 1)(cache), va - vb / 2 + 1, atol=1e-5)
    assert torch.allclose((3 - a)(cache), 3 - va, atol=1e-5)
    assert torch.allclose((-(a + c) * 0.5)(cache), -(va + vc) * 0.5, atol=1e-3)
    assert combo.name == "blocks.1.mlp.hook_post:3 + 2*blocks.2.hook_resid_post:5@(1)"
    logits = cache["hook_logits"]
    assert torch.allclose(fv.class_logit(4)(cache), logits[:, 4])
    head = fv.attention_head(1, 2, token=3)
    res = vit.run_with_cache(x, names_filter=["blocks.1.attn.hook_result"])[1]["blocks.1.attn.hook_result"]
    assert torch.allclose(head({"blocks.1.attn.hook_result": res}), res[:, 3, 2].norm(dim=-1))
    with pytest.raises(TypeError):
        a * b


# ----------------------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("kind", ["fft", "pixel"])
@pytest.mark.parametrize("hw", [(16, 16), (15, 20)])
def test_param_round_trip(kind, hw):
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    p = fv.make_param(kind, 2, hw, generators=gens)
    img = p().detach()
    assert img.shape == (2, 3, *hw) and 0 < float(img.min()) and float(img.max()) < 1
    target = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(5)) * 0.9 + 0.05
    p.set_image(target)
    assert (p().detach() - target).abs().max() < 1e-4


def test_color_decorrelation_matrix_is_lucids():
    m = fv.COLOR_CORRELATION_NORMALIZED
    assert abs(float(m.norm(dim=0).max()) - 1.0) < 1e-9
    assert torch.allclose(m * fv.param.MAX_NORM_SVD_SQRT, fv.COLOR_CORRELATION_SVD_SQRT)


def test_per_image_init_and_cppn():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    both = fv.FFTImage(2, 8, generators=[g(1), g(2)])
    one = fv.FFTImage(1, 8, generators=[g(2)])
    assert torch.equal(both.spectrum[1], one.spectrum[0])
    c = fv.CPPNImage(2, 12, generators=[g(1), g(2)])
    assert torch.allclose(c(), torch.full((2, 3, 12, 12), 0.5))


def test_transforms_are_per_image_deterministic():
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    tf = fv.standard_transforms()
    out = tf(x, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    assert out.shape == (3, 3, 40 + 24 - 8 - 4, 52)
    single = tf(x[1:2], [torch.Generator().manual_seed(2)])
    assert torch.allclose(out[1:2], single, atol=1e-6)


# ----------------------------------------------------------------------------- other model kinds
def test_clip_text_direction_and_unet_timestep():
    pytest.importorskip("open_clip")
    pytest.importorskip("diffusers")
    from visionlens import HookedVisionModel
    from visionlens.diffusion import tiny_unet

    clip = tiny_clip()
    m = HookedVisionModel.from_module(clip)
    text = torch.randn(16, generator=torch.Generator().manual_seed(1))
    obj = fv.text_direction(text, model=m)
    assert obj.hook == "visual.hook_proj"
    r = fv.render(
        m, [obj, fv.attention_head("visual.blocks.1", 2, token=0)], steps=12, transforms="scaled", progress=False
    )
    assert bool((r.final_values > r.initial_values).all())
    assert hook_count(m) == 0

    u = HookedVisionModel.from_module(tiny_unet("conditional", sample_size=8))
    ctx = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(2))
    r = fv.render(
        u,
        ["down_blocks.0.resnets.0:3", "down_blocks.0.resnets.0:4"],
        steps=8,
        size=16,
        transforms="none",
        progress=False,
        forward_kwargs={"timestep": 10, "encoder_hidden_states": ctx},
    )
    assert r.images.shape == (2, 4, 16, 16)
    assert bool((r.final_values > r.initial_values).all())
    assert hook_count(u) == 0


# ----------------------------------------------------------------------------- plugin
@pytest.fixture()
def fv_plugin():
    assert "feature_visualization" in visionlens.list_analyses()  # a built-in plugin: always registered
    yield


def test_plugin_runs_and_saves_png_and_html(fv_plugin, resnet, tmp_path):
    assert "feature_visualization" in visionlens.list_analyses()
    res = visionlens.run("feature_visualization", resnet, None, objectives=["layer3:1", "layer3:2"], steps=5, size=64)
    assert res.images.shape == (2, 3, 64, 64) and res.curves.shape == (2, 5)
    assert [row[1] for row in res.tables["objectives"].rows] == ["layer3:1", "layer3:2"]
    out = res.save(tmp_path / "fv")
    files = {p.name for p in out.iterdir()}
    assert {"result.json", "index.html", "tensors.safetensors", "images.png", "curves.png"} <= files
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000_layer3_1.png", "001_layer3_2.png"]
    html = (out / "index.html").read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    d = json.loads((out / "result.json").read_text())
    assert d["analysis"] == "feature_visualization"
    assert d["meta"]["objectives"] == ["layer3.hook_out:1", "layer3.hook_out:2"]
    from visionlens.results import load_result

    again = load_result(out)
    assert type(again).__name__ == "FeatureVisualizationResult" and torch.equal(again.images, res.images)
    with pytest.raises(visionlens.analysis.ConfigError):
        visionlens.run("feature_visualization", resnet, None, objectives=["layer3:1"], steps=0)
    with pytest.raises(visionlens.analysis.ConfigError, match="feature_visualization"):
        visionlens.run("feature_visualization", resnet, None, objectives=["nope"], steps=1)
    assert hook_count(resnet) == 0
