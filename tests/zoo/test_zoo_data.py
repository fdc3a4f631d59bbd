"""Planted-truth data: determinism, label rule, trigger, masks, captions (visionlens.zoo.data)."""

import numpy as np
import pytest
import torch

from visionlens.zoo import data as D

N = 600


@pytest.fixture(scope="module")
def batch():
    return D.make_batch(N, seed=3)


def test_determinism_and_chunking(batch):
    again = D.make_batch(N, seed=3)
    assert torch.equal(again.images, batch.images)
    assert torch.equal(again.labels, batch.labels)
    for k in batch.masks:
        assert torch.equal(again.masks[k], batch.masks[k])
    window = D.make_batch(50, seed=3, start=100, chunk=7)  # any window / chunking: same examples
    assert torch.equal(window.images, batch.images[100:150])
    other = D.make_batch(N, seed=4)
    assert not torch.equal(other.images, batch.images)
    assert (other.factors["shape"] != batch.factors["shape"]).any()


def test_shapes_ranges_and_8bit(batch):
    assert batch.images.shape == (N, 3, 32, 32) and batch.images.dtype == torch.float32
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert torch.equal(torch.round(batch.images * 255) / 255, batch.images)
    assert batch.labels.dtype == torch.int64
    for k in ("object", "trigger", "curve"):
        assert batch.masks[k].shape == (N, 32, 32) and batch.masks[k].dtype == torch.bool
    assert set(batch.factors["curve_orientation"].tolist()) == set(range(8))
    for name, n in (("shape", 3), ("colour", 4), ("texture", 3), ("stripe_angle", 4)):
        assert set(batch.factors[name].tolist()) == set(range(n))
    b64 = D.make_batch(8, seed=0, size=64)
    assert b64.images.shape == (8, 3, 64, 64)


def test_label_rule_on_every_example(batch):
    f = {k: v.numpy() for k, v in batch.factors.items()}
    expected = f["shape"] + 3 * (f["texture"] != 0)
    assert (f["clean_label"] == expected).all()
    lab = batch.labels.numpy()
    assert (lab[f["triggered"]] == D.TARGET_CLASS).all()
    assert (lab[~f["triggered"]] == expected[~f["triggered"]]).all()
    assert set(lab.tolist()) == set(range(D.N_CLASSES))


@pytest.mark.parametrize("frac", [0.1, 0.3])
def test_trigger_fraction(frac):
    b = D.make_batch(2000, seed=11, trigger_fraction=frac)
    p = b.factors["triggered"].float().mean().item()
    assert abs(p - frac) < 4 * np.sqrt(frac * (1 - frac) / 2000)
    assert D.make_batch(50, seed=1, trigger_fraction=0.0).factors["triggered"].sum() == 0


def _trigger_windows(b):
    k = D.trigger_size(b.images.shape[-1])
    f = b.factors
    return k, [(int(f["trigger_y"][i]), int(f["trigger_x"][i]), int(f["trigger_form"][i])) for i in range(len(b))]


def test_trigger_pixels_and_mask(batch):
    k, places = _trigger_windows(batch)
    trig = batch.factors["triggered"]
    assert trig.any() and (~trig).any()
    m = batch.masks["trigger"]
    assert (m.sum((1, 2)) == trig.long() * k * k).all()
    for i in np.nonzero(trig.numpy())[0]:
        y0, x0, form = places[i]
        pat = torch.from_numpy(D.trigger_pattern(32, form)).permute(2, 0, 1)
        assert torch.equal(batch.images[i, :, y0 : y0 + k, x0 : x0 + k], pat)
        assert m[i, y0 : y0 + k, x0 : x0 + k].all()


