"""The error catalogue: bad input -> one clear message naming what was expected (and the fix).

Every case runs offline with the network blocked (a network attempt fails the case), against a
private torch hub dir holding only the ``IMAGENET1K_V1`` MobileNetV2 file name and an empty
Hugging Face cache, so the messages do not depend on what this machine has cached. Hook cases also
check that no hook is left attached afterwards.
"""

from __future__ import annotations

import re
import socket
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

import visionlens
import visionlens.cache
from tests.conftest import no_hooks_left, tiny_vit
from visionlens import HookedVisionModel, VisionLensError
from visionlens.cli import main
from visionlens.validation import unknown_cache_key

V1_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
VIT = "timm:vit_tiny_patch16_224"


def _no_network(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("network attempt")


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any network attempt fail loudly (what an offline machine does, minus the long timeout)."""
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    monkeypatch.setattr(torch.hub, "urlopen", _no_network, raising=False)


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private torch hub dir with only the V1 MobileNetV2 file name, an empty HF cache, no network."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    (hub / "checkpoints" / V1_FILE).write_bytes(b"placeholder: only its name is looked at")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    hf = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("VISIONLENS_DOWNLOAD", raising=False)
    block_network(monkeypatch)
    return tmp_path


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture(scope="module")
def vit() -> HookedVisionModel:
    return tiny_vit(num_classes=10)


@pytest.fixture(scope="module")
def tinynet() -> HookedVisionModel:
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="generic adapter"):
        return HookedVisionModel.from_module(TinyNet().eval())


@dataclass
class Ctx:
    tmp: Path
    vit: HookedVisionModel
    tinynet: HookedVisionModel
    capsys: Any


def _file(ctx: Ctx, name: str, data: bytes) -> str:
    path = ctx.tmp / name
    path.write_bytes(data)
    return str(path)


def _truncated_torch(ctx: Ctx) -> str:
    path = ctx.tmp / "truncated.pth"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    return str(path)


def _pickled(ctx: Ctx) -> str:
    path = ctx.tmp / "pickled.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "cls": TinyNet}, path)
    return str(path)


def _resnet18_weights() -> Any:
    import torchvision

    return torchvision.models.ResNet18_Weights.IMAGENET1K_V1


def _mobilenet_sd(prefix: str = "", num_classes: int = 1000) -> dict[str, torch.Tensor]:
    import torchvision

    sd = torchvision.models.mobilenet_v2(num_classes=num_classes).state_dict()
    return {prefix + k: v for k, v in sd.items()}


def _saved(ctx: Ctx, name: str, sd: dict[str, torch.Tensor]) -> str:
    from safetensors.torch import save_file

    path = ctx.tmp / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


def _cli(ctx: Ctx, argv: list[str]) -> None:
    """Run the CLI; raise its one error line (the last stderr line) as a VisionLensError."""
    ctx.capsys.readouterr()
    code = main(argv)
    lines = ctx.capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("visionlens: error: ")]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], lines
    raise VisionLensError(errors[0])


def _hook(model: HookedVisionModel, name: str, fn: Callable, how: str = "run_with_hooks") -> None:
    x = torch.randn(1, 3, 32, 32) if model.cfg.family == "vit" else torch.randn(1, 3, 16, 16)
    try:
        with torch.no_grad():
            if how == "run_with_hooks":
                model.run_with_hooks(x, fwd_hooks=[(name, fn)])
            elif how == "hooks":
                with model.hooks(fwd_hooks=[(name, fn)]):
                    model.run_with_cache(x)
            else:  # a permanent hook: the error still names it, the user removes it
                model.add_hook(name, fn)
                model(x)
    finally:
        if how == "add_hook":
            model.reset_hooks()


def _cache_key(ctx: Ctx, key: str, names_filter: Any = None) -> None:
    if not hasattr(visionlens.cache, "unknown_cache_key"):
        pytest.skip("needs VisionActivationCache.__getitem__ to raise validation.unknown_cache_key (cache.py)")
    with torch.no_grad():
        _, cache = ctx.vit.run_with_cache(torch.randn(1, 3, 32, 32), names_filter=names_filter)
    cache[key]


def _load(spec: str, **kw: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: visionlens.load(spec, **kw)


_WRONG = lambda t, hook: t[:, :1]  # noqa: E731


TV = "torchvision:mobilenet_v2"
DATA = torch.randn(2, 3, 32, 32)
CASES: list[tuple[str, Callable[[Ctx], Any], type, str]] = []


def case(name: str, exc: type, pattern: str, make: Callable[[Ctx], Any]) -> None:
    CASES.append((name, make, exc, pattern))


# ---------------------------------------------------------------------- loading: specs and names
case("spec_without_prefix", VisionLensError, r"Expected a model spec 'prefix:name'", _load("resnet50"))
case("spec_unknown_prefix", VisionLensError, r"Unknown model spec prefix 'nope'.*timm", _load("nope:resnet50"))
case("timm_typo", VisionLensError, r"timm model 'resnet5O'\. Similar timm names: resnet50", _load("timm:resnet5O"))
case("timm_far_typo", VisionLensError, r"Similar timm names: vit_tiny_patch16_224", _load(VIT + "4"))
case(
    "torchvision_typo",
    VisionLensError,
    r"torchvision model 'resnet5'\. Closest: resnet50",
    _load("torchvision:resnet5"),
)
case("open_clip_typo", VisionLensError, r"open_clip model 'ViT-B-3'\. Closest: ViT-B-32", _load("open_clip:ViT-B-3"))
case("diffusers_no_dir", FileNotFoundError, r"'\./no/such/unet' does not exist", _load("diffusers:./no/such/unet"))
case(
    "unknown_adapter",
    ValueError,
    r"Unknown adapter 'nosuch'\. Available adapters: .*resnet",
    _load("timm:resnet18", pretrained=False, adapter="nosuch"),
)
case("weights_twice", VisionLensError, r"Pass the weights once", _load(TV, pretrained=True, weights="DEFAULT"))
case(
    "weights_and_checkpoint",
    VisionLensError,
    r"checkpoint_path='x\.pth' or pretrained/weights=True, not both",
    _load("timm:resnet18", pretrained=True, checkpoint_path="x.pth"),
)
# ---------------------------------------------------------------------- weights: tags, offline availability
case(
    "tv_unknown_tag",
    VisionLensError,
    r"Unknown weights 'IMAGENET1K_V3' .*Weights tags: IMAGENET1K_V1, IMAGENET1K_V2 \(or 'DEFAULT' = IMAGENET1K_V2\)",
    _load(TV, weights="IMAGENET1K_V3"),
)
case(
    "tv_default_not_installed",
    VisionLensError,
    r"IMAGENET1K_V2 \(the DEFAULT weights of mobilenet_v2\) is not available offline .*"
    r"installed: IMAGENET1K_V1 \(mobilenet_v2-b0353104\.pth\)\. Use weights='IMAGENET1K_V1' \(different weights",
    _load(TV, weights="DEFAULT"),
)
case(
    "tv_pretrained_true_not_installed",
    VisionLensError,
    r"IMAGENET1K_V2 \(the DEFAULT weights.*installed: IMAGENET1K_V1.*download=True",
    _load(TV, pretrained=True),
)
case(
    "tv_tag_not_installed",
    VisionLensError,
    r"^IMAGENET1K_V2 is not available offline .*Use weights='IMAGENET1K_V1'\.",
    _load(TV, weights="IMAGENET1K_V2"),
)
case(
    "tv_nothing_installed",
    VisionLensError,
    r"IMAGENET1K_V1 is not available offline .*installed: none\. To fetch",
    _load("torchvision:resnet18", weights="IMAGENET1K_V1"),
)
case(
    "tv_enum_of_other_model",
    VisionLensError,
    r"weights for another model; mobilenet_v2 takes MobileNet_V2_Weights: IMAGENET1K_V1, IMAGENET1K_V2",
    lambda ctx: HookedVisionModel.from_torchvision("mobilenet_v2", weights=_resnet18_weights()),
)
case(
    "tv_weights_wrong_type",
    VisionLensError,
    r"Expected weights as a MobileNet_V2_Weights member, a tag",
    _load(TV, weights=3.5),
)
case(
    "timm_pretrained_not_cached",
    VisionLensError,
    r"timm resnet18\.a1_in1k pretrained weights are not available offline.*checkpoint_path=",
    _load("timm:resnet18", pretrained=True),
)
case(
    "timm_unknown_tag",
    VisionLensError,
    r"Unknown pretrained tag 'nope' for timm resnet18\. Tags: a1_in1k, .*tv_in1k",
    _load("timm:resnet18.nope", pretrained=True),
)
case(
    "timm_unknown_tag_arg",
    VisionLensError,
    r"Unknown pretrained tag 'nope' for timm resnet18",
    _load("timm:resnet18", pretrained="nope"),
)
# ---------------------------------------------------------------------- checkpoints
case(
    "ckpt_missing",
    FileNotFoundError,
    r"none\.pth' does not exist",
    lambda ctx: visionlens.load("timm:resnet18", checkpoint_path=str(ctx.tmp / "none.pth")),
)
case(
    "ckpt_corrupt_safetensors",
    VisionLensError,
    r"bad\.safetensors' is not a valid safetensors file \(truncated or corrupt\?\)",
    lambda ctx: visionlens.load("timm:resnet18", checkpoint_path=_file(ctx, "bad.safetensors", b"\xff" * 64)),
)
case(
    "ckpt_truncated_torch",
    VisionLensError,
    r"truncated\.pth' is not a valid torch file \(truncated or corrupt\?\)",
    lambda ctx: visionlens.load(TV, weights=_truncated_torch(ctx)),
)
case(
    "ckpt_pickled_objects",
    VisionLensError,
    r"holds Python objects besides tensors.*weights_only=True",
    lambda ctx: visionlens.load(TV, weights=_pickled(ctx)),
)
case(
    "ckpt_prefixed_keys",
    VisionLensError,
    r"does not fit MobileNetV2: (\d+) missing keys, \1 unexpected keys.*"
    r"features\.0\.0\.weight <-> model\.features\.0\.0\.weight.*extra prefix 'model\.'.*strict=False",
    lambda ctx: visionlens.load(TV, weights=_saved(ctx, "prefixed.safetensors", _mobilenet_sd("model."))),
)
case(
    "ckpt_other_head",
    VisionLensError,
    r"0 missing keys, 0 unexpected keys, 2 with a different shape.*"
    r"classifier\.1\.weight: \[10, 1280\] vs \[1000, 1280\].*num_classes=10",
    lambda ctx: visionlens.load(TV, weights=_saved(ctx, "head10.safetensors", _mobilenet_sd(num_classes=10))),
)
case(
    "ckpt_partial_keys",
    VisionLensError,
    r"2 missing keys, 0 unexpected keys.*Missing \(first\): classifier\.1\.weight.*strict=False",
    lambda ctx: visionlens.load(TV, weights=_saved(ctx, "part.safetensors", dict(list(_mobilenet_sd().items())[:-2]))),
)
# ---------------------------------------------------------------------- preprocess and inputs
case(
    "preprocess_missing_file",
    VisionLensError,
    r"Image file '.*cat\.jpg' does not exist",
    lambda ctx: ctx.vit.preprocess([str(ctx.tmp / "cat.jpg")]),
)
case(
    "preprocess_folder",
    VisionLensError,
    r"is a folder, not an image file",
    lambda ctx: ctx.vit.preprocess(str(ctx.tmp)),
)
case(
    "preprocess_not_an_image",
    VisionLensError,
    r"Could not read image file '.*notes\.jpg' \(not an image, or corrupt\?\)",
    lambda ctx: ctx.vit.preprocess(_file(ctx, "notes.jpg", b"hello")),
)
case(
    "preprocess_bad_array",
    VisionLensError,
    r"Expected an HxW or HxWxC image array, got shape \(4, 4, 7\)",
    lambda ctx: ctx.vit.preprocess(np.zeros((4, 4, 7))),
)
case(
    "preprocess_float_range",
    VisionLensError,
    r"float image arrays in \[0, 1\]",
    lambda ctx: ctx.vit.preprocess(np.full((8, 8, 3), 5.0)),
)
case(
    "preprocess_bad_type",
    VisionLensError,
    r"Expected a PIL image, a path or an array, got object",
    lambda ctx: ctx.vit.preprocess(object()),
)
case(
    "input_unbatched",
    VisionLensError,
    r"Add a batch dimension with `x\.unsqueeze\(0\)`",
    lambda ctx: ctx.vit(torch.randn(3, 32, 32)),
)
# ---------------------------------------------------------------------- hooks (and none left attached)
case(
    "hook_wrong_shape_inline",
    VisionLensError,
    r"A hook on 'blocks\.0\.hook_resid_post' returned a tensor of shape \(1, 1, 192\), "
    r"but 'blocks\.0\.hook_resid_post' has shape \(1, 5, 192\)",
    lambda ctx: _hook(ctx.vit, "blocks.0.hook_resid_post", _WRONG),
)
case(
    "hook_wrong_shape_bridged",
    VisionLensError,
    r"A hook on 'conv\.hook_out' returned a tensor of shape \(1, 1, 16, 16\), "
    r"but 'conv\.hook_out' has shape \(1, 4, 16, 16\)",
    lambda ctx: _hook(ctx.tinynet, "conv.hook_out", _WRONG),
)
case(
    "hook_wrong_shape_in_cache_run",
    VisionLensError,
    r"'blocks\.1\.attn\.hook_pattern' returned a tensor of shape \(3, 5, 5\).*has shape \(1, 3, 5, 5\)",
    lambda ctx: _hook(ctx.vit, "blocks.1.attn.hook_pattern", lambda t, hook: t[0], how="hooks"),
)
case(
    "hook_wrong_shape_permanent",
    VisionLensError,
    r"'fc\.hook_out' returned a tensor of shape \(3, 1\).*has shape \(1, 3\)",
    lambda ctx: _hook(ctx.tinynet, "fc.hook_out", lambda t, hook: t.T, how="add_hook"),
)
case(
    "hook_returns_tuple",
    VisionLensError,
    r"A hook on 'hook_embed' returned tuple.*or None to keep it",
    lambda ctx: _hook(ctx.vit, "hook_embed", lambda t, hook: (t, t)),
)
case(
    "hook_unknown_name",
    KeyError,
    r"Unknown hook name 'blocks\.0\.hook_resid_pst'\. Closest real names: blocks\.0\.hook_resid_post",
    lambda ctx: _hook(ctx.vit, "blocks.0.hook_resid_pst", lambda t, hook: t),
)
# ---------------------------------------------------------------------- cache
case(
    "cache_typo",
    KeyError,
    r"'blocks\.0\.hook_resid_pst' is not in the cache .*Closest cached names: blocks\.0\.hook_resid_post",
    lambda ctx: _cache_key(ctx, "blocks.0.hook_resid_pst"),
)
case(
    "cache_filtered_out",
    KeyError,
    r"names_filter left it out",
    lambda ctx: _cache_key(ctx, "blocks.1.hook_resid_post", ["blocks.0.hook_resid_post"]),
)
# ---------------------------------------------------------------------- the source's methods
case(
    "method_missing_everywhere",
    AttributeError,
    r"'HookedVisionModel' wrapping timm VisionTransformer has no attribute 'foo' \(neither has the source "
    r"module\)\. Methods run through the hooks: forward_features, forward_head",
    lambda ctx: ctx.vit.foo,
)
case(
    "method_not_offered",
    AttributeError,
    r"does not offer 'get_classifier'.*model\.source\.get_classifier \(unhooked\)",
    lambda ctx: ctx.vit.get_classifier,
)
case(
    "method_bad_input",
    VisionLensError,
    r"looks channels-last",
    lambda ctx: ctx.vit.forward_features(torch.randn(1, 32, 32, 3)),
)
# ---------------------------------------------------------------------- CLI (one error line)
case(
    "cli_timm_typo",
    VisionLensError,
    r"^visionlens: error: Unknown timm model 'resnet5O'\. Similar timm names: resnet50",
    lambda ctx: _cli(ctx, ["hooks", "timm:resnet5O"]),
)
case(
    "cli_unknown_tag",
    VisionLensError,
    r"Weights tags: IMAGENET1K_V1, IMAGENET1K_V2",
    lambda ctx: _cli(ctx, ["hooks", TV, "--pretrained", "IMAGENET1K_V3"]),
)
case(
    "cli_default_offline",
    VisionLensError,
    r"not available offline.*installed: IMAGENET1K_V1",
    lambda ctx: _cli(ctx, ["hooks", TV, "--pretrained", "DEFAULT"]),
)
case(
    "cli_corrupt_checkpoint",
    VisionLensError,
    r"c\.safetensors' is not a valid safetensors file \(truncated or corrupt\?\)",
    lambda ctx: _cli(ctx, ["hooks", VIT, "--pretrained", _file(ctx, "c.safetensors", b"\x00" * 3)]),
)
case(
    "cli_timm_offline",
    VisionLensError,
    r"not available offline.*checkpoint_path=",
    lambda ctx: _cli(ctx, ["hooks", "timm:resnet18", "--pretrained", "true"]),
)
case(
    "cli_model_arg",
    VisionLensError,
    r"Expected --model-arg KEY=VALUE, got 'img_size'",
    lambda ctx: _cli(ctx, ["hooks", VIT, "--model-arg", "img_size"]),
)
# ---------------------------------------------------------------------- analyses config
case(
    "config_unknown_key",
    VisionLensError,
    r"unknown config key 'topk'\. Did you mean 'top_k'\?",
    lambda ctx: visionlens.run("activation_stats", ctx.vit, DATA, topk=3),
)
case(
    "config_out_of_range",
    VisionLensError,
    r"'top_k' expected a value in \[1, 100000\], got 0",
    lambda ctx: visionlens.run("activation_stats", ctx.vit, DATA, top_k=0),
)
case(
    "config_no_hook_matched",
    VisionLensError,
    r"matched no hook",
    lambda ctx: visionlens.run("activation_stats", ctx.vit, DATA, hooks=["nothing.*"]),
)
case(
    "config_unknown_analysis",
    VisionLensError,
    r"Unknown analysis 'activaton_stats'.*activation_stats",
    lambda ctx: visionlens.run("activaton_stats", ctx.vit, None),
)


def test_catalogue_is_big_enough():
    assert len(CASES) >= 40
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.filterwarnings("ignore::visionlens.validation.RandomWeightsWarning")
@pytest.mark.parametrize("make, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_the_fix(make, exc, pattern, offline, vit, tinynet, capsys):
    ctx = Ctx(tmp=offline, vit=vit, tinynet=tinynet, capsys=capsys)
    with pytest.raises(exc) as info:
        make(ctx)
    message = str(info.value)
    assert re.search(pattern, message, flags=re.S), message
    assert "Traceback" not in message
    for model in (vit, tinynet):  # a failing hook or run leaves nothing attached
        no_hooks_left(model)


def test_unknown_cache_key_helper():
    err = unknown_cache_key("blocks.0.hook_resid_pst", ["blocks.0.hook_resid_post", "hook_logits"])
    assert isinstance(err, KeyError) and isinstance(err, VisionLensError)
    assert "Closest cached names: blocks.0.hook_resid_post" in str(err)
    err = unknown_cache_key("hook_logits", ["hook_embed"], hook_names=["hook_embed", "hook_logits"])
    assert "names_filter left it out" in str(err)


# ---------------------------------------------------------------------------------------- weights that load
def test_strict_false_loads_a_partial_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(0)
    src = torchvision.models.mobilenet_v2(num_classes=5).eval()
    sd = {k: v for k, v in src.state_dict().items() if not k.startswith("classifier")}
    path = tmp_path / "backbone.pth"
    torch.save(sd, path)
    with pytest.warns(UserWarning, match="2 model keys were not in"):
        model = visionlens.load("torchvision:mobilenet_v2", weights=str(path), num_classes=5, strict=False)
    assert torch.equal(model.source.features[0][0].weight, src.features[0][0].weight)


def test_random_weights_say_so(capsys):
    with pytest.warns(visionlens.validation.RandomWeightsWarning, match="random weights; pass pretrained=True"):
        model = visionlens.load(VIT, img_size=32)
    assert model.cfg.extra["weights"] == "random" and model.class_names is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", visionlens.validation.RandomWeightsWarning)
        visionlens.load(VIT, img_size=32, pretrained=False)  # asked for explicitly: no warning
    assert main(["hooks", VIT, "--model-arg", "img_size=32", "--filter", "hook_logits"]) == 0
    err = capsys.readouterr().err
    assert "visionlens: WARNING: timm:vit_tiny_patch16_224 has RANDOM weights" in err


def test_train_mode_warns_and_is_kept():
    src = TinyNet()
    with pytest.warns(UserWarning, match="TinyNet is in train mode"):
        model = HookedVisionModel.from_module(src)
    assert model.training and src.training
