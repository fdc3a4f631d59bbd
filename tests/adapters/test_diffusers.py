"""diffusers UNet adapter: parity, block/attention hooks, processor swapping, pipelines, loading.

Everything is built offline from small random configs (``visionlens.diffusion.tiny_unet`` /
``tiny_stable_diffusion_pipeline``), including a CLIP tokenizer written from local files.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import visionlens  # noqa: E402
from tests.conftest import no_hooks_left  # noqa: E402
from visionlens import HookedVisionModel, VisionLensError  # noqa: E402
from visionlens.diffusion import (  # noqa: E402
    StepCache,
    run_pipeline_with_cache,
    run_pipeline_with_hooks,
    tiny_stable_diffusion_pipeline,
    tiny_unet,
    write_clip_tokenizer,
)
from visionlens.hook_points import is_active  # noqa: E402

TOL = 1e-5
KINDS = ["conditional", "conditional_mid", "unconditional"]


def _randomize(unet: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """diffusers zero-inits some output layers; give every weight a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return unet


def _default_processors(model) -> bool:
    from diffusers.models.attention_processor import AttnProcessor2_0

    return all(type(ah.attn.processor) is AttnProcessor2_0 for ah in model.adapter.attn_hooks.values())


def _no_hooks_or_processors_left(model) -> None:
    no_hooks_left(model)
    assert _default_processors(model), "a hooked attention processor was left in place"


@pytest.fixture(scope="module")
def cond():
    return HookedVisionModel.from_diffusers(_randomize(tiny_unet("conditional")))


@pytest.fixture(scope="module")
def cond_inputs(cond):
    args, kwargs = cond.adapter.example_inputs(batch=2)
    return args, kwargs


@pytest.fixture(scope="module")
def pipe():
    p = tiny_stable_diffusion_pipeline(seed=0)
    _randomize(p.unet, seed=1)
    return p


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kind", KINDS)
def test_parity_no_hooks_and_all_hooks_cached(kind):
    unet = _randomize(tiny_unet(kind), seed=2)
    model = HookedVisionModel.from_diffusers(unet)
    assert model.cfg.adapter == "diffusers_unet" and model.cfg.family == "diffusion"
    args, kwargs = model.adapter.example_inputs(batch=2)
    with torch.no_grad():
        ref = unet(*args, **kwargs).sample
        out = model(*args, **kwargs)
        cached, cache = model.run_with_cache(*args, **kwargs)
        after = model(*args, **kwargs).sample
    assert type(out).__name__ == type(unet(*args, **kwargs)).__name__  # the source's own output type
    assert torch.equal(out.sample, ref)  # no hooks: the untouched source runs
    assert (cached.sample - ref).abs().max() < TOL  # every hook cached, explicit attention
    assert set(cache.cache_dict) == set(model.hook_dict)  # every hook fired
    assert torch.equal(after, ref)
    _no_hooks_or_processors_left(model)


def test_parity_with_attention_mask_and_return_dict(cond, cond_inputs):
    (sample, t, ctx), _ = cond_inputs
    mask = torch.ones(2, ctx.shape[1])
    mask[:, 40:] = 0
    unet = cond.source
    with torch.no_grad():
        ref = unet(sample, t, ctx, encoder_attention_mask=mask, return_dict=False)[0]
        out, cache = cond.run_with_cache(sample, t, ctx, encoder_attention_mask=mask, return_dict=False)
    assert (out[0] - ref).abs().max() < TOL
    pat = cache["down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_pattern"]
    assert pat[..., 40:].max() < 1e-3  # masked tokens get (almost) no attention


