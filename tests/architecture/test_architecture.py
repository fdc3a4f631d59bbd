"""The house plan as a test: imports follow the layer order, with no cycles and no private names.

Layers, bottom to top (docs/architecture.md explains each):

0 base      config, validation, hook points, cache, units, hookspecs, the plugin registry, checkpoints
1 model     source loaders, adapters, HookedVisionModel
2 loading   load(spec), run(name, ...), the analysis protocol, CLI helpers
3 toolkit   data, reducers, results, viz, hook selection, patching, scrubbing, featurevis, ...
4 plugins   the built-in analyses
5 apps      microscope, the zoo and its bench, the CLI, the demo

A module may import from its own layer or below, never above; the module graph (imports at module
level and inside functions alike) has no cycle; ``visionlens.*`` is imported inside a function only
never (function-level imports are for optional third-party libraries); and no ``_private`` name is
imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {
    "visionlens.adapters": ROOT / "adapters",
    "visionlens.plugins": ROOT / "plugins",
    "visionlens": ROOT / "visionlens",
}

LAYERS: dict[str, int] = {}
for _layer, _names in enumerate(
    [
        # 0 base
        [
            "visionlens.tl_compat",
            "visionlens.version",
            "visionlens.config",
            "visionlens.validation",
            "visionlens.hook_points",
            "visionlens.cache",
            "visionlens.units",
            "visionlens.hookspecs",
            "visionlens.registry",
            "visionlens.checkpoints",
            "visionlens.serialize",
            "visionlens.preprocess",
            "visionlens.threads",
            "visionlens.memory",
        ],
        # 1 model
        ["visionlens.sources", "visionlens.adapters", "visionlens.hooked_model"],
        # 2 loading and registry
        ["visionlens.loading", "visionlens.runner", "visionlens.analysis", "visionlens.commands"],
        # 3 toolkit
        [
            "visionlens.data",
            "visionlens.reducers",
            "visionlens.results",
            "visionlens.viz",
            "visionlens.hook_select",
            "visionlens.patching",
            "visionlens.scrubbing",
            "visionlens.featurevis",
            "visionlens.receptive_field",
            "visionlens.weights",
            "visionlens.clip",
            "visionlens.diffusion",
        ],
        # 4 plugins
        ["visionlens.plugins"],
        # 5 applications
        [
            "visionlens.microscope",
            "visionlens.zoo",
            "visionlens.zoo.randomize",
            "visionlens.cli",
            "visionlens.apps",
            "visionlens.offline_weights",
            "visionlens.scale",
        ],
    ]
):
    for _name in _names:
        LAYERS[_name] = _layer
LAYER_NAMES = ["base", "model", "loading", "toolkit", "plugins", "apps"]
FACADE = "visionlens"  # the package __init__: re-exports the public API, imported by nobody inside


class Import(NamedTuple):
    source: str
    target: str
    names: tuple[str, ...]
    in_function: bool
    line: int


def package_modules() -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the distribution."""
    mods: dict[str, Path] = {}
    for pkg, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if pkg == "visionlens" and parts and parts[0] in ("adapters", "plugins"):
                continue
            if "weights" in rel.parts[:-1] or "__pycache__" in rel.parts:
                continue
            mods[".".join([pkg, *parts])] = path
    return mods


def layer_of(module: str) -> Optional[int]:
    best, layer = "", None
    for prefix, n in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best, layer = prefix, n
    return layer


def _resolve(module: str, is_pkg: bool, node: ast.ImportFrom, mods: dict[str, Path]) -> Iterator[tuple[str, str]]:
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_pkg else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        yield (sub, alias.name) if sub in mods else (base, alias.name)


def imports_of(module: str, path: Path, mods: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    func_nodes = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append(Import(module, alias.name, (), id(node) in func_nodes, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            for target, name in _resolve(module, path.name == "__init__.py", node, mods):
                out.append(Import(module, target, (name,), id(node) in func_nodes, node.lineno))
    return [i for i in out if i.target == FACADE or i.target.startswith(FACADE + ".")]


def internal_imports() -> list[Import]:
    mods = package_modules()
    return [i for m, p in mods.items() for i in imports_of(m, p, mods)]


def find_cycle(edges: dict[str, set[str]]) -> Optional[list[str]]:
    """One cycle in the directed graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> Optional[list[str]]:
        state[v] = 1
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w) :] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(edges):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def violations(imports: list[Import]) -> dict[str, list[str]]:
    """Every broken rule, by rule."""
    mods = package_modules()
    out: dict[str, list[str]] = {
        "unassigned": [],
        "upward": [],
        "facade": [],
        "in_function": [],
        "private": [],
        "cycle": [],
    }
    for m in mods:
        if m != FACADE and layer_of(m) is None:
            out["unassigned"].append(m)
    edges: dict[str, set[str]] = {}
    for i in imports:
        where = f"{i.source}:{i.line}"
        if i.source == FACADE:
            continue
        if i.target == FACADE:
            out["facade"].append(f"{where} imports {', '.join(i.names) or 'visionlens'} from the package facade")
            continue
        if i.target not in mods:
            continue  # a name from a module we already counted
        edges.setdefault(i.source, set()).add(i.target)
        src, dst = layer_of(i.source), layer_of(i.target)
        if src is not None and dst is not None and dst > src:
            out["upward"].append(f"{where} ({LAYER_NAMES[src]}) imports {i.target} ({LAYER_NAMES[dst]})")
        if i.in_function:
            out["in_function"].append(f"{where} imports {i.target} inside a function")
        for name in i.names:
            if name.startswith("_") and not name.startswith("__") and f"{i.target}.{name}" not in mods:
                out["private"].append(f"{where} imports private {i.target}.{name}")
    cycle = find_cycle(edges)
    if cycle:
        out["cycle"].append(" -> ".join(cycle))
    return out


@pytest.fixture(scope="module")
def found() -> dict[str, list[str]]:
    return violations(internal_imports())


@pytest.mark.parametrize("rule", ["unassigned", "upward", "facade", "in_function", "private", "cycle"])
def test_imports_follow_the_house_plan(found, rule):
    assert not found[rule], f"{rule}:\n  " + "\n  ".join(found[rule])


def test_the_checker_catches_a_reintroduced_cycle_and_an_upward_import():
    imports = internal_imports()
    # what microscope.py used to do: the application layer's CLI imported by microscope, and back
    fake = imports + [
        Import("visionlens.cli", "visionlens.microscope", ("x",), False, 1),
        Import("visionlens.microscope", "visionlens.cli", ("load_model",), True, 1),
        Import("visionlens.hooked_model", "visionlens.registry", ("run",), True, 1),
        Import("visionlens.registry", "visionlens.hooked_model", ("HookedVisionModel",), True, 1),
        Import("visionlens.adapters.convnext", "visionlens.adapters.resnet", ("_helper",), False, 1),
        Import("visionlens.cache", "visionlens.plugins.activation_stats", ("default_hooks",), False, 1),
    ]
    bad = violations(fake)
    assert bad["cycle"], "a cycle was not found"
    assert any("visionlens.cache:1 (base) imports visionlens.plugins.activation_stats" in v for v in bad["upward"])
    assert any("visionlens.microscope:1 imports visionlens.cli inside a function" in v for v in bad["in_function"])
    assert any("private visionlens.adapters.resnet._helper" in v for v in bad["private"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}}) is None
