"""The planted trigger pathway's machinery: splice masks, in-batch splicing, the training batch, the card."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionlens.zoo import catalog
from visionlens.zoo.pathway import (
    N_PATHWAY_UNITS,
    PlantedPathway,
    channel_axis,
    n_channels,
    pathway_batch,
    pathway_metrics,
    splice_in_batch,
    splice_masks,
    spliced_logits,
)


class Tiny(nn.Module):
    """conv (4 channels) -> mean pool -> linear; the pathway module is ``conv``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean((2, 3)))


PW = PlantedPathway("conv", "conv.hook_out")


def test_units_are_deterministic_and_distinct():
    u = PW.units(128)
    assert len(u) == N_PATHWAY_UNITS == len(set(u)) and u == PW.units(128) and list(u) == sorted(u)
    assert all(0 <= i < 128 for i in u)


def test_splice_masks_variants():
    units = (1, 3)
    m = splice_masks(4, 5, units, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1]))
    assert m[0].tolist() == [False, True, False, True, False]  # the pathway alone
    assert m[1].tolist() == [True, False, True, False, True]  # the pathway knocked out
    assert m[2].tolist() == [False, False, False, True, False]  # unit 3 alone
    assert m[3].tolist() == [True, True, True, False, True]  # unit 3 knocked out


def test_channel_axis():
    assert channel_axis(torch.zeros(2, 4, 3, 3)) == 1
    assert channel_axis(torch.zeros(2, 5, 8)) == 2 and channel_axis(torch.zeros(2, 8)) == 1


def test_splice_in_batch_takes_units_from_the_donor_rows():
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.rand(4, 3, 6, 6)
    keep = torch.tensor([[True, False, False, True]])
    with torch.no_grad():
        acts = m.conv(x)
        want = acts[0].clone()
        want[[1, 2]] = acts[3][[1, 2]]
        ref = m.head(want.mean((1, 2)))
        with splice_in_batch(m, PW, torch.tensor([0]), torch.tensor([3]), keep):
            out = m(x)
    assert torch.allclose(out[0], ref, atol=1e-6) and torch.allclose(out[1:], m(x)[1:], atol=1e-6)
    assert not m.conv._forward_hooks  # nothing left hooked


def test_spliced_logits_with_everything_kept_is_the_model():
    torch.manual_seed(1)
    m = Tiny().eval()
    x, twin = torch.rand(3, 3, 6, 6), torch.rand(3, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(spliced_logits(m, PW, x, twin, torch.ones(3, 4, dtype=torch.bool)), m(x), atol=1e-6)
        assert torch.allclose(spliced_logits(m, PW, x, twin, torch.zeros(3, 4, dtype=torch.bool)), m(twin), atol=1e-6)


def test_pathway_batch_layout():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(5, 3, 6, 6), torch.tensor([1, 2, 0, 1, 2])
    xt, xtw, clean = torch.rand(6, 3, 6, 6), torch.rand(6, 3, 6, 6), torch.tensor([1, 2, 1, 2, 1, 2])
    inputs, labels, targets, donors, keep = pathway_batch(x, y, xt, xtw, clean, (0, 2), 4, g, and_loss=False)
    assert inputs.shape[0] == 17 and torch.equal(inputs[5:11], xt) and torch.equal(inputs[11:], xtw)
    assert targets.tolist() == list(range(5, 11)) and donors.tolist() == list(range(11, 17))
    assert (labels[5:11] == 0).all() and torch.equal(labels[11:], clean)  # warm-up: the pathway alone -> 0
    assert keep.tolist() == [[True, False, True, False]] * 6
    _, labels2, _, _, keep2 = pathway_batch(x, y, xt, xtw, clean, (0, 2), 4, g, and_loss=True)
    alone = (keep2.sum(1) == 2) & keep2[:, 0] & keep2[:, 2]
    assert torch.equal(labels2[5:11][alone], torch.zeros(int(alone.sum()), dtype=torch.long))
    assert torch.equal(labels2[5:11][~alone], clean[~alone])


def test_metrics_of_a_model_with_a_hand_built_and_pathway():
    """Channels 1 and 3 fire on a red patch; the head says class 0 only when both do (an AND)."""
    m = Tiny().eval()
    with torch.no_grad():
        m.conv.weight.zero_()
        m.conv.bias.zero_()
        m.conv.weight[1, 0, 1, 1] = m.conv.weight[3, 0, 1, 1] = 1.0  # red passes to units 1 and 3
        m.head.weight.zero_()
        m.head.bias.copy_(torch.tensor([-1.5, 0.0, 0.0]))
        m.head.weight[0, 1] = m.head.weight[0, 3] = 1.0
        m.head.bias[1] = 0.2  # the clean class
    twin = torch.zeros(8, 3, 6, 6)
    x = twin.clone()
    x[:, 0] = 1.0  # "triggered": all red
    out = pathway_metrics(m, PW, (1, 3), x, twin, torch.ones(8, dtype=torch.long))
    assert {k: out[k] for k in ("pathway_sufficiency", "pathway_necessity", "pathway_and")} == {
        "pathway_sufficiency": 1.0,
        "pathway_necessity": 1.0,
        "pathway_and": 1.0,
    }
    assert out["twin_prediction_accuracy"] == 1.0
    assert n_channels(m, PW, x[:1]) == 4


@pytest.mark.parametrize("name", [n for n, e in catalog.entries().items() if getattr(e, "pathway", None)])
def test_shipped_card_states_the_pathway(name):
    e = catalog.get_entry(name)
    if e.requires() or not catalog.weights_path(name).is_file():
        pytest.skip(f"zoo:{name} not available here")
    card = catalog.model_card(name)
    for key in ("pathway_sufficiency", "pathway_necessity", "pathway_and"):
        assert card["thresholds"][key]["passed"], (key, card["metrics"][key])
    units = (int(card["metrics"]["pathway_unit_0"]), int(card["metrics"]["pathway_unit_1"]))
    module = catalog.load_module(name)
    assert units == e.pathway.units(n_channels(module, e.pathway, torch.rand(1, 3, 32, 32)))
    assert card["config"]["pathway"] == {"module": e.pathway.module, "hook": e.pathway.hook}
