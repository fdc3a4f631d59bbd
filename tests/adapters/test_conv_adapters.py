"""Conv-net adapters (ResNet timm/torchvision, ConvNeXt, MobileNetV2, GoogLeNet, Lucid InceptionV1).

Every config is checked for: exact parity with and without hooks / cache, residual identities,
ablations and perturbations that really reach the output, backward hooks and input gradients,
in-place safety of cached values, readouts, and that no torch hook is left behind.
Models use random weights with randomized norm statistics so every term matters.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torchvision
from torch import nn

from tests.conftest import no_hooks_left
from visionlens import HookedVisionModel
from visionlens.adapters.bridging import find_inplace_targets
from visionlens.adapters.conv_blocks import ConvReadout
from visionlens.adapters.convnext import ConvNeXtAdapter
from visionlens.adapters.inception import GoogLeNetAdapter, LucidInceptionV1Adapter
from visionlens.adapters.lucid_inception import LucidInceptionV1
from visionlens.adapters.mobilenet import MobileNetV2Adapter
from visionlens.adapters.resnet import ResNetAdapter

ATOL = 1e-5

# name: (builder, image size, adapter class, residual kind, input scale)
CONFIGS = {
    "timm_resnet18": (lambda: timm.create_model("resnet18", num_classes=10), 64, ResNetAdapter, "relu", 1.0),
    "timm_resnet50": (lambda: timm.create_model("resnet50", num_classes=10), 32, ResNetAdapter, "relu", 1.0),
    "tv_resnet18": (lambda: torchvision.models.resnet18(num_classes=10), 64, ResNetAdapter, "relu", 1.0),
    "tv_resnet50": (lambda: torchvision.models.resnet50(num_classes=10), 32, ResNetAdapter, "relu", 1.0),
    "convnext_atto": (lambda: timm.create_model("convnext_atto", num_classes=10), 64, ConvNeXtAdapter, "add", 1.0),
    "convnext_tiny": (lambda: timm.create_model("convnext_tiny", num_classes=10), 32, ConvNeXtAdapter, "add", 1.0),
    "mobilenet_v2_w0.5": (
        lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5),
        64,
        MobileNetV2Adapter,
        "add",
        1.0,
    ),
    "mobilenet_v2_w1.0": (lambda: torchvision.models.mobilenet_v2(num_classes=10), 32, MobileNetV2Adapter, "add", 1.0),
    "googlenet": (
        lambda: torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=True),
        64,
        GoogLeNetAdapter,
        None,
        1.0,
    ),
    "lucid_inceptionv1": (lambda: LucidInceptionV1(), 64, LucidInceptionV1Adapter, None, 30.0),
}


def _randomize(src: nn.Module, size: int = 64, scale: float = 1.0) -> None:
    """Make every term matter: calibrate BatchNorm statistics on random images (so activations stay
    O(1) instead of saturating), then randomize norm affine params, layer scale and biases."""
    g = torch.Generator().manual_seed(1)
    bns = [m for m in src.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        if bns:
            for m in bns:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration batch
            src.train()
            src(torch.randn(4, 3, size, size, generator=g) * scale)
            src.eval()
            for m in bns:
                m.momentum = 0.1
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
        for n, p in src.named_parameters():
            if n.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif n.endswith("bias") and p.ndim == 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    src.eval()


def _build(name):
    torch.manual_seed(0)
    builder, size, adapter_cls, kind, scale = CONFIGS[name]
    src = builder().eval()
    _randomize(src, size, scale)
    ref = copy.deepcopy(src)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="No visionlens adapter")  # the generic fallback must not be used
        model = HookedVisionModel.from_module(src)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2)) * scale
    with torch.no_grad():
        expected = ref(x)
    return model, ref, x, expected


class Case:
    def __init__(self, name):
        self.name = name
        self.model, self.ref, self.x, self.expected = _build(name)
        _, _, self.adapter_cls, self.kind, _ = CONFIGS[name]


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    return Case(request.param)


def _blocks(model):
    """Prefixes ``stages.{s}.blocks.{b}.`` of every block with the full set of residual hooks."""
    return [n[: -len("hook_branch_out")] for n in model.hook_dict if n.endswith(".hook_branch_out")]


# ----------------------------------------------------------------------------- basics
def test_adapter_is_specific(case):
    m = case.model
    assert type(m.adapter) is case.adapter_cls
    assert m.adapter.priority == 10 and m.cfg.adapter == m.adapter.name
    assert case.adapter_cls.matches(m.source)
    assert m.cfg.dynamic_img_size and m.cfg.min_image_size == 32
    assert m.cfg.n_classes == case.expected.shape[-1]
    assert m.cfg.family in ("resnet", "convnext", "mobilenet", "inception")
    assert len(m.cfg.stage_depths) == len(m.cfg.stage_widths) and sum(m.cfg.stage_depths) == m.cfg.n_layers
    assert {"hook_pooled", "hook_logits"} <= set(m.hook_dict)
    assert (case.expected[0] - case.expected[1]).abs().max() > 1e-3  # the random model is input-sensitive
    no_hooks_left(m)


def test_other_adapters_do_not_match(case):
    for cls in (ResNetAdapter, ConvNeXtAdapter, MobileNetV2Adapter, GoogLeNetAdapter, LucidInceptionV1Adapter):
        assert cls.matches(case.model.source) == (cls is case.adapter_cls)


def test_parity_no_hooks(case):
    with torch.no_grad():
        out = case.model(case.x)
    assert torch.allclose(out, case.expected, atol=ATOL, rtol=0)
    no_hooks_left(case.model)


def test_parity_full_cache(case):
    m = case.model
    with torch.no_grad():
        out, cache = m.run_with_cache(case.x)
    assert torch.allclose(out, case.expected, atol=ATOL, rtol=0)
    assert set(cache.keys()) == set(m.hook_dict)  # every hook fires in eval mode
    assert torch.equal(cache["hook_logits"], out)
    assert cache["hook_pooled"].shape == (case.x.shape[0], m.adapter.readout().fc.in_features)
    no_hooks_left(m)


def test_parity_tl_caching_hooks(case):
    """TransformerLens's own caching hooks (taken when a TL-only argument is passed) agree with the fast path."""
    m = case.model
    with torch.no_grad():
        out, cache = m.run_with_cache(case.x, incl_bwd=False)
        _, fast = m.run_with_cache(case.x)
    assert torch.allclose(out, case.expected, atol=ATOL, rtol=0)
    assert set(cache.keys()) == set(fast.keys()) == set(m.hook_dict)
    for n in m.hook_dict:
        assert torch.equal(cache[n], fast[n]), n
    no_hooks_left(m)


