"""The hook contract (docs/architecture.md), checked for every registered adapter family on the tiny
model its ``example_source()`` returns, so a newly registered family is tested with no new test code:

(a) the hooked output equals the source's within 1e-5: without hooks, with ``run_with_cache`` of
    every hook, and with identity hooks on every hook;
(b) an exception raised inside a hook leaves no hook attached (hook points, bridges, torch hooks on
    the source modules), and the next plain forward equals the source again;
(c) ``model.hook_shapes()`` covers every hook that fires, and the hook names (and shapes, where the
    docs were generated from the same model) match docs/hooks.md for the documented families.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
from torch import nn

from tests.conftest import REPO, no_hooks_left
from tests.contracts.conftest import (
    adapter_id,
    adapters,
    assert_same_output,
    builtin_adapters,
    example_call,
    example_size,
)
from visionlens import HookedVisionModel

# Families whose hooked forward does not mirror ``source(*args)``: how the source computes the same
# output. open_clip: ``model(images, texts)`` tokenizes the texts and returns ``get_logits``'s
# image logits.
REFERENCE: dict[str, Callable[[nn.Module, Any, tuple, dict], Any]] = {
    "open_clip": lambda src, model, args, kwargs: src.get_logits(args[0], model.adapter.tokenize(args[1]))[0],
}


def _reference(cls: type, src: nn.Module, model: Any, args: tuple, kwargs: dict) -> Any:
    ref = REFERENCE.get(cls.name)
    with torch.no_grad():
        return ref(src, model, args, kwargs) if ref else src(*args, **kwargs)


@dataclass
class Example:
    cls: type
    model: Any
    ref: nn.Module  # an untouched copy of the source
    args: tuple
    kwargs: dict
    expected: Any
    fired: list[str] = field(default_factory=list)  # hook names in firing order (identity-hook run)
    shapes: dict[str, tuple] = field(default_factory=dict)  # their shapes in that run


@pytest.fixture(scope="module", params=adapters(), ids=adapter_id)
def example(request) -> Example:
    cls = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = cls.example_source()
        if src is None:
            pytest.skip(f"adapter {cls.name!r} provides no example_source()")
        ref = copy.deepcopy(src)
        model = HookedVisionModel(src, adapter=cls)  # the adapter itself, even where another would match
    args, kwargs = example_call(model)
    return Example(cls, model, ref, args, kwargs, _reference(cls, ref, model, args, kwargs))


def _identity_run(ex: Example) -> Any:
    """A forward with an identity hook on every hook point; records which fired (and their shapes)."""
    fired: list[str] = []
    shapes: dict[str, tuple] = {}

    def ident(t, hook):
        fired.append(hook.name)
        shapes[hook.name] = tuple(t.shape)
        return t

    with torch.no_grad():
        out = ex.model.run_with_hooks(*ex.args, fwd_hooks=[(n, ident) for n in ex.model.hook_dict], **ex.kwargs)
    ex.fired, ex.shapes = fired, shapes
    return out


def _fired(ex: Example) -> list[str]:
    if not ex.fired:
        _identity_run(ex)
    return ex.fired


# ----------------------------------------------------------------------------- registry
@pytest.mark.parametrize("cls", builtin_adapters(), ids=adapter_id)
def test_builtin_adapter_provides_a_tiny_example_source(cls):
    src = cls.example_source()
    assert isinstance(src, nn.Module), f"{cls.__name__}.example_source() must return a tiny source model"
    assert not src.training, "example_source() must return the model in eval mode"
    assert cls.matches(src), f"{cls.__name__} does not match its own example source"
    again = cls.example_source()  # seeded: the same weights every time
    for (name, a), b in zip(src.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), f"example_source() is not deterministic ({name})"
    assert sum(p.numel() for p in src.parameters()) < 10_000_000


def test_every_builtin_adapter_is_covered():
    """The contract runs on every built-in family (each module in BUILTIN_ADAPTERS is importable here)."""
    from visionlens.adapters.builtin import BUILTIN_ADAPTERS

    expected = sum(len(v) for v in BUILTIN_ADAPTERS.values())
    assert len(builtin_adapters()) == expected, [a.name for a in builtin_adapters()]


# ----------------------------------------------------------------------------- (a) parity
def test_no_hooks_output_equals_source(example):
    with torch.no_grad():
        out = example.model(*example.args, **example.kwargs)
    assert_same_output(out, example.expected, what="model(x)")
    no_hooks_left(example.model)


def test_run_with_cache_of_every_hook_equals_source(example):
    model = example.model
    with torch.no_grad():
        out, cache = model.run_with_cache(*example.args, **example.kwargs)
    assert_same_output(out, example.expected, what="run_with_cache output")
    assert len(cache.cache_dict) > 0
    assert set(cache.cache_dict) <= set(model.hook_dict)
    no_hooks_left(model)


def test_identity_hooks_on_every_hook_equal_source(example):
    out = _identity_run(example)
    assert_same_output(out, example.expected, what="run_with_hooks(identity on every hook)")
    assert example.fired, "no hook fired"
    no_hooks_left(example.model)


# ----------------------------------------------------------------------------- (b) exceptions
@pytest.mark.parametrize("mode", ["run_with_hooks", "run_with_cache"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_exception_in_a_hook_leaves_no_hook(example, where, mode):
    model = example.model
    fired = _fired(example)
    target = {"first": fired[0], "middle": fired[len(fired) // 2], "last": fired[-1]}[where]

    def boom(t, hook):
        raise RuntimeError(f"boom in {hook.name}")

    with torch.no_grad(), pytest.raises(RuntimeError, match="boom in"):
        if mode == "run_with_hooks":  # every other hook attached too, so all of them must come off
            hooks = [(n, lambda t, hook: t) for n in model.hook_dict if n != target] + [(target, boom)]
            model.run_with_hooks(*example.args, fwd_hooks=hooks, **example.kwargs)
        else:  # the fast cache path on every hook, plus a raising hook
            with model.hooks(fwd_hooks=[(target, boom)]):
                model.run_with_cache(*example.args, **example.kwargs)
    no_hooks_left(model)
    with torch.no_grad():
        out = model(*example.args, **example.kwargs)
    assert_same_output(out, example.expected, what=f"the forward after an exception in {target}")


# ----------------------------------------------------------------------------- (c) hook names / shapes
def test_hook_shapes_cover_every_hook_that_fires(example):
    model = example.model
    _fired(example)
    shapes = model.hook_shapes(image_size=example_size(model), batch=2)  # the same call as example_call
    missing = [n for n in example.fired if n not in shapes]
    assert not missing, f"hook_shapes() misses hooks that fire: {missing[:10]}"
    wrong = {n: (shapes[n], s) for n, s in example.shapes.items() if shapes[n] != s}
    assert not wrong, f"hook_shapes() disagrees with the forward: {dict(list(wrong.items())[:5])}"
    no_hooks_left(model)


def _gen_hook_docs():
    spec = importlib.util.spec_from_file_location("gen_hook_docs", REPO / "scripts" / "gen_hook_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@dataclass
class DocSection:
    title: str
    size: int
    n_hooks: int
    rows: dict[str, tuple[str, tuple, int]]  # pattern -> (example name, shape, count)


_HEAD = re.compile(r"^Example: `.*`, input (\d+)x\d+, adapter `(\w+)`, (\d+) hooks\.$", re.M)
_ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| \[([\d, ]*)\] \| (\d+) \|$", re.M)


def documented_sections() -> dict[str, list[DocSection]]:
    """docs/hooks.md (written by scripts/gen_hook_docs.py) per adapter name."""
    out: dict[str, list[DocSection]] = {}
    for chunk in (REPO / "docs" / "hooks.md").read_text().split("\n## ")[1:]:
        head = _HEAD.search(chunk)
        assert head, f"unparsable section in docs/hooks.md: {chunk[:80]!r}"
        rows = {
            m.group(1): (m.group(2), tuple(int(v) for v in m.group(3).split(",") if v.strip()), int(m.group(4)))
            for m in _ROW.finditer(chunk)
        }
        size, adapter, n = int(head.group(1)), head.group(2), int(head.group(3))
        out.setdefault(adapter, []).append(DocSection(chunk.splitlines()[0], size, n, rows))
    return out


def test_hook_names_and_shapes_match_docs(example):
    sections = documented_sections().get(example.cls.name)
    if not sections:
        pytest.skip(f"adapter {example.cls.name!r} is not documented in docs/hooks.md")
    pattern = _gen_hook_docs().pattern  # how the docs collapse names ({i}, {j}, ...)
    model = example.model
    size = example_size(model)
    shapes = model.hook_shapes(image_size=size)  # batch 1, like the docs
    by_pattern: dict[str, list[str]] = {}
    for name in shapes:
        by_pattern.setdefault(pattern(name), []).append(name)
    documented: dict[str, set[int]] = {}  # pattern -> shape ranks in the docs
    for sec in sections:
        for p, (_, shape, _) in sec.rows.items():
            documented.setdefault(p, set()).add(len(shape))
    undocumented = sorted(p for p in by_pattern if p not in documented)
    assert not undocumented, f"hook names not in docs/hooks.md for {example.cls.name}: {undocumented[:10]}"
    rank = {p: len(shapes[ns[0]]) for p, ns in by_pattern.items() if len(shapes[ns[0]]) not in documented[p]}
    assert not rank, f"shape ranks differ from docs/hooks.md: {rank}"
    # a section generated from this very model (same hooks, same input size): shapes must match exactly
    for sec in sections:
        if (
            sec.size == (size or model.cfg.image_size[0])
            and sec.n_hooks == len(shapes)
            and set(sec.rows) == set(by_pattern)
        ):
            for p, (name, shape, count) in sec.rows.items():
                assert shapes.get(name) == shape, f"{name}: {shapes.get(name)}, docs/hooks.md ({sec.title}): {shape}"
                assert len(by_pattern[p]) == count, f"{p}: {len(by_pattern[p])} hooks, docs say {count}"
    no_hooks_left(model)
