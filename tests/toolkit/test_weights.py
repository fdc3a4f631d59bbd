"""Weight explorer: strengths, expanded weights (exact on linear nets), sparsity, NMF pictures, the plugin."""

import warnings

import numpy as np
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
    # motif search on the expanded pair: the table's strongest connections are the matrix's extremes
    M = res.tensors["expanded/0.hook_out->4.hook_out"]
    motifs = res.tables["motifs"].records()
    top_pos = next(r for r in motifs if r["sign"] == "+" and r["rank"] == 0)
    top_neg = next(r for r in motifs if r["sign"] == "-" and r["rank"] == 0)
    assert top_pos["weight"] == pytest.approx(float(M.max())) and top_neg["weight"] == pytest.approx(float(M.min()))
    assert (top_pos["to_unit"], top_pos["from_unit"]) == divmod(int(M.argmax()), M.shape[1])
    units = res.tables["unit_sparsity"].records()
    assert [r["unit"] for r in units] == [0, 1, 2, 3]
    assert units[2]["gini"] == pytest.approx(float(vw.gini(M[2:3].abs())[0]))
    # banners: the 4 sparsest units (all), 6 input kernels each, the composed 5x5 kernels (3x3 then 1x1... -> 3x3)
    assert sorted(res.meta["banners"]["0.hook_out->4.hook_out"]) == [0, 1, 2, 3]
    img, order = res.banner("0.hook_out->4.hook_out", 1)
    assert img.shape == (3, 6 * 4 - 1, 3) and len(order) == 6
    assert [i for i, _ in order] == torch.argsort(M[1].abs(), descending=True).tolist()
    out = res.save(tmp_path / "w")
    assert (out / "index.html").exists() and (out / "result.json").exists() and (out / "banners.png").exists()
    html = (out / "index.html").read_text()
    assert "Motifs: strongest connections" in html and "http" not in html.split("<body>")[1]


# ----------------------------------------------------------------------------- the linear path (issue 16, item 7)
class _Functional(nn.Module):
    """1x1 convs joined by *functional* nonlinearities and pooling, as torchvision's GoogLeNet writes them."""

    def __init__(self, act):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(5, 6, 1)
        self.act = act

    def forward(self, x):
        x = self.act(self.a(x))
        x = F.max_pool2d(self.act(self.b(x)), 3, stride=1, padding=1, ceil_mode=True)
        return self.c(x)


def _rel(m, a, b, **kw):
    x1 = torch.rand(1, 3, 7, 7, generator=torch.Generator().manual_seed(0)) * 4 - 2
    j0 = vw.expanded_weights(m, a, b, x=torch.zeros(1, 3, 7, 7), **kw).jacobian
    j1 = vw.expanded_weights(m, a, b, x=x1, **kw).jacobian
    return float((j0 - j1).norm() / max(j0.norm(), j1.norm())), j1


@pytest.mark.parametrize("act", [F.relu, F.gelu, lambda x: F.relu(x, inplace=True), nn.SiLU()])
def test_linear_path_through_functional_ops_is_input_independent_and_exact(act):
    torch.manual_seed(0)
    net = _Functional(act)
    m = _wrap(net)
    rel, j = _rel(m, "a.hook_out", "c.hook_out", reduce="centre")
    assert rel == 0.0  # bit-identical: only constants enter the linear path
    # exact convention: rectifier -> identity, max-pool -> mean over the window's real positions
    W1, W2 = net.b.weight[:, :, 0, 0].double(), net.c.weight[:, :, 0, 0].double()
    assert torch.allclose(j[:, :, 3, 3].double(), (W2 @ W1) / 9, atol=1e-6)  # interior window: 9 positions
    assert torch.allclose(j[:, :, 2, 4].double(), (W2 @ W1) / 9, atol=1e-6)
    assert float(j[:, :, 1].abs().max()) == 0.0  # outside the centre's window