def test_parity_identity_hooks_everywhere(case):
    m = case.model
    seen = set()

    def ident(t, hook):
        seen.add(hook.name)
        return t

    with torch.no_grad():
        out = m.run_with_hooks(case.x, fwd_hooks=[(lambda n: True, ident)])
    assert torch.allclose(out, case.expected, atol=ATOL, rtol=0)
    assert seen == set(m.hook_dict)
    no_hooks_left(m)


# ----------------------------------------------------------------------------- residual stream
def test_residual_identities(case):
    m = case.model
    blocks = _blocks(m)
    if case.kind is None:
        assert not blocks
        return
    assert len(blocks) == m.cfg.n_layers
    with torch.no_grad():
        _, c = m.run_with_cache(case.x)
    n_add = 0
    for pre in blocks:
        r_pre, br, r_post = c[pre + "hook_resid_pre"], c[pre + "hook_branch_out"], c[pre + "hook_resid_post"]
        if case.kind == "relu":
            shortcut = c.cache_dict.get(pre + "hook_shortcut", r_pre)
            assert torch.equal(br + shortcut, c[pre + "hook_resid_sum"]), pre
            assert torch.equal(torch.relu(c[pre + "hook_resid_sum"]), r_post), pre
            assert (br < 0).any(), pre  # branch_out was cached before `+=` / ReLU could overwrite it
        elif r_pre.shape == r_post.shape and not (
            case.adapter_cls is MobileNetV2Adapter and not _mobilenet_residual(m, pre)
        ):
            assert torch.equal(r_pre + br, r_post), pre
            n_add += 1
        else:
            assert torch.equal(br, r_post), pre  # MobileNetV2 blocks without a shortcut
    if case.kind == "add":
        assert n_add >= m.cfg.n_layers // 2


