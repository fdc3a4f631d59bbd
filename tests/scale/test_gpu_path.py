"""The accelerator path: torch.compile with and without hooks (CPU), and CUDA parity (skipped without a GPU).

Tolerances stated here are the contract for reduced precision (autocast, random weights, eval mode):
fp16 logits within 2e-2 and bf16 within 6e-2 of the fp32 logits' range, and the sweep statistics of a
CUDA model within 1e-4 (fp32; cuDNN's algorithms differ from the CPU's) of the CPU run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visionlens
from tests.conftest import tiny_resnet, tiny_vit
from visionlens.scale.compile import compile_forward

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
TOL = {torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _net() -> visionlens.HookedVisionModel:
    import warnings

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2), nn.Flatten(), nn.LazyLinear(4)
    )
    net(torch.zeros(1, 3, 12, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return visionlens.HookedVisionModel.from_module(net.eval())


def test_compiled_forward_and_hooked_runs_fall_back():
    """compile_forward: the compiled unhooked forward equals eager; a hook attached later fires (eager fallback)."""
    torch._dynamo.reset()
    model = _net()
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    with torch.no_grad():
        eager = model(x)
        ref = model.run_with_hooks(x, fwd_hooks=[("1.hook_out", zero)])
        assert not torch.allclose(ref, eager)  # the hook changes the output: a hook that did not fire shows
        # why the wrapper exists: a plain compiled model keeps the graph it captured and skips the later hook
        plain = torch.compile(model, backend="eager")  # graph capture only: seconds on a CPU, no C++ build
        assert torch.equal(plain(x), eager)
        with model.hooks(fwd_hooks=[("1.hook_out", zero)]):
            assert torch.equal(plain(x), eager)
        torch._dynamo.reset()
        fast = compile_forward(model, backend="eager")
        assert torch.equal(fast(x), eager) and fast.compiled_calls == 1
        with model.hooks(fwd_hooks=[("1.hook_out", zero)]):
            hooked = fast(x)
        assert torch.equal(hooked, ref) and fast.eager_calls == 1
        assert torch.equal(fast(x), eager) and fast.compiled_calls == 2  # and nothing stays attached
        _, cache = model.run_with_cache(x, names_filter=["1.hook_out"])
        assert cache["1.hook_out"].shape == (3, 6, 12, 12) and not any(hp.fwd_hooks for hp in model.hook_dict.values())


@needs_cuda
@pytest.mark.parametrize("make", [tiny_resnet, tiny_vit], ids=["resnet18", "vit_tiny"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_autocast_parity(make, dtype):
    model = make().eval().cuda()
    size = 32
    x = torch.randn(4, 3, size, size, device="cuda")
    with torch.no_grad():
        ref, cache = model.run_with_cache(x)
        with torch.autocast("cuda", dtype=dtype):
            low, low_cache = model.run_with_cache(x)
    scale = float(ref.max() - ref.min())
    assert float((low.float() - ref).abs().max()) <= TOL[dtype] * scale
    assert set(low_cache.keys()) == set(cache.keys())
    assert all(low_cache[k].device.type == "cuda" for k in low_cache.keys())


@needs_cuda
def test_cuda_sweeps_match_the_cpu():
    model = tiny_resnet().eval()
    x = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = dict(hooks=["layer3", "layer4"], batch_size=4, top_k=3, figure_units=0)
    cpu = visionlens.run("activation_stats", model, x, **cfg)
    gpu = visionlens.run("activation_stats", model.cuda(), x, **cfg)
    for k, v in cpu.tensors.items():
        if k.endswith(("_index", "_location")):
            continue  # near-ties may swap between devices; the values below pin the ranking
        assert torch.allclose(gpu.tensors[k].double(), v.double(), atol=1e-4, rtol=1e-4), k
    assert next(model.parameters()).device.type == "cuda"


@needs_cuda
def test_cuda_compile_inductor():
    torch._dynamo.reset()
    model = tiny_resnet().eval().cuda()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        eager = model(x)
        fast = compile_forward(model)
        assert torch.allclose(fast(x), eager, atol=1e-3, rtol=1e-3) and fast.compiled_calls == 1
        _, cache = model.run_with_cache(x, names_filter=[model.resolve_hook("layer4")])
    assert len(cache) >= 1


@needs_cuda
def test_cuda_patching_matches_the_cpu():
    """Exact and attribution patching on a CUDA model: buffers follow the activations, values equal the CPU's."""
    from visionlens.patching import run_patching

    model = tiny_vit().eval()
    g = torch.Generator().manual_seed(0)
    clean, corrupt = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 3, 32, 32, generator=g)
    kw = dict(hooks=["blocks.0.hook_resid_post"], kind="position", label=[1, 2], foil=[3, 4], method="both")
    cpu = run_patching(model, clean, corrupt, **kw)
    gpu = run_patching(model.cuda(), clean.cuda(), corrupt.cuda(), **kw)
    for h, sw in cpu.sweeps.items():
        assert torch.allclose(gpu.sweeps[h].scores, sw.scores, atol=1e-3, rtol=1e-3, equal_nan=True)
        assert torch.allclose(gpu.sweeps[h].atp, sw.atp, atol=1e-3, rtol=1e-3, equal_nan=True)
        grid = gpu.sweeps[h].targets.to_grid(gpu.sweeps[h].scores.cuda())
        assert grid is None or grid.device.type == "cuda"
