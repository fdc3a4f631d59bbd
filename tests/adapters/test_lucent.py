"""Lucent's own ``modelzoo.inceptionv1.InceptionV1`` under the Lucid adapter: recognized by its names and
shapes, Lucid's input convention, Microscope hook names, the same values as visionlens's module, and
feature visualization on it equal to a render on visionlens's module (random weights, nothing downloaded).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Optional

import pytest
import torch
from torch import nn

import visionlens.featurevis as fv
from visionlens import HookedVisionModel
from visionlens.adapters.inception import MIXED_LAYERS
from visionlens.adapters.lucid_inception import (
    LucidInceptionV1,
    is_lucid_inceptionv1,
    load_lucid_inceptionv1,
    lucid_parameter_shapes,
)


def _import_lucent() -> tuple[types.ModuleType, Optional[types.ModuleType]]:
    """Lucent imports IPython only to display images: import it with a stub ``IPython.display`` (IPython
    stays out of the test environment), then drop the stub so that nothing else sees it."""
    stubbed = importlib.util.find_spec("IPython") is None
    if stubbed:
        ip, disp = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        disp.display = disp.HTML = disp.Image = lambda *a, **k: None  # type: ignore[attr-defined]
        ip.display = disp  # type: ignore[attr-defined]
        sys.modules["IPython"], sys.modules["IPython.display"] = ip, disp
    try:
        zoo = importlib.import_module("lucent.modelzoo.inceptionv1")
        try:  # Lucent's optvis needs kornia==0.4.1, which only the peers environment carries (it breaks diffusers)
            importlib.import_module("lucent.optvis.render")
            tf: Optional[types.ModuleType] = importlib.import_module("lucent.optvis.transform")
        except ImportError:
            tf = None
    finally:
        if stubbed:
            sys.modules.pop("IPython", None)
            sys.modules.pop("IPython.display", None)
    return zoo, tf


_zoo, lucent_transform = _import_lucent()
InceptionV1 = _zoo.InceptionV1


@pytest.fixture(scope="module")
def pair():
    """(Lucent's module wrapped, visionlens's module wrapped), the same random weights, redirected ReLUs."""
    torch.manual_seed(0)
    ours = LucidInceptionV1(redirected_relu=True).eval()
    lucent = InceptionV1(pretrained=False, redirected_ReLU=True).eval()
    lucent.load_state_dict(ours.state_dict(), strict=True)  # Lucent's keys are the port's keys
    return HookedVisionModel.from_module(lucent), HookedVisionModel.from_module(ours)


def _pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hooks_attached(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())


def test_lucent_module_gets_the_lucid_adapter_and_convention(pair):
    lm, om = pair
    assert lm.adapter.name == "lucid_inceptionv1"
    assert lm.cfg.extra["library"] == "lucent" and om.cfg.extra["library"] == "visionlens"
    assert lm.cfg.mean == pytest.approx((117 / 255,) * 3) and lm.cfg.std == pytest.approx((1 / 255,) * 3)
    assert lm.cfg.extra["layer_channels"] == om.cfg.extra["layer_channels"]
    assert lm.cfg.extra["layer_channels"]["mixed4a"] == 508
    # Lucent's render_vis feeds an InceptionV1 `x * 255 - 117` (transform.preprocess_inceptionv1); so does ours
    x = _pixels(2, 40, 1)
    assert torch.allclose(fv.to_model_input(lm, x), x * 255 - 117, atol=1e-4)
    if lucent_transform is not None:
        assert torch.allclose(fv.to_model_input(lm, x), lucent_transform.preprocess_inceptionv1()(x), atol=1e-4)
    # Microscope / Lucid names: the canonical hooks of both are the same, aliases resolve the same way
    canon = {n for n in om.adapter.canonical_hooks()}
    assert canon <= set(lm.hook_dict)
    for name in ("mixed4a", "mixed4a_3x3_pre_relu", "conv2d0_pre_relu_conv", "softmax2_pre_activation", "avgpool0"):
        assert lm.resolve_hook(name) == om.resolve_hook(name)


def test_recognition_by_names_and_shapes():
    torch.manual_seed(1)
    lucent = InceptionV1(pretrained=False)
    assert is_lucid_inceptionv1(lucent) and is_lucid_inceptionv1(LucidInceptionV1(num_classes=10))
    assert {k: tuple(v.shape) for k, v in lucent.state_dict().items()} == lucid_parameter_shapes()
    # a changed width, a missing named module, or another GoogLeNet is not the Lucid network
    lucent.mixed4a_1x1_pre_relu_conv = nn.Conv2d(480, 191, 1)
    assert not is_lucid_inceptionv1(lucent)
    del lucent.mixed4a_1x1_pre_relu_conv
    assert not is_lucid_inceptionv1(lucent)
    import torchvision

    assert not is_lucid_inceptionv1(torchvision.models.GoogLeNet(num_classes=10, aux_logits=False, init_weights=False))


def test_same_values_as_visionlens_module_and_lucent_forward(pair):
    lm, om = pair
    x = fv.to_model_input(om, _pixels(1, 224, 2))
    names = [f"{n}.hook_out" for n in MIXED_LAYERS] + ["conv2d2.hook_pre_relu", "hook_pooled", "hook_logits"]
    with torch.no_grad():
        out_l, cache_l = lm.run_with_cache(x, names_filter=names)
        out_o, cache_o = om.run_with_cache(x, names_filter=names)
        raw = lm.adapter.source(x)
    for n in names:
        scale = cache_o[n].abs().max().clamp(min=1.0)
        assert float((cache_l[n] - cache_o[n]).abs().max() / scale) < 1e-5, n
    assert cache_o["mixed4a.hook_out"].abs().max() > 1.0  # the values compared are not all zero
    # Lucent's forward returns the softmax of the logits both models compute
    assert torch.equal(out_l, raw)
    assert float((out_l - out_o.softmax(-1)).abs().max()) < 1e-5


def test_state_dict_from_lucent_loads_into_visionlens_module(pair):
    lm, om = pair
    loaded = load_lucid_inceptionv1(lm.adapter.source.state_dict(), redirected_relu=True)
    x = fv.to_model_input(om, _pixels(1, 64, 3))
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), om.adapter.source.forward_features(x))


def test_featurevis_on_lucent_module_equals_visionlens_module_and_leaves_no_hook(pair):
    lm, om = pair
    kw = dict(steps=3, size=48, progress=False, evaluate_start_end=True)
    r_l = fv.render(lm, ["mixed4a:476", "mixed3b:379"], **kw)
    r_o = fv.render(om, ["mixed4a:476", "mixed3b:379"], **kw)
    assert torch.allclose(r_l.images, r_o.images, atol=1e-5)
    assert torch.allclose(r_l.curves, r_o.curves, rtol=1e-4, atol=1e-4)
    assert (r_l.final_values > r_l.initial_values).all()  # the objective went up on Lucent's module
    src = lm.adapter.source
    assert _hooks_attached(src) == 0
    assert all(p.requires_grad for p in src.parameters())  # frozen only during the render
    with pytest.raises(Exception):
        fv.render(lm, ["mixed4a:9999"], steps=1, size=48, progress=False)
    assert _hooks_attached(src) == 0