def _mobilenet_residual(model, pre):
    s, b = int(pre.split(".")[1]), int(pre.split(".")[3])
    return model.cfg.extra["residual"][s][b]


def test_resnet_internal_activations(case):
    """hook_act{i} is the ReLU of the matching BN output (also for torchvision's shared relu module)."""
    if case.adapter_cls is not ResNetAdapter:
        pytest.skip("ResNet only")
    m = case.model
    with torch.no_grad():
        _, c = m.run_with_cache(case.x)
    tv = m.cfg.extra["library"] == "torchvision"
    for s in range(len(m.cfg.stage_depths)):
        blk = f"layer{s + 1}.0."
        pre = f"stages.{s}.blocks.0."
        bn1 = c[blk + "bn1.hook_out"]
        assert (bn1 < 0).any()  # pre-ReLU value survived the in-place ReLU
        assert torch.equal(c[pre + "hook_act1"], torch.relu(bn1))
        if pre + "hook_act2" in c.cache_dict:
            assert torch.equal(c[pre + "hook_act2"], torch.relu(c[blk + "bn2.hook_out"]))
        if tv:  # the shared module-tree relu hook keeps the last call: the block output
            assert torch.equal(c[blk + "relu.hook_out"], c[pre + "hook_resid_post"])
    no_hooks_left(m)


