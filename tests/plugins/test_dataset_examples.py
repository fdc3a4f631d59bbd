"""dataset_examples: streaming top/bottom-k, receptive fields, crops, SIGKILL + resume."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import visionlens
from tests.conftest import tiny_resnet, tiny_vit
from visionlens.reducers import load_checkpoint


def _register():
    import visionlens.plugins.dataset_examples as de
    from visionlens.registry import plugin_manager

    if "dataset_examples" not in visionlens.list_analyses():
        plugin_manager().register(de)
        import visionlens.registry as reg

        reg._analyses = None
    return de


de = _register()

NET_SRC = """
from torch import nn
import torch
def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 5, 3))
"""
_ns: dict = {}
exec(NET_SRC, _ns)
make_net = _ns["make_net"]


def _model():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return visionlens.HookedVisionModel.from_module(make_net()).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(d / f"img_{i:02d}.png")
    return d


def _brute(model, x, hook):
    _, cache = model.run_with_cache(x, names_filter=[hook], return_cache_object=False)
    a = cache[hook].flatten(2)  # [N, C, P]
    return a.amax(-1), a.amin(-1)


def test_topk_matches_brute_force_and_batching():
    model = _model()
    x = torch.randn(13, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    hooks = ["2.hook_out", "4.hook_out"]
    r1 = visionlens.run("dataset_examples", model, x, hooks=hooks, top_k=3, bottom_k=2, batch_size=4, crop_units=2)
    r2 = visionlens.run("dataset_examples", model, x, hooks=hooks, top_k=3, bottom_k=2, batch_size=13, crop_units=0)
    for h in hooks:
        mx, mn = _brute(model, x, h)
        top = torch.topk(mx.double().T, 3, dim=1)
        assert torch.equal(r1.tensors[f"{h}/top_index"], top.indices)
        assert torch.allclose(r1.tensors[f"{h}/top_values"], top.values)
        bot = torch.topk(mn.double().T, 2, dim=1, largest=False)
        assert torch.equal(r1.tensors[f"{h}/bottom_index"], bot.indices)
        for k in ("top_index", "top_location", "bottom_index", "bottom_location"):
            assert torch.equal(r1.tensors[f"{h}/{k}"], r2.tensors[f"{h}/{k}"])
    # argmax location is a real argmax
    _, cache = model.run_with_cache(x, names_filter=["4.hook_out"], return_cache_object=False)
    ex = r1.examples("4.hook_out", 1)[0]
    y, xx = ex["location"]
    assert float(cache["4.hook_out"][ex["index"], 1, y, xx]) == pytest.approx(ex["value"])
    assert r1.tensors["crops/4.hook_out/top"].shape == (2, 3, 48, 48, 3)


def test_receptive_field_of_small_net():
    from visionlens.receptive_field import receptive_field

    model = _model()
    rf = receptive_field(model, "4.hook_out", (32, 32))
    assert rf.size == (9, 9) and rf.stride == (2, 2) and rf.offset == (-2, -2)
    assert rf.box(0, 0) == (0, 0, 7, 7)
    rf0 = receptive_field(model, "0.hook_out", (32, 32))
    assert rf0.size == (3, 3) and rf0.stride == (1, 1)
    assert receptive_field(model, "4.hook_out", (32, 32)) is rf  # cached


def test_resnet_receptive_field_is_architectural():
    from visionlens.receptive_field import receptive_field

    r = tiny_resnet().eval()
    rf = receptive_field(r, "layer1", (96, 96))
    assert rf.stride == (4, 4) and rf.size == (43, 43)  # known resnet18 layer1 receptive field


def test_dataset_input_vit_and_save(tmp_path):
    from PIL import Image

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            rng = np.random.default_rng(i)
            return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)), i

    v = tiny_vit()
    res = visionlens.run(
        "dataset_examples",
        v,
        DS(),
        hooks=["blocks.1.hook_resid_post"],
        top_k=2,
        bottom_k=1,
        batch_size=2,
        crop_units=2,
        crop_size=16,
    )
    assert res.tensors["blocks.1.hook_resid_post/top_location"].shape == (192, 2, 1)
    out = res.save(tmp_path / "vit")
    assert (out / "units" / "blocks.1.hook_resid_post" / "unit_0.png").exists()
    assert (out / "examples.html").exists() and (out / "result.json").exists()


SCRIPT = """
import sys, time, warnings, torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
import visionlens
import visionlens.plugins.dataset_examples as de
{net}
model = visionlens.HookedVisionModel.from_module(make_net()).eval()
model.source[0].register_forward_hook(lambda m, i, o: time.sleep(0.25))
res = de.DatasetExamples().run(model, sys.argv[1], de.DatasetExamples().make_config(
    hooks=["2.hook_out", "4.hook_out"], top_k=3, bottom_k=2, batch_size=2, checkpoint=sys.argv[2],
    checkpoint_every=1, crop_units=0))
print("finished", flush=True)
"""


def test_sigkill_then_resume_is_exact(folder, tmp_path):
    ckpt = tmp_path / "ckpt.safetensors"
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(net=textwrap.dedent(NET_SRC)))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder), str(ckpt)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 50
        next_index = 0
        while time.time() < deadline and proc.poll() is None:
            if ckpt.exists():
                try:
                    next_index = load_checkpoint(ckpt)[1]["next_index"]
                except Exception:
                    next_index = 0
                if next_index >= 4:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    _, meta = load_checkpoint(ckpt)
    assert 4 <= meta["next_index"] < 20
    model = _model()
    common = dict(hooks=["2.hook_out", "4.hook_out"], top_k=3, bottom_k=2, batch_size=2, crop_units=0)
    resumed = visionlens.run("dataset_examples", model, str(folder), checkpoint=str(ckpt), checkpoint_every=1, **common)
    assert resumed.meta["resumed_from"] == meta["next_index"] > 0
    full = visionlens.run("dataset_examples", model, str(folder), **common)
    assert resumed.meta["n_images"] == full.meta["n_images"] == 20
    assert set(resumed.tensors) == set(full.tensors)
    for k in full.tensors:
        assert torch.equal(resumed.tensors[k], full.tensors[k]), k


def test_checkpoint_from_other_run_is_refused(folder, tmp_path):
    model = _model()
    ckpt = tmp_path / "c.safetensors"
    visionlens.run(
        "dataset_examples",
        model,
        str(folder),
        hooks=["2.hook_out"],
        top_k=2,
        batch_size=4,
        max_images=8,
        checkpoint=str(ckpt),
        crop_units=0,
    )
    with pytest.raises(visionlens.VisionLensError, match="different run"):
        visionlens.run(
            "dataset_examples",
            model,
            str(folder),
            hooks=["2.hook_out"],
            top_k=3,
            batch_size=4,
            max_images=8,
            checkpoint=str(ckpt),
            crop_units=0,
        )
    assert not any(hp._forward_hooks for hp in model.hook_dict.values())
