"""Dictionaries in the forward pass: exactness with the error term, feature hooks, editing, patching."""

from __future__ import annotations

import torch

from tests.conftest import no_hooks_left
from visionlens.patching import run_patching
from visionlens.plugins.dictionaries import SAE_HOOKS, fit_dictionary, splice, spliced, unsplice
from visionlens.plugins.dictionaries.source import ActivationSource

HOOK = "layer4.hook_out"


def test_splice_with_error_term_is_exact_and_caches_features(zoo_resnet, resnet_dict, planted):
    x = planted.images[:16]
    with torch.no_grad():
        ref = zoo_resnet(x)
        with spliced(zoo_resnet, resnet_dict, HOOK, use_error=True):
            out, cache = zoo_resnet.run_with_cache(x)
    assert (out - ref).abs().max() < 1e-5
    for name in SAE_HOOKS:
        assert f"{HOOK}.{name}" in cache
    acts = cache[f"{HOOK}.hook_sae_acts"]
    assert acts.shape == (16, 64, 2, 2)  # features laid out like the conv map
    assert ((acts != 0).flatten(2).sum(1) <= 8).all()  # TopK: at most k features per position
    assert f"{HOOK}.hook_sae_acts" not in zoo_resnet.hook_dict
    no_hooks_left(zoo_resnet)


def test_reconstruction_only_changes_output_and_feature_edits_propagate(zoo_resnet, resnet_dict, planted):
    x = planted.images[:16]
    name = f"{HOOK}.hook_sae_acts"
    with torch.no_grad():
        ref = zoo_resnet(x)
        s = splice(zoo_resnet, resnet_dict, HOOK, use_error=False)
        try:
            rec = zoo_resnet(x)
            assert (rec - ref).abs().max() > 1e-4  # the reconstruction is not exact ...
            assert (rec.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8  # ... but keeps the answers
        finally:
            unsplice(zoo_resnet)
        with spliced(zoo_resnet, resnet_dict, HOOK, use_error=True):
            zero = lambda a, hook: torch.zeros_like(a)  # noqa: E731
            ablated = zoo_resnet.run_with_hooks(x, fwd_hooks=[(name, zero)])
            _, cache = zoo_resnet.run_with_cache(x, names_filter=[f"{HOOK}.hook_sae_error", f"{HOOK}.hook_sae_input"])
    assert s.names["hook_sae_acts"] == name
    assert (ablated - ref).abs().max() > 1e-3  # zeroing every feature leaves the error term only
    err, inp = cache[f"{HOOK}.hook_sae_error"], cache[f"{HOOK}.hook_sae_input"]
    assert (err.pow(2).sum() / inp.pow(2).sum()) < 0.2
    no_hooks_left(zoo_resnet)


def test_token_features_and_activation_patching_over_features(zoo_vit, planted):
    hook = "blocks.3.hook_resid_post"
    x = ActivationSource(zoo_vit, hook, planted.images[:64], positions=8).collect()
    d, _ = fit_dictionary(x, "topk", 32, 4, epochs=4, batch_size=64)
    clean, corrupt = planted.images[:4], planted.images[4:8]
    with spliced(zoo_vit, d, hook, use_error=True):
        with torch.no_grad():
            _, cache = zoo_vit.run_with_cache(clean, names_filter=[f"{hook}.hook_sae_acts"])
        assert cache[f"{hook}.hook_sae_acts"].shape == (4, 65, 32)  # [B, T, F]
        res = run_patching(
            zoo_vit,
            clean,
            corrupt,
            [f"{hook}.hook_sae_acts"],
            kind="channel",
            metric="logit_diff",
            label=0,
            foil=1,
            method="exact",
            batching="loop",
        )
    scores = res.sweeps[f"{hook}.hook_sae_acts"].scores
    assert scores.shape[0] == 32 and torch.isfinite(scores).all()
    no_hooks_left(zoo_vit)