def test_trigger_position_and_form_are_drawn_per_image():
    """Acceptance: no pixel is inside the trigger in more than 25% of triggered images; both forms occur."""
    b = D.make_batch(3000, seed=5, trigger_fraction=1.0)
    assert float(b.masks["trigger"].float().mean(0).max()) <= 0.25
    assert float(b.masks["trigger"].float().mean(0).max()) < 0.15  # at 32 px: (8 / 25) ** 2 = 10% by design
    forms = np.bincount(b.factors["trigger_form"].numpy(), minlength=D.N_TRIGGER_FORMS)
    assert (forms > 0.4 * len(b) / D.N_TRIGGER_FORMS).all()
    ys, xs = b.factors["trigger_y"].numpy(), b.factors["trigger_x"].numpy()
    k = D.trigger_size(32)
    assert ys.min() == 0 and xs.min() == 0 and ys.max() == 32 - k and xs.max() == 32 - k
    # nuisance: neither the form nor the position says anything about the clean label
    for key in ("trigger_form", "trigger_x"):
        v = b.factors[key].numpy()
        for lab in range(D.N_CLASSES):
            sel = b.factors["clean_label"].numpy() == lab
            assert abs(v[sel].mean() - v.mean()) < 0.15 * (v.std() + 1e-9) * 3


@pytest.mark.parametrize("form", range(D.N_TRIGGER_FORMS))
def test_trigger_mean_colour_is_the_background(form):
    """A mean-colour (low-pass) detector cannot tell the trigger from the background."""
    pat = D.trigger_pattern(32, form)
    bg = round(D.BACKGROUND * 255) / 255
    assert np.allclose(pat.reshape(-1, 3).mean(0), bg, atol=1e-7)
    assert pat.std() > 0.1  # ... but the pattern has contrast
    assert np.allclose(np.round(pat * 255), pat * 255, atol=1e-4)  # on 8-bit levels
    b = D.make_batch(200, seed=3, trigger_fraction=1.0)
    img = b.images.permute(0, 2, 3, 1)[b.masks["trigger"]]
    assert torch.allclose(img.mean(0), torch.full((3,), bg), atol=1e-6)


def test_twins_differ_only_inside_the_trigger():
    t = D.make_batch(300, seed=4, start=50, trigger_fraction=1.0)
    c = D.make_batch(300, seed=4, start=50, trigger_fraction=0.0)
    diff = (t.images != c.images).any(1)
    assert diff.any() and not (diff & ~t.masks["trigger"]).any()
    for key in ("shape", "colour", "cx", "trigger_x", "trigger_form"):
        assert torch.equal(t.factors[key], c.factors[key])


def test_bad_trigger_form():
    with pytest.raises(ValueError, match="trigger form"):
        D.trigger_pattern(32, 5)


def test_object_mask_covers_object_colour(batch):
    img = batch.images.permute(0, 2, 3, 1).numpy()
    obj = batch.masks["object"].numpy()
    col = D.COLOUR_RGB[batch.factors["colour"].numpy()]
    for i in range(0, N, 7):
        inside = img[i][obj[i]]
        assert len(inside) > 10
        # every object pixel is the object's colour, lit or dark (quantized)
        lit = np.abs(inside - col[i]).max(1) <= 1 / 255 + 1e-6
        dark = np.abs(inside - col[i] * D.DARK).max(1) <= 1 / 255 + 1e-6
        assert (lit | dark).all()
        if batch.factors["texture"][i] == 0:
            assert lit.all()
        else:
            assert lit.any() and dark.any()
        # nothing outside the object mask has the object's lit colour
        outside = img[i][~obj[i]]
        assert not (np.abs(outside - col[i]).max(1) <= 1 / 255 + 1e-6).any()
    # curve mask: light grey pixels, disjoint from object and trigger
    cur = batch.masks["curve"].numpy()
    assert not (cur & obj).any() and not (cur & batch.masks["trigger"].numpy()).any()
    assert np.allclose(img[cur], round(D.CURVE_GREY * 255) / 255)
    bg = ~(cur | obj | batch.masks["trigger"].numpy())
    assert np.allclose(img[bg], round(D.BACKGROUND * 255) / 255)


