"""Max-activating text on the zoo CLIP: searches graded against brute force and a planted direction."""

from __future__ import annotations

import pytest
import torch

import visionlens as vl
from tests.conftest import no_hooks_left
from visionlens.analysis import ConfigError
from visionlens.plugins.clip_max_activating_text import (
    TextObjective,
    brute_force,
    discrete_search,
    image_unit_direction,
    random_search,
    soft_prompt_search,
    text_objective,
)
from visionlens.validation import VisionLensError

UNIT = "text.blocks.2.mlp.hook_post:{}"


def test_planted_direction_is_recovered_exactly(zoo_clip):
    """The text embedding of a caption is maximized (cosine 1) by that caption; search must find it."""
    direction = zoo_clip.adapter.encode_text(["a red dotted square"])[0].detach()
    obj = TextObjective(zoo_clip, "planted", direction=direction, max_len=4)
    found = discrete_search(obj, budget=400, seed=0)
    assert found.forwards <= 400
    assert found.texts[0] == "a red dotted square" and found.best == pytest.approx(1.0, abs=1e-5)
    # the random baseline with the same budget does not get there (16,104 strings, one is the answer)
    assert random_search(obj, budget=400, seed=0).best < 0.999
    no_hooks_left(zoo_clip)


@pytest.fixture(scope="module")
def graded(zoo_clip):
    memo: dict = {}
    out = []
    for u in range(6):
        obj = text_objective(zoo_clip, UNIT.format(u), max_len=3, memo=memo)
        bf = brute_force(obj, top=10**6)
        out.append((obj, bf))
    return out


def test_brute_force_counts_every_string(graded):
    obj, bf = graded[0]
    assert bf.forwards == 11 + 11**2 + 11**3
    assert bf.scores == sorted(bf.scores, reverse=True)


def test_discrete_search_reaches_brute_force_max_within_budget(graded):
    fracs = []
    for obj, bf in graded:
        res = discrete_search(obj, budget=300, seed=0)
        assert res.forwards <= 300
        assert res.best <= bf.best + 1e-6  # nothing beats the exhaustive maximum
        fracs.append(res.best / bf.best)
    assert sum(f >= 0.95 for f in fracs) >= 5, fracs


def test_memo_does_not_change_scores_or_counts(zoo_clip, graded):
    obj_memo, _ = graded[1]
    plain = text_objective(zoo_clip, UNIT.format(1), max_len=3)
    seqs = [(3, 4, 11), (5,), (13, 13)]
    before = obj_memo.forwards
    assert torch.allclose(plain.score(seqs), obj_memo.score(seqs), atol=1e-6)
    assert obj_memo.forwards - before == plain.forwards == 3


def test_soft_prompt_projects_to_vocabulary_strings(graded):
    obj, bf = graded[2]
    res = soft_prompt_search(obj, budget=200, restarts=2, seed=0)
    assert res.forwards <= 200
    assert all(set(s) <= set(obj.vocab) and 1 <= len(s) <= 3 for s in res.seqs)
    # better than 90% of all strings, never above the exhaustive maximum
    assert torch.tensor(bf.scores).quantile(0.9) < res.best <= bf.best + 1e-6


def test_image_unit_direction_is_exact_for_the_1x1_grid(zoo_clip):
    """With a 1 x 1 final map the channel's part of the embedding is exactly activation x direction."""
    from visionlens.plugins.clip_attnpool_dla import attnpool_decomposition
    from visionlens.zoo.clip_model import held_out_batch

    parts = attnpool_decomposition(zoo_clip, held_out_batch(4).images)
    per_channel, _ = parts.channels()
    c = 7
    expected = parts.feature[:, 0, c, None] * image_unit_direction(zoo_clip, c).double()
    assert torch.allclose(per_channel[:, c], expected, atol=1e-6)


def test_analysis_runs_all_target_kinds(zoo_clip):
    from visionlens.zoo.clip_model import held_out_batch

    r = vl.run(
        "max_activating_text",
        zoo_clip,
        held_out_batch(4).images,
        targets=[UNIT.format(0), "image_unit:3", "image_head:1"],
        methods=["discrete", "random"],
        budget=60,
        max_len=2,
    )
    recs = r.tables["strings"].records()
    assert {x["target"] for x in recs} == {UNIT.format(0), "image_unit:3", "image_head:1"}
    assert all(x["forwards"] <= 60 for x in recs)
    assert all(1 <= len(x["text"].split()) <= 2 for x in recs)
    no_hooks_left(zoo_clip)


