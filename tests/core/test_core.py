"""Core behaviour: loading, generic adapter, error catalogue, hook hygiene after exceptions."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch import nn

import visionlens
from tests.conftest import no_hooks_left, tiny_vit
from visionlens import HookedVisionModel, UnknownHookError, VisionLensError
from visionlens.adapters.generic import GenericAdapter
from visionlens.hook_points import HookPoint


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(num_classes=10)


# ----------------------------------------------------------------- loading
def test_load_spec_matches_timm(vit):
    assert isinstance(vit, HookedVisionModel)
    assert not vit.training
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(vit(x), vit.source(x), atol=1e-5)


def test_timm_local_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("resnet18", num_classes=7).eval()
    path = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = HookedVisionModel.from_timm("resnet18", pretrained=str(path), num_classes=7)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), src(x), atol=1e-5)
    pt = tmp_path / "r18.pth"
    torch.save(src.state_dict(), pt)
    model2 = visionlens.load("timm:resnet18", pretrained=str(pt), num_classes=7)
    with torch.no_grad():
        assert torch.allclose(model2(x), src(x), atol=1e-5)


def test_torchvision_local_checkpoint_roundtrip(tmp_path):
    import torchvision

    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=4).eval()
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    model = HookedVisionModel.from_torchvision("resnet18", weights=str(path), num_classes=4)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), src(x), atol=1e-5)


def test_checkpoint_loading_refuses_pickles(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": TinyNet}, path)  # a class object needs unpickling
    with pytest.raises(Exception):
        visionlens.checkpoints.load_state_dict_file(path)


def test_unknown_specs():
    with pytest.raises(VisionLensError, match="prefix"):
        visionlens.load("nope:resnet50")
    with pytest.raises(VisionLensError, match="Unknown timm model"):
        visionlens.load("timm:resnet_fifty")
    with pytest.raises(VisionLensError, match="Closest"):
        visionlens.load("torchvision:resnet5")
    with pytest.raises(VisionLensError, match="prefix:name"):
        visionlens.load("resnet50")


# ----------------------------------------------------------------- generic adapter
def test_generic_adapter_warns_and_is_exact():
    torch.manual_seed(0)
    src = TinyNet().eval()
    ref = copy.deepcopy(src)
    with pytest.warns(UserWarning, match="generic adapter"):
        model = HookedVisionModel.from_module(src)
    assert isinstance(model.adapter, GenericAdapter)
    assert "features.0.hook_out" in model.hook_dict and "fc.hook_out" in model.hook_dict
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out, cache = model.run_with_cache(x)
        assert torch.equal(out, ref(x))
        assert torch.equal(model(x), ref(x))
        assert torch.equal(cache["fc.hook_out"], out)
        ablated = model.run_with_hooks(x, fwd_hooks=[("features.3.hook_out", lambda t, hook: t * 0)])
    assert torch.allclose(ablated, ref.fc.bias.expand_as(ablated))
    no_hooks_left(model)


def test_unhooked_model_has_no_torch_hooks_on_source():
    src = TinyNet().eval()
    with pytest.warns(UserWarning):
        model = HookedVisionModel.from_module(src)
    no_hooks_left(model)
    model.add_hook("features.0.hook_out", lambda t, hook: t)
    assert src.features[0]._forward_hooks
    model.reset_hooks()
    no_hooks_left(model)


def test_hook_points_are_transformer_lens_hookpoints(vit):
    from transformer_lens import HookedRootModule

    assert isinstance(vit, HookedRootModule)
    assert all(isinstance(hp, HookPoint) for hp in vit.hook_dict.values())
    assert vit.hook_dict["blocks.0.hook_resid_pre"].name == "blocks.0.hook_resid_pre"
    # the source module tree is not renamed by setup()
    assert not hasattr(vit.source.blocks[0], "name") or vit.source.blocks[0].name != "source.blocks.0"


# ----------------------------------------------------------------- TL habits
def test_tl_hooks_context_and_add_hook(vit):
    x = torch.randn(1, 3, 32, 32)
    seen = []
    with torch.no_grad(), vit.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda t, hook: seen.append(hook.name))]):
        vit(x)
    assert seen == ["blocks.0.hook_resid_post"]
    no_hooks_left(vit)
    vit.add_hook(lambda n: n.endswith("hook_pattern"), lambda t, hook: seen.append(hook.layer()))
    with torch.no_grad():
        vit(x)
    vit.reset_hooks()
    assert seen[1:] == list(range(vit.cfg.n_layers))
    no_hooks_left(vit)
    with torch.no_grad():
        _, cache = vit.run_with_cache(x, names_filter=["blocks.3.hook_resid_post", "blocks.3.attn.hook_pattern"])
    assert set(cache.keys()) == {"blocks.3.hook_resid_post", "blocks.3.attn.hook_pattern"}
    with torch.no_grad():
        _, raw = vit.run_with_cache(x, names_filter="hook_logits", return_cache_object=False)
    assert isinstance(raw, dict)


def test_gradient_caching_with_tl_caching_hooks(vit):
    """TL's get_caching_hooks(incl_bwd=True) stores gradients under '<name>_grad'."""
    x = torch.randn(1, 3, 32, 32)
    cache, fwd, bwd = vit.get_caching_hooks(lambda n: n.endswith("hook_resid_post"), incl_bwd=True)
    with vit.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
        vit(x)[0, 3].backward()
    assert "blocks.2.hook_resid_post_grad" in cache and "blocks.2.hook_resid_post" in cache
    assert cache["blocks.2.hook_resid_post_grad"].shape == cache["blocks.2.hook_resid_post"].shape
    assert cache["blocks.2.hook_resid_post_grad"].abs().sum() > 0
    vit.zero_grad()
    no_hooks_left(vit)


