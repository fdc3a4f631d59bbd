"""Fixtures and helpers shared by the whole suite.

Test modules import the helpers by name (``from tests.conftest import no_hooks_left, tiny_vit``);
fixtures are found by pytest as usual. The tiny models are seeded random-weight models that run in
milliseconds on a CPU; a module that needs a variant overrides the fixture (``vit``, ``resnet``, ...)
locally, built with the same factory.

Layout: ``tests/<area>/`` mirrors the package (``core``, ``adapters``, ``plugins``, ``featurevis``,
``toolkit``, ``zoo``, ``apps``, ``architecture``); ``tests/contracts/`` holds the suites parametrized
over the registries (every registered adapter, every registered analysis).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest
import torch

import visionlens
from visionlens import registry
from visionlens.hook_points import is_active

REPO = Path(__file__).resolve().parents[1]

# Every model in the suite is tiny: intra-op threads only add overhead, and stall badly on a shared
# machine (pytest -n 2 on two cores). One thread for the whole run (each xdist worker imports this).
torch.set_num_threads(1)


# ----------------------------------------------------------------------------- xdist groups
@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> Iterator[None]:
    """Collect the slowest tests first (:func:`slow_first`), and keep ``--dist loadgroup`` grouping on pytest >= 9.2.

    pytest-xdist (3.8) groups tests by appending ``@<group>`` to each marked item's node id, writing the
    legacy ``item._nodeid`` field; pytest 9.2 keeps the id in ``item._id`` (a structured ``NodeId``), so
    the suffix is lost and every group's tests are spread over the workers as if unmarked (under
    ``make test`` each worker then started its own Ray instance). pytest-xdist issue #1386 / PR #1388;
    this does what that fix does, after xdist's own hook, and only where the suffix is missing.
    """
    result = yield
    slow_first(items)  # see SLOW_FIRST
    if getattr(config.option, "loadgroup", False):  # set by xdist on its workers under --dist loadgroup
        try:
            from _pytest.nodeid import coerce_node_id  # pytest >= 9.2
        except ImportError:  # older pytest: xdist's own suffix works
            return result
        for item in items:
            marks = item.iter_markers("xdist_group")
            names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in marks})
            suffix = "@" + "_".join(names)
            if names and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
                item._id = coerce_node_id(item.nodeid + suffix)
    return result


# Seconds of the slowest tests (make test, 2 idle cores; refresh from --durations when they move). They are collected
# first, longest first, every other test after them in file order: under -n 2 the workers take tests in collection
# order as they free up, so the long ones start early and the short ones fill in at the end (longest-processing-time
# order), instead of a worker finishing alone on a long zoo test collected last. xdist groups are handed out before
# any single test (loadgroup: larger work units first), so a group's tests need no entry here. Prefixes of node ids.
SLOW_FIRST = {
    "tests/apps/test_demo.py::test_demo_writes_report": 37,
    "tests/zoo/test_bench_transfer.py::test_cli_quick_table_every_family[clip]": 31,
    "tests/zoo/test_bench_transfer.py::test_worker_processes_give_the_serial_scores": 28,
    "tests/zoo/test_bench_transfer.py::test_cli_quick_table_every_family[vit]": 27,
    "tests/zoo/test_bench_transfer.py::test_cli_quick_table_every_family[inception]": 20,
    "tests/zoo/test_bench_transfer.py::test_cli_quick_table_every_family[mobilenet]": 15,
    "tests/apps/test_cli.py::test_real_subprocess": 14,
    "tests/plugins/test_dataset_examples.py::test_sigkill_then_resume_is_exact": 12,
    "tests/zoo/test_zoo_models.py::test_retraining_is_bit_for_bit_reproducible[convnext": 10,
    "tests/plugins/test_attention_patterns.py::test_viewer_renders_in_headless_chromium": 8,
    "tests/zoo/test_bench_transfer.py::test_cli_quick_table_every_family[convnext]": 8,
    "tests/plugins/test_attention_patterns.py::test_save_writes_viewer_and_keeps_index_script_free": 7,
    "tests/zoo/test_zoo_models.py::test_evaluate_card_remeasures_metrics_and_keeps_the_weights": 7,
    "tests/zoo/test_cascade.py::test_a_step_below_what_the_score_reads_reuses_the_trained_score": 7,
    "tests/adapters/test_open_clip.py::test_full_size_parity_both_towers": 6,
}


def slow_first(items: list) -> None:
    """Put :data:`SLOW_FIRST` first, longest first (a stable sort: the rest keep their order)."""

    def cost(item: Any) -> float:
        return -max((s for prefix, s in SLOW_FIRST.items() if item.nodeid.startswith(prefix)), default=0.0)

    items.sort(key=cost)


# ----------------------------------------------------------------------------- CLI runs
TINY_VIT_SPEC = "timm:vit_tiny_patch16_224"


def image_folder(path: Path, n: int = 2, size: int = 40, seed: int = 0) -> Path:
    """``path`` (created) holding ``n`` random ``size`` x ``size`` RGB PNGs ``img0.png``, ``img1.png``, ..."""
    import numpy as np
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path / f"img{i}.png")
    return path


def run_args(
    analysis: str,
    images: Path,
    out: Path,
    *settings: str,
    model: str = TINY_VIT_SPEC,
    pretrained: Optional[Path] = None,
    image_size: int = 32,
) -> list[str]:
    """The arguments of ``visionlens run ANALYSIS --model ... --images IMAGES --out OUT --set K=V ...``."""
    args = ["run", analysis, "--model", model]
    if pretrained is not None:
        args += ["--pretrained", str(pretrained)]
    args += ["--image-size", str(image_size), "--images", str(images), "--out", str(out)]
    for kv in settings:
        args += ["--set", kv]
    return args


# ----------------------------------------------------------------------------- hook hygiene
def no_hooks_left(model: Any) -> None:
    """Assert that nothing is attached to ``model`` any more: no hook, capture or bridge on a hook
    point, no torch hook on a source module, no CLIP tower left in hooked mode."""
    for name, hp in model.hook_dict.items():
        assert not is_active(hp), f"hook left on {name}"
        assert not getattr(hp, "fwd_hooks", None) and not getattr(hp, "bwd_hooks", None), f"TL handle left on {name}"
        assert getattr(hp, "_bridge", None) is None, f"bridge left on {name}"
    for path, m in model.source.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, f"torch forward hook left on source.{path}"
        assert not m._backward_hooks and not getattr(m, "_backward_pre_hooks", None), (
            f"torch backward hook left on source.{path}"
        )
    for tower in ("visual", "text"):  # open_clip: a tower runs visionlens code only while hooked
        t = getattr(model.adapter, tower, None)
        if t is not None and hasattr(t, "active"):
            assert not t.active, f"the {tower} tower still thinks it is hooked"


def hook_count(model: Any) -> int:
    """Hooks, TL handles and bridges attached to ``model``'s hook points (0 when clean)."""
    n = 0
    for hp in model.hook_dict.values():
        n += len(hp.fwd_hooks) + len(hp.bwd_hooks) + len(hp._forward_hooks) + len(hp._backward_hooks)
        if getattr(hp, "_bridge", None) is not None:
            n += 1
    return n


