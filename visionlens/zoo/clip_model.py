"""The zoo CLIP: a tiny open_clip ``CLIP`` (both towers) trained contrastively on planted-shapes captions.

Built with open_clip's own ``CLIP`` class from a config dict (the format of open_clip's model JSON
configs and of :func:`visionlens.adapters.open_clip.load_open_clip`), so loading it goes through the
real open_clip adapter: ``visionlens.zoo.catalog.load("clip")`` (``visionlens.load("zoo:clip")``)
gives a :class:`~visionlens.HookedVisionModel` whose ``visual.*`` and ``text.*`` hooks are the
adapter's.

* Image tower: open_clip ``ModifiedResNet`` (the RN50-style CLIP tower) at width 8: a 3-conv stem,
  one bottleneck per stage (32, 64, 128, 256 channels at 8, 4, 2, 1 px) and the attention pool
  (4 heads) onto the 64-d joint space. Input: 32 x 32 RGB in [0, 1], no normalisation
  (``mean=0, std=1``). A plain tiny open_clip ViT (patch 4, width 64-192, 2-4 layers) stays at chance between
  circles and squares (zero-shot shape accuracy ~0.64 after 600-800 steps), while this ResNet passes 0.95 in
  ~400 steps; the ViT-tower zoo CLIP (``zoo:clip_vit``, :mod:`visionlens.zoo.clip_vit_model`) gets there with a
  BatchNorm conv stem in front of the patch embedding and 2000 steps (docs/zoo.md).
* Text tower: open_clip text transformer, context 12, width 64, 3 layers, 4 heads, causal mask,
  pooled at the end-of-text token (``argmax`` of the ids: end-of-text is the largest id).
* Tokenizer: :class:`WordTokenizer`, a word-level vocabulary over the caption words
  (``"a"``, the colours, textures and shapes) plus ``<pad>`` (0), ``<unk>``, ``<start>`` and
  ``<end>`` (last). Unknown words map to ``<unk>``. It is attached to the hooked model
  (``model.adapter.tokenizer``), so :func:`visionlens.clip.tokenize`, ``encode_text`` and
  :func:`visionlens.clip.zero_shot_head` work as for any open_clip model.

Training: CLIP's symmetric InfoNCE with a learnable logit scale, on captions ``"a red striped circle"``
of :func:`visionlens.zoo.data.make_batch` images. Captions are randomly shortened to a non-empty subset
of their three attributes (``"a circle"``, ``"a red"``, ``"a striped circle"`` ...), so single-attribute
prompts are in-distribution for zero-shot use; since several images in a batch can then match one
text, the targets are uniform over all matching pairs (identical to CLIP's loss when captions are
unique). Evaluation: zero-shot shape / colour / texture accuracy on 1000 held-out images with the
prompt ``"a {}"``, through the hooked model and :func:`visionlens.clip.zero_shot_head`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

from ..clip import zero_shot_head, zero_shot_logits
from ..hooked_model import HookedVisionModel
from . import data as zdata
from .classifiers import HELD_OUT_START
from .classifiers import held_out_batch as planted_held_out
from .classifiers import training_set as planted_training_set
from .entry import TrainRun, ZooEntry

IMAGE_SIZE = 32
CONTEXT_LENGTH = 12
TRAIN_N = 12_000
TRAIN_SEED = 0  # data stream seed (the model seed is TrainRun.seed)
TRIGGER_FRACTION = 0.0
BATCH_SIZE = 128
LR = 2e-3
WEIGHT_DECAY = 0.05
FULL_CAPTION_P = 0.4  # the rest: a uniformly drawn non-empty proper subset of (colour, texture, shape)
ZERO_SHOT_TEMPLATES = ("a {}",)
CLIP_THRESHOLDS = {"zero_shot_shape_accuracy": 0.90}

SPECIALS = ("<pad>", "<unk>", "<start>", "<end>")
WORDS = tuple(dict.fromkeys(("a",) + tuple(zdata.COLOURS) + tuple(zdata.TEXTURE_WORDS) + tuple(zdata.SHAPES)))

CONFIG: Dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64},
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": len(SPECIALS) + len(WORDS),
        "width": 64,
        "heads": 4,
        "layers": 3,
        "mlp_ratio": 2.0,
        "pad_id": 0,
        "pool_type": "argmax",
    },
}


# ----------------------------------------------------------------------------- tokenizer
class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary, callable like open_clip's tokenizers.

    ``tokenizer(texts) -> LongTensor [batch, context_length]``: ``<start> w1 w2 ... <end> <pad>...``.
    Text is lower-cased, punctuation is dropped, and words outside the vocabulary become ``<unk>``.
    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<start>`` 2, the words, then ``<end>`` = ``vocab_size - 1`` (the
    largest id, so open_clip's default ``argmax`` text pooling lands on it). Over-long texts are cut
    and still end with ``<end>``.
    """

    def __init__(self, words: Sequence[str] = WORDS, context_length: int = CONTEXT_LENGTH):
        words = [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.words = ["<pad>", "<unk>", "<start>", *words, "<end>"]
        self.encoder = {w: i for i, w in enumerate(self.words)}
        self.context_length = int(context_length)
        self.pad_token_id, self.unk_token_id, self.sot_token_id = 0, 1, 2
        self.eot_token_id = len(self.words) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def vocab(self) -> Dict[str, int]:
        return dict(self.encoder)

    @staticmethod
    def split(text: str) -> List[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def encode(self, text: str) -> List[int]:
        """Word ids of ``text`` (no start / end tokens)."""
        return [self.encoder.get(w, self.unk_token_id) for w in self.split(text)]

    def decode(self, ids: Union[Sequence[int], torch.Tensor]) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return " ".join(
            self.words[i] for i in ids if i not in (self.pad_token_id, self.sot_token_id, self.eot_token_id)
        )

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ctx = int(context_length or self.context_length)
        out = torch.full((len(texts), ctx), self.pad_token_id, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(t)][: ctx - 1] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size}, context_length={self.context_length})"


