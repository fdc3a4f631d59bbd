"""Mergeable reducers: equality with one-shot computations, associativity, checkpoints."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from visionlens.reducers import (
    FractionActive,
    Histogram,
    RunningMoments,
    TopK,
    atomic_write_bytes,
    load_checkpoint,
    merge_all,
    save_checkpoint,
)


def _chunks(n: int, sizes: list[int]) -> list[slice]:
    out, i = [], 0
    for s in sizes:
        out.append(slice(i, min(n, i + s)))
        i += s
    assert i >= n
    return out


@pytest.fixture
def data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(103, 7, generator=g) * 3 + 5


# ----------------------------------------------------------------------------- moments
def test_moments_equal_one_shot(data):
    m = RunningMoments()
    for sl in _chunks(len(data), [1, 10, 2, 40, 50]):
        m.update(data[sl])
    x = data.double()
    assert m.count == 103
    torch.testing.assert_close(m.mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(m.var, x.var(0, unbiased=False), rtol=0, atol=1e-10)
    torch.testing.assert_close(m.sample_var, x.var(0, unbiased=True), rtol=0, atol=1e-10)
    torch.testing.assert_close(m.std, x.std(0, unbiased=False), rtol=0, atol=1e-10)
    assert torch.equal(m.min, x.amin(0)) and torch.equal(m.max, x.amax(0))


def test_moments_merge_associative_and_commutative(data):
    a, b, c = (RunningMoments().update(data[sl]) for sl in _chunks(len(data), [30, 3, 70]))
    left, right = a.merge(b).merge(c), a.merge(b.merge(c))
    swapped = c.merge(a).merge(b)
    for other in (right, swapped):
        assert other.count == left.count
        torch.testing.assert_close(other.mean, left.mean, rtol=0, atol=1e-12)
        torch.testing.assert_close(other.var, left.var, rtol=0, atol=1e-10)
    torch.testing.assert_close(left.mean, data.double().mean(0), rtol=0, atol=1e-12)
    # merging never mutates its inputs
    assert a.count == 30 and b.count == 3 and c.count == 70


def test_moments_empty_and_multidim_units():
    e = RunningMoments()
    x = torch.randn(20, 3, 4)
    m = RunningMoments().update(x)
    assert e.merge(m).count == 20 and m.merge(e).count == 20
    torch.testing.assert_close(e.merge(m).mean, x.double().mean(0))
    assert e.merge(RunningMoments()).count == 0
    with pytest.raises(ValueError, match="no data"):
        _ = e.mean
    with pytest.raises(ValueError, match="shapes"):
        m.merge(RunningMoments().update(torch.randn(3, 5)))


def test_moments_large_offset_is_stable():
    # Welford / Chan keep precision where the naive sum-of-squares formula breaks down.
    x = torch.randn(1000, 2, dtype=torch.float64) + 1e8
    m = merge_all(RunningMoments().update(x[i : i + 100]) for i in range(0, 1000, 100))
    torch.testing.assert_close(m.var, x.var(0, unbiased=False), rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- top-k
def _reference_topk(values: torch.Tensor, k: int, largest: bool = True):
    """One-shot top-k per unit with ties broken by lower example index."""
    idx = []
    for u in range(values.shape[1]):
        col = values[:, u].tolist()
        order = sorted(range(len(col)), key=lambda i: ((-col[i] if largest else col[i]), i))
        idx.append(order[:k])
    return torch.tensor(idx).T  # [k, units]


@pytest.mark.parametrize("largest", [True, False])
def test_topk_equals_one_shot_with_ties(largest):
    g = torch.Generator().manual_seed(1)
    values = torch.randint(0, 5, (60, 4), generator=g).float()  # many ties
    loc = torch.randint(0, 9, (60, 4, 2), generator=g)
    t = TopK(k=6, largest=largest)
    for sl in _chunks(60, [7, 1, 13, 39]):
        t.update(values[sl], torch.arange(60)[sl], loc[sl])
    ref = _reference_topk(values, 6, largest)
    assert torch.equal(t.index, ref)
    assert torch.equal(t.values.float(), values.gather(0, ref))
    expected_loc = torch.stack([loc[ref[:, u], u] for u in range(4)], dim=1)
    assert torch.equal(t.location, expected_loc)


def test_topk_merge_associative_exact():
    g = torch.Generator().manual_seed(2)
    values = torch.randint(0, 3, (45, 5), generator=g).float()
    parts = [TopK(4).update(values[sl], torch.arange(45)[sl]) for sl in _chunks(45, [10, 20, 15])]
    a, b, c = parts
    for r in (a.merge(b).merge(c), a.merge(b.merge(c)), c.merge(b).merge(a)):
        assert torch.equal(r.index, _reference_topk(values, 4))
        assert torch.equal(r.values, a.merge(b).merge(c).values)


def test_topk_fewer_than_k_and_errors():
    t = TopK(10).update(torch.tensor([[1.0], [3.0], [2.0]]), [5, 6, 7])
    assert t.index[:, 0].tolist() == [6, 7, 5] and t.seen == 3
    with pytest.raises(ValueError, match="k >= 1"):
        TopK(0)
    with pytest.raises(ValueError, match="Cannot merge"):
        TopK(3).merge(TopK(4))
    with pytest.raises(TypeError):
        TopK(3).merge(RunningMoments())


def test_topk_nan_never_wins():
    t = TopK(2).update(torch.tensor([[float("nan")], [1.0], [0.5]]), [0, 1, 2])
    assert t.index[:, 0].tolist() == [1, 2]


# ----------------------------------------------------------------------------- counters
def test_fraction_active_exact_and_associative(data):
    x = data - 5
    parts = [FractionActive(0.5).update(x[sl]) for sl in _chunks(len(x), [50, 50, 3])]
    a, b, c = parts
    l, r = a.merge(b).merge(c), a.merge(b.merge(c))
    assert torch.equal(l.active, r.active) and l.total == r.total == 103
    assert torch.equal(l.active, (x > 0.5).sum(0))
    torch.testing.assert_close(l.fraction, (x > 0.5).double().mean(0))
    with pytest.raises(ValueError, match="thresholds"):
        a.merge(FractionActive(0.0))


def test_histogram_matches_numpy(data):
    edges = [-2.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    h = merge_all(Histogram(edges).update(data[sl]) for sl in _chunks(len(data), [40, 63]))
    assert h.counts.shape == (7, len(edges) + 1)
    for u in range(7):
        col = data[:, u].double().numpy()
        inner, _ = np.histogram(col, bins=edges)
        # numpy's last bin is closed on the right; ours is half-open, so compare the half-open form
        below, above = int((col < edges[0]).sum()), int((col >= edges[-1]).sum())
        ours = h.counts[u].tolist()
        assert ours[0] == below and ours[-1] == above
        assert sum(ours) == 103
        assert ours[1:-2] == inner[:-1].tolist()


# ----------------------------------------------------------------------------- state
def test_state_dict_roundtrip_and_resume_equality(data):
    m1 = RunningMoments().update(data[:50])
    t1 = TopK(3).update(data[:50], torch.arange(50), torch.zeros(50, 7, 1, dtype=torch.long))
    f1 = FractionActive(5.0).update(data[:50])
    # "interrupt": restore from state dicts and continue
    m2 = RunningMoments.from_state_dict(m1.state_dict()).update(data[50:])
    t2 = TopK.from_state_dict(t1.state_dict()).update(
        data[50:], torch.arange(50, 103), torch.zeros(53, 7, 1, dtype=torch.long)
    )
    f2 = FractionActive.from_state_dict(f1.state_dict()).update(data[50:])
    torch.testing.assert_close(m2.mean, data.double().mean(0), rtol=0, atol=1e-12)
    assert torch.equal(t2.index, _reference_topk(data, 3))
    assert torch.equal(f2.active, (data > 5).sum(0))
    for r in (m2, t2, f2):
        r2 = pickle.loads(pickle.dumps(r))
        assert {k: v.tolist() for k, v in r2.state_dict().items()} == {k: v.tolist() for k, v in r.state_dict().items()}


def test_checkpoint_file_roundtrip(tmp_path, data):
    reducers = {
        "blocks.0.hook_resid_post/moments": RunningMoments().update(data),
        "x/topk": TopK(2, largest=False).update(data, torch.arange(103)),
        "x/active": FractionActive().update(data),
        "x/hist": Histogram([0.0, 5.0]).update(data),
        "empty": RunningMoments(),
    }
    path = tmp_path / "ck.safetensors"
    save_checkpoint(path, reducers, {"next_index": 103, "hooks": ["a"]})
    loaded, meta = load_checkpoint(path)
    assert meta == {"next_index": 103, "hooks": ["a"]}
    assert set(loaded) == set(reducers)
    for name, r in reducers.items():
        assert type(loaded[name]) is type(r)
        a, b = r.state_dict(), loaded[name].state_dict()
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    assert os.listdir(tmp_path) == ["ck.safetensors"]  # no temp files left behind


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
