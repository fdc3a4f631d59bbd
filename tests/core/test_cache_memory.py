"""Cheap full caches: deferred per-head results and freed-memory retention change no value."""

from __future__ import annotations

import contextlib
import pickle
import sys

import pytest
import torch

from visionlens import HookedVisionModel, memory
from visionlens.hook_points import DeferredActivation


@pytest.fixture(scope="module")
def vit() -> HookedVisionModel:
    import timm

    torch.manual_seed(0)
    src = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=10, init_values=0.5
    ).eval()
    return HookedVisionModel.from_module(src)


def _x(b: int = 2) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_cached_head_results_are_deferred_and_equal_the_hooked_computation(vit):
    _, cache = vit.run_with_cache(_x())
    assert isinstance(dict.__getitem__(cache.cache_dict, "blocks.1.attn.hook_result"), DeferredActivation)
    seen: dict[str, torch.Tensor] = {}
    out = vit.run_with_hooks(
        _x(), fwd_hooks=[("blocks.1.attn.hook_result", lambda t, hook: seen.setdefault("r", t.clone()))]
    )
    lazy = cache["blocks.1.attn.hook_result"]
    assert lazy.shape == seen["r"].shape == (2, 17, 3, 192)
    torch.testing.assert_close(lazy, seen["r"], atol=1e-5, rtol=0)
    # the heads (layer scale folded in) plus the projection bias sum to the attention output
    bias = vit.source.blocks[1].attn.proj.bias * vit.source.blocks[1].ls1.gamma
    torch.testing.assert_close(lazy.sum(-2) + bias, cache["blocks.1.hook_attn_out"], atol=1e-5, rtol=0)
    torch.testing.assert_close(vit(_x()), out, atol=1e-5, rtol=0)  # hooked heads are summed, not projected


def test_every_way_of_reading_the_cache_gives_tensors(vit):
    for read in (dict, lambda d: {**d}, lambda d: dict(d.items()), lambda d: pickle.loads(pickle.dumps(d))):
        _, cache = vit.run_with_cache(_x())
        assert all(isinstance(v, torch.Tensor) for v in read(cache.cache_dict).values())
    _, raw = vit.run_with_cache(_x(), return_cache_object=False)
    assert type(raw) is dict and all(isinstance(v, torch.Tensor) for v in raw.values())
    _, one = vit.run_with_cache(_x(1), remove_batch_dim=True)
    assert one["blocks.0.attn.hook_result"].shape == (17, 3, 192)
    _, cache = vit.run_with_cache(_x())
    moved = cache.to("cpu")
    assert isinstance(dict.__getitem__(moved.cache_dict, "blocks.0.attn.hook_result"), torch.Tensor)


def test_stack_head_results_reads_deferred_entries(vit):
    _, cache = vit.run_with_cache(_x())
    stack = cache.stack_head_results(layer=2)
    assert stack.shape == (6, 2, 17, 192)
    torch.testing.assert_close(stack[3:].sum(0), cache["blocks.1.attn.hook_result"].sum(-2), atol=1e-5, rtol=0)