def test_linear_path_through_lucid_modules():
    from visionlens.adapters.lucid_inception import LucidReLU, SameMaxPool2d

    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), LucidReLU(), SameMaxPool2d(3, 1, (1, 1, 1, 1)), nn.Conv2d(4, 5, 1), LucidReLU()
    )
    m = _wrap(net)
    rel, j = _rel(m, "0.hook_out", "4.hook_out", reduce="centre")
    assert rel == 0.0
    # the -inf padding is excluded from the mean (max-pooling never picks it): corner windows have 4 positions
    W = net[3].weight[:, :, 0, 0].double()
    assert torch.allclose(j[:, :, 2, 2].double(), W / 9, atol=1e-6)
    ew_corner = vw.expanded_weights(m, "0", "4", reduce="mean", image_size=7)
    full = torch.zeros(7, 7, dtype=torch.float64)
    for y in range(7):  # each output location averages its window's real positions; mean over 49 outputs
        for x in range(7):
            ys, xs = range(max(y - 1, 0), min(y + 2, 7)), range(max(x - 1, 0), min(x + 2, 7))
            for u in ys:
                for v in xs:
                    full[u, v] += 1.0 / (len(ys) * len(xs)) / 49
    assert torch.allclose(ew_corner.jacobian.double(), W[:, :, None, None] * full, atol=1e-7)
    assert ew_corner.conventions == {"relu -> identity": 2, "max_pool2d -> mean over the window": 1}


class _Refused(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)
        self.norm = nn.LocalResponseNorm(3, k=1.0) if kind == "lrn" else nn.GroupNorm(1, 4)

    def forward(self, x):
        h = self.a(x)
        if self.kind in ("lrn", "groupnorm"):
            h = self.norm(h)
        elif self.kind == "se":
            h = h * torch.sigmoid(h.mean((2, 3), keepdim=True))
        elif self.kind == "gate":  # multiplied by something computed from the image, not from the source map
            h = h * x.mean(1, keepdim=True)
        elif self.kind == "square":
            h = h * h
        elif self.kind == "redirected":
            from visionlens.adapters.lucid_inception import LucidReLU

            h = LucidReLU(redirected=True)(h)
        return self.b(h)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("lrn", ["local_response_norm", "'norm' (LocalResponseNorm)", "norms='no_scale'"]),
        ("groupnorm", ["group_norm", "'norm' (GroupNorm)"]),
        ("se", ["sigmoid"]),
        ("gate", ["'mul' combines the map with another input-dependent tensor"]),
        ("square", ["multiplies the map by itself"]),
        ("redirected", ["clamp"]),
    ],
)
def test_input_dependent_ops_are_refused_by_name(kind, words):
    torch.manual_seed(0)
    net = _Refused(kind)
    m = _wrap(net)
    x = torch.rand(1, 3, 5, 5)
    before = m(x)
    with pytest.raises(vw.InputDependentError) as e:
        vw.expanded_weights(m, "a", "b", image_size=5)
    for w in words:
        assert w in str(e.value)
    # nothing left behind: no hooks, parameters train again, same outputs
    assert all(not hp._forward_hooks for hp in m.hook_dict.values())
    assert all(p.requires_grad for p in net.parameters())
    assert torch.equal(m(x), before)


def test_ops_after_the_later_hook_are_not_part_of_the_path():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.LocalResponseNorm(3), nn.Sigmoid())
    m = _wrap(net)
    ew = vw.expanded_weights(m, "0", "2", image_size=5)  # the LRN and sigmoid come after '2': not refused
    assert torch.allclose(ew.matrix, net[2].weight[:, :, 0, 0].detach(), atol=1e-6)
    with pytest.raises(vw.InputDependentError, match="local_response_norm"):
        vw.expanded_weights(m, "0", "3", image_size=5)


