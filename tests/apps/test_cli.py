"""The `visionlens` command: models, hooks, plugins, run; one-line errors; same numbers as the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import visionlens
from tests.conftest import run_args
from visionlens.cli import main

VIT = "timm:vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def vit_ckpt(tmp_path_factory):
    """A ViT-tiny at 32 px with fixed random weights, and its local checkpoint (what --pretrained takes)."""
    torch.manual_seed(0)
    model = visionlens.load(VIT, img_size=32)
    path = tmp_path_factory.mktemp("ckpt") / "vit32.safetensors"
    save_file({k: v.contiguous() for k, v in model.source.state_dict().items()}, str(path))
    return model, path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (36, 36 + 4 * i, 3), dtype=np.uint8)).save(d / f"p{i}.jpg")
    return d


def _err_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    # a random-weights model is announced on its own line before any error; the error is one line
    err = "\n".join(line for line in lines if not line.startswith("visionlens: WARNING:"))
    assert len(err.splitlines()) == 1, err
    assert err.startswith("visionlens: error: ")
    return err


@pytest.mark.parametrize(
    "argv", [["--help"], ["models", "--help"], ["hooks", "--help"], ["plugins", "--help"], ["run", "--help"]]
)
def test_help(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: visionlens")


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for text in ("timm:", "torchvision:", "timm:vit_tiny_patch16_224", "generic", "timm_vit"):
        assert text in out
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"timm", "torchvision"} <= {p["prefix"] for p in data["prefixes"] if p["available"]}
    assert "generic" in {a["name"] for a in data["adapters"]}


def test_hooks_table_and_json(capsys):
    assert main(["hooks", VIT, "--image-size", "32", "--filter", "blocks.0.*"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split(None, 1)[1] for ln in out.splitlines()[1:-1]}
    assert lines["blocks.0.attn.hook_pattern"] == "[1, 3, 5, 5]"  # 2x2 patches + CLS at 32 px
    assert lines["blocks.0.mlp.hook_post"] == "[1, 5, 768]"
    assert main(["hooks", "timm:resnet18", "--image-size", "64", "--json"]) == 0
    shapes = json.loads(capsys.readouterr().out)
    assert shapes["stages.0.blocks.0.hook_resid_post"] == [1, 64, 16, 16]
    assert shapes["layer4.1.conv2.hook_out"] == [1, 512, 2, 2]


def test_plugins_lists_analyses(capsys):
    assert main(["plugins", "-v"]) == 0
    out = capsys.readouterr().out
    assert "activation_stats" in out and "Per-unit mean" in out
    assert "top_k" in out and "default=8" in out
    assert main(["plugins", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "activation_stats" in [a["name"] for a in data["analyses"]]


def test_run_api_analyze_and_cli_agree(vit_ckpt, folder, tmp_path, capsys):
    model, ckpt = vit_ckpt
    hooks = "blocks.2.hook_resid_post,blocks.*.mlp.hook_post"
    api = visionlens.run("activation_stats", model, str(folder), hooks=hooks.split(","), top_k=3, batch_size=3)
    meth = model.analyze("activation_stats", str(folder), hooks=hooks.split(","), top_k=3, batch_size=3)
    out = tmp_path / "cli"
    rc = main(
        run_args(
            "activation_stats", folder, out, f"hooks={hooks}", "top_k=3", "batch_size=2", model=VIT, pretrained=ckpt
        )
    )
    assert rc == 0, capsys.readouterr().err
    assert f"wrote {out}" in capsys.readouterr().out
    cli = load_file(str(out / "tensors.safetensors"))
    assert set(cli) == set(api.tensors)
    for name, t in api.tensors.items():
        for other in (meth.tensors[name], cli[name]):
            if t.is_floating_point() and not name.startswith("figure/"):
                torch.testing.assert_close(other, t, rtol=0, atol=1e-5, msg=name)
            else:
                assert torch.equal(other, t), name
    saved = json.loads((out / "result.json").read_text())
    assert saved["config"]["top_k"] == 3 and saved["meta"]["n_images"] == 4
    assert saved["tables"]["units"]["rows"][0][:2] == api.tables["units"].rows[0][:2]


def test_run_builtin_images(vit_ckpt, tmp_path, capsys):
    _, ckpt = vit_ckpt
    rc = main(
        [
            "run",
            "activation_stats",
            "--model",
            VIT,
            "--pretrained",
            str(ckpt),
            "--image-size",
            "32",
            "--images",
            "builtin",
            "--out",
            str(tmp_path),
            "--set",
            "max_images=3",
            "--set",
            "hooks=blocks.11.hook_resid_post",
            "--set",
            "figure_units=1",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "result.json").read_text())["meta"]
    assert meta["n_images"] == 3 and meta["image_names"][0] == "skimage:astronaut"
    assert {"index.html", "overview.png", "top_units.png"} <= set(os.listdir(tmp_path))


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["run", "nope", "--model", VIT, "--images", "builtin", "--out", "x"], "Unknown analysis 'nope'"),
        (
            ["run", "activation_stats", "--model", VIT, "--images", "builtin", "--out", "x", "--set", "top_k=0"],
            r"'top_k' expected a value in \[1, 100000\], got 0",
        ),
        (
            ["run", "activation_stats", "--model", VIT, "--images", "builtin", "--out", "x", "--set", "top_k=lots"],
            "'top_k' expected an integer, got 'lots'",
        ),
        (
            ["run", "activation_stats", "--model", VIT, "--images", "builtin", "--out", "x", "--set", "topk=2"],
            "unknown config key 'topk'. Did you mean 'top_k'",
        ),
        (
            ["run", "activation_stats", "--model", VIT, "--images", "/no/such/dir", "--out", "x"],
            "No such image file or folder: '/no/such/dir'",
        ),
        (
            ["run", "activation_stats", "--model", "resnet18", "--images", "builtin", "--out", "x"],
            "Expected a model spec 'prefix:name'",
        ),
        (
            ["run", "activation_stats", "--model", "nosuch:resnet18", "--images", "builtin", "--out", "x"],
            "Unknown model spec prefix 'nosuch'",
        ),
        (["hooks", "timm:not_a_model_xyz"], "Unknown timm model 'not_a_model_xyz'"),
        (["hooks", VIT, "--model-arg", "img_size=32", "--image-size", "48"], "takes 32x32 images only"),
        (
            [
                "run",
                "activation_stats",
                "--model",
                VIT,
                "--image-size",
                "32",
                "--images",
                "builtin",
                "--out",
                "x",
                "--set",
                "hooks=blocks.0.hook_resid_postt",
            ],
            "Closest real names: blocks.0.hook_resid_post",
        ),
    ],
)
def test_bad_input_one_line_error(argv, pattern, capsys, tmp_path, monkeypatch):
    import re

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert re.search(pattern, _err_line(capsys))
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "activation_stats", "--images", "builtin", "--out", "x"],
        ["hooks", VIT, "--image-size", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("visionlens") and "error:" in err[-1]


def test_real_subprocess(vit_ckpt, folder, tmp_path):
    model, ckpt = vit_ckpt
    exe = Path(sys.executable).with_name("visionlens")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "visionlens.cli"]
    out = tmp_path / "sub"
    proc = subprocess.run(
        cmd
        + run_args(
            "activation_stats", folder, out, "hooks=blocks.5.hook_resid_post", "top_k=2", model=VIT, pretrained=ckpt
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    api = visionlens.run("activation_stats", model, str(folder), hooks=["blocks.5.hook_resid_post"], top_k=2)
    cli = load_file(str(out / "tensors.safetensors"))
    torch.testing.assert_close(
        cli["blocks.5.hook_resid_post/mean"], api.tensors["blocks.5.hook_resid_post/mean"], rtol=0, atol=1e-5
    )
    assert torch.equal(cli["blocks.5.hook_resid_post/topk_index"], api.tensors["blocks.5.hook_resid_post/topk_index"])
