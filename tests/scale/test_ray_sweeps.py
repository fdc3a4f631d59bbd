"""Sweeps on a local Ray instance equal the in-process sweep: after a killed actor, after a killed driver.

The session's Ray instance (``cluster`` in ``tests/scale/conftest.py``) and a tiny conv net; shards of 2
batches of 2 images.
Skipped (with the reason) when ray is not installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import visionlens
from visionlens.reducers import load_checkpoint
from visionlens.validation import VisionLensError

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'visionlens[ray]')")
from visionlens.scale.ray_backend import RayOptions, run_sweep_on_ray  # noqa: E402

# one local Ray instance for the session: under `pytest -n 2 --dist loadgroup` (make test) these run on one worker
pytestmark = pytest.mark.xdist_group("ray")

NET_SRC = """
import torch
from torch import nn
def make_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 5, 3))
def make_images():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(22, 3, 16, 16, generator=g)
    x[3] *= 4  # image 3 tops (and bottoms) many units
    x[5] = x[3]  # exact ties between images in different shards: the lower index must win
    x[17] = x[3]
    return x
"""
_ns: dict = {}
exec(NET_SRC, _ns)
EXAMPLES = dict(hooks=["2.hook_out", "4.hook_out"], top_k=3, bottom_k=2, batch_size=2, crop_units=0)
OPTS = RayOptions(num_workers=1, cpus_per_worker=1.0, shard_batches=2)  # one actor process: start-up dominates


@pytest.fixture(scope="module")
def model():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return visionlens.HookedVisionModel.from_module(_ns["make_net"]()).eval()


@pytest.fixture(scope="module")
def images():
    return _ns["make_images"]()


@pytest.fixture(scope="module")
def local_examples(model, images):
    return visionlens.run("dataset_examples", model, images, **EXAMPLES)


def _assert_same(a, b):
    assert set(a.tensors) == set(b.tensors)
    for k in b.tensors:
        assert a.tensors[k].dtype == b.tensors[k].dtype, k
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_activation_stats_moments_and_topk(cluster, model, images):
    cfg = dict(hooks=["2.hook_out"], batch_size=2, top_k=4, figure_units=0)
    res = visionlens.run("activation_stats", model, images, backend="ray", **cfg)
    ref = visionlens.run("activation_stats", model, images, **cfg)
    assert res.meta["backend"]["name"] == "ray" and res.meta["n_images"] == ref.meta["n_images"] == 22
    for k in ("topk_index", "topk_location", "topk_values", "frac_active", "min", "max"):
        assert torch.equal(res.tensors[f"2.hook_out/{k}"], ref.tensors[f"2.hook_out/{k}"]), k
    for k in ("mean", "std"):
        a, b = res.tensors[f"2.hook_out/{k}"].double(), ref.tensors[f"2.hook_out/{k}"].double()
        assert float((a - b).abs().max()) <= 1e-6, k


DRIVER = """
import sys, warnings, torch
torch.set_num_threads(1)
warnings.simplefilter("ignore")
import ray, visionlens
from visionlens.scale.ray_backend import RayOptions, run_sweep_on_ray
{src}
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
model = visionlens.HookedVisionModel.from_module(make_net()).eval()
run_sweep_on_ray("dataset_examples", model, make_images(), RayOptions(num_workers=1, cpus_per_worker=0.5,
                 shard_batches=2), stop_after=2, checkpoint=sys.argv[2], **{examples!r})
