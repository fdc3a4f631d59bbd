"""Written words on images, offline and deterministic: a 3 x 5 pixel bitmap font defined in code.

Used to plant and probe multimodal units (:mod:`visionlens.zoo.clip_glyph_model`,
:mod:`visionlens.plugins.clip_multimodal_neurons`): a word is drawn as a ``5 x (4 * len - 1)`` mask
(3-pixel letters, 1-pixel gaps), optionally scaled by an integer factor, and pasted into an image at a
given position with a given colour. No font file, no PIL font: the glyphs below are the whole font, so
the pixels are the same on every machine and library version.

* :func:`word_mask` -- the boolean mask of a word (letters a-z; other characters are blank);
* :func:`stroke_mask` -- a control: random glyph-like 3 x 5 blocks of the letters' mean ink density,
  as wide as a given word, that spell nothing;
* :func:`paste` -- draw a mask into ``float [3, H, W]`` images;
* :func:`word_images` -- a word (or strokes) on a blank canvas at seeded positions and colours;
* :func:`write_on` -- a word written on given images at seeded positions and colours (the
  typographic attack).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

GLYPH_H, GLYPH_W = 5, 3
# one entry per letter: five rows of three pixels, top to bottom ('1' lit)
FONT = {
    "a": "010 101 111 101 101",
    "b": "110 101 110 101 110",
    "c": "011 100 100 100 011",
    "d": "110 101 101 101 110",
    "e": "111 100 110 100 111",
    "f": "111 100 110 100 100",
    "g": "011 100 101 101 011",
    "h": "101 101 111 101 101",
    "i": "111 010 010 010 111",
    "j": "001 001 001 101 010",
    "k": "101 101 110 101 101",
    "l": "100 100 100 100 111",
    "m": "101 111 111 101 101",
    "n": "110 101 101 101 101",
    "o": "010 101 101 101 010",
    "p": "110 101 110 100 100",
    "q": "010 101 101 110 011",
    "r": "110 101 110 101 101",
    "s": "011 100 010 001 110",
    "t": "111 010 010 010 010",
    "u": "101 101 101 101 111",
    "v": "101 101 101 101 010",
    "w": "101 101 111 111 101",
    "x": "101 101 010 101 101",
    "y": "101 101 010 010 010",
    "z": "111 001 010 100 111",
}
WORD_LEVELS = (0.85, 1.0)  # words are drawn in a light grey drawn uniformly from this range


def _letter(ch: str) -> np.ndarray:
    rows = FONT.get(ch.lower())
    if rows is None:
        return np.zeros((GLYPH_H, GLYPH_W), dtype=bool)
    return np.array([[c == "1" for c in r] for r in rows.split()], dtype=bool)


def word_width(n_chars: int, scale: int = 1) -> int:
    """Width in pixels of ``n_chars`` letters: ``(4 n - 1) * scale``."""
    return max(0, 4 * n_chars - 1) * int(scale)


def word_mask(word: str, scale: int = 1) -> np.ndarray:
    """``bool [5 * scale, (4 len - 1) * scale]``: the word in the 3 x 5 font, 1-pixel gaps between letters."""
    out = np.zeros((GLYPH_H, word_width(len(word))), dtype=bool)
    for i, ch in enumerate(word):
        out[:, 4 * i : 4 * i + GLYPH_W] = _letter(ch)
    return out.repeat(scale, 0).repeat(scale, 1) if scale > 1 else out


def ink_density() -> float:
    """Mean fraction of lit pixels of the 26 letters (the density of :func:`stroke_mask`)."""
    return float(np.mean([_letter(c).mean() for c in FONT]))


def stroke_mask(n_chars: int, seed: int = 0, scale: int = 1) -> np.ndarray:
    """A control: ``n_chars`` random 3 x 5 blocks with the letters' mean ink density, laid out like a word
    (same size and gaps as :func:`word_mask`), seeded; they spell nothing (a block equal to a letter is redrawn)."""
    rng = np.random.default_rng([int(seed), 0x57C])
    letters = {_letter(c).tobytes() for c in FONT}
    out = np.zeros((GLYPH_H, word_width(n_chars)), dtype=bool)
    p = ink_density()
    for i in range(n_chars):
        while True:
            g = rng.random((GLYPH_H, GLYPH_W)) < p
            if g.any() and g.tobytes() not in letters:
                break
        out[:, 4 * i : 4 * i + GLYPH_W] = g
    return out.repeat(scale, 0).repeat(scale, 1) if scale > 1 else out


def paste(images: Tensor, mask: np.ndarray, ys: Sequence[int], xs: Sequence[int], levels: Sequence[float]) -> Tensor:
    """A copy of ``images`` ``float [N, 3, H, W]`` with ``mask`` drawn at ``(ys[i], xs[i])`` in grey ``levels[i]``
    (8-bit levels; the mask is clipped at the border)."""
    out = images.clone()
    m = torch.from_numpy(np.ascontiguousarray(mask))
    h, w = m.shape
    H, W = out.shape[-2:]
    for i, (y, x, v) in enumerate(zip(ys, xs, levels)):
        y0, x0 = max(int(y), 0), max(int(x), 0)
        y1, x1 = min(int(y) + h, H), min(int(x) + w, W)
        if y1 <= y0 or x1 <= x0:
            continue
        sub = m[y0 - int(y) : y1 - int(y), x0 - int(x) : x1 - int(x)]
        lvl = round(float(v) * 255) / 255
        out[i, :, y0:y1, x0:x1] = torch.where(sub, torch.tensor(lvl, dtype=out.dtype), out[i, :, y0:y1, x0:x1])
    return out


def placements(n: int, size: Tuple[int, int], mask_shape: Tuple[int, int], seed: int) -> Tuple[list, list, list]:
    """``(ys, xs, levels)``: ``n`` seeded positions where a mask of ``mask_shape`` fits in ``size``, and grey levels."""
    rng = np.random.default_rng([int(seed), 0x6C7])
    H, W = size
    h, w = mask_shape
    ys = rng.integers(0, max(H - h, 0) + 1, n).tolist()
    xs = rng.integers(0, max(W - w, 0) + 1, n).tolist()
    levels = rng.uniform(*WORD_LEVELS, n).tolist()
    return ys, xs, levels


def text_mask(text: Union[str, int], scale: int = 1, seed: int = 0) -> np.ndarray:
    """The mask of a word, or (``text`` an int ``n``) of ``n`` random strokes (:func:`stroke_mask`)."""
    return stroke_mask(int(text), seed=seed, scale=scale) if isinstance(text, int) else word_mask(text, scale)


def write_on(images: Tensor, text: Union[str, int], seed: int = 0, scale: int = 1) -> Tensor:
    """``images`` with ``text`` (a word, or an int: that many random strokes) written at seeded places."""
    mask = text_mask(text, scale, seed)
    ys, xs, levels = placements(len(images), tuple(images.shape[-2:]), mask.shape, seed)
    return paste(images, mask, ys, xs, levels)


def word_images(
    text: Union[str, int],
    n: int,
    size: int = 32,
    background: float = 0.12,
    seed: int = 0,
    scale: int = 1,
    canvas: Optional[Tensor] = None,
) -> Tensor:
    """``n`` images ``float [n, 3, size, size]`` of ``text`` on a flat ``background`` (or on ``canvas``
    ``[n, 3, H, W]``), at seeded positions and grey levels."""
    base = canvas if canvas is not None else torch.full((n, 3, size, size), round(background * 255) / 255)
    return write_on(base, text, seed=seed, scale=scale)