# ----------------------------------------------------------------------------- names and shapes
def test_hook_names_and_shapes(cond, cond_inputs):
    args, kwargs = cond_inputs
    with torch.no_grad():
        _, cache = cond.run_with_cache(*args, **kwargs)
    names = set(cond.hook_dict)
    for n in (
        "time_proj.hook_out",
        "time_embedding.hook_out",
        "conv_in.hook_out",
        "down_blocks.0.hook_out",
        "down_blocks.0.resnets.0.hook_out",
        "down_blocks.0.downsamplers.0.hook_out",
        "mid_block.hook_out",
        "mid_block.resnets.1.hook_out",
        "up_blocks.1.attentions.0.hook_out",
        "up_blocks.0.upsamplers.0.hook_out",
        "conv_out.hook_out",
        "down_blocks.0.attentions.0.transformer_blocks.0.ff.hook_out",
    ):
        assert n in names, n
    blk = "down_blocks.0.attentions.0.transformer_blocks.0"
    B, P, T, H, dh = 2, 64, 77, 8, 4  # diffusers: attention_head_dim=8 means 8 heads here
    assert cache["time_embedding.hook_out"].shape == (B, 128)
    assert cache[f"{blk}.attn1.hook_q"].shape == (B, P, H, dh)
    assert cache[f"{blk}.attn1.hook_pattern"].shape == (B, H, P, P)
    assert cache[f"{blk}.attn2.hook_k"].shape == (B, T, H, dh)
    cross = cache[f"{blk}.attn2.hook_pattern"]
    assert cross.shape == (B, H, P, T)  # [batch, head, pixels, tokens]: tokens last
    assert torch.allclose(cross.sum(-1), torch.ones(B, H, P), atol=1e-5)
    assert torch.allclose(cache[f"{blk}.attn1.hook_pattern"].sum(-1), torch.ones(B, H, P), atol=1e-5)
    assert cache[f"{blk}.attn2.hook_z"].shape == (B, P, H, dh)
    assert cache[f"{blk}.attn2.hook_out"].shape == (B, P, 32)
    assert cache["mid_block.attentions.0.transformer_blocks.0.attn2.hook_pattern"].shape == (B, 8, 16, T)
    assert cache["down_blocks.0.hook_out"].shape == (B, 32, 4, 4)
    assert cond.cfg.extra["cross_attention"] and all(p.endswith("attn2") for p in cond.cfg.extra["cross_attention"])
    assert cond.resolve_hook("mid_block") == "mid_block.hook_out"


def test_unconditional_attention_blocks():
    model = HookedVisionModel.from_diffusers(_randomize(tiny_unet("unconditional")))
    args, kwargs = model.adapter.example_inputs(batch=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(*args, **kwargs)
    pat = cache["down_blocks.1.attentions.0.hook_pattern"]
    assert pat.shape == (1, 8, 16, 16)
    assert torch.allclose(pat.sum(-1), torch.ones(1, 8, 16), atol=1e-5)
    # the plain Attention block returns its residual connection included
    assert cache["down_blocks.1.attentions.0.hook_out"].shape == (1, 64, 4, 4)


# ----------------------------------------------------------------------------- processors
def test_default_processors_unless_attention_internals_are_hooked(cond, cond_inputs):
    args, kwargs = cond_inputs
    target = "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    assert _default_processors(cond)
    seen = {}

    def look(t, hook):
        seen["procs"] = cond.adapter.active_processors()
        return t

    with torch.no_grad():
        cond.run_with_hooks(*args, fwd_hooks=[(f"{target}.hook_out", look)], **kwargs)
        assert set(seen["procs"].values()) == {"AttnProcessor2_0"}  # bridged hooks do not touch attention
        cond.run_with_hooks(*args, fwd_hooks=[(f"{target}.hook_pattern", look)], **kwargs)
    procs = seen["procs"]
    assert procs[target] == "_HookedAttnProcessor"
    assert sum(v == "_HookedAttnProcessor" for v in procs.values()) == 1
    _no_hooks_or_processors_left(cond)


def test_non_default_processor_gives_clear_error(cond_inputs):
    from diffusers.models.attention_processor import AttnProcessor2_0

    class MyProcessor(AttnProcessor2_0):
        pass

    model = HookedVisionModel.from_diffusers(tiny_unet("conditional"))
    attn = model.source.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    attn.set_processor(MyProcessor())
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    args, kwargs = cond_inputs
    with pytest.raises(VisionLensError, match="MyProcessor"):
        model.run_with_hooks(*args, fwd_hooks=[(f"{name}.hook_pattern", lambda t, hook: t)], **kwargs)
    assert not any(is_active(hp) for hp in model.hook_dict.values())
    assert not attn._forward_pre_hooks
    with pytest.raises(VisionLensError, match="MyProcessor"):
        model.add_hook(f"{name}.hook_pattern", lambda t, hook: t)  # outside a context manager the hook stays ...
    with pytest.raises(VisionLensError, match="default attention processor"):
        model(*args, **kwargs)  # ... and the forward refuses to skip it silently
    model.reset_hooks()
    assert not attn._forward_pre_hooks
    with torch.no_grad():  # its output is still hookable
        _, cache = model.run_with_cache(*args, names_filter=f"{name}.hook_out", **kwargs)
    assert cache[f"{name}.hook_out"].shape == (2, 64, 32)


# ----------------------------------------------------------------------------- hooks behave
def test_zero_ablation_and_pattern_edits_change_output(cond, cond_inputs):
    args, kwargs = cond_inputs
    with torch.no_grad():
        base = cond(*args, **kwargs).sample
        for name, fn in (
            ("mid_block.hook_out", lambda t, hook: torch.zeros_like(t)),
            ("time_embedding.hook_out", lambda t, hook: torch.zeros_like(t)),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_pattern",
                lambda p, hook: torch.ones_like(p) / p.shape[-1],
            ),
            ("up_blocks.1.attentions.0.transformer_blocks.0.attn1.hook_v", lambda v, hook: torch.zeros_like(v)),
        ):
            out = cond.run_with_hooks(*args, fwd_hooks=[(name, fn)], **kwargs).sample
            assert (out - base).abs().max() > 1e-4, name
    _no_hooks_or_processors_left(cond)