def test_zero_ablation_changes_output(case):
    m = case.model
    blocks = _blocks(m)
    if blocks:
        target = blocks[len(blocks) // 2] + "hook_branch_out"
        with torch.no_grad(), m.hooks(fwd_hooks=[(target, lambda t, hook: torch.zeros_like(t))]):
            out, c = m.run_with_cache(case.x)
        pre = target[: -len("hook_branch_out")]
        assert torch.equal(c[target], torch.zeros_like(c[target]))
        if case.kind == "relu":
            shortcut = c.cache_dict.get(pre + "hook_shortcut", c[pre + "hook_resid_pre"])
            assert torch.equal(c[pre + "hook_resid_post"], torch.relu(shortcut))
        elif c[pre + "hook_resid_pre"].shape == c[pre + "hook_resid_post"].shape:
            assert torch.equal(c[pre + "hook_resid_post"], c[pre + "hook_resid_pre"])
    else:
        target = "mixed4a.hook_out"

        def ablate(t, hook):
            t = t.clone()
            t[:, 100] = 0
            return t

        with torch.no_grad(), m.hooks(fwd_hooks=[(target, ablate)]):
            out, c = m.run_with_cache(case.x)
        assert torch.equal(c[target][:, 100], torch.zeros_like(c[target][:, 100]))
    assert (out - case.expected).abs().max() > 1e-4
    no_hooks_left(m)


def test_channel_ablation_on_module_tree_hook(case):
    m = case.model
    conv = next(
        n
        for n in m.hook_dict
        if n.endswith("conv.hook_out")
        or n.endswith("conv1.hook_out")
        or n.endswith("conv_dw.hook_out")
        or n.endswith("_pre_relu_conv.hook_out")
    )

    def ablate(t, hook):
        t[:, 0] = 0.0  # in-place edit, returning nothing (a common TransformerLens habit)

    with torch.no_grad():
        out = m.run_with_hooks(case.x, fwd_hooks=[(conv, ablate)])
    assert (out - case.expected).abs().max() > 1e-6
    with torch.no_grad():
        assert torch.allclose(m(case.x), case.expected, atol=ATOL, rtol=0)  # nothing left behind
    no_hooks_left(m)


def test_perturbation_guard(case):
    """Adding 1.0 at a canonical hook changes the logits: the hooked path is the one that runs."""
    m = case.model
    name = next(n for n in m.hook_dict if n.endswith(("hook_resid_pre", "mixed3b.hook_out")))
    with torch.no_grad():
        out = m.run_with_hooks(case.x, fwd_hooks=[(name, lambda t, hook: t + 1.0)])
        logits = m.run_with_hooks(case.x, fwd_hooks=[("hook_logits", lambda t, hook: t + 1.0)])
    assert (out - case.expected).abs().max() > 1e-4
    assert torch.allclose(logits, case.expected + 1.0, atol=ATOL, rtol=0)
    no_hooks_left(m)


# ----------------------------------------------------------------------------- gradients
def test_backward_hooks_and_input_gradients(case):
    m = case.model
    blocks = _blocks(m)
    names = (
        [blocks[0] + "hook_branch_out", blocks[-1] + "hook_resid_pre"]
        if blocks
        else ["mixed4a.hook_out", "mixed3b.branch3x3.hook_pre_relu"]
    )
    # a point whose tensor the source later overwrites in place (BN before ReLU(inplace=True)), if any:
    # a backward hook there must not trip autograd's "view modified in place" check
    copied = [n for n, hp in m.hook_dict.items() if hp._copy and n.endswith(".hook_out") and n not in names]
    if not copied:  # in-place activation modules run out of place while hooked: no copy, but the same hazard
        overwritten = find_inplace_targets(m.source, case.x)[0]
        copied = [
            n
            for n, hp in m.hook_dict.items()
            if n.endswith(".hook_out") and n not in names and id(getattr(hp, "target", None)) in overwritten
        ]
    if case.adapter_cls in (ResNetAdapter, MobileNetV2Adapter, GoogLeNetAdapter):
        assert copied
    names += [
        "hook_pooled",
        copied[0]
        if copied
        else next(n for n in m.hook_dict if n.endswith("conv_dw.hook_out") or n.endswith("_pre_relu_conv.hook_out")),
    ]
    grads = {}

    def save(t, hook):
        grads[hook.name] = t.detach().clone()

    x = case.x.clone().requires_grad_()
    x_ref = case.x.clone().requires_grad_()
    try:
        for n in names:
            m.add_hook(n, save, dir="bwd")
        out = m(x)
        out[:, 1].sum().backward()
    finally:
        m.reset_hooks()
    assert set(grads) == set(names)
    for n in names:
        assert grads[n].abs().sum() > 0, n
    case.ref(x_ref)[:, 1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6, rtol=1e-4)
    m.source.zero_grad(set_to_none=True)
    case.ref.zero_grad(set_to_none=True)
    no_hooks_left(m)


def test_forward_hooks_with_grad_and_inplace_ops(case):
    """Caching + editing with autograd on: in-place ops in the source must not break backward."""
    m = case.model
    x = case.x.clone().requires_grad_()
    x_ref = case.x.clone().requires_grad_()
    with m.hooks(fwd_hooks=[(lambda n: True, lambda t, hook: t * 1.0)]):  # a new tensor at every point
        out, cache = m.run_with_cache(x)
    out[:, 2].sum().backward()
    case.ref(x_ref)[:, 2].sum().backward()
    assert torch.allclose(out.detach(), case.expected, atol=ATOL, rtol=0)
    assert set(cache.keys()) == set(m.hook_dict)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-6, rtol=1e-4)
    m.source.zero_grad(set_to_none=True)
    case.ref.zero_grad(set_to_none=True)
    no_hooks_left(m)


