"""The analysis contract, checked for every registered analysis (``visionlens.list_analyses()``), so a
newly registered analysis is tested with no new test code.

Each analysis runs on the first tiny example model (``Adapter.example_source()``) it ``supports()``,
with ``analysis.smoke_config(model)`` and a small image batch (None for the analyses that draw their
own inputs). Then: no hook is left on the model, ``to_dict()`` is JSON, ``plot()`` returns a
matplotlib Figure, ``save()`` writes result.json and index.html and ``load_result`` reads it back
(same class, same data), and ``_repr_html_()`` is a non-empty string.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Optional

import pytest
import torch

import visionlens
from tests.conftest import no_hooks_left
from tests.contracts.conftest import adapters, example_images, example_model
from visionlens.analysis import analysis_config_class, make_config
from visionlens.registry import BUILTIN_PLUGINS, builtin_plugin_name
from visionlens.results import Result, load_result

# Plain image families first (in registration order), the families with special inputs (CLIP,
# diffusion UNets) after them, the generic catch-all last.
ORDER = sorted(adapters(), key=lambda a: (a.priority < 0, a.priority))

# Analyses whose inputs are optional and that make their own (prompts, latents, start images, or
# none at all): they run with inputs=None. Every other analysis gets a small image batch.
NO_INPUTS = {"feature_visualization", "style_neuron_search", "timestep_sweep", "weights"}

BUILTIN_ANALYSES = {builtin_plugin_name(m) for m in BUILTIN_PLUGINS if m.startswith("visionlens.plugins.")}


def _first_supported(analysis: Any) -> Optional[Any]:
    for cls in ORDER:
        model = example_model(cls)  # a fresh model per analysis: runs may change its config
        if model is not None and analysis.supports(model)[0]:
            return model
    return None


def _inputs(name: str, model: Any) -> Any:
    if name in NO_INPUTS or model.cfg.family == "diffusion":
        return None
    return example_images(model, 4)


@pytest.mark.parametrize("name", sorted(visionlens.list_analyses()))
def test_analysis_contract(name, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    analysis = visionlens.get_analysis(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _first_supported(analysis)
        if model is None:
            if name in BUILTIN_ANALYSES:
                pytest.fail(f"no example model supports the built-in analysis {name!r}")
            pytest.skip(f"no adapter's example model supports {name!r}")
        torch.manual_seed(0)
        result = visionlens.run(name, model, _inputs(name, model), **analysis.smoke_config(model))
    where = f"{name} on the {model.cfg.adapter} example"
    assert isinstance(result, Result), f"{where}: returned {type(result).__name__}, not a Result"
    assert result.analysis == name
    no_hooks_left(model)

    d = result.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d, f"{where}: to_dict() is not plain JSON"

    fig = result.plot()
    assert isinstance(fig, Figure), f"{where}: plot() returned {type(fig).__name__}, not a Figure"

    # the figures are rendered once, for real; save() and _repr_html_() both use those PNGs
    pngs = result._render_pngs()
    assert pngs and all(png.startswith(b"\x89PNG") for png in pngs.values()), f"{where}: no PNG figures"
    monkeypatch.setattr(result, "_render_pngs", lambda: pngs)

    out = result.save(tmp_path / name)
    assert (out / "result.json").is_file() and (out / "index.html").is_file(), (
        f"{where}: save() wrote {os.listdir(out)}"
    )
    assert "<html" in (out / "index.html").read_text(encoding="utf-8")
    back = load_result(out)
    assert type(back) is type(result), f"{where}: reloaded as {type(back).__name__}"
    assert back.to_dict() == d, f"{where}: the reloaded result differs"
    assert set(back.tensors) == set(result.tensors)
    for k, t in result.tensors.items():
        assert torch.equal(back.tensors[k], t), f"{where}: tensor {k!r} differs after reloading"

    html = result._repr_html_()
    assert isinstance(html, str) and html.strip(), f"{where}: empty _repr_html_()"


def test_smoke_config_is_valid_for_every_supported_example():
    """``smoke_config`` of every analysis gives a valid config on every example model it supports."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [m for m in (example_model(cls) for cls in ORDER) if m is not None]
    for name in visionlens.list_analyses():
        analysis = visionlens.get_analysis(name)
        for model in models:
            if not analysis.supports(model)[0]:
                continue
            values = analysis.smoke_config(model)
            assert isinstance(values, dict), f"{name}.smoke_config() must return a dict"
            # raises ConfigError on an unknown key or a bad value
            make_config(analysis_config_class(analysis), values, owner=name)
