"""timestep_sweep on tiny diffusers UNets."""

from __future__ import annotations

import copy
import functools
import json
import warnings

import pytest
import torch

pytest.importorskip("diffusers")

import visionlens
from tests.conftest import require_analysis  # noqa: E402
from visionlens import HookedVisionModel  # noqa: E402
from visionlens.diffusion import tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def unet():
    require_analysis("timestep_sweep")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedVisionModel.from_diffusers(tiny_unet("conditional"))


def test_activation_sweep_similarity(unet, tmp_path):
    res = visionlens.run("timestep_sweep", unet, None, timesteps=[999, 990, 500, 10], seeds=2)
    imp, cos, jac = (res.tensors[k] for k in ("importance", "similarity_cosine", "similarity_topk"))
    assert imp.shape[0] == 4 and imp.shape[1] == len(res.meta["units"])
    assert torch.allclose(cos, cos.T, atol=1e-6) and torch.allclose(torch.diagonal(cos), torch.ones(4), atol=1e-5)
    assert torch.allclose(torch.diagonal(jac), torch.ones(4))
    # nearby noise levels are more alike than far-apart ones
    assert cos[0, 1] > cos[0, 3]
    rho = res.tensors["similarity_spearman"]
    assert torch.allclose(torch.diagonal(rho), torch.ones(4), atol=1e-5) and rho[0, 1] > rho[0, 3]
    res.save(tmp_path)
    assert (tmp_path / "overview.png").exists() and (tmp_path / "importance.png").exists()
    assert json.loads((tmp_path / "result.json").read_text())["tables"]["bands"]["rows"]


def test_planted_dead_unit_has_no_importance_in_any_band():
    """Hand-set ground truth: channel 7 of a resnet output is wired to nothing (zero conv2 and shortcut
    weights), so every measure must give it zero importance in every band while others are nonzero."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = tiny_unet("conditional", seed=1)
        blk = src.down_blocks[1].resnets[0]
        with torch.no_grad():
            blk.conv2.weight[7].zero_()
            blk.conv2.bias[7] = 0.0
            blk.conv_shortcut.weight[7].zero_()
            blk.conv_shortcut.bias[7] = 0.0
        model = HookedVisionModel.from_diffusers(src)
    require_analysis("timestep_sweep")
    for measure in ("activation", "attribution", "ablation"):
        res = visionlens.run(
            "timestep_sweep",
            model,
            None,
            bands=3,
            samples_per_band=1,
            seeds=1,
            measure=measure,
            hooks=["down_blocks.1.resnets.0.hook_out"],
            max_units=10,
        )
        imp = res.tensors["importance"]
        assert torch.all(imp[:, 7] == 0), measure
        assert torch.all(imp[:, :7].sum(1) > 0), measure


@pytest.mark.parametrize("measure", ["attribution", "ablation"])
def test_effect_measures(unet, measure):
    res = visionlens.run(
        "timestep_sweep",
        unet,
        None,
        bands=3,
        samples_per_band=1,
        seeds=1,
        measure=measure,
        hooks=["down_blocks.1.resnets.0.hook_out"],
        max_units=8,
    )
    imp = res.tensors["importance"]
    assert imp.shape[0] == 3 and torch.isfinite(imp).all() and (imp >= 0).all() and imp.sum() > 0
    assert not any(hp.fwd_hooks for hp in unet.hook_dict.values())


def test_attribution_is_the_first_order_ablation_effect(unet):
    """attribution = |d m / d s| for scaling a unit by (1 - s), checked by finite differences
    (exact zero-ablation differs where the UNet's group norms make the effect nonlinear)."""
    from visionlens.plugins.timestep_sweep import TimestepSweep, _metric

    an = TimestepSweep()
    cfg = an.make_config(measure="attribution")
    g = torch.Generator().manual_seed(3)
    args = [torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 500]), torch.randn(2, 77, 32, generator=g)]
    hook = "up_blocks.1.resnets.0.hook_out"
    att, _ = an._measure(unet, args, [hook], cfg)
    # central differences in float64 on a copy: fp32 round-off alone moves a one-sided difference by ~1e-4
    unet64 = copy.deepcopy(unet).double()
    args64 = [a.double() if a.is_floating_point() else a for a in args]
    with torch.no_grad():
        base = unet64(*args64).sample
        eps = 1e-4
        for u in (0, 5, 17):

            def scale(act, hook, u=u, f=1.0):
                out = act.clone()
                out[:, u] *= f
                return out

            up = unet64.run_with_hooks(*args64, fwd_hooks=[(hook, functools.partial(scale, f=1 + eps))]).sample
            down = unet64.run_with_hooks(*args64, fwd_hooks=[(hook, functools.partial(scale, f=1 - eps))]).sample
            fd = float((_metric(up, base) - _metric(down, base)).mean().abs()) / (2 * eps)
            assert fd == pytest.approx(float(att[u]), rel=0.05, abs=1e-5)