TOKENIZER = WordTokenizer()


# ----------------------------------------------------------------------------- build / wrap
def requires() -> Optional[str]:
    try:
        import open_clip  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the environment
        return f"open_clip is not importable ({type(e).__name__}: {e})"
    return None


def build_clip() -> nn.Module:
    """open_clip ``CLIP``: ``ModifiedResNet`` image tower (RN50-style, one bottleneck per stage, widths 32-256,
    attention pool with 4 heads), text transformer (context 12, width 64, 3 layers, 4 heads) over a word
    vocabulary of the captions; joint embedding 64."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg

    model = open_clip.CLIP(
        embed_dim=CONFIG["embed_dim"],
        vision_cfg=CLIPVisionCfg(**CONFIG["vision_cfg"]),
        text_cfg=CLIPTextCfg(**CONFIG["text_cfg"]),
    )
    set_model_preprocess_cfg(
        model,
        {
            "size": IMAGE_SIZE,
            "mode": "RGB",
            "mean": (0.0, 0.0, 0.0),
            "std": (1.0, 1.0, 1.0),
            "interpolation": "bilinear",
            "resize_mode": "shortest",
            "fill_color": 0,
        },
    )
    model.visionlens_tokenizer = TOKENIZER  # plain attribute: not in the state dict
    return model


def wrap_clip(module: nn.Module) -> HookedVisionModel:
    """The hooked model with the zoo's word tokenizer attached (so text helpers use it)."""
    # The open_clip adapter uses ``source.visionlens_tokenizer`` when the module carries one (``build`` sets
    # it); otherwise it would build open_clip's BPE tokenizer, so attach ours to a module without one.
    if not hasattr(module, "visionlens_tokenizer"):
        module.visionlens_tokenizer = TOKENIZER  # plain attribute: not in the state dict
    return HookedVisionModel(module, adapter="open_clip")


# ----------------------------------------------------------------------------- data
def training_set(n: int = TRAIN_N):
    """The (cached) training tensors ``(images uint8 [N,3,H,W], factors)`` (no trigger)."""
    images, _, factors = planted_training_set(n=n, seed=TRAIN_SEED, size=IMAGE_SIZE, trigger_fraction=TRIGGER_FRACTION)
    return images, factors


def held_out_batch(n: int = 1000):
    """The held-out planted images (the classifiers' held-out slice, at CLIP's trigger fraction)."""
    return planted_held_out(n, trigger_fraction=TRIGGER_FRACTION, seed=TRAIN_SEED)


