"""The plugin examples of docs/writing_plugins.md run and take effect.

Every fenced ``python`` block preceded by ``<!-- test: NAME -->`` is executed as a module, registered
with the plugin manager exactly as an installed plugin would be (and unregistered afterwards), and
checked through the public API: the analysis is listed and runs, the adapter is picked, the objective
prefix parses, the model spec loads, the technique joins the transfer table, the command runs.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import types
import warnings
from pathlib import Path
from typing import Iterator

import pytest
import torch
from safetensors.torch import save_file

import visionlens
import visionlens.featurevis as fv
from tests.conftest import image_batch, no_hooks_left, tiny_vit
from visionlens import HookedVisionModel, VisionLensError, cli, hookspecs, registry
from visionlens.adapters import available_adapters
from visionlens.analysis import ConfigError
from visionlens.hook_select import default_hooks
from visionlens.validation import RandomWeightsWarning

DOC = Path(__file__).resolve().parents[2] / "docs" / "writing_plugins.md"
BLOCK = re.compile(r"^<!-- test: (\w+) -->\n```python\n(.*?)^```$", re.M | re.S)
EXAMPLES = {"analysis", "adapter", "objective", "model_spec", "technique", "command"}
HOOK = "blocks.1.hook_resid_post"


def runnable_blocks() -> dict[str, tuple[int, str]]:
    """``{name: (first line number in the doc, code)}`` of the blocks marked runnable."""
    text = DOC.read_text()
    out: dict[str, tuple[int, str]] = {}
    for m in BLOCK.finditer(text):
        assert m.group(1) not in out, f"two runnable examples are named {m.group(1)!r}"
        out[m.group(1)] = (text.count("\n", 0, m.start(2)) + 1, m.group(2))
    return out


@contextlib.contextmanager
def docs_plugin(name: str) -> Iterator[types.ModuleType]:
    """Run example ``name`` as a module and register it as a plugin for the duration."""
    line, code = runnable_blocks()[name]
    module = types.ModuleType(f"vl_docs_{name}")
    module.__file__ = str(DOC)
    plugin_name = f"docs-{name}"
    pm = registry.plugin_manager()
    sys.modules[module.__name__] = module  # dataclasses and typing look classes' modules up here
    try:
        # pad with newlines so tracebacks point at the line in the doc
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), module.__dict__)
        pm.register(module, name=plugin_name)
        yield module
        assert plugin_name not in visionlens.plugin_errors(), visionlens.plugin_errors()[plugin_name]
    finally:
        if pm.get_plugin(plugin_name) is not None:
            pm.unregister(name=plugin_name)
        sys.modules.pop(module.__name__, None)


@pytest.fixture(scope="module")
def vit() -> HookedVisionModel:
    return tiny_vit(pretrained=False, patch_size=8, num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return image_batch(3)


def test_every_hookspec_has_a_runnable_example():
    blocks = runnable_blocks()
    assert set(blocks) == EXAMPLES
    code = "\n".join(c for _, c in blocks.values())
    specs = [n for n in vars(hookspecs) if n.startswith("visionlens_register_")]
    assert len(specs) == 6
    for spec in specs:
        assert re.search(rf"^def {spec}\(", code, re.M), f"no runnable example implements {spec}"


def test_analysis_example(vit, images, monkeypatch):
    monkeypatch.setattr(registry, "_analyses", None)  # the analysis table is built once per plugin manager
    with docs_plugin("analysis"):
        assert "unit_energy" in visionlens.list_analyses()
        assert registry.analysis_origin("unit_energy") == "docs-analysis"
        result = visionlens.run("unit_energy", vit, images, hook=HOOK, batch_size=2)
        _, cache = vit.run_with_cache(images, names_filter=[HOOK])
        torch.testing.assert_close(result.tensors["energy"], cache[HOOK].pow(2).mean(1).mean(0))
        assert result.meta == {"hook": HOOK, "n_images": 3}
        assert len(result.tables["units"].rows) == vit.cfg.d_model
        json.dumps(result.to_dict())
        default = vit.analyze("unit_energy", images, max_images=2)
        assert default.meta == {"hook": default_hooks(vit)[-1], "n_images": 2}
        with pytest.raises(ConfigError, match="batch_size"):
            visionlens.run("unit_energy", vit, images, batch_size=0)
        no_hooks_left(vit)


def test_adapter_example():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with docs_plugin("adapter") as mod:
        assert "tinynet" in [a.name for a in available_adapters()]
        source = mod.TinyNet().eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = HookedVisionModel.from_module(source)
        assert not [w for w in caught if "generic adapter" in str(w.message)]
        assert model.cfg.adapter == "tinynet" and model.cfg.n_layers == 2
        assert isinstance(mod.TinyNetAdapter.example_source(), mod.TinyNet)
        with torch.no_grad():
            out, cache = model.run_with_cache(x)
            torch.testing.assert_close(out, source(x), rtol=0, atol=1e-5)
            stream = cache["blocks.1.hook_resid_pre"] + cache["blocks.1.hook_branch_out"]
            torch.testing.assert_close(cache[HOOK], stream)
            torch.testing.assert_close(cache["hook_logits"], out)
            assert "stem.hook_out" in cache and model.resolve_hook("blocks.0") == "blocks.0.hook_resid_post"
            zeroed = model.run_with_hooks(x, fwd_hooks=[(HOOK, lambda t, hook: t * 0)])
            torch.testing.assert_close(zeroed, source.head.bias.expand_as(zeroed))
        no_hooks_left(model)
    with pytest.warns(UserWarning, match="generic adapter"):
        assert HookedVisionModel.from_module(mod.TinyNet()).cfg.adapter == "generic"


def test_objective_example(vit, images):
    with docs_plugin("objective"):
        obj = fv.objective(f"cs:{HOOK}:3", vit)
        with torch.no_grad():
            _, cache = vit.run_with_cache(images)
        expected = fv.neuron(HOOK, 3).bind(vit)(cache) - fv.channel(HOOK, 3).bind(vit)(cache)
        torch.testing.assert_close(obj(cache), expected)
        assert set(fv.objective("cs:layer3:5").hooks) == {"layer3"}  # parsed before a model is known
        rendering = fv.render(vit, [f"cs:{HOOK}:3"], steps=2, transforms="none", progress=False)
        assert rendering.curves.shape == (1, 2)
    with pytest.raises(VisionLensError):
        fv.objective(f"cs:{HOOK}:3", vit)


def test_model_spec_example(tmp_path):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with docs_plugin("model_spec"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a plain Sequential gets the generic adapter
        model = visionlens.load("mylib:cnn8", n_classes=3)
        assert isinstance(model, HookedVisionModel) and model.cfg.adapter == "generic"
        assert model(x).shape == (2, 3) and "4.hook_out" in model.hook_dict
        ckpt = tmp_path / "cnn8.safetensors"
        save_file({k: v.contiguous() for k, v in model.source.state_dict().items()}, str(ckpt))
        reloaded = visionlens.load("mylib:cnn8", pretrained=str(ckpt), n_classes=3)
        torch.testing.assert_close(reloaded(x), model(x))
        with pytest.raises(VisionLensError, match="Unknown mylib model"):
            visionlens.load("mylib:cnn99")
    with pytest.raises(VisionLensError, match="Unknown model spec prefix"):
        visionlens.load("mylib:cnn8")


def test_transfer_technique_example():
    from visionlens.zoo import Score, bench, catalog
    from visionlens.zoo.technique import BenchContext

    with docs_plugin("technique"):
        techniques = {t.name: t for t in bench.all_techniques()}
        tech = techniques["vanilla_gradient"]
        assert tech.claim == "localization"
        entry = catalog.get_entry("resnet")
        model = visionlens.load("zoo:resnet")
        assert tech.supports(model, entry)[0] and not tech.supports(None, catalog.get_entry("clip"))[0]
        score = tech.score(model, BenchContext(entry=entry, quick=True))
        assert isinstance(score, Score) and 0 < score.chance < score.score <= 1
    assert "vanilla_gradient" not in [t.name for t in bench.all_techniques()]


def test_command_example(vit, capsys):
    argv = ["count-hooks", "timm:vit_tiny_patch16_224", "--image-size", "32", "--model-arg", "patch_size=8"]
    with docs_plugin("command") as mod:
        assert cli.build_parser().parse_args(argv).handler is mod.count_hooks
        assert cli.main(argv) == 0
        assert capsys.readouterr().out.strip() == f"timm:vit_tiny_patch16_224: {len(vit.hook_dict)} hooks"
        assert cli.main(["count-hooks", "nope:x"]) == 2
        assert capsys.readouterr().err.startswith("visionlens: error: Unknown model spec prefix 'nope'")
    assert cli.main(argv) == 2  # unregistered: argparse no longer knows the command


README = DOC.parents[1] / "README.md"


def test_readme_quickstart_runs_on_real_weights():
    """The README's quickstart runs as written (real ImageNet MobileNetV2, offline) and says what it shows."""
    from visionlens.offline_weights import ensure_mobilenet_v2

    if ensure_mobilenet_v2() is None:
        pytest.skip("the offline MobileNetV2 weights package is not installed")
    (code,) = [m.group(2) for m in BLOCK.finditer(README.read_text()) if m.group(1) == "readme_quickstart"]
    ns: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # the ViT line says it is random
        exec(compile(code, str(README), "exec"), ns)
    assert ns["model"].class_names[int(ns["cls"])] == "Egyptian cat"
    assert tuple(ns["cache"]["resid_post", 3].shape) == tuple(ns["cache"]["stages.2.blocks.0.hook_resid_post"].shape)
    assert not torch.equal(ns["ablated"], ns["logits"])
    assert tuple(ns["vcache"]["blocks.3.attn.hook_pattern"].shape) == (1, 3, 197, 197)
    no_hooks_left(ns["model"])
