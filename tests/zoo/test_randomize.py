"""The random control really randomizes: zoo.randomize and catalog.load(name, pretrained=False)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import visionlens
from visionlens.zoo import catalog
from visionlens.zoo import data as zdata
from visionlens.zoo.classifiers import build_resnet, held_out_batch
from visionlens.zoo.randomize import (
    cascading_randomization,
    input_gradient_coverage,
    is_layer_scale,
    parameter_groups,
    randomize_module,
)

# every scorer with shipped weights whose output is a [N, K] score of the image: the classifiers and
# CLIP's image tower (its hooked model maps images to embeddings)
SCORERS = [n for n, e in catalog.entries().items() if e.kind in ("classifier", "clip") and e.benchmark]


def _buildable(name: str) -> None:
    if name not in catalog.entries():
        pytest.skip(f"zoo:{name} is not registered here")
    reason = catalog.get_entry(name).build_reason()
    if reason:
        pytest.skip(reason)


def _images(name: str) -> torch.Tensor:
    if catalog.get_entry(name).dataset == "fashion":
        if zdata.fashion_mnist_available():
            return held_out_batch(4, kind="fashion").images
        return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return held_out_batch(4).images


def _norm_and_scale_weights(module: nn.Module):
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            is_norm = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm))
            if (is_norm and p_name == "weight") or is_layer_scale(mod, p_name):
                yield f"{mod_name}.{p_name}", p


def test_timm_default_init_is_the_bug():
    """What the control used to be: timm's zero_init_last switches every ResNet block off."""
    torch.manual_seed(0)
    m = build_resnet().eval()
    assert input_gradient_coverage(m, held_out_batch(4).images) < 0.2  # measured 0.118
    assert input_gradient_coverage(randomize_module(m), held_out_batch(4).images) == 1.0


@pytest.mark.parametrize("name", SCORERS)
def test_random_control_covers_the_input_and_has_no_zeroed_scale(name):
    _buildable(name)
    rnd = visionlens.load(f"zoo:{name}", pretrained="random")
    assert input_gradient_coverage(rnd, _images(name)) > 0.9  # measured 1.000 for all (timm init: 0.118 ResNets)
    scales = dict(_norm_and_scale_weights(rnd.source))
    assert scales, name
    assert all(bool((p != 0).all()) for p in scales.values()), [k for k, p in scales.items() if (p == 0).any()]
    bn = [m for m in rnd.source.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert all(float(m.running_var.min()) == 1.0 and float(m.running_mean.abs().max()) == 0.0 for m in bn)

    again = catalog.load(name, pretrained=False).source.state_dict()
    first = rnd.source.state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first), "the same seed must give the same weights"

    if catalog.weights_path(name).is_file():
        trained = catalog.load_module(name).state_dict()
        learned = [k for k, p in rnd.source.named_parameters() if p.numel() > 1]
        moved = [k for k in learned if not torch.equal(first[k], trained[k])]
        assert len(moved) >= 0.9 * len(learned), (len(moved), len(learned))


def test_randomize_rules_on_a_toy_module():
    class Gate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.alpha = nn.Parameter(torch.zeros(()))  # ReZero gate
            self.temperature = nn.Parameter(torch.tensor(2.0))
            self.gamma = nn.Parameter(torch.full((8,), 1e-6))  # layer scale
            self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
            self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))

    m = nn.Sequential(
        nn.Embedding(10, 8, padding_idx=0),
        nn.MultiheadAttention(8, 2),
        nn.LayerNorm(8),
        nn.BatchNorm1d(8),
        nn.Linear(8, 3),
        Gate(),
    )
    for p in m.parameters():
        nn.init.zeros_(p)
    m[5].temperature.data.fill_(2.0)
    m[3].running_mean.fill_(5.0)
    randomize_module(m, seed=1)
    emb, mha, ln, bn, head, gate = m
    assert torch.all(emb.weight[0] == 0) and emb.weight[1:].std() > 0.01
    assert mha.in_proj_weight.std() > 0.1 and mha.in_proj_bias.abs().max() > 0
    assert (ln.weight - 1).abs().max() < 0.6 and ln.weight.std() > 0.01 and ln.bias.abs().max() < 0.6
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    assert head.weight.std() > 0.1 and head.bias.abs().max() > 0  # a zero head gets a real init
    assert float(gate.alpha.detach()) == 1.0  # a zero gate opens
    assert float(gate.temperature.detach()) == 2.0  # a non-zero scalar (a temperature) stays
    assert torch.all(gate.gamma == 1) and gate.pos_embed.std() > 0.01 and gate.cls_token.abs().max() > 0
    state = {k: v.clone() for k, v in m.state_dict().items()}
    randomize_module(m, seed=1)
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
    randomize_module(m, seed=2)
    assert not torch.equal(state["4.weight"], m.state_dict()["4.weight"])


def test_cascading_randomization_goes_top_down():
    torch.manual_seed(0)
    trained = randomize_module(build_resnet(), seed=7).eval()  # stands in for trained weights
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    groups = [g for g, _ in parameter_groups(trained)]
    assert groups == ["conv1", "bn1", "layer1.0", "layer2.0", "layer3.0", "layer4.0", "fc"]
    steps = list(cascading_randomization(trained, seed=0))
    assert [n for n, _ in steps] == groups[::-1]
    changed = []
    for _, m in steps:
        sd = m.state_dict()
        changed.append({k for k, v in sd.items() if v.is_floating_point() and not torch.equal(v, before[k])})
    assert changed[0] == {"fc.weight", "fc.bias"}, changed[0]
    counts = [len(c) for c in changed]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert all(a <= b for a, b in zip(changed, changed[1:]))  # a unit stays randomized
    full = randomize_module(copy.deepcopy(trained), seed=0).state_dict()
    assert all(torch.equal(v, full[k]) for k, v in steps[-1][1].state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in trained.state_dict().items())  # the input is untouched


def test_cascading_groups_of_a_vit():
    _buildable("vit")
    e = catalog.get_entry("vit")
    groups = [g for g, _ in parameter_groups(e.build())]
    assert groups[0] == "cls_token,pos_embed" and groups[-1] == "head"
    assert [g for g in groups if g.startswith("blocks.")] == [f"blocks.{i}" for i in range(4)]
    name, first = next(cascading_randomization(e.build(), seed=0))
    assert name == "head"


def test_loading_needs_no_dataset(monkeypatch, tmp_path):
    _buildable("resnet_fashion")
    monkeypatch.setattr(zdata, "FASHION_MNIST_DIR", tmp_path / "absent")
    entry = catalog.get_entry("resnet_fashion")
    assert entry.requires()  # training / benchmarking it still needs the data ...
    assert entry.build_reason() is None  # ... loading it does not
    rnd = visionlens.load("zoo:resnet_fashion", pretrained="random")
    assert rnd(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    if catalog.weights_path("resnet_fashion").is_file():
        assert visionlens.load("zoo:resnet_fashion")(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_diffusion_keeps_its_own_init():
    if "diffusion" not in catalog.entries():
        pytest.skip("no diffusion entry")
    assert catalog.get_entry("diffusion").randomize is False  # diffusers' init zeroes nothing (see the entry)
