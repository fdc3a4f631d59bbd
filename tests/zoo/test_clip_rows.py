"""The CLIP-neuron rows of the transfer table: max-activating text vs brute force, planted multimodal units."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from visionlens.zoo import catalog
from visionlens.zoo import techniques_clip as tc
from visionlens.zoo.scores import sanity_check
from visionlens.zoo.technique import BenchContext


def _trained(name: str):
    if not catalog.weights_path(name).is_file() or catalog.get_entry(name).requires():
        pytest.skip(f"zoo:{name} is not trained or cannot be built here")
    return catalog.load(name)


def test_random_ranking_chance_is_exact():
    """The chance of the multimodal row equals an exhaustive count over every ranking of a small pool."""
    n, top = 7, 3
    hits = 0
    perms = list(itertools.permutations(range(n)))
    for p in perms:  # unit 0 planted, units 1 and 2 decoys
        first = set(p[:top])
        hits += 0 in first and 1 not in first and 2 not in first
    assert tc.random_ranking_chance(n, top=top) == pytest.approx(hits / len(perms))
    # 256 units, top 5: 5/256 x C(253, 4) / C(255, 4)
    assert tc.random_ranking_chance(256) == pytest.approx(5 / 256 * math.comb(253, 4) / math.comb(255, 4))
    assert 0.018 < tc.random_ranking_chance(256) < 0.02


def test_multimodal_units_found_on_clip_glyph_and_not_on_random_weights():
    model = _trained("clip_glyph")
    entry = catalog.get_entry("clip_glyph")
    tech = next(t for t in tc.TECHNIQUES if t.name == "multimodal_units")
    assert tech.supports(model, entry) == (True, "")
    assert tech.supports(_trained("clip"), catalog.get_entry("clip"))[0] is False  # no planted units there
    s = tech.score(model, BenchContext(entry=entry, quick=True))
    assert s.score == 1.0 and s.details["interval"] == [1.0, 1.0]
    assert s.chance == pytest.approx(tc.random_ranking_chance(256))
    bl = s.details["baselines"]
    # every single-score ranking puts a decoy in the top 5 (the planted decoys are built to fool them)
    for name in ("image_only", "text_only", "caption", "magnitude", "constant"):
        assert bl[name]["score"] == 0.0, name
    assert bl["random"]["score"] < 0.1
    for rep in s.details["joint_ranks"]:
        assert all(r["multimodal"] == 1 and min(r["shape"], r["word"]) > tc.TOP for r in rep.values())
    rs = tech.score(
        catalog.load("clip_glyph", pretrained=False), BenchContext(entry=entry, quick=True, randomized=True)
    )
    assert rs.score == 0.0 and sanity_check(s, rs)["passed"]


def test_max_activating_text_reaches_the_brute_force_best_and_random_weights_do_not():
    model = _trained("clip")
    entry = catalog.get_entry("clip")
    tech = next(t for t in tc.TECHNIQUES if t.name == "max_activating_text")
    assert tech.supports(model, entry) == (True, "")
    ctx = BenchContext(entry=entry, quick=True)
    s = tech.score(model, ctx)
    truth = tc._TRUTHS[("clip", 0, True)]
    # the one-pass brute force agrees with the plugin's own objective on a few strings
    objs = tc._objectives(model, {})
    for u in truth.units:
        seqs = truth.strings[:: len(truth.strings) // 7]
        direct = objs[u].score(seqs).double().numpy()
        np.testing.assert_allclose(truth.scores[u][[truth.index[q] for q in seqs]], direct, rtol=1e-4, atol=1e-5)
    assert len(truth.units) == 4 and not set(truth.units) & set(truth.fit_units)
    # quick: 200 forwards per unit (full: 2,000), 4 units, so the hit fraction is coarse (0.25-0.75 over seeds
    # 0-2 on the shipped weights; the full budget reaches 1.00); the search beats random strings on every unit
    assert s.score >= 0.25 and s.chance < 0.01
    found, rand = s.details["fraction_of_max"], s.details["fraction_of_max_random"]
    assert set(found) == set(rand) and all(found[u] > rand[u] for u in found)
    assert np.mean(list(found.values())) >= 0.9
    assert s.details["baselines"]["constant"]["score"] == 0.0
    assert s.details["baselines"]["random"]["score"] <= s.score
    assert len(s.details["interval"]) == 2 and s.details["interval"][1] <= 1.0 + 1e-9
    rctx = BenchContext(entry=entry, quick=True, randomized=True)
    rs = tech.score(catalog.load("clip", pretrained=False), rctx)
    assert rs.details["graded_against"] == "the trained model's brute force"
    assert rs.score == 0.0 and sanity_check(s, rs)["passed"]


def test_vit_tower_units_are_directions_too():
    """zoo:clip_vit (ViT image tower): image units are its last MLP neurons as joint-space directions (centred,
    through ln_post and proj)."""
    entry = catalog.get_entry("clip_vit")
    if entry.build_reason():
        pytest.skip(entry.build_reason())
    model = catalog.load("clip_vit", pretrained=False)
    dirs, how = tc.image_unit_directions(model)
    assert how == "vit_mlp_ln_post"
    v = model.source.visual
    assert dirs is not None and tuple(dirs.shape) == (v.transformer.resblocks[-1].mlp.c_fc.out_features, 64)
    n = 5
    w = v.transformer.resblocks[-1].mlp.c_proj.weight[:, n]
    torch.testing.assert_close(dirs[n], ((v.ln_post.weight * (w - w.mean())) @ v.proj).detach().float())
    tech = next(t for t in tc.TECHNIQUES if t.name == "max_activating_text")
    assert tech.supports(model, entry) == (True, "")
    mm = next(t for t in tc.TECHNIQUES if t.name == "multimodal_units")
    assert mm.supports(model, entry)[0] is False