def test_memory_retention_is_on_after_caching_and_can_be_turned_off(monkeypatch):
    """A fresh (undecided) process state: the first caching run turns retention on (glibc only);
    ``VISIONLENS_RETAIN_MEMORY=0`` keeps it off. Run in-process on a reset state (no subprocess)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    m = HookedVisionModel.from_module(net, adapter="generic")
    fresh = {"decided": False, "enabled": False, "limit": 0, "reason": "not requested yet"}
    for key, value in fresh.items():
        monkeypatch.setitem(memory._state, key, value)
    assert memory.memory_retention()["reason"] == "not requested yet"
    m(torch.randn(1, 3, 8, 8))  # a plain forward decides nothing
    assert memory.memory_retention()["reason"] == "not requested yet"
    m.run_with_cache(torch.randn(1, 3, 8, 8))
    state = memory.memory_retention()
    assert state["enabled"] is sys.platform.startswith("linux")
    assert (state["reason"] == "on") is sys.platform.startswith("linux")
    for key, value in fresh.items():
        monkeypatch.setitem(memory._state, key, value)
    monkeypatch.setenv("VISIONLENS_RETAIN_MEMORY", "0")
    m.run_with_cache(torch.randn(1, 3, 8, 8))
    assert memory.memory_retention()["enabled"] is False
    assert memory.memory_retention()["reason"].startswith("off")


def test_retention_rejects_a_bad_limit_and_release_is_safe():
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    with pytest.raises(ValueError, match="positive number of bytes"):
        memory.retain_freed_memory(True, limit=0)
    memory.release_memory()


def test_inplace_activations_run_out_of_place_only_while_hooked_and_values_stay_exact():
    import timm

    torch.manual_seed(0)
    src = timm.create_model("resnet18", pretrained=False, num_classes=5).eval()
    for m in src.modules():  # timm zero-inits the last BN of each block; give the branches a real scale
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
    model = HookedVisionModel.from_module(src)
    acts = model.adapter.out_of_place.modules
    assert acts and all(a.inplace for a in acts)
    x = _x(2)
    _, cache = model.run_with_cache(x)
    assert all(a.inplace for a in acts)  # restored after the run
    # bn1 output before the in-place ReLU, recomputed independently
    ref = src.layer1[0].bn1(src.layer1[0].conv1(src.maxpool(src.act1(src.bn1(src.conv1(x))))))
    assert (ref < 0).any()
    torch.testing.assert_close(cache["layer1.0.bn1.hook_out"], ref, atol=1e-5, rtol=0)
    # two points on the tensor `x += shortcut` overwrites: one copy serves both, both keep the BN output
    branch, bn2 = cache["stages.0.blocks.0.hook_branch_out"], cache["layer1.0.bn2.hook_out"]
    torch.testing.assert_close(branch, bn2, atol=0, rtol=0)
    torch.testing.assert_close(
        cache["stages.0.blocks.0.hook_resid_sum"], branch + cache["stages.0.blocks.0.hook_resid_pre"], atol=1e-6, rtol=0
    )
    with pytest.raises(RuntimeError, match="boom"):

        def boom(t, hook):
            raise RuntimeError("boom")

        model.run_with_hooks(x, fwd_hooks=[("layer1.0.bn1.hook_out", boom)])
    assert all(a.inplace for a in acts) and not any(hp._forward_hooks for hp in model.hook_dict.values())
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def test_capture_session_matches_per_point_capture_and_leaves_nothing_behind():
    import torchvision

    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=4).eval()
    model = HookedVisionModel.from_module(src)
    x = _x(2)
    cls = type(model.adapter)
    before = (
        len(torch.nn.modules.module._global_forward_hooks),
        len(torch.nn.modules.module._global_forward_pre_hooks),
    )
    scaled = lambda t, hook: t * 2.0  # noqa: E731 - a user hook already attached while everything is cached
    try:
        cls.session_min_fraction = 0.0
        with model.hooks(fwd_hooks=[("layer1.0.bn1.hook_out", scaled)]):
            _, session = model.run_with_cache(x)
        cls.session_min_fraction = float("inf")
        with model.hooks(fwd_hooks=[("layer1.0.bn1.hook_out", scaled)]):
            _, per_point = model.run_with_cache(x)
        cls.session_min_fraction = 0.0

        def boom(t, hook):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"), model.hooks(fwd_hooks=[("layer2.0.conv1.hook_out", boom)]):
            model.run_with_cache(x)
    finally:
        del cls.session_min_fraction
    assert set(session.keys()) == set(per_point.keys())
    for k in per_point.keys():
        torch.testing.assert_close(session[k], per_point[k], atol=0, rtol=0)
    # the hooked point's value reached what follows it (torchvision's shared relu: the block's first call)
    assert (session["stages.0.blocks.0.hook_act1"] >= 0).all()
    torch.testing.assert_close(
        session["stages.0.blocks.0.hook_act1"], torch.relu(session["layer1.0.bn1.hook_out"]), atol=0, rtol=0
    )
    after = (len(torch.nn.modules.module._global_forward_hooks), len(torch.nn.modules.module._global_forward_pre_hooks))
    assert after == before
    assert all(a.inplace for a in model.adapter.out_of_place.modules)
    assert not any(hp._forward_hooks or hp._capture is not None for hp in model.hook_dict.values())
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def _per_point_cache(model, x, **kwargs):
    cls = type(model.adapter)
    cls.session_min_fraction = float("inf")
    try:
        return model.run_with_cache(x, **kwargs)[1]
    finally:
        del cls.session_min_fraction


@pytest.mark.parametrize("family", ["torchvision_resnet18", "torchvision_mobilenet_v2", "timm_mobilenetv3_generic"])
def test_wrapped_capture_equals_per_point_capture_and_restores_every_forward(family):
    """The fast session (forward wrappers) stores what per-point torch hooks store, on every point."""
    torch.manual_seed(0)
    if family == "torchvision_resnet18":
        import torchvision

        src = torchvision.models.resnet18(num_classes=4).eval()
    elif family == "torchvision_mobilenet_v2":
        import torchvision

        src = torchvision.models.mobilenet_v2(num_classes=4, width_mult=0.5).eval()
    else:
        import timm

        src = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=4).eval()
    with pytest.warns(UserWarning) if family.endswith("generic") else contextlib.nullcontext():
        model = HookedVisionModel.from_module(src)
    x = _x(2)
    own = {id(m) for m in src.modules() if "forward" in m.__dict__}
    _, fast = model.run_with_cache(x)
    assert model.adapter._session_plan.wrappers is not None  # the wrapper path ran (no hook was attached)
    slow = _per_point_cache(model, x)
    assert list(fast.keys()) == list(slow.keys()) and len(fast.keys()) > 50
    for k in slow.keys():
        torch.testing.assert_close(fast[k], slow[k], atol=0, rtol=0, msg=k)
    assert {id(m) for m in src.modules() if "forward" in m.__dict__} == own
    assert not torch.nn.modules.module._global_forward_hooks
    # an exception inside the forward leaves no wrapper behind either
    with pytest.raises(RuntimeError, match="boom"), model.hooks(fwd_hooks=[(list(model.hook_dict)[-1], _boom)]):
        model.run_with_cache(x)  # a hook attached: the global-hook session
    deep = [m for m in src.modules() if isinstance(m, torch.nn.Conv2d)][3]
    handle = deep.register_forward_hook(lambda m, a, o: _boom(o, None))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            model.run_with_cache(x)  # no hook attached: the wrappers
    finally:
        handle.remove()
    assert {id(m) for m in src.modules() if "forward" in m.__dict__} == own
    torch.testing.assert_close(model(x), src(x), atol=0, rtol=0)


def _boom(t, hook):
    raise RuntimeError("boom")


def test_wrapped_capture_wraps_an_instance_forward_and_defers_to_module_pre_hooks():
    """A forward set on the instance is wrapped and put back; a module's own pre-hook keeps hook order."""
    import torchvision

    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=4).eval()
    model = HookedVisionModel.from_module(src)
    x = _x(2)
    conv = src.layer2[0].conv1
    original = conv.forward
    calls = []

    def patched(t):
        calls.append(1)
        return original(t) * 0.5

    conv.forward = patched
    try:
        _, fast = model.run_with_cache(x)
        assert calls and conv.__dict__["forward"] is patched
        slow = _per_point_cache(model, x)
        for k in slow.keys():
            torch.testing.assert_close(fast[k], slow[k], atol=0, rtol=0, msg=k)
    finally:
        del conv.forward
    # the fc's own pre-hook edits its input; the cached hook_pooled is what the fc received before it,
    # exactly as with per-point hooks
    handle = src.fc.register_forward_pre_hook(lambda m, args: (args[0] * 3.0,))
    try:
        _, fast = model.run_with_cache(x)
        slow = _per_point_cache(model, x)
        for k in slow.keys():
            torch.testing.assert_close(fast[k], slow[k], atol=0, rtol=0, msg=k)
    finally:
        handle.remove()
    assert "forward" not in conv.__dict__


def test_a_full_cache_from_inside_a_full_cache_is_refused_cleanly():
    """Two full caches of one model at once would share its hook points: the inner one is refused."""
    import torchvision

    from visionlens import VisionLensError

    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=4).eval()
    model = HookedVisionModel.from_module(src)
    x = _x(1)
    fc_forward = src.fc.forward

    def fc_with_a_cache(t):  # an instance forward: the outer cache takes the wrapper path
        model.run_with_cache(x)
        return fc_forward(t)

    src.fc.forward = fc_with_a_cache
    try:
        with pytest.raises(VisionLensError, match="while a full cache of it is being taken"):
            model.run_with_cache(x)
    finally:
        del src.fc.forward
    assert not any("forward" in m.__dict__ for m in src.modules())
    assert not any(hp._forward_hooks or hp._capture is not None for hp in model.hook_dict.values())
    _, cache = model.run_with_cache(x)
    torch.testing.assert_close(cache["hook_logits"], src(x), atol=0, rtol=0)
