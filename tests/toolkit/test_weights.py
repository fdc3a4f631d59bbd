"""Weight explorer: strengths, expanded weights (exact on linear nets), sparsity, NMF pictures, the plugin."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visionlens
from tests.conftest import tiny_resnet
from visionlens import weights as vw


def _wrap(net):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return visionlens.HookedVisionModel.from_module(net).eval()


def _register():
    import visionlens.plugins.weights as pw
    import visionlens.registry as reg

    if "weights" not in visionlens.list_analyses():
        reg.plugin_manager().register(pw)
        reg._analyses = None


_register()


def test_channel_strengths_and_top_connections():
    conv = nn.Conv2d(4, 3, 3)
    s = vw.channel_strengths(conv)
    assert s.shape == (3, 4)
    assert torch.allclose(s[1, 2], conv.weight[1, 2].norm())
    assert torch.allclose(vw.channel_strengths(conv, "l1")[0, 0], conv.weight[0, 0].abs().sum())
    top = vw.top_connections(s, 1, k=2)
    assert [c for c, _ in top] == torch.argsort(s[1], descending=True)[:2].tolist()
    outs = vw.top_connections(s, 2, k=3, direction="out")
    assert sorted(c for c, _ in outs) == [0, 1, 2]
    # grouped conv expands to a block-diagonal [out, in]
    g = vw.channel_strengths(nn.Conv2d(4, 4, 3, groups=2))
    assert g.shape == (4, 4) and float(g[0, 2:].abs().sum()) == 0.0 and float(g[2:, :2].abs().sum()) == 0.0


def test_expanded_weights_equal_product_on_1x1_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 5, 1), nn.ReLU(), nn.Conv2d(5, 6, 1))
    m = _wrap(net)
    W1, W2 = net[2].weight[:, :, 0, 0].double(), net[4].weight[:, :, 0, 0].double()
    for reduce in ("mean", "centre"):
        ew = vw.expanded_weights(m, "0.hook_out", "4.hook_out", reduce=reduce, image_size=6)
        assert ew.jacobian.shape == (6, 4, 6, 6)
        assert torch.allclose(ew.matrix.double(), W2 @ W1, atol=1e-5)
    # adjacent layers: the matrix is the layer's own weights
    ew = vw.expanded_weights(m, "2.hook_out", "4.hook_out", image_size=4)
    assert torch.allclose(ew.matrix.double(), W2, atol=1e-6)
    # the model is restored (ReLU active again)
    x = torch.randn(1, 3, 4, 4)
    assert torch.equal(m(x), net(x)) and float(net[1](torch.tensor([-1.0]))) == 0.0


def test_expanded_weights_3x3_equal_composed_kernel():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    )
    m = _wrap(net)
    K1, K2 = net[2].weight.detach().double(), net[4].weight.detach().double()  # [3, ...], [2, 4, 3, 3]
    ew = vw.expanded_weights(m, "0.hook_out", "4.hook_out", reduce="centre", image_size=11)
    # explicit composition: y = K2 * (K1 * a) (cross-correlations) -> kernel C[o, i] = sum_m full-conv
    C = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    for o in range(2):
        for i in range(3):
            for mid in range(4):
                for u in range(3):
                    for v in range(3):
                        C[o, i, u : u + 3, v : v + 3] += K2[o, mid, u, v] * K1[mid, i]
    assert torch.allclose(ew.kernel(5).double(), C, atol=1e-5)
    # everything outside the 5x5 window is zero
    assert float(ew.jacobian.abs().sum() - ew.kernel(5).abs().sum()) == pytest.approx(0.0, abs=1e-5)
    # and it is what a single conv with C computes on a linear map
    a = torch.randn(1, 3, 11, 11, dtype=torch.float64)
    two = F.conv2d(F.conv2d(a, K1, padding=1), K2, padding=1)
    one = F.conv2d(a, C, padding=2)
    assert torch.allclose(two[..., 2:-2, 2:-2], one[..., 2:-2, 2:-2])


def test_sparsity_and_gini():
    s = torch.tensor([[1.0, 0, 0, 0], [1, 1, 1, 1]])
    sp = vw.connection_sparsity(s, k=1)
    assert torch.allclose(sp["topk_mass"], torch.tensor([1.0, 0.25], dtype=torch.float64))
    assert float(sp["gini"][1]) == pytest.approx(0.0)
    assert float(sp["gini"][0]) == pytest.approx(0.75)


def test_nmf_rgb():
    torch.manual_seed(0)
    img, H = vw.nmf_rgb(nn.Conv2d(8, 5, 3).weight)
    assert img.shape == (5, 3, 3, 3) and H.shape == (3, 8) and img.min() >= 0 and img.max() <= 1
    img3, H3 = vw.nmf_rgb(nn.Conv2d(3, 4, 5).weight)
    assert img3.shape == (4, 5, 5, 3) and H3 is None


def test_conv_layers_and_pairs():
    r = tiny_resnet()
    layers = vw.conv_layers(r)
    names = [n for n, _ in layers]
    assert names[0] == "conv1" and names[1] == "layer1.0.conv1"
    pairs = dict((b, a) for a, b in vw.adjacent_pairs(layers))
    assert pairs["layer1.0.conv2"] == "layer1.0.conv1"


def test_weights_plugin(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    m = _wrap(net)
    res = visionlens.run("weights", m, None, top_k=3, expanded=["0->4"])
    assert torch.allclose(res.tensors["strengths/2"], vw.channel_strengths(net[2]))
    assert res.tensors["expanded/0.hook_out->4.hook_out"].shape == (4, 6)
    assert res.tensors["nmf/2"].shape == (8, 3, 3, 3)
    ins = res.top_inputs("4", 1)
    assert len(ins) == 3 and ins[0][0] == int(torch.argmax(vw.channel_strengths(net[4])[1]))
    out = res.save(tmp_path / "w")
    assert (out / "index.html").exists() and (out / "result.json").exists()