def test_exception_in_hook_leaves_nothing(case):
    m = case.model

    def boom(t, hook):
        raise RuntimeError("boom")

    name = next(n for n in m.hook_dict if n.endswith("hook_logits"))
    with pytest.raises(RuntimeError, match="boom"):
        m.run_with_hooks(case.x, fwd_hooks=[(lambda n: True, lambda t, hook: t), (name, boom)])
    no_hooks_left(m)
    with torch.no_grad():
        assert torch.allclose(m(case.x), case.expected, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- readout, names, config
def test_readout_contributions(case):
    m = case.model
    ro = m.adapter.readout()
    assert isinstance(ro, ConvReadout) and isinstance(ro.fc, nn.Linear) and ro.pooled_hook in m.hook_dict
    names = [ro.pooled_hook] + ([ro.features_hook] if ro.features_hook else [])
    with torch.no_grad():
        out, c = m.run_with_cache(case.x, names_filter=names)
        classes = torch.tensor([3, 7])
        contrib = ro.channel_contributions(c[ro.pooled_hook], classes)
        assert torch.allclose(contrib.sum(-1) + ro.bias(classes), out[[0, 1], classes], atol=1e-5, rtol=1e-5)
        if ro.global_avg:
            feats = c[ro.features_hook]
            assert torch.allclose(feats.mean((-2, -1)), c[ro.pooled_hook], atol=1e-6)
            sp = ro.spatial_contributions(feats, 4)
            assert torch.allclose(sp.sum((1, 2, 3)) + ro.bias(4), out[:, 4], atol=1e-5, rtol=1e-5)
        else:
            assert case.adapter_cls is ConvNeXtAdapter and ro.norm is not None
            pooled = ro.norm(c[ro.features_hook].mean((-2, -1), keepdim=True)).flatten(1)
            assert torch.allclose(pooled, c[ro.pooled_hook], atol=1e-5)
    no_hooks_left(m)


def test_aliases_resolve(case):
    m = case.model
    for alias, target in m.adapter.aliases().items():
        assert target in m.hook_dict, (alias, target)
        assert m.resolve_hook(alias) == target
    with torch.no_grad():
        shapes = m.hook_shapes(image_size=case.x.shape[-1])
    assert set(shapes) == set(m.hook_dict)
    assert all(len(s) in (2, 4) for s in shapes.values())


def test_dynamic_image_size_and_validation(case):
    from visionlens import VisionLensError

    m = case.model
    x = torch.randn(1, 3, 40, 48) * (30.0 if case.adapter_cls is LucidInceptionV1Adapter else 1.0)
    with torch.no_grad():
        assert torch.allclose(m(x), case.ref(x), atol=ATOL, rtol=0)
    with pytest.raises(VisionLensError):
        m(torch.randn(1, 3, 16, 16))
    with pytest.raises(VisionLensError):
        m(torch.randn(3, 64, 64))
    no_hooks_left(m)


# ----------------------------------------------------------------------------- family specifics
def test_resnet_config():
    m = HookedVisionModel.from_module(torchvision.models.resnet50())
    assert m.cfg.architecture == "resnet50" and m.cfg.family == "resnet"
    assert m.cfg.stage_depths == (3, 4, 6, 3) and m.cfg.stage_widths == (256, 512, 1024, 2048)
    assert m.cfg.n_layers == 16 and m.cfg.image_size == (224, 224) and m.cfg.n_classes == 1000
    assert m.resolve_hook("stages.2.blocks.1") == "stages.2.blocks.1.hook_resid_post"
    assert m.resolve_hook("stages.3") == "stages.3.blocks.2.hook_resid_post"
    assert m.resolve_hook("layer3.1.conv2") == "layer3.1.conv2.hook_out"
    assert "stages.0.blocks.0.hook_shortcut" in m.hook_dict and "stages.0.blocks.1.hook_shortcut" not in m.hook_dict
    t = HookedVisionModel.from_module(timm.create_model("resnet18"))
    assert t.cfg.architecture == "resnet18" and t.cfg.interpolation == "bicubic" and t.cfg.crop_pct == 0.95
    assert t.cfg.stage_widths == (64, 128, 256, 512) and t.cfg.extra["library"] == "timm"


def test_timm_resnet_variants_branch_module():
    """SE and drop-path variants: branch_out is bridged on the last module before the addition."""
    src = timm.create_model("seresnet18", num_classes=5, drop_path_rate=0.1).eval()
    _randomize(src)
    ref = copy.deepcopy(src)
    m = HookedVisionModel.from_module(src)
    assert type(m.adapter) is ResNetAdapter
    assert src.layer1[0].drop_path is None  # drop-path rate 0 for the first block: SE is the last module
    assert m.hook_dict["stages.0.blocks.0.hook_branch_out"].target is src.layer1[0].se
    assert m.hook_dict["stages.1.blocks.1.hook_branch_out"].target is src.layer2[1].drop_path
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out, c = m.run_with_cache(x)
        assert torch.allclose(out, ref(x), atol=ATOL, rtol=0)
    pre = "stages.1.blocks.1."
    assert torch.equal(c[pre + "hook_branch_out"] + c[pre + "hook_resid_pre"], c[pre + "hook_resid_sum"])
    assert torch.equal(c["layer2.1.se.hook_out"], c[pre + "hook_branch_out"])
    no_hooks_left(m)


def test_unknown_resnet_block_gets_stream_hooks_only():
    src = timm.create_model("skresnet18", num_classes=5).eval()
    m = HookedVisionModel.from_module(src)
    assert type(m.adapter) is ResNetAdapter
    assert "stages.0.blocks.0.hook_resid_pre" in m.hook_dict and "stages.0.blocks.0.hook_resid_post" in m.hook_dict
    assert "stages.0.blocks.0.hook_branch_out" not in m.hook_dict
    x = torch.randn(1, 3, 32, 32)
    ref = copy.deepcopy(src)
    with torch.no_grad():
        out, _ = m.run_with_cache(x)
        assert torch.allclose(out, ref(x), atol=ATOL, rtol=0)


def test_mobilenet_stages():
    m = HookedVisionModel.from_module(torchvision.models.mobilenet_v2(width_mult=0.5))
    assert m.cfg.stage_depths == (1, 2, 3, 4, 3, 3, 1) and m.cfg.n_layers == 17
    assert m.cfg.stage_widths == (8, 16, 16, 32, 48, 80, 160)
    assert m.cfg.extra["features_index"]["stages.3.blocks.0"] == 7
    assert m.hook_dict["stages.3.blocks.0.hook_resid_post"].target is m.source.features[7]
    assert "stages.0.blocks.0.hook_expand" not in m.hook_dict  # t = 1 block
    assert "stages.1.blocks.0.hook_expand" in m.hook_dict and "stages.1.blocks.0.hook_depthwise" in m.hook_dict
    custom = torchvision.models.mobilenet_v2(inverted_residual_setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 2, 2]])
    mc = HookedVisionModel.from_module(custom)
    assert mc.cfg.stage_depths == (1, 2, 2)


