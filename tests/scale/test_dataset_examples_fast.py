"""The fast paths of ``dataset_examples`` give exactly what the reference (slow) code gave.

* ``unit_extremes`` (max / min with the first extremal position, no channels-last copy) equals
  ``amax`` / ``argmax`` / ``amin`` / ``argmin`` over :func:`visionlens.hook_select.unit_layout`'s samples,
  with ties and NaNs, for maps, tokens, per-head activations and vectors;
* ``build_tables`` (one ``tolist`` per hook) equals the row-by-row table built from ``examples()``.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import visionlens
from visionlens.hook_select import unit_layout
from visionlens.plugins.dataset_examples import unit_extremes, unit_positions


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equal, NaN equal to NaN."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def _reference(hook: str, act: torch.Tensor):
    samples, pos = unit_layout(hook, act)
    return samples.amax(1), samples.argmax(1), samples.amin(1), samples.argmin(1), tuple(pos)


@pytest.mark.parametrize(
    "hook,shape",
    [
        ("layer1.hook_out", (3, 5, 4, 6)),  # conv map [B, C, H, W]
        ("blocks.0.hook_resid_post", (3, 7, 5)),  # tokens [B, T, D]
        ("blocks.0.attn.hook_q", (3, 7, 2, 4)),  # per head [B, T, heads, d]
        ("head.hook_out", (3, 9)),  # pooled [B, D]
        ("conv3d.hook_out", (2, 3, 2, 3, 4)),  # [B, C, D, H, W]
    ],
)
def test_unit_extremes_equal_the_unit_layout_reference(hook, shape):
    g = torch.Generator().manual_seed(0)
    act = torch.randint(-3, 4, shape, generator=g).float()  # few distinct values: many ties
    flat = act.view(-1)
    flat[5] = float("nan")
    (hv, hi), lo = unit_extremes(hook, act)
    ref = _reference(hook, act)
    assert bool(torch.isnan(hv).any())  # the NaN propagates to its unit, as amax does
    assert _same(hv, ref[0]) and torch.equal(hi, ref[1])
    assert lo is not None and _same(lo[0], ref[2]) and torch.equal(lo[1], ref[3])
    assert unit_positions(hook, act) == ref[4]
    assert unit_extremes(hook, act, bottom=False)[1] is None


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Flatten())


def _reference_rows(res):
    rows = []
    for h in res.hooks:
        for u in range(min(50, res.n_units(h))):
            top = res.examples(h, u, "top")[0]
            bottoms = res.examples(h, u, "bottom")
            bot = bottoms[0] if bottoms else None
            rows.append(
                [
                    h,
                    u,
                    top["value"],
                    top["name"],
                    list(top["location"]),
                    bot["value"] if bot else None,
                    bot["name"] if bot else "",
                ]
            )
    return rows


@pytest.mark.parametrize("bottom_k", [2, 0])
def test_build_tables_equal_the_row_by_row_reference(bottom_k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = visionlens.HookedVisionModel.from_module(_net()).eval()
    x = torch.randn(7, 3, 10, 10, generator=torch.Generator().manual_seed(2))
    res = visionlens.run(
        "dataset_examples", model, x, hooks=["0.hook_out", "2.hook_out", "3.hook_out"],
        top_k=3, bottom_k=bottom_k, batch_size=3, crop_units=0,
    )  # fmt: skip
    rows = res.tables["units"].rows
    assert len(rows) == 4 + 6 + 50  # the flattened hook has 6 * 3 * 3 = 54 units: 50 shown
    assert rows == _reference_rows(res)
    assert all(isinstance(r[2], float) and isinstance(r[3], str) for r in rows)
    assert (rows[-1][5] is None) == (bottom_k == 0)
