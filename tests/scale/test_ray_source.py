"""The dictionary activation source on Ray yields the in-process stream: same vectors (1e-6), same order.

One Ray walk over a tiny conv net (22 images, batches of 3, shards of 2 batches: 4 shards) with the actor
that takes shard [6, 12) killed once; the driver stops after 5 chunks and a new source resumes from its
``state_dict`` and the committed shards; a second (shuffled) pass is served from the shard files alone.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import visionlens
from visionlens.plugins.dictionaries.source import ActivationSource
from visionlens.validation import VisionLensError

pytest.importorskip("ray", reason="ray is not installed (pip install 'visionlens[ray]')")
from visionlens.scale.ray_backend import RayOptions  # noqa: E402
from visionlens.scale.ray_source import RayActivationSource, ray_chunks  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")
OPTS = RayOptions(num_workers=1, cpus_per_worker=1.0, shard_batches=2)
WALK = dict(batch_size=3, positions=5, seed=3, buffer_size=40)  # 5 of 49 positions per image, seeded per batch


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, stride=2, padding=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return visionlens.HookedVisionModel.from_module(net).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(22, 3, 14, 14, generator=torch.Generator().manual_seed(1))


def _cat(chunks):
    return torch.cat([c.x for c in chunks]), torch.cat([c.index for c in chunks])


def test_ray_walk_equals_in_process_after_a_killed_actor_and_a_stopped_driver(cluster, model, images, tmp_path):
    local = ActivationSource(model, "2.hook_out", images, **WALK)
    ref = list(local.iter_chunks())
    ref_x, ref_i = _cat(ref)
    assert ref_x.shape == (22 * 5, 8) and local.layout == "map"
    ref_shuffled = torch.cat(list(ActivationSource(model, "2.hook_out", images, **WALK).batches(16)))

    shards = tmp_path / "vectors"
    marker = tmp_path / "crash-once"
    marker.write_text("")
    first = RayActivationSource(model, "2.hook_out", images, ray_options=OPTS, shard_dir=str(shards), **WALK)
    got, done = [], 0
    for chunk, batch_done in ray_chunks(first, 0, crash_at=(6, str(marker))):
        got.append(chunk)
        done = batch_done if batch_done is not None else done
        if len(got) == 5:  # the driver stops here (the generator is closed: nothing more is served)
            break
    assert not marker.exists()  # the actor that started shard [6, 12) SIGKILLed itself; its retry delivered it
    assert done == 15 and first.last_run == {"backend": "ray", "shards": 4, "shards_run": 4}
    committed = sorted(p.name for p in shards.glob("shard-*.safetensors"))
    assert len(committed) >= 3  # [0, 6), [6, 12) and [12, 18) were served, so committed
    for p in shards.glob("shard-0000000018-*.safetensors"):
        p.unlink()  # as if the driver had died before the last shard was committed

    resumed = RayActivationSource(model, "2.hook_out", images, ray_options=OPTS, shard_dir=str(shards), **WALK)
    resumed.load_state_dict({"images_done": done, "passes": 0, "hook": resumed.hook, "seed": 3})
    got += list(resumed.iter_chunks())
    # [12, 18) from image 15 on (committed: read back) and [18, 22) (computed again)
    assert resumed.last_run == {"backend": "ray", "shards": 2, "shards_run": 1}
    x, i = _cat(got)
    assert [len(c) for c in got] == [len(c) for c in ref]  # the same chunks, in the same order
    assert torch.equal(i, ref_i) and float((x - ref_x).abs().max()) <= 1e-6
    assert (resumed.layout, resumed.pos_shape, resumed.d_in, resumed.passes) == ("map", (7, 7), 8, 1)

    again = RayActivationSource(model, "2.hook_out", images, ray_options=OPTS, shard_dir=str(shards), **WALK)
    shuffled = torch.cat(list(again.batches(16)))  # a second pass: every shard is on disk, no actor starts
    assert again.last_run["shards_run"] == 0
    assert shuffled.shape == ref_shuffled.shape and float((shuffled - ref_shuffled).abs().max()) <= 1e-6
    assert not torch.equal(shuffled, x)  # and it was shuffled (the check above is not trivially met)

    other = RayActivationSource(model, "2.hook_out", images, ray_options=OPTS, shard_dir=str(shards),
                             **dict(WALK, seed=4))  # fmt: skip
    with pytest.raises(VisionLensError, match="belongs to a different sweep"):
        other.collect()