# ----------------------------------------------------------------- error catalogue
@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(3, 32, 32), "4-D image batch"),
        (torch.randn(1, 1, 32, 32), "3 channels"),
        (torch.randn(1, 32, 32, 3), "channels-last"),
        (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), "floating-point"),
        (torch.randn(1, 3, 48, 48), r"size \(32, 32\)"),
        (torch.rand(1, 3, 32, 32) * 255, "0-255"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (np.zeros((1, 3, 32, 32), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_bad_inputs_have_clear_messages(vit, bad, match):
    with pytest.raises(VisionLensError, match=match):
        vit(bad)
    with pytest.raises(VisionLensError, match=match):
        vit.run_with_cache(bad)
    no_hooks_left(vit)


def test_unknown_hook_names_suggest_real_ones(vit):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(UnknownHookError, match="blocks.0.attn.hook_pattern"):
        vit.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_patern", lambda t, hook: t)])
    with pytest.raises(UnknownHookError, match="Closest real names"):
        vit.run_with_cache(x, names_filter=["blocks.0.hook_resid_pst"])
    with pytest.raises(UnknownHookError):
        vit.add_hook("blocks.99.hook_resid_pre", lambda t, hook: t)
    with pytest.raises(KeyError):  # still a KeyError for TL habits
        vit.add_hook("nothing", lambda t, hook: t)
    no_hooks_left(vit)


def test_unit_specs_parse_and_validate(vit):
    u = visionlens.parse_unit("blocks.6.mlp.hook_post:123", vit)
    assert (u.hook, u.index, u.position) == ("blocks.6.mlp.hook_post", 123, None)
    u = vit.parse_unit("blocks.2.hook_resid_post:5@3")
    assert u.position == (3,)
    assert visionlens.parse_unit("mixed4a:476").index == 476
    assert visionlens.parse_unit("layer1.0.conv1:7@(2, 3)").position == (2, 3)
    with pytest.raises(VisionLensError, match="out of range"):
        vit.parse_unit("blocks.6.mlp.hook_post:100000")
    with pytest.raises(VisionLensError, match="unit spec"):
        visionlens.parse_unit("mixed4a-476")
    with pytest.raises(UnknownHookError):
        vit.parse_unit("blocks.6.mlp.hook_pots:3")


@pytest.mark.parametrize("where", ["run_with_hooks", "run_with_cache", "hooks", "bwd"])
def test_no_hook_left_after_exception(vit, where):
    x = torch.randn(1, 3, 32, 32)

    def boom(t, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"):
        if where == "run_with_hooks":
            vit.run_with_hooks(
                x, fwd_hooks=[("blocks.1.attn.hook_pattern", boom), ("blocks.0.hook_resid_pre", lambda t, hook: t)]
            )
        elif where == "run_with_cache":
            vit.run_with_cache(x, names_filter=lambda n: True, fwd_hooks=[]) if False else None
            with vit.hooks(fwd_hooks=[("blocks.2.hook_mlp_out", boom)]):
                vit.run_with_cache(x)
        elif where == "hooks":
            with vit.hooks(fwd_hooks=[(lambda n: n.endswith("hook_z"), boom)]):
                vit(x)
        else:
            with vit.hooks(bwd_hooks=[("blocks.0.hook_resid_post", boom)]):
                vit(x.clone().requires_grad_()).sum().backward()
    no_hooks_left(vit)
    with torch.no_grad():  # and the model still works exactly
        assert torch.allclose(vit(x), vit.source(x), atol=1e-5)


def test_preprocess_accepts_pil_arrays_and_paths(tmp_path, vit):
    arr = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(arr)
    path = tmp_path / "a.png"
    img.save(path)
    batch = vit.preprocess([img, arr, str(path)])
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], batch[1]) and torch.allclose(batch[0], batch[2])
    with torch.no_grad():
        assert vit(batch).shape == (3, 10)
    with pytest.raises(VisionLensError):
        vit.preprocess(np.zeros((4, 4, 7)))


def test_hook_shapes(vit):
    shapes = vit.hook_shapes()
    assert shapes["blocks.0.attn.hook_pattern"] == (1, 3, 5, 5)
    assert shapes["hook_logits"] == (1, 10)
    assert len(shapes) == len(vit.hook_dict)


def test_tl3_utils_habit_still_works(vit):
    import transformer_lens.utils as utils2
    from transformer_lens import utils  # TL 4 renamed it to `utilities`; visionlens keeps the old name working

    assert utils.get_act_name("resid_pre", 3) == "blocks.3.hook_resid_pre"
    assert utils2 is utils
    with torch.no_grad():
        _, cache = vit.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=utils.get_act_name("pattern", 1))
    assert list(cache.keys()) == ["blocks.1.attn.hook_pattern"]


def test_generic_adapter_safe_around_inplace_ops():
    """A conv output that a later ReLU(inplace=True) overwrites is cached and hooked as computed."""
    torch.manual_seed(0)

    class InplaceNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU(inplace=True)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    src = InplaceNet().eval()
    with pytest.warns(UserWarning):
        model = HookedVisionModel.from_module(src)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _, cache = model.run_with_cache(x)
        assert cache["conv.hook_out"].min() < 0  # not clobbered by the in-place ReLU
        assert torch.allclose(cache["conv.hook_out"], src.conv(x))
    xg = x.clone().requires_grad_()
    seen = []
    model.add_hook("conv.hook_out", lambda g, hook: seen.append(g.shape), dir="bwd")
    try:
        model(xg).sum().backward()
    finally:
        model.reset_hooks()
    assert seen and xg.grad is not None
    no_hooks_left(model)
