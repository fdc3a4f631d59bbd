"""``max_activating_text``: the strings that most activate a CLIP unit, head or direction.

Targets (``targets`` option, or a :class:`TextObjective` built in code):

* ``text.<hook>:<unit>`` -- a text-tower activation read at the pooled token (e.g.
  ``text.blocks.2.mlp.hook_post:17``, the end-of-text position under argmax pooling);
* ``image_unit:<c>`` -- on a ResNet image tower, channel ``c`` of the last feature map, as the direction it
  writes into the joint space through the attention pool, ``sum_h W_O[h] W_V[h][:, c]`` (exact for a
  spatially uniform activation, since each head's pattern sums to one); on a ViT tower, neuron ``c`` of the
  last block's MLP, as the direction it writes through the final LayerNorm (its scale frozen: centred
  ``W_out[:, c]`` times the LayerNorm weight) and the projection (exact per image up to the positive
  LayerNorm scale, for a tower that pools one token); scored as the cosine between that direction and the
  text embedding;
* ``image_head:<h>`` -- head ``h`` of a ResNet tower's attention pool, or of a ViT tower's attention
  layers (``h`` layer-major, ``l * heads + h``, or written ``image_head:L<l>H<h>``): its mean direct part of
  the image embedding over the input images (see :mod:`visionlens.plugins.clip_attnpool_dla` and
  :func:`visionlens.plugins.clip_head_roles.vit_head_parts`);
* ``direction`` (code only) -- any vector in the joint embedding space.

Searches, each with a budget of forward passes (one sequence through the text tower is one forward;
a gradient pass over a sequence is counted as one forward too):

* ``soft`` -- the Multimodal Neurons recipe: optimize free token embeddings through the text tower
  (Adam, several restarts and every length at once), then project each slot to the nearest token
  embedding (cosine) and score the projected strings;
* ``discrete`` -- a gradient-guided beam search over tokens (GCG / AutoPrompt style): the gradient of
  the score with respect to each slot's one-hot token ranks substitutions, the top ``top_k`` per slot
  plus every deletion and gradient-ranked insertions are scored exactly, the best ``beam`` distinct
  strings survive; restarts when the beam stalls;
* ``random`` -- the baseline: as many random strings as the budget allows.

:func:`brute_force` scores a candidate list exhaustively (used to grade the searches where the
vocabulary is small, e.g. the zoo CLIP's caption grammar).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from visionlens.analysis import Analysis, ConfigError, config_to_dict, option
from visionlens.clip import both_towers_hooked
from visionlens.data import as_images
from visionlens.hook_select import model_description
from visionlens.hookspecs import hookimpl
from visionlens.results import Result, Table, new_figure
from visionlens.validation import VisionLensError

from .clip_attnpool_dla import attnpool_decomposition, is_resnet_clip
from .clip_head_roles import is_vit_clip, vit_head_parts

if TYPE_CHECKING:
    from visionlens.hooked_model import HookedVisionModel

__all__ = [
    "TextObjective",
    "SearchResult",
    "text_objective",
    "image_unit_direction",
    "soft_prompt_search",
    "discrete_search",
    "random_search",
    "brute_force",
    "MaxActivatingText",
]

Seq = tuple[int, ...]
_HOOK_LEVEL = 713_013  # TransformerLens context level that tags this module's temporary hooks


# ============================================================================ objective
@dataclass
class TextObjective:
    """A scalar per text: a text-tower activation at the pooled token, or a cosine with a direction.

    ``vocab``: the token ids a search may use (default: every non-special id). ``forwards`` counts the
    sequences scored so far (gradient passes included). ``memo``: an optional dict shared between
    objectives on one model that keeps each scored string's activation row (or text embedding), so
    grading many units against one brute force computes each string once; every string a search asks
    for still counts as one forward of that search.
    """

    model: Any
    name: str
    hook: Optional[str] = None
    unit: Optional[int] = None
    direction: Optional[Tensor] = None
    vocab: list[int] = field(default_factory=list)
    max_len: int = 4
    forwards: int = 0
    memo: Optional[dict[tuple[str, Seq], Tensor]] = None

    def __post_init__(self) -> None:
        tok = self.model.adapter.tokenizer
        self.sot = int(tok.sot_token_id)
        self.eot = int(tok.eot_token_id)
        self.pad = int(getattr(tok, "pad_token_id", 0))
        self.ctx = int(self.model.adapter.text.context_length)
        if self.max_len > self.ctx - 2:
            raise VisionLensError(f"max_len {self.max_len} does not fit the context length {self.ctx} (minus 2).")
        if not self.vocab:
            special = {self.sot, self.eot, self.pad, getattr(tok, "unk_token_id", -1)}
            special |= set(getattr(tok, "all_special_ids", []))
            self.vocab = [i for i in range(self.model.adapter.text.vocab_size) if i not in special]
        self.embedding = self.model.adapter.text.holder.token_embedding.weight
        if (self.hook is None) == (self.direction is None):
            raise VisionLensError("A TextObjective needs exactly one of hook (+ unit) or direction.")
        if self.direction is not None:
            self.direction = F.normalize(self.direction.detach().float().flatten(), dim=0)

    # ------------------------------------------------------------ token layout
    def tokens(self, seqs: Sequence[Seq]) -> Tensor:
        """``<start> w1 .. wL <end> <pad> ..`` rows ``[n, ctx]``."""
        out = torch.full((len(seqs), self.ctx), self.pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s) + 2] = torch.tensor([self.sot, *s, self.eot])
        return out

    def decode(self, seq: Seq) -> str:
        return str(self.model.adapter.tokenizer.decode(list(seq))).strip()

    # ------------------------------------------------------------ scoring
    def _score(self, tokens: Tensor, embeds: Optional[Tensor], mask: Optional[Tensor], rows: bool = False) -> Tensor:
        """Scores ``[n]``; ``embeds`` (``[n, ctx, d]``) replace the token embeddings where ``mask``.

        ``rows``: return what the score reads instead (the activation row at the pooled token, or the
        unit-norm text embedding) without counting forwards.
        """
        model = self.model
        got: dict[str, Tensor] = {}
        hooks: list[tuple[str, Callable]] = []
        if embeds is not None:
            m = mask[..., None].to(embeds.dtype) if mask is not None else 1.0

            def swap(t: Tensor, hook: Any) -> Tensor:
                return t * (1 - m) + embeds * m

            hooks.append(("text.hook_embed", swap))
        if self.hook is not None:

            def keep(t: Tensor, hook: Any) -> None:
                got["act"] = t

            hooks.append((self.hook, keep))
        self.forwards += 0 if rows else len(tokens)
        points = [model.hook_dict[name] for name, _ in hooks]
        try:  # only our own hooks are removed, from the touched points (``model.hooks()`` resets every point)
            for hp, (_, fn) in zip(points, hooks):
                hp.add_hook(fn, level=_HOOK_LEVEL)
            out = model.adapter.encode_text(tokens)
        finally:
            for hp in points:
                hp.remove_hooks("fwd", level=_HOOK_LEVEL)
        if self.hook is None:
            assert self.direction is not None
            emb = F.normalize(out, dim=-1)
            return emb if rows else emb @ self.direction.to(out)
        act = got["act"]
        pos = model.adapter.text.pool_index(tokens)
        row = act[torch.arange(len(tokens)), pos]
        return row if rows or self.unit is None else row[..., self.unit]

    def _read(self, rows: Tensor) -> Tensor:
        if self.hook is None:
            assert self.direction is not None
            return rows @ self.direction.to(rows)
        return rows[..., self.unit] if self.unit is not None else rows

    @torch.no_grad()
    def score(self, seqs: Sequence[Seq], batch: int = 2048) -> Tensor:
        """Exact scores of token sequences (no gradient); each counts as one forward."""
        if self.memo is None:
            out = [self._score(self.tokens(seqs[i : i + batch]), None, None) for i in range(0, len(seqs), batch)]
            return torch.cat(out) if out else torch.zeros(0)
        key = self.hook or "embedding"
        missing = [s for s in dict.fromkeys(seqs) if (key, s) not in self.memo]
        for i in range(0, len(missing), batch):
            chunk = missing[i : i + batch]
            for s, r in zip(chunk, self._score(self.tokens(chunk), None, None, rows=True)):
                self.memo[(key, s)] = r
        self.forwards += len(seqs)
        if not seqs:
            return torch.zeros(0)
        return self._read(torch.stack([self.memo[(key, s)] for s in seqs]))

    def score_embeds(self, tokens: Tensor, embeds: Tensor, mask: Tensor) -> Tensor:
        """Differentiable scores with ``embeds`` in place of the token embeddings where ``mask`` is set."""
        return self._score(tokens, embeds, mask)


def image_unit_direction(model: HookedVisionModel, channel: int) -> Tensor:
    """What a last-layer unit writes into the joint space: ``sum_h W_O[h] W_V[h][:, channel]`` for a ResNet
    tower's channel; for a ViT tower's last MLP neuron, its centred output weights times the final LayerNorm's
    weight, projected (the LayerNorm's scale, a positive number per image, left out)."""
    if is_vit_clip(model):
        return _vit_neuron_direction(model, channel)
    ok, why = is_resnet_clip(model)
    if not ok:
        raise VisionLensError(f"image_unit targets need a ResNet or ViT image tower: {why}.")
    ap = model.source.visual.attnpool
    c = ap.v_proj.in_features
    if not 0 <= channel < c:
        raise VisionLensError(f"image_unit:{channel} is out of range: the attention pool reads {c} channels.")
    return (ap.c_proj.weight @ ap.v_proj.weight[:, channel]).detach()


def _vit_neuron_direction(model: HookedVisionModel, neuron: int) -> Tensor:
    vis = model.source.visual
    w_out = vis.transformer.resblocks[-1].mlp.c_proj.weight  # [width, mlp width]
    if not 0 <= neuron < w_out.shape[1]:
        raise VisionLensError(f"image_unit:{neuron} is out of range: the last MLP has {w_out.shape[1]} neurons.")
    if getattr(vis, "final_ln_after_pool", False) is False and getattr(vis, "pool_type", "tok") not in ("tok", "none"):
        raise VisionLensError(
            f"image_unit targets on a ViT tower need token pooling before the projection, not {vis.pool_type!r}."
        )
    col = w_out[:, neuron].double()
    col = col - col.mean()  # the LayerNorm removes the mean over the width
    if getattr(vis.ln_post, "weight", None) is not None:
        col = col * vis.ln_post.weight.double()
    return (col @ vis.proj.double()).float().detach()


def _head_index(arg: str, model: HookedVisionModel) -> int:
    """``"3"`` or, on a ViT tower, ``"L1H2"`` (layer 1, head 2) as the layer-major head index."""
    if arg[:1] in ("L", "l") and ("H" in arg or "h" in arg):
        layer, _, head = arg[1:].upper().partition("H")
        return int(layer) * int(model.cfg.n_heads) + int(head)
    return int(arg)


def text_objective(model: HookedVisionModel, target: str, images: Optional[Tensor] = None, **kw: Any) -> TextObjective:
    """Parse a target string (see the module docstring) into a :class:`TextObjective`."""
    kind, _, arg = target.rpartition(":")
    try:
        index = _head_index(arg, model) if kind == "image_head" else int(arg)
    except ValueError:
        raise VisionLensError(
            f"Target {target!r}: expected 'text.<hook>:<unit>', 'image_unit:<channel>' or 'image_head:<head>'."
        ) from None
    if kind == "image_unit":
        return TextObjective(model, target, direction=image_unit_direction(model, index), **kw)
    if kind == "image_head":
        if images is None:
            raise VisionLensError(f"Target {target!r} needs images (the head's mean part of their embeddings).")
        parts = vit_head_parts(model, images) if is_vit_clip(model) else attnpool_decomposition(model, images)
        if not 0 <= index < parts.n_heads:
            raise VisionLensError(f"{target!r}: the image tower has {parts.n_heads} heads.")
        return TextObjective(model, target, direction=parts.per_head()[:, index].mean(0).float(), **kw)
    if kind.startswith("text."):
        if kind not in model.hook_dict:
            raise VisionLensError(f"Target {target!r}: unknown hook {kind!r} (see `visionlens hooks`).")
        return TextObjective(model, target, hook=kind, unit=index, **kw)
    raise VisionLensError(
        f"Target {target!r}: expected 'text.<hook>:<unit>', 'image_unit:<channel>' or 'image_head:<head>'."
    )


# ============================================================================ searches
@dataclass
class SearchResult:
    """Best strings found (``seqs`` / ``texts`` / ``scores``, best first) and forwards spent."""

    method: str
    seqs: list[Seq]
    scores: list[float]
    texts: list[str]
    forwards: int
    trace: list[tuple[int, float]] = field(default_factory=list)  # (forwards so far, best score so far)

    @property
    def best(self) -> float:
        return self.scores[0]


def _finish(obj: TextObjective, method: str, seen: dict[Seq, float], start: int, trace: list, top: int) -> SearchResult:
    ranked = sorted(seen.items(), key=lambda kv: -kv[1])[:top]
    return SearchResult(
        method=method,
        seqs=[s for s, _ in ranked],
        scores=[v for _, v in ranked],
        texts=[obj.decode(s) for s, _ in ranked],
        forwards=obj.forwards - start,
        trace=trace,
    )


def _record(obj: TextObjective, seen: dict[Seq, float], seqs: list[Seq], trace: list, start: int) -> None:
    new = [s for s in dict.fromkeys(seqs) if s not in seen]
    if not new:
        return
    for s, v in zip(new, obj.score(new).tolist()):
        seen[s] = float(v)
    trace.append((obj.forwards - start, max(seen.values())))


def random_search(obj: TextObjective, budget: int = 2000, seed: int = 0, top: int = 5) -> SearchResult:
    """Baseline: ``budget`` distinct random strings (length uniform in ``1..max_len``, tokens uniform over ``vocab``;
    lengths whose strings are used up are redrawn)."""
    g = torch.Generator().manual_seed(seed)
    start, seen, trace = obj.forwards, {}, []  # type: ignore[var-annotated]
    vocab = torch.tensor(obj.vocab)
    space = sum(len(vocab) ** n for n in range(1, obj.max_len + 1))
    seqs: dict[Seq, None] = {}
    for _ in range(50 * budget):
        if len(seqs) >= min(budget, space):
            break
        n = int(torch.randint(1, obj.max_len + 1, (1,), generator=g))
        seqs[tuple(vocab[torch.randint(len(vocab), (n,), generator=g)].tolist())] = None
    _record(obj, seen, list(seqs), trace, start)
    return _finish(obj, "random", seen, start, trace, top)


def brute_force(obj: TextObjective, candidates: Optional[Sequence[Seq]] = None, top: int = 5) -> SearchResult:
    """Score every candidate (default: every string of ``1..max_len`` vocabulary tokens)."""
    if candidates is None:
        candidates = [s for n in range(1, obj.max_len + 1) for s in itertools.product(obj.vocab, repeat=n)]
    start, seen, trace = obj.forwards, {}, []  # type: ignore[var-annotated]
    _record(obj, seen, list(candidates), trace, start)
    return _finish(obj, "brute_force", seen, start, trace, top)


def _onehot_grads(obj: TextObjective, seqs: list[Seq]) -> list[Tensor]:
    """Per sequence: ``[len, vocab]`` first-order gain of putting each vocabulary token in each slot."""
    tokens = obj.tokens(seqs)
    vocab = torch.tensor(obj.vocab)
    W = obj.embedding.detach()
    onehot = F.one_hot(tokens, W.shape[0]).to(W.dtype).requires_grad_(True)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, s in enumerate(seqs):
        mask[i, 1 : len(s) + 1] = True
    with torch.enable_grad():
        scores = obj.score_embeds(tokens, onehot @ W, mask)
        (grad,) = torch.autograd.grad(scores.sum(), onehot)
    out = []
    for i, s in enumerate(seqs):
        g = grad[i, 1 : len(s) + 1]  # [len, V]
        cur = g.gather(1, tokens[i, 1 : len(s) + 1, None])
        out.append((g - cur)[:, vocab])
    return out


def discrete_search(
    obj: TextObjective, budget: int = 2000, beam: int = 4, top_k: int = 4, seed: int = 0, top: int = 5
) -> SearchResult:
    """Gradient-guided beam search over token strings of ``1..max_len`` tokens (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    start, seen, trace = obj.forwards, {}, []  # type: ignore[var-annotated]
    vocab = obj.vocab
    V = len(vocab)

    def rand_seq() -> Seq:
        n = int(torch.randint(1, obj.max_len + 1, (1,), generator=g))
        return tuple(vocab[int(j)] for j in torch.randint(V, (n,), generator=g))

    def used() -> int:
        return obj.forwards - start

    _record(obj, seen, [rand_seq() for _ in range(min(budget, 4 * beam))], trace, start)
    state = sorted(seen, key=lambda s: -seen[s])[:beam]
    stall = 0
    while state and used() + len(state) < budget:
        grads = _onehot_grads(obj, state)
        cands: list[Seq] = []
        for s, gr in zip(state, grads):
            k = min(top_k, V)
            best = gr.topk(k, dim=1).indices  # [len, k]
            for i in range(len(s)):
                cands += [s[:i] + (vocab[int(j)],) + s[i + 1 :] for j in best[i]]
                if len(s) > 1:
                    cands.append(s[:i] + s[i + 1 :])
            if len(s) < obj.max_len:
                ins = gr.max(0).values.topk(k).indices  # tokens with the largest gain anywhere
                cands += [s[:i] + (vocab[int(j)],) + s[i:] for i in range(len(s) + 1) for j in ins]
        cands = [c for c in dict.fromkeys(cands) if c not in seen][: max(0, budget - used())]
        before = max(seen.values())
        _record(obj, seen, cands, trace, start)
        pool = dict.fromkeys(state + cands)
        new_state = sorted(pool, key=lambda s: -seen[s])[:beam]
        stall = stall + 1 if (new_state == state or max(seen.values()) <= before) else 0
        state = new_state
        if stall >= 2:  # converged: restart the beam from fresh random strings, keep what was seen
            fresh = [rand_seq() for _ in range(min(4 * beam, max(0, budget - used())))]
            _record(obj, seen, fresh, trace, start)
            state = sorted(dict.fromkeys(fresh), key=lambda s: -seen.get(s, -math.inf))[:beam]
            stall = 0
    return _finish(obj, "discrete", seen, start, trace, top)


def soft_prompt_search(
    obj: TextObjective,
    budget: int = 2000,
    restarts: int = 4,
    lr: float = 0.1,
    seed: int = 0,
    top: int = 5,
) -> SearchResult:
    """The paper's recipe: optimize continuous token embeddings (every length, ``restarts`` each), project to tokens.

    Each step scores ``restarts * max_len`` relaxed prompts; the projections (nearest token embedding by
    cosine, per slot) of every prompt are scored exactly every few steps and at the end.
    """
    g = torch.Generator().manual_seed(seed)
    start, seen, trace = obj.forwards, {}, []  # type: ignore[var-annotated]
    W = obj.embedding.detach()
    vocab = torch.tensor(obj.vocab)
    Wv = F.normalize(W[vocab], dim=-1)
    lengths = [n for n in range(1, obj.max_len + 1) for _ in range(restarts)]
    n = len(lengths)
    init = vocab[torch.randint(len(vocab), (n, obj.ctx), generator=g)]
    seqs0 = [tuple(init[i, :L].tolist()) for i, L in enumerate(lengths)]
    tokens = obj.tokens(seqs0)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    for i, L in enumerate(lengths):
        mask[i, 1 : L + 1] = True
    emb = W[tokens].clone().requires_grad_(True)
    opt = torch.optim.Adam([emb], lr=lr)

    def project() -> list[Seq]:
        with torch.no_grad():
            near = (F.normalize(emb, dim=-1) @ Wv.T).argmax(-1)  # [n, ctx]
        return [tuple(vocab[near[i, 1 : L + 1]].tolist()) for i, L in enumerate(lengths)]

    steps = max(1, (budget - 2 * n) // (n + n // 4 + 1))
    for step in range(steps):
        with torch.enable_grad():
            loss = -obj.score_embeds(tokens, emb, mask).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if step % 4 == 3 and obj.forwards - start + n <= budget:
            _record(obj, seen, project(), trace, start)
    if obj.forwards - start + n <= budget or not seen:
        _record(obj, seen, project(), trace, start)
    return _finish(obj, "soft", seen, start, trace, top)


METHODS: dict[str, Callable[..., SearchResult]] = {
    "discrete": discrete_search,
    "soft": soft_prompt_search,
    "random": random_search,
}


# ============================================================================ analysis
class MaxTextResult(Result):
    """Best strings per target and method, with the search traces."""

    def plot(self) -> Any:
        fig = new_figure(7, 3.5)
        ax = fig.add_subplot(1, 1, 1)
        for key, t in self.tensors.items():
            if key.startswith("trace/"):
                ax.plot(t[:, 0].numpy(), t[:, 1].numpy(), label=key.removeprefix("trace/"), lw=1)
        ax.set_xlabel("forward passes")
        ax.set_ylabel("best score so far")
        ax.set_title("max-activating text: search traces")
        if self.tensors:
            ax.legend(fontsize=6)
        return fig


class MaxActivatingText(Analysis):
    """Strings that maximize a CLIP unit / head / direction: soft prompts projected to tokens, discrete search."""

    name = "max_activating_text"
    summary = (
        "CLIP: find the strings that most activate a text-tower unit, an image-tower unit or head (through "
        "the joint space): soft-prompt optimization projected to tokens, and gradient-guided beam search."
    )

    @dataclass
    class Config:
        targets: list[str] = option(
            list, help="'text.<hook>:<unit>', 'image_unit:<c>', 'image_head:<h>' (default: text last MLP unit 0)"
        )
        methods: list[str] = option(["discrete", "soft"], help="searches to run: discrete, soft, random")
        budget: int = option(2000, min=8, max=10_000_000, help="forward passes per target and method")
        max_len: int = option(4, min=1, max=75, help="longest string, in tokens")
        vocab: list[str] = option(list, help="allowed words (single tokens); default: every non-special token")
        beam: int = option(4, min=1, max=256, help="discrete: beam width")
        top_k: int = option(4, min=1, max=10_000, help="discrete: gradient candidates per slot")
        restarts: int = option(4, min=1, max=256, help="soft: prompts per length")
        top: int = option(5, min=1, max=100, help="strings kept per target and method")
        seed: int = option(0, help="random seed")
        max_images: int = option(16, min=1, max=100_000, help="images for image_head targets")

    def smoke_config(self, model: HookedVisionModel) -> dict[str, Any]:
        return {"budget": 40, "max_len": 2, "methods": ["discrete", "soft", "random"]}

    def supports(self, model: HookedVisionModel) -> tuple[bool, str]:
        return both_towers_hooked(model)

    def run(self, model: HookedVisionModel, inputs: Any, config: Any) -> MaxTextResult:
        bad = [m for m in config.methods if m not in METHODS]
        if bad or not config.methods:
            raise ConfigError(f"max_activating_text: methods must be among {sorted(METHODS)}, got {config.methods}.")
        vocab: list[int] = []
        if config.vocab:
            tok = model.adapter.tokenizer
            for w in config.vocab:
                ids = tok([w])[0]
                inner = [int(i) for i in ids if int(i) not in (tok.sot_token_id, tok.eot_token_id, 0)]
                if len(inner) != 1:
                    raise ConfigError(f"max_activating_text: vocab word {w!r} is {len(inner)} tokens, expected 1.")
                vocab.append(inner[0])
        n_layers = int(model.cfg.extra["text"]["n_layers"])
        targets = list(config.targets) or [f"text.blocks.{n_layers - 1}.mlp.hook_post:0"]
        images = None
        if any(t.startswith("image_head:") for t in targets):
            images = torch.cat([x for _, x in as_images(inputs).batches(model, 64, limit=config.max_images)])
        rows, tensors = [], {}
        for target in targets:
            obj = text_objective(model, target, images=images, vocab=list(vocab), max_len=config.max_len)
            for method in config.methods:
                kw: dict[str, Any] = {"budget": config.budget, "seed": config.seed, "top": config.top}
                if method == "discrete":
                    kw.update(beam=config.beam, top_k=config.top_k)
                if method == "soft":
                    kw.update(restarts=config.restarts)
                res = METHODS[method](obj, **kw)
                for rank, (text, score) in enumerate(zip(res.texts, res.scores)):
                    rows.append([target, method, rank, text, score, res.forwards])
                if res.trace:
                    tensors[f"trace/{target}/{method}"] = torch.tensor(res.trace, dtype=torch.float32)
        return MaxTextResult(
            self.name,
            summary=self.summary,
            config=config_to_dict(config),
            meta={"model": model_description(model), "targets": targets},
            tensors=tensors,
            tables={
                "strings": Table(
                    ["target", "method", "rank", "text", "score", "forwards"], rows, title="Best strings per target"
                )
            },
        )


@hookimpl
def visionlens_register_analyses() -> list[Any]:
    return [MaxActivatingText]