def test_exception_inside_hook_leaves_nothing_attached(cond, cond_inputs):
    args, kwargs = cond_inputs

    def boom(t, hook):
        raise RuntimeError("boom")

    for name in (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.hook_pattern",
        "mid_block.hook_out",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2.hook_z",
    ):
        with pytest.raises(RuntimeError, match="boom"):
            cond.run_with_hooks(
                *args,
                fwd_hooks=[
                    (name, boom),
                    ("conv_in.hook_out", lambda t, hook: t),
                    ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_q", lambda t, hook: t),
                ],
                **kwargs,
            )
        _no_hooks_or_processors_left(cond)
    with torch.no_grad():
        assert torch.equal(cond(*args, **kwargs).sample, cond.source(*args, **kwargs).sample)


def test_validation_errors(cond, cond_inputs):
    (sample, t, ctx), _ = cond_inputs
    with pytest.raises(VisionLensError, match="timestep"):
        cond(sample)
    with pytest.raises(VisionLensError, match="encoder_hidden_states"):
        cond(sample, t)
    with pytest.raises(VisionLensError, match=r"\[batch, tokens, 32\]"):
        cond(sample, t, ctx[..., :16])
    with pytest.raises(VisionLensError, match="batch dimension"):
        cond(sample[0], t, ctx)
    with pytest.raises(VisionLensError, match="4 channels"):
        cond(torch.randn(2, 3, 8, 8), t, ctx)
    unc = HookedVisionModel.from_diffusers(tiny_unet("unconditional"))
    with pytest.raises(VisionLensError, match="multiples of 2"):
        unc(torch.randn(1, 3, 9, 9), 3)


def test_example_inputs_reach_every_hook(cond):
    args, kwargs = cond.adapter.example_inputs(batch=1)
    with torch.no_grad():
        _, cache = cond.run_with_cache(*args, return_cache_object=False, **kwargs)
    assert set(cache) == set(cond.hook_dict)


# ----------------------------------------------------------------------------- pipelines
def test_tokenizer_files_match_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from transformers import CLIPTokenizer

    n = write_clip_tokenizer(tmp_path)
    assert n == 49408
    tok = CLIPTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    texts = ["a photo of a cat", "Two dogs, one ball!"]
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = open_clip.SimpleTokenizer()(texts)
    for row, r in zip(ids, ref):
        k = int((r == 49407).nonzero()[0]) + 1
        assert torch.equal(row[:k], r[:k])
    tiny_dir = tmp_path / "tiny"
    assert write_clip_tokenizer(tiny_dir, tiny=True) == 514