def test_no_scale_norms_are_a_stated_linear_convention():
    torch.manual_seed(0)
    for kind in ("lrn", "groupnorm"):
        net = _Refused(kind)
        m = _wrap(net)
        rel, j = _rel(m, "a.hook_out", "b.hook_out", reduce="mean", norms="no_scale")
        assert rel == 0.0
        W = net.b.weight[:, :, 0, 0].double()
        if kind == "lrn":  # the division dropped: identity (Lucid's k = 1 makes this the tangent at zero)
            expect = W
        else:  # GroupNorm(1 group): centring over (C, H, W), then the per-channel gain
            g = net.norm.weight.double()
            expect = W @ (torch.diag(g) @ (torch.eye(4, dtype=torch.float64) - 1.0 / 4))
        assert torch.allclose(j.sum((-2, -1)).double(), expect, atol=1e-6)


def test_lucid_inceptionv1_expanded_weights_do_not_depend_on_the_image():
    from visionlens.adapters.lucid_inception import LucidInceptionV1

    torch.manual_seed(0)
    m = _wrap(LucidInceptionV1())
    x1 = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    j0 = vw.expanded_weights(m, "mixed3a", "mixed3b_3x3_bottleneck", x=torch.zeros(1, 3, 64, 64), reduce="centre")
    j1 = vw.expanded_weights(m, "mixed3a", "mixed3b_3x3_bottleneck", x=x1, reduce="centre")
    assert float(j1.jacobian.abs().max()) > 0 and torch.equal(j0.jacobian, j1.jacobian)
    # through LucidReLU: the centre kernel is the weights multiplied, sum_m W3x3[o, m] W1x1[m, i]
    src = m.source
    W1 = src.mixed3b_3x3_bottleneck_pre_relu_conv.weight.detach()[:, :, 0, 0].double()
    W3 = src.mixed3b_3x3_pre_relu_conv.weight.detach().double()
    ew = vw.expanded_weights(m, "mixed3a", "mixed3b_3x3_pre_relu_conv", reduce="centre", image_size=64)
    assert ew.support() == 3
    assert torch.allclose(ew.kernel(3).double(), torch.einsum("omuv,mi->oiuv", W3, W1), atol=1e-5)
    # the LRN after conv2d0 is refused by name, and its module is named
    with pytest.raises(vw.InputDependentError, match="localresponsenorm0"):
        vw.expanded_weights(m, "conv2d0", "conv2d1", image_size=64)


def test_motifs_and_sparsity():
    M = torch.tensor([[3.0, -1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, -5.0, 0.5]])
    mo = vw.motifs(M, n=2, k=1, mass=0.9)
    assert mo.positive == [(0, 0, 3.0), (1, 0, 1.0)]
    assert mo.negative == [(2, 2, -5.0), (0, 1, -1.0)]
    assert mo.n_for_mass.tolist() == [2, 4, 1]  # 3/4 < 0.9 -> 2 inputs; uniform -> all 4; 5/5.5 = 0.91 -> 1
    assert torch.allclose(mo.topk_mass, torch.tensor([0.75, 0.25, 5 / 5.5], dtype=torch.float64))
    assert mo.sparsest(1) == [2]
    assert vw.inputs_for_mass(torch.zeros(1, 3)).tolist() == [0]


def test_banner_shows_each_input_kernel_on_one_scale():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, padding=1))
    m = _wrap(net)
    ew = vw.expanded_weights(m, "0", "2", reduce="centre", image_size=9)
    assert ew.support() == 3
    img, order = vw.banner(ew, 1)
    K = net[2].weight.detach()[1].double()  # [3, 3, 3]: adjacent layers (through a ReLU) -> the kernels themselves
    assert img.shape == (3, 3 * 4 - 1, 3)
    assert [i for i, _ in order] == torch.argsort(K.sum((1, 2)).abs(), descending=True).tolist()
    i0 = order[0][0]
    v = K[i0] / K[[i for i, _ in order]].abs().max()
    # red channel = 1 - max(-v, 0), blue = 1 - max(v, 0): the sign and size of each weight are readable
    assert np.allclose(img[:, :3, 0], 1 - np.clip(-v.numpy(), 0, 1), atol=1e-6)
    assert np.allclose(img[:, :3, 2], 1 - np.clip(v.numpy(), 0, 1), atol=1e-6)
