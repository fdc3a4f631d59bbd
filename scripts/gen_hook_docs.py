"""Generate docs/hooks.md from the adapters themselves (never typed by hand).

For one small example model per family, every hook name is collapsed into a pattern (numeric path
parts become `{i}`, `{j}`, ...) and listed with its example shape and how many hooks share it.

    python scripts/gen_hook_docs.py            # writes docs/hooks.md
    python scripts/gen_hook_docs.py --check    # exit 1 if docs/hooks.md is stale
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Callable

import torch

import visionlens

DOC = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
LETTERS = "ijklmn"


def _examples() -> list[tuple[str, str, Callable[[], visionlens.HookedVisionModel], int]]:
    """(family title, what is built, constructor, image size)."""
    from visionlens import HookedVisionModel

    ex = [
        (
            "timm ViT (class token)",
            "timm:vit_tiny_patch16_224, img_size=32",
            lambda: visionlens.load("timm:vit_tiny_patch16_224", img_size=32),
            32,
        ),
        (
            "timm DeiT (distilled)",
            "timm:deit_tiny_distilled_patch16_224, img_size=32",
            lambda: visionlens.load("timm:deit_tiny_distilled_patch16_224", img_size=32),
            32,
        ),
        ("ResNet (timm)", "timm:resnet18", lambda: visionlens.load("timm:resnet18"), 64),
        ("ResNet (torchvision)", "torchvision:resnet50", lambda: visionlens.load("torchvision:resnet50"), 64),
        ("ConvNeXt (timm)", "timm:convnext_atto", lambda: visionlens.load("timm:convnext_atto"), 64),
        (
            "MobileNetV2 (torchvision)",
            "torchvision:mobilenet_v2",
            lambda: visionlens.load("torchvision:mobilenet_v2"),
            64,
        ),
        (
            "InceptionV1 (torchvision googlenet, Lucid names)",
            "torchvision:googlenet",
            lambda: visionlens.load("torchvision:googlenet"),
            64,
        ),
    ]
    tiny_clip = dict(
        embed_dim=16,
        vision_cfg=dict(image_size=32, layers=2, width=32, head_width=8, patch_size=8),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=4, layers=2),
    )
    ex.append(
        (
            "CLIP (open_clip, ViT towers)",
            "open_clip custom config: 2-layer ViT-32px image tower, 2-layer text tower",
            lambda: HookedVisionModel.from_open_clip(tiny_clip),
            32,
        )
    )
    ex.append(
        (
            "CLIP (open_clip, ModifiedResNet RN50)",
            "open_clip:RN50 (random weights)",
            lambda: visionlens.load("open_clip:RN50"),
            224,
        )
    )
    ex.append(
        (
            "Diffusion UNet (diffusers UNet2DConditionModel)",
            "visionlens.diffusion.tiny_unet('conditional')",
            lambda: HookedVisionModel.from_diffusers(_tiny_unet("conditional")),
            8,
        )
    )
    ex.append(
        (
            "Diffusion UNet (diffusers UNet2DModel)",
            "visionlens.diffusion.tiny_unet('unconditional')",
            lambda: HookedVisionModel.from_diffusers(_tiny_unet("unconditional")),
            8,
        )
    )
    try:
        from visionlens.adapters.lucid_inception import LucidInceptionV1

        ex.append(
            (
                "InceptionV1 (Lucid architecture)",
                "LucidInceptionV1()",
                lambda: HookedVisionModel.from_module(LucidInceptionV1().eval()),
                224,
            )
        )
    except ImportError:
        pass
    return ex


def _tiny_unet(kind: str):
    from visionlens.diffusion import tiny_unet

    return tiny_unet(kind)


def pattern(name: str) -> str:
    parts, k = [], 0
    for p in name.split("."):
        if re.fullmatch(r"\d+", p):
            parts.append("{" + LETTERS[min(k, len(LETTERS) - 1)] + "}")
            k += 1
        else:
            parts.append(p)
    return ".".join(parts)


def family_section(title: str, built: str, make: Callable[[], visionlens.HookedVisionModel], size: int) -> str:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make()
    shapes = model.hook_shapes(image_size=size if model.cfg.dynamic_img_size else None)
    if len(shapes) < len(model.hook_dict):
        missing = len(model.hook_dict) - len(shapes)
        title = f"{title}"
        built = f"{built}; {missing} hooks not reached by the example input"
    groups: dict[str, list] = {}
    for name, shape in shapes.items():
        groups.setdefault(pattern(name), [name, shape, 0])[2] += 1
    canonical = [(p, g) for p, g in groups.items() if not p.endswith(".hook_out") or p.count(".") <= 1]
    tree = [(p, g) for p, g in groups.items() if (p, g) not in canonical]
    lines = [
        f"## {title}",
        "",
        f"Example: `{built}`, input {size}x{size}, adapter `{model.cfg.adapter}`, {len(shapes)} hooks.",
        "",
        "| pattern | example | shape | count |",
        "|---|---|---|---|",
    ]
    for p, (name, shape, count) in canonical + tree:
        lines.append(f"| `{p}` | `{name}` | {list(shape)} | {count} |")
    return "\n".join(lines) + "\n"


def render() -> str:
    head = (
        "# Hook names per family\n\n"
        "Generated by `python scripts/gen_hook_docs.py` from the adapters (do not edit by hand).\n"
        "Numeric path parts are collapsed to `{i}`, `{j}`, ...; shapes are for batch 1 and the stated input.\n"
        "Conv nets also carry `<module path>.hook_out` for every module of the source tree.\n\n"
    )
    return head + "\n".join(family_section(*e) for e in _examples())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        ok = DOC.is_file() and DOC.read_text() == text
        print("docs/hooks.md is up to date" if ok else "docs/hooks.md is stale: run python scripts/gen_hook_docs.py")
        return 0 if ok else 1
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