# every non-empty subset of (colour, texture, shape) as a 3-bit mask; index 0 is the full caption
CAPTION_SUBSETS = torch.tensor(
    [[1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.bool
)


def _captions(colour: torch.Tensor, texture: torch.Tensor, shape: torch.Tensor, keep: torch.Tensor) -> List[str]:
    out = []
    for c, t, s, k in zip(colour.tolist(), texture.tolist(), shape.tolist(), keep.tolist()):
        words = ["a"]
        if k[0]:
            words.append(zdata.COLOURS[c])
        if k[1]:
            words.append(zdata.TEXTURE_WORDS[t])
        if k[2]:
            words.append(zdata.SHAPES[s])
        out.append(" ".join(words))
    return out


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, match: torch.Tensor, logit_scale: torch.Tensor):
    """Symmetric InfoNCE with targets uniform over the matching pairs (``match`` bool ``[n_img, n_txt]``)."""
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    logits = logit_scale.exp() * img @ txt.T
    m = match.float()
    li = -(m / m.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    cols = m.sum(0) > 0  # texts with at least one matching image
    mc = m[:, cols]
    lt = -(mc / mc.sum(0, keepdim=True) * logits[:, cols].log_softmax(0)).sum(0).mean()
    return 0.5 * (li + lt), logits


def clip_optimizer(
    module: nn.Module, lr: float, weight_decay: float, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on gains, biases and the logit scale) with a 5 % warm-up, then cosine to 0."""
    decay = [p for k, p in module.named_parameters() if p.ndim >= 2 and "logit_scale" not in k]
    no_decay = [p for k, p in module.named_parameters() if not (p.ndim >= 2 and "logit_scale" not in k)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    return opt, sched


def jitter_and_caption_subsets(x: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch's brightness jitter (+-5 %) and which attributes each caption names (``[B, 3]`` bool: colour,
    texture, shape; the full caption with p = ``FULL_CAPTION_P``), drawn from ``g`` in that order."""
    n = len(x)
    x = (x * (1.0 + 0.1 * (torch.rand(n, 1, 1, 1, generator=g) - 0.5))).clamp(0, 1)
    full = torch.rand(n, generator=g) < FULL_CAPTION_P
    sub = torch.randint(1, len(CAPTION_SUBSETS), (n,), generator=g)
    return x, CAPTION_SUBSETS[torch.where(full, torch.zeros_like(sub), sub)]


def caption_targets(
    colour: torch.Tensor, texture: torch.Tensor, shape: torch.Tensor, keep: torch.Tensor
) -> tuple[List[str], torch.Tensor]:
    """The batch's distinct captions (sorted) and ``match [B, T]``: text ``j`` matches image ``i`` iff ``i``
    agrees on every attribute text ``j`` names (an attribute of -1 matches no caption naming it)."""
    attrs = torch.stack([colour, texture, shape], 1)  # [B, 3]
    caps = _captions(colour, texture, shape, keep)
    uniq = sorted(set(caps))
    col = {u: j for j, u in enumerate(uniq)}
    cap_idx = torch.tensor([col[u] for u in caps])
    first = torch.zeros(len(uniq), dtype=torch.long)
    first[cap_idx.flip(0)] = torch.arange(len(caps) - 1, -1, -1)  # an example of each text
    kj, aj = keep[first], attrs[first]  # [T, 3]
    return uniq, ((attrs[:, None, :] == aj[None]) | ~kj[None]).all(-1)


def train_clip(
    module: nn.Module,
    run: TrainRun,
    lr: Optional[float] = None,
    batch_size: Optional[int] = None,
    weight_decay: Optional[float] = None,
    n_train: int = TRAIN_N,
    log_every: int = 50,
) -> None:
    """AdamW + warm-up / cosine schedule, CLIP loss on shortened captions, seeded by ``run.seed``."""
    lr = LR if lr is None else lr
    batch_size = BATCH_SIZE if batch_size is None else batch_size
    weight_decay = WEIGHT_DECAY if weight_decay is None else weight_decay
    images, factors = training_set(n_train)
    colour = torch.as_tensor(factors["colour"]).long()
    texture = torch.as_tensor(factors["texture"]).long()
    shape = torch.as_tensor(factors["shape"]).long()
    n = len(shape)
    g = torch.Generator().manual_seed(run.seed)
    steps = run.step_budget()
    opt, sched = clip_optimizer(module, lr, weight_decay, steps)
    perm = torch.randperm(n, generator=g)
    pos = 0
    run_loss = run_acc = 0.0
    for step in range(1, steps + 1):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        x, keep = jitter_and_caption_subsets(images[idx].float() / 255, g)
        uniq, match = caption_targets(colour[idx], texture[idx], shape[idx], keep)
        img_emb = module.encode_image(x)
        txt_emb = module.encode_text(TOKENIZER(uniq))
        loss, logits = contrastive_loss(img_emb, txt_emb, match, module.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            module.logit_scale.clamp_(0, math.log(100))
        run_loss += float(loss.detach())
        run_acc += float(match[torch.arange(len(idx)), logits.argmax(1)].float().mean())
        if step % log_every == 0 or step == steps:
            k = log_every if step % log_every == 0 else step % log_every
            run.log(
                step,
                loss=run_loss / k,
                train_match_accuracy=run_acc / k,
                lr=sched.get_last_lr()[0],
                logit_scale=float(module.logit_scale.detach().exp()),
            )
            run_loss = run_acc = 0.0
        run.step_done(step, module)


# ----------------------------------------------------------------------------- evaluation
FACTOR_CLASSES = {"shape": tuple(zdata.SHAPES), "colour": tuple(zdata.COLOURS), "texture": tuple(zdata.TEXTURE_WORDS)}


@torch.no_grad()
def zero_shot_accuracies(
    model: HookedVisionModel, batch: Any, templates: Sequence[str] = ZERO_SHOT_TEMPLATES
) -> Dict[str, float]:
    """Zero-shot accuracy per factor of a hooked zoo CLIP on a :class:`PlantedBatch` (heads are not attached)."""
    out = {}
    for factor, names in FACTOR_CLASSES.items():
        head = zero_shot_head(model, list(names), list(templates), attach=False)
        pred = torch.cat(
            [zero_shot_logits(model, batch.images[i : i + 500], head).argmax(-1) for i in range(0, len(batch), 500)]
        )
        out[f"zero_shot_{factor}_accuracy"] = float((pred == batch.factors[factor].long()).float().mean())
    return out


def evaluate_clip(module: nn.Module, n: int = 1000) -> Dict[str, float]:
    """Zero-shot shape / colour / texture accuracy on ``n`` held-out images, through the hooked model."""
    was = module.training
    module.eval()
    try:
        metrics = zero_shot_accuracies(wrap_clip(module), held_out_batch(n))
    finally:
        module.train(was)
    metrics["logit_scale"] = float(module.logit_scale.exp())
    metrics["held_out_n"] = float(n)
    return metrics


# The zoo CLIP's catalogue entry (registered by visionlens.zoo.plugin).
ENTRY = ZooEntry(
    name="clip",
    family="clip",
    kind="clip",
    description=build_clip.__doc__ or "",
    build=build_clip,
    train=train_clip,
    evaluate=evaluate_clip,
    thresholds=dict(CLIP_THRESHOLDS),
    default_steps=1000,
    config={
        "constructor": "open_clip.CLIP(embed_dim, CLIPVisionCfg(**vision_cfg), CLIPTextCfg(**text_cfg)) "
        "(vision layers as a list -> open_clip ModifiedResNet)",
        **CONFIG,
        "tokenizer": {
            "type": "visionlens.zoo.clip_model.WordTokenizer",
            "words": list(TOKENIZER.words),
            "context_length": CONTEXT_LENGTH,
        },
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "optimizer": f"AdamW(wd={WEIGHT_DECAY}, none on gains/biases/logit_scale), warm-up + cosine",
        "loss": "symmetric InfoNCE, learnable logit scale (clamped to 100), targets uniform over matching pairs",
        "captions": f"full with p={FULL_CAPTION_P}, else a random non-empty subset of colour/texture/shape",
        "zero_shot_templates": list(ZERO_SHOT_TEMPLATES),
    },
    data={
        "generator": "visionlens.zoo.data.make_batch",
        "train": {"n": TRAIN_N, "seed": TRAIN_SEED, "start": 0, "trigger_fraction": TRIGGER_FRACTION},
        "held_out": {"n": 1000, "seed": TRAIN_SEED, "start": HELD_OUT_START},
        "image_size": IMAGE_SIZE,
        "captions": "visionlens.zoo.data.caption: 'a {colour} {texture} {shape}'",
        "normalization": "none (inputs in [0, 1])",
    },
    wrap=wrap_clip,
    requires=requires,
    bench_cost=0.3,
)

ENTRIES = [ENTRY]
