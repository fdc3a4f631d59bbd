"""InceptionV1: the Lucid architecture (channel counts, Lucent state dict, reference forward) and
torchvision's googlenet under the same Lucid / Microscope layer names.

(Parity, hooks, gradients and cleanup for both are covered by tests/test_conv_adapters.py.)
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from visionlens import HookedVisionModel, VisionLensError, parse_unit
from visionlens.adapters.inception import BRANCHES, MIXED_LAYERS, GoogLeNetAdapter, LucidInceptionV1Adapter
from visionlens.adapters.lucid_inception import LucidInceptionV1, load_lucid_inceptionv1

LUCID_CHANNELS = {
    "mixed3a": 256,
    "mixed3b": 480,
    "mixed4a": 508,
    "mixed4b": 512,
    "mixed4c": 512,
    "mixed4d": 528,
    "mixed4e": 832,
    "mixed5a": 832,
    "mixed5b": 1024,
}
GOOGLENET_CHANNELS = {
    "mixed3a": 256,
    "mixed3b": 480,
    "mixed4a": 512,
    "mixed4b": 512,
    "mixed4c": 512,
    "mixed4d": 528,
    "mixed4e": 832,
    "mixed5a": 832,
    "mixed5b": 1024,
}


def _lucid_input(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 255 - 117  # Lucid scaling of [0, 1] pixels


@pytest.fixture(scope="module")
def lucid():
    torch.manual_seed(0)
    src = LucidInceptionV1().eval()
    ref = copy.deepcopy(src)
    return HookedVisionModel.from_module(src), ref


@pytest.fixture(scope="module")
def googlenet():
    torch.manual_seed(0)
    src = torchvision.models.googlenet(aux_logits=False, init_weights=True).eval()
    return HookedVisionModel.from_module(src)


# ----------------------------------------------------------------------------- Lucid architecture
def test_lucid_channel_counts(lucid):
    model, _ = lucid
    assert type(model.adapter) is LucidInceptionV1Adapter
    with torch.no_grad():
        _, cache = model.run_with_cache(_lucid_input(1), names_filter=[f"{n}.hook_out" for n in MIXED_LAYERS])
    assert {n: cache[f"{n}.hook_out"].shape[1] for n in MIXED_LAYERS} == LUCID_CHANNELS
    assert model.cfg.extra["layer_channels"] == LUCID_CHANNELS
    assert model.cfg.stage_depths == (2, 5, 2) and model.cfg.stage_widths == (480, 832, 1024)
    assert model.cfg.n_classes == 1008 and model.cfg.family == "inception"
    assert model.cfg.extra["branch_offsets"]["mixed4a"] == {
        "branch1x1": (0, 192),
        "branch3x3": (192, 396),
        "branch5x5": (396, 444),
        "branch_pool": (444, 508),
    }


def _lucent_keys():
    """State-dict keys and shapes of Lucent's ``InceptionV1`` (ProGamerGov's inception5h port)."""
    shapes = {"conv2d0": (64, 3, 7, 7), "conv2d1": (64, 64, 1, 1), "conv2d2": (192, 64, 3, 3)}
    spec = {
        "mixed3a": (192, 64, 96, 128, 16, 32, 32),
        "mixed3b": (256, 128, 128, 192, 32, 96, 64),
        "mixed4a": (480, 192, 96, 204, 16, 48, 64),
        "mixed4b": (508, 160, 112, 224, 24, 64, 64),
        "mixed4c": (512, 128, 128, 256, 24, 64, 64),
        "mixed4d": (512, 112, 144, 288, 32, 64, 64),
        "mixed4e": (528, 256, 160, 320, 32, 128, 128),
        "mixed5a": (832, 256, 160, 320, 48, 128, 128),
        "mixed5b": (832, 384, 192, 384, 48, 128, 128),
    }
    for n, (cin, c1, c3r, c3, c5r, c5, cp) in spec.items():
        shapes.update(
            {
                f"{n}_1x1": (c1, cin, 1, 1),
                f"{n}_3x3_bottleneck": (c3r, cin, 1, 1),
                f"{n}_5x5_bottleneck": (c5r, cin, 1, 1),
                f"{n}_pool_reduce": (cp, cin, 1, 1),
                f"{n}_3x3": (c3, c3r, 3, 3),
                f"{n}_5x5": (c5, c5r, 5, 5),
            }
        )
    keys = {}
    for n, s in shapes.items():
        keys[f"{n}_pre_relu_conv.weight"] = s
        keys[f"{n}_pre_relu_conv.bias"] = (s[0],)
    keys["softmax2_pre_activation_matmul.weight"] = (1008, 1024)
    keys["softmax2_pre_activation_matmul.bias"] = (1008,)
    return keys


def test_lucid_state_dict_matches_lucent_port():
    sd = LucidInceptionV1().state_dict()
    expected = _lucent_keys()
    assert len(expected) == 116
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected


def _lucent_reference_forward(sd, x):
    """Lucent's InceptionV1 forward, written out functionally: explicit SAME pads, -inf max-pool pads,
    LRN(9, 1e-4, 0.5, 1), 7x7 average pool, softmax."""

    def unit(name, t, stride=1, pad=None):
        if pad is not None:
            t = F.pad(t, pad)
        return F.relu(F.conv2d(t, sd[f"{name}_pre_relu_conv.weight"], sd[f"{name}_pre_relu_conv.bias"], stride=stride))

    def maxpool(t, stride, pad):
        return F.max_pool2d(F.pad(t, pad, value=float("-inf")), 3, stride=stride)

    def lrn(t):
        return F.local_response_norm(t, size=9, alpha=9.99999974738e-05, beta=0.5, k=1)

    t = unit("conv2d0", x, stride=2, pad=(2, 3, 2, 3))
    t = lrn(maxpool(t, 2, (0, 1, 0, 1)))
    t = unit("conv2d2", unit("conv2d1", t), pad=(1, 1, 1, 1))
    t = maxpool(lrn(t), 2, (0, 1, 0, 1))
    for n in MIXED_LAYERS:
        if n in ("mixed4a", "mixed5a"):
            t = maxpool(t, 2, (0, 1, 0, 1))
        b1 = unit(f"{n}_1x1", t)
        b3 = unit(f"{n}_3x3", unit(f"{n}_3x3_bottleneck", t), pad=(1, 1, 1, 1))
        b5 = unit(f"{n}_5x5", unit(f"{n}_5x5_bottleneck", t), pad=(2, 2, 2, 2))
        bp = unit(f"{n}_pool_reduce", maxpool(t, 1, (1, 1, 1, 1)))
        t = torch.cat([b1, b3, b5, bp], 1)
    t = F.avg_pool2d(t, kernel_size=7, stride=1, count_include_pad=False).reshape(-1, 1024)
    logits = F.linear(t, sd["softmax2_pre_activation_matmul.weight"], sd["softmax2_pre_activation_matmul.bias"])
    return logits, t


def test_lucid_matches_lucent_reference_forward_at_224(lucid):
    model, ref = lucid
    x = _lucid_input(1, 224, seed=3)
    with torch.no_grad():
        ref_logits, ref_pooled = _lucent_reference_forward(ref.state_dict(), x)
        out, cache = model.run_with_cache(x, names_filter=["hook_pooled", "mixed5b.hook_out"])
    assert cache["mixed5b.hook_out"].shape == (1, 1024, 7, 7)
    assert torch.allclose(cache["hook_pooled"], ref_pooled, atol=1e-5, rtol=1e-5)
    assert torch.allclose(out, ref_logits, atol=1e-4, rtol=1e-5)
    # Lucent returns the softmax; equal logits (1e-4) give equal log-probabilities to the same order
    assert torch.allclose(out.log_softmax(-1), ref_logits.log_softmax(-1), atol=2e-4)


def test_lucid_state_dict_round_trip(tmp_path, lucid):
    _, ref = lucid
    x = _lucid_input(2, 48, seed=4)
    path = tmp_path / "inception5h.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_lucid_inceptionv1(path)
    assert not loaded.training
    st = tmp_path / "inception5h.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    loaded_st = load_lucid_inceptionv1(st)
    fresh = load_lucid_inceptionv1()  # random weights: differ
    with torch.no_grad():
        expected = ref(x)
        assert torch.equal(loaded(x), expected)
        assert torch.equal(loaded_st(x), expected)
        assert not torch.allclose(fresh(x), expected)
        hooked = HookedVisionModel.from_module(loaded)
        assert type(hooked.adapter) is LucidInceptionV1Adapter
        assert torch.equal(hooked(x), expected)
    # strict loading: a truncated state dict is rejected
    sd = ref.state_dict()
    sd.pop("mixed4a_3x3_pre_relu_conv.weight")
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="mixed4a_3x3_pre_relu_conv.weight"):
        load_lucid_inceptionv1(tmp_path / "broken.pth")


def test_lucid_redirected_relu_changes_only_gradients(lucid):
    _, ref = lucid
    red = LucidInceptionV1(redirected_relu=True).eval()
    red.load_state_dict(ref.state_dict())
    x = _lucid_input(1, 32, seed=5)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ref(xa), red(xb)
    assert torch.equal(out_a, out_b)
    out_a[:, 3].sum().backward()
    out_b[:, 3].sum().backward()
    assert not torch.allclose(xa.grad, xb.grad)
    ref.zero_grad(set_to_none=True)


def test_lucid_input_scaling_and_validation(lucid):
    model, _ = lucid
    assert model.cfg.mean == pytest.approx((117 / 255,) * 3) and model.cfg.std == pytest.approx((1 / 255,) * 3)
    img = Image.new("RGB", (40, 40), (255, 0, 128))
    x = model.preprocess(img)
    assert x.shape == (1, 3, 224, 224)
    assert torch.allclose(x[0, :, 100, 100], torch.tensor([138.0, -117.0, 11.0]), atol=1e-3)
    with torch.no_grad():
        model(x)  # Lucid-scaled input is accepted
        with pytest.raises(VisionLensError, match="Lucid-scaled"):
            model(torch.rand(1, 3, 64, 64) * 255)
        with pytest.raises(VisionLensError, match="channels"):
            model(torch.zeros(1, 1, 64, 64))


# ----------------------------------------------------------------------------- shared naming
def _canonical(model):
    return set(model.adapter.canonical_hooks())


def test_same_hook_names_for_both_architectures(lucid, googlenet):
    lucid_model, _ = lucid
    names = _canonical(lucid_model)
    assert names == _canonical(googlenet)
    for layer in ("conv2d0", "conv2d1", "conv2d2"):
        assert {f"{layer}.hook_out", f"{layer}.hook_pre_relu"} <= names
    for layer in MIXED_LAYERS:
        assert f"{layer}.hook_out" in names
        for br in BRANCHES:
            assert {f"{layer}.{br}.hook_out", f"{layer}.{br}.hook_pre_relu"} <= names
    assert {"hook_pooled", "hook_logits"} <= names
    assert set(lucid_model.adapter.aliases()) == set(googlenet.adapter.aliases())


def test_units_parse_everywhere(lucid, googlenet):
    lucid_model, _ = lucid
    for model in (lucid_model, googlenet):
        u = parse_unit("mixed4a:476", model)
        assert (u.hook, u.index) == ("mixed4a.hook_out", 476)
        assert model.parse_unit("mixed3b:379@(3,4)").position == (3, 4)
        assert parse_unit("mixed4a_3x3_pre_relu:10", model).hook == "mixed4a.branch3x3.hook_pre_relu"
        assert parse_unit("mixed5b_pool_reduce:3", model).hook == "mixed5b.branch_pool.hook_out"
        assert parse_unit("softmax2_pre_activation:0", model).hook == "hook_logits"
        assert model.resolve_hook("conv2d0_pre_relu") == "conv2d0.hook_pre_relu"
        assert model.resolve_hook("avgpool0") == "hook_pooled"
    with pytest.raises(VisionLensError, match="508 units"):
        parse_unit("mixed4a:508", lucid_model)
    assert parse_unit("mixed4a:508", googlenet).index == 508  # googlenet's mixed4a has 512 channels
    # Lucent's own module names resolve on the Lucid network through the module tree
    assert lucid_model.resolve_hook("mixed4a_3x3_pre_relu_conv") in (
        "mixed4a.branch3x3.hook_pre_relu",
        "mixed4a_3x3_pre_relu_conv.hook_out",
    )
    assert lucid_model.resolve_hook("maxpool4") == "maxpool4.hook_out"
    assert lucid_model.resolve_hook("localresponsenorm0") == "localresponsenorm0.hook_out"


def test_branches_concatenate_in_lucid_order(lucid, googlenet):
    lucid_model, _ = lucid
    for model, x in ((lucid_model, _lucid_input(1)), (googlenet, torch.randn(1, 3, 32, 32))):
        with torch.no_grad():
            _, c = model.run_with_cache(x, names_filter=lambda n: n.startswith("mixed4b"))
        offsets = model.cfg.extra["branch_offsets"]["mixed4b"]
        for br, (lo, hi) in offsets.items():
            assert torch.equal(c["mixed4b.hook_out"][:, lo:hi], c[f"mixed4b.{br}.hook_out"]), br
            assert torch.equal(c[f"mixed4b.{br}.hook_pre_relu"].relu(), c[f"mixed4b.{br}.hook_out"]), br
        assert (c["mixed4b.branch3x3.hook_pre_relu"] < 0).any()  # pre-ReLU values survive in-place ReLUs


def test_branch_ablation_zeroes_its_slice(lucid):
    model, ref = lucid
    x = _lucid_input(2)
    with torch.no_grad(), model.hooks(fwd_hooks=[("mixed4a.branch1x1.hook_out", lambda t, hook: t * 0)]):
        out, c = model.run_with_cache(x, names_filter="mixed4a.hook_out")
    assert (c["mixed4a.hook_out"][:, :192] == 0).all() and (c["mixed4a.hook_out"][:, 192:] != 0).any()
    with torch.no_grad():
        assert (out - ref(x)).abs().max() > 1e-4


# ----------------------------------------------------------------------------- googlenet mapping
def test_googlenet_mapping(googlenet):
    m = googlenet
    assert type(m.adapter) is GoogLeNetAdapter and m.cfg.architecture == "googlenet"
    src = m.source
    assert m.hook_dict["conv2d0.hook_out"].target is src.conv1
    assert m.hook_dict["conv2d0.hook_pre_relu"].target is src.conv1.bn
    assert m.hook_dict["conv2d2.hook_out"].target is src.conv3
    assert m.hook_dict["mixed4a.hook_out"].target is src.inception4a
    assert m.hook_dict["mixed4a.branch5x5.hook_out"].target is src.inception4a.branch3[1]
    assert m.hook_dict["mixed5b.branch_pool.hook_out"].target is src.inception5b.branch4[1]
    assert m.cfg.extra["layer_channels"] == GOOGLENET_CHANNELS
    assert m.cfg.extra["module_map"]["mixed4e"] == "inception4e"
    with torch.no_grad():
        _, c = m.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=lambda n: n.startswith("conv2d0"))
    assert torch.equal(c["conv2d0.hook_pre_relu"].relu(), c["conv2d0.hook_out"])
    assert (c["conv2d0.hook_pre_relu"] < 0).any()


def test_googlenet_from_torchvision_spec():
    import visionlens

    m = visionlens.load("torchvision:googlenet")
    assert type(m.adapter) is GoogLeNetAdapter
    assert m.cfg.n_classes == 1000 and m.parse_unit("mixed4a:476").hook == "mixed4a.hook_out"
