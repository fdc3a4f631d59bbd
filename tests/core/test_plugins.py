"""Plugin system end to end: registry, activation_stats numbers, config validation, results,
the example third-party plugin through a real entry point, and broken-plugin isolation."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import visionlens
from tests.conftest import image_batch, needs_chromium, no_hooks_left, run_chromium
from visionlens import registry
from visionlens.analysis import ConfigError, make_config, option, parse_set_options
from visionlens.data import TensorImages, as_images, builtin_photos
from visionlens.results import Result, Table, load_result

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "visionlens-example-plugin"


# ----------------------------------------------------------------------------- fixtures
# vit, resnet (timm, 1000 classes) and restore_registry: tests/conftest.py
@pytest.fixture(scope="module")
def images32() -> torch.Tensor:
    return image_batch(10)


@pytest.fixture()
def photo_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40 + i, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _direct(model, x, hook):
    """Reference stats from one run_with_cache over all images."""
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=[hook], return_cache_object=False)
    a = cache[hook]
    if a.ndim == 4:  # [B, C, H, W]
        flat = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])
        per_img = a.flatten(2)
        peak, arg = per_img.max(-1)
        loc = torch.stack([arg // a.shape[3], arg % a.shape[3]], dim=-1)
    else:  # [B, T, D]
        flat = a.reshape(-1, a.shape[-1])
        peak, arg = a.max(1)
        loc = arg[..., None]
    return {
        "mean": flat.mean(0),
        "std": flat.std(0, unbiased=False),
        "frac_active": (flat > 0).float().mean(0),
        "max": flat.amax(0),
        "min": flat.amin(0),
        "peak": peak,
        "loc": loc,
    }


# ----------------------------------------------------------------------------- registry
def test_registry_lists_builtin_analysis():
    analyses = visionlens.list_analyses()
    assert "activation_stats" in analyses and "fraction active" in analyses["activation_stats"]
    a = visionlens.get_analysis("activation_stats")
    assert a.name == "activation_stats" and registry.analysis_origin("activation_stats") == "activation_stats"
    assert "activation_stats" not in visionlens.plugin_errors()
    with pytest.raises(visionlens.VisionLensError, match="Did you mean 'activation_stats'"):
        visionlens.get_analysis("activation_stat")


# ----------------------------------------------------------------------------- numbers
def test_activation_stats_vit_equals_direct_computation(vit, images32):
    res = visionlens.run("activation_stats", vit, images32, batch_size=4, top_k=3)
    assert res.hooks == [f"blocks.{i}.hook_resid_post" for i in range(12)]
    for hook in ("blocks.0.hook_resid_post", "blocks.11.hook_resid_post"):
        ref, s = _direct(vit, images32, hook), res.stats(hook)
        for k in ("mean", "std", "frac_active", "max", "min"):
            torch.testing.assert_close(s[k], ref[k], rtol=0, atol=1e-5, msg=f"{hook} {k}")
        top_v, top_i = ref["peak"].topk(3, dim=0)
        assert torch.equal(s["topk_index"], top_i.T)
        torch.testing.assert_close(s["topk_values"], top_v.T, rtol=0, atol=1e-6)
        expected_loc = torch.stack([ref["loc"][top_i[:, u], u] for u in range(top_i.shape[1])])
        assert torch.equal(s["topk_location"], expected_loc)  # token index of each example's max
    assert res.meta["position_kind"]["blocks.0.hook_resid_post"] == "token"
    assert res.meta["n_images"] == 10
    no_hooks_left(vit)


def test_activation_stats_conv_globs_aliases_and_yx_locations(resnet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 64, 64, generator=g)
    res = visionlens.run(
        "activation_stats",
        resnet,
        x,
        hooks=["stages.0.blocks.*.hook_resid_post", "layer4.1.conv2"],
        batch_size=4,
        top_k=2,
    )
    assert res.hooks == [
        "stages.0.blocks.0.hook_resid_post",
        "stages.0.blocks.1.hook_resid_post",
        "layer4.1.conv2.hook_out",
    ]
    for hook in res.hooks:
        ref, s = _direct(resnet, x, hook), res.stats(hook)
        for k in ("mean", "std", "frac_active", "max"):
            torch.testing.assert_close(s[k], ref[k], rtol=0, atol=1e-5, msg=f"{hook} {k}")
        top_i = ref["peak"].topk(2, dim=0).indices
        assert torch.equal(s["topk_index"], top_i.T)
        expected_loc = torch.stack([ref["loc"][top_i[:, u], u] for u in range(top_i.shape[1])])
        assert torch.equal(s["topk_location"], expected_loc)  # (y, x) in the feature map
        assert s["topk_location"].shape[-1] == 2
    assert res.meta["position_kind"][res.hooks[0]] == "y,x"
    # ReLU output: nothing negative, frac_active is the fraction of strictly positive values
    assert float(res.stats("stages.0.blocks.0.hook_resid_post")["min"].min()) >= 0
    no_hooks_left(resnet)


def test_streaming_equals_one_big_batch(vit, images32):
    one = visionlens.run("activation_stats", vit, images32, batch_size=10, top_k=4, hooks=["blocks.*.mlp.hook_post"])
    many = visionlens.run("activation_stats", vit, images32, batch_size=3, top_k=4, hooks=["blocks.*.mlp.hook_post"])
    stream = visionlens.run(
        "activation_stats",
        vit,
        ((images32[i : i + 2], 0) for i in range(0, 10, 2)),
        batch_size=7,
        top_k=4,
        hooks=["blocks.*.mlp.hook_post"],
    )
    assert one.tensors.keys() - {"figure/crops", "figure/boxes"} == stream.tensors.keys()
    for name, t in one.tensors.items():
        if name.startswith("figure/"):
            continue
        for other in (many, stream):
            if t.is_floating_point():
                torch.testing.assert_close(other.tensors[name], t, rtol=0, atol=1e-6, msg=name)
            else:
                assert torch.equal(other.tensors[name], t), name
    assert "figure/crops" not in stream.tensors  # streams have no random access for crops


def test_input_forms_agree(vit, photo_folder):
    paths = sorted(str(p) for p in photo_folder.iterdir())
    pils = [Image.open(p) for p in paths]
    tensor = vit.preprocess(pils)
    runs = [
        visionlens.run("activation_stats", vit, inp, hooks=["blocks.3.hook_resid_post"], top_k=2, batch_size=2)
        for inp in (str(photo_folder), paths, pils, tensor)
    ]
    for r in runs[1:]:
        torch.testing.assert_close(
            r.tensors["blocks.3.hook_resid_post/mean"],
            runs[0].tensors["blocks.3.hook_resid_post/mean"],
            rtol=0,
            atol=1e-6,
        )
    assert runs[0].meta["image_names"] == [f"img{i}.png" for i in range(5)]
    assert runs[0].top_examples("blocks.3.hook_resid_post", 0)[0]["name"].startswith("img")


def test_builtin_photos_are_real_photos():
    photos = builtin_photos()
    for name in (
        "skimage:astronaut",
        "skimage:chelsea",
        "skimage:coffee",
        "skimage:rocket",
        "sklearn:china.jpg",
        "sklearn:flower.jpg",
    ):
        assert name in photos.names
    assert len(photos) >= 12
    assert as_images("builtin").names == photos.names
    img = photos._pil(photos.names.index("skimage:chelsea"))
    assert img.mode == "RGB" and min(img.size) > 200


def test_bad_inputs_give_clear_errors(vit, tmp_path):
    with pytest.raises(visionlens.VisionLensError, match="No such image file or folder"):
        visionlens.run("activation_stats", vit, str(tmp_path / "missing"))
    with pytest.raises(visionlens.VisionLensError, match="No images found"):
        visionlens.run("activation_stats", vit, str(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(visionlens.VisionLensError, match="broken.png"):
        visionlens.run("activation_stats", vit, str(tmp_path))
    with pytest.raises(visionlens.UnknownHookError, match="Closest real names: blocks.0.hook_resid_post"):
        visionlens.run("activation_stats", vit, torch.randn(2, 3, 32, 32), hooks=["blocks.0.hook_resid_postt"])
    with pytest.raises(ConfigError, match="matched no hook"):
        visionlens.run("activation_stats", vit, torch.randn(2, 3, 32, 32), hooks=["nothing.*"])
    with pytest.raises(visionlens.VisionLensError, match=r"Expected images of size \(32, 32\)"):
        visionlens.run("activation_stats", vit, torch.randn(2, 3, 64, 64))
    no_hooks_left(vit)


# ----------------------------------------------------------------------------- config
def test_config_validation_messages():
    cfg_cls = visionlens.get_analysis("activation_stats").Config
    ok = make_config(cfg_cls, {"top_k": 3, "hooks": "blocks.0.hook_resid_post"}, owner="activation_stats")
    assert ok.top_k == 3 and ok.hooks == ["blocks.0.hook_resid_post"] and ok.batch_size == 16
    cases = [
        ({"top_k": "many"}, r"'top_k' expected an integer, got 'many'"),
        ({"top_k": 2.5}, r"'top_k' expected an integer"),
        ({"top_k": True}, r"'top_k' expected an integer"),
        ({"top_k": 0}, r"'top_k' expected a value in \[1, 100000\], got 0"),
        ({"batch_size": -4}, r"'batch_size' expected a value in \[1, 65536\]"),
        ({"max_images": 0}, r"'max_images' expected a value >= 1, got 0"),
        ({"rank_by": "median"}, r"'rank_by' expected one of 'max', 'mean'"),
        ({"hooks": [1, 2]}, r"'hooks' expected a list of strings"),
        ({"topk": 3}, r"unknown config key 'topk'. Did you mean 'top_k'\?"),
    ]
    for values, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            visionlens.run("activation_stats", None, None, **values)
    assert issubclass(ConfigError, visionlens.VisionLensError)


def test_set_option_strings_are_typed():
    cfg_cls = visionlens.get_analysis("activation_stats").Config
    parsed = parse_set_options(
        cfg_cls,
        ["top_k=5", "threshold=-0.5", "hooks=a.*,b", "max_images=none", "rank_by=mean", "figure-units=2"],
        owner="activation_stats",
    )
    assert parsed == {
        "top_k": 5,
        "threshold": -0.5,
        "hooks": ["a.*", "b"],
        "max_images": None,
        "rank_by": "mean",
        "figure_units": 2,
    }
    assert parse_set_options(cfg_cls, ['hooks=["x", "y"]'])["hooks"] == ["x", "y"]
    with pytest.raises(ConfigError, match="expected an integer, got '5x'"):
        parse_set_options(cfg_cls, ["top_k=5x"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_options(cfg_cls, ["top_k"])

    @dataclass
    class Cfg:
        flag: bool = option(False)
        pair: tuple[int, int] = option((1, 2))
        mode: Literal["a", "b"] = "a"
        scale: Optional[float] = option(None, min=0.0, max=1.0)

    assert parse_set_options(Cfg, ["flag=yes", "pair=3,4", "scale=0.25"]) == {
        "flag": True,
        "pair": (3, 4),
        "scale": 0.25,
    }
    with pytest.raises(ConfigError, match=r"'flag' expected a boolean"):
        parse_set_options(Cfg, ["flag=maybe"])
    with pytest.raises(ConfigError, match=r"'scale' expected a value in \[0.0, 1.0\], got 2.0"):
        parse_set_options(Cfg, ["scale=2"])
    with pytest.raises(ConfigError, match=r"'pair' expected a list of integers"):
        parse_set_options(Cfg, ["pair=1,2,3"])


# ----------------------------------------------------------------------------- results
def test_save_writes_json_safetensors_png_html_and_roundtrips(vit, photo_folder, tmp_path):
    res = vit.analyze(
        "activation_stats",
        str(photo_folder),
        top_k=3,
        figure_units=2,
        figure_examples=2,
        hooks=["blocks.0.hook_resid_post", "blocks.5.mlp.hook_post"],
    )
    out = res.save(tmp_path / "out")
    names = sorted(os.listdir(out))
    assert names == ["index.html", "overview.png", "result.json", "tensors.safetensors", "top_units.png"]
    for png in ("overview.png", "top_units.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    d = json.loads((out / "result.json").read_text())
    assert d == res.to_dict()
    json.dumps(res.to_dict(), allow_nan=False)  # JSON-safe
    loaded = load_result(out)
    assert type(loaded) is type(res)
    assert loaded.to_dict() == res.to_dict()
    assert loaded.tensors.keys() == res.tensors.keys()
    for k in res.tensors:
        assert torch.equal(loaded.tensors[k], res.tensors[k])
    assert loaded.top_examples("blocks.0.hook_resid_post", 1) == res.top_examples("blocks.0.hook_resid_post", 1)
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "http://" not in page and "https://" not in page and "<script" not in page
    b64 = page.split("data:image/png;base64,")[1].split('"')[0]
    assert base64.b64decode(b64)[:4] == b"\x89PNG"
    # ranked table: units sorted by max within each hook
    rows = [r for r in res.tables["units"].records() if r["hook"] == "blocks.0.hook_resid_post"]
    assert [r["max"] for r in rows] == sorted((r["max"] for r in rows), reverse=True)
    assert rows[0]["max"] == pytest.approx(float(res.stats("blocks.0.hook_resid_post")["max"].max()))
    # notebook / plotting surface
    from matplotlib.figure import Figure

    assert isinstance(res.plot(), Figure)
    assert "data:image/png;base64," in res._repr_html_()


def test_html_escapes_every_label(vit, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(folder / "<script>alert(1)<b>.png")  # no '/' in file names
    res = visionlens.run(
        "activation_stats",
        vit,
        str(folder),
        hooks=["blocks.0.hook_resid_post"],
        top_k=1,
        figure_units=1,
        figure_examples=1,
    )
    assert "<script>alert(1)<b>.png" in res.tables["units"].rows[0][7]
    custom = Result(
        "x<script>",
        summary="<b>bold</b>",
        config={"<k>": "<v>"},
        meta={"model": "<script>m"},
        tables={"t": Table(["<col>"], [["<script>alert(2)</script>"]], title="<i>t</i>")},
    )
    for r, name in ((res, "a"), (custom, "b")):
        page = (r.save(tmp_path / name) / "index.html").read_text()
        assert "<script" not in page.lower()
        assert "&lt;script&gt;" in page
    assert "<b>bold" not in page and "<col>" not in page and "&lt;i&gt;t&lt;/i&gt;" in page


def test_checkpoint_resume_after_interruption(vit, images32, tmp_path):
    ck = tmp_path / "sweep.ck"
    kw = dict(hooks=["blocks.1.hook_resid_post", "blocks.2.mlp.hook_post"], top_k=3, batch_size=2)
    full = visionlens.run("activation_stats", vit, images32, **kw)

    class Interrupted(TensorImages):
        def batches(self, model, batch_size=16, start=0, limit=None):
            for j, item in enumerate(super().batches(model, batch_size, start, limit)):
                if j == 3:
                    raise KeyboardInterrupt
                yield item

    with pytest.raises(KeyboardInterrupt):
        visionlens.run("activation_stats", vit, Interrupted(images32), checkpoint=str(ck), checkpoint_every=1, **kw)
    no_hooks_left(vit)
    assert ck.exists() and [p.name for p in tmp_path.iterdir()] == ["sweep.ck"]
    from visionlens.reducers import load_checkpoint

    assert load_checkpoint(ck)[1]["next_index"] == 6  # three batches of two were saved
    resumed = visionlens.run("activation_stats", vit, images32, checkpoint=str(ck), **kw)
    for name, t in full.tensors.items():
        if name.startswith("figure/"):
            continue
        if t.is_floating_point():
            torch.testing.assert_close(resumed.tensors[name], t, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(resumed.tensors[name], t), name
    assert resumed.meta["n_images"] == 10
    with pytest.raises(visionlens.VisionLensError, match="different run"):
        visionlens.run("activation_stats", vit, images32, checkpoint=str(ck), **dict(kw, top_k=4))


# ----------------------------------------------------------------------------- plugins
def _install_example(target: Path, tmp_path: Path) -> None:
    src = tmp_path / "example-src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def test_example_plugin_discovered_through_entry_point(vit, tmp_path, restore_registry):
    site = tmp_path / "site"
    _install_example(site, tmp_path)
    if importlib.util.find_spec("visionlens_example_plugin") is None:  # not already pip-installed here
        assert "mean_attention_distance" not in visionlens.list_analyses()
    sys.path.insert(0, str(site))
    registry.plugin_manager(reload=True)
    assert "mean_attention_distance" in visionlens.list_analyses()
    assert registry.analysis_origin("mean_attention_distance") == "mean_attention_distance"
    assert visionlens.plugin_errors() == {}
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 32, 32, generator=g)
    res = vit.analyze("mean_attention_distance", x, batch_size=2)
    assert res.tensors["mean_distance"].shape == (12, 3)
    # direct computation: grid 2x2 of 16 px patches, CLS dropped and attention renormalised over patches
    with torch.no_grad():
        _, cache = vit.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    ys, xs = torch.meshgrid(torch.arange(2) * 16.0, torch.arange(2) * 16.0, indexing="ij")
    c = torch.stack([ys.flatten(), xs.flatten()], -1)
    dist = torch.cdist(c, c)
    for layer in (0, 7):
        p = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 1:, 1:]
        p = p / p.sum(-1, keepdim=True)
        expected = (p * dist).sum(-1).mean(-1).mean(0)
        torch.testing.assert_close(res.tensors["mean_distance"][layer], expected, rtol=0, atol=1e-4)
    assert (res.save(tmp_path / "mad") / "index.html").exists()
    # supports() refuses conv nets with its reason
    conv = visionlens.HookedVisionModel.from_module(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), adapter="generic")
    with pytest.raises(visionlens.VisionLensError, match="needs attention patterns"):
        visionlens.run("mean_attention_distance", conv, torch.randn(1, 3, 8, 8))
    no_hooks_left(vit)


def _fake_dist(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[visionlens]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for name, code in modules.items():
        (site / f"{name}.py").write_text(textwrap.dedent(code))


BROKEN_MODULES = {
    "vl_test_raises": "raise ImportError('vl_test_raises needs a library that is not installed')\n",
    "vl_test_hook_raises": """
        from visionlens import hookimpl

        @hookimpl
        def visionlens_register_analyses():
            raise RuntimeError('registration exploded')
    """,
    "vl_test_malformed": """
        from visionlens import hookimpl

        class Dup:
            name = 'activation_stats'
            summary = 'tries to shadow the built-in'
            def supports(self, model):
                return True, ''
            def run(self, model, inputs, config):
                return None

        @hookimpl
        def visionlens_register_analyses():
            return [object(), Dup]
    """,
    "vl_test_leaky": """
        from visionlens import hookimpl
        from visionlens.analysis import Analysis

        class Leaky(Analysis):
            name = 'leaky'
            summary = 'attaches hooks and then fails'

            def run(self, model, inputs, config):
                model.add_hook('blocks.0.hook_resid_post', lambda t, hook: None)
                model.add_hook('blocks.1.attn.hook_pattern', lambda t, hook: None)
                raise RuntimeError('analysis failed halfway')

        @hookimpl
        def visionlens_register_analyses():
            return [Leaky]
    """,
}


def test_broken_plugins_reported_by_name_others_keep_working(vit, tmp_path, restore_registry, capsys):
    site = tmp_path / "site"
    _fake_dist(
        site,
        "vl_test_dist",
        {
            "broken_import": "vl_test_raises",
            "broken_hook": "vl_test_hook_raises",
            "malformed": "vl_test_malformed",
            "leaky": "vl_test_leaky",
        },
        BROKEN_MODULES,
    )
    sys.path.insert(0, str(site))
    with pytest.warns(RuntimeWarning, match="broken_import"):
        registry.plugin_manager(reload=True)
    with pytest.warns(RuntimeWarning):
        errors = visionlens.plugin_errors()
    assert "vl_test_raises needs a library" in errors["broken_import"]
    assert "registration exploded" in errors["broken_hook"]
    assert "already provided by plugin 'activation_stats'" in errors["malformed"]
    assert set(errors) == {"broken_import", "broken_hook", "malformed"}
    from visionlens.registry import BUILTIN_PLUGINS, analysis_origin, builtin_plugin_name

    builtin_modules = {builtin_plugin_name(m) for m in BUILTIN_PLUGINS if m.startswith("visionlens.plugins.")}
    # every built-in analysis module still provides its analyses, and only the working third-party one joins them
    origins = {analysis_origin(n) for n in visionlens.list_analyses()}
    assert origins == builtin_modules | {"leaky"}  # a third-party plugin goes by its entry-point name
    assert "leaky" in visionlens.list_analyses()
    assert visionlens.get_analysis("activation_stats").summary.startswith("Per-unit")
    res = visionlens.run("activation_stats", vit, torch.randn(2, 3, 32, 32), hooks=["blocks.0.hook_resid_post"])
    assert res.stats("blocks.0.hook_resid_post")["mean"].shape == (192,)

    from visionlens.cli import main

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "activation_stats" in out and "leaky" in out
    assert "broken_import: failed to import vl_test_raises" in out and "broken_hook:" in out

    # a failing analysis leaves no hook behind, but the user's own hooks stay
    mine = []
    vit.add_hook("blocks.2.hook_resid_post", lambda t, hook: mine.append(1))
    with pytest.raises(RuntimeError, match="halfway"):
        visionlens.run("leaky", vit, None)
    assert len(vit.hook_dict["blocks.2.hook_resid_post"].fwd_hooks) == 1
    assert not vit.hook_dict["blocks.0.hook_resid_post"].fwd_hooks
    assert not vit.hook_dict["blocks.1.attn.hook_pattern"].fwd_hooks
    vit(torch.randn(1, 3, 32, 32))
    assert mine == [1]
    vit.reset_hooks()
    no_hooks_left(vit)


@needs_chromium
def test_html_renders_in_headless_chromium(vit, tmp_path):
    res = visionlens.run(
        "activation_stats",
        vit,
        "builtin",
        hooks=["blocks.0.hook_resid_post"],
        top_k=2,
        max_images=4,
        figure_units=2,
        figure_examples=2,
    )
    page = res.save(tmp_path / "out") / "index.html"
    shot = tmp_path / "shot.png"
    run_chromium(f"--screenshot={shot}", "--window-size=1200,900", page.resolve().as_uri(), check=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.std() > 10  # text, tables and figures rendered (not a blank page)
    assert (img < 128).mean() > 0.01