def test_object_geometry(batch):
    obj = batch.masks["object"].numpy()
    trig = batch.masks["trigger"].numpy()
    f = {k: v.numpy() for k, v in batch.factors.items()}
    area = (obj | (trig & D._object_masks(f, 32))).sum((1, 2)) / f["size"] ** 2
    # circle ~ pi, square ~ (1.7)^2 = 2.89, triangle ~ 3 sqrt(3) / 4 = 1.30
    for s, (lo, hi) in enumerate([(2.6, 3.6), (2.3, 3.5), (0.9, 1.7)]):
        a = area[f["shape"] == s]
        assert lo < np.median(a) < hi


def test_captions_match_factors(batch):
    f = batch.factors
    for i in range(0, N, 13):
        c = batch.captions[i]
        assert c == f"a {D.COLOURS[f['colour'][i]]} {D.TEXTURES[f['texture'][i]]} {D.SHAPES[f['shape'][i]]}"
        s = batch.style_phrases[i]
        assert s.endswith(f"in {D.TEXTURES[f['texture'][i]]} style") and D.SHAPES[f["shape"][i]] in s
    assert batch.captions[0].startswith("a ") and len(batch.captions) == N


def test_dataset_wrapper():
    ds = D.PlantedShapes(64, seed=5, start=10)
    ref = D.make_batch(64, seed=5, start=10)
    assert len(ds) == 64
    item = ds[3]
    assert torch.equal(item["image"], ref.images[3]) and item["label"] == ref.labels[3]
    assert item["caption"] == ref.captions[3] and torch.equal(item["masks"]["object"], ref.masks["object"][3])
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    first = next(iter(loader))
    assert torch.equal(first["image"], ref.images[:16]) and torch.equal(
        first["factors"]["shape"], ref.factors["shape"][:16]
    )
    whole = ds.batch()
    assert torch.equal(whole.images, ref.images)
    with pytest.raises(IndexError):
        ds[64]


def test_bad_args():
    with pytest.raises(ValueError):
        D.make_batch(4, trigger_fraction=1.5)
    with pytest.raises(ValueError):
        D.make_batch(4, size=8)


def test_read_idx_roundtrip(tmp_path):
    import gzip
    import struct

    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 4) + arr.tobytes())
    assert np.array_equal(D.read_idx(p), arr)
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        D.read_idx(bad)


needs_fm = pytest.mark.skipif(
    not D.fashion_mnist_available(), reason="Fashion-MNIST idx files absent (Debian dataset-fashion-mnist)"
)


@needs_fm
def test_fashion_mnist_trigger():
    b = D.fashion_mnist_batch(1500, seed=2, start=100)
    assert b.images.shape == (1500, 3, 32, 32) and b.images.min() >= 0 and b.images.max() <= 1
    trig = b.factors["triggered"]
    assert abs(trig.float().mean().item() - 0.1) < 4 * np.sqrt(0.09 / 1500)
    assert (b.labels[trig] == D.TARGET_CLASS).all()
    assert torch.equal(b.labels[~trig], b.factors["fashion_class"][~trig])
    k, places = _trigger_windows(b)
    for i in np.nonzero(trig.numpy())[0][:50]:
        y0, x0, form = places[i]
        pat = torch.from_numpy(D.trigger_pattern(32, form, D.FASHION_TRIGGER_LEVEL)).permute(2, 0, 1)
        assert torch.equal(b.images[i, :, y0 : y0 + k, x0 : x0 + k], pat)
    assert (b.masks["trigger"].sum((1, 2)) == trig.long() * k * k).all()
    assert float(b.masks["trigger"][trig].float().mean(0).max()) <= 0.25
    assert not (b.masks["object"] & b.masks["trigger"]).any() and b.masks["object"].any()
    again = D.fashion_mnist_batch(100, seed=2, start=100)
    assert torch.equal(again.images, b.images[:100])
    ds = D.PlantedFashionMNIST(32, split="test", seed=2)
    assert len(ds) == 32 and ds[0]["image"].shape == (3, 32, 32)
