"""attention_patterns: head statistics, maps, UNet cross-attention, and the offline HTML viewer
(escaping, CSP, and a real render in headless Chromium)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import visionlens
from tests.conftest import image_folder, needs_chromium, no_hooks_left, run_args, run_chromium, tiny_clip, tiny_vit
from visionlens import VisionLensError
from visionlens.data import ImageList

EVIL = '<img src=x onerror="alert(1)">&'


@pytest.fixture(scope="module")
def vit():
    return tiny_vit(img_size=64, num_classes=10, depth=4)


@pytest.fixture(scope="module")
def photos():
    rng = np.random.default_rng(0)
    arrs = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    return ImageList(arrs, names=[EVIL, "b", "c"])


@pytest.fixture(scope="module")
def result(vit, photos):
    return visionlens.run("attention_patterns", vit, photos)


# ----------------------------------------------------------------------------- statistics
def test_head_statistics_known_values():
    from visionlens.plugins.attention_patterns import head_statistics

    T, n_prefix, grid = 5, 1, (2, 2)
    ident = torch.eye(T)[None, None]  # every token attends to itself
    uniform = torch.full((1, 1, T, T), 1.0 / T)
    cls_only = torch.zeros(1, 1, T, T)
    cls_only[..., 0] = 1.0
    s = head_statistics(torch.cat([ident, uniform, cls_only], dim=1), n_prefix, grid, (16.0, 16.0))
    assert s["distance"][0] == 0.0
    assert torch.isclose(s["distance"][1], s["uniform_distance"][1])  # uniform over patches
    pair = (16 + 16 + 16 * 2**0.5) / 4  # mean patch-centre distance, 2x2 grid
    assert torch.isclose(s["uniform_distance"][0], torch.tensor(pair), atol=1e-5)
    assert torch.isclose(s["entropy"][1], torch.tensor(float(np.log(T))), atol=1e-5)
    assert s["entropy"][0] < 1e-6
    assert torch.allclose(s["cls_share"], torch.tensor([0.0, 1 / T, 1.0]))


def test_maps_and_stats_from_the_model(vit, photos, result):
    L, H = 4, 3
    assert result.tensors["cls_maps"].shape == (L, H, 4, 4)
    assert result.tensors["query_maps"].shape == (L, H, 4, 4)
    assert result.meta["query"] == 1 + 2 * 4 + 2  # centre patch
    pat = result.tensors["pattern"]
    assert pat.shape == (L, H, 17, 17)
    assert torch.allclose(pat.sum(-1), torch.ones(L, H, 17), atol=1e-5)
    assert torch.allclose(result.tensors["cls_maps"], pat[:, :, 0, 1:].reshape(L, H, 4, 4))
    with torch.no_grad():
        x = vit.preprocess([photos.items[0]])
        _, cache = vit.run_with_cache(x, names_filter=["blocks.2.attn.hook_pattern"])
    assert torch.allclose(pat[2], cache["blocks.2.attn.hook_pattern"][0], atol=1e-6)
    assert result.meta["image_name"] == EVIL and result.meta["n_images"] == 3
    table = result.tables["heads"]
    assert len(table) == L * H and set(table.column("type")) <= {"local", "global", "mixed"}
    assert torch.all(result.tensors["entropy"] <= np.log(17) + 1e-5)
    no_hooks_left(vit)


def test_layer_selection_and_errors(vit, photos):
    res = visionlens.run("attention_patterns", vit, photos, layers=[-1], query=5, viewer=False, max_images=1)
    assert res.meta["layers"] == [3] and res.tensors["query_maps"].shape == (1, 3, 4, 4)
    with pytest.raises(visionlens.analysis.ConfigError, match="out of range"):
        visionlens.run("attention_patterns", vit, photos, layers=[7])
    with pytest.raises(visionlens.analysis.ConfigError, match="image"):
        visionlens.run("attention_patterns", vit, photos, image=5, max_images=2)
    resnet = visionlens.load("timm:resnet18", num_classes=10)
    with pytest.raises(VisionLensError, match="no attention pattern hooks"):
        visionlens.run("attention_patterns", resnet, torch.zeros(1, 3, 32, 32))


# ----------------------------------------------------------------------------- files and viewer
def test_save_writes_viewer_and_keeps_index_script_free(result, tmp_path):
    out = result.save(tmp_path / "att")
    names = {p.name for p in out.iterdir()}
    assert {
        "index.html",
        "viewer.html",
        "overview.png",
        "cls_attention.png",
        "query_attention.png",
        "result.json",
        "tensors.safetensors",
    } <= names
    index = (out / "index.html").read_text()
    assert "<script" not in index and "script-src" not in index
    assert 'href="viewer.html"' in index
    viewer = (out / "viewer.html").read_text()
    assert "script-src 'unsafe-inline'" in viewer and "default-src 'none'" in viewer
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", viewer)  # nothing fetched from the network
    for doc in (index, viewer):
        assert EVIL not in doc and "<img src=x" not in doc
    data = viewer.split('id="vl-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data
    parsed = json.loads(data)
    assert parsed["image_name"] == EVIL and parsed["L"] == 4 and parsed["H"] == 3 and parsed["T"] == 17
    json.dumps(result.to_dict())
    assert "<img" in result._repr_html_()


@needs_chromium
def test_viewer_renders_in_headless_chromium(result, tmp_path):
    from PIL import Image

    out = result.save(tmp_path / "att")
    url = (out / "viewer.html").resolve().as_uri()
    flags = ["--enable-logging=stderr", "--v=0", "--window-size=1000,800"]
    shot = tmp_path / "shot.png"
    r1 = run_chromium(*flags, f"--screenshot={shot}", url, user_dir=tmp_path / "p1", timeout=120)
    r2 = run_chromium(*flags, "--dump-dom", url, user_dir=tmp_path / "p2", timeout=120)
    logs = r1.stderr + r2.stderr
    console = [ln for ln in logs.splitlines() if "CONSOLE" in ln]
    assert not [ln for ln in console if "Uncaught" in ln or "rror" in ln], console
    dom = r2.stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)  # attributes the script set once it ran
    assert 'data-ready="1"' in body and "data-error" not in body
    assert "Layer 0, head 0: attention from patch (2, 2)" in dom
    assert dom.count('class="hd') == 3  # one canvas per head
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[0] >= 700 and img.shape[1] >= 900
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # the image, the heatmap overlay and the head maps were drawn


# ----------------------------------------------------------------------------- other families
def test_unet_cross_attention_maps(tmp_path):
    pytest.importorskip("diffusers")
    from visionlens import HookedVisionModel
    from visionlens.diffusion import tiny_unet

    model = HookedVisionModel.from_diffusers(tiny_unet("conditional"))
    g = torch.Generator().manual_seed(0)
    sample, ctx = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 32, generator=g)
    res = visionlens.run(
        "attention_patterns", model, (sample, torch.tensor(10), ctx), tokens=["<start>", "a", "cat", EVIL]
    )
    maps = res.tensors["cross_maps"]
    assert maps.shape == (5, 8, 8)
    assert torch.allclose(maps.sum(0), torch.ones(8, 8), atol=1e-5)  # each pixel's attention over tokens sums to 1
    assert res.meta["token_labels"] == ["<start>", "a", "cat", EVIL, "token 4"]
    assert len(res.meta["hooks"]) == 4 and all(h.endswith("attn2.hook_pattern") for h in res.meta["hooks"])
    out = res.save(tmp_path / "unet")
    assert not (out / "viewer.html").exists() and (out / "cross_attention.png").exists()
    assert EVIL not in (out / "index.html").read_text()
    with pytest.raises(VisionLensError, match="call arguments"):
        visionlens.run("attention_patterns", model, "builtin")
    no_hooks_left(model)


def test_clip_image_tower_and_distilled_prefix():
    clip = tiny_clip()
    model = visionlens.HookedVisionModel.from_module(clip)
    res = visionlens.run("attention_patterns", model, torch.randn(2, 3, 32, 32))
    assert res.meta["hooks"] == ["visual.blocks.0.attn.hook_pattern", "visual.blocks.1.attn.hook_pattern"]
    assert res.tensors["cls_maps"].shape == (2, 4, 4, 4)
    deit = visionlens.load("timm:deit_tiny_distilled_patch16_224", img_size=32, num_classes=10)
    res = visionlens.run("attention_patterns", deit, torch.randn(1, 3, 32, 32), layers=[0])
    assert res.meta["n_prefix"] == 2 and res.tensors["query_maps"].shape == (1, 3, 2, 2)


def test_cli_run(tmp_path):

    from visionlens.cli import main

    folder = image_folder(tmp_path / "imgs", n=1, size=48)
    out = tmp_path / "out"
    code = main(run_args("attention_patterns", folder, out, "layers=0,-1", "query=2"))
    assert code == 0
    d = json.loads((out / "result.json").read_text())
    assert d["meta"]["layers"] == [0, 11] and d["meta"]["query"] == 2
    assert (out / "viewer.html").exists()