# ----------------------------------------------------------------------------- tiny models
def tiny_vit(**kwargs: Any) -> visionlens.HookedVisionModel:
    """``timm:vit_tiny_patch16_224`` on 32 px images (random weights, seed 0); ``kwargs`` go to timm."""
    torch.manual_seed(0)
    return visionlens.load("timm:vit_tiny_patch16_224", **{"img_size": 32, **kwargs})


def tiny_resnet(**kwargs: Any) -> visionlens.HookedVisionModel:
    """``timm:resnet18`` (random weights, seed 0); ``kwargs`` go to timm."""
    torch.manual_seed(0)
    return visionlens.load("timm:resnet18", **kwargs)


TINY_CLIP_VISION = dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8)
TINY_CLIP_TEXT = dict(context_length=16, vocab_size=49408, width=32, heads=4, layers=2)


def tiny_clip(
    vision: Optional[dict] = None, text: Optional[dict] = None, seed: int = 0, **kwargs: Any
) -> torch.nn.Module:
    """A tiny open_clip ``CLIP`` source module (2-layer 32 px ViT tower, 2-layer text tower), in eval
    mode; ``vision`` / ``text`` override the tower configs. Skips the test without open_clip."""
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(seed)
    return open_clip.CLIP(
        embed_dim=16,
        vision_cfg={**TINY_CLIP_VISION, **(vision or {})},
        text_cfg={**TINY_CLIP_TEXT, **(text or {})},
        **kwargs,
    ).eval()


def perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Random weights everywhere (libraries zero-init some), BatchNorm statistics included."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)


def image_batch(n: int, size: int = 32, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """``n`` seeded standard-normal images ``[n, channels, size, size]``."""
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def require_analysis(name: str) -> None:
    """Fail clearly when a built-in analysis is not registered (a stale install)."""
    assert name in registry.list_analyses(), f"{name} is not registered (reinstall: pip install -e .)"


@pytest.fixture(scope="module")
def vit() -> visionlens.HookedVisionModel:
    """:func:`tiny_vit` with timm's 1000 classes, one per test module."""
    return tiny_vit()


@pytest.fixture(scope="module")
def resnet() -> visionlens.HookedVisionModel:
    """:func:`tiny_resnet` with timm's 1000 classes, one per test module."""
    return tiny_resnet()


@pytest.fixture()
def restore_registry() -> Iterator[None]:
    """Undo the sys.path / sys.modules / plugin-manager changes a test makes."""
    path, mods = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - mods:
        if name.startswith(("visionlens_example_plugin", "vl_test_")):
            del sys.modules[name]
    registry.plugin_manager(reload=True)


# ----------------------------------------------------------------------------- headless chromium
CHROMIUM: Optional[str] = shutil.which("chromium") or shutil.which("chromium-browser")


def needs_chromium(fn: Callable) -> Callable:
    """Mark a test ``browser`` and skip it when no chromium is on PATH."""
    return pytest.mark.browser(pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")(fn))


def run_chromium(
    *args: str, user_dir: Optional[Path] = None, timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess:
    """Headless chromium with ``args`` (sandbox, GPU and network off); stdout / stderr captured as text."""
    assert CHROMIUM is not None, "use @needs_chromium"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    if user_dir is not None:
        cmd.append(f"--user-data-dir={user_dir}")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, check=check)
