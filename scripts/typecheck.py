"""Run mypy on the package as it is installed: ``visionlens`` with ``adapters/`` and ``plugins/`` mapped in.

setuptools maps ``adapters/`` to ``visionlens.adapters`` and ``plugins/`` to ``visionlens.plugins``
(``package-dir``); mypy does not read that mapping, so this script lays the same tree out with
symlinks under ``build/typecheck`` and checks ``-p visionlens`` there (config: pyproject.toml).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"adapters": ROOT / "adapters", "plugins": ROOT / "plugins"}


def build_tree(dest: Path) -> Path:
    """``dest/visionlens`` mirroring the installed package, made of symlinks."""
    if dest.exists():
        shutil.rmtree(dest)
    pkg = dest / "visionlens"
    pkg.mkdir(parents=True)
    for entry in (ROOT / "visionlens").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, pkg / entry.name)
    for name, target in MAPPED.items():
        os.symlink(target, pkg / name)
    return dest


def main() -> int:
    tree = build_tree(ROOT / "build" / "typecheck")
    env = dict(os.environ, MYPYPATH=str(tree))
    # the cache lives at the root (build_tree wipes build/typecheck, which is where mypy's default would put it)
    cache = ["--cache-dir", str(ROOT / ".mypy_cache")]
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *cache, "-p", "visionlens"]
    return subprocess.call(cmd, cwd=tree, env=env)


if __name__ == "__main__":
    sys.exit(main())
