"""style_neuron_search on a tiny Stable Diffusion pipeline with a planted style unit."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import visionlens
from tests.conftest import require_analysis, tiny_clip  # noqa: E402
from visionlens import HookedVisionModel, registry  # noqa: E402
from visionlens.zoo.planted import planted_style_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def planted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe, info = planted_style_pipeline()
        model = HookedVisionModel.from_diffusers(pipe)
    require_analysis("style_neuron_search")
    return model, pipe, info


@pytest.fixture(scope="module")
def result(planted):
    model, _, info = planted
    return visionlens.run(
        "style_neuron_search",
        model,
        None,
        style=info["style"],
        prompts=info["prompts"],
        seeds=2,
        timesteps=[900, 500, 100],
        verify_units=3,
        verify_top=2,
    )


def test_planted_unit_ranked_first(planted, result):
    _, _, info = planted
    assert result.top_units[0] == info["unit"]
    first = result.tables["ranked"].records()[0]
    assert abs(first["mean_diff"] - 4.0) < 1e-3  # the planted strength


def test_ablating_planted_unit_removes_effect_amplifying_raises_it(planted, result):
    _, _, info = planted
    rows = {r["units"]: r for r in result.tables["verification"].records()}
    row = rows[info["unit"]]
    assert row["base_score"] == pytest.approx(1.0) and row["plain_score"] == pytest.approx(0.0, abs=1e-6)
    assert abs(row["ablated_score"]) < 0.02  # the whole planted effect is gone
    assert row["amplified_score"] > 1.3  # and amplification raises the style score
    others = [r for k, r in rows.items() if info["unit"] not in k]
    assert all(r["ablated_score"] > 0.8 for r in others)  # downstream units alone do not carry it


def test_timestep_profile_and_style_token_units(planted, result, tmp_path):
    prof = result.tensors["profile"]
    assert prof.shape == (3, result.meta["n_units"])
    assert any(u.endswith(("attn2.hook_pattern:0", "attn2.hook_pattern:7")) for u in result.meta["units"])
    # "a cat" vs "a cat in the style of vangogh": the phrase is tokens 3..7 (after BOS, a, cat)
    _, pipe, info = planted
    n_phrase = len(pipe.tokenizer(info["style"]).input_ids) - 2
    first = [pos for row, pos in result.meta["style_token_positions"] if row == 0]
    assert first == list(range(3, 3 + n_phrase))
    result.save(tmp_path)
    assert (tmp_path / "timestep_profile.png").exists() and (tmp_path / "index.html").exists()
    assert json.loads((tmp_path / "result.json").read_text())["tables"]["ranked"]["rows"]


def test_custom_score_and_errors(planted):
    model, _, info = planted
    calls = []

    def score(out, meta):
        calls.append(out.shape)
        return (out - meta["plain_output"]).flatten(1).abs().mean(1)

    res = visionlens.run(
        "style_neuron_search",
        model,
        info["prompts"][:2],
        style=info["style"],
        seeds=1,
        timesteps=[500],
        verify_units=1,
        verify_top=1,
        score=score,
        hooks=["down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_out"],
    )
    row = res.tables["verification"].records()[0]
    assert calls and row["ablated_score"] < 0.05 * row["base_score"]
    from visionlens.analysis import ConfigError

    with pytest.raises(ConfigError):
        visionlens.run("style_neuron_search", model, None, seeds=0)
    ok, why = registry.get_analysis("style_neuron_search").supports(
        HookedVisionModel.from_module(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))
    )
    assert not ok and "diffusers" in why


def test_clip_space_style_score_runs(planted):
    pytest.importorskip("open_clip")
    from visionlens.plugins.style_neuron_search import clip_style_score

    model, pipe, info = planted
    clip = tiny_clip(vision=dict(layers=1), text=dict(layers=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip_model = HookedVisionModel.from_module(clip)
    score = clip_style_score(clip_model, pipe, "a painting in the style of van gogh", "a painting")
    res = visionlens.run(
        "style_neuron_search",
        model,
        info["prompts"][:1],
        style=info["style"],
        seeds=1,
        timesteps=[500, 100],
        verify_units=1,
        verify_top=1,
        score=score,
    )
    row = res.tables["verification"].records()[0]
    assert all(isinstance(row[k], float) for k in ("ablated_score", "amplified_score", "base_score"))
