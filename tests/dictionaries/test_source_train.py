"""Activation sources (maps, tokens, UNet timesteps; buffers; resume), every kind, files, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from visionlens import HookedVisionModel
from visionlens.cli import main
from visionlens.diffusion import tiny_unet
from visionlens.plugins.dictionaries import KINDS, ActivationSource, fit_dictionary, load_dictionary
from visionlens.plugins.dictionaries.train import evaluate


def test_conv_map_vectors_keep_positions_and_resume(zoo_resnet, planted):
    x = planted.images[:40]
    src = ActivationSource(zoo_resnet, "layer4", x, batch_size=8)
    full, idx = src.collect(with_index=True)
    assert full.shape == (40 * 4, 128) and src.layout == "map" and src.pos_shape == (2, 2)
    assert idx[:, 0].tolist() == [i for i in range(40) for _ in range(4)] and idx[:4, 1].tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        _, cache = zoo_resnet.run_with_cache(x[7:8], names_filter=["layer4.hook_out"])
    assert torch.allclose(full[28 + 3], cache["layer4.hook_out"][0, :, 1, 1], atol=1e-6)  # image 7, (y=1, x=1)
    # an interrupted pass resumes where it stopped
    a = ActivationSource(zoo_resnet, "layer4", x, batch_size=8)
    it = a.iter_chunks()
    first = [next(it).x for _ in range(2)]
    next(it)  # read but the image batch not finished from the source's point of view: state says 16
    state = a.state_dict()
    assert state["images_done"] == 16
    b = ActivationSource(zoo_resnet, "layer4", x, batch_size=8).load_state_dict(state)
    rest = torch.cat([c.x for c in b.iter_chunks()])
    assert torch.equal(torch.cat(first + [rest]), full)


def test_shuffled_buffer_serves_every_vector_once(zoo_vit, planted):
    src = ActivationSource(zoo_vit, "blocks.3.hook_resid_post", planted.images[:12], batch_size=4, buffer_size=100)
    ref = src.collect()
    assert ref.shape == (12 * 65, 64) and src.layout == "tokens"
    got = torch.cat(list(src.batches(batch_size=32)))
    assert got.shape == ref.shape and not torch.equal(got, ref)
    key = lambda t: t[torch.argsort(t[:, 0] * 1e3 + t[:, 1])]  # noqa: E731
    assert torch.allclose(key(got), key(ref))
    sub = ActivationSource(zoo_vit, "blocks.3.hook_resid_post", planted.images[:12], positions=5).collect()
    assert sub.shape == (60, 64)


def test_unet_features_at_timesteps():
    model = HookedVisionModel.from_diffusers(tiny_unet())
    x = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    src = ActivationSource(model, "mid_block.hook_out", x, timesteps=[10, 500], batch_size=3)
    v, idx = src.collect(with_index=True)
    assert v.shape == (6 * 16 * 2, 64) and set(idx[:, 2].tolist()) == {10, 500}
    with pytest.raises(Exception, match="timesteps"):
        ActivationSource(model, "mid_block.hook_out", x)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_saves_and_loads(kind, tmp_path):
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(12, 16, generator=g).abs()
    codes = (torch.rand(600, 12, generator=g) < 0.2).float() * torch.rand(600, 12, generator=g)
    x = codes @ atoms  # non-negative sparse mixtures
    d, log = fit_dictionary(x, kind, 24, 4, epochs=40 if kind != "nmf" else 100, batch_size=64)
    m = evaluate(d, x)
    assert m["r2"] > 0.5, (kind, m)
    assert log["vectors_per_second"] > 0
    path = d.save(tmp_path / f"{kind}.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["kind"] == kind and card["n_features"] == 24 and card["d_in"] == 16
    e = load_dictionary(path)
    assert torch.allclose(e.reconstruct(x[:50]), d.reconstruct(x[:50]), atol=1e-4)


@pytest.mark.parametrize(
    "spec,hook,extra",
    [
        ("zoo:resnet", "layer4.hook_out", []),  # conv map
        ("zoo:vit", "blocks.3.hook_resid_post", ["--positions", "8"]),  # tokens
        ("unet", "mid_block.hook_out", ["--images", "noise", "--timesteps", "10,500"]),  # UNet features
    ],
)
def test_cli_trains_conv_tokens_and_unet_through_one_command(spec, hook, extra, tmp_path, capsys):
    if spec == "unet":
        tiny_unet().save_pretrained(tmp_path / "unet")
        spec = f"diffusers:{tmp_path / 'unet'}"
    out = tmp_path / "d.safetensors"
    rc = main(
        [
            "dict",
            "train",
            "--model",
            spec,
            "--hook",
            hook,
            "--size",
            "32",
            "--top-k",
            "4",
            "--n-images",
            "32",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["hook"] == hook and card["kind"] == "topk" and card["n_features"] == 32
    for key in ("r2", "l0", "dead_fraction"):
        assert key in card["metrics"]
    assert ("loss_spliced" in card["metrics"]) == spec.startswith("zoo:")  # zoo data has held-out labels
    assert load_dictionary(out).n_features == 32