def test_convnext_mlp_hooks_are_channels_first():
    src = timm.create_model("convnext_tiny", num_classes=5).eval()
    m = HookedVisionModel.from_module(src)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        _, c = m.run_with_cache(
            x,
            names_filter=[
                "stages.1.blocks.0.mlp.hook_post",
                "stages.1.blocks.0.mlp.act.hook_out",
                "stages.1.blocks.0.mlp.hook_pre",
            ],
        )
    post = c["stages.1.blocks.0.mlp.hook_post"]
    assert post.shape == (1, 4 * 192, 4, 4)
    assert torch.allclose(torch.nn.functional.gelu(c["stages.1.blocks.0.mlp.hook_pre"]), post, atol=1e-6)
    assert torch.equal(post, c["stages.1.blocks.0.mlp.act.hook_out"].permute(0, 3, 1, 2))
    assert m.resolve_hook("stages.1.blocks.0.mlp") == "stages.1.blocks.0.mlp.hook_post"
    assert m.parse_unit("stages.1.blocks.0.mlp:700").index == 700
    # editing a channel of the channels-last MLP through the NCHW hook
    with torch.no_grad():

        def ablate(t, hook):
            t = t.clone()
            t[:, 5] = 0
            return t

        _, c2 = m.run_with_cache(x, names_filter=["stages.1.blocks.0.mlp.fc2.hook_out"])
        with m.hooks(fwd_hooks=[("stages.1.blocks.0.mlp.hook_post", ablate)]):
            _, c3 = m.run_with_cache(
                x, names_filter=["stages.1.blocks.0.mlp.fc2.hook_out", "stages.1.blocks.0.mlp.act.hook_out"]
            )
    assert (c3["stages.1.blocks.0.mlp.act.hook_out"][..., 5] == 0).all()
    w5 = src.stages[1].blocks[0].mlp.fc2.weight[:, 5]
    expected = c2["stages.1.blocks.0.mlp.fc2.hook_out"] - post[:, 5, :, :, None] * w5
    assert torch.allclose(c3["stages.1.blocks.0.mlp.fc2.hook_out"], expected, atol=1e-5)
    no_hooks_left(m)


def test_unhooked_forward_adds_no_torch_hooks():
    """Wrapping installs nothing on the source: the unhooked model is the source model."""
    src = torchvision.models.resnet18()
    m = HookedVisionModel.from_module(src)
    no_hooks_left(m)
    assert m.source is src
