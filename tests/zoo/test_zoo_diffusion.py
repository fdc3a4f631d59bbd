"""The zoo's diffusion model and its style judge (visionlens/zoo/diffusion_model.py).

Skipped without diffusers / transformers; tests of shipped models skip when their weights are missing
(train them with ``visionlens zoo train style_judge`` / ``diffusion``).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import visionlens
from visionlens.zoo import catalog  # noqa: E402
from visionlens.zoo import diffusion_model as dm  # noqa: E402

# Style accuracy of the test's short batch (24 samples, 10 DDIM steps) may fall below the card's
# (108 samples, 25 steps) by at most this much. The binomial standard error of a 24-sample
# accuracy near 0.9 is sqrt(0.9 * 0.1 / 24) ~ 0.06; 2.5 of those is 0.15, and the card's own
# 10-step figure (``style_accuracy_10_steps``) bounds the step-count loss. The run is seeded, so the
# figure is deterministic; the margin is for other CPUs / library versions, not for run-to-run noise.
STYLE_TOLERANCE = 0.15


def _need(name: str) -> None:
    if not catalog.weights_path(name).is_file():
        pytest.skip(f"zoo model {name!r} is not trained here ({catalog.weights_path(name)})")


@pytest.fixture(scope="module")
def judge():
    _need("style_judge")
    return catalog.load_module("style_judge")


@pytest.fixture(scope="module")
def hooked():
    _need("diffusion")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return catalog.load("diffusion")


def test_entries_registered():
    e = catalog.entries()
    assert e["style_judge"].family == "resnet" and e["style_judge"].kind == "classifier"
    assert e["diffusion"].family == "diffusion" and e["diffusion"].kind == "diffusion"
    assert e["style_judge"].thresholds == {"held_out_accuracy": 0.95}
    assert e["diffusion"].thresholds == {"style_accuracy": 0.80}
    assert e["diffusion"].requires() is None


def test_tokenizer_offline_one_token_per_word():
    tok = dm.build_tokenizer()
    assert tok.model_max_length == dm.MAX_TOKENS
    for w in dm.WORDS:
        assert len(tok([w]).input_ids[0]) == 3, w  # <start> word <end>
    ids = dm.tokenize(tok, ["a red circle in striped style", "a banana"])
    assert ids.shape == (2, dm.MAX_TOKENS) and int(ids.max()) < dm.vocab_size()


def test_judge_held_out_texture_accuracy(judge):
    from visionlens.zoo.classifiers import held_out_batch, predict

    b = held_out_batch(300)
    acc = float((predict(judge, b.images) == b.factors["texture"]).float().mean())
    assert acc >= 0.95, acc


def test_hooked_unet_equals_raw(hooked):
    unet = hooked.source
    pipe = hooked.adapter.pipeline
    assert pipe is not None and pipe.unet is unet
    assert pipe.tokenizer is not None and pipe.text_encoder is not None
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, dm.SAMPLE_SIZE, dm.SAMPLE_SIZE, generator=g)
    t = torch.tensor([50, 400, 900])
    with torch.no_grad():
        ctx = pipe.encode_prompt(["a red circle in striped style", "a blue square", ""])
        raw = unet(x, t, ctx).sample
        out = hooked(x, t, ctx)
        out = getattr(out, "sample", out)
        out2, cache = hooked.run_with_cache(x, t, ctx)
        out2 = getattr(out2, "sample", out2)
    assert (out - raw).abs().max() < 1e-5
    assert (out2 - raw).abs().max() < 1e-5
    assert any(n.endswith("attn2.hook_out") for n in cache.keys())


def test_short_sample_style_accuracy(hooked, judge):
    card = catalog.model_card("diffusion")
    r = dm.style_scores(hooked, judge, n=24, steps=10)
    assert r["style_accuracy"] >= card["metrics"]["style_accuracy"] - STYLE_TOLERANCE, (r, card["metrics"])


def test_style_neuron_search_runs(hooked):
    from visionlens import registry

    if "style_neuron_search" not in registry.list_analyses():
        pytest.skip("style_neuron_search plugin not registered")
    res = visionlens.run(
        "style_neuron_search",
        hooked,
        None,
        style="in striped style",
        prompts=["a red circle", "a blue square"],
        seeds=1,
        timesteps=[500],
        verify_units=1,
        verify_top=1,
        top_k=5,
    )
    assert len(res.top_units) > 0
    assert res.meta["style_token_positions"]  # the tokenizer located the style words
