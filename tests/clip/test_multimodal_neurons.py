"""``multimodal_neurons``: bitmap glyphs, the planted units of ``zoo:clip_glyph`` found, the typographic attack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import visionlens as vl
from tests.conftest import no_hooks_left
from visionlens.analysis import ConfigError
from visionlens.plugins import glyphs
from visionlens.plugins.clip_multimodal_neurons import (
    attack_images,
    default_hook,
    dprime,
    hook_activations,
    restore_predictions,
    standardize,
)
from visionlens.zoo import catalog

SHAPES = ["circle", "square", "triangle"]


# ----------------------------------------------------------------------------- glyphs
def test_word_masks_are_fixed_bitmaps():
    m = glyphs.word_mask("circle")
    assert m.shape == (5, 23) and int(m.sum()) == 50
    assert int(glyphs.word_mask("triangle").sum()) == 72 and glyphs.word_mask("triangle").shape == (5, 31)
    assert glyphs.word_mask("square", scale=2).shape == (10, 46)
    assert int(glyphs.word_mask("square", scale=2).sum()) == 4 * int(glyphs.word_mask("square").sum())
    assert not glyphs.word_mask("c c")[:, 4:7].any()  # a space is blank
    # every letter is distinct (a word is readable)
    letters = {glyphs.word_mask(c).tobytes() for c in "abcdefghijklmnopqrstuvwxyz"}
    assert len(letters) == 26


def test_strokes_control_spells_nothing_at_letter_density():
    m = glyphs.stroke_mask(60, seed=3)
    letters = {glyphs.word_mask(c).tobytes() for c in "abcdefghijklmnopqrstuvwxyz"}
    blocks = [np.ascontiguousarray(m[:, 4 * i : 4 * i + 3]) for i in range(60)]
    assert not any(b.tobytes() in letters for b in blocks)
    assert abs(m.sum() / (60 * 15) - glyphs.ink_density()) < 0.08
    assert np.array_equal(m, glyphs.stroke_mask(60, seed=3)) and not np.array_equal(m, glyphs.stroke_mask(60, seed=4))


def test_write_on_is_seeded_and_clipped():
    x = torch.zeros(4, 3, 32, 32)
    a, b = glyphs.write_on(x, "triangle", seed=1), glyphs.write_on(x, "triangle", seed=1)
    assert torch.equal(a, b) and not torch.equal(a, glyphs.write_on(x, "triangle", seed=2))
    assert ((a > 0).any(1).sum((1, 2)) == 72).all()  # the whole word fits at 32 px
    lv = a.amax((1, 2, 3))
    assert ((lv >= 0.85 - 1e-6) & (lv <= 1.0)).all()
    clipped = glyphs.paste(x[:1], glyphs.word_mask("circle"), [30], [-5], [1.0])  # 2 rows, 5 columns cut off
    assert 0 < int((clipped > 0).any(1).sum()) < 50


# ----------------------------------------------------------------------------- scores
def test_dprime_and_joint_minimum_reject_single_modality_units():
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    pos[:, 0] += 2.0
    d = dprime(pos, neg)
    assert 1.6 < float(d[0]) < 2.4 and abs(float(d[1])) < 0.3
    # unit 0 multimodal, unit 1 image-only, unit 2 text-only, units 3.. noise
    img = torch.tensor([3.0, 4.0, 0.0] + [0.1] * 20)
    txt = torch.tensor([3.0, 0.0, 4.0] + [0.1] * 20)
    joint = torch.stack([standardize(img), standardize(txt)]).min(0).values
    assert int(joint.argmax()) == 0 and int(img.argmax()) == 1 and int(txt.argmax()) == 2


# ----------------------------------------------------------------------------- any open_clip tower
def _vit_clip():
    from tests.adapters.test_open_clip import build_variant

    return vl.HookedVisionModel.from_module(build_variant("base"))


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_runs_on_both_tower_kinds_and_restoring_every_unit_undoes_the_attack(tower, tiny_rn_clip):
    model = _vit_clip() if tower == "vit" else tiny_rn_clip
    size = model.cfg.image_size[0]
    x = torch.rand(12, 3, size, size, generator=torch.Generator().manual_seed(0))
    labels = [i % 3 for i in range(12)]
    r = vl.run(
        "multimodal_neurons",
        model,
        x,
        concepts=["cat", "dog", "car"],
        labels=labels,
        n_text_images=4,
        attack_units=2,
        top=3,
    )
    hook = default_hook(model)
    assert r.meta["hook"] == hook and hook.endswith("mlp.hook_post" if tower == "vit" else "act3.hook_out")
    n_units = r.meta["n_units"]
    assert r.tensors["joint"].shape == (3, n_units) and r.tensors["ranking"].shape == (3, n_units)
    joint = torch.stack([r.tensors[k] for k in ("z_image", "z_text", "z_caption")]).min(0).values
    assert torch.allclose(joint, r.tensors["joint"])
    assert len(r.tables["ranking"].rows) == 9 and len(r.tables["attack"].rows) == 5
    # restoring every unit of the hook to its clean value gives back the clean predictions exactly
    head = vl.clip.zero_shot_head(model, ["cat", "dog", "car"], ["a {}"], attach=False)
    attacked, written = attack_images(x, torch.tensor(labels), ["cat", "dog", "car"], seed=0)
    restored = restore_predictions(model, attacked, hook_activations(model, x, hook), hook, range(n_units), head)
    with torch.no_grad():
        clean = head(model.adapter.encode_image(x)).argmax(-1)
    assert torch.equal(restored, clean)
    for rec in r.tables["attack_units"].records():
        if rec["restored"] == "every unit":
            sel = written == ["cat", "dog", "car"].index(rec["word"])
            assert rec["success_restored"] == pytest.approx(float((clean[sel] == written[sel]).float().mean()))
    d = r.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    no_hooks_left(model)


def test_config_errors(tiny_rn_clip):
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(ConfigError, match="two concepts"):
        vl.run("multimodal_neurons", tiny_rn_clip, x, concepts=["cat"])
    with pytest.raises(ConfigError, match="labels"):
        vl.run("multimodal_neurons", tiny_rn_clip, x, concepts=["cat", "dog"], labels=[0])


# ----------------------------------------------------------------------------- zoo:clip_glyph
@pytest.fixture(scope="module")
def glyph_clip():
    if not catalog.weights_path("clip_glyph").is_file():
        pytest.skip("zoo:clip_glyph weights are not trained")
    return catalog.load("clip_glyph")


@pytest.fixture(scope="module")
def found(glyph_clip):
    from visionlens.zoo.clip_glyph_model import MODE_NONE, held_out_glyph_batch

    images, f = held_out_glyph_batch(240, mode=MODE_NONE)
    return vl.run(
        "multimodal_neurons",
        glyph_clip,
        images,
        concepts=SHAPES,
        labels=f["shape"].tolist(),
        n_text_images=48,
        attack_units=3,
    )


def test_planted_multimodal_units_are_found(found):
    from visionlens.zoo.clip_glyph_model import planted_units

    units = planted_units(0)
    for c, shape in enumerate(SHAPES):
        rank = {role: int((found.tensors["ranking"][c] == units[role][shape]).nonzero()) + 1 for role in units}
        assert rank["multimodal"] <= 5, (shape, rank)
        # the decoys respond to one modality only: out of the top 5
        assert min(rank["shape"], rank["word"]) > 5, (shape, rank)
        # single-modality rankings cannot tell them apart: each puts its decoy first or second
        for key, decoy in (("selectivity_image", "shape"), ("selectivity_text", "word")):
            order = found.tensors[key][c].argsort(descending=True)
            assert int((order == units[decoy][shape]).nonzero()) + 1 <= 2, (shape, key)


def test_typographic_attack_beats_its_controls(found):
    rows = {row[0]: row[1:] for row in found.tables["attack"].rows}  # condition -> (accuracy, success)
    clean = rows["clean"][0]
    assert clean > 0.9
    attack_acc, attack_success = rows["wrong concept word (attack)"]
    assert clean - attack_acc > 0.25 and attack_success > 0.25
    for control in ("random strokes (same length)", "non-concept word 'window'"):
        acc, success = rows[control]  # text that names no concept occludes as much, but steers far less
        assert clean - acc < (clean - attack_acc) / 2 and success < attack_success / 3
    assert rows["right concept word"][0] >= clean - 0.02


def test_found_units_carry_part_of_the_attack(found):
    recs = found.tables["attack_units"].records()
    for shape in SHAPES:
        r = {rec["restored"]: rec for rec in recs if rec["word"] == shape}
        assert r["every unit"]["success_restored"] <= 0.05 and r["every unit"]["fraction_of_attack"] == 1.0
        assert r["unit " + str(int(found.tensors["ranking"][SHAPES.index(shape), 0])) + " (rank 1)"]["drop"] > 0.03
        assert r["3 random units"]["drop"] < r["top 3 together"]["drop"]


def test_zoo_entry_card(glyph_clip):
    card = catalog.model_card("clip_glyph")
    assert card["passed"] and card["size_bytes"] < 2_000_000
    assert card["config"]["planted_hook"] == "visual.layer4.0.act3.hook_out"
    assert card["metrics"]["planted_min_auc"] >= 0.95


def test_cli_run_on_the_zoo_model(glyph_clip, tmp_path):
    """`visionlens run multimodal_neurons --model zoo:clip_glyph`: labels from zero-shot predictions."""
    from torchvision.utils import save_image

    from visionlens.cli import main
    from visionlens.zoo.clip_glyph_model import MODE_NONE, held_out_glyph_batch, planted_units

    images, _ = held_out_glyph_batch(30, mode=MODE_NONE)
    (tmp_path / "imgs").mkdir()
    for i, x in enumerate(images):
        save_image(x, tmp_path / "imgs" / f"{i:02d}.png")  # 8-bit images: lossless
    args = ["run", "multimodal_neurons", "--model", "zoo:clip_glyph", "--images", str(tmp_path / "imgs")]
    args += [
        "--out",
        str(tmp_path / "out"),
        "--set",
        "concepts=circle,square,triangle",
        "--set",
        "attack=false",
        "--set",
        "n_text_images=16",
    ]
    assert main(args) == 0
    d = json.loads((tmp_path / "out" / "result.json").read_text())
    assert d["meta"]["labels"] == "zero-shot predictions" and d["meta"]["clean_accuracy"] == 1.0
    top = {r[0]: r[2] for r in d["tables"]["ranking"]["rows"] if r[1] == 1}
    assert top == planted_units(0)["multimodal"]