def test_bad_targets_and_vocab_are_named(zoo_clip):
    with pytest.raises(VisionLensError, match="image_unit"):
        text_objective(zoo_clip, "neuron 5")
    with pytest.raises(VisionLensError, match="unknown hook"):
        text_objective(zoo_clip, "text.blocks.9.mlp.hook_post:1")
    with pytest.raises(VisionLensError, match="out of range"):
        text_objective(zoo_clip, "image_unit:100000")
    with pytest.raises(ConfigError, match="methods"):
        vl.run("max_activating_text", zoo_clip, None, methods=["gcg"])


def test_user_hooks_survive_a_search(zoo_clip):
    seen = []
    hp = zoo_clip.hook_dict["text.hook_embed"]
    hp.add_hook(lambda t, hook: seen.append(1))
    try:
        obj = text_objective(zoo_clip, "image_unit:1", max_len=2)
        discrete_search(obj, budget=30)
        n = len(seen)
        zoo_clip.adapter.encode_text(["a red circle"])
        assert n > 0 and len(seen) == n + 1  # still attached after the search's own hooks were removed
    finally:
        zoo_clip.reset_hooks()
    no_hooks_left(zoo_clip)


@pytest.fixture(scope="module")
def clip_vit():
    from visionlens.zoo import catalog

    if not catalog.weights_path("clip_vit").is_file():
        pytest.skip("zoo:clip_vit weights are not trained")
    return catalog.load("clip_vit")


def test_vit_image_unit_direction_is_the_neurons_direct_part(clip_vit):
    """On a ViT tower a last-MLP neuron's direct part of the embedding (CLS token, final LayerNorm's scale frozen
    per image) is its activation x the direction / that scale."""
    from visionlens.zoo.clip_model import held_out_batch

    x = held_out_batch(6).images
    _, cache = clip_vit.run_with_cache(x)
    L = clip_vit.cfg.n_layers - 1
    post = cache[f"visual.blocks.{L}.mlp.hook_post"][:, 0].double()  # CLS token [B, mlp]
    resid = cache[f"visual.blocks.{L}.hook_resid_post"][:, 0].double()
    ln = clip_vit.source.visual.ln_post
    scale = (resid.var(-1, unbiased=False) + ln.eps).sqrt()  # [B]
    w_out = clip_vit.source.visual.transformer.resblocks[-1].mlp.c_proj.weight.double()
    vis = clip_vit.source.visual
    for c in (0, 17):
        part = post[:, c, None] * (w_out[:, c] - w_out[:, c].mean()) / scale[:, None]
        direct = (part * ln.weight.double()) @ vis.proj.double()
        expected = post[:, c, None] / scale[:, None] * image_unit_direction(clip_vit, c).double()
        torch.testing.assert_close(direct, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(VisionLensError, match="out of range"):
        image_unit_direction(clip_vit, 10_000)


def test_vit_head_targets_by_index_and_label(clip_vit):
    from visionlens.zoo.clip_model import held_out_batch

    x = held_out_batch(4).images
    a = text_objective(clip_vit, "image_head:L3H2", images=x)
    b = text_objective(clip_vit, f"image_head:{3 * clip_vit.cfg.n_heads + 2}", images=x)
    torch.testing.assert_close(a.direction, b.direction)
    with pytest.raises(VisionLensError, match="heads"):
        text_objective(clip_vit, "image_head:L9H0", images=x)
    r = vl.run(
        "max_activating_text",
        clip_vit,
        x,
        targets=["image_unit:5", "image_head:L3H2"],
        methods=["discrete", "random"],
        budget=60,
        max_len=2,
    )
    recs = r.tables["strings"].records()
    assert {x["target"] for x in recs} == {"image_unit:5", "image_head:L3H2"}
    assert all(x["forwards"] <= 60 for x in recs)
    best = {(x["target"], x["method"]): x for x in recs if x["rank"] == 0}
    for target in ("image_unit:5", "image_head:L3H2"):  # the guided search does at least as well as random strings
        assert best[(target, "discrete")]["score"] >= best[(target, "random")]["score"] - 1e-6, best
    # L3H2 is the tower's shape head (head_roles: its ablation costs the most shape accuracy): its text is a shape
    assert set(best[("image_head:L3H2", "discrete")]["text"].split()) & {"circle", "square", "triangle"}
    no_hooks_left(clip_vit)