print("not killed", flush=True)
"""


def test_killed_driver_then_killed_actor_lose_nothing(cluster, model, images, local_examples, tmp_path):
    """A driver SIGKILLed after 2 committed shards; the resumed sweep has an actor SIGKILLed mid-shard.

    The resume runs only the missing shards, the killed actor's shard is retried (the sweep refuses to
    finish with a shard missing), and the result equals the in-process one bit for bit.
    """
    ckpt = tmp_path / "sweep.safetensors"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(src=textwrap.dedent(NET_SRC), examples=EXAMPLES))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), cluster, str(ckpt)], capture_output=True, text=True, timeout=240, env=env
    )
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-2000:]
    shard_dir = tmp_path / "sweep.safetensors.shards"
    committed = sorted(int(p.name.split("-")[1]) for p in shard_dir.glob("shard-*.safetensors"))
    assert len(committed) == 2 and not ckpt.exists()
    crash = min(set(range(0, 22, 4)) - set(committed))  # the first shard the resume runs
    marker = tmp_path / "crash-once"
    marker.write_text("")
    res = run_sweep_on_ray(
        "dataset_examples", model, images, OPTS, crash_at=(crash, str(marker)), checkpoint=str(ckpt), **EXAMPLES
    )
    assert not marker.exists()  # the actor that took that shard removed the marker and SIGKILLed itself
    assert res.meta["backend"]["shards"] == 6 and res.meta["backend"]["shards_run"] == 4
    commits = res.meta["backend"]["commits"]  # [start, stop, seconds]: each resumed shard committed once
    assert sorted(c[0] for c in commits) == sorted(set(range(0, 22, 4)) - set(committed))
    assert [c[2] for c in commits] == sorted(c[2] for c in commits)
    assert res.meta["resumed_from"] == 8
    _assert_same(res, local_examples)
    # images 3, 5 and 17 (three shards) are exact copies: the ties are ordered by image index
    idx = res.tensors["4.hook_out/top_index"]
    tied = idx[:, 0] == 3
    assert tied.any() and (idx[tied] == torch.tensor([3, 5, 17])).all()
    # the merged checkpoint is an ordinary in-process checkpoint: resuming from it changes nothing
    assert load_checkpoint(ckpt)[1]["next_index"] == 22
    again = visionlens.run("dataset_examples", model, images, checkpoint=str(ckpt), **EXAMPLES)
    _assert_same(again, local_examples)


def test_ray_backend_refuses_what_it_cannot_shard(cluster, model, images, tmp_path):
    with pytest.raises(VisionLensError, match="not a checkpointable dataset sweep"):
        visionlens.run("attention_patterns", model, images, backend="ray")
    with pytest.raises(VisionLensError, match="Unknown backend 'dask'"):
        visionlens.run("dataset_examples", model, images, backend="dask")
    with pytest.raises(VisionLensError, match="known length"):
        visionlens.run("dataset_examples", model, iter([images[:2]]), backend="ray", **EXAMPLES)
    ckpt = tmp_path / "c.safetensors"
    (tmp_path / "c.safetensors.shards").mkdir()
    (tmp_path / "c.safetensors.shards" / "plan.json").write_text('{"other": 1}')
    with pytest.raises(VisionLensError, match="belongs to a different sweep"):
        run_sweep_on_ray("dataset_examples", model, images, OPTS, checkpoint=str(ckpt), **EXAMPLES)


def test_transfer_cells_as_ray_tasks_match_the_local_run(cluster, tmp_path):
    from visionlens.zoo.bench import run_transfer

    sel = dict(families=["resnet"], techniques=["gradient_x_input"], quick=True, sanity=True)
    run_transfer(tmp_path / "local", workers=1, **sel)
    run_transfer(tmp_path / "ray", backend="ray", address=cluster, **sel)
    local = json.loads((tmp_path / "local" / "results.json").read_text())
    remote = json.loads((tmp_path / "ray" / "results.json").read_text())
    assert (
        local["settings"] == remote["settings"] and len(local["rows"]) == len(remote["rows"]) == 2
    )  # zoo:resnet, zoo:resnet_fashion

    def cells(payload):  # everything but the timings and the figure paths
        skip = ("seconds", "cpu_seconds", "cpu_split", "figures", "run_id")  # run_id: which run wrote the row
        return [{k: v for k, v in r.items() if k not in skip} for r in payload["rows"]]

    assert cells(remote) == cells(local)
    assert all(r["score"] is not None for r in remote["rows"])
    for a, b in zip(local["rows"], remote["rows"]):  # the same figures, written under each run's own folder
        assert sorted(a.get("figures") or {}) == sorted(b.get("figures") or {})
