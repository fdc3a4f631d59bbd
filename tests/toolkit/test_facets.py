"""``facets``: a unit planted to respond to two unrelated factors (red blobs, vertical stripes) splits into
two facets, one per factor; a unit planted on one factor does not; steered renders land in their facet."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import visionlens
from visionlens.featurevis import to_model_input

N_PER = 24  # images per kind: red blob, vertical stripes, and two kinds of distractors


class Planted(nn.Module):
    """``l1``: [redness, vertical-stripe energy] (hand-set); ``l2`` 1x1: [red OR stripe, red, stripe]."""

    def __init__(self):
        super().__init__()
        self.l1 = nn.Conv2d(3, 2, (1, 3), padding=(0, 1), bias=False)
        self.act = nn.ReLU()
        self.l2 = nn.Conv2d(2, 3, 1, bias=False)
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            w = torch.zeros(2, 3, 1, 3)
            w[0, :, 0, 1] = torch.tensor([1.0, -0.5, -0.5])  # redness at the centre tap
            w[1, :, 0, :] = torch.tensor([-1.0, 2.0, -1.0]) / 3  # a bright column between dark ones, per channel
            self.l1.weight.copy_(w)

    def forward(self, x):
        h = self.l2(self.act(self.l1(x)))
        return self.head(h.mean((2, 3)))


def _images(seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs, kinds = [], []
    for kind in ("red", "stripes", "green", "horizontal"):
        for _ in range(N_PER):
            x = 0.35 + 0.1 * torch.rand(3, 16, 16, generator=g)
            y0, x0 = (int(v) for v in torch.randint(0, 9, (2,), generator=g))
            s = int(torch.randint(4, 8, (1,), generator=g))
            if kind == "red":
                x[:, y0 : y0 + s, x0 : x0 + s] = torch.tensor([0.95, 0.15, 0.15])[:, None, None]
            elif kind == "green":
                x[:, y0 : y0 + s, x0 : x0 + s] = torch.tensor([0.15, 0.9, 0.15])[:, None, None]
            elif kind == "stripes":
                x[:, y0 : y0 + s, x0 + (x0 % 2) : x0 + s : 2] = 0.95
            else:
                x[:, y0 + (y0 % 2) : y0 + s : 2, x0 : x0 + s] = 0.95
            imgs.append(x.clamp(0, 1))
            kinds.append(kind)
    return torch.stack(imgs), kinds


def planted_model():
    """The planted model, its input batch and each image's kind."""
    torch.manual_seed(0)
    net = Planted().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = visionlens.HookedVisionModel.from_module(net).eval()
    raw, kinds = _images()
    x = to_model_input(model, raw)
    # balance the two factors: the polysemantic unit's peak on a red image equals its peak on a stripe image
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=lambda n: n == "act.hook_out")
        h = cache["act.hook_out"].amax((2, 3))
    red = float(h[[k == "red" for k in kinds], 0].mean())
    stripe = float(h[[k == "stripes" for k in kinds], 1].mean())
    with torch.no_grad():
        net.l2.weight.zero_()
        net.l2.weight[0, 0], net.l2.weight[0, 1] = 1 / red, 1 / stripe  # red OR stripes
        net.l2.weight[1, 0], net.l2.weight[2, 1] = 1 / red, 1 / stripe
    return model, x, kinds


@pytest.fixture(scope="module")
def planted():
    return planted_model()


def _run(model, x, unit, **kw):
    cfg = dict(hook="l2", unit=unit, n_examples=2 * N_PER, fv_steps=0, null_draws=4, max_facets=3, batch_size=32)
    cfg.update(kw)
    return visionlens.run("facets", model, x, **cfg)


def test_planted_polysemantic_unit_splits_into_its_two_factors(planted):
    model, x, kinds = planted
    res = _run(model, x, 0)
    top = [kinds[i] for i in res.tensors["examples/index"].tolist()]
    assert set(top) == {"red", "stripes"}  # the top examples are the two factors, not the distractors
    assert res.n_facets == 2
    p = res.purity(kinds)
    assert p["separate"] and p["purity"] == pytest.approx(1.0)  # measured: 1.0
    assert sorted(p["majority"].values()) == ["red", "stripes"]
    # the chosen split beats the Gaussian null by a wide margin
    assert res.meta["silhouette"]["2"] > res.meta["null_silhouette"]["2"] + 0.2
    # control: random assignments of the same sizes are far less pure
    rng = np.random.default_rng(0)
    labs = res.tensors["examples/facet"].numpy()
    from visionlens.plugins.facets import facet_purity

    rand = [facet_purity(rng.permutation(labs).tolist(), top)["purity"] for _ in range(200)]
    assert np.percentile(rand, 95) < 0.75


def test_image_embedding_of_the_layer_below_recovers_the_same_facets(planted):
    model, x, kinds = planted
    res = _run(model, x, 0, embed="l1")
    p = res.purity(kinds)
    assert res.n_facets == 2 and p["separate"] and p["purity"] >= 0.9  # measured: 0.94 (3 of 48 small red blobs)


def test_monosemantic_control_has_one_facet(planted):
    """The red-only unit's top examples are one kind: no split beats the Gaussian null by the margin."""
    model, x, kinds = planted
    res = _run(model, x, 1, n_examples=N_PER // 2)  # the red-only unit
    assert {kinds[i] for i in res.tensors["examples/index"].tolist()} == {"red"}
    assert res.n_facets == 1


def test_diverse_and_steered_feature_visualizations(planted, tmp_path):
    model, x, kinds = planted
    res = _run(model, x, 0, fv_steps=32, fv_size=16, n_diverse=3, fv_lr=0.1, steer=2.0)
    assert res.tensors["fv/diverse"].shape == (3, 3, 16, 16)
    imgs = res.tensors["fv/facets"]
    assert imgs.shape == (2, 3, 16, 16)
    assert res.meta["steering_accuracy"] == 1.0
    # in pixels: the render steered to the red facet is redder, the other has more vertical-stripe energy
    red_facet = 0 if res.purity(kinds)["majority"][0] == "red" else 1
    redness = (imgs[:, 0] - imgs[:, 1:].mean(1)).mean((1, 2))
    stripe = (imgs[:, :, :, 1:] - imgs[:, :, :, :-1]).abs().mean((1, 2, 3))
    assert redness[red_facet] > redness[1 - red_facet] and stripe[1 - red_facet] > stripe[red_facet]
    # Lucid's diversity term alone finds both facets among 3 renders (measured: facets [0, 1, 1] or similar)
    assert set(res.meta["diverse_nearest_facet"]) == {0, 1}
    # the diverse renders differ from one another
    d = res.tensors["fv/diverse"].flatten(1)
    assert float(torch.cdist(d, d)[0, 1:].min()) > 0.1
    out = res.save(tmp_path / "f")
    assert (out / "feature_visualizations.png").exists() and (out / "overview.png").exists()
