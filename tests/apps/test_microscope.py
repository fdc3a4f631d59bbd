"""Microscope: static site, links / images resolve, escaped labels, CLI glue, headless Chromium."""

import argparse
import json
import warnings
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
from torch import nn

import visionlens
from tests.conftest import needs_chromium, run_chromium, tiny_resnet
from visionlens.microscope import add_microscope_subcommand, build_microscope, run_microscope_command


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if (tag == "a" and k == "href") or (tag == "img" and k == "src") or (tag == "link" and k == "href"):
                self.refs.append((tag, v))


def _check_site(root: Path) -> tuple[int, int]:
    pages = list(root.rglob("*.html"))
    n_refs = 0
    for page in pages:
        p = _Links()
        p.feed(page.read_text(encoding="utf-8"))
        for tag, ref in p.refs:
            u = urlparse(ref)
            assert not u.scheme and not u.netloc, f"{page}: non-relative link {ref!r}"
            target = (page.parent / unquote(u.path)).resolve()
            assert target.is_file(), f"{page}: {ref!r} does not resolve"
            assert root.resolve() in target.parents
            if tag == "img":
                from PIL import Image

                with Image.open(target) as im:
                    im.verify()
            n_refs += 1
    return len(pages), n_refs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    r = tiny_resnet()
    r.cfg.image_size = (48, 48)
    build_microscope(
        r,
        ["layer2", "layer3"],
        visionlens.data.builtin_photos(limit=8),
        out,
        units_per_layer=3,
        fv_steps=3,
        batch_size=4,
        top_k=4,
        bottom_k=2,
        title='<b>resnet</b> & "friends"',
    )
    return out


def test_site_structure_and_links(site):
    info = json.loads((site / "site.json").read_text())
    assert info["layers"] == ["layer2.hook_out", "layer3.hook_out"] and info["units"]["layer3.hook_out"] == [0, 1, 2]
    n_pages, n_refs = _check_site(site)
    assert n_pages == 1 + 2 * (1 + 3) and n_refs > 30
    unit = (site / "layers" / "layer3.hook_out" / "unit_1.html").read_text()
    assert "Top inputs from layer2.hook_out" in unit
    assert 'src="img/fv_1.png"' in unit and 'src="img/ex_1.png"' in unit
    unit2 = (site / "layers" / "layer2.hook_out" / "unit_0.html").read_text()
    assert "Top outputs to layer3.hook_out" in unit2
    index = (site / "index.html").read_text()
    assert "<b>resnet</b>" not in index and "&lt;b&gt;resnet&lt;/b&gt; &amp; &quot;friends&quot;" in index
    assert "<script" not in index and "http" not in index.replace("http-equiv", "")


def test_conv_net_site_with_weight_pictures(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = visionlens.HookedVisionModel.from_module(net)
    x = torch.rand(6, 3, 24, 24)
    out = build_microscope(m, ["0", "2"], x, tmp_path / "s", units_per_layer=8, fv_steps=0, fv_size=24)
    _check_site(out)
    page = (out / "layers" / "2.hook_out" / "unit_3.html").read_text()
    assert 'src="img/w_3.png"' in page
    # expanded weights between adjacent convs through a (linearized) ReLU: sum of the kernel
    from visionlens import weights as vw

    top = vw.top_connections(vw.expanded_weights(m, "0", "2", image_size=24).matrix, 3, 5)
    assert f'href="../0.hook_out/unit_{top[0][0]}.html"' in page


def test_cli_glue(tmp_path, capsys):
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    add_microscope_subcommand(sub)
    img = tmp_path / "imgs"
    img.mkdir()
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(img / f"{i}.png")
    args = p.parse_args(
        [
            "microscope",
            "--model",
            "timm:resnet18",
            "--layers",
            "layer1,layer2",
            "--images",
            str(img),
            "--out",
            str(tmp_path / "out"),
            "--units-per-layer",
            "2",
            "--fv-steps",
            "2",
            "--image-size",
            "32",
            "--batch-size",
            "2",
        ]
    )
    assert run_microscope_command(args) == 0
    assert "microscope: wrote 7 pages" in capsys.readouterr().out
    _check_site(tmp_path / "out")


@needs_chromium
def test_pages_render_in_chromium(site, tmp_path):
    unit = site / "layers" / "layer3.hook_out" / "unit_1.html"
    res = run_chromium("--dump-dom", unit.as_uri(), user_dir=tmp_path / "u1")
    assert "layer3.hook_out : unit 1" in res.stdout and "Dataset examples" in res.stdout
    res = run_chromium("--dump-dom", (site / "index.html").as_uri(), user_dir=tmp_path / "u2")
    assert "layer2.hook_out" in res.stdout
    shot = tmp_path / "shot.png"
    run_chromium("--screenshot=" + str(shot), "--window-size=800,700", unit.as_uri(), user_dir=tmp_path / "u3")
    from PIL import Image

    arr = np.asarray(Image.open(shot).convert("RGB"))
    # the dataset-example crops (real photos) are drawn: many distinct colours, not just text on white
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 500
    # every image of every page loads in the browser (naturalWidth > 0), checked by a harness page
    imgs = sorted(str(p.relative_to(site)) for p in site.rglob("*.png"))
    harness = site / "_harness.html"
    harness.write_text(
        "<!DOCTYPE html><html><body><div id=r>pending</div>"
        + "".join(f'<img src="{p}">' for p in imgs)
        + "<script>window.onload=function(){var bad=[];for(const i of document.images)"
        "{if(!i.complete||i.naturalWidth===0)bad.push(i.src)};"
        "document.getElementById('r').textContent='loaded:'+document.images.length+' bad:'+bad.length;};"
        "</script></body></html>"
    )
    try:
        res = run_chromium("--virtual-time-budget=5000", "--dump-dom", harness.as_uri(), user_dir=tmp_path / "u4")
    finally:
        harness.unlink()
    assert f"loaded:{len(imgs)} bad:0" in res.stdout