def test_pipeline_generates_with_per_step_cache(pipe):
    model = HookedVisionModel.from_diffusers(pipe)
    assert model.adapter.pipeline is pipe and model.source is pipe.unet
    steps = 3
    cross = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.hook_pattern"
    names = [cross, "mid_block.hook_out", "time_embedding.hook_out"]
    seen = []
    with torch.no_grad():
        ref = pipe(
            "a photo of a cat", num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="pt"
        ).images
        out, cache = run_pipeline_with_cache(
            model,
            "a photo of a cat",
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
            names_filter=names,
            on_step=lambda i, t, c: seen.append((i, t, len(c.cache_dict))),
        )
    images = out.images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    assert (images - ref).abs().max() < TOL  # caching does not change the generation
    assert isinstance(cache, StepCache) and len(cache) == steps
    assert len(cache.timesteps) == steps and cache.timesteps == sorted(cache.timesteps, reverse=True)
    assert seen == [(i, cache.timesteps[i], 3) for i in range(steps)]
    for i in range(steps):
        assert set(cache[i].cache_dict) == set(names)
    pat = cache[cross]  # stacked over steps; CFG doubles the batch (unconditional first)
    assert pat.shape == (steps, 2, 8, 64, 77)
    assert torch.allclose(pat.sum(-1), torch.ones(pat.shape[:-1]), atol=1e-5)
    assert cache["time_embedding.hook_out"].shape == (steps, 2, 128)
    # the time embedding really follows the timestep
    assert (cache["time_embedding.hook_out"][0] - cache["time_embedding.hook_out"][-1]).abs().max() > 1e-4
    _no_hooks_or_processors_left(model)
    assert not pipe.unet._forward_pre_hooks and not pipe.unet._forward_hooks
    assert model.adapter.current_step is None


def test_pipeline_step_aware_hooks_and_cleanup(pipe):
    model = HookedVisionModel.from_diffusers(pipe)
    kw = dict(num_inference_steps=2, output_type="pt", guidance_scale=1.0)
    steps_seen = []

    def ablate_first_step(t, hook):
        steps_seen.append(model.adapter.current_step)
        return torch.zeros_like(t) if model.adapter.current_step == 0 else t

    with torch.no_grad():
        base = pipe("a cat", generator=torch.Generator().manual_seed(1), **kw).images
        out = run_pipeline_with_hooks(
            model,
            "a cat",
            generator=torch.Generator().manual_seed(1),
            fwd_hooks=[("mid_block.hook_out", ablate_first_step)],
            **kw,
        ).images
        _, kept = run_pipeline_with_cache(
            model,
            "a cat",
            generator=torch.Generator().manual_seed(1),
            names_filter="conv_out.hook_out",
            keep=False,
            **kw,
        )
    assert steps_seen == [0, 1]
    assert (out - base).abs().max() > 1e-5
    assert len(kept) == 0

    def boom(t, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline_with_hooks(
            model, "a cat", fwd_hooks=[("up_blocks.1.attentions.0.transformer_blocks.0.attn2.hook_pattern", boom)], **kw
        )
    _no_hooks_or_processors_left(model)
    assert not pipe.unet._forward_pre_hooks and not pipe.unet._forward_hooks
    with pytest.raises(VisionLensError, match="No pipeline"):
        run_pipeline_with_cache(HookedVisionModel.from_diffusers(tiny_unet()), "a cat")


# ----------------------------------------------------------------------------- loading
def test_load_from_local_directories(tmp_path, pipe, cond_inputs):
    args, kwargs = cond_inputs
    unet = pipe.unet
    unet.save_pretrained(str(tmp_path / "unet_only"))
    with torch.no_grad():
        ref = unet(*args, **kwargs).sample
        for model in (
            HookedVisionModel.from_diffusers(str(tmp_path / "unet_only")),
            visionlens.load(f"diffusers:{tmp_path / 'unet_only'}"),
        ):
            assert model.cfg.adapter == "diffusers_unet"
            assert torch.equal(model(*args, **kwargs).sample, ref)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    with torch.no_grad():
        from_pipe_dir = HookedVisionModel.from_diffusers(str(tmp_path / "pipe"))  # loads pipe/unet
        assert torch.equal(from_pipe_dir(*args, **kwargs).sample, ref)
        full = HookedVisionModel.from_diffusers(str(tmp_path / "pipe"), pipeline=True)
        assert full.adapter.pipeline is not None and full.adapter.pipeline.unet is full.source
        full.adapter.pipeline.set_progress_bar_config(disable=True)
        out, cache = run_pipeline_with_cache(
            full, "a cat", num_inference_steps=2, output_type="pt", names_filter="mid_block.hook_out"
        )
    assert out.images.shape == (1, 3, 16, 16) and len(cache) == 2
    with pytest.raises(FileNotFoundError):
        HookedVisionModel.from_diffusers(str(tmp_path / "missing" / "dir"))
    with pytest.raises(VisionLensError, match="config.json"):
        HookedVisionModel.from_diffusers(str(tmp_path))
