"""The zoo CLIP (``visionlens.zoo.clip_model``): shipped weights, tokenizer, adapter path, determinism."""

import pytest
import torch

pytest.importorskip("open_clip")

from visionlens.zoo import catalog  # noqa: E402
from visionlens.zoo import clip_model as cm  # noqa: E402

HAS_WEIGHTS = catalog.weights_path("clip").is_file() and catalog.card_path("clip").is_file()
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="zoo CLIP weights are not trained (visionlens zoo train clip)"
)


@pytest.fixture(scope="module")
def model():
    return catalog.load("clip")


def test_entry_registered():
    e = catalog.get_entry("clip")
    assert e.family == "clip" and e.kind == "clip"
    assert e.thresholds["zero_shot_shape_accuracy"] >= 0.9
    assert e.requires() is None


def test_word_tokenizer_unknown_words_and_layout():
    tok = cm.WordTokenizer()
    ids = tok(["a red striped circle", "A purple, blobby thing!"])
    assert ids.shape == (2, cm.CONTEXT_LENGTH) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_token_id and ids[0, 5] == tok.eot_token_id and (ids[0, 6:] == tok.pad_token_id).all()
    assert tok.decode(ids[0]) == "a red striped circle"
    assert ids[1, 1] == tok.encoder["a"] and (ids[1, 2:5] == tok.unk_token_id).all()
    assert int(ids.max()) == tok.eot_token_id == tok.vocab_size - 1  # argmax pooling finds <end>
    long = tok(" ".join(["red"] * 50))
    assert long.shape == (1, cm.CONTEXT_LENGTH) and long[0, -1] == tok.eot_token_id


@needs_weights
def test_hooked_text_side_uses_word_tokenizer(model):
    from visionlens.clip import encode_text, tokenize

    ids = tokenize(model, ["a purple circle", "a red circle"])
    assert ids.shape == (2, cm.CONTEXT_LENGTH)
    assert ids[0, 2] == cm.TOKENIZER.unk_token_id and ids[1, 2] == cm.TOKENIZER.encoder["red"]
    assert int(ids.max()) < model.cfg.extra["vocab_size"]
    with torch.no_grad():
        emb = encode_text(model, ["a purple circle", "a red circle"])
        ref = model.source.encode_text(ids)
    assert emb.shape == (2, cm.CONFIG["embed_dim"])
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)


@needs_weights
def test_hooked_image_side_matches_source(model):
    x = cm.held_out_batch(8).images
    with torch.no_grad():
        raw = model.source.encode_image(x)
        out = model(x)  # no hook attached: the source tower itself
        cached, cache = model.run_with_cache(x)  # every visual hook attached: the adapter's hooked code
    torch.testing.assert_close(out, raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cached, raw, atol=1e-5, rtol=1e-5)
    assert "visual.attnpool.hook_pattern" in cache and "visual.stages.3.blocks.0.hook_resid_post" in cache
    torch.testing.assert_close(cache["visual.attnpool.hook_out"], raw, atol=1e-5, rtol=1e-5)


@needs_weights
def test_similarity_logits_and_text_hooks(model):
    texts = ["a red circle", "a blue square"]
    x = cm.held_out_batch(8).images
    with torch.no_grad():
        logits, cache = model.run_with_cache(x, texts)
        src = model.source
        img = torch.nn.functional.normalize(src.encode_image(x), dim=-1)
        txt = torch.nn.functional.normalize(src.encode_text(cm.TOKENIZER(texts)), dim=-1)
    torch.testing.assert_close(logits, src.logit_scale.exp() * img @ txt.T, atol=1e-4, rtol=1e-5)
    assert "text.blocks.0.attn.hook_pattern" in cache and "hook_logits" in cache


@needs_weights
def test_zero_shot_shape_accuracy_matches_card(model):
    card = catalog.model_card("clip")
    assert card["passed"]
    batch = cm.held_out_batch(300)
    acc = cm.zero_shot_accuracies(model, batch)
    assert acc["zero_shot_shape_accuracy"] >= 0.9
    assert acc["zero_shot_shape_accuracy"] >= card["metrics"]["zero_shot_shape_accuracy"] - 0.03
    # through an attached head too: model(images) are then zero-shot logits
    from visionlens.clip import zero_shot_head

    head = zero_shot_head(model, list(cm.FACTOR_CLASSES["shape"]), list(cm.ZERO_SHOT_TEMPLATES))
    try:
        with torch.no_grad():
            logits = model(batch.images)
        assert logits.shape == (300, 3)
        assert float((logits.argmax(-1) == batch.factors["shape"]).float().mean()) == acc["zero_shot_shape_accuracy"]
    finally:
        from visionlens.clip import attach_head

        attach_head(model, None)
    assert head.n_classes == 3
